import CeleryProtocol
import Foundation
import Logging

extension BeatService {
    /// Beat with RedBeat's scheduler (``RedBeatConfiguration``), until `shutdown`: stores `beat_schedule` in RedBeat's
    /// keys, takes RedBeat's lock (standing by while another beat, Swift or Python, holds it), then at every tick
    /// renews the lock, reads the entries due from Redis, records each run and sends it, as RedBeat does.
    ///
    /// Where RedBeat is weak, it does better: an error from Redis is logged once and the tick tried again every second
    /// (RedBeat's beat ends, unless `retry_period` is set), and once Redis answers again `beat_schedule` is stored again
    /// (a Redis that came back empty gets it back); a lost lock puts the beat back to standing by (RedBeat's ends with
    /// `LockNotOwnedError`); a standing-by beat tries the lock every 3 s (RedBeat's every
    /// `beat_max_loop_interval`); a run that cannot be sent is tried again every second until sent or due again
    /// (RedBeat's is given up); an entry it cannot read is logged once and left as it is, for a Python beat.
    func runRedBeat(_ redbeat: RedBeatConfiguration, until shutdown: ShutdownSignal, pidbox: BeatPidbox?) async {
        let own = redbeat.redisURL.map { RedisClient(url: $0, threadName: "redbeat") }
        defer { own?.close() }
        let store = RedBeatStore(client: own ?? client.broker.commands, configuration: redbeat, zone: timezone)
        let beat = configuration
        let lockTimeout = redbeat.lockTimeout ?? beat.maxLoopInterval * 5
        var failing = false
        while true {
            pidbox?.ticked()
            do {
                try await setUp(store)
                if failing { logger.info("beat: RedBeat's Redis answers again") }
                failing = false
                break
            } catch {
                if !failing { logger.error("beat: Cannot store the schedule in RedBeat's keys: \(error.message); trying again every second") }
                failing = true
                guard await shutdown.sleep(untilUnixTime: WallClock.now() + 1) else { return }
            }
        }
        for entry in beat.entries {
            logger.debug("beat: Stored entry: <RedBeatSchedulerEntry: \(entry.name) \(Self.call(entry)) \(entry.schedule)")
        }
        logger.debug("beat: Ticking with max interval->\(BeatSchedule.humanize(seconds: beat.maxLoopInterval))")
        let lock = redbeat.lockKey.map { RedBeatLock(client: store.client, key: $0) }
        while let lock {
            guard await hold(lock, timeout: lockTimeout, shutdown: shutdown, pidbox: pidbox) else { return }
            guard await tickRedBeat(store, lock: lock, lockTimeout: lockTimeout, shutdown: shutdown, pidbox: pidbox, failing: &failing)
            else {
                logger.info("beat: Releasing lock")
                await lock.release()
                return
            }
        }
        _ = await tickRedBeat(store, lock: nil, lockTimeout: lockTimeout, shutdown: shutdown, pidbox: pidbox, failing: &failing)
    }

    /// Stores `beat_schedule` in RedBeat's keys (RedBeat's `setup_schedule`).
    private func setUp(_ store: RedBeatStore) async throws(CeleryWorkerError) {
        for name in try await store.setUp(configuration.entries, now: WallClock.now()) {
            logger.debug("beat: Removing old static schedule entry '\(name)'.")
        }
    }

    /// The last run of an entry that never ran, as RedBeat reads it: 0001-01-02 00:00 UTC, long overdue.
    static let neverRun = -62_135_510_400.0

    /// Celery's `reprcall` of an entry's task: `tasks.add(2, 3, z=1)`.
    static func call(_ entry: BeatEntry) -> String {
        let parts = entry.args.map(PythonRepr.repr) + entry.kwargs.map { "\($0.key)=\(PythonRepr.repr($0.value))" }
        return "\(entry.task)(\(parts.joined(separator: ", ")))"
    }

    /// Waits until this beat holds RedBeat's lock; `false` when shutdown begins first.
    private func hold(_ lock: RedBeatLock, timeout: Double, shutdown: ShutdownSignal, pidbox: BeatPidbox?) async -> Bool {
        logger.debug("beat: Acquiring lock...")
        var told: String?
        while true {
            pidbox?.ticked()
            do {
                if try await lock.acquire(timeout: timeout) {
                    logger.info("beat: Acquired lock")
                    return true
                }
                if told != "held" { logger.info("beat: Another beat holds the lock `\(lock.key)`; standing by") }
                told = "held"
            } catch {
                if told != "error" { logger.warning("beat: Cannot take the lock `\(lock.key)`: \(error.message); trying again") }
                told = "error"
            }
            guard await shutdown.sleep(untilUnixTime: WallClock.now() + BeatLock.renewal) else { return false }
        }
    }

    /// RedBeat's ticks until shutdown (`false`) or until the lock is lost (`true`). `failing`: Redis did not answer
    /// the last tick; once it answers again, `beat_schedule` is stored again (a Redis that came back empty gets it
    /// back, where RedBeat stores it only at start).
    private func tickRedBeat(
        _ store: RedBeatStore, lock: RedBeatLock?, lockTimeout: Double, shutdown: ShutdownSignal, pidbox: BeatPidbox?,
        failing: inout Bool
    ) async -> Bool {
        let beat = configuration
        // Runs recorded but not sent (the broker away), by key: tried again every second until sent or due again.
        var unsent: [String: BeatEntry] = [:]
        // Keys whose entry cannot be read here, logged once each.
        var unreadable: Set<String> = []
        while true {
            pidbox?.ticked()
            var pause = beat.maxLoopInterval
            do throws(CeleryWorkerError) {
                if let lock {
                    logger.debug("beat: Extending lock...")
                    guard try await lock.extend(timeout: lockTimeout) else {
                        logger.warning("beat: The lock `\(lock.key)` is no longer this beat's (it expired, or another beat took it); standing by")
                        return true
                    }
                }
                if failing {
                    try await setUp(store)
                    logger.info("beat: RedBeat's Redis answers again; beat_schedule is stored in it again")
                    failing = false
                }
                logger.debug("beat: Selecting tasks")
                let keys = try await store.selected(now: WallClock.now(), maxInterval: beat.maxLoopInterval)
                logger.debug("beat: Loading \(keys.count) tasks")
                var sent: Set<String> = []
                for (key, loaded) in try await store.load(keys) {
                    switch loaded {
                    case .missing:
                        logger.warning("beat: Failed to load \(key), removing")
                        try await store.remove(key)
                    case .unreadable(let error):
                        if unreadable.insert(key).inserted {
                            logger.error("beat: Cannot read the entry \(key): \(error.message); left as it is, for a Python beat")
                        }
                    case .entry(let stored):
                        let now = WallClock.now()
                        let state =
                            stored.entry.enabled
                            ? stored.entry.schedule.isDue(
                                lastRunAt: stored.lastRunAt ?? Self.neverRun, now: now,
                                zone: timezone, startingDeadline: beat.cronStartingDeadline)
                            : (due: false, next: 5)
                        if state.due {
                            logger.info("Scheduler: Sending due task \(stored.entry.name) (\(stored.entry.task))")
                            try await store.reserve(stored, now: now)
                            unsent[key] = nil
                            sent.insert(key)
                            await send(stored.entry, key: key, late: false, unsent: &unsent)
                        }
                        if state.next > 0 { pause = min(pause, state.next) }
                    }
                }
                for (key, entry) in unsent where !sent.contains(key) { await send(entry, key: key, late: true, unsent: &unsent) }
            } catch {
                if !failing { logger.error("beat: RedBeat's schedule: \(error.message); trying again every second") }
                failing = true
                pause = 1
            }
            if !unsent.isEmpty { pause = min(pause, 1) }
            // The lock is renewed at every tick: never sleep past half its life.
            if lock != nil { pause = min(pause, lockTimeout / 2) }
            pause = max(pause, 0.001)
            if pause >= 1 { logger.debug("beat: Waking up \(BeatSchedule.humanize(seconds: pause, prefix: "in ")).") }
            guard await shutdown.sleep(untilUnixTime: WallClock.now() + pause) else { return false }
        }
    }

    /// Sends an entry's task; one that cannot be sent is kept in `unsent`.
    private func send(_ entry: BeatEntry, key: String, late: Bool, unsent: inout [String: BeatEntry]) async {
        do {
            let result = try await client.apply(entry.signature)
            unsent[key] = nil
            if late { logger.info("Scheduler: Sent task \(entry.name) (\(entry.task)), late: the broker answers again") }
            logger.debug("Scheduler: \(entry.task) sent. id->\(result.id)")
        } catch {
            if !late {
                let again = "trying again every second until it is sent or due again"
                logger.error("Scheduler: Message Error: Couldn't apply scheduled task \(entry.name): \(error.message); \(again)")
            }
            unsent[key] = entry
        }
    }
}
