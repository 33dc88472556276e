import CeleryProtocol
import OrderedCollections

/// One worker's reply to a remote control command.
public struct ControlReply: Sendable, Equatable {
    /// The node that answered (`celery@host`).
    public let node: String
    /// What it answered: `{"ok": "pong"}`, a list of tasks, a mapping of stats, `{"error": "…"}`, …
    public let reply: CeleryValue

    public init(node: String, reply: CeleryValue) {
        self.node = node
        self.reply = reply
    }
}

extension CeleryClient {
    /// Sends a remote control command to the workers (Swift or Python) and collects their replies, as Python's
    /// `app.control.broadcast(command, arguments=…, destination=…, reply=True, timeout=…)` does: what `celery inspect`
    /// and `celery control` send (`ping`, `stats`, `active`, `registered`, `revoke`, `rate_limit`, `shutdown`, …).
    /// Replies come in the order they arrived. The wait ends after `timeout` seconds, once `limit` replies came (by
    /// default as many as `destination` names), or once every worker listening answered (Python waits out the
    /// timeout). With `reply: false` the command is only sent (Python's default for `broadcast`), and nothing is
    /// returned. Uses a connection of its own, closed on return. With ``messageSigning`` the request is signed and
    /// only signed replies are read, as a signing Celery's mailbox does.
    public func broadcast(
        _ command: String, arguments: CeleryObject = [:], destination: [String]? = nil, reply: Bool = true, timeout: Double = 1.0,
        limit: Int? = nil, controlExchange: String = "celery"
    ) async throws(CeleryWorkerError) -> [ControlReply] {
        // The replies' BRPOP waits up to `timeout` on it.
        let connection = RedisClient(url: brokerURL, commandTimeout: .seconds(max(timeout, 0) + 30), threadName: "celery-control")
        defer { connection.close() }
        let exchange = "\(controlExchange).pidbox"
        var topics = [broker.transport.fanoutChannel(exchange: exchange, database: brokerURL.database, prefix: broker.keyPrefix)]
        if brokerURL.isSentinel, let legacy = broker.transport.legacySentinelChannel(exchange: exchange, prefix: broker.keyPrefix) {
            topics.append(legacy)
        }
        let signing = messageSigning
        let mailbox = PidboxBroadcast(
            client: connection, keyPrefix: broker.keyPrefix, transport: broker.transport, controlExchange: controlExchange,
            topics: topics, oid: oid,
            seal: { envelope throws(CeleryWorkerError) in try signing?.seal(envelope) ?? envelope },
            open: { envelope in try? MessageSigning.openedBody(envelope, signing: signing, signedOnly: true).get().body })
        guard reply else {
            try await mailbox.cast(command, arguments: arguments, destination: destination, clock: 0, timeout: timeout)
            return []
        }
        let replies = try await mailbox.send(
            command, arguments: arguments, destination: destination, clock: 0, timeout: timeout, limit: limit)
        return replies.map { ControlReply(node: $0.node, reply: $0.reply) }
    }

    /// Python's `app.control.revoke`: tells the workers (all, or those of `destination`) not to run the tasks of
    /// `ids`, and with `terminate` to stop them if they run (`signal` names how, for a process-pool child). With
    /// `reply` it waits for the workers' answers, as `revoke(..., reply=True)` does.
    public func revoke(
        _ ids: [String], terminate: Bool = false, signal: String = "SIGTERM", destination: [String]? = nil, reply: Bool = false,
        timeout: Double = 1.0
    ) async throws(CeleryWorkerError) -> [ControlReply] {
        try await broadcast(
            "revoke",
            arguments: ["task_id": .array(ids.map(CeleryValue.string)), "terminate": .bool(terminate), "signal": .string(signal)],
            destination: destination, reply: reply, timeout: timeout)
    }

    /// Celery's `purge`: deletes every message waiting in `queues` and their priority lists (not those delivered and
    /// unacknowledged), counted as kombu counts them. Returns how many were deleted.
    public func purge(queues: [String]) async throws(CeleryWorkerError) -> Int {
        try await broker.purge(queues: queues)
    }
}
