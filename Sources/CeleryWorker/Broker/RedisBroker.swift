import CeleryProtocol
import Synchronization

/// kombu's Redis transport contract: queues are lists (`LPUSH` by producers, `BRPOP` by consumers) with priority
/// sub-queues, and every delivered message is recorded in the `unacked` hash and `unacked_index` sorted set until
/// it is acknowledged.
public final class RedisBroker: Broker {
    /// kombu's separator between a queue name and its priority step: `\x06\x16`.
    public static let separator = "\u{06}\u{16}"
    /// kombu's default `priority_steps` on Redis.
    public static let priorityBuckets = [0, 3, 6, 9]

    let blocking: RedisClient
    let commands: RedisClient
    let unackedKey = "unacked"
    let unackedIndexKey = "unacked_index"
    /// The queue to put first in the next `BRPOP` (kombu rotates the queue that just delivered to the end).
    private let rotation = Mutex<[String]>([])

    /// - Parameters:
    ///   - blocking: the connection used only for `BRPOP`.
    ///   - commands: the connection for bookkeeping (`unacked`), acks and restores.
    public init(blocking: RedisClient, commands: RedisClient) {
        self.blocking = blocking
        self.commands = commands
    }

    /// The list that holds messages of `priority` for `queue` (priority clamped to 0…9, then the largest step
    /// not above it).
    public static func list(for queue: String, priority: Int) -> String {
        let clamped = min(max(priority, 0), 9)
        let step = priorityBuckets.last(where: { $0 <= clamped }) ?? 0
        return step == 0 ? queue : queue + separator + String(step)
    }

    public func declare(queues: [String]) async throws(CeleryWorkerError) {
        rotation.withLock { $0 = queues }
        for queue in queues {
            let lengths = Self.priorityBuckets.map { RedisCommand("LLEN", RedisArgument(Self.list(for: queue, priority: $0))) }
            try await commands.transaction(lengths)
            let member = RedisArgument(queue + Self.separator + Self.separator + queue)
            try await commands.transaction([
                RedisCommand("SADD", RedisArgument("_kombu.binding.\(queue)"), member),
                RedisCommand("SADD", RedisArgument("_kombu.binding_permanent.\(queue)"), member),
            ])
        }
    }

    public func fetch(queues: [String], limit: Int) async throws(CeleryWorkerError) -> [BrokerDelivery] {
        let ordered = rotation.withLock { order -> [String] in
            if Set(order) != Set(queues) { order = queues }
            return order
        }
        var keys: [RedisArgument] = []
        for bucket in Self.priorityBuckets {
            for queue in ordered { keys.append(RedisArgument(Self.list(for: queue, priority: bucket))) }
        }
        let reply = try await blocking.send(RedisCommand("BRPOP", arguments: keys + ["1"]))
        guard case .array(let pair) = reply, pair.count == 2, let key = pair[0].text, let raw = pair[1].bytes else {
            return []
        }
        let queue = key.components(separatedBy: Self.separator).first ?? key
        rotation.withLock { order in
            if let position = order.firstIndex(of: queue) {
                order.remove(at: position)
                order.append(queue)
            }
        }
        let envelope = Result { () throws(CeleryProtocolError) -> KombuEnvelope in try KombuEnvelope(decoding: raw) }
        let delivery = BrokerDelivery(raw: raw, queue: queue, envelope: envelope, receivedAt: WallClock.now())
        if case .success(let parsed) = envelope, let tag = parsed.deliveryTag {
            let info = parsed.deliveryInfo
            var record: [UInt8] = [UInt8(ascii: "[")]
            record.append(contentsOf: raw)
            record.append(contentsOf: ", ".utf8)
            CeleryJSON.encode(.string(info.exchange), into: &record)
            record.append(contentsOf: ", ".utf8)
            CeleryJSON.encode(.string(info.routingKey), into: &record)
            record.append(UInt8(ascii: "]"))
            do {
                try await commands.transaction([
                    RedisCommand("ZADD", RedisArgument(unackedIndexKey), RedisArgument(delivery.receivedAt), RedisArgument(tag)),
                    RedisCommand("HSET", RedisArgument(unackedKey), RedisArgument(tag), RedisArgument(record)),
                ])
            } catch {
                // The message is already off the list: running it unrecorded beats losing it. Its ack then
                // removes nothing, which is harmless.
            }
        }
        _ = limit
        return [delivery]
    }

    public func ack(_ deliveries: [BrokerDelivery]) async throws(CeleryWorkerError) {
        let tags = deliveries.compactMap(\.deliveryTag)
        guard !tags.isEmpty else { return }
        var batch: [RedisCommand] = []
        for tag in tags {
            batch.append(RedisCommand("ZREM", RedisArgument(unackedIndexKey), RedisArgument(tag)))
            batch.append(RedisCommand("HDEL", RedisArgument(unackedKey), RedisArgument(tag)))
        }
        try await commands.transaction(batch)
    }

    public func restore(_ deliveries: [BrokerDelivery], atFront: Bool) async throws(CeleryWorkerError) {
        for delivery in deliveries {
            guard let tag = delivery.deliveryTag else { continue }
            try await restore(tag: tag, atFront: atFront)
        }
    }

    /// kombu's `restore_by_tag`: `WATCH unacked`, `HGET`, then in one transaction forget the tag and push the
    /// stored message back, marked redelivered, to the list for its queue and priority.
    func restore(tag: String, atFront: Bool) async throws(CeleryWorkerError) {
        let watched = try await commands.pipeline([
            RedisCommand("WATCH", RedisArgument(unackedKey)),
            RedisCommand("HGET", RedisArgument(unackedKey), RedisArgument(tag)),
        ])
        var batch = [
            RedisCommand("ZREM", RedisArgument(unackedIndexKey), RedisArgument(tag)),
            RedisCommand("HDEL", RedisArgument(unackedKey), RedisArgument(tag)),
        ]
        if watched.count == 2, let stored = watched[1].bytes, let push = Self.restoreCommand(stored, atFront: atFront) {
            batch.append(push)
        }
        try await commands.transaction(batch)
    }

    /// The `LPUSH`/`RPUSH` that gives a stored `[envelope, exchange, routing_key]` record back to its queue.
    static func restoreCommand(_ stored: [UInt8], atFront: Bool) -> RedisCommand? {
        guard case .array(let parts)? = try? CeleryJSON.decode(stored), parts.count == 3,
            case .object(var envelope) = parts[0], let exchange = parts[1].stringValue,
            let routingKey = parts[2].stringValue
        else { return nil }
        if case .object(var headers)? = envelope["headers"] {
            headers["redelivered"] = true
            envelope["headers"] = .object(headers)
        }
        var priority = 0
        if case .object(var properties)? = envelope["properties"] {
            priority = properties["priority"]?.intValue ?? 0
            if case .object(var info)? = properties["delivery_info"] {
                info["redelivered"] = true
                properties["delivery_info"] = .object(info)
            }
            envelope["properties"] = .object(properties)
        }
        // Task messages are published to the anonymous exchange, so the routing key is the queue. A named
        // exchange would need kombu's binding-table lookup, which task messages on Redis do not use.
        _ = exchange
        let list = Self.list(for: routingKey, priority: priority)
        return RedisCommand(atFront ? "RPUSH" : "LPUSH", RedisArgument(list), RedisArgument(CeleryJSON.encode(.object(envelope))))
    }
}
