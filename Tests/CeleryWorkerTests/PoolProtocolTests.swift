import CeleryProtocol
import Foundation
import Testing

@testable import CeleryWorker

@Suite("Process pool: frames and outcomes between the worker and its children")
struct PoolProtocolTests {
    @Test("frames cross a pipe intact, and the end of the pipe reads as nil")
    func frames() throws {
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        let value: CeleryValue = ["hostname": "w@h", "meta": [1, 2.5, nil, "ü"]]
        // A job's message follows its frame as it is: quotes, non-ASCII and bytes that are not UTF-8 unchanged.
        let raw = Array(#"{"body": "e30=", "headers": {"x": "\u00fc \" ü"}}"#.utf8) + [0xFF, 0x00]
        #expect(PoolFrames.write(value, bytes: raw, to: fds[1]))
        #expect(PoolFrames.write(["ready": 7], to: fds[1]))
        #expect(PoolFrames.write(["empty": true], bytes: [], to: fds[1]))
        close(fds[1])
        #expect(PoolFrames.read(from: fds[0]) == value)
        #expect(PoolFrames.readBytes(from: fds[0]) == raw)
        #expect(PoolFrames.read(from: fds[0]) == ["ready": 7])
        #expect(PoolFrames.read(from: fds[0]) == ["empty": true])
        #expect(PoolFrames.readBytes(from: fds[0]) == [])
        #expect(PoolFrames.read(from: fds[0]) == nil)
        #expect(PoolFrames.readBytes(from: fds[0]) == nil)
        close(fds[0])
    }

    @Test("every outcome a child sends comes back as the error the runtime handles")
    func outcomes() throws {
        let plain = RegisteredTask(name: "t", options: TaskOptions()) { _ in .null }
        func roundTrip(_ result: Result<CeleryValue, any Error>, task: RegisteredTask = plain) -> Result<CeleryValue, any Error> {
            PoolOutcome.result(of: PoolOutcome.frame(for: result, task: task, retries: 0))
        }
        #expect(try roundTrip(.success([1, "a"])).get() == [1, "a"])

        guard case .failure(let failure as RemoteTaskError) = roundTrip(.failure(PythonException.valueError("bad"))) else {
            Issue.record("a failure must come back as RemoteTaskError")
            return
        }
        #expect(failure.pythonException == CeleryExceptionInfo(type: "ValueError", arguments: ["bad"], module: "builtins"))
        #expect(failure.traceback?.hasSuffix("ValueError: bad\n") == true)

        let retry = RetryTask(countdown: 2, maxRetries: 5, cause: PythonException.valueError("again"))
        guard case .failure(let retried as RetryTask) = roundTrip(.failure(retry)) else {
            Issue.record("a retry must come back as RetryTask")
            return
        }
        #expect(retried.countdown == 2 && retried.eta == nil && retried.maxRetries == 5)
        #expect((retried.cause as? RemoteTaskError)?.pythonException.type == "ValueError")

        let autoretrying = RegisteredTask(
            name: "t", options: TaskOptions(retryPolicy: RetryPolicy(autoretry: { $0 is CocoaError }))
        ) { _ in .null }
        guard case .failure(let automatic as RetryTask) = roundTrip(.failure(CocoaError(.fileNoSuchFile)), task: autoretrying)
        else {
            Issue.record("autoretry is decided in the child, where the Swift error exists")
            return
        }
        #expect(automatic.cause is RemoteTaskError)

        guard case .failure(let rejected as RejectTask) = roundTrip(.failure(RejectTask(reason: "no", requeue: true))) else {
            Issue.record("a rejection must come back as RejectTask")
            return
        }
        #expect(rejected.requeue && rejected.reason == "no")
        guard case .failure(is IgnoreTask) = roundTrip(.failure(IgnoreTask())) else {
            Issue.record("an ignore must come back as IgnoreTask")
            return
        }
        // A replacement comes back with its signature, and neither it nor an ignore is retried by an autoretry
        // that takes every error (Python's autoretry re-raises `Ignore`).
        let retryingAll = RegisteredTask(name: "t", options: TaskOptions(retryPolicy: RetryPolicy(autoretry: { _ in true }))) { _ in .null }
        let chain = Signature.chain([Signature(task: "a"), Signature(task: "b")])
        guard case .failure(let replaced as ReplaceTask) = roundTrip(.failure(ReplaceTask(with: chain)), task: retryingAll) else {
            Issue.record("a replacement must come back as ReplaceTask")
            return
        }
        #expect(replaced.signature == chain)
        guard case .failure(is IgnoreTask) = roundTrip(.failure(IgnoreTask()), task: retryingAll) else {
            Issue.record("an ignore is not retried")
            return
        }
    }

    @Test("exit statuses are described as billiard does")
    func exitStatus() {
        #expect(PoolProcess.signalName(9) == "SIGKILL")
        #expect(PoolProcess.signalName(5) == "SIGTRAP")
        #expect(
            HardTimeLimitExceeded(limit: 1).pythonException.value == [
                "exc_type": "TimeLimitExceeded", "exc_message": [1.0], "exc_module": "billiard.exceptions",
            ])
    }
}
