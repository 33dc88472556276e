import Foundation
import Logging
import Synchronization

/// Writes log lines in Celery's default format, `[2026-11-25 01:31:34,123: INFO/MainProcess] message`, or in the
/// formats given (`worker_log_format`; `worker_task_log_format` for lines a task logs through its context's logger,
/// Celery's default `[…] tasks.add[<id>]: message`).
///
/// Only executables bootstrap logging; the library just takes a `Logger`. Use
/// `LoggingSystem.bootstrap { CeleryLogHandler(label: $0, sink: sink) }`.
public struct CeleryLogHandler: LogHandler {
    /// Where lines go: standard error or a file, shared by every handler made from it.
    ///
    /// A line that cannot be written (a full disk, a reader of standard error that is gone) is dropped, and the
    /// worker goes on, as Python's logging drops it. A file that cannot be written is reported once on standard error
    /// (`Cannot write to the log file …: No space left on device; its lines are lost until it can be`), and again
    /// after it could be written once more.
    public final class Sink: Sendable {
        /// The descriptor written to, and whether the last write to it failed.
        private let state: Mutex<(descriptor: Int32, failing: Bool)>
        /// The file's path, `nil` for standard error.
        private let path: String?

        /// Lines go to standard error, as Celery's do.
        public static let standardError = Sink(descriptor: StandardStream.error.rawValue, path: nil)

        private init(descriptor: Int32, path: String?) {
            self.state = Mutex((descriptor, false))
            self.path = path
        }

        deinit {
            if path != nil { close(state.withLock { $0.descriptor }) }
        }

        /// Appends to the file at `path`, creating it if needed. The file is opened with `O_APPEND`, as Python opens
        /// its log file: every line goes to the end whoever wrote last, so the lines of process-pool children (which
        /// open the file themselves) and of the worker never overwrite each other.
        public convenience init(appendingTo path: String) throws {
            let descriptor = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
            guard descriptor >= 0 else {
                throw CeleryWorkerError(
                    code: .invalidConfiguration, message: "cannot open log file \(path) for writing: \(String(cString: strerror(errno)))")
            }
            self.init(descriptor: descriptor, path: path)
        }

        /// Writes `line` (ending in a newline) whole, or drops it when it cannot be written.
        public func write(_ line: String) {
            let failure = state.withLock { state -> Int32? in
                let failure = StandardStream.write(line, to: state.descriptor)
                defer { state.failing = failure != nil }
                return state.failing ? nil : failure
            }
            if let failure, let path {
                StandardStream.error.write(
                    "Cannot write to the log file \(path): \(String(cString: strerror(failure))); its lines are lost until it can be\n")
            }
        }
    }

    public var logLevel: Logger.Level
    public var metadata: Logger.Metadata = [:]
    let sink: Sink
    let processName: String
    let label: String
    /// The format of the worker's own lines, and of the lines tasks log.
    let format: LogFormat
    let taskFormat: LogFormat
    /// Whether ``format`` is Celery's default, written without reading the format.
    private let defaultFormat: Bool

    public init(
        label: String, sink: Sink = .standardError, level: Logger.Level = .info, processName: String = "MainProcess",
        format: LogFormat = .worker, taskFormat: LogFormat = .task
    ) {
        self.sink = sink
        self.logLevel = level
        self.processName = processName
        self.label = label
        self.format = format
        self.taskFormat = taskFormat
        self.defaultFormat = format == .worker
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        let name: String
        switch event.level {
        case .trace, .debug: name = "DEBUG"
        case .info, .notice: name = "INFO"
        case .warning: name = "WARNING"
        case .error: name = "ERROR"
        case .critical: name = "CRITICAL"
        }
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        // The worker's own lines carry no metadata: no lookup for them.
        let taskID = event.metadata?[LogKeys.taskID] ?? (metadata.isEmpty ? nil : metadata[LogKeys.taskID])
        let process = metadata.isEmpty ? processName : metadata[LogKeys.processName]?.description ?? processName
        if taskID == nil, defaultFormat {
            sink.write("[\(Self.timestamp(now)): \(name)/\(process)] \(event.message)\n")
            return
        }
        let record = LogFormat.Record(
            date: now, levelName: name, levelNumber: Self.levelNumbers[name] ?? 0, processName: process, loggerName: label,
            message: "\(event.message)", taskName: (event.metadata?[LogKeys.taskName] ?? metadata[LogKeys.taskName])?.description,
            taskID: taskID?.description, file: event.file, function: event.function, line: event.line)
        sink.write((taskID == nil ? format : taskFormat).render(record) + "\n")
    }

    /// Python's level numbers (`levelno`).
    static let levelNumbers = ["DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50]

    /// `asctime` as Python's logging writes it, in local time: `2026-11-25 01:31:34,123`.
    static func timestamp(_ spec: timespec) -> String {
        var seconds = spec.tv_sec
        var parts = tm()
        localtime_r(&seconds, &parts)
        let millis = Int(spec.tv_nsec / 1_000_000)
        func pad(_ value: Int32, _ width: Int = 2) -> String {
            let text = String(value)
            return String(repeating: "0", count: max(0, width - text.count)) + text
        }
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1))-\(pad(parts.tm_mday)) "
            + "\(pad(parts.tm_hour)):\(pad(parts.tm_min)):\(pad(parts.tm_sec)),\(pad(Int32(millis), 3))"
    }
}
