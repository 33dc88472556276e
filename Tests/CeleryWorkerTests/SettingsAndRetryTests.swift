import CeleryProtocol
import Foundation
import Synchronization
import Testing

@testable import CeleryWorker

@Suite("Configuration files with Celery's setting names")
struct CelerySettingsTests {
    @Test("the seed's config.py settings, in YAML")
    func seed() throws {
        let settings = try CelerySettings.parse(
            """
            broker_url: redis://127.0.0.1:6379/1
            result_backend: redis://127.0.0.1:6379/0
            task_serializer: msgpack
            result_serializer: json
            accept_content: [json, msgpack]
            timezone: UTC
            enable_utc: true
            """, source: "seed.yaml")
        #expect(settings.brokerURL == "redis://127.0.0.1:6379/1")
        #expect(settings.resultBackend == "redis://127.0.0.1:6379/0")
        #expect(settings.taskSerializer == .msgpack)
        #expect(settings.resultSerializer == .json)
        #expect(settings.acceptContent == [.json, .msgpack])
        #expect(settings.timezone == "UTC" && settings.enableUTC == true)
        #expect(settings.warnings.isEmpty)
    }

    @Test("old upper-case names, nested transport options, unknown keys warn")
    func oldNames() throws {
        let settings = try CelerySettings.parse(
            """
            BROKER_URL: redis://h/2
            CELERY_RESULT_BACKEND: redis://h/3
            CELERY_ACKS_LATE: true
            CELERY_REJECT_ON_WORKER_LOST: true
            task_retry_on_worker_lost: true
            CELERY_STORE_ERRORS_EVEN_IF_IGNORED: true
            CELERYD_TASK_SOFT_TIME_LIMIT: 2.5
            CELERY_TASK_RESULT_EXPIRES: 60
            CELERY_TRACK_STARTED: true
            broker_transport_options: {visibility_timeout: 120, fanout_prefix: true, global_keyprefix: "t1:"}
            CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS: {global_keyprefix: "tenant:", retry_policy: {}}
            worker_hijack_root_logger: false
            imports: [proj.tasks]
            no_such_setting: 1
            """, source: "old.yaml")
        #expect(settings.brokerURL == "redis://h/2" && settings.resultBackend == "redis://h/3")
        #expect(settings.acksLate == true && settings.trackStarted == true)
        #expect(settings.rejectOnWorkerLost == true && settings.retryOnWorkerLost == true)
        #expect(settings.storeErrorsEvenIfIgnored == true)
        #expect(settings.softTimeLimit == 2.5 && settings.resultExpires == 60 && settings.visibilityTimeout == 120)
        #expect(settings.resultKeyPrefix == "tenant:" && settings.brokerKeyPrefix == "t1:")
        #expect(WorkerConfiguration.resultKeyPrefix(normalizing: "tenant:") == "tenant:")
        #expect(WorkerConfiguration.resultKeyPrefix(normalizing: "tenant") == "tenant_")
        #expect(WorkerConfiguration.resultKeyPrefix(normalizing: "") == "")
        #expect(settings.warnings.count == 4)  // fanout_prefix: true is kombu's default, taken without a word
        #expect(settings.brokerTransport.fanoutPrefix == "/{db}.")
        #expect(settings.warnings.contains { $0.contains("result backend transport option 'retry_policy' is ignored") })
        // Celery settings that change nothing here say why; others are unknown.
        #expect(
            settings.warnings.contains {
                $0.contains("setting 'worker_hijack_root_logger' has no effect on the Swift worker: they configure Python's logging")
            })
        #expect(settings.warnings.contains { $0.contains("setting 'imports' has no effect on the Swift worker: its tasks are compiled in") })
        #expect(settings.warnings.contains { $0.contains("unknown setting 'no_such_setting' is ignored") })
    }

    @Test("kombu's fanout and unacked_* transport options name the channels and keys; redis-py's socket options say why they change nothing")
    func fanoutAndBookkeepingOptions() throws {
        let settings = try CelerySettings.parse(
            """
            broker_transport_options:
              fanout_prefix: false
              fanout_patterns: false
              unacked_key: u
              unacked_index_key: ui
              unacked_mutex_key: um
              unacked_mutex_expire: 30
              unacked_restore_limit: 7
              unacked_restore_interval: 2
              client_name: w1
              socket_timeout: 5
              health_check_interval: 10
              polling_interval: 0.5
              no_such_option: 1
            """, source: "t.yaml")
        var kombu = RedisTransportOptions()
        let transport = settings.brokerTransport
        #expect(transport.fanoutChannel(exchange: "celery.pidbox", database: 3) == "celery.pidbox")
        #expect(transport.fanoutChannel(exchange: "celeryev", routingKey: "worker.heartbeat", database: 3, prefix: "p:") == "p:celeryev")
        #expect(transport.legacySentinelChannel(exchange: "celery.pidbox") == nil)
        #expect(kombu.fanoutChannel(exchange: "celeryev", routingKey: "task.multi", database: 3) == "/3.celeryev/task.multi")
        #expect(kombu.fanoutChannel(exchange: "celery.pidbox", database: 0, prefix: "p:") == "p:/0.celery.pidbox")
        #expect(kombu.legacySentinelChannel(exchange: "celeryev", routingKey: "task.multi") == "/{db}.celeryev/task.multi")
        kombu.fanoutPrefix = "/app-{db}."
        #expect(kombu.fanoutChannel(exchange: "celery.pidbox", database: 2) == "/app-2.celery.pidbox")
        #expect(
            [transport.unackedKey, transport.unackedIndexKey, transport.unackedMutexKey] == ["u", "ui", "um"]
                && transport.unackedMutexExpire == 30 && transport.unackedRestoreLimit == 7 && transport.unackedRestoreInterval == 2)
        #expect(RedisBroker.mutexExpireMilliseconds(visibilityTimeout: 3600, expire: transport.unackedMutexExpire) == 30_000)
        #expect(RedisBroker.mutexExpireMilliseconds(visibilityTimeout: 3600) == 300_000)
        #expect(settings.brokerClientName == "w1")
        // unacked_restore_interval sets how often the sweep runs, never less often than a third of the visibility
        // timeout (held messages are refreshed then too).
        #expect(WorkerRun.maintenanceInterval(visibilityTimeout: 3600, restoreInterval: nil) == 10)
        #expect(WorkerRun.maintenanceInterval(visibilityTimeout: 3600, restoreInterval: 2) == 2)
        #expect(WorkerRun.maintenanceInterval(visibilityTimeout: 3600, restoreInterval: 60) == 60)
        #expect(WorkerRun.maintenanceInterval(visibilityTimeout: 30, restoreInterval: 60) == 10)
        #expect(try CelerySettings.parse("redis_client_name: r1", source: "t.yaml").backendClientName == "r1")
        #expect(throws: CeleryWorkerError.self) { try CelerySettings.parse("redis_client_name: 'r 1'", source: "t.yaml") }
        #expect(settings.warnings.count == 4)
        #expect(settings.warnings.contains { $0.contains("'socket_timeout' changes nothing here: they tune redis-py's sockets") })
        #expect(settings.warnings.contains { $0.contains("'health_check_interval' changes nothing here") })
        #expect(settings.warnings.contains { $0.contains("'polling_interval' changes nothing here") })
        #expect(settings.warnings.contains { $0.contains("broker transport option 'no_such_option' is ignored") })
        let named = try CelerySettings.parse("broker_transport_options: {fanout_prefix: '/x.'}", source: "t.yaml")
        #expect(named.brokerTransport.fanoutPrefix == "/x." && named.warnings.isEmpty)
        for bad in [
            "unacked_key: ''", "unacked_restore_limit: 0", "unacked_mutex_expire: 0", "fanout_patterns: maybe", "fanout_prefix: 3", "client_name: ''",
        ] {
            #expect(throws: CeleryWorkerError.self) { try CelerySettings.parse("broker_transport_options: {\(bad)}", source: "t.yaml") }
        }
    }

    @Test("broker_url as a list is kombu's failover list; broker_failover_strategy picks its next server")
    func failoverSettings() throws {
        let settings = try CelerySettings.parse(
            """
            broker_url: [redis://a:6379/0, redis://b:6379/0]
            broker_failover_strategy: shuffle
            """, source: "failover.yaml")
        #expect(settings.brokerURL == "redis://a:6379/0;redis://b:6379/0" && settings.brokerFailoverStrategy == .shuffle)
        #expect(settings.warnings.isEmpty)
        #expect(try CelerySettings.parse("BROKER_FAILOVER_STRATEGY: round-robin", source: "old.yaml").brokerFailoverStrategy == .roundRobin)
        #expect(throws: CeleryWorkerError.self) { try CelerySettings.parse("broker_failover_strategy: random", source: "bad.yaml") }
        #expect(throws: CeleryWorkerError.self) { try CelerySettings.parse("broker_url: [redis://a, 3]", source: "bad.yaml") }
        // Shuffle never picks the server that just failed when there is another.
        var url = try RedisURL(parsing: try #require(settings.brokerURL))
        url.failover?.strategy = .shuffle
        let failover = try #require(url.failover)
        failover.failed(failover.current, .init(server: "a", error: "down"))
        #expect(failover.current.index == 1)
    }

    @Test("the acknowledgement settings for failures and timeouts, the old one for both and Celery 5.7's")
    func acksOnTimeout() throws {
        let both = try CelerySettings.parse("task_acks_on_failure_or_timeout: false", source: "a.yaml")
        #expect(both.acksOnFailureOrTimeout == false && both.acksOnTimeout == nil && both.warnings.isEmpty)
        let split = try CelerySettings.parse(
            "CELERY_ACKS_ON_FAILURE_OR_TIMEOUT: false\ntask_acks_on_timeout: true\ntask_acks_on_failure: false", source: "a.yaml")
        #expect(split.acksOnFailureOrTimeout == false && split.acksOnTimeout == true && split.warnings.isEmpty)
        #expect(throws: CeleryWorkerError.self) { try CelerySettings.parse("task_acks_on_timeout: maybe", source: "a.yaml") }
    }

    @Test("task_compression and result_compression by kombu's names (null: none)")
    func compression() throws {
        #expect(try CelerySettings.parse("task_compression: gzip", source: "c.yaml").taskCompression == .some(.zlib))
        #expect(try CelerySettings.parse("CELERY_MESSAGE_COMPRESSION: xz", source: "c.yaml").taskCompression == .some(.lzma))
        #expect(try CelerySettings.parse("task_compression: null", source: "c.yaml").taskCompression == .some(nil))
        #expect(try CelerySettings.parse("task_acks_late: true", source: "c.yaml").taskCompression == nil)
        let results = try CelerySettings.parse("result_compression: bzip2", source: "c.yaml")
        #expect(results.resultCompression == .bzip2 && results.warnings.isEmpty)
        #expect(try CelerySettings.parse("result_compression: xz", source: "c.yaml").resultCompression == .lzma)
        #expect(try CelerySettings.parse("result_compression: null", source: "c.yaml").resultCompression == nil)
        #expect(try CelerySettings.parse("result_compression: zstandard", source: "c.yaml").resultCompression == .zstd)
        #expect(throws: CeleryWorkerError.self) { try CelerySettings.parse("result_compression: snappy", source: "c.yaml") }
    }

    @Test("broker_use_ssl and redis_backend_use_ssl: mappings of ssl_* settings; kombu ignores broker_use_ssl: true")
    func tlsSettings() throws {
        let settings = try CelerySettings.parse(
            """
            broker_use_ssl:
              ssl_cert_reqs: 2
              ssl_ca_certs: /ca.pem
              ssl_check_hostname: false
              ssl_include_verify_flags: [VERIFY_X509_STRICT, VERIFY_X509_PARTIAL_CHAIN]
              ssl_exclude_verify_flags: VERIFY_X509_TRUSTED_FIRST
            CELERY_REDIS_BACKEND_USE_SSL: {ssl_cert_reqs: CERT_OPTIONAL, ssl_certfile: /c.pem, ssl_keyfile: /k.pem}
            """, source: "t.yaml")
        #expect(
            settings.brokerTLS
                == RedisTLS(
                    certificateRequirement: .required, caCertificates: "/ca.pem", checkHostname: false, includeVerifyFlags: 0x80020,
                    excludeVerifyFlags: 0x8000))
        #expect(settings.backendTLS == RedisTLS(certificateRequirement: .optional, certificateFile: "/c.pem", keyFile: "/k.pem"))
        #expect(settings.warnings.isEmpty)
        let flags = try CelerySettings.parse("broker_use_ssl: true\nredis_backend_use_ssl: false", source: "t.yaml")
        #expect(flags.brokerTLS == nil && flags.backendTLS == nil)
        #expect(flags.warnings.count == 1 && flags.warnings[0].contains("broker_use_ssl: true is ignored"))
        #expect(try CelerySettings.parse("broker_use_ssl: {}", source: "t.yaml").brokerTLS == nil)
    }

    @Test("task_annotations: by name, then '*' (which wins, as in Celery), the first mapping that names a task; null values")
    func annotations() throws {
        let settings = try CelerySettings.parse(
            """
            task_annotations:
              - tasks.add: {rate_limit: 10/m, acks_late: true, max_retries: null, serializer: pickle}
                '*': {acks_late: false, time_limit: 30}
              - tasks.add: {rate_limit: 1/s}
                tasks.echo: {ignore_result: true, rate_limit: 5}
            """, source: "a.yaml")
        let annotations = try #require(settings.taskAnnotations)
        #expect(settings.warnings.count == 1 && settings.warnings[0].contains("'serializer' of 'tasks.add' is ignored"))
        var registry = TaskRegistry()
        registry.register("tasks.add", options: TaskOptions(maxRetries: 5)) { _ in CeleryValue.null }
        registry.register("tasks.echo") { _ in CeleryValue.null }
        registry.register("tasks.other") { _ in CeleryValue.null }
        let annotated = registry.annotated(by: annotations)
        let add = try #require(annotated["tasks.add"]?.options)
        #expect(add.rateLimit == "10/m" && add.acksLate == false && add.maxRetries == nil && add.timeLimit == 30)
        let echo = try #require(annotated["tasks.echo"]?.options)
        #expect(echo.ignoreResult && echo.rateLimit == "5" && echo.acksLate == false && echo.maxRetries == 3)
        #expect(annotated["tasks.other"]?.options.timeLimit == 30)
        #expect(registry["tasks.add"]?.options.maxRetries == 5)  // the registry itself is unchanged
        // task_default_rate_limit: for tasks that set none, before the annotations.
        let rates = try CelerySettings.parse("task_default_rate_limit: 3/s\nworker_disable_rate_limits: true", source: "a.yaml")
        #expect(rates.defaultRateLimit == "3/s" && rates.disableRateLimits == true)
        registry.register("tasks.own", options: TaskOptions(rateLimit: "1/m")) { _ in CeleryValue.null }
        let defaulted = registry.withDefaultRateLimit("3/s").annotated(by: annotations)
        #expect(defaulted["tasks.other"]?.options.rateLimit == "3/s" && defaulted["tasks.own"]?.options.rateLimit == "1/m")
        #expect(defaulted["tasks.add"]?.options.rateLimit == "10/m")
        #expect(throws: CeleryWorkerError.self) { try CelerySettings.parse("task_default_rate_limit: soon", source: "a.yaml") }
        for bad in [
            "task_annotations: {tasks.add: {rate_limit: fast}}", "task_annotations: [my.Annotation]",
            "task_annotations: {tasks.add: 3}", "task_annotations: {'*': {acks_late: maybe}}",
        ] {
            #expect(throws: CeleryWorkerError.self) { try CelerySettings.parse(bad, source: "a.yaml") }
        }
    }

    @Test("Celery's node_format for file names: %p, %n, %h, %d, %i, %I and %%")
    func nodeFormat() {
        let node = "w1@box.example.org"
        #expect(WorkerConfiguration.nodeFormat("/run/%n.pid", node: node) == "/run/w1.pid")
        #expect(
            WorkerConfiguration.nodeFormat("%p|%h|%d|%i|%I|100%%|%z|%", node: node)
                == "w1@box.example.org|box.example.org|example.org|0||100%|%z|%")
        #expect(WorkerConfiguration.nodeFormat("%n-%d", node: "box") == "celery-")
        // In the pool's child ForkPoolWorker-2.
        #expect(WorkerConfiguration.nodeFormat("%n%I.log|%i", node: node, processIndex: 2) == "w1-2.log|2")
    }

    @Test("sentinel_kwargs: the Sentinels' own user name and password; other keyword arguments warn")
    func sentinelKwargs() throws {
        let settings = try CelerySettings.parse(
            """
            broker_transport_options: {master_name: m, sentinel_kwargs: {password: s3cret, socket_timeout: 1}}
            result_backend_transport_options: {master_name: m, sentinel_kwargs: {username: u, password: p}}
            """, source: "s.yaml")
        #expect(settings.brokerSentinelOptions == .init(password: "s3cret"))
        #expect(settings.resultSentinelOptions == .init(username: "u", password: "p"))
        #expect(
            settings.warnings == [
                "s.yaml: broker_transport_options.sentinel_kwargs 'socket_timeout' is ignored (the worker takes username, password, ssl and ssl_*)"
            ])
        // TLS to the Sentinels: ssl: true, with redis-py's defaults or ssl_* settings; ssl_* alone are ignored.
        let secure = try CelerySettings.parse(
            """
            broker_transport_options: {sentinel_kwargs: {ssl: true}}
            result_backend_transport_options: {sentinel_kwargs: {ssl: true, ssl_ca_certs: /ca.pem, ssl_cert_reqs: none, password: p}}
            """, source: "t.yaml")
        #expect(secure.brokerSentinelOptions == .init(tls: RedisTLS()))
        #expect(secure.brokerSentinelOptions?.tls?.requirement == .required)
        #expect(
            secure.resultSentinelOptions
                == .init(
                    password: "p", tls: RedisTLS(certificateRequirement: RedisTLS.CertificateRequirement.none, caCertificates: "/ca.pem")))
        let plain = try CelerySettings.parse("broker_transport_options: {sentinel_kwargs: {ssl_ca_certs: /ca.pem}}", source: "p.yaml")
        #expect(plain.brokerSentinelOptions == nil)
        #expect(
            plain.warnings == [
                "p.yaml: broker_transport_options.sentinel_kwargs ssl_* settings are ignored without ssl: true, as redis-py ignores them"
            ])
        #expect(throws: CeleryWorkerError.self) {
            try CelerySettings.parse("broker_transport_options: {sentinel_kwargs: {ssl: true, ssl_cert_reqs: maybe}}", source: "s.yaml")
        }
        #expect(throws: CeleryWorkerError.self) {
            try CelerySettings.parse("broker_transport_options: {sentinel_kwargs: {password: [1]}}", source: "s.yaml")
        }
    }

    @Test(
        "a wrong type names the key",
        arguments: [
            ("result_expires: soon", "result_expires"), ("task_acks_late: 3", "task_acks_late"),
            ("accept_content: [json, pickle]", "accept_content"), ("worker_concurrency: 2.5", "worker_concurrency"),
            ("timezone: Mars/Olympus", "timezone"), ("- just a list", "mapping"), ("broker_url: [1]", "broker_url"),
            ("task_compression: snappy", "task_compression"), ("CELERY_MESSAGE_COMPRESSION: 1", "CELERY_MESSAGE_COMPRESSION"),
            ("broker_use_ssl: yes please", "broker_use_ssl"), ("redis_backend_use_ssl: true", "redis_backend_use_ssl"),
            ("broker_use_ssl: {ssl_cert_reqs: maybe}", "ssl_cert_reqs"), ("broker_use_ssl: {ssl_min_version: TLSv9}", "ssl_min_version"),
            ("broker_connection_max_retries: -1", "broker_connection_max_retries"),
            ("broker_connection_retry: sometimes", "broker_connection_retry"),
            ("broker_connection_timeout: 0", "broker_connection_timeout"),
            ("worker_soft_shutdown_timeout: -1", "worker_soft_shutdown_timeout"),
            ("worker_enable_soft_shutdown_on_idle: 1", "worker_enable_soft_shutdown_on_idle"),
            ("worker_deduplicate_successful_tasks: yes please", "worker_deduplicate_successful_tasks"),
            ("worker_eta_task_limit: 0", "worker_eta_task_limit"), ("control_exchange: 'a/b'", "control_exchange"),
            ("event_exchange: ''", "event_exchange"), ("task_default_priority: 300", "task_default_priority"),
            ("worker_disable_prefetch: 2", "worker_disable_prefetch"),
        ])
    func wrongTypes(text: String, key: String) {
        do {
            _ = try CelerySettings.parse(text, source: "bad.yaml")
            Issue.record("\(text) should not load")
        } catch {
            #expect(error.code == .invalidConfiguration)
            #expect(error.message.contains(key))
        }
    }

    @Test("broker connection settings (null max_retries retries forever, null retry_on_startup is Celery's default), and two flags")
    func brokerConnection() throws {
        let set = try CelerySettings.parse(
            """
            broker_connection_retry: false
            broker_connection_retry_on_startup: true
            broker_connection_max_retries: null
            broker_connection_timeout: 7.5
            worker_enable_remote_control: false
            CELERY_SEND_TASK_SENT_EVENT: true
            """, source: "retry.yaml")
        #expect(set.remoteControl == false && set.sendSentEvent == true)
        #expect(set.brokerConnectionRetry == false && set.brokerConnectionRetryOnStartup == .some(true))
        #expect(set.brokerConnectionMaxRetries == .some(nil) && set.brokerConnectionTimeout == 7.5)
        let old = try CelerySettings.parse(
            "BROKER_CONNECTION_MAX_RETRIES: 3\nBROKER_CONNECTION_TIMEOUT: 2\nbroker_connection_retry_on_startup: null", source: "old.yaml")
        #expect(old.brokerConnectionMaxRetries == .some(3) && old.brokerConnectionTimeout == 2)
        #expect(old.brokerConnectionRetryOnStartup == .some(nil) && old.warnings.isEmpty)
        // The broker's connect timeout rides on its URL.
        var url = try RedisURL(parsing: "redis://127.0.0.1:6379/0")
        #expect(RedisConnection(url: url).connectTimeout == RedisConnection.defaultConnectTimeout)
        url.connectTimeout = 7.5
        #expect(RedisConnection(url: url).connectTimeout == .milliseconds(7500))
    }

    @Test("the daemon settings of worker and beat (Celery 5.4's DaemonOption): names or numbers, the mask as text or a number")
    func daemonSettings() throws {
        let set = try CelerySettings.parse(
            """
            worker_pidfile: '%n.pid'
            worker_logfile: /var/log/w.log
            worker_uid: 1000
            worker_gid: staff
            worker_umask: 23
            worker_executable: /usr/local/bin/swift-celery-worker
            beat_pidfile: beat.pid
            beat_umask: '027'
            beat_uid: nobody
            """, source: "daemon.yaml")
        #expect(set.warnings.isEmpty)
        #expect(set.workerDaemon.pidfile == "%n.pid" && set.workerDaemon.logfile == "/var/log/w.log")
        #expect(set.workerDaemon.uid == "1000" && set.workerDaemon.gid == "staff")
        #expect(set.workerDaemon.executable == "/usr/local/bin/swift-celery-worker")
        // A number is the mask itself (23 is 0o27), as Python's os.umask takes it.
        #expect(set.workerDaemon.umask.flatMap(DaemonSettings.umask(parsing:)) == 0o27)
        #expect(set.beatDaemon.umask.flatMap(DaemonSettings.umask(parsing:)) == 0o27)
        #expect(set.beatDaemon.pidfile == "beat.pid" && set.beatDaemon.uid == "nobody" && set.beatDaemon.logfile == nil)
        #expect(DaemonSettings.umask(parsing: "22") == 22 && DaemonSettings.umask(parsing: "0777") == 0o777)
        for bad in ["worker_umask: '0999'", "worker_umask: 512", "beat_umask: true", "worker_uid: ''", "beat_gid: [1]"] {
            #expect(throws: CeleryWorkerError.self, "\(bad)") { try CelerySettings.parse(bad, source: "bad.yaml") }
        }
    }

    @Test("Celery 5.5's soft shutdown, the deduplication of successful tasks and task_ignore_result")
    func shutdownAndDeduplication() throws {
        let set = try CelerySettings.parse(
            """
            worker_soft_shutdown_timeout: 2.5
            worker_enable_soft_shutdown_on_idle: true
            worker_deduplicate_successful_tasks: true
            CELERY_IGNORE_RESULT: true
            """, source: "soft.yaml")
        #expect(set.softShutdownTimeout == 2.5 && set.softShutdownOnIdle == true && set.deduplicateSuccessfulTasks == true)
        #expect(set.ignoreResult == true && set.warnings.isEmpty)
        let eta = try CelerySettings.parse("worker_eta_task_limit: 12\nworker_disable_prefetch: true", source: "eta.yaml")
        #expect(eta.etaTaskLimit == .some(12) && eta.disablePrefetch == true)
        #expect(try CelerySettings.parse("worker_eta_task_limit: null", source: "none.yaml").etaTaskLimit == .some(nil))
        let exchanges = try CelerySettings.parse("control_exchange: tenant\nCELERY_EVENT_EXCHANGE: tenantev", source: "x.yaml")
        #expect(exchanges.controlExchange == "tenant" && exchanges.eventExchange == "tenantev")
        let priorities = try CelerySettings.parse("task_default_priority: 4\nCELERY_INHERIT_PARENT_PRIORITY: true", source: "p.yaml")
        #expect(priorities.defaultPriority == 4 && priorities.inheritParentPriority == true)
        var configuration = WorkerConfiguration()
        #expect(configuration.fallbackPriority(parent: 7) == nil)
        configuration.defaultPriority = 4
        #expect(configuration.fallbackPriority(parent: 7) == 4)
        configuration.inheritParentPriority = true
        #expect(configuration.fallbackPriority(parent: 7) == 7)
        #expect(try CelerySettings.parse("worker_soft_shutdown_timeout: 10", source: "whole.yaml").softShutdownTimeout == 10)
    }

    @Test("result_backend_always_retry: Celery's jittered back-off and limit; off, the worker's own 30 retries")
    func resultBackendRetry() throws {
        let set = try CelerySettings.parse(
            """
            result_backend_always_retry: true
            result_backend_max_retries: .inf
            result_backend_base_sleep_between_retries_ms: 20
            result_backend_max_sleep_between_retries_ms: 1000
            """, source: "results.yaml")
        #expect(set.resultBackendAlwaysRetry == true && set.resultBackendMaxRetries == .some(nil))
        #expect(set.resultBackendBaseSleep == 0.02 && set.resultBackendMaxSleep == 1)
        #expect(try CelerySettings.parse("result_backend_max_retries: 5", source: "five.yaml").resultBackendMaxRetries == .some(5))
        for bad in ["result_backend_max_retries: -1", "result_backend_base_sleep_between_retries_ms: 0.5"] {
            #expect(throws: CeleryWorkerError.self) { try CelerySettings.parse(bad, source: "bad.yaml") }
        }
        let celery = ResultBackendRetry(alwaysRetry: true, baseSleep: 0.02, maxSleep: 1)
        #expect(celery.retries == nil)
        // Python's randrange(countdown + 1) over min(max, base × 2ⁿ) milliseconds, n from 1.
        #expect(celery.delay(attempt: 1, random: 0.99999) == 0.04)
        #expect(celery.delay(attempt: 3, random: 0.99999) == 0.16)
        #expect(celery.delay(attempt: 30, random: 0.99999) == 1)
        #expect(celery.delay(attempt: 30, random: 0) == 0)
        let own = ResultBackendRetry()
        #expect(own.retries == 30 && own.delay(attempt: 1) == 1 && own.delay(attempt: 9) == 32)
        #expect(ResultBackendRetry(alwaysRetry: true, maxRetries: 3).retries == 3)
    }

    @Test("task_queues: names, mappings or a mapping of names, in order; kombu's topic patterns")
    func taskQueues() throws {
        let mapping = try CelerySettings.parse(
            """
            task_queues:
              default: {}
              feeds: {exchange: media, routing_key: "feed.#", exchange_type: topic}
              images: {binding_key: img}
            task_default_exchange: tasks
            """, source: "queues.yaml")
        let queues = try #require(mapping.taskQueues)
        #expect(queues.map(\.name) == ["default", "feeds", "images"])
        let bindings = queues.map { $0.binding(defaultExchange: mapping.defaultExchange ?? "celery", defaultExchangeType: .direct) }
        #expect(bindings[0] == QueueBinding(exchange: "tasks", routingKey: "default"))
        #expect(bindings[1] == QueueBinding(exchange: "media", routingKey: "feed.#", exchangeType: .topic))
        #expect(bindings[2] == QueueBinding(exchange: "tasks", routingKey: "img"))
        let list = try CelerySettings.parse("CELERY_QUEUES: [a, {name: b, exchange: x}]", source: "list.yaml")
        #expect(list.taskQueues?.map(\.name) == ["a", "b"] && list.taskQueues?.last?.exchange == "x")
        for bad in [
            "task_queues: 3", "task_queues: {a: {exchange_type: fanout}}", "task_queues: [{exchange: x}]",
            "task_queues: {a: {durable: true}}",
        ] {
            #expect(throws: CeleryWorkerError.self) { try CelerySettings.parse(bad, source: "bad.yaml") }
        }
        do {
            _ = try CelerySettings.parse("task_queues: {a: {exchange_type: fanout}}", source: "fanout.yaml")
            Issue.record("a fanout exchange must be refused")
        } catch {
            #expect(error.message.hasPrefix("fanout.yaml: setting 'task_queues': exchange type 'fanout' is not supported"))
        }
        // What was read is shown as Python writes it, not as Swift's `[AnyHashable("a"): …]`; an option that is not
        // read is named, whatever its value.
        for (bad, message) in [
            (
                "task_queues: {a: {exchange: a, queue_arguments: {x-expires: 60000}}}",
                "must be for queue 'a' only exchange, routing_key, binding_key and exchange_type, not 'queue_arguments', "
                    + "got {'a': {'exchange': 'a', 'queue_arguments': {'x-expires': 60000}}}"
            ),
            (
                "task_queues: {q: {exchange: [a, null, true, 1.5]}}",
                "must be for queue 'q' a string for 'exchange', got {'q': {'exchange': ['a', None, True, 1.5]}}"
            ),
            ("worker_concurrency: four", "must be a whole number, got 'four'"),
        ] {
            do {
                _ = try CelerySettings.parse(bad, source: "shown.yaml")
                Issue.record("\(bad) must be refused")
            } catch {
                #expect(error.message.hasSuffix(message), "\(error.message)")
            }
        }
        // A file that cannot be read says why in the system's words, not Foundation's ("NSCocoaErrorDomain error 256").
        let notText = FileManager.default.temporaryDirectory.appendingPathComponent("settings-\(UUID().uuidString).yaml").path
        #expect(FileManager.default.createFile(atPath: notText, contents: Data([0xff, 0xfe, 0x20])))
        defer { try? FileManager.default.removeItem(atPath: notText) }
        for (path, reason) in [("/", "Is a directory"), ("/no/such/settings.yaml", "No such file or directory"), (notText, "it is not UTF-8 text")] {
            do {
                _ = try CelerySettings.load(path: path)
                Issue.record("\(path) must not be read")
            } catch {
                #expect(error.message == "cannot read config file \(path): \(reason)")
            }
        }
        // kombu's TopicExchange.key_to_pattern, as a Python worker stores it.
        #expect(QueueBinding(exchange: "m", routingKey: "feed.#", exchangeType: .topic).pattern == "^feed\\..*?$")
        #expect(QueueBinding(exchange: "m", routingKey: "*.a-b", exchangeType: .topic).pattern == "^[^\\.]+\\.a\\-b$")
        #expect(QueueBinding.named("q").pattern == "")
    }

    @Test("time zones: date_done in the app's zone; naive times read as UTC unless enable_utc is off")
    func timezones() throws {
        let paris = try #require(CeleryTimeZone(identifier: "Europe/Paris"))
        let utc = WorkerConfiguration()
        #expect(utc.isoformat(unixSeconds: 1_795_566_032.5) == "2026-11-25T00:20:32.500000+00:00")
        let local = WorkerConfiguration(timezone: paris, enableUTC: false)
        #expect(local.isoformat(unixSeconds: 1_795_566_032) == "2026-11-25T01:20:32+01:00")
        #expect(utc.parseTime("2026-11-25T01:20:32") == 1_795_569_632)
        #expect(local.parseTime("2026-11-25T01:20:32") == 1_795_566_032)
        #expect(local.parseTime("2026-11-25T01:20:32+00:00") == 1_795_569_632)
        #expect(local.parseTime("2026-07-01T12:00:00") == CeleryTimestamp.parse("2026-07-01T10:00:00Z"))
        // UTC's names need no zone database; unknown names are refused.
        let zulu = try #require(CeleryTimeZone(identifier: "Etc/Zulu"))
        #expect(zulu.secondsFromGMT(at: 1_795_566_032) == 0 && zulu.identifier == "Etc/Zulu")
        #expect(CeleryTimeZone(identifier: "Mars/Olympus") == nil)
    }
}

@Suite("Retry arithmetic")
struct RetryArithmeticTests {
    @Test("broker connection retries: kombu's 2, 4 … 30 s, Celery's (n/max) note, and giving up after max retries")
    func brokerConnectionRetries() {
        let policy = BrokerConnectionRetry(maxRetries: 20)
        let waits = (1...20).map { attempt -> Double? in
            guard case .wait(let seconds, _) = policy.step(afterFailedAttempt: attempt, startup: false, error: "x") else { return nil }
            return seconds
        }
        #expect(waits == (1...20).map { Double(min(2 * $0, 30)) })
        #expect(
            policy.step(afterFailedAttempt: 3, startup: true, error: "x")
                == .wait(seconds: 6, note: "Trying again in 6.00 seconds... (3/20)"))
        #expect(
            policy.step(afterFailedAttempt: 21, startup: false, error: "connect to redis://h:1/0: Connection refused")
                == .giveUp(reason: "Unrecoverable error: OperationalError('connect to redis://h:1/0: Connection refused')"))
        // null: forever, as Celery prints it; 0: not once.
        let forever = BrokerConnectionRetry(maxRetries: nil)
        #expect(
            forever.step(afterFailedAttempt: 500, startup: false, error: "x")
                == .wait(seconds: 30, note: "Trying again in 30.00 seconds... (500/None)"))
        guard case .giveUp = BrokerConnectionRetry(maxRetries: 0).step(afterFailedAttempt: 1, startup: true, error: "x") else {
            Issue.record("max_retries 0 retries")
            return
        }
    }

    @Test("the consumer's restarts are counted as billiard's restart_state (5 in 1 s) counts them")
    func restartFrequency() {
        // billiard 4.2's `restart_state(maxR=5, maxT=1).step(now=100 + t)` at these times raised at 0.5 and 2.4.
        let times = [0, 0.1, 0.2, 0.3, 0.4, 0.5, 1.5, 1.6, 1.7, 1.8, 1.9, 2.4, 2.45, 3.0, 3.1, 3.2]
        let start = ContinuousClock.now
        var restarts = RestartFrequency()
        let lines = times.map { restarts.step(at: start + .milliseconds(Int($0 * 1000))) }
        let tooOften = "Frequent restarts detected: RestartFreqExceeded('5 in 1s')"
        #expect(lines == times.map { [0.5, 2.4].contains($0) ? tooOften : nil })
    }

    @Test("broker_connection_retry_on_startup decides on start (else broker_connection_retry, with Celery's warning)")
    func brokerConnectionRetryOnStartup() {
        let startupOff = BrokerConnectionRetry(retryOnStartup: false)
        #expect(!startupOff.retries(startup: true) && startupOff.retries(startup: false))
        #expect(startupOff.startupDeprecationWarning == nil)
        #expect(
            startupOff.step(afterFailedAttempt: 1, startup: true, error: "x")
                == .giveUp(
                    reason: "Retrying to establish a connection to the message broker after a connection loss has been disabled "
                        + "(app.conf.broker_connection_retry_on_startup=False). Shutting down..."))
        let off = BrokerConnectionRetry(retry: false)
        #expect(!off.retries(startup: true) && !off.retries(startup: false))
        #expect(off.startupDeprecationWarning?.hasPrefix("CPendingDeprecationWarning: The broker_connection_retry configuration") == true)
        #expect(off.disabledReason(startup: true).contains("(app.conf.broker_connection_retry=False)"))
        #expect(off.disabledReason(startup: false).hasPrefix("Retrying to re-establish a connection"))
        let startupOn = BrokerConnectionRetry(retry: false, retryOnStartup: true)
        #expect(startupOn.retries(startup: true) && !startupOn.retries(startup: false) && startupOn.startupDeprecationWarning == nil)
        #expect(BrokerConnectionRetry().retries(startup: true) && BrokerConnectionRetry().startupDeprecationWarning == nil)
    }

    @Test("exponential back-off without jitter: factor × 2^retries, capped")
    func backoff() {
        var generator = SystemRandomNumberGenerator()
        let intervals = (0..<12).map {
            RetryPolicy.backoffInterval(factor: 1, retries: $0, maximum: 600, jitter: false, using: &generator)
        }
        #expect(intervals == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 600, 600])
        #expect(RetryPolicy.backoffInterval(factor: 3, retries: 2, maximum: 600, jitter: false, using: &generator) == 12)
        #expect(RetryPolicy.backoffInterval(factor: 0, retries: 5, maximum: 600, jitter: false, using: &generator) == 0)
        #expect(RetryPolicy.backoffInterval(factor: 1, retries: 200, maximum: 600, jitter: false, using: &generator) == 600)
    }

    @Test("Redis's replies that refuse for now (OOM, LOADING, BUSY …) are tried again, as a lost connection is; others are not")
    func transientReplies() async {
        func failure(_ reply: String) -> CeleryWorkerError? {
            do {
                _ = try RedisReply.error(reply).check("SETEX")
                return nil
            } catch {
                return error
            }
        }
        for reply in [
            "OOM command not allowed when used memory > 'maxmemory'.", "LOADING Redis is loading the dataset in memory",
            "BUSY Redis is busy running a script.", "MASTERDOWN Link with MASTER is down", "TRYAGAIN Multiple keys request",
            "NOREPLICAS Not enough good replicas to write.", "MISCONF Redis is configured to save RDB snapshots",
        ] {
            #expect(failure(reply)?.code == .redisUnavailable, "\(reply)")
            #expect(failure(reply)?.isTransient == true && failure(reply)?.isConnectionProblem == false, "\(reply)")
            #expect(failure(reply)?.message == "SETEX: \(reply)")
        }
        for reply in ["ERR wrong number of arguments", "WRONGTYPE Operation against a key", "BUSYGROUP Consumer Group name already exists", "NOPERM"]
        {
            #expect(failure(reply)?.code == .redisError && failure(reply)?.isTransient == false, "\(reply)")
        }
        // A step that fails for want of memory is tried again, and what it returns once Redis has room is returned.
        let attempts = Mutex(0)
        let value = try? await untilReachable(retries: 3, delay: { _ in 0 }) { () throws(CeleryWorkerError) -> Int in
            let attempt = attempts.withLock { count -> Int in
                count += 1
                return count
            }
            if attempt < 3 { _ = try RedisReply.error("OOM command not allowed").check("EVALSHA") }
            return attempt
        }
        #expect(value == 3)
        // Any other error reply ends the tries at once.
        let once = Mutex(0)
        let refused = try? await untilReachable(retries: 3, delay: { _ in 0 }) { () throws(CeleryWorkerError) -> Int in
            once.withLock { $0 += 1 }
            _ = try RedisReply.error("WRONGTYPE Operation against a key").check("EVALSHA")
            return 0
        }
        #expect(refused == nil && once.withLock { $0 } == 1)
    }

    @Test("full jitter stays between 0 and the back-off")
    func jitter() {
        var generator = SystemRandomNumberGenerator()
        for retries in 0..<8 {
            let value = RetryPolicy.backoffInterval(factor: 2, retries: retries, maximum: 100, jitter: true, using: &generator)
            #expect((0...min(100, 2 << retries)).contains(value))
        }
        #expect(RetryPolicy.backoffInterval(factor: 0, retries: 3, maximum: 600, jitter: true, using: &generator) == 0)
    }

    @Test("the retry message keeps the id and args, bumps retries, points parent_id at itself")
    func retryEnvelope() throws {
        let raw = try fixture("v2-json-options.message.json")
        let original = try KombuEnvelope(decoding: raw)
        let message = try CeleryTaskMessage(envelope: original, accept: [.json])
        let retried = try message.retryEnvelope(
            original: original, eta: "2030-01-01T00:00:00+00:00", origin: "gen1@host",
            ignoreResult: false, deliveryTag: "new-tag")
        let again = try CeleryTaskMessage(envelope: try KombuEnvelope(decoding: retried.encoded()), accept: [.json])
        #expect(again.id == message.id && again.args == message.args && again.kwargs == message.kwargs)
        #expect(again.retries == message.retries + 1)
        #expect(again.parentID == message.id && again.rootID == message.rootID)
        #expect(again.eta == "2030-01-01T00:00:00+00:00" && again.expires == message.expires)
        #expect(again.headers["x-custom"] == "v" && again.timeLimit.hard == 10)
        #expect(
            retried.properties.keys.elements == [
                "correlation_id", "reply_to", "origin", "delivery_mode", "expiration", "delivery_info", "priority",
                "body_encoding", "delivery_tag",
            ])
        #expect(retried.deliveryTag == "new-tag" && retried.deliveryInfo.priority == 5)
        #expect(retried.body == original.body)
    }
}
