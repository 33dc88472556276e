import CeleryProtocol
import Synchronization

/// Celery's `Autoscaler` decision (`celery/worker/autoscale.py`), apart from the worker: how many children to add
/// or remove, given how many tasks the worker holds and how many children the pool keeps.
struct AutoscalerState: Sendable, Equatable {
    var max: Int
    var min: Int
    /// Seconds without a new task or a scale-up before the pool shrinks.
    let keepalive: Double
    var lastScaleUp: Double?
    var lastTaskReceived: Double?

    init(_ bounds: WorkerConfiguration.Autoscale) {
        max = bounds.max
        min = bounds.min
        keepalive = bounds.keepalive
    }

    /// `_maybe_scale`: up to the tasks held (at most `max`) at once; down to the tasks held (at least `min`) once
    /// `keepalive` seconds passed since the last scale-up or task received, whichever was later. Returns the
    /// change in children: positive to grow, negative to shrink, 0 to stay.
    mutating func change(tasksHeld: Int, processes: Int, now: Double) -> Int {
        let wanted = Swift.min(tasksHeld, max)
        if wanted > processes {
            lastScaleUp = now
            return wanted - processes
        }
        let kept = Swift.max(tasksHeld, min)
        guard kept < processes else { return 0 }
        var lastActive = lastScaleUp
        if let received = lastTaskReceived, lastActive.map({ received > $0 }) ?? true { lastActive = received }
        guard let lastActive, now - lastActive > keepalive else { return 0 }
        return kept - processes
    }

    /// `inspect stats`' `autoscaler` entry.
    func info(processes: Int, tasksHeld: Int) -> CeleryValue {
        [
            "max": .int(Int64(max)), "min": .int(Int64(min)), "current": .int(Int64(processes)),
            "qty": .int(Int64(tasksHeld)),
        ]
    }
}

/// The size of a process pool as it changes at run time: the task threads that wait on its children, the prefetch
/// window, and the autoscaler with `--autoscale`.
struct PoolScaling: Sendable {
    /// Task threads started: one per child at least, as each running job waits on its child from one, and one more
    /// (``CeleryWorkerService/processPoolThreads(children:)``).
    var threads: Int
    /// The prefetch window now (0: no limit); `inspect stats`' `prefetch_count`.
    var prefetchCount: Int
    var autoscaler: AutoscalerState?
}

extension WorkerRun {
    /// Tasks held (received and not yet finished, apart from those waiting for their ETA): Celery's
    /// `len(reserved_requests)`, which its autoscaler weighs against the pool's size.
    var tasksHeld: Int { readyJobs.load(ordering: .relaxed) + counters.withLock { $0.active } }

    /// Grows or shrinks the process pool by `delta` children, with as many task slots, and moves the prefetch window
    /// by `prefetchDelta`: billiard's `grow`/`shrink` with Celery's `_update_prefetch_count`. One change at a time.
    func resizePool(by delta: Int, prefetchBy prefetchDelta: Int) async {
        guard let pool, delta != 0 || prefetchDelta != 0, await resizing.acquire() else { return }
        defer { resizing.release() }
        if delta > 0 {
            let extra = scaling.withLock { scaling in
                let needed = CeleryWorkerService.processPoolThreads(children: pool.processes + delta)
                let extra = Swift.max(0, needed - scaling.threads)
                scaling.threads += extra
                return extra
            }
            if extra > 0 { executor.addThreads(extra) }
            await withTaskExecutorPreference(executor) { pool.grow(by: delta) }
            slots.release(delta)
        } else if delta < 0 {
            slots.withdraw(-delta)
            await withTaskExecutorPreference(executor) { pool.shrink(by: -delta) }
        }
        let unlimited = scaling.withLock { scaling in
            guard scaling.prefetchCount > 0 else { return true }
            scaling.prefetchCount = Swift.max(1, scaling.prefetchCount + prefetchDelta)
            return false
        }
        if !unlimited {
            if prefetchDelta > 0 { prefetch.release(prefetchDelta) } else if prefetchDelta < 0 { prefetch.withdraw(-prefetchDelta) }
        }
    }

    /// Wakes the autoscaler (coalesced: one wake-up pending at most).
    func wakeAutoscaler() {
        if !autoscalePending.exchange(true, ordering: .acquiringAndReleasing) { autoscaleWake.release() }
    }

    /// Notes a task received for the autoscaler (`on_task_received`) and wakes it, so the pool grows for it at
    /// once, as Celery's does on each task message.
    func autoscalerReceived() {
        scaling.withLock { $0.autoscaler?.lastTaskReceived = WallClock.now() }
        wakeAutoscaler()
    }

    /// Celery's autoscaler: decides at each task received and every second (its thread's tick), until shutdown.
    func autoscaleLoop() async {
        guard scaling.withLock({ $0.autoscaler != nil }), let pool else { return }
        async let ticks: Void = autoscaleTicks()
        while await autoscaleWake.acquire() {
            autoscalePending.store(false, ordering: .releasing)
            let held = tasksHeld
            let change = scaling.withLock { scaling in
                scaling.autoscaler?.change(tasksHeld: held, processes: pool.processes, now: WallClock.now()) ?? 0
            }
            if change > 0 {
                logger.info("Scaling up \(change) processes.")
            } else if change < 0 {
                logger.info("Scaling down \(-change) processes.")
            }
            if change != 0 { await resizePool(by: change, prefetchBy: 0) }
        }
        await ticks
    }

    private func autoscaleTicks() async {
        while await shutdown.sleep(untilUnixTime: WallClock.now() + 1) { wakeAutoscaler() }
        autoscaleWake.close()
    }

    /// `pool_grow` / `pool_shrink` (`n`, default 1), answered as Celery answers them.
    func poolResizeCommand(_ method: String, _ arguments: CeleryObject) async -> CeleryValue {
        let growing = method == "pool_grow"
        guard let pool else {
            // Python's thread and solo pools have no `grow` or `shrink`: the command fails in the pool.
            return ["error": .string("AttributeError(\"'TaskPool' object has no attribute '\(growing ? "grow" : "shrink")'\")")]
        }
        if scaling.withLock({ $0.autoscaler != nil }) {
            return ["error": .string("\(method) is not supported with autoscale. Adjust autoscale range instead.")]
        }
        guard let count = Self.count(arguments["n"], default: 1), count >= 1 else {
            return ["error": .string("ValueError('n must be a whole number, at least 1')")]
        }
        if !growing, count >= pool.processes {
            return ["error": .string("ValueError(\"Can't shrink the pool below one process\")")]
        }
        let multiplier = configuration.windowMultiplier
        await resizePool(by: growing ? count : -count, prefetchBy: (growing ? count : -count) * multiplier)
        return ["ok": .string(growing ? "pool will grow" : "pool will shrink")]
    }

    /// `autoscale` (`max`, `min`): new bounds for the autoscaler, as Celery's `Autoscaler.update` sets them.
    func autoscaleCommand(_ arguments: CeleryObject) async -> CeleryValue {
        guard let pool, let current = scaling.withLock({ $0.autoscaler }) else {
            return ["error": "ValueError('Autoscale not enabled')"]
        }
        guard let max = Self.count(arguments["max"], default: current.max),
            let min = Self.count(arguments["min"], default: current.min), max >= 1, min >= 0, min <= max
        else {
            return ["error": "ValueError('autoscale needs 1 <= max and 0 <= min <= max')"]
        }
        let processes = pool.processes
        // Above the new max: shrink to it; below the new min: grow to it. The prefetch window follows max.
        let change = max < processes ? max - processes : min > processes ? min - processes : 0
        scaling.withLock {
            $0.autoscaler?.max = max
            $0.autoscaler?.min = min
        }
        await resizePool(by: change, prefetchBy: (max - current.max) * configuration.windowMultiplier)
        return ["ok": .string("autoscale now max=\(max) min=\(min)")]
    }

    /// A whole-number argument of a command (Celery's CLI sends them as numbers; text is read too); `default` when
    /// absent, `nil` when not a whole number.
    private static func count(_ value: CeleryValue?, default fallback: Int) -> Int? {
        switch value {
        case nil, .null?: fallback
        case .int(let number)?: Int(exactly: number)
        case .string(let text)?: Int(text)
        default: nil
        }
    }
}

extension WorkerRun {
    /// `pool_restart`, allowed by `worker_pool_restarts` as in Celery: a process pool's children are replaced (idle
    /// ones now, busy ones after their task); the thread and solo pools have nothing to restart, and Celery answers
    /// the same for them. The tasks are compiled into the worker, so modules cannot be reloaded: `reload` with
    /// `modules` is refused.
    func poolRestartCommand(_ arguments: CeleryObject) async -> CeleryValue {
        guard configuration.poolRestarts else { return ["error": "ValueError('Pool restarts not enabled')"] }
        let modules = arguments["modules"]?.arrayValue ?? []
        if arguments["reload"]?.boolValue == true, !modules.isEmpty {
            return [
                "error": "ValueError('swift-celery-worker cannot reload modules: its tasks are compiled in; restart the worker')"
            ]
        }
        if let pool {
            logger.info("Restarting the pool's processes")
            await withTaskExecutorPreference(executor) { pool.restart() }
        }
        return ["ok": "reload started"]
    }
}
