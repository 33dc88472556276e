import Foundation
import Logging
import Testing

@testable import CeleryWorker

@Suite("Log formats as Python's logging reads them")
struct LogFormatTests {
    static let record = LogFormat.Record(
        date: timespec(tv_sec: 1_764_892_800, tv_nsec: 45_000_000), levelName: "WARNING", levelNumber: 30,
        processName: "MainProcess", loggerName: "celery.worker", message: "hello", taskName: "tasks.log", taskID: "abc",
        file: "CeleryWorker/Runtime/WorkerRun.swift", function: "run()", line: 42)

    @Test("Celery's defaults")
    func defaults() {
        let stamp = CeleryLogHandler.timestamp(Self.record.date)
        #expect(LogFormat.worker.render(Self.record) == "[\(stamp): WARNING/MainProcess] hello")
        #expect(LogFormat.task.render(Self.record) == "[\(stamp): WARNING/MainProcess] tasks.log[abc]: hello")
        var outside = Self.record
        outside.taskName = nil
        outside.taskID = nil
        #expect(LogFormat.task.render(outside) == "[\(stamp): WARNING/MainProcess] ???[???]: hello")
        #expect(stamp.hasSuffix(",045"))
    }

    @Test("fields, flags, widths and precisions as Python's % operator")
    func conversions() throws {
        func render(_ text: String) throws -> String { try LogFormat(parsing: text).render(Self.record) }
        #expect(try render("%(levelname)-8s|%(levelname)8s|%(levelname).4s|100%%") == "WARNING | WARNING|WARN|100%")
        #expect(try render("%(levelno)d %(levelno)05d %(lineno)s %(msecs)d") == "30 00030 42 45")
        #expect(try render("%(created)f %(created).1f") == "1764892800.045000 1764892800.0")
        #expect(try render("%(name)s %(funcName)s %(filename)s %(module)s") == "celery.worker run() WorkerRun.swift WorkerRun")
        #expect(try render("%(message)r %(task_name)s %(task_id)s") == "'hello' tasks.log abc")
        #expect(try render("%(process)d") == String(getpid()))
    }

    @Test("an unknown field or a bare % is refused, naming it", arguments: ["%(nope)s", "50% off", "%(message)", "%(message)x"])
    func invalid(text: String) {
        #expect(throws: CeleryWorkerError.self) { try LogFormat(parsing: text) }
    }

    @Test("worker_log_datefmt: asctime as strftime writes it; a null setting is Celery's default")
    func dateFormats() throws {
        var format = LogFormat.worker
        format.dateFormat = "%Y/%m/%d %H"
        var parts = tm()
        var seconds = Self.record.date.tv_sec
        localtime_r(&seconds, &parts)
        let expected = String(format: "%04d/%02d/%02d %02d", parts.tm_year + 1900, parts.tm_mon + 1, parts.tm_mday, parts.tm_hour)
        #expect(format.render(Self.record) == "[\(expected): WARNING/MainProcess] hello")
        #expect(format != LogFormat.worker)  // so the handler does not take its shortcut for Celery's default
        let settings = try CelerySettings.parse(
            "worker_log_datefmt: '%H:%M'\nCELERYD_TASK_LOG_DATEFMT: '%d'\nworker_log_format: null\nworker_concurrency: null", source: "d.yaml")
        #expect(settings.logDateFormat == "%H:%M" && settings.taskLogDateFormat == "%d")
        #expect(settings.logFormat == nil && settings.concurrency == nil && settings.warnings.isEmpty)
    }

    @Test("worker_log_format and worker_task_log_format in a config file")
    func settings() throws {
        let settings = try CelerySettings.parse(
            "worker_log_format: '%(levelname)s %(message)s'\nCELERYD_TASK_LOG_FORMAT: '%(task_id)s %(message)s'", source: "l.yaml")
        #expect(settings.logFormat?.text == "%(levelname)s %(message)s")
        #expect(settings.taskLogFormat?.text == "%(task_id)s %(message)s")
        do {
            _ = try CelerySettings.parse("worker_log_format: '%(when)s'", source: "l.yaml")
            Issue.record("an unknown field should not load")
        } catch {
            #expect(error.message.contains("worker_log_format") && error.message.contains("unknown field 'when'"))
        }
    }

    @Test("worker_redirect_stdouts: one record per write, trailing newlines dropped, empty writes skipped, as Python's LoggingProxy")
    func redirectedWrites() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("redirect-\(UUID().uuidString).log").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        let sink = try CeleryLogHandler.Sink(appendingTo: path)
        let logger = Logger(label: "celery.redirected", factory: { CeleryLogHandler(label: $0, sink: sink, level: .info) })
        let writes = WriteLogger(logger: logger, level: .warning)
        for text in ["hello\nworld", "\n", "a", " ", "b\n\n", ""] {
            Array(text.utf8).withUnsafeBytes { writes.log($0) }
        }
        WriteLogger(logger: logger, level: .debug).log(UnsafeRawBufferPointer(start: nil, count: 0))
        Array("below the level".utf8).withUnsafeBytes { WriteLogger(logger: logger, level: .debug).log($0) }
        let lines = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n", omittingEmptySubsequences: false)
            .map { $0.hasPrefix("[") ? $0.drop(while: { $0 != "]" }) : $0 }
        #expect(lines == ["] hello", "world", "] a", "]  ", "] b", ""])
        let prefixes = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").filter { $0.hasPrefix("[") }
        #expect(prefixes.allSatisfy { $0.contains(": WARNING/MainProcess] ") })
        // A line about a process-pool child names the child.
        var child = logger
        child[metadataKey: LogKeys.processName] = "ForkPoolWorker-2"
        child.info("Task t[1] succeeded in 0.1s: None")
        #expect(try String(contentsOfFile: path, encoding: .utf8).hasSuffix(": INFO/ForkPoolWorker-2] Task t[1] succeeded in 0.1s: None\n"))
        #expect(try CelerySettings.parse("worker_redirect_stdouts_level: info", source: "r.yaml").redirectStdoutsLevel == "INFO")
        #expect(try CelerySettings.parse("CELERY_REDIRECT_STDOUTS_LEVEL: 40", source: "r.yaml").redirectStdoutsLevel == "ERROR")
        #expect(try CelerySettings.parse("worker_redirect_stdouts: false", source: "r.yaml").redirectStdouts == false)
        for bad in ["worker_redirect_stdouts_level: LOUD", "worker_redirect_stdouts_level: 35", "worker_redirect_stdouts_level: true"] {
            #expect(throws: CeleryWorkerError.self) { try CelerySettings.parse(bad, source: "r.yaml") }
        }
    }
}
