import CeleryProtocol
import Foundation
import Logging
import Synchronization

/// Celery events over Redis: each event is `PUBLISH`ed on `/<db>.celeryev/<routing key>` (`event_exchange`) inside
/// kombu's envelope,
/// as Python's `EventDispatcher` sends them. Worker events (`worker-online`, `-heartbeat`, `-offline`) are single
/// dictionaries, each published before the call returns.
///
/// Task events are buffered and go out in lists on `task.multi`, as a Python prefork worker sends them (its
/// `buffer_group=['task']`, flushed on the event loop's next turn or once 24 are waiting): the task that sends one
/// never waits for Redis. The first event of an empty buffer has the events connection's thread publish the buffer;
/// while it does, the events sent meanwhile gather, and it publishes them next, at most 24 to a message, every
/// message of a turn in one round trip. Sending each event and waiting for its `PUBLISH` held the worker to a
/// fraction of its rate with `-E` (the README's "Memory over a long run, and task events" has the figures).
/// When the events connection falls far behind (a stalled Redis), events beyond ``outboxLimit`` waiting are dropped
/// and counted, and the count is logged once it catches up: memory stays bounded, and tasks never wait for events.
final class EventDispatcher: Sendable {
    /// What the worker reports about itself in `sw_ident`, `sw_ver`, `sw_sys`.
    static let softwareIdentity = "swift-celery"

    let client: RedisClient
    let hostname: String
    let database: Int
    let version: String
    /// Lamport clock, advanced for every event sent.
    private let clock = Mutex(0)
    /// Whether `task-*` events are sent (`-E`, or `enable_events` / `disable_events` at run time).
    private let taskEvents: Mutex<Bool>
    var sendsTaskEvents: Bool { taskEvents.withLock { $0 } }
    func setTaskEvents(_ enabled: Bool) { taskEvents.withLock { $0 = enabled } }

    /// kombu's `global_keyprefix`, in front of every channel.
    let keyPrefix: String

    /// With a Sentinel broker: events also go to the literal `/{db}.celeryev/…` topic, where kombu before 5.4
    /// (Celery 5.3) listens under Sentinel, with the same `delivery_tag`, so that kombu 5.7's `sentinel_fanout_compat`
    /// receivers, which listen on both, drop the second copy.
    let alsoLegacyTopic: Bool
    /// Celery's `event_exchange`, the fanout exchange events go to. Default `celeryev`.
    let exchange: String
    /// kombu's `fanout_prefix` and `fanout_patterns`, which name the channels.
    let transport: RedisTransportOptions

    init(
        client: RedisClient, hostname: String, database: Int, version: String, sendsTaskEvents: Bool, keyPrefix: String = "",
        alsoLegacyTopic: Bool = false, exchange: String = "celeryev", transport: RedisTransportOptions = RedisTransportOptions(),
        outboxLimit: Int = 10_000, logger: Logger = Logger(label: "celery.events")
    ) {
        self.outboxLimit = outboxLimit
        self.logger = logger
        self.client = client
        self.exchange = exchange
        self.transport = transport
        self.keyPrefix = keyPrefix
        self.alsoLegacyTopic = alsoLegacyTopic
        self.hostname = hostname
        self.database = database
        self.version = version
        self.taskEvents = Mutex(sendsTaskEvents)
    }

    /// The Lamport clock now.
    var currentClock: Int { clock.withLock { $0 } }

    /// Moves the clock past another node's (Python's `LamportClock.adjust`: the larger of the two, plus one).
    func adjustClock(to other: Int) {
        clock.withLock { $0 = max($0, other) + 1 }
    }

    /// Moves the clock one tick on (Python's `LamportClock.forward`).
    func forwardClock() {
        clock.withLock { $0 += 1 }
    }

    /// `worker-online`, `worker-heartbeat` or `worker-offline` with the worker's counters.
    func sendWorkerEvent(_ type: String, active: Int, processed: Int, frequency: Double = 2) async {
        let fields: CeleryObject = [
            "freq": .double(frequency), "active": .int(Int64(active)), "processed": .int(Int64(processed)),
            "loadavg": .array(Self.loadAverage().map(CeleryValue.double)),
            "sw_ident": .string(Self.softwareIdentity), "sw_ver": .string(version), "sw_sys": "Linux",
        ]
        await sendWorkerEvent(type, fields)
    }

    /// A `worker-*` event with its fields (also gossip's `worker-elect` and `worker-elect-ack`).
    func sendWorkerEvent(_ type: String, _ fields: CeleryObject) async {
        await publish(routingKey: type.replacingOccurrences(of: "-", with: ".")) { self.event(type, fields) }
    }

    /// Task events sent and not yet published, in the order sent, each with the time it was sent; how many were
    /// dropped since the last flush; and whether the events connection's thread has a flush queued or running.
    private struct Outbox {
        var events: [(type: String, fields: CeleryObject, timestamp: Double)] = []
        var dropped = 0
        var flushing = false
    }

    private let outbox = Mutex(Outbox())
    /// The most task events in one `task.multi` message: Python's `buffer_limit`.
    static let batchLimit = 24
    /// The most task events waiting to be published; more are dropped (and counted) until the connection catches up.
    let outboxLimit: Int
    /// Where dropped events are reported.
    let logger: Logger

    /// A `task-*` event, when task events are on: timestamped now and published soon after, in a batch, without
    /// waiting (see the type's documentation). Its clock tick is taken as it is published, on the events
    /// connection's thread, where worker events take theirs: receivers get every event of this worker in clock order.
    func sendTaskEvent(_ type: String, _ fields: CeleryObject) {
        guard sendsTaskEvents else { return }
        let timestamp = WallClock.now()
        let startFlush = outbox.withLock { outbox -> Bool in
            if outbox.events.count < outboxLimit {
                outbox.events.append((type, fields, timestamp))
            } else {
                outbox.dropped += 1
            }
            defer { outbox.flushing = true }
            return !outbox.flushing
        }
        if startFlush { client.submit { execute in self.flushOutbox(execute) } }
    }

    /// Publishes what the outbox holds until it is empty (on the events connection's thread). Events are best effort,
    /// as in Python: a batch that cannot be published is dropped.
    private func flushOutbox(_ execute: ([RedisCommand]) throws(CeleryWorkerError) -> [RedisReply]) {
        while true {
            let (sent, dropped) = outbox.withLock { outbox -> ([(type: String, fields: CeleryObject, timestamp: Double)], Int) in
                if outbox.events.isEmpty { outbox.flushing = false }
                defer {
                    outbox.events.removeAll(keepingCapacity: outbox.events.count <= Self.batchLimit * 16)
                    outbox.dropped = 0
                }
                return (outbox.events, outbox.dropped)
            }
            if dropped > 0 {
                logger.warning(
                    "Dropped \(dropped) task event(s): more than \(outboxLimit) were waiting to be published (the events connection fell behind)")
            }
            guard !sent.isEmpty else { return }
            let events = sent.map { event($0.type, $0.fields, timestamp: $0.timestamp) }
            var commands: [RedisCommand] = []
            for start in stride(from: 0, to: events.count, by: Self.batchLimit) {
                let batch = CeleryValue.array(Array(events[start..<min(start + Self.batchLimit, events.count)]))
                commands += publishCommands(routingKey: "task.multi", body: batch)
            }
            _ = try? execute(commands)
        }
    }

    /// Returns once every task event sent before the call is published (or dropped): at shutdown, before the
    /// process ends.
    func flushTaskEvents() async {
        // The connection's thread runs its calls in order: this one runs after any flush queued before it, and a
        // flush runs until the outbox is empty.
        _ = try? await client.withConnection { _ throws(CeleryWorkerError) in }
    }

    /// `task-sent` for a task message this worker published (a callback, a chain step, a chord body, a retry), as
    /// Celery's producer sends it with `task_send_sent_event`: from the anonymous node Celery names its producer
    /// (`gen<pid>@<host>`), on `task.sent` alone, whether or not task events are on (`-E`).
    func sendTaskSent(_ envelope: KombuEnvelope, queue: String) async {
        let headers = envelope.headers
        let info = envelope.deliveryInfo
        let fields: CeleryObject = [
            "uuid": headers["id"] ?? .null, "root_id": headers["root_id"] ?? .null, "parent_id": headers["parent_id"] ?? .null,
            "name": headers["task"] ?? .null, "args": headers["argsrepr"] ?? .null, "kwargs": headers["kwargsrepr"] ?? .null,
            "retries": headers["retries"] ?? 0, "eta": headers["eta"] ?? .null, "expires": headers["expires"] ?? .null,
            "queue": .string(queue), "exchange": .string(info.exchange), "routing_key": .string(info.routingKey),
        ]
        await publish(routingKey: "task.sent") { self.event("task-sent", fields, hostname: "gen\(Host.pid)@\(Host.name)") }
    }

    /// The event body in Python's field order: `hostname`, `utcoffset`, `pid`, `clock`, the fields, `timestamp`, `type`.
    /// `timestamp`: when the event happened (Unix time), if not now.
    func event(_ type: String, _ fields: CeleryObject, hostname: String? = nil, timestamp: Double? = nil) -> CeleryValue {
        let tick = clock.withLock { value -> Int in
            value += 1
            return value
        }
        var body: CeleryObject = [
            "hostname": .string(hostname ?? self.hostname),
            "utcoffset": .double(Double(-CeleryTimeZone.localSecondsFromGMT) / 3600),
            "pid": .int(Int64(Host.pid)),
            "clock": .int(Int64(tick)),
        ]
        for (key, value) in fields { body[key] = value }
        body["timestamp"] = .double(timestamp ?? WallClock.now())
        body["type"] = .string(type)
        return .object(body)
    }

    /// Publishes the event that `makeBody` builds. The body (and so its clock tick) is made while the events
    /// connection is held, so receivers get this worker's events in clock order even when tasks send them at once.
    private func publish(routingKey: String, _ makeBody: @escaping @Sendable () -> CeleryValue) async {
        // Events are best effort, as in Python: a lost event is not retried.
        _ = try? await client.withConnection { connection throws(CeleryWorkerError) in
            _ = try connection.execute(self.publishCommands(routingKey: routingKey, body: makeBody()))
        }
    }

    /// The `PUBLISH` of an event message with `body` (one, or with a Sentinel broker two: see ``alsoLegacyTopic``).
    private func publishCommands(routingKey: String, body: CeleryValue) -> [RedisCommand] {
        let legacy = alsoLegacyTopic ? transport.legacySentinelChannel(exchange: exchange, routingKey: routingKey, prefix: keyPrefix) : nil
        let channels =
            [RedisArgument(transport.fanoutChannel(exchange: exchange, routingKey: routingKey, database: database, prefix: keyPrefix))]
            + (legacy.map { [RedisArgument($0)] } ?? [])
        let envelope = KombuEnvelope(
            body: CeleryJSON.encode(body), contentType: CeleryContentType.json.rawValue, contentEncoding: "utf-8",
            headers: ["hostname": .string(hostname)],
            properties: [
                "delivery_mode": 1, "delivery_info": ["exchange": .string(exchange), "routing_key": .string(routingKey)],
                "priority": 0, "body_encoding": "base64", "delivery_tag": .string(UUID().uuidString.lowercased()),
            ])
        let message = RedisArgument(envelope.encoded())
        return channels.map { RedisCommand("PUBLISH", $0, message) }
    }

    /// The 1, 5 and 15 minute load averages, rounded up to 2 decimals as Celery reports them.
    static func loadAverage() -> [Double] {
        var values = [Double](repeating: 0, count: 3)
        guard getloadavg(&values, 3) == 3 else { return [0, 0, 0] }
        return values.map { ($0 * 100).rounded(.up) / 100 }
    }
}
