import CeleryProtocol
import Foundation
import Logging
import ServiceLifecycle

/// Celery's beat: sends each entry of `beat_schedule` when it is due, through a ``CeleryClient`` (`task_routes`,
/// `task_serializer`, signing and `task_send_sent_event` apply, as to Celery's `send_task`), with the
/// `celery_beat_task` header Celery's beat adds, and logs as Celery's beat logs. It runs inside a worker (`-B`) or on
/// its own (`swift-celery-worker beat`, as `celery beat`), as a service of a `ServiceGroup` that stops it with a
/// graceful shutdown.
///
/// Where Celery's beat is weak, it does better:
/// - A run that cannot be sent is tried again every second until it is sent or its entry is due again (Celery's
///   beat logs it and gives it up).
/// - Each entry's last run is written to the schedule file after every task sent (Celery writes it every 3
///   minutes and at shutdown, so a beat that crashes sends again what it sent since), and read at the next
///   start, so a run missed while the beat was down is sent once at start.
/// - With the lock (``BeatLock``, on by default), one beat per schedule sends, however many run.
public final class BeatService: Service, Sendable {
    let configuration: BeatConfiguration
    let client: CeleryClient
    let timezone: CeleryTimeZone
    let enableUTC: Bool
    /// What the lock names the holder by: the worker's node name, or `celerybeat@host` (`nil` in ``init``), Celery's
    /// name for a beat.
    let node: String
    let logger: Logger
    /// Receivers of `beat_init` and `beat_embedded_init`.
    let signals: WorkerSignals
    /// Whether it runs in a worker (`-B`): `beat_embedded_init` is sent too.
    let embedded: Bool

    /// A beat that sends `configuration`'s entries through `client`, reckoning crontabs in `timezone` (the app's
    /// `timezone`) and keeping `enableUTC` in its schedule file, as Celery does. `signals`' `beat_init` receivers run
    /// as it starts (and `beat_embedded_init`'s too when `embedded`, in a worker), as Celery's `Service.start` sends
    /// them; give the `client` the same signals for the publish signals around what it sends.
    public init(
        configuration: BeatConfiguration, client: CeleryClient, timezone: CeleryTimeZone = .utc, enableUTC: Bool = true,
        node: String? = nil, logger: Logger = Logger(label: "celery.beat"), signals: WorkerSignals = WorkerSignals(),
        embedded: Bool = false
    ) {
        self.configuration = configuration
        self.client = client
        self.timezone = timezone
        self.enableUTC = enableUTC
        self.node = node ?? "celerybeat@\(Host.name)"
        self.logger = logger
        self.signals = signals
        self.embedded = embedded
    }

    /// Sends until the service group shuts down gracefully (or the task is cancelled).
    public func run() async throws {
        let shutdown = ShutdownSignal()
        // The schedule file is written on a thread of its own: a file write blocks.
        let files = WorkerThreads(count: 1, name: "beat-files")
        defer { files.shutdown() }
        await withGracefulShutdownHandler {
            await self.run(until: shutdown, files: files)
        } onGracefulShutdown: {
            shutdown.trigger()
        }
    }

    /// Sends until `shutdown` is triggered, writing the schedule file on `files`.
    func run(until shutdown: ShutdownSignal, files: WorkerThreads) async {
        logger.info("beat: Starting...")
        let event = WorkerSignals.WorkerEvent(hostname: node)
        await WorkerSignals.send(signals.beatInit, event, signal: "beat_init", logger: logger)
        if embedded { await WorkerSignals.send(signals.beatEmbeddedInit, event, signal: "beat_embedded_init", logger: logger) }
        let lock = configuration.lockName.map {
            BeatLock(client: client.broker.commands, name: client.broker.keyPrefix + $0, node: node)
        }
        let pidbox = configuration.remoteControl ? BeatPidbox(configuration: configuration, client: client, logger: logger) : nil
        let stopped = ShutdownSignal()  // the pidbox listens until the schedule's loop is over
        await withDiscardingTaskGroup { group in
            if let pidbox { group.addTask { await pidbox.run(until: stopped) } }
            if let redbeat = configuration.redbeat {
                await runRedBeat(redbeat, until: shutdown, pidbox: pidbox)
                stopped.trigger()
                return
            }
            while await holdLock(lock, shutdown: shutdown, pidbox: pidbox),
                await runSchedule(lock: lock, shutdown: shutdown, files: files, pidbox: pidbox)
            {}
            stopped.trigger()
        }
        if configuration.redbeat == nil { await lock?.release() }
        logger.info("beat: Shutting down...")
    }

    /// Waits until this beat holds the lock (at once without one). `false` when shutdown begins first.
    private func holdLock(_ lock: BeatLock?, shutdown: ShutdownSignal, pidbox: BeatPidbox?) async -> Bool {
        guard let lock else { return !shutdown.isTriggered }
        var told: String?
        while true {
            pidbox?.ticked()
            do {
                guard let holder = try await lock.acquire() else {
                    if told != nil { logger.info("beat: Taking the schedule over (\(lock.key))") }
                    return true
                }
                if told != holder { logger.info("beat: \(holder) sends this schedule (\(lock.key)); standing by") }
                told = holder
            } catch {
                if told != "" { logger.warning("beat: Cannot take the lock \(lock.key): \(error.message); trying again") }
                told = ""
            }
            guard await shutdown.sleep(untilUnixTime: WallClock.now() + BeatLock.renewal) else { return false }
        }
    }

    /// The last runs to start from: the schedule file's, and with the lock the later of each entry's run there
    /// and in Redis (where another beat may have sent it since).
    private func keptRuns(_ file: BeatScheduleFile, lock: BeatLock?, files: WorkerThreads) async -> [String: BeatScheduler.Run] {
        let zone = timezone
        let utcEnabled = enableUTC
        let logger = self.logger
        var kept = await withTaskExecutorPreference(files) { () -> [String: BeatScheduler.Run] in
            do throws(CeleryWorkerError) {
                guard let contents = try file.load() else { return [:] }
                if contents.timezone != zone.identifier {
                    logger.warning("Reset: Timezone changed from '\(contents.timezone)' to '\(zone.identifier)'")
                    return [:]
                }
                if contents.utcEnabled != utcEnabled {
                    let choices = [true: "enabled", false: "disabled"]
                    logger.warning("Reset: UTC changed from \(choices[contents.utcEnabled] ?? "") to \(choices[utcEnabled] ?? "")")
                    return [:]
                }
                return contents.runs
            } catch {
                logger.error("beat: \(error.message); starting afresh")
                return [:]
            }
        }
        if let lock {
            do {
                for (name, run) in try await lock.runs() where run.lastRunAt > kept[name]?.lastRunAt ?? -.infinity {
                    kept[name] = run
                }
            } catch {
                logger.warning("beat: Cannot read the last runs in \(lock.runsKey): \(error.message)")
            }
        }
        return kept
    }

    /// Sends the schedule's tasks as they fall due. Returns `true` when another beat took the lock over, `false`
    /// at shutdown.
    private func runSchedule(lock: BeatLock?, shutdown: ShutdownSignal, files: WorkerThreads, pidbox: BeatPidbox?) async -> Bool {
        let beat = configuration
        let file = BeatScheduleFile(path: beat.scheduleFilename)
        let kept = await keptRuns(file, lock: lock, files: files)
        var scheduler = BeatScheduler(configuration: beat, zone: timezone, kept: kept, now: WallClock.now())
        let entries = beat.entries.map { "<ScheduleEntry: \($0.name) \($0.task)(…) \($0.schedule)" }
        logger.debug("Current schedule:\n\(entries.joined(separator: "\n"))")
        logger.debug("beat: Ticking with max interval->\(BeatSchedule.humanize(seconds: beat.maxLoopInterval))")
        await save(scheduler, to: file, files: files)
        // Runs that could not be sent (the broker away), by entry: tried again every second until sent, or until the
        // entry is due again and its new run takes their place. Celery's beat gives such a run up.
        var unsent: [String: BeatEntry] = [:]
        var renewal = WallClock.now() + BeatLock.renewal
        while true {
            pidbox?.ticked()
            if let lock, WallClock.now() >= renewal {
                renewal = WallClock.now() + BeatLock.renewal
                // An error here means the broker is away; the sends say so, and the next renewal tries again.
                if case .some(let holder?) = try? await lock.acquire() {
                    logger.warning("beat: \(holder) took the schedule over (\(lock.key)); standing by")
                    await save(scheduler, to: file, files: files)
                    return true
                }
            }
            let (due, sleep) = scheduler.tick(now: WallClock.now())
            let late = beat.entries.filter { entry in unsent[entry.name] != nil && !due.contains { $0.name == entry.name } }
            for entry in due + late {
                let retry = unsent.removeValue(forKey: entry.name) != nil && !due.contains { $0.name == entry.name }
                if !retry { logger.info("Scheduler: Sending due task \(entry.name) (\(entry.task))") }
                do {
                    let result = try await client.apply(entry.signature)
                    if retry { logger.info("Scheduler: Sent task \(entry.name) (\(entry.task)), late: the broker answers again") }
                    logger.debug("\(entry.task) sent. id->\(result.id)")
                } catch {
                    // The run is recorded before it is sent, as in Celery's beat, so the schedule moves on.
                    if !retry {
                        let again = "trying again every second until it is sent or due again"
                        logger.error("Message Error: Couldn't apply scheduled task \(entry.name): \(error.message); \(again)")
                    }
                    unsent[entry.name] = entry
                }
            }
            if !due.isEmpty {
                await save(scheduler, to: file, files: files)
                var sent: [String: BeatScheduler.Run] = [:]
                for entry in due { sent[entry.name] = scheduler.runs[entry.name] }
                await lock?.record(sent)
            }
            var pause = due.isEmpty ? max(sleep, 0.001) : sleep
            if !unsent.isEmpty { pause = min(pause, 1) }
            if lock != nil { pause = min(pause, max(renewal - WallClock.now(), 0)) }
            if pause >= 1 { logger.debug("beat: Waking up \(BeatSchedule.humanize(seconds: pause, prefix: "in ")).") }
            guard await shutdown.sleep(untilUnixTime: WallClock.now() + pause) else { break }
        }
        await save(scheduler, to: file, files: files)
        return false
    }

    /// Writes the schedule file, on a task thread (a file write blocks).
    private func save(_ scheduler: BeatScheduler, to file: BeatScheduleFile, files: WorkerThreads) async {
        let contents = BeatScheduleFile.Contents(timezone: scheduler.zone.identifier, utcEnabled: enableUTC, runs: scheduler.runs)
        let logger = self.logger
        await withTaskExecutorPreference(files) {
            do throws(CeleryWorkerError) {
                try file.save(contents)
            } catch {
                logger.error("beat: \(error.message)")
            }
        }
    }
}
