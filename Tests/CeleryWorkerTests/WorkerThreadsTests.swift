import Dispatch
import Synchronization
import Testing

@testable import CeleryWorker

#if canImport(Glibc)
    import Glibc
#endif

@Suite("Worker threads: leader mode, with a watchdog over long jobs")
struct WorkerThreadsTests {
    @Test("a job that blocks the leader is left to its thread: the next job runs on another thread meanwhile")
    func blockingJobIsLeftBehind() async throws {
        let threads = WorkerThreads(count: 2, name: "test-lead", eventLoop: true)
        defer { threads.shutdown() }
        for _ in 0..<20 {
            let released = DispatchSemaphore(value: 0)
            let outcome = Mutex<(blocked: pthread_t?, sawRelease: Bool?, releasedOn: pthread_t?)>((nil, nil, nil))
            // The first job blocks until the second has run: with one thread serving the queue it would time out.
            threads.submit {
                outcome.withLock { $0.blocked = pthread_self() }
                let saw = released.wait(timeout: .now() + 2) == .success
                outcome.withLock { $0.sawRelease = saw }
            }
            threads.submit {
                outcome.withLock { $0.releasedOn = pthread_self() }
                released.signal()
            }
            for _ in 0..<3000 where outcome.withLock({ $0.sawRelease }) == nil { try await Task.sleep(for: .milliseconds(1)) }
            let ran = outcome.withLock { $0 }
            #expect(ran.sawRelease == true)
            let (blocked, releasedOn) = (try #require(ran.blocked), try #require(ran.releasedOn))
            #expect(pthread_equal(blocked, releasedOn) == 0)
        }
    }

    @Test("stopping the watchdog ends its thread, also while it sleeps with no timer armed")
    func watchdogStops() async throws {
        let threads = WorkerThreads(count: 2, name: "test-dog", eventLoop: true)
        defer { threads.shutdown() }
        for jobFirst in [false, true] {
            let watchdog = LeaderWatchdog()
            #expect(watchdog.start(watching: threads))
            if jobFirst {
                // A job started while the thread sleeps arms the timer: the thread wakes 1 ms later, finds the job
                // ended, and sleeps again.
                watchdog.jobEnds(watchdog.jobStarts())
            }
            try await Task.sleep(for: .milliseconds(20))
            #expect(!watchdog.hasExited)
            watchdog.stop()
            for _ in 0..<2000 where !watchdog.hasExited { try await Task.sleep(for: .milliseconds(1)) }
            #expect(watchdog.hasExited)
        }
    }

    @Test("a task that blocks after an await is watched too; its await resumes on whichever thread leads")
    func blockingAfterAwait() async throws {
        let threads = WorkerThreads(count: 3, name: "test-resume", eventLoop: true)
        defer { threads.shutdown() }
        let released = DispatchSemaphore(value: 0)
        // Two bodies that suspend first, then hold their thread until the third job runs.
        async let first = withTaskExecutorPreference(threads) { () async -> Bool in
            try? await Task.sleep(for: .milliseconds(5))
            return released.wait(timeout: .now() + 3) == .success
        }
        async let second = withTaskExecutorPreference(threads) { () async -> Bool in
            try? await Task.sleep(for: .milliseconds(5))
            return released.wait(timeout: .now() + 3) == .success
        }
        try await Task.sleep(for: .milliseconds(50))
        threads.submit {
            released.signal()
            released.signal()
        }
        let (one, two) = await (first, second)
        #expect(one && two)
    }

    @Test("short jobs run one at a time on the leader, in the order queued, and a continuation resumed first runs before them")
    func shortJobsAndResumingFirst() async throws {
        let threads = WorkerThreads(count: 2, name: "test-order", eventLoop: true)
        defer { threads.shutdown() }
        let order = Mutex<[String]>([])
        let ready = DispatchSemaphore(value: 0)
        let waiting = Mutex<UnsafeContinuation<Void, Never>?>(nil)
        let task = Task(executorPreference: threads) {
            await withUnsafeContinuation { continuation in
                waiting.withLock { $0 = continuation }
                ready.signal()
            }
            order.withLock { $0.append("resumed") }
        }
        await withUnsafeContinuation { (done: UnsafeContinuation<Void, Never>) in
            DispatchQueue.global().async {
                ready.wait()
                done.resume()
            }
        }
        // In one job: two jobs queued, then the waiting task resumed at the front of the queue.
        threads.submit {
            threads.submit { order.withLock { $0.append("a") } }
            threads.submit { order.withLock { $0.append("b") } }
            let continuation = waiting.withLock { $0 }
            WorkerThreads.resumingFirst { continuation?.resume() }
        }
        await task.value
        for _ in 0..<2000 where order.withLock({ $0.count }) < 3 { try await Task.sleep(for: .milliseconds(1)) }
        #expect(order.withLock { $0 } == ["resumed", "a", "b"])
    }

    @Test("after shutdown, a job that blocked its thread finishes and what it submits still runs")
    func shutdownWithBlockedJob() async throws {
        let threads = WorkerThreads(count: 2, name: "test-stop", eventLoop: true)
        let finished = DispatchSemaphore(value: 0)
        threads.submit {
            usleep(100_000)  // demoted meanwhile
            threads.submit { finished.signal() }
        }
        try await Task.sleep(for: .milliseconds(20))
        threads.shutdown()
        let signalled = await withUnsafeContinuation { (done: UnsafeContinuation<Bool, Never>) in
            DispatchQueue.global().async { done.resume(returning: finished.wait(timeout: .now() + 3) == .success) }
        }
        #expect(signalled)
    }

    @Test("a source watched again while a poll finds it awaiting nothing stays watched: the reply to its new request is read")
    func watchedAgainDuringPoll() async throws {
        let threads = WorkerThreads(count: 1, name: "test-rewatch", eventLoop: true)
        defer { threads.shutdown() }
        let source = try #require(PipeSource())
        // The window, forced: the poll finds the source awaiting nothing, and before the poll ends a request is
        // written and the source watched again (in leader mode, by a thread demoted since it checked that it leads).
        source.whenFirstFoundIdle = { [threads] source in
            source.request()
            threads.watch(source)
        }
        threads.submit { threads.watch(source) }
        for _ in 0..<2000 where source.replies == 0 { try await Task.sleep(for: .milliseconds(1)) }
        #expect(source.replies == 1)
        #expect(source.idleChecks == 1)  // the window was reached, once
    }
}

/// A ``PolledSource`` over a pipe: each ``request()`` writes a byte (its reply, readable at once) and is awaited
/// until a pump reads it.
///
/// `@unchecked Sendable`: `whenFirstFoundIdle` is set before the source is first watched and read only by the set's
/// one thread; the counts are in a `Mutex`.
private final class PipeSource: PolledSource, @unchecked Sendable {
    private let descriptors: (read: Int32, write: Int32)
    private let counts = Mutex<(pending: Int, replies: Int, idleChecks: Int)>((0, 0, 0))
    var whenFirstFoundIdle: ((PipeSource) -> Void)?

    init?() {
        var pair: [Int32] = [-1, -1]
        guard pipe(&pair) == 0 else { return nil }
        descriptors = (pair[0], pair[1])
    }

    deinit {
        close(descriptors.read)
        close(descriptors.write)
    }

    var replies: Int { counts.withLock { $0.replies } }
    var idleChecks: Int { counts.withLock { $0.idleChecks } }

    func request() {
        counts.withLock { $0.pending += 1 }
        var byte: UInt8 = 1
        _ = write(descriptors.write, &byte, 1)
    }

    func awaited() -> (descriptor: Int32, deadline: ContinuousClock.Instant)? {
        let (pending, idleChecks) = counts.withLock { counts in
            if counts.pending == 0 { counts.idleChecks += 1 }
            return (counts.pending, counts.idleChecks)
        }
        guard pending == 0 else { return (descriptors.read, .now + .seconds(5)) }
        if idleChecks == 1 { whenFirstFoundIdle?(self) }
        return nil
    }

    func pump() -> Bool {
        var byte: UInt8 = 0
        guard read(descriptors.read, &byte, 1) == 1 else { return true }
        return counts.withLock { counts in
            counts.pending -= 1
            counts.replies += 1
            return counts.pending > 0
        }
    }

    func expire() {}
}
