import ArgumentParser
import CeleryWorker
import Foundation
import UnixSignals

/// `celery migrate`: moves (or copies) the task messages waiting in the known queues of one broker to another
/// (``BrokerMigration``, which says where it does better than Celery's).
struct MigrateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "migrate",
        abstract: "Migrate tasks from one broker to another, as `celery migrate`.",
        discussion: """
            Without --ack-messages the messages are copied: each stays on the source (given back at the end, marked \
            redelivered, as Celery's does). Stops once no message came for --timeout seconds (1 by default; Celery's \
            waits forever unless given -t), or with --forever at SIGINT or SIGTERM.
            """)

    @Argument(help: "The source broker's URL.")
    var source: String

    @Argument(help: "The destination broker's URL.")
    var destination: String

    @Option(name: [.customShort("n"), .customLong("limit")], help: "Number of tasks to consume (0: no limit).")
    var limit: Int?

    @Option(name: [.customShort("t"), .customLong("timeout")], help: "Timeout in seconds waiting for tasks (default 1).")
    var timeout: Double?

    @Flag(name: [.customShort("a"), .customLong("ack-messages")], help: "Ack messages from source broker (move them).")
    var ackMessages = false

    @Option(name: [.customShort("T"), .customLong("tasks")], help: "List of task names to filter on.")
    var tasks: String?

    @Option(
        name: [.customShort("Q"), .customLong("queues")],
        help: "List of queues to migrate, each as name or source:destination (default: task_queues, else the default queue).")
    var queues: String?

    @Flag(name: [.customShort("F"), .customLong("forever")], help: "Continually migrate tasks until killed.")
    var forever = false

    @Option(
        name: .customLong("config"),
        help: ArgumentHelp(
            "The workers' YAML (or JSON) file of Celery settings: the queues, kombu's transport options, TLS and Sentinel, "
                + "applied to both brokers."))
    var config: String?

    /// Celery's global `-b` and `--result-backend`, handed to every command: taken, and unused (the brokers are the
    /// arguments), as Celery's `migrate` leaves them.
    @Option(name: [.customShort("b"), .customLong("broker")], help: .hidden)
    var broker: String?

    @Option(name: .customLong("result-backend"), help: .hidden)
    var resultBackend: String?

    func validate() throws {
        if let limit, limit < 0 { throw ValidationError("--limit must be 0 or more, got \(limit).") }
        if let timeout, !(timeout > 0) || !timeout.isFinite { throw ValidationError("--timeout must be a number of seconds above 0.") }
    }

    /// The queues to migrate: `-Q` as Celery's `prepare_queues` reads it (`a:b` renames `a` to `b`), else the app's
    /// (`task_queues`, else `task_default_queue`), each bound as `task_queues` declares it, else by its name.
    func routes(file: CelerySettings) -> [BrokerMigration.Route] {
        var named: [(String, String)] = []
        for word in (queues ?? "").split(separator: ",") {
            let parts = word.split(separator: ":", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
            guard let first = parts.first, !first.isEmpty else { continue }
            named.append((first, parts.count > 1 && !parts[1].isEmpty ? parts[1] : first))
        }
        let declared = file.taskQueues ?? []
        if named.isEmpty {
            named = declared.isEmpty ? [(file.defaultQueue ?? "celery", file.defaultQueue ?? "celery")] : declared.map { ($0.name, $0.name) }
        }
        let defaultExchange = file.defaultExchange ?? file.defaultQueue ?? "celery"
        var seen = Set<String>()
        return named.compactMap { source, destination in
            guard seen.insert(source).inserted else { return nil }
            let binding = declared.first { $0.name == source }?
                .binding(defaultExchange: defaultExchange, defaultExchangeType: file.defaultExchangeType ?? .direct)
            return BrokerMigration.Route(source: source, destination: destination, binding: binding)
        }
    }

    func run() async throws {
        let file = try ClientOptions.settings(config: config)
        var warnings = file.warnings
        let from = try SettledURLs.broker(source, file: file, warnings: &warnings)
        let to = try SettledURLs.broker(destination, file: file, warnings: &warnings)
        for warning in warnings { StandardStream.error.write("warning: \(warning)\n") }
        let routes = routes(file: file)
        if from == to, let looped = routes.first(where: { $0.source == $0.destination }) {
            throw ValidationError(
                "The source and the destination are the same broker, and queue '\(looped.source)' keeps its name: every message "
                    + "would be migrated again and again. Rename it (-Q \(looped.source):other).")
        }
        let migration = BrokerMigration(
            routes: routes, tasks: Set((tasks ?? "").split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }),
            limit: limit, timeout: forever ? nil : .milliseconds(Int64((timeout ?? 1) * 1000)), acknowledge: ackMessages,
            keepAliveInterval: .milliseconds(Int64((file.visibilityTimeout ?? 3600) * 1000 / 3)))
        func broker(_ url: RedisURL) -> RedisBroker {
            RedisBroker(
                blocking: RedisClient(url: url), commands: RedisClient(url: url), keyPrefix: file.brokerKeyPrefix ?? "",
                transport: file.brokerTransport)
        }
        let (sourceBroker, destinationBroker) = (broker(from), broker(to))
        // SIGINT and SIGTERM end the migration after the message in hand; what it holds is given back first.
        let signals = await UnixSignalsSequence(trapping: .sigint, .sigterm)
        let watcher = Task {
            for await _ in signals {
                migration.stop()
                return
            }
        }
        defer { watcher.cancel() }
        do {
            _ = try await migration.run(
                from: sourceBroker, to: destinationBroker,
                migrated: { progress in StandardStream.output.write((progress.line + "\n")) },
                skipped: { reason in StandardStream.error.write("warning: \(reason)\n") })
        } catch {
            throw RemoteControlFailure(message: "Migration stopped: \(error.message)")
        }
    }
}
