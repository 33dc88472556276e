import ArgumentParser
import CeleryProtocol
import CeleryWorker
import Foundation
import Logging
import ServiceLifecycle
import Synchronization
import UnixSignals

@main
struct SwiftCeleryWorker: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "swift-celery-worker",
        abstract: "A Celery worker in Swift: runs Swift tasks sent by Python's .delay() over Redis.",
        version: WorkerCommand.version,
        subcommands: [WorkerCommand.self],
        defaultSubcommand: WorkerCommand.self
    )
}

struct WorkerCommand: AsyncParsableCommand {
    static let version = "0.1.0"
    static let configuration = CommandConfiguration(
        commandName: "worker",
        abstract: "Start a worker (the default command)."
    )

    @Option(
        name: [.customShort("b"), .customLong("broker")],
        help: "Broker URL, redis://[[user]:password@]host[:port][/db] or unix:///path (default: $CELERY_BROKER_URL, else redis://localhost:6379/0).")
    var broker: String?

    @Option(
        name: .customLong("result-backend"),
        help: "Result backend URL (default: $CELERY_RESULT_BACKEND; without one, results are not stored).")
    var resultBackend: String?

    @Option(name: [.customShort("Q"), .customLong("queues")], help: "Comma-separated queues to consume.")
    var queues: String = "celery"

    @Option(name: [.customShort("c"), .customLong("concurrency")], help: "Tasks run at once (default: the number of cores).")
    var concurrency: Int?

    @Option(name: [.customShort("l"), .customLong("loglevel")], help: "DEBUG, INFO, WARNING, ERROR, CRITICAL or FATAL.")
    var loglevel: String = "INFO"

    @Option(name: [.customShort("n"), .customLong("hostname")], help: "Node name; %h expands to the host name (default celery@%h).")
    var hostname: String?

    @Option(name: .customLong("prefetch-multiplier"), help: "Messages reserved per unit of concurrency (0: no limit).")
    var prefetchMultiplier: Int = 4

    @Flag(name: .customLong("acks-late"), help: "Acknowledge after the task has finished and its result is stored.")
    var acksLate = false

    @Option(name: .customLong("result-serializer"), help: "json or msgpack; must match the Python clients' result_serializer.")
    var resultSerializer: String = "json"

    @Option(name: .customLong("result-expires"), help: "Seconds results are kept; 0 keeps them forever.")
    var resultExpires: Int = 86_400

    @Option(name: .customLong("visibility-timeout"), help: "Seconds before an unacknowledged message is redelivered.")
    var visibilityTimeout: Double = 3_600

    @Flag(name: [.customShort("E"), .customLong("task-events")], help: "Send task events (not implemented yet).")
    var taskEvents = false

    @Option(name: [.customShort("f"), .customLong("logfile")], help: "Write the log to this file instead of standard error.")
    var logfile: String?

    static let levels: [String: Logger.Level] = [
        "DEBUG": .debug, "INFO": .info, "WARNING": .warning, "WARN": .warning, "ERROR": .error,
        "CRITICAL": .critical, "FATAL": .critical,
    ]

    var environment: [String: String] { ProcessInfo.processInfo.environment }

    func validate() throws {
        guard Self.levels[loglevel.uppercased()] != nil else {
            throw ValidationError("Invalid log level '\(loglevel)': choose one of DEBUG, INFO, WARNING, ERROR, CRITICAL.")
        }
        if let concurrency, concurrency < 1 {
            throw ValidationError("--concurrency must be at least 1, got \(concurrency).")
        }
        guard prefetchMultiplier >= 0 else { throw ValidationError("--prefetch-multiplier must be 0 or more.") }
        guard resultExpires >= 0 else { throw ValidationError("--result-expires must be 0 or more seconds.") }
        guard visibilityTimeout > 0 else { throw ValidationError("--visibility-timeout must be more than 0 seconds.") }
        guard CeleryContentType(name: resultSerializer) != nil else {
            throw ValidationError("--result-serializer must be json or msgpack, got '\(resultSerializer)'.")
        }
        guard !parsedQueues.isEmpty else { throw ValidationError("-Q needs at least one queue name.") }
        do {
            _ = try RedisURL(parsing: brokerText)
            if let backend = backendText { _ = try RedisURL(parsing: backend) }
        } catch {
            throw ValidationError(error.message)
        }
    }

    var brokerText: String { broker ?? environment["CELERY_BROKER_URL"] ?? "redis://localhost:6379/0" }
    var backendText: String? {
        let text = resultBackend ?? environment["CELERY_RESULT_BACKEND"]
        return (text?.isEmpty ?? true) ? nil : text
    }
    var parsedQueues: [String] {
        queues.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }

    func run() async throws {
        let level = Self.levels[loglevel.uppercased()] ?? .info
        let sink = try logfile.map { try CeleryLogHandler.Sink(appendingTo: $0) } ?? .standardError
        LoggingSystem.bootstrap { label in CeleryLogHandler(label: label, sink: sink, level: level) }
        let logger = Logger(label: "celery.worker")

        let configuration = WorkerConfiguration(
            brokerURL: try RedisURL(parsing: brokerText),
            resultBackendURL: try backendText.map { try RedisURL(parsing: $0) },
            queues: parsedQueues,
            concurrency: concurrency ?? WorkerConfiguration.defaultConcurrency,
            prefetchMultiplier: prefetchMultiplier,
            acksLate: acksLate,
            resultSerializer: CeleryContentType(name: resultSerializer) ?? .json,
            resultExpires: resultExpires,
            visibilityTimeout: visibilityTimeout,
            sendTaskEvents: taskEvents,
            nodeName: hostname.map(WorkerConfiguration.nodeName(expanding:)) ?? WorkerConfiguration.defaultNodeName
        )
        var registry = TaskRegistry()
        DemoTasks.register(in: &registry)

        FileHandle.standardOutput.write(
            Data(
                Banner.text(configuration: configuration, taskNames: registry.names, version: Self.version).utf8))
        if taskEvents {
            logger.warning("-E/--task-events is accepted but does nothing yet: this worker sends no events.")
        }

        let worker = CeleryWorkerService(configuration: configuration, registry: registry, logger: logger)
        let signals = SignalWatcher(logger: logger)
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(
                services: [
                    .init(
                        service: signals, successTerminationBehavior: .gracefullyShutdownGroup,
                        failureTerminationBehavior: .cancelGroup),
                    .init(
                        service: worker, successTerminationBehavior: .gracefullyShutdownGroup,
                        failureTerminationBehavior: .cancelGroup),
                ],
                logger: Logger(label: "celery.lifecycle", factory: { _ in SwiftLogNoOpLogHandler() })
            ))
        signals.attach(group)
        do {
            try await group.run()
        } catch is ColdShutdown {
            // Cancellation already stopped the worker.
        }
        throw ExitCode(signals.exitCode)
    }
}

/// Thrown by the signal watcher to cancel the service group: Celery's cold shutdown.
struct ColdShutdown: Error {}

/// Celery's signal contract: SIGTERM warm shutdown (exit 0), SIGINT warm shutdown (exit 1), SIGQUIT or a second
/// SIGTERM/SIGINT cold shutdown (exit 1).
final class SignalWatcher: Service {
    private struct State {
        var group: ServiceGroup?
        var exitCode: Int32 = 0
        var warm = false
    }

    private let state = Mutex(State())
    let logger: Logger

    init(logger: Logger) {
        self.logger = logger
    }

    func attach(_ group: ServiceGroup) {
        state.withLock { $0.group = group }
    }

    var exitCode: Int32 { state.withLock { $0.exitCode } }

    func run() async throws {
        let signals = await UnixSignalsSequence(trapping: .sigterm, .sigint, .sigquit)
        for await signal in signals.cancelOnGracefulShutdown() {
            let (group, alreadyWarm) = state.withLock { state -> (ServiceGroup?, Bool) in
                let previous = state.warm
                state.warm = true
                if signal == .sigint || signal == .sigquit || previous { state.exitCode = 1 }
                return (state.group, previous)
            }
            if signal == .sigquit || alreadyWarm {
                logger.warning("worker: Cold shutdown (MainProcess)")
                throw ColdShutdown()
            }
            logger.warning("worker: Warm shutdown (MainProcess)")
            await group?.triggerGracefulShutdown()
        }
    }
}
