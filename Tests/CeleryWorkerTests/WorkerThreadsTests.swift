import Dispatch
import Synchronization
import Testing

@testable import CeleryWorker

#if canImport(Glibc)
    import Glibc
#endif

@Suite("Worker threads: jobs kept for a thread, and a task moved to another")
struct WorkerThreadsTests {
    @Test(
        "a job kept for its thread runs there, not on the thread woken next; a task moved to another thread goes on there once its job has ended"
    )
    func keptJobAndMove() async throws {
        let threads = WorkerThreads(count: 2, name: "test-move")
        defer { threads.shutdown() }
        // The preference takes effect at the first suspension: this hop lands on one of the set's threads.
        await withTaskExecutorPreference(threads) { await threads.moveToAnotherThread() }
        // Many rounds: a task resumed before it has suspended would go on on its old thread, which only a race shows.
        for _ in 0..<200 {
            let moved = DispatchSemaphore(value: 0)
            let kept = Mutex<(thread: pthread_t, sawMove: Bool)?>(nil)
            let (before, after) = await withTaskExecutorPreference(threads) { () async -> (pthread_t, pthread_t) in
                let before = pthread_self()
                // Kept for this thread: it runs here once the task has left, and waits until the task goes on
                // elsewhere (on this thread the task could only go on after it, and the wait would time out).
                WorkerThreads.keepNextJobOnThisThread(strictly: true)
                threads.submit {
                    let sawMove = moved.wait(timeout: .now() + 2) == .success
                    kept.withLock { $0 = (pthread_self(), sawMove) }
                }
                await threads.moveToAnotherThread()
                let after = pthread_self()
                moved.signal()
                return (before, after)
            }
            for _ in 0..<500 where kept.withLock({ $0 }) == nil { try await Task.sleep(for: .milliseconds(1)) }
            let ran = try #require(kept.withLock { $0 })
            #expect(pthread_equal(before, after) == 0)
            #expect(pthread_equal(ran.thread, before) != 0)
            #expect(ran.sawMove)
        }
    }
}
