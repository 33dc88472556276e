import CeleryWorker
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// Celery's `SIGUSR1` (`install_cry_handler`): a report of what every thread of the worker is doing, on standard
/// error. Python prints each thread's Python stack and local variables; a compiled worker cannot read another
/// thread's stack, so this shows each thread's name and state and where the kernel holds it (`/proc`), then the
/// tasks running, with how long each has run. Without it `SIGUSR1` would end the worker at once, its default action.
enum Cry {
    /// Celery's separator: 49 `=`.
    static let separator = String(repeating: "=", count: 49)

    /// The report for `tasks` (name, id, seconds run), threads first.
    static func report(tasks: [(name: String, id: String, seconds: Double)]) -> String {
        var lines = ["MainProcess (pid \(getpid()))", separator]
        let ids = ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []).compactMap { Int($0) }.sorted()
        for id in ids {
            let directory = "/proc/self/task/\(id)"
            func read(_ name: String) -> String {
                ((try? String(contentsOfFile: "\(directory)/\(name)", encoding: .utf8)) ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
            }
            // `stat`: "tid (comm) S …": the state is the first field after the name's closing parenthesis.
            let stat = read("stat")
            let state = stat.range(of: ") ", options: .backwards).map { String(stat[$0.upperBound...].prefix(1)) } ?? "?"
            let wchan = read("wchan")
            lines.append("thread \(id) \(read("comm")): \(Self.states[state] ?? state)\(wchan.isEmpty || wchan == "0" ? "" : " in \(wchan)")")
        }
        lines += [separator, "RUNNING TASKS", separator]
        lines += tasks.isEmpty ? ["(none)"] : tasks.map { "\($0.name)[\($0.id)]: running for \(String(format: "%.3f", $0.seconds)) s" }
        return lines.joined(separator: "\n")
    }

    /// Writes the report to standard error, as Celery's `safe_say`, from a thread of its own: reading `/proc` is
    /// blocking file work, kept off the concurrency runtime's threads.
    static func say(tasks: @escaping @Sendable () -> [(name: String, id: String, seconds: Double)]) {
        Thread.detachNewThread {
            StandardStream.error.write("\n\(report(tasks: tasks()))\n")
        }
    }

    private static let states = [
        "R": "R (running)", "S": "S (sleeping)", "D": "D (disk sleep)", "T": "T (stopped)", "t": "t (tracing stop)",
        "Z": "Z (zombie)", "X": "X (dead)", "I": "I (idle)",
    ]
}
