import CeleryProtocol
import Logging

/// Celery's signals (`celery.signals`) for a Swift worker: code of yours that runs at points in a task's life or the
/// worker's, connected on the registry as Python connects receivers (`task_prerun.connect(receiver)`):
///
/// ```swift
/// var tasks = TaskRegistry()
/// tasks.signals.onTaskPrerun { request in print("starting \(request.name)[\(request.id)]") }
/// tasks.signals.onTaskFailure { failure in report(failure.exception.repr, failure.traceback) }
/// ```
///
/// Each signal is sent where and when Celery's worker sends it, in the worker's process (see each `on…` method);
/// its receivers run in the order they were connected, awaited one after the other. A receiver that throws is
/// logged (`Signal handler … raised: …`) and the others still run, as in Celery. With `--pool process` a task's body
/// runs in a child process but the signals of its task are sent in the worker's process, which stores its result;
/// ``onWorkerProcessInit(_:)`` runs in each child as it starts. A worker with no receivers pays one check per point.
public struct WorkerSignals: Sendable {
    /// A receiver of the event a signal carries.
    public typealias Receiver<Event> = @Sendable (Event) async throws -> Void

    var taskReceived: [Receiver<TaskRequest>] = []
    var taskPrerun: [Receiver<TaskRequest>] = []
    var taskPostrun: [Receiver<TaskPostrun>] = []
    var taskSuccess: [Receiver<TaskSuccess>] = []
    var taskFailure: [Receiver<TaskFailure>] = []
    var taskRetry: [Receiver<TaskRetry>] = []
    var taskRevoked: [Receiver<TaskRevoked>] = []
    var workerReady: [Receiver<WorkerEvent>] = []
    var workerShutdown: [Receiver<WorkerEvent>] = []
    var workerShuttingDown: [Receiver<WorkerShuttingDown>] = []
    var workerInit: [Receiver<WorkerEvent>] = []
    var beatInit: [Receiver<WorkerEvent>] = []
    var beatEmbeddedInit: [Receiver<WorkerEvent>] = []
    var workerProcessInit: [Receiver<WorkerEvent>] = []
    var workerProcessShutdown: [Receiver<WorkerEvent>] = []
    var heartbeatSent: [Receiver<WorkerEvent>] = []
    var taskUnknown: [Receiver<TaskUnknown>] = []
    var taskRejected: [Receiver<TaskRejected>] = []
    var beforeTaskPublish: [@Sendable (inout TaskPublish) async throws -> Void] = []
    var afterTaskPublish: [Receiver<TaskPublish>] = []
    var setupLogging: [Receiver<SetupLogging>] = []

    public init() {}

    /// Whether any of the task signals has a receiver.
    var hasTaskReceivers: Bool {
        !(taskReceived.isEmpty && taskPrerun.isEmpty && taskPostrun.isEmpty && taskSuccess.isEmpty && taskFailure.isEmpty
            && taskRetry.isEmpty && taskRevoked.isEmpty && taskUnknown.isEmpty && taskRejected.isEmpty)
    }

    /// Celery's `task_received`: a task was received and will run once a slot (and its ETA) allows, after the
    /// `Task … received` log line, before the `task-received` event. Not sent for a task that is revoked or expired
    /// on arrival.
    public mutating func onTaskReceived(_ receiver: @escaping Receiver<TaskRequest>) { taskReceived.append(receiver) }

    /// Celery's `task_prerun`: the task is about to run, before `track_started` stores STARTED.
    public mutating func onTaskPrerun(_ receiver: @escaping Receiver<TaskRequest>) { taskPrerun.append(receiver) }

    /// Celery's `task_postrun`: the task ran and its outcome was handled (stored, retried, rejected or ignored),
    /// before an acks-late message is acknowledged. Not sent when the task was terminated by a revoke or interrupted
    /// by a cold shutdown.
    public mutating func onTaskPostrun(_ receiver: @escaping Receiver<TaskPostrun>) { taskPostrun.append(receiver) }

    /// Celery's `task_success`: the task returned and its result was handed to the result backend (the follow-up
    /// tasks sent first, as in Celery), before the `succeeded` log line.
    public mutating func onTaskSuccess(_ receiver: @escaping Receiver<TaskSuccess>) { taskSuccess.append(receiver) }

    /// Celery's `task_failure`: the task failed (retries exhausted, if it retried) and its FAILURE was stored, before
    /// the error is logged.
    public mutating func onTaskFailure(_ receiver: @escaping Receiver<TaskFailure>) { taskFailure.append(receiver) }

    /// Celery's `task_retry`: the task asked for a retry, the retry was sent and RETRY stored.
    public mutating func onTaskRetry(_ receiver: @escaping Receiver<TaskRetry>) { taskRetry.append(receiver) }

    /// Celery's `task_revoked`: the task was revoked (by id or stamp, before it ran), expired, or terminated while it
    /// ran; REVOKED was stored.
    public mutating func onTaskRevoked(_ receiver: @escaping Receiver<TaskRevoked>) { taskRevoked.append(receiver) }

    /// Celery's `worker_ready`: the worker consumes, right after it logs `ready.`.
    public mutating func onWorkerReady(_ receiver: @escaping Receiver<WorkerEvent>) { workerReady.append(receiver) }

    /// Celery's `worker_init`: the worker is about to start (``CeleryWorkerService/run()`` was called), before it
    /// connects to the broker or runs anything.
    public mutating func onWorkerInit(_ receiver: @escaping Receiver<WorkerEvent>) { workerInit.append(receiver) }

    /// Celery's `beat_init`: beat starts (`swift-celery-worker beat`, a worker's `-B`, or a ``BeatService`` given these
    /// signals), right after `beat: Starting...`; the event's `hostname` is the name beat's lock knows it by.
    public mutating func onBeatInit(_ receiver: @escaping Receiver<WorkerEvent>) { beatInit.append(receiver) }

    /// Celery's `beat_embedded_init`: beat starts inside a worker (`-B`), after `beat_init`.
    public mutating func onBeatEmbeddedInit(_ receiver: @escaping Receiver<WorkerEvent>) { beatEmbeddedInit.append(receiver) }

    /// Celery's `worker_shutting_down`: a shutdown signal (`SIGTERM`, `SIGINT`, `SIGQUIT`) came, with the signal's name,
    /// `Warm` or `Cold` and the exit code Celery's handler names for it; sent after the `worker: Warm shutdown` line,
    /// before the worker stops taking tasks, for each such signal, as Celery's handlers send it. Sent by
    /// `CeleryWorkerProgram`'s signal handling; a program that handles signals itself calls
    /// ``CeleryWorkerService/shuttingDown(_:)``.
    public mutating func onWorkerShuttingDown(_ receiver: @escaping Receiver<WorkerShuttingDown>) { workerShuttingDown.append(receiver) }

    /// Celery's `worker_shutdown`: the worker stopped consuming and gave back what it held, before it exits.
    public mutating func onWorkerShutdown(_ receiver: @escaping Receiver<WorkerEvent>) { workerShutdown.append(receiver) }

    /// Celery's `worker_process_init`: a process-pool child (`--pool process`) starts, before it takes its first task;
    /// runs in the child, for what each process needs of its own (connections, say).
    public mutating func onWorkerProcessInit(_ receiver: @escaping Receiver<WorkerEvent>) { workerProcessInit.append(receiver) }

    /// Celery's `worker_process_shutdown`: a process-pool child is about to exit (its worker stops, or replaces it
    /// after `--max-tasks-per-child`); runs in the child. Not sent for a child that crashed or was killed.
    public mutating func onWorkerProcessShutdown(_ receiver: @escaping Receiver<WorkerEvent>) { workerProcessShutdown.append(receiver) }

    /// Celery's `heartbeat_sent`: the worker sent a `worker-heartbeat` event (every 2 s by default).
    public mutating func onHeartbeatSent(_ receiver: @escaping Receiver<WorkerEvent>) { heartbeatSent.append(receiver) }

    /// Celery's `task_unknown`: a message named a task this worker does not have; FAILURE `NotRegistered` was stored
    /// and the message discarded.
    public mutating func onTaskUnknown(_ receiver: @escaping Receiver<TaskUnknown>) { taskUnknown.append(receiver) }

    /// Celery's `task_rejected`: a message could not be read as a task (invalid fields, an unknown content type, a
    /// body that does not decode); it was discarded, and a FAILURE stored when it had a task id.
    public mutating func onTaskRejected(_ receiver: @escaping Receiver<TaskRejected>) { taskRejected.append(receiver) }

    /// Celery's `before_task_publish`: a task message is about to be published (by a ``CeleryClient`` given these
    /// signals, or by the worker: `context.send`, callbacks, chain steps, retries). A receiver may change the
    /// message's headers (to carry a trace, say), as Python's receivers change the `headers` they are given.
    public mutating func onBeforeTaskPublish(_ receiver: @escaping @Sendable (inout TaskPublish) async throws -> Void) {
        beforeTaskPublish.append(receiver)
    }

    /// Celery's `after_task_publish`: a task message was published.
    public mutating func onAfterTaskPublish(_ receiver: @escaping Receiver<TaskPublish>) { afterTaskPublish.append(receiver) }

    /// Celery's `setup_logging`: the program is about to set up logging for this process (the worker, each
    /// `--pool process` child, `beat`), before it logs anything. With a receiver connected the program sets up
    /// nothing, as Celery leaves logging to such receivers: the receiver calls `LoggingSystem.bootstrap` itself. The
    /// event says what the program would have set up (the level, the log file, the formats) and makes the handler it
    /// would have used (``SetupLogging/celeryHandler(label:)``): keep Celery's lines beside a handler of your own
    /// with swift-log's `MultiplexLogHandler`, as Celery's `after_setup_logger` receivers add handlers.
    public mutating func onSetupLogging(_ receiver: @escaping Receiver<SetupLogging>) { setupLogging.append(receiver) }

    /// Sets up logging for this process as Celery's `app.log.setup` does: `setup_logging`'s receivers, or else
    /// `LoggingSystem.bootstrap` with ``CeleryLogHandler``. Once per process, before anything is logged.
    public func setUpLogging(_ setup: SetupLogging) async {
        guard !setupLogging.isEmpty else {
            LoggingSystem.bootstrap { setup.celeryHandler(label: $0) }
            return
        }
        for receiver in setupLogging {
            do {
                try await receiver(setup)
            } catch {
                // Logging may not be set up: the line goes where Celery's would have gone.
                setup.sink.write("Signal handler for setup_logging raised: \(CeleryExceptionInfo(error: error).repr)\n")
            }
        }
    }

    /// Publishes `envelope` with `publish`, with `before_task_publish` first (its receivers' headers go out) and
    /// `after_task_publish` after. With no receivers, just `publish`.
    func publishing(
        _ envelope: KombuEnvelope, queue: String, logger: Logger,
        _ publish: (KombuEnvelope) async throws(CeleryWorkerError) -> Void
    ) async throws(CeleryWorkerError) {
        guard !(beforeTaskPublish.isEmpty && afterTaskPublish.isEmpty) else { return try await publish(envelope) }
        var event = TaskPublish(
            task: envelope.headers["task"]?.stringValue ?? "", id: envelope.headers["id"]?.stringValue ?? "",
            exchange: envelope.deliveryInfo.exchange, routingKey: envelope.deliveryInfo.routingKey, queue: queue,
            headers: envelope.headers)
        for receiver in beforeTaskPublish {
            do {
                try await receiver(&event)
            } catch {
                logger.error("Signal handler for before_task_publish raised: \(CeleryExceptionInfo(error: error).repr)")
            }
        }
        var sent = envelope
        sent.headers = event.headers
        try await publish(sent)
        await Self.send(afterTaskPublish, event, signal: "after_task_publish", logger: logger)
    }

    /// Runs `receivers` in order with `event`, logging what any of them throws as Celery's `Signal.send` does.
    static func send<Event>(_ receivers: [Receiver<Event>], _ event: Event, signal: String, logger: Logger) async {
        for receiver in receivers {
            do {
                try await receiver(event)
            } catch {
                logger.error("Signal handler for \(signal) raised: \(CeleryExceptionInfo(error: error).repr)")
            }
        }
    }
}

extension WorkerSignals {
    /// `setup_logging`'s event: what the program would set up (Celery's `loglevel`, `logfile` and `format`).
    public struct SetupLogging: Sendable {
        /// `-l`/`--loglevel`.
        public let level: Logger.Level
        /// `-f`/`--logfile` (or `worker_logfile`, `beat_logfile`); `nil`: standard error.
        public let logfile: String?
        /// `worker_log_format` and `worker_task_log_format`.
        public let format: LogFormat
        public let taskFormat: LogFormat
        /// `MainProcess`, or `ForkPoolWorker-N` in a process-pool child.
        public let processName: String
        /// Where the program's lines go: ``logfile``, opened, or standard error.
        public let sink: CeleryLogHandler.Sink

        public init(
            level: Logger.Level, logfile: String?, sink: CeleryLogHandler.Sink, format: LogFormat = .worker,
            taskFormat: LogFormat = .task, processName: String = "MainProcess"
        ) {
            self.level = level
            self.logfile = logfile
            self.sink = sink
            self.format = format
            self.taskFormat = taskFormat
            self.processName = processName
        }

        /// The handler the program makes for each logger when no receiver is connected: Celery's lines, at
        /// ``level``, to ``sink``.
        public func celeryHandler(label: String) -> CeleryLogHandler {
            CeleryLogHandler(label: label, sink: sink, level: level, processName: processName, format: format, taskFormat: taskFormat)
        }
    }

    /// `task_postrun`'s event.
    public struct TaskPostrun: Sendable {
        public let request: TaskRequest
        /// `SUCCESS`, `FAILURE`, `RETRY`, `REJECTED` or `IGNORED`, as Celery's `state` argument.
        public let state: TaskState
        /// What the task returned (`SUCCESS`), else its exception as Celery stores one (`exc_type`, `exc_message`,
        /// `exc_module`).
        public let result: CeleryValue
    }

    /// `task_success`'s event.
    public struct TaskSuccess: Sendable {
        public let request: TaskRequest
        /// What the task returned.
        public let result: CeleryValue
        /// Seconds the body ran (Celery 5.7's `runtime`).
        public let runtime: Double
    }

    /// `task_failure`'s event.
    public struct TaskFailure: Sendable {
        public let request: TaskRequest
        /// The exception as stored (Python's class, module and arguments).
        public let exception: CeleryExceptionInfo
        /// The traceback stored with it, when there is one.
        public let traceback: String?
        /// The error the task threw (or the pool reported).
        public let error: any Error
    }

    /// `task_retry`'s event.
    public struct TaskRetry: Sendable {
        public let request: TaskRequest
        /// Celery's `reason`: `Retry in 5s`, with the cause when there is one (`Retry in 5s: KeyError('x')`).
        public let reason: String
        /// When the retry is due, in Unix seconds.
        public let eta: Double
    }

    /// `task_revoked`'s event.
    public struct TaskRevoked: Sendable {
        public let request: TaskRequest
        /// The task was running and was stopped (`revoke(terminate=True)`).
        public let terminated: Bool
        /// The signal named by the revoke that terminated it, else `nil`.
        public let signum: Int?
        /// The task's `expires` had passed.
        public let expired: Bool
    }

    /// `task_unknown`'s event.
    public struct TaskUnknown: Sendable {
        /// The task name the message gave.
        public let name: String
        /// The task id.
        public let id: String
        /// The message as it came from the broker (kombu's envelope, JSON).
        public let message: [UInt8]
    }

    /// `task_rejected`'s event.
    public struct TaskRejected: Sendable {
        /// The message as it came from the broker.
        public let message: [UInt8]
        /// Why it could not be read.
        public let reason: String
    }

    /// `before_task_publish`'s and `after_task_publish`'s event.
    public struct TaskPublish: Sendable {
        /// The task's name (Celery's `sender`).
        public let task: String
        /// The task id.
        public let id: String
        public let exchange: String
        public let routingKey: String
        /// The list it goes to.
        public let queue: String
        /// The message's headers; what a `before_task_publish` receiver leaves here is published.
        public var headers: CeleryObject
    }

    /// `worker_shutting_down`'s event.
    public struct WorkerShuttingDown: Sendable {
        /// What Celery's signal handler names.
        public struct Handler: Sendable, Equatable {
            /// The signal's name: `SIGTERM`, `SIGINT` or `SIGQUIT`.
            public let signal: String
            /// `Warm` or `Cold`.
            public let how: String
            /// The exit code the shutdown asks for.
            public let exitCode: Int32

            public init(signal: String, how: String, exitCode: Int32) {
                self.signal = signal
                self.how = how
                self.exitCode = exitCode
            }
        }

        /// The worker's node name (Celery's `sender`).
        public let hostname: String
        public let handler: Handler
    }

    /// The event of the worker's own signals.
    public struct WorkerEvent: Sendable {
        /// The worker's node name (`celery@host`).
        public let hostname: String
    }
}
