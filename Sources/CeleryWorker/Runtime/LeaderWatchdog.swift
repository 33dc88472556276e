import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Watches the leader of a leader-mode ``WorkerThreads`` set and demotes it when one job keeps it for longer than
/// ``patience``: a task body that blocks or computes, or a segment of one resumed after an `await`. Another thread
/// then serves the set while that one finishes the job.
///
/// Costs nothing a task waits for. The leader numbers each job it runs (``jobStarts()``, ``jobEnds(_:)``: two atomic
/// writes). The watchdog's thread ticks every ``patience`` while jobs keep starting, and demotes the leader when it
/// finds the same job running at two ticks in a row. It sleeps after a tick at which no job runs and none started
/// since the tick before. When the leader starts a job while the thread sleeps, it arms a one-shot timer instead of
/// waking the thread, and leaves it armed: the timer wakes the thread ``patience`` later, which then demotes the
/// leader if that job still runs, or ticks on while jobs keep starting. A message that comes to an idle worker thus
/// costs the leader one system call, and wakes no other thread on its way to the result; under load the thread
/// ticks and the leader makes no call at all. Measured (Benchmarks/JOURNAL.md): waking the watchdog's thread for
/// each message at idle, 0.42 ms against 0.33 ms idle pick-up; a timer armed around every task body, 10–15 µs per
/// task under load; a timer armed whenever the leader went from idle to a job and disarmed when it went idle
/// again, 4 µs per task under load (on this virtual machine each such call costs a few microseconds).
///
/// The timer is a `timerfd` the watchdog's thread reads while it sleeps, so a firing wakes that one thread. (A POSIX
/// timer notifies by a signal: with `SIGEV_THREAD` glibc starts a thread for each firing, which then wakes the
/// watchdog's, and any signal also wakes Dispatch's manager thread, which watches a `signalfd` for the worker's
/// SIGTERM: 2.1 more context switches per message at idle than this timer costs, `Benchmarks/JOURNAL.md`.)
///
/// `@unchecked Sendable`: `running`, `serial`, `ticking`, `armed`, `armedSerial`, `stopped` and `exited` are atomic;
/// `set` is written by ``start(watching:)`` before the thread starts, then only by that thread; `timer` is a
/// constant. The thread holds the instance until it exits, so the timer is closed only when no thread can use it.
final class LeaderWatchdog: @unchecked Sendable {
    /// How long one job may keep the leader: 1–2 ms under load, 1 ms for a job the leader started while idle.
    static let patience: Duration = .milliseconds(1)

    /// The number of the job the leader runs now; 0 between jobs.
    let running = Atomic<UInt64>(0)
    private let serial = Atomic<UInt64>(0)
    /// Whether the watchdog's thread ticks (rather than sleeping until the timer fires).
    private let ticking = Atomic<Bool>(false)
    /// Whether the timer is armed and the thread has not woken for it yet.
    private let armed = Atomic<Bool>(false)
    /// The job running when the timer was armed: still running when the timer fires, it has kept the leader too long.
    private let armedSerial = Atomic<UInt64>(0)
    private let stopped = Atomic<Bool>(false)
    private let exited = Atomic<Bool>(false)
    /// The timer's descriptor; `nil` when the system refused one: the thread then ticks for as long as it runs.
    private let timer: TimerDescriptor?
    private var set: WorkerThreads?

    init() {
        timer = TimerDescriptor()
        // Without a timer nothing could wake the thread for a job: it ticks from the start.
        if timer == nil { ticking.store(true, ordering: .sequentiallyConsistent) }
    }

    /// Starts the watchdog's thread, which holds `set` until ``stop()``; `false` when the system refused a thread
    /// (jobs then go unwatched).
    @discardableResult
    func start(watching set: WorkerThreads) -> Bool {
        self.set = set
        return WorkerThreads.spawn("celery-watchdog") { [self] in
            loop()
            self.set = nil
            exited.store(true, ordering: .releasing)
        }
    }

    /// Whether the thread has exited after ``stop()``.
    var hasExited: Bool { exited.load(ordering: .acquiring) }

    /// Lets the thread exit: at its next tick, or at once when it sleeps (the timer then fires at once).
    func stop() {
        stopped.store(true, ordering: .sequentiallyConsistent)
        _ = timer?.fire(after: .zero)
    }

    /// The leader starts a job: returns its number, for ``jobEnds(_:)``.
    func jobStarts() -> UInt64 {
        let number = serial.wrappingAdd(1, ordering: .relaxed).newValue | 1 << 63  // never 0
        running.store(number, ordering: .sequentiallyConsistent)
        // Either this sees the thread going to sleep, or the thread sees this job (both are sequentially consistent).
        if !ticking.load(ordering: .sequentiallyConsistent), !armed.load(ordering: .relaxed) {
            armed.store(true, ordering: .relaxed)
            armedSerial.store(number, ordering: .relaxed)
            // Cannot fail on a valid descriptor; should it, the thread runs unwatched until it wakes for another job.
            if timer?.fire(after: Self.patience) != true { armed.store(false, ordering: .relaxed) }
        }
        return number
    }

    /// The job numbered `number` ended (on the thread that started it, which may no longer lead).
    func jobEnds(_ number: UInt64) {
        _ = running.compareExchange(expected: number, desired: 0, ordering: .releasing)
    }

    private func loop() {
        guard let set else { return }
        while !stopped.load(ordering: .sequentiallyConsistent) {
            if !ticking.load(ordering: .sequentiallyConsistent) {
                // Until the timer fires: armed by the leader for a job, or by ``stop()``.
                guard timer?.wait() ?? true, !stopped.load(ordering: .sequentiallyConsistent) else { continue }
                // Ticking first: a job that starts from here on does not arm the timer again.
                ticking.store(true, ordering: .sequentiallyConsistent)
            }
            // Woken by the timer, which is spent: the job it was armed for has had its patience already.
            armed.store(false, ordering: .relaxed)
            var last = armedSerial.load(ordering: .relaxed)
            var started = serial.load(ordering: .relaxed)
            while !stopped.load(ordering: .sequentiallyConsistent) {
                let now = running.load(ordering: .sequentiallyConsistent)
                let count = serial.load(ordering: .relaxed)
                if now != 0, now == last {
                    set.demoteLeader(ifRunning: now)
                    last = 0
                } else if timer != nil, now == 0, count == started {
                    // No job started since the last tick: sleep until the leader arms the timer again.
                    ticking.store(false, ordering: .sequentiallyConsistent)
                    // A job that started before that store is seen here; one that starts after it arms the timer.
                    guard running.load(ordering: .sequentiallyConsistent) != 0 else { break }
                    ticking.store(true, ordering: .sequentiallyConsistent)
                } else {
                    last = now
                }
                started = count
                var pause = timespec(tv_sec: 0, tv_nsec: 1_000_000)
                _ = nanosleep(&pause, nil)
            }
        }
    }
}

/// A one-shot `timerfd` on the monotonic clock. Glibc's `<sys/timerfd.h>` is not in Swift's Glibc module, so its two
/// functions are looked up by name (glibc has had them since 2.8).
///
/// `Sendable`: the descriptor never changes; the kernel orders the calls made on it.
private final class TimerDescriptor: Sendable {
    /// `timerfd_create(clock, flags)`.
    private typealias Create = @convention(c) (Int32, Int32) -> Int32
    /// `timerfd_settime(descriptor, flags, new value, old value)`.
    private typealias SetTime =
        @convention(c) (
            Int32, Int32, UnsafePointer<itimerspec>, UnsafeMutablePointer<itimerspec>?
        ) -> Int32

    private static let functions: (create: Create, set: SetTime)? = {
        guard let create = dlsym(nil, "timerfd_create"), let set = dlsym(nil, "timerfd_settime") else { return nil }
        return (unsafeBitCast(create, to: Create.self), unsafeBitCast(set, to: SetTime.self))
    }()

    private let descriptor: Int32
    private let set: SetTime

    /// `nil` when the system has no `timerfd` or refused one.
    init?() {
        guard let functions = Self.functions else { return nil }
        let descriptor = functions.create(CLOCK_MONOTONIC, Int32(O_CLOEXEC))
        guard descriptor >= 0 else { return nil }
        self.descriptor = descriptor
        set = functions.set
    }

    deinit {
        close(descriptor)
    }

    /// Arms the timer to fire once `delay` from now (at once for zero), replacing any earlier arming.
    func fire(after delay: Duration) -> Bool {
        let (seconds, attoseconds) = delay.components
        // A zero value disarms a timerfd: the earliest firing is 1 ns.
        var spec = itimerspec(
            it_interval: timespec(tv_sec: 0, tv_nsec: 0),
            it_value: timespec(tv_sec: Int(seconds), tv_nsec: max(1, Int(attoseconds / 1_000_000_000))))
        return set(descriptor, 0, &spec, nil) == 0
    }

    /// Blocks until the timer has fired; `false` when interrupted first (by a signal).
    func wait() -> Bool {
        var expirations: UInt64 = 0
        return read(descriptor, &expirations, 8) == 8
    }
}
