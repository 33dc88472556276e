import Synchronization

/// The tasks that run jobs, one each. They are unstructured, not children of a group, so that a stop request (a soft
/// time limit, `revoke(terminate=True)`) can cancel the task of one job: the task body runs in it, without a task
/// of its own. A cold shutdown cancels them all (``cancelAll()``); ``waitUntilIdle()`` waits for every one to end,
/// as a task group would.
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
        state.withLock { state -> Task<Success, Never> in
            state.nextID += 1
            let id = state.nextID
            // Created, recorded and attached under the lock, which the task takes first: it cannot end (and remove
            // itself) before it is recorded, nor start its operation before a stop can cancel it.
            let task = Task(executorPreference: executor) {
                defer { self.finished(id) }
                // Started once a cold shutdown began: it runs cancelled from its first line.
                if self.isCancelled { withUnsafeCurrentTask { $0?.cancel() } }
                return await operation()
            }
            state.tasks[id] = { task.cancel() }
            stop?.attach { task.cancel() }
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
