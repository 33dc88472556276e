import CStandardOutput
import Logging
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Celery's `worker_redirect_stdouts`: what tasks print becomes records of the worker's log, at
/// `worker_redirect_stdouts_level` (WARNING by default), as Python's worker logs what its tasks print:
/// `[2026-12-05 18:05:01,172: WARNING/MainProcess] hello` (`ForkPoolWorker-N` in a process-pool child).
///
/// As Python replaces `sys.stdout`, the C library's `stdout` stream is replaced: Swift's `print`, `printf` and `puts`
/// write there. What is written to the standard output descriptor itself (`FileHandle.standardOutput`, a program
/// the task starts) is not redirected, as in Python, where such writes bypass `sys.stdout` too. Standard error is
/// left alone (Python replaces `sys.stderr` as well), so that a crash report always reaches it.
///
/// Each write is one record, as in Python's `LoggingProxy`: its trailing newlines are dropped and an empty one is
/// skipped, so `print("a", "b")` logs `a`, ` ` and `b` as Python's does, and `print("hello\nworld")` one record of two
/// lines. A record is logged on the thread that prints, before the print returns, so it comes before the task's
/// "succeeded" line.
public enum StandardOutputRedirect {
    private static let started = Mutex(false)

    /// Redirects this process's `stdout` stream into `logger` at `level`. Once per process: a second call changes
    /// nothing and returns `false`, as does a stream that cannot be made (the reason is logged).
    @discardableResult
    public static func start(logger: Logger, level: Logger.Level) -> Bool {
        started.withLock { started in
            guard !started else { return false }
            // Retained for the life of the process: the stream keeps the pointer.
            let context = Unmanaged.passRetained(WriteLogger(logger: logger, level: level)).toOpaque()
            guard celery_stdout_redirect(context, write) == 0 else {
                Unmanaged<WriteLogger>.fromOpaque(context).release()
                logger.warning("Cannot redirect standard output into the log: \(String(cString: strerror(errno)))")
                return false
            }
            started = true
            return true
        }
    }

    /// The stream's write function: one record per write.
    private static let write: celery_stdout_writer = { context, buffer, size in
        guard let context, let buffer else { return 0 }
        Unmanaged<WriteLogger>.fromOpaque(context).takeUnretainedValue().log(UnsafeRawBufferPointer(start: buffer, count: size))
        return size
    }
}

/// Logs each write to the redirected stream as Python's `LoggingProxy.write` does.
final class WriteLogger: Sendable {
    let logger: Logger
    let level: Logger.Level

    init(logger: Logger, level: Logger.Level) {
        self.logger = logger
        self.level = level
    }

    func log(_ bytes: UnsafeRawBufferPointer) {
        var end = bytes.endIndex
        while end > bytes.startIndex, bytes[end - 1] == UInt8(ascii: "\n") { end -= 1 }
        if end > bytes.startIndex { logger.log(level: level, "\(String(decoding: bytes[..<end], as: UTF8.self))") }
    }
}
