import Logging
import Synchronization

/// Wakes a fetch that found its queues empty as soon as one of their lists changes, so that an idle worker need not
/// wait in `BRPOP`.
///
/// `BRPOP` takes the message off its list as it returns, and the record in `unacked` can only follow: a worker killed
/// in between loses that message (kombu's window too). With Redis's client-side caching (`CLIENT TRACKING`, Redis 6
/// and later) nothing is taken to wait. The watch's connection subscribes to `__redis__:invalidate`; the fetch
/// connection turns tracking on with `REDIRECT` to it; a fetch that may leave the lists empty reads each with `LLEN`
/// right after the script that pops and records, in the same round trip, and Redis then tells the watch's connection
/// of the next change to any list it found empty. The fetch waits for that (``wait(for:)``) and runs the script
/// again, which pops and records the message in one step. Each list is either found empty and watched from that
/// moment, or found not empty, and then the fetch does not wait: no message can slip in between.
///
/// The watch is the fetch connection's companion: it lives while the worker consumes
/// (``RedisBroker/consuming(logger:_:)``), and only the fetch uses it, on the fetch connection's lane. There it waits
/// as that connection's blocking pop did: in `poll(2)` on a lane of its own, or, on the event loop of the solo and
/// thread pools, as a source the loop polls while it runs tasks. While it is not subscribed (Redis unreachable, or
/// refused), fetches block in `BRPOP` as before.
final class ListWatch: PolledSource, Sendable {
    /// One subscription of the watch's connection: its `CLIENT ID`, which `CLIENT TRACKING … REDIRECT` names, and
    /// the how-manyth subscription it is (a new one needs tracking turned on again).
    struct Subscription: Equatable, Sendable {
        let clientID: Int64
        let number: Int
    }

    private struct State {
        var subscription: Subscription?
        var subscriptions = 0
        /// After a subscription failed to connect: no new attempt before then.
        var retryAfter: ContinuousClock.Instant?
        /// Why Redis refused the watch, once said: no subscription will come.
        var refusal: String?
        /// The fetch waiting on the event loop for a change, and until when (``PolledSource``).
        var waiter: (continuation: CheckedContinuation<Void, Never>, deadline: ContinuousClock.Instant)?
    }

    /// The channel Redis sends tracking invalidations to, for `REDIRECT` clients that speak RESP2.
    static let channel = "__redis__:invalidate"

    private let state = Mutex(State())
    private let connection: RedisConnection
    /// The fetch connection's lane, where every call runs.
    private let lane: WorkerThreads
    private let onEventLoop: Bool
    private let logger: Logger

    /// A watch on the fetch connection `fetching`'s server, run on its lane.
    init(beside fetching: RedisClient, logger: Logger) {
        connection = RedisConnection(url: fetching.url, commandTimeout: .seconds(10))
        lane = fetching.lane
        onEventLoop = fetching.sharesLane
        self.logger = logger
    }

    /// The subscription in place, or a new one; `nil` when Redis cannot be reached (tried again half a second later)
    /// or refused the watch (not tried again). With `checkingHangUp` (the fetch connection was opened anew: Redis
    /// may have restarted), a subscription whose connection the server closed is dropped first: its client id may
    /// name another client now.
    func subscription(checkingHangUp: Bool = false) async -> Subscription? {
        if checkingHangUp {
            connection.closeIfHungUp()
            if connection.descriptor == nil { state.withLock { $0.subscription = nil } }
        }
        let ready = state.withLock { state -> Subscription?? in
            if let subscription = state.subscription { return subscription }
            if state.refusal != nil { return .some(nil) }
            if let retryAfter = state.retryAfter, ContinuousClock.now < retryAfter { return .some(nil) }
            return nil
        }
        if let ready { return ready }
        let connection = self.connection
        do throws(CeleryWorkerError) {
            let clientID = try await lane.run { () throws(CeleryWorkerError) -> Int64 in
                let reply = try connection.execute([RedisCommand("CLIENT", "ID")]).first ?? .null
                guard let clientID = try reply.check("CLIENT ID").integer else {
                    throw CeleryWorkerError(code: .unexpectedReply, message: "CLIENT ID: \(reply)")
                }
                try connection.listen(to: Self.channel)
                return clientID
            }
            return state.withLock { state in
                state.subscriptions += 1
                state.retryAfter = nil
                state.subscription = Subscription(clientID: clientID, number: state.subscriptions)
                return state.subscription
            }
        } catch  where error.isConnectionProblem {
            connection.close()
            state.withLock { $0.retryAfter = .now + .milliseconds(500) }
        } catch {
            refuse(error.message)
        }
        return nil
    }

    /// Redis refused what the watch needs (`reason`): said once, and the watch closes; fetches block in `BRPOP`.
    func refuse(_ reason: String) {
        let first = state.withLock { state -> Bool in
            defer {
                state.refusal = state.refusal ?? reason
                state.subscription = nil
            }
            return state.refusal == nil
        }
        if first {
            logger.warning(
                "Redis refused client tracking (\(reason)): an idle worker waits for messages in BRPOP, as a Python worker does, and one killed as a message arrives can lose it."
            )
        }
        connection.close()
    }

    /// Drops the subscription and closes its connection (it broke, tracking cannot name its client, or the worker
    /// stopped consuming): the next fetch subscribes anew.
    func lost() {
        state.withLock { $0.subscription = nil }
        connection.close()
    }

    /// Waits until a watched list changed since the last wait, or `duration` passed. A change reported before this
    /// call counts: the fetch that follows looks at the lists anyway. When the connection broke, the subscription
    /// is dropped and this returns at once.
    func wait(for duration: Duration) async {
        let connection = self.connection
        guard onEventLoop else {
            // A lane of its own: the thread waits in `poll(2)`, as it waited in `BRPOP`.
            do throws(CeleryWorkerError) {
                _ = try await lane.run { () throws(CeleryWorkerError) -> Int in try connection.heard(waiting: duration) }
            } catch {
                lost()
            }
            return
        }
        // The event loop polls the connection (``pump()``) while it runs other work, and ends the wait at the
        // deadline (``expire()``). A report that came before is read at once: the socket is readable.
        let deadline = ContinuousClock.now + duration
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            state.withLock { $0.waiter = (continuation, deadline) }
            lane.watch(self)
        }
    }

    func awaited() -> (descriptor: Int32, deadline: ContinuousClock.Instant)? {
        guard let deadline = state.withLock({ $0.waiter?.deadline }) else { return nil }
        guard let descriptor = connection.descriptor else {
            // Closed under the wait: nothing to poll, and the wait ends now.
            endWait()
            return nil
        }
        return (descriptor, deadline)
    }

    func pump() -> Bool {
        let heard: Int
        do throws(CeleryWorkerError) {
            heard = try connection.heardNow()
        } catch {
            lost()
            heard = 1
        }
        guard heard > 0 else { return true }
        endWait()
        return false
    }

    func expire() {
        endWait()
    }

    private func endWait() {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            defer { state.waiter = nil }
            return state.waiter?.continuation
        }
        waiter?.resume()
    }
}
