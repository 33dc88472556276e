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

    @Test(
        "a move held back goes on on its own thread once the kept jobs are done; one held over a task body that runs long goes to another thread while the body runs"
    )
    func heldBackMove() async throws {
        let threads = WorkerThreads(count: 2, name: "test-held")
        defer { threads.shutdown() }
        await withTaskExecutorPreference(threads) { await threads.moveToAnotherThread() }
        for _ in 0..<50 {
            let keptRan = Mutex<pthread_t?>(nil)
            let (before, after) = await withTaskExecutorPreference(threads) { () async -> (pthread_t, pthread_t) in
                let before = pthread_self()
                WorkerThreads.keepNextJobOnThisThread(strictly: true)
                threads.submit { keptRan.withLock { $0 = pthread_self() } }
                await threads.moveToAnotherThread(lazily: true)
                return (before, pthread_self())
            }
            // Nothing woke another thread: the kept job ran first, then the task went on where it was.
            #expect(pthread_equal(before, after) != 0)
            #expect(keptRan.withLock { $0 }.map { pthread_equal($0, before) != 0 } == true)
        }
        // A kept job that holds its thread (a task body) longer than the patience: the task goes on elsewhere
        // meanwhile.
        let moved = DispatchSemaphore(value: 0)
        let sawMove = Mutex<Bool?>(nil)
        let (before, after) = await withTaskExecutorPreference(threads) { () async -> (pthread_t, pthread_t) in
            let before = pthread_self()
            WorkerThreads.keepNextJobOnThisThread(strictly: true)
            threads.submit {
                let armed = WorkerThreads.armDeferredMove()
                let saw = moved.wait(timeout: .now() + 2) == .success
                armed?.disarm()
                sawMove.withLock { $0 = saw && armed != nil }
            }
            await threads.moveToAnotherThread(lazily: true)
            let after = pthread_self()
            moved.signal()
            return (before, after)
        }
        for _ in 0..<500 where sawMove.withLock({ $0 }) == nil { try await Task.sleep(for: .milliseconds(1)) }
        #expect(pthread_equal(before, after) == 0)
        #expect(sawMove.withLock { $0 } == true)
    }
}
