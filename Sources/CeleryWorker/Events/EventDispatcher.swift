import CeleryProtocol
import Foundation
import Synchronization

/// Celery events over Redis: each event is `PUBLISH`ed on `/<db>.celeryev/<routing key>` (`event_exchange`) inside
/// kombu's envelope,
/// as Python's `EventDispatcher` sends them. Worker events (`worker-online`, `-heartbeat`, `-offline`) are single
/// dictionaries; task events go out as a one-element list on `task.multi`, the batched form a Python worker uses.
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
        alsoLegacyTopic: Bool = false, exchange: String = "celeryev", transport: RedisTransportOptions = RedisTransportOptions()
    ) {
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

    /// A `task-*` event, when task events are on.
    func sendTaskEvent(_ type: String, _ fields: CeleryObject) async {
        guard sendsTaskEvents else { return }
        await publish(routingKey: "task.multi") { .array([self.event(type, fields)]) }
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
    func event(_ type: String, _ fields: CeleryObject, hostname: String? = nil) -> CeleryValue {
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
        body["timestamp"] = .double(WallClock.now())
        body["type"] = .string(type)
        return .object(body)
    }

    /// Publishes the event that `makeBody` builds. The body (and so its clock tick) is made while the events
    /// connection is held, so receivers get this worker's events in clock order even when tasks send them at once.
    private func publish(routingKey: String, _ makeBody: @escaping @Sendable () -> CeleryValue) async {
        let legacy = alsoLegacyTopic ? transport.legacySentinelChannel(exchange: exchange, routingKey: routingKey, prefix: keyPrefix) : nil
        let channels =
            [RedisArgument(transport.fanoutChannel(exchange: exchange, routingKey: routingKey, database: database, prefix: keyPrefix))]
            + (legacy.map { [RedisArgument($0)] } ?? [])
        let exchange = CeleryValue.string(self.exchange)
        let hostname = self.hostname
        // Events are best effort, as in Python: a lost event is not retried.
        _ = try? await client.withConnection { connection throws(CeleryWorkerError) in
            let envelope = KombuEnvelope(
                body: CeleryJSON.encode(makeBody()), contentType: CeleryContentType.json.rawValue, contentEncoding: "utf-8",
                headers: ["hostname": .string(hostname)],
                properties: [
                    "delivery_mode": 1, "delivery_info": ["exchange": exchange, "routing_key": .string(routingKey)],
                    "priority": 0, "body_encoding": "base64", "delivery_tag": .string(UUID().uuidString.lowercased()),
                ])
            let message = RedisArgument(envelope.encoded())
            _ = try connection.execute(channels.map { RedisCommand("PUBLISH", $0, message) })
        }
    }

    /// The 1, 5 and 15 minute load averages, rounded up to 2 decimals as Celery reports them.
    static func loadAverage() -> [Double] {
        var values = [Double](repeating: 0, count: 3)
        guard getloadavg(&values, 3) == 3 else { return [0, 0, 0] }
        return values.map { ($0 * 100).rounded(.up) / 100 }
    }
}
