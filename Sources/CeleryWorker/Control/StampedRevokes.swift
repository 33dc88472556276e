import CeleryProtocol
import OrderedCollections

extension RevokedTasks {
    /// Adds stamp values to revoke (`revoke_by_stamped_headers`): each header's values after those it had.
    mutating func revoke(stamps headers: CeleryObject) {
        for (header, values) in headers { stamps[header, default: []] += Self.list(values) }
    }

    /// The stamp by which `message` is revoked, as Python's `Request.revoked` finds it: the first of its
    /// `stamped_headers` whose value in `stamps` (or one of whose values, for a list) was revoked.
    func revokingStamp(of message: CeleryTaskMessage) -> (header: String, value: CeleryValue)? {
        guard !stamps.isEmpty else { return nil }
        for (header, value) in Self.stamps(of: message) {
            guard let revoked = stamps[header] else { continue }
            for stamped in Self.list(value) where revoked.contains(stamped) { return (header, stamped) }
        }
        return nil
    }

    /// A message's stamps by header, in the order of its `stamped_headers` (Celery's `Request.stamps`).
    static func stamps(of message: CeleryTaskMessage) -> [(header: String, value: CeleryValue)] {
        let headers = message.headers
        let stamped = headers["stamped_headers"]?.arrayValue?.compactMap(\.stringValue) ?? []
        let values = headers["stamps"]?.objectValue ?? [:]
        return stamped.compactMap { header in
            guard let value = values[header], value != .null else { return nil }
            return (header, value)
        }
    }

    /// Celery's `maybe_list`: a list as it is, anything else as a list of one.
    static func list(_ value: CeleryValue) -> [CeleryValue] {
        if case .array(let values) = value { return values }
        return [value]
    }
}

extension WorkerRun {
    /// Celery's `revoke_by_stamped_headers`: tasks whose stamps carry one of the values are not run (REVOKED is
    /// stored when one arrives), and with `terminate` the running ones are stopped as `revoke(terminate=True)` stops
    /// them. `headers` maps stamp names to a value or a list of values (or is a list of `name=value`).
    func revokeByStampedHeaders(_ arguments: CeleryObject) -> CeleryValue {
        var headers = CeleryObject()
        switch arguments["headers"] {
        case .object(let given)?:
            headers = given
        case .array(let items)?:
            for item in items.compactMap(\.stringValue) {
                let parts = item.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                guard parts.count == 2 else { return ["error": .string("ValueError('\(item) is not name=value')")] }
                headers[String(parts[0])] = .string(String(parts[1]))
            }
        default:
            return ["error": "TypeError('revoke_by_stamped_headers needs headers: a mapping of stamp names to values')"]
        }
        revoked.withLock { $0.revoke(stamps: headers) }
        let shown = PythonRepr.repr(.object(headers))
        logger.info("Tasks flagged as revoked by stamped headers: \(shown)")
        guard arguments["terminate"]?.boolValue == true else {
            return ["ok": .string("headers \(shown) flagged as revoked, but not terminated")]
        }
        // Celery's reply lists what it stopped as a `defaultdict(set)`.
        var stopped = OrderedDictionary<String, [CeleryValue]>()
        for task in running.withLock({ $0.all }) {
            var matched = false
            for (header, value) in RevokedTasks.stamps(of: task.job.message) {
                guard let wanted = headers[header] else { continue }
                let wantedValues = RevokedTasks.list(wanted)
                for stamp in RevokedTasks.list(value) where wantedValues.contains(stamp) {
                    matched = true
                    if !stopped[header, default: []].contains(stamp) { stopped[header, default: []].append(stamp) }
                }
            }
            if matched { task.stop.request(.terminated) }
        }
        guard !stopped.isEmpty else { return ["ok": .string("headers \(shown) were not terminated")] }
        let sets = stopped.map { header, values in
            PythonRepr.repr(.string(header)) + ": {" + values.map { PythonRepr.repr($0) }.joined(separator: ", ") + "}"
        }
        return ["ok": .string("headers defaultdict(<class 'set'>, {" + sets.joined(separator: ", ") + "}) revoked")]
    }
}
