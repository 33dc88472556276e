import CeleryProtocol
import Synchronization

@testable import CeleryWorker

/// A broker in memory with kombu's bookkeeping reduced to a dictionary, for runtime tests without Redis.
final class InMemoryBroker: Broker {
    struct State {
        var queue: [[UInt8]] = []
        var unacked: [String: BrokerDelivery] = [:]
        var restored: [[UInt8]] = []
        var acked: [String] = []
        /// Each fetch that brought messages: how many it asked for and how many it got.
        var fetches: [(limit: Int, count: Int)] = []
        /// Every message published, in order.
        var published: [[UInt8]] = []
        /// Records still being written, by tag: a delivery with one here comes with it unconfirmed.
        var pendingRecords: [String: PendingRecord] = [:]
        /// How many publishes from now fail as on a connection Redis dropped.
        var publishFailures = 0
    }

    let state = Mutex(State())

    func push(_ raw: [UInt8]) { state.withLock { $0.queue.append(raw) } }

    func declare(queues: [String], bindings: [String: QueueBinding]) async throws(CeleryWorkerError) {}

    func fetch(queues: [String], limit: Int) async throws(CeleryWorkerError) -> [BrokerDelivery] {
        let popped = state.withLock { state in
            let popped = Array(state.queue.prefix(limit))
            state.queue.removeFirst(popped.count)
            if !popped.isEmpty { state.fetches.append((limit: limit, count: popped.count)) }
            return popped
        }
        guard !popped.isEmpty else {
            try? await Task.sleep(for: .milliseconds(5))
            return []
        }
        return popped.map { raw in
            let tag = (try? CeleryJSON.decode(raw))?["properties"]?["delivery_tag"]?.stringValue
            var delivery = BrokerDelivery(raw: raw, queue: queues[0], receivedAt: 0, deliveryTag: tag)
            if let tag {
                delivery.pendingRecord = state.withLock { $0.pendingRecords[tag] }
                state.withLock { $0.unacked[tag] = delivery }
            }
            return delivery
        }
    }

    func publish(_ envelope: [UInt8], queue: String, priority: Int) async throws(CeleryWorkerError) {
        let fails = state.withLock { state in
            guard state.publishFailures == 0 else {
                state.publishFailures -= 1
                return true
            }
            state.queue.append(envelope)
            state.published.append(envelope)
            return false
        }
        if fails { throw CeleryWorkerError(code: .connectionLost, message: "reading replies: Connection reset by peer") }
    }

    func ack(_ deliveries: [BrokerDelivery]) async throws(CeleryWorkerError) {
        state.withLock { state in
            for tag in deliveries.compactMap(\.deliveryTag) {
                state.unacked[tag] = nil
                state.acked.append(tag)
            }
        }
    }

    func restore(_ deliveries: [BrokerDelivery], atFront: Bool) async throws(CeleryWorkerError) {
        state.withLock { state in
            for delivery in deliveries {
                if let tag = delivery.deliveryTag { state.unacked[tag] = nil }
                state.restored.append(delivery.raw)
            }
        }
    }
}

final class InMemoryBackend: ResultBackend {
    let documents = Mutex<[CeleryResultDocument]>([])
    /// The task ids of each `store` call, in order: the documents one call writes are written atomically.
    let writes = Mutex<[[String]]>([])

    func store(_ documents: [CeleryResultDocument]) async throws(CeleryWorkerError) {
        writes.withLock { $0.append(documents.map(\.taskID)) }
        self.documents.withLock { stored in
            for document in documents {
                if stored.last(where: { $0.taskID == document.taskID })?.status == .success { continue }
                stored.append(document)
            }
        }
    }

    func status(of taskID: String) async throws(CeleryWorkerError) -> TaskState? {
        documents.withLock { $0.last(where: { $0.taskID == taskID })?.status }
    }

    func final(_ id: String) -> CeleryResultDocument? {
        documents.withLock { $0.last(where: { $0.taskID == id && $0.status.isReady }) }
    }
}

/// A protocol v2 task message as Python's `.delay()` would send it.
func taskMessage(
    _ name: String, id: String, args: [CeleryValue] = [], kwargs: CeleryValue = [:],
    extraHeaders: [String: CeleryValue] = [:], embed: CeleryObject = [:]
) -> [UInt8] {
    var headers: CeleryObject = [
        "lang": "py", "task": .string(name), "id": .string(id), "retries": 0,
        "root_id": .string(id), "parent_id": nil, "group": nil,
    ]
    for (key, value) in extraHeaders { headers[key] = value }
    var options: CeleryObject = ["callbacks": nil, "errbacks": nil, "chain": nil, "chord": nil]
    for (key, value) in embed { options[key] = value }
    let body: CeleryValue = [.array(args), kwargs, .object(options)]
    let envelope = KombuEnvelope(
        body: CeleryJSON.encode(body), contentType: "application/json", contentEncoding: "utf-8", headers: headers,
        properties: [
            "correlation_id": .string(id), "delivery_mode": 2,
            "delivery_info": ["exchange": "", "routing_key": "celery"], "priority": 0,
            "body_encoding": "base64", "delivery_tag": .string("tag-" + id),
        ])
    return envelope.encoded()
}
