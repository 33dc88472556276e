import ArgumentParser
import CeleryProtocol
import CeleryWorker
import Foundation
import Logging
import Metrics
import Prometheus
import ServiceLifecycle
import Synchronization
import UnixSignals

/// The `swift-celery-worker` program with the tasks of your own: `worker` (the default), `beat`, `call`, `status`,
/// `inspect`, `control`, `purge` and `result`, with every flag, setting and behaviour the README describes for the
/// bundled program, which is built exactly so (`Sources/swift-celery-worker/main.swift`):
///
/// ```swift
/// import CeleryWorker
/// import CeleryWorkerCommand
///
/// var tasks = TaskRegistry()
/// tasks.register("tasks.add", parameters: ["x", "y"]) { (_, x: Int, y: Int) in x + y }
/// await CeleryWorkerProgram.main(tasks: tasks)
/// ```
///
/// The process pool (`--pool process`) starts the same program again for its children, which build the same
/// registry and serve their parent: nothing more to do.
public enum CeleryWorkerProgram {
    /// The tasks (and signal receivers) the worker runs.
    static let tasks = Mutex(TaskRegistry())

    /// Parses the command line, runs the command it names with `tasks`, and exits with its status (as `celery`'s).
    public static func main(tasks: TaskRegistry) async -> Never {
        // Standard input, output or error closed at start (`>&-`, a careless daemon): `/dev/null` takes its number,
        // as daemons do, or the first descriptors the worker opens (its event loop's, a Redis connection) would, and
        // its log lines would be written into them.
        for descriptor: Int32 in 0...2 where fcntl(descriptor, F_GETFD) < 0 {
            _ = open("/dev/null", O_RDWR)
        }
        // As Python ignores it at start: a write to a pipe whose reader is gone (a log collector that stopped, `| head`)
        // fails with `EPIPE` rather than ending the process without a word.
        _ = signal(SIGPIPE, SIG_IGN)
        self.tasks.withLock { $0 = tasks }
        await SwiftCeleryWorker.main()
        exit(0)
    }
}

struct SwiftCeleryWorker: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "swift-celery-worker",
        abstract: "A Celery worker in Swift: runs Swift tasks sent by Python's .delay() over Redis.",
        version: WorkerCommand.version,
        subcommands: [
            WorkerCommand.self, BeatCommand.self, CallCommand.self, StatusCommand.self, InspectCommand.self, ControlCommand.self,
            PurgeCommand.self, ResultCommand.self, MigrateCommand.self, EventsCommand.self, MultiCommand.self, CanvasDemoCommand.self,
        ],
        defaultSubcommand: WorkerCommand.self
    )

    /// ArgumentParser's own `main`, with one step first: the daemon options of `worker` and `beat` (`--uid`, `--gid`,
    /// `--umask`, `--detach`, and their settings) are acted on right after parsing, on the main thread before any other
    /// thread exists. glibc's setuid then has only this thread to change, and every thread made later inherits it.
    /// (From a worker thread, the main thread, parked by the concurrency runtime, kept root: `ps` showed the worker as
    /// root.)
    /// Runs the parsed command, which is handed over whole (ArgumentParser's `run` is not isolated to the caller).
    @concurrent
    private static func run(_ command: sending any ParsableCommand) async throws {
        var command = command
        if var asyncCommand = command as? any AsyncParsableCommand {
            try await asyncCommand.run()
        } else {
            try command.run()
        }
    }

    static func main() async {
        let arguments: [String]
        do {
            let names = Set(configuration.subcommands.compactMap { $0.configuration.commandName })
            arguments = try GlobalOptions.rewritten(Array(CommandLine.arguments.dropFirst()), commands: names)
        } catch {
            StandardStream.error.write("Error: \(error.message)\n")
            exit(withError: ExitCode(64))
        }
        do {
            let command = try parseAsRoot(arguments)
            if let daemon = command as? any DaemonCommand, !CeleryWorkerService.isPoolChild {
                try daemon.daemonPlan().carryOut()
            }
            let subcommand = type(of: command)
            do {
                try await run(command)
            } catch let error as ValidationError {
                // Found as the command ran (a config file or URL the client reads then): shown with the command's
                // usage, as ArgumentParser shows what `validate()` finds, not with the root command's.
                let name = subcommand.configuration.commandName ?? ""
                StandardStream.error.write(
                    "Error: \(error.message)\nUsage: \(usageString(for: subcommand))\n  See '\(configuration.commandName ?? "") \(name) --help' for more information.\n"
                )
                exit(withError: ExitCode(64))
            }
        } catch let failure as RemoteControlFailure {
            // Celery's CeleryCommandException: its message, and EX_UNAVAILABLE.
            StandardStream.error.write("Error: \(failure.message)\n")
            exit(withError: ExitCode(69))
        } catch {
            exit(withError: error)
        }
    }
}

struct WorkerCommand: AsyncParsableCommand, DaemonCommand {
    static let version = CeleryWorkerService.version
    static let configuration = CommandConfiguration(
        commandName: "worker",
        abstract: "Start a worker (the default command)."
    )

    @Option(
        name: [.customShort("b"), .customLong("broker")],
        help:
            "Broker URL, redis://[[user]:password@]host[:port][/db], rediss://… (TLS, with ssl_* parameters), sentinel://… or unix:///path (default: $CELERY_BROKER_URL, else redis://localhost:6379/0)."
    )
    var broker: String?

    @Option(
        name: .customLong("result-backend"),
        help: "Result backend URL (default: $CELERY_RESULT_BACKEND; without one, results are not stored).")
    var resultBackend: String?

    @Option(name: [.customShort("Q"), .customLong("queues")], help: "Comma-separated queues to consume (default: celery).")
    var queues: String?

    @Option(name: [.customShort("X"), .customLong("exclude-queues")], help: "Comma-separated queues not to consume, of those -Q names.")
    var excludeQueues: String?

    @Flag(
        name: [.customLong("purge"), .customLong("discard")],
        help: "Delete every message waiting in the worker's queues before it starts consuming.")
    var purge = false

    @Option(
        name: [.customShort("c"), .customLong("concurrency")], parsing: .unconditional, help: "Tasks run at once (default: the number of cores).")
    var concurrency: Int?

    @Option(name: [.customShort("l"), .customLong("loglevel")], help: "DEBUG, INFO, WARNING, ERROR, CRITICAL or FATAL.")
    var loglevel: String = "INFO"

    @Option(name: [.customShort("n"), .customLong("hostname")], help: "Node name; %h expands to the host name (default celery@%h).")
    var hostname: String?

    @Option(
        name: .customLong("prefetch-multiplier"), parsing: .unconditional,
        help: "Messages reserved per unit of concurrency, 0 for no limit (default: 4).")
    var prefetchMultiplier: Int?

    @Flag(
        name: .customLong("disable-prefetch"),
        help: "Fetch a message only when a task slot is free: at most the concurrency held, running tasks included.")
    var disablePrefetch = false

    @Flag(name: .customLong("acks-late"), help: "Acknowledge after the task has finished and its result is stored.")
    var acksLate = false

    @Option(name: .customLong("result-serializer"), help: "json or msgpack; must match the Python clients' result_serializer (default: json).")
    var resultSerializer: String?

    @Option(name: .customLong("result-expires"), parsing: .unconditional, help: "Seconds results are kept; 0 keeps them forever (default: 86400).")
    var resultExpires: Int?

    @Option(
        name: .customLong("visibility-timeout"), parsing: .unconditional,
        help: "Seconds before an unacknowledged message is redelivered (default: 3600).")
    var visibilityTimeout: Double?

    @Option(
        name: .customLong("soft-time-limit"), parsing: .unconditional,
        help: "Seconds after which a running task is cancelled (SoftTimeLimitExceeded).")
    var softTimeLimit: Double?

    @Option(
        name: .customLong("time-limit"), parsing: .unconditional,
        help: "Seconds after which a running task is killed (TimeLimitExceeded); needs --pool process.")
    var timeLimit: Double?

    @Option(
        name: .customLong("max-tasks-per-child"), parsing: .unconditional,
        help: "With --pool process: replace a child after this many tasks (default: never).")
    var maxTasksPerChild: Int?

    @Option(
        name: .customLong("max-memory-per-child"), parsing: .unconditional,
        help: "With --pool process: replace a child whose peak resident memory passed this many KiB, after its task.")
    var maxMemoryPerChild: Int?

    @Option(
        name: .customLong("autoscale"), parsing: .unconditional,
        help: ArgumentHelp(
            "With --pool process: MAX[,MIN] children, grown while tasks wait and shrunk after AUTOSCALE_KEEPALIVE seconds (30) without a new task, as Celery's --autoscale.",
            valueName: "max,min"))
    var autoscale: String?

    @Option(
        name: [.customShort("P"), .customLong("pool")],
        help:
            "threads (default: task bodies on threads in the worker), process (alias prefork: child processes the worker can kill) or solo (one task at a time, on the thread that fetches and writes results)."
    )
    var pool: String?

    @Flag(
        name: .customLong("without-mingle"),
        help: "Do not ask the other workers for their revoked task ids at start (Celery's mingle, on by default).")
    var withoutMingle = false

    @Flag(name: .customLong("without-gossip"), help: "Do not listen to the other workers' events (gossip), as Celery's.")
    var withoutGossip = false

    @Option(
        name: [.customShort("O"), .customLong("optimization")],
        help: "Celery's scheduling profile, default or fair: both hand a task only to a free pool process, as Celery's both do.")
    var optimization: String?

    @Flag(
        name: .customLong("without-heartbeat"),
        help: "Send no worker events (worker-online, worker-heartbeat, worker-offline), as Celery.")
    var withoutHeartbeat = false

    @Option(name: .customLong("heartbeat-interval"), parsing: .unconditional, help: "Seconds between worker-heartbeat events (default: 2).")
    var heartbeatInterval: Int?

    @Flag(
        name: [.customShort("E"), .customLong("task-events"), .customLong("events")],
        help: "Send task events (worker events are sent unless --without-heartbeat).")
    var taskEvents = false

    @Option(
        name: [.customShort("S"), .customLong("statedb")],
        help: "Keep the revoked task ids and the clock in this file across restarts (%n, %h, %p: node name parts).")
    var statedb: String?

    // Acted on by ``SwiftCeleryWorker/main()`` right after parsing, before anything else runs.
    @OptionGroup(title: "Daemonization options") var daemon: DaemonOptions

    // Celery's global options, taken by the worker as Celery's `celery` command takes them before `worker`.
    @Flag(name: [.customShort("q"), .customLong("quiet")], help: "Do not print the banner, as Celery's --quiet.")
    var quiet = false

    @Flag(name: [.customShort("C"), .customLong("no-color")], help: "Accepted as Celery takes it: the worker's output has no colours.")
    var noColor = false

    @Flag(
        name: [.customShort("B"), .customLong("beat")],
        help: "Also run Celery's beat, sending the periodic tasks of beat_schedule (--config); of beats on one broker, one sends.")
    var beat = false

    @Option(
        name: [.customShort("s"), .customLong("schedule-filename"), .customLong("schedule")],
        help: "Where beat keeps each entry's last run (default: celerybeat-schedule; %n, %h, %p expand). Also beat_schedule_filename.")
    var scheduleFilename: String?

    @Option(
        name: .customLong("scheduler"),
        help: "Beat's scheduler: Celery's default, celery.beat:PersistentScheduler, or celery-redbeat's, redbeat.RedBeatScheduler.")
    var scheduler: String?

    // Celery's options for what a Swift worker cannot do: refused with a sentence that says so, not as unknown.
    @Option(name: [.customShort("I"), .customLong("include")], help: .hidden)
    var include: String?

    @Option(
        name: .customLong("pidfile"),
        help: "Write the worker's pid to this file, refusing to start while it names a running process (%n, %h, %p: node name parts).")
    var pidfile: String?

    @Option(name: [.customShort("f"), .customLong("logfile")], help: "Write the log to this file instead of standard error.")
    var logfile: String?

    @Option(name: .customLong("metrics-port"), parsing: .unconditional, help: "Serve Prometheus metrics at http://<metrics-address>:<port>/metrics.")
    var metricsPort: Int?

    @Option(name: .customLong("metrics-address"), help: "The address the metrics endpoint listens on (default: 127.0.0.1).")
    var metricsAddress = "127.0.0.1"

    @Option(name: .customLong("config"), help: "A YAML or JSON file of Celery settings (broker_url, result_backend, task_acks_late, …).")
    var config: String?

    static let levels: [String: Logger.Level] = [
        "DEBUG": .debug, "INFO": .info, "WARNING": .warning, "WARN": .warning, "ERROR": .error,
        "CRITICAL": .critical, "FATAL": .critical,
    ]

    var environment: [String: String] { ProcessInfo.processInfo.environment }

    /// Everything the worker runs with: flags, then the environment, then the config file, then Celery's defaults.
    struct Resolved {
        var configuration: WorkerConfiguration
        var logfile: String?
        var warnings: [String]
        /// The pid file, node-formatted: `--pidfile`, else `worker_pidfile`.
        var pidfile: String?
        /// `worker_uid`, `worker_umask`, … from the config file, under the flags.
        var daemon = DaemonSettings()
        var logFormat = LogFormat.worker
        var taskLogFormat = LogFormat.task
        /// `REMAP_SIGTERM=SIGQUIT`: `SIGTERM` is a cold shutdown.
        var remapsTerm = false
        /// The level at which what tasks print is logged (`worker_redirect_stdouts_level`), `nil` when
        /// `worker_redirect_stdouts` is off.
        var redirectLevel: Logger.Level? = .warning
    }

    func resolve() throws -> Resolved {
        let file = try config.map { path throws(CeleryWorkerError) in try CelerySettings.load(path: path) } ?? CelerySettings()
        func check(_ condition: Bool, _ message: String) throws {
            if !condition { throw ValidationError(message) }
        }
        try check(
            Self.levels[loglevel.uppercased()] != nil,
            "Invalid log level '\(loglevel)': choose one of DEBUG, INFO, WARNING, ERROR, CRITICAL.")
        let concurrency = self.concurrency ?? file.concurrency ?? WorkerConfiguration.defaultConcurrency
        try check(concurrency >= 1, "--concurrency must be at least 1, got \(concurrency).")
        let prefetchMultiplier = self.prefetchMultiplier ?? file.prefetchMultiplier ?? 4
        try check(prefetchMultiplier >= 0, "--prefetch-multiplier must be 0 or more.")
        let resultExpires = self.resultExpires ?? file.resultExpires ?? 86_400
        try check(resultExpires >= 0, "--result-expires must be 0 or more seconds.")
        try check((file.resultFailureExpires ?? 0) >= 0, "result_failure_expires must be 0 or more seconds.")
        let visibilityTimeout = self.visibilityTimeout ?? file.visibilityTimeout ?? 3_600
        try check(visibilityTimeout > 0, "--visibility-timeout must be more than 0 seconds.")
        let softTimeLimit = self.softTimeLimit ?? file.softTimeLimit
        try check((softTimeLimit ?? 1) > 0, "--soft-time-limit must be more than 0 seconds.")
        let timeLimit = self.timeLimit ?? file.timeLimit
        try check((timeLimit ?? 1) > 0, "--time-limit must be more than 0 seconds.")
        try check((0...65_535).contains(metricsPort ?? 0), "--metrics-port must be a TCP port (0-65535).")
        var serializer = file.resultSerializer ?? .json
        if let resultSerializer {
            guard let parsed = CeleryContentType(name: resultSerializer) else {
                throw ValidationError("--result-serializer must be json or msgpack, got '\(resultSerializer)'.")
            }
            serializer = parsed
        }
        // Without -Q: every queue of task_queues, as Celery's worker consumes them, else the default queue.
        let declaredQueues = file.taskQueues ?? []
        let queueText = queues ?? (declaredQueues.isEmpty ? file.defaultQueue ?? "celery" : declaredQueues.map(\.name).joined(separator: ","))
        // Each name once, in order (a queue named twice, in -Q or task_queues, is consumed once, as Celery keys them by name).
        func names(_ text: String) -> [String] {
            var seen = Set<String>()
            return text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty && seen.insert($0).inserted }
        }
        try check(!names(queueText).isEmpty, "-Q needs at least one queue name.")
        if file.createMissingQueues == false {
            // Celery's SELECT_UNKNOWN_QUEUE; without task_queues the default queue is the one declared.
            let declared = declaredQueues.isEmpty ? [file.defaultQueue ?? "celery"] : declaredQueues.map(\.name)
            if let unknown = names(queueText).first(where: { !declared.contains($0) }) {
                let selected = "[" + names(queueText).map { "'\($0)'" }.joined(separator: ", ") + "]"
                throw ValidationError(
                    "Trying to select queue subset of \(selected), but queue '\(unknown)' isn't\ndefined in the `task_queues` setting.\n\n"
                        + "If you want to automatically declare unknown queues you can\nenable the `task_create_missing_queues` setting.")
            }
        }
        let excluded = Set(excludeQueues.map(names) ?? [])
        let queueList = names(queueText).filter { !excluded.contains($0) }
        try check(!queueList.isEmpty, "--exclude-queues leaves no queue to consume of \(names(queueText).joined(separator: ", ")).")
        try check((heartbeatInterval ?? 1) > 0, "--heartbeat-interval must be at least 1 second.")
        if let optimization {
            try check(["default", "fair"].contains(optimization), "Invalid value for '-O': '\(optimization)' is not one of 'default', 'fair'.")
        }
        let urls = try SettledURLs(broker: broker, backend: resultBackend, file: file, environment: environment)
        var brokerURL = urls.broker
        let backendURL = urls.backend
        // Celery's broker_connection_timeout, 4 s by default.
        brokerURL.connectTimeout = file.brokerConnectionTimeout ?? 4
        do {
            // Certificate and key files are read now, so a wrong path stops the worker at start.
            for tls in [brokerURL.tls, brokerURL.sentinelTLS, backendURL?.tls, backendURL?.sentinelTLS] { try tls?.validate() }
        } catch {
            throw ValidationError(error.message)
        }
        let timezone = try CeleryTimeZone.app(named: file.timezone, enableUTC: file.enableUTC ?? true)
        var poolKind = file.pool ?? .threads
        if let pool {
            guard let parsed = WorkerConfiguration.PoolKind(celeryName: pool) else {
                throw ValidationError("--pool must be threads, process (prefork) or solo, got '\(pool)'.")
            }
            poolKind = parsed
        }
        let maxTasksPerChild = self.maxTasksPerChild ?? file.maxTasksPerChild
        try check((maxTasksPerChild ?? 1) >= 1, "--max-tasks-per-child must be at least 1.")
        let maxMemoryPerChild = self.maxMemoryPerChild ?? file.maxMemoryPerChild
        try check((maxMemoryPerChild ?? 1) >= 1, "--max-memory-per-child must be at least 1 KiB.")
        var autoscaleBounds: WorkerConfiguration.Autoscale?
        if let autoscale {
            let keepaliveText = environment["AUTOSCALE_KEEPALIVE"] ?? "30"
            guard let keepalive = Double(keepaliveText), keepalive > 0, keepalive.isFinite else {
                throw ValidationError("AUTOSCALE_KEEPALIVE must be a number of seconds above 0, got '\(keepaliveText)'.")
            }
            guard let bounds = WorkerConfiguration.Autoscale(parsing: autoscale, keepalive: keepalive) else {
                throw ValidationError("--autoscale must be MAX or MAX,MIN with MAX at least 1 and MIN from 0 to MAX, got '\(autoscale)'.")
            }
            try check(poolKind == .process, "--autoscale needs --pool process: the \(poolKind.rawValue) pool cannot grow or shrink.")
            autoscaleBounds = bounds
        }
        var warnings = file.warnings + urls.warnings
        let remap = ShutdownSignals.remapsTerm(environment["REMAP_SIGTERM"])
        if let warning = remap.warning { warnings.append(warning) }
        if maxTasksPerChild != nil || maxMemoryPerChild != nil, poolKind != .process {
            warnings.append(
                "--max-tasks-per-child and --max-memory-per-child apply to --pool process only; the \(poolKind.rawValue) pool has no children.")
        }
        if timeLimit != nil, poolKind != .process {
            warnings.append(
                "--time-limit/task_time_limit is not enforced by the \(poolKind.rawValue) pool (a thread cannot be stopped): use --pool process.")
        }
        var nodeName = WorkerConfiguration.defaultNodeName
        if let hostname {
            do { nodeName = try WorkerConfiguration.nodeName(expanding: hostname) } catch { throw ValidationError(error.message) }
        }
        var configuration = WorkerConfiguration(
            brokerURL: brokerURL,
            resultBackendURL: backendURL,
            queues: queueList,
            concurrency: concurrency,
            prefetchMultiplier: prefetchMultiplier,
            acksLate: acksLate || (file.acksLate ?? false),
            resultSerializer: serializer,
            acceptContent: file.acceptContent ?? [.json, .msgpack],
            resultExpires: resultExpires,
            visibilityTimeout: visibilityTimeout,
            sendTaskEvents: taskEvents || (file.sendTaskEvents ?? false),
            nodeName: nodeName,
            trackStarted: file.trackStarted ?? false,
            resultExtended: file.resultExtended ?? false,
            timezone: timezone,
            enableUTC: file.enableUTC ?? true,
            softTimeLimit: softTimeLimit,
            timeLimit: timeLimit,
            pool: poolKind,
            defaultQueue: file.defaultQueue ?? "celery",
            taskSerializer: file.taskSerializer ?? .json,
            taskCompression: file.taskCompression ?? nil,
            rejectOnWorkerLost: file.rejectOnWorkerLost ?? false,
            retryOnWorkerLost: file.retryOnWorkerLost ?? false,
            storeErrorsEvenIfIgnored: file.storeErrorsEvenIfIgnored ?? false,
            resultFailureExpires: file.resultFailureExpires,
            maxTasksPerChild: maxTasksPerChild,
            maxMemoryPerChild: maxMemoryPerChild,
            brokerKeyPrefix: file.brokerKeyPrefix ?? "",
            resultKeyPrefix: WorkerConfiguration.resultKeyPrefix(normalizing: file.resultKeyPrefix ?? "")
        )
        configuration.resultBackendSetting = urls.backendSetting
        do {
            configuration.messageSigning = try MessageSigning(settings: file.security)
        } catch {
            throw ValidationError(error.message)
        }
        configuration.workerDirect = file.workerDirect ?? false
        configuration.remoteControl = file.remoteControl ?? true
        configuration.sendSentEvent = file.sendSentEvent ?? false
        configuration.softShutdownTimeout = file.softShutdownTimeout ?? 0
        configuration.softShutdownOnIdle = file.softShutdownOnIdle ?? false
        configuration.deduplicateSuccessfulTasks = file.deduplicateSuccessfulTasks ?? false
        configuration.ignoreResult = file.ignoreResult ?? false
        configuration.disablePrefetch = disablePrefetch || (file.disablePrefetch ?? false)
        configuration.etaTaskLimit = file.etaTaskLimit ?? nil
        configuration.controlExchange = file.controlExchange ?? "celery"
        configuration.defaultPriority = file.defaultPriority
        configuration.declaredQueues = declaredQueues.map { queue in
            let binding = queue.binding(
                defaultExchange: file.defaultExchange ?? file.defaultQueue ?? "celery", defaultExchangeType: file.defaultExchangeType ?? .direct)
            return (queue.name, binding)
        }
        configuration.inheritParentPriority = file.inheritParentPriority ?? false
        configuration.eventExchange = file.eventExchange ?? "celeryev"
        configuration.resultBackendRetry = ResultBackendRetry(
            alwaysRetry: file.resultBackendAlwaysRetry ?? false, maxRetries: file.resultBackendMaxRetries ?? nil,
            baseSleep: file.resultBackendBaseSleep ?? 0.01, maxSleep: file.resultBackendMaxSleep ?? 10)
        configuration.brokerTransport = file.brokerTransport
        configuration.autoscale = autoscaleBounds
        configuration.mingle = !withoutMingle
        configuration.gossip = !withoutGossip
        configuration.heartbeatInterval = withoutHeartbeat ? nil : Double(heartbeatInterval ?? 2)
        configuration.resultCompression = file.resultCompression
        configuration.chord = file.chord
        configuration.taskAnnotations = file.taskAnnotations ?? TaskAnnotations()
        configuration.defaultRateLimit = file.defaultRateLimit
        configuration.stateDB = (statedb ?? file.stateDB).map { WorkerConfiguration.nodeFormat($0, node: configuration.nodeName) }
        if beat {
            var beat = try file.beatConfiguration(scheduleFilename: scheduleFilename, scheduler: scheduler)
            beat.scheduleFilename = WorkerConfiguration.nodeFormat(beat.scheduleFilename, node: configuration.nodeName)
            configuration.beat = beat
        }
        configuration.disableRateLimits = file.disableRateLimits ?? false
        configuration.brokerConnectionRetry = BrokerConnectionRetry(
            retry: file.brokerConnectionRetry ?? true, retryOnStartup: file.brokerConnectionRetryOnStartup ?? nil,
            maxRetries: file.brokerConnectionMaxRetries ?? 100)
        configuration.poolRestarts = file.poolRestarts ?? false
        configuration.acksOnTimeout = file.acksOnTimeout ?? file.acksOnFailureOrTimeout ?? true
        configuration.taskRoutes = file.taskRoutes ?? TaskRoutes()
        configuration.addBoundQueues()
        // Node-formatted as Celery's log setup formats it (`%n.log`); with `%i` or `%I` each pool child has a file of its
        // own (`%n%I.log`: `w1.log`, `w1-1.log`, `w1-2.log` …), as Celery's prefork children have.
        let logPath = (logfile ?? file.workerDaemon.logfile ?? file.logFile).map {
            WorkerConfiguration.nodeFormat($0, node: configuration.nodeName, processIndex: CeleryWorkerService.poolChildNumber ?? 0)
        }
        var resolved = Resolved(configuration: configuration, logfile: logPath, warnings: warnings)
        resolved.pidfile = (pidfile ?? file.workerDaemon.pidfile).map { WorkerConfiguration.nodeFormat($0, node: configuration.nodeName) }
        resolved.daemon = file.workerDaemon
        resolved.logFormat = file.logFormat ?? .worker
        resolved.taskLogFormat = file.taskLogFormat ?? .task
        resolved.logFormat.dateFormat = file.logDateFormat
        resolved.taskLogFormat.dateFormat = file.taskLogDateFormat
        resolved.remapsTerm = remap.remaps
        resolved.redirectLevel =
            file.redirectStdouts == false ? nil : Self.levels[file.redirectStdoutsLevel ?? "WARNING"] ?? .warning
        return resolved
    }

    func daemonPlan() throws -> Daemon.Plan {
        let resolved = try resolve()
        return daemon.plan(settings: resolved.daemon, logfile: resolved.logfile, pidfile: resolved.pidfile)
    }

    func validate() throws {
        if let include {
            throw ValidationError("-I/--include \(include): the Swift worker's tasks are compiled in; it imports no Python modules.")
        }
        try daemon.prepare()
        do {
            _ = try resolve()
        } catch let error as CeleryWorkerError {
            throw ValidationError(error.message)
        }
    }

    func run() async throws {
        let level = Self.levels[loglevel.uppercased()] ?? .info
        let resolved = try resolve()
        let sink = try resolved.logfile.map { try CeleryLogHandler.Sink(appendingTo: $0) } ?? .standardError
        let processName = CeleryWorkerService.poolChildNumber.map { "ForkPoolWorker-\($0)" } ?? "MainProcess"
        let registry = CeleryWorkerProgram.tasks.withLock { $0 }
        await registry.signals.setUpLogging(
            .init(
                level: level, logfile: resolved.logfile, sink: sink, format: resolved.logFormat, taskFormat: resolved.taskLogFormat,
                processName: processName))
        let logger = Logger(label: "celery.worker")
        let configuration = resolved.configuration

        // worker_redirect_stdouts: what tasks print goes to the log.
        func redirectStandardOutput() {
            guard let level = resolved.redirectLevel else { return }
            StandardOutputRedirect.start(logger: Logger(label: "celery.redirected"), level: level)
        }
        if CeleryWorkerService.isPoolChild {
            // A process-pool child of a worker: no banner, no signal handling, just serve the worker.
            redirectStandardOutput()
            try await CeleryWorkerService(configuration: configuration, registry: registry, logger: logger).run()
            return
        }

        // As Celery's worker: its warning about root, the pid lock, then the purge, then the banner.
        if let warning = Privileges.securityWarning { StandardStream.error.write(warning) }
        let lock = try resolved.pidfile.map { try Pidfile.acquire($0) }
        defer { lock?.release() }
        if purge { await purgeQueues(configuration, logger: logger) }
        if !quiet {
            StandardStream.output.write(Banner.text(configuration: configuration, taskNames: registry.names, version: Self.version))
        }
        for warning in resolved.warnings { logger.warning("\(warning)") }
        if let limit = OpenFilesLimit.raised(),
            let refusal = OpenFilesLimit.refusal(limit: limit, needed: OpenFilesLimit.needed(by: configuration))
        {
            logger.critical("\(refusal)")
            throw ExitCode(1)
        }
        // After the banner, as Celery's worker redirects.
        redirectStandardOutput()

        var services: [ServiceGroupConfiguration.ServiceConfiguration] = []
        var metricsFactory: any MetricsFactory = NOOPMetricsHandler.instance
        if let metricsPort {
            let prometheus = PrometheusCollectorRegistry()
            metricsFactory = PrometheusMetricsFactory(registry: prometheus)
            let endpoint: MetricsEndpoint
            do {
                endpoint = try await MetricsEndpoint.bind(
                    registry: prometheus, host: metricsAddress, port: metricsPort, logger: logger)
            } catch {
                let reason = (error as? CeleryWorkerError)?.message ?? "\(error)"
                logger.critical("Cannot serve metrics on \(metricsAddress):\(metricsPort): \(reason)")
                throw ValidationError("--metrics-port \(metricsPort): cannot listen on \(metricsAddress): \(reason).")
            }
            services.append(
                .init(service: endpoint, successTerminationBehavior: .ignore, failureTerminationBehavior: .cancelGroup))
        }
        let worker = CeleryWorkerService(
            configuration: configuration, registry: registry, logger: logger, metricsFactory: metricsFactory)
        // Trapped before the worker starts: a SIGTERM right after "ready." is a warm shutdown, not the default action
        // (seen in CI under load, when the watcher's own start came after the worker's).
        let signals = SignalWatcher(
            logger: logger, signals: await UnixSignalsSequence(trapping: .sigterm, .sigint, .sigquit, .sighup, .sigusr1),
            contract: ShutdownSignals(
                softTimeout: configuration.softShutdownTimeout, softOnIdle: configuration.softShutdownOnIdle,
                termIsCold: resolved.remapsTerm, restartsOnHangUp: isatty(STDOUT_FILENO) == 0),
            busy: { worker.activeTasks > 0 },
            cry: { Cry.say { worker.runningTasks } },
            announce: { handler in await worker.shuttingDown(handler) })
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(
                services: [
                    .init(
                        service: signals, successTerminationBehavior: .gracefullyShutdownGroup,
                        failureTerminationBehavior: .cancelGroup),
                    .init(
                        service: worker, successTerminationBehavior: .gracefullyShutdownGroup,
                        failureTerminationBehavior: .cancelGroup),
                ] + services,
                logger: Logger(label: "celery.lifecycle", factory: { _ in SwiftLogNoOpLogHandler() })
            ))
        signals.attach(group)
        do {
            try await group.run()
        } catch is ColdShutdown {
            // Cancellation already stopped the worker.
        } catch is BrokerConnectionGivenUp {
            // Logged; the worker shut down warm. Celery's worker exits with 1.
            throw ExitCode(1)
        }
        if signals.restarts {
            lock?.release()  // the pid stays the same; the program acquires the lock again
            let error = Daemon.restart()
            logger.critical("Cannot restart the worker: \(error)")
            throw ExitCode(1)
        }
        throw ExitCode(signals.exitCode)
    }
}

extension WorkerCommand {
    /// Celery's `--purge`: the waiting messages of the worker's queues are deleted before it consumes, and the
    /// count printed as Celery prints it. A connection error is logged and retried, as Celery retries it.
    func purgeQueues(_ configuration: WorkerConfiguration, logger: Logger) async {
        let commands = RedisClient(url: configuration.brokerURL, threadName: "redis-purge")
        let broker = RedisBroker(blocking: commands, commands: commands, keyPrefix: configuration.brokerKeyPrefix)
        var attempt = 0
        while true {
            do {
                let count = try await broker.purge(queues: configuration.queues)
                if count > 0 {
                    StandardStream.output.write("purge: Erased \(count) \(count == 1 ? "message" : "messages") from the queue.\n\n")
                }
                return
            } catch {
                // Celery's connection retries: 2 s more each time, at most 30.
                attempt += 1
                let delay = min(2 * attempt, 30)
                logger.error("purge: Connection error: \(error.message). Trying again in \(delay).00 seconds...")
                try? await Task.sleep(for: .seconds(delay))
            }
        }
    }
}

/// Thrown by the signal watcher to cancel the service group: Celery's cold shutdown.
struct ColdShutdown: Error {}

/// Celery's shutdown signals (``ShutdownSignals``): `SIGTERM` warm (exit 0), `SIGINT` warm (exit 1) and cold the
/// second time, `SIGQUIT` cold (exit 1), with `worker_soft_shutdown_timeout`'s wait before a cold shutdown and
/// `REMAP_SIGTERM=SIGQUIT`; `SIGHUP`'s restart; and `SIGUSR1`'s report (``Cry``).
final class SignalWatcher: Service {
    private enum Event: Sendable {
        case signal(ShutdownSignals.Signal)
        case softTimeoutElapsed
        /// `SIGUSR1`: report what the worker is doing (``Cry``).
        case cry
    }

    private let group = Mutex<ServiceGroup?>(nil)
    private let contract: Mutex<ShutdownSignals>
    let logger: Logger
    let signals: UnixSignalsSequence
    /// Whether tasks run now (the soft shutdown waits only then, unless told to wait when idle).
    let busy: @Sendable () -> Bool
    /// Reports what the worker is doing, for `SIGUSR1`.
    let cry: @Sendable () -> Void
    /// Sends `worker_shutting_down` for a shutdown signal, before the worker acts on it.
    let announce: @Sendable (WorkerSignals.WorkerShuttingDown.Handler) async -> Void

    init(
        logger: Logger, signals: UnixSignalsSequence, contract: ShutdownSignals, busy: @escaping @Sendable () -> Bool,
        cry: @escaping @Sendable () -> Void, announce: @escaping @Sendable (WorkerSignals.WorkerShuttingDown.Handler) async -> Void
    ) {
        self.logger = logger
        self.signals = signals
        self.contract = Mutex(contract)
        self.busy = busy
        self.cry = cry
        self.announce = announce
    }

    func attach(_ group: ServiceGroup) {
        self.group.withLock { $0 = group }
    }

    var exitCode: Int32 { contract.withLock { $0.exitCode } }

    /// Whether the worker starts again once the group has stopped (`SIGHUP`).
    var restarts: Bool { contract.withLock { $0.restarts } }

    func run() async throws {
        let (events, continuation) = AsyncStream.makeStream(of: Event.self)
        try await withThrowingDiscardingTaskGroup { tasks in
            tasks.addTask {
                for await signal in self.signals {
                    switch signal {
                    case .sigterm: continuation.yield(.signal(.terminate))
                    case .sigint: continuation.yield(.signal(.interrupt))
                    case .sigquit: continuation.yield(.signal(.quit))
                    case .sighup: continuation.yield(.signal(.hangUp))
                    case .sigusr1: continuation.yield(.cry)
                    default: continue
                    }
                }
            }
            for await event in events.cancelOnGracefulShutdown() {
                let (reaction, lines): (ShutdownSignals.Reaction, [String])
                var announced: WorkerSignals.WorkerShuttingDown.Handler?
                switch event {
                case .cry:
                    cry()
                    continue
                case .signal(let signal):
                    ((reaction, lines), announced) = contract.withLock { contract in
                        let reaction = contract.receive(signal, busy: busy())
                        return (reaction, contract.announced)
                    }
                case .softTimeoutElapsed: (reaction, lines) = contract.withLock { $0.softTimeoutElapsed() }
                }
                for line in lines { logger.warning("\(line)") }
                // As Celery's handler: after its line, before the shutdown begins.
                if let announced { await announce(announced) }
                switch reaction {
                case .none:
                    continue
                case .warm:
                    await group.withLock { $0 }?.triggerGracefulShutdown()
                case .soft(let seconds):
                    logger.warning("\(ShutdownSignals.softShutdownLine(seconds: seconds))")
                    tasks.addTask {
                        try? await Task.sleep(for: .milliseconds(Int64(seconds * 1000)))
                        continuation.yield(.softTimeoutElapsed)
                    }
                    // No task starts any more; those running may finish. The wait ends when they have (the group then
                    // shuts down, and so does this loop) or when the time is up.
                    await group.withLock { $0 }?.triggerGracefulShutdown()
                case .cold:
                    throw ColdShutdown()
                case .restart, .restartAfterShutdown:
                    StandardStream.output.write(ShutdownSignals.restartLine(arguments: CommandLine.arguments))
                    if reaction == .restart { await group.withLock { $0 }?.triggerGracefulShutdown() }
                }
            }
            tasks.cancelAll()
        }
    }
}
