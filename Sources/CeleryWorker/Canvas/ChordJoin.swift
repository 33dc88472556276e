import CeleryProtocol

/// What a completed chord's body gets, or the `ChordError` stored for it instead, as Celery's
/// `RedisBackend.on_chord_part_return` decides once the last header part is recorded.
enum ChordJoin: Equatable {
    /// The body's first argument.
    case results(CeleryValue)
    /// The chord failed: this `ChordError` is stored for the body, which never runs.
    case failed(CeleryExceptionInfo)
}

extension ChordCompletion {
    /// Python's two ways:
    /// - A header of plain results (tasks, chains, chord bodies): the recorded parts in `group_index` order; the first
    ///   failed part fails the chord with `Dependency <id> raised <exception>`.
    /// - A header that Celery saved as a `GroupResult` because one of its results is a group: that result joined, a
    ///   list per group, as `GroupResult.join_native` builds it; a failed result fails the chord with
    ///   `Join error: <exception>`. Python waits without end for a nested group's result that is never stored;
    ///   here a result still missing after the join timeout fails the chord with Python's `TimeoutError`.
    func join() -> ChordJoin {
        guard let saved = savedHeader.flatMap(SavedResult.init), let nodes = saved.children else {
            if let failed = parts.first(where: { $0.state == .failure || $0.state == .revoked }) {
                let cause = CeleryExceptionInfo(stored: failed.result)
                return .failed(Self.chordError("Dependency \(failed.taskID) raised \(cause.repr)"))
            }
            return .results(.array(parts.map(\.result)))
        }
        var results: [String: Part] = [:]
        for part in storedResults + parts { results[part.taskID] = part }
        do throws(JoinFailure) {
            return .results(.array(try Self.joined(nodes, results: results)))
        } catch {
            switch error {
            case .raised(let exception):
                return .failed(Self.chordError("Join error: \(exception.repr)"))
            case .notReady:
                let timeout = CeleryExceptionInfo(
                    type: "TimeoutError", arguments: ["The operation timed out."], module: "celery.exceptions")
                return .failed(Self.chordError("Join error: \(timeout.repr)"))
            }
        }
    }

    /// The task ids of the saved header's results, nested groups included, that are not among ``parts``.
    func missingTaskIDs() -> [String] {
        guard let saved = savedHeader.flatMap(SavedResult.init), let nodes = saved.children else { return [] }
        let recorded = Set((storedResults + parts).map(\.taskID))
        return Self.taskIDs(in: nodes).filter { !recorded.contains($0) }
    }

    /// Celery's `ChordError(message)`.
    static func chordError(_ message: String) -> CeleryExceptionInfo {
        CeleryExceptionInfo(type: "ChordError", arguments: [.string(message)], module: "celery.exceptions")
    }

    private enum JoinFailure: Error {
        case raised(CeleryExceptionInfo)
        case notReady
    }

    /// `ResultSet.join_native` with `propagate=True`: nested groups first, in order (Python's `iter_native` yields
    /// them before it fetches the single results), then the single results; the first failure met is raised.
    private static func joined(_ nodes: [CeleryValue], results: [String: Part]) throws(JoinFailure) -> [CeleryValue] {
        let parsed = nodes.map(SavedResult.init)
        var values = [CeleryValue](repeating: .null, count: nodes.count)
        for (index, node) in parsed.enumerated() {
            guard let children = node?.children else { continue }
            values[index] = .array(try joined(children, results: results))
        }
        for (index, node) in parsed.enumerated() where node?.children == nil {
            guard let id = node?.id, let part = results[id], part.state.isReady else { throw .notReady }
            guard part.state == .success else { throw .raised(CeleryExceptionInfo(stored: part.result)) }
            values[index] = part.result
        }
        return values
    }

    private static func taskIDs(in nodes: [CeleryValue]) -> [String] {
        nodes.flatMap { node -> [String] in
            guard let saved = SavedResult(node) else { return [] }
            return saved.children.map { taskIDs(in: $0) } ?? [saved.id]
        }
    }
}

/// One node of Celery's `as_tuple()` form, as `result_from_tuple` reads it: `[[id, parent], null]` for a task,
/// `[[id, parent], [nodes…]]` for a group (the id may stand alone instead of the `[id, parent]` pair).
private struct SavedResult {
    let id: String
    let children: [CeleryValue]?

    init?(_ value: CeleryValue) {
        guard case .array(let pair) = value, pair.count == 2 else { return nil }
        switch pair[0] {
        case .string(let id): self.id = id
        case .array(let identity):
            guard let id = identity.first?.stringValue else { return nil }
            self.id = id
        default: return nil
        }
        children = pair[1].arrayValue
    }
}
