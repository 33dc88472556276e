import CeleryProtocol
import Foundation

/// celery-redbeat's scheduler (`redbeat.RedBeatScheduler`), kept in Redis as RedBeat 2.x keeps it, so that a Swift
/// beat and Python's RedBeat beats share one schedule, one lock and each entry's last run:
/// - each entry is a hash `<prefix><name>` with `definition` (its task, arguments, options, schedule and `enabled`)
///   and `meta` (`last_run_at`, `total_run_count`), in RedBeat's JSON (`__type__`-tagged datetimes and schedules);
/// - the sorted set `<prefix>:schedule` holds each entry's key, scored by when it is next due (whole Unix seconds);
/// - the set `<prefix>:statics` names the entries that came from `beat_schedule`, so that one removed from it is
///   deleted at the next start;
/// - `<prefix>:lock` (`redbeat_lock_key`) is redis-py's lock, held by the beat that sends, renewed every tick.
///
/// Entries that Python code creates at run time (`RedBeatSchedulerEntry(...).save()`) are sent as RedBeat sends them.
public struct RedBeatConfiguration: Sendable, Equatable {
    /// `redbeat_redis_url`, as written; `nil`: the broker's own connection (RedBeat falls back to `broker_url`).
    public var redisURLText: String?
    /// `redbeat_redis_url` parsed, with `redbeat_redis_use_ssl` (else `broker_use_ssl`) for TLS.
    public var redisURL: RedisURL?
    /// `redbeat_key_prefix`: what every key starts with (`redbeat:`).
    public var keyPrefix: String
    /// `redbeat_lock_key`, behind ``keyPrefix`` (`redbeat::lock`); `nil` (the setting null): no lock, every beat sends.
    public var lockKey: String?
    /// `redbeat_lock_timeout`: how long the lock outlives a beat that stopped renewing it; `nil`: five times the
    /// loop's longest interval, RedBeat's default.
    public var lockTimeout: Double?

    /// RedBeat's settings; `lockKey` left out is RedBeat's `<prefix>:lock`, `.some(nil)` is no lock, and a key that
    /// does not start with the prefix is put behind it, as RedBeat's `RedBeatConfig` does.
    public init(
        redisURLText: String? = nil, redisURL: RedisURL? = nil, keyPrefix: String = "redbeat:", lockKey: String?? = .none,
        lockTimeout: Double? = nil
    ) {
        self.redisURLText = redisURLText
        self.redisURL = redisURL
        self.keyPrefix = keyPrefix
        switch lockKey {
        case .none: self.lockKey = keyPrefix + ":lock"
        case .some(nil): self.lockKey = nil
        // RedBeatConfig: a lock key that does not start with the prefix is put behind it.
        case .some(let key?): self.lockKey = key.hasPrefix(keyPrefix) ? key : keyPrefix + key
        }
        self.lockTimeout = lockTimeout
    }

    /// The names `-S` / `beat_scheduler` give RedBeat's scheduler.
    public static let schedulerNames: Set<String> = [
        "redbeat.RedBeatScheduler", "redbeat.schedulers.RedBeatScheduler", "redbeat.schedulers:RedBeatScheduler",
        "redbeat:RedBeatScheduler",
    ]

    var scheduleKey: String { keyPrefix + ":schedule" }
    var staticsKey: String { keyPrefix + ":statics" }
    func key(of name: String) -> String { keyPrefix + name }
}

/// RedBeat's JSON (`RedBeatJSONEncoder` / `RedBeatJSONDecoder`) for entries, their last runs and their schedules.
enum RedBeatCodec {
    /// An entry as RedBeat keeps it: its definition and its `meta`.
    struct Stored: Equatable {
        var entry: BeatEntry
        /// `nil` when `meta` has none (RedBeat then reads the entry as never run, so due at once).
        var lastRunAt: Double?
        var totalRunCount: Int
    }

    static func failure(_ message: String) -> CeleryWorkerError {
        CeleryWorkerError(code: .invalidConfiguration, message: message)
    }

    /// The `definition` field, in the order RedBeat's `save` writes it. An entry without arguments has `null` for
    /// them, as RedBeat stores a `beat_schedule` entry that gives none (its entry's `args` default to `None`).
    static func definition(of entry: BeatEntry) throws(CeleryWorkerError) -> [UInt8] {
        let object: CeleryObject = [
            "name": .string(entry.name), "task": .string(entry.task), "args": entry.args.isEmpty ? .null : .array(entry.args),
            "kwargs": .object(entry.kwargs),
            "options": .object(entry.options), "schedule": try schedule(entry.schedule, of: entry.name), "enabled": .bool(entry.enabled),
        ]
        return CeleryJSON.encode(.object(object))
    }

    /// The `meta` field: RedBeat's `reserve` writes both; its `save` only `last_run_at`.
    static func meta(lastRunAt: Double?, totalRunCount: Int?, zone: CeleryTimeZone) -> [UInt8] {
        var object: CeleryObject = ["last_run_at": lastRunAt.map { datetime($0, zone: zone) } ?? .null]
        if let totalRunCount { object["total_run_count"] = .int(Int64(totalRunCount)) }
        return CeleryJSON.encode(.object(object))
    }

    /// RedBeat's encoding of a schedule. A solar schedule has none: RedBeat's encoder refuses it too.
    static func schedule(_ schedule: BeatSchedule, of name: String) throws(CeleryWorkerError) -> CeleryValue {
        switch schedule {
        case .every(let seconds, let relative):
            return .object(["__type__": "interval", "every": .double(seconds), "relative": .bool(relative)])
        case .crontab(let crontab):
            return .object([
                "__type__": "crontab", "minute": .string(crontab.minuteSpec), "hour": .string(crontab.hourSpec),
                "day_of_week": .string(crontab.dayOfWeekSpec), "day_of_month": .string(crontab.dayOfMonthSpec),
                "month_of_year": .string(crontab.monthOfYearSpec),
            ])
        case .solar:
            throw failure("entry '\(name)': RedBeat cannot store a solar schedule (its JSON encoder has none)")
        case .rrule:
            // Only read from what Python saved; `beat_schedule` has no form for it, so the Swift beat never writes one.
            throw failure("entry '\(name)': the Swift beat does not write RedBeat's rrule schedules")
        }
    }

    /// An entry read back from its `definition` and `meta` (`meta` may be missing).
    static func stored(definition: [UInt8], meta: [UInt8]?) throws(CeleryWorkerError) -> Stored {
        guard case .object(let object)? = try? CeleryJSON.decode(definition) else {
            throw failure("its definition is not a JSON object")
        }
        guard let name = object["name"]?.stringValue, let task = object["task"]?.stringValue else {
            throw failure("its definition has no name or task")
        }
        guard let scheduleValue = object["schedule"] else { throw failure("its definition has no schedule") }
        var args: [CeleryValue] = []
        switch object["args"] {
        case .array(let list)?: args = list
        case .null?, nil: break
        default: throw failure("its args are not a list")
        }
        var kwargs = CeleryObject()
        switch object["kwargs"] {
        case .object(let mapping)?: kwargs = mapping
        case .null?, nil: break
        default: throw failure("its kwargs are not a mapping")
        }
        var options = CeleryObject()
        switch object["options"] {
        case .object(let mapping)?:
            // A datetime option (`eta`, `expires`) is sent in ISO 8601, as Celery sends a datetime.
            for (key, value) in mapping {
                if case .object(let tagged) = value, tagged["__type__"]?.stringValue == "datetime" {
                    options[key] = .string(CeleryTimeZone.utc.isoformat(unixSeconds: try unixTime(tagged)))
                } else {
                    options[key] = value
                }
            }
        case .null?, nil: break
        default: throw failure("its options are not a mapping")
        }
        let entry = BeatEntry(
            name: name, task: task, schedule: try schedule(scheduleValue), args: args, kwargs: kwargs, options: options,
            enabled: object["enabled"]?.boolValue ?? true)
        var stored = Stored(entry: entry, lastRunAt: nil, totalRunCount: 0)
        (stored.lastRunAt, stored.totalRunCount) = lastRun(meta: meta)
        return stored
    }

    /// The last run and the run count a `meta` field records. A meta that cannot be read counts as none: the entry
    /// is due at once, and its run writes a new meta (RedBeat's beat stops on it).
    static func lastRun(meta: [UInt8]?) -> (lastRunAt: Double?, totalRunCount: Int) {
        guard let meta, case .object(let object)? = try? CeleryJSON.decode(meta) else { return (nil, 0) }
        var lastRunAt: Double?
        if case .object(let tagged)? = object["last_run_at"] { lastRunAt = try? unixTime(tagged) }
        return (lastRunAt, object["total_run_count"]?.intValue ?? 0)
    }

    /// A schedule from RedBeat's JSON: `interval`, `crontab` and `rrule` (see ``RecurrenceRule`` for what of dateutil's
    /// is read).
    static func schedule(_ value: CeleryValue) throws(CeleryWorkerError) -> BeatSchedule {
        guard case .object(let object) = value, let type = object["__type__"]?.stringValue else {
            throw failure("its schedule is not one of RedBeat's (interval, crontab)")
        }
        switch type {
        case "interval":
            guard let seconds = object["every"]?.doubleValue, seconds.isFinite else { throw failure("its interval has no 'every'") }
            return .every(seconds: seconds, relative: object["relative"]?.boolValue ?? false)
        case "crontab":
            var fields: [String: String] = [:]
            for field in ["minute", "hour", "day_of_week", "day_of_month", "month_of_year"] {
                switch object[field] {
                case nil, .null?: fields[field] = "*"
                case .string(let text)?: fields[field] = text
                case .int(let number)?: fields[field] = String(number)
                case .array(let items)?:
                    // Celery's crontab takes a list of numbers for a field; RedBeat writes it as given.
                    let numbers = items.compactMap(\.intValue)
                    guard numbers.count == items.count, !numbers.isEmpty else { throw failure("its crontab's \(field) is not a cron field") }
                    fields[field] = numbers.map(String.init).joined(separator: ",")
                default: throw failure("its crontab's \(field) is not a cron field")
                }
            }
            do throws(CeleryWorkerError) {
                return .crontab(
                    try Crontab(
                        minute: fields["minute"] ?? "*", hour: fields["hour"] ?? "*", dayOfWeek: fields["day_of_week"] ?? "*",
                        dayOfMonth: fields["day_of_month"] ?? "*", monthOfYear: fields["month_of_year"] ?? "*"))
            } catch {
                throw failure("its crontab: \(error.message)")
            }
        case "rrule":
            return .rrule(try rrule(object))
        default:
            throw failure("its schedule is RedBeat's '\(type)', which the Swift beat does not read (interval, crontab and rrule)")
        }
    }

    /// RedBeat's `rrule`: dateutil's arguments, `dtstart` and `until` as whole Unix seconds with their UTC offsets
    /// in minutes (`dtstart_tz`, `until_tz`).
    static func rrule(_ object: CeleryObject) throws(CeleryWorkerError) -> RecurrenceRule {
        let frequencies = ["YEARLY", "MONTHLY", "WEEKLY", "DAILY", "HOURLY", "MINUTELY", "SECONDLY"]
        let frequency: RecurrenceRule.Frequency?
        switch object["freq"] {
        case .string(let name)?: frequency = frequencies.firstIndex(of: name.uppercased()).flatMap { RecurrenceRule.Frequency(rawValue: $0) }
        case let value?: frequency = value.intValue.flatMap { RecurrenceRule.Frequency(rawValue: Int($0)) }
        case nil: frequency = nil
        }
        guard let frequency else { throw failure("its rrule has no valid freq") }
        guard let start = object["dtstart"]?.doubleValue, start.isFinite else { throw failure("its rrule has no dtstart") }
        func number(_ key: String) throws(CeleryWorkerError) -> Int? {
            switch object[key] {
            case nil, .null?: return nil
            case let value?:
                guard let number = value.intValue else { throw failure("its rrule's \(key) is not a whole number") }
                return Int(number)
            }
        }
        // A field is a number, a weekday ({"__type__": "weekday", "wkday": n}), or a list of them.
        func numbers(_ key: String) throws(CeleryWorkerError) -> Set<Int>? {
            func one(_ value: CeleryValue) -> Int? {
                if case .object(let day) = value, day["__type__"]?.stringValue == "weekday" {
                    guard day["n"] == nil || day["n"] == .null else { return nil }
                    return day["wkday"]?.intValue.map { Int($0) }
                }
                return value.intValue.map { Int($0) }
            }
            switch object[key] {
            case nil, .null?: return nil
            case .array(let items)?:
                let values = items.compactMap(one)
                guard values.count == items.count, !values.isEmpty else { throw failure("its rrule's \(key) is not a list of numbers") }
                return Set(values)
            case let value?:
                guard let single = one(value) else { throw failure("its rrule's \(key) is not a number") }
                return [single]
            }
        }
        let until = object["until"]?.doubleValue
        do throws(CeleryWorkerError) {
            return try RecurrenceRule(
                frequency: frequency, start: Int64(start.rounded(.down)),
                offset: Int64(((object["dtstart_tz"]?.doubleValue ?? 0) * 60).rounded()), interval: try number("interval") ?? 1,
                weekStart: try numbers("wkst")?.first ?? 0, count: try number("count"), until: until,
                months: try numbers("bymonth"), monthDays: try numbers("bymonthday"), weekdays: try numbers("byweekday"),
                hours: try numbers("byhour"), minutes: try numbers("byminute"), seconds: try numbers("bysecond"),
                yearDays: try numbers("byyearday"), positions: try numbers("bysetpos"), weekNumbers: try numbers("byweekno"),
                easterOffsets: try numbers("byeaster"))
        } catch {
            throw failure("its \(error.message)")
        }
    }

    /// RedBeat's datetime: the wall-clock fields in `zone`, and the zone's name.
    static func datetime(_ unixTime: Double, zone: CeleryTimeZone) -> CeleryValue {
        // As Python's `datetime.fromtimestamp`: the fraction of the second rounded to microseconds, half to even.
        var whole = unixTime.rounded(.down)
        var microsecond = Int64(((unixTime - whole) * 1_000_000).rounded(.toNearestOrEven))
        if microsecond == 1_000_000 {
            whole += 1
            microsecond = 0
        }
        let seconds = Int64(whole) + Int64(zone.secondsFromGMT(at: whole))
        let date = CivilDate(localSeconds: seconds)
        return .object([
            "__type__": "datetime", "year": .int(Int64(date.year)), "month": .int(Int64(date.month)), "day": .int(Int64(date.day)),
            "hour": .int(Int64(date.hour)), "minute": .int(Int64(date.minute)), "second": .int(Int64(date.second)),
            "microsecond": .int(microsecond), "timezone": .string(zone.identifier),
        ])
    }

    /// The Unix time of RedBeat's datetime: its fields read in its `timezone`, a zone's name (as `zoneinfo` reads a
    /// wall-clock time, `fold=0`) or an offset in seconds; UTC without one.
    static func unixTime(_ object: CeleryObject) throws(CeleryWorkerError) -> Double {
        func part(_ key: String, _ range: ClosedRange<Int64>, default fallback: Int64? = nil) throws(CeleryWorkerError) -> Int64 {
            guard let value = object[key]?.intValue.map(Int64.init) ?? fallback, range.contains(value) else {
                throw failure("its datetime has no valid '\(key)'")
            }
            return value
        }
        let year = try part("year", 1...9999)
        let month = try part("month", 1...12)
        let day = try part("day", 1...31)
        let days = Int64(CeleryTimestamp.daysFromCivil(year: Int(year), month: Int(month), day: Int(day)))
        let seconds =
            try days * 86_400 + part("hour", 0...23, default: 0) * 3600 + part("minute", 0...59, default: 0) * 60
            + part("second", 0...59, default: 0)
        let wall = Double(seconds) + Double(try part("microsecond", 0...999_999, default: 0)) / 1_000_000
        switch object["timezone"] {
        case nil, .null?:
            return wall
        case .string(let name)?:
            guard let zone = CeleryTimeZone(identifier: name) else { throw failure("its datetime's time zone '\(name)' is unknown") }
            return LocalClock(zone: zone).unixTime(wall: wall, fold: 0)
        case let offset?:
            guard let seconds = offset.doubleValue, seconds.isFinite else { throw failure("its datetime's time zone is not a zone") }
            return wall - seconds
        }
    }

    /// RedBeat's score of an entry: when it is next due (`due_at`), in whole Unix seconds as `calendar.timegm`
    /// counts them; now when it never ran or is overdue, -1 when it will never run again. As RedBeat's, the time to
    /// the next run is reckoned from `now`, not from the last run.
    static func score(_ schedule: BeatSchedule, lastRunAt: Double?, now: Double, zone: CeleryTimeZone) -> Int64 {
        guard let lastRunAt else { return Int64(now.rounded(.down)) }
        guard let next = nextRun(schedule, after: lastRunAt, zone: zone) else { return -1 }
        let remaining = next - now
        return Int64((remaining < 0 ? now : lastRunAt + remaining).rounded(.down))
    }

    /// When a schedule's next run after `lastRunAt` comes (Celery's `remaining_estimate`, from the last run).
    static func nextRun(_ schedule: BeatSchedule, after lastRunAt: Double, zone: CeleryTimeZone) -> Double? {
        switch schedule {
        case .every(let seconds, let relative):
            relative ? BeatSchedule.relativeEnd(start: lastRunAt, every: seconds, zone: zone) : lastRunAt + seconds
        case .crontab(let crontab): crontab.nextRun(after: lastRunAt, in: zone)
        case .solar(let solar): solar.nextEvent(after: lastRunAt)
        case .rrule(let rule): rule.next(after: lastRunAt)
        }
    }
}
