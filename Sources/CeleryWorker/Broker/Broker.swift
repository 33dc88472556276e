import CeleryProtocol
import Logging
import Synchronization

/// One message taken from a queue and recorded as unacknowledged.
public struct BrokerDelivery: Sendable {
    /// Every field but ``heldKey``.
    private struct Fields: Sendable {
        var raw: [UInt8]
        var queue: String
        var receivedAt: Double
        var deliveryTag: String?
        var pendingRecord: PendingRecord?
        var decoded: KombuEnvelope?
    }

    /// ``Fields`` in one immutable box. A message passes through several hands on its way (the fetch, the held
    /// deliveries, the job, the settler), and copying a delivery then retains one reference instead of one per field
    /// and per field of its envelope: 4 500–4 800 fewer instructions per message at idle, about 3 %
    /// (`Benchmarks/instructions.py --one-at-a-time`, both pools). A setter makes a new box.
    private final class Box: Sendable {
        let fields: Fields

        init(_ fields: Fields) {
            self.fields = fields
        }
    }

    private var box: Box

    /// The JSON text exactly as popped from the list.
    public var raw: [UInt8] {
        get { box.fields.raw }
        set { update { $0.raw = newValue } }
    }
    /// The queue it came from (without the priority suffix).
    public var queue: String {
        get { box.fields.queue }
        set { update { $0.queue = newValue } }
    }
    /// Unix time of receipt, the score kombu gives it in `unacked_index`.
    public var receivedAt: Double {
        get { box.fields.receivedAt }
        set { update { $0.receivedAt = newValue } }
    }
    /// The `properties.delivery_tag` under which the message is recorded in `unacked`; `nil` when the message
    /// carries none (it is then not tracked, and acking it does nothing).
    public var deliveryTag: String? {
        get { box.fields.deliveryTag }
        set { update { $0.deliveryTag = newValue } }
    }
    /// Set while the write that records the message in `unacked` is sent but not yet confirmed: acknowledging or
    /// restoring it waits for that write, so the two never land out of order.
    var pendingRecord: PendingRecord? {
        get { box.fields.pendingRecord }
        set { update { $0.pendingRecord = newValue } }
    }
    /// The envelope, when the broker decoded it already (to record a blocking pop's message): ``envelope`` returns it
    /// instead of parsing ``raw`` again.
    var decoded: KombuEnvelope? {
        get { box.fields.decoded }
        set { update { $0.decoded = newValue } }
    }
    /// The key the worker holds it under while unacknowledged (see `HeldDeliveries`); 0 when not held.
    var heldKey = 0

    public init(raw: [UInt8], queue: String, receivedAt: Double, deliveryTag: String?) {
        self.init(raw: raw, queue: queue, receivedAt: receivedAt, deliveryTag: deliveryTag, decoded: nil)
    }

    init(
        raw: [UInt8], queue: String, receivedAt: Double, deliveryTag: String?, pendingRecord: PendingRecord? = nil,
        decoded: KombuEnvelope?
    ) {
        box = Box(
            Fields(
                raw: raw, queue: queue, receivedAt: receivedAt, deliveryTag: deliveryTag, pendingRecord: pendingRecord,
                decoded: decoded))
    }

    private mutating func update(_ change: (inout Fields) -> Void) {
        var fields = box.fields
        change(&fields)
        box = Box(fields)
    }

    /// The parsed envelope, or the reason it could not be parsed. Parsed from ``raw`` on each access unless the
    /// broker decoded it already: the worker reads it once per message.
    public var envelope: Result<KombuEnvelope, CeleryProtocolError> {
        if let decoded = box.fields.decoded { return .success(decoded) }
        return Result { () throws(CeleryProtocolError) -> KombuEnvelope in try KombuEnvelope(decoding: box.fields.raw) }
    }
}

/// A write to Redis that was sent but whose reply is not yet read. ``wait()`` returns once it is read, or once
/// the connection it went out on is closed (whether or not it landed), so nobody waits for it forever; ``failure``
/// then says why the record may be missing.
final class PendingRecord: Sendable {
    private struct State {
        var done = false
        var failure: String?
        var waiters: [CheckedContinuation<Void, Never>] = []
    }

    private let state = Mutex(State())
    /// The client whose connection the record went out on. A write sent after it on the same connection reaches
    /// Redis after it (Redis runs one connection's commands in order), so it need not wait for the reply.
    let sentOn: ObjectIdentifier?
    /// Reads the reply when nobody else would: for a record sent on a connection whose replies are read only by
    /// its next call.
    private let reader: (@Sendable () async -> Void)?

    /// - Parameter reader: reads the reply, when ``wait()`` finds it unread (see ``RedisClient/readUnread()``).
    init(sentOn client: RedisClient? = nil, reader: (@Sendable () async -> Void)? = nil) {
        sentOn = client.map(ObjectIdentifier.init)
        self.reader = reader
    }

    /// Whether a write sent on `client` now reaches Redis after the record (or the record has nothing to wait for).
    static func precedes(_ record: PendingRecord?, on client: RedisClient) -> Bool {
        guard let record else { return true }
        return record.sentOn == ObjectIdentifier(client)
    }

    /// Whether the reply is read (or the connection closed).
    var isDone: Bool { state.withLock { $0.done } }

    /// Why the record may not be in Redis (an error reply, or no reply at all), once ``wait()`` returned; `nil`
    /// when Redis confirmed it, or when it was taken already (it is reported once).
    func takeFailure() -> String? {
        state.withLock { state in
            defer { state.failure = nil }
            return state.failure
        }
    }

    /// The reply is read (or the connection closed): every waiter goes on.
    func complete(_ failure: String?) {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.done = true
            state.failure = failure
            defer { state.waiters.removeAll() }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }

    func wait() async {
        if state.withLock({ $0.done }) { return }
        if let reader { await reader() }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let done = state.withLock { state -> Bool in
                if !state.done { state.waiters.append(continuation) }
                return state.done
            }
            if done { continuation.resume() }
        }
    }
}

extension Sequence<BrokerDelivery> {
    /// Waits until every delivery's record in `unacked` is confirmed (see ``BrokerDelivery/pendingRecord``); returns
    /// the deliveries whose record may be missing, with why (each once: a second wait for the same record returns it
    /// no more).
    @discardableResult
    func recorded() async -> [(delivery: BrokerDelivery, failure: String)] {
        var missing: [(delivery: BrokerDelivery, failure: String)] = []
        for delivery in self {
            guard let record = delivery.pendingRecord else { continue }
            await record.wait()
            if let failure = record.takeFailure() { missing.append((delivery, failure)) }
        }
        return missing
    }
}

/// Where task messages come from and how their delivery is settled, as kombu's virtual transport defines it.
///
/// The runtime only talks to this protocol, so it can be tested without Redis; ``RedisBroker`` is the real one.
public protocol Broker: Sendable {
    /// Prepares the queues (declares them as kombu does), each bound as `bindings` says, else by its own name.
    func declare(queues: [String], bindings: [String: QueueBinding]) async throws(CeleryWorkerError)
    /// Waits briefly (about a second) for messages on `queues` and returns at most `limit` of them, each already
    /// recorded as unacknowledged. An empty result means nothing arrived in time.
    func fetch(queues: [String], limit: Int) async throws(CeleryWorkerError) -> [BrokerDelivery]
    /// Acknowledges (or rejects without requeue, which is the same on Redis): forgets the deliveries.
    func ack(_ deliveries: [BrokerDelivery]) async throws(CeleryWorkerError)
    /// Gives deliveries back to their queues. `atFront` puts them where they are taken next (kombu's restore,
    /// `RPUSH`); otherwise at the back (`reject(requeue=True)`, `LPUSH`). Both mark them redelivered.
    func restore(_ deliveries: [BrokerDelivery], atFront: Bool) async throws(CeleryWorkerError)
    /// Publishes a message to `queue` at its priority (`LPUSH`, as a Python producer does).
    func publish(_ envelope: [UInt8], queue: String, priority: Int) async throws(CeleryWorkerError)
    /// kombu's `restore_visible`: gives back every unacknowledged message (anyone's) received longer than
    /// `visibilityTimeout` seconds ago, under the shared sweep lock.
    func restoreVisible(visibilityTimeout: Double) async throws(CeleryWorkerError) -> VisibilitySweep
    /// Marks deliveries this worker still holds as recently received, so no sweep restores live work.
    func keepAlive(_ deliveries: [BrokerDelivery]) async throws(CeleryWorkerError)
    /// What the connects to the servers of a failover list (`redis://a;redis://b`) left to report, for the
    /// consumer's log, and forgets it.
    func takeFailovers() -> RedisURL.Failover.Log
    /// Runs `body`, the worker's fetch loop, with whatever the broker needs while a worker consumes (the Redis
    /// broker's watch on empty queues, ``RedisBroker/consuming(logger:_:)``); problems with it go to `logger`.
    func consuming<Result, Failure: Error>(logger: Logger, _ body: () async throws(Failure) -> Result) async throws(Failure) -> Result
}

extension Broker {
    public func consuming<Result, Failure: Error>(
        logger: Logger, _ body: () async throws(Failure) -> Result
    ) async throws(Failure) -> Result {
        try await body()
    }
    public func restoreVisible(visibilityTimeout: Double) async throws(CeleryWorkerError) -> VisibilitySweep { VisibilitySweep() }
    public func keepAlive(_ deliveries: [BrokerDelivery]) async throws(CeleryWorkerError) {}
    public func takeFailovers() -> RedisURL.Failover.Log { RedisURL.Failover.Log() }
}

extension Broker {
    /// Prepares queues bound by their own names (Celery's queues).
    public func declare(queues: [String]) async throws(CeleryWorkerError) {
        try await declare(queues: queues, bindings: [:])
    }
}

/// How a queue is bound, as kombu's `Queue(name, Exchange(exchange), routing_key)`: a message sent to `exchange`
/// with `routingKey` goes to the queue (`_kombu.binding.<exchange>` on Redis).
public struct QueueBinding: Sendable, Hashable {
    /// The kinds of exchange kombu's Redis transport routes through a binding table.
    public enum ExchangeType: String, Sendable, Hashable {
        /// The routing key must equal the binding key.
        case direct
        /// The binding key is a pattern of dot-separated words, `*` one word, `#` any number.
        case topic
    }

    /// The exchange.
    public var exchange: String
    /// The routing key (kombu's binding key).
    public var routingKey: String
    /// The exchange's type. Default direct, Celery's.
    public var exchangeType: ExchangeType

    public init(exchange: String, routingKey: String, exchangeType: ExchangeType = .direct) {
        self.exchange = exchange
        self.routingKey = routingKey
        self.exchangeType = exchangeType
    }

    /// The pattern kombu stores in a binding: empty for a direct exchange; for a topic exchange its
    /// `TopicExchange.key_to_pattern` (`feed.#` → `^feed\..*?$`).
    public var pattern: String {
        guard exchangeType == .topic else { return "" }
        let words = routingKey.split(separator: ".", omittingEmptySubsequences: false).map { word -> String in
            switch word {
            case "*": return "[^\\.]+"
            case "#": return ".*?"
            default:
                // kombu's escape_regex: every character but letters, digits and the wildcards is backslashed.
                return word.map { $0.isLetter || $0.isNumber || $0 == "*" || $0 == "#" ? String($0) : "\\" + String($0) }.joined()
            }
        }
        return "^" + words.joined(separator: "\\.") + "$"
    }

    /// Celery's queues: a direct exchange of the queue's name, with the name as the key.
    public static func named(_ queue: String) -> QueueBinding {
        QueueBinding(exchange: queue, routingKey: queue)
    }

    /// Celery's `worker_direct(node)`: the queue `<node>.dq2`, bound to the `C.dq2` exchange by the node name, so
    /// that a task sent there reaches that worker alone.
    public static func workerDirect(node: String) -> (queue: String, binding: QueueBinding) {
        (node + ".dq2", QueueBinding(exchange: "C.dq2", routingKey: node))
    }
}

/// What a visibility sweep (``Broker/restoreVisible(visibilityTimeout:)``) did.
public struct VisibilitySweep: Sendable, Equatable {
    /// How many messages went back to their queues.
    public var restored = 0
    /// The delivery tags of records that are not kombu's `[message, exchange, routing_key]`: left in `unacked`, out
    /// of its index, so that no sweep meets them again.
    public var unreadable: [String] = []

    public init() {}
}
