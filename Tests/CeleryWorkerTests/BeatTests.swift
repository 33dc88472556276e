import CeleryProtocol
import Foundation
import Testing

@testable import CeleryWorker

/// The embedded beat's schedules against what Celery's own `crontab` and `schedule` answer
/// (Tests/Fixtures/beat-schedules.json, written by Interop/capture_schedules.py), and its scheduler, schedule file and
/// settings.
@Suite("Beat (Celery's periodic task scheduler)")
struct BeatTests {
    static let golden = fixtureObject("beat-schedules.json")

    static func crontab(_ spec: CeleryValue?) throws -> Crontab {
        let fields = spec?.objectValue ?? [:]
        return try Crontab(
            minute: fields["minute"]?.stringValue ?? "*", hour: fields["hour"]?.stringValue ?? "*",
            dayOfWeek: fields["day_of_week"]?.stringValue ?? "*", dayOfMonth: fields["day_of_month"]?.stringValue ?? "*",
            monthOfYear: fields["month_of_year"]?.stringValue ?? "*")
    }

    @Test("every crontab case: the same next run, is_due and next check as Celery's crontab")
    func crontabCases() throws {
        let cases = try #require(Self.golden["crontab"]?.arrayValue)
        #expect(cases.count == 240)
        var due = 0
        for item in cases {
            let object = try #require(item.objectValue)
            let cron = try Self.crontab(object["crontab"])
            let zoneName = try #require(object["timezone"]?.stringValue)
            let zone = try #require(CeleryTimeZone(identifier: zoneName))
            let last = try #require(object["last_run_at"]?.doubleValue)
            let now = try #require(object["now"]?.doubleValue)
            let next = try #require(cron.nextRun(after: last, in: zone))
            let label = "\(cron) in \(zone) after \(last), now \(now)"
            #expect(abs((next - now) - (object["remaining"]?.doubleValue ?? .nan)) < 0.001, "\(label)")
            let state = BeatSchedule.crontab(cron).isDue(lastRunAt: last, now: now, zone: zone)
            #expect(state.due == object["is_due"]?.boolValue, "\(label)")
            #expect(abs(state.next - (object["next"]?.doubleValue ?? .nan)) < 0.001, "\(label)")
            if state.due { due += 1 }
        }
        // Both answers are among the cases.
        #expect(due > 20 && due < 220)
    }

    @Test("every interval case: the same is_due and next check as Celery's schedule")
    func intervalCases() throws {
        let cases = try #require(Self.golden["interval"]?.arrayValue)
        #expect(!cases.isEmpty)
        for item in cases {
            let object = try #require(item.objectValue)
            let every = try #require(object["every"]?.doubleValue)
            let last = try #require(object["last_run_at"]?.doubleValue)
            let now = try #require(object["now"]?.doubleValue)
            let state = BeatSchedule.every(seconds: every).isDue(lastRunAt: last, now: now, zone: .utc)
            #expect(state.due == object["is_due"]?.boolValue)
            #expect(abs(state.next - (object["next"]?.doubleValue ?? .nan)) < 0.001)
        }
    }

    @Test("every relative interval case: the same due time, is_due and next check as Celery 5.7's schedule(relative=True)")
    func relativeIntervalCases() throws {
        let cases = try #require(Self.golden["relative"]?.arrayValue)
        #expect(cases.count == 592)
        var due = 0
        for item in cases {
            let object = try #require(item.objectValue)
            let every = try #require(object["every"]?.doubleValue)
            let zoneName = try #require(object["timezone"]?.stringValue)
            let zone = try #require(CeleryTimeZone(identifier: zoneName))
            let last = try #require(object["last_run_at"]?.doubleValue)
            let now = try #require(object["now"]?.doubleValue)
            let label = "every \(every) s in \(zoneName) after \(last), now \(now)"
            let end = BeatSchedule.relativeEnd(start: last, every: every, zone: zone)
            #expect(abs((end - now) - (object["remaining"]?.doubleValue ?? .nan)) < 0.001, "\(label)")
            let state = BeatSchedule.every(seconds: every, relative: true).isDue(lastRunAt: last, now: now, zone: zone)
            #expect(state.due == object["is_due"]?.boolValue, "\(label)")
            #expect(abs(state.next - (object["next"]?.doubleValue ?? .nan)) < 0.001, "\(label)")
            if state.due { due += 1 }
        }
        #expect(due > 20 && due < cases.count - 20)
    }

    @Test("specs Celery refuses are refused with Celery's message")
    func invalidSpecs() throws {
        let cases = try #require(Self.golden["invalid"]?.arrayValue)
        #expect(cases.count == 12)
        for item in cases {
            let object = try #require(item.objectValue)
            let expected = try #require(object["error"]?.stringValue)
            // Celery's text without its exception type ("ValueError: ").
            let separator = try #require(expected.range(of: ": "))
            let message = String(expected[separator.upperBound...])
            #expect(throws: CeleryWorkerError.self) { try Self.crontab(object["crontab"]) }
            do {
                _ = try Self.crontab(object["crontab"])
            } catch let error as CeleryWorkerError {
                #expect(error.message == message, "\(object["crontab"] ?? .null)")
            }
        }
    }

    @Test("crontabs print as Celery's repr, and from_string takes cron's order")
    func reprAndCronString() throws {
        for item in try #require(Self.golden["repr"]?.arrayValue) {
            let object = try #require(item.objectValue)
            #expect(try Self.crontab(object["crontab"]).description == object["repr"]?.stringValue)
        }
        let fromString = try Crontab(cronString: "30 6 29 2 *")
        #expect(fromString == (try Crontab(minute: "30", hour: "6", dayOfMonth: "29", monthOfYear: "2")))
        #expect(fromString.description == "<crontab: 30 6 29 2 * (m/h/dM/MY/d)>")
        #expect(throws: CeleryWorkerError.self) { try Crontab(cronString: "* * *") }
    }

    @Test("a wall-clock time is read as zoneinfo reads it: the first of two, the offset before a skipped hour")
    func daylightSavingChanges() throws {
        let paris = try #require(CeleryTimeZone(identifier: "Europe/Paris"))
        // 2026-10-25 02:30 in Paris happens twice (CEST, then CET): the first, 00:30 UTC.
        let repeated = CivilDate.localSeconds(year: 2026, month: 10, day: 25) + 2 * 3600 + 30 * 60
        #expect(Crontab.unixTime(ofLocal: repeated, in: paris) == 1_792_888_200)
        // 2026-03-29 02:30 does not happen: read with CET (+1), 01:30 UTC.
        let skipped = CivilDate.localSeconds(year: 2026, month: 3, day: 29) + 2 * 3600 + 30 * 60
        #expect(Crontab.unixTime(ofLocal: skipped, in: paris) == 1_774_747_800)
        let date = CivilDate(localSeconds: skipped)
        let parts: [Int] = [date.year, date.month, date.day, date.hour, date.minute, date.weekday]
        #expect(parts == [2026, 3, 29, 2, 30, 0])
    }

    @Test("node names as Celery's host_format(default_nodename(…)): a bare name is a host named celery")
    func nodeNames() throws {
        let host = WorkerConfiguration.hostname
        let short = String(host.split(separator: ".").first ?? "")
        for (pattern, expected) in [
            ("worker1", "celery@worker1"), ("w1@%h", "w1@\(host)"), ("%h", "celery@\(host)"), ("%n", "celery@\(short)"),
            // Celery's default_nodename keeps this host for an empty one, and `celery` for an empty name.
            ("", "celery@\(host)"), ("w@", "w@\(host)"), ("@x", "celery@x"),
            // The main process's index, and a percent sign.
            ("w@%h.%i", "w@\(host).0"), ("w%I@x", "w@x"), ("w%%@x", "w%@x"),
        ] {
            #expect(try WorkerConfiguration.nodeName(expanding: pattern) == expected, "\(pattern)")
        }
        #expect(try WorkerConfiguration.nodeName(expanding: "x", name: "celerybeat") == "celerybeat@x")
        let error = #expect(throws: CeleryWorkerError.self) { try WorkerConfiguration.nodeName(expanding: "%z@x") }
        #expect(error?.message == "Unknown format %z in string '%z@x'. Write %% for a percent sign.")
    }

    @Test("the app's time zone: timezone, else UTC; an unknown name is refused")
    func appTimeZone() throws {
        #expect(try CeleryTimeZone.app(named: "Europe/Paris", enableUTC: true).identifier == "Europe/Paris")
        #expect(try CeleryTimeZone.app(named: nil, enableUTC: true) == .utc)
        #expect(throws: CeleryWorkerError.self) { try CeleryTimeZone.app(named: "Nowhere/Land", enableUTC: false) }
    }

    @Test("the scheduler: new entries count from start, due ones are recorded before they are sent, sleeps are bounded")
    func scheduler() throws {
        let configuration = BeatConfiguration(
            entries: [
                BeatEntry(name: "often", task: "tasks.add", schedule: .every(seconds: 10), args: [2, 3]),
                BeatEntry(name: "hourly", task: "tasks.noop", schedule: .crontab(try Crontab(minute: "0"))),
            ], maxLoopInterval: 300)
        let start = 1_800_000_030.0  // 2027-01-15 08:00:30 UTC
        var scheduler = BeatScheduler(
            configuration: configuration, zone: .utc, kept: ["gone": .init(lastRunAt: 1, totalRunCount: 9)], now: start)
        #expect(scheduler.runs.keys.sorted() == ["hourly", "often"])
        var tick = scheduler.tick(now: start + 1)
        #expect(tick.due.isEmpty)
        #expect(abs(tick.sleep - 9) < 1e-9)
        tick = scheduler.tick(now: start + 10)
        #expect(tick.due.map(\.name) == ["often"])
        #expect(scheduler.runs["often"] == .init(lastRunAt: start + 10, totalRunCount: 1))
        #expect(abs(tick.sleep - 10) < 1e-9)
        // The hour's crontab: due at 09:00, then again in an hour (the 300 s bound applies).
        tick = scheduler.tick(now: 1_800_003_600)
        #expect(tick.due.map(\.name) == ["often", "hourly"])
        #expect(tick.sleep == 10)
        let signature = try #require(tick.due.first?.signature)
        #expect(signature.options["headers"]?.objectValue?["celery_beat_task"] == .bool(true))
        // Kept runs are used again: a run missed while down is sent once at start.
        let kept = BeatScheduler(configuration: configuration, zone: .utc, kept: scheduler.runs, now: 1_800_090_000)
        var again = kept
        #expect(again.tick(now: 1_800_090_000).due.map(\.name) == ["often", "hourly"])
        // With a starting deadline, a crontab run missed long ago is not made up.
        var late = BeatScheduler(
            configuration: BeatConfiguration(entries: configuration.entries, cronStartingDeadline: 60), zone: .utc,
            kept: scheduler.runs, now: 1_800_090_000)
        #expect(late.tick(now: 1_800_090_000 + 1800).due.map(\.name) == ["often"])
    }

    @Test("the schedule file keeps each entry's last run; a file that is not the worker's is an error")
    func scheduleFile() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("beat-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let file = BeatScheduleFile(path: directory + "/celerybeat-schedule")
        #expect(try file.load() == nil)
        let contents = BeatScheduleFile.Contents(
            timezone: "Europe/Paris", utcEnabled: false, runs: ["a": .init(lastRunAt: 1_800_000_000.25, totalRunCount: 3)])
        try file.save(contents)
        #expect(try file.load() == contents)
        try Data("\u{0}\u{6}\u{15}\u{61}not json".utf8).write(to: URL(fileURLWithPath: file.path))
        #expect(throws: CeleryWorkerError.self) { try file.load() }
    }

    @Test("beat_schedule from a configuration file: numbers, timedeltas, crontabs and options, in the file's order")
    func settings() throws {
        let settings = try CelerySettings.parse(
            """
            beat_schedule:
              every-ten:
                task: tasks.add
                schedule: 10
                args: [2, 3]
                options: {queue: beat, priority: 6, expires: 30.5, headers: {origin_note: x}}
              nightly:
                task: tasks.cleanup
                schedule: {crontab: {minute: 0, hour: '4', day_of_week: [1, 3]}}
                kwargs: {days: 7, dry: false}
              cron-string:
                task: tasks.noop
                schedule: {crontab: '*/15 9-17 * * mon-fri'}
              half-hour:
                task: tasks.noop
                schedule: {timedelta: {minutes: 30}}
            beat_max_loop_interval: 5
            beat_schedule_filename: /tmp/x-schedule
            beat_cron_starting_deadline: 120
            beat_enable_remote_control: true
            beat_remote_control_max_tick_age: 30
            """, source: "beat.yaml")
        let entries = try #require(settings.beat.schedule)
        #expect(entries.map(\.name) == ["every-ten", "nightly", "cron-string", "half-hour"])
        #expect(entries[0].schedule == .every(seconds: 10))
        #expect(entries[0].args == [2, 3])
        #expect(entries[0].options["priority"] == .int(6))
        #expect(entries[0].options["expires"] == .double(30.5))
        #expect(entries[0].options["headers"]?.objectValue?["origin_note"] == .string("x"))
        #expect(entries[1].schedule == .crontab(try Crontab(minute: "0", hour: "4", dayOfWeek: "1,3")))
        #expect(entries[1].kwargs == ["days": 7, "dry": false])
        #expect(entries[2].schedule == .crontab(try Crontab(minute: "*/15", hour: "9-17", dayOfWeek: "mon-fri")))
        #expect(entries[3].schedule == .every(seconds: 1800))
        #expect(settings.beat.maxLoopInterval == 5)
        #expect(settings.beat.scheduleFilename == "/tmp/x-schedule")
        #expect(settings.beat.cronStartingDeadline == .some(120))
        #expect(settings.beat.lockName == nil)
        #expect(settings.beat.remoteControl == true)
        #expect(settings.beat.remoteControlMaxTickAge == .some(30))
        let named = try CelerySettings.parse("swift_beat_lock: billing-beat", source: "beat.yaml")
        #expect(named.beat.lockName == .some("billing-beat"))
        let unlocked = try CelerySettings.parse("swift_beat_lock: false", source: "beat.yaml")
        #expect(unlocked.beat.lockName == .some(nil))

        let refused: [(String, String)] = [
            ("beat_schedule: {a: {schedule: 5}}", "entry 'a': task is missing"),
            ("beat_schedule: {a: {task: t}}", "entry 'a': schedule is missing"),
            ("beat_schedule: {a: {task: t, schedule: -1}}", "above 0"),
            ("beat_schedule: {a: {task: t, schedule: 5, relative: maybe}}", "relative must be true or false"),
            ("beat_schedule: {a: {task: t, schedule: 5, when: 3}}", "unknown key 'when'"),
            ("beat_schedule: {a: {task: t, schedule: {crontab: {minute: '61'}}}}", "crontab: Invalid end range: 61 > 59."),
            ("beat_schedule: {a: {task: t, schedule: {lunar: [full, 0, 0]}}}", "schedule must be a number of seconds"),
            ("beat_schedule: {a: {task: t, schedule: 'every 5'}}", "schedule must be a number of seconds"),
            ("beat_schedule: [a]", "must be a mapping of entry names"),
            ("swift_beat_lock: true", "must be a string"),
        ]
        for (text, message) in refused {
            #expect(
                performing: { try CelerySettings.parse(text, source: "beat.yaml") },
                throws: { error in
                    (error as? CeleryWorkerError)?.message.contains(message) == true
                })
        }
    }
}

/// ``BeatLock``'s scripts against a real redis-server (database 10).
@Suite("Beat's lock against a real redis-server", .serialized, .enabled(if: TestRedis.enabled))
struct BeatLockTests {
    @Test("one holder at a time; renewal keeps it; release hands it on; the runs are kept in Redis")
    func oneHolder() async throws {
        let client = try await TestRedis.client(database: 10)
        let first = BeatLock(client: client, name: "app-beat", node: "one@host")
        let second = BeatLock(client: client, name: "app-beat", node: "two@host")
        #expect(try await first.acquire() == nil)
        #expect(try await first.acquire() == nil)  // renewed
        let holder = try #require(try await second.acquire())
        #expect(holder.hasPrefix("one@host (pid "))
        #expect(!holder.contains(first.token.split(separator: " ").last ?? "-"))
        let ttl = try await client.send(RedisCommand("PTTL", "app-beat.lock")).integer ?? 0
        #expect(ttl > 9_000 && ttl <= 10_000)

        await first.record(["often": .init(lastRunAt: 1_800_000_000.5, totalRunCount: 7)])
        #expect(try await second.runs() == ["often": .init(lastRunAt: 1_800_000_000.5, totalRunCount: 7)])

        await second.release()  // not its key: nothing happens
        #expect(try await second.acquire() != nil)
        await first.release()
        #expect(try await second.acquire() == nil)
        #expect(try await first.acquire()?.hasPrefix("two@host (pid ") == true)
    }
}
