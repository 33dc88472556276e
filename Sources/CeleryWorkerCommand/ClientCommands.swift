import ArgumentParser
import CeleryProtocol
import CeleryWorker
import Foundation

/// Broker and backend options shared by the client commands.
struct ClientOptions: ParsableArguments {
    @Option(name: [.customShort("b"), .customLong("broker")], help: "Broker URL (default: $CELERY_BROKER_URL, else redis://localhost:6379/0).")
    var broker: String?

    @Option(name: .customLong("result-backend"), help: "Result backend URL (default: $CELERY_RESULT_BACKEND).")
    var resultBackend: String?

    @Option(name: .customLong("serializer"), help: "json or msgpack (default: task_serializer from --config, else json).")
    var serializer: String?

    @Option(
        name: .customLong("result-serializer"),
        help: "The workers' result_serializer: json or msgpack (default: result_serializer from --config, else json).")
    var resultSerializer: String?

    @Option(
        name: .customLong("compression"),
        help:
            "Compress task bodies as kombu does: zlib (gzip), bzip2, lzma (xz), brotli or zstd (default: task_compression from --config, else none).")
    var compression: String?

    @Option(
        name: .customLong("config"),
        help: ArgumentHelp(
            "The workers' YAML (or JSON) file of Celery settings: broker and backend, serializers, compression, routes, key "
                + "prefixes, kombu's transport options, TLS and Sentinel, as the worker reads them."))
    var config: String?

    /// The `--config` file's settings (none without it).
    func settings() throws -> CelerySettings {
        try Self.settings(config: config)
    }

    /// The settings of the file at `config` (none without it).
    static func settings(config: String?) throws -> CelerySettings {
        do {
            return try config.map { path throws(CeleryWorkerError) in try CelerySettings.load(path: path) } ?? CelerySettings()
        } catch {
            throw ValidationError(error.message)
        }
    }

    /// A client as the options and the `--config` file say, with `signals`' publish receivers.
    func client(signals: WorkerSignals = WorkerSignals()) throws -> CeleryClient {
        let environment = ProcessInfo.processInfo.environment
        let file = try settings()
        do {
            for warning in file.warnings { StandardStream.error.write("warning: \(warning)\n") }
            // As the worker: flags, then the environment, then the file.
            let urls = try SettledURLs(broker: broker, backend: resultBackend, file: file, environment: environment)
            for warning in urls.warnings { StandardStream.error.write("warning: \(warning)\n") }
            func contentType(_ flag: String?, _ configured: CeleryContentType?) throws -> CeleryContentType {
                guard let flag else { return configured ?? .json }
                guard let type = CeleryContentType(name: flag) else {
                    throw ValidationError("--serializer and --result-serializer must be json or msgpack, got '\(flag)'.")
                }
                return type
            }
            let method = try compression.map { name in
                guard let method = KombuCompression(name: name) else {
                    throw ValidationError("--compression must be \(KombuCompression.supportedNames), got '\(name)'.")
                }
                do throws(CeleryProtocolError) {
                    try method.checkAvailable()
                } catch {
                    throw ValidationError("--compression: \(error.message)")
                }
                return method
            }
            return CeleryClient(
                brokerURL: urls.broker, resultBackendURL: urls.backend, serializer: try contentType(serializer, file.taskSerializer),
                resultSerializer: try contentType(resultSerializer, file.resultSerializer),
                resultExpires: file.resultExpires ?? 86_400, defaultQueue: file.defaultQueue ?? "celery",
                compression: method ?? file.taskCompression ?? nil, brokerKeyPrefix: file.brokerKeyPrefix ?? "",
                resultKeyPrefix: WorkerConfiguration.resultKeyPrefix(normalizing: file.resultKeyPrefix ?? ""),
                brokerTransport: file.brokerTransport,
                routes: file.taskRoutes ?? TaskRoutes(), chord: file.chord, messageSigning: try MessageSigning(settings: file.security),
                signals: signals)
        } catch let error as CeleryWorkerError {
            throw ValidationError(error.message)
        }
    }
}

/// `celery call`: sends one task by name, optionally waits for its result.
struct CallCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "call", abstract: "Send a task by name, as Python's apply_async does; --wait prints its result.")

    @Argument(help: "The task name, e.g. tasks.add.")
    var name: String

    @Option(name: [.customShort("a"), .customLong("args")], help: "Positional arguments as a JSON list.")
    var args = "[]"

    @Option(name: [.customShort("k"), .customLong("kwargs")], help: "Keyword arguments as a JSON object.")
    var kwargs = "{}"

    @Option(name: [.customShort("Q"), .customLong("queue")], help: "The queue (default: celery).")
    var queue: String?

    @Option(name: .customLong("eta"), help: "Run no earlier than this ISO 8601 time (naive: the workers' time zone), as Celery's --eta.")
    var eta: String?

    @Option(
        name: .customLong("exchange"),
        help: "Send to the queues bound to this exchange for --routing-key (a direct exchange's bindings), not to a queue.")
    var exchange: String?

    @Option(name: .customLong("routing-key"), help: "The routing key: with --exchange, how the queues are bound; alone, the queue.")
    var routingKey: String?

    @Option(name: .customLong("countdown"), help: "Seconds to wait before the task may run.")
    var countdown: Double?

    @Option(name: .customLong("expires"), help: "Seconds from now, or an ISO 8601 time, after which the task is not run.")
    var expires: String?

    @Option(name: .customLong("priority"), help: "Message priority, 0-9.")
    var priority: Int?

    @Option(name: .customLong("task-id"), help: "The task id (default: a new UUID).")
    var taskID: String?

    @Option(name: .customLong("header"), help: "A custom header, name=value (repeatable).")
    var header: [String] = []

    @Flag(name: .customLong("wait"), help: "Wait for the result and print it as JSON; a failure exits 1.")
    var wait = false

    @Option(name: .customLong("timeout"), help: "Seconds to wait with --wait (default: 60).")
    var timeout: Double = 60

    @OptionGroup var connection: ClientOptions

    /// The task's signature from the flags; a flag it cannot read is a `ValidationError`, found by `validate()` so
    /// that its message comes with the `call` command's usage.
    func signature() throws -> Signature {
        guard case .array(let positional) = try? CeleryJSON.decode(args) else {
            throw ValidationError("--args must be a JSON list, got \(args)")
        }
        guard case .object(let keywords) = try? CeleryJSON.decode(kwargs) else {
            throw ValidationError("--kwargs must be a JSON object, got \(kwargs)")
        }
        var headers = CeleryObject()
        for item in header {
            let parts = item.split(separator: "=", maxSplits: 1)
            guard parts.count == 2 else { throw ValidationError("--header takes name=value, got \(item)") }
            headers[String(parts[0])] = .string(String(parts[1]))
        }
        // As Celery's ISO8601 and ISO8601_OR_FLOAT parameters: a time is sent as Python's isoformat() writes it.
        func time(_ text: String, _ option: String) throws -> CeleryValue {
            guard let written = CeleryTimestamp.pythonIsoformat(text) else {
                throw ValidationError("\(option) must be an ISO 8601 time (YYYY-MM-DD[THH:MM[:SS[.ffffff]]][Z|±HH:MM]), got '\(text)'.")
            }
            return .string(written)
        }
        var options = TaskSendOptions(
            countdown: countdown, queue: queue, priority: priority, headers: headers, taskID: taskID, exchange: exchange,
            routingKey: routingKey
        ).signatureOptions
        if let eta { options["eta"] = try time(eta, "--eta") }
        if let expires {
            if let seconds = Double(expires) {
                guard seconds.isFinite else { throw ValidationError("--expires must be a number of seconds or an ISO 8601 time, got '\(expires)'.") }
                options["expires"] = .double(seconds)
            } else {
                options["expires"] = try time(expires, "--expires")
            }
        }
        return Signature(task: name, args: positional, kwargs: keywords, options: options)
    }

    func validate() throws {
        _ = try signature()
    }

    func run() async throws {
        let signature = try signature()
        let client = try connection.client()
        let result = try await client.apply(signature)
        print(result.id)
        guard wait else { return await client.shutdown() }
        do {
            let value = try await result.get(timeout: .milliseconds(Int64(timeout * 1000)))
            print(String(decoding: CeleryJSON.encode(value), as: UTF8.self))
            await client.shutdown()
        } catch let failure as TaskFailure {
            StandardStream.error.write("\(failure.state): \(failure.pythonException.tracebackLine)\n")
            throw ExitCode(1)
        }
    }
}

/// Builds a chain, a group, a chord and a chord with a nested header in Swift and runs them on whatever workers
/// consume `--queue`.
struct CanvasDemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "canvas-demo",
        abstract: "Send a chain, a group, a chord and a nested chord built in Swift (the Interop tasks) and print their results.",
        // The demo's and the Interop tests' tasks: kept out of the help of a program with tasks of its own.
        shouldDisplay: false)

    @Option(name: [.customShort("Q"), .customLong("queue")], help: "The queue every step goes to (default: celery).")
    var queue = "celery"

    @OptionGroup var connection: ClientOptions

    func run() async throws {
        let client = try connection.client()
        let options: CeleryObject = ["queue": .string(queue)]
        func task(_ name: String, _ args: [CeleryValue]) -> Signature { Signature(task: name, args: args, options: options) }

        let chain = try await client.apply(.chain([task("tasks.add", [1, 2]), task("tasks.mul", [10]), task("tasks.add", [5])]))
        print("chain", String(decoding: CeleryJSON.encode(try await chain.get(timeout: .seconds(30))), as: UTF8.self))
        let group = try await client.apply(group: (0..<4).map { task("tasks.add", [.int(Int64($0)), .int(Int64($0))]) })
        print("group", String(decoding: CeleryJSON.encode(.array(try await group.get(timeout: .seconds(30)))), as: UTF8.self))
        let chord = try await client.apply(.chord((1...4).map { task("tasks.mul", [.int(Int64($0)), 10]) }, body: task("tasks.tsum", [])))
        print("chord", String(decoding: CeleryJSON.encode(try await chord.get(timeout: .seconds(30))), as: UTF8.self))
        // A group followed by a step in a chain is a chord, as Python's chain makes it: (1 + 2) * 2 + (1 + 2) * 3.
        let chainedGroup = try await client.apply(
            .chain([task("tasks.add", [1, 2]), .group([task("tasks.mul", [2]), task("tasks.mul", [3])]), task("tasks.tsum", [])]))
        print("chained-group", String(decoding: CeleryJSON.encode(try await chainedGroup.get(timeout: .seconds(30))), as: UTF8.self))
        // A header with a chain that ends in a group, and a chord: the body gets [[6, 9], 7].
        let nested = try await client.apply(
            .chord(
                [
                    .chain([task("tasks.add", [1, 2]), .group([task("tasks.mul", [2]), task("tasks.mul", [3])], options: options)]),
                    .chord([task("tasks.add", [1, 2]), task("tasks.add", [2, 2])], body: task("tasks.tsum", [])),
                ], body: task("tasks.echo", [])))
        print("nested", String(decoding: CeleryJSON.encode(try await nested.get(timeout: .seconds(30))), as: UTF8.self))
        // Children, as the worker that ran each task stored them: a linked task, a linked group.
        var shown: [String] = []
        for link in [task("tasks.mul", [3]), .group([task("tasks.mul", [2]), task("tasks.mul", [3])], options: options)] {
            var linked = task("tasks.add", [1, 1])
            linked.options["link"] = [link.value]
            let result = try await client.apply(linked)
            _ = try await result.get(timeout: .seconds(30))
            for child in try await result.children() {
                let (kind, value): (String, CeleryValue)
                switch child {
                case .task(let task): (kind, value) = ("task", try await task.get(timeout: .seconds(30)))
                case .group(let group): (kind, value) = ("group", .array(try await group.get(timeout: .seconds(30))))
                }
                shown.append("\(kind):" + String(decoding: CeleryJSON.encode(value), as: UTF8.self))
            }
        }
        print("children", shown.joined(separator: " "))
        do {
            _ = try await client.send("tasks.fail", args: ["from swift"], options: TaskSendOptions(queue: queue)).get(timeout: .seconds(30))
        } catch let failure as TaskFailure {
            print("failure", failure.pythonException.module, failure.pythonException.repr)
        }
        await client.shutdown()
    }
}
