import CeleryProtocol
import Foundation
import Logging
import Synchronization

/// Celery 5.7's remote control of beat (`beat_enable_remote_control`, `celery beat --enable-remote-control`): beat
/// listens on the workers' pidbox and answers `ping` as its own node (`celerybeat@<host>`), so that `celery inspect
/// ping -d celerybeat@host` health-checks it. Other commands are ignored, as Celery's beat ignores them. Once beat
/// has not looked at its schedule for the max tick age (`beat_remote_control_max_tick_age`, else twice the longest
/// sleep, at least 60 s), it stops answering, as Celery's does, so a probe sees the stall. A beat that stands by
/// for the lock answers too: it is alive and ready to take over.
final class BeatPidbox: Sendable {
    let client: CeleryClient
    let node: String
    let controlExchange: String
    /// Seconds without a look at the schedule after which beat stays silent; 0: never.
    let maxTickAge: Double
    let logger: Logger
    /// When beat last looked at its schedule (or at the lock), on the monotonic clock.
    let lastTick: Mutex<Double>

    /// Celery's floor for the derived max tick age.
    static let minimumTickAge = 60.0
    /// Celery's pause before subscribing again after the connection was lost.
    static let retryInterval = 5.0

    init(configuration: BeatConfiguration, client: CeleryClient, logger: Logger) {
        self.client = client
        self.node = configuration.hostname ?? "celerybeat@\(Host.name)"
        self.controlExchange = configuration.controlExchange
        self.maxTickAge = configuration.remoteControlMaxTickAge ?? max(configuration.maxLoopInterval * 2, Self.minimumTickAge)
        self.logger = logger
        self.lastTick = Mutex(WallClock.monotonic())
    }

    func ticked() {
        lastTick.withLock { $0 = WallClock.monotonic() }
    }

    /// Answers `ping` until `stop` is triggered, subscribing again when the connection is lost.
    func run(until stop: ShutdownSignal) async {
        let broker = client.broker
        let topic = broker.transport.fanoutChannel(
            exchange: "\(controlExchange).pidbox", database: client.brokerURL.database, prefix: broker.keyPrefix)
        let subscriber = RedisClient(url: client.brokerURL, threadName: "beat-pidbox")
        defer { subscriber.close() }
        let (requests, newRequest) = AsyncStream.makeStream(of: [UInt8].self)
        let url = client.brokerURL.brokerDisplay
        let logger = self.logger
        await withDiscardingTaskGroup { group in
            group.addTask {
                defer { newRequest.finish() }
                while !stop.isTriggered {
                    do throws(CeleryWorkerError) {
                        try await subscriber.withConnection { connection throws(CeleryWorkerError) in
                            try connection.subscribe(
                                pattern: topic, shouldStop: { stop.isTriggered },
                                onSubscribed: { logger.info("beat pidbox: Connected to \(url).") },
                                onMessage: { data, _ in newRequest.yield(data) })
                        }
                    } catch {
                        logger.error("beat pidbox connection error: \(error.message). Trying again in 5 seconds...")
                        _ = await stop.sleep(untilUnixTime: WallClock.now() + Self.retryInterval)
                    }
                }
            }
            group.addTask {
                for await raw in requests { await self.answer(raw) }
            }
        }
    }

    /// Answers one pidbox message if it is a `ping` for this node and beat is not stalled.
    func answer(_ raw: [UInt8]) async {
        // As a signing Celery's mailbox: only signed requests, verified.
        guard let envelope = try? KombuEnvelope(decoding: raw),
            case .success((.object(let request), let serializer)) = MessageSigning.openedBody(
                envelope, signing: client.messageSigning, signedOnly: true),
            let method = request["method"]?.stringValue, WorkerRun.isAddressed(request, to: node)
        else { return }
        let age = WallClock.monotonic() - lastTick.withLock { $0 }
        if maxTickAge > 0, age > maxTickAge {
            let limit = PythonRepr.repr(.double(maxTickAge))
            logger.warning(
                "beat pidbox: not answering \(method), the scheduler has not ticked for \(String(format: "%.1f", age))s (over the \(limit)s limit).")
            return
        }
        guard method == "ping", let ticket = request["ticket"]?.stringValue,
            let exchange = request["reply_to"]?["exchange"]?.stringValue,
            let routingKey = request["reply_to"]?["routing_key"]?.stringValue
        else { return }
        do {
            let reply = try WorkerRun.pidboxEnvelope(
                [node: ["ok": "pong"]], serializer: serializer, headers: ["ticket": .string(ticket), "clock": 0],
                exchange: exchange, routingKey: routingKey, deliveryMode: 1)
            let sealed = try client.messageSigning?.seal(reply) ?? reply
            try await WorkerRun.pushReply(
                sealed.encoded(), exchange: exchange, routingKey: routingKey, prefix: client.broker.keyPrefix,
                transport: client.broker.transport, via: client.broker.commands)
        } catch {
            logger.warning("beat pidbox: Cannot reply to \(method): \(error.message)")
        }
    }
}
