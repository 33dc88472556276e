import CeleryProtocol
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
        await jobs.start(on: Self.executor, stop: early) {
            sawEarly.withLock { $0.append(Task.isCancelled) }  // before the body: not cancelled
            early.arm()
            sawEarly.withLock { $0.append(Task.isCancelled) }  // the body starts: cancelled now
            _ = early.seal()
        }.value
        #expect(sawEarly.withLock { $0 } == [false, true])

        let late = StopRequest()
        let afterSeal = await jobs.start(on: Self.executor, stop: late) { () -> StopReason? in
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

@Suite("Job runners: jobs one after another in long-lived tasks")
struct JobRunnersTests {
    static let executor = WorkerThreads(count: 2, name: "test-runners")

    /// What each job saw: the task it ran in, and whether that task was cancelled.
    final class Seen: Sendable {
        let entries = Mutex<[(task: Int, cancelled: Bool)]>([])
        func record() {
            let task = withUnsafeCurrentTask { $0?.hashValue } ?? 0
            entries.withLock { $0.append((task, Task.isCancelled)) }
        }
        var all: [(task: Int, cancelled: Bool)] { entries.withLock { $0 } }
    }

    /// Runs `body` as a job and waits until it has run.
    static func runJob(_ runners: JobRunners, stop: StopRequest = StopRequest(), _ body: @escaping @Sendable () async -> Void) async {
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
            runners.run(
                {
                    await body()
                    done.resume()
                }, stop: stop)
        }
    }

    @Test("a runner takes the next job once idle; a late stop request after a job changes nothing for the next")
    func reuse() async {
        let tasks = JobTasks()
        let runners = JobRunners(tasks: tasks, executor: Self.executor)
        let seen = Seen()
        let first = StopRequest()
        await Self.runJob(runners, stop: first) {
            first.arm()
            seen.record()
            _ = first.seal()
        }
        first.request(.terminated)  // after the body: nothing to cancel
        try? await Task.sleep(for: .milliseconds(20))  // the runner is idle again
        await Self.runJob(runners) { seen.record() }
        let all = seen.all
        #expect(all.count == 2)
        let oneTask = Set(all.map(\.task)).count == 1
        let noneCancelled = !all.contains { $0.cancelled }
        #expect(oneTask)
        #expect(noneCancelled)
        runners.close()
        await tasks.waitUntilIdle()
    }

    @Test("a job stopped while its body runs ends its runner; the next job runs in a new, uncancelled task")
    func stoppedRunnerIsNotReused() async {
        let tasks = JobTasks()
        let runners = JobRunners(tasks: tasks, executor: Self.executor)
        let seen = Seen()
        let stop = StopRequest()
        let started = AsyncStream.makeStream(of: Void.self)
        let stopped = Task {
            await Self.runJob(runners, stop: stop) {
                stop.arm()
                started.continuation.yield()
                _ = try? await Task.sleep(for: .seconds(30))
                seen.record()
                _ = stop.seal()
            }
        }
        for await _ in started.stream { break }
        stop.request(.softTimeLimit)
        await stopped.value
        await Self.runJob(runners) { seen.record() }
        let all = seen.all
        #expect(all.count == 2)
        #expect(all.first?.cancelled == true)
        // A task's cancellation is never undone, so an uncancelled second job ran in another task. Comparing the
        // two tasks' identities would not show it: the first task has ended, and the next may be allocated at its
        // address (it was, once in CI).
        #expect(all.last?.cancelled == false)
        runners.close()
        await tasks.waitUntilIdle()
    }

    @Test("a cold shutdown cancels the running jobs and ends the idle runners; waiting ends once all have ended")
    func coldShutdown() async {
        let tasks = JobTasks()
        let runners = JobRunners(tasks: tasks, executor: Self.executor)
        await Self.runJob(runners) {}  // one runner now idle
        let seen = Seen()
        let running = AsyncStream.makeStream(of: Void.self)
        runners.run(
            {
                running.continuation.yield()
                _ = try? await Task.sleep(for: .seconds(30))
                seen.record()
            }, stop: StopRequest())
        runners.run(
            {
                running.continuation.yield()
                _ = try? await Task.sleep(for: .seconds(30))
                seen.record()
            }, stop: StopRequest())
        var count = 0
        for await _ in running.stream {
            count += 1
            if count == 2 { break }
        }
        tasks.cancelAll()
        runners.close()
        await tasks.waitUntilIdle()
        #expect(seen.all.count == 2)
        let allCancelled = seen.all.allSatisfy(\.cancelled)
        #expect(allCancelled)
        // Closed: a runner that goes idle ends; a job handed in later still runs (in a task cancelled from its
        // start, as after any cold shutdown).
        let late = Seen()
        await Self.runJob(runners) { late.record() }
        #expect(late.all.first?.cancelled == true)
        await tasks.waitUntilIdle()
    }
}

@Suite("Running tasks, kept by job")
struct RunningTasksTests {
    static func job(id: String) -> PreparedJob {
        PreparedJob(
            delivery: BrokerDelivery(raw: [], queue: "celery", receivedAt: 0, deliveryTag: "tag-\(id)"),
            message: CeleryTaskMessage(id: id, name: "t"),
            task: RegisteredTask(name: "t", options: TaskOptions()) { _ in .null }, etaTime: nil, expiresTime: nil,
            deliveryInfo: DeliveryInfo(exchange: "", routingKey: "celery", priority: 0, redelivered: false))
    }

    @Test("two deliveries of one task id that run at once are both kept, and each leaves on its own")
    func sameID() {
        var running = RunningTasks()
        let first = Self.job(id: "same")
        let second = Self.job(id: "same")
        let other = Self.job(id: "other")
        for job in [first, second, other] { running.add(RunningTask(job: job, timeStart: 0, stop: StopRequest())) }
        #expect(running.all.count == 3)
        #expect(running.with(id: "same").count == 2)
        running.remove(first)
        let left = running.with(id: "same").map { ObjectIdentifier($0.job) }
        #expect(left == [ObjectIdentifier(second)])
        running.remove(second)
        #expect(running.with(id: "same").isEmpty)
        #expect(running.with(id: "other").count == 1)
    }
}
