import CeleryProtocol
import Foundation
import Logging
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// `--pool process`: task bodies run in child processes (the worker binary started again in child mode), one task
/// per child at a time, so the worker can kill a task that never yields. This is what Python's prefork pool
/// guarantees and the thread pool cannot:
///
/// - hard time limits: at the deadline the child gets `SIGKILL`, FAILURE `TimeLimitExceeded` is stored and a new
///   child takes its place;
/// - `revoke(terminate=True)` kills the child running the task;
/// - a task that crashes its process (a Swift runtime trap, a C library fault) fails with `WorkerLostError`
///   instead of taking the worker down.
///
/// The soft time limit is `SIGUSR1` to the child, which cancels the task there.
final class ProcessPool: Sendable {
    private let idle = Mutex<[PoolProcess]>([])
    private let live = Mutex<[Int32: PoolProcess]>([:])
    private let spawned = Atomic<Int>(0)
    private let stopping = Atomic<Bool>(false)
    /// Jobs written to each child that got one, in the order of their first job. As billiard's `write_stats`
    /// counts per pool slot, a child that replaces another takes over its count.
    private let written = Mutex<[(pid: Int32, jobs: Int)]>([])
    /// Children to replace after their task (``restart()``), by pid.
    private let outdated = Mutex<Set<Int32>>([])
    /// Job writes under way now.
    private let writing = Atomic<Int>(0)
    /// The children the pool keeps: its size at start, changed by ``grow(by:)`` and ``shrink(by:)``.
    private let target: Atomic<Int>
    private let logger: Logger
    /// Jobs a child runs before it is replaced (`--max-tasks-per-child`); `nil`: no limit.
    let maxTasksPerChild: Int?
    /// Peak resident memory, in KiB, past which a child is replaced after its job (`--max-memory-per-child`).
    let maxMemoryPerChild: Int?

    /// The environment variable that puts the worker binary in child mode; its value is the child's number.
    static let childVariable = "SWIFT_CELERY_POOL_CHILD"

    init(size: Int, logger: Logger, maxTasksPerChild: Int? = nil, maxMemoryPerChild: Int? = nil) {
        self.target = Atomic(size)
        self.logger = logger
        self.maxTasksPerChild = maxTasksPerChild
        self.maxMemoryPerChild = maxMemoryPerChild
        // A write to the pipe of a child that just died must fail with EPIPE, not kill the worker.
        signal(SIGPIPE, SIG_IGN)
    }

    /// Starts the children. Blocking: call it on a task thread.
    func start() {
        startChildren(target.load(ordering: .relaxed))
    }

    private func startChildren(_ count: Int) {
        for _ in 0..<count {
            do {
                let child = try spawn()
                idle.withLock { $0.append(child) }
            } catch {
                logger.error("Cannot start a pool process: \(error)")
            }
        }
    }

    /// How many children the pool keeps now (billiard's `_processes`, Celery's `num_processes`).
    var processes: Int { target.load(ordering: .relaxed) }

    /// billiard's `grow`: `count` more children, started at once. Blocking: call it on a task thread.
    func grow(by count: Int) {
        guard count > 0, !stopping.load(ordering: .relaxed) else { return }
        target.add(count, ordering: .relaxed)
        startChildren(count)
    }

    /// billiard's `shrink`: `count` fewer children. Idle ones exit now; where too few are idle, busy ones exit after
    /// their task (billiard refuses instead: "Can't shrink pool. All processes busy!"). Blocking: call it on a task
    /// thread.
    func shrink(by count: Int) {
        guard count > 0 else { return }
        target.subtract(count, ordering: .relaxed)
        let surplus = live.withLock { $0.count } - target.load(ordering: .relaxed)
        guard surplus > 0 else { return }
        let leaving = idle.withLock { idle in
            let leaving = Array(idle.suffix(surplus))
            idle.removeLast(leaving.count)
            return leaving
        }
        for child in leaving { retire(child, reason: "as the pool shrank") }
    }

    /// billiard's `restart`: every child is replaced by a new one, idle ones now, busy ones after their task.
    /// Blocking: call it on a task thread.
    func restart() {
        let pids = live.withLock { Array($0.keys) }
        outdated.withLock { $0.formUnion(pids) }
        let leaving = idle.withLock { idle in
            defer { idle.removeAll() }
            return idle
        }
        for child in leaving {
            retire(child, reason: "as the pool restarted")
            replace(child)
        }
    }

    /// Closes a child's job pipe (it exits, if it has not already), reaps it and logs why.
    private func retire(_ child: PoolProcess, reason: String) {
        forget(child)
        child.closeInput()
        let status = child.reap()
        logger.info("Process '\(child.name)' pid:\(child.pid) exited with '\(status)' \(reason)")
    }

    /// Drops a child that is leaving from the pool's books (its pid may be given to another process later).
    private func forget(_ child: PoolProcess) {
        live.withLock { $0[child.pid] = nil }
        outdated.withLock { _ = $0.remove(child.pid) }
    }

    /// Whether the pool has more children than it keeps now (it shrank while they were busy).
    private var oversized: Bool { live.withLock { $0.count } > target.load(ordering: .relaxed) }

    /// The child pids, for `stats`.
    var pids: [Int32] { live.withLock { $0.keys.sorted() } }

    /// Python's prefork `stats()["pool"]["writes"]` (`human_write_stats`): how many jobs went to the children and
    /// each one's share, with the same formatting.
    var writeStats: CeleryValue {
        let jobs = written.withLock { $0.map(\.jobs) }
        let total = jobs.reduce(0, +)
        func share(_ part: Double) -> String { String(format: "%.2f", part != 0 ? part / Double(total) : 0) }
        return [
            "total": .int(Int64(total)),
            "avg": .string(share(total != 0 ? Double(total) / Double(jobs.count) : 0)),
            "all": .string(jobs.map { share(Double($0)) }.joined(separator: ", ")),
            "raw": .string(jobs.map(String.init).joined(separator: ", ")),
            "strategy": "fair",
            "inqueues": ["total": .int(Int64(live.withLock { $0.count })), "active": .int(Int64(writing.load(ordering: .relaxed)))],
        ]
    }

    /// Runs a job in a free child and waits for its outcome, with the name of the child that ran it (`nil` when
    /// none could be started); must run on a task thread (the reads block).
    func run(
        _ job: PreparedJob, context: TaskContext, hardLimit: Double?, stop: StopRequest
    ) async -> (Result<CeleryValue, any Error>, child: String?) {
        var free = idle.withLock { $0.popLast() }
        // One that exited since the supervisor last looked is replaced (the replacement is idle), not given the job.
        while let dead = free, dead.exited() != nil {
            _ = buried(dead)
            free = idle.withLock { $0.popLast() }
        }
        let child: PoolProcess
        if let free {
            child = free
        } else {
            do {
                child = try spawn()
            } catch {
                return (.failure(WorkerLostError(exitDescription: "cannot start a pool process (\(error)).")), nil)
            }
        }
        return (await run(job, in: child, context: context, hardLimit: hardLimit, stop: stop), child.name)
    }

    private func run(
        _ job: PreparedJob, in child: PoolProcess, context: TaskContext, hardLimit: Double?, stop: StopRequest
    ) async -> Result<CeleryValue, any Error> {
        let frame: CeleryValue = ["hostname": .string(context.request.hostname)]
        writing.add(1, ordering: .relaxed)
        let sent = PoolFrames.write(frame, bytes: job.delivery.raw, to: child.input)
        writing.subtract(1, ordering: .relaxed)
        guard sent else { return ended(child) }
        written.withLock { written in
            if let index = written.firstIndex(where: { $0.pid == child.pid }) {
                written[index].jobs += 1
            } else {
                written.append((child.pid, 1))
            }
        }
        let timer = hardLimit.map { limit in
            Task {
                try await Task.sleep(for: .milliseconds(Int64(limit * 1000)))
                child.kill(SIGKILL, because: .timeLimit(limit))
            }
        }
        defer { timer?.cancel() }
        return await withTaskCancellationHandler {
            while let frame = PoolFrames.read(from: child.output) {
                if frame["ready"] != nil { continue }
                if let state = frame["state"]?.stringValue {
                    try? await context.updateState(TaskState(state), meta: frame["meta"] ?? .null)
                    continue
                }
                if let node = frame["child"] {
                    context.recordChild(node)
                    continue
                }
                let outcome = PoolOutcome.result(of: frame)
                keepOrRetire(child)
                return outcome
            }
            return ended(child)
        } onCancel: {
            switch stop.value {
            case .softTimeLimit?: child.signal(SIGUSR1)
            case .terminated?: child.kill(SIGKILL, because: .terminated)
            case nil: child.kill(SIGKILL, because: .shutdown)
            }
        }
    }

    /// After a job that finished: the child goes back to the idle ones, or, once it ran `maxTasksPerChild` jobs or
    /// its peak resident memory passed `maxMemoryPerChild`, it exits (its job pipe closes) and a new child takes
    /// its place, as billiard replaces one.
    private func keepOrRetire(_ child: PoolProcess) {
        let jobs = child.finishedJob()
        let reason: String?
        if let limit = maxTasksPerChild, jobs >= limit {
            reason = "after \(jobs) tasks (max tasks per child \(limit))"
        } else if let limit = maxMemoryPerChild, let peak = child.peakResidentKiB(), peak > limit {
            reason = "at \(peak) KiB resident (max memory per child \(limit) KiB)"
        } else if oversized {
            reason = "as the pool shrank"
        } else if outdated.withLock({ $0.contains(child.pid) }) {
            reason = "as the pool restarted"
        } else {
            reason = nil
        }
        guard let reason, !stopping.load(ordering: .relaxed) else {
            idle.withLock { $0.append(child) }
            return
        }
        retire(child, reason: reason)
        replace(child)  // none when the pool shrank: `replace` keeps to its size
    }

    /// Starts a child in place of one that exited, which hands on its share of `written`.
    private func replace(_ child: PoolProcess) {
        // Not when the pool shrank meanwhile.
        guard !stopping.load(ordering: .relaxed), live.withLock({ $0.count }) < processes else { return }
        do {
            let replacement = try spawn()
            written.withLock { written in
                if let index = written.firstIndex(where: { $0.pid == child.pid }) { written[index].pid = replacement.pid }
            }
            idle.withLock { $0.append(replacement) }
        } catch {
            logger.error("Cannot start a pool process: \(error)")
        }
    }

    /// A child whose pipe closed: reaps it, logs how it ended, and says what that means for its task.
    private func ended(_ child: PoolProcess) -> Result<CeleryValue, any Error> {
        let status = buried(child)
        switch child.killedBecause {
        case .timeLimit(let limit)?: return .failure(HardTimeLimitExceeded(limit: limit))
        case .terminated?, .shutdown?: return .failure(CancellationError())
        case nil: return .failure(WorkerLostError(exitDescription: status))
        }
    }

    /// A child that exited: reaps it, drops it from the books, logs how it ended as billiard does, and starts one in
    /// its place. Returns how it ended.
    private func buried(_ child: PoolProcess) -> String {
        let status = child.reap()
        forget(child)
        if case .shutdown? = child.killedBecause {
            // Stopped on purpose by a cold shutdown, as Celery 5.5's cancels its children without a line each.
            logger.debug("Process '\(child.name)' pid:\(child.pid) exited with '\(status)'")
        } else {
            logger.error("Process '\(child.name)' pid:\(child.pid) exited with '\(status)'")
        }
        replace(child)
        return status
    }

    /// billiard's supervisor (`_join_exited_workers`): idle children that exited (killed from outside, say) are
    /// reaped, logged and replaced, so that no job is given to a dead one and none is left a zombie. Call it on a
    /// task thread (a replacement is spawned there).
    func replaceExitedIdleChildren() {
        let exited = idle.withLock { idle -> [PoolProcess] in
            let exited = idle.filter { $0.exited() != nil }
            idle.removeAll { child in exited.contains { $0 === child } }
            return exited
        }
        for child in exited { _ = buried(child) }
    }

    /// Stops every child: idle ones see their pipe close and exit; `kill` also sends `SIGKILL` (cold shutdown).
    /// Blocking: call it on a task thread.
    func shutdown(kill: Bool) {
        stopping.store(true, ordering: .relaxed)
        let children = live.withLock { live in
            defer { live.removeAll() }
            return Array(live.values)
        }
        idle.withLock { $0.removeAll() }
        for child in children {
            if kill { child.kill(SIGKILL, because: .shutdown) }
            child.closeInput()
        }
        for child in children { _ = child.reap() }
    }

    private func spawn() throws(CeleryWorkerError) -> PoolProcess {
        let number = spawned.add(1, ordering: .relaxed).newValue
        let child = try PoolProcess.spawn(name: "ForkPoolWorker-\(number)", number: number)
        live.withLock { $0[child.pid] = child }
        return child
    }
}

/// One child process and the two pipe ends the worker holds.
final class PoolProcess: Sendable {
    enum KillReason: Sendable {
        case timeLimit(Double), terminated, shutdown
    }

    let pid: Int32
    let name: String
    /// The worker writes jobs here (the child's fd 3).
    let input: Int32
    /// The worker reads outcomes here (the child's fd 4).
    let output: Int32
    private let state = Mutex<(killed: KillReason?, inputOpen: Bool, status: String?)>((nil, true, nil))
    /// Jobs this child finished.
    private let jobs = Atomic<Int>(0)

    private init(pid: Int32, name: String, input: Int32, output: Int32) {
        self.pid = pid
        self.name = name
        self.input = input
        self.output = output
    }

    var killedBecause: KillReason? { state.withLock { $0.killed } }

    /// Counts a finished job; returns how many this child finished.
    func finishedJob() -> Int { jobs.add(1, ordering: .relaxed).newValue }

    /// The child's peak resident memory in KiB (`VmHWM` in `/proc/<pid>/status`, what `ru_maxrss` gives Python's
    /// child); `nil` when it cannot be read.
    func peakResidentKiB() -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("VmHWM:") {
            // `VmHWM:\t   12345 kB`
            return Int(line.dropFirst("VmHWM:".count).split(whereSeparator: { $0 == " " || $0 == "\t" }).first ?? "")
        }
        return nil
    }

    func signal(_ number: Int32) {
        let running = state.withLock { $0.status == nil }
        if running { Glibc.kill(pid, number) }
    }

    func kill(_ number: Int32, because reason: KillReason) {
        let running = state.withLock { state -> Bool in
            if state.killed == nil { state.killed = reason }
            return state.status == nil
        }
        if running { Glibc.kill(pid, number) }
    }

    func closeInput() {
        let open = state.withLock { state -> Bool in
            defer { state.inputOpen = false }
            return state.inputOpen
        }
        if open { close(input) }
    }

    /// Waits for the child to exit (once) and describes how it ended, as billiard does: `exitcode 0`,
    /// `signal 9 (SIGKILL)`.
    func reap() -> String {
        reaped(waiting: true) ?? "exitcode 0"
    }

    /// How the child ended if it has exited (it is reaped then), without waiting; `nil` while it runs.
    func exited() -> String? {
        reaped(waiting: false)
    }

    /// Held while the child is reaped: a job's end and a shutdown may both reap it, and only the first waits for it
    /// and closes its pipes.
    private let reaping = Mutex(())

    private func reaped(waiting: Bool) -> String? {
        reaping.withLock { _ -> String? in
            if let status = state.withLock({ $0.status }) { return status }
            if waiting { closeInput() }  // an idle child exits when its job pipe closes
            var raw: Int32 = 0
            var reaped: Int32
            repeat { reaped = waitpid(pid, &raw, waiting ? 0 : WNOHANG) } while reaped < 0 && errno == EINTR
            guard reaped == pid || waiting else { return nil }
            closeInput()
            close(output)
            let signalNumber = raw & 0x7f
            let description =
                signalNumber == 0 ? "exitcode \((raw >> 8) & 0xff)" : "signal \(signalNumber) (\(Self.signalName(signalNumber)))"
            state.withLock { $0.status = description }
            return description
        }
    }

    static func signalName(_ number: Int32) -> String {
        let names: [Int32: String] = [
            1: "SIGHUP", 2: "SIGINT", 3: "SIGQUIT", 4: "SIGILL", 5: "SIGTRAP", 6: "SIGABRT", 7: "SIGBUS", 8: "SIGFPE",
            9: "SIGKILL", 10: "SIGUSR1", 11: "SIGSEGV", 12: "SIGUSR2", 13: "SIGPIPE", 14: "SIGALRM", 15: "SIGTERM",
        ]
        return names[number] ?? "SIG\(number)"
    }

    /// Spawns one at a time: a pipe is briefly not close-on-exec while it is made, and no other child may inherit
    /// it then.
    private static let spawning = Mutex(())

    /// Starts the worker binary again in child mode, with the job pipe on fd 3 and the outcome pipe on fd 4.
    static func spawn(name: String, number: Int) throws(CeleryWorkerError) -> PoolProcess {
        try spawning.withLock { _ throws(CeleryWorkerError) in try spawnAlone(name: name, number: number) }
    }

    private static func spawnAlone(name: String, number: Int) throws(CeleryWorkerError) -> PoolProcess {
        func failure(_ what: String) -> CeleryWorkerError {
            CeleryWorkerError(code: .invalidConfiguration, message: "\(what): \(String(cString: strerror(errno)))")
        }
        // Pipe ends above the standard and child descriptors, all close-on-exec: only the dup2'd copies reach the
        // child, so no child holds another's pipes.
        func pipePair() throws(CeleryWorkerError) -> (read: Int32, write: Int32) {
            var fds: [Int32] = [0, 0]
            guard pipe(&fds) == 0 else { throw failure("pipe") }
            let read = fcntl(fds[0], F_DUPFD_CLOEXEC, 10)
            let write = fcntl(fds[1], F_DUPFD_CLOEXEC, 10)
            close(fds[0])
            close(fds[1])
            guard read >= 0, write >= 0 else { throw failure("fcntl") }
            return (read, write)
        }
        let jobs = try pipePair()
        let outcomes = try pipePair()
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, jobs.read, PoolFrames.jobDescriptor)
        posix_spawn_file_actions_adddup2(&actions, outcomes.write, PoolFrames.outcomeDescriptor)

        var environment = ProcessInfo.processInfo.environment
        environment[ProcessPool.childVariable] = String(number)
        // A child that crashes should end at once, as a Python child does: Swift's backtracer can hold a crashing
        // process for seconds (much longer on a loaded machine) while its task's slot waits. The runtime still
        // prints the fatal error; the worker logs how the child ended. Set SWIFT_BACKTRACE to have backtraces.
        if environment["SWIFT_BACKTRACE"] == nil { environment["SWIFT_BACKTRACE"] = "enable=no" }
        let arguments = CommandLine.arguments.map { strdup($0) } + [nil]
        let variables = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            for pointer in arguments { free(pointer) }
            for pointer in variables { free(pointer) }
        }
        var pid: Int32 = 0
        let result = posix_spawn(&pid, "/proc/self/exe", &actions, nil, arguments, variables)
        close(jobs.read)
        close(outcomes.write)
        guard result == 0 else {
            close(jobs.write)
            close(outcomes.read)
            errno = result
            throw failure("posix_spawn")
        }
        return PoolProcess(pid: pid, name: name, input: jobs.write, output: outcomes.read)
    }
}
