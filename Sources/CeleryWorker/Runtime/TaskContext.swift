import CeleryProtocol
import Logging

/// Handed to every task: the request, a logger that tags lines with the task, and ways to report state.
public struct TaskContext: Sendable {
    /// The request being run.
    public let request: TaskRequest
    /// A logger whose metadata names the task (`celery.task.id`, `celery.task.name`).
    public let logger: Logger
    let stateReporter: @Sendable (TaskState, CeleryValue) async throws -> Void

    init(
        request: TaskRequest, logger: Logger,
        stateReporter: @escaping @Sendable (TaskState, CeleryValue) async throws -> Void
    ) {
        self.request = request
        self.logger = logger
        self.stateReporter = stateReporter
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

    /// The error to throw to run this task again later, as Python's `raise self.retry(...)`:
    /// `throw context.retry(countdown: 0.1)`. See ``RetryTask``.
    public func retry(
        countdown: Double? = nil, eta: Double? = nil, maxRetries: Int? = nil, cause: (any Error)? = nil
    ) -> RetryTask {
        RetryTask(countdown: countdown, eta: eta, maxRetries: maxRetries, cause: cause)
    }

    /// Stores a custom state with its meta while the task runs, as Python's `self.update_state(state=…, meta=…)`
    /// (for example `PROGRESS` with `{"current": 1, "total": 5}`). A stored `SUCCESS` is never overwritten.
    public func updateState(_ state: TaskState, meta: CeleryValue = .null) async throws {
        try await stateReporter(state, meta)
    }
}
