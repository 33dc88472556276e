import CeleryProtocol
import Synchronization
import Testing

@testable import CeleryWorker

@Suite("Settler: batched result writes and acknowledgements")
struct SettlerTests {
    static func delivery(_ tag: String) -> BrokerDelivery {
        BrokerDelivery(
            raw: [], queue: "celery", receivedAt: 0, deliveryTag: tag)
    }

    @Test("entries waiting together go out in one batch; finish drains everything, then run returns")
    func batching() async {
        let settler = Settler()
        let batches = Mutex<[[String]]>([])
        let done = Mutex(0)
        for index in 0..<3 {
            settler.submit(
                document: CeleryResultDocument(taskID: "t\(index)", status: .success, result: .null, traceback: nil, children: [], dateDone: nil),
                ack: Self.delivery("d\(index)")
            ) { done.withLock { $0 += 1 } }
        }
        settler.finish()
        await settler.run { batch in
            batches.withLock { $0.append(batch.map { $0.document?.taskID ?? $0.ack?.deliveryTag ?? "?" }) }
        }
        #expect(batches.withLock { $0 } == [["t0", "t1", "t2"]])
        #expect(done.withLock { $0 } == 3)
    }

    @Test("a batch is written early acknowledgements first, then results, then acks-late acknowledgements")
    func phases() {
        let document = { (id: String) in
            CeleryResultDocument(taskID: id, status: .success, result: .null, traceback: nil, children: [], dateDone: nil)
        }
        let batch = [
            Settler.Entry(document: nil, ack: Self.delivery("late-0"), done: {}),
            Settler.Entry(document: document("a"), ack: nil, done: {}),
            Settler.Entry(document: nil, ack: Self.delivery("early-0"), early: true, done: {}),
            Settler.Entry(document: document("b"), ack: Self.delivery("late-1"), done: {}),
            Settler.Entry(document: nil, ack: Self.delivery("early-1"), early: true, done: {}),
        ]
        let phases = Settler.Phases(batch)
        #expect(phases.earlyAcks.compactMap(\.deliveryTag) == ["early-0", "early-1"])
        #expect(phases.documents.map(\.taskID) == ["a", "b"])
        #expect(phases.lateAcks.compactMap(\.deliveryTag) == ["late-0", "late-1"])
    }

    @Test("an acknowledgement handed in after its document never lands in an earlier batch")
    func ordering() async {
        let settler = Settler()
        let seen = Mutex<[String]>([])
        let runner = Task {
            await settler.run { batch in
                for entry in batch {
                    if let document = entry.document { seen.withLock { $0.append("store \(document.taskID)") } }
                }
                for entry in batch {
                    if let tag = entry.ack?.deliveryTag { seen.withLock { $0.append("ack \(tag)") } }
                }
                try? await Task.sleep(for: .milliseconds(5))
            }
        }
        for index in 0..<20 {
            settler.submit(
                document: CeleryResultDocument(taskID: "\(index)", status: .success, result: .null, traceback: nil, children: [], dateDone: nil))
            settler.submit(ack: Self.delivery("\(index)"))
            if index % 5 == 0 { try? await Task.sleep(for: .milliseconds(2)) }
        }
        await settler.store(CeleryResultDocument(taskID: "last", status: .success, result: .null, traceback: nil, children: [], dateDone: nil))
        settler.finish()
        await runner.value
        let order = seen.withLock { $0 }
        for index in 0..<20 {
            guard let stored = order.firstIndex(of: "store \(index)"), let acked = order.firstIndex(of: "ack \(index)") else {
                Issue.record("task \(index) was not stored and acknowledged")
                continue
            }
            #expect(stored < acked)
        }
        #expect(order.contains("store last"))
    }
}
