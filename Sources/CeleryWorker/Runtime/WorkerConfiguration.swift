import CeleryProtocol
import Foundation
import NIOCore

/// How a worker runs. Every default is Celery's own.
public struct WorkerConfiguration: Sendable {
    /// The broker (`broker_url`). Default `redis://localhost:6379/0`.
    public var brokerURL: RedisURL
    /// The result backend (`result_backend`). Default: none, results are not stored.
    public var resultBackendURL: RedisURL?
    /// The result backend's setting as written (`--result-backend`, `CELERY_RESULT_BACKEND`, `result_backend`), which
    /// the banner and `report` show as Celery shows it (``RedisURL/sanitized(_:)``). Default `nil`: they show
    /// ``resultBackendURL``.
    public var resultBackendSetting: String?
    /// Queues to consume, in order (`-Q`). Default `["celery"]`.
    public var queues: [String]
    /// Tasks run at once (`-c`). Default: the number of CPU cores.
    public var concurrency: Int
    /// Messages reserved per unit of concurrency (`worker_prefetch_multiplier`). Default 4; 0 means no limit.
    public var prefetchMultiplier: Int
    /// Acknowledge after the task finished (`task_acks_late`). Default `false`.
    public var acksLate: Bool
    /// With acks-late, give a message back to its queue when its pool process is lost instead of failing it with
    /// `WorkerLostError` (`task_reject_on_worker_lost`). Default `false`.
    public var rejectOnWorkerLost: Bool
    /// Retry a task whose pool process was lost (`task_retry_on_worker_lost`, Celery 5.7). Default `false`.
    public var retryOnWorkerLost: Bool
    /// Store FAILURE and RETRY of tasks whose result is ignored (`task_store_errors_even_if_ignored`). Default `false`.
    public var storeErrorsEvenIfIgnored: Bool
    /// How results are serialized (`result_serializer`). Default JSON.
    public var resultSerializer: CeleryContentType
    /// Content types accepted in task messages (`accept_content`). Default JSON and msgpack. A signed message
    /// (``messageSigning``) is read whatever the content type of the body it signs, as Celery reads it.
    public var acceptContent: Set<CeleryContentType>
    /// Celery's message signing (`task_serializer: auth`, `accept_content: [auth]` and the `security_*` settings):
    /// signed task and remote control messages are verified before they are read, and every task and remote
    /// control message the worker sends is signed. Results and events are not signed. Default `nil`: none.
    public var messageSigning: MessageSigning?
    /// What every broker key and channel starts with: `broker_transport_options`' `global_keyprefix`, as written
    /// (kombu adds no separator). Default `""`.
    public var brokerKeyPrefix: String
    /// What every result key starts with: `result_backend_transport_options`' `global_keyprefix`, as Celery
    /// normalizes it (``WorkerConfiguration/resultKeyPrefix(normalizing:)``). Default `""`.
    public var resultKeyPrefix: String
    /// Seconds results are kept (`result_expires`). Default 86 400 (1 day); `nil` or 0 keeps them forever.
    public var resultExpires: Int?
    /// Seconds FAILURE results are kept (Celery 5.7's `result_failure_expires`; 0 keeps them forever). Default
    /// `nil`: as ``resultExpires``.
    public var resultFailureExpires: Int?
    /// Seconds after which an unacknowledged message is given to another worker (`visibility_timeout`).
    /// Default 3 600.
    public var visibilityTimeout: Double
    /// Send task events (`-E`, `worker_send_task_events`). Default `false`.
    public var sendTaskEvents: Bool
    /// The node name (`-n`), `celery@<hostname>` by default.
    public var nodeName: String
    /// Store STARTED before a task runs (`task_track_started`). Default `false`.
    public var trackStarted: Bool
    /// Add `name`, `args`, `kwargs`, `worker`, `retries` and `queue` to stored results (`result_extended`).
    /// Default `false`.
    public var resultExtended: Bool
    /// The app's time zone (`timezone`): `date_done` is written in it, as Python's `app.now()`. Default UTC.
    public var timezone: CeleryTimeZone
    /// `enable_utc`: naive `eta`/`expires` times are UTC when on (the default), else in ``timezone``.
    public var enableUTC: Bool
    /// Seconds after which a running task is asked to stop (`task_soft_time_limit`); `nil`: none.
    public var softTimeLimit: Double?
    /// Seconds after which a running task is killed (`task_time_limit`); `nil`: none. Enforced by the process
    /// pool only; the thread pool cannot stop a thread.
    public var timeLimit: Double?
    /// With `--pool process`, a child is replaced after this many tasks (`--max-tasks-per-child`,
    /// `worker_max_tasks_per_child`); `nil`: never.
    public var maxTasksPerChild: Int?
    /// With `--pool process`, a child whose peak resident memory passed this many KiB is replaced after its task
    /// (`--max-memory-per-child`, `worker_max_memory_per_child`); `nil`: never.
    public var maxMemoryPerChild: Int?
    /// `--autoscale MAX,MIN` (process pool only; other pools ignore it): the pool starts with `min` children, grows while more tasks are
    /// received than it has children (up to `max`), and shrinks back towards `min` once no task came for
    /// ``Autoscale/keepalive`` seconds, as Celery's autoscaler does. The prefetch window is `max` × multiplier.
    /// `nil` (the default): a pool of ``concurrency``.
    public var autoscale: Autoscale?
    /// With acks-late, whether a task killed at its hard time limit is acknowledged (`task_acks_on_timeout`, or
    /// `task_acks_on_failure_or_timeout` before Celery 5.7). Off: its FAILURE is stored and the message goes back to
    /// its queue, to run again. Default on, as in Celery.
    public var acksOnTimeout: Bool = true
    /// Whether the `pool_restart` command is allowed (`worker_pool_restarts`). Default off, as in Celery.
    public var poolRestarts: Bool = false
    /// Celery's `--statedb` / `worker_state_db`: a file that keeps the revoked task ids and the clock across
    /// restarts (the Swift worker's own JSON). Default: none.
    public var stateDB: String?
    /// Celery's `-B`: the embedded beat, which sends the periodic tasks of `beat_schedule`. Default: none.
    public var beat: BeatConfiguration?
    /// Celery's `task_default_rate_limit`: the `rate_limit` of every task that sets none. Default: none.
    public var defaultRateLimit: String?
    /// Celery's `worker_disable_rate_limits`: rate limits are not enforced. Default off.
    public var disableRateLimits = false
    /// Celery's `task_annotations`: attributes of the registered tasks set from the configuration, applied when the
    /// worker starts (``TaskRegistry/annotated(by:)``). Default: none.
    public var taskAnnotations = TaskAnnotations()
    /// Celery 5.7's `result_compression`: results, chord parts and saved groups are stored compressed, behind
    /// Celery's marker, which Celery 5.7 readers (and the worker itself) undo. Default `nil`: stored as they are.
    public var resultCompression: KombuCompression?
    /// `result_chord_expires`, `result_chord_join_timeout` and `result_chord_ordered`.
    public var chord = RedisResultBackend.ChordOptions()
    /// Seconds between `worker-heartbeat` events (`--heartbeat-interval`), also their `freq`; `nil` sends no worker
    /// events at all, not `worker-online` nor `worker-offline` either (`--without-heartbeat`), as in Celery.
    /// Default 2, Celery's.
    public var heartbeatInterval: Double? = 2
    /// kombu's `sep`, `priority_steps` and `queue_order_strategy` (`broker_transport_options`): the names of the
    /// priority lists and binding members, and the order the queues are consumed in. Default kombu's.
    public var brokerTransport = RedisTransportOptions()
    /// Celery's broker connection retries: whether the consumer retries when it cannot reach the broker, and when it
    /// gives up (`broker_connection_retry`, `broker_connection_retry_on_startup`, `broker_connection_max_retries`).
    /// Default Celery's: retry, at most 100 times in a row.
    public var brokerConnectionRetry = BrokerConnectionRetry()
    /// Celery's `worker_enable_remote_control`: answer remote control (`ping`, `inspect`, `revoke` …) over the pidbox.
    /// Off, the worker does not listen to it at all, as Celery's; mingle still asks the other workers. Default on.
    public var remoteControl = true
    /// Celery's `worker_soft_shutdown_timeout`: seconds a cold shutdown first waits for running tasks, as a warm
    /// shutdown would, before it cancels them (``ShutdownSignals``). Default 0: no wait, as in Celery.
    public var softShutdownTimeout: Double = 0
    /// Celery's `worker_enable_soft_shutdown_on_idle`: the soft shutdown applies even when no task runs. Default off.
    public var softShutdownOnIdle = false
    /// Celery's `result_backend_always_retry` and its limits: how result writes are retried while the backend cannot
    /// be reached. Default: the worker's own 30 retries, 1 to 32 seconds apart.
    public var resultBackendRetry = ResultBackendRetry()
    /// Celery's `task_queues`: the queues the app declares, each with its exchange and routing key. Without `-Q` the
    /// worker consumes them all, as Celery's does; a queue named by `-Q` is bound as declared here. Default none.
    public var declaredQueues: [(name: String, binding: QueueBinding)] = []
    /// Celery's `task_default_priority`: the priority of the tasks the worker sends (callbacks, chain steps, chord
    /// bodies, errbacks, `context.send`) when neither their options nor a route give one. Default `nil` (0).
    public var defaultPriority: Int?
    /// Celery's `task_inherit_parent_priority`: a task sent on behalf of a running one without a priority of its own
    /// gets the running task's (its message's). Default off.
    public var inheritParentPriority = false
    /// The priority of a task sent on behalf of a running one (whose message had `parent`) that names none, as
    /// Celery's `send_task` gives it: the parent's with ``inheritParentPriority``, else ``defaultPriority``.
    public func fallbackPriority(parent: Int) -> Int? {
        inheritParentPriority ? parent : defaultPriority
    }

    /// Celery's `control_exchange`: remote control goes over `<name>.pidbox`, its replies over
    /// `reply.<name>.pidbox`. Apps that share one Redis database keep their workers apart with it. Default `celery`.
    public var controlExchange = "celery"
    /// Celery's `event_exchange`: the exchange events are published to. Default `celeryev`.
    public var eventExchange = "celeryev"
    /// Celery's `worker_eta_task_limit`: at most this many messages held, counting those waiting for their ETA (or
    /// countdown). An ETA task frees its prefetch slot while it waits, as in Celery, only while that keeps the
    /// messages held within the limit. Default `nil`: no limit, as in Celery.
    public var etaTaskLimit: Int?
    /// Celery's `worker_disable_prefetch` (`--disable-prefetch`, Celery 5.5, Redis only): a message is fetched only
    /// when a task slot is free. The window is then the concurrency (the autoscale maximum), counting running tasks
    /// whatever their acknowledgement, as Celery counts its `reserved_requests`. Default off.
    public var disablePrefetch = false
    /// Celery's `task_ignore_result`: no task stores its result (nor its states), unless its message says otherwise
    /// (`ignore_result` in the headers, as Celery 5.7 reads it) or an annotation does. Default off.
    public var ignoreResult = false
    /// Celery's `worker_deduplicate_successful_tasks`: an acks-late task whose message was redelivered is not run
    /// again when it already succeeded (its stored state is `SUCCESS`). Default off, as in Celery.
    public var deduplicateSuccessfulTasks = false
    /// Celery's `task_send_sent_event`: a `task-sent` event for every task message the worker publishes (callbacks,
    /// chain steps, chord bodies, retries), as Celery's producer sends it. Default off.
    public var sendSentEvent = false
    /// Celery's mingle: at start, before consuming, ask the other workers for the task ids they hold revoked
    /// (`--without-mingle` turns it off). Default on, as in Celery.
    public var mingle: Bool = true
    /// Celery's gossip: the worker listens to the other workers' events, logs `missed heartbeat from …` when one
    /// goes silent, keeps its clock past theirs and takes part in elections (`--without-gossip` turns it off).
    /// Default on, as in Celery.
    public var gossip: Bool = true
    /// Celery's `worker_direct`: the worker also consumes `<node name>.dq2`, bound to the `C.dq2` exchange by its
    /// node name (Python's `celery.utils.worker_direct(node)` sends there). Default off.
    public var workerDirect: Bool = false
    /// Where task bodies run (`-P`, `worker_pool`). Default: threads in the worker process.
    public var pool: PoolKind
    /// Where callbacks, chain steps and chord bodies without a `queue` option (or a route) are sent
    /// (`task_default_queue`). Default `celery`.
    public var defaultQueue: String
    /// `task_routes`: where the tasks the worker sends (callbacks, chain steps, chord bodies, `context.send`) go by
    /// name, unless they carry a queue. Default: none.
    public var taskRoutes = TaskRoutes()
    /// The serializer of the task messages the worker sends (`task_serializer`): callbacks, chain steps, chord
    /// bodies, retries and its client's, whatever serializer the task's own message came in, as in Python. Default
    /// JSON.
    public var taskSerializer: CeleryContentType
    /// How the bodies of task messages the worker sends (callbacks, chain steps, chord bodies, retries) and its
    /// client's are compressed (`task_compression`). Default `nil`: not at all, as in Celery.
    public var taskCompression: KombuCompression?

    /// Where task bodies run.
    public enum PoolKind: String, Sendable, CaseIterable {
        /// Dedicated threads in the worker process (concurrency + 1), on the solo pool's event loop: one thread at a
        /// time fetches, runs tasks and writes results, and a task body that holds its thread for over 1–2 ms is
        /// left to it while another thread goes on, so up to `concurrency` blocking bodies run at once. As fast as
        /// the solo pool for short tasks; time limits are soft only.
        case threads
        /// Child processes (Python's prefork): hard time limits, `terminate` kills, a crashing task is contained.
        case process
        /// Celery's solo pool: one task at a time, on the one thread that also fetches the messages and writes the
        /// results. The prefetch window is still concurrency × multiplier, as in Python. While Redis works on one
        /// request the thread runs tasks; a task that blocks its thread holds the whole worker up, as in Python.
        /// Time limits are soft only.
        case solo

        /// Reads `-P` / `worker_pool`: `threads`, `process`, or Celery's `prefork` (the process pool).
        public init?(celeryName: String) {
            switch celeryName.lowercased() {
            case "threads", "thread": self = .threads
            case "process", "processes", "prefork": self = .process
            case "solo": self = .solo
            default: return nil
            }
        }
    }

    /// How many tasks run at once when the worker starts: the concurrency (the autoscale minimum with
    /// ``autoscale``), or 1 with the solo pool (whose prefetch window is still concurrency × multiplier, as in
    /// Python). `pool_grow`, `pool_shrink` and the autoscaler change it in a process pool.
    var slots: Int {
        switch pool {
        case .solo: 1
        case .threads: concurrency
        case .process: poolAutoscale?.min ?? concurrency
        }
    }

    /// ``autoscale`` where it applies: in a process pool.
    var poolAutoscale: Autoscale? { pool == .process ? autoscale : nil }

    /// Celery's `--autoscale MAX[,MIN]`: the bounds of a process pool that grows and shrinks with the work.
    public struct Autoscale: Sendable, Equatable {
        /// The most children.
        public var max: Int
        /// The fewest children (0: none while no task comes).
        public var min: Int
        /// Seconds without a new task (or a scale-up) before the pool shrinks: Celery's `AUTOSCALE_KEEPALIVE`
        /// environment variable, 30 by default.
        public var keepalive: Double

        public init(max: Int, min: Int = 0, keepalive: Double = 30) {
            self.max = max
            self.min = min
            self.keepalive = keepalive
        }

        /// Reads Celery's `--autoscale` text, `MAX` or `MAX,MIN`; `nil` unless both are whole numbers with
        /// 0 ≤ MIN ≤ MAX and MAX ≥ 1.
        public init?(parsing text: String, keepalive: Double = 30) {
            let parts = text.split(separator: ",", maxSplits: 1, omittingEmptySubsequences: false)
            guard let max = Int(parts[0].trimmingCharacters(in: .whitespaces)) else { return nil }
            var min = 0
            if parts.count == 2 {
                let text = parts[1].trimmingCharacters(in: .whitespaces)
                if !text.isEmpty {
                    guard let parsed = Int(text) else { return nil }
                    min = parsed
                }
            }
            guard max >= 1, min >= 0, min <= max else { return nil }
            self.init(max: max, min: min, keepalive: keepalive)
        }
    }

    public init(
        brokerURL: RedisURL = RedisURL(endpoint: .tcp(host: "localhost", port: 6379)),
        resultBackendURL: RedisURL? = nil,
        queues: [String] = ["celery"],
        concurrency: Int = WorkerConfiguration.defaultConcurrency,
        prefetchMultiplier: Int = 4,
        acksLate: Bool = false,
        resultSerializer: CeleryContentType = .json,
        acceptContent: Set<CeleryContentType> = [.json, .msgpack],
        resultExpires: Int? = 86_400,
        visibilityTimeout: Double = 3_600,
        sendTaskEvents: Bool = false,
        nodeName: String = WorkerConfiguration.defaultNodeName,
        trackStarted: Bool = false,
        resultExtended: Bool = false,
        timezone: CeleryTimeZone = .utc,
        enableUTC: Bool = true,
        softTimeLimit: Double? = nil,
        timeLimit: Double? = nil,
        pool: PoolKind = .threads,
        defaultQueue: String = "celery",
        taskSerializer: CeleryContentType = .json,
        taskCompression: KombuCompression? = nil,
        rejectOnWorkerLost: Bool = false,
        retryOnWorkerLost: Bool = false,
        storeErrorsEvenIfIgnored: Bool = false,
        resultFailureExpires: Int? = nil,
        maxTasksPerChild: Int? = nil,
        maxMemoryPerChild: Int? = nil,
        brokerKeyPrefix: String = "",
        resultKeyPrefix: String = ""
    ) {
        self.brokerURL = brokerURL
        self.resultBackendURL = resultBackendURL
        self.queues = queues
        self.concurrency = concurrency
        self.prefetchMultiplier = prefetchMultiplier
        self.acksLate = acksLate
        self.resultSerializer = resultSerializer
        self.acceptContent = acceptContent
        self.resultExpires = resultExpires
        self.visibilityTimeout = visibilityTimeout
        self.sendTaskEvents = sendTaskEvents
        self.nodeName = nodeName
        self.trackStarted = trackStarted
        self.resultExtended = resultExtended
        self.timezone = timezone
        self.enableUTC = enableUTC
        self.softTimeLimit = softTimeLimit
        self.timeLimit = timeLimit
        self.pool = pool
        self.defaultQueue = defaultQueue
        self.taskSerializer = taskSerializer
        self.taskCompression = taskCompression
        self.rejectOnWorkerLost = rejectOnWorkerLost
        self.retryOnWorkerLost = retryOnWorkerLost
        self.storeErrorsEvenIfIgnored = storeErrorsEvenIfIgnored
        self.resultFailureExpires = resultFailureExpires
        self.maxTasksPerChild = maxTasksPerChild
        self.maxMemoryPerChild = maxMemoryPerChild
        self.brokerKeyPrefix = brokerKeyPrefix
        self.resultKeyPrefix = resultKeyPrefix
    }

    /// The queues not bound by their own name: the worker-direct queue, with ``workerDirect``.
    public var queueBindings: [String: QueueBinding] {
        var bindings = Dictionary(declaredQueues.map { ($0.name, $0.binding) }, uniquingKeysWith: { first, _ in first })
        guard workerDirect else { return bindings }
        let direct = QueueBinding.workerDirect(node: nodeName)
        bindings[direct.queue] = direct.binding
        return bindings
    }

    /// Adds the worker-direct queue to ``queues`` with `worker_direct` (Celery's `select_add(worker_direct(...))`).
    /// The queues of ``declaredQueues`` are consumed only when named (the executable names them all without `-Q`).
    public mutating func addBoundQueues() {
        guard workerDirect else { return }
        let direct = QueueBinding.workerDirect(node: nodeName).queue
        if !queues.contains(direct) { queues.append(direct) }
    }

    /// How `queue` is bound.
    public func binding(of queue: String) -> QueueBinding {
        queueBindings[queue] ?? .named(queue)
    }

    /// A `global_keyprefix` as Celery's result backend uses it: `_` appended unless it ends in `:`, `_`, `-` or `.`.
    public static func resultKeyPrefix(normalizing prefix: String) -> String {
        guard let last = prefix.last else { return "" }
        return ":_-.".contains(last) ? prefix : prefix + "_"
    }

    /// Formats a time as `app.now().isoformat()` would, in ``timezone``.
    public func isoformat(unixSeconds: Double) -> String {
        timezone.isoformat(unixSeconds: unixSeconds)
    }

    /// Parses an `eta`/`expires` header, reading naive times as Celery does under ``enableUTC``.
    public func parseTime(_ text: String) -> Double? {
        if enableUTC { return CeleryTimestamp.parse(text) }
        let zone = timezone
        return CeleryTimestamp.parse(text) { wallClock in zone.secondsFromGMT(at: wallClock) }
    }

    /// How many messages may be reserved (received and not yet acknowledged) at once; 0 means unlimited.
    public var prefetchCount: Int { (poolAutoscale.map { Swift.max($0.max, 1) } ?? concurrency) * windowMultiplier }

    /// Messages held per unit of concurrency: the prefetch multiplier, or 1 with ``disablePrefetch``.
    public var windowMultiplier: Int { disablePrefetch ? 1 : prefetchMultiplier }

    /// The number of CPU cores.
    public static var defaultConcurrency: Int { max(1, System.coreCount) }

    /// `celery@<hostname>`.
    public static var defaultNodeName: String { "celery@" + Host.name }

    /// Expands `-n` the way Celery does: `%h` is the host name, `%n` the short host name, `%d` the domain, and a
    /// name without `@` gets `@<hostname>` appended.
    /// Celery's `node_format` for file names such as `--pidfile`: `%p` the whole node name, `%n` its name part
    /// (before `@`), `%h` its host, `%d` the host's domain, `%i` the process index (`0` in the main process, `n` in
    /// the pool's child `ForkPoolWorker-n`) and `%I` its `-` form (empty in the main process, `-n` in a child), `%%` a
    /// percent sign.
    public static func nodeFormat(_ text: String, node: String, processIndex: Int = 0) -> String {
        nodeFormatted(text, node: node, processIndex: processIndex).text
    }

    /// ``nodeFormat(_:node:processIndex:)`` with `extra` keys over Celery's, and the first `%x` (a letter, digit or
    /// `_`) that has no key: Celery raises for it, which `multi` does; the worker keeps it as written.
    public static func nodeFormatted(
        _ text: String, node: String, processIndex: Int = 0, extra: [Character: String] = [:]
    ) -> (text: String, unknown: Character?) {
        let parts = node.split(separator: "@", maxSplits: 1).map(String.init)
        let (name, host) = parts.count == 2 ? (parts[0], parts[1]) : ("celery", parts.first ?? "")
        let domain = host.split(separator: ".").dropFirst().joined(separator: ".")
        var replacements: [Character: String] = [
            "p": node, "n": name, "h": host, "d": domain, "i": String(processIndex),
            "I": processIndex == 0 ? "" : "-\(processIndex)", "%": "%",
        ]
        replacements.merge(extra) { $1 }
        var formatted = ""
        var unknown: Character?
        var percent = false
        for character in text {
            if percent {
                if let replacement = replacements[character] {
                    formatted += replacement
                } else {
                    formatted += "%\(character)"
                    if unknown == nil, character.isLetter || character.isNumber || character == "_" { unknown = character }
                }
                percent = false
            } else if character == "%" {
                percent = true
            } else {
                formatted.append(character)
            }
        }
        return (percent ? formatted + "%" : formatted, unknown)
    }

    /// This machine's name, as Python's `socket.gethostname()`.
    public static var hostname: String { Host.name }

    /// A node name as Celery's `-n` makes it (`host_format(default_nodename(pattern))`): the name part defaults to
    /// `name` and the host part to this host (`-n worker1` is `celery@worker1`; `-n ""` and `-n w@` keep this host);
    /// then `%h` is this host's name, `%n` its first label, `%d` the rest, `%i` `0` and `%I` nothing (the main
    /// process's index), `%%` a percent sign. Another `%x` is Celery's error (`Unknown format %x in string …`).
    public static func nodeName(expanding pattern: String, name: String = "celery") throws(CeleryWorkerError) -> String {
        let host = Host.name
        let parts = pattern.split(separator: "@", maxSplits: 1, omittingEmptySubsequences: false)
        let nodeName = parts.count == 2 && !parts[0].isEmpty ? String(parts[0]) : name
        let nodeHost = parts.last.flatMap { $0.isEmpty ? nil : String($0) } ?? host
        let short = host.split(separator: ".").first.map(String.init) ?? host
        let (text, unknown) = nodeFormatted(nodeName + "@" + nodeHost, node: name + "@" + host, extra: ["n": short])
        if let unknown {
            throw CeleryWorkerError(
                code: .invalidConfiguration, message: "Unknown format %\(unknown) in string '\(pattern)'. Write %% for a percent sign.")
        }
        return text
    }
}

extension WorkerConfiguration {
    /// The task request a message carries, verified first when it is signed (``messageSigning``).
    @inline(__always)
    func taskMessage(_ envelope: KombuEnvelope) throws(CeleryProtocolError) -> CeleryTaskMessage {
        guard let messageSigning else { return try CeleryTaskMessage(envelope: envelope, accept: acceptContent) }
        return try Self.signedTaskMessage(envelope, messageSigning, accept: acceptContent)
    }

    private static func signedTaskMessage(
        _ envelope: KombuEnvelope, _ signing: MessageSigning, accept: Set<CeleryContentType>
    ) throws(CeleryProtocolError) -> CeleryTaskMessage {
        guard envelope.contentType == SignedBody.contentType else {
            return try CeleryTaskMessage(envelope: envelope, accept: accept)
        }
        // kombu reads a verified body whatever its content type (`loads(..., force=True)`).
        return try CeleryTaskMessage(envelope: try signing.open(envelope), accept: Set(CeleryContentType.allCases))
    }

    /// A message about to be published, signed when ``messageSigning`` says so.
    func sealed(_ envelope: KombuEnvelope) throws(CeleryWorkerError) -> KombuEnvelope {
        try messageSigning?.seal(envelope) ?? envelope
    }
}

extension WorkerConfiguration {
    /// The result backend as Celery's banner shows it: the setting as written, sanitized as kombu does, else the URL
    /// the worker reads (a setting kombu cannot parse, Celery's `redis` alias); `disabled://` without one.
    var resultBackendShown: String {
        guard let url = resultBackendURL else { return "disabled://" }
        return resultBackendSetting.flatMap(RedisURL.sanitized) ?? url.description
    }
}
