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
    ///
    /// `afterReconnecting`: mingle again after a lost connection, while the remote control loop may be listening
    /// already. The request then goes out on a connection of its own: on the control loop's, the worker's own reply
    /// (which the request's count of listeners includes) would wait behind the wait for replies.
    func mingle(afterReconnecting: Bool = false) async {
        guard configuration.mingle, let control = service.control else { return }
        logger.info("mingle: searching for neighbors")
        let replies: [(node: String, reply: CeleryObject)]
        let client = afterReconnecting ? RedisClient(url: configuration.brokerURL, threadName: "mingle") : control.replies
        defer { if afterReconnecting { client.close() } }
        do {
            replies = try await sendHello(over: client)
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

    /// Broadcasts `hello` (``PidboxBroadcast``) and returns the other workers' replies (those that answered with
    /// something).
    private func sendHello(over client: RedisClient) async throws(CeleryWorkerError) -> [(node: String, reply: CeleryObject)] {
        let node = configuration.nodeName
        let configuration = self.configuration
        let mailbox = PidboxBroadcast(
            client: client, keyPrefix: configuration.brokerKeyPrefix, transport: configuration.brokerTransport,
            controlExchange: configuration.controlExchange, topics: [pidboxTopic] + pidboxLegacyTopics, oid: oid,
            seal: { envelope throws(CeleryWorkerError) in try configuration.sealed(envelope) },
            open: { envelope in self.openedBody(envelope, signedOnly: true)?.body })
        let replies = try await mailbox.send(
            "hello", arguments: ["from_node": .string(node), "revoked": .object(revoked.withLock { $0.entries() })],
            clock: service.events?.currentClock ?? 0, timeout: Self.mingleTimeout)
        return replies.compactMap { replier, reply in
            guard replier != node, case .object(let reply) = reply else { return nil }
            return (replier, reply)
        }
    }
}
