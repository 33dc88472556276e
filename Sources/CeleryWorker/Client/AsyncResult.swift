import CeleryProtocol
import Foundation
import Synchronization

/// A task that ended in FAILURE or REVOKED, as Python's `AsyncResult.get()` raises it: the Python exception's
/// class, module and arguments, and the traceback the worker stored.
public struct TaskFailure: PythonConvertibleError, Sendable, CustomStringConvertible {
    public var taskID: String
    /// `FAILURE` or `REVOKED`.
    public var state: TaskState
    public var pythonException: CeleryExceptionInfo
    public var traceback: String?

    public var description: String { "\(pythonException.repr) (task \(taskID), \(state))" }
}

/// The pending result of a task sent by ``CeleryClient``.
public struct AsyncResult: Sendable {
    /// The task id.
    public let id: String
    let client: CeleryClient

    /// The stored document, or `nil` while nothing is stored (Python's PENDING).
    public func document() async throws(CeleryWorkerError) -> CeleryValue? {
        guard let backend = client.backend else { throw Self.noBackend }
        guard let bytes = try await backend.client.send(RedisCommand("GET", RedisArgument(backend.key(for: id)))).bytes else {
            return nil
        }
        return try? CeleryResultDocument.decodeStored(bytes, serializer: backend.serializer)
    }

    /// Python's `AsyncResult.revoke`: tells every worker not to run this task, and with `terminate` to stop it if it
    /// runs (``CeleryClient/revoke(_:terminate:signal:destination:reply:timeout:)``).
    public func revoke(terminate: Bool = false, signal: String = "SIGTERM") async throws(CeleryWorkerError) {
        _ = try await client.revoke([id], terminate: terminate, signal: signal)
    }

    /// Python's `AsyncResult.forget`: deletes the stored result (a result stored later is kept).
    public func forget() async throws(CeleryWorkerError) {
        guard let backend = client.backend else { throw Self.noBackend }
        _ = try await backend.client.send(RedisCommand("DEL", RedisArgument(backend.key(for: id))))
    }

    /// The current state: `PENDING` when nothing is stored.
    public func state() async throws(CeleryWorkerError) -> TaskState {
        try await document()?["status"]?.stringValue.map { TaskState($0) } ?? .pending
    }

    /// Waits for the task to finish and returns its result; a FAILURE or REVOKED ends in ``TaskFailure``.
    ///
    /// Waits through pub/sub as Python does (`SUBSCRIBE celery-task-meta-<id>`, then one `GET` for a result that
    /// was already stored): no polling of Redis. While it waits, it holds one Redis connection and one I/O thread.
    public func get(timeout: Duration = .seconds(3600)) async throws -> CeleryValue {
        let document = try await waitForReady(timeout: timeout)
        let status = TaskState(document["status"]?.stringValue ?? "")
        let result = document["result"] ?? .null
        guard status == .success else {
            throw TaskFailure(
                taskID: id, state: status,
                pythonException: CeleryExceptionInfo(stored: result),
                traceback: document["traceback"]?.stringValue)
        }
        return result
    }

    /// ``get(timeout:)`` converted to a Swift type.
    public func get<Value: CeleryValueDecodable>(as type: Value.Type, timeout: Duration = .seconds(3600)) async throws -> Value {
        try Value(celeryValue: try await get(timeout: timeout))
    }

    static let readyStates: Set<String> = ["SUCCESS", "FAILURE", "REVOKED"]
    /// Celery's `NotImplementedError` of a client without a result backend (its `DisabledBackend`), in its words.
    static let noBackend = CeleryWorkerError(
        code: .invalidConfiguration, message: "No result backend is configured. Please see the documentation for more information.")

    private static func readyDocument(_ bytes: [UInt8]?, _ serializer: CeleryContentType) -> CeleryValue? {
        guard let bytes, let document = try? CeleryResultDocument.decodeStored(bytes, serializer: serializer),
            let status = document["status"]?.stringValue, readyStates.contains(status)
        else { return nil }
        return document
    }

    private func waitForReady(timeout: Duration) async throws -> CeleryValue {
        guard let backend = client.backend, let url = client.backendURL else { throw Self.noBackend }
        let key = backend.key(for: id)
        let serializer = backend.serializer
        let found = Mutex<CeleryValue?>(nil)
        let stop = ShutdownSignal()
        let deadline = ContinuousClock.now + timeout
        let listener = RedisClient(url: url)
        let reader = RedisConnection(url: url, commandTimeout: .seconds(30))
        defer {
            listener.close()
            reader.close()
        }
        try await withTaskCancellationHandler {
            try await listener.withConnection { connection throws(CeleryWorkerError) in
                try connection.subscribe(
                    pattern: key, exact: true, pollInterval: .milliseconds(100),
                    shouldStop: { found.withLock { $0 != nil } || stop.isTriggered || ContinuousClock.now >= deadline },
                    onSubscribed: {
                        // Subscribed first, then read once: a result stored before the subscription is not missed.
                        if let replies = try? reader.execute([RedisCommand("GET", RedisArgument(key))]),
                            let document = Self.readyDocument(replies.first?.bytes, serializer)
                        {
                            found.withLock { $0 = document }
                        }
                    },
                    onMessage: { bytes, _ in
                        if let document = Self.readyDocument(bytes, serializer) { found.withLock { $0 = $0 ?? document } }
                    })
            }
        } onCancel: {
            stop.trigger()
        }
        if let document = found.withLock({ $0 }) { return document }
        try Task.checkCancellation()
        throw CeleryWorkerError(code: .timeout, message: "task \(id) did not finish within \(timeout)")
    }
}

/// The results of a group's members, in order.
public struct GroupResult: Sendable {
    /// The group id.
    public let id: String
    public let results: [AsyncResult]

    /// Waits for every member; the first FAILURE ends in ``TaskFailure``.
    public func get(timeout: Duration = .seconds(3600)) async throws -> [CeleryValue] {
        var values: [CeleryValue] = []
        for result in results { values.append(try await result.get(timeout: timeout)) }
        return values
    }
}

/// What a task sent, as its stored result lists it in `children`: Python's `AsyncResult.children`.
public enum ResultChild: Sendable {
    /// A task (a chain is listed by the task it starts with).
    case task(AsyncResult)
    /// A group and its members' results, in order (a member that is itself a group is listed by its members).
    case group(GroupResult)
}

extension AsyncResult {
    /// Python's `AsyncResult.children`: what the task sent as it ran, then its callbacks and its chain's next step,
    /// read from its stored result. Empty while nothing is stored.
    public func children() async throws(CeleryWorkerError) -> [ResultChild] {
        guard let nodes = try await document()?["children"]?.arrayValue else { return [] }
        return nodes.compactMap { ResultChild(node: $0, client: client) }
    }
}

extension ResultChild {
    /// A node of `children`, as Python's `result_from_tuple` reads it: `[[id, parent], null]` for a task,
    /// `[[id, parent], [members…]]` for a group; `nil` for anything else.
    init?(node: CeleryValue, client: CeleryClient) {
        guard let parts = node.arrayValue, parts.count == 2, let id = parts[0].arrayValue?.first?.stringValue else { return nil }
        guard let members = parts[1].arrayValue else {
            self = .task(client.result(id: id))
            return
        }
        self = .group(GroupResult(id: id, results: members.flatMap { Self.tasks(in: $0, client: client) }))
    }

    private static func tasks(in node: CeleryValue, client: CeleryClient) -> [AsyncResult] {
        switch ResultChild(node: node, client: client) {
        case .task(let result)?: [result]
        case .group(let group)?: group.results
        case nil: []
        }
    }
}
