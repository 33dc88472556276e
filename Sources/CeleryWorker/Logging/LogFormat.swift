import CeleryProtocol
import Foundation

/// A Python `logging` format string, as Celery's `worker_log_format` and `worker_task_log_format` take it:
/// `%(name)s` fields with Python's `%` conversions (`s`, `d`, `f`, `r`, with `-`, `0`, a width and a precision),
/// and `%%` for a percent sign. The fields are those of a Python log record that a Swift log line has:
/// `asctime`, `levelname`, `levelno`, `processName`, `process`, `threadName`, `thread`, `name`, `message`,
/// `created`, `msecs`, `relativeCreated`, `pathname`, `filename`, `module`, `funcName`, `lineno`, and Celery's
/// `task_name` and `task_id` (`???` outside a task, as Celery's `TaskFormatter` writes them).
public struct LogFormat: Sendable, Equatable {
    /// A piece of the format: text as it is, or a field with its conversion.
    enum Piece: Sendable, Equatable {
        case text(String)
        case field(Field, Conversion)
    }

    /// A log record's attribute.
    enum Field: String, Sendable, CaseIterable {
        case asctime, levelname, levelno, processName, process, threadName, thread, name, message, created, msecs
        case relativeCreated, pathname, filename, module, funcName, lineno
        case taskName = "task_name"
        case taskID = "task_id"
    }

    /// Python's `%` conversion: flags, width, precision and type.
    struct Conversion: Sendable, Equatable {
        var leftAligned = false
        var zeroPadded = false
        var width = 0
        var precision: Int?
        var type: Character = "s"
    }

    let pieces: [Piece]
    /// The text the format was read from.
    public let text: String
    /// Celery 5.7's `worker_log_datefmt` (`worker_task_log_datefmt` for task lines): `asctime` as C's `strftime`
    /// writes it with this format, in local time, as Python's `Formatter.formatTime` does with a `datefmt`. `nil`:
    /// Python's default, `2026-11-25 01:31:34,123`.
    public var dateFormat: String?

    /// Celery's `worker_log_format`.
    public static let worker = LogFormat(known: "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s")
    /// Celery's `worker_task_log_format`.
    public static let task = LogFormat(known: "[%(asctime)s: %(levelname)s/%(processName)s] %(task_name)s[%(task_id)s]: %(message)s")

    /// A format written here, which parses (a unit test reads both); were it not to, lines would be the message.
    private init(known text: String) {
        self = (try? LogFormat(parsing: text)) ?? LogFormat(pieces: [.field(.message, Conversion())], text: "%(message)s")
    }

    private init(pieces: [Piece], text: String) {
        self.pieces = pieces
        self.text = text
    }

    /// Reads a format, with an error that names what is wrong (an unknown field, a conversion Python does not have).
    public init(parsing text: String) throws(CeleryWorkerError) {
        func invalid(_ why: String) -> CeleryWorkerError {
            CeleryWorkerError(code: .invalidConfiguration, message: "log format '\(text)': \(why)")
        }
        var pieces: [Piece] = []
        var literal = ""
        var rest = Substring(text)
        while let percent = rest.firstIndex(of: "%") {
            literal += rest[..<percent]
            rest = rest[rest.index(after: percent)...]
            if rest.first == "%" {
                literal += "%"
                rest = rest.dropFirst()
                continue
            }
            guard rest.first == "(", let close = rest.firstIndex(of: ")") else {
                throw invalid("a % must start a field such as %(message)s, or be written %%")
            }
            let name = String(rest[rest.index(after: rest.startIndex)..<close])
            guard let field = Field(rawValue: name) else {
                throw invalid(
                    "unknown field '\(name)' (known: \(Field.allCases.map(\.rawValue).joined(separator: ", ")))")
            }
            rest = rest[rest.index(after: close)...]
            var conversion = Conversion()
            while let flag = rest.first, flag == "-" || flag == "0" || flag == " " || flag == "+" || flag == "#" {
                if flag == "-" { conversion.leftAligned = true }
                if flag == "0" { conversion.zeroPadded = true }
                rest = rest.dropFirst()
            }
            let width = rest.prefix { $0.isASCII && $0.isNumber }
            conversion.width = Int(width) ?? 0
            rest = rest.dropFirst(width.count)
            if rest.first == "." {
                rest = rest.dropFirst()
                let precision = rest.prefix { $0.isASCII && $0.isNumber }
                conversion.precision = Int(precision) ?? 0
                rest = rest.dropFirst(precision.count)
            }
            guard let type = rest.first, "sdifr".contains(type) else {
                throw invalid("the field '\(name)' needs a conversion: s, d, i, f or r")
            }
            conversion.type = type
            rest = rest.dropFirst()
            if !literal.isEmpty { pieces.append(.text(literal)) }
            literal = ""
            pieces.append(.field(field, conversion))
        }
        literal += rest
        if !literal.isEmpty { pieces.append(.text(literal)) }
        self.pieces = pieces
        self.text = text
    }

    /// What one log line is made of.
    struct Record {
        var date: timespec
        var levelName: String
        var levelNumber: Int
        var processName: String
        var loggerName: String
        var message: String
        var taskName: String?
        var taskID: String?
        var file: String
        var function: String
        var line: UInt
    }

    /// When the process started, for `relativeCreated`.
    private static let started: Double = {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
    }()

    func render(_ record: Record) -> String {
        var line = ""
        let created = Double(record.date.tv_sec) + Double(record.date.tv_nsec) / 1e9
        for piece in pieces {
            switch piece {
            case .text(let text):
                line += text
            case .field(let field, let conversion):
                let value: Value
                switch field {
                case .asctime: value = .text(dateFormat.map { Self.formatTime(record.date, $0) } ?? CeleryLogHandler.timestamp(record.date))
                case .levelname: value = .text(record.levelName)
                case .levelno: value = .number(Double(record.levelNumber))
                case .processName: value = .text(record.processName)
                case .process: value = .number(Double(getpid()))
                case .threadName: value = .text(Thread.isMainThread ? "MainThread" : (Thread.current.name ?? "Thread"))
                case .thread: value = .number(Double(UInt(pthread_self())))
                case .name: value = .text(record.loggerName)
                case .message: value = .text(record.message)
                case .created: value = .number(created)
                case .msecs: value = .number(Double(record.date.tv_nsec / 1_000_000))
                case .relativeCreated: value = .number((created - Self.started) * 1000)
                case .pathname: value = .text(record.file)
                case .filename: value = .text(String(record.file.split(separator: "/").last ?? ""))
                case .module:
                    let file = record.file.split(separator: "/").last.map(String.init) ?? ""
                    value = .text(file.hasSuffix(".swift") ? String(file.dropLast(6)) : file)
                case .funcName: value = .text(record.function)
                case .lineno: value = .number(Double(record.line))
                case .taskName: value = .text(record.taskName ?? "???")
                case .taskID: value = .text(record.taskID ?? "???")
                }
                line += Self.convert(value, conversion)
            }
        }
        return line
    }

    /// Python's `time.strftime(datefmt, time.localtime(created))`.
    static func formatTime(_ date: timespec, _ format: String) -> String {
        var seconds = date.tv_sec
        var parts = tm()
        localtime_r(&seconds, &parts)
        var buffer = [CChar](repeating: 0, count: 256 + format.utf8.count * 8)
        let count = strftime(&buffer, buffer.count, format, &parts)
        return String(decoding: buffer.prefix(count).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    private enum Value {
        case text(String)
        case number(Double)
    }

    /// Python's `%` operator for one value.
    private static func convert(_ value: Value, _ conversion: Conversion) -> String {
        var text: String
        switch (value, conversion.type) {
        case (.number(let number), "d"), (.number(let number), "i"):
            text = String(Int(number))
        case (.number(let number), "f"):
            text = String(format: "%.\(conversion.precision ?? 6)f", number)
        case (.number(let number), _):
            // `s` and `r` of a Python number: an int when it is whole, else Python's float text.
            text = number == number.rounded() && abs(number) < 1e15 ? String(Int(number)) : String(number)
        case (.text(let string), "r"):
            text = PythonRepr.repr(.string(string))
        case (.text(let string), _):
            text = string
            if let precision = conversion.precision, conversion.type == "s" { text = String(text.prefix(precision)) }
        }
        let padding = max(0, conversion.width - text.count)
        guard padding > 0 else { return text }
        if conversion.leftAligned { return text + String(repeating: " ", count: padding) }
        if conversion.zeroPadded, case .number = value { return String(repeating: "0", count: padding) + text }
        return String(repeating: " ", count: padding) + text
    }
}
