import CeleryWorker
import Foundation

/// Celery's global options, which `celery` takes before its command: `celery -A proj -b redis://… worker -l INFO`.
/// A command line written for `celery` then runs with `swift-celery-worker` in its place:
///
/// - `-b`/`--broker`, `--result-backend` and `--config` are given to the command, as Celery hands them to it (through
///   `CELERY_BROKER_URL` and the like); `-q`/`--quiet` to `worker` and `beat`, whose banner it hides. After `multi`
///   they go to the end of its arguments, as Celery's `multi` moves them, so that the workers it starts get them.
/// - `--workdir` changes the working directory at once, before anything else, as Celery's does.
/// - `-A`/`--app`, `--loader`, `-C`/`--no-color` and `--skip-checks` are accepted and change nothing: the tasks and
///   their settings are the program's own (`--config` for settings), and its output has no colours.
///
/// A command line that does not start with these options, or names no command after them (the worker, by default),
/// is read as before.
enum GlobalOptions {
    /// Celery's global options that take a value.
    private static let valued: Set<String> = ["-A", "--app", "-b", "--broker", "--result-backend", "--loader", "--config", "--workdir"]
    /// Those that are flags.
    private static let flags: Set<String> = ["-C", "--no-color", "-q", "--quiet", "--skip-checks"]

    /// `arguments` (without the program's name) with the global options in front of the command moved after it, and
    /// the working directory changed for `--workdir`. `commands`: the command names.
    static func rewritten(_ arguments: [String], commands: Set<String>) throws(GlobalOptionError) -> [String] {
        var given: [(name: String, value: String?)] = []
        var index = 0
        while index < arguments.count {
            let word = arguments[index]
            let (name, inline) = split(word)
            if flags.contains(name), inline == nil {
                given.append((name, nil))
                index += 1
            } else if valued.contains(name) {
                if let inline {
                    given.append((name, inline))
                    index += 1
                } else {
                    guard index + 1 < arguments.count else { throw GlobalOptionError(message: "Option '\(name)' requires an argument.") }
                    given.append((name, arguments[index + 1]))
                    index += 2
                }
            } else {
                break
            }
        }
        guard !given.isEmpty else { return arguments }
        let rest = Array(arguments[index...])
        let command = rest.first.flatMap { commands.contains($0) ? $0 : nil }
        var moved: [String] = []
        for (name, value) in given {
            switch name {
            // One word each (`--broker=URL`), as multi's parser reads a long option's value.
            case "-b", "--broker": moved.append("--broker=\(value ?? "")")
            case "--result-backend", "--config": moved.append("\(name)=\(value ?? "")")
            case "-q", "--quiet":
                // The worker and beat print a banner; multi says less.
                if command == nil || ["worker", "beat", "multi"].contains(command) { moved.append("--quiet") }
            case "--workdir" where command == nil:
                // No command named: the worker's own --workdir (a daemon option), as before.
                moved.append("--workdir=\(value ?? "")")
            case "--workdir":
                // A pool child and a detached worker read these arguments again, and start there already.
                guard !CeleryWorkerService.isPoolChild, !Daemon.isDetached else { continue }
                let path = value ?? ""
                guard FileManager.default.changeCurrentDirectoryPath(path) else {
                    throw GlobalOptionError(
                        message: "Invalid value for '--workdir': cannot change to '\(path)': \(String(cString: strerror(errno))).")
                }
            default: continue  // -A, --loader, -C, --skip-checks
            }
        }
        guard let command else { return moved + rest }
        // As Celery's multi: the global options go after its arguments, to the workers it starts.
        if command == "multi" { return rest + moved }
        return [command] + moved + rest.dropFirst()
    }

    /// `--name=value` as its name and value; `-bvalue` (a short option written with its value) likewise.
    private static func split(_ word: String) -> (String, String?) {
        if word.hasPrefix("--"), let equals = word.firstIndex(of: "=") {
            return (String(word[..<equals]), String(word[word.index(after: equals)...]))
        }
        if !word.hasPrefix("--"), word.hasPrefix("-"), word.count > 2 {
            let name = String(word.prefix(2))
            if valued.contains(name) { return (name, String(word.dropFirst(2))) }
        }
        return (word, nil)
    }
}

/// A global option that cannot be read: said as Celery's command line says it, with a usage error's exit status.
struct GlobalOptionError: Error {
    let message: String
}
