import CeleryProtocol
import Foundation
import Logging
import ServiceLifecycle
import Synchronization
import Testing

@testable import CeleryWorker

/// Counts tasks running at once.
final class RunningCounter: Sendable {
    let value = Mutex((now: 0, peak: 0))
}

@Suite("Worker runtime on an in-memory broker")
struct WorkerRuntimeTests {
    /// A logger that keeps metadata (tasks read theirs) and writes only critical lines, to /dev/null.
    static func quietLogger() throws -> Logger {
        let sink = try CeleryLogHandler.Sink(appendingTo: "/dev/null")
        return Logger(label: "test", factory: { CeleryLogHandler(label: $0, sink: sink, level: .critical) })
    }

    static func registry(running: RunningCounter? = nil) -> TaskRegistry {
        var registry = TaskRegistry()
        registry.register("add", parameters: ["x", "y"]) { (_, x: Int, y: Int) in x + y }
        registry.register("fail") { _ -> Int in throw PythonException.valueError("nope") }
        registry.register("scale") { context -> Int in
            try context.checkArguments(["x", "factor"], required: 1)
            return try context.argument(0, name: "x") as Int * context.argument(1, name: "factor", default: 2)
        }
        registry.register("slow", parameters: ["seconds"]) { (_, seconds: Double) in
            running?.value.withLock {
                $0.now += 1; $0.peak = max($0.peak, $0.now)
            }
            try await Task.sleep(for: .milliseconds(Int64(seconds * 1000)))
            running?.value.withLock { $0.now -= 1 }
            return seconds
        }
        registry.register("reject", parameters: ["requeue"]) { (_, requeue: Bool) -> Int in
            throw RejectTask(reason: "nope", requeue: requeue)
        }
        registry.register("ignore") { _ -> Int in throw IgnoreTask() }
        registry.register("flaky", parameters: ["n"]) { (context, n: Int) -> Int in
            if context.request.retries < n { throw context.retry(countdown: 0.05, maxRetries: 2) }
            return context.request.retries
        }
        registry.register("keyerror", options: TaskOptions(maxRetries: 1)) { context -> Int in
            throw context.retry(countdown: 0.05, cause: PythonException.keyError("missing"))
        }
        registry.register(
            "autoretry",
            options: TaskOptions(maxRetries: 2, retryPolicy: RetryPolicy(autoretry: { $0 is PythonException }, backoff: 0))
        ) { _ -> Int in throw PythonException.valueError("again") }
        registry.register("sleepy", options: TaskOptions(softTimeLimit: 0.2)) { _ -> String in
            try await Task.sleep(for: .seconds(5))
            return "too late"
        }
        registry.register("stubborn", options: TaskOptions(softTimeLimit: 0.2)) { _ -> String in
            do {
                try await Task.sleep(for: .seconds(5))
            } catch {
                return "caught"
            }
            return "too late"
        }
        registry.register("context") { context in
            [
                .string(context.request.id), .string(context.request.name), .int(Int64(context.request.retries)),
                context.request.headers["x-custom"] ?? nil, .string(context.request.deliveryInfo.routingKey),
                .string(context.logger[metadataKey: LogKeys.taskID].map { "\($0)" } ?? "none"),
                .string(context.logger[metadataKey: LogKeys.taskName].map { "\($0)" } ?? "none"),
            ] as CeleryValue
        }
        return registry
    }

    /// Runs a worker until `body` returns, then shuts it down warmly.
    static func withWorker(
        concurrency: Int = 2, acksLate: Bool = false, trackStarted: Bool = false, resultExtended: Bool = false,
        registry: TaskRegistry = registry(), backend: InMemoryBackend = InMemoryBackend(),
        _ body: (InMemoryBroker, InMemoryBackend) async throws -> Void
    ) async throws -> (InMemoryBroker, InMemoryBackend) {
        let broker = InMemoryBroker()
        let worker = CeleryWorkerService(
            configuration: WorkerConfiguration(
                concurrency: concurrency, acksLate: acksLate, nodeName: "test@host", trackStarted: trackStarted,
                resultExtended: resultExtended),
            registry: registry, logger: try Self.quietLogger(),
            broker: broker, backend: backend)
        let group = ServiceGroup(services: [worker], logger: Logger(label: "group", factory: { _ in SwiftLogNoOpLogHandler() }))
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            try await body(broker, backend)
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
        }
        return (broker, backend)
    }

    static func waitFor(_ condition: () -> Bool) async throws {
        for _ in 0..<500 where !condition() {
            try await Task.sleep(for: .milliseconds(10))
        }
        #expect(condition())
    }

    @Test("under load a pop waits for half the prefetch window (all of it up to 16 messages), 64 at most")
    func gatherTarget() {
        #expect(WorkerRun.gatherTarget(prefetchCount: 0) == 0)  // no limit: no gathering
        #expect(WorkerRun.gatherTarget(prefetchCount: 1) == 1)
        #expect(WorkerRun.gatherTarget(prefetchCount: 8) == 8)  // Celery's default with -c 2
        #expect(WorkerRun.gatherTarget(prefetchCount: 16) == 16)
        #expect(WorkerRun.gatherTarget(prefetchCount: 24) == 16)
        #expect(WorkerRun.gatherTarget(prefetchCount: 32) == 16)
        #expect(WorkerRun.gatherTarget(prefetchCount: 64) == 32)
        #expect(WorkerRun.gatherTarget(prefetchCount: 128) == 64)
        #expect(WorkerRun.gatherTarget(prefetchCount: 1000) == 64)
    }

    @Test("an argument with a default takes it when neither sent by position nor by name, and is type-checked when sent")
    func argumentDefault() async throws {
        let (_, backend) = try await Self.withWorker { broker, backend in
            broker.push(taskMessage("scale", id: "d", args: [3]))
            broker.push(taskMessage("scale", id: "p", args: [3, 5]))
            broker.push(taskMessage("scale", id: "k", args: [3], kwargs: ["factor": 4]))
            broker.push(taskMessage("scale", id: "t", args: [3, "x"]))
            try await Self.waitFor { ["d", "p", "k", "t"].allSatisfy { backend.final($0) != nil } }
        }
        #expect(backend.final("d")?.result == 6)
        #expect(backend.final("p")?.result == 15)
        #expect(backend.final("k")?.result == 12)
        #expect(backend.final("t")?.result["exc_type"] == "TypeError")
    }

    @Test("too many positional arguments or an unknown keyword argument fail with Python's TypeError, declared or typed")
    func argumentChecks() async throws {
        let (_, backend) = try await Self.withWorker { broker, backend in
            broker.push(taskMessage("scale", id: "many", args: [3, 5, 7]))
            broker.push(taskMessage("scale", id: "unknown", args: [3], kwargs: ["bogus": 1]))
            broker.push(taskMessage("add", id: "typed", args: [1, 2, 3]))
            broker.push(taskMessage("add", id: "typed-unknown", args: [1], kwargs: ["y": 2, "z": 3]))
            try await Self.waitFor { ["many", "unknown", "typed", "typed-unknown"].allSatisfy { backend.final($0) != nil } }
        }
        #expect(backend.final("many")?.result["exc_type"] == "TypeError")
        #expect(backend.final("many")?.result["exc_message"] == ["scale() takes from 1 to 2 positional arguments but 3 were given"])
        #expect(backend.final("unknown")?.result["exc_message"] == ["scale() got an unexpected keyword argument 'bogus'"])
        #expect(backend.final("typed")?.result["exc_message"] == ["add() takes 2 positional arguments but 3 were given"])
        #expect(backend.final("typed-unknown")?.result["exc_message"] == ["add() got an unexpected keyword argument 'z'"])
    }

    @Test("success, failure and unknown tasks give Python's documents and settle every message")
    func outcomes() async throws {
        let (broker, backend) = try await Self.withWorker { broker, backend in
            broker.push(taskMessage("add", id: "a", args: [2, 3]))
            broker.push(taskMessage("fail", id: "f"))
            broker.push(taskMessage("nope", id: "n"))
            broker.push(taskMessage("add", id: "k", kwargs: ["x": 1, "y": 2]))
            broker.push(taskMessage("add", id: "t", args: ["x", 1]))
            try await Self.waitFor { ["a", "f", "n", "k", "t"].allSatisfy { backend.final($0) != nil } }
        }
        #expect(backend.final("a")?.result == 5)
        #expect(backend.final("a")?.status == .success)
        #expect(backend.final("a")?.dateDone != nil)
        #expect(backend.final("k")?.result == 3)
        let failure = try #require(backend.final("f"))
        #expect(failure.status == .failure)
        #expect(failure.result == CeleryExceptionInfo(type: "ValueError", arguments: ["nope"], module: "builtins").value)
        #expect(failure.traceback?.hasSuffix("ValueError: nope\n") == true)
        let unknown = try #require(backend.final("n"))
        #expect(unknown.result["exc_type"] == "NotRegistered")
        #expect(unknown.traceback == nil)
        #expect(backend.final("t")?.result["exc_type"] == "TypeError")
        broker.state.withLock { state in
            #expect(state.unacked.isEmpty)
            #expect(Set(state.acked) == ["tag-a", "tag-f", "tag-n", "tag-k", "tag-t"])
        }
    }

    @Test("a failed chain step and every step left are stored FAILURE in one write, the next step first")
    func chainFailure() async throws {
        func step(_ name: String, id: String) -> CeleryValue {
            ["task": .string(name), "args": [], "kwargs": [:], "options": ["task_id": .string(id)], "subtask_type": nil, "immutable": false]
        }
        let (broker, backend) = try await Self.withWorker { broker, backend in
            // The message lists the steps left last first, as Python's chain sends them.
            broker.push(taskMessage("fail", id: "f", embed: ["chain": [step("add", id: "last"), step("add", id: "next")]]))
            try await Self.waitFor { ["f", "next", "last"].allSatisfy { backend.final($0) != nil } }
        }
        #expect(backend.writes.withLock { $0 } == [["f", "next", "last"]])
        for id in ["next", "last"] {
            let document = try #require(backend.final(id))
            #expect(document.status == .failure)
            #expect(document.result == backend.final("f")?.result)
            #expect(document.traceback == backend.final("f")?.traceback)
        }
        broker.state.withLock { #expect($0.acked == ["tag-f"]) }
    }

    @Test("a new-style errback runs in the worker where the linked task failed, with no message; the others are sent")
    func newStyleErrback() async throws {
        let calls = Mutex<[ErrbackCall]>([])
        let oldStyle = Mutex<[[CeleryValue]]>([])
        var registry = Self.registry()
        registry.registerErrback("on_error") { call in calls.withLock { $0.append(call) } }
        registry.register("old_style") { context -> Int in
            oldStyle.withLock { $0.append(context.request.args) }
            return 0
        }
        func errback(_ name: String, args: [CeleryValue] = []) -> CeleryValue {
            ["task": .string(name), "args": .array(args), "kwargs": [:], "options": [:], "subtask_type": nil, "immutable": false]
        }
        let (broker, backend) = try await Self.withWorker(registry: registry) { broker, backend in
            broker.push(taskMessage("fail", id: "f", args: [], embed: ["errbacks": [errback("on_error", args: ["x"]), errback("old_style")]]))
            try await Self.waitFor { backend.final("f") != nil && !oldStyle.withLock { $0.isEmpty } }
        }
        let call = try #require(calls.withLock { $0.first })
        #expect(calls.withLock { $0.count } == 1)
        #expect(call.taskID == "f" && call.taskName == "fail" && call.args == ["x"])
        #expect(call.exception.repr == "ValueError('nope')" && call.traceback?.hasPrefix("Traceback") == true)
        // The old-style one went out as a message (and ran here) with the failed task's id; the new-style one did not.
        #expect(oldStyle.withLock { $0 } == [["f"]])
        let published = try broker.state.withLock { $0.published }.map {
            try CeleryTaskMessage(envelope: try KombuEnvelope(decoding: $0), accept: [.json]).name
        }
        #expect(published == ["old_style"])
        #expect(backend.final("f")?.status == .failure)
    }

    @Test("a message whose record in unacked is not yet confirmed runs, but is acknowledged only once it is")
    func acknowledgementWaitsForRecord() async throws {
        let record = PendingRecord()
        let (broker, backend) = try await Self.withWorker { broker, backend in
            broker.state.withLock { $0.pendingRecords["tag-r"] = record }
            broker.push(taskMessage("add", id: "r", args: [1, 2]))
            try await Self.waitFor { broker.state.withLock { $0.fetches.count } == 1 }
            try await Task.sleep(for: .milliseconds(300))
            // Early acknowledgement (acks_late off): it and the batch it goes in wait for the record.
            #expect(broker.state.withLock { $0.acked }.isEmpty)
            #expect(backend.final("r") == nil)
            record.complete(nil)
            try await Self.waitFor { backend.final("r") != nil && broker.state.withLock { $0.acked } == ["tag-r"] }
        }
        #expect(backend.final("r")?.result == 3)
        #expect(broker.state.withLock { $0.unacked.isEmpty })
    }

    @Test("under load the worker fetches a batch once half the jobs it holds have started, not one message per free permit")
    func fetchesBatchesUnderLoad() async throws {
        let ids = (0..<12).map { "s\($0)" }
        let (broker, _) = try await Self.withWorker(concurrency: 1) { broker, backend in
            // One worker slot, 4 prefetch permits (Celery's default multiplier); every message waiting at once.
            broker.state.withLock { state in
                state.queue.append(contentsOf: ids.map { taskMessage("slow", id: $0, args: [0.02]) })
            }
            try await Self.waitFor { ids.allSatisfy { backend.final($0) != nil } }
        }
        let fetches = broker.state.withLock { $0.fetches }
        // On the thread pool's event loop each round trip waited until half the window was free (two held jobs had
        // started: early acks free their permits), then took two, while the leader ran the other two; one message
        // per free permit would be 4, 1, 1, 1, … .
        #expect(fetches.map(\.limit) == [4, 2, 2, 2, 2])
        #expect(fetches.map(\.count) == [4, 2, 2, 2, 2])
    }

    @Test("jobs waiting for a rate limit do not count as ready: other tasks are still fetched and run meanwhile")
    func batchingLeavesNoSlotIdle() async throws {
        var registry = Self.registry()
        registry.register("limited", options: TaskOptions(rateLimit: "1/m")) { _ in CeleryValue.null }
        let adds = (0..<4).map { "a\($0)" }
        let (_, backend) = try await Self.withWorker(concurrency: 1, registry: registry) { broker, backend in
            // 4 prefetch permits: the second and third "limited" wait a minute for their turn, holding two of them.
            broker.state.withLock { state in
                state.queue.append(contentsOf: (0..<3).map { taskMessage("limited", id: "l\($0)") })
                state.queue.append(contentsOf: adds.map { taskMessage("add", id: $0, args: [1, 2]) })
            }
            try await Self.waitFor { adds.allSatisfy { backend.final($0) != nil } }
        }
        #expect(adds.allSatisfy { backend.final($0)?.result == 3 })
        #expect(backend.final("l0") != nil)
    }

    @Test("the task context carries the request")
    func context() async throws {
        let (_, backend) = try await Self.withWorker { broker, backend in
            broker.push(taskMessage("context", id: "c", extraHeaders: ["x-custom": "v", "retries": 2]))
            try await Self.waitFor { backend.final("c") != nil }
        }
        #expect(backend.final("c")?.result == ["c", "context", 2, "v", "celery", "c", "context"])
    }

    @Test("Celery's signals: each task's received, prerun, outcome and postrun in Celery's order; revoked; the worker's")
    func signals() async throws {
        let heard = Mutex<[String]>([])
        let backend = InMemoryBackend()
        var registry = Self.registry()
        @Sendable func hear(_ line: String) { heard.withLock { $0.append(line) } }
        registry.signals.onTaskReceived { hear("received \($0.id)") }
        registry.signals.onTaskPrerun { request in
            hear("prerun \(request.id) \(request.name) \(PythonRepr.repr(.array(request.args)))")
            if request.id == "boom" { throw PythonException.runtimeError("a receiver failed") }
        }
        registry.signals.onTaskPrerun { hear("prerun again \($0.id)") }  // after one that threw, too
        registry.signals.onTaskSuccess { hear("success \($0.request.id) \(PythonRepr.repr($0.result)) \($0.runtime >= 0)") }
        registry.signals.onTaskFailure { failure in
            // Sent once FAILURE is stored, as Celery's handle_failure sends it.
            let stored = backend.final(failure.request.id)?.status == .failure
            hear("failure \(failure.request.id) \(failure.exception.repr) stored=\(stored) \(failure.traceback != nil)")
        }
        registry.signals.onTaskRetry { hear("retry \($0.request.id) \($0.request.retries) \($0.reason)") }
        registry.signals.onTaskPostrun { hear("postrun \($0.request.id) \($0.state) \(PythonRepr.repr($0.result))") }
        registry.signals.onTaskRevoked { hear("revoked \($0.request.id) terminated=\($0.terminated) expired=\($0.expired)") }
        registry.signals.onTaskUnknown { hear("unknown \($0.id) \($0.name) \(!$0.message.isEmpty)") }
        registry.signals.onTaskRejected { hear("rejected \(String(decoding: $0.message, as: UTF8.self)) \(!$0.reason.isEmpty)") }
        registry.signals.onWorkerReady { hear("ready \($0.hostname)") }
        registry.signals.onWorkerShutdown { hear("shutdown \($0.hostname)") }
        registry.signals.onWorkerInit { hear("init \($0.hostname)") }
        let expired = CeleryTimestamp.isoformat(unixSeconds: WallClock.now() - 10)
        _ = try await Self.withWorker(concurrency: 1, registry: registry, backend: backend) { broker, backend in
            for (name, id, args) in [("add", "a", [2, 3]), ("fail", "f", []), ("flaky", "fl", [1]), ("ignore", "i", [])]
                as [(String, String, [CeleryValue])]
            {
                broker.push(taskMessage(name, id: id, args: args))
                try await Self.waitFor { heard.withLock { $0.contains { $0.hasPrefix("postrun \(id) ") } } }
                if id == "fl" { try await Self.waitFor { backend.final("fl") != nil } }
            }
            broker.push(taskMessage("reject", id: "r", args: [false]))
            broker.push(taskMessage("add", id: "x", args: [1, 1], extraHeaders: ["expires": .string(expired)]))
            broker.push(taskMessage("add", id: "boom", args: [0, 0]))
            broker.push(taskMessage("nope", id: "u"))
            broker.push(Array("not-json".utf8))
            try await Self.waitFor {
                backend.final("boom") != nil && backend.final("x") != nil && heard.withLock { $0.contains { $0.hasPrefix("rejected") } }
            }
        }
        let lines = heard.withLock { $0 }
        func of(_ id: String) -> [String] {
            lines.filter { line in
                let words = line.split(separator: " ")
                return words.dropFirst().first == Substring(id) || words.starts(with: ["prerun", "again", Substring(id)])
            }
        }
        // Init first, before anything is received; ready once the worker logs `ready.`, as tasks may already start;
        // shutdown last.
        #expect(lines.first == "init test@host" && lines.filter { $0.hasPrefix("init") }.count == 1, "\(lines)")
        #expect(lines.filter { $0.hasPrefix("ready") } == ["ready test@host"] && lines.last == "shutdown test@host", "\(lines)")
        #expect(of("a") == ["received a", "prerun a add [2, 3]", "prerun again a", "success a 5 true", "postrun a SUCCESS 5"])
        #expect(
            of("f") == [
                "received f", "prerun f fail []", "prerun again f", "failure f ValueError('nope') stored=true true",
                "postrun f FAILURE {'exc_type': 'ValueError', 'exc_message': ['nope'], 'exc_module': 'builtins'}",
            ], "\(lines)")
        // The retry is published inside the task, as Celery publishes it, so its message can be received before the
        // first run's postrun (as in Python, where they come from two processes); it is never received before the retry.
        var retried = of("fl")
        let receptions = retried.indices.filter { retried[$0] == "received fl" }
        #expect(receptions.count == 2 && receptions.first == 0, "\(lines)")
        if receptions.count == 2, let retry = retried.firstIndex(of: "retry fl 0 Retry in 0.05s") {
            #expect(retry < receptions[1], "\(lines)")
            retried.remove(at: receptions[1])
        }
        #expect(
            retried == [
                "received fl", "prerun fl flaky [1]", "prerun again fl", "retry fl 0 Retry in 0.05s",
                "postrun fl RETRY {'exc_type': 'Retry', 'exc_message': ['Retry in 0.05s'], 'exc_module': 'celery.exceptions'}",
                "prerun fl flaky [1]", "prerun again fl", "success fl 1 true", "postrun fl SUCCESS 1",
            ], "\(lines)")
        #expect(of("i").last?.hasPrefix("postrun i IGNORED") == true, "\(lines)")
        #expect(of("r").last?.hasPrefix("postrun r REJECTED") == true, "\(lines)")
        // An expired task is revoked on arrival: no received, prerun or postrun.
        #expect(of("x") == ["revoked x terminated=false expired=true"], "\(lines)")
        // A task this worker does not have, after its FAILURE is stored; a message that is not a task.
        #expect(of("u") == ["unknown u nope true"], "\(lines)")
        #expect(backend.final("u")?.result["exc_type"] == "NotRegistered")
        #expect(lines.contains("rejected not-json true"), "\(lines)")
        // The receiver that threw did not stop the next one, nor the task.
        #expect(of("boom").contains("prerun again boom") && backend.final("boom")?.result == 0, "\(lines)")
    }

    @Test("worker_shutting_down: shuttingDown(_:) runs its receivers with the node and Celery's handler, one that throws logged")
    func shuttingDown() async throws {
        let heard = Mutex<[String]>([])
        var registry = Self.registry()
        registry.signals.onWorkerShuttingDown { _ in throw PythonException.runtimeError("a receiver failed") }
        registry.signals.onWorkerShuttingDown { event in
            heard.withLock { $0.append("\(event.hostname) \(event.handler.signal) \(event.handler.how) \(event.handler.exitCode)") }
        }
        let worker = CeleryWorkerService(
            configuration: WorkerConfiguration(nodeName: "test@host"), registry: registry, logger: try Self.quietLogger(),
            broker: InMemoryBroker(), backend: nil)
        await worker.shuttingDown(.init(signal: "SIGINT", how: "Warm", exitCode: 1))
        #expect(heard.withLock { $0 } == ["test@host SIGINT Warm 1"])
    }

    @Test("-c limits how many tasks run at once")
    func concurrencyLimit() async throws {
        let running = RunningCounter()
        let ids = (0..<6).map { "s\($0)" }
        _ = try await Self.withWorker(concurrency: 3, registry: Self.registry(running: running)) { broker, backend in
            for id in ids { broker.push(taskMessage("slow", id: id, args: [0.2])) }
            try await Self.waitFor { ids.allSatisfy { backend.final($0) != nil } }
        }
        #expect(running.value.withLock { $0.peak } == 3)
    }

    @Test("warm shutdown finishes the running task and gives back the reserved ones")
    func warmShutdown() async throws {
        let (broker, backend) = try await Self.withWorker(concurrency: 1) { broker, _ in
            broker.push(taskMessage("slow", id: "run", args: [0.3]))
            broker.push(taskMessage("slow", id: "wait1", args: [0.3]))
            broker.push(taskMessage("slow", id: "wait2", args: [0.3]))
            try await Self.waitFor { broker.state.withLock { $0.queue.isEmpty && $0.unacked.count == 2 } }
        }
        #expect(backend.final("run")?.result == 0.3)
        #expect(backend.final("wait1") == nil)
        broker.state.withLock { state in
            #expect(state.restored.count == 2)
            #expect(state.unacked.isEmpty)
        }
    }

    @Test("acks late: the message stays unacknowledged until its result is stored")
    func acksLate() async throws {
        _ = try await Self.withWorker(acksLate: true) { broker, backend in
            broker.push(taskMessage("slow", id: "late", args: [0.3]))
            try await Self.waitFor { backend.documents.withLock { _ in true } && broker.state.withLock { !$0.unacked.isEmpty } }
            #expect(backend.final("late") == nil)
            try await Self.waitFor { backend.final("late") != nil && broker.state.withLock { $0.unacked.isEmpty } }
        }
    }

    @Test("a countdown task does not run before its ETA")
    func eta() async throws {
        let eta = CeleryTimestamp.isoformat(unixSeconds: WallClock.now() + 0.5)
        let pushed = ContinuousClock.now
        let (_, backend) = try await Self.withWorker { broker, backend in
            broker.push(taskMessage("add", id: "e", args: [1, 1], extraHeaders: ["eta": .string(eta)]))
            try await Self.waitFor { backend.final("e") != nil }
        }
        #expect(ContinuousClock.now - pushed >= .milliseconds(450))
        #expect(backend.final("e")?.result == 2)
    }

    @Test("an expired task is stored REVOKED and not run")
    func expired() async throws {
        let expires = CeleryTimestamp.isoformat(unixSeconds: WallClock.now() - 10)
        let (_, backend) = try await Self.withWorker { broker, backend in
            broker.push(taskMessage("add", id: "x", args: [1, 1], extraHeaders: ["expires": .string(expires)]))
            try await Self.waitFor { backend.final("x") != nil }
        }
        #expect(backend.final("x")?.status == .revoked)
        #expect(backend.final("x")?.result["exc_message"] == ["expired"])
    }

    @Test("Reject and Ignore settle the message as Python does")
    func rejectAndIgnore() async throws {
        let (broker, backend) = try await Self.withWorker(acksLate: true) { broker, backend in
            broker.push(taskMessage("reject", id: "r1", args: [false]))
            broker.push(taskMessage("reject", id: "r2", args: [true]))
            broker.push(taskMessage("ignore", id: "i"))
            broker.push(taskMessage("add", id: "after", args: [1, 1]))
            try await Self.waitFor {
                backend.final("after") != nil && broker.state.withLock { $0.restored.count == 1 && $0.unacked.isEmpty }
            }
        }
        #expect(backend.final("r1")?.result == ["exc_type": "Reject", "exc_message": ["nope", false], "exc_module": "celery.exceptions"])
        #expect(backend.final("r1")?.traceback == nil)
        #expect(backend.final("r2") == nil)
        #expect(backend.final("i") == nil)
        broker.state.withLock { state in
            #expect(state.acked.contains("tag-r1") && state.acked.contains("tag-i"))
            #expect(!state.acked.contains("tag-r2"))
        }
    }

    @Test("retries republish the same id until the task succeeds, storing RETRY in between")
    func retries() async throws {
        let (_, backend) = try await Self.withWorker { broker, backend in
            broker.push(taskMessage("flaky", id: "fl", args: [2]))
            try await Self.waitFor { backend.final("fl") != nil }
        }
        #expect(backend.final("fl")?.result == 2)
        let retries = backend.documents.withLock { $0.filter { $0.taskID == "fl" && $0.status == .retry } }
        #expect(retries.count == 2)
        #expect(retries.first?.children == [[["fl", nil], nil]])
        #expect(retries.first?.traceback?.contains("celery.exceptions.Retry: Retry in 0.05s") == true)
        #expect(retries.first?.dateDone == nil)
    }

    @Test("a retry sent while the broker is unreachable is sent again once it answers, as every message the worker sends")
    func retryMeetsUnreachableBroker() async throws {
        let (broker, backend) = try await Self.withWorker { broker, backend in
            broker.state.withLock { $0.publishFailures = 1 }
            broker.push(taskMessage("flaky", id: "fu", args: [1]))
            try await Self.waitFor { backend.final("fu") != nil }
        }
        #expect(backend.final("fu")?.status == .success && backend.final("fu")?.result == 1)
        #expect(broker.state.withLock { $0.published.count } == 1)
    }

    @Test("exhausted retries fail with the cause, or MaxRetriesExceededError; autoretry uses the policy")
    func exhausted() async throws {
        let (_, backend) = try await Self.withWorker { broker, backend in
            broker.push(taskMessage("keyerror", id: "ke"))
            broker.push(taskMessage("flaky", id: "fl5", args: [5]))
            broker.push(taskMessage("autoretry", id: "ar"))
            try await Self.waitFor { ["ke", "fl5", "ar"].allSatisfy { backend.final($0) != nil } }
        }
        #expect(backend.final("ke")?.result == CeleryExceptionInfo(type: "KeyError", arguments: ["missing"], module: "builtins").value)
        #expect(backend.documents.withLock { $0.filter { $0.taskID == "ke" && $0.status == .retry }.count } == 1)
        #expect(backend.final("fl5")?.result["exc_type"] == "MaxRetriesExceededError")
        #expect(backend.final("fl5")?.result["exc_module"] == "celery.exceptions")
        #expect(backend.final("ar")?.result["exc_type"] == "ValueError")
        #expect(backend.documents.withLock { $0.filter { $0.taskID == "ar" && $0.status == .retry }.count } == 2)
    }

    @Test("soft time limit: the task is cancelled and fails with SoftTimeLimitExceeded, unless it handles it")
    func softTimeLimit() async throws {
        let started = ContinuousClock.now
        let (_, backend) = try await Self.withWorker { broker, backend in
            broker.push(taskMessage("sleepy", id: "sl"))
            broker.push(taskMessage("stubborn", id: "st"))
            broker.push(taskMessage("slow", id: "hdr", args: [20], extraHeaders: ["timelimit": [nil, 0.2]]))
            try await Self.waitFor { ["sl", "st", "hdr"].allSatisfy { backend.final($0) != nil } }
        }
        // Cancelled, not run out (hdr's body sleeps 20 s); the bound leaves room for a loaded machine (3.03 s and, with
        // a worker and strace running beside the tests, 4.95 s were seen).
        #expect(ContinuousClock.now - started < .seconds(10))
        #expect(backend.final("sl")?.result == ["exc_type": "SoftTimeLimitExceeded", "exc_message": [], "exc_module": "billiard.exceptions"])
        #expect(backend.final("st")?.result == "caught")
        #expect(backend.final("hdr")?.result["exc_type"] == "SoftTimeLimitExceeded")
    }

    @Test("track_started stores STARTED first; result_extended adds the request fields")
    func startedAndExtended() async throws {
        let (_, backend) = try await Self.withWorker(trackStarted: true, resultExtended: true) { broker, backend in
            broker.push(taskMessage("add", id: "ex", args: [1, 2]))
            try await Self.waitFor { backend.final("ex") != nil }
        }
        let documents = backend.documents.withLock { $0.filter { $0.taskID == "ex" } }
        #expect(documents.map(\.status) == [.started, .success])
        #expect(documents.first?.result["hostname"] == "test@host")
        #expect(documents.first?.result["pid"]?.intValue == Int(ProcessInfo.processInfo.processIdentifier))
        let final = try #require(documents.last)
        #expect(final.extended.keys.elements == ["name", "args", "kwargs", "worker", "retries", "queue"])
        #expect(final.extended["args"] == [1, 2] && final.extended["queue"] == "celery" && final.extended["worker"] == "test@host")
    }
}
