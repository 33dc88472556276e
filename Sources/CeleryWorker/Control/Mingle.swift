import CeleryProtocol
import Foundation

extension RevokedTasks {
    /// The ids held now, as Python's `hello` sends and answers them (`LimitedSet._data`): each with the pair
    /// (time revoked, id), the time on the monotonic clock (Python's `time.monotonic()`).
    func entries(at now: Double = WallClock.now(), monotonicNow: Double = WallClock.monotonic()) -> CeleryObject {
        var entries = CeleryObject()
        for id in all(at: now) {
            entries[id] = [.double(monotonicNow - (now - (revokedAt(id) ?? now))), .string(id)]
        }
        return entries
    }

    /// Adds what another worker sent (`LimitedSet.update`): ids with the time each was revoked (a number or the
    /// first of a pair, on the sender's monotonic clock), or a plain list. A time that cannot be on this machine's
    /// monotonic clock (in the future, or older than an id is kept: the sender runs elsewhere) counts from now, so
    /// the id is kept too long rather than too short.
    mutating func merge(_ value: CeleryValue?, at now: Double = WallClock.now(), monotonicNow: Double = WallClock.monotonic()) {
        switch value {
        case .object(let entries)?:
            for (id, time) in entries {
                let given = time.doubleValue ?? time.arrayValue?.first?.doubleValue
                let age = given.map { monotonicNow - $0 } ?? 0
                insert(id, at: (0..<Self.lifetime).contains(age) ? now - age : now)
            }
        case .array(let ids)?:
            for id in ids.compactMap(\.stringValue) { insert(id, at: now) }
        default:
            break
        }
    }
}

extension WorkerRun {
    /// How long mingle waits for replies at most: Python's `inspect(timeout=1.0)`.
    static let mingleTimeout = 1.0

    /// Celery's mingle (`celery/worker/consumer/mingle.py`), before the worker consumes: a `hello` to every other
    /// worker, whose replies give the ids they hold revoked (so a task revoked while this worker was down is not
    /// run here) and their clocks (this worker's moves past them). Python always waits its whole second for
    /// replies; the Swift worker counts the workers that heard the request (the subscribers `PUBLISH` reports) and
    /// goes on as soon as each replied, within the same second, so a worker alone starts at once.
    func mingle() async {
        guard configuration.mingle, let control = service.control else { return }
        logger.info("mingle: searching for neighbors")
        let replies: [(node: String, reply: CeleryObject)]
        do {
            replies = try await sendHello(over: control.replies)
        } catch {
            logger.warning("mingle: cannot reach the other workers (\(error.message)); starting without their revoked ids")
            return
        }
        guard !replies.isEmpty else {
            logger.info("mingle: all alone")
            return
        }
        logger.info("mingle: sync with \(replies.count) nodes")
        for (node, reply) in replies {
            logger.debug("mingle: processing reply from \(node)")
            revoked.withLock { $0.merge(reply["revoked"]) }
            if let clock = reply["clock"]?.intValue { service.events?.adjustClock(to: clock) }
        }
        logger.info("mingle: sync complete")
    }

    /// Broadcasts `hello` as kombu's `Mailbox._broadcast` does and collects the replies of the other workers (those
    /// that answered with something) from this worker's reply queue, bound for the time it waits.
    private func sendHello(over client: RedisClient) async throws(CeleryWorkerError) -> [(node: String, reply: CeleryObject)] {
        let prefix = configuration.brokerKeyPrefix
        let ticket = UUID().uuidString.lowercased()
        let exchange = replyExchange
        let queue = "\(oid).\(exchange)"
        let member = configuration.brokerTransport.bindingMember(routingKey: oid, queue: queue)
        // The binding as kombu's `_queue_bind` makes it, kept from kombu 5.7's sweep of binding tables while it is
        // listed as permanent.
        let bindings = ["\(prefix)_kombu.binding.\(exchange)", "\(prefix)_kombu.binding_permanent.\(exchange)"]
        _ = try await client.pipeline(bindings.map { RedisCommand("SADD", RedisArgument($0), RedisArgument(member)) })
        let collected: Result<[(node: String, reply: CeleryObject)], CeleryWorkerError>
        do {
            collected = .success(try await broadcastHello(over: client, ticket: ticket, replyQueue: prefix + queue))
        } catch {
            collected = .failure(error)
        }
        // The queue goes as kombu's auto-delete reply queue goes.
        _ = try? await client.pipeline(
            bindings.map { RedisCommand("SREM", RedisArgument($0), RedisArgument(member)) }
                + [RedisCommand("DEL", RedisArgument(prefix + queue))])
        return try collected.get()
    }

    /// kombu's reply exchange for this worker's own broadcasts: `reply.<control_exchange>.pidbox`.
    private var replyExchange: String { "reply.\(configuration.controlExchange).pidbox" }

    /// Publishes the `hello` request and reads the replies to `ticket` from `replyQueue` until every worker that
    /// heard it answered or ``mingleTimeout`` passed.
    private func broadcastHello(over client: RedisClient, ticket: String, replyQueue: String) async throws(CeleryWorkerError)
        -> [(node: String, reply: CeleryObject)]
    {
        let node = configuration.nodeName
        let request: CeleryValue = [
            "method": "hello",
            "arguments": ["from_node": .string(node), "revoked": .object(revoked.withLock { $0.entries() })],
            "destination": .null, "pattern": .null, "matcher": .null, "ticket": .string(ticket),
            "reply_to": ["exchange": .string(replyExchange), "routing_key": .string(oid)],
        ]
        let started = WallClock.now()
        let envelope = Self.pidboxEnvelope(
            request, serializer: .json,
            headers: [
                "clock": .int(Int64(service.events?.currentClock ?? 0)), "expires": .double(started + Self.mingleTimeout),
            ],
            exchange: "\(configuration.controlExchange).pidbox", routingKey: "", deliveryMode: 2)
        let encoded = try configuration.sealed(envelope).encoded()
        var listeners = 0
        for topic in [pidboxTopic] + pidboxLegacyTopics {
            let heard = try await client.send(RedisCommand("PUBLISH", RedisArgument(topic), RedisArgument(encoded)))
            listeners += Int(heard.integer ?? 0)
        }
        var replies: [(node: String, reply: CeleryObject)] = []
        var answered = 0
        while answered < listeners {
            let remaining = started + Self.mingleTimeout - WallClock.now()
            guard remaining > 0.001 else { break }
            let popped = try await client.send(
                RedisCommand("BRPOP", RedisArgument(replyQueue), RedisArgument(String(format: "%.3f", remaining))))
            guard let raw = popped.array?.last?.bytes else { continue }
            guard let answer = try? KombuEnvelope(decoding: raw), answer.headers["ticket"]?.stringValue == ticket,
                case .object(let body)? = openedBody(answer, signedOnly: true)?.body
            else { continue }
            answered += 1
            for (replier, reply) in body where replier != node {
                if case .object(let reply) = reply { replies.append((replier, reply)) }
            }
        }
        return replies
    }
}
