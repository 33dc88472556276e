import Synchronization
import Testing

@testable import CeleryWorker

@Suite("AsyncPermits: the prefetch and concurrency limits")
struct AsyncPermitsTests {
    final class Served: Sendable {
        let list = Mutex<[Int]>([])
    }

    /// Waits (up to 3 s) until `condition` holds.
    static func eventually(_ condition: () -> Bool) async {
        for _ in 0..<300 where !condition() { try? await Task.sleep(for: .milliseconds(10)) }
    }

    @Test("free permits are taken at once; then callers wait, and are served in the order they came")
    func order() async {
        let permits = AsyncPermits(2)
        #expect(await permits.acquire())
        #expect(await permits.acquire())
        #expect(permits.available == 0)
        let served = Served()
        var waiters: [Task<Void, Never>] = []
        for number in 0..<3 {
            waiters.append(
                Task {
                    if await permits.acquire() { served.list.withLock { $0.append(number) } }
                })
            // Each waiter is queued before the next one starts.
            try? await Task.sleep(for: .milliseconds(30))
        }
        #expect(served.list.withLock { $0 }.isEmpty)
        permits.release()
        await Self.eventually { served.list.withLock { $0.count } == 1 }
        permits.release(2)
        for waiter in waiters { await waiter.value }
        #expect(served.list.withLock { $0 } == [0, 1, 2])
        #expect(permits.available == 0)
        permits.release(2)
        #expect(permits.tryAcquire(upTo: 5) == 2)
    }

    @Test("a cancelled waiter gets no permit and takes none; a cancelled caller gets none even when one is free")
    func cancellation() async {
        let permits = AsyncPermits(1)
        #expect(await permits.acquire())
        let waiter = Task { await permits.acquire() }
        try? await Task.sleep(for: .milliseconds(30))
        waiter.cancel()
        #expect(await waiter.value == false)
        permits.release()
        #expect(permits.available == 1)
        let cancelled = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            return await permits.acquire()
        }
        #expect(await cancelled.value == false)
        #expect(permits.available == 1)
    }

    @Test("close wakes every waiter with false and refuses later callers")
    func close() async {
        let permits = AsyncPermits(0)
        let waiters = (0..<3).map { _ in Task { await permits.acquire() } }
        try? await Task.sleep(for: .milliseconds(30))
        permits.close()
        for waiter in waiters { #expect(await waiter.value == false) }
        permits.release()
        #expect(await permits.acquire() == false)
        #expect(permits.tryAcquire(upTo: 1) == 0)
    }

    final class Flag: Sendable {
        let value = Atomic(false)
    }

    @Test("gather takes permits as they free and returns once it has the batch, waking once")
    func gatherBatch() async {
        let permits = AsyncPermits(1)
        let never = Flag()
        let gathering = Task { await permits.gather(upTo: 3) { never.value.load(ordering: .relaxed) } }
        try? await Task.sleep(for: .milliseconds(30))
        // It took the free permit at once, and waits for two more: a permit freed now goes to it, not to a caller
        // that came later, and does not end the wait.
        #expect(permits.available == 0)
        permits.release()
        let later = Task { await permits.acquire() }
        try? await Task.sleep(for: .milliseconds(30))
        #expect(permits.available == 0)
        permits.release(2)
        let gathered = await gathering.value
        #expect(gathered.taken == 3 && gathered.open)
        #expect(await later.value)
        #expect(permits.available == 0)
    }

    @Test("gather ends early, with what it took, once a permit frees while its condition holds")
    func gatherUntil() async {
        let permits = AsyncPermits(0)
        let enough = Flag()
        let gathering = Task { await permits.gather(upTo: 5) { enough.value.load(ordering: .relaxed) } }
        try? await Task.sleep(for: .milliseconds(30))
        permits.release()
        try? await Task.sleep(for: .milliseconds(30))
        enough.value.store(true, ordering: .relaxed)
        // The condition is read when a permit frees: the wait ends with the two it took.
        permits.release()
        let gathered = await gathering.value
        #expect(gathered.taken == 2 && gathered.open)
        // Permits free at the start and the condition true: taken at once without waiting.
        permits.release(3)
        let immediate = await permits.gather(upTo: 5) { true }
        #expect(immediate.taken == 3 && immediate.open)
    }

    @Test("a gather that is closed or cancelled returns the permits it took, for the caller to give back")
    func gatherRefused() async {
        let permits = AsyncPermits(2)
        let never = Flag()
        let cancelled = Task { await permits.gather(upTo: 4) { never.value.load(ordering: .relaxed) } }
        try? await Task.sleep(for: .milliseconds(30))
        cancelled.cancel()
        let result = await cancelled.value
        #expect(result.taken == 2 && !result.open)
        permits.release(result.taken)
        #expect(permits.available == 2)
        let closed = Task { await permits.gather(upTo: 4) { never.value.load(ordering: .relaxed) } }
        try? await Task.sleep(for: .milliseconds(30))
        permits.close()
        let refused = await closed.value
        #expect(refused.taken == 2 && !refused.open)
        let late = await permits.gather(upTo: 1) { true }
        #expect(late.taken == 0 && !late.open)
    }
}
