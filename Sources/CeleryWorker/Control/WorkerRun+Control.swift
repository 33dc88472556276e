import CHiredis
import CeleryProtocol
import Foundation

/// A task running now, for `inspect active`.
struct RunningTask: Sendable {
    let job: PreparedJob
    let timeStart: Double
    /// Told to stop by `revoke(terminate=True)`.
    let stop: StopRequest
}

/// The tasks running now, by job: two deliveries of one task id that run at once are both listed (as in Python's
/// `active_requests`), and adding or removing one hashes no string.
struct RunningTasks: Sendable {
    private var tasks: [ObjectIdentifier: RunningTask] = [:]

    // `updateValue` and `removeValue`, not the subscript: its modify accessor allocates a frame per call.
    mutating func add(_ task: RunningTask) {
        tasks.updateValue(task, forKey: ObjectIdentifier(task.job))
    }

    mutating func remove(_ job: PreparedJob) {
        tasks.removeValue(forKey: ObjectIdentifier(job))
    }

    var all: [RunningTask] { Array(tasks.values) }

    /// The running tasks with this id (at most `-c` are running, so a scan).
    func with(id: String) -> [RunningTask] { tasks.values.filter { $0.job.message.id == id } }
}

/// Task ids remembered as Celery's `LimitedSet` remembers them: at most `limit`, the oldest forgotten first, each for
/// `lifetime` seconds.
struct LimitedIDs: Sendable {
    let limit: Int
    let lifetime: Double
    private var added: [String: Double] = [:]
    private var order: [String] = []

    init(limit: Int, lifetime: Double) {
        self.limit = limit
        self.lifetime = lifetime
    }

    mutating func insert(_ id: String, at now: Double = WallClock.now()) {
        if added[id] == nil { order.append(id) }
        added[id] = now
        while order.count > limit { added[order.removeFirst()] = nil }
    }

    func contains(_ id: String, at now: Double = WallClock.now()) -> Bool {
        guard let time = added[id] else { return false }
        return now - time < lifetime
    }

    func all(at now: Double = WallClock.now()) -> [String] { order.filter { contains($0, at: now) } }

    /// When `id` was added, if it is held.
    func addedAt(_ id: String) -> Double? { added[id] }
}

/// Ids revoked by `revoke`, remembered as Python remembers them: at most 50 000, each for 3 hours.
struct RevokedTasks: Sendable {
    static let limit = 50_000
    static let lifetime: Double = 10_800
    private var ids = LimitedIDs(limit: Self.limit, lifetime: Self.lifetime)
    /// Stamp values revoked by `revoke_by_stamped_headers`, by stamp name (Celery's `revoked_stamps`).
    var stamps: [String: [CeleryValue]] = [:]

    mutating func insert(_ id: String, at now: Double = WallClock.now()) { ids.insert(id, at: now) }

    func contains(_ id: String, at now: Double = WallClock.now()) -> Bool { ids.contains(id, at: now) }

    func all(at now: Double = WallClock.now()) -> [String] { ids.all(at: now) }

    /// When `id` was revoked, if it is held.
    func revokedAt(_ id: String) -> Double? { ids.addedAt(id) }
}

extension WorkerRun {
    /// The worker's pub/sub connection, shared as kombu consumes its fanout queues on one: Celery's remote control
    /// (requests arrive by `PSUBSCRIBE /<db>.celery.pidbox`, a fanout exchange; replies are `LPUSH`ed to the client's
    /// reply queue found through `_kombu.binding.reply.celery.pidbox`), and gossip's `worker.*` events. Each message
    /// goes to its handler by the pattern it matched.
    func subscriptionLoop() async {
        guard let control = service.control else { return }
        let controlPatterns = configuration.remoteControl ? [pidboxTopic] + pidboxLegacyTopics : []
        let gossipPatterns = gossips ? gossipChannels : []
        guard !(controlPatterns + gossipPatterns).isEmpty else { return }
        let gossipBytes = Set(gossipPatterns.map { Array($0.utf8) })
        let (requests, newRequest) = AsyncStream.makeStream(of: [UInt8].self)
        let (events, newEvent) = AsyncStream.makeStream(of: [UInt8].self)
        let subscribed = ShutdownSignal()  // set at the first confirmed subscription
        await withDiscardingTaskGroup { group in
            group.addTask {
                defer {
                    newRequest.finish()
                    newEvent.finish()
                }
                await self.keepSubscribed(
                    control.subscriber, to: controlPatterns + gossipPatterns, what: controlPatterns.isEmpty ? "Gossip" : "Remote control",
                    onSubscribed: {
                        // The first subscription: the worker answers remote control from now on.
                        // (Only this loop subscribes: the check and the trigger cannot interleave.)
                        if !controlPatterns.isEmpty, !subscribed.isTriggered {
                            subscribed.trigger()
                            self.logReady()
                        }
                    },
                    onMessage: { data, pattern in
                        if let pattern, gossipBytes.contains(pattern) {
                            newEvent.yield(data)
                        } else {
                            newRequest.yield(data)
                        }
                    })
            }
            group.addTask {
                for await raw in requests { await self.handleControl(raw, replies: control.replies) }
            }
            group.addTask {
                for await raw in events { await self.heardGossip(raw) }
            }
            if !gossipPatterns.isEmpty {
                group.addTask { await self.gossipSweepLoop() }
            }
        }
    }

    /// Keeps `client` subscribed to the channel `patterns` until the worker shuts down (or this task is cancelled),
    /// subscribing again with back-off when the connection is lost (logged as `what` … `connection lost`); hands
    /// each message to `onMessage`, on the connection's thread. `onSubscribed` runs at each confirmed subscription.
    func keepSubscribed(
        _ client: RedisClient, to patterns: [String], what: String, onSubscribed: @escaping @Sendable () -> Void,
        onMessage: @escaping @Sendable (_ data: [UInt8], _ pattern: [UInt8]?) -> Void
    ) async {
        guard let pattern = patterns.first else { return }
        let shutdown = self.shutdown
        let stop = ShutdownSignal()  // set when the loop is cancelled (cold shutdown)
        var failures = 0
        while !shutdown.isTriggered, !Task.isCancelled {
            do {
                try await withTaskCancellationHandler {
                    try await client.withConnection { connection throws(CeleryWorkerError) in
                        try connection.subscribe(
                            pattern: pattern, alsoPatterns: Array(patterns.dropFirst()),
                            shouldStop: { shutdown.isTriggered || stop.isTriggered }, onSubscribed: onSubscribed, onMessage: onMessage)
                    }
                } onCancel: {
                    stop.trigger()
                }
                failures = 0
            } catch let error as CeleryWorkerError {
                failures += 1
                let delay = service.retryDelays.delay(attempt: failures)
                logger.warning(
                    "\(what) connection lost (\(error.message)); resubscribing in \(CeleryWorkerService.format(seconds: delay)) seconds")
                _ = await shutdown.sleep(untilUnixTime: WallClock.now() + delay)
            } catch {
                break
            }
        }
    }

    /// The topic of remote control requests (kombu's fanout `celery.pidbox` exchange on Redis).
    var pidboxTopic: String {
        configuration.brokerTransport.fanoutChannel(
            exchange: "\(configuration.controlExchange).pidbox", database: configuration.brokerURL.database,
            prefix: configuration.brokerKeyPrefix)
    }

    /// A pidbox message as kombu's `Mailbox` sends it, to `exchange` with `routingKey`: `delivery_mode` 2 for a
    /// request, 1 for a reply (kombu's reply producer).
    static func pidboxEnvelope(
        _ body: CeleryValue, serializer: CeleryContentType, headers: CeleryObject, exchange: String, routingKey: String,
        deliveryMode: Int64
    ) throws(CeleryWorkerError) -> KombuEnvelope {
        KombuEnvelope(
            body: try CeleryWorkerError.encoding { () throws(CeleryProtocolError) in try serializer.encode(body) },
            contentType: serializer.rawValue, contentEncoding: serializer.contentEncoding,
            headers: headers,
            properties: [
                "delivery_mode": .int(deliveryMode),
                "delivery_info": ["exchange": .string(exchange), "routing_key": .string(routingKey)],
                "priority": 0, "body_encoding": "base64", "delivery_tag": .string(UUID().uuidString.lowercased()),
            ])
    }

    /// The topics kombu before 5.4 uses for remote control under Redis Sentinel: it never put the database number
    /// into the Sentinel transport's fanout prefix, so it publishes to the literal `/{db}.celery.pidbox`. The worker
    /// listens there too (and, with a Sentinel broker, sends its own `hello` there as well).
    var pidboxLegacyTopics: [String] {
        guard configuration.brokerURL.isSentinel,
            let legacy = configuration.brokerTransport.legacySentinelChannel(
                exchange: "\(configuration.controlExchange).pidbox", prefix: configuration.brokerKeyPrefix)
        else { return [] }
        return [legacy]
    }

    /// The body of a pidbox message or an event, and its serializer: verified first when it is signed
    /// (``WorkerConfiguration/messageSigning``). `nil` when it does not decode, when its signature does not verify,
    /// and, with `signedOnly`, when it is not signed (Celery's mailbox accepts `accept_content` alone, which is
    /// `[auth]` when messages are signed).
    func openedBody(_ envelope: KombuEnvelope, signedOnly: Bool) -> (body: CeleryValue, serializer: CeleryContentType)? {
        switch MessageSigning.openedBody(envelope, signing: configuration.messageSigning, signedOnly: signedOnly) {
        case .success(let opened):
            return opened
        case .failure(.unsigned(let contentType)):
            logger.warning("Refusing a message that is not signed (content type '\(contentType)'): accept_content is ['auth']")
        case .failure(.unverified(let reason)):
            logger.error("Refusing a signed message: \(reason)")
        case .failure(.undecodable):
            break
        }
        return nil
    }

    private func handleControl(_ raw: [UInt8], replies: RedisClient) async {
        guard let envelope = try? KombuEnvelope(decoding: raw),
            let (body, serializer) = openedBody(envelope, signedOnly: true),
            case .object(let request) = body,
            let method = request["method"]?.stringValue
        else {
            logger.warning("Ignoring a remote control message that is not a pidbox request: \(Self.preview(raw))")
            return
        }
        // kombu 5.7's `sentinel_fanout_compat` sends each request on both topics: it is answered once.
        if !pidboxLegacyTopics.isEmpty, let tag = envelope.properties["delivery_tag"]?.stringValue {
            if recentControlTags.withLock({ $0.isRepeat(tag) }) { return }
        }
        guard Self.isAddressed(request, to: configuration.nodeName) else { return }
        logger.debug("pidbox received method \(method)")
        let arguments = request["arguments"]?.objectValue ?? [:]
        guard let reply = await controlReply(method, arguments) else { return }
        guard let ticket = request["ticket"]?.stringValue, let exchange = request["reply_to"]?["exchange"]?.stringValue,
            let routingKey = request["reply_to"]?["routing_key"]?.stringValue
        else { return }
        do {
            let answer = try Self.pidboxEnvelope(
                [configuration.nodeName: reply], serializer: serializer,
                headers: ["ticket": .string(ticket), "clock": .int(Int64(service.events?.currentClock ?? 0))],
                exchange: exchange, routingKey: routingKey, deliveryMode: 1)
            try await Self.pushReply(
                configuration.sealed(answer).encoded(), exchange: exchange, routingKey: routingKey,
                prefix: configuration.brokerKeyPrefix, transport: configuration.brokerTransport, via: replies)
        } catch {
            logger.warning("Cannot reply to remote control \(method): \(error.message)")
        }
    }

    /// Sends a pidbox reply as kombu's direct exchange does: to every queue bound to `exchange` with `routingKey`
    /// (`_kombu.binding.<exchange>`, behind the broker's `prefix`).
    static func pushReply(
        _ encoded: [UInt8], exchange: String, routingKey: String, prefix: String, transport: RedisTransportOptions,
        via replies: RedisClient
    ) async throws(CeleryWorkerError) {
        let members = try await replies.send(RedisCommand("SMEMBERS", RedisArgument("\(prefix)_kombu.binding.\(exchange)")))
        for member in members.array ?? [] {
            guard let text = member.text, let queue = transport.boundQueue(member: text, routingKey: routingKey) else { continue }
            try await replies.send(RedisCommand("LPUSH", RedisArgument(prefix + queue), RedisArgument(encoded)))
        }
    }

    /// Whether a request is for this node: its name is in `destination`, it matches `pattern`, or neither is given.
    static func isAddressed(_ request: CeleryObject, to node: String) -> Bool {
        if case .array(let names)? = request["destination"] {
            return names.contains(.string(node))
        }
        if let pattern = request["pattern"]?.stringValue {
            if request["matcher"]?.stringValue == "pcre" {
                return (try? NSRegularExpression(pattern: pattern))
                    .map { $0.firstMatch(in: node, range: NSRange(node.startIndex..., in: node)) != nil } ?? false
            }
            return fnmatch(pattern, node, 0) == 0
        }
        return true
    }

    /// The reply to one command; `nil` sends none.
    private func controlReply(_ method: String, _ arguments: CeleryObject) async -> CeleryValue? {
        switch method {
        case "ping":
            return ["ok": "pong"]
        case "election":
            return await holdElection(arguments)
        case "registered", "dump_tasks":
            return registered(arguments["taskinfoitems"])
        case "active", "dump_active":
            return .array(
                running.withLock { $0.all }.sorted { $0.timeStart < $1.timeStart }.map {
                    requestInfo($0.job.message, $0.job.delivery, timeStart: $0.timeStart)
                })
        case "reserved", "dump_reserved":
            return .array(reservedJobs().filter { $0.etaTime == nil }.map { requestInfo($0.message, $0.delivery, timeStart: nil) })
        case "scheduled", "dump_schedule":
            return .array(
                reservedJobs().filter { $0.etaTime != nil }.map { job in
                    [
                        "eta": .string(configuration.isoformat(unixSeconds: job.etaTime ?? 0)),
                        "priority": .int(Int64(job.deliveryInfo.priority)),
                        "request": requestInfo(job.message, job.delivery, timeStart: nil),
                    ] as CeleryValue
                })
        case "stats":
            return stats()
        case "active_queues":
            let configuration = self.configuration
            return .array(consuming.withLock { $0 }.map { Self.queueInfo($0, binding: configuration.binding(of: $0)) })
        case "add_consumer":
            return await addConsumer(arguments)
        case "cancel_consumer":
            guard let queue = arguments["queue"]?.stringValue else { return ["error": "missing queue"] }
            consuming.withLock { $0.removeAll { $0 == queue } }
            cancellations.add(1, ordering: .releasing)
            logger.info("Cancelled consuming from queue \(queue)")
            return ["ok": .string("no longer consuming from \(queue)")]
        case "rate_limit":
            return rateLimit(arguments)
        case "time_limit":
            return timeLimit(arguments)
        case "conf", "dump_conf":
            return conf()
        case "revoked", "dump_revoked":
            return .array(revoked.withLock { $0.all() }.map(CeleryValue.string))
        case "revoke":
            return await revoke(arguments)
        case "revoke_by_stamped_headers":
            return revokeByStampedHeaders(arguments)
        case "terminate":
            // Python's `terminate <signal> <id…>`: `revoke` with terminate.
            var terminate = arguments
            terminate["terminate"] = true
            return await revoke(terminate)
        case "report":
            return ["ok": .string(report())]
        case "enable_events":
            service.events?.setTaskEvents(true)
            return ["ok": "task events enabled"]
        case "disable_events":
            service.events?.setTaskEvents(false)
            return ["ok": "task events disabled"]
        case "shutdown":
            logger.warning("Got shutdown from remote")
            shutdown.trigger()
            closePermits()
            return ["ok": "shutdown"]
        case "query_task":
            return queryTask(arguments["ids"])
        case "hello":
            // Another worker's mingle: Python's `hello` takes its revoked ids and answers with its own.
            guard let peer = arguments["from_node"]?.stringValue, peer != configuration.nodeName else { return .null }
            logger.info("sync with \(peer)")
            let held = revoked.withLock { revoked in
                revoked.merge(arguments["revoked"])
                return revoked.entries()
            }
            return ["revoked": .object(held), "clock": .int(Int64(service.events?.currentClock ?? 0))]
        case "heartbeat":
            await sendWorkerEvent("worker-heartbeat")
            return .null  // Python's returns None, which kombu sends as the reply
        case "clock":
            return ["clock": .int(Int64(service.events?.currentClock ?? 0))]
        case "pool_grow", "pool_shrink":
            return await poolResizeCommand(method, arguments)
        case "autoscale":
            return await autoscaleCommand(arguments)
        case "pool_restart":
            return await poolRestartCommand(arguments)
        case "memsample":
            // Reading /proc is a blocking call: on a task thread, not the cooperative pool.
            return await withTaskExecutorPreference(executor) { memorySample() }
        case "memdump":
            return await withTaskExecutorPreference(executor) { memoryDump(arguments) }
        default:
            return ["error": .string("KeyError('\(method)') (not implemented by swift-celery-worker)")]
        }
    }

    /// Python's `add_consumer`: declare the queue and consume from it too.
    private func addConsumer(_ arguments: CeleryObject) async -> CeleryValue {
        guard let queue = arguments["queue"]?.stringValue, !queue.isEmpty else { return ["error": "missing queue"] }
        if !consuming.withLock({ $0.contains(queue) }) {
            do {
                try await service.broker.declare(queues: [queue])
            } catch {
                logger.error("Cannot declare queue \(queue) for add_consumer: \(error.message)")
                return ["error": .string("cannot declare queue \(queue): \(error.message)")]
            }
            consuming.withLock { if !$0.contains(queue) { $0.append(queue) } }
            logger.info("Started consuming from queue \(queue)")
        }
        return ["ok": .string("add consumer \(queue)")]
    }

    /// Python's `rate_limit`: a new rate for one task type, `0` or `None` turns it off.
    private func rateLimit(_ arguments: CeleryObject) -> CeleryValue {
        let rate: Double?
        do {
            rate = try RateLimit.perSecond(arguments["rate_limit"])
        } catch {
            return ["error": .string("Invalid rate limit string: \(error.message)")]
        }
        guard let name = arguments["task_name"]?.stringValue, service.registry[name] != nil else {
            logger.error("Rate limit attempt for unknown task \(PythonRepr.str(arguments["task_name"] ?? .null))")
            return ["error": "unknown task"]
        }
        // Python keeps the value as given (`task.rate_limit = rate_limit`) and `registered` shows its `str()`.
        let text: String? =
            switch arguments["rate_limit"] {
            case nil, .null?: nil
            case .string(let given)?: given
            case let value?: PythonRepr.repr(value)
            }
        limits.withLock { $0.setRate(rate, text: text, for: name) }
        guard rate != nil else {
            logger.info("Rate limits disabled for tasks of type \(name)")
            return ["ok": "rate limit disabled successfully"]
        }
        logger.info("New rate limit for tasks of type \(name): \(PythonRepr.repr(arguments["rate_limit"] ?? .null)).")
        return ["ok": "new rate limit set successfully"]
    }

    /// Python's `time_limit`: new soft and hard limits for one task type (`None` falls back to the worker's).
    private func timeLimit(_ arguments: CeleryObject) -> CeleryValue {
        guard let name = arguments["task_name"]?.stringValue, service.registry[name] != nil else {
            logger.error("Change time limit attempt for unknown task \(PythonRepr.str(arguments["task_name"] ?? .null))")
            return ["error": "unknown task"]
        }
        let soft = arguments["soft"]?.doubleValue
        let hard = arguments["hard"]?.doubleValue
        limits.withLock { $0.setTimeLimits(soft: soft, hard: hard, for: name) }
        logger.info(
            "New time limits for tasks of type \(name): soft=\(soft.map { PythonRepr.repr(.double($0)) } ?? "None") hard=\(hard.map { PythonRepr.repr(.double($0)) } ?? "None")"
        )
        return ["ok": "time limits set successfully"]
    }

    /// The broker's transport options as Celery's settings show them: the visibility timeout, and kombu's other options
    /// where they are not kombu's defaults (an empty `fanout_prefix` as `false`, the way it is given).
    private var transportOptions: CeleryObject {
        let transport = configuration.brokerTransport
        let kombu = RedisTransportOptions()
        var options: CeleryObject = ["visibility_timeout": .double(configuration.visibilityTimeout)]
        if transport.separator != kombu.separator { options["sep"] = .string(transport.separator) }
        if transport.prioritySteps != kombu.prioritySteps {
            options["priority_steps"] = .array(transport.prioritySteps.map { .int(Int64($0)) })
        }
        if transport.queueOrder != kombu.queueOrder { options["queue_order_strategy"] = .string(transport.queueOrder.rawValue) }
        if transport.fanoutPrefix != kombu.fanoutPrefix {
            options["fanout_prefix"] = transport.fanoutPrefix.isEmpty ? false : .string(transport.fanoutPrefix)
        }
        if !transport.fanoutPatterns { options["fanout_patterns"] = false }
        for (name, value, standard) in [
            ("unacked_key", transport.unackedKey, kombu.unackedKey),
            ("unacked_index_key", transport.unackedIndexKey, kombu.unackedIndexKey),
            ("unacked_mutex_key", transport.unackedMutexKey, kombu.unackedMutexKey),
        ] where value != standard {
            options[name] = .string(value)
        }
        if let expire = transport.unackedMutexExpire { options["unacked_mutex_expire"] = Self.seconds(expire) }
        if let limit = transport.unackedRestoreLimit { options["unacked_restore_limit"] = .int(Int64(limit)) }
        if let interval = transport.unackedRestoreInterval { options["unacked_restore_interval"] = Self.seconds(interval) }
        if let name = configuration.brokerURL.clientName { options["client_name"] = .string(name) }
        return options
    }

    /// Python's `conf`: the settings in effect, under Celery's lowercase names (passwords masked).
    private func conf() -> CeleryValue {
        let configuration = self.configuration
        func optional(_ value: Double?) -> CeleryValue { value.map(CeleryValue.double) ?? .null }
        var settings: CeleryObject = [
            // As Celery 5.7's `conf` shows them: the broker as kombu's `as_uri(mask='********')`, the backend's
            // setting with its password masked.
            "broker_url": .string(configuration.brokerURL.brokerDisplay(mask: "********")),
            "result_backend": configuration.resultBackendURL.map { url in
                .string(configuration.resultBackendSetting.map { RedisURL.censored($0) } ?? url.description)
            } ?? .null,
            "result_serializer": .string(configuration.resultSerializer.serializerName),
            "task_compression": configuration.taskCompression.map { .string($0.name) } ?? .null,
            "result_compression": configuration.resultCompression.map { .string($0.name) } ?? .null,
            "result_expires": configuration.resultExpires.map { .int(Int64($0)) } ?? .null,
            "result_chord_join_timeout": configuration.chord.joinTimeout.map(CeleryValue.seconds) ?? .null,
            "result_chord_expires": configuration.chord.expires.map { .int(Int64($0)) } ?? .null,
            "task_serializer": .string(configuration.messageSigning == nil ? configuration.taskSerializer.serializerName : "auth"),
            "accept_content": .array(
                CeleryContentType.allCases.filter(configuration.acceptContent.contains).map { .string($0.serializerName) }
                    + (configuration.messageSigning == nil ? [] : ["auth"])),
            "timezone": .string(configuration.timezone.identifier),
            "enable_utc": .bool(configuration.enableUTC),
            "task_acks_late": .bool(configuration.acksLate),
            "task_reject_on_worker_lost": .bool(configuration.rejectOnWorkerLost),
            "task_track_started": .bool(configuration.trackStarted),
            "task_soft_time_limit": optional(configuration.softTimeLimit),
            "task_time_limit": optional(configuration.timeLimit),
            "result_extended": .bool(configuration.resultExtended),
            "worker_concurrency": .int(Int64(configuration.concurrency)),
            "worker_prefetch_multiplier": .int(Int64(configuration.prefetchMultiplier)),
            "worker_direct": .bool(configuration.workerDirect),
            "worker_pool_restarts": .bool(configuration.poolRestarts),
            "task_routes": configuration.taskRoutes.value ?? .null,
            "task_acks_on_timeout": .bool(configuration.acksOnTimeout),
            "worker_send_task_events": .bool(service.events?.sendsTaskEvents ?? configuration.sendTaskEvents),
            "broker_transport_options": .object(transportOptions),
            "broker_connection_retry": .bool(configuration.brokerConnectionRetry.retry),
            "broker_connection_retry_on_startup": configuration.brokerConnectionRetry.retryOnStartup.map(CeleryValue.bool) ?? .null,
            "broker_connection_max_retries": configuration.brokerConnectionRetry.maxRetries.map { .int(Int64($0)) } ?? .null,
            "broker_connection_timeout": Self.seconds(configuration.brokerURL.connectTimeout ?? 4),
            "worker_soft_shutdown_timeout": .seconds(configuration.softShutdownTimeout),
            "worker_enable_soft_shutdown_on_idle": .bool(configuration.softShutdownOnIdle),
            "worker_deduplicate_successful_tasks": .bool(configuration.deduplicateSuccessfulTasks),
            "task_ignore_result": .bool(configuration.ignoreResult),
            "worker_disable_prefetch": .bool(configuration.disablePrefetch),
            "worker_eta_task_limit": configuration.etaTaskLimit.map { .int(Int64($0)) } ?? .null,
            "control_exchange": .string(configuration.controlExchange),
            "task_default_priority": configuration.defaultPriority.map { .int(Int64($0)) } ?? .null,
            "task_inherit_parent_priority": .bool(configuration.inheritParentPriority),
            "event_exchange": .string(configuration.eventExchange),
            "result_backend_always_retry": .bool(configuration.resultBackendRetry.alwaysRetry),
            "result_backend_max_retries": configuration.resultBackendRetry.maxRetries.map { .int(Int64($0)) } ?? .double(.infinity),
            "result_backend_base_sleep_between_retries_ms": .int(Int64((configuration.resultBackendRetry.baseSleep * 1000).rounded())),
            "result_backend_max_sleep_between_retries_ms": .int(Int64((configuration.resultBackendRetry.maxSleep * 1000).rounded())),
        ]
        // TLS in effect, as the ssl_* mappings Celery's settings take (certificate paths are not secrets).
        if let tls = configuration.brokerURL.tls { settings["broker_use_ssl"] = .object(tls.celeryObject) }
        if let tls = configuration.resultBackendURL?.tls { settings["redis_backend_use_ssl"] = .object(tls.celeryObject) }
        // The embedded beat's settings, with -B (its schedule's entries are not shown: Python shows them as repr text).
        if let beat = configuration.beat {
            settings["beat_schedule_filename"] = .string(beat.scheduleFilename)
            settings["beat_max_loop_interval"] = Self.seconds(beat.maxLoopInterval)
            settings["beat_cron_starting_deadline"] = beat.cronStartingDeadline.map(Self.seconds) ?? .null
            if let redbeat = beat.redbeat {
                settings["beat_scheduler"] = "redbeat.RedBeatScheduler"
                settings["redbeat_key_prefix"] = .string(redbeat.keyPrefix)
                settings["redbeat_lock_key"] = redbeat.lockKey.map(CeleryValue.string) ?? .null
                settings["redbeat_lock_timeout"] = Self.seconds(redbeat.lockTimeout ?? beat.maxLoopInterval * 5)
                if let text = redbeat.redisURLText { settings["redbeat_redis_url"] = .string(RedisURL.censored(text)) }
            }
        }
        return .object(settings)
    }

    /// Python's `registered`: each task's name, followed by `[item=value …]` for those of `items` (by default
    /// `exchange`, `routing_key` and `rate_limit`) that the task has, as `str()` of Python's task attribute.
    private func registered(_ items: CeleryValue?) -> CeleryValue {
        let wanted = items?.arrayValue?.compactMap(\.stringValue).filter { !$0.hasPrefix("_") } ?? []
        let names = wanted.isEmpty ? ["exchange", "routing_key", "rate_limit"] : wanted
        let limits = self.limits.withLock { $0 }
        func python(_ flag: Bool) -> String { flag ? "True" : "False" }
        // A whole number of seconds as an int: what the configuration or the `time_limit` command most often gave,
        // and what Python then shows.
        func python(_ seconds: Double) -> String { PythonRepr.repr(Self.seconds(seconds)) }
        return .array(
            service.registry.names.compactMap { service.registry[$0] }.map { task in
                let options = task.options
                let overrides = limits.timeLimits(for: task.name)
                let fields: [(String, String?)] = names.map { item in
                    switch item {
                    case "rate_limit": (item, limits.rateText(for: task))
                    case "time_limit": (item, (overrides.map(\.hard) ?? options.timeLimit).map(python))
                    case "soft_time_limit": (item, (overrides.map(\.soft) ?? options.softTimeLimit).map(python))
                    case "acks_late": (item, python(options.acksLate ?? configuration.acksLate))
                    case "track_started": (item, python(options.trackStarted ?? configuration.trackStarted))
                    case "ignore_result": (item, python(options.ignoreResult))
                    case "max_retries": (item, options.maxRetries.map(String.init))
                    case "default_retry_delay": (item, PythonRepr.repr(Self.seconds(options.defaultRetryDelay)))
                    default: (item, nil)  // an attribute Swift tasks do not have: left out
                    }
                }
                let present = fields.compactMap { name, value in value.map { "\(name)=\($0)" } }
                return .string(present.isEmpty ? task.name : "\(task.name) [\(present.joined(separator: " "))]")
            })
    }

    /// Python's `report` (`app.bugreport()`): the software, the platform and the settings in effect.
    private func report() -> String {
        let host = Banner.host()
        let settings: [String]
        if case .object(let table) = conf() {
            settings = table.map { key, value in "\(key): \(PythonRepr.repr(value))" }
        } else {
            settings = []
        }
        return """

            software -> swift-celery-worker:\(CeleryWorkerService.version)
                        hiredis:\(HIREDIS_MAJOR).\(HIREDIS_MINOR).\(HIREDIS_PATCH)
            platform -> system:\(host.system) arch:\(host.machine)
                        kernel version:\(host.release) imp:Swift
            loader   -> swift-celery-worker
            settings -> transport:redis results:\(configuration.resultBackendURL == nil ? "disabled" : configuration.resultBackendShown)

            \(settings.joined(separator: "\n"))

            """
    }

    /// Python's `revoke`: remember the ids, store REVOKED for those not running (unless another state is already
    /// there), and with `terminate` cancel the running ones.
    private func revoke(_ arguments: CeleryObject) async -> CeleryValue {
        var ids: [String] = []
        switch arguments["task_id"] {
        case .string(let id)?: ids = [id]
        case .array(let list)?: ids = list.compactMap(\.stringValue)
        default: break
        }
        revoked.withLock { set in for id in ids { set.insert(id) } }
        await saveState()
        let active = running.withLock { $0 }
        for id in ids where active.with(id: id).isEmpty {
            guard let backend = service.backend else { break }
            let current = try? await backend.status(of: id)
            guard current == nil || [.pending, .received, .retry, .rejected].contains(current) else { continue }
            await store(
                CeleryResultDocument(
                    taskID: id, status: .revoked,
                    result: CeleryExceptionInfo(type: "TaskRevokedError", arguments: ["revoked"], module: "celery.exceptions").value,
                    traceback: nil, children: .null, dateDone: dateDoneNow()))
        }
        if arguments["terminate"]?.boolValue == true {
            let terminated = ids.filter { !active.with(id: $0).isEmpty }
            for id in terminated {
                for task in active.with(id: id) { task.stop.request(.terminated) }
            }
            return ["ok": .string(terminated.isEmpty ? "terminate: tasks unknown" : "terminate: " + terminated.joined(separator: ", "))]
        }
        logger.info("Tasks flagged as revoked: \(ids.joined(separator: ", "))")
        return ["ok": .string("tasks {" + ids.map { "'\($0)'" }.joined(separator: ", ") + "} flagged as revoked")]
    }

    private func reservedJobs() -> [PreparedJob] {
        held.withLock { $0.unstarted }.compactMap { delivery in
            guard case .success(let envelope) = delivery.envelope,
                let message = try? configuration.taskMessage(envelope)
            else { return nil }
            let eta = message.eta.flatMap(configuration.parseTime)
            guard let task = service.registry[message.name] else { return nil }
            return PreparedJob(
                delivery: delivery, message: message, task: task,
                etaTime: eta.flatMap { $0 > WallClock.now() ? $0 : nil }, expiresTime: nil,
                deliveryInfo: envelope.deliveryInfo)
        }
    }

    /// A request as `inspect active` / `reserved` describe it.
    private func requestInfo(_ message: CeleryTaskMessage, _ delivery: BrokerDelivery, timeStart: Double?) -> CeleryValue {
        let info = delivery.envelope.deliveryInfo
        return [
            "id": .string(message.id), "name": .string(message.name), "args": .array(message.args),
            "kwargs": .object(message.kwargs), "type": .string(message.name), "hostname": .string(configuration.nodeName),
            "time_start": timeStart.map(CeleryValue.double) ?? .null,
            "acknowledged": .bool(timeStart != nil && !(configuration.acksLate)),
            "delivery_info": [
                "exchange": .string(info.exchange), "routing_key": .string(info.routingKey),
                "priority": .int(Int64(info.priority)), "redelivered": .bool(info.redelivered),
            ],
            "worker_pid": timeStart == nil ? .null : .int(Int64(Host.pid)),
        ]
    }

    private func stats() -> CeleryValue {
        let totals = counters.withLock { $0.totals }
        var total = CeleryObject()
        for name in totals.keys.sorted() { total[name] = .int(Int64(totals[name] ?? 0)) }
        let (prefetchCount, autoscaler) = scaling.withLock { ($0.prefetchCount, $0.autoscaler) }
        var stats: CeleryObject = [
            "total": .object(total), "pid": .int(Int64(Host.pid)),
            "clock": .string(String(service.events?.currentClock ?? 0)),
            "uptime": .int(Int64(WallClock.now() - startedAt)),
            "pool": .object(poolStats()),
        ]
        // Python adds its autoscaler's entry only when there is one, after the pool's.
        if let autoscaler, let pool { stats["autoscaler"] = autoscaler.info(processes: pool.processes, tasksHeld: tasksHeld) }
        stats["broker"] = .object(brokerStats())
        stats["prefetch_count"] = .int(Int64(prefetchCount))
        stats["rusage"] = Self.resourceUsage()
        stats["sw_ident"] = .string(EventDispatcher.softwareIdentity)
        stats["sw_ver"] = .string(CeleryWorkerService.version)
        return .object(stats)
    }

    /// `stats()["pool"]`: the keys Python's pool of the same kind reports (`_get_info`), with this worker's values.
    private func poolStats() -> CeleryObject {
        var stats: CeleryObject = [
            "implementation": .string("swift-celery-worker:\(configuration.pool.rawValue)"),
            "max-concurrency": .int(Int64(configuration.slots)),
            "processes": .array((pool?.pids ?? [Host.pid]).map { .int(Int64($0)) }),
        ]
        switch configuration.pool {
        case .threads:
            // Python's thread pool counts the threads its executor has started; these are all started at once.
            stats["threads"] = .int(Int64(configuration.slots))
        case .solo:
            stats["max-tasks-per-child"] = .null
            stats["put-guarded-by-semaphore"] = true
            stats["timeouts"] = []
        case .process:
            // Python says "N/A" when it is not set.
            stats["max-tasks-per-child"] = configuration.maxTasksPerChild.map { .int(Int64($0)) } ?? "N/A"
            stats["put-guarded-by-semaphore"] = false
            stats["timeouts"] = [Self.seconds(configuration.softTimeLimit), Self.seconds(configuration.timeLimit)]
            if let pool { stats["writes"] = pool.writeStats }
        }
        return stats
    }

    /// A time limit as Python's prefork pool reports it: the seconds, 0 for none.
    private static func seconds(_ limit: Double?) -> CeleryValue {
        limit.map(CeleryValue.seconds) ?? .int(0)
    }

    /// `stats()["broker"]`: the keys of kombu's `Connection.info()`. Those that name a feature of another transport
    /// (AMQP's `insist`, `login_method`, heartbeats) have the values kombu gives them on Redis without settings; the
    /// Swift worker reads no such setting. With a failover list, the server in use, the strategy, and every server
    /// (kombu's `alternates`, here with their passwords masked).
    private func brokerStats() -> CeleryObject {
        let failover = configuration.brokerURL.failover
        let url = failover?.current.url(from: configuration.brokerURL) ?? configuration.brokerURL
        var broker: CeleryObject = [
            "transport": url.isSecureScheme ? "rediss" : "redis", "virtual_host": .string(String(url.database)),
            "userid": url.username.map { .string($0) } ?? .null,
            "insist": false, "ssl": url.tls.map { .object($0.celeryObject) } ?? false, "login_method": .null, "uri_prefix": .null,
            "connect_timeout": Self.seconds(url.connectTimeout ?? Double(RedisConnection.defaultConnectTimeout.components.seconds)),
            "transport_options": .object(transportOptions),
            "heartbeat": .null, "failover_strategy": .string(failover?.strategy.rawValue ?? "round-robin"),
            "alternates": .array((failover?.alternates ?? []).map { .string($0.description) }), "credential_provider": .null,
        ]
        if case .tcp(let host, let port) = url.endpoint {
            broker["hostname"] = .string(host)
            broker["port"] = .int(Int64(port))
        }
        return broker
    }

    /// `stats()["rusage"]`: `getrusage(RUSAGE_SELF)` with Python's `resource` module's names and units (seconds of
    /// CPU, `maxrss` in KiB).
    static func resourceUsage() -> CeleryValue {
        var usage = rusage()
        // glibc declares `RUSAGE_SELF` as an enum case and takes its raw value.
        guard getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage) == 0 else { return "N/A" }
        func seconds(_ time: timeval) -> CeleryValue { .double(Double(time.tv_sec) + Double(time.tv_usec) / 1e6) }
        func count(_ value: Int) -> CeleryValue { .int(Int64(value)) }
        return [
            "utime": seconds(usage.ru_utime), "stime": seconds(usage.ru_stime), "maxrss": count(usage.ru_maxrss),
            "ixrss": count(usage.ru_ixrss), "idrss": count(usage.ru_idrss), "isrss": count(usage.ru_isrss),
            "minflt": count(usage.ru_minflt), "majflt": count(usage.ru_majflt), "nswap": count(usage.ru_nswap),
            "inblock": count(usage.ru_inblock), "oublock": count(usage.ru_oublock), "msgsnd": count(usage.ru_msgsnd),
            "msgrcv": count(usage.ru_msgrcv), "nsignals": count(usage.ru_nsignals), "nvcsw": count(usage.ru_nvcsw),
            "nivcsw": count(usage.ru_nivcsw),
        ]
    }

    private func queryTask(_ ids: CeleryValue?) -> CeleryValue {
        var wanted: [String] = []
        switch ids {
        case .string(let id)?: wanted = [id]
        case .array(let list)?: wanted = list.compactMap(\.stringValue)
        default: break
        }
        var answer = CeleryObject()
        let active = running.withLock { $0 }
        let reserved = reservedJobs()
        for id in wanted {
            if let task = active.with(id: id).first {
                answer[id] = ["active", requestInfo(task.job.message, task.job.delivery, timeStart: task.timeStart)]
            } else if let job = reserved.first(where: { $0.message.id == id }) {
                answer[id] = [.string(job.etaTime == nil ? "reserved" : "scheduled"), requestInfo(job.message, job.delivery, timeStart: nil)]
            }
        }
        return .object(answer)
    }

    /// A queue as kombu's `Queue.as_dict()` describes it for `inspect active_queues`.
    static func queueInfo(_ name: String, binding: QueueBinding) -> CeleryValue {
        [
            "name": .string(name),
            "exchange": [
                "name": .string(binding.exchange), "type": .string(binding.exchangeType.rawValue), "arguments": nil,
                "durable": true, "passive": false, "auto_delete": false, "delivery_mode": nil, "no_declare": false,
            ],
            "routing_key": .string(binding.routingKey), "queue_arguments": nil, "binding_arguments": nil, "consumer_arguments": nil,
            "durable": true, "exclusive": false, "auto_delete": false, "no_ack": false, "alias": nil, "bindings": [],
            "no_declare": nil, "expires": nil, "message_ttl": nil, "max_length": nil, "max_length_bytes": nil,
            "max_priority": nil,
        ]
    }
}
