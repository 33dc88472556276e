import CeleryProtocol
import Logging

/// Per-task settings, each defaulting to the worker's (Celery's task attributes of the same names).
public struct TaskOptions: Sendable {
    /// Never store this task's result (`ignore_result`); a message's own `ignore_result` header wins when set.
    public var ignoreResult: Bool
    /// Acknowledge after the task finished and its result is stored (`acks_late`); `nil` uses the worker's
    /// `--acks-late`.
    public var acksLate: Bool?
    /// Retries allowed before the task fails (`max_retries`, default 3); `nil` retries forever.
    public var maxRetries: Int?
    /// Seconds before a retry that names no countdown or ETA (`default_retry_delay`, default 180).
    public var defaultRetryDelay: Double
    /// Automatic retries on chosen errors, with back-off.
    public var retryPolicy: RetryPolicy
    /// Store STARTED before the body runs (`track_started`); `nil` uses the worker's setting.
    public var trackStarted: Bool?
    /// Seconds after which the task is cancelled (`soft_time_limit`); `nil` uses the worker's. A task that stops
    /// because of it fails with `SoftTimeLimitExceeded`; one that handles the cancellation may still return.
    public var softTimeLimit: Double?
    /// Seconds after which the task is killed (`time_limit`); `nil` uses the worker's. Enforced by the process
    /// pool only (`--pool process`): a thread cannot be stopped from outside.
    public var timeLimit: Double?
    /// At most this many tasks of this type start per second, minute or hour (`rate_limit`: `"10/s"`, `"100/m"`,
    /// `"1000/h"`, a bare number per second). `nil`: no limit.
    public var rateLimit: String?
    /// With acks-late, a message whose pool process was lost (`--pool process`: the child crashed or was killed)
    /// goes back to its queue to run again, and no FAILURE is stored (`reject_on_worker_lost`); `nil` uses the
    /// worker's setting. As in Python, a task that always kills its process then runs again and again.
    public var rejectOnWorkerLost: Bool?
    /// A task whose pool process was lost is retried, as `Task.retry` would (`default_retry_delay`, `max_retries`;
    /// the loss is its FAILURE once they run out), whatever acks-late says (Celery 5.7's `retry_on_worker_lost`,
    /// which takes precedence over ``rejectOnWorkerLost``); `nil` uses the worker's setting.
    public var retryOnWorkerLost: Bool?
    /// Store FAILURE and RETRY even when the result is ignored (`store_errors_even_if_ignored`); `nil` uses the
    /// worker's setting.
    public var storeErrorsEvenIfIgnored: Bool?

    public init(
        ignoreResult: Bool = false, acksLate: Bool? = nil, maxRetries: Int? = 3, defaultRetryDelay: Double = 180,
        retryPolicy: RetryPolicy = RetryPolicy(), trackStarted: Bool? = nil, softTimeLimit: Double? = nil,
        timeLimit: Double? = nil, rateLimit: String? = nil, rejectOnWorkerLost: Bool? = nil, retryOnWorkerLost: Bool? = nil,
        storeErrorsEvenIfIgnored: Bool? = nil
    ) {
        self.ignoreResult = ignoreResult
        self.acksLate = acksLate
        self.maxRetries = maxRetries
        self.defaultRetryDelay = defaultRetryDelay
        self.retryPolicy = retryPolicy
        self.trackStarted = trackStarted
        self.softTimeLimit = softTimeLimit
        self.timeLimit = timeLimit
        self.rateLimit = rateLimit
        self.rejectOnWorkerLost = rejectOnWorkerLost
        self.retryOnWorkerLost = retryOnWorkerLost
        self.storeErrorsEvenIfIgnored = storeErrorsEvenIfIgnored
    }
}

/// A task the worker can run.
public struct RegisteredTask: Sendable {
    /// The name producers send (`headers.task`).
    public let name: String
    public let options: TaskOptions
    let handler: @Sendable (TaskContext) async throws -> CeleryValue
    /// For an errback registered with ``TaskRegistry/registerErrback(_:options:_:)``: its call in the worker of the
    /// failed task.
    var errback: (@Sendable (ErrbackCall) async throws -> Void)? = nil
}

/// A new-style errback's call, as Celery calls an errback task whose function takes `(request, exc, traceback)`: in
/// the worker where the linked task failed, at once, instead of sending it a message.
public struct ErrbackCall: Sendable {
    /// The failed task's id, name and arguments (`request.id`, `request.task`, `request.args`, `request.kwargs`); for
    /// a chord whose join failed, its body's, as Celery's stand-in request gives them.
    public let taskID: String
    public let taskName: String
    public let taskArgs: [CeleryValue]
    public let taskKwargs: CeleryObject
    /// The exception it failed with (`exc`), and its traceback as stored (`nil` for a chord's join error, as in
    /// Celery).
    public let exception: CeleryExceptionInfo
    public let traceback: String?
    /// The errback signature's own arguments, which Python passes after those three.
    public internal(set) var args: [CeleryValue] = []
    public internal(set) var kwargs: CeleryObject = [:]
    /// The worker's logger.
    public let logger: Logger
}

/// The tasks a worker runs, by name. Register typed closures: positional arguments (and keyword arguments named in
/// `parameters`) are converted to the closure's parameter types, and the return value becomes the result.
///
/// ```swift
/// var tasks = TaskRegistry()
/// tasks.register("tasks.add", parameters: ["x", "y"]) { (_, x: Int, y: Int) in x + y }
/// tasks.register("seed_email") { _ in
///     try await Task.sleep(for: .seconds(1))
///     return "我将发送邮件"
/// }
/// ```
public struct TaskRegistry: Sendable {
    private var tasks: [String: RegisteredTask] = [:]
    /// Celery's signals: receivers of yours for points in a task's life or the worker's (``WorkerSignals``).
    public var signals = WorkerSignals()

    public init() {}

    /// The registered names, sorted as `inspect registered` lists them.
    public var names: [String] { tasks.keys.sorted() }

    /// Replaces every registered task's options with what `transform` makes of the task.
    mutating func mapOptions(_ transform: (RegisteredTask) -> TaskOptions) {
        for (name, task) in tasks {
            tasks[name] = RegisteredTask(name: task.name, options: transform(task), handler: task.handler, errback: task.errback)
        }
    }

    /// The task registered under `name`.
    public subscript(name: String) -> RegisteredTask? {
        if let task = tasks[name] { return task }
        return Self.builtin(named: name)
    }

    /// Out of line: a registered task's lookup (every message) does not carry the built-ins' table.
    @inline(never)
    static func builtin(named name: String) -> RegisteredTask? { builtins[name] }

    /// Celery's built-in tasks that a Swift worker may be sent: `celery.accumulate`, the body that
    /// ``ReplaceTask`` (and Python's `Task.replace`) gives a group (`accumulate(*args, index=None)`: `args[index]`,
    /// or all of `args`). Like Python's, they run when named but are not listed (`names`, the banner, `registered`).
    static let builtins: [String: RegisteredTask] = [
        "celery.accumulate": RegisteredTask(name: "celery.accumulate", options: TaskOptions()) { context in
            let args = context.request.args
            guard let index = context.request.kwargs["index"], index != .null else { return .array(args) }
            guard let index = index.intValue, case let position = index < 0 ? args.count + index : index,
                args.indices.contains(position)
            else {
                throw PythonException(type: "IndexError", message: "tuple index out of range")
            }
            return args[position]
        }
    ]

    /// Registers a new-style errback, as a Python task whose function takes `(request, exc, traceback)`: when a task
    /// that links it as an error callback (`link_error`) fails on this worker, `body` runs here at once with the failed
    /// task's request, exception and traceback (``ErrbackCall``), and no message is sent. An error it throws is
    /// logged. Sent as a message (by a worker that does not have it, as Celery sends one it cannot call), it fails as
    /// Python's function would: a `TypeError` for the two arguments it is missing.
    public mutating func registerErrback(
        _ name: String, options: TaskOptions = TaskOptions(), _ body: @escaping @Sendable (ErrbackCall) async throws -> Void
    ) {
        let function = name.split(separator: ".").last.map(String.init) ?? name
        var task = RegisteredTask(name: name, options: options) { _ in
            throw PythonException.typeError("\(function)() missing 2 required positional arguments: 'exc' and 'traceback'")
        }
        task.errback = body
        tasks[name] = task
    }

    /// Registers a task that reads its arguments from the context itself (`context.request.args`,
    /// `context.argument(_:name:)`); `context.checkArguments(_:required:)` rejects arguments it does not take, as the
    /// typed variants do.
    public mutating func register<Result: CeleryValueEncodable>(
        _ name: String, options: TaskOptions = TaskOptions(),
        _ body: @escaping @Sendable (TaskContext) async throws -> Result
    ) {
        tasks[name] = RegisteredTask(name: name, options: options) { context in
            try await body(context).celeryValue
        }
    }

    /// Registers a task of one argument.
    public mutating func register<A: CeleryValueDecodable, Result: CeleryValueEncodable>(
        _ name: String, parameters: [String] = [], options: TaskOptions = TaskOptions(),
        _ body: @escaping @Sendable (TaskContext, A) async throws -> Result
    ) {
        tasks[name] = RegisteredTask(name: name, options: options) { context in
            try Self.checkArity(context, count: 1, parameters: parameters)
            let a: A = try context.argument(0, name: parameters.first)
            return try await body(context, a).celeryValue
        }
    }

    /// Registers a task of two arguments.
    public mutating func register<A: CeleryValueDecodable, B: CeleryValueDecodable, Result: CeleryValueEncodable>(
        _ name: String, parameters: [String] = [], options: TaskOptions = TaskOptions(),
        _ body: @escaping @Sendable (TaskContext, A, B) async throws -> Result
    ) {
        tasks[name] = RegisteredTask(name: name, options: options) { context in
            try Self.checkArity(context, count: 2, parameters: parameters)
            let a: A = try context.argument(0, name: parameters.first)
            let b: B = try context.argument(1, name: parameters.dropFirst().first)
            return try await body(context, a, b).celeryValue
        }
    }

    /// Registers a task of three arguments.
    public mutating func register<
        A: CeleryValueDecodable, B: CeleryValueDecodable, C: CeleryValueDecodable, Result: CeleryValueEncodable
    >(
        _ name: String, parameters: [String] = [], options: TaskOptions = TaskOptions(),
        _ body: @escaping @Sendable (TaskContext, A, B, C) async throws -> Result
    ) {
        tasks[name] = RegisteredTask(name: name, options: options) { context in
            try Self.checkArity(context, count: 3, parameters: parameters)
            let a: A = try context.argument(0, name: parameters.first)
            let b: B = try context.argument(1, name: parameters.dropFirst().first)
            let c: C = try context.argument(2, name: parameters.dropFirst(2).first)
            return try await body(context, a, b, c).celeryValue
        }
    }

    /// Python's `TypeError` for too many positional arguments or unknown keyword arguments.
    private static func checkArity(_ context: TaskContext, count: Int, parameters: [String]) throws {
        try context.checkArguments(count: count, required: count, names: parameters.prefix(count))
    }
}
