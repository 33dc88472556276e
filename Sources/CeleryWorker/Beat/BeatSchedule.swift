import CeleryProtocol
import Foundation
import OrderedCollections

/// When a periodic task runs: every so many seconds (Celery's `schedule`, a number in `beat_schedule`), or by a
/// ``Crontab``.
public enum BeatSchedule: Sendable, Hashable, CustomStringConvertible {
    case every(seconds: Double)
    case crontab(Crontab)

    /// Celery's `is_due(last_run_at)` at `now`: whether the task is due, and in how many seconds to look again (after
    /// a run, the time to the next one). `startingDeadline` is `beat_cron_starting_deadline`: a crontab run missed
    /// by more than that many seconds is not made up.
    public func isDue(lastRunAt: Double, now: Double, zone: CeleryTimeZone, startingDeadline: Double? = nil) -> (due: Bool, next: Double) {
        switch self {
        case .every(let seconds):
            let remaining = max(lastRunAt + seconds - now, 0)
            return remaining == 0 ? (true, max(seconds, 0)) : (false, remaining)
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
        }
    }

    /// As Celery's `repr`: `<freq: 10.00 seconds>`, `<crontab: 0 4 * * * (m/h/dM/MY/d)>`.
    public var description: String {
        switch self {
        case .every(let seconds): "<freq: \(BeatSchedule.humanize(seconds: seconds))>"
        case .crontab(let crontab): crontab.description
        }
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

    public init(name: String, task: String, schedule: BeatSchedule, args: [CeleryValue] = [], kwargs: CeleryObject = [:], options: CeleryObject = [:])
    {
        self.name = name
        self.task = task
        self.schedule = schedule
        self.args = args
        self.kwargs = kwargs
        self.options = options
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
