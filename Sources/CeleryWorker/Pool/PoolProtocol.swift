import CeleryProtocol

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// The pipe protocol between the worker and its pool children (`--pool process`): each frame is a 4-byte
/// big-endian length and a JSON value. The worker writes on the child's fd 3 and reads its fd 4.
///
/// Worker → child: `{"hostname": node}`, then the kombu envelope as received, in a frame of its own: its bytes as
/// they are, not a JSON string (escaping and unescaping every quote of it cost the two sides more than the rest of
/// the frame). Child → worker: `{"ready": pid}` once at start,
/// `{"state": name, "meta": value}` for each `updateState`, `{"child": node}` for each task the body sends (its
/// result's `children`), then one outcome for the job (see ``PoolOutcome``; a failure's `raised_repr` is its
/// ``CeleryExceptionInfo/raisedRepr``).
enum PoolFrames {
    static let jobDescriptor: Int32 = 3
    static let outcomeDescriptor: Int32 = 4
    /// Frames above this size are refused (a corrupt length must not allocate gigabytes).
    static let maximumLength = 512 * 1024 * 1024

    /// Writes one frame, blocking, and with `bytes` a second frame of those bytes as they are (in the same write).
    /// Returns `false` when the other side is gone.
    static func write(_ value: CeleryValue, bytes: [UInt8]? = nil, to descriptor: Int32) -> Bool {
        var frame: [UInt8] = [0, 0, 0, 0]
        CeleryJSON.encode(value, into: &frame)
        func putLength(_ length: Int, at offset: Int) {
            let length = UInt32(length)
            frame[offset] = UInt8(length >> 24)
            frame[offset + 1] = UInt8((length >> 16) & 0xff)
            frame[offset + 2] = UInt8((length >> 8) & 0xff)
            frame[offset + 3] = UInt8(length & 0xff)
        }
        putLength(frame.count - 4, at: 0)
        if let bytes {
            let start = frame.count
            frame += [0, 0, 0, 0]
            putLength(bytes.count, at: start)
            frame += bytes
        }
        return frame.withUnsafeBytes { StandardStream.write($0, to: descriptor) } == nil
    }

    /// Reads one frame, blocking. `nil` at end of file, on a read error or on a frame that is not JSON.
    static func read(from descriptor: Int32) -> CeleryValue? {
        guard let body = readBytes(from: descriptor) else { return nil }
        return try? CeleryJSON.decode(body)
    }

    /// Reads one frame's bytes as they are, blocking. `nil` at end of file or on a read error.
    static func readBytes(from descriptor: Int32) -> [UInt8]? {
        guard let header = readExactly(4, from: descriptor) else { return nil }
        let length = header.reduce(0) { $0 << 8 | Int($1) }
        guard length <= maximumLength else { return nil }
        return readExactly(length, from: descriptor)
    }

    private static func readExactly(_ count: Int, from descriptor: Int32) -> [UInt8]? {
        var bytes = [UInt8](repeating: 0, count: count)
        var offset = 0
        while offset < count {
            let received = bytes.withUnsafeMutableBytes { buffer in
                Glibc.read(descriptor, buffer.baseAddress.map { $0 + offset }, count - offset)
            }
            if received < 0, errno == EINTR { continue }
            if received <= 0 { return nil }
            offset += received
        }
        return bytes
    }
}

/// How a job ended in a pool child, as sent back to the worker.
enum PoolOutcome {
    /// The frame for a task body's result. Everything that needs the Swift error itself (the Python exception it
    /// maps to, its traceback, whether `autoretry` accepts it) is decided here, in the child.
    static func frame(for result: Result<CeleryValue, any Error>, task: RegisteredTask, retries: Int) -> CeleryValue {
        switch result {
        case .success(let value):
            return ["outcome": "success", "value": value]
        case .failure(let error):
            if let retry = RetryTask.request(for: error, options: task.options, retries: retries) {
                return [
                    "outcome": "retry", "countdown": retry.countdown.map(CeleryValue.double) ?? .null,
                    "eta": retry.eta.map(CeleryValue.double) ?? .null,
                    "max_retries": retry.maxRetries.map { .int(Int64($0)) } ?? .null,
                    "cause": retry.cause.map { failure($0, task: task.name) } ?? .null,
                ]
            }
            switch error {
            case let reject as RejectTask:
                return ["outcome": "reject", "reason": reject.reason.map(CeleryValue.string) ?? .null, "requeue": .bool(reject.requeue)]
            case is IgnoreTask:
                return ["outcome": "ignore"]
            case let replacement as ReplaceTask:
                return ["outcome": "replace", "signature": replacement.signature.value]
            default:
                return failure(error, task: task.name)
            }
        }
    }

    private static func failure(_ error: any Error, task: String) -> CeleryValue {
        let exception = CeleryExceptionInfo(error: error)
        var frame: CeleryObject = [
            "outcome": "failure", "exception": exception.value,
            "traceback": .string(WorkerRun.traceback(task: task, exception: exception, error: error)),
        ]
        frame["raised_repr"] = exception.raisedRepr.map(CeleryValue.string)
        return .object(frame)
    }

    /// The worker's side: the result a frame stands for, with errors rebuilt as the runtime handles them.
    static func result(of frame: CeleryValue) -> Result<CeleryValue, any Error> {
        switch frame["outcome"]?.stringValue {
        case "success":
            return .success(frame["value"] ?? .null)
        case "retry":
            let cause = frame["cause"].flatMap { $0 == .null ? nil : remoteError($0) }
            return .failure(
                RetryTask(
                    countdown: frame["countdown"]?.doubleValue, eta: frame["eta"]?.doubleValue,
                    maxRetries: frame["max_retries"]?.intValue, cause: cause))
        case "reject":
            return .failure(RejectTask(reason: frame["reason"]?.stringValue, requeue: frame["requeue"]?.boolValue ?? false))
        case "ignore":
            return .failure(IgnoreTask())
        case "replace":
            guard let signature = frame["signature"].flatMap(Signature.init) else { return .failure(remoteError(frame)) }
            return .failure(ReplaceTask(with: signature))
        default:
            return .failure(remoteError(frame))
        }
    }

    private static func remoteError(_ frame: CeleryValue) -> RemoteTaskError {
        var exception = CeleryExceptionInfo(stored: frame["exception"])
        exception.raisedRepr = frame["raised_repr"]?.stringValue
        return RemoteTaskError(pythonException: exception, traceback: frame["traceback"]?.stringValue)
    }
}

/// A task error that happened in a pool child, already turned into its Python form there.
struct RemoteTaskError: PythonConvertibleError, Sendable {
    var pythonException: CeleryExceptionInfo
    var traceback: String?
}

/// The task ran past its hard time limit and its pool child was killed (billiard's `TimeLimitExceeded`).
struct HardTimeLimitExceeded: PythonConvertibleError, Sendable {
    var limit: Double
    var pythonException: CeleryExceptionInfo {
        CeleryExceptionInfo(type: "TimeLimitExceeded", arguments: [.double(limit)], module: "billiard.exceptions")
    }
}

/// The pool child running the task died (billiard's `WorkerLostError`).
struct WorkerLostError: PythonConvertibleError, Sendable {
    var exitDescription: String
    var pythonException: CeleryExceptionInfo {
        CeleryExceptionInfo(
            type: "WorkerLostError", arguments: [.string("Worker exited prematurely: \(exitDescription) Job: 0.")],
            module: "billiard.exceptions")
    }
}
