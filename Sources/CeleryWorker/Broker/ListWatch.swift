import Logging
import Synchronization

/// Wakes a fetch that found its queues empty as soon as one of their lists changes, so that an idle worker need not
/// wait in `BRPOP`.
///
/// `BRPOP` takes the message off its list as it returns, and the record in `unacked` can only follow: a worker killed
/// in between loses that message (kombu's window too). Nothing is taken to wait here. An idle fetch blocks in
/// `BLMOVE` of its first list onto itself, which returns once that list has a message and leaves it in place, with
/// the script that pops and records written behind it, so Redis runs the script the moment the block ends. The
/// other lists are watched with Redis's client-side caching (`CLIENT TRACKING`, Redis 6 and later): the watch's
/// connection subscribes to `__redis__:invalidate`; the fetch connection turns tracking on with `REDIRECT` to it; a
/// fetch that may leave the lists empty reads each with `LLEN` right after the script, in the same round trip, and
/// Redis then tells the watch's connection of the next change to any list it found empty. While the fetch blocks,
/// the watch ends the block on that report (``guarding(_:)``, `CLIENT UNBLOCK` from a connection of its own). Each
/// list is either found empty and watched from that moment, or found not empty, and then the fetch does not block:
/// no message can slip in between. Where Redis refuses `BLMOVE` or `CLIENT UNBLOCK` (``refuseBlocking(_:)``), the
/// fetch waits for the report of any list (``wait(for:)``) and then runs the script.
///
/// The watch is the fetch connection's companion: it lives while the worker consumes
/// (``RedisBroker/consuming(logger:_:)``), and only the fetch uses it, on the fetch connection's lane. There it is
/// served as that connection's thread waits for the reply: in `poll(2)` on a lane of its own, or, on the event loop
/// of the solo and thread pools, as a source the loop polls while it runs tasks. While it is not subscribed (Redis
/// unreachable, or refused), fetches block in `BRPOP` as before.
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
        /// The fetch connection's client id while a fetch blocks in `BLMOVE` that a change is to unblock
        /// (``guarding(_:)``), and when to try again after `CLIENT UNBLOCK` found it not blocked yet.
        var guarded: (clientID: Int64, retryAt: ContinuousClock.Instant?)?
        /// Why Redis refused what blocking in `BLMOVE` needs, once said: fetches wait for the watch (``wait(for:)``).
        var blockingRefusal: String?
    }

    /// The channel Redis sends tracking invalidations to, for `REDIRECT` clients that speak RESP2.
    static let channel = "__redis__:invalidate"

    private let state = Mutex(State())
    private let connection: RedisConnection
    /// Sends `CLIENT UNBLOCK` for a change the watch hears while a fetch blocks (the watch's own connection, which
    /// listens, cannot).
    private let control: RedisConnection
    /// The fetch connection's lane, where every call runs.
    private let lane: WorkerThreads
    private let onEventLoop: Bool
    private let logger: Logger

    /// A watch on the fetch connection `fetching`'s server, run on its lane.
    init(beside fetching: RedisClient, logger: Logger) {
        connection = RedisConnection(url: fetching.url, commandTimeout: .seconds(10))
        control = RedisConnection(url: fetching.url, commandTimeout: .seconds(10))
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
        let (connection, control) = (self.connection, self.control)
        do throws(CeleryWorkerError) {
            let (clientID, unblocking) = try await lane.run { () throws(CeleryWorkerError) -> (Int64, RedisReply) in
                let reply = try connection.execute([RedisCommand("CLIENT", "ID")]).first ?? .null
                guard let clientID = try reply.check("CLIENT ID").integer else {
                    throw CeleryWorkerError(code: .unexpectedReply, message: "CLIENT ID: \(reply)")
                }
                try connection.listen(to: Self.channel)
                // Whether Redis lets this worker unblock its fetch (client 0 is none: nothing is unblocked).
                return (clientID, try control.execute([RedisCommand("CLIENT", "UNBLOCK", "0")]).first ?? .null)
            }
            if case .error(let message) = unblocking, RedisReply.refuses(message) { refuseBlocking("CLIENT UNBLOCK: \(message)") }
            return state.withLock { state in
                state.subscriptions += 1
                state.retryAfter = nil
                state.subscription = Subscription(clientID: clientID, number: state.subscriptions)
                return state.subscription
            }
        } catch  where error.isTransient {
            connection.close()
            control.close()
            state.withLock { $0.retryAfter = .now + .milliseconds(500) }
        } catch {
            refuse(error.message)
        }
        return nil
    }

    /// Redis refused what the watch needs (`reason`): said once, and the watch closes; fetches block in `BRPOP`.
    func refuse(_ reason: String) {
        state.withLock { $0.subscription = nil }
        if firstTime(reason, in: \.refusal) {
            logger.warning(
                "Redis refused client tracking (\(reason)): an idle worker waits for messages in BRPOP, as a Python worker does, and one killed as a message arrives can lose it."
            )
        }
        connection.close()
        control.close()
    }

    /// Whether a fetch may block in `BLMOVE` on its first list, the watch unblocking it for a change to any other
    /// (``guarding(_:)``): not once Redis refused what that needs (``refuseBlocking(_:)``).
    var unblocks: Bool { state.withLock { $0.blockingRefusal == nil } }

    /// Redis refused what blocking in `BLMOVE` needs (`reason`): said once, and fetches wait for the watch
    /// (``wait(for:)``) from then on, a round trip more per message picked up at idle.
    func refuseBlocking(_ reason: String) {
        if firstTime(reason, in: \.blockingRefusal) {
            logger.info(
                "Redis refused \(reason): an idle worker waits for the report of a change before it fetches, a round trip more per message than blocking in BLMOVE."
            )
        }
    }

    /// Keeps `reason` in `refusal` unless one is kept there already; `true` the first time (the time to say it).
    private func firstTime(_ reason: String, in refusal: WritableKeyPath<State, String?>) -> Bool {
        state.withLock { state in
            defer { state[keyPath: refusal] = state[keyPath: refusal] ?? reason }
            return state[keyPath: refusal] == nil
        }
    }

    /// Whether `subscription` is still the watch's.
    func holds(_ subscription: Subscription) -> Bool {
        state.withLock { $0.subscription == subscription }
    }

    /// Drops the subscription and closes its connection (it broke, tracking cannot name its client, or the worker
    /// stopped consuming): the next fetch subscribes anew.
    func lost() {
        state.withLock {
            $0.subscription = nil
            $0.guarded = nil
        }
        connection.close()
        control.close()
    }

    /// Has the watch, as a ``PolledSource``, unblock the fetch connection `clientID` (`CLIENT UNBLOCK`, which makes
    /// its `BLMOVE` return as if it timed out) as soon as a change to a watched list is reported, until
    /// ``stopGuarding()``. A report that came before counts. Should the unblock find the fetch not blocked yet (its
    /// `BLMOVE` still on the way), it is tried again every millisecond until it is, or until the fetch returns.
    func guarding(_ clientID: Int64) -> any PolledSource {
        state.withLock { $0.guarded = (clientID, nil) }
        return self
    }

    /// Ends ``guarding(_:)``: the fetch returned.
    func stopGuarding() {
        state.withLock { $0.guarded = nil }
    }

    /// `CLIENT UNBLOCK` of the guarded fetch; `true` while the guard goes on (the fetch was not blocked yet).
    private func unblock() -> Bool {
        guard let clientID = state.withLock({ $0.guarded?.clientID }) else { return false }
        let reply: RedisReply
        do throws(CeleryWorkerError) {
            reply = try control.execute([RedisCommand("CLIENT", "UNBLOCK", RedisArgument(String(clientID)))]).first ?? .null
        } catch {
            // Redis is unreachable: the fetch fails as well, or its `BLMOVE` times out within a second.
            control.close()
            stopGuarding()
            return false
        }
        if case .integer(0) = reply {
            return state.withLock { state in
                guard state.guarded != nil else { return false }
                state.guarded?.retryAt = .now + .milliseconds(1)
                return true
            }
        }
        if case .error(let message) = reply, RedisReply.refuses(message) { refuseBlocking("CLIENT UNBLOCK: \(message)") }
        stopGuarding()
        return false
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
        let (deadline, guarded) = state.withLock { ($0.waiter?.deadline, $0.guarded) }
        guard deadline != nil || guarded != nil else { return nil }
        guard let descriptor = connection.descriptor else {
            // Closed under the wait: nothing to poll, and the wait ends now (a guarded fetch's `BLMOVE` times out).
            endWait()
            stopGuarding()
            return nil
        }
        // A guard has no deadline but its retry: its fetch returns within a second.
        return (descriptor, deadline ?? guarded?.retryAt ?? .now + .seconds(1))
    }

    func pump() -> Bool {
        let heard: Int
        do throws(CeleryWorkerError) {
            heard = try connection.heardNow()
        } catch {
            // The guarded fetch, if any, times out within a second.
            lost()
            endWait()
            return false
        }
        guard heard > 0 else { return true }
        if state.withLock({ $0.guarded != nil }) { return unblock() }
        endWait()
        return false
    }

    func expire() {
        guard state.withLock({ $0.guarded?.retryAt != nil }) else { return endWait() }
        // On the event loop the source is dropped after this unless watched again.
        if unblock(), onEventLoop { lane.watch(self) }
    }

    private func endWait() {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            defer { state.waiter = nil }
            return state.waiter?.continuation
        }
        waiter?.resume()
    }
}
