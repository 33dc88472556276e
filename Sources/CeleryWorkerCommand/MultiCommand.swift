import ArgumentParser
import CeleryWorker
import Foundation

/// `celery multi`: starts, stops and restarts several detached workers by name, each with its pid file and log file
/// (`/var/run/celery/%n.pid`, `/var/log/celery/%n%I.log` unless given), as Celery's `multi` does. Celery's init
/// scripts and systemd unit run `${CELERY_BIN} -A $CELERY_APP multi start $CELERYD_NODES …`: with `CELERY_BIN`
/// naming this program they start Swift workers.
struct MultiCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "multi",
        abstract: "Start, stop or restart several detached workers, as `celery multi` (see `multi help`).")

    @Argument(parsing: .captureForPassthrough, help: "start|stop|stopwait|restart|kill|show|get|names|expand|help, nodes, worker options.")
    var arguments: [String] = []

    func run() async throws {
        var tool = MultiTool(arguments)
        let status = await tool.run()
        if status != 0 { throw ExitCode(status) }
    }
}

/// Celery's `MultiTool`, its words and exit statuses; without colours, as the rest of this program's output.
struct MultiTool {
    private var arguments: [String]
    private var splashShown = true
    private var quiet = false
    private var verbose = false

    init(_ arguments: [String]) {
        var arguments = arguments
        for (option, setting) in [("--nosplash", 0), ("--quiet", 1), ("-q", 1), ("--verbose", 2), ("--no-color", 3)] {
            guard let index = arguments.firstIndex(of: option) else { continue }
            arguments.remove(at: index)
            switch setting {
            case 0: splashShown = false
            case 1: quiet = true
            case 2: verbose = true
            default: break  // no colours anyway
            }
        }
        self.arguments = arguments
    }

    static let usage = """
        usage: swift-celery-worker multi start <node1 node2 nodeN|range> [worker options]
               swift-celery-worker multi stop <n1 n2 nN|range> [-SIG (default: -TERM)]
               swift-celery-worker multi restart <n1 n2 nN|range> [-SIG] [worker options]
               swift-celery-worker multi kill <n1 n2 nN|range>

               swift-celery-worker multi show <n1 n2 nN|range> [worker options]
               swift-celery-worker multi get hostname <n1 n2 nN|range> [-qv] [worker options]
               swift-celery-worker multi names <n1 n2 nN|range>
               swift-celery-worker multi expand template <n1 n2 nN|range>
               swift-celery-worker multi help

        additional options (must appear after command name):

            * --nosplash:   Don't display program info.
            * --quiet:      Don't show as much output.
            * --verbose:    Show more output.
            * --no-color:   Don't display colors.

        """

    mutating func run() async -> Int32 {
        guard let command = arguments.first, !command.hasPrefix("-") else { return error(nil) }
        let rest = Array(arguments.dropFirst())
        do {
            switch command {
            case "start": return try await start(rest)
            case "stop": return try await stop(rest, wait: false)
            case "stopwait", "stop_verify": return try await stop(rest, wait: true)
            case "restart": return try await restart(rest)
            case "kill": return try kill(rest)
            case "names":
                say(try MultiParser.nodes(MultiArguments(rest)).map(\.name).joined(separator: "\n"))
                return 0
            case "show":
                say(try MultiParser.nodes(MultiArguments(rest)).map(\.commandLine).joined(separator: "\n"))
                return 0
            case "get":
                guard let wanted = rest.first else { return error("get takes the node's name, then the nodes") }
                let nodes = try MultiParser.nodes(MultiArguments(Array(rest.dropFirst())))
                guard let node = nodes.first(where: { $0.name == wanted }) else {
                    carp("Error: no node \(wanted) among \(nodes.map(\.name).joined(separator: ", "))")
                    return 1
                }
                say(node.argv.joined(separator: " "))
                return 0
            case "expand":
                guard let template = rest.first else { return error("expand takes a template, then the nodes") }
                let nodes = try MultiParser.nodes(MultiArguments(Array(rest.dropFirst())))
                say(try nodes.map { node throws(MultiError) in try MultiNode.expand(template, node: node.name) }.joined(separator: "\n"))
                return 0
            case "help":
                say(Self.usage, newline: false)
                return 0
            default:
                return error("Invalid command: \(command)")
            }
        } catch let failure as MultiError {
            carp("Error: \(failure.message)")
            return 1
        } catch {
            carp("Error: \(error)")
            return 1
        }
    }

    // MARK: Commands

    private func start(_ rest: [String]) async throws -> Int32 {
        splash()
        let nodes = try MultiParser.nodes(MultiArguments(rest))
        note("> Starting nodes...")
        var failed = false
        for node in nodes {
            note("\t> \(node.name): ", newline: false)
            let status = await spawn(node)
            note(status == 0 ? "OK" : "FAILED")
            failed = failed || status != 0
        }
        return failed ? 1 : 0
    }

    private func stop(_ rest: [String], wait: Bool) async throws -> Int32 {
        splash()
        let parsed = MultiArguments(rest)
        let nodes = try MultiParser.nodes(parsed)
        await shutDown(nodes, signal: Self.signal(in: parsed), wait: wait) { note("> \($0.name): DOWN") }
        return 0
    }

    private func restart(_ rest: [String]) async throws -> Int32 {
        splash()
        let parsed = MultiArguments(rest)
        let nodes = try MultiParser.nodes(parsed)
        var failed = false
        await shutDown(nodes, signal: Self.signal(in: parsed), wait: true) { node in
            note("> Restarting node \(node.name): ", newline: false)
            let status = await spawn(node)
            note(status == 0 ? "OK" : "FAILED")
            failed = failed || status != 0
        }
        return failed ? 1 : 0
    }

    private func kill(_ rest: [String]) throws -> Int32 {
        splash()
        for node in try MultiParser.nodes(MultiArguments(rest)) {
            guard let pid = node.pid else {
                note("> \(node.name): DOWN")
                continue
            }
            note("Sending KILL to node \(node.name) (\(pid))")
            if node.send(SIGKILL) == false { note("Could not signal \(node.name) (\(pid)): No such process") }
        }
        return 0
    }

    /// Celery's `Cluster._stop_nodes`: `signal` to each node that has a pid (the others are down), then, with
    /// `wait`, every 2 s until each is gone; `down` is called for each node found down.
    private func shutDown(_ nodes: [MultiNode], signal: Int32, wait: Bool, down: (MultiNode) async -> Void) async {
        var running: [(node: MultiNode, pid: Int32)] = []
        for node in nodes {
            if let pid = node.pid { running.append((node, pid)) } else { await down(node) }
        }
        guard !running.isEmpty else { return }
        note("> Stopping nodes...")
        var waiting: [(node: MultiNode, pid: Int32)] = []
        for (node, pid) in running {
            note("\t> \(node.name): \(Self.signalName(signal)) -> \(pid)")
            if Foundation.kill(pid, signal) == 0 || (errno != ESRCH && errno != EPERM) {
                waiting.append((node, pid))
            } else {
                note("Could not signal \(node.name) (\(pid)): No such process")
                await down(node)
            }
        }
        guard wait, !waiting.isEmpty else { return }
        func sayWaiting() {
            let count = waiting.count
            let pids = waiting.map { String($0.pid) }.joined(separator: ", ")
            note("> Waiting for \(count) \(count == 1 ? "node" : "nodes") -> \(pids)...", newline: false)
        }
        sayWaiting()
        while !waiting.isEmpty {
            var found: Int?
            for (index, (node, pid)) in waiting.enumerated() {
                note(".", newline: false)
                if Foundation.kill(pid, 0) != 0, errno == ESRCH {
                    note("\n\t> \(node.name): OK")
                    await down(node)
                    found = index
                    break
                }
            }
            if let found {
                waiting.remove(at: found)
                if !waiting.isEmpty { sayWaiting() }
            } else {
                try? await Task.sleep(for: .seconds(2))
            }
        }
    }

    /// Starts the node's command (`swift-celery-worker worker --detach …`, which returns once the worker detached)
    /// and answers its exit status. The wait is on a thread of its own, off the cooperative pool.
    private func spawn(_ node: MultiNode) async -> Int32 {
        let words = Self.shellWords(([node.executable] + node.argv).joined(separator: " "))
        if verbose { note("  \(words.joined(separator: " "))") }
        let arguments = words.map { strdup($0) } + [nil]
        defer { for pointer in arguments { free(pointer) } }
        var pid: pid_t = 0
        // As Popen: the program found on PATH when it has no slash, this process's environment.
        let spawned = words.isEmpty ? ENOENT : posix_spawnp(&pid, words[0], nil, nil, arguments, environ)
        guard spawned == 0 else {
            note("* Child terminated with exit code 127 (\(words.first ?? ""): \(String(cString: strerror(spawned))))")
            return 127
        }
        let child = pid
        let raw = await withCheckedContinuation { (continuation: CheckedContinuation<Int32, Never>) in
            Thread.detachNewThread {
                var raw: Int32 = 0
                while waitpid(child, &raw, 0) < 0, errno == EINTR {}
                continuation.resume(returning: raw)
            }
        }
        let signalNumber = raw & 0x7f
        if signalNumber != 0 {
            note("* Child was terminated by signal \(signalNumber)")
            return signalNumber
        }
        let status = (raw >> 8) & 0xff
        if status != 0 { note("* Child terminated with exit code \(status)") }
        return status
    }

    // MARK: Output

    private func say(_ text: String, newline: Bool = true) {
        StandardStream.output.write(newline ? text + "\n" : text)
    }

    private func carp(_ text: String) {
        StandardStream.error.write(text + "\n")
    }

    private func note(_ text: String, newline: Bool = true) {
        if !quiet { say(text, newline: newline) }
    }

    private func splash() {
        if splashShown { note("celery multi v\(WorkerCommand.version) (swift-celery-worker)") }
    }

    private func error(_ message: String?) -> Int32 {
        if let message { carp(message) }
        splash()
        say(Self.usage, newline: false)
        return 1
    }

    // MARK: Signals and words

    private static let signals: [(String, Int32)] = [
        ("HUP", SIGHUP), ("INT", SIGINT), ("QUIT", SIGQUIT), ("ILL", SIGILL), ("TRAP", SIGTRAP), ("ABRT", SIGABRT), ("BUS", SIGBUS),
        ("FPE", SIGFPE), ("KILL", SIGKILL), ("USR1", SIGUSR1), ("SEGV", SIGSEGV), ("USR2", SIGUSR2), ("PIPE", SIGPIPE),
        ("ALRM", SIGALRM), ("TERM", SIGTERM), ("CHLD", SIGCHLD), ("CONT", SIGCONT), ("STOP", SIGSTOP), ("TSTP", SIGTSTP),
        ("TTIN", SIGTTIN), ("TTOU", SIGTTOU),
    ]

    static func signalName(_ number: Int32) -> String {
        signals.first { $0.1 == number }?.0 ?? String(number)
    }

    /// Celery's `_find_sig_argument`: the last `-9` or `-KILL` (`-SIGKILL`) after the node names; `SIGTERM` if none.
    static func signal(in parsed: MultiArguments) -> Int32 {
        for word in parsed.arguments.dropFirst(parsed.values.count).reversed() where word.hasPrefix("-") {
            let name = word.dropFirst()
            if name.count == 1, let number = Int32(name) { return number }
            guard name.uppercased() == name, !name.isEmpty else { continue }
            let bare = name.hasPrefix("SIG") ? String(name.dropFirst(3)) : String(name)
            if let found = signals.first(where: { $0.0 == bare }) { return found.1 }
        }
        return SIGTERM
    }

    /// Python's `shlex.split`: words split at blanks, with single quotes, double quotes and backslashes as a POSIX
    /// shell reads them.
    static func shellWords(_ text: String) -> [String] {
        var words: [String] = []
        var current = ""
        var inWord = false
        var quote: Character?
        var escaped = false
        for character in text {
            if escaped {
                // In double quotes a backslash escapes only these; before anything else it stays.
                if quote == "\"", !"\\\"$`".contains(character) { current.append("\\") }
                current.append(character)
                escaped = false
                inWord = true
            } else if let open = quote {
                if character == open {
                    quote = nil
                } else if character == "\\", open == "\"" {
                    escaped = true
                } else {
                    current.append(character)
                }
            } else if character == "'" || character == "\"" {
                quote = character
                inWord = true
            } else if character == "\\" {
                escaped = true
            } else if character.isWhitespace {
                if inWord { words.append(current) }
                current = ""
                inWord = false
            } else {
                current.append(character)
                inWord = true
            }
        }
        if inWord { words.append(current) }
        return words
    }
}
