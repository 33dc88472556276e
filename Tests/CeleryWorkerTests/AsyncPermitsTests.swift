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

    @Test("withdrawn permits leave at once when free, else as they are released; nobody acquires in between")
    func withdraw() async {
        let permits = AsyncPermits(3)
        #expect(await permits.acquire())
        #expect(await permits.acquire())
        permits.withdraw(2)  // one free permit leaves now, the other when a holder releases
        #expect(permits.available == -1)
        #expect(permits.tryAcquire(upTo: 4) == 0)
        #expect(permits.available == -1)
        let waiter = Task { await permits.acquire() }
        try? await Task.sleep(for: .milliseconds(30))
        permits.release()  // pays the debt: the waiter still waits
        try? await Task.sleep(for: .milliseconds(30))
        #expect(permits.available == 0)
        permits.release()
        #expect(await waiter.value)
        #expect(permits.available == 0)
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
}
