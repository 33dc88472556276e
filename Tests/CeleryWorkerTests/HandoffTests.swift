import Testing

@testable import CeleryWorker

@Suite("Handoff: the fetch → receive → dispatch queues")
struct HandoffTests {
    @Test("elements come out in order, queued or handed to a waiting consumer; finish drains, then nil")
    func order() async {
        let handoff = Handoff<Int>()
        handoff.yield(1)
        handoff.yield(2)
        #expect(await handoff.next() == 1)
        #expect(await handoff.next() == 2)
        let waiting = Task { await handoff.next() }
        try? await Task.sleep(for: .milliseconds(30))  // the consumer waits
        handoff.yield(3)
        #expect(await waiting.value == 3)
        handoff.yield(4)
        handoff.finish()
        handoff.yield(5)  // after finish: dropped
        #expect(await handoff.next() == 4)
        #expect(await handoff.next() == nil)
        #expect(await handoff.next() == nil)
    }

    @Test("a consumer waiting when finish comes gets nil")
    func finishWakes() async {
        let handoff = Handoff<Int>()
        let waiting = Task { await handoff.next() }
        try? await Task.sleep(for: .milliseconds(30))
        handoff.finish()
        #expect(await waiting.value == nil)
    }

    @Test("a cancelled consumer gets nil, waiting or not, and what was queued stays for the next one")
    func cancellation() async {
        let handoff = Handoff<Int>()
        let waiting = Task { await handoff.next() }
        try? await Task.sleep(for: .milliseconds(30))
        waiting.cancel()
        #expect(await waiting.value == nil)
        handoff.yield(7)
        let cancelled = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            return await handoff.next()
        }
        #expect(await cancelled.value == nil)
        #expect(await handoff.next() == 7)
    }

    @Test("many elements from another thread arrive once each, in order")
    func many() async {
        let handoff = Handoff<Int>()
        let producer = Task.detached {
            for number in 0..<10_000 { handoff.yield(number) }
            handoff.finish()
        }
        var received: [Int] = []
        while let number = await handoff.next() { received.append(number) }
        await producer.value
        #expect(received == Array(0..<10_000))
    }
}
