import DequeModule
import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// A fixed set of dedicated threads that run executor jobs and blocking closures in the order they arrive.
///
/// The worker uses three kinds: one thread per Redis connection that owns the connection's blocking socket (the
/// process pool's fetch loop runs on the fetch connection's), one thread for the process pool's bookkeeping
/// (dispatching, settling, remote control), and the event-loop set of the solo and thread pools, which runs the
/// fetch loop, the bookkeeping and the task bodies, and reads the broker's and the backend's replies. Work handed to
/// a set wakes one of its threads when any is asleep; a busy thread takes the next item as soon as it finishes the
/// one it runs.
///
/// Spinning before sleeping was measured and dropped: on a 2-core machine the spinning threads took the core from
/// the busy ones.
///
/// A set made with `eventLoop` can also wait for sockets: a ``PolledSource`` it is told to ``watch(_:)`` (a Redis
/// connection with requests in flight) is polled whenever nothing is queued, and its replies are handed on as they
/// become readable, so the thread runs tasks while Redis works instead of blocking for each reply.
///
/// An event-loop set of several threads (the thread pool: concurrency + 1) runs in leader mode: one thread at a time,
/// the leader, serves the queue and polls the sources, so the hand-offs between the fetch loop, the bookkeeping and
/// the tasks are queue pushes on one thread, as in the solo pool, and no reply wakes a second thread. The other
/// threads wait for the lead. A job that keeps the leader for longer than ``LeaderWatchdog/patience`` (a task body
/// that blocks or computes) is left to that thread: the ``LeaderWatchdog`` demotes the leader, a waiting thread takes
/// the lead, and the demoted thread waits for the lead again once the job is done. So blocking bodies still run side
/// by side, at most one per thread, while short ones cost no thread hop at all.
///
/// `@unchecked Sendable`: `queue`, `idleQueue`, `watched`, `rewatched`, `sleepers`, `polling`, `stopping`, `alive` and
/// `leaderPresent` are only read or written with `mutex` held; `epoch` is atomic (written with `mutex` held); the
/// pthread objects are created in `init` and never freed (a set lives as long as its owner, and its threads may
/// still be finishing when the owner is released); the wake pipe is created in `init` and closed in `deinit`, which
/// runs only once no thread is left (each holds the set).
///
/// `@exclusivity(unchecked)` on the properties `mutex` guards: each access is made with `mutex` held, inside one
/// `locked` body that calls nothing that could reach the same property, so no two accesses ever overlap. The
/// runtime's checks of overlapping accesses (about 50 per task, on every push and every look for the next item)
/// cost about 3 % of the instructions of a task at idle and could never find one.
final class WorkerThreads: TaskExecutor, @unchecked Sendable {
    fileprivate enum Item {
        case job(UnownedJob)
        case closure(@Sendable () -> Void)
    }

    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let condition: UnsafeMutablePointer<pthread_cond_t>
    @exclusivity(unchecked) private var queue = Deque<Item>()
    /// Items that run only when `queue` is empty (``whenIdle()``).
    @exclusivity(unchecked) private var idleQueue = Deque<Item>()
    /// The sources polled when nothing is queued (``watch(_:)``): a handful at most, searched rather than hashed.
    @exclusivity(unchecked) private var watched: [any PolledSource] = []
    /// Sources watched again while already watched, since the last poll that found some to drop: a poll that found
    /// one awaiting nothing when it began does not drop it (a request written meanwhile, by a thread demoted since it
    /// checked that it leads, awaits a reply that only a poll would read).
    @exclusivity(unchecked) private var rewatched: [ObjectIdentifier] = []
    /// Whether the leader waits in `poll`: a push then writes to the wake pipe instead of signalling `condition`.
    @exclusivity(unchecked) private var polling = false
    /// A non-blocking pipe that wakes the leader from `poll` (read end, write end); only in an event-loop set
    /// (`-1` otherwise).
    private let wakePipe: (read: Int32, write: Int32)
    @exclusivity(unchecked) private var sleepers = 0
    @exclusivity(unchecked) private var stopping = false
    @exclusivity(unchecked) private var alive = 0
    let name: String
    /// Whether the set runs in leader mode (an event-loop set of several threads).
    private let leaders: Bool
    /// Where threads wait for the lead (leader mode).
    private let vacancy: UnsafeMutablePointer<pthread_cond_t>
    /// Whether a thread leads now (leader mode).
    @exclusivity(unchecked) private var leaderPresent = false
    /// Advances whenever a leader is demoted: a thread leads while its ``ThreadState/leaderEpoch`` is this one.
    private let epoch = Atomic<UInt64>(0)
    /// Demotes a leader that one job keeps too long (leader mode).
    private let watchdog: LeaderWatchdog?

    /// Starts `count` threads named `name`; with `eventLoop`, threads that can also wait for sockets (see
    /// ``watch(_:)``), in leader mode when there are several.
    init(count: Int, name: String, eventLoop: Bool = false) {
        self.name = name
        let count = max(1, count)
        leaders = eventLoop && count > 1
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
        condition = .allocate(capacity: 1)
        condition.initialize(to: pthread_cond_t())
        pthread_cond_init(condition, nil)
        vacancy = .allocate(capacity: 1)
        vacancy.initialize(to: pthread_cond_t())
        pthread_cond_init(vacancy, nil)
        wakePipe = eventLoop ? Self.makeWakePipe() : (-1, -1)
        watchdog = leaders ? LeaderWatchdog() : nil
        for number in 0..<count {
            let label = count > 1 ? "\(name)-\(number)" : name
            if Self.spawn(label, body: { [self] in self.serve() }) {
                locked { alive += 1 }
            }
        }
        // Should the system refuse the watchdog its thread, a body that blocks holds up the set, as in the solo pool.
        watchdog?.start(watching: self)
    }

    /// Starts `count` more threads (a process pool that grows needs a thread to wait on each child). Not in leader
    /// mode, where the set is the event loop of a fixed pool.
    func addThreads(_ count: Int) {
        precondition(!leaders, "a leader-mode set does not grow")
        let first = locked { alive }
        for number in first..<(first + count) {
            if Self.spawn("\(name)-\(number)", body: { [self] in self.serve() }) {
                locked { alive += 1 }
            }
        }
    }

    deinit {
        if wakePipe.read >= 0 {
            close(wakePipe.read)
            close(wakePipe.write)
        }
    }

    func enqueue(_ job: consuming ExecutorJob) {
        push(.job(UnownedJob(job)))
    }

    /// Runs `body` on one of the threads.
    func submit(_ body: @escaping @Sendable () -> Void) {
        push(.closure(body))
    }

    /// Runs `body` on one of the threads and returns its result to the calling task.
    func run<Result: Sendable, Failure: Error>(
        _ body: @escaping @Sendable () throws(Failure) -> Result
    ) async throws(Failure) -> Result {
        let outcome = await withUnsafeContinuation { (continuation: UnsafeContinuation<Swift.Result<Result, Failure>, Never>) in
            submit { continuation.resume(returning: Swift.Result { () throws(Failure) -> Result in try body() }) }
        }
        return try outcome.get()
    }

    /// Runs `body`, in which a job handed to a leader-mode set (a continuation resumed) goes to the front of its
    /// queue rather than the back; elsewhere it is queued as usual.
    static func resumingFirst(_ body: () -> Void) {
        guard let raw = pthread_getspecific(threadStateKey) else { return body() }
        let state = Unmanaged<ThreadState>.fromOpaque(raw).takeUnretainedValue()
        state.pushesFirst = true
        body()
        state.pushesFirst = false
    }

    /// Resumes once the set has nothing else queued to run: for work that gains from waiting for the work queued now
    /// (the event loop's settler then writes the results of every task that ran before it in one request). The
    /// calling task must prefer this executor.
    func whenIdle() async {
        await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
            push(.closure({ continuation.resume() }), idle: true)
        }
    }

    /// Whether this set was made with `eventLoop`.
    var isEventLoop: Bool { wakePipe.read >= 0 }

    /// Whether the calling thread is the thread of this event-loop set (in leader mode: its leader now).
    var isEventLoopThread: Bool {
        guard isEventLoop, let raw = pthread_getspecific(threadStateKey) else { return false }
        let state = Unmanaged<ThreadState>.fromOpaque(raw).takeUnretainedValue()
        return state.owner == ObjectIdentifier(self) && leads(state)
    }

    /// Whether `state`'s thread leads (always, outside leader mode).
    private func leads(_ state: ThreadState) -> Bool {
        !leaders || state.leaderEpoch == epoch.load(ordering: .acquiring)
    }

    /// Polls `source` whenever nothing is queued, until it awaits nothing more. Only in an event-loop set, and only
    /// from its thread (``isEventLoopThread``).
    func watch(_ source: any PolledSource) {
        let wake = locked { () -> Bool in
            if !watched.contains(where: { $0 === source }) {
                watched.append(source)
            } else if !rewatched.contains(ObjectIdentifier(source)) {
                rewatched.append(ObjectIdentifier(source))
            }
            // In leader mode the caller may have been demoted since it checked: the leader must poll this too.
            return leaders && wakeLeader()
        }
        if wake { pthread_cond_signal(condition) }
    }

    /// Lets the threads exit once the queue is empty. Anything submitted later still runs, on a thread of its own.
    func shutdown() {
        locked {
            stopping = true
            pthread_cond_broadcast(condition)
            pthread_cond_broadcast(vacancy)
        }
        watchdog?.stop()
    }

    /// Demotes the leader if it still runs the job numbered `serial` (``LeaderWatchdog``): a waiting thread takes the
    /// lead, and the demoted one waits for it again once that job is done. Decided with `mutex` held, which the
    /// leader holds whenever it looks for its next item: a leader is only ever demoted inside a job, never while it
    /// polls, so no two threads ever poll the same sources.
    func demoteLeader(ifRunning serial: UInt64) {
        locked {
            guard leaders, leaderPresent, let watchdog, watchdog.running.load(ordering: .acquiring) == serial else { return }
            epoch.wrappingAdd(1, ordering: .releasing)
            leaderPresent = false
            // The job is the demoted thread's now: no later tick may take it for the next leader's.
            watchdog.running.store(0, ordering: .releasing)
            pthread_cond_signal(vacancy)
        }
    }

    /// Waits until no thread leads and takes the lead (leader mode); `false` when stopping with a leader present
    /// (the thread then exits).
    private func awaitLead(_ state: ThreadState) -> Bool {
        locked { () -> Bool in
            while leaderPresent {
                if stopping {
                    alive -= 1
                    return false
                }
                pthread_cond_wait(vacancy, mutex)
            }
            leaderPresent = true
            state.leaderEpoch = epoch.load(ordering: .relaxed)
            return true
        }
    }

    /// Wakes the leader from `poll` (through the wake pipe) or from its sleep; with `mutex` held. `true` when the
    /// caller must signal `condition` once it has let go of `mutex`.
    private func wakeLeader() -> Bool {
        if polling {
            polling = false
            var byte: UInt8 = 1
            _ = write(wakePipe.write, &byte, 1)
            return false
        }
        return sleepers > 0
    }

    /// The next job the calling thread hands to its own set is left for this thread, without waking another one,
    /// unless the current job has kept one already: a loop that hands out several jobs in one go keeps the first for
    /// this thread (which is free once the loop waits again) and wakes other threads for the rest, so they still run
    /// in parallel. For a job the caller waits for right away: the thread runs it as soon as its current job suspends
    /// or ends, instead of handing it to a thread that first has to be woken.
    static func keepFirstJobOnThisThread() {
        guard let raw = pthread_getspecific(threadStateKey) else { return }
        let state = Unmanaged<ThreadState>.fromOpaque(raw).takeUnretainedValue()
        if !state.keptThisTurn { state.keepsNextJob = true }
    }

    fileprivate func push(_ item: Item, idle: Bool = false) {
        var keptHere = false
        var first = false
        if let raw = pthread_getspecific(threadStateKey) {
            let state = Unmanaged<ThreadState>.fromOpaque(raw).takeUnretainedValue()
            // A demoted thread keeps nothing: the leader takes the job, and must be woken for it.
            if state.keepsNextJob, state.owner == ObjectIdentifier(self), leads(state) {
                state.keepsNextJob = false
                state.keptThisTurn = true
                keptHere = true
            }
            first = leaders && state.pushesFirst && !idle
        }
        let wake = locked { () -> Bool? in
            if alive == 0 { return nil }
            if idle {
                idleQueue.append(item)
            } else if first {
                queue.prepend(item)
            } else {
                queue.append(item)
            }
            return wakeLeader() && !keptHere
        }
        switch wake {
        case nil:
            // Every thread has exited (after shutdown): a job must still run, or the task awaiting it never resumes.
            _ = Self.spawn(name) { [self] in run(item) }
        case true?:
            pthread_cond_signal(condition)
        case false?:
            break
        }
    }

    private func serve() {
        let state = ThreadState(owner: ObjectIdentifier(self))
        pthread_setspecific(threadStateKey, Unmanaged.passUnretained(state).toOpaque())
        withExtendedLifetime(state) {
            var runSincePoll = 0
            while true {
                if leaders, !leads(state) {
                    // Not leading yet, or demoted during the job that just ended: wait for the lead.
                    guard awaitLead(state) else { return }
                    runSincePoll = 0
                }
                switch next(state) {
                case .run(let item):
                    if let watchdog {
                        let serial = watchdog.jobStarts()
                        run(item, state)
                        watchdog.jobEnds(serial)
                    } else {
                        run(item, state)
                    }
                    runSincePoll += 1
                    if runSincePoll == Self.itemsBetweenPolls {
                        // A queue that never empties (a task that yields in a loop) must not keep replies unread.
                        runSincePoll = 0
                        let any = wakePipe.read >= 0 && locked { leads(state) && state.pollBuffers.take(watched) }
                        if any { poll(state, waiting: false) }
                    }
                case .poll:
                    runSincePoll = 0
                    poll(state, waiting: true)
                case .demoted:
                    continue
                case .exit:
                    return
                }
            }
        }
        pthread_setspecific(threadStateKey, nil)
    }

    private enum Step {
        case run(Item)
        /// Poll the watched sources (taken into the thread's ``PollBuffers/sources``).
        case poll
        /// Leader mode: the thread was demoted during its last job.
        case demoted
        case exit
    }

    /// The next item, sleeping until one arrives; the watched sources to poll when nothing is queued; `exit` once
    /// stopped, drained and awaiting nothing.
    private func next(_ state: ThreadState) -> Step {
        locked { () -> Step in
            while true {
                if leaders, state.leaderEpoch != epoch.load(ordering: .relaxed) { return .demoted }
                if let item = queue.popFirst() ?? idleQueue.popFirst() { return .run(item) }
                if state.pollBuffers.take(watched) {
                    polling = true
                    return .poll
                }
                if stopping {
                    alive -= 1
                    if leaders {
                        // The threads waiting for the lead exit too.
                        leaderPresent = false
                        pthread_cond_broadcast(vacancy)
                    }
                    return .exit
                }
                sleepers += 1
                pthread_cond_wait(condition, mutex)
                sleepers -= 1
            }
        }
    }

    /// How many items an event-loop thread runs in a row at most before it reads the replies that came meanwhile.
    static let itemsBetweenPolls = 64

    /// Waits (or with `waiting` false, only looks) until a watched source is readable or overdue, or an item is
    /// pushed, and lets each readable source hand its replies on (resuming the tasks that wait for them, which
    /// queues their jobs here). A source that awaits nothing more is no longer watched.
    ///
    /// The sources are the ones `state` took (``PollBuffers/take(_:)``); its arrays are taken out while this runs and
    /// put back emptied, their room kept: a poll, which the leader runs before almost every task at idle, allocates
    /// nothing.
    private func poll(_ state: ThreadState, waiting: Bool) {
        var buffers = state.pollBuffers
        state.pollBuffers = PollBuffers()
        defer {
            buffers.clear()
            state.pollBuffers = buffers
        }
        buffers.descriptors.append(pollfd(fd: wakePipe.read, events: Int16(POLLIN), revents: 0))
        var deadline: ContinuousClock.Instant?
        for source in buffers.sources {
            guard let awaited = source.awaited() else {
                buffers.done.append(ObjectIdentifier(source))
                continue
            }
            buffers.descriptors.append(pollfd(fd: awaited.descriptor, events: Int16(POLLIN), revents: 0))
            buffers.polled.append(source)
            deadline = min(deadline ?? awaited.deadline, awaited.deadline)
        }
        var timeout: Int32 = waiting ? -1 : 0
        if waiting, let deadline {
            let (seconds, attoseconds) = (deadline - .now).components
            timeout = Int32(clamping: max(0, seconds * 1000 + attoseconds / 1_000_000_000_000_000 + 1))
        }
        if !buffers.polled.isEmpty { _ = Glibc.poll(&buffers.descriptors, nfds_t(buffers.descriptors.count), timeout) }
        if waiting { locked { polling = false } }
        if buffers.descriptors[0].revents != 0 {
            var drained = (UInt64(0), UInt64(0))
            _ = read(wakePipe.read, &drained, 16)
        }
        let now = ContinuousClock.now
        for (index, source) in buffers.polled.enumerated() {
            if buffers.descriptors[index + 1].revents != 0 {
                if !source.pump() { buffers.done.append(ObjectIdentifier(source)) }
            } else if let deadline, deadline <= now, let awaited = source.awaited(), awaited.deadline <= now {
                source.expire()
                buffers.done.append(ObjectIdentifier(source))
            }
        }
        if !buffers.done.isEmpty {
            locked {
                watched.removeAll { source in
                    buffers.done.contains(ObjectIdentifier(source)) && !rewatched.contains(ObjectIdentifier(source))
                }
                rewatched.removeAll(keepingCapacity: true)
            }
        }
    }

    /// A non-blocking, close-on-exec pipe; `(-1, -1)` when the system refused.
    private static func makeWakePipe() -> (read: Int32, write: Int32) {
        var descriptors: [Int32] = [-1, -1]
        guard pipe(&descriptors) == 0 else { return (-1, -1) }
        for descriptor in descriptors {
            _ = fcntl(descriptor, F_SETFL, fcntl(descriptor, F_GETFL) | O_NONBLOCK)
            _ = fcntl(descriptor, F_SETFD, FD_CLOEXEC)
        }
        return (descriptors[0], descriptors[1])
    }

    /// Runs an item the serving thread took, then resets what the item left in the thread's state.
    private func run(_ item: Item, _ state: ThreadState) {
        run(item)
        state.keepsNextJob = false  // a hand-off announced but not made must not hold back a later job
        state.keptThisTurn = false
    }

    private func run(_ item: Item) {
        switch item {
        case .job(let job): job.runSynchronously(on: asUnownedTaskExecutor())
        case .closure(let body): body()
        }
    }

    private func locked<T>(_ body: () -> T) -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return body()
    }

    /// Starts a detached thread running `body`; `false` when the system refused.
    @discardableResult
    static func spawn(_ name: String, body: @escaping () -> Void) -> Bool {
        final class Box {
            let name: String
            let body: () -> Void
            init(name: String, body: @escaping () -> Void) {
                self.name = name
                self.body = body
            }
        }
        let box = Unmanaged.passRetained(Box(name: name, body: body)).toOpaque()
        var thread = pthread_t()
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        defer { pthread_attr_destroy(&attributes) }
        pthread_attr_setdetachstate(&attributes, Int32(PTHREAD_CREATE_DETACHED))
        let status = pthread_create(
            &thread, &attributes,
            { argument in
                guard let argument else { return nil }
                let box = Unmanaged<Box>.fromOpaque(argument).takeRetainedValue()
                nameThisThread(box.name)
                box.body()
                return nil
            }, box)
        if status != 0 {
            Unmanaged<Box>.fromOpaque(box).release()
            return false
        }
        return true
    }
}

/// What a one-thread ``WorkerThreads`` set polls while nothing is queued: a Redis connection with requests in
/// flight. Only that thread calls these.
protocol PolledSource: AnyObject, Sendable {
    /// The descriptor to wait on and when the oldest awaited reply is overdue; `nil` when nothing is awaited.
    func awaited() -> (descriptor: Int32, deadline: ContinuousClock.Instant)?
    /// Reads what is readable and hands complete replies on; `false` once nothing more is awaited.
    func pump() -> Bool
    /// The deadline passed without a reply: fails everything awaited.
    func expire()
}

/// What a thread of a ``WorkerThreads`` set knows about itself, in its thread-local slot. Only that thread reads or
/// writes it.
///
/// `@exclusivity(unchecked)`: each property is read and written by that one thread only, one access at a time (no
/// access spans a call that could reach the same property), so the runtime's checks of overlapping accesses, run on
/// every access to a class's property and measurable on the path of every job, could never find one.
private final class ThreadState {
    let owner: ObjectIdentifier
    @exclusivity(unchecked) var keepsNextJob = false
    /// Whether the job running now already kept a job for this thread.
    @exclusivity(unchecked) var keptThisTurn = false
    /// Whether the jobs this thread pushes now go to the front of a leader-mode set's queue
    /// (``WorkerThreads/resumingFirst(_:)``).
    @exclusivity(unchecked) var pushesFirst = false
    /// The epoch in which this thread took the lead (leader mode); it leads while that is the set's epoch.
    @exclusivity(unchecked) var leaderEpoch: UInt64 = .max
    /// The arrays of this thread's polls, kept with their room between polls (``WorkerThreads/poll(_:waiting:)``
    /// takes them out while it runs).
    @exclusivity(unchecked) var pollBuffers = PollBuffers()

    init(owner: ObjectIdentifier) {
        self.owner = owner
    }
}

/// What one poll works with: the watched sources taken for it, the descriptors polled, the sources they belong to,
/// and the sources found to await nothing more.
private struct PollBuffers {
    var sources: [any PolledSource] = []
    var descriptors: [pollfd] = []
    var polled: [any PolledSource] = []
    var done: [ObjectIdentifier] = []

    /// Takes the watched sources for a poll (with the set's `mutex` held); `false` when there are none.
    mutating func take(_ watched: [any PolledSource]) -> Bool {
        if watched.isEmpty { return false }
        sources.append(contentsOf: watched)
        return true
    }

    /// Empties every array and keeps its room (the sources are released).
    mutating func clear() {
        sources.removeAll(keepingCapacity: true)
        descriptors.removeAll(keepingCapacity: true)
        polled.removeAll(keepingCapacity: true)
        done.removeAll(keepingCapacity: true)
    }
}

/// The thread-local slot of ``ThreadState``.
private let threadStateKey: pthread_key_t = {
    var key = pthread_key_t()
    pthread_key_create(&key, nil)
    return key
}()

/// Names the calling thread (shown by `top -H`, `perf`, `/proc`); Glibc's `pthread_setname_np` is not visible to
/// Swift, so this writes the thread's `comm` file.
private func nameThisThread(_ name: String) {
    let descriptor = open("/proc/thread-self/comm", O_WRONLY)
    guard descriptor >= 0 else { return }
    defer { close(descriptor) }
    let bytes = Array(name.utf8.prefix(15))
    _ = bytes.withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
}
