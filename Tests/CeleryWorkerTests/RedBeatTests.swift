import CeleryProtocol
import Foundation
import Testing

@testable import CeleryWorker

/// RedBeat's JSON against what celery-redbeat 2.4.2 itself writes and reads (the expected texts are its output, with
/// Celery 5.7); the Interop tests compare the keys a Python RedBeat and the Swift beat keep in Redis.
@Suite("RedBeat's scheduler: its JSON and scores")
struct RedBeatTests {
    static func text(_ bytes: [UInt8]) -> String { String(decoding: bytes, as: UTF8.self) }

    @Test("definitions byte for byte as RedBeat's save writes them")
    func definitions() throws {
        let every = BeatEntry(
            name: "every3", task: "tasks.add", schedule: .every(seconds: 3), args: [1, 2], options: ["queue": "rbq", "priority": 3])
        #expect(
            Self.text(try RedBeatCodec.definition(of: every))
                == #"{"name": "every3", "task": "tasks.add", "args": [1, 2], "kwargs": {}, "options": {"queue": "rbq", "priority": 3}, "#
                + #""schedule": {"__type__": "interval", "every": 3.0, "relative": false}, "enabled": true}"#)
        let cron = BeatEntry(name: "cron", task: "tasks.add", schedule: .crontab(try Crontab(minute: "*/5", hour: "1-23")), args: [3, 4])
        #expect(
            Self.text(try RedBeatCodec.definition(of: cron))
                == #"{"name": "cron", "task": "tasks.add", "args": [3, 4], "kwargs": {}, "options": {}, "schedule": {"__type__": "crontab", "#
                + #""minute": "*/5", "hour": "1-23", "day_of_week": "*", "day_of_month": "*", "month_of_year": "*"}, "enabled": true}"#)
        let relative = BeatEntry(name: "r", task: "t", schedule: .every(seconds: 120, relative: true))
        #expect(
            Self.text(try RedBeatCodec.definition(of: relative))
                == #"{"name": "r", "task": "t", "args": null, "kwargs": {}, "options": {}, "#
                + #""schedule": {"__type__": "interval", "every": 120.0, "relative": true}, "enabled": true}"#)
        var disabled = every
        disabled.enabled = false
        #expect(Self.text(try RedBeatCodec.definition(of: disabled)).hasSuffix(#""enabled": false}"#))
        let solar = BeatEntry(name: "sun", task: "t", schedule: .solar(try SolarSchedule(event: "sunset", latitude: 48.85, longitude: 2.35)))
        #expect(throws: CeleryWorkerError.self) { try RedBeatCodec.definition(of: solar) }
    }

    @Test("datetimes as RedBeat writes and reads them: a zone's wall clock (a repeated hour read as its first), an offset, none")
    func datetimes() throws {
        let paris = try #require(CeleryTimeZone(identifier: "Europe/Paris"))
        let cases: [(Double, String)] = [
            (
                1_796_601_119.562226,
                #"{"__type__": "datetime", "year": 2026, "month": 12, "day": 7, "hour": 0, "minute": 51, "second": 59, "microsecond": 562226, "timezone": "Europe/Paris"}"#
            ),
            (
                1_792_891_800,
                #"{"__type__": "datetime", "year": 2026, "month": 10, "day": 25, "hour": 2, "minute": 30, "second": 0, "microsecond": 0, "timezone": "Europe/Paris"}"#
            ),
            (
                1_774_746_000.5,
                #"{"__type__": "datetime", "year": 2026, "month": 3, "day": 29, "hour": 3, "minute": 0, "second": 0, "microsecond": 500000, "timezone": "Europe/Paris"}"#
            ),
        ]
        for (time, expected) in cases {
            #expect(Self.text(CeleryJSON.encode(RedBeatCodec.datetime(time, zone: paris))) == expected)
        }
        func read(_ text: String) throws -> Double {
            try RedBeatCodec.unixTime(try #require(try CeleryJSON.decode(text).objectValue))
        }
        #expect(abs(try read(cases[0].1) - 1_796_601_119.562226) < 0.000_001)
        // 02:30 on the night the clocks go back names two instants; RedBeat (zoneinfo, fold 0) reads the first.
        #expect(try read(cases[1].1) == 1_792_888_200)
        #expect(
            try read(
                #"{"__type__": "datetime", "year": 2026, "month": 12, "day": 7, "hour": 2, "minute": 0, "second": 0, "microsecond": 0, "timezone": 7200.0}"#
            ) == 1_796_601_600)
        #expect(try read(#"{"__type__": "datetime", "year": 1970, "month": 1, "day": 2}"#) == 86_400)
        #expect(throws: CeleryWorkerError.self) { try read(#"{"__type__": "datetime", "year": 2026, "month": 13, "day": 1}"#) }
        #expect(throws: CeleryWorkerError.self) {
            try read(#"{"__type__": "datetime", "year": 2026, "month": 1, "day": 1, "timezone": "Mars/Olympus"}"#)
        }
    }

    @Test("entries read back: Python's crontab fields as numbers and lists, meta with or without a last run; rrule refused")
    func storedEntries() throws {
        let definition = Array(
            #"{"name": "c", "task": "tasks.add", "args": null, "kwargs": {"z": 1}, "options": {"queue": "q"}, "schedule": {"__type__": "crontab", "minute": 0, "hour": [1, 2], "day_of_week": "*", "day_of_month": "*", "month_of_year": "*"}, "enabled": false}"#
                .utf8)
        let meta = Array(
            #"{"last_run_at": {"__type__": "datetime", "year": 2026, "month": 12, "day": 6, "hour": 23, "minute": 51, "second": 59, "microsecond": 562226, "timezone": "UTC"}, "total_run_count": 2}"#
                .utf8)
        let stored = try RedBeatCodec.stored(definition: definition, meta: meta)
        #expect(stored.entry.schedule == .crontab(try Crontab(minute: "0", hour: "1,2")))
        #expect(stored.entry.args.isEmpty && stored.entry.kwargs == ["z": 1] && stored.entry.options == ["queue": "q"])
        #expect(!stored.entry.enabled && stored.totalRunCount == 2)
        #expect(abs(try #require(stored.lastRunAt) - 1_796_601_119.562226) < 0.000_001)
        let never = try RedBeatCodec.stored(definition: definition, meta: Array(#"{"last_run_at": null}"#.utf8))
        #expect(never.lastRunAt == nil && never.totalRunCount == 0)
        #expect(try RedBeatCodec.stored(definition: definition, meta: nil).lastRunAt == nil)
        // A meta that cannot be read counts as none (due at once), where RedBeat's beat stops.
        for garbage in ["{", #"{"last_run_at": {"__type__": "datetime", "year": 0}}"#, "[]"] {
            let unreadable = try RedBeatCodec.stored(definition: definition, meta: Array(garbage.utf8))
            #expect(unreadable.lastRunAt == nil && unreadable.totalRunCount == 0, "\(garbage)")
        }
        let rrule = Array(#"{"name": "r", "task": "t", "schedule": {"__type__": "rrule", "freq": 5}}"#.utf8)
        #expect(throws: CeleryWorkerError.self) { try RedBeatCodec.stored(definition: rrule, meta: nil) }
        #expect(throws: CeleryWorkerError.self) { try RedBeatCodec.stored(definition: Array("{".utf8), meta: nil) }
        let badCron = Array(#"{"name": "b", "task": "t", "schedule": {"__type__": "crontab", "minute": "61"}}"#.utf8)
        #expect(throws: CeleryWorkerError.self) { try RedBeatCodec.stored(definition: badCron, meta: nil) }
    }

    @Test("scores as RedBeat's: now when never run or overdue, else whole seconds of the next run reckoned from now")
    func scores() throws {
        let every = BeatSchedule.every(seconds: 3)
        #expect(RedBeatCodec.score(every, lastRunAt: nil, now: 1000.7, zone: .utc) == 1000)
        #expect(RedBeatCodec.score(every, lastRunAt: 990, now: 1000.7, zone: .utc) == 1000)
        // RedBeat's due_at is last_run_at + (next - now): the next run, less the time since the last.
        #expect(RedBeatCodec.score(every, lastRunAt: 1000.5, now: 1000.6, zone: .utc) == 1003)
        #expect(RedBeatCodec.score(every, lastRunAt: 1000, now: 1000.000_001, zone: .utc) == 1002)
        let cron = BeatSchedule.crontab(try Crontab(minute: "0", hour: "4"))
        #expect(RedBeatCodec.score(cron, lastRunAt: 0, now: 0.5, zone: .utc) == 4 * 3600 - 1)
        // An entry that never ran is due at once, whatever its schedule, as RedBeat reads it (run on 0001-01-02).
        let paris = try #require(CeleryTimeZone(identifier: "Europe/Paris"))
        let now = 1_796_601_119.5
        for schedule: BeatSchedule in [
            every, .every(seconds: 3600, relative: true),
            .crontab(try Crontab(minute: "0", hour: "4", dayOfWeek: "mon", dayOfMonth: "29", monthOfYear: "2")),
            .solar(try SolarSchedule(event: "sunset", latitude: 48.85, longitude: 2.35)),
        ] {
            #expect(schedule.isDue(lastRunAt: BeatService.neverRun, now: now, zone: paris).due, "\(schedule)")
        }
        // ... unless beat_cron_starting_deadline finds no run within it.
        let nightly = BeatSchedule.crontab(try Crontab(minute: "0", hour: "4"))
        #expect(!nightly.isDue(lastRunAt: BeatService.neverRun, now: now, zone: .utc, startingDeadline: 60).due)
        let yearly = BeatSchedule.crontab(try Crontab(minute: "0", hour: "0", dayOfMonth: "30", monthOfYear: "1"))
        #expect(RedBeatCodec.score(yearly, lastRunAt: 0, now: 1, zone: .utc) == 29 * 86_400 - 1)
    }

    @Test("the settings: scheduler names, prefix, lock key behind the prefix or none, lock timeout, the URL")
    func settings() throws {
        let configuration = try CelerySettings.parse(
            """
            beat_scheduler: redbeat.schedulers.RedBeatScheduler
            redbeat_redis_url: redis://127.0.0.1:6399/4
            redbeat_key_prefix: "rb:"
            redbeat_lock_key: mylock
            redbeat_lock_timeout: 60
            """, source: "test"
        ).beatConfiguration(scheduleFilename: nil, scheduler: nil)
        let redbeat = try #require(configuration.redbeat)
        #expect(redbeat.keyPrefix == "rb:" && redbeat.lockKey == "rb:mylock" && redbeat.lockTimeout == 60)
        #expect(redbeat.redisURL?.database == 4 && redbeat.scheduleKey == "rb::schedule" && redbeat.key(of: "x") == "rb:x")
        let defaults = try CelerySettings().beatConfiguration(scheduleFilename: nil, scheduler: "redbeat.RedBeatScheduler")
        #expect(defaults.redbeat == RedBeatConfiguration() && defaults.redbeat?.lockKey == "redbeat::lock")
        let unlocked = try CelerySettings.parse("redbeat_lock_key: null\n", source: "test").beatConfiguration(
            scheduleFilename: nil, scheduler: "redbeat.RedBeatScheduler")
        #expect(unlocked.redbeat?.lockKey == nil)
        #expect(try CelerySettings().beatConfiguration(scheduleFilename: nil, scheduler: nil).redbeat == nil)
        let disabled = try CelerySettings.parse("beat_schedule: {off: {task: t, schedule: 5, enabled: false}}\n", source: "test")
        #expect(try disabled.beatConfiguration(scheduleFilename: nil, scheduler: "redbeat.RedBeatScheduler").entries.map(\.enabled) == [false])
        #expect(throws: CeleryWorkerError.self) { try disabled.beatConfiguration(scheduleFilename: nil, scheduler: nil) }
        #expect(throws: CeleryWorkerError.self) {
            try CelerySettings().beatConfiguration(scheduleFilename: nil, scheduler: "django_celery_beat.schedulers:DatabaseScheduler")
        }
    }
}

/// RedBeat's `rrule` schedules against what celery-redbeat and dateutil answer (Tests/Fixtures/redbeat-rrules.json,
/// written by Interop/capture_rrules.py).
@Suite("RedBeat's rrule schedules (dateutil's rrule)")
struct RecurrenceRuleTests {
    @Test("every case: the same next occurrence after the last run, is_due and next check as RedBeat's rrule")
    func goldenCases() throws {
        let cases = try #require(fixtureObject("redbeat-rrules.json")["redbeat-rrule"]?.arrayValue)
        #expect(cases.count == 492)
        var failures: [String] = []
        for (index, item) in cases.enumerated() {
            let object = try #require(item.objectValue)
            let rule = try #require(object["rrule"]?.objectValue)
            guard case .rrule(let parsed) = try RedBeatCodec.schedule(.object(rule)) else {
                Issue.record("case \(index) is not read as an rrule")
                continue
            }
            let last = try #require(object["last_run_at"]?.doubleValue)
            let now = try #require(object["now"]?.doubleValue)
            let after = object["after"]?.doubleValue
            let state = parsed.isDue(lastRunAt: last, now: now)
            let next = object["next"]?.doubleValue ?? .infinity
            if parsed.next(after: last) != after || state.due != object["is_due"]?.boolValue
                || abs(state.next - next) > 0.000_1
                    && !(state.next.isInfinite && next.isInfinite)
            {
                failures.append(
                    "case \(index) \(rule): after \(String(describing: parsed.next(after: last))) != \(String(describing: after)), \(state) vs \(String(describing: object["is_due"])) \(next)"
                )
            }
        }
        #expect(failures.isEmpty, "\(failures.count) of \(cases.count): \(failures.prefix(5).joined(separator: "\n"))")
    }

    @Test("values out of dateutil's ranges are refused; a frequency is read by its name too")
    func refused() throws {
        for extra: CeleryObject in [["byweekno": [54]], ["byweekno": 0], ["interval": 0], ["byhour": 24], ["bysetpos": 0], ["byyearday": 367]] {
            var rule: CeleryObject = ["__type__": "rrule", "freq": 3, "dtstart": 1_777_627_820]
            for (key, value) in extra { rule[key] = value }
            #expect(throws: CeleryWorkerError.self) { try RedBeatCodec.schedule(.object(rule)) }
        }
        // Week 53 never falls in June: no occurrence, found within 400 years of the calendar, by the day or by the second.
        for frequency: RecurrenceRule.Frequency in [.daily, .secondly] {
            #expect(try RecurrenceRule(frequency: frequency, start: 0, months: [6], weekNumbers: [53]).next(after: 0) == nil)
        }
        let named = try RedBeatCodec.schedule(.object(["__type__": "rrule", "freq": "daily", "dtstart": 0, "byhour": 4]))
        #expect(named == .rrule(try RecurrenceRule(frequency: .daily, start: 0, hours: [4])))
    }
}
