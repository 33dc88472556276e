import ArgumentParser
import CeleryProtocol
import CeleryWorker
import Foundation

/// The options `celery status`, `celery inspect` and `celery control` share (`Remote Control Options`).
struct RemoteControlOptions: ParsableArguments {
    @Option(name: [.customShort("t"), .customLong("timeout")], help: "Timeout in seconds waiting for reply.")
    var timeout = 1.0

    @Option(name: [.customShort("d"), .customLong("destination")], help: "Comma separated list of destination node names.")
    var destination: String?

    @Flag(name: [.customShort("j"), .customLong("json")], help: "Use json as output format.")
    var json = false

    @Flag(name: [.customShort("q"), .customLong("quiet")], help: "Leave out the count of nodes online, as Celery's --quiet.")
    var quiet = false

    func validate() throws {
        guard timeout > 0 else { throw ValidationError("--timeout must be a number of seconds above 0.") }
    }

    /// `-d a,b`: Celery's comma-separated list, `nil` for every node.
    var destinations: [String]? {
        destination.map { $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty } }
    }

    /// Sends `command` as Celery's CLI does and returns the replies; none stops the command with Celery's error and
    /// status (69, `EX_UNAVAILABLE`), as does a broker that cannot be reached or an error (`what` names the command
    /// in it).
    func send(_ command: String, arguments: CeleryObject, client options: ClientOptions, what: String) async throws -> [ControlReply] {
        let client = try options.client()
        let exchange = try options.settings().controlExchange ?? "celery"
        let replies: [ControlReply]
        do {
            replies = try await client.broadcast(
                command, arguments: arguments, destination: destinations, timeout: timeout, controlExchange: exchange)
        } catch {
            await client.shutdown()
            // Celery's handle_remote_command_error.
            guard error.isConnectionProblem else {
                throw RemoteControlFailure(message: "Unable to run the `\(what)` command. Reason: \(error.message)")
            }
            throw RemoteControlFailure(
                message: "Could not connect to the message broker. Please make sure your broker (e.g., RabbitMQ or Redis) is "
                    + "running and the connection settings are correct. Reason: \(error.message)")
        }
        await client.shutdown()
        guard !replies.isEmpty else { throw RemoteControlFailure(message: "No nodes replied within time constraint") }
        return replies
    }

    /// Celery's `_say_remote_command_reply`, for each reply: `->  node: OK`, and with `body` the reply as its
    /// `pretty` shows it, indented.
    static func say(_ replies: [ControlReply], body: Bool) {
        var text = ""
        for reply in replies {
            let (ok, shown) = pretty(reply.reply)
            text += "->  \(reply.node): \(ok ? "OK" : "ERROR")\n"
            if body, !shown.isEmpty { text += indent(shown, 4) + "\n" }
        }
        StandardStream.output.write(text)
    }

    /// The warning of Celery's `flatten_reply` (a `DuplicateNodenameWarning`, on standard error) where two replies
    /// came from one node name: two workers were given one `-n`, and the mapping of nodes keeps one of them.
    static func warnOfDuplicates(_ replies: [ControlReply]) {
        var seen = Set<String>()
        var duplicates = Set<String>()
        for reply in replies where !seen.insert(reply.node).inserted { duplicates.insert(reply.node) }
        guard !duplicates.isEmpty else { return }
        StandardStream.error.write(
            "DuplicateNodenameWarning: Received multiple replies from node \(duplicates.count == 1 ? "name" : "names"): "
                + "\(duplicates.sorted().joined(separator: ", ")).\nPlease make sure you give each node a unique nodename using\n"
                + "the celery worker `-n` option.\n")
    }

    /// `\n1 node online.`, as Celery's `status` and `inspect` end (unless `--quiet`).
    func sayOnline(_ replies: [ControlReply]) {
        guard !quiet else { return }
        let count = Set(replies.map(\.node)).count
        StandardStream.output.write("\n\(count) \(count == 1 ? "node" : "nodes") online.\n")
    }

    /// The replies as Celery's `-j` prints them: one mapping of node to reply (`flatten_reply`), or, for `control`,
    /// the list of one-node mappings.
    static func sayJSON(_ replies: [ControlReply], flattened: Bool) {
        let value: CeleryValue
        if flattened {
            var nodes = CeleryObject()
            for reply in replies { nodes[reply.node] = reply.reply }
            value = .object(nodes)
        } else {
            value = .array(replies.map { .object([$0.node: $0.reply]) })
        }
        StandardStream.output.write(CeleryJSON.encode(value) + [UInt8(ascii: "\n")])
    }

    /// Celery's `CLIContext.pretty` (without colours, as Celery prints to a pipe): a list as `* item` lines (`- empty
    /// -`), `{"ok": …}` or `{"error": …}` as its value indented, another mapping as JSON with sorted keys, text as it
    /// is, anything else as Python's `pformat`. The flag says OK rather than ERROR.
    static func pretty(_ value: CeleryValue) -> (ok: Bool, text: String) {
        switch value {
        case .array(let items):
            return (true, items.isEmpty ? "- empty -" : items.map { "* \(str($0))" }.joined(separator: "\n"))
        case .object(let entries) where entries["ok"] != nil || entries["error"] != nil:
            if let ok = entries["ok"] { return (true, indent(pretty(ok).text, 4)) }
            return (false, indent(pretty(entries["error"] ?? .null).text, 4))
        case .object:
            return (true, CeleryJSON.encodeIndented(value, indent: 4))
        case .string(let text):
            return (true, text)
        default:
            return (true, PythonRepr.repr(value))
        }
    }

    /// Python's `str()`: text as it is, anything else as its `repr`.
    static func str(_ value: CeleryValue) -> String {
        if case .string(let text) = value { return text }
        return PythonRepr.repr(value)
    }

    /// Celery's `text.indent`: each line of `text` after `count` spaces.
    static func indent(_ text: String, _ count: Int) -> String {
        let pad = String(repeating: " ", count: count)
        return text.split(separator: "\n", omittingEmptySubsequences: false).map { pad + $0 }.joined(separator: "\n")
    }
}

/// What stops a remote control command, as Celery's `CeleryCommandException`: `Error: …` and exit status 69.
struct RemoteControlFailure: Error, CustomStringConvertible {
    let message: String
    var description: String { message }
}

/// One of Celery's remote control commands (`celery.worker.control.Panel`): its arguments, as the CLI reads them.
struct PanelCommand {
    enum Kind: String {
        case inspect, control
    }

    enum ArgumentType {
        case string, int, float, bool
    }

    let kind: Kind
    let name: String
    let arguments: [(name: String, type: ArgumentType)]
    /// The argument that takes every word left (`task_id`, `ids`, …).
    let variadic: String?
    let signature: String?
    let help: String

    /// Celery 5.7's visible commands, with their signatures and help.
    static let all: [PanelCommand] = [
        .init(.inspect, "active", help: "List of tasks currently being executed."),
        .init(.inspect, "active_queues", help: "List the task queues a worker is currently consuming from."),
        .init(
            .control, "add_consumer", [("queue", .string), ("exchange", .string), ("exchange_type", .string), ("routing_key", .string)],
            signature: "<queue> [exchange [type [routing_key]]]", help: "Tell worker(s) to consume from task queue by name."),
        .init(.control, "autoscale", [("max", .int), ("min", .int)], signature: "[max [min]]", help: "Modify autoscale settings."),
        .init(
            .control, "cancel_consumer", [("queue", .string)], signature: "<queue>",
            help: "Tell worker(s) to stop consuming from task queue by name."),
        .init(.inspect, "clock", help: "Get current logical clock value."),
        .init(.inspect, "conf", [("with_defaults", .bool)], signature: "[include_defaults=False]", help: "List configuration."),
        .init(.control, "disable_events", help: "Tell worker(s) to stop sending task-related events."),
        .init(.control, "election", help: "Hold election."),
        .init(.control, "enable_events", help: "Tell worker(s) to send task-related events."),
        .init(.control, "heartbeat", help: "Tell worker(s) to send event heartbeat immediately."),
        .init(.inspect, "memdump", [("samples", .int)], signature: "[n_samples=10]", help: "Dump statistics of previous memsample requests."),
        .init(.inspect, "memsample", help: "Sample current RSS memory usage."),
        .init(
            .inspect, "objgraph", [("type", .string), ("num", .int), ("max_depth", .int)],
            signature: "[object_type=Request] [num=200 [max_depth=10]]", help: "Create graph of uncollected objects (memory-leak debugging)."),
        .init(.inspect, "ping", help: "Ping worker(s)."),
        .init(.control, "pool_grow", [("n", .int)], signature: "[N=1]", help: "Grow pool by n processes/threads."),
        .init(.control, "pool_restart", help: "Restart execution pool."),
        .init(.control, "pool_shrink", [("n", .int)], signature: "[N=1]", help: "Shrink pool by n processes/threads."),
        .init(.inspect, "query_task", variadic: "ids", signature: "[id1 [id2 [... [idN]]]]", help: "Query for task information by id."),
        .init(
            .control, "rate_limit", [("task_name", .string), ("rate_limit", .string)],
            signature: "<task_name> <rate_limit (e.g., 5/s | 5/m | 5/h)>", help: "Tell worker(s) to modify the rate limit for a task by type."),
        .init(.inspect, "registered", variadic: "taskinfoitems", signature: "[attr1 [attr2 [... [attrN]]]]", help: "List of registered tasks."),
        .init(.inspect, "report", help: "Information about Celery installation for bug reports."),
        .init(.inspect, "reserved", help: "List of currently reserved tasks, not including scheduled/active."),
        .init(.control, "revoke", variadic: "task_id", signature: "[id1 [id2 [... [idN]]]]", help: "Revoke task by task id (or list of ids)."),
        .init(
            .control, "revoke_by_stamped_headers", variadic: "headers", signature: "[key1=value1 [key2=value2 [... [keyN=valueN]]]]",
            help: "Revoke task by header (or list of headers)."),
        .init(.inspect, "revoked", help: "List of revoked task-ids."),
        .init(.inspect, "scheduled", help: "List of currently scheduled ETA/countdown tasks."),
        .init(.control, "shutdown", help: "Shutdown worker(s)."),
        .init(.inspect, "stats", help: "Request worker statistics/information."),
        .init(
            .control, "terminate", [("signal", .string)], variadic: "task_id", signature: "<signal> [id1 [id2 [... [idN]]]]",
            help: "Terminate task by task id (or list of ids)."),
        .init(
            .control, "time_limit", [("task_name", .string), ("soft", .float), ("hard", .float)], signature: "<task_name> <soft_secs> [hard_secs]",
            help: "Tell worker(s) to modify the time limit for task by type."),
    ]

    init(
        _ kind: Kind, _ name: String, _ arguments: [(name: String, type: ArgumentType)] = [], variadic: String? = nil,
        signature: String? = nil, help: String
    ) {
        self.kind = kind
        self.name = name
        self.arguments = arguments
        self.variadic = variadic
        self.signature = signature
        self.help = help
    }

    /// The command of `kind` named `name`, or Celery's usage error listing those there are.
    static func named(_ name: String, kind: Kind) throws -> PanelCommand {
        let choices = all.filter { $0.kind == kind }
        guard let command = choices.first(where: { $0.name == name }) else {
            throw ValidationError(
                "Command \(name) not recognized. Available \(kind) commands: \(choices.map(\.name).joined(separator: ", "))")
        }
        return command
    }

    /// Celery's `_compile_arguments`: the words in order for the named arguments, converted to their types, and every
    /// word left for the variadic one.
    func compile(_ words: [String]) throws -> CeleryObject {
        var compiled = CeleryObject()
        var rest = words[...]
        for (name, type) in arguments {
            guard let word = rest.popFirst() else { break }
            compiled[name] = try Self.convert(word, to: type, argument: name, command: self.name)
        }
        if let variadic {
            compiled[variadic] = .array(rest.map(CeleryValue.string))
        } else if !rest.isEmpty {
            throw ValidationError("Command '\(name)' takes arguments: \(signature ?? "none")")
        }
        return compiled
    }

    private static func convert(_ word: String, to type: ArgumentType, argument: String, command: String) throws -> CeleryValue {
        switch type {
        case .string:
            return .string(word)
        case .int:
            guard let number = Int64(word.trimmingCharacters(in: .whitespaces)) else {
                throw ValidationError("Command '\(command)': \(argument) must be a whole number, got '\(word)'.")
            }
            return .int(number)
        case .float:
            guard let number = Double(word.trimmingCharacters(in: .whitespaces)) else {
                throw ValidationError("Command '\(command)': \(argument) must be a number, got '\(word)'.")
            }
            return .double(number)
        case .bool:
            // Celery's strtobool.
            let table = ["false": false, "no": false, "0": false, "true": true, "yes": true, "1": true, "on": true, "off": false]
            guard let flag = table[word.lowercased()] else { throw ValidationError("Cannot coerce '\(word)' to type bool") }
            return .bool(flag)
        }
    }

    /// `--list`: the commands of `kind`, each with its signature and help.
    static func listing(_ kind: Kind) -> String {
        let choices = all.filter { $0.kind == kind }
        let previews = choices.map { command in command.signature.map { "\(command.name) \($0)" } ?? command.name }
        let width = min(previews.map(\.count).max() ?? 0, 30)
        var text = "\(kind.rawValue.capitalized) Commands:\n"
        for (preview, command) in zip(previews, choices) {
            if preview.count > width {
                text += "  \(preview)\n  \(String(repeating: " ", count: width))  \(command.help)\n"
            } else {
                text += "  \(preview.padding(toLength: width, withPad: " ", startingAt: 0))  \(command.help)\n"
            }
        }
        return text
    }
}

/// `celery status`: the workers that answer a ping.
struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status", abstract: "Show the workers that are online (Swift or Python), as `celery status`.")

    @OptionGroup var options: ClientOptions
    @OptionGroup(title: "Remote control options") var remote: RemoteControlOptions

    func run() async throws {
        let replies = try await remote.send("ping", arguments: [:], client: options, what: "status")
        if remote.json {
            RemoteControlOptions.sayJSON(replies, flattened: true)
        } else {
            RemoteControlOptions.say(replies, body: false)
        }
        RemoteControlOptions.warnOfDuplicates(replies)
        remote.sayOnline(replies)
    }
}

/// What `inspect` and `control` share: the command, its arguments, `--list`, and the options.
struct PanelInvocation: ParsableArguments {
    @Argument(help: "The command (see --list).")
    var command: String?

    @Argument(help: "Its arguments, as Celery's CLI takes them.")
    var arguments: [String] = []

    @Flag(name: .customLong("list"), help: "List the available commands and exit.")
    var list = false

    @OptionGroup var options: ClientOptions
    @OptionGroup(title: "Remote control options") var remote: RemoteControlOptions

    func check(_ kind: PanelCommand.Kind) throws {
        guard !list else { return }
        guard let command else { throw ValidationError("Missing argument 'COMMAND'.") }
        _ = try PanelCommand.named(command, kind: kind).compile(arguments)
    }

    /// Sends the command and prints the replies as Celery's `inspect` (a mapping of nodes in JSON, the count of
    /// nodes) or `control` (a list of one-node mappings in JSON, no count) prints them.
    func run(_ kind: PanelCommand.Kind) async throws {
        guard !list, let command else {
            StandardStream.output.write(PanelCommand.listing(kind))
            return
        }
        let compiled = try PanelCommand.named(command, kind: kind).compile(arguments)
        let replies = try await remote.send(command, arguments: compiled, client: options, what: "\(kind) \(command)")
        // `inspect` flattens the replies into one mapping of nodes, as Celery's does; `control` keeps them all.
        if kind == .inspect { RemoteControlOptions.warnOfDuplicates(replies) }
        if remote.json {
            RemoteControlOptions.sayJSON(replies, flattened: kind == .inspect)
            return
        }
        RemoteControlOptions.say(replies, body: true)
        if kind == .inspect { remote.sayOnline(replies) }
    }
}

/// `celery inspect COMMAND`: asks the workers (Swift or Python) and prints their replies.
struct InspectCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inspect",
        abstract: "Inspect the workers (Swift or Python) with an inspect command, as `celery inspect`: ping, stats, active, registered, …")

    @OptionGroup var invocation: PanelInvocation

    func validate() throws { try invocation.check(.inspect) }

    func run() async throws { try await invocation.run(.inspect) }
}

/// `celery control COMMAND`: tells the workers (Swift or Python) to do something and prints their replies.
struct ControlCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "control",
        abstract: "Send the workers (Swift or Python) a control command, as `celery control`: revoke, rate_limit, shutdown, …")

    @OptionGroup var invocation: PanelInvocation

    func validate() throws { try invocation.check(.control) }

    func run() async throws { try await invocation.run(.control) }
}
