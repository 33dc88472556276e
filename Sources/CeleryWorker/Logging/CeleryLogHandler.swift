import Foundation
import Logging
import Synchronization

/// Writes log lines in Celery's default format: `[2026-11-25 01:31:34,123: INFO/MainProcess] message`.
///
/// Only executables bootstrap logging; the library just takes a `Logger`. Use
/// `LoggingSystem.bootstrap { CeleryLogHandler(label: $0, sink: sink) }`.
public struct CeleryLogHandler: LogHandler {
    /// Where lines go: standard error or a file, shared by every handler made from it.
    public final class Sink: Sendable {
        private let handle: Mutex<FileHandle>

        /// Lines go to standard error, as Celery's do.
        public static let standardError = Sink(handle: FileHandle.standardError)

        init(handle: FileHandle) {
            self.handle = Mutex(handle)
        }

        /// Appends to the file at `path`, creating it if needed.
        public convenience init(appendingTo path: String) throws {
            if !FileManager.default.fileExists(atPath: path) {
                guard FileManager.default.createFile(atPath: path, contents: nil) else {
                    throw CeleryWorkerError(code: .invalidConfiguration, message: "cannot create log file \(path)")
                }
            }
            guard let handle = FileHandle(forWritingAtPath: path) else {
                throw CeleryWorkerError(code: .invalidConfiguration, message: "cannot open log file \(path) for writing")
            }
            handle.seekToEndOfFile()
            self.init(handle: handle)
        }

        func write(_ line: String) {
            let data = Data(line.utf8)
            handle.withLock { $0.write(data) }
        }
    }

    public var logLevel: Logger.Level
    public var metadata: Logger.Metadata = [:]
    let sink: Sink
    let processName: String

    public init(label: String, sink: Sink = .standardError, level: Logger.Level = .info, processName: String = "MainProcess") {
        self.sink = sink
        self.logLevel = level
        self.processName = processName
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
        sink.write("[\(Self.timestamp()): \(name)/\(processName)] \(event.message)\n")
    }

    static func timestamp() -> String {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
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
