import CeleryProtocol
import Foundation
import Synchronization

/// Celery's `celery migrate` (`celery.contrib.migrate.migrate_tasks`): takes the task messages waiting in some queues
/// of one broker and publishes each, as it is, to another broker, as kombu's Redis transport keeps them on both.
///
/// As in Celery, each message is taken as a worker takes it (recorded in the source's `unacked`), published to the
/// destination, and then either acknowledged on the source (``acknowledge``: moved) or, at the end, given back to its
/// queue, marked redelivered (copied). Where Celery's falls short, this one does better:
///
/// - What is given back keeps its order in its queue. Celery's reverses it (kombu restores the messages in the order
///   they were taken, each to the front).
///
/// - ``tasks`` filters on the task's name in its headers (protocol 2) or body (protocol 1). Celery's filter reads
///   `body['task']`, which a protocol 2 body does not have: it raises `TypeError` on the first message.
/// - A message the filter leaves out is given back, never acknowledged. Celery's `--ack-messages` acknowledges every
///   message it takes, those it did not migrate too, and they are lost.
/// - With a ``limit``, exactly that many are migrated and each is reported. Celery's reports one fewer and does not
///   acknowledge the last one it migrates, which then stays on the source as well.
/// - A message goes to the destination's list for the queue it came from (renamed as ``queues`` says) at its
///   priority, whatever exchange it was sent to; a message that is not kombu's envelope is given back and reported.
///
/// A migration that stops for an error gives back what it took (moved messages already published are acknowledged);
/// one that is killed leaves them in the source's `unacked`, from where a worker's sweep restores them after the
/// visibility timeout, as for any worker.
public final class BrokerMigration: Sendable {
    /// A queue to take messages from, and its name on the destination.
    public struct Route: Sendable, Hashable {
        /// The queue on the source.
        public var source: String
        /// Its name on the destination (the same unless renamed, Celery's `-Q source:destination`).
        public var destination: String
        /// How the queue is bound on the source (declared there, as a consumer declares it); on the destination its
        /// exchange and routing key are renamed with it where they were the queue's name, as Celery renames them.
        public var binding: QueueBinding

        public init(source: String, destination: String, binding: QueueBinding? = nil) {
            self.source = source
            self.destination = destination
            self.binding = binding ?? .named(source)
        }

        /// The destination's binding: Celery's `on_declare_queue`.
        var destinationBinding: QueueBinding {
            var renamed = binding
            if renamed.routingKey == source { renamed.routingKey = destination }
            if renamed.exchange == source { renamed.exchange = destination }
            return renamed
        }
    }

    /// What one migrated message was, for the progress line.
    public struct Progress: Sendable {
        /// How many were migrated, this one included.
        public var count: Int
        /// How many were waiting in the queues at the start (kombu's `queue_declare` counts); 0 when none were.
        public var total: Int
        /// The message as it was taken.
        public var envelope: KombuEnvelope

        /// Celery's progress line: `Migrating task 1/3: [[2, 2], {}, {...}]`, the body as Python's `repr` shows it
        /// decoded (`?` for a total of 0).
        public var line: String {
            "Migrating task \(count)/\(total == 0 ? "?" : String(total)): \(Self.shown(envelope))"
        }

        /// The body decoded, as Python's `repr`; a body that cannot be decoded is described instead.
        static func shown(_ envelope: KombuEnvelope) -> String {
            guard let type = CeleryContentType(name: envelope.contentType) else {
                return "<\(envelope.body.count) bytes of \(envelope.contentType)>"
            }
            guard let value = try? type.decode(envelope.body) else {
                return "<\(envelope.body.count) bytes that are not \(type.serializerName)>"
            }
            return PythonRepr.repr(value)
        }
    }

    /// What a migration did.
    public struct Summary: Sendable, Equatable {
        /// Messages published to the destination.
        public var migrated = 0
        /// Messages taken and given back: left out by the filter, copied, or not kombu's envelope.
        public var givenBack = 0
    }

    /// The queues to take messages from, in order.
    public let routes: [Route]
    /// Task names to migrate; empty: every task.
    public let tasks: Set<String>
    /// Stop after this many (`nil` or 0: no limit, as in Celery).
    public let limit: Int?
    /// Stop when no message came for this long; `nil`: never (Celery's `--forever`), until ``stop()``.
    public let timeout: Duration?
    /// Acknowledge each migrated message on the source (move it); otherwise it is given back at the end (copy).
    public let acknowledge: Bool
    /// How often the messages held are marked as recently received, so that no worker's sweep of the source gives
    /// them back while they are held (a third of the visibility timeout, as a worker does).
    public let keepAliveInterval: Duration

    private let stopped = Atomic<Bool>(false)

    public init(
        routes: [Route], tasks: Set<String> = [], limit: Int? = nil, timeout: Duration? = .seconds(1), acknowledge: Bool = false,
        keepAliveInterval: Duration = .seconds(1200)
    ) {
        self.routes = routes
        self.tasks = tasks
        self.limit = limit
        self.timeout = timeout
        self.acknowledge = acknowledge
        self.keepAliveInterval = keepAliveInterval
    }

    /// Ends a running migration after the message in hand (within about a second when none comes).
    public func stop() {
        stopped.store(true, ordering: .relaxed)
    }

    /// Migrates from `source` to `destination`, calling `migrated` for each message published and `skipped` (with
    /// why) for each message that is not kombu's envelope or whose record in `unacked` failed. Every message taken and not moved is given back before it
    /// returns or throws.
    public func run(
        from source: RedisBroker, to destination: RedisBroker, migrated: (Progress) -> Void, skipped: (String) -> Void = { _ in }
    ) async throws(CeleryWorkerError) -> Summary {
        let sourceQueues = routes.map(\.source)
        let names = Dictionary(routes.map { ($0.source, $0.destination) }, uniquingKeysWith: { first, _ in first })
        try await source.declare(queues: sourceQueues, bindings: Dictionary(routes.map { ($0.source, $0.binding) }, uniquingKeysWith: { a, _ in a }))
        for route in routes {
            try await destination.declare(queues: [route.destination], bindings: [route.destination: route.destinationBinding])
        }
        let total = try await source.size(of: sourceQueues)

        var summary = Summary()
        var held: [BrokerDelivery] = []
        var lastMessage = ContinuousClock.now
        var lastKeepAlive = ContinuousClock.now
        let limit = self.limit.flatMap { $0 > 0 ? $0 : nil }
        do throws(CeleryWorkerError) {
            fetching: while !stopped.load(ordering: .relaxed) {
                if let limit, summary.migrated >= limit { break }
                var batch = try await source.fetch(queues: sourceQueues, limit: min(100, limit.map { $0 - summary.migrated } ?? 100))
                // A blocking pop's record in `unacked` goes out on its own connection, unconfirmed; the ack or give-back
                // on the other connection must not overtake it (it would then leave the record behind for good, or
                // find nothing to give back). A message whose record is missing is given back as it was taken.
                let unrecorded = await batch.recorded()
                for (delivery, failure) in unrecorded {
                    guard let index = batch.firstIndex(where: { $0.deliveryTag == delivery.deliveryTag }) else { continue }
                    skipped("A message in '\(delivery.queue)' was not recorded in unacked (\(failure)): it is given back as it was taken.")
                    batch[index].deliveryTag = nil
                }
                if batch.isEmpty {
                    if let timeout, ContinuousClock.now - lastMessage >= timeout { break }
                } else {
                    lastMessage = .now
                }
                for (index, delivery) in batch.enumerated() {
                    if let limit, summary.migrated >= limit {
                        held.append(contentsOf: batch[index...])
                        break fetching
                    }
                    let envelope: KombuEnvelope
                    switch delivery.envelope {
                    case .success(let decoded): envelope = decoded
                    case .failure(let error):
                        skipped("A message in '\(delivery.queue)' is not a task message (\(error.message)): left where it was.")
                        held.append(delivery)
                        continue
                    }
                    guard tasks.isEmpty || Self.taskName(envelope).map(tasks.contains) == true else {
                        held.append(delivery)
                        continue
                    }
                    let queue = names[delivery.queue] ?? delivery.queue
                    do throws(CeleryWorkerError) {
                        try await destination.publish(
                            Self.republished(envelope, names: names), queue: queue, priority: envelope.deliveryInfo.priority)
                    } catch {
                        held.append(contentsOf: batch[index...])
                        throw error
                    }
                    if acknowledge { try await source.ack([delivery]) } else { held.append(delivery) }
                    summary.migrated += 1
                    migrated(Progress(count: summary.migrated, total: total, envelope: envelope))
                }
                if !held.isEmpty, ContinuousClock.now - lastKeepAlive >= keepAliveInterval {
                    try await source.keepAlive(held)
                    lastKeepAlive = .now
                }
            }
        } catch {
            try await giveBack(held, to: source)
            throw error
        }
        try await giveBack(held, to: source)
        summary.givenBack = held.count
        return summary
    }

    /// kombu's restore of what a consumer held when it closes: each message back where it is taken next, marked
    /// redelivered, but last taken first, so that each queue keeps its order (kombu's restores them in the order
    /// taken, which reverses it). A message that carried no delivery tag (so was not recorded in `unacked`) is pushed
    /// back as it was.
    private func giveBack(_ held: [BrokerDelivery], to source: RedisBroker) async throws(CeleryWorkerError) {
        for delivery in held.reversed() {
            if delivery.deliveryTag != nil {
                try await source.restore([delivery], atFront: true)
            } else {
                let priority = (try? delivery.envelope.get().deliveryInfo.priority) ?? 0
                try await source.giveBackUntracked(delivery.raw, queue: delivery.queue, priority: priority)
            }
        }
    }

    /// The task's name: the `task` header (protocol 2), else the body's `task` (protocol 1).
    static func taskName(_ envelope: KombuEnvelope) -> String? {
        if let name = envelope.headers["task"]?.stringValue { return name }
        guard let type = CeleryContentType(name: envelope.contentType), let body = try? type.decode(envelope.body) else { return nil }
        return body["task"]?.stringValue
    }

    /// The message as Celery's `republish` sends it: the same body, headers and properties, with a new delivery tag
    /// and its `delivery_info` naming the exchange and routing key renamed as `names` says.
    static func republished(_ envelope: KombuEnvelope, names: [String: String]) -> [UInt8] {
        var message = envelope
        var properties = message.properties
        var info = properties["delivery_info"]?.objectValue ?? [:]
        let exchange = info["exchange"]?.stringValue ?? ""
        let routingKey = info["routing_key"]?.stringValue ?? ""
        info["exchange"] = .string(names[exchange] ?? exchange)
        info["routing_key"] = .string(names[routingKey] ?? routingKey)
        properties["delivery_info"] = .object(info)
        properties["delivery_tag"] = .string(UUID().uuidString.lowercased())
        message.properties = properties
        return message.encoded()
    }
}

extension RedisBroker {
    /// kombu's `_size`: how many messages wait in `queues`, their priority lists included.
    public func size(of queues: [String]) async throws(CeleryWorkerError) -> Int {
        let lists = queues.flatMap { transport.lists(of: $0, prefix: keyPrefix) }
        guard !lists.isEmpty else { return 0 }
        let replies = try await commands.transaction(lists.map { RedisCommand("LLEN", RedisArgument($0)) })
        return replies.reduce(0) { $0 + Int($1.integer ?? 0) }
    }

    /// Puts a message that was taken without a record in `unacked` back where it is taken next (`RPUSH`).
    func giveBackUntracked(_ raw: [UInt8], queue: String, priority: Int) async throws(CeleryWorkerError) {
        try await commands.send(
            RedisCommand("RPUSH", RedisArgument(transport.list(for: queue, priority: priority, prefix: keyPrefix)), RedisArgument(raw)))
    }
}
