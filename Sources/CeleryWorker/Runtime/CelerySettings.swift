import CeleryProtocol
import Foundation
import Yams

/// Settings from a Celery-style configuration file (YAML, which also reads JSON), by Celery's own setting names:
/// the lower-case ones of Celery 4+ (`broker_url`, `result_backend`, …) and the old upper-case ones (`BROKER_URL`,
/// `CELERY_RESULT_BACKEND`, …). Every field is `nil` when the file does not set it.
///
/// Precedence, lowest first: Celery's defaults, this file, the environment (`CELERY_BROKER_URL`,
/// `CELERY_RESULT_BACKEND`), command-line flags.
public struct CelerySettings: Sendable, Equatable {
    public var brokerURL: String?
    /// `broker_failover_strategy`: how the worker picks the next server of a failover list (`;`).
    public var brokerFailoverStrategy: RedisURL.Failover.Strategy?
    public var resultBackend: String?
    /// `broker_read_url` and `broker_write_url`: the worker reads and writes through one broker, so they must agree.
    public var brokerReadURL: String?
    public var brokerWriteURL: String?
    /// `broker_host` (the broker's URL or host name when `broker_url` is not set), and `broker_port`, `broker_user`,
    /// `broker_password`, `broker_vhost`, which fill in what the URL leaves out, as kombu does.
    public var brokerHost: String?
    public var brokerParts = RedisURL.Parts()
    /// The result backend's `redis_host`, `redis_port`, `redis_username`, `redis_password` and `redis_db`, which fill
    /// in what its URL leaves out (`redis_db` only with `result_backend: redis`), as Celery's Redis backend does.
    public var backendParts = RedisURL.Parts()
    /// `broker_transport_options: {client_name: …}` and Celery 5.7's `redis_client_name` (``RedisURL/clientName``).
    public var brokerClientName: String?
    public var backendClientName: String?
    public var taskSerializer: CeleryContentType?
    /// `task_compression`; `.some(nil)` when the file sets it to null (no compression).
    public var taskCompression: KombuCompression??
    public var resultSerializer: CeleryContentType?
    /// `result_compression` (Celery 5.7): how stored results are compressed.
    public var resultCompression: KombuCompression?
    public var resultExpires: Int?
    public var resultFailureExpires: Int?
    public var acceptContent: Set<CeleryContentType>?
    /// Celery's message signing: `auth` in `task_serializer`, in `accept_content`, and the `security_*` settings
    /// (``MessageSigning/init(settings:)`` reads them as `app.setup_security()` does).
    public var security = SecuritySettings()
    public var timezone: String?
    public var enableUTC: Bool?
    public var logFile: String?
    public var acksLate: Bool?
    public var rejectOnWorkerLost: Bool?
    public var retryOnWorkerLost: Bool?
    public var storeErrorsEvenIfIgnored: Bool?
    public var maxTasksPerChild: Int?
    /// `worker_direct`.
    public var workerDirect: Bool?
    /// `worker_pool_restarts`.
    public var poolRestarts: Bool?
    /// `task_acks_on_failure_or_timeout` (Celery's older setting for both).
    public var acksOnFailureOrTimeout: Bool?
    /// `task_acks_on_timeout` (Celery 5.7).
    public var acksOnTimeout: Bool?
    public var maxMemoryPerChild: Int?
    public var timeLimit: Double?
    public var softTimeLimit: Double?
    public var concurrency: Int?
    public var pool: WorkerConfiguration.PoolKind?
    public var prefetchMultiplier: Int?
    public var trackStarted: Bool?
    public var resultExtended: Bool?
    public var defaultQueue: String?
    public var sendTaskEvents: Bool?
    public var visibilityTimeout: Double?
    /// `broker_transport_options: {global_keyprefix: …}`.
    public var brokerKeyPrefix: String?
    /// `result_backend_transport_options: {global_keyprefix: …}`, as written (not yet normalized).
    public var resultKeyPrefix: String?
    /// `task_routes`, in the order the file gives them.
    public var taskRoutes: TaskRoutes?
    /// `broker_transport_options: {master_name: …}`: the master a `sentinel://` broker URL reaches.
    public var brokerSentinelMaster: String?
    /// `result_backend_transport_options: {master_name: …}`: the master a `sentinel://` result backend reaches.
    public var resultSentinelMaster: String?
    /// `broker_transport_options` that shape the broker's keys, channels and consumption order (`sep`,
    /// `priority_steps`, `queue_order_strategy`, `fanout_prefix`, `fanout_patterns`, `unacked_*`), kombu's defaults
    /// where the file sets none.
    public var brokerTransport = RedisTransportOptions()
    /// `broker_transport_options: {sentinel_kwargs: {username: …, password: …, ssl: …}}`: how the worker connects to
    /// the Sentinels themselves.
    public var brokerSentinelOptions: SentinelOptions?
    /// `result_backend_transport_options: {sentinel_kwargs: …}`, the same for the result backend's Sentinels.
    public var resultSentinelOptions: SentinelOptions?

    /// How to connect to the Sentinels (redis-py's `sentinel_kwargs`): their user name and password, and TLS.
    public struct SentinelOptions: Sendable, Equatable {
        public var username: String?
        public var password: String?
        /// `ssl: true`, with any `ssl_*` settings (redis-py's defaults otherwise: the certificate is verified, and
        /// the host name checked).
        public var tls: RedisTLS?

        public init(username: String? = nil, password: String? = nil, tls: RedisTLS? = nil) {
            self.username = username
            self.password = password
            self.tls = tls
        }
    }

    /// `worker_state_db`.
    public var stateDB: String?
    /// The embedded beat's settings (`beat_schedule`, `beat_schedule_filename`, …).
    public var beat = BeatSettings()
    /// `worker_logfile`, `worker_pidfile`, `worker_uid`, `worker_gid`, `worker_umask`, `worker_executable`.
    public var workerDaemon = DaemonSettings()
    /// `beat_logfile`, `beat_pidfile`, `beat_uid`, `beat_gid`, `beat_umask`, `beat_executable`.
    public var beatDaemon = DaemonSettings()
    /// `worker_enable_remote_control`.
    public var remoteControl: Bool?
    /// `task_send_sent_event`.
    public var sendSentEvent: Bool?
    /// `broker_connection_retry`.
    public var brokerConnectionRetry: Bool?
    /// `broker_connection_retry_on_startup`; `.some(nil)` when the file sets it to null (Celery's default).
    public var brokerConnectionRetryOnStartup: Bool??
    /// `broker_connection_max_retries`; `.some(nil)` when the file sets it to null: retry forever.
    public var brokerConnectionMaxRetries: Int??
    /// `broker_connection_timeout`: seconds a connection attempt to the broker may take.
    public var brokerConnectionTimeout: Double?
    /// `result_backend_always_retry`, `result_backend_max_retries` (`.some(nil)`: infinite), and the sleeps between
    /// retries, in seconds.
    public var resultBackendAlwaysRetry: Bool?
    public var resultBackendMaxRetries: Int??
    public var resultBackendBaseSleep: Double?
    public var resultBackendMaxSleep: Double?
    /// A queue of `task_queues`, as a configuration file declares it (Celery's `Queues.add_compat`).
    public struct DeclaredQueue: Sendable, Equatable {
        public var name: String
        /// The exchange; `nil`: `task_default_exchange`, else the default queue's name.
        public var exchange: String?
        /// The binding key (`routing_key`, or `binding_key`); `nil`: the queue's name.
        public var routingKey: String?
        /// `exchange_type`; `nil`: `task_default_exchange_type`, else direct.
        public var exchangeType: QueueBinding.ExchangeType?

        /// The binding, with Celery's defaults for what the file left out.
        public func binding(defaultExchange: String, defaultExchangeType: QueueBinding.ExchangeType) -> QueueBinding {
            QueueBinding(
                exchange: exchange ?? defaultExchange, routingKey: routingKey ?? name,
                exchangeType: exchangeType ?? defaultExchangeType)
        }
    }

    /// `task_queues` (`CELERY_QUEUES`), in the file's order.
    public var taskQueues: [DeclaredQueue]?
    /// `task_create_missing_queues`: `false` refuses a `-Q` queue that `task_queues` does not declare.
    public var createMissingQueues: Bool?
    /// `task_default_exchange`, `task_default_exchange_type`.
    public var defaultExchange: String?
    public var defaultExchangeType: QueueBinding.ExchangeType?
    /// `task_default_priority`, `task_inherit_parent_priority`.
    public var defaultPriority: Int?
    public var inheritParentPriority: Bool?
    /// `control_exchange`, `event_exchange`.
    public var controlExchange: String?
    public var eventExchange: String?
    /// `worker_eta_task_limit`; `.some(nil)` when the file sets it to null.
    public var etaTaskLimit: Int??
    /// `worker_disable_prefetch`.
    public var disablePrefetch: Bool?
    /// `task_ignore_result`.
    public var ignoreResult: Bool?
    /// `worker_deduplicate_successful_tasks`.
    public var deduplicateSuccessfulTasks: Bool?
    /// `worker_soft_shutdown_timeout`: seconds.
    public var softShutdownTimeout: Double?
    /// `worker_enable_soft_shutdown_on_idle`.
    public var softShutdownOnIdle: Bool?
    /// `task_default_rate_limit`.
    public var defaultRateLimit: String?
    /// `worker_disable_rate_limits`.
    public var disableRateLimits: Bool?
    /// `task_annotations`: task attributes by task name (or `*`).
    public var taskAnnotations: TaskAnnotations?
    /// `worker_log_format`: the format of the worker's own log lines.
    public var logFormat: LogFormat?
    /// `worker_task_log_format`: the format of the lines tasks log through their context's logger.
    public var taskLogFormat: LogFormat?
    /// Celery 5.7's `worker_log_datefmt` and `worker_task_log_datefmt` (``LogFormat/dateFormat``).
    public var logDateFormat: String?
    public var taskLogDateFormat: String?
    /// `result_chord_expires`, `result_chord_join_timeout` and `result_backend_transport_options: {result_chord_ordered}`,
    /// Celery's defaults where the file sets none.
    public var chord = RedisResultBackend.ChordOptions()
    /// `worker_redirect_stdouts`: whether what tasks print goes to the log (``StandardOutputRedirect``).
    public var redirectStdouts: Bool?
    /// `worker_redirect_stdouts_level`: the level of those lines, as one of Python's level names (`WARNING`).
    public var redirectStdoutsLevel: String?
    /// `broker_use_ssl` as a mapping of redis-py's `ssl_*` settings: TLS for the broker whatever its URL's scheme
    /// (kombu's reading). `true` is ignored with a warning, as kombu's Redis transport ignores it.
    public var brokerTLS: RedisTLS?
    /// `redis_backend_use_ssl`, the same for the result backend.
    public var backendTLS: RedisTLS?
    /// Keys the worker does not know, each with a sentence for a warning.
    public var warnings: [String] = []

    public init() {}

    /// Reads a YAML (or JSON) file.
    public static func load(path: String) throws(CeleryWorkerError) -> CelerySettings {
        let bytes: [UInt8]
        switch FileBytes.read(path) {
        case .success(let read): bytes = read
        case .failure(let error): throw CeleryWorkerError(code: .invalidConfiguration, message: "cannot read config file \(path): \(error)")
        }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw CeleryWorkerError(code: .invalidConfiguration, message: "cannot read config file \(path): it is not UTF-8 text")
        }
        return try parse(text, source: path)
    }

    /// How deeply a configuration file may nest, far beyond any real one. Yams read 3 000 levels on the main thread
    /// of a debug build, and overflowed its stack at 10 000.
    static let maximumNesting = 1000

    /// At least how deeply `text` nests, and at most about twice that: the greatest sum, over its lines, of the
    /// line's indentation, its leading `-`, `?` and `:` indicators (each followed by a space: compact nested
    /// collections; a line of dashes is no indicator) and the flow brackets (`[`, `{`) open at that point. Brackets
    /// inside quoted strings are counted too, which can only overestimate. Each nesting level needs a deeper
    /// indentation, an indicator or a bracket.
    static func nestingBound(_ text: String) -> Int {
        let (newline, space) = (UInt8(ascii: "\n"), UInt8(ascii: " "))
        var (deepest, flow, indent, indicators, atLineStart, indicator) = (0, 0, 0, 0, true, false)
        for byte in text.utf8 {
            if indicator {
                // Followed by a space or the line's end, it opens a collection; otherwise it began a scalar.
                indicator = false
                if byte == space || byte == newline { indicators += 1 } else { atLineStart = false }
            }
            switch byte {
            case newline:
                (indent, indicators, atLineStart) = (0, 0, true)
            case space where atLineStart:
                indent += 1
            case UInt8(ascii: "-"), UInt8(ascii: "?"), UInt8(ascii: ":"):
                indicator = atLineStart
            case UInt8(ascii: "["), UInt8(ascii: "{"):
                (flow, atLineStart) = (flow + 1, false)
            case UInt8(ascii: "]"), UInt8(ascii: "}"):
                (flow, atLineStart) = (max(0, flow - 1), false)
            default:
                atLineStart = false
            }
            deepest = max(deepest, indent + indicators + flow)
        }
        return deepest
    }

    /// The first mapping key in `node`, depth first, that is not a scalar; `nil` when every key is one. Iterative: a
    /// deeply nested document costs no stack.
    private static func firstKeyNotAScalar(in node: Node) -> Node? {
        var pending = [node]
        while let next = pending.popLast() {
            switch next {
            case .scalar:
                continue
            case .sequence(let sequence):
                pending.append(contentsOf: sequence)
            case .mapping(let mapping):
                for (key, value) in mapping {
                    if key.scalar == nil { return key }
                    pending.append(value)
                }
            }
        }
        return nil
    }

    /// Parses configuration text; `source` names it in error messages.
    public static func parse(_ text: String, source: String) throws(CeleryWorkerError) -> CelerySettings {
        let document: Any?
        let root: Node?
        // Yams reads nesting by recursion: thousands of levels would overflow the stack and end the worker.
        guard Self.nestingBound(text) <= Self.maximumNesting else {
            throw CeleryWorkerError(
                code: .invalidConfiguration,
                message: "\(source) is not valid configuration: it nests deeper than \(Self.maximumNesting) levels")
        }
        do {
            // The document as nodes, whose mappings keep their order (`task_routes` patterns are tried in it).
            root = try Yams.compose(yaml: text)
            // Yams builds a mapping's values with a force-unwrap of each key as a string: a key that is a list or a
            // mapping would end the worker.
            if let root, let key = Self.firstKeyNotAScalar(in: root) {
                let place = key.mark.map { " (line \($0.line), column \($0.column))" } ?? ""
                let kind = key.mapping == nil ? "list" : "mapping"
                throw CeleryWorkerError(
                    code: .invalidConfiguration, message: "\(source) is not valid configuration: a mapping key\(place) is a \(kind), not a string")
            }
            // Built from the nodes already read, as `Yams.load` builds them (the text is read once).
            document = root?.any
        } catch let error as CeleryWorkerError {
            throw error
        } catch {
            throw CeleryWorkerError(code: .invalidConfiguration, message: "\(source) is not valid YAML: \(error)")
        }
        var settings = CelerySettings()
        guard let document else { return settings }
        guard let entries = document as? [String: Any] else {
            throw CeleryWorkerError(code: .invalidConfiguration, message: "\(source) must be a mapping of setting names to values")
        }
        for key in entries.keys.sorted() {
            guard let value = entries[key] else { continue }
            guard let setting = Self.settings[key] else {
                if let reason = Self.withoutEffect[key] ?? Self.otherBackendSetting(key) {
                    settings.warnings.append("\(source): setting '\(key)' has no effect on the Swift worker: \(reason)")
                } else {
                    settings.warnings.append("\(source): unknown setting '\(key)' is ignored")
                }
                continue
            }
            do {
                try setting(&settings, Field(source: source, key: key, value: value, node: root?.mapping?[key]))
            } catch let error as CeleryWorkerError {
                // Python's None: Celery's default, where the setting gives null no meaning of its own.
                if value is NSNull { continue }
                throw error
            } catch {
                throw CeleryWorkerError(code: .invalidConfiguration, message: "\(source): setting '\(key)': \(error)")
            }
        }
        return settings
    }

    /// A value being read, with what an error message needs.
    struct Field {
        let source: String
        let key: String
        let value: Any
        /// The value as a YAML node (mappings in order), for a top-level setting.
        var node: Node? = nil

        func fail(_ expected: String) -> CeleryWorkerError {
            let shown = node.flatMap(Self.celeryValue).map(PythonRepr.repr) ?? Self.repr(value)
            return CeleryWorkerError(
                code: .invalidConfiguration, message: "\(source): setting '\(key)' must be \(expected), got \(shown)")
        }

        /// A value read from the file as Python's `repr` writes it (`'text'`, `True`, `{'a': [1, None]}`), the keys
        /// of a mapping sorted where the file's order is not known; not Swift's `[AnyHashable("a"): …]`.
        static func repr(_ value: Any) -> String {
            switch value {
            case let text as String: PythonRepr.repr(.string(text))
            case let flag as Bool: flag ? "True" : "False"
            case is NSNull: "None"
            case let list as [Any]: "[" + list.map(repr).joined(separator: ", ") + "]"
            case let mapping as [AnyHashable: Any]:
                "{" + mapping.map { "\(repr($0.key.base)): \(repr($0.value))" }.sorted().joined(separator: ", ") + "}"
            default: "\(value)"
            }
        }

        func string() throws(CeleryWorkerError) -> String {
            guard let text = value as? String else { throw fail("a string") }
            return text
        }

        func bool() throws(CeleryWorkerError) -> Bool {
            guard let flag = value as? Bool else { throw fail("true or false") }
            return flag
        }

        func int() throws(CeleryWorkerError) -> Int {
            guard !(value is Bool), let number = value as? Int else { throw fail("a whole number") }
            return number
        }

        func seconds() throws(CeleryWorkerError) -> Double {
            if value is Bool { throw fail("a number of seconds") }
            if let number = value as? Int { return Double(number) }
            guard let number = value as? Double else { throw fail("a number of seconds") }
            return number
        }

        /// A count from `minimum`, or `nil` for null (and YAML's `.inf`, Python's `float("inf")`): no limit.
        func limit(from minimum: Int, null meaning: String) throws(CeleryWorkerError) -> Int? {
            // Python's float("inf"): YAML's .inf, or JSON's Infinity as Python's json module writes it.
            if value is NSNull || (value as? Double)?.isInfinite == true || value as? String == "Infinity" { return nil }
            let count = try int()
            guard count >= minimum else { throw fail("a whole number from \(minimum), or null \(meaning)") }
            return count
        }

        /// An exchange name: not empty, and without the `/` and glob characters of kombu's Redis channel names.
        func exchangeName() throws(CeleryWorkerError) -> String {
            let name = try string()
            guard !name.isEmpty, !name.contains(where: { "/*?[]".contains($0) || $0.isWhitespace }) else {
                throw fail("an exchange name, without '/', spaces or the glob characters * ? [ ]")
            }
            return name
        }

        /// One of kombu's compressions, by any of its names, whose library this machine has.
        func compression() throws(CeleryWorkerError) -> KombuCompression {
            guard let method = KombuCompression(name: try string()) else {
                throw fail("\(KombuCompression.supportedNames), by one of kombu's names")
            }
            try method.requireAvailable(for: "\(source): setting '\(key)'")
            return method
        }

        /// A whole number of milliseconds from 0, as seconds.
        func milliseconds() throws(CeleryWorkerError) -> Double {
            let value = try int()
            guard value >= 0 else { throw fail("a whole number of milliseconds from 0") }
            return Double(value) / 1000
        }

        func serializer() throws(CeleryWorkerError) -> CeleryContentType {
            guard let type = CeleryContentType(name: try string()) else { throw fail("json or msgpack") }
            return type
        }

        /// `task_serializer`: a serializer, or `auth` (Celery's message signing), which sets `signsTasks`.
        func taskSerializer(_ settings: inout CelerySettings) throws(CeleryWorkerError) {
            if let name = value as? String, MessageSigning.names(name) {
                settings.security.signsTasks = true
                return
            }
            settings.taskSerializer = try serializer()
            settings.security.signsTasks = false
        }

        /// `accept_content`; `auth` (or its content type `application/data`) in it sets `acceptsSigned`.
        func acceptContent(_ settings: inout CelerySettings) throws(CeleryWorkerError) {
            let names = (value as? [String]) ?? (value as? String).map { [$0] }
            let signed = names?.contains(where: MessageSigning.names) ?? false
            settings.security.acceptsSigned = signed
            settings.security.acceptsUnsigned = names?.contains { !MessageSigning.names($0) } ?? true
            settings.acceptContent =
                try Field(source: source, key: key, value: names?.filter { !MessageSigning.names($0) } ?? value)
                .serializers()
        }

        func serializers() throws(CeleryWorkerError) -> Set<CeleryContentType> {
            let names: [String]
            if let list = value as? [String] {
                names = list
            } else if let single = value as? String {
                names = [single]
            } else {
                throw fail("a list of content types")
            }
            var types = Set<CeleryContentType>()
            for name in names {
                guard let type = CeleryContentType(name: name) else {
                    throw fail("a list of json, msgpack and auth (other content types are never accepted)")
                }
                types.insert(type)
            }
            return types
        }
    }

    typealias Setter = @Sendable (inout CelerySettings, Field) throws -> Void

    /// A table that `fill` makes by calling `add(names, value)`: `value` under each of `names`.
    private static func byName<Value>(_ fill: (_ add: (_ names: [String], _ value: Value) -> Void) -> Void) -> [String: Value] {
        var table: [String: Value] = [:]
        fill { names, value in
            for name in names { table[name] = value }
        }
        return table
    }

    /// Celery settings a configuration file carries that change nothing here, each with why (logged at start instead
    /// of "unknown").
    static let withoutEffect: [String: String] = byName { add in
        add(["imports", "include", "CELERY_IMPORTS", "CELERY_INCLUDE"], "its tasks are compiled in; it imports no Python modules")
        add(
            ["beat_sync_every", "CELERYBEAT_SYNC_EVERY"],
            "the embedded beat (-B) writes its schedule file after every task it sends, and at shutdown")
        add(
            [
                "task_always_eager", "task_eager_propagates", "task_store_eager_result", "CELERY_ALWAYS_EAGER",
                "CELERY_EAGER_PROPAGATES_EXCEPTIONS",
            ],
            "eager execution happens in Python clients, which read it")
        add(
            [
                "worker_hijack_root_logger", "worker_log_color", "CELERYD_HIJACK_ROOT_LOGGER",
            ],
            "they configure Python's logging; the worker's log is Celery's format, without colours")
        add(
            ["broker_heartbeat", "broker_heartbeat_checkrate", "result_persistent", "CELERY_RESULT_PERSISTENT"],
            "they apply to AMQP, not to Redis")
        add(["broker_pool_limit", "BROKER_POOL_LIMIT"], "the worker keeps a fixed few connections to Redis")
        add(
            ["worker_cancel_long_running_tasks_on_connection_loss"],
            "the worker retries an acks-late task's acknowledgement until it reconnects (for about 8 minutes), so none needs cancelling")
        add(
            ["worker_enable_prefetch_count_reduction"],
            "a reconnection does not reset the worker's prefetch window, so it needs no reduction")
        add(
            [
                "worker_pool_putlocks", "worker_proc_alive_timeout", "worker_lost_wait", "worker_timer_precision",
                "worker_agent", "worker_consumer", "worker_timer", "worker_autoscaler", "worker_pool_start_method",
            ],
            "they set up the internals of Python's worker and its prefork pool")
        add(["event_serializer"], "its events are JSON, which every event receiver reads")
        add(
            [
                "control_queue_ttl", "control_queue_expires", "control_queue_exclusive", "control_queue_durable",
                "event_queue_ttl", "event_queue_expires", "event_queue_exclusive", "event_queue_durable", "event_queue_prefix",
                "task_queue_max_priority", "task_default_queue_type", "task_create_missing_queue_type",
                "task_create_missing_queue_exchange_type", "worker_detect_quorum_queues", "broker_native_delayed_delivery_queue_type",
                "result_exchange", "result_exchange_type", "broker_login_method",
                "CELERY_QUEUE_HA_POLICY", "CELERY_RESULT_EXCHANGE", "CELERY_RESULT_EXCHANGE_TYPE",
            ],
            "they apply to AMQP brokers and queues (or Python's event receivers), not to Redis")
        add(
            ["broker_channel_error_retry", "broker_pool_acquire_timeout"],
            "the worker keeps a fixed few connections to Redis and reconnects any of them after an error")
        add(["broker_transport", "BROKER_TRANSPORT"], "the broker URL's scheme names the transport, and it is always Redis")
        add(["result_cache_max"], "it sizes the result cache of Python clients")
        add(
            ["result_accept_content"],
            "the worker reads results in result_serializer, JSON or msgpack, and never unpickles")
        add(
            ["task_default_delivery_mode", "CELERY_DEFAULT_DELIVERY_MODE"],
            "Redis keeps every message alike; the messages the worker sends say delivery_mode 2, as Celery's default")
        add(
            ["task_default_routing_key", "CELERY_DEFAULT_ROUTING_KEY"],
            "the worker binds its queues, and routes what it sends to a queue, by the queue's name")
        add(
            ["task_protocol", "CELERY_TASK_PROTOCOL"],
            "the worker reads protocol 1 and 2 and sends protocol 2, which every Celery 4 and 5 worker reads")
        add(
            ["task_publish_retry", "task_publish_retry_policy", "CELERY_TASK_PUBLISH_RETRY", "CELERY_TASK_PUBLISH_RETRY_POLICY"],
            "the worker retries a message it sends while the broker is unreachable, 30 times 1 to 32 s apart")
        add(["task_remote_tracebacks", "CELERY_REMOTE_TRACEBACKS"], "Python clients show remote tracebacks; the worker stores them as Celery does")
        add(["task_repr_maxlevels", "CELERY_REPR_MAXLEVELS"], "it shapes argsrepr in the messages Python clients send")
        add(
            ["task_allow_error_cb_on_chord_header", "CELERY_ALLOW_ERROR_CB_ON_CHORD_HEADER"],
            "it applies where a chord is built; the chords the worker sends link errbacks to their body, the setting's default")
        add(
            [
                "redis_max_connections", "redis_socket_timeout", "redis_socket_connect_timeout", "redis_retry_on_timeout",
                "redis_socket_keepalive", "redis_backend_health_check_interval",
                "CELERY_REDIS_MAX_CONNECTIONS", "CELERY_REDIS_SOCKET_TIMEOUT", "CELERY_REDIS_SOCKET_CONNECT_TIMEOUT",
                "CELERY_REDIS_RETRY_ON_TIMEOUT", "CELERY_REDIS_SOCKET_KEEPALIVE",
            ],
            "they tune redis-py's connections; the worker's drop a command that has no reply within 30 s and reconnect")
        add(
            ["result_chord_retry_interval", "CELERY_RESULT_CHORD_RETRY_INTERVAL"],
            "it paces celery.chord_unlock, which chords on the Redis backend do not use")
    }

    /// Settings of Celery's other result backends (by their prefixes): they change nothing where results go to Redis.
    static func otherBackendSetting(_ key: String) -> String? {
        let prefixes = [
            "cassandra_", "s3_", "azureblockblob_", "gcs_", "couchbase_", "arangodb_", "mongodb_", "cosmosdbsql_",
            "elasticsearch_", "database_", "cache_backend", "CELERY_CASSANDRA_", "CELERY_MONGODB_", "CELERY_CACHE_BACKEND",
            "CELERY_RESULT_DB", "CELERY_COUCHBASE_", "CELERY_ARANGODB_",
        ]
        guard prefixes.contains(where: key.hasPrefix) else { return nil }
        return "it configures another result backend; the worker's results go to Redis"
    }

    /// kombu's Redis transport options that change nothing for the Swift worker, each with why.
    static let transportOptionsWithoutEffect: [String: String] = byName { add in
        add(
            ["socket_timeout", "socket_connect_timeout", "socket_keepalive", "socket_keepalive_options", "retry_on_timeout"],
            "they tune redis-py's sockets; the worker's own connections drop a command that has no reply within 30 s and "
                + "reconnect, connect within broker_connection_timeout, and reconnect after any error")
        add(
            ["health_check_interval"],
            "the worker drops any connection that gives no reply within 30 s, a waiting BLMOVE's or BRPOP's too, and reconnects")
        add(["max_connections"], "the worker keeps a fixed few connections to Redis")
        add(
            ["polling_interval", "brpop_timeout"],
            "an idle worker's BLMOVE (or BRPOP) waits 1 s at a time, kombu's default, and never sleeps between them")
        add(
            ["ack_emulation"],
            "the worker always records what it takes in unacked, so a message of a worker that died is redelivered, never lost")
        add(["body_encoding"], "the worker reads each message's own body_encoding and sends base64, as kombu does by default")
        add(["deadletter_queue"], "it applies to kombu's in-memory transports")
        add(["unacked_restore_throttle"], "the worker's visibility sweep reads unacked_index every time it runs")
    }

    /// Every known name, new and old, with how to read it.
    static let settings: [String: Setter] = byName { add in
        add(["broker_url", "BROKER_URL", "CELERY_BROKER_URL"]) { settings, option throws(CeleryWorkerError) in
            // A list is kombu's failover list, as the URLs joined by ';'.
            if let urls = option.value as? [Any] {
                let texts = urls.compactMap { $0 as? String }
                guard texts.count == urls.count, !texts.isEmpty else { throw option.fail("a URL, or a list of URLs to fail over to") }
                settings.brokerURL = texts.joined(separator: ";")
            } else {
                settings.brokerURL = try option.string()
            }
        }
        add(["broker_failover_strategy", "BROKER_FAILOVER_STRATEGY"]) { settings, option throws(CeleryWorkerError) in
            guard let strategy = RedisURL.Failover.Strategy(rawValue: try option.string()) else {
                throw option.fail("round-robin or shuffle (kombu's strategies)")
            }
            settings.brokerFailoverStrategy = strategy
        }
        for (names, read) in beatSettings { add(names, read) }
        for (names, read) in DaemonSettings.settings { add(names, read) }
        add(["result_backend", "CELERY_RESULT_BACKEND"]) { $0.resultBackend = try $1.string() }
        add(["broker_read_url"]) { $0.brokerReadURL = try $1.string() }
        add(["broker_write_url"]) { $0.brokerWriteURL = try $1.string() }
        add(["broker_host", "BROKER_HOST"]) { $0.brokerHost = try $1.string() }
        add(["broker_port", "BROKER_PORT"]) { $0.brokerParts.port = try $1.port() }
        add(["broker_user", "BROKER_USER"]) { $0.brokerParts.username = try $1.string() }
        add(["broker_password", "BROKER_PASSWORD"]) { $0.brokerParts.password = try $1.string() }
        add(["broker_vhost", "BROKER_VHOST"]) { $0.brokerParts.database = try $1.database() }
        add(["redis_host", "CELERY_REDIS_HOST"]) { $0.backendParts.host = try $1.string() }
        add(["redis_port", "CELERY_REDIS_PORT"]) { $0.backendParts.port = try $1.port() }
        add(["redis_username", "CELERY_REDIS_USERNAME"]) { $0.backendParts.username = try $1.string() }
        add(["redis_password", "CELERY_REDIS_PASSWORD"]) { $0.backendParts.password = try $1.string() }
        add(["redis_db", "CELERY_REDIS_DB"]) { $0.backendParts.database = try $1.database() }
        add(["redis_client_name"]) { $0.backendClientName = try $1.clientName() }
        add(["task_serializer", "CELERY_TASK_SERIALIZER"]) { try $1.taskSerializer(&$0) }
        add(["result_serializer", "CELERY_RESULT_SERIALIZER"]) { settings, field in
            if let name = field.value as? String, MessageSigning.names(name) {
                throw field.fail(
                    "json or msgpack: the worker does not sign results (Python clients read them unsigned with "
                        + "result_accept_content = ['json'], as Celery's own tests of signing do)")
            }
            settings.resultSerializer = try field.serializer()
        }
        add(["task_compression", "CELERY_MESSAGE_COMPRESSION"]) { settings, field in
            if field.value is NSNull {
                settings.taskCompression = .some(nil)
                return
            }
            settings.taskCompression = try field.compression()
        }
        add(["result_compression", "CELERY_RESULT_COMPRESSION"]) { settings, field in
            guard !(field.value is NSNull) else { return }
            settings.resultCompression = try field.compression()
        }
        add(["result_expires", "CELERY_TASK_RESULT_EXPIRES", "CELERY_RESULT_EXPIRES"]) {
            $0.resultExpires = $1.value is NSNull ? 0 : Int(try $1.seconds())
        }
        add(["result_failure_expires"]) { $0.resultFailureExpires = $1.value is NSNull ? nil : Int(try $1.seconds()) }
        add(["accept_content", "CELERY_ACCEPT_CONTENT"]) { try $1.acceptContent(&$0) }
        add(["security_key", "CELERY_SECURITY_KEY"]) { $0.security.key = try $1.string() }
        add(["security_key_password"]) { $0.security.keyPassword = try $1.string() }
        add(["security_certificate", "CELERY_SECURITY_CERTIFICATE"]) { $0.security.certificate = try $1.string() }
        add(["security_cert_store", "CELERY_SECURITY_CERT_STORE"]) { $0.security.certificateStore = try $1.string() }
        add(["security_digest"]) { $0.security.digest = try $1.string() }
        add(["swift_security_layout"]) { settings, field in
            guard let layout = SignedBody.Layout(rawValue: try field.string()) else {
                throw field.fail(SignedBody.Layout.allCases.map(\.rawValue).joined(separator: " or "))
            }
            settings.security.layout = layout
        }
        add(["timezone", "CELERY_TIMEZONE"]) { settings, field in
            let name = try field.string()
            guard CeleryTimeZone(identifier: name) != nil else { throw field.fail("a time zone name such as UTC or Europe/Paris") }
            settings.timezone = name
        }
        add(["enable_utc", "CELERY_ENABLE_UTC"]) { $0.enableUTC = try $1.bool() }
        add(["worker_log_file", "CELERYD_LOG_FILE"]) { $0.logFile = try $1.string() }
        add(["worker_log_format", "CELERYD_LOG_FORMAT"]) { $0.logFormat = try $1.logFormat() }
        add(["worker_task_log_format", "CELERYD_TASK_LOG_FORMAT"]) { $0.taskLogFormat = try $1.logFormat() }
        add(["worker_log_datefmt", "CELERYD_LOG_DATEFMT"]) { $0.logDateFormat = try $1.string() }
        add(["worker_task_log_datefmt", "CELERYD_TASK_LOG_DATEFMT"]) { $0.taskLogDateFormat = try $1.string() }
        add(["result_chord_join_timeout", "CELERY_RESULT_CHORD_JOIN_TIMEOUT"]) { settings, field in
            guard !(field.value is NSNull) else {
                settings.chord.joinTimeout = nil
                return
            }
            let timeout = try field.seconds()
            guard timeout >= 0 else { throw field.fail("a number of seconds, 0 or more, or null") }
            settings.chord.joinTimeout = timeout
        }
        add(["result_chord_expires", "CELERY_RESULT_CHORD_EXPIRES"]) { settings, field in
            settings.chord.expires = field.value is NSNull ? nil : max(0, Int(try field.seconds()))
        }
        add(["worker_redirect_stdouts", "CELERY_REDIRECT_STDOUTS"]) { $0.redirectStdouts = try $1.bool() }
        add(["worker_redirect_stdouts_level", "CELERY_REDIRECT_STDOUTS_LEVEL"]) { $0.redirectStdoutsLevel = try $1.logLevel() }
        add(["task_acks_late", "CELERY_ACKS_LATE"]) { $0.acksLate = try $1.bool() }
        add(["task_reject_on_worker_lost", "CELERY_REJECT_ON_WORKER_LOST"]) { $0.rejectOnWorkerLost = try $1.bool() }
        add(["task_retry_on_worker_lost", "CELERY_RETRY_ON_WORKER_LOST"]) { $0.retryOnWorkerLost = try $1.bool() }
        add(["task_store_errors_even_if_ignored", "CELERY_STORE_ERRORS_EVEN_IF_IGNORED"]) {
            $0.storeErrorsEvenIfIgnored = try $1.bool()
        }
        add(["task_time_limit", "CELERYD_TASK_TIME_LIMIT"]) { $0.timeLimit = try $1.seconds() }
        add(["task_soft_time_limit", "CELERYD_TASK_SOFT_TIME_LIMIT"]) { $0.softTimeLimit = try $1.seconds() }
        add(["worker_concurrency", "CELERYD_CONCURRENCY"]) { $0.concurrency = try $1.int() }
        add(["worker_pool", "CELERYD_POOL"]) { settings, field in
            guard let pool = WorkerConfiguration.PoolKind(celeryName: try field.string()) else {
                throw field.fail("threads, process, prefork or solo")
            }
            settings.pool = pool
        }
        add(["worker_prefetch_multiplier", "CELERYD_PREFETCH_MULTIPLIER"]) { $0.prefetchMultiplier = try $1.int() }
        add(["worker_max_tasks_per_child", "CELERYD_MAX_TASKS_PER_CHILD"]) { $0.maxTasksPerChild = try $1.int() }
        add(["worker_max_memory_per_child", "CELERYD_MAX_MEMORY_PER_CHILD"]) { $0.maxMemoryPerChild = try $1.int() }
        add(["task_track_started", "CELERY_TRACK_STARTED"]) { $0.trackStarted = try $1.bool() }
        add(["worker_direct", "CELERY_WORKER_DIRECT"]) { $0.workerDirect = try $1.bool() }
        add(["task_routes", "CELERY_ROUTES"]) { $0.taskRoutes = try $1.routes() }
        add(["task_default_rate_limit", "CELERY_DEFAULT_RATE_LIMIT"]) { settings, field in
            guard !(field.value is NSNull) else { return }
            settings.defaultRateLimit = try field.rate()
        }
        add(["worker_disable_rate_limits", "CELERY_DISABLE_RATE_LIMITS"]) { $0.disableRateLimits = try $1.bool() }
        add(["worker_state_db", "CELERYD_STATE_DB"]) { $0.stateDB = try $1.string() }
        add(["worker_enable_remote_control", "CELERY_ENABLE_REMOTE_CONTROL"]) { $0.remoteControl = try $1.bool() }
        add(["task_send_sent_event", "CELERY_SEND_TASK_SENT_EVENT"]) { $0.sendSentEvent = try $1.bool() }
        add(["broker_connection_retry", "BROKER_CONNECTION_RETRY"]) { $0.brokerConnectionRetry = try $1.bool() }
        add(["broker_connection_retry_on_startup"]) { settings, field in
            settings.brokerConnectionRetryOnStartup = field.value is NSNull ? .some(nil) : try field.bool()
        }
        add(["broker_connection_max_retries", "BROKER_CONNECTION_MAX_RETRIES"]) { settings, field in
            settings.brokerConnectionMaxRetries = .some(try field.limit(from: 0, null: "to retry forever"))
        }
        add(["broker_connection_timeout", "BROKER_CONNECTION_TIMEOUT"]) { settings, field in
            let seconds = try field.seconds()
            guard seconds > 0, seconds.isFinite else { throw field.fail("a number of seconds above 0") }
            settings.brokerConnectionTimeout = seconds
        }
        add(["worker_soft_shutdown_timeout"]) { settings, field in
            let seconds = try field.seconds()
            guard seconds >= 0, seconds.isFinite else { throw field.fail("a number of seconds from 0") }
            settings.softShutdownTimeout = seconds
        }
        add(["worker_enable_soft_shutdown_on_idle"]) { $0.softShutdownOnIdle = try $1.bool() }
        add(["result_backend_always_retry"]) { $0.resultBackendAlwaysRetry = try $1.bool() }
        add(["result_backend_max_retries"]) { settings, field in
            // Celery's default is float("inf"): YAML's .inf, or null.
            settings.resultBackendMaxRetries = .some(try field.limit(from: 0, null: "(or .inf) to retry forever"))
        }
        add(["result_backend_base_sleep_between_retries_ms"]) { settings, field in
            settings.resultBackendBaseSleep = try field.milliseconds()
        }
        add(["result_backend_max_sleep_between_retries_ms"]) { settings, field in
            settings.resultBackendMaxSleep = try field.milliseconds()
        }
        add(["task_default_priority", "CELERY_DEFAULT_PRIORITY"]) { settings, field in
            guard !(field.value is NSNull) else { return }
            let priority = try field.int()
            guard (0...255).contains(priority) else { throw field.fail("a priority from 0 to 255") }
            settings.defaultPriority = priority
        }
        add(["task_inherit_parent_priority", "CELERY_INHERIT_PARENT_PRIORITY"]) { $0.inheritParentPriority = try $1.bool() }
        add(["task_queues", "CELERY_QUEUES"]) { $0.taskQueues = try $1.queues() }
        add(["task_create_missing_queues", "CELERY_CREATE_MISSING_QUEUES"]) { $0.createMissingQueues = try $1.bool() }
        add(["task_default_exchange", "CELERY_DEFAULT_EXCHANGE"]) { $0.defaultExchange = try $1.exchangeName() }
        add(["task_default_exchange_type", "CELERY_DEFAULT_EXCHANGE_TYPE"]) { $0.defaultExchangeType = try $1.exchangeType() }
        add(["control_exchange"]) { $0.controlExchange = try $1.exchangeName() }
        add(["event_exchange", "CELERY_EVENT_EXCHANGE"]) { $0.eventExchange = try $1.exchangeName() }
        add(["worker_eta_task_limit"]) { settings, field in
            settings.etaTaskLimit = .some(try field.limit(from: 1, null: "for no limit"))
        }
        add(["worker_disable_prefetch"]) { $0.disablePrefetch = try $1.bool() }
        add(["task_ignore_result", "CELERY_IGNORE_RESULT"]) { $0.ignoreResult = try $1.bool() }
        add(["worker_deduplicate_successful_tasks"]) { $0.deduplicateSuccessfulTasks = try $1.bool() }
        add(["task_annotations", "CELERY_ANNOTATIONS"]) { settings, field in
            settings.taskAnnotations = try field.annotations(warnings: &settings.warnings)
        }
        add(["worker_pool_restarts", "CELERYD_POOL_RESTARTS"]) { $0.poolRestarts = try $1.bool() }
        add(["task_acks_on_failure_or_timeout", "CELERY_ACKS_ON_FAILURE_OR_TIMEOUT"]) { $0.acksOnFailureOrTimeout = try $1.bool() }
        add(["task_acks_on_timeout"]) { $0.acksOnTimeout = try $1.bool() }
        // On Redis a failed task's message is forgotten whether it is acknowledged or rejected without requeue.
        add(["task_acks_on_failure"]) { _ = try $1.bool() }
        add(["result_extended", "CELERY_RESULT_EXTENDED"]) { $0.resultExtended = try $1.bool() }
        add(["task_default_queue", "CELERY_DEFAULT_QUEUE"]) { $0.defaultQueue = try $1.string() }
        add(["worker_send_task_events", "CELERY_SEND_EVENTS", "CELERYD_SEND_EVENTS"]) { $0.sendTaskEvents = try $1.bool() }
        add(["broker_transport_options", "BROKER_TRANSPORT_OPTIONS"]) { settings, field in
            guard let options = field.value as? [String: Any] else { throw field.fail("a mapping") }
            for (name, value) in options {
                let option = Field(source: field.source, key: "\(field.key).\(name)", value: value)
                if name == "visibility_timeout" {
                    settings.visibilityTimeout = try option.seconds()
                } else if name == "global_keyprefix" {
                    settings.brokerKeyPrefix = try option.string()
                } else if name == "master_name" {
                    settings.brokerSentinelMaster = try option.string()
                } else if name == "sep" {
                    settings.brokerTransport.separator = try option.string()
                    if settings.brokerTransport.separator.isEmpty { throw option.fail("a string of one character or more") }
                } else if name == "priority_steps" {
                    guard let steps = value as? [Int], !steps.isEmpty, steps.allSatisfy({ $0 >= 0 }), steps == steps.sorted(),
                        Set(steps).count == steps.count
                    else { throw option.fail("a list of priority steps from 0 up, in ascending order, such as [0, 3, 6, 9]") }
                    settings.brokerTransport.prioritySteps = steps
                } else if name == "queue_order_strategy" {
                    guard let order = RedisTransportOptions.QueueOrder(rawValue: try option.string()) else {
                        throw option.fail("round_robin, priority or sorted")
                    }
                    settings.brokerTransport.queueOrder = order
                } else if name == "fanout_prefix" {
                    // kombu: true keeps `/{db}.`, false makes it empty, a string replaces it.
                    if let flag = value as? Bool {
                        settings.brokerTransport.fanoutPrefix = flag ? RedisTransportOptions().fanoutPrefix : ""
                    } else {
                        settings.brokerTransport.fanoutPrefix = try option.string()
                    }
                } else if name == "fanout_patterns" {
                    settings.brokerTransport.fanoutPatterns = try option.bool()
                } else if name == "unacked_key" {
                    settings.brokerTransport.unackedKey = try option.keyName()
                } else if name == "unacked_index_key" {
                    settings.brokerTransport.unackedIndexKey = try option.keyName()
                } else if name == "unacked_mutex_key" {
                    settings.brokerTransport.unackedMutexKey = try option.keyName()
                } else if name == "unacked_mutex_expire" {
                    let expire = try option.seconds()
                    guard expire >= 0.001 else { throw option.fail("a number of seconds above 0") }
                    settings.brokerTransport.unackedMutexExpire = expire
                } else if name == "unacked_restore_limit" {
                    if value is NSNull { continue }
                    let limit = try option.int()
                    guard limit >= 1 else { throw option.fail("a number of messages from 1 up, or null") }
                    settings.brokerTransport.unackedRestoreLimit = limit
                } else if name == "client_name" {
                    settings.brokerClientName = try option.clientName()
                } else if name == "unacked_restore_interval" {
                    // kombu takes 0 or less as its default.
                    let interval = try option.seconds()
                    settings.brokerTransport.unackedRestoreInterval = interval > 0 ? interval : nil
                } else if let reason = Self.transportOptionsWithoutEffect[name] {
                    settings.warnings.append("\(field.source): broker transport option '\(name)' changes nothing here: \(reason)")
                } else if name == "sentinel_kwargs" {
                    settings.brokerSentinelOptions = try option.sentinelOptions(warnings: &settings.warnings)
                } else {
                    settings.warnings.append("\(field.source): broker transport option '\(name)' is ignored")
                }
            }
        }
        add(["broker_use_ssl", "BROKER_USE_SSL"]) { settings, field in
            if let flag = field.value as? Bool {
                if flag {
                    settings.warnings.append(
                        "\(field.source): broker_use_ssl: true is ignored, as kombu's Redis transport ignores it: give a mapping "
                            + "of ssl_* settings (ssl_cert_reqs, ssl_ca_certs, ssl_certfile, ssl_keyfile) or a rediss:// URL")
                }
                return
            }
            settings.brokerTLS = try field.tls()
        }
        add(["redis_backend_use_ssl", "CELERY_REDIS_BACKEND_USE_SSL"]) { settings, field in
            if field.value as? Bool == false { return }
            settings.backendTLS = try field.tls()
        }
        add(["result_backend_transport_options", "CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS"]) { settings, field in
            guard let options = field.value as? [String: Any] else { throw field.fail("a mapping") }
            for (name, value) in options {
                let option = Field(source: field.source, key: "\(field.key).\(name)", value: value)
                if name == "global_keyprefix" {
                    settings.resultKeyPrefix = try option.string()
                } else if name == "master_name" {
                    settings.resultSentinelMaster = try option.string()
                } else if name == "result_chord_ordered" {
                    settings.chord.ordered = try option.bool()
                } else if name == "sentinel_kwargs" {
                    settings.resultSentinelOptions = try option.sentinelOptions(warnings: &settings.warnings)
                } else {
                    settings.warnings.append("\(field.source): result backend transport option '\(name)' is ignored")
                }
            }
        }
    }
}

extension CelerySettings.Field {
    /// A rate limit as Celery takes it (`10/s`, `100/m`, `1000/h`; a number is per second), as written.
    func rate() throws(CeleryWorkerError) -> String {
        let text =
            value is Bool ? "" : (value as? String) ?? (value as? Int).map(String.init) ?? (value as? Double).map { "\($0)" } ?? ""
        do {
            _ = try RateLimit.perSecond(text)
        } catch {
            throw fail("a rate such as 10/s, 100/m or 1000/h")
        }
        guard !text.isEmpty else { throw fail("a rate such as 10/s, 100/m or 1000/h") }
        return text
    }

    /// `task_annotations`: a mapping of task names (or `*`) to attributes, or a list of such mappings. Attributes
    /// the worker has no use for (`serializer`, `@`-wrappers, …) are ignored with a warning; import paths of
    /// annotation classes cannot be loaded and are refused.
    func annotations(warnings: inout [String]) throws(CeleryWorkerError) -> TaskAnnotations {
        if value is NSNull { return TaskAnnotations() }
        let mappings: [Any] = (value as? [Any]) ?? [value]
        var tables: [[String: TaskAnnotations.Attributes]] = []
        for mapping in mappings {
            guard let entries = mapping as? [String: Any] else {
                throw CeleryWorkerError(
                    code: .invalidConfiguration,
                    message: "\(source): setting '\(key)': '\(mapping)' is not a mapping of task names to attributes (annotation "
                        + "classes cannot be imported into the Swift worker)")
            }
            var table: [String: TaskAnnotations.Attributes] = [:]
            for (name, attributes) in entries {
                guard let attributes = attributes as? [String: Any] else {
                    throw CeleryWorkerError(
                        code: .invalidConfiguration,
                        message: "\(source): setting '\(key)': '\(name)' must map to attributes, such as {rate_limit: 10/s}")
                }
                table[name] = try annotation(attributes, for: name, warnings: &warnings)
            }
            tables.append(table)
        }
        return TaskAnnotations(tables: tables)
    }

    private func annotation(_ attributes: [String: Any], for task: String, warnings: inout [String]) throws(CeleryWorkerError)
        -> TaskAnnotations.Attributes
    {
        var annotation = TaskAnnotations.Attributes()
        for (name, value) in attributes.sorted(by: { $0.key < $1.key }) {
            let field = CelerySettings.Field(source: source, key: "\(key).\(task).\(name)", value: value)
            let isNull = value is NSNull
            switch name {
            case "rate_limit":
                if isNull {
                    annotation.rateLimit = .some(nil)
                } else {
                    annotation.rateLimit = .some(try field.rate())
                }
            case "time_limit": annotation.timeLimit = isNull ? .some(nil) : .some(try field.seconds())
            case "soft_time_limit": annotation.softTimeLimit = isNull ? .some(nil) : .some(try field.seconds())
            case "max_retries": annotation.maxRetries = isNull ? .some(nil) : .some(try field.int())
            case "default_retry_delay": annotation.defaultRetryDelay = try field.seconds()
            case "acks_late": annotation.acksLate = try field.bool()
            case "track_started": annotation.trackStarted = try field.bool()
            case "ignore_result": annotation.ignoreResult = try field.bool()
            case "reject_on_worker_lost": annotation.rejectOnWorkerLost = try field.bool()
            case "store_errors_even_if_ignored": annotation.storeErrorsEvenIfIgnored = try field.bool()
            default:
                warnings.append(
                    "\(source): \(key) '\(name)' of '\(task)' is ignored (the worker applies \(TaskAnnotations.Attributes.names.sorted().joined(separator: ", ")))"
                )
            }
        }
        return annotation
    }

    /// A TCP port, 1 to 65535.
    func port() throws(CeleryWorkerError) -> Int {
        guard !(value is Bool), let port = value as? Int, (1...65535).contains(port) else { throw fail("a port from 1 to 65535") }
        return port
    }

    /// A Redis database number (kombu's virtual host): a number from 0, or its text (`/1` as kombu writes it);
    /// `nil` for AMQP's `/` or an empty text, which name none.
    func database() throws(CeleryWorkerError) -> Int? {
        if !(value is Bool), let number = value as? Int, number >= 0 { return number }
        if let text = value as? String {
            let digits = text.drop(while: { $0 == "/" })
            if digits.isEmpty { return nil }
            if let number = Int(digits), number >= 0 { return number }
        }
        throw fail("a database number from 0")
    }

    /// A connection name for `CLIENT SETNAME`: not empty, without spaces or newlines (Redis refuses them).
    func clientName() throws(CeleryWorkerError) -> String {
        let name = try string()
        if name.isEmpty || name.contains(where: { $0.isWhitespace }) { throw fail("a name without spaces") }
        return name
    }

    /// A Redis key name: a string that is not empty.
    func keyName() throws(CeleryWorkerError) -> String {
        let name = try string()
        if name.isEmpty { throw fail("a key name that is not empty") }
        return name
    }

    /// A Python log level, by name (any case) or by number (`10` … `50`), as Celery's `mlevel` reads it; the name
    /// returned is upper-case.
    func logLevel() throws(CeleryWorkerError) -> String {
        let numbers = [10: "DEBUG", 20: "INFO", 30: "WARNING", 40: "ERROR", 50: "CRITICAL"]
        let names = ["DEBUG", "INFO", "WARNING", "WARN", "ERROR", "CRITICAL", "FATAL"]
        if !(value is Bool), let number = value as? Int, let name = numbers[number] { return name }
        if let text = value as? String, names.contains(text.uppercased()) { return text.uppercased() }
        throw fail("a log level: DEBUG, INFO, WARNING, ERROR or CRITICAL (or 10 to 50)")
    }

    /// A Python logging format (``LogFormat``); what is wrong with it names the setting.
    func logFormat() throws(CeleryWorkerError) -> LogFormat {
        let text = try string()
        do {
            return try LogFormat(parsing: text)
        } catch {
            throw CeleryWorkerError(code: .invalidConfiguration, message: "\(source): setting '\(key)': \(error.message)")
        }
    }

    /// `sentinel_kwargs`: the keyword arguments of redis-py's connections to the Sentinels, of which the worker takes
    /// `username` and `password` (others are ignored with a warning).
    func sentinelOptions(warnings: inout [String]) throws(CeleryWorkerError) -> CelerySettings.SentinelOptions? {
        guard let options = value as? [String: Any] else { throw fail("a mapping such as {password: …}") }
        var sentinel = CelerySettings.SentinelOptions()
        var secure = false
        var tlsSettings: [String: Any] = [:]
        for (name, value) in options.sorted(by: { $0.key < $1.key }) {
            let option = CelerySettings.Field(source: source, key: "\(key).\(name)", value: value)
            switch name {
            case "password": sentinel.password = try option.string()
            case "username": sentinel.username = try option.string()
            case "ssl": secure = try option.bool()
            case _ where RedisTLS.settingNames.contains(name): tlsSettings[name] = value
            default:
                warnings.append("\(source): \(key) '\(name)' is ignored (the worker takes username, password, ssl and ssl_*)")
            }
        }
        if secure {
            sentinel.tls = try CelerySettings.Field(source: source, key: key, value: tlsSettings).tls() ?? RedisTLS()
        } else if !tlsSettings.isEmpty {
            warnings.append("\(source): \(key) ssl_* settings are ignored without ssl: true, as redis-py ignores them")
        }
        return sentinel == CelerySettings.SentinelOptions() ? nil : sentinel
    }

    /// `broker_use_ssl` / `redis_backend_use_ssl`: a mapping of redis-py's `ssl_*` settings to strings, booleans
    /// (`ssl_check_hostname`) or Python's `ssl.CERT_*` numbers (`ssl_cert_reqs`); an empty mapping is no TLS, as in
    /// Python.
    func tls() throws(CeleryWorkerError) -> RedisTLS? {
        guard let options = value as? [String: Any] else {
            throw fail("a mapping of ssl_* settings (ssl_cert_reqs, ssl_ca_certs, ssl_certfile, ssl_keyfile, ssl_check_hostname)")
        }
        if options.isEmpty { return nil }
        var tls = RedisTLS()
        for (name, value) in options {
            let text: String
            switch value {
            case let flag as Bool: text = flag ? "true" : "false"
            case let number as Int: text = String(number)
            case let string as String: text = string
            // redis-py's verify flags are a list.
            case let list as [Any]: text = list.map { "\($0)" }.joined(separator: ",")
            default: throw fail("a mapping whose \(name) is a string")
            }
            do {
                try tls.set(name, to: text)
            } catch {
                throw CeleryWorkerError(code: .invalidConfiguration, message: "\(source): setting '\(key)': \(error.message)")
            }
        }
        return tls
    }

    /// kombu's exchange types that route through a Redis binding table: `direct` and `topic`. A `fanout` exchange
    /// is a broadcast over Redis channels, which the worker does not consume.
    func exchangeType(_ value: Any? = nil) throws(CeleryWorkerError) -> QueueBinding.ExchangeType {
        let given = value ?? self.value
        guard let text = given as? String, let type = QueueBinding.ExchangeType(rawValue: text) else {
            throw CeleryWorkerError(
                code: .invalidConfiguration,
                message: "\(source): setting '\(key)': exchange type \(Self.repr(given)) is not supported: direct or topic (a fanout "
                    + "exchange's broadcast queues are not consumed by the Swift worker)")
        }
        return type
    }

    /// `task_queues`: a list of queue names or of mappings with a `name`, or a mapping of names to options
    /// (`exchange`, `routing_key` or `binding_key`, `exchange_type`), kept in the file's order.
    func queues() throws(CeleryWorkerError) -> [CelerySettings.DeclaredQueue] {
        guard let node else { throw fail("a list of queue names or of queue mappings") }
        func declared(_ name: String, _ options: Node?) throws(CeleryWorkerError) -> CelerySettings.DeclaredQueue {
            var queue = CelerySettings.DeclaredQueue(name: name)
            guard let options, options.null == nil else { return queue }
            guard case .mapping(let mapping) = options else { throw fail("for queue '\(name)' a mapping of its options") }
            for (optionKey, value) in mapping {
                guard let option = optionKey.string else { throw fail("for queue '\(name)' options named by strings") }
                func text() throws(CeleryWorkerError) -> String {
                    guard let text = value.string else { throw fail("for queue '\(name)' a string for '\(option)'") }
                    return text
                }
                switch option {
                case "name": queue.name = try text()
                case "exchange": queue.exchange = try text()
                case "routing_key", "binding_key": queue.routingKey = try text()
                case "exchange_type": queue.exchangeType = try exchangeType(try text())
                default: throw fail("for queue '\(name)' only exchange, routing_key, binding_key and exchange_type, not '\(option)'")
                }
            }
            return queue
        }
        var queues: [CelerySettings.DeclaredQueue] = []
        switch node {
        case .mapping(let mapping):
            for (name, options) in mapping {
                guard let name = name.string, !name.isEmpty else { throw fail("a mapping with queue names as keys") }
                queues.append(try declared(name, options))
            }
        case .sequence(let sequence):
            for item in sequence {
                if let name = item.string, !name.isEmpty {
                    queues.append(CelerySettings.DeclaredQueue(name: name))
                } else if case .mapping(let mapping) = item, let name = mapping["name"]?.string, !name.isEmpty {
                    queues.append(try declared(name, item))
                } else {
                    throw fail("a list of queue names or of mappings with a name")
                }
            }
        default:
            throw fail("a list of queue names or of queue mappings")
        }
        return queues
    }

    /// `task_routes`: a mapping of task names and `*` patterns to options or queue names, or a list of such
    /// mappings, tried in order. Router functions (import paths) cannot be loaded into the Swift worker.
    func routes() throws(CeleryWorkerError) -> TaskRoutes {
        guard let node else { throw fail("a mapping of task names or patterns to routes") }
        switch node {
        case .mapping(let mapping):
            return TaskRoutes([try table(mapping)])
        case .sequence(let sequence):
            var tables: [TaskRoutes.Table] = []
            for item in sequence {
                guard case .mapping(let mapping) = item else {
                    throw CeleryWorkerError(
                        code: .invalidConfiguration,
                        message: "\(source): setting '\(key)': '\(item.string ?? "\(item)")' is a router function, which the "
                            + "Swift worker cannot import; give a mapping of task names or patterns to routes")
                }
                tables.append(try table(mapping))
            }
            return TaskRoutes(tables)
        case .scalar where node.null != nil:
            return TaskRoutes()
        default:
            throw fail("a mapping of task names or patterns to routes")
        }
    }

    private func table(_ mapping: Node.Mapping) throws(CeleryWorkerError) -> TaskRoutes.Table {
        var entries: [(pattern: String, options: CeleryObject)] = []
        for (name, route) in mapping {
            guard let pattern = name.string else { throw fail("a mapping with task names or patterns as keys") }
            entries.append((pattern, try options(of: route, for: pattern)))
        }
        return TaskRoutes.Table(entries)
    }

    /// A route: a queue name, or options whose values are text (`priority` a whole number).
    private func options(of route: Node, for pattern: String) throws(CeleryWorkerError) -> CeleryObject {
        func invalid() -> CeleryWorkerError {
            CeleryWorkerError(
                code: .invalidConfiguration,
                message: "\(source): setting '\(key)': the route of '\(pattern)' must be a queue name or options such as {queue: name}")
        }
        if let queue = route.scalar?.string { return ["queue": .string(queue)] }
        guard let mapping = route.mapping else { throw invalid() }
        var options = CeleryObject()
        for (name, value) in mapping {
            guard let option = name.string, let text = value.scalar?.string else { throw invalid() }
            if option == "priority" {
                guard let priority = Int(text) else { throw invalid() }
                options[option] = .int(Int64(priority))
            } else {
                options[option] = .string(text)
            }
        }
        return options
    }
}

extension RedisURL {
    /// kombu's Sentinel transport options for this URL: the master's name (`master_name`) and how to reach the
    /// Sentinels themselves (`sentinel_kwargs`). They matter only with a `sentinel://` URL.
    public mutating func useSentinel(master: String?, options: CelerySettings.SentinelOptions?) {
        sentinelMaster = master
        sentinelUsername = options?.username
        sentinelPassword = options?.password
        sentinelTLS = options?.tls
    }
}
