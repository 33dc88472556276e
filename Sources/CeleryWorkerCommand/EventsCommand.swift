import ArgumentParser
import CeleryProtocol
import CeleryWorker
import Foundation
import Logging
import ServiceLifecycle
import Synchronization

/// `celery events --dump`: every event on the broker, one line each, as Celery's dumper prints it.
struct EventsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "events",
        abstract: "Event-stream utilities: --dump prints every event of the workers and clients as `celery events --dump` does.",
        discussion: """
            Celery's curses monitor (`celery events` alone) and snapshot cameras (--camera, a Python class) are not part \
            of this program: run Celery's own `celery events`, or Flower, for those.
            """)

    @Flag(name: [.customShort("d"), .customLong("dump")], help: "Print every event as it comes (Celery's evdump), until SIGINT or SIGTERM.")
    var dump = false

    @Option(name: [.customShort("c"), .customLong("camera")], help: "Refused: a snapshot camera is a Python class.")
    var camera: String?

    @Flag(name: .customLong("detach"), help: "Accepted, as Celery's: it applies to a camera only.")
    var detach = false

    @Option(name: [.customShort("F"), .customLong("frequency"), .customLong("freq")], help: "Accepted, as Celery's: it applies to a camera only.")
    var frequency: Double?

    @Option(name: [.customShort("r"), .customLong("maxrate")], help: "Accepted, as Celery's: it applies to a camera only.")
    var maxrate: String?

    @Option(name: [.customShort("l"), .customLong("loglevel")], help: "Accepted, as Celery's: it applies to a camera only.")
    var loglevel: String?

    @OptionGroup var options: ClientOptions

    func validate() throws {
        if let camera {
            throw ValidationError(
                "--camera names a Python class (\(camera)), which this program cannot load: take snapshots with Celery's own "
                    + "`celery events --camera`.")
        }
        guard dump else {
            throw ValidationError(
                "Celery's curses monitor is not part of this program: give --dump to print the events, or run Celery's own "
                    + "`celery events` (or Flower).")
        }
    }

    func run() async throws {
        let client = try options.client()
        let file = try options.settings()
        let receiver = EventReceiver(client: client, exchange: file.eventExchange ?? "celeryev", controlExchange: file.controlExchange ?? "celery")
        // SIGINT and SIGTERM end the dump, exit 0 (Celery's returns on KeyboardInterrupt).
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(
                services: [.init(service: EventDumpService(receiver: receiver))], gracefulShutdownSignals: [.sigterm, .sigint],
                logger: Logger(label: "celery.lifecycle", factory: { _ in SwiftLogNoOpLogHandler() })))
        try await group.run()
        await client.shutdown()
    }
}

/// Celery's `evdump` loop: the receiver's events through ``EventDump``, and when the broker cannot be reached (or is
/// lost) Celery's lines for it, trying again after 2, 4 … 30 seconds as kombu's `ensure_connection` does.
final class EventDumpService: Service, Sendable {
    let receiver: EventReceiver
    private let dump = Mutex(EventDump())
    /// Whether the current capture got as far as its subscription.
    private let subscribed = Mutex(false)

    init(receiver: EventReceiver) {
        self.receiver = receiver
    }

    func run() async throws {
        Self.say("-> evdump: starting capture...")
        await cancelWhenGracefulShutdown {
            var failures = 0
            while !Task.isCancelled {
                self.subscribed.withLock { $0 = false }
                do throws(CeleryWorkerError) {
                    try await self.receiver.capture(
                        onSubscribed: { self.subscribed.withLock { $0 = true } },
                        onRefused: { refusal in Self.complain("\(refusal)") },
                        onEvent: { event in
                            guard let line = self.dump.withLock({ $0.line(for: event) }) else {
                                // Python's dumper raises KeyError here, and the program ends.
                                return Self.complain(
                                    "An event without a timestamp, type, hostname or (a task's) uuid, name, args or kwargs: "
                                        + PythonRepr.truncated(PythonRepr.repr(.object(event))))
                            }
                            Self.say(line)
                        })
                    return  // cancelled: SIGINT or SIGTERM
                } catch {
                    if Task.isCancelled { return }
                    if self.subscribed.withLock({ $0 }) {
                        failures = 0
                        Self.say("-> Connection lost, attempting reconnect")
                        continue
                    }
                    failures += 1
                    let seconds = BrokerConnectionRetry.delay(afterFailedAttempt: failures)
                    Self.say(
                        "-> Cannot connect to \(self.receiver.client.brokerURL.brokerDisplay): \(error.message).\nTrying again in \(CeleryWorkerService.format(seconds: seconds)) seconds\n"
                    )
                    do {
                        try await Task.sleep(for: .seconds(seconds))
                    } catch {
                        return
                    }
                }
            }
        }
    }

    /// A line on standard output, written at once (Celery's dumper flushes each, so that it can be piped).
    static func say(_ line: String) {
        StandardStream.output.write(line + "\n")
    }

    /// A line on standard error, where Python's logging would print it.
    static func complain(_ line: String) {
        StandardStream.error.write(line + "\n")
    }
}
