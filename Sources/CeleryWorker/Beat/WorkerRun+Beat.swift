import CeleryProtocol
import Foundation

extension WorkerRun {
    /// Celery's embedded beat (`-B`): sends each entry of `beat_schedule` when it is due, through the worker's
    /// client (`task_routes`, `task_serializer`, signing and `task_send_sent_event` apply, as to Celery's
    /// `send_task`), with the `celery_beat_task` header Celery's beat adds, and logs as Celery's beat logs. A run
    /// that cannot be sent is tried again every second until it is sent or its entry is due again (Celery's beat
    /// logs it and gives it up). Each
    /// entry's last run is kept in the schedule file, written after every task sent (Celery writes it every 3
    /// minutes and at shutdown, so a beat that crashes sends again what it sent since), and read at the next start,
    /// so a run missed while the worker was down is sent once at start. It stops when shutdown begins.
    func beatLoop() async {
        guard let beat = configuration.beat, let client = service.client else { return }
        logger.info("beat: Starting...")
        let file = BeatScheduleFile(path: beat.scheduleFilename)
        let zone = configuration.timezone
        let utcEnabled = configuration.enableUTC
        let logger = self.logger
        let kept = await withTaskExecutorPreference(executor) { () -> [String: BeatScheduler.Run] in
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
        var scheduler = BeatScheduler(configuration: beat, zone: zone, kept: kept, now: WallClock.now())
        let entries = beat.entries.map { "<ScheduleEntry: \($0.name) \($0.task)(…) \($0.schedule)" }
        logger.debug("Current schedule:\n\(entries.joined(separator: "\n"))")
        logger.debug("beat: Ticking with max interval->\(BeatSchedule.humanize(seconds: beat.maxLoopInterval))")
        await saveBeat(scheduler, to: file)
        // Runs that could not be sent (the broker away), by entry: tried again every second until sent, or until the
        // entry is due again and its new run takes their place. Celery's beat gives such a run up.
        var unsent: [String: BeatEntry] = [:]
        while true {
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
            if !due.isEmpty { await saveBeat(scheduler, to: file) }
            var pause = due.isEmpty ? max(sleep, 0.001) : sleep
            if !unsent.isEmpty { pause = min(pause, 1) }
            if pause > 0 { logger.debug("beat: Waking up \(pause >= 1 ? BeatSchedule.humanize(seconds: pause, prefix: "in ") : "now").") }
            guard await shutdown.sleep(untilUnixTime: WallClock.now() + pause) else { break }
        }
        logger.info("beat: Shutting down...")
        await saveBeat(scheduler, to: file)
    }

    /// Writes the schedule file, on a task thread (a file write blocks).
    private func saveBeat(_ scheduler: BeatScheduler, to file: BeatScheduleFile) async {
        let contents = BeatScheduleFile.Contents(
            timezone: scheduler.zone.identifier, utcEnabled: configuration.enableUTC, runs: scheduler.runs)
        let logger = self.logger
        await withTaskExecutorPreference(executor) {
            do throws(CeleryWorkerError) {
                try file.save(contents)
            } catch {
                logger.error("beat: \(error.message)")
            }
        }
    }
}
