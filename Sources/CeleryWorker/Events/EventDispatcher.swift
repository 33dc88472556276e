import CeleryProtocol
import Foundation
import Logging
import Synchronization

/// Celery events over Redis: each event is `PUBLISH`ed on `/<db>.celeryev/<routing key>` (`event_exchange`) inside
/// kombu's envelope, as Python's `EventDispatcher` sends them. Worker events (`worker-online`, `-heartbeat`, `-offline`) are single
/// dictionaries, each published before the call returns.
///
/// Task events are buffered and go out in lists on `task.multi`, as a Python prefork worker sends them (its
/// `buffer_group=['task']`, flushed on the event loop's next turn or once 24 are waiting): the task that sends one
/// never waits for Redis. The first event of an empty buffer has the events connection's thread publish the buffer,
/// after letting events gather for up to a millisecond while fewer than 24 wait; while it publishes, the events sent
/// meanwhile gather, and it publishes them next, at most 24 to a message, every message of a turn in one round trip.
/// The messages are written straight from the events' fields into a `task.multi` envelope cut once
/// (`KombuEnvelopeTemplate`), each with a tag of ``DeliveryTags``. Sending each event and waiting for its `PUBLISH`
/// held the worker to a fraction of its rate with `-E` (`Benchmarks/README.md`, "Memory over a long run, and task
/// events", has the figures).
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
    /// The envelope of every `task.multi` message but its body and tag, made once (`nil` if it could not be cut).
    private let taskMultiTemplate: KombuEnvelopeTemplate?
    /// The channels of `task.multi` messages, named once.
    private let taskMultiChannels: [RedisArgument]
    /// Each event message's `delivery_tag`.
    private let deliveryTags = Mutex(DeliveryTags())

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
        let (headers, properties) = Self.envelope(hostname: hostname, exchange: exchange, routingKey: "task.multi")
        self.taskMultiTemplate = KombuEnvelopeTemplate(
            contentType: CeleryContentType.json.rawValue, contentEncoding: "utf-8", headers: headers, properties: properties)
        self.taskMultiChannels = Self.channels(
            routingKey: "task.multi", exchange: exchange, database: database, keyPrefix: keyPrefix, transport: transport,
            alsoLegacyTopic: alsoLegacyTopic)
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

    /// A task event waiting in the outbox: its `uuid` field (first, when there is one) apart from the others.
    private struct TaskEvent {
        var type: String
        var uuid: String?
        var fields: CeleryObject
        var timestamp: Double
    }

    /// Task events sent and not yet published, in the order sent, each with the time it was sent; how many were
    /// dropped since the last flush; and whether the events connection's thread has a flush queued or running.
    private struct Outbox {
        var events: [TaskEvent] = []
        var dropped = 0
        var flushing = false
    }

    private let outbox = Mutex(Outbox())
    /// The most task events in one `task.multi` message: Python's `buffer_limit`.
    static let batchLimit = 24
    /// How long the events connection's thread lets task events gather before it publishes fewer than
    /// ``batchLimit``: the longest an event waits in the worker (Python's prefork worker publishes on its event
    /// loop's next turn, which under load comes no sooner).
    static let lingerMicroseconds: UInt32 = 1000
    /// The most task events waiting to be published; more are dropped (and counted) until the connection catches up.
    let outboxLimit: Int
    /// Where dropped events are reported.
    let logger: Logger

    /// A `task-*` event, when task events are on: timestamped now and published soon after, in a batch, without
    /// waiting (see the type's documentation). Its clock tick is taken as it is published, on the events
    /// connection's thread, where worker events take theirs: receivers get every event of this worker in clock order.
    /// `uuid`: the event's first field, before `fields`.
    func sendTaskEvent(_ type: String, uuid: String? = nil, _ fields: CeleryObject) {
        guard sendsTaskEvents else { return }
        let timestamp = WallClock.now()
        let startFlush = outbox.withLock { outbox -> Bool in
            if outbox.events.count < outboxLimit {
                outbox.events.append(TaskEvent(type: type, uuid: uuid, fields: fields, timestamp: timestamp))
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
            // A buffer that is not full waits a moment for more: under load a task sends three events every few tens
            // of microseconds, and each message saved is a write, a read and a wake-up of Redis saved.
            if outbox.withLock({ $0.events.count < Self.batchLimit }) { usleep(Self.lingerMicroseconds) }
            let (sent, dropped) = outbox.withLock { outbox -> ([TaskEvent], Int) in
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
            // Each event's clock tick, in the order sent: one block of the clock for the whole turn.
            let last = clock.withLock { value -> Int in
                value += sent.count
                return value
            }
            var tick = last - sent.count
            let utcoffset = Self.utcoffset()
            var commands: [RedisCommand] = []
            for start in stride(from: 0, to: sent.count, by: Self.batchLimit) {
                var body: [UInt8] = [UInt8(ascii: "[")]
                body.reserveCapacity(512 * Self.batchLimit)
                for index in start..<min(start + Self.batchLimit, sent.count) {
                    if index > start { body.append(contentsOf: ", ".utf8) }
                    tick += 1
                    let event = sent[index]
                    appendTaskEvent(
                        event.type, uuid: event.uuid, event.fields, timestamp: event.timestamp, tick: tick, utcoffset: utcoffset, into: &body)
                }
                body.append(UInt8(ascii: "]"))
                commands += publishCommands(routingKey: "task.multi", json: body)
            }
            _ = try? execute(commands)
        }
    }

    /// Whether `key` names one of the fields every event body has of its own.
    private static func isEventField(_ key: String) -> Bool {
        switch key {
        case "hostname", "utcoffset", "pid", "clock", "timestamp", "type": true
        default: false
        }
    }

    /// Appends a task event's body as ``event(_:_:hostname:timestamp:)`` would make it and `CeleryJSON` encode it,
    /// without building it: the same bytes (a test compares them), written straight from the fields.
    func appendTaskEvent(
        _ type: String, uuid: String? = nil, _ fields: CeleryObject, timestamp: Double, tick: Int, utcoffset: Double,
        into output: inout [UInt8]
    ) {
        if fields.keys.contains(where: { Self.isEventField($0) || ($0 == "uuid" && uuid != nil) }) {
            // A field that takes the place of one of the event's own: as the object would order it.
            var all: CeleryObject = uuid.map { ["uuid": .string($0)] } ?? [:]
            for (key, value) in fields { all[key] = value }
            CeleryJSON.encode(eventBody(type, all, hostname: hostname, timestamp: timestamp, tick: tick, utcoffset: utcoffset), into: &output)
            return
        }
        output.append(contentsOf: #"{"hostname": "#.utf8)
        CeleryJSON.appendString(hostname, into: &output)
        output.append(contentsOf: #", "utcoffset": "#.utf8)
        CeleryJSON.appendDouble(utcoffset, into: &output)
        output.append(contentsOf: #", "pid": "#.utf8)
        CeleryJSON.encode(.int(Int64(Host.pid)), into: &output)
        output.append(contentsOf: #", "clock": "#.utf8)
        CeleryJSON.encode(.int(Int64(tick)), into: &output)
        if let uuid {
            output.append(contentsOf: #", "uuid": "#.utf8)
            CeleryJSON.appendString(uuid, into: &output)
        }
        for (key, value) in fields {
            output.append(contentsOf: ", ".utf8)
            CeleryJSON.appendString(key, into: &output)
            output.append(contentsOf: ": ".utf8)
            CeleryJSON.encode(value, into: &output)
        }
        output.append(contentsOf: #", "timestamp": "#.utf8)
        CeleryJSON.appendDouble(timestamp, into: &output)
        output.append(contentsOf: #", "type": "#.utf8)
        CeleryJSON.appendString(type, into: &output)
        output.append(UInt8(ascii: "}"))
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
        return eventBody(
            type, fields, hostname: hostname ?? self.hostname, timestamp: timestamp ?? WallClock.now(), tick: tick, utcoffset: Self.utcoffset())
    }

    func eventBody(_ type: String, _ fields: CeleryObject, hostname: String, timestamp: Double, tick: Int, utcoffset: Double) -> CeleryValue {
        var body: CeleryObject = [
            "hostname": .string(hostname), "utcoffset": .double(utcoffset), "pid": .int(Int64(Host.pid)), "clock": .int(Int64(tick)),
        ]
        for (key, value) in fields { body[key] = value }
        body["timestamp"] = .double(timestamp)
        body["type"] = .string(type)
        return .object(body)
    }

    /// The machine's offset from UTC in hours, west positive, as Celery's events give it.
    static func utcoffset() -> Double { Double(-CeleryTimeZone.localSecondsFromGMT) / 3600 }

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
        publishCommands(routingKey: routingKey, json: CeleryJSON.encode(body))
    }

    /// The `PUBLISH` of an event message whose body is the JSON text `json`.
    private func publishCommands(routingKey: String, json: [UInt8]) -> [RedisCommand] {
        let tag = deliveryTags.withLock { $0.next() }
        if routingKey == "task.multi", let taskMultiTemplate {
            let message = RedisArgument(taskMultiTemplate.encoded(body: json, deliveryTag: tag))
            return taskMultiChannels.map { RedisCommand("PUBLISH", $0, message) }
        }
        let message = RedisArgument(eventMessage(routingKey: routingKey, json: json, deliveryTag: tag))
        return channels(routingKey: routingKey).map { RedisCommand("PUBLISH", $0, message) }
    }

    /// The channels an event on `routingKey` is published on: one, or with a Sentinel broker two (see
    /// ``alsoLegacyTopic``).
    private func channels(routingKey: String) -> [RedisArgument] {
        Self.channels(
            routingKey: routingKey, exchange: exchange, database: database, keyPrefix: keyPrefix, transport: transport,
            alsoLegacyTopic: alsoLegacyTopic)
    }

    private static func channels(
        routingKey: String, exchange: String, database: Int, keyPrefix: String, transport: RedisTransportOptions, alsoLegacyTopic: Bool
    ) -> [RedisArgument] {
        let legacy = alsoLegacyTopic ? transport.legacySentinelChannel(exchange: exchange, routingKey: routingKey, prefix: keyPrefix) : nil
        return [RedisArgument(transport.fanoutChannel(exchange: exchange, routingKey: routingKey, database: database, prefix: keyPrefix))]
            + (legacy.map { [RedisArgument($0)] } ?? [])
    }

    /// The message kombu's `Producer` makes of an event: its JSON `body` in kombu's envelope, as Python's
    /// `EventDispatcher` publishes it.
    func eventMessage(routingKey: String, json: [UInt8], deliveryTag: String) -> [UInt8] {
        var (headers, properties) = Self.envelope(hostname: hostname, exchange: exchange, routingKey: routingKey)
        properties["delivery_tag"] = .string(deliveryTag)
        return KombuEnvelope(
            body: json, contentType: CeleryContentType.json.rawValue, contentEncoding: "utf-8", headers: headers, properties: properties
        ).encoded()
    }

    /// The headers and properties of an event message on `routingKey`, with an empty `delivery_tag`.
    static func envelope(hostname: String, exchange: String, routingKey: String) -> (headers: CeleryObject, properties: CeleryObject) {
        (
            ["hostname": .string(hostname)],
            [
                "delivery_mode": 1, "delivery_info": ["exchange": .string(exchange), "routing_key": .string(routingKey)],
                "priority": 0, "body_encoding": "base64", "delivery_tag": "",
            ]
        )
    }

    /// The 1, 5 and 15 minute load averages, rounded up to 2 decimals as Celery reports them.
    static func loadAverage() -> [Double] {
        var values = [Double](repeating: 0, count: 3)
        guard getloadavg(&values, 3) == 3 else { return [0, 0, 0] }
        return values.map { ($0 * 100).rounded(.up) / 100 }
    }
}

/// `delivery_tag`s for event messages: kombu's form (a uuid4's text), from a generator seeded once from the system's
/// random source. A tag only has to differ from every other (receivers drop a second copy of a tag they have seen,
/// as kombu 5.7's `sentinel_fanout_compat` does); Foundation's `UUID()` opened `/dev/urandom` for each one, three
/// system calls per message.
struct DeliveryTags {
    private var state: (UInt64, UInt64, UInt64, UInt64)

    init() {
        var system = SystemRandomNumberGenerator()
        state = (system.next(), system.next(), system.next(), system.next())
        if state == (0, 0, 0, 0) { state.0 = 1 }
    }

    /// xoshiro256**: 64 random bits.
    private mutating func next64() -> UInt64 {
        let result = (state.1 &* 5).rotated(7) &* 9
        let shifted = state.1 << 17
        state.2 ^= state.0
        state.3 ^= state.1
        state.1 ^= state.2
        state.0 ^= state.3
        state.2 ^= shifted
        state.3 = state.3.rotated(45)
        return result
    }

    /// The next tag: 32 hexadecimal digits in uuid4's groups (8-4-4-4-12), version 4, variant 1, lowercase.
    mutating func next() -> String {
        let high = next64() & 0xFFFF_FFFF_FFFF_0FFF | 0x4000
        let low = next64() & 0x3FFF_FFFF_FFFF_FFFF | 0x8000_0000_0000_0000
        return String(unsafeUninitializedCapacity: 36) { text in
            var position = 0
            for (index, word) in [high, low].enumerated() {
                for digit in 0..<16 {
                    let nibble = UInt8(truncatingIfNeeded: word >> UInt64(60 - 4 * digit)) & 0xF
                    text[position] = nibble < 10 ? UInt8(ascii: "0") + nibble : UInt8(ascii: "a") + nibble - 10
                    position += 1
                    // After the 8th, 12th, 16th and 20th digit.
                    let written = index * 16 + digit + 1
                    if written == 8 || written == 12 || written == 16 || written == 20 {
                        text[position] = UInt8(ascii: "-")
                        position += 1
                    }
                }
            }
            return position
        }
    }
}

extension UInt64 {
    fileprivate func rotated(_ count: UInt64) -> UInt64 { self << count | self >> (64 - count) }
}
