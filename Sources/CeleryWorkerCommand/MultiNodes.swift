import CeleryWorker
import Foundation

/// An error of `multi`'s arguments, said as a sentence (exit 1, as Celery's `multi` fails).
struct MultiError: Error {
    let message: String
}

/// One worker of `multi`, as Celery's `celery.apps.multi.Node`: its node name and the command line that starts it,
/// `swift-celery-worker worker --detach -n NAME --pidfile=… --logfile=… --executable=…`.
struct MultiNode {
    /// `w1@host`.
    let name: String
    let options: OrderedOptions
    /// The command line after the executable, as Celery keeps it: the command with the global options in it as one
    /// word, then one word per option, the words after `--` as one, and the `--append`ed one.
    let argv: [String]

    /// The options Celery's command line takes before its command, placed there.
    private static let globalOptions: Set<String> = [
        "-A", "--app", "-b", "--broker", "--result-backend", "--loader", "--config", "--workdir", "-C", "--no-color", "-q", "--quiet",
    ]

    init(name: String, command: String, append: String?, options given: OrderedOptions, extraArguments: String) throws(MultiError) {
        self.name = name
        var options = given
        options["-n"] = .some(name)
        try Self.setDefault(&options, ["--pidfile", "-p"], "/var/run/celery/%n.pid")
        try Self.setDefault(&options, ["--logfile", "-f"], "/var/log/celery/%n%I.log")
        try Self.setDefault(&options, ["--executable"], MultiNode.ownExecutable)
        self.options = options

        var words = try Self.expand(command, node: name).split(separator: " ", omittingEmptySubsequences: false).map(String.init)
        guard let anchor = words.firstIndex(of: "worker") else {
            throw MultiError(message: "--cmd must name the worker command ('worker'), got '\(command)'")
        }
        var rest = options
        for (option, value) in options.pairs where Self.globalOptions.contains(option) {
            var value = try value.map { text throws(MultiError) in try Self.expand(text, node: name) }
            if option == "--workdir" { value = value.map { Self.expandUser($0) } }
            // Each at the same place, so that they end up in the reverse order, as Celery's.
            words.insert(Self.format(option, value), at: anchor)
            rest[option] = nil
        }
        var argv = [words.joined(separator: " ")]
        for (option, value) in rest.pairs {
            var expanded = try value.map { text throws(MultiError) in try Self.expand(text, node: name) }
            if ["--pidfile", "-p", "--logfile", "-f"].contains(option) { expanded = expanded.map { Self.expandUser($0) } }
            argv.append(Self.format(option, expanded))
        }
        argv.append(extraArguments)
        if let append { argv.append(try Self.expand(append, node: name)) }
        self.argv = argv
    }

    /// This program's own path: what `--executable` is unless given, as Celery's is `sys.executable`.
    static var ownExecutable: String {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    }

    var executable: String { (options["--executable"] ?? nil) ?? MultiNode.ownExecutable }

    /// `show`'s line: the executable and `argv`, joined by spaces.
    var commandLine: String { ([executable] + argv).joined(separator: " ") }

    /// The pid file, with every `%` sequence read.
    var pidfile: String {
        get throws(MultiError) {
            let option = (options["--pidfile"] ?? options["-p"] ?? nil) ?? ""
            let once = try Self.expand(option, node: name)
            return Self.expandUser(try Self.nodeFormat(once, node: name, extra: [:]))
        }
    }

    /// The pid its pid file holds, read as Celery's `Pidfile.read_pid`: none without a file, or with one that is not
    /// a number and a newline.
    var pid: Int32? {
        guard let path = try? pidfile, let text = try? String(contentsOfFile: path, encoding: .utf8) else { return nil }
        let line = text.split(separator: "\n", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
        guard text.hasPrefix(line + "\n") else { return nil }
        return Int32(line.trimmingCharacters(in: .whitespaces))
    }

    /// Sends `signal`; `false` when the process is gone, `nil` when there is no pid.
    @discardableResult
    func send(_ signal: Int32) -> Bool? {
        guard let pid else { return nil }
        if kill(pid, signal) == 0 { return true }
        guard errno == ESRCH || errno == EPERM else { return true }
        return false
    }

    /// `text` with the node's `%` sequences read, as Celery's expander: `%n` and `%N` the name part, `%h` and `%p` the
    /// whole node name, `%d` its host; `%i` and `%I` kept for the worker to read.
    static func expand(_ text: String, node: String) throws(MultiError) -> String {
        let parts = node.split(separator: "@", maxSplits: 1).map(String.init)
        let (short, host) = parts.count == 2 ? (parts[0], parts[1]) : (node, "")
        return try nodeFormat(text, node: node, extra: ["N": short, "d": host, "h": node, "i": "%i", "I": "%I"])
    }

    /// Celery's `node_format` (``WorkerConfiguration/nodeFormatted(_:node:processIndex:extra:)``, this process
    /// being no pool child), then `extra`; an unknown sequence is an error, as in Celery.
    static func nodeFormat(_ text: String, node: String, extra: [Character: String]) throws(MultiError) -> String {
        let (formatted, unknown) = WorkerConfiguration.nodeFormatted(text, node: node, extra: extra)
        if let unknown { throw MultiError(message: "Unknown format %\(unknown) in string '\(text)' (write %% for a percent sign)") }
        return formatted
    }

    /// Python's `os.path.expanduser` for `~` and `~/…`: the home directory.
    static func expandUser(_ path: String) -> String {
        guard path == "~" || path.hasPrefix("~/"), let home = ProcessInfo.processInfo.environment["HOME"] else { return path }
        return home + path.dropFirst()
    }

    /// Celery's `format_opt`: `--name=value`, `-n value`, or the name alone for a flag or an empty value.
    static func format(_ option: String, _ value: String?) -> String {
        guard let value, !value.isEmpty else { return option }
        return option.hasPrefix("--") ? "\(option)=\(value)" : "\(option) \(value)"
    }

    /// Celery's `_setdefaultopt`: the first of `names` given (its `~` expanded), else `value` under the first name;
    /// the directory it names is made.
    private static func setDefault(_ options: inout OrderedOptions, _ names: [String], _ value: String) throws(MultiError) {
        var chosen = value
        if let name = names.first(where: { options[$0] != nil }) {
            chosen = expandUser((options[name] ?? nil) ?? "")
        }
        options[names.first(where: { options[$0] != nil }) ?? names[0]] = .some(chosen)
        // os.path.dirname: what comes before the last slash.
        guard let slash = chosen.lastIndex(of: "/") else { return }
        let directory = String(chosen[..<slash])
        guard !directory.isEmpty, !FileManager.default.fileExists(atPath: directory) else { return }
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw MultiError(message: "cannot make the directory \(directory) for \(names[0]): \(error.localizedDescription)")
        }
    }
}

/// Celery's `MultiParser`: the nodes that `multi`'s arguments name, each with its options.
enum MultiParser {
    static func nodes(_ parsed: MultiArguments) throws(MultiError) -> [MultiNode] {
        var p = parsed
        var names = p.values
        var options = p.options
        var ranges = names.count == 1
        let command = ((options.pop("--cmd") ?? nil) ?? nil) ?? "worker --detach"
        let append = (options.pop("--append") ?? nil) ?? nil
        let defaultHost = (options.pop("-n") ?? nil) ?? nil
        let hostname = ((options.pop("--hostname") ?? nil) ?? defaultHost) ?? WorkerConfiguration.hostname
        var prefix = (options.pop("--prefix") ?? nil).flatMap { $0 } ?? ""
        var suffix = (options.pop("--suffix") ?? nil).flatMap { $0.isEmpty ? nil : $0 } ?? hostname
        if suffix == "\"\"" || suffix == "''" { suffix = "" }
        let rangePrefix = (options.pop("--range-prefix") ?? nil).flatMap { $0.isEmpty ? nil : $0 } ?? "celery"
        if ranges {
            if let count = Int(names[0]) {
                names = count > 0 ? (1...count).map(String.init) : []
                prefix = rangePrefix
            } else {
                ranges = false  // a node's name, not a count: its dashes are no range
            }
        }
        if ranges {
            try mapIndexes(&p, names)
            try splitLists(&p, ranges: ranges)
        } else {
            try splitLists(&p, ranges: ranges)
            try mapIndexes(&p, names)
        }
        var nodes: [MultiNode] = []
        for name in names {
            let (namespace, nodename) = try nodeName(name, prefix: prefix, suffix: suffix)
            let chosen = p.namespace(nodename) != nil ? nodename : namespace
            let merged = options.merged(with: p.namespace(chosen) ?? OrderedOptions())
            nodes.append(try MultiNode(name: nodename, command: command, append: append, options: merged, extraArguments: p.passthrough))
        }
        return nodes
    }

    /// Celery's `build_nodename`: `w1` with the prefix and `@suffix`, or a name with `@` as it is, host formatted.
    static func nodeName(_ name: String, prefix: String, suffix: String) throws(MultiError) -> (namespace: String, nodename: String) {
        if name.contains("@") {
            let nodename = try hostFormat(name)
            return (nodename.split(separator: "@", maxSplits: 1).first.map(String.init) ?? nodename, nodename)
        }
        return (name, try hostFormat("\(prefix)\(name)@\(suffix)"))
    }

    /// Celery's `host_format` with this machine's name: `%h` the host, `%n` its first label, `%d` the rest.
    static func hostFormat(_ text: String) throws(MultiError) -> String {
        let host = WorkerConfiguration.hostname
        let first = host.split(separator: ".", maxSplits: 1).first.map(String.init) ?? host
        return try MultiNode.nodeFormat(text, node: "\(first)@\(host)", extra: ["p": "%p"])
    }

    /// Celery's `_update_ns_opts`: options for a node by number (`-c:2`) go to that node's name.
    private static func mapIndexes(_ p: inout MultiArguments, _ names: [String]) throws(MultiError) {
        for (namespace, options) in p.namespaces where !namespace.isEmpty && namespace.allSatisfy(\.isNumber) {
            guard let index = Int(namespace), index >= 1 else { throw MultiError(message: "Indexes start at 1 got: '\(namespace)'") }
            guard index <= names.count else { throw MultiError(message: "No node at index '\(namespace)'") }
            p.update(names[index - 1]) { $0 = $0.merged(with: options) }
        }
    }

    /// Celery's `_update_ns_ranges`: `-c:1,3` and, for a count, `-c:1-3` go to each node they list.
    private static func splitLists(_ p: inout MultiArguments, ranges: Bool) throws(MultiError) {
        for (namespace, options) in p.namespaces where namespace.contains(",") || (ranges && namespace.contains("-")) {
            for part in namespace.split(separator: ",", omittingEmptySubsequences: false).map(String.init) {
                guard ranges, part.contains("-") else {
                    p.update(part) { $0 = $0.merged(with: options) }
                    continue
                }
                let bounds = part.split(separator: "-", omittingEmptySubsequences: false).map { Int($0) }
                guard bounds.count == 2, let first = bounds[0], let last = bounds[1] else {
                    throw MultiError(message: "a range of nodes is FIRST-LAST, got '\(part)'")
                }
                for number in first...max(first, last) where number <= last { p.update(String(number)) { $0 = $0.merged(with: options) } }
            }
            p.removeNamespace(namespace)
        }
    }
}
