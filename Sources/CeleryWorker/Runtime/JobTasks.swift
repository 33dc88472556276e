import Synchronization

/// The tasks that run jobs: the ``JobRunners`` runners, and a task of its own for a job that first waits (for its
/// ETA or a rate limit). They are unstructured, not children of a group, so that a stop request (a soft time limit,
/// `revoke(terminate=True)`) can cancel the task running one job: the task body runs in it, without a task of its
/// own. A cold shutdown cancels them all (``cancelAll()``); ``waitUntilIdle()`` waits for every one to end, as a
/// task group would.
final class JobTasks: Sendable {
    private struct State {
        /// What cancels each running task, by an id of its own.
        var tasks: [UInt64: @Sendable () -> Void] = [:]
        var nextID: UInt64 = 0
        var cancelled = false
        var idle: CheckedContinuation<Void, Never>?
    }

    private let state = Mutex(State())

    /// Whether a cold shutdown cancelled the jobs: a job's task that is cancelled otherwise was stopped on request.
    var isCancelled: Bool { state.withLock { $0.cancelled } }

    /// Runs `operation` in a task of its own on `executor`. A stop requested through `stop` once it is armed
    /// cancels that task.
    @discardableResult
    func start<Success: Sendable>(
        on executor: any TaskExecutor, stop: StopRequest? = nil, _ operation: @escaping @Sendable () async -> Success
    ) -> Task<Success, Never> {
        start(on: executor, stop: stop) { _ in await operation() }
    }

    /// Runs `operation` in a task of its own on `executor`, giving it what cancels that task (a ``JobRunners`` runner
    /// attaches it to the stop request of each job it runs).
    @discardableResult
    func start<Success: Sendable>(
        on executor: any TaskExecutor, stop: StopRequest? = nil,
        _ operation: @escaping @Sendable (_ cancel: @escaping @Sendable () -> Void) async -> Success
    ) -> Task<Success, Never> {
        state.withLock { state -> Task<Success, Never> in
            state.nextID += 1
            let id = state.nextID
            // Created, recorded and attached under the lock, which the task takes first: it cannot end (and remove
            // itself) before it is recorded, nor start its operation before a stop can cancel it.
            let task = Task(executorPreference: executor) {
                defer { self.finished(id) }
                let cancel = self.state.withLock { state -> (@Sendable () -> Void)? in
                    // Started once a cold shutdown began: it runs cancelled from its first line.
                    if state.cancelled { withUnsafeCurrentTask { $0?.cancel() } }
                    return state.tasks[id]
                }
                return await operation(cancel ?? {})
            }
            let cancel: @Sendable () -> Void = { task.cancel() }
            state.tasks[id] = cancel
            stop?.attach(cancel)
            return task
        }
    }

    private func finished(_ id: UInt64) {
        let idle = state.withLock { state -> CheckedContinuation<Void, Never>? in
            state.tasks[id] = nil
            guard state.tasks.isEmpty else { return nil }
            defer { state.idle = nil }
            return state.idle
        }
        idle?.resume()
    }

    /// Cancels every job's task, and any started later (cold shutdown).
    func cancelAll() {
        let cancels = state.withLock { state -> [@Sendable () -> Void] in
            state.cancelled = true
            return Array(state.tasks.values)
        }
        for cancel in cancels { cancel() }
    }

    /// Returns once no job's task is running; cancelling the caller does not end the wait. One caller at a time (the
    /// dispatcher, at the end of a run).
    func waitUntilIdle() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let idle = state.withLock { state -> Bool in
                if state.tasks.isEmpty { return true }
                state.idle = continuation
                return false
            }
            if idle { continuation.resume() }
        }
    }
}

/// Long-lived tasks that run jobs one after another, so that a job does not cost a task of its own (creating and
/// destroying one was a twentieth of the worker's instructions per task). Each runner is a ``JobTasks`` task: a cold
/// shutdown cancels it, and the dispatcher waits for it, like any job's task.
///
/// A stop request (a soft time limit, `revoke(terminate=True)`) cancels the runner while the job's body runs; a
/// task cannot be un-cancelled, so a runner whose job was stopped, or that was cancelled otherwise, ends after that
/// job, and the next job starts a new runner. A job whose stop reason is set is the only one whose runner was
/// cancelled by it: ``StopRequest`` cancels only between ``StopRequest/arm()`` and ``StopRequest/seal()``, and only
/// once a reason is set.
///
/// The idle runners' continuations are unchecked (a checked one allocates, once per job): each is resumed exactly
/// once, by whoever takes it out of `idle` under the lock (``run(_:stop:)`` or ``close()``), or at once when it is
/// never stored.
final class JobRunners: Sendable {
    typealias Job = (work: @Sendable () async -> Void, stop: StopRequest)

    private struct State {
        var idle: [UnsafeContinuation<Job?, Never>] = []
        var closed = false
    }

    private let state = Mutex(State())
    private let tasks: JobTasks
    private let executor: any TaskExecutor

    init(tasks: JobTasks, executor: any TaskExecutor) {
        self.tasks = tasks
        self.executor = executor
    }

    /// Runs `work` on an idle runner, or on a new one when none is idle. `stop` stops it as it would stop a task of
    /// its own.
    func run(_ work: @escaping @Sendable () async -> Void, stop: StopRequest) {
        let idle = state.withLock { $0.idle.popLast() }
        if let idle {
            idle.resume(returning: (work, stop))
            return
        }
        tasks.start(on: executor, stop: stop) { cancel in
            var next: Job? = (work, stop)
            while let job = next {
                job.stop.attach(cancel)
                await job.work()
                // Stopped on request (this task is, or is about to be, cancelled), or a cold shutdown: this runner
                // ends, and the next job starts another.
                if job.stop.value != nil || Task.isCancelled { return }
                next = await self.nextJob()
            }
        }
    }

    /// Idle runners end, and any that would go idle later (the dispatcher is done, or a cold shutdown began).
    func close() {
        let idle = state.withLock { state -> [UnsafeContinuation<Job?, Never>] in
            state.closed = true
            defer { state.idle.removeAll() }
            return state.idle
        }
        for runner in idle { runner.resume(returning: nil) }
    }

    private func nextJob() async -> Job? {
        await withUnsafeContinuation { (continuation: UnsafeContinuation<Job?, Never>) in
            let closed = state.withLock { state -> Bool in
                if !state.closed { state.idle.append(continuation) }
                return state.closed
            }
            if closed { continuation.resume(returning: nil) }
        }
    }
}
