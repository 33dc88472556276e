import ArgumentParser
import CeleryProtocol
import CeleryWorker
import Foundation

/// `celery purge`: erases every message waiting in the known task queues.
struct PurgeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "purge",
        abstract: "Erase all messages from all known task queues (task_queues, else the default queue), as `celery purge`.")

    @OptionGroup var options: ClientOptions

    @Flag(name: [.customShort("f"), .customLong("force")], help: "Don't prompt for verification.")
    var force = false

    @Option(name: [.customShort("Q"), .customLong("queues")], help: "Comma separated list of queue names to purge.")
    var queues: String?

    @Option(name: [.customShort("X"), .customLong("exclude-queues")], help: "Comma separated list of queues names not to purge.")
    var excludeQueues: String?

    /// The queues to purge, in name order: `-Q`, else the app's (`task_queues`, else `task_default_queue`), less `-X`.
    func names() throws -> [String] {
        func list(_ text: String?) -> Set<String> {
            Set((text ?? "").split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty })
        }
        var known = list(queues)
        if known.isEmpty {
            let file = try options.settings()
            known = Set(file.taskQueues?.map(\.name) ?? [file.defaultQueue ?? "celery"])
        }
        return known.subtracting(list(excludeQueues)).sorted()
    }

    func run() async throws {
        let names = try names()
        guard !names.isEmpty else { return }
        let headline = names.count == 1 ? "queue" : "queues"
        if !force {
            // click.confirm, as Celery's purge asks.
            StandardStream.output.write(
                ("WARNING:This will remove all tasks from \(headline): \(names.joined(separator: ", ")).\n"
                    + "         There is no undo for this operation!\n\n(to skip this prompt use the -f option)\n"
                    + "Are you sure you want to delete all tasks? [y/N]: "))
            let answer = (readLine() ?? "").trimmingCharacters(in: .whitespaces).lowercased()
            guard answer == "y" || answer == "yes" else {
                StandardStream.error.write("Aborted!\n")
                throw ExitCode(1)
            }
        }
        let client = try options.client()
        let purged: Int
        do {
            purged = try await client.purge(queues: names)
        } catch {
            await client.shutdown()
            throw RemoteControlFailure(message: "Could not connect to the message broker. Reason: \(error.message)")
        }
        await client.shutdown()
        let text =
            purged > 0
            ? "Purged \(purged) \(purged == 1 ? "message" : "messages") from \(names.count) known task \(headline).\n"
            : "No messages purged from \(names.count) \(headline).\n"
        StandardStream.output.write(text)
    }
}

/// `celery result`: prints a task's return value, or its traceback.
struct ResultCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "result", abstract: "Print the return value for a given task id, as `celery result`.")

    @Argument(help: "The task id.")
    var taskID: String

    @OptionGroup var options: ClientOptions

    @Option(name: [.customShort("t"), .customLong("task")], help: "Name of task (accepted, as Celery's: results are read by id alone).")
    var task: String?

    @Flag(name: .customLong("traceback"), help: "Show traceback instead.")
    var traceback = false

    @Option(
        name: .customLong("timeout"),
        help: "Give up waiting after this many seconds (exit 1); Celery's waits for a task still pending as long as it takes.")
    var timeout: Double?

    func run() async throws {
        let client = try options.client()
        let outcome: Result<String, any Error>
        do {
            outcome = .success(try await shown(client.result(id: taskID)))
        } catch {
            outcome = .failure(error)
        }
        await client.shutdown()
        switch outcome {
        case .success(let text):
            StandardStream.output.write(text + "\n")
        case .failure(let failure as TaskFailure):
            // Celery's CLI lets get() raise: the traceback, ending in the exception's line, and exit 1. Here the
            // traceback is the one the worker stored.
            let exception = failure.pythonException
            let arguments = exception.arguments
            let line = "\(exception.type): \(arguments.count == 1 ? RemoteControlOptions.str(arguments[0]) : PythonRepr.tuple(arguments))\n"
            StandardStream.error.write(failure.traceback ?? line)
            throw ExitCode(1)
        case .failure(let error):
            throw error
        }
    }

    /// The return value as Python's `str` prints it, or the stored traceback (an empty line when there is none, as
    /// click echoes None).
    private func shown(_ result: AsyncResult) async throws -> String {
        if traceback { return try await result.document()?["traceback"]?.stringValue ?? "" }
        let value = try await result.get(timeout: .milliseconds(Int64((timeout ?? 31_536_000) * 1000)))
        return RemoteControlOptions.str(value)
    }
}
