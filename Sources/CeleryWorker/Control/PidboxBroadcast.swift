import CeleryProtocol
import Foundation

/// kombu's `Mailbox._broadcast` with replies, over Redis, for a worker's `hello` (mingle) and a client's remote
/// control: binds the sender's reply queue as kombu's `_queue_bind` does, publishes the request to the pidbox fanout
/// topics, and collects the replies to its ticket from the reply list until `limit` replies came, every listener
/// answered, or the timeout passed; then drops the queue, as kombu's auto-delete reply queue goes. Python waits out
/// its timeout unless a limit is given; here the listeners that `PUBLISH` reports bound the wait too, so a request
/// that every worker answered returns at once.
struct PidboxBroadcast {
    /// A broker connection for plain commands (no subscription on it).
    let client: RedisClient
    /// The broker's `global_keyprefix`.
    let keyPrefix: String
    let transport: RedisTransportOptions
    /// `control_exchange`.
    let controlExchange: String
    /// The pidbox topics to publish to: the fanout channel, and the legacy Sentinel one where it applies.
    let topics: [String]
    /// The sender's oid: its reply queue is `<oid>.reply.<control_exchange>.pidbox`.
    let oid: String
    /// Seals a request before it is published (message signing), or returns it as it is.
    let seal: @Sendable (KombuEnvelope) throws(CeleryWorkerError) -> KombuEnvelope
    /// A reply's body, or `nil` when it cannot be accepted (not decodable, not verified).
    let open: @Sendable (KombuEnvelope) -> CeleryValue?

    /// kombu's reply exchange: `reply.<control_exchange>.pidbox`.
    var replyExchange: String { "reply.\(controlExchange).pidbox" }

    /// Sends `method` with `arguments` to `destination` (every node when `nil`) and returns each reply in the order
    /// it came, as `(node, reply)`; `clock` is the sender's logical clock (the request's `clock` header).
    func send(
        _ method: String, arguments: CeleryObject, destination: [String]? = nil, clock: Int, timeout: Double, limit: Int? = nil
    ) async throws(CeleryWorkerError) -> [(node: String, reply: CeleryValue)] {
        let queue = "\(oid).\(replyExchange)"
        let member = transport.bindingMember(routingKey: oid, queue: queue)
        // The binding as kombu's `_queue_bind` makes it, kept from kombu 5.7's sweep of binding tables while it is
        // listed as permanent.
        let bindings = ["\(keyPrefix)_kombu.binding.\(replyExchange)", "\(keyPrefix)_kombu.binding_permanent.\(replyExchange)"]
        _ = try await client.pipeline(bindings.map { RedisCommand("SADD", RedisArgument($0), RedisArgument(member)) })
        let ticket = UUID().uuidString.lowercased()
        let collected: Result<[(node: String, reply: CeleryValue)], CeleryWorkerError>
        do {
            let request: CeleryValue = [
                "method": .string(method), "arguments": .object(arguments),
                "destination": destination.map { .array($0.map(CeleryValue.string)) } ?? .null, "pattern": .null,
                "matcher": .null, "ticket": .string(ticket),
                "reply_to": ["exchange": .string(replyExchange), "routing_key": .string(oid)],
            ]
            collected = .success(
                try await collect(
                    request, ticket: ticket, replyQueue: keyPrefix + queue, clock: clock, timeout: timeout,
                    limit: limit ?? destination?.count))
        } catch {
            collected = .failure(error)
        }
        _ = try? await client.pipeline(
            bindings.map { RedisCommand("SREM", RedisArgument($0), RedisArgument(member)) }
                + [RedisCommand("DEL", RedisArgument(keyPrefix + queue))])
        return try collected.get()
    }

    /// Sends `method` without asking for replies (kombu's `_broadcast` with `reply=False`): no ticket, no reply queue.
    func cast(_ method: String, arguments: CeleryObject, destination: [String]? = nil, clock: Int, timeout: Double) async throws(CeleryWorkerError) {
        let request: CeleryValue = [
            "method": .string(method), "arguments": .object(arguments),
            "destination": destination.map { .array($0.map(CeleryValue.string)) } ?? .null, "pattern": .null, "matcher": .null,
        ]
        _ = try await publish(request, clock: clock, timeout: timeout)
    }

    /// Publishes `request` to every topic; returns how many listeners heard it.
    private func publish(_ request: CeleryValue, clock: Int, timeout: Double) async throws(CeleryWorkerError) -> Int {
        let envelope = try WorkerRun.pidboxEnvelope(
            request, serializer: .json,
            headers: ["clock": .int(Int64(clock)), "expires": timeout > 0 ? .double(WallClock.now() + timeout) : 0],
            exchange: "\(controlExchange).pidbox", routingKey: "", deliveryMode: 2)
        let encoded = try seal(envelope).encoded()
        var listeners = 0
        for topic in topics {
            let heard = try await client.send(RedisCommand("PUBLISH", RedisArgument(topic), RedisArgument(encoded)))
            listeners += Int(heard.integer ?? 0)
        }
        return listeners
    }

    private func collect(
        _ request: CeleryValue, ticket: String, replyQueue: String, clock: Int, timeout: Double, limit: Int?
    ) async throws(CeleryWorkerError) -> [(node: String, reply: CeleryValue)] {
        let started = WallClock.now()
        let listeners = try await publish(request, clock: clock, timeout: timeout)
        var replies: [(node: String, reply: CeleryValue)] = []
        var answered = 0
        while answered < listeners, limit.map({ replies.count < $0 }) ?? true {
            let remaining = started + timeout - WallClock.now()
            guard remaining > 0.001 else { break }
            let popped = try await client.send(
                RedisCommand("BRPOP", RedisArgument(replyQueue), RedisArgument(String(format: "%.3f", remaining))))
            guard let raw = popped.array?.last?.bytes else { continue }
            guard let answer = try? KombuEnvelope(decoding: raw), answer.headers["ticket"]?.stringValue == ticket,
                case .object(let body)? = open(answer)
            else { continue }
            answered += 1
            for (node, reply) in body { replies.append((node, reply)) }
        }
        return replies
    }
}
