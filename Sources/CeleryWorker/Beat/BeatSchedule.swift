import CeleryProtocol
import Foundation
import OrderedCollections

/// When a periodic task runs: every so many seconds (Celery's `schedule`, a number in `beat_schedule`), by a
/// ``Crontab``, or at a solar event (``SolarSchedule``).
public enum BeatSchedule: Sendable, Hashable, CustomStringConvertible {
    /// Every `seconds` after the last run; with `relative` (Celery's `schedule(run_every, relative=True)`), at the
    /// last wall-clock boundary of the interval's unit (day, hour or minute, in the app's time zone) at or before that.
    case every(seconds: Double, relative: Bool = false)
    case crontab(Crontab)
    case solar(SolarSchedule)
    /// dateutil's `rrule`, as celery-redbeat keeps it (RedBeat's scheduler only: `beat_schedule` has no form for it).
    case rrule(RecurrenceRule)

    /// Celery's `is_due(last_run_at)` at `now`: whether the task is due, and in how many seconds to look again (after
    /// a run, the time to the next one). `startingDeadline` is `beat_cron_starting_deadline`: a crontab run missed
    /// by more than that many seconds is not made up.
    public func isDue(lastRunAt: Double, now: Double, zone: CeleryTimeZone, startingDeadline: Double? = nil) -> (due: Bool, next: Double) {
        switch self {
        case .every(let seconds, let relative):
            let end = relative ? Self.relativeEnd(start: lastRunAt, every: seconds, zone: zone) : lastRunAt + seconds
            let remaining = max(end - now, 0)
            guard remaining == 0 else { return (false, remaining) }
            guard relative else { return (true, max(seconds, 0)) }
            // Celery 5.7: the next check is the next rounded boundary after now (the interval when there is none).
            let next = Self.relativeEnd(start: now, every: seconds, zone: zone) - now
            return (true, next > 0 ? next : max(seconds, 0))
        case .crontab(let crontab):
            // A crontab with no next run within 400 years is refused when it is read; should one get here, it is
            // checked again at the loop's longest interval.
            guard let next = crontab.nextRun(after: lastRunAt, in: zone) else { return (false, .infinity) }
            let remaining = next - now
            var due = remaining <= 0
            var passedDeadline = false
            if let startingDeadline, remaining < 0 {
                // No run within [now - deadline, now]: the missed one is too stale to make up.
                if let sinceDeadline = crontab.nextRun(after: now - startingDeadline - 0.000_001, in: zone), sinceDeadline > now {
                    passedDeadline = true
                    due = false
                }
            }
            guard due || passedDeadline else { return (false, max(remaining, 0)) }
            let following = crontab.nextRun(after: now, in: zone).map { max($0 - now, 0) } ?? .infinity
            return (due, following)
        case .solar(let solar):
            let remaining = max(solar.nextEvent(after: lastRunAt) - now, 0)
            guard remaining == 0 else { return (false, remaining) }
            return (true, max(solar.nextEvent(after: now) - now, 0))
        case .rrule(let rule):
            return rule.isDue(lastRunAt: lastRunAt, now: now)
        }
    }

    /// As Celery's `repr`: `<freq: 10.00 seconds>`, `<crontab: 0 4 * * * (m/h/dM/MY/d)>`.
    public var description: String {
        switch self {
        case .every(let seconds, _): "<freq: \(BeatSchedule.humanize(seconds: seconds))>"
        case .crontab(let crontab): crontab.description
        case .solar(let solar): solar.description
        case .rrule(let rule): rule.description
        }
    }

    /// Celery 5.7's `remaining(start, run_every, relative=True)`: the due time of a relative interval, as a Unix
    /// time. The time one interval after `start` (by the calendar for a day or more, elapsed otherwise) is rounded
    /// down to the interval's unit of wall-clock time in `zone`; of the instants that rounded time names (two when a
    /// change of the clocks repeats it; a time a change skips is moved past the gap), the latest at or before `start`
    /// plus the interval, never one at or before `start` (for a day or more: the first after `start`).
    static func relativeEnd(start: Double, every seconds: Double, zone: CeleryTimeZone) -> Double {
        let local = LocalClock(zone: zone)
        let startWall = local.wall(start)
        let endWall: Double
        let endUTC: Double
        if seconds >= 86_400 {
            // Day-resolution intervals advance by calendar days.
            endWall = startWall + seconds
            endUTC = local.unixTime(wall: endWall, fold: 0)
        } else {
            endUTC = start + seconds
            endWall = local.wall(endUTC)
        }
        var candidates = local.roundedInstants(of: endWall, every: seconds)
        if seconds >= 86_400 {
            return candidates.filter { $0 > start }.min() ?? endUTC
        }
        let limit = start + seconds
        var rounded = candidates.filter { $0 <= limit }.max() ?? candidates.min() ?? limit
        if seconds >= 60, rounded <= start {
            // A partial-hour change of the clocks can put the rounded boundary before start: the next boundary and the
            // calendar one are candidates too.
            let unit = seconds >= 3600 ? 3600.0 : 60.0
            candidates += local.roundedInstants(of: endWall + unit, every: seconds)
            candidates += local.roundedInstants(of: startWall + seconds, every: seconds)
            let future = candidates.filter { $0 > start }
            rounded = future.filter { $0 <= limit }.max() ?? future.min() ?? limit
        }
        return rounded
    }

    /// Celery's `humanize_seconds`: `5.00 minutes`, `1.00 second`, `now` below a second.
    public static func humanize(seconds: Double, prefix: String = "") -> String {
        for (unit, size) in [("day", 86_400.0), ("hour", 3600), ("minute", 60), ("second", 1)] where seconds >= size {
            let count = seconds / size
            return "\(prefix)\(String(format: "%.2f", count)) \(unit)\(count == 1 ? "" : "s")"
        }
        return "now"
    }
}

/// One entry of `beat_schedule`: a task sent by name on a schedule, with its arguments and `apply_async` options.
public struct BeatEntry: Sendable, Equatable {
    /// The entry's name (the key in `beat_schedule`).
    public var name: String
    /// The task's name.
    public var task: String
    public var schedule: BeatSchedule
    public var args: [CeleryValue]
    public var kwargs: CeleryObject
    /// `apply_async` options by Celery's names (`queue`, `routing_key`, `exchange`, `priority`, `expires`,
    /// `countdown`, `headers`, `serializer`, `time_limit`, `soft_time_limit`, `ignore_result`, …).
    public var options: CeleryObject
    /// RedBeat's `enabled`: a disabled entry is kept but not sent. Only RedBeat's scheduler has it.
    public var enabled: Bool

    public init(
        name: String, task: String, schedule: BeatSchedule, args: [CeleryValue] = [], kwargs: CeleryObject = [:],
        options: CeleryObject = [:], enabled: Bool = true
    ) {
        self.name = name
        self.task = task
        self.schedule = schedule
        self.args = args
        self.kwargs = kwargs
        self.options = options
        self.enabled = enabled
    }

    /// The signature beat sends: the entry's options, with the `celery_beat_task` header Celery's beat adds, and the
    /// args shown as the list Celery's beat passes (`[2, 3]`).
    var signature: Signature {
        var options = self.options
        if options["argsrepr"] == nil { options["argsrepr"] = .string(PythonRepr.truncated(PythonRepr.repr(.array(args)))) }
        var headers = options["headers"]?.objectValue ?? [:]
        headers["celery_beat_task"] = .bool(true)
        options["headers"] = .object(headers)
        return Signature(task: task, args: args, kwargs: kwargs, options: options)
    }
}

/// The embedded beat's settings (`-B`): `beat_schedule`, `beat_schedule_filename` (`-s`), `beat_max_loop_interval`
/// and `beat_cron_starting_deadline`.
public struct BeatConfiguration: Sendable, Equatable {
    public var entries: [BeatEntry]
    /// Where the last run of each entry is kept across restarts (Celery's `celerybeat-schedule` by default).
    public var scheduleFilename: String
    /// The longest beat sleeps before it looks at the schedule again (300 s, Celery's).
    public var maxLoopInterval: Double
    /// `beat_cron_starting_deadline`: a crontab run missed by more than this many seconds is not made up.
    public var cronStartingDeadline: Double?
    /// The worker's own `swift_beat_lock`: what the keys that keep the schedule to one beat are named after
    /// (`<name>.lock`, `<name>.runs`, behind the broker's `global_keyprefix`); `nil`: no lock, every beat sends, as
    /// Python's beats do. Default `swift-celery-beat`.
    public var lockName: String?
    /// Celery 5.7's `beat_enable_remote_control`: beat answers `ping` (`celery inspect ping`) as ``hostname``, so it
    /// can be health-checked. Default off, as in Celery.
    public var remoteControl = false
    /// The node remote control reaches beat as; `nil`: `celerybeat@<host>`, Celery's.
    public var hostname: String?
    /// `beat_remote_control_max_tick_age`: beat stops answering once it has not looked at its schedule for this many
    /// seconds (0: never); `nil`: twice ``maxLoopInterval``, at least 60, as Celery's.
    public var remoteControlMaxTickAge: Double?
    /// `control_exchange`: the pidbox's exchange is `<control_exchange>.pidbox`.
    public var controlExchange = "celery"
    /// celery-redbeat's scheduler (`-S redbeat.RedBeatScheduler`): the schedule, each entry's last run and the lock
    /// kept in Redis as RedBeat keeps them, in place of the schedule file and ``lockName``; `nil`: Celery's persistent
    /// scheduler.
    public var redbeat: RedBeatConfiguration?

    public init(
        entries: [BeatEntry] = [], scheduleFilename: String = "celerybeat-schedule", maxLoopInterval: Double = 300,
        cronStartingDeadline: Double? = nil, lockName: String? = "swift-celery-beat"
    ) {
        self.lockName = lockName
        self.entries = entries
        self.scheduleFilename = scheduleFilename
        self.maxLoopInterval = maxLoopInterval
        self.cronStartingDeadline = cronStartingDeadline
    }
}

/// Celery's scheduler, without I/O: the last run of each entry, which entries are due, and how long to sleep.
struct BeatScheduler: Equatable {
    /// What Celery's `ScheduleEntry` keeps between runs.
    struct Run: Equatable {
        var lastRunAt: Double
        var totalRunCount: Int
    }

    let configuration: BeatConfiguration
    let zone: CeleryTimeZone
    private(set) var runs: [String: Run]

    /// The entries of `configuration`, with the runs kept from before for those it still names (Celery's
    /// `merge_inplace`); a new entry counts from `now`, so an interval's first run comes one interval after start.
    init(configuration: BeatConfiguration, zone: CeleryTimeZone, kept: [String: Run], now: Double) {
        self.configuration = configuration
        self.zone = zone
        var runs: [String: Run] = [:]
        for entry in configuration.entries { runs[entry.name] = kept[entry.name] ?? Run(lastRunAt: now, totalRunCount: 0) }
        self.runs = runs
    }

    /// The entries due at `now`, in the schedule's order, each recorded as run now (before it is sent, as Celery
    /// reserves it, so one that cannot be sent is not sent again at once), and how long to sleep after sending them.
    mutating func tick(now: Double) -> (due: [BeatEntry], sleep: Double) {
        var due: [BeatEntry] = []
        var sleep = configuration.maxLoopInterval
        for entry in configuration.entries {
            let run = runs[entry.name] ?? Run(lastRunAt: now, totalRunCount: 0)
            let state = entry.schedule.isDue(
                lastRunAt: run.lastRunAt, now: now, zone: zone, startingDeadline: configuration.cronStartingDeadline)
            if state.due {
                due.append(entry)
                runs[entry.name] = Run(lastRunAt: now, totalRunCount: run.totalRunCount + 1)
            }
            sleep = min(sleep, state.next)
        }
        return (due, max(sleep, 0))
    }
}

/// The file that keeps each entry's last run across restarts (`-s`, `beat_schedule_filename`): the Swift worker's
/// own JSON, `{"swift_celery_beat": 1, "tz": …, "utc_enabled": …, "entries": {name: {"last_run_at": …,
/// "total_run_count": …}}}`, written whole to a new file and renamed over the old. Python's `shelve` files are not
/// read. As Celery's, it is started afresh when `timezone` or `enable_utc` changed.
struct BeatScheduleFile {
    let path: String

    struct Contents: Equatable {
        var timezone: String
        var utcEnabled: Bool
        var runs: [String: BeatScheduler.Run] = [:]
    }

    /// The file's contents; `nil` when there is none yet. A file that is not the worker's JSON is an error that
    /// says so.
    func load() throws(CeleryWorkerError) -> Contents? {
        guard FileManager.default.fileExists(atPath: path) else { return nil }
        guard let data = FileManager.default.contents(atPath: path),
            case .object(let object)? = try? CeleryJSON.decode(Array(data)), object["swift_celery_beat"] != nil
        else {
            throw CeleryWorkerError(
                code: .invalidConfiguration,
                message: "schedule file \(path) is not the Swift worker's JSON schedule (a Python beat's shelve file cannot be read)")
        }
        var contents = Contents(timezone: object["tz"]?.stringValue ?? "", utcEnabled: object["utc_enabled"]?.boolValue ?? true)
        if case .object(let entries)? = object["entries"] {
            for (name, entry) in entries {
                guard let lastRunAt = entry.objectValue?["last_run_at"]?.doubleValue else { continue }
                contents.runs[name] = BeatScheduler.Run(
                    lastRunAt: lastRunAt, totalRunCount: entry.objectValue?["total_run_count"]?.intValue ?? 0)
            }
        }
        return contents
    }

    func save(_ contents: Contents) throws(CeleryWorkerError) {
        var entries = CeleryObject()
        for (name, run) in contents.runs.sorted(by: { $0.key < $1.key }) {
            entries[name] = .object(["last_run_at": .double(run.lastRunAt), "total_run_count": .int(Int64(run.totalRunCount))])
        }
        let bytes = CeleryJSON.encode([
            "swift_celery_beat": 1, "tz": .string(contents.timezone), "utc_enabled": .bool(contents.utcEnabled),
            "entries": .object(entries),
        ])
        try StateDB.replace(path, with: bytes, naming: "schedule file")
    }
}

/// Wall-clock times in a zone as Python's `zoneinfo` reads them: a wall time is local seconds since the epoch, and
/// `fold` picks the first (0) or second (1) of two occurrences of a time a change of the clocks repeats; a time a
/// change skips is read with the offset before the change (fold 0) or after it (fold 1).
struct LocalClock {
    let zone: CeleryTimeZone

    /// The wall time of a Unix time.
    func wall(_ unixTime: Double) -> Double { unixTime + Double(zone.secondsFromGMT(at: unixTime)) }

    /// The instants a wall time names: one, two when it is repeated, none when it is skipped.
    func instants(ofWall wall: Double) -> [Double] {
        let offsets = Set([zone.secondsFromGMT(at: wall - 86_400), zone.secondsFromGMT(at: wall + 86_400)])
        return offsets.map { wall - Double($0) }.filter { zone.secondsFromGMT(at: $0) == Int((wall - $0).rounded()) }.sorted()
    }

    /// A wall time as a Unix time, as `datetime(..., fold=fold).astimezone(utc)`.
    func unixTime(wall: Double, fold: Int) -> Double {
        let valid = instants(ofWall: wall)
        if let first = valid.first { return fold == 0 || valid.count == 1 ? first : valid[valid.count - 1] }
        let offset = fold == 0 ? zone.secondsFromGMT(at: wall - 86_400) : zone.secondsFromGMT(at: wall + 86_400)
        return wall - Double(offset)
    }

    /// Celery's `_relative_end_dates`: `wall` rounded down to the unit of `seconds` (`delta_resolution`, then whole
    /// seconds), read with fold 0 and 1, a skipped time moved forward past its gap (dateutil's `resolve_imaginary`).
    func roundedInstants(of wall: Double, every seconds: Double) -> [Double] {
        let unit: Double = seconds >= 86_400 ? 86_400 : seconds >= 3600 ? 3600 : seconds >= 60 ? 60 : 1
        var rounded = (wall / unit).rounded(.down) * unit
        if instants(ofWall: rounded).isEmpty {
            let gap = Double(zone.secondsFromGMT(at: rounded + 86_400) - zone.secondsFromGMT(at: rounded - 86_400))
            if gap > 0 { rounded += gap }
        }
        return [unixTime(wall: rounded, fold: 0), unixTime(wall: rounded, fold: 1)]
    }
}
