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
/// fetch loop runs on the fetch connection's, except at idle in the thread pool with the backend on the broker's
/// server, where its blocking pop waits on a task thread), one thread for the worker's own bookkeeping (dispatching,
/// settling, remote control), and one thread per unit of concurrency for task bodies (one more when the blocking pop
/// may wait there). Work handed to a set wakes one of its threads when any is asleep; a busy thread takes the next
/// item as soon as it finishes the one it runs.
///
/// Spinning before sleeping was measured and dropped: on a 2-core machine the spinning threads took the core from
/// the busy ones.
///
/// A set made with `eventLoop` (one thread: the solo pool's) can also wait for sockets: a ``PolledSource`` it is told
/// to ``watch(_:)`` (a Redis connection with requests in flight) is polled whenever nothing is queued, and its replies
/// are handed on as they become readable, so the thread runs tasks while Redis works instead of blocking for each
/// reply.
///
/// `@unchecked Sendable`: `queue`, `idleQueue`, `watched`, `sleepers`, `polling`, `stopping` and `alive` are only
/// read or written with `mutex` held; the pthread objects are created in `init` and never freed (a set lives as long
/// as its owner, and its threads may still be finishing when the owner is released); the wake pipe is created in
/// `init` and closed in `deinit`, which runs only once no thread is left (each holds the set).
final class WorkerThreads: TaskExecutor, @unchecked Sendable {
    fileprivate enum Item {
        case job(UnownedJob)
        case closure(@Sendable () -> Void)
    }

    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let condition: UnsafeMutablePointer<pthread_cond_t>
    private var queue = Deque<Item>()
    /// Items that run only when `queue` is empty (``whenIdle()``).
    private var idleQueue = Deque<Item>()
    /// The sources polled when nothing is queued (``watch(_:)``).
    private var watched: [ObjectIdentifier: any PolledSource] = [:]
    /// Whether the thread waits in `poll`: a push then writes to the wake pipe instead of signalling `condition`.
    private var polling = false
    /// A non-blocking pipe that wakes the thread from `poll` (read end, write end); only in an event-loop set
    /// (`-1` otherwise).
    private let wakePipe: (read: Int32, write: Int32)
    private var sleepers = 0
    private var stopping = false
    private var alive = 0
    let name: String
    /// How many threads the set has.
    private let count: Int
    /// How many sleeping threads an item does not wake while no thread is in ``whileBlocked(_:)``, unless it is a
    /// task moved there (``moveToAnotherThread()``).
    private let reserve: Int
    /// Threads in ``whileBlocked(_:)`` now.
    private var blocked = 0

    /// Starts `count` threads named `name`; with `eventLoop`, one thread that can also wait for sockets (see
    /// ``watch(_:)``).
    ///
    /// - Parameter reserve: threads kept for tasks moved to them (``moveToAnotherThread()``): an item wakes a sleeping
    ///   thread only while more than `reserve` sleep, less one for each thread in ``whileBlocked(_:)``. The thread pool
    ///   keeps one for its blocking pop at idle, so that under load, with every other thread busy, a job waits for one
    ///   of them (as in a set without the extra thread) rather than waking the one in reserve, which would cost a
    ///   wake-up per job.
    init(count: Int, name: String, eventLoop: Bool = false, reserve: Int = 0) {
        self.name = name
        self.count = eventLoop ? 1 : max(1, count)
        self.reserve = eventLoop ? 0 : min(max(0, reserve), self.count - 1)
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
        condition = .allocate(capacity: 1)
        condition.initialize(to: pthread_cond_t())
        pthread_cond_init(condition, nil)
        wakePipe = eventLoop ? Self.makeWakePipe() : (-1, -1)
        for number in 0..<self.count {
            let label = count > 1 ? "\(name)-\(number)" : name
            if Self.spawn(label, body: { [self] in self.serve() }) {
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

    /// Suspends the calling task and resumes it on a thread of this set that is woken for it (or that is free
    /// first), leaving the calling thread to the jobs it kept for itself (``keepNextJobOnThisThread()``). The calling
    /// task must prefer this executor.
    ///
    /// With `lazily`, no thread is woken for it at first: the calling thread resumes it itself once it has run out
    /// of kept jobs, unless a task body it runs meanwhile (between ``armDeferredMove()`` and
    /// ``DeferredMove/disarm()``) takes longer than ``DeferredMove/patience``, in which case a timer hands it to the
    /// set then. For the thread pool's fetch loop at idle: waking the next popping thread while the message's task
    /// runs costs that task more than the wake-up itself (the woken thread competes for a CPU on the way to the
    /// result); a short task is done long before the patience runs out, and a long one holds up the next pop by at
    /// most the patience.
    func moveToAnotherThread(lazily: Bool = false) async {
        await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
            let resume: @Sendable () -> Void = {
                // The task's next job runs on the thread that runs this, without waking another one.
                WorkerThreads.keepNextJobOnThisThread()
                continuation.resume()
            }
            // Handed out only once the current job has ended (the task has suspended): resumed earlier, the task would
            // not suspend at all and go on on this thread.
            if let raw = pthread_getspecific(threadStateKey),
                case let state = Unmanaged<ThreadState>.fromOpaque(raw).takeUnretainedValue(),
                state.owner == ObjectIdentifier(self)
            {
                if lazily {
                    let deferred = state.deferred ?? DeferredMove(set: self)
                    state.deferred = deferred
                    deferred.hold(.closure(resume))
                    state.holdsDeferred = true
                } else {
                    state.afterJob = .closure(resume)
                }
            } else {
                push(.closure(resume), moving: true)
            }
        }
    }

    /// Runs `body`, which blocks the calling thread (one of this set's) for long, such as a blocking pop: meanwhile a
    /// thread kept in reserve is woken for work as any other (and at once for work that is queued already).
    func whileBlocked<Result, Failure: Error>(_ body: () throws(Failure) -> Result) throws(Failure) -> Result {
        let wake = locked { () -> Bool in
            blocked += 1
            return !queue.isEmpty && sleepers > 0
        }
        if wake { pthread_cond_signal(condition) }
        defer { locked { blocked -= 1 } }
        return try body()
    }

    /// Arms the timer of the move the calling thread holds back (``moveToAnotherThread(lazily:)``), if it holds one,
    /// before a task body that may run long; returns what the caller disarms once the body has returned.
    static func armDeferredMove() -> DeferredMove? {
        guard let raw = pthread_getspecific(threadStateKey) else { return nil }
        let state = Unmanaged<ThreadState>.fromOpaque(raw).takeUnretainedValue()
        guard state.holdsDeferred, let deferred = state.deferred, deferred.arm() else { return nil }
        return deferred
    }

    /// Resumes once the set has nothing else queued to run: for work that gains from waiting for the work queued now
    /// (the solo pool's settler then writes the results of every task that ran before it in one request). The
    /// calling task must prefer this executor.
    func whenIdle() async {
        await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
            push(.closure({ continuation.resume() }), idle: true)
        }
    }

    /// Whether this set was made with `eventLoop`.
    var isEventLoop: Bool { wakePipe.read >= 0 }

    /// Whether the calling thread is the thread of this event-loop set.
    var isEventLoopThread: Bool { isEventLoop && isOwnThread }

    /// Whether the calling thread is one of this set's.
    var isOwnThread: Bool {
        guard let raw = pthread_getspecific(threadStateKey) else { return false }
        return Unmanaged<ThreadState>.fromOpaque(raw).takeUnretainedValue().owner == ObjectIdentifier(self)
    }

    /// Polls `source` whenever nothing is queued, until it awaits nothing more. Only in an event-loop set, and only
    /// from its thread (``isEventLoopThread``).
    func watch(_ source: any PolledSource) {
        locked { watched[ObjectIdentifier(source)] = source }
    }

    /// Lets the threads exit once the queue is empty. Anything submitted later still runs, on a thread of its own.
    func shutdown() {
        locked {
            stopping = true
            pthread_cond_broadcast(condition)
        }
    }

    /// The next job the calling thread hands to its own set is left for this thread, without waking another one.
    ///
    /// For a job the caller waits for right away (a task body its bookkeeping awaits, or that bookkeeping once the
    /// body is done): the thread runs it as soon as its current job suspends or ends, instead of handing it to a
    /// thread that first has to be woken. Only worth it when the current job does nothing long after the hand-off.
    ///
    /// With `strictly`, in a set of several threads, no other thread may take the job, nor any job this thread keeps
    /// until it has run out of kept jobs: they wait in the thread's own queue instead of the shared one. For a chain
    /// of hand-offs that must stay on this thread while another thread is woken for other work (the thread pool's
    /// message from a blocking pop at idle, its receiving, dispatching and task, while another thread takes the next
    /// pop): that thread would otherwise take the first of them from the shared queue.
    static func keepNextJobOnThisThread(strictly: Bool = false) {
        guard let raw = pthread_getspecific(threadStateKey) else { return }
        let state = Unmanaged<ThreadState>.fromOpaque(raw).takeUnretainedValue()
        state.keepsNextJob = true
        if strictly { state.strictly = true }
    }

    /// Like ``keepNextJobOnThisThread()``, but only when the current job has not kept one yet: a loop that hands
    /// out several jobs in one go keeps the first for this thread (which is free once the loop waits again) and
    /// wakes other threads for the rest, so they still run in parallel.
    static func keepFirstJobOnThisThread() {
        guard let raw = pthread_getspecific(threadStateKey) else { return }
        let state = Unmanaged<ThreadState>.fromOpaque(raw).takeUnretainedValue()
        if !state.keptThisTurn { state.keepsNextJob = true }
    }

    fileprivate func push(_ item: Item, idle: Bool = false, moving: Bool = false) {
        var keptHere = false
        if let raw = pthread_getspecific(threadStateKey) {
            let state = Unmanaged<ThreadState>.fromOpaque(raw).takeUnretainedValue()
            if state.keepsNextJob, state.owner == ObjectIdentifier(self) {
                state.keepsNextJob = false
                state.keptThisTurn = true
                keptHere = true
                if state.strictly, count > 1, !idle {
                    state.kept.append(item)
                    return
                }
            }
        }
        let wake = locked { () -> Bool? in
            if alive == 0 { return nil }
            if idle { idleQueue.append(item) } else { queue.append(item) }
            if polling {
                polling = false
                var byte: UInt8 = 1
                _ = write(wakePipe.write, &byte, 1)
                return false
            }
            return sleepers > (moving ? 0 : max(0, reserve - blocked)) && !keptHere
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
                if state.strictly {
                    if let item = state.kept.popFirst() {
                        run(item, state)
                        continue
                    }
                    state.strictly = false
                }
                if state.holdsDeferred {
                    // Out of kept jobs: the held-back move goes on here, unless its timer handed it out already.
                    state.holdsDeferred = false
                    if let item = state.deferred?.take() {
                        run(item, state)
                        continue
                    }
                }
                switch next() {
                case .run(let item):
                    run(item, state)
                    runSincePoll += 1
                    if runSincePoll == Self.itemsBetweenPolls {
                        // A queue that never empties (a task that yields in a loop) must not keep replies unread.
                        runSincePoll = 0
                        let sources = wakePipe.read >= 0 ? locked { Array(watched.values) } : []
                        if !sources.isEmpty { poll(sources, waiting: false) }
                    }
                case .poll(let sources):
                    runSincePoll = 0
                    poll(sources, waiting: true)
                case .exit:
                    return
                }
            }
        }
        pthread_setspecific(threadStateKey, nil)
    }

    private enum Step {
        case run(Item)
        case poll([any PolledSource])
        case exit
    }

    /// The next item, sleeping until one arrives; the watched sources to poll when nothing is queued; `exit` once
    /// stopped, drained and awaiting nothing.
    private func next() -> Step {
        locked { () -> Step in
            while true {
                if let item = queue.popFirst() ?? idleQueue.popFirst() { return .run(item) }
                if !watched.isEmpty {
                    polling = true
                    return .poll(Array(watched.values))
                }
                if stopping {
                    alive -= 1
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
    private func poll(_ sources: [any PolledSource], waiting: Bool) {
        var descriptors = [pollfd(fd: wakePipe.read, events: Int16(POLLIN), revents: 0)]
        var polled: [any PolledSource] = []
        var done: [ObjectIdentifier] = []
        var deadline: ContinuousClock.Instant?
        for source in sources {
            guard let awaited = source.awaited() else {
                done.append(ObjectIdentifier(source))
                continue
            }
            descriptors.append(pollfd(fd: awaited.descriptor, events: Int16(POLLIN), revents: 0))
            polled.append(source)
            deadline = min(deadline ?? awaited.deadline, awaited.deadline)
        }
        var timeout: Int32 = waiting ? -1 : 0
        if waiting, let deadline {
            let (seconds, attoseconds) = (deadline - .now).components
            timeout = Int32(clamping: max(0, seconds * 1000 + attoseconds / 1_000_000_000_000_000 + 1))
        }
        if !polled.isEmpty { _ = Glibc.poll(&descriptors, nfds_t(descriptors.count), timeout) }
        if waiting { locked { polling = false } }
        if descriptors[0].revents != 0 {
            var drained = (UInt64(0), UInt64(0))
            _ = read(wakePipe.read, &drained, 16)
        }
        let now = ContinuousClock.now
        for (index, source) in polled.enumerated() {
            if descriptors[index + 1].revents != 0 {
                if !source.pump() { done.append(ObjectIdentifier(source)) }
            } else if let deadline, deadline <= now, let awaited = source.awaited(), awaited.deadline <= now {
                source.expire()
                done.append(ObjectIdentifier(source))
            }
        }
        if !done.isEmpty {
            locked {
                for identifier in done { watched.removeValue(forKey: identifier) }
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
        if let after = state.afterJob {
            state.afterJob = nil
            push(after, moving: true)
        }
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
    private static func spawn(_ name: String, body: @escaping () -> Void) -> Bool {
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
    /// Jobs kept strictly for this thread (in a set of several threads), run before it takes from the shared queue.
    @exclusivity(unchecked) var kept = Deque<WorkerThreads.Item>()
    /// Whether the jobs this thread keeps go to ``kept``: from a strict keep until ``kept`` is empty again.
    @exclusivity(unchecked) var strictly = false
    /// Handed to the set (any thread) once the job running now has ended (``WorkerThreads/moveToAnotherThread()``).
    @exclusivity(unchecked) var afterJob: WorkerThreads.Item?
    /// Whether the job running now already kept a job for this thread.
    @exclusivity(unchecked) var keptThisTurn = false
    /// This thread's held-back move (``WorkerThreads/moveToAnotherThread(lazily:)``), made at its first.
    @exclusivity(unchecked) var deferred: DeferredMove?
    /// Whether ``deferred`` may hold a move: checked once this thread runs out of kept jobs.
    @exclusivity(unchecked) var holdsDeferred = false

    init(owner: ObjectIdentifier) {
        self.owner = owner
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

/// A task's move to another thread, held back by one thread of a ``WorkerThreads`` set until it runs out of kept jobs
/// (see ``WorkerThreads/moveToAnotherThread(lazily:)``), with the timer that hands it to the set when a task body the
/// thread runs meanwhile takes too long. Whoever takes the move first (the thread, or the timer's callback on a
/// thread of its own) hands it on; the other finds nothing.
///
/// `@unchecked Sendable`: the move is only read or written with `pending`'s lock held; `timer` is created in `init`
/// and then only passed to `timer_settime`, which the system makes safe from any thread. An instance is never freed
/// (one per thread of the set, which lives as long as the process): the timer's callback holds an unretained
/// reference.
final class DeferredMove: @unchecked Sendable {
    /// How long a task body may run before the held-back move is handed out anyway.
    static let patience: Duration = .milliseconds(1)

    private let pending = Mutex<WorkerThreads.Item?>(nil)
    private let set: WorkerThreads
    /// `nil` when the system refused one: the move then goes out before a body rather than waiting for it.
    private let timer: timer_t?

    fileprivate init(set: WorkerThreads) {
        self.set = set
        let context = Unmanaged.passRetained(Box(nil)).toOpaque()
        var event = sigevent()
        event.sigev_notify = Int32(SIGEV_THREAD)
        event.sigev_value.sival_ptr = context
        event._sigev_un._sigev_thread._function = { value in
            guard let raw = value.sival_ptr, let move = Unmanaged<Box>.fromOpaque(raw).takeUnretainedValue().move else {
                return
            }
            move.handOut()
        }
        var created: timer_t?
        timer = timer_create(CLOCK_MONOTONIC, &event, &created) == 0 ? created : nil
        Unmanaged<Box>.fromOpaque(context).takeUnretainedValue().move = self
        _ = Unmanaged.passRetained(self)  // never freed: the timer's callback may run at any time
    }

    /// What the timer's callback finds this move by (set once, right after the timer is made).
    private final class Box: @unchecked Sendable {
        // Written once in `DeferredMove.init` before the timer can be armed, then only read.
        var move: DeferredMove?
        init(_ move: DeferredMove?) { self.move = move }
    }

    fileprivate func hold(_ item: WorkerThreads.Item) {
        pending.withLock { $0 = item }
    }

    /// The held-back move, if nobody took it yet.
    fileprivate func take() -> WorkerThreads.Item? {
        pending.withLock { pending in
            defer { pending = nil }
            return pending
        }
    }

    /// Hands the move to the set now (waking a thread), if nobody took it yet.
    fileprivate func handOut() {
        if let item = take() { set.push(item, moving: true) }
    }

    /// Starts the timer, if a move is held back; without a timer, hands the move out at once. `false` when there
    /// is nothing to disarm.
    fileprivate func arm() -> Bool {
        guard pending.withLock({ $0 != nil }) else { return false }
        guard let timer else {
            handOut()
            return false
        }
        let (seconds, attoseconds) = Self.patience.components
        var spec = itimerspec(
            it_interval: timespec(tv_sec: 0, tv_nsec: 0),
            it_value: timespec(tv_sec: Int(seconds), tv_nsec: Int(attoseconds / 1_000_000_000)))
        if timer_settime(timer, 0, &spec, nil) != 0 {
            handOut()
            return false
        }
        return true
    }

    /// Stops the timer once the body has returned (whatever became of the move).
    func disarm() {
        guard let timer else { return }
        var stop = itimerspec()
        _ = timer_settime(timer, 0, &stop, nil)
    }
}
