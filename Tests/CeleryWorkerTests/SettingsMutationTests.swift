import Testing

@testable import CeleryWorker

/// A configuration file with a setting of every kind (URLs, numbers, time limits, transport options, routes with
/// patterns, annotations with rate limits, beat entries with intervals, timedeltas, crontabs and solar events, time
/// zones, logging formats), damaged at random as a hand edit could damage it: each damaged file is read or refused
/// with an error; reading one never traps, which would end the worker at start with no word on what is wrong.
@Suite("Damaged configuration files: read or refused with an error, never a crash")
struct SettingsMutationTests {
    static let file = """
        broker_url: redis://:secret@127.0.0.1:6379/1
        result_backend: rediss://127.0.0.1:6380/0?ssl_cert_reqs=required
        task_serializer: msgpack
        result_serializer: json
        accept_content: [json, msgpack]
        timezone: Europe/Paris
        enable_utc: false
        worker_concurrency: 4
        worker_prefetch_multiplier: 8
        task_acks_late: true
        task_time_limit: 30
        task_soft_time_limit: 25.5
        result_expires: 3600
        broker_transport_options: {visibility_timeout: 120, global_keyprefix: "t1:", priority_steps: [0, 3, 6, 9]}
        result_backend_transport_options: {global_keyprefix: tenant, result_chord_ordered: false}
        task_default_queue: work
        task_routes:
          "tasks.*": tasks
          "feed.*.fetch": {queue: fetch, priority: 3}
          "job?.[ab]*": {queue: jobs}
        task_annotations: {tasks.add: {rate_limit: 10/m, time_limit: 5}, "*": {acks_late: false}}
        worker_log_format: "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"
        beat_schedule:
          every-ten: {task: tasks.add, schedule: 10, args: [2, 3], options: {queue: beat, expires: 30.5}}
          nightly: {task: tasks.cleanup, schedule: {crontab: {minute: 0, hour: '4', day_of_week: [1, 3]}}}
          office: {task: tasks.noop, schedule: {crontab: '*/15 9-17 * * mon-fri'}}
          half-hour: {task: tasks.noop, schedule: {timedelta: {minutes: 30}}, relative: true}
          noon: {task: tasks.noop, schedule: {solar: [solar_noon, 48.85, 2.35]}}
        beat_max_loop_interval: 5
        beat_cron_starting_deadline: 120
        """

    @Test("300 damaged copies of a file with a setting of every kind")
    func damagedFiles() async throws {
        let original = try CelerySettings.parse(Self.file, source: "every.yaml")
        #expect(original.beat.schedule?.count == 5 && original.taskRoutes != nil)
        let steering = Array(":-[]{}'\",#*?%/\n \t0123456789.e".utf8)
        var random = SeededRandom(state: 20_261_207)
        func below(_ bound: Int) -> Int { random.below(bound) }
        var (read, refused) = (0, 0)
        for round in 0..<300 {
            // A thread of the cooperative pool is lent now and then to the suites that run meanwhile.
            if round % 25 == 0 { await Task.yield() }
            var bytes = Array(Self.file.utf8)
            for _ in 0...below(3) {
                let at = below(bytes.count)
                switch below(4) {
                case 0: bytes[at] = steering[below(steering.count)]
                case 1: bytes.insert(steering[below(steering.count)], at: at)
                case 2: bytes.removeSubrange(at..<min(bytes.count, at + 1 + below(12)))
                default: bytes.insert(contentsOf: String(below(100_000) - 50_000).utf8, at: at)
                }
            }
            do {
                _ = try CelerySettings.parse(String(decoding: bytes, as: UTF8.self), source: "damaged.yaml")
                read += 1
            } catch {
                #expect(error.message.contains("damaged.yaml"), "\(error.message)")
                refused += 1
            }
        }
        // Both outcomes were reached many times: the edits land in values that still read and in ones that do not.
        #expect(read > 30 && refused > 30, "\(read) read, \(refused) refused")
    }

    @Test("a key that is a list or a mapping is refused where it is (Yams would force-unwrap it as a string)")
    func keysThatAreNotStrings() {
        let cases = [
            ("task_routes: {[x, y]: q}", "a mapping key (line 1, column 15) is a list, not a string"),
            ("? {x: 1}\n: 2", "a mapping key (line 1, column 3) is a mapping, not a string"),
            ("a: !!set {[x]: null}", "a mapping key (line 1, column 11) is a list, not a string"),
        ]
        for (text, message) in cases {
            #expect(throws: CeleryWorkerError.self) { try CelerySettings.parse(text, source: "keys.yaml") }
            do {
                _ = try CelerySettings.parse(text, source: "keys.yaml")
            } catch {
                #expect(error.message == "keys.yaml is not valid configuration: \(message)")
            }
        }
    }

    @Test("nesting deeper than 1 000 levels is refused before Yams reads it (by recursion: 10 000 overflowed the stack)")
    func deepNesting() throws {
        let refused = "deep.yaml is not valid configuration: it nests deeper than 1000 levels"
        for depth in [1001, 100_000] {
            let flow = "a: " + String(repeating: "[", count: depth) + String(repeating: "]", count: depth)
            let block = "a:\n" + String(repeating: "- ", count: depth) + "x"
            for text in [flow, block] {
                #expect(throws: CeleryWorkerError.self) { try CelerySettings.parse(text, source: "deep.yaml") }
                do { _ = try CelerySettings.parse(text, source: "deep.yaml") } catch { #expect(error.message == refused) }
            }
        }
        let deepest = "a: " + String(repeating: "[", count: 999) + String(repeating: "]", count: 999)
        #expect(try CelerySettings.parse(deepest, source: "deep.yaml").warnings == ["deep.yaml: unknown setting 'a' is ignored"])
        #expect(CelerySettings.nestingBound(Self.file) < 20)
        // Dashes that open nothing: a document marker, a rule in a block string, a negative number.
        let dashes = "---\nworker_log_format: |\n  " + String(repeating: "-", count: 2000) + "\n  -5 %(message)s\n"
        #expect(try CelerySettings.parse(dashes, source: "deep.yaml").warnings == [])
    }
}
