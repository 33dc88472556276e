import CeleryProtocol
import Logging
import OrderedCollections

/// Handed to every task: the request, a logger that tags lines with the task, and ways to report state.
public struct TaskContext: Sendable {
    /// The request being run.
    public let request: TaskRequest
    /// A logger whose metadata names the task (`celery.task.id`, `celery.task.name`). Made on each access
    /// (most tasks never log), so a task that logs often keeps one in a local.
    public var logger: Logger {
        var logger = workerLogger
        logger[metadataKey: LogKeys.taskID] = .string(request.id)
        logger[metadataKey: LogKeys.taskName] = .string(request.name)
        return logger
    }
    /// The worker's logger, without the task's metadata.
    let workerLogger: Logger
    /// A client on the worker's broker and result backend, for tasks that start other tasks; `nil` when the
    /// worker runs without Redis (tests on an in-memory broker).
    public let client: CeleryClient?
    /// Where ``updateState(_:meta:)`` stores its states. An object the worker keeps (not a closure made for each
    /// task, which would be allocated for each).
    let stateReporter: any TaskStateReporter
    /// The priority of what this task sends without one (``CanvasSender/fallbackPriority``).
    let fallbackPriority: Int?

    init(
        request: TaskRequest, workerLogger logger: Logger, client: CeleryClient? = nil,
        stateReporter: any TaskStateReporter, fallbackPriority: Int? = nil
    ) {
        self.fallbackPriority = fallbackPriority
        self.request = request
        self.workerLogger = logger
        self.client = client
        self.stateReporter = stateReporter
    }

    /// Sends a task (Swift or Python) on behalf of this one, as Python does for a call made inside a task: this
    /// task is its `parent_id` and its root is this task's root. Await the handle's `get()` for its result.
    @discardableResult
    public func send(
        _ task: String, args: [CeleryValue] = [], kwargs: CeleryObject = [:], options: TaskSendOptions = TaskSendOptions()
    ) async throws -> AsyncResult {
        try await apply(Signature(task: task, args: args, kwargs: kwargs, options: options.signatureOptions))
    }

    /// Sends a task, chain or chord signature on behalf of this task (see ``send(_:args:kwargs:options:)``). What
    /// it sends is listed in this task's result (`children`, before its callbacks), as Python's `add_trail` lists
    /// what a task sends, so that Python's `AsyncResult.children` finds it.
    @discardableResult
    public func apply(_ signature: Signature) async throws -> AsyncResult {
        guard let client else {
            throw CeleryWorkerError(code: .invalidConfiguration, message: "this worker has no client to send tasks with")
        }
        let (result, node) = try await client.send(
            signature, options: ["parent_id": .string(request.id), "root_id": .string(request.rootID ?? request.id)],
            fallbackPriority: fallbackPriority)
        stateReporter.recordChild(node, for: request)
        return result
    }

    /// Adds a task, chain or chord to the chord this task is a header part of, as Python's `self.add_to_chord(sig)`:
    /// the chord counts one more part (its `.t` key goes up by one) and the signature is sent with the chord's
    /// group id, this task's index and the chord's body, so its result joins the header's and the body waits for
    /// it. Throws Python's `ValueError('Current task is not member of any chord')` outside a chord.
    @discardableResult
    public func addToChord(_ signature: Signature) async throws -> AsyncResult {
        guard let groupID = request.groupID, !request.embed.chord.isNull else {
            throw PythonException.valueError("Current task is not member of any chord")
        }
        guard let client, let backend = client.backend else {
            throw CeleryWorkerError(code: .invalidConfiguration, message: "this worker has no result backend to count chord parts in")
        }
        var added = signature
        added.options["group_id"] = .string(groupID)
        added.options["group_index"] = request.groupIndex.map { .int(Int64($0)) } ?? .null
        added.options["chord"] = request.embed.chord
        try await backend.addToChord(groupID: groupID)
        return try await apply(added)
    }

    /// The argument at `position`, or the keyword argument `name` when fewer positional arguments were sent.
    /// Throws Python's `TypeError` when it is missing or has another type.
    public func argument<Value: CeleryValueDecodable>(
        _ position: Int, name: String? = nil, as type: Value.Type = Value.self
    ) throws -> Value {
        let raw: CeleryValue
        if position < request.args.count {
            raw = request.args[position]
        } else if let name, let value = request.kwargs[name] {
            raw = value
        } else {
            let label = name.map { "'\($0)'" } ?? "at position \(position)"
            throw PythonException.typeError("\(request.name)() missing required argument \(label)")
        }
        do {
            return try Value(celeryValue: raw)
        } catch {
            let label = name.map { "'\($0)'" } ?? "\(position)"
            throw PythonException.typeError("\(request.name)() argument \(label): \(error.description)")
        }
    }

    /// Throws Python's `TypeError` when the task was sent more positional arguments than it has `parameters`, or a
    /// keyword argument not among them, as calling a Python function does: for a task that reads its arguments from
    /// the context, before it reads them. `required`: how many of `parameters` have no default.
    public func checkArguments(_ parameters: [String], required: Int) throws {
        try checkArguments(count: parameters.count, required: required, names: parameters)
    }

    /// ``checkArguments(_:required:)`` for `count` positional parameters, of which only the first `names` may also
    /// come by keyword.
    func checkArguments(count: Int, required: Int, names: some Collection<String>) throws {
        if request.args.count > count {
            let takes = required < count ? "from \(required) to \(count)" : "\(count)"
            throw PythonException.typeError(
                "\(request.name)() takes \(takes) positional argument\(count == 1 ? "" : "s") but \(request.args.count) were given")
        }
        for key in request.kwargs.keys where !names.contains(key) {
            throw PythonException.typeError("\(request.name)() got an unexpected keyword argument '\(key)'")
        }
    }

    /// The argument at `position`, or the keyword argument `name`, or `defaultValue` when neither was sent: a Python
    /// parameter with a default (`def flaky(self, n, countdown=0.1)`). Throws Python's `TypeError` when it was sent
    /// with another type.
    public func argument<Value: CeleryValueDecodable>(
        _ position: Int, name: String, default defaultValue: Value
    ) throws -> Value {
        guard position < request.args.count || request.kwargs[name] != nil else { return defaultValue }
        return try argument(position, name: name)
    }

    /// The error to throw to run this task again later, as Python's `raise self.retry(...)`:
    /// `throw context.retry(countdown: 0.1)`. See ``RetryTask``.
    public func retry(
        countdown: Double? = nil, eta: Double? = nil, maxRetries: Int? = nil, cause: (any Error)? = nil
    ) -> RetryTask {
        RetryTask(countdown: countdown, eta: eta, maxRetries: maxRetries, cause: cause)
    }

    /// The error to throw to replace this task with a task, chain, group or chord, as Python's
    /// `raise self.replace(sig)`: `throw context.replace(with: Signature(task: "tasks.add", args: [1, 2]))`. See
    /// ``ReplaceTask``.
    public func replace(with signature: Signature) -> ReplaceTask {
        ReplaceTask(with: signature)
    }

    /// Stores a custom state with its meta while the task runs, as Python's `self.update_state(state=…, meta=…)`
    /// (for example `PROGRESS` with `{"current": 1, "total": 5}`). A stored `SUCCESS` is never overwritten.
    public func updateState(_ state: TaskState, meta: CeleryValue = .null) async throws {
        try await stateReporter.report(state, meta: meta, for: request)
    }

    /// Records `node` among what this task sent (a process-pool child's send, relayed to the worker).
    func recordChild(_ node: CeleryValue) {
        stateReporter.recordChild(node, for: request)
    }
}

/// Stores the states a running task reports (``TaskContext/updateState(_:meta:)``).
protocol TaskStateReporter: Sendable {
    func report(_ state: TaskState, meta: CeleryValue, for request: TaskRequest) async throws
    /// Records what the task sent (the node Celery lists in its `children`) for its result.
    func recordChild(_ node: CeleryValue, for request: TaskRequest)
}

/// For a task whose results are not stored: its states and children are not either.
struct IgnoredStates: TaskStateReporter {
    func report(_ state: TaskState, meta: CeleryValue, for request: TaskRequest) async throws {}
    func recordChild(_ node: CeleryValue, for request: TaskRequest) {}
}
