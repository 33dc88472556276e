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
/// `@unchecked Sendable`: `running`, `serial`, `ticking`, `armed`, `armedSerial` and `stopped` are atomic; `set` is
/// written by ``start(watching:)`` before the thread starts, then only by that thread; the pthread objects and the
/// timer are made in `init` and never freed: an instance is never freed either (the timer's callback holds an
/// unretained reference, and may run at any time).
final class LeaderWatchdog: @unchecked Sendable {
    /// How long one job may keep the leader: 1–2 ms under load, 1 ms for a job the leader started while idle.
    static let patience: Duration = .milliseconds(1)

    /// The number of the job the leader runs now; 0 between jobs.
    let running = Atomic<UInt64>(0)
    private let serial = Atomic<UInt64>(0)
    /// Whether the watchdog's thread ticks (rather than sleeping until the timer or ``stop()`` wakes it).
    private let ticking = Atomic<Bool>(false)
    /// Whether the timer is armed and has not fired yet.
    private let armed = Atomic<Bool>(false)
    /// The job running when the timer was armed: still running when the timer fires, it has kept the leader too long.
    private let armedSerial = Atomic<UInt64>(0)
    private let stopped = Atomic<Bool>(false)
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let condition: UnsafeMutablePointer<pthread_cond_t>
    /// `nil` when the system refused one: the leader then wakes the thread itself.
    private var timer: timer_t?
    private var set: WorkerThreads?

    init() {
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
        condition = .allocate(capacity: 1)
        condition.initialize(to: pthread_cond_t())
        pthread_cond_init(condition, nil)
        let context = Unmanaged.passRetained(self).toOpaque()  // never released: see the type's comment
        var event = sigevent()
        event.sigev_notify = Int32(SIGEV_THREAD)
        event.sigev_value.sival_ptr = context
        event._sigev_un._sigev_thread._function = { value in
            guard let raw = value.sival_ptr else { return }
            Unmanaged<LeaderWatchdog>.fromOpaque(raw).takeUnretainedValue().wake()
        }
        var created: timer_t?
        if timer_create(CLOCK_MONOTONIC, &event, &created) == 0 { timer = created }
    }

    /// Starts the watchdog's thread, which holds `set` until ``stop()``; `false` when the system refused a thread
    /// (jobs then go unwatched).
    @discardableResult
    func start(watching set: WorkerThreads) -> Bool {
        self.set = set
        return WorkerThreads.spawn("celery-watchdog") { [self] in
            loop()
            self.set = nil
        }
    }

    /// Lets the thread exit (at its next tick, or at once when it sleeps) and disarms the timer.
    func stop() {
        stopped.store(true, ordering: .sequentiallyConsistent)
        if let timer {
            var stop = itimerspec()
            _ = timer_settime(timer, 0, &stop, nil)
        }
        wake()
    }

    /// The leader starts a job: returns its number, for ``jobEnds(_:)``.
    func jobStarts() -> UInt64 {
        let number = serial.wrappingAdd(1, ordering: .relaxed).newValue | 1 << 63  // never 0
        running.store(number, ordering: .sequentiallyConsistent)
        // Either this sees the thread going to sleep, or the thread sees this job (both are sequentially consistent).
        if !ticking.load(ordering: .sequentiallyConsistent), !armed.load(ordering: .relaxed) {
            armed.store(true, ordering: .relaxed)
            armedSerial.store(number, ordering: .relaxed)
            if !arm() { wake() }
        }
        return number
    }

    /// The job numbered `number` ended (on the thread that started it, which may no longer lead).
    func jobEnds(_ number: UInt64) {
        _ = running.compareExchange(expected: number, desired: 0, ordering: .releasing)
    }

    /// The leader is out of work and about to wait: the timer it armed is not needed.
    private func arm() -> Bool {
        guard let timer else { return false }
        let (seconds, attoseconds) = Self.patience.components
        var spec = itimerspec(
            it_interval: timespec(tv_sec: 0, tv_nsec: 0),
            it_value: timespec(tv_sec: Int(seconds), tv_nsec: Int(attoseconds / 1_000_000_000)))
        return timer_settime(timer, 0, &spec, nil) == 0
    }

    /// Starts the thread ticking (from the timer's callback, or from ``stop()``).
    private func wake() {
        pthread_mutex_lock(mutex)
        ticking.store(true, ordering: .sequentiallyConsistent)
        pthread_cond_signal(condition)
        pthread_mutex_unlock(mutex)
    }

    private func loop() {
        guard let set else { return }
        while !stopped.load(ordering: .sequentiallyConsistent) {
            pthread_mutex_lock(mutex)
            while !ticking.load(ordering: .sequentiallyConsistent), !stopped.load(ordering: .sequentiallyConsistent) {
                pthread_cond_wait(condition, mutex)
            }
            pthread_mutex_unlock(mutex)
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
                } else if now == 0, count == started {
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
