import CeleryProtocol
import CeleryWorker
import Foundation
import Logging

/// The demo's receiver of `setup_logging`, connected when `SWIFT_CELERY_DEMO_JSON_LOG` names a file: every line is
/// also appended there as one JSON object, beside Celery's own lines. What a program that ships its logs elsewhere
/// connects in the same way.
enum DemoLogging {
    static func connect(in registry: inout TaskRegistry) {
        guard let path = ProcessInfo.processInfo.environment["SWIFT_CELERY_DEMO_JSON_LOG"] else { return }
        registry.signals.onSetupLogging { setup in
            let sink = try CeleryLogHandler.Sink(appendingTo: path)
            LoggingSystem.bootstrap { label in
                MultiplexLogHandler([
                    setup.celeryHandler(label: label),
                    JSONLinesLogHandler(label: label, logLevel: setup.level, process: setup.processName, sink: sink),
                ])
            }
        }
    }
}

/// One JSON object per line: the level, the logger's label, the process, the message and the metadata (a task's
/// lines carry its name and id).
struct JSONLinesLogHandler: LogHandler {
    let label: String
    var logLevel: Logger.Level
    var metadata: Logger.Metadata = [:]
    let process: String
    let sink: CeleryLogHandler.Sink

    init(label: String, logLevel: Logger.Level, process: String, sink: CeleryLogHandler.Sink) {
        self.label = label
        self.logLevel = logLevel
        self.process = process
        self.sink = sink
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var fields: CeleryObject = [
            "level": .string(event.level.rawValue), "logger": .string(label), "process": .string(process),
            "message": .string("\(event.message)"),
        ]
        for (key, value) in metadata.merging(event.metadata ?? [:], uniquingKeysWith: { $1 }) { fields[key] = .string("\(value)") }
        sink.write(String(decoding: CeleryJSON.encode(.object(fields)), as: UTF8.self) + "\n")
    }
}
