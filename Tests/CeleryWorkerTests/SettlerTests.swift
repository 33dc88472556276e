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

    @Test("a document's following documents are written right after it, in the same batch and phase")
    func followingDocuments() async {
        func document(_ id: String) -> CeleryResultDocument {
            CeleryResultDocument(taskID: id, status: .failure, result: .null, traceback: nil, children: [], dateDone: nil)
        }
        let settler = Settler()
        settler.submit(document: document("before"), ack: Self.delivery("late-before"))
        settler.submit(ack: Self.delivery("early"), early: true)
        settler.submit(document: document("failed"), following: [document("next"), document("last")], ack: Self.delivery("late"))
        settler.submit(document: document("after"))
        settler.finish()
        let phases = Mutex<[[String]]>([])
        await settler.run { batch in
            let written = Settler.Phases(batch)
            phases.withLock {
                $0 = [
                    written.earlyAcks.compactMap(\.deliveryTag), written.documents.map(\.taskID),
                    written.lateAcks.compactMap(\.deliveryTag),
                ]
            }
        }
        #expect(phases.withLock { $0 } == [["early"], ["before", "failed", "next", "last", "after"], ["late-before", "late"]])
    }

    /// The batches a settler wrote, each as the tags and task ids it held.
    final class Batches: Sendable {
        private let batches = Mutex<[[String]]>([])
        func append(_ batch: [Settler.Entry]) {
            batches.withLock { $0.append(batch.map { $0.document?.taskID ?? $0.ack?.deliveryTag ?? "?" }) }
        }
        func withLock<T>(_ body: ([[String]]) -> T) -> T { batches.withLock { body($0) } }
    }

    /// Runs `settler` in the background, lingering, on a thread of its own (as the worker runs it on the results
    /// connection's thread), recording each batch it writes.
    static func record(_ settler: Settler) -> (Task<Void, Never>, Batches) {
        let batches = Batches()
        let lane = WorkerThreads(count: 1, name: "test-settler")
        let runner = Task(executorPreference: lane) {
            await settler.run(lingering: true) { batch in batches.append(batch) }
            lane.shutdown()
        }
        return (runner, batches)
    }

    static func waitFor(_ condition: () -> Bool) async {
        for _ in 0..<300 where !condition() { try? await Task.sleep(for: .milliseconds(10)) }
    }

    @Test("an early acknowledgement waits for its task's result and goes out in the same batch")
    func earlyAckWaitsForResult() async {
        let settler = Settler(linger: .seconds(60))
        let (runner, batches) = Self.record(settler)
        try? await Task.sleep(for: .milliseconds(50))  // the settler is waiting
        settler.submit(ack: Self.delivery("early"), early: true)
        try? await Task.sleep(for: .milliseconds(100))
        #expect(batches.withLock { $0 }.isEmpty)
        settler.submit(document: CeleryResultDocument(taskID: "t", status: .success, result: .null, traceback: nil, children: [], dateDone: nil))
        await Self.waitFor { !batches.withLock { $0 }.isEmpty }
        #expect(batches.withLock { $0 } == [["early", "t"]])
        settler.finish()
        await runner.value
    }

    @Test("an early acknowledgement without company goes out after the linger, or at once when nudged")
    func earlyAckAlone() async {
        let lingering = Settler(linger: .milliseconds(20))
        let (first, lingered) = Self.record(lingering)
        try? await Task.sleep(for: .milliseconds(50))
        lingering.submit(ack: Self.delivery("alone"), early: true)
        await Self.waitFor { !lingered.withLock { $0 }.isEmpty }
        #expect(lingered.withLock { $0 } == [["alone"]])
        lingering.finish()
        await first.value

        let nudged = Settler(linger: .seconds(60))
        let (second, batches) = Self.record(nudged)
        try? await Task.sleep(for: .milliseconds(50))
        nudged.submit(ack: Self.delivery("nudged"), early: true)
        try? await Task.sleep(for: .milliseconds(100))
        #expect(batches.withLock { $0 }.isEmpty)
        nudged.nudge()
        await Self.waitFor { !batches.withLock { $0 }.isEmpty }
        #expect(batches.withLock { $0 } == [["nudged"]])
        nudged.finish()
        await second.value
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
