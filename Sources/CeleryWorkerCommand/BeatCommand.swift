import ArgumentParser
import CeleryProtocol
import CeleryWorker
import Foundation
import Logging
import ServiceLifecycle
import UnixSignals

/// `celery beat`: Celery's beat on its own, sending the periodic tasks of `beat_schedule` to whichever workers
/// consume their queues (``BeatService``), with `celery beat`'s options, banner and log.
struct BeatCommand: AsyncParsableCommand, DaemonCommand {
    static let configuration = CommandConfiguration(
        commandName: "beat",
        abstract: "Send the periodic tasks of beat_schedule (--config) when they are due, as Python's celery beat.")

    @OptionGroup var options: ClientOptions

    @Option(
        name: [.customShort("s"), .customLong("schedule")],
        help: "Where each entry's last run is kept (default: beat_schedule_filename, else celerybeat-schedule).")
    var schedule: String?

    @Option(
        name: [.customShort("S"), .customLong("scheduler")],
        help: "Celery's default, celery.beat:PersistentScheduler, or celery-redbeat's, redbeat.RedBeatScheduler (default: beat_scheduler).")
    var scheduler: String?

    @Option(
        name: .customLong("max-interval"), parsing: .unconditional,
        help: "The longest sleep between looks at the schedule, in seconds (default: beat_max_loop_interval, else 300).")
    var maxInterval: Double?

    @Flag(
        name: .customLong("enable-remote-control"), inversion: .prefixedNo,
        help: "Answer `celery inspect ping`, so that beat can be health-checked (default: beat_enable_remote_control).")
    var remoteControl: Bool?

    @Option(
        name: [.customShort("n"), .customLong("hostname")],
        help: "The node name remote control reaches beat as; %h, %n, %d expand (default: celerybeat@%h).")
    var hostname: String?

    @Option(name: [.customShort("l"), .customLong("loglevel")], help: "DEBUG, INFO, WARNING, ERROR or CRITICAL.")
    var loglevel = "WARNING"

    @Option(name: [.customShort("f"), .customLong("logfile")], help: "Write the log to this file instead of standard error.")
    var logfile: String?

    @Option(name: .customLong("pidfile"), help: "Write beat's pid to this file, refusing to start while it names a running process.")
    var pidfile: String?

    @Flag(name: [.customShort("q"), .customLong("quiet")], help: "Do not print the banner.")
    var quiet = false

    @OptionGroup(title: "Daemonization options") var daemon: DaemonOptions

    func validate() throws {
        try daemon.prepare()
        guard WorkerCommand.levels[loglevel.uppercased()] != nil else {
            throw ValidationError("Invalid log level '\(loglevel)': choose one of DEBUG, INFO, WARNING, ERROR, CRITICAL.")
        }
        if let maxInterval, !(maxInterval > 0) { throw ValidationError("--max-interval must be a number of seconds above 0.") }
        _ = try settings()
    }

    func daemonPlan() throws -> Daemon.Plan {
        let files = try settings().files
        return daemon.plan(settings: files.settings, logfile: files.logfile, pidfile: files.pidfile)
    }

    /// The beat's settings, as Celery's `Beat` takes them: flags first, then the configuration file.
    func settings() throws -> (
        beat: BeatConfiguration, timezone: CeleryTimeZone, enableUTC: Bool,
        files: (settings: DaemonSettings, logfile: String?, pidfile: String?)
    ) {
        let file: CelerySettings
        do {
            file = try options.config.map { path throws(CeleryWorkerError) in try CelerySettings.load(path: path) } ?? CelerySettings()
        } catch {
            throw ValidationError(error.message)
        }
        let timezone: CeleryTimeZone
        var configured: BeatConfiguration
        do {
            timezone = try CeleryTimeZone.app(named: file.timezone, enableUTC: file.enableUTC ?? true)
            configured = try file.beatConfiguration(
                scheduleFilename: schedule, scheduler: scheduler, maxLoopInterval: maxInterval, remoteControl: remoteControl)
            // As Celery's default_nodename: a bare host gets beat's name.
            configured.hostname = try WorkerConfiguration.nodeName(expanding: hostname ?? "%h", name: "celerybeat")
        } catch {
            throw ValidationError(error.message)
        }
        // Celery's daemon options fall back to beat_logfile, beat_pidfile, … (Celery 5.4 and later).
        let daemon = file.beatDaemon
        return (configured, timezone, file.enableUTC ?? true, (daemon, logfile ?? daemon.logfile, pidfile ?? daemon.pidfile))
    }

    func run() async throws {
        let (beat, timezone, enableUTC, files) = try settings()
        // The program's signal receivers: beat_init, and the publish signals around what beat sends.
        let signals = CeleryWorkerProgram.tasks.withLock { $0.signals }
        let client = try options.client(signals: signals)
        let level = WorkerCommand.levels[loglevel.uppercased()] ?? .warning
        let sink = try files.logfile.map { try CeleryLogHandler.Sink(appendingTo: $0) } ?? .standardError
        await signals.setUpLogging(.init(level: level, logfile: files.logfile, sink: sink))
        let lock = try files.pidfile.map { try Pidfile.acquire($0) }
        defer { lock?.release() }
        if !quiet {
            // RedBeat shows its Redis as kombu's maybe_sanitize_url shows the setting: its own, else the broker's.
            let redbeatRedis = try beat.redbeat.map { redbeat in
                let text =
                    try redbeat.redisURLText
                    ?? SettledURLs.brokerText(flag: options.broker, file: options.settings(), environment: ProcessInfo.processInfo.environment)
                return RedisURL.sanitized(text) ?? RedisURL.masked(text)
            }
            let banner = Self.banner(
                version: WorkerCommand.version, broker: client.brokerURL.brokerDisplay, beat: beat,
                logfile: files.logfile ?? "[stderr]", level: loglevel.uppercased(), redbeatRedis: redbeatRedis)
            StandardStream.output.write(banner)
        }
        let service = BeatService(
            configuration: beat, client: client, timezone: timezone, enableUTC: enableUTC, node: beat.hostname, signals: signals)
        // SIGTERM and SIGINT stop it, as Celery's beat's handler does: the schedule file is written, exit 0.
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(
                services: [.init(service: service)], gracefulShutdownSignals: [.sigterm, .sigint],
                logger: Logger(label: "celery.lifecycle", factory: { _ in SwiftLogNoOpLogHandler() })))
        try await group.run()
        await client.shutdown()
    }

    /// `celery beat`'s banner (`celery/apps/beat.py`), naming this program as the loader.
    static func banner(
        version: String, broker: String, beat: BeatConfiguration, logfile: String, level: String, redbeatRedis: String? = nil
    ) -> String {
        var now = time(nil)
        var parts = tm()
        localtime_r(&now, &parts)
        let localTime = String(
            format: "%04d-%02d-%02d %02d:%02d:%02d", Int(parts.tm_year) + 1900, Int(parts.tm_mon) + 1, Int(parts.tm_mday),
            Int(parts.tm_hour), Int(parts.tm_min), Int(parts.tm_sec))
        let seconds = beat.maxLoopInterval
        let remote = beat.remoteControl ? "    . remote control -> \(beat.hostname ?? "celerybeat")\n" : ""
        // The scheduler's `info`: the persistent scheduler's file, or RedBeat's Redis and lock.
        var scheduler = "celery.beat.PersistentScheduler\n    . db -> \(beat.scheduleFilename)"
        if let redbeat = beat.redbeat {
            scheduler = "redbeat.schedulers.RedBeatScheduler\n       . redis -> \(redbeatRedis ?? "")"
            if let lockKey = redbeat.lockKey {
                let timeout = redbeat.lockTimeout ?? seconds * 5
                scheduler += "\n       . lock -> `\(lockKey)` \(BeatSchedule.humanize(seconds: timeout)) (\(Self.plain(timeout))s)"
            }
        }
        return """
            celery beat v\(version) (swift-celery-worker) is starting.
            __    -    ... __   -        _
            LocalTime -> \(localTime)
            Configuration ->
                . broker -> \(broker)
                . loader -> swift-celery-worker
                . scheduler -> \(scheduler)
                . logfile -> \(logfile)@%\(level)
                . maxinterval -> \(BeatSchedule.humanize(seconds: seconds)) (\(Self.plain(seconds))s)
            \(remote)
            """
    }

    /// A number of seconds as Python prints the setting: `300`, `7.5`.
    static func plain(_ seconds: Double) -> String {
        seconds == seconds.rounded() && abs(seconds) < 1e15 ? String(Int(seconds)) : String(seconds)
    }
}
