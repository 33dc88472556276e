import CeleryProtocol
import Foundation
import Synchronization

/// What Celery's event receiver does to each event before its handlers see it (`EventReceiver.event_from_message`),
/// as a value: the receiver's Lamport clock, and the event's time moved to this machine's UTC offset. Pure.
///
/// - `clock`: a `task-sent` event (a client's, whose clock never syncs) gets the receiver's clock less one, at least
///   0; an event without a clock gets the receiver's next tick; any other moves the receiver's clock past its own.
/// - `timestamp`: less the difference between the sender's `utcoffset` and this machine's, in hours (Celery's
///   `adjust_timestamp`); unchanged when the event has no `utcoffset` or no `timestamp`.
/// - `local_received`: when it arrived here, in Unix seconds.
public struct EventReception: Sendable {
    /// The receiver's Lamport clock (Celery's `app.clock`), 0 before the first event.
    public private(set) var clock: Int64 = 0
    /// This machine's offset to UTC in hours, as Celery's `utcoffset()` gives it (positive west of Greenwich).
    public let utcOffsetHours: Double

    /// A receiver's state; `utcOffsetHours` is this machine's by default.
    public init(utcOffsetHours: Double = EventReception.localUTCOffsetHours) {
        self.utcOffsetHours = utcOffsetHours
    }

    /// Celery 5.7's `celery.utils.time.utcoffset()`: seconds west of UTC (with daylight saving time when it is in
    /// effect) over 3600, as the Swift worker's events carry it.
    public static var localUTCOffsetHours: Double { Double(-CeleryTimeZone.localSecondsFromGMT) / 3600 }

    /// The event as the receiver's handlers get it, received at `now` (Unix seconds); `nil` when it has no `type`
    /// (Python's receiver raises `KeyError`).
    public mutating func received(_ event: CeleryObject, now: Double) -> CeleryObject? {
        guard let type = event["type"] else { return nil }
        var event = event
        if type == "task-sent" {
            let value = max(clock, 1) - 1  // `(clock.value or 1) + CLIENT_CLOCK_SKEW`
            event["clock"] = .int(value)
            adjust(to: value)
        } else if let other = event["clock"] {
            adjust(to: other.intValue.map(Int64.init) ?? other.doubleValue.flatMap { Int64(exactly: $0.rounded(.down)) } ?? clock)
        } else {
            clock += 1
            event["clock"] = .int(clock)
        }
        if let offset = event["utcoffset"]?.doubleValue, let timestamp = event["timestamp"]?.doubleValue {
            event["timestamp"] = .double(timestamp - (offset - utcOffsetHours) * 3600)
        }
        event["local_received"] = .double(now)
        return event
    }

    /// `LamportClock.adjust`: past both clocks.
    private mutating func adjust(to other: Int64) {
        clock = max(clock, other) &+ 1
    }
}

/// Celery's event receiver (`app.events.Receiver(connection, handlers={"*": …}).capture()`, what `celery events`,
/// Flower and `events.State` read events through): every event on the event exchange, from Swift and Python workers
/// and clients alike, taken as Celery takes it (``EventReception``).
///
/// ```swift
/// let receiver = EventReceiver(client: client)
/// try await receiver.capture { event in print(event["type"] ?? .null) }
/// ```
///
/// It listens as kombu's receiver does on Redis: `PSUBSCRIBE` to the exchange's fanout channel with every routing
/// key (`/0.celeryev/*`), and under Sentinel also to the channel kombu before 5.4 used, each message taken once (as
/// kombu 5.7's `sentinel_fanout_compat` does, by its `delivery_tag`). Unlike kombu it writes no binding into Redis:
/// events are published to the channel whatever the bindings say.
public final class EventReceiver: Sendable {
    /// Where it listens: the client's broker, key prefix and transport options, and its ``CeleryClient/messageSigning``
    /// for signed events.
    public let client: CeleryClient
    /// The event exchange (`event_exchange`).
    public let exchange: String
    /// The exchange of remote control (`control_exchange`), where the wake-up goes.
    public let controlExchange: String
    private let reception: Mutex<EventReception>
    /// The `delivery_tag`s of the last messages, under Sentinel (where each may come on two channels).
    private let recentTags = Mutex(RecentDeliveryTags(limit: 1000))  // kombu's `_fanout_compat_dedup_size`

    /// A receiver of `exchange`'s events on `client`'s broker, waking the workers of `controlExchange`;
    /// `utcOffsetHours` is this machine's by default.
    public init(
        client: CeleryClient, exchange: String = "celeryev", controlExchange: String = "celery",
        utcOffsetHours: Double = EventReception.localUTCOffsetHours
    ) {
        self.client = client
        self.exchange = exchange
        self.controlExchange = controlExchange
        self.reception = Mutex(EventReception(utcOffsetHours: utcOffsetHours))
    }

    /// The receiver's Lamport clock.
    public var clock: Int64 { reception.withLock { $0.clock } }

    /// A message that came on the event channel but holds no event the receiver can take.
    public struct Refusal: Error, Sendable, CustomStringConvertible {
        /// Why, and the start of the message.
        public let description: String
    }

    /// Receives events until the calling task is cancelled, then returns. Once subscribed it calls `onSubscribed`
    /// and, with `wakeUp`, asks every worker for a heartbeat (Celery's `wakeup_workers`: the `heartbeat` remote
    /// control command), so that the workers running show up at once. Each event goes to `onEvent` and each message
    /// that holds none (undecodable, a content type it does not read, a signature that does not verify, an event
    /// without a `type`) to `onRefused`, on the receiving connection's thread, in the order they came. Throws when the
    /// connection cannot be made or breaks; the clock is kept for the next call.
    public func capture(
        wakeUp: Bool = true, onSubscribed: @escaping @Sendable () -> Void = {},
        onRefused: @escaping @Sendable (Refusal) -> Void = { _ in },
        onEvent: @escaping @Sendable (CeleryObject) -> Void
    ) async throws(CeleryWorkerError) {
        let brokerURL = client.brokerURL
        let transport = client.broker.transport
        let prefix = client.broker.keyPrefix
        let legacy =
            brokerURL.isSentinel ? transport.legacySentinelChannel(exchange: exchange, routingKey: "*", prefix: prefix) : nil
        let channels =
            [transport.fanoutChannel(exchange: exchange, routingKey: "*", database: brokerURL.database, prefix: prefix)]
            + (legacy.map { [$0] } ?? [])
        let deduplicates = channels.count > 1
        let connection = RedisClient(url: brokerURL, commandTimeout: .seconds(30), threadName: "celery-events")
        defer { connection.close() }
        let stop = ShutdownSignal()
        let confirmed = ShutdownSignal()  // the server confirmed the subscription
        let settled = ShutdownSignal()  // confirmed, or the capture is over
        do {
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    defer { settled.trigger() }
                    try await withTaskCancellationHandler {
                        try await connection.withConnection { redis throws(CeleryWorkerError) in
                            try redis.subscribe(
                                pattern: channels[0], alsoPatterns: Array(channels.dropFirst()), shouldStop: { stop.isTriggered },
                                onSubscribed: {
                                    confirmed.trigger()
                                    settled.trigger()
                                    onSubscribed()
                                },
                                onMessage: { data, _ in
                                    self.received(data, deduplicates: deduplicates, onRefused: onRefused, onEvent: onEvent)
                                })
                        }
                    } onCancel: {
                        stop.trigger()
                    }
                }
                if wakeUp {
                    group.addTask {
                        await settled.wait()
                        guard confirmed.isTriggered, !stop.isTriggered else { return }
                        // Best effort, as Python's: a receiver that cannot wake the workers hears their next heartbeat.
                        _ = try? await self.client.broadcast("heartbeat", reply: false, controlExchange: self.controlExchange)
                    }
                }
                try await group.waitForAll()
            }
        } catch let error as CeleryWorkerError {
            throw error
        } catch {
            throw CeleryWorkerError(code: .connectionLost, message: "\(error)")
        }
    }

    /// One message from the event channel: its events, or why it holds none.
    private func received(
        _ raw: [UInt8], deduplicates: Bool, onRefused: (Refusal) -> Void, onEvent: (CeleryObject) -> Void
    ) {
        func refuse(_ reason: String) {
            onRefused(Refusal(description: "\(reason): \(WorkerRun.preview(raw))"))
        }
        guard let envelope = try? KombuEnvelope(decoding: raw) else { return refuse("Can't decode message") }
        if deduplicates, let tag = envelope.properties["delivery_tag"]?.stringValue {
            if recentTags.withLock({ $0.isRepeat(tag) }) { return }
        }
        let body: CeleryValue
        switch MessageSigning.openedBody(envelope, signing: client.messageSigning, signedOnly: false) {
        case .success(let opened):
            body = opened.body
        case .failure(.unverified(let reason)):
            return refuse("Refusing a signed event: \(reason)")
        case .failure:
            return refuse("Can't decode message body (type:'\(envelope.contentType)' encoding:'\(envelope.contentEncoding)')")
        }
        // Celery 4 and later send task events in lists.
        let events: [CeleryValue]
        if case .array(let list) = body { events = list } else { events = [body] }
        let now = WallClock.now()
        for event in events {
            guard case .object(let fields) = event, let received = reception.withLock({ $0.received(fields, now: now) }) else {
                refuse("An event without a type")
                continue
            }
            onEvent(received)
        }
    }
}
