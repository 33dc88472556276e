/// kombu's Redis transport options that shape the broker's keys and channels and the order it consumes in (`sep`,
/// `priority_steps`, `queue_order_strategy`, `fanout_prefix`, `fanout_patterns`, `unacked_*` in
/// `broker_transport_options`). Every producer and worker on one broker
/// must use the same `sep` and `priority_steps`, as in kombu: they name the lists a message goes to and the members
/// of the `_kombu.binding.*` sets. Every default is kombu's.
public struct RedisTransportOptions: Sendable, Hashable {
    /// `sep`: between a queue name and its priority step (`celery\x06\x163`), and between the parts of a binding
    /// (`routing_key`, pattern, queue). Default `\x06\x16`.
    public var separator: String {
        didSet { separatorBytes = Array(separator.utf8) }
    }
    /// `priority_steps`, ascending: each message goes to the list of the largest step not above its priority
    /// (clamped to 0…9); step 0's list is the queue's own name. Default `[0, 3, 6, 9]`.
    public var prioritySteps: [Int]
    /// `queue_order_strategy`: the order the queues are consumed in. Default round robin.
    public var queueOrder: QueueOrder
    /// ``separator``'s UTF-8, for the byte-wise search of ``queue(ofList:prefix:)``.
    private var separatorBytes: [UInt8]
    /// `fanout_prefix`: what a fanout exchange's Redis channel starts with (after `global_keyprefix`), `{db}` being
    /// the database number: remote control's `/0.celery.pidbox`, events' `/0.celeryev/…`. kombu's default `/{db}.`;
    /// `false` in the settings makes it empty, a string is taken as given.
    public var fanoutPrefix = "/{db}."
    /// `fanout_patterns`: whether a fanout message's routing key follows its exchange in the channel
    /// (`/0.celeryev/worker.heartbeat`); without, every event goes to `/0.celeryev`. Default true.
    public var fanoutPatterns = true
    /// `unacked_key`, `unacked_index_key`, `unacked_mutex_key`: the names of kombu's bookkeeping of delivered
    /// messages (after `global_keyprefix`). Defaults `unacked`, `unacked_index`, `unacked_mutex`.
    public var unackedKey = "unacked"
    public var unackedIndexKey = "unacked_index"
    public var unackedMutexKey = "unacked_mutex"
    /// `unacked_mutex_expire`: how long the sweep's lock lives if its holder dies, in seconds. `nil`: five
    /// visibility timeouts, between 10 s and kombu's 300 s.
    public var unackedMutexExpire: Double?
    /// `unacked_restore_limit`: at most this many timed-out messages restored per sweep. `nil`: all of them.
    public var unackedRestoreLimit: Int?
    /// `unacked_restore_interval`: seconds between the worker's visibility sweeps. `nil`: 10. Held messages are
    /// still refreshed at least every third of the visibility timeout.
    public var unackedRestoreInterval: Double?

    /// kombu's `queue_order_strategy`.
    public enum QueueOrder: String, Sendable, Hashable, CaseIterable {
        /// `round_robin`: the queue that just delivered goes last.
        case roundRobin = "round_robin"
        /// `priority`: always in the order given (`-Q`), so an earlier queue is drained first.
        case priority
        /// `sorted`: always in the order of the queues' names.
        case sorted
    }

    public init(separator: String = "\u{06}\u{16}", prioritySteps: [Int] = [0, 3, 6, 9], queueOrder: QueueOrder = .roundRobin) {
        self.separator = separator
        self.separatorBytes = Array(separator.utf8)
        self.prioritySteps = prioritySteps
        self.queueOrder = queueOrder
    }

    /// kombu's `priority(n)`: the largest step not above `priority`, which is clamped to 0…9 first (as kombu's
    /// `_get_message_priority`). As kombu's `bisect`, a priority below every step takes the last step.
    public func step(for priority: Int) -> Int {
        let clamped = min(max(priority, 0), 9)
        return prioritySteps.last(where: { $0 <= clamped }) ?? prioritySteps.last ?? 0
    }

    /// The list that holds messages of `priority` for `queue` (kombu's `_q_for_pri`), behind `prefix` (kombu's
    /// `global_keyprefix`).
    public func list(for queue: String, priority: Int, prefix: String = "") -> String {
        let step = step(for: priority)
        return step == 0 ? prefix + queue : prefix + queue + separator + String(step)
    }

    /// Every list of `queue`, one per step, highest priority first.
    func lists(of queue: String, prefix: String = "") -> [String] {
        prioritySteps.map { list(for: queue, priority: $0, prefix: prefix) }
    }

    /// The queue a list belongs to: the list name without `prefix` and its priority suffix (the separator and a
    /// step). A name with no such suffix is the queue's own list, even when it holds the separator: where kombu
    /// cuts at the last separator whatever follows it, a queue named `a:b` with `sep: ':'` stays `a:b` here.
    func queue(ofList list: String, prefix: String = "") -> String {
        // Byte-wise over the contiguous UTF-8: Foundation's `range(of:)`, or walking `String.UTF8View` indices, is slow
        // here.
        var list = list
        let start = prefix.isEmpty || !list.hasPrefix(prefix) ? 0 : prefix.utf8.count
        let end = list.withUTF8 { bytes -> Int? in
            // The step's digits at the end, then the separator before them.
            var digits = bytes.count
            while digits > start, bytes[digits - 1] >= 0x30, bytes[digits - 1] <= 0x39 { digits -= 1 }
            guard digits < bytes.count, bytes.count - digits <= 2 else { return nil }
            let cut = digits - separatorBytes.count
            guard cut >= start, separatorBytes.indices.allSatisfy({ bytes[cut + $0] == separatorBytes[$0] }) else { return nil }
            var step = 0
            for index in digits..<bytes.count { step = step * 10 + Int(bytes[index] - 0x30) }
            return step != 0 && prioritySteps.contains(step) ? cut : nil
        }
        if start == 0, end == nil { return list }
        return String(decoding: list.utf8.dropFirst(start).prefix((end ?? list.utf8.count) - start), as: UTF8.self)
    }

    /// A member of a `_kombu.binding.<exchange>` set: routing key, pattern (empty) and queue, joined by ``separator``.
    func bindingMember(routingKey: String, queue: String, pattern: String = "") -> String {
        [routingKey, pattern, queue].joined(separator: separator)
    }

    /// The queue of a binding member whose routing key is `routingKey`, else `nil`.
    func boundQueue(member: String, routingKey: String) -> String? {
        let parts = member.components(separatedBy: separator)
        return parts.count == 3 && parts[0] == routingKey ? parts[2] : nil
    }

    /// The queue of a binding member whose pattern matches `routingKey`, as kombu's `TopicExchange.lookup` matches
    /// it (`re.match` of the stored `^…$` pattern), else `nil`. A member without a pattern, or with one that is not
    /// a regular expression, matches nothing.
    func topicBoundQueue(member: String, routingKey: String) -> String? {
        let parts = member.components(separatedBy: separator)
        guard parts.count == 3, !parts[1].isEmpty, let pattern = try? Regex(parts[1]),
            (try? pattern.prefixMatch(in: routingKey)) != nil
        else { return nil }
        return parts[2]
    }

    /// The Redis channel of a message to the fanout `exchange` with `routingKey` (kombu's `_get_publish_topic`),
    /// behind `prefix` (``keyPrefix``): the routing key only with ``fanoutPatterns``.
    public func fanoutChannel(exchange: String, routingKey: String = "", database: Int, prefix: String = "") -> String {
        let channel = prefix + fanoutPrefix.replacing("{db}", with: String(database)) + exchange
        return routingKey.isEmpty || !fanoutPatterns ? channel : channel + "/" + routingKey
    }

    /// The channel kombu before 5.4 used under Redis Sentinel, where it never put the database number into the
    /// fanout prefix (the literal `{db}`); `nil` when the prefix has no `{db}`, so both are one channel.
    public func legacySentinelChannel(exchange: String, routingKey: String = "", prefix: String = "") -> String? {
        guard fanoutPrefix.contains("{db}") else { return nil }
        let channel = prefix + fanoutPrefix + exchange
        return routingKey.isEmpty || !fanoutPatterns ? channel : channel + "/" + routingKey
    }

    /// The queues in the order this strategy consumes them, given the current order (`-Q`'s, rotated in round robin).
    func consumptionOrder(_ queues: [String]) -> [String] {
        queueOrder == .sorted ? queues.sorted() : queues
    }
}
