import CeleryProtocol
import Foundation
import Yams

/// The beat settings of a configuration file, read whether or not `-B` asks for beat (as Celery reads them).
public struct BeatSettings: Sendable, Equatable {
    /// `beat_schedule` (`CELERYBEAT_SCHEDULE`), in the file's order.
    public var schedule: [BeatEntry]?
    /// `beat_schedule_filename` (`CELERYBEAT_SCHEDULE_FILENAME`).
    public var scheduleFilename: String?
    /// `beat_max_loop_interval` (`CELERYBEAT_MAX_LOOP_INTERVAL`).
    public var maxLoopInterval: Double?
    /// `beat_cron_starting_deadline`; `.some(nil)` when the file sets it to null.
    public var cronStartingDeadline: Double??
    /// `beat_scheduler` (`CELERYBEAT_SCHEDULER`): only Celery's own persistent scheduler can be embedded.
    public var scheduler: String?
    /// The worker's own `swift_beat_lock`: a name for the keys that keep the schedule to one beat, or `false`
    /// (`.some(nil)`) for none.
    public var lockName: String??
    /// `beat_enable_remote_control` (Celery 5.7).
    public var remoteControl: Bool?
    /// `beat_remote_control_max_tick_age` (Celery 5.7); `.some(nil)` when the file sets it to null.
    public var remoteControlMaxTickAge: Double??

    /// celery-redbeat's settings, read when `beat_scheduler` (or `-S`) names RedBeat's scheduler:
    /// `redbeat_redis_url`, `redbeat_key_prefix`, `redbeat_lock_key` (`.some(nil)` when null: no lock),
    /// `redbeat_lock_timeout` and `redbeat_redis_use_ssl`.
    public var redbeatRedisURL: String?
    public var redbeatKeyPrefix: String?
    public var redbeatLockKey: String??
    public var redbeatLockTimeout: Double?
    public var redbeatTLS: RedisTLS?

    public init() {}

    /// The names of Celery's default scheduler, the only one the worker embeds.
    public static let defaultSchedulers: Set<String> = [
        "celery.beat:PersistentScheduler", "celery.beat.PersistentScheduler", "PersistentScheduler",
    ]
}

extension CelerySettings {
    /// Beat's configuration: this file's settings, under what the command line gives (`-s`, `--scheduler`,
    /// `--max-interval`, `--enable-remote-control`). Throws for a scheduler other than Celery's default.
    public func beatConfiguration(
        scheduleFilename: String?, scheduler: String?, maxLoopInterval: Double? = nil, remoteControl: Bool? = nil
    ) throws(CeleryWorkerError) -> BeatConfiguration {
        let name = scheduler ?? beat.scheduler ?? "celery.beat:PersistentScheduler"
        guard BeatSettings.defaultSchedulers.contains(name) || RedBeatConfiguration.schedulerNames.contains(name) else {
            throw CeleryWorkerError(
                code: .invalidConfiguration,
                message: "--scheduler \(name): beat here is Celery's default persistent scheduler "
                    + "(celery.beat:PersistentScheduler) or celery-redbeat's (redbeat.RedBeatScheduler); run Python's `celery beat` "
                    + "for another scheduler.")
        }
        var configuration = BeatConfiguration(
            entries: beat.schedule ?? [], scheduleFilename: scheduleFilename ?? beat.scheduleFilename ?? "celerybeat-schedule",
            maxLoopInterval: maxLoopInterval ?? beat.maxLoopInterval ?? 300, cronStartingDeadline: beat.cronStartingDeadline ?? nil,
            lockName: beat.lockName ?? "swift-celery-beat")
        configuration.remoteControl = remoteControl ?? beat.remoteControl ?? false
        configuration.remoteControlMaxTickAge = beat.remoteControlMaxTickAge ?? nil
        configuration.controlExchange = controlExchange ?? "celery"
        if RedBeatConfiguration.schedulerNames.contains(name) {
            configuration.redbeat = try redbeatConfiguration()
            // What RedBeat cannot store stops beat at start, as RedBeat's own encoder stops it.
            for entry in configuration.entries {
                do throws(CeleryWorkerError) {
                    _ = try RedBeatCodec.schedule(entry.schedule, of: entry.name)
                } catch {
                    throw CeleryWorkerError(code: .invalidConfiguration, message: "beat_schedule: \(error.message)")
                }
            }
        } else if let entry = configuration.entries.first(where: { !$0.enabled }) {
            // Celery's ScheduleEntry takes no `enabled`: Python's persistent beat stops at start on it.
            throw CeleryWorkerError(
                code: .invalidConfiguration,
                message: "beat_schedule: entry '\(entry.name)': enabled is RedBeat's (redbeat.RedBeatScheduler); Celery's "
                    + "persistent scheduler has no disabled entries: leave the entry out")
        }
        return configuration
    }

    /// RedBeat's settings, its Redis's URL parsed, with `redbeat_redis_use_ssl` (else `broker_use_ssl`) for TLS.
    func redbeatConfiguration() throws(CeleryWorkerError) -> RedBeatConfiguration {
        var redbeat = RedBeatConfiguration(
            redisURLText: beat.redbeatRedisURL, keyPrefix: beat.redbeatKeyPrefix ?? "redbeat:", lockKey: beat.redbeatLockKey,
            lockTimeout: beat.redbeatLockTimeout)
        if let text = beat.redbeatRedisURL {
            let sentinelOrCluster =
                "redbeat_redis_url: RedBeat's Sentinel and cluster modes (redis-sentinel:// and redis-cluster:// with "
                + "redbeat_redis_options) are not supported by the Swift beat; give it the master's redis:// URL"
            if text.lowercased().hasPrefix("redis-sentinel") || text.lowercased().hasPrefix("redis-cluster") {
                throw CeleryWorkerError(code: .invalidConfiguration, message: sentinelOrCluster)
            }
            var url: RedisURL
            do throws(CeleryWorkerError) {
                url = try RedisURL(parsing: text)
            } catch {
                throw CeleryWorkerError(code: .invalidConfiguration, message: "redbeat_redis_url: \(error.message)")
            }
            if case .sentinel = url.endpoint { throw CeleryWorkerError(code: .invalidConfiguration, message: sentinelOrCluster) }
            _ = try url.settleBrokerTLS(configured: beat.redbeatTLS ?? brokerTLS)
            redbeat.redisURL = url
        }
        return redbeat
    }

    /// The beat settings, each under its new and old name.
    static let beatSettings: [(names: [String], read: Setter)] = [
        (["beat_schedule", "CELERYBEAT_SCHEDULE"], { $0.beat.schedule = try $1.beatSchedule() }),
        (["beat_schedule_filename", "CELERYBEAT_SCHEDULE_FILENAME"], { $0.beat.scheduleFilename = try $1.string() }),
        (
            ["beat_max_loop_interval", "CELERYBEAT_MAX_LOOP_INTERVAL"],
            { settings, field in
                // 0, Celery's default, means beat's own 300 s, as in Celery's `Scheduler`.
                let seconds = try field.seconds()
                guard seconds >= 0 else { throw field.fail("a number of seconds, 0 for 300") }
                settings.beat.maxLoopInterval = seconds > 0 ? seconds : nil
            }
        ),
        (
            ["beat_cron_starting_deadline"],
            { $0.beat.cronStartingDeadline = try $1.secondsOrNull("a number of seconds, 0 or more, or null") }
        ),
        (["beat_scheduler", "CELERYBEAT_SCHEDULER"], { $0.beat.scheduler = try $1.string() }),
        (["beat_enable_remote_control"], { $0.beat.remoteControl = try $1.bool() }),
        (
            ["beat_remote_control_max_tick_age"],
            { $0.beat.remoteControlMaxTickAge = try $1.secondsOrNull("a number of seconds, 0 or more (0: never stale), or null") }
        ),
        (["redbeat_redis_url", "REDBEAT_REDIS_URL"], { $0.beat.redbeatRedisURL = try $1.string() }),
        (
            ["redbeat_key_prefix", "REDBEAT_KEY_PREFIX"],
            { settings, field in
                let prefix = try field.string()
                guard !prefix.isEmpty else { throw field.fail("a key prefix") }
                settings.beat.redbeatKeyPrefix = prefix
            }
        ),
        (
            ["redbeat_lock_key", "REDBEAT_LOCK_KEY"],
            { settings, field in
                if field.value is NSNull {
                    settings.beat.redbeatLockKey = .some(nil)
                    return
                }
                let key = try field.string()
                guard !key.isEmpty else { throw field.fail("a key name, or null for no lock") }
                settings.beat.redbeatLockKey = key
            }
        ),
        (
            ["redbeat_lock_timeout", "REDBEAT_LOCK_TIMEOUT"],
            { settings, field in
                let seconds = try field.seconds()
                guard seconds >= 1 else { throw field.fail("a number of seconds, 1 or more") }
                settings.beat.redbeatLockTimeout = seconds
            }
        ),
        (
            ["redbeat_redis_use_ssl", "REDBEAT_REDIS_USE_SSL"],
            { settings, field in
                if field.value is Bool { return }
                settings.beat.redbeatTLS = try field.tls()
            }
        ),
        (
            ["redbeat_redis_options", "REDBEAT_REDIS_OPTIONS"],
            { settings, field in
                guard field.value is [String: Any] else { throw field.fail("a mapping") }
                settings.warnings.append(
                    "\(field.source): redbeat_redis_options changes nothing here: the Swift beat reaches RedBeat's Redis as "
                        + "redbeat_redis_url says, and tries again every second while it does not answer")
            }
        ),
        (
            ["swift_beat_lock"],
            { settings, field in
                if field.value as? Bool == false {
                    settings.beat.lockName = .some(nil)
                    return
                }
                let name = try field.string()
                guard !name.isEmpty else { throw field.fail("a key name, or false for no lock") }
                settings.beat.lockName = name
            }
        ),
    ]
}

extension CelerySettings.Field {
    /// A number of seconds from 0, or null (`.some(nil)`); `expected` says what, should it be neither.
    func secondsOrNull(_ expected: String) throws(CeleryWorkerError) -> Double?? {
        if value is NSNull { return .some(nil) }
        let seconds = try seconds()
        guard seconds >= 0 else { throw fail(expected) }
        return seconds
    }

    /// `beat_schedule`: a mapping of entry names to `{task, schedule, args, kwargs, options}`. A schedule is a number
    /// of seconds, `{timedelta: {days, hours, minutes, seconds}}`, or `{crontab: {minute, hour, day_of_week,
    /// day_of_month, month_of_year}}` (each a cron field, a number or a list of numbers) or `{crontab: "m h dom mon
    /// dow"}` (Celery's `crontab.from_string`), or `{solar: {event, lat, lon}}` (or `{solar: [event, lat, lon]}`,
    /// Celery's `solar(event, lat, lon)`).
    func beatSchedule() throws(CeleryWorkerError) -> [BeatEntry] {
        guard let node else { throw fail("a mapping of entry names to {task, schedule, args, kwargs, options}") }
        if node.null != nil { return [] }
        guard case .mapping(let mapping) = node else {
            throw fail("a mapping of entry names to {task, schedule, args, kwargs, options}")
        }
        var entries: [BeatEntry] = []
        for (nameNode, entryNode) in mapping {
            guard let name = nameNode.string else { throw fail("a mapping with entry names as keys") }
            entries.append(try beatEntry(named: name, entryNode))
        }
        return entries
    }

    private func entryError(_ name: String, _ message: String) -> CeleryWorkerError {
        CeleryWorkerError(code: .invalidConfiguration, message: "\(source): setting '\(key)': entry '\(name)': \(message)")
    }

    private func beatEntry(named name: String, _ node: Node) throws(CeleryWorkerError) -> BeatEntry {
        guard case .mapping(let mapping) = node else {
            throw entryError(name, "must be a mapping of task, schedule, args, kwargs and options")
        }
        var task: String?
        var schedule: BeatSchedule?
        var args: [CeleryValue] = []
        var kwargs = CeleryObject()
        var options = CeleryObject()
        var relative = false
        var enabled = true
        for (keyNode, value) in mapping {
            let field = keyNode.string ?? ""
            switch field {
            case "task":
                guard let text = value.scalar?.string, value.null == nil, !text.isEmpty else { throw entryError(name, "task must be a task name") }
                task = text
            case "schedule":
                schedule = try beatSchedule(of: name, value)
            case "args":
                if value.null != nil { continue }
                guard case .array(let list)? = Self.celeryValue(value) else { throw entryError(name, "args must be a list") }
                args = list
            case "kwargs":
                if value.null != nil { continue }
                guard case .object(let object)? = Self.celeryValue(value) else { throw entryError(name, "kwargs must be a mapping") }
                kwargs = object
            case "options":
                if value.null != nil { continue }
                guard case .object(let object)? = Self.celeryValue(value) else {
                    throw entryError(name, "options must be a mapping of apply_async options (queue, priority, expires, …)")
                }
                options = object
            case "relative":
                guard let flag = value.bool else { throw entryError(name, "relative must be true or false") }
                relative = flag
            case "enabled":
                guard let flag = value.bool else { throw entryError(name, "enabled must be true or false") }
                enabled = flag
            default:
                throw entryError(
                    name, "unknown key '\(field)' (an entry has task, schedule, args, kwargs, options, relative and, with RedBeat, enabled)")
            }
        }
        guard let task else { throw entryError(name, "task is missing") }
        guard var schedule else { throw entryError(name, "schedule is missing") }
        // As Celery's maybe_schedule: `relative` makes an interval relative and leaves a crontab as it is.
        if relative, case .every(let seconds, _) = schedule { schedule = .every(seconds: seconds, relative: true) }
        return BeatEntry(name: name, task: task, schedule: schedule, args: args, kwargs: kwargs, options: options, enabled: enabled)
    }

    private func beatSchedule(of name: String, _ node: Node) throws(CeleryWorkerError) -> BeatSchedule {
        let expected =
            "schedule must be a number of seconds, {timedelta: {days, hours, minutes, seconds}}, {crontab: {minute, hour, "
            + "day_of_week, day_of_month, month_of_year}}, {crontab: \"m h dom mon dow\"} or {solar: {event, lat, lon}}"
        if node.scalar != nil, Self.tagName(node) == .int || Self.tagName(node) == .float, let seconds = node.float {
            guard seconds > 0, seconds.isFinite else { throw entryError(name, "schedule must be a number of seconds above 0") }
            return .every(seconds: seconds)
        }
        guard case .mapping(let mapping) = node, mapping.count == 1, let (kindNode, value) = mapping.first, let kind = kindNode.string
        else { throw entryError(name, expected) }
        switch kind {
        case "timedelta":
            guard case .mapping(let parts) = value else { throw entryError(name, expected) }
            var seconds = 0.0
            for (unitNode, amount) in parts {
                let units: [String: Double] = ["weeks": 604_800, "days": 86_400, "hours": 3600, "minutes": 60, "seconds": 1, "milliseconds": 0.001]
                guard let unit = unitNode.string.flatMap({ units[$0] }), let count = amount.float, Self.tagName(amount) != .str else {
                    throw entryError(name, "a timedelta has weeks, days, hours, minutes, seconds and milliseconds, each a number")
                }
                seconds += unit * count
            }
            guard seconds > 0 else { throw entryError(name, "schedule must be a timedelta above 0") }
            return .every(seconds: seconds)
        case "crontab":
            do throws(CeleryWorkerError) {
                if let text = value.scalar?.string, Self.tagName(value) == .str { return .crontab(try Crontab(cronString: text)) }
                guard case .mapping(let fields) = value else { throw entryError(name, expected) }
                var specs: [String: String] = [:]
                for (fieldNode, spec) in fields {
                    guard let field = fieldNode.string, ["minute", "hour", "day_of_week", "day_of_month", "month_of_year"].contains(field)
                    else {
                        throw entryError(name, "a crontab has minute, hour, day_of_week, day_of_month and month_of_year")
                    }
                    if case .sequence(let items) = spec {
                        specs[field] = items.compactMap(\.scalar?.string).joined(separator: ",")
                    } else if let text = spec.scalar?.string, spec.null == nil {
                        specs[field] = text
                    } else {
                        throw entryError(name, "crontab field \(field) must be a cron field, a number or a list of numbers")
                    }
                }
                return .crontab(
                    try Crontab(
                        minute: specs["minute"] ?? "*", hour: specs["hour"] ?? "*", dayOfWeek: specs["day_of_week"] ?? "*",
                        dayOfMonth: specs["day_of_month"] ?? "*", monthOfYear: specs["month_of_year"] ?? "*"))
            } catch  where !error.message.hasPrefix(source) {
                throw entryError(name, "crontab: \(error.message)")
            }
        case "solar":
            return .solar(try solar(of: name, value))
        default:
            throw entryError(name, expected)
        }
    }

    /// `{solar: {event: sunset, lat: 48.85, lon: 2.35}}` or `{solar: [sunset, 48.85, 2.35]}`.
    private func solar(of name: String, _ node: Node) throws(CeleryWorkerError) -> SolarSchedule {
        let shape = "solar takes {event, lat, lon} or [event, lat, lon]: an event name and two numbers"
        let parts: [String: Node]
        switch node {
        case .mapping(let fields):
            var named: [String: Node] = [:]
            for (field, value) in fields {
                guard let field = field.string, ["event", "lat", "lon"].contains(field) else { throw entryError(name, shape) }
                named[field] = value
            }
            parts = named
        case .sequence(let items) where items.count == 3:
            parts = ["event": items[0], "lat": items[1], "lon": items[2]]
        default:
            throw entryError(name, shape)
        }
        func number(_ key: String) throws(CeleryWorkerError) -> (Double, String) {
            guard let node = parts[key], Self.tagName(node) == .int || Self.tagName(node) == .float, let value = node.float else {
                throw entryError(name, shape)
            }
            // Python prints an int as written and a float by its repr.
            return (value, Self.tagName(node) == .int ? Int(exactly: value).map { String($0) } ?? value.description : value.description)
        }
        guard let eventNode = parts["event"], Self.tagName(eventNode) == .str, let event = eventNode.string else {
            throw entryError(name, shape)
        }
        let (latitude, writtenLatitude) = try number("lat")
        let (longitude, writtenLongitude) = try number("lon")
        do throws(CeleryWorkerError) {
            return try SolarSchedule(
                event: event, latitude: latitude, longitude: longitude, written: (writtenLatitude, writtenLongitude))
        } catch {
            throw entryError(name, "solar: \(error.message)")
        }
    }

    /// What a YAML value was resolved as (`tag:yaml.org,2002:int`, …).
    static func tagName(_ node: Node) -> Tag.Name {
        Tag.Name(rawValue: node.tag.description)
    }

    /// A YAML value as a Celery value, mappings in the file's order; `nil` for what has none (a mapping whose keys
    /// are not text).
    static func celeryValue(_ node: Node) -> CeleryValue? {
        switch node {
        case .scalar(let scalar):
            switch Self.tagName(node) {
            case .null: return .null
            case .bool: return node.bool.map(CeleryValue.bool)
            case .int: return node.int.map { .int(Int64($0)) } ?? CeleryValue(integerText: scalar.string)
            case .float: return node.float.map(CeleryValue.double)
            default: return .string(scalar.string)
            }
        case .sequence(let sequence):
            var items: [CeleryValue] = []
            for item in sequence {
                guard let value = celeryValue(item) else { return nil }
                items.append(value)
            }
            return .array(items)
        case .mapping(let mapping):
            var object = CeleryObject()
            for (keyNode, item) in mapping {
                guard let key = keyNode.string, let value = celeryValue(item) else { return nil }
                object[key] = value
            }
            return .object(object)
        default:
            return nil
        }
    }
}
