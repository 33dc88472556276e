import CeleryProtocol
import CeleryWorker
import Foundation
import Logging
import Synchronization

/// The built-in demo tasks, registered through the public API exactly as a user's own tasks would be.
enum DemoTasks {
    /// The pid that this process's `worker_process_init` receiver recorded: set in a process-pool child as it starts.
    static let processInit = Mutex<Int32?>(nil)

    static func register(in registry: inout TaskRegistry) {
        registry.signals.onWorkerProcessInit { _ in processInit.withLock { $0 = getpid() } }
        registry.signals.onWorkerProcessShutdown { _ in Logger(label: "celery.demo").debug("worker_process_shutdown: pid \(getpid())") }
        // The worker's and beat's own signals, logged at DEBUG for the Interop tests to find.
        registry.signals.onWorkerInit { Logger(label: "celery.demo").debug("worker_init: \($0.hostname)") }
        registry.signals.onWorkerShuttingDown { event in
            let handler = event.handler
            Logger(label: "celery.demo").debug("worker_shutting_down: \(handler.signal) \(handler.how) \(handler.exitCode)")
        }
        registry.signals.onBeatInit { Logger(label: "celery.demo").debug("beat_init: \($0.hostname)") }
        registry.signals.onBeatEmbeddedInit { Logger(label: "celery.demo").debug("beat_embedded_init: \($0.hostname)") }
        registry.register("tasks.process_init") { _ in
            let initialized = processInit.withLock { $0 }
            return ["initialized": initialized.map { .int(Int64($0)) } ?? .null, "pid": .int(Int64(getpid()))] as CeleryValue
        }
        registry.register("seed_email") { _ in
            try await Task.sleep(for: .seconds(1))
            return "我将发送邮件"
        }
        registry.register("tasks.add", parameters: ["x", "y"]) { (_, x: CeleryValue, y: CeleryValue) in
            try add(x, y)
        }
        registry.register("tasks.echo") { context in
            ["args": .array(context.request.args), "kwargs": .object(context.request.kwargs)] as CeleryValue
        }
        registry.register("tasks.fail", parameters: ["message"]) { (_, message: String) -> CeleryValue in
            throw PythonException.valueError(message)
        }
        registry.register("tasks.sleep", parameters: ["seconds"]) { (_, seconds: Double) in
            try await Task.sleep(for: .milliseconds(Int64(seconds * 1000)))
            return seconds
        }
        registry.register("tasks.noop") { _ in CeleryValue.null }
        // log(message): logs it through the task's logger (Celery's worker_task_log_format) and returns it.
        registry.register("tasks.log", parameters: ["message"]) { (context, message: String) in
            context.logger.info("\(message)")
            return message
        }
        // print(text, end="\n"): prints text to standard output (into the log with worker_redirect_stdouts, as
        // Python's worker logs what its tasks print) and returns it.
        registry.register("tasks.print") { context -> String in
            try context.checkArguments(["text", "end"], required: 1)
            let text: String = try context.argument(0, name: "text")
            print(text, terminator: try context.argument(1, name: "end", default: "\n"))
            return text
        }
        // A new-style errback, record_error(request, exc, traceback, *args): called in this worker when a task that
        // links it (link_error) fails here; it logs the failed task and its exception.
        registry.registerErrback("tasks.record_error") { call in
            call.logger.warning(
                "errback: \(call.taskName)[\(call.taskID)] raised \(call.exception.repr) (args \(PythonRepr.repr(.array(call.args))))")
        }
        // flaky(n, countdown=0.1): retried n times, countdown seconds apart.
        registry.register("tasks.flaky") { context -> Int in
            let request = context.request
            try context.checkArguments(["n", "countdown"], required: 1)
            let n: Int = try context.argument(0, name: "n")
            let countdown = try context.argument(1, name: "countdown", default: 0.1)
            if request.retries < n { throw context.retry(countdown: countdown, maxRetries: n) }
            return request.retries
        }
        registry.register("tasks.progress", parameters: ["steps"]) { (context, steps: Int) in
            for step in 0..<steps {
                try await context.updateState(TaskState("PROGRESS"), meta: ["current": .int(Int64(step)), "total": .int(Int64(steps))])
                try await Task.sleep(for: .milliseconds(200))
            }
            return steps
        }
        registry.register("tasks.spin", parameters: ["seconds"]) { (_, seconds: Double) in
            let deadline = ContinuousClock.now + .milliseconds(Int64(seconds * 1000))
            var counter: UInt64 = 0
            while ContinuousClock.now < deadline { counter &+= 1 }
            return seconds
        }
        registry.register("tasks.whoami") { _ in "swift" }
        // Starts another task (Swift or Python, wherever `queue` leads) and returns its result: the Swift client
        // inside a task.
        registry.register("tasks.delegate", parameters: ["name", "args", "queue"]) {
            (context, name: String, args: [CeleryValue], queue: String) in
            try await context.send(name, args: args, options: TaskSendOptions(queue: queue)).get(timeout: .seconds(60))
        }
        // Stores `state` with `meta` (Python's update_state), then returns "stored".
        registry.register("tasks.report_state", parameters: ["state", "meta"]) { (context, state: String, meta: CeleryValue) in
            try await context.updateState(TaskState(state), meta: meta)
            return "stored"
        }
        // Sends a task to `queue` and retries itself once, 2 s later: its RETRY lists both in `children`.
        registry.register("tasks.send_then_retry", parameters: ["name", "args", "queue"]) {
            (context, name: String, args: [CeleryValue], queue: String) -> Int in
            try await context.send(name, args: args, options: TaskSendOptions(queue: queue))
            if context.request.retries < 1 { throw context.retry(countdown: 2) }
            return context.request.retries
        }
        registry.register("tasks.mul", parameters: ["x", "y"]) { (_, x: Int, y: Int) in x * y }
        registry.register("tasks.tsum", parameters: ["numbers"]) { (_, numbers: [Int]) in numbers.reduce(0, +) }
        // Replaces itself (Python's `Task.replace`) with a task, chain, group or chord of tasks on `queue`.
        registry.register("tasks.replace_with", parameters: ["kind", "queue"]) { (context, kind: String, queue: String) -> CeleryValue in
            func task(_ name: String, _ args: [CeleryValue]) -> Signature {
                Signature(task: name, args: args, options: ["queue": .string(queue)])
            }
            switch kind {
            case "task": throw context.replace(with: task("tasks.add", [2, 3]))
            case "chain": throw context.replace(with: .chain([task("tasks.add", [1, 1]), task("tasks.mul", [10])]))
            case "group": throw context.replace(with: .group([task("tasks.add", [1, 1]), task("tasks.add", [2, 2])]))
            case "chord":
                throw context.replace(with: .chord([task("tasks.add", [1, 1]), task("tasks.add", [2, 2])], body: task("tasks.tsum", [])))
            default: throw PythonException(type: "KeyError", arguments: [.string(kind)])
            }
        }
        // Adds tasks.add(x, 100) on `queue` to this task's chord (Python's `self.add_to_chord`), and returns x.
        registry.register("tasks.grow", parameters: ["x", "queue"]) { (context, x: Int, queue: String) in
            try await context.addToChord(Signature(task: "tasks.add", args: [.int(Int64(x)), 100], options: ["queue": .string(queue)]))
            return x
        }
        // Kills the process running it, to show how the process pool contains a crash (WorkerLostError). With the
        // thread pool that process is the worker itself, so there it refuses. Retried 0.1 s apart when
        // task_retry_on_worker_lost is on.
        registry.register("tasks.crash", options: TaskOptions(defaultRetryDelay: 0.1)) { _ -> String in
            guard CeleryWorkerService.isPoolChild else {
                throw PythonException(type: "RuntimeError", message: "tasks.crash only crashes process-pool children")
            }
            fatalError("tasks.crash was asked to crash this process")
        }
    }

    /// Python's `x + y` for the types JSON and msgpack carry: numbers, strings and lists.
    static func add(_ x: CeleryValue, _ y: CeleryValue) throws -> CeleryValue {
        switch (x, y) {
        case (.int(let a), .int(let b)):
            let (sum, overflow) = a.addingReportingOverflow(b)
            return overflow ? try exactSum(String(a), String(b)) : .int(sum)
        case (.int, .uint), (.uint, .int), (.uint, .uint), (.bigInt, .int), (.bigInt, .uint), (.bigInt, .bigInt), (.int, .bigInt),
            (.uint, .bigInt):
            return try exactSum(integerText(x), integerText(y))
        case (.string(let a), .string(let b)): return .string(a + b)
        case (.array(let a), .array(let b)): return .array(a + b)
        default:
            if let a = x.doubleValue, let b = y.doubleValue, !(x.boolValue != nil || y.boolValue != nil) {
                return .double(a + b)
            }
            throw PythonException.typeError(
                "unsupported operand type(s) for +: \(PythonRepr.repr(x)) and \(PythonRepr.repr(y))")
        }
    }

    private static func integerText(_ value: CeleryValue) -> String {
        switch value {
        case .uint(let number): String(number)
        case .bigInt(let number): number.description
        default: PythonRepr.repr(value)
        }
    }

    /// The sum of two integers written in decimal, exact at any size, as Python's `int` adds.
    private static func exactSum(_ a: String, _ b: String) throws -> CeleryValue {
        func parts(_ text: String) -> (negative: Bool, digits: [UInt8]) {
            let negative = text.hasPrefix("-")
            return (negative, (negative ? text.utf8.dropFirst() : text.utf8[...]).reversed().map { $0 - UInt8(ascii: "0") })
        }
        func precedes(_ a: [UInt8], _ b: [UInt8]) -> Bool {
            a.count != b.count ? a.count < b.count : a.reversed().lexicographicallyPrecedes(b.reversed())
        }
        var (first, second) = (parts(a), parts(b))
        if first.negative != second.negative, precedes(first.digits, second.digits) { swap(&first, &second) }
        var digits: [UInt8] = []
        var carry = 0
        for index in 0..<max(first.digits.count, second.digits.count) {
            let x = Int(index < first.digits.count ? first.digits[index] : 0)
            let y = Int(index < second.digits.count ? second.digits[index] : 0)
            var digit = first.negative == second.negative ? x + y + carry : x - y + carry
            carry = digit >= 10 ? 1 : digit < 0 ? -1 : 0
            digit -= 10 * carry
            digits.append(UInt8(digit))
        }
        if carry > 0 { digits.append(UInt8(carry)) }
        while digits.count > 1, digits.last == 0 { digits.removeLast() }
        let magnitude = String(decoding: digits.reversed().map { $0 + UInt8(ascii: "0") }, as: UTF8.self)
        let text = first.negative && magnitude != "0" ? "-" + magnitude : magnitude
        guard let sum = CeleryValue(integerText: text) else {
            throw PythonException.valueError("Exceeds the limit (\(CeleryBigInt.maximumDigits) digits) for integer string conversion")
        }
        return sum
    }
}
