import Synchronization
import Testing

@testable import CeleryWorker

@Suite("Job tasks and stop requests")
struct JobTasksTests {
    static let executor = WorkerThreads(count: 1, name: "test-jobs")

    @Test("a stop cancels the job's task only while its body runs: requested early, it waits for the body; after it, nothing")
    func stopWhileTheBodyRuns() async throws {
        let jobs = JobTasks()
        let early = StopRequest()
        early.request(.terminated)
        let sawEarly = Mutex<[Bool]>([])
        try await jobs.start(on: Self.executor, stop: early) {
            sawEarly.withLock { $0.append(Task.isCancelled) }  // before the body: not cancelled
            early.arm()
            sawEarly.withLock { $0.append(Task.isCancelled) }  // the body starts: cancelled now
            _ = early.seal()
        }.value
        #expect(sawEarly.withLock { $0 } == [false, true])

        let late = StopRequest()
        let afterSeal = try await jobs.start(on: Self.executor, stop: late) { () -> StopReason? in
            late.arm()
            let reason = late.seal()
            late.request(.softTimeLimit)  // after the body: changes nothing
            return Task.isCancelled ? .terminated : reason
        }.value
        #expect(afterSeal == nil)
        #expect(late.value == nil)

        let during = StopRequest()
        let started = AsyncStream.makeStream(of: Void.self)
        let body = jobs.start(on: Self.executor, stop: during) { () -> Bool in
            during.arm()
            started.continuation.yield()
            let slept: Void? = try? await Task.sleep(for: .seconds(30))
            _ = during.seal()
            return slept == nil
        }
        for await _ in started.stream { break }
        during.request(.softTimeLimit)
        #expect(await body.value)  // the sleep was cancelled
        #expect(during.value == .softTimeLimit)
        #expect(!jobs.isCancelled)
        await jobs.waitUntilIdle()
    }

    @Test("a cold shutdown cancels every job, and those started after it; waiting ends once all have ended")
    func cancelAll() async throws {
        let jobs = JobTasks()
        let ended = Mutex(0)
        let running = AsyncStream.makeStream(of: Void.self)
        for _ in 0..<3 {
            jobs.start(on: Self.executor) {
                running.continuation.yield()
                _ = try? await Task.sleep(for: .seconds(30))
                ended.withLock { $0 += 1 }
            }
        }
        var count = 0
        for await _ in running.stream {
            count += 1
            if count == 3 { break }
        }
        jobs.cancelAll()
        #expect(jobs.isCancelled)
        let late = jobs.start(on: Self.executor) { Task.isCancelled }
        #expect(await late.value)
        await jobs.waitUntilIdle()
        #expect(ended.withLock { $0 } == 3)
    }
}
