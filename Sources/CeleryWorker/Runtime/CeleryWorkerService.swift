import CeleryProtocol
import Foundation
import Logging
import Metrics
import ServiceLifecycle
import Synchronization

/// A Celery worker: takes task messages from Redis, runs the registered Swift tasks and stores their results where
/// Python's `AsyncResult` reads them.
///
/// Run it in a `ServiceGroup`. Graceful shutdown is Celery's warm shutdown: fetching stops, running tasks finish
/// and store their results, and reserved messages that did not start are given back to their queues. Cancellation
/// is cold shutdown: running tasks are cancelled; reserved messages, and those of the acks-late tasks it interrupted,
/// are still given back when Redis allows.
public final class CeleryWorkerService: Service {
    public let configuration: WorkerConfiguration
    public let registry: TaskRegistry
    let logger: Logger
    let broker: any Broker
    let backend: (any ResultBackend)?
    let events: EventDispatcher?
    /// Connections for remote control and gossip: one subscribed to the pidbox and the workers' events, one for
    /// replies.
    let control: (subscriber: RedisClient, replies: RedisClient)?

    /// This package's version, shown in the banner and sent as `sw_ver` in worker events.
    public static let version = "0.1.0"
    let retryDelays = RetryDelays()
    /// With a failover list of brokers: the server the consumer was last connected to (the first at start).
    let connectedServer = Mutex(0)
    /// Task counts and timings, through swift-metrics.
    let metrics: TaskMetrics
    /// The client tasks send other tasks with (`context.send`).
    let client: CeleryClient?
    /// When the broker and the result backend are one Redis server: each settler batch (results and
    /// acknowledgements) is then written by one script in one round trip.
    let sharedServer: (backend: RedisResultBackend, broker: RedisBroker)?
    /// With `--pool solo` or `threads`, the event loop that fetches, runs tasks and settles (``makeLane(_:)``); the
    /// broker's and the backend's connections run their calls there. `nil` for the process pool (and for a worker on
    /// another broker: its event loop is made in ``run()``).
    let lane: WorkerThreads?
    /// The state of the current ``run()``, while it runs.
    private let currentRun = Mutex<WorkerRun?>(nil)

    /// How many tasks run now (`active` in worker events): 0 before ``run()`` starts and after it ends.
    public var activeTasks: Int {
        currentRun.withLock { $0 }?.counters.withLock { $0.active } ?? 0
    }

    /// The tasks running now, the longest-running first, with the seconds each has run (what `SIGUSR1` reports).
    public var runningTasks: [(name: String, id: String, seconds: Double)] {
        guard let run = currentRun.withLock({ $0 }) else { return [] }
        let now = WallClock.now()
        return run.running.withLock { $0.all }.sorted { $0.timeStart < $1.timeStart }.map {
            ($0.job.message.name, $0.job.message.id, now - $0.timeStart)
        }
    }

    /// A worker on Redis, as configured.
    ///
    /// Metrics go to `metricsFactory`, by default the one bootstrapped in `MetricsSystem`.
    public convenience init(
        configuration: WorkerConfiguration, registry: TaskRegistry, logger: Logger,
        metricsFactory: any MetricsFactory = MetricsSystem.factory
    ) {
        let lane = Self.makeLane(configuration)
        // The broker's and the backend's clients: on the event loop of the solo and thread pools, or each on a thread
        // of its own.
        func client(_ url: RedisURL, commandTimeout: Duration = .seconds(30), threadName: String = "redis-io") -> RedisClient {
            guard let lane else { return RedisClient(url: url, commandTimeout: commandTimeout, threadName: threadName) }
            return RedisClient(url: url, commandTimeout: commandTimeout, sharedLane: lane)
        }
        let results = configuration.resultBackendURL.map { client($0, threadName: "redis-results") }
        // With the backend on the broker's server, a blocking pop's record goes out on the results connection, so the
        // settle script that acknowledges the message follows it there without waiting for its reply.
        let records = results?.url.isSameServer(as: configuration.brokerURL) == true ? results : nil
        let broker = RedisBroker(
            blocking: client(configuration.brokerURL, commandTimeout: .seconds(10), threadName: "redis-fetch"),
            commands: client(configuration.brokerURL), records: records, keyPrefix: configuration.brokerKeyPrefix,
            transport: configuration.brokerTransport)
        let backend = results.map { results in
            RedisResultBackend(
                client: results, serializer: configuration.resultSerializer, expires: configuration.resultExpires,
                keyPrefix: configuration.resultKeyPrefix, failureExpires: configuration.resultFailureExpires,
                compression: configuration.resultCompression, chord: configuration.chord)
        }
        let events = EventDispatcher(
            client: RedisClient(url: configuration.brokerURL), hostname: configuration.nodeName,
            database: configuration.brokerURL.database, version: Self.version,
            sendsTaskEvents: configuration.sendTaskEvents, keyPrefix: configuration.brokerKeyPrefix,
            alsoLegacyTopic: configuration.brokerURL.isSentinel, exchange: configuration.eventExchange,
            transport: configuration.brokerTransport, logger: logger)
        self.init(
            configuration: configuration, registry: registry, logger: logger, broker: broker, backend: backend,
            events: events,
            control: (RedisClient(url: configuration.brokerURL), RedisClient(url: configuration.brokerURL)),
            metrics: TaskMetrics(factory: metricsFactory), lane: lane,
            client: CeleryClient(
                brokerURL: configuration.brokerURL, resultBackendURL: configuration.resultBackendURL,
                serializer: configuration.taskSerializer, resultSerializer: configuration.resultSerializer,
                resultExpires: configuration.resultExpires, defaultQueue: configuration.defaultQueue,
                compression: configuration.taskCompression, brokerKeyPrefix: configuration.brokerKeyPrefix,
                resultKeyPrefix: configuration.resultKeyPrefix, brokerTransport: configuration.brokerTransport,
                routes: configuration.taskRoutes, chord: configuration.chord, messageSigning: configuration.messageSigning,
                sentEvents: configuration.sendSentEvent ? events : nil, signals: registry.signals))
    }

    /// A worker on any broker and backend (tests use in-memory ones).
    public convenience init(
        configuration: WorkerConfiguration, registry: TaskRegistry, logger: Logger, broker: any Broker,
        backend: (any ResultBackend)?, metricsFactory: any MetricsFactory = MetricsSystem.factory
    ) {
        self.init(
            configuration: configuration, registry: registry, logger: logger, broker: broker, backend: backend,
            events: nil, control: nil, metrics: TaskMetrics(factory: metricsFactory), lane: nil, client: nil)
    }

    private init(
        configuration: WorkerConfiguration, registry: TaskRegistry, logger: Logger, broker: any Broker,
        backend: (any ResultBackend)?, events: EventDispatcher?,
        control: (subscriber: RedisClient, replies: RedisClient)?, metrics: TaskMetrics, lane: WorkerThreads?,
        client: CeleryClient?
    ) {
        self.metrics = metrics
        self.lane = lane
        self.client = client
        var configuration = configuration
        configuration.addBoundQueues()
        self.configuration = configuration
        // As in Celery: the default rate limit is a task attribute's default, and annotations come after it.
        self.registry = registry.withDefaultRateLimit(configuration.defaultRateLimit).ignoringResults(configuration.ignoreResult)
            .annotated(by: configuration.taskAnnotations)
        self.logger = logger
        self.broker = broker
        self.backend = backend
        self.events = events
        self.control = control
        if let backend = backend as? RedisResultBackend, let broker = broker as? RedisBroker, backend.sharesServer(with: broker) {
            self.sharedServer = (backend, broker)
        } else {
            self.sharedServer = nil
        }
    }

    /// The task threads of a process pool: one per child it may have at once (the concurrency, or the autoscale
    /// maximum), as a running job waits on its child from one, and one more for receiving and dispatching, which
    /// run there too: with every child busy, a message fetched meanwhile is still received at once (logged,
    /// `task-received`, in `inspect reserved`), as in Celery. `pool_grow` adds more.
    static func processPoolThreads(_ configuration: WorkerConfiguration) -> Int {
        processPoolThreads(children: configuration.poolAutoscale?.max ?? configuration.concurrency)
    }

    /// The task threads `children` pool processes need: one each, and one to receive and dispatch.
    static func processPoolThreads(children: Int) -> Int { children + 1 }

    /// The event loop of the solo and thread pools, `nil` for the process pool: tasks, the worker's bookkeeping and
    /// (on Redis) its connections share it. One thread for solo; concurrency + 1 in leader mode for threads, so that
    /// up to concurrency task bodies that block or compute run side by side while one more thread leads (see
    /// ``WorkerThreads``).
    static func makeLane(_ configuration: WorkerConfiguration) -> WorkerThreads? {
        switch configuration.pool {
        case .solo: WorkerThreads(count: 1, name: "celery-solo", eventLoop: true)
        case .threads: WorkerThreads(count: configuration.concurrency + 1, name: "celery-task", eventLoop: true)
        case .process: nil
        }
    }

    /// Runs until graceful shutdown (warm) or cancellation (cold).
    ///
    /// In a process-pool child (``isPoolChild``) it runs the child's job loop instead, until the worker that
    /// started it closes its pipe.
    ///
    /// Throws ``CeleryWorkerError`` before taking any work when `task_compression` or `result_compression` names a
    /// compression whose library this machine lacks (the configuration file's reader checks it too; a configuration
    /// built in Swift is checked here).
    /// Sends Celery's `worker_shutting_down` to its receivers (``WorkerSignals/onWorkerShuttingDown(_:)``), as
    /// Celery's handler for a shutdown signal does: for a program that handles signals itself, before it begins the
    /// shutdown the signal asks for. `CeleryWorkerProgram` calls it for each `SIGTERM`, `SIGINT` and `SIGQUIT`.
    public func shuttingDown(_ handler: WorkerSignals.WorkerShuttingDown.Handler) async {
        guard !registry.signals.workerShuttingDown.isEmpty else { return }
        let event = WorkerSignals.WorkerShuttingDown(hostname: configuration.nodeName, handler: handler)
        await WorkerSignals.send(registry.signals.workerShuttingDown, event, signal: "worker_shutting_down", logger: logger)
    }

    public func run() async throws {
        for method in [configuration.taskCompression, configuration.resultCompression].compactMap({ $0 }) {
            try method.requireAvailable()
        }
        if Self.isPoolChild {
            await PoolChild(registry: registry, configuration: configuration, logger: logger, client: client).run()
            return
        }
        if !registry.signals.workerInit.isEmpty {
            let event = WorkerSignals.WorkerEvent(hostname: configuration.nodeName)
            await WorkerSignals.send(registry.signals.workerInit, event, signal: "worker_init", logger: logger)
        }
        let shutdown = ShutdownSignal()
        // Solo and threads: tasks, the worker's bookkeeping and (on Redis) its connections share one event loop.
        let lane = self.lane ?? Self.makeLane(configuration)
        // In the process pool a running job waits on its child from a task thread: one per child at least.
        let executor = lane ?? WorkerThreads(count: Self.processPoolThreads(configuration), name: "celery-task")
        let pool =
            configuration.pool == .process
            ? ProcessPool(
                size: configuration.slots, logger: logger, maxTasksPerChild: configuration.maxTasksPerChild,
                maxMemoryPerChild: configuration.maxMemoryPerChild) : nil
        if let pool { await withTaskExecutorPreference(executor) { pool.start() } }
        let run = WorkerRun(service: self, shutdown: shutdown, executor: executor, pool: pool)
        currentRun.withLock { $0 = run }
        defer { currentRun.withLock { $0 = nil } }
        // The worker's own bookkeeping runs on the event loop, or (process pool) on one thread of its own: hand-offs
        // between its tasks are queue pushes.
        let loop = lane ?? WorkerThreads(count: 1, name: "celery-worker")
        defer { loop.shutdown() }
        await withTaskExecutorPreference(loop) {
            await withGracefulShutdownHandler {
                await run.start()
            } onGracefulShutdown: {
                shutdown.trigger()
                run.closePermits()
            }
        }
        if let pool {
            let cold = Task.isCancelled
            await withTaskExecutorPreference(executor) { pool.shutdown(kill: cold) }
        }
        executor.shutdown()
        if let reason = run.gaveUp.withLock({ $0 }) { throw BrokerConnectionGivenUp(reason: reason) }
    }

    /// Whether this process is a process-pool child started by a worker (`--pool process`). A program that embeds
    /// the worker should then skip its banner and signal handling and just call ``run()``, which serves the
    /// worker that started it.
    public static var isPoolChild: Bool { ProcessInfo.processInfo.environment[ProcessPool.childVariable] != nil }

    /// The child's number in a process-pool child (`ForkPoolWorker-<n>` in its log lines, as billiard names Python's children), else `nil`.
    public static var poolChildNumber: Int? {
        ProcessInfo.processInfo.environment[ProcessPool.childVariable].flatMap { Int($0) }
    }

    /// Waits until Redis answers, logging each failed attempt the way Celery's consumer does, and gives up as it
    /// does (``BrokerConnectionRetry``): then `giveUp` is called with Celery's reason. Returns whether it connected.
    func declareQueues(shutdown: ShutdownSignal, giveUp: (String) -> Void) async -> Bool {
        let policy = configuration.brokerConnectionRetry
        if let warning = policy.startupDeprecationWarning { logger.warning("\(warning)") }
        var attempt = 0
        while !shutdown.isTriggered {
            do {
                try await broker.declare(queues: configuration.queues, bindings: configuration.queueBindings)
                logFailedOver()
                logger.info("Connected to \(configuration.brokerURL.brokerDisplay)")
                return true
            } catch {
                attempt += 1
                let failedOver = logFailovers()
                switch policy.step(afterFailedAttempt: attempt, startup: true, error: error.message) {
                case .giveUp(let reason):
                    giveUp(reason)
                    return false
                case .wait(let seconds, let note):
                    let server = failedOver.lastFailed ?? configuration.brokerURL.brokerDisplay
                    logger.error("consumer: Cannot connect to \(server): \(error.message).\n\(note)")
                    _ = await shutdown.sleep(untilUnixTime: WallClock.now() + seconds)
                }
            }
        }
        return false
    }

    /// After a failed attempt to reach the broker: Celery's consumer line for each connect of the attempt that failed
    /// over to another server of the broker's failover list (kombu's alternates). Returns them, with the server the
    /// last failed connect was to.
    @discardableResult
    func logFailovers() -> RedisURL.Failover.Log {
        guard configuration.brokerURL.failover != nil else { return RedisURL.Failover.Log() }
        let log = broker.takeFailovers()
        for failure in log.failures { logFailover(failure) }
        return log
    }

    private func logFailover(_ failure: RedisURL.Failover.Failure) {
        logger.error("consumer: Cannot connect to \(failure.server): \(failure.error).\nWill retry using next failover.")
    }

    /// Once the broker answers: with a failover list, Celery's line for each server the list moved on from since the
    /// consumer was last connected (whichever of the worker's connections found it down). Returns whether the server
    /// changed.
    @discardableResult
    func logFailedOver() -> Bool {
        guard let failover = configuration.brokerURL.failover else { return false }
        _ = broker.takeFailovers()
        let current = failover.current.index
        let previous = connectedServer.withLock { server in
            defer { server = current }
            return server
        }
        for failure in failover.failures(since: previous) { logFailover(failure) }
        return previous != current
    }

    /// Seconds as Celery's retry lines write them: two decimals (`2.00`).
    public static func format(seconds: Double) -> String {
        let hundredths = Int((seconds * 100).rounded())
        let fraction = hundredths % 100
        return "\(hundredths / 100).\(fraction < 10 ? "0" : "")\(fraction)"
    }
}

/// Runs `step` until it succeeds, trying again after `delay(attempt)` seconds (attempt 1, 2 …) while it fails for
/// want of Redis (a connection refused, reset or timed out, or Redis refusing for now: out of memory, loading, …;
/// ``CeleryWorkerError/isTransient``), at most `retries` times (`nil`: no limit), and not once the calling task is
/// cancelled. `onRetry` is told each such error and the delay before the next try. Throws the
/// error that ended the tries.
func untilReachable<Value>(
    retries: Int?, delay: (Int) -> Double, onRetry: (CeleryWorkerError, Double) -> Void = { _, _ in },
    _ step: () async throws(CeleryWorkerError) -> Value
) async throws(CeleryWorkerError) -> Value {
    var attempt = 0
    while true {
        do {
            return try await step()
        } catch {
            attempt += 1
            guard error.isTransient, attempt <= retries ?? Int.max, !Task.isCancelled else { throw error }
            let pause = delay(attempt)
            onRetry(error, pause)
            if pause > 0 { try? await Task.sleep(for: .milliseconds(Int64(pause * 1000))) }
        }
    }
}

/// Back-off for the worker's other Redis connections (result writes, remote control, messages it sends): 1, 2, 4,
/// 8, 16, then 32 s between attempts. The consumer's follows Celery's (``BrokerConnectionRetry``).
struct RetryDelays: Sendable {
    var maximum: Double = 32

    func delay(attempt: Int) -> Double {
        min(maximum, Double(1 << min(max(attempt - 1, 0), 10)))
    }
}

/// The state of one `run()`: the fetch loop, the dispatch loop and the deliveries in flight.
final class WorkerRun: Sendable {
    let service: CeleryWorkerService
    let shutdown: ShutdownSignal
    let executor: WorkerThreads
    /// The process pool, with `--pool process`.
    let pool: ProcessPool?
    /// Reserved (received, unacknowledged) messages that count against the prefetch limit.
    let prefetch: AsyncPermits
    /// Free task slots (`-c`).
    let slots: AsyncPermits
    /// Jobs handed to the dispatcher that will start as soon as a slot is free (not those waiting for an ETA or
    /// a rate limit): while there are enough of them to keep every slot busy, the fetch loop can wait for more
    /// free prefetch permits and take a larger batch.
    let readyJobs = Atomic<Int>(0)
    /// Deliveries still unacknowledged here, by tag: kept alive against other workers' visibility sweeps, and
    /// those that never started are given back at shutdown.
    let held = Mutex(HeldDeliveries())
    /// Tasks running now and tasks started so far (`active`, `processed` in worker events; `total` in stats).
    let counters = Mutex((active: 0, processed: 0, totals: [String: Int]()))
    /// Ids revoked by remote control.
    let revoked = Mutex(RevokedTasks())
    /// Ids of tasks that succeeded here (Celery's `successful_requests`: at most 1 000, each for 3 hours), kept for
    /// `worker_deduplicate_successful_tasks` only.
    let succeeded = Mutex(LimitedIDs(limit: 1_000, lifetime: 10_800))
    /// Why the worker gave up on its broker (``giveUp(_:)``), if it did.
    let gaveUp = Mutex<String?>(nil)
    /// Tasks running now, by id (`inspect active`).
    let running = Mutex(RunningTasks())
    /// What running tasks sent, by task id: the first `children` of their results (Python's `add_trail`).
    let trails = Mutex([String: [CeleryValue]]())
    /// When this run started (`uptime` in stats).
    let startedAt = WallClock.now()
    /// This worker's oid: the `reply_to` of the messages it sends.
    let oid = UUID().uuidString.lowercased()
    /// The queues consumed now: `-Q`, changed by `add_consumer` / `cancel_consumer`.
    let consuming: Mutex<[String]>
    /// Counts the `cancel_consumer` commands: a fetch that began before one may hold a message of a cancelled queue.
    let cancellations = Atomic<Int>(0)
    /// Whether the pool grows and shrinks with the work (``WorkerConfiguration/autoscale``).
    let autoscales: Bool
    /// Rate and time limits changed by remote control, and the rate-limit schedule.
    let limits = Mutex(TaskLimits())
    /// Batches the result writes and acknowledgements of running tasks.
    let settler = Settler()
    /// The task of each job: started by the dispatcher, cancelled by a stop request or a cold shutdown.
    let jobTasks = JobTasks()
    /// The tasks that run the jobs started at once (not those waiting for an ETA or a rate limit), one after another.
    let runners: JobRunners
    /// The app's time zone, which `date_done` is written in.
    let timeZone: CeleryTimeZone
    /// The process pool's size as it changes (`pool_grow`, `pool_shrink`, `--autoscale`).
    let scaling: Mutex<PoolScaling>
    /// The delivery tags of the last remote-control requests (Sentinel brokers only, see ``pidboxLegacyTopics``).
    let recentControlTags = Mutex(RecentDeliveryTags(limit: 64))
    /// The resident memory samples taken by `memsample`, which `memdump` shows and clears.
    let memorySamples = Mutex<[String]>([])
    /// Lets one pool size change run at a time.
    let resizing = AsyncPermits(1)
    /// Wakes the autoscaler: at each task received and every second.
    let autoscaleWake = AsyncPermits(0)
    /// Whether a wake-up of the autoscaler is pending.
    let autoscalePending = Atomic<Bool>(false)
    /// ETA tasks waiting without their prefetch slot (``WorkerConfiguration/etaTaskLimit`` bounds them).
    let etaFreed = Atomic<Int>(0)
    /// What gossip knows of the other workers and of elections (``heardGossip(_:)``).
    let gossip = Mutex(GossipState())
    /// Set when the worker logs `ready.`.
    let ready = ShutdownSignal()
    /// The registry's signals (``WorkerSignals``).
    let signals: WorkerSignals
    /// Whether any task signal has a receiver: one check per point on the task path when none has.
    let sendsTaskSignals: Bool

    init(service: CeleryWorkerService, shutdown: ShutdownSignal, executor: WorkerThreads, pool: ProcessPool?) {
        self.service = service
        self.shutdown = shutdown
        self.signals = service.registry.signals
        self.sendsTaskSignals = signals.hasTaskReceivers
        self.executor = executor
        self.pool = pool
        let limit = service.configuration.prefetchCount
        self.prefetch = AsyncPermits(limit > 0 ? limit : Int.max / 2, resumesFirst: true)
        self.slots = AsyncPermits(service.configuration.slots)
        self.consuming = Mutex(service.configuration.queues)
        self.timeZone = service.configuration.timezone
        self.runners = JobRunners(tasks: jobTasks, executor: executor)
        let configuration = service.configuration
        self.autoscales = configuration.poolAutoscale != nil
        limits.withLock { $0.disabled = configuration.disableRateLimits }
        self.scaling = Mutex(
            PoolScaling(
                threads: CeleryWorkerService.processPoolThreads(configuration), prefetchCount: configuration.prefetchCount,
                autoscaler: configuration.poolAutoscale.map(AutoscalerState.init)))
    }

    var logger: Logger { service.logger }

    func logReady() {
        logger.info("\(configuration.nodeName) ready.")
        ready.trigger()
    }

    /// Celery's `worker_ready`, sent once the worker logs `ready.` (never, if it stops first).
    private func sendWorkerReady() async {
        guard !signals.workerReady.isEmpty else { return }
        await withTaskGroup(of: Void.self) { race in
            race.addTask { await self.ready.wait() }
            race.addTask { await self.shutdown.wait() }
            await race.next()
            race.cancelAll()
        }
        guard ready.isTriggered else { return }
        let event = WorkerSignals.WorkerEvent(hostname: configuration.nodeName)
        await WorkerSignals.send(signals.workerReady, event, signal: "worker_ready", logger: logger)
    }
    var configuration: WorkerConfiguration { service.configuration }

    func closePermits() {
        prefetch.close()
        slots.close()
    }

    /// Gives up on the broker, as Celery's consumer does when it may not retry or has retried
    /// `broker_connection_max_retries` times: logs Celery's reason and shuts down warm; ``CeleryWorkerService/run()``
    /// then throws ``BrokerConnectionGivenUp``. Messages held stay in `unacked` if they cannot be given back, and
    /// are restored after the visibility timeout.
    func giveUp(_ reason: String) {
        logger.critical("\(reason)")
        gaveUp.withLock { $0 = $0 ?? reason }
        shutdown.trigger()
        closePermits()
    }

    func start() async {
        guard await service.declareQueues(shutdown: shutdown, giveUp: giveUp) else { return }
        for (role, client) in [
            ("broker", (service.broker as? RedisBroker)?.commands), ("result backend", (service.backend as? RedisResultBackend)?.client),
        ] {
            // Nothing could be fetched, or no result stored: a worker that ran tasks would lose their results (as a
            // Python worker given a backend database Redis does not have loses them, and its solo pool stops).
            switch await client?.refusal() {
            case nil:
                continue
            case .connection(let reason)?:
                giveUp("The \(role)'s Redis refuses this worker's connection (\(reason)). Check its URL's password and database number. Aborting.")
            case .scripts(let reason)?:
                giveUp(
                    "The \(role)'s Redis refuses Lua scripts (\(reason)). This worker fetches and acknowledges messages and stores results with scripts: let its Redis user run EVAL and EVALSHA (ACL +@scripting), or give them back their names. Aborting."
                )
            }
            return
        }
        if let risk = await (service.broker as? RedisBroker)?.evictionRisk() {
            logger.warning(
                "The broker's Redis may evict keys when it is full (\(risk)): a queue's list or unacked evicted loses its messages. maxmemory-policy noeviction keeps them: Redis then refuses writes while it is full, and the worker retries them."
            )
        }
        await sweep()
        loadState()
        // Written at once, as Python's shelve creates it at start: a path that cannot be written stops the worker now,
        // not at its shutdown, when the ids it was kept for would be lost. A Python worker stops there too.
        if let failure = await saveState(logged: false) {
            giveUp("statedb: \(failure). Give --statedb a path this worker can write. Aborting.")
            return
        }
        await mingle()
        await sendWorkerEvent("worker-online")
        // With remote control, "ready." waits until its subscription is confirmed (the control loop logs it), as
        // Python logs it once its pidbox consumer runs: a `ping` sent after it is answered.
        if service.control == nil || !configuration.remoteControl { logReady() }
        let fetched = Handoff<[BrokerDelivery]>()
        await withDiscardingTaskGroup { group in
            group.addTask(executorPreference: (self.service.broker as? RedisBroker)?.fetchExecutor) {
                await self.fetchLoop(into: fetched)
            }
            // Receiving (decoding, validating, logging) and dispatching run on the event loop (or, in the process pool,
            // on the task threads, so the fetch thread only talks to Redis; the thread woken for a message starts its
            // task itself).
            let ready = Handoff<[PreparedJob]>()
            group.addTask(executorPreference: executor) {
                await self.receiveLoop(fetched, into: ready)
            }
            group.addTask(executorPreference: executor) {
                await self.dispatchLoop(ready)
                self.settler.finish()  // every task handed its writes in
            }
            // Settling runs on the thread of the connection that writes the batches, so a task's writes wake only
            // that thread.
            let resultsLane = (self.service.backend as? RedisResultBackend)?.client.lane
            group.addTask(executorPreference: resultsLane) {
                // Lingering blocks the thread it runs on: only on the results connection's own thread (the event loop
                // shares it, and needs no linger: a short task's result is in before the settler runs again).
                let lane = self.service.lane
                await self.settler.run(lingering: resultsLane != nil && lane == nil, idle: lane) { batch in await self.flush(batch) }
            }
            group.addTask {
                await self.maintenanceLoop()
            }
            if let pool = self.pool {
                group.addTask(executorPreference: self.executor) {
                    // billiard's supervisor, twice a second.
                    while await self.shutdown.sleep(untilUnixTime: WallClock.now() + 0.5) { pool.replaceExitedIdleChildren() }
                }
            }
            group.addTask {
                await self.heartbeatLoop()
            }
            group.addTask {
                await self.autoscaleLoop()
            }
            group.addTask {
                await self.subscriptionLoop()
            }
            group.addTask {
                await self.beatLoop()
            }
            group.addTask {
                await self.sendWorkerReady()
            }
        }
        // Whatever was received but never started (queued for a slot, waiting for its ETA, still in a hand-off when
        // a cold shutdown cancelled the loops), and acks-late tasks a cold shutdown interrupted, go back to their queue.
        await giveBack(held.withLock { $0.unstarted })
        await service.events?.flushTaskEvents()  // the last tasks' events, published before the process ends
        await saveState()  // Python's Persistent saves at shutdown
        if !signals.workerShutdown.isEmpty {
            let event = WorkerSignals.WorkerEvent(hostname: configuration.nodeName)
            await WorkerSignals.send(signals.workerShutdown, event, signal: "worker_shutdown", logger: logger)
        }
    }

    // MARK: Fetching

    /// The most messages taken in one round trip.
    static let fetchBatch = 64

    /// How many free prefetch permits the fetch loop gathers under load before it pops (see ``fetchLoop(into:)``):
    /// half the window, so that the other half keeps the task slots busy while Redis runs the pop script (a pop
    /// of 60 messages takes Redis about a millisecond, and the worker would otherwise wait for it with nothing to
    /// do), but the whole window when it holds 16 messages or fewer (a pop of 4 costs more per message than the
    /// overlap gains), and never more than ``fetchBatch``. 0 with no prefetch limit: every pop takes what is free.
    ///
    /// On the event loop of the solo and thread pools always half the window: the leader runs the other half while
    /// Redis runs the pop, and writes their results while the pop's reply is on its way.
    static func gatherTarget(prefetchCount: Int, eventLoop: Bool = false) -> Int {
        guard prefetchCount > 0 else { return 0 }
        if eventLoop { return min(fetchBatch, max(1, prefetchCount / 2)) }
        return min(fetchBatch, max(prefetchCount / 2, min(prefetchCount, 16)))
    }

    /// What the fetch loop carries from one fetch to the next.
    private struct FetchState {
        /// How many free prefetch permits a fetch gathers under load (``gatherTarget(prefetchCount:eventLoop:)``).
        let gatherTarget: Int
        /// Gathering stops once fewer ready jobs than this remain. On an event loop the thread that pops also runs
        /// the tasks, so the jobs here cannot keep a slot busy while it gathers; it gathers to its target whenever
        /// the last pop was full.
        let gatherBacklog: Int
        /// Failed fetches in a row.
        var failures = 0
        /// Those of them that could not reach Redis: the first is the connection's loss, the others Celery's
        /// reconnection attempts (``BrokerConnectionRetry``).
        var unreachable = 0
        /// Whether the last fetch found as many messages as it asked for.
        var busy = false
        /// The connection's losses within the last second, as Celery's consumer counts its restarts.
        var restarts = RestartFrequency()
    }

    /// How one fetch ended.
    private enum FetchStep {
        /// Shutdown, or the prefetch permits closed.
        case stop
        /// Messages were handed on to the receive loop.
        case handedOn
        /// Nothing came (or the fetch failed and was waited out).
        case nothing
    }

    /// Fetches until shutdown.
    private func fetchLoop(into fetched: Handoff<[BrokerDelivery]>) async {
        defer { fetched.finish() }
        let eventLoop = executor.isEventLoop
        var state = FetchState(
            gatherTarget: Self.gatherTarget(prefetchCount: configuration.prefetchCount, eventLoop: eventLoop),
            gatherBacklog: eventLoop ? 0 : configuration.slots)
        await service.broker.consuming(logger: logger) {
            while !shutdown.isTriggered, !Task.isCancelled {
                if await fetchOnce(into: fetched, &state) == .stop { break }
            }
        }
    }

    /// One fetch: waits for a prefetch permit, takes what the free permits allow (a batch under load), and hands it
    /// to the receive loop.
    private func fetchOnce(into fetched: Handoff<[BrokerDelivery]>, _ state: inout FetchState) async -> FetchStep {
        if state.unreachable > 0, case let queues = consuming.withLock({ $0 }), !queues.isEmpty {
            // As Celery's consumer restarts after a lost connection: it connects (declaring its queues again, as
            // kombu's consumer does on revival, so a Redis that came back empty has their bindings), says so, sends
            // worker-online, mingles, and only then consumes.
            do {
                // A connection the server hung up on is replaced first, not taken for a failed attempt.
                (service.broker as? RedisBroker)?.closeHungUpConnections()
                try await service.broker.declare(queues: queues, bindings: configuration.queueBindings)
            } catch {
                return await failed(error, &state)
            }
            service.logFailedOver()
            logger.info("Connected to \(configuration.brokerURL.brokerDisplay)")
            state.failures = 0
            state.unreachable = 0
            await sendWorkerEvent("worker-online")
            await mingle(afterReconnecting: true)
        }
        guard await prefetch.acquire() else { return .stop }
        // One permit is needed to fetch at all; any others free now let one round trip take a batch.
        let cancelled = cancellations.load(ordering: .acquiring)
        let queues = consuming.withLock { $0 }
        if queues.isEmpty {
            // Every queue was cancelled: wait for an add_consumer.
            prefetch.release()
            _ = await shutdown.sleep(untilUnixTime: WallClock.now() + 0.5)
            return .nothing
        }
        var permits = 1 + prefetch.tryAcquire(upTo: Self.fetchBatch - 1)
        // Under load (the last fetch found as many messages as it asked for), fetch a batch rather than each
        // message as a permit frees: wait for more permits while the jobs already here keep every slot busy.
        // Each wait ends at the next permit freed (a task starting, or finishing with acks-late), and stops as
        // soon as fewer ready jobs than slots remain, so no slot idles for it.
        while state.busy, permits < state.gatherTarget, readyJobs.load(ordering: .relaxed) >= state.gatherBacklog {
            guard await prefetch.acquire() else {
                prefetch.release(permits)
                return .stop
            }
            permits += 1 + prefetch.tryAcquire(upTo: Self.fetchBatch - 1 - permits)
        }
        do {
            var deliveries = try await service.broker.fetch(queues: queues, limit: permits)
            state.busy = deliveries.count == permits
            if service.logFailedOver() || state.failures > 0 {
                logger.info("Connected to \(configuration.brokerURL.brokerDisplay)")
                state.failures = 0
                state.unreachable = 0
            }
            if deliveries.count < permits { prefetch.release(permits - deliveries.count) }
            if cancellations.load(ordering: .acquiring) != cancelled { await requeueUndeliverable(&deliveries) }
            if deliveries.isEmpty { return .nothing }
            held.withLock { $0.add(&deliveries) }
            // Decoded and validated by the receive loop (on the event loop, or on a task thread).
            fetched.yield(deliveries)
            return .handedOn
        } catch {
            prefetch.release(permits)
            return await failed(error, &state)
        }
    }

    /// After a failed fetch (or reconnection): Celery's consumer's lines and waits, or giving up as it does.
    private func failed(_ error: CeleryWorkerError, _ state: inout FetchState) async -> FetchStep {
        state.failures += 1
        guard error.isConnectionProblem else {
            // Redis answered with an error (a key of the wrong type, say): the messages stay on their lists. Not a
            // connection attempt: logged and tried again, without counting against broker_connection_max_retries.
            let delay = service.retryDelays.delay(attempt: state.failures)
            logger.error(
                "consumer: Cannot fetch from the broker (\(error.message)); the messages stay in their queues. Trying again in \(CeleryWorkerService.format(seconds: delay)) seconds..."
            )
            _ = await shutdown.sleep(untilUnixTime: WallClock.now() + delay)
            return .nothing
        }
        state.unreachable += 1
        let policy = configuration.brokerConnectionRetry
        if state.unreachable == 1 {
            // As Celery's consumer: the loss is logged, and the first attempt to reconnect follows at once.
            guard policy.retries(startup: false) else {
                giveUp(policy.disabledReason(startup: false))
                return .stop
            }
            logger.warning("consumer: Connection to broker lost. Trying to re-establish the connection... (\(error.message))")
            // Celery's consumer stops its heart as it restarts (worker-offline, if the event gets through) and starts it
            // again once connected (worker-online).
            await sendWorkerEvent("worker-offline")
            if let tooOften = state.restarts.step() {
                logger.critical("\(tooOften)")
                _ = await shutdown.sleep(untilUnixTime: WallClock.now() + 1)
            }
            return .nothing
        }
        let failedOver = service.logFailovers()
        switch policy.step(afterFailedAttempt: state.unreachable - 1, startup: false, error: error.message) {
        case .giveUp(let reason):
            giveUp(reason)
            return .stop
        case .wait(let seconds, let note):
            let server = failedOver.lastFailed ?? configuration.brokerURL.brokerDisplay
            logger.error("consumer: Cannot connect to \(server): \(error.message).\n\(note)")
            _ = await shutdown.sleep(untilUnixTime: WallClock.now() + seconds)
            return .nothing
        }
    }

    /// A pop sent before a `cancel_consumer` can still take a message from the cancelled queue. As kombu does
    /// ("Requeuing undeliverable message … No consumers"), the message goes back to the end of its queue, marked
    /// redelivered, for the workers that still consume it; if that fails it stays in `unacked` and is restored
    /// after the visibility timeout.
    private func requeueUndeliverable(_ deliveries: inout [BrokerDelivery]) async {
        let consumed = consuming.withLock { $0 }
        let undeliverable = { (delivery: BrokerDelivery) in !consumed.contains(delivery.queue) && delivery.deliveryTag != nil }
        let requeued = deliveries.filter(undeliverable)
        guard !requeued.isEmpty else { return }
        deliveries.removeAll(where: undeliverable)
        prefetch.release(requeued.count)
        // Restoring looks the message up in `unacked`: its record (sent unconfirmed by a blocking pop) must be there.
        warnUnrecorded(await requeued.recorded())
        for delivery in requeued {
            logger.warning("Requeuing undeliverable message for queue '\(delivery.queue)': No consumers.")
            do {
                try await service.broker.restore([delivery], atFront: false)
            } catch {
                logger.error(
                    "Cannot requeue the message for queue '\(delivery.queue)' (\(error.message)): it stays in unacked and is restored after the visibility timeout."
                )
            }
        }
    }

    // MARK: Events

    /// `worker-heartbeat` every `heartbeatInterval` seconds (2, Python's), even without `-E`; `worker-offline` as
    /// soon as shutdown begins (before running tasks finish, as in Python). Nothing with `--without-heartbeat`.
    private func heartbeatLoop() async {
        guard service.events != nil, let interval = configuration.heartbeatInterval else { return }
        let event = WorkerSignals.WorkerEvent(hostname: configuration.nodeName)
        while await shutdown.sleep(untilUnixTime: WallClock.now() + interval) {
            await sendWorkerEvent("worker-heartbeat")
            await WorkerSignals.send(signals.heartbeatSent, event, signal: "heartbeat_sent", logger: logger)
        }
        await sendWorkerEvent("worker-offline")
    }

    /// A worker event, unless `--without-heartbeat` turned them off (Celery's heart sends all three).
    func sendWorkerEvent(_ type: String) async {
        guard let events = service.events, let interval = configuration.heartbeatInterval else { return }
        let (active, processed) = counters.withLock { ($0.active, $0.processed) }
        await events.sendWorkerEvent(type, active: active, processed: processed, frequency: interval)
    }

    /// Counts the event in the metrics and, with task events on, sends it (`fields` are only worked out then), without
    /// waiting for Redis (see ``EventDispatcher``). Inlined: without task events (the default) it costs no call.
    @inline(__always)
    func sendTaskEvent(_ type: String, _ message: CeleryTaskMessage, _ fields: @autoclosure () -> CeleryObject = [:]) {
        service.metrics.count(event: type, task: message.name)
        guard let events = service.events, events.sendsTaskEvents else { return }
        send(taskEvent: type, message, fields(), with: events)
    }

    private func send(taskEvent type: String, _ message: CeleryTaskMessage, _ fields: CeleryObject, with events: EventDispatcher) {
        events.sendTaskEvent(type, uuid: message.id, fields)
    }

    // MARK: Visibility timeout

    /// How often held messages are refreshed and the visibility sweep runs: 10 s (kombu's `unacked_restore_interval`
    /// when it is set), or a third of the visibility timeout when that is shorter, so a live message is always
    /// refreshed before it could look abandoned.
    var maintenanceInterval: Double {
        Self.maintenanceInterval(
            visibilityTimeout: configuration.visibilityTimeout, restoreInterval: configuration.brokerTransport.unackedRestoreInterval)
    }

    static func maintenanceInterval(visibilityTimeout: Double, restoreInterval: Double?) -> Double {
        min(restoreInterval ?? 10, visibilityTimeout / 3)
    }

    private func maintenanceLoop() async {
        while await shutdown.sleep(untilUnixTime: WallClock.now() + maintenanceInterval) {
            let live = held.withLock { $0.all }
            do {
                try await service.broker.keepAlive(live)
            } catch {
                logger.warning("Cannot refresh \(live.count) held message(s) in unacked_index: \(error.message)")
            }
            await sweep()
        }
    }

    /// kombu's `restore_visible`: messages unacknowledged for longer than the visibility timeout (their worker
    /// died) go back to their queues.
    func sweep() async {
        do {
            let sweep = try await service.broker.restoreVisible(visibilityTimeout: configuration.visibilityTimeout)
            if sweep.restored > 0 {
                logger.warning(
                    "Restored \(sweep.restored) message(s) left unacknowledged for longer than the visibility timeout (\(configuration.visibilityTimeout)s)"
                )
            }
            for tag in sweep.unreadable {
                logger.error(
                    "Cannot restore the unacknowledged message \(tag): its record is not kombu's [message, exchange, routing_key]. It is left in the unacked hash, out of its index, so that no sweep meets it again"
                )
            }
        } catch {
            logger.warning("Visibility sweep failed: \(error.message)")
        }
    }

    // MARK: Dispatching

    /// Validates each delivery as it arrives, whether or not a slot is free: it is logged as received (and an
    /// invalid one settled, by ``prepare(_:)``) at once, as in Python.
    private func receiveLoop(
        _ fetched: Handoff<[BrokerDelivery]>, into ready: Handoff<[PreparedJob]>
    ) async {
        defer { ready.finish() }
        while let deliveries = await fetched.next() {
            var jobs: [PreparedJob] = []
            jobs.reserveCapacity(deliveries.count)
            for delivery in deliveries {
                if let job = await prepare(delivery) { jobs.append(job) }
            }
            guard !jobs.isEmpty else { continue }
            readyJobs.add(jobs.count, ordering: .relaxed)
            if autoscales { autoscalerReceived() }
            // The dispatcher continues on this thread, which waits for the next message right after.
            WorkerThreads.keepFirstJobOnThisThread()
            ready.yield(jobs)
        }
    }

    private func dispatchLoop(_ ready: Handoff<[PreparedJob]>) async {
        // As a task group would: a cold shutdown (this loop cancelled) cancels every job, and the loop returns once
        // every job has ended.
        await withTaskCancellationHandler {
            while let jobs = await ready.next() {
                for job in jobs { await dispatch(job) }
            }
            runners.close()
            await jobTasks.waitUntilIdle()
        } onCancel: {
            jobTasks.cancelAll()
            runners.close()
        }
    }

    /// Starts a job's task in a free slot, or after its ETA or rate limit.
    private func dispatch(_ job: PreparedJob) async {
        var counted = true
        defer { if counted { readyJobs.subtract(1, ordering: .relaxed) } }
        if let eta = job.etaTime, eta > WallClock.now() {
            // Like Celery, an ETA task does not hold a prefetch slot while it waits (as Celery's QoS grows by one
            // for it), as long as worker_eta_task_limit allows.
            let frees = freesPrefetchWhileWaiting()
            if frees { prefetch.release() }
            let stop = StopRequest()
            jobTasks.start(on: executor, stop: stop) {
                let started = await self.shutdown.sleep(untilUnixTime: eta)
                if frees { self.etaFreed.subtract(1, ordering: .relaxed) }
                guard started, await self.waitForRateLimit(job), await self.slots.acquire() else {
                    if !frees { self.prefetch.release() }
                    return  // given back at the end, as never started
                }
                await self.execute(job, holdsPrefetch: !frees, stop: stop)
                self.slots.release()
            }
            return
        }
        if limits.withLock({ $0.rate(for: job.task) }) != nil {
            // A rate-limited task waits for its turn apart, holding its prefetch slot as in Celery.
            let stop = StopRequest()
            jobTasks.start(on: executor, stop: stop) {
                guard await self.waitForRateLimit(job), await self.slots.acquire() else {
                    self.prefetch.release()
                    return  // given back at the end, as never started
                }
                await self.execute(job, holdsPrefetch: true, stop: stop)
                self.slots.release()
            }
            return
        }
        guard !shutdown.isTriggered, await slots.acquire() else {
            prefetch.release()
            return  // given back at the end, as never started
        }
        readyJobs.subtract(1, ordering: .relaxed)
        counted = false
        // The first task started in one go runs on this thread (it is free as soon as the loop waits again); any
        // others wake the other task threads.
        WorkerThreads.keepFirstJobOnThisThread()
        let stop = StopRequest()
        runners.run(
            {
                await self.execute(job, holdsPrefetch: true, stop: stop)
                self.slots.release()
            }, stop: stop)
    }

    /// Whether an ETA task may wait without its prefetch slot: always, unless worker_eta_task_limit caps the messages
    /// held (the window plus the ETA tasks so freed). Counts it when it may.
    private func freesPrefetchWhileWaiting() -> Bool {
        guard let limit = configuration.etaTaskLimit else { return true }
        let window = scaling.withLock { $0.prefetchCount }
        guard window > 0 else { return true }  // no prefetch limit: nothing to hold
        let allowance = max(0, limit - window)
        while true {
            let freed = etaFreed.load(ordering: .relaxed)
            guard freed < allowance else { return false }
            if etaFreed.compareExchange(expected: freed, desired: freed + 1, ordering: .relaxed).exchanged { return true }
        }
    }

    /// Waits until a rate-limited task's turn (at once when it has no limit); `false` when shutdown came first.
    private func waitForRateLimit(_ job: PreparedJob) async -> Bool {
        guard let start = limits.withLock({ $0.reserveStart(for: job.task, now: WallClock.now()) }) else { return true }
        return await shutdown.sleep(untilUnixTime: start)
    }

    private func giveBack(_ deliveries: [BrokerDelivery]) async {
        guard !deliveries.isEmpty else { return }
        logger.info("Restoring \(deliveries.count) unacknowledged message(s)")
        for delivery in deliveries {
            var machine = DeliveryStateMachine(acksLate: true)
            await carryOut(machine.giveBack(), for: delivery)
        }
    }

    /// Writes a settler batch in its phases: early acknowledgements, documents, late acknowledgements. With the
    /// broker and the backend on one server that is one script; otherwise (or if that script fails for another
    /// reason than the connection) one write per phase.
    private func flush(_ batch: [Settler.Entry]) async {
        let phases = Settler.Phases(batch)
        if let shared = service.sharedServer, await settleTogether(phases, shared) { return }
        if !phases.earlyAcks.isEmpty { await carryOut(.ack, for: phases.earlyAcks) }
        if !phases.documents.isEmpty { await store(phases.documents) }
        if !phases.lateAcks.isEmpty { await carryOut(.ack, for: phases.lateAcks) }
    }

    /// Writes a whole batch with ``RedisResultBackend/settle(earlyAcks:documents:lateAcks:broker:)``, retrying
    /// while Redis is unreachable. `false` when it failed otherwise: the caller then writes the phases one by one,
    /// and each logs its own error.
    private func settleTogether(
        _ phases: Settler.Phases, _ shared: (backend: RedisResultBackend, broker: RedisBroker)
    ) async -> Bool {
        // A delivery without a tag was never recorded: it has nothing to wait for, acknowledge or forget. Records
        // sent on the connection this script goes out on (the event loop's) reach Redis before it anyway: their
        // replies are read before its reply, and checked after it.
        let client = shared.backend.client
        let inOrder =
            phases.earlyAcks.allSatisfy { PendingRecord.precedes($0.pendingRecord, on: client) }
            && phases.lateAcks.allSatisfy { PendingRecord.precedes($0.pendingRecord, on: client) }
        func checkRecords() async {
            warnUnrecorded(await phases.earlyAcks.recorded())
            warnUnrecorded(await phases.lateAcks.recorded())
        }
        if !inOrder { await checkRecords() }
        let early = phases.earlyAcks.compactMap(\.deliveryTag)
        let late = phases.lateAcks.compactMap(\.deliveryTag)
        let outcome = await retryingResultWrite(unreachable: "Redis") { () throws(CeleryWorkerError) in
            try await shared.backend.settle(earlyAcks: early, documents: phases.documents, lateAcks: late, broker: shared.broker)
        }
        if inOrder { await checkRecords() }
        if let failure = outcome.failure {
            logger.warning("Cannot write results and acknowledgements in one script (\(failure.message)); writing them apart")
            return false
        }
        held.withLock { held in
            for delivery in phases.earlyAcks { held.remove(delivery) }
            for delivery in phases.lateAcks { held.remove(delivery) }
        }
        return true
    }

    /// Says which messages ran without their `unacked` record confirmed (a blocking pop's record that Redis refused or
    /// never answered): a crash before their acknowledgement could have lost them.
    func warnUnrecorded(_ missing: [(delivery: BrokerDelivery, failure: String)]) {
        for (delivery, failure) in missing {
            logger.warning(
                "Message \(delivery.deliveryTag ?? "?") was not recorded in unacked (\(failure)); it ran without its record, so a crash before its acknowledgement could have lost it"
            )
        }
    }

    /// Carries out a delivery action, retrying while Redis is unreachable (a lost ack would run the task twice).
    func carryOut(_ action: DeliveryStateMachine.Action, for delivery: BrokerDelivery) async {
        await carryOut(action, for: [delivery])
    }

    func carryOut(_ action: DeliveryStateMachine.Action, for all: [BrokerDelivery]) async {
        let deliveries = all.filter { $0.deliveryTag != nil }
        guard action != .none, !deliveries.isEmpty else { return }
        warnUnrecorded(await deliveries.recorded())
        let outcome = await retryingWhileUnreachable(retries: 19) { () throws(CeleryWorkerError) in
            switch action {
            case .none: return
            case .ack: try await service.broker.ack(deliveries)
            case .restore(let atFront): try await service.broker.restore(deliveries, atFront: atFront)
            }
        }
        if let failure = outcome.failure {
            logger.error("Cannot settle message(s) \(deliveries.compactMap(\.deliveryTag).joined(separator: ", ")): \(failure.message)")
            return
        }
        held.withLock { held in
            for delivery in deliveries { held.remove(delivery) }
        }
    }

    /// Runs a Redis write until it succeeds, trying again with the reconnect back-off while Redis is unreachable, at
    /// most `retries` times (a lost write would lose a result or run a task twice). Each retry is logged as a warning
    /// naming `unreachable`, when given. Returns the error that ended the attempts (`nil` on success) and how many
    /// retries it took.
    func retryingWhileUnreachable(
        retries: Int, unreachable: String? = nil, _ write: () async throws(CeleryWorkerError) -> Void
    ) async -> (failure: CeleryWorkerError?, retries: Int) {
        let delays = service.retryDelays
        return await retryingWhileUnreachable(retries: retries, delay: delays.delay(attempt:), unreachable: unreachable, write)
    }

    /// A result write (alone, or with acknowledgements in one script), retried as ``ResultBackendRetry`` says.
    func retryingResultWrite(
        unreachable: String, _ write: () async throws(CeleryWorkerError) -> Void
    ) async -> (failure: CeleryWorkerError?, retries: Int) {
        let policy = configuration.resultBackendRetry
        return await retryingWhileUnreachable(
            retries: policy.retries, delay: { policy.delay(attempt: $0) }, unreachable: unreachable, write)
    }

    /// A step that reads or writes the result backend, retried as ``ResultBackendRetry`` says (as a result write
    /// is); throws the error that ended the tries.
    func retryingResultStep<Value>(
        unreachable: String, _ step: () async throws(CeleryWorkerError) -> Value
    ) async throws(CeleryWorkerError) -> Value {
        let policy = configuration.resultBackendRetry
        return try await untilReachable(
            retries: policy.retries, delay: { policy.delay(attempt: $0) }, onRetry: { warnUnreachable(unreachable, $0, $1) }, step)
    }

    /// ``retryingWhileUnreachable(retries:unreachable:_:)`` with its own back-off; `retries` `nil` is no limit.
    private func retryingWhileUnreachable(
        retries: Int?, delay: (Int) -> Double, unreachable: String?, _ write: () async throws(CeleryWorkerError) -> Void
    ) async -> (failure: CeleryWorkerError?, retries: Int) {
        var attempts = 0
        func retrying(_ error: CeleryWorkerError, in delay: Double) {
            attempts += 1
            if let unreachable { warnUnreachable(unreachable, error, delay) }
        }
        do {
            try await untilReachable(retries: retries, delay: delay, onRetry: retrying, write)
            return (nil, attempts)
        } catch {
            return (error, attempts)
        }
    }

    /// Logs that `what` is unreachable and when it is tried again.
    private func warnUnreachable(_ what: String, _ error: CeleryWorkerError, _ delay: Double) {
        let state = error.code == .redisUnavailable ? "cannot serve the request for now" : "unreachable"
        logger.warning("\(what) \(state) (\(error.message)); retrying in \(CeleryWorkerService.format(seconds: delay)) seconds")
    }
}

/// The deliveries a worker holds unacknowledged, in the order received. Kept by a key of their own (an integer,
/// given as they are added), not by delivery tag: no tag is hashed three times per task, and two deliveries of one
/// tag are two entries.
struct HeldDeliveries: Sendable {
    private struct Entry: Sendable {
        let delivery: BrokerDelivery
        var started = false
    }

    private var entries: [Int: Entry] = [:]
    private var counter = 0

    /// Holds the deliveries that carry a tag (the others were never recorded), giving each its key.
    mutating func add(_ deliveries: inout [BrokerDelivery]) {
        for index in deliveries.indices where deliveries[index].deliveryTag != nil {
            counter += 1
            deliveries[index].heldKey = counter
            entries[counter] = Entry(delivery: deliveries[index])
        }
    }

    // A lookup and `updateValue`, and `removeValue`, rather than the subscript: its modify accessor allocates a
    // frame per call.
    mutating func markStarted(_ delivery: BrokerDelivery) {
        guard delivery.heldKey != 0, let entry = entries[delivery.heldKey], !entry.started else { return }
        entries.updateValue(Entry(delivery: entry.delivery, started: true), forKey: delivery.heldKey)
    }

    /// A started task was interrupted by a cold shutdown before its acknowledgement: its message is given back
    /// with those that never started.
    mutating func markInterrupted(_ delivery: BrokerDelivery) {
        guard delivery.heldKey != 0, let entry = entries[delivery.heldKey] else { return }
        entries.updateValue(Entry(delivery: entry.delivery, started: false), forKey: delivery.heldKey)
    }

    mutating func remove(_ delivery: BrokerDelivery) {
        guard delivery.heldKey != 0 else { return }
        entries.removeValue(forKey: delivery.heldKey)
    }

    var all: [BrokerDelivery] { entries.values.map(\.delivery) }

    /// Held deliveries whose task never started (or was interrupted before its acknowledgement), oldest first (the
    /// order kombu restores them in).
    var unstarted: [BrokerDelivery] {
        entries.filter { !$0.value.started }.sorted { $0.key < $1.key }.map(\.value.delivery)
    }
}
