import CeleryProtocol
import Logging
import Synchronization

/// kombu's Redis transport contract: queues are lists (`LPUSH` by producers, `BRPOP` by consumers) with priority
/// sub-queues, and every delivered message is recorded in the `unacked` hash and `unacked_index` sorted set until
/// it is acknowledged.
public final class RedisBroker: Broker {
    /// kombu's `sep`, `priority_steps` and `queue_order_strategy`.
    public let transport: RedisTransportOptions

    let blocking: RedisClient
    let commands: RedisClient
    /// kombu's `global_keyprefix` (a broker transport option), in front of every key and channel name the
    /// transport uses, as written (kombu adds no separator). Default `""`.
    public let keyPrefix: String
    let unackedKey: String
    let unackedIndexKey: String
    /// The order the next fetch takes the queues in (kombu rotates the queue that just delivered to the end).
    private let rotation: Mutex<FetchOrder>
    /// Whether the last blocking pop waited for its message (or for nothing): the queues were empty then.
    private let waited = Mutex(false)

    /// Where a blocking pop's record goes out (the blocking connection unless the service says otherwise).
    let records: RedisClient
    /// How long a blocking pop must wait for its message for the queues to count as having been empty (see
    /// ``received(_:waitedSince:recordingIn:)``).
    let idleAfter: Duration

    /// - Parameters:
    ///   - blocking: the connection used only for `BRPOP`.
    ///   - commands: the connection for bookkeeping (`unacked`), acks and restores.
    ///   - keyPrefix: kombu's `global_keyprefix`.
    ///   - transport: kombu's `sep`, `priority_steps` and `queue_order_strategy`.
    public convenience init(
        blocking: RedisClient, commands: RedisClient, keyPrefix: String = "", transport: RedisTransportOptions = RedisTransportOptions()
    ) {
        self.init(blocking: blocking, commands: commands, records: nil, keyPrefix: keyPrefix, transport: transport)
    }

    /// - Parameter records: where a blocking pop's record goes out, not waited for: the result backend's client when
    ///   the backend is on the broker's server, so the write that acknowledges the message follows the record on
    ///   one connection and need not wait for the record's reply. `nil`: the blocking connection, where the next
    ///   pop reads the reply first.
    /// - Parameter idleAfter: a blocking pop whose message came later than this waited for it (the queues were
    ///   empty); one that came sooner took a message that was already waiting. A message already waiting comes
    ///   back within a round trip, a tenth of a millisecond or so on one machine.
    init(
        blocking: RedisClient, commands: RedisClient, records: RedisClient?, idleAfter: Duration = .milliseconds(1),
        keyPrefix: String = "", transport: RedisTransportOptions = RedisTransportOptions()
    ) {
        self.blocking = blocking
        self.commands = commands
        self.keyPrefix = keyPrefix
        self.transport = transport
        unackedKey = keyPrefix + transport.unackedKey
        unackedIndexKey = keyPrefix + transport.unackedIndexKey
        mutexKey = keyPrefix + transport.unackedMutexKey
        rotation = Mutex(FetchOrder(prefix: keyPrefix, transport: transport))
        self.records = records ?? blocking
        self.idleAfter = idleAfter
        blocking.connection.stopCheckingWhileIdle()
    }

    /// Where the worker's fetch loop runs: on the thread of the connection it fetches with, so each round trip
    /// and the decoding of what it brought happen on one thread, beside the worker's own.
    var fetchExecutor: any TaskExecutor { blocking.lane }

    /// The list that holds messages of `priority` for `queue` with kombu's default `priority_steps` (priority
    /// clamped to 0…9, then the largest step not above it), behind `prefix` (the ``keyPrefix``).
    public static func list(for queue: String, priority: Int, prefix: String = "") -> String {
        RedisTransportOptions().list(for: queue, priority: priority, prefix: prefix)
    }

    /// What the connects of the broker's connections to the servers of its failover list left to report, for the
    /// consumer's log (and forgets it).
    public func takeFailovers() -> RedisURL.Failover.Log {
        var log = blocking.takeFailovers()
        log.merge(commands.takeFailovers())
        if records !== blocking { log.merge(records.takeFailovers()) }
        return log
    }

    /// Closes the connections the server hung up on (a killed client, a restart), so that the next call opens a new
    /// one instead of failing on the dead one.
    func closeHungUpConnections() {
        for client in [blocking, commands, records] { client.connection.closeIfHungUp() }
    }

    public func declare(queues: [String], bindings: [String: QueueBinding]) async throws(CeleryWorkerError) {
        rotation.withLock { $0.set(queues) }
        for queue in queues {
            let lengths = transport.lists(of: queue, prefix: keyPrefix).map { RedisCommand("LLEN", RedisArgument($0)) }
            try await commands.transaction(lengths)
            let binding = bindings[queue] ?? .named(queue)
            let member = RedisArgument(transport.bindingMember(routingKey: binding.routingKey, queue: queue, pattern: binding.pattern))
            try await commands.transaction([
                RedisCommand("SADD", RedisArgument("\(keyPrefix)_kombu.binding.\(binding.exchange)"), member),
                RedisCommand("SADD", RedisArgument("\(keyPrefix)_kombu.binding_permanent.\(binding.exchange)"), member),
            ])
        }
    }

    /// Why Redis may drop this broker's messages when it runs short of memory: its `maxmemory` is set and its
    /// `maxmemory-policy` evicts keys (`allkeys-lru`, `volatile-ttl`, …), so a queue's list or `unacked` can go,
    /// messages and all. `nil` when it evicts nothing (`noeviction`, or no `maxmemory`), or when Redis does not say
    /// (`CONFIG` refused or renamed).
    public func evictionRisk() async -> String? {
        guard
            let replies = try? await commands.pipeline([
                RedisCommand("CONFIG", "GET", "maxmemory-policy"), RedisCommand("CONFIG", "GET", "maxmemory"),
            ]),
            replies.count == 2, let policy = replies[0].array?.last?.text, let memory = replies[1].array?.last?.text,
            policy != "noeviction", memory != "0"
        else { return nil }
        return "maxmemory \(memory) bytes, maxmemory-policy \(policy)"
    }

    /// Celery's `--purge`: deletes every message waiting in `queues` and their priority lists (not those already
    /// delivered and unacknowledged), counting them as kombu's `_purge` does (`LLEN` and `DEL` per list, in one
    /// transaction). Returns how many were deleted.
    public func purge(queues: [String]) async throws(CeleryWorkerError) -> Int {
        let lists = queues.flatMap { queue in transport.lists(of: queue, prefix: keyPrefix) }
        let replies = try await commands.transaction(
            lists.flatMap { [RedisCommand("LLEN", RedisArgument($0)), RedisCommand("DEL", RedisArgument($0))] })
        return stride(from: 0, to: replies.count, by: 2).reduce(0) { total, index in total + Int(replies[index].integer ?? 0) }
    }

    public func fetch(queues: [String], limit: Int) async throws(CeleryWorkerError) -> [BrokerDelivery] {
        let (lists, brpop) = rotation.withLock { order -> ([String], RedisCommand) in
            if order.queues != queues, Set(order.queues) != Set(queues) { order.set(queues) }
            order.takeBack(at: .now)
            return (order.lists, order.brpop)
        }
        guard !lists.isEmpty else {
            // Every list is set aside: nothing to fetch from for now, a blocking pop's second.
            try? await Task.sleep(for: .seconds(1))
            return []
        }
        do {
            return try await fetch(lists: lists, brpop: brpop, limit: limit)
        } catch  where error.message.contains("WRONGTYPE") {
            guard await setAsideWrongTypes(of: lists) else { throw error }
            // Again, without them.
            return try await fetch(queues: queues, limit: limit)
        }
    }

    /// How long a list whose key holds something else than a list is left out of the fetches before it is tried
    /// again.
    static let wrongTypeSetAside: Duration = .seconds(10)

    /// After a fetch failed on a key of another type than a list (`WRONGTYPE`: a string where a queue's list should
    /// be, say): each of `lists` is checked (`TYPE`), and those of another type are set aside for
    /// ``wrongTypeSetAside`` and logged as errors, so the fetches go on with the others. `false` when none was found,
    /// or when there is no log to say it in (outside ``consuming(logger:_:)``): the error is then the fetch's. A
    /// Python worker stops at such a key (`Unrecoverable error`); a fetch of every list at once would fail on it
    /// again and again, and the healthy queues would wait too.
    private func setAsideWrongTypes(of lists: [String]) async -> Bool {
        guard let logger = tracking.withLock({ $0.logger }),
            let types = try? await commands.pipeline(lists.map { RedisCommand("TYPE", RedisArgument($0)) })
        else { return false }
        let wrong = zip(lists, types).compactMap { list, type in
            type.text.flatMap { $0 == "list" || $0 == "none" ? nil : (list, $0) }
        }
        let until = ContinuousClock.now + Self.wrongTypeSetAside
        rotation.withLock { order in
            for (list, _) in wrong { order.setAside(list, until: until) }
        }
        for (list, type) in wrong {
            logger.error(
                "consumer: Cannot fetch from \(PythonRepr.repr(.string(list))): the key holds a \(type), not a list (WRONGTYPE); left out of the fetches for \(Self.wrongTypeSetAside.components.seconds) seconds, the other queues are consumed."
            )
        }
        return !wrong.isEmpty
    }

    private func fetch(lists: [String], brpop: RedisCommand, limit: Int) async throws(CeleryWorkerError) -> [BrokerDelivery] {
        // Whatever is waiting is popped and recorded in `unacked` by one script: no moment exists in which a
        // message is off its list but not yet recorded, so a worker killed at any point loses nothing. While the
        // worker consumes, an idle fetch waits for a change to the lists without taking anything (``ListWatch``).
        var popped: [BrokerDelivery]
        if let watched = try await watchedFetch(lists: lists, limit: max(1, limit)) {
            popped = watched
        } else {
            // Without the watch: the script is skipped when the last blocking pop had to wait, as the queues were
            // empty a moment ago, and a message that came since is taken by the blocking pop at once (a second one
            // then makes the next fetch use the script).
            popped = []
            if !waited.withLock({ $0 }) {
                popped = try await popAndRecord(lists: lists, limit: max(1, limit))
            }
            if popped.isEmpty {
                // Nothing waiting: block for the next message, recording it straight after (on the same connection,
                // or on ``records`` when that is another).
                popped = try await blockingPop(brpop)
            } else {
                waited.withLock { $0 = false }
            }
        }
        if let last = popped.last { rotation.withLock { $0.moveToEnd(last.queue) } }
        return popped
    }

    /// How the watch of an idle fetch stands (``ListWatch``): set while the worker consumes.
    struct Tracking {
        var watch: ListWatch?
        /// The fetch connection's opening and the watch's subscription that `CLIENT TRACKING` was last turned on for,
        /// and the fetch connection's client id.
        var enabled: (opened: Int, subscription: Int, clientID: Int64)?
        /// Whether the last fetch left every list watched (found empty, with tracking on): the next one waits for a
        /// change before it looks.
        var armed = false
        /// The first list of the last fetch: the one the next blocks on, unless the order changed since.
        var firstList: String?
        /// Whether the last fetch took fewer messages than it asked for.
        var short = true
        /// Whether a block failed (Redis refused `BLMOVE` for now: out of memory, say) since the last wait for the
        /// watch: until the next such wait, fetches wait for the watch rather than block, so a block that fails at
        /// once cannot make the fetch loop spin.
        var blockFailed = false
        /// Where the broker logs what it does about a queue it cannot fetch from (``setAsideWrongTypes(of:)``).
        var logger: Logger?
    }

    private let tracking = Mutex(Tracking())

    /// Runs `body`, the worker's fetch loop, with a ``ListWatch`` beside the fetch connection, so that an idle fetch
    /// waits for a message without taking it off its list (see there). Fetches outside it block in `BRPOP`. A
    /// refusal of client tracking by Redis is logged to `logger` (once).
    public func consuming<Result, Failure: Error>(
        logger: Logger, _ body: () async throws(Failure) -> Result
    ) async throws(Failure) -> Result {
        let watch = ListWatch(beside: blocking, logger: logger)
        tracking.withLock { $0 = Tracking(watch: watch, logger: logger) }
        defer {
            tracking.withLock { $0 = Tracking() }
            watch.lost()
        }
        return try await body()
    }

    /// A fetch through the watch: the script pops and records what is waiting and, when that leaves the lists empty,
    /// has Redis watch them; the next fetch then waits for a change (a second at most) before it runs the script
    /// again. `nil` when there is no watch, it cannot subscribe, or tracking could not be turned on: the fetch then
    /// blocks in `BRPOP`.
    ///
    /// The wait is a blocking command: `BLMOVE` of the first list onto itself (which returns as soon as it has a
    /// message and leaves it where it is), with the script behind it in the same write, so Redis pops and records
    /// the message the moment it comes, with no round trip in between. The other lists (priorities, other queues)
    /// are watched: a change to one has the watch unblock the fetch (``ListWatch/guarding(_:)``). Where Redis
    /// refuses `BLMOVE` or `CLIENT UNBLOCK`, the fetch waits for the watch's report instead, and then runs the script.
    private func watchedFetch(lists: [String], limit: Int) async throws(CeleryWorkerError) -> [BrokerDelivery]? {
        guard let (watch, last) = tracking.withLock({ state in state.watch.map { ($0, state) } }) else { return nil }
        let blocks = watch.unblocks && !last.blockFailed
        let waits = last.armed && !blocks
        if waits {
            await watch.wait(for: .seconds(1))
            tracking.withLock { $0.armed = false }
        }
        let reopened = last.enabled?.opened != blocking.connection.openedCount
        guard let subscription = await watch.subscription(checkingHangUp: reopened),
            let clientID = try await trackingOn(for: subscription, watch: watch)
        else { return nil }
        // The lists are read to be watched only when the last fetch took fewer than it asked for: they may be empty.
        // Under load each fetch takes a full batch, and reading them would only have Redis report every push. The
        // list blocked on is not watched: its pushes end the block.
        let blockOn = last.armed && blocks && last.firstList == lists.first ? lists.first : nil
        let watched = last.short ? (blocks ? Array(lists.dropFirst()) : lists) : nil
        let (popped, empty, blocked) = try await popAndRecord(
            lists: lists, limit: limit, watching: watched, blockingOn: blockOn.map { ($0, watch, clientID) })
        // Refused for good: an ACL, or a Redis before 6.2 (`ERR unknown command`). Refused for now (`OOM`): the next
        // fetches wait for the watch, until one has.
        var failed = false
        if case .error(let message)? = blocked {
            if RedisReply.refuses(message) { watch.refuseBlocking("BLMOVE: \(message)") }
            failed = true
        }
        let blockFailed = failed || (last.blockFailed && !waits)
        // Watched only if read on the connection tracking is on for (not on one reopened under it), with the watch
        // subscribed all along, and as the next fetch waits: when it waits for the watch alone, rather than block on
        // the first list, that list must be watched too.
        let opened = blocking.connection.openedCount
        let held = watch.holds(subscription) && (!blocks || (watch.unblocks && !blockFailed))
        tracking.withLock { state in
            state.blockFailed = blockFailed
            state.short = popped.count < limit
            state.armed = empty && state.short && held && opened != nil && opened == state.enabled?.opened
            state.firstList = lists.first
        }
        return popped
    }

    /// Turns `CLIENT TRACKING … REDIRECT` to `subscription` on for the fetch connection, unless it is on already
    /// (a connection opened anew, or a new subscription, needs it again), and returns the fetch connection's client
    /// id. `nil` when Redis refused: the watch subscribes anew when its client is gone (its connection broke, or it
    /// is on another server after a failover), or closes for good when Redis does not offer tracking.
    private func trackingOn(for subscription: ListWatch.Subscription, watch: ListWatch) async throws(CeleryWorkerError) -> Int64? {
        if let enabled = tracking.withLock({ $0.enabled }), enabled.opened == blocking.connection.openedCount,
            enabled.subscription == subscription.number
        {
            return enabled.clientID
        }
        let command = RedisCommand("CLIENT", "TRACKING", "ON", "REDIRECT", RedisArgument(String(subscription.clientID)), "NOLOOP")
        let replies = try await blocking.pipeline([RedisCommand("CLIENT", "ID"), command])
        let reply = replies.last ?? .null
        guard case .status = reply, let clientID = replies.first?.integer, let opened = blocking.connection.openedCount else {
            if case .error(let message) = reply, message.contains("redirect") {
                watch.lost()
            } else if case .error(let message) = reply, RedisReply.refuses(message) {
                watch.refuse("CLIENT TRACKING: \(message)")
            } else if case .error(let message)? = replies.first, RedisReply.refuses(message) {
                watch.refuse("CLIENT ID: \(message)")
            }
            return nil
        }
        tracking.withLock { $0.enabled = (opened, subscription.number, clientID) }
        return clientID
    }

    /// The order in which a fetch takes the queues, with the lists that makes and the `BRPOP` of them, built once
    /// per order rather than once per fetch.
    struct FetchOrder {
        /// The broker's ``RedisBroker/keyPrefix``, in front of every list.
        let prefix: String
        /// The priority steps, and whether the order rotates.
        let transport: RedisTransportOptions
        private(set) var queues: [String] = []
        /// Every priority list of the queues in consumption order, prefixed: the first step (kombu's highest
        /// priority) of every queue, then the next, and so on; without those set aside.
        private(set) var lists: [String] = []
        /// `BRPOP` of `lists`, with a timeout of one second.
        private(set) var brpop = RedisCommand([])
        /// Lists left out of the fetches, each until when (their keys held another type than a list).
        private(set) var asideUntil: [String: ContinuousClock.Instant] = [:]

        mutating func set(_ queues: [String]) {
            self.queues = queues
            lists = []
            let ordered = transport.consumptionOrder(queues)
            for step in transport.prioritySteps {
                for queue in ordered {
                    let list = transport.list(for: queue, priority: step, prefix: prefix)
                    if asideUntil[list] == nil { lists.append(list) }
                }
            }
            brpop = RedisCommand("BRPOP", arguments: lists.map { RedisArgument($0) } + ["1"])
        }

        /// Leaves `list` out of the fetches until `until`.
        mutating func setAside(_ list: String, until: ContinuousClock.Instant) {
            asideUntil[list] = until
            set(queues)
        }

        /// Takes back the lists set aside whose time is up.
        mutating func takeBack(at now: ContinuousClock.Instant) {
            guard !asideUntil.isEmpty, asideUntil.values.contains(where: { $0 <= now }) else { return }
            asideUntil = asideUntil.filter { $0.value > now }
            set(queues)
        }

        /// kombu's rotation: the queue that just delivered goes last (in round robin only).
        mutating func moveToEnd(_ queue: String) {
            guard transport.queueOrder == .roundRobin, let position = queues.firstIndex(of: queue), position != queues.count - 1 else { return }
            var rotated = queues
            rotated.remove(at: position)
            rotated.append(queue)
            set(rotated)
        }
    }

    /// kombu's record of a message in `unacked`, as one request in Redis's protocol (four commands, four replies):
    /// `MULTI`, `ZADD unacked_index <receivedAt> <tag>`, `HSET unacked <tag> <value>`, `EXEC`. The value is
    /// `[<envelope>, "<exchange>", "<routing_key>"]`, as kombu stores it, written straight into the request.
    /// With `selecting` (six commands, six replies), the transaction selects the broker's database before the two
    /// writes and the connection's again after them.
    static func recordRequest(
        raw: [UInt8], tag: String, exchange: String, routingKey: String, receivedAt: Double,
        unackedKey: String, unackedIndexKey: String, selecting: (broker: Int, connection: Int)? = nil
    ) -> [UInt8] {
        // The value after the envelope, `, "<exchange>", "<routing_key>"]`, written first to learn its length.
        var tail: [UInt8] = []
        tail.reserveCapacity(exchange.utf8.count + routingKey.utf8.count + 16)
        func appendMember(_ text: String) {
            tail.append(UInt8(ascii: ","))
            tail.append(UInt8(ascii: " "))
            CeleryJSON.encode(.string(text), into: &tail)
        }
        appendMember(exchange)
        appendMember(routingKey)
        tail.append(UInt8(ascii: "]"))
        let valueLength = 1 + raw.count + tail.count
        var request: [UInt8] = []
        // Room for all of it (the commands, keys, score and tags take less than 256 bytes besides the keys): grown
        // at the end, the whole request was copied.
        request.reserveCapacity(valueLength + 2 * tag.utf8.count + unackedKey.utf8.count + unackedIndexKey.utf8.count + 256)
        func select(_ database: Int) {
            request.append(contentsOf: Self.selectHead)
            RESPArguments.writeArgument(String(database), into: &request)
        }
        request.append(contentsOf: Self.multi)
        if let selecting { select(selecting.broker) }
        request.append(contentsOf: Self.zaddHead)
        RESPArguments.writeArgument(unackedIndexKey, into: &request)
        RESPArguments.writeArgument(receivedAt.description, into: &request)
        RESPArguments.writeArgument(tag, into: &request)
        request.append(contentsOf: Self.hsetHead)
        RESPArguments.writeArgument(unackedKey, into: &request)
        RESPArguments.writeArgument(tag, into: &request)
        RESPArguments.writeLine(UInt8(ascii: "$"), valueLength, into: &request)
        request.append(UInt8(ascii: "["))
        request.append(contentsOf: raw)
        request.append(contentsOf: tail)
        request.append(0x0D)
        request.append(0x0A)
        if let selecting { select(selecting.connection) }
        request.append(contentsOf: Self.exec)
        return request
    }

    /// The record's commands and their names in Redis's protocol, written once: `MULTI`, `EXEC`, and the heads of
    /// `SELECT`, `ZADD` and `HSET` (the argument count and the name; the arguments follow).
    private static let multi = commandHead(1, "MULTI")
    private static let exec = commandHead(1, "EXEC")
    private static let selectHead = commandHead(2, "SELECT")
    private static let zaddHead = commandHead(4, "ZADD")
    private static let hsetHead = commandHead(4, "HSET")

    /// `*<count>` and the command's name, as ``RESPArguments`` writes them.
    private static func commandHead(_ count: Int, _ name: String) -> [UInt8] {
        var head: [UInt8] = []
        RESPArguments.writeLine(UInt8(ascii: "*"), count, into: &head)
        RESPArguments.writeArgument(name, into: &head)
        return head
    }

    private func blockingPop(_ brpop: RedisCommand) async throws(CeleryWorkerError) -> [BrokerDelivery] {
        if blocking.sharesLane { return try await blockingPopOnSharedLane(brpop) }
        let (popped, place) = try await blocking.withConnection(retrying: false) {
            [self] connection throws(CeleryWorkerError) -> ([BrokerDelivery], Int?) in
            let started = ContinuousClock.now
            let reply = try connection.execute([brpop])
            let database = self.records.url.database
            guard case (var message, let record)? = self.received(reply.first, waitedSince: started, recordingIn: database)
            else { return ([], nil) }
            guard let record else { return ([message], nil) }
            if self.records !== self.blocking {
                // Written now, from this thread, on the connection the settle script that acknowledges the message
                // goes out on: Redis has it before that script, which need not wait for its reply.
                message.pendingRecord = self.send(record)
                return ([message], nil)
            }
            // Queued now and written as soon as this thread is free again, right after the message is handed on
            // (the task thread validates it meanwhile), in one write with the next pop: at idle that saves Redis a
            // wake-up and keeps the record off the way to the result. The reply is read before the next pop's, and
            // acknowledging the message waits for it. Already off the list: if the write fails the message still
            // runs (unrecorded) rather than being lost.
            let pending = PendingRecord()
            let place: Int
            do {
                place = try connection.appendUnread(request: record.request, replies: record.replies, then: pending.complete)
            } catch {
                return ([message], nil)
            }
            message.pendingRecord = pending
            return ([message], place)
        }
        if let place {
            // The next fetch writes the record with its own command and reads the reply first; this writes it and
            // reads the reply when no fetch follows at once: at shutdown, or while the fetch loop waits for prefetch
            // permits that only tasks waiting for this acknowledgement's batch can free. On the connection's own
            // thread, once the fetch loop's current turn suspends (after the hand-off): no other thread is woken.
            // Only for this record: when the next pop wrote it and read its reply first, this runs after that pop
            // and must not write the next record early, before its message is handed on.
            let blocking = self.blocking
            Task(executorPreference: blocking.lane) {
                try? await blocking.withConnection { connection throws(CeleryWorkerError) in try connection.readUnread(through: place) }
            }
        }
        return popped
    }

    /// The blocking pop of the solo and thread pools: the event loop runs tasks while it waits. The record is written
    /// at once on ``records``, without waiting for its reply (the lane's event loop reads it; acknowledging the
    /// message on another connection waits for it).
    private func blockingPopOnSharedLane(_ brpop: RedisCommand) async throws(CeleryWorkerError) -> [BrokerDelivery] {
        let started = ContinuousClock.now
        return sendingRecord(of: try await blocking.pipeline([brpop]).first, waitedSince: started)
    }

    /// A blocking pop's message (none when it timed out), its record written at once on ``records``.
    private func sendingRecord(of reply: RedisReply?, waitedSince started: ContinuousClock.Instant) -> [BrokerDelivery] {
        guard case (var message, let record)? = received(reply, waitedSince: started, recordingIn: records.url.database)
        else { return [] }
        guard let record else { return [message] }
        message.pendingRecord = send(record)
        return [message]
    }

    /// Writes a blocking pop's record on ``records`` without waiting for its reply. Unless an event loop reads that
    /// connection (the solo and thread pools'), the reply is read by the connection's next call (the settle script that
    /// acknowledges the message, usually), or by whoever waits for the record first.
    private func send(_ record: (request: [UInt8], replies: Int)) -> PendingRecord {
        let records = self.records
        let pending =
            records.sharesLane
            ? PendingRecord(sentOn: records) : PendingRecord(sentOn: records, reader: { await records.readUnread() })
        records.sendWithoutWaiting(request: record.request, replies: record.replies, then: pending.complete)
        return pending
    }

    /// A blocking pop's reply: the message (its record still to write) and the request that records it in
    /// `unacked` as kombu does (``recordRequest(raw:tag:exchange:routingKey:receivedAt:unackedKey:unackedIndexKey:)``);
    /// `nil` when the pop timed out. Notes whether the pop waited.
    ///
    /// `database` is the one selected on the connection the record goes out on: the request selects the broker's
    /// inside its transaction, and that one again, when they differ.
    private func received(
        _ reply: RedisReply?, waitedSince started: ContinuousClock.Instant, recordingIn database: Int
    ) -> (BrokerDelivery, (request: [UInt8], replies: Int)?)? {
        guard case .array(let pair)? = reply, pair.count == 2, let list = pair[0].text, let raw = pair[1].bytes else {
            waited.withLock { $0 = true }
            return nil
        }
        // A reply within `idleAfter` is a message that was already waiting, not one the pop waited for.
        waited.withLock { $0 = ContinuousClock.now - started > idleAfter }
        let receivedAt = WallClock.now()
        // The tag, exchange and routing key kombu records; none: not recorded. The whole envelope is decoded for
        // them, and kept: the worker reads it next. One that does not decode is scanned for its properties alone,
        // so an invalid body is still recorded (and then settled as invalid).
        let envelope = try? KombuEnvelope(decoding: raw)
        let found = envelope.map { envelope -> (tag: String, exchange: String, routingKey: String)? in
            guard let tag = envelope.deliveryTag else { return nil }
            let info = envelope.deliveryInfo
            return (tag, info.exchange, info.routingKey)
        }
        let queue = transport.queue(ofList: list, prefix: keyPrefix)
        guard let fields = found ?? KombuEnvelope.deliveryFields(of: raw) else {
            return (BrokerDelivery(raw: raw, queue: queue, receivedAt: receivedAt, deliveryTag: nil, decoded: envelope), nil)
        }
        let brokerDatabase = commands.url.database
        let selecting = brokerDatabase == database ? nil : (broker: brokerDatabase, connection: database)
        let request = Self.recordRequest(
            raw: raw, tag: fields.tag, exchange: fields.exchange, routingKey: fields.routingKey, receivedAt: receivedAt,
            unackedKey: unackedKey, unackedIndexKey: unackedIndexKey, selecting: selecting)
        let message = BrokerDelivery(raw: raw, queue: queue, receivedAt: receivedAt, deliveryTag: fields.tag, decoded: envelope)
        return (message, (request, selecting == nil ? 4 : 6))
    }

    /// Pops and records up to `limit` messages (``popAndRecordScript``).
    private func popAndRecord(lists: [String], limit: Int) async throws(CeleryWorkerError) -> [BrokerDelivery] {
        try await popAndRecord(lists: lists, limit: limit, watching: nil, blockingOn: nil).popped
    }

    /// Pops and records up to `limit` messages (``popAndRecordScript``).
    ///
    /// With `watching`, reads each of those lists with `LLEN` right after, in the same round trip, so that Redis
    /// tells the ``ListWatch`` of each one's next change (the script's own reads would watch every key the script
    /// names, `unacked` too). `empty`: every one was empty when it was read, so any message pushed since is
    /// reported. A list that was not empty shows that a message came between the script and its `LLEN`.
    ///
    /// With `blockingOn`, the script waits behind `BLMOVE` of that list onto itself (a second at most), the watch
    /// unblocking it for a change to the others (see ``watchedFetch(lists:limit:)``); `blocked` is its reply.
    private func popAndRecord(
        lists: [String], limit: Int, watching: [String]?, blockingOn: (list: String, watch: ListWatch, clientID: Int64)?
    ) async throws(CeleryWorkerError) -> (popped: [BrokerDelivery], empty: Bool, blocked: RedisReply?) {
        var receivedAt = WallClock.now()
        var arguments = RESPArguments(capacity: 128 + 32 * lists.count)
        arguments.append(unackedKey)
        arguments.append(unackedIndexKey)
        for list in lists { arguments.append(list) }
        arguments.append(limit)
        // Behind a block the script runs when a message comes, up to a second from now: it takes the time then.
        if blockingOn == nil { arguments.append(receivedAt) } else { arguments.append("") }
        // On the blocking connection, which only fetching uses: the fetch loop runs on that connection's thread
        // (``fetchExecutor``), so a fetch costs no thread hop. A lost connection is the consumer's to report, on
        // every pool (not replaced at once for another try).
        let lengths = watching?.map { RedisCommand("LLEN", RedisArgument($0)) } ?? []
        let move = blockingOn.map { RedisCommand("BLMOVE", RedisArgument($0.list), RedisArgument($0.list), "RIGHT", "RIGHT", "1") }
        let guarding = blockingOn.map { $0.watch.guarding($0.clientID) }
        defer { blockingOn?.watch.stopGuarding() }
        let (blocked, reply, lengthReplies) = try await blocking.evaluate(
            Self.popAndRecordScript, keyCount: 2 + lists.count, after: move, watching: guarding, then: lengths, retrying: false
        ) { [arguments] in arguments }
        if blockingOn != nil { receivedAt = WallClock.now() }
        let items = reply.array ?? []
        var popped: [BrokerDelivery] = []
        popped.reserveCapacity(items.count / 3)
        for index in stride(from: 0, to: items.count - 2, by: 3) {
            // The list by its position among `lists` (a number in the reply, not the name: no string to read).
            guard let position = items[index].integer, lists.indices.contains(Int(position) - 1),
                let raw = items[index + 1].bytes
            else { continue }
            // The tag is the one the message was recorded under; the worker decodes the envelope when it receives it.
            popped.append(
                BrokerDelivery(
                    raw: raw, queue: transport.queue(ofList: lists[Int(position) - 1], prefix: keyPrefix), receivedAt: receivedAt,
                    deliveryTag: items[index + 2].text))
        }
        return (popped, watching != nil && lengthReplies.allSatisfy { $0 == .integer(0) }, blocked)
    }

    /// Pops up to `ARGV[1]` messages from the lists `KEYS[3…]` in consumption order (each pop starts again from
    /// the first list, so priorities hold) and records each tagged one in `unacked` (`KEYS[1]`) and
    /// `unacked_index` (`KEYS[2]`, score `ARGV[2]`, or Redis's `TIME` when that is empty) exactly as kombu does.
    /// Returns `[list, message, tag, …]`, each list as its position among `KEYS[3…]` (1 for the first), the tag
    /// `false` (a nil reply) for a message recorded under none. When the batch cannot be recorded, its messages go back to their lists in their order and the
    /// script fails with Redis's error.
    static let popAndRecordScript = RedisScript(
        #"""
        \#(RedisScript.callMany)
        -- Python's json.dumps of a string (ensure_ascii): the escapes it uses, everything else past ASCII as \uXXXX.
        local function jsonstring(s)
            local short = { ['"'] = '\\"', ['\\'] = '\\\\', ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t',
                ['\b'] = '\\b', ['\f'] = '\\f' }
            s = string.gsub(s, '[%c"\\]', function(c) return short[c] or string.format('\\u%04x', string.byte(c)) end)
            s = string.gsub(s, '[\194-\244][\128-\191]*', function(c)
                local b = { string.byte(c, 1, -1) }
                local point
                if #b == 2 and b[1] < 224 then point = (b[1] - 192) * 64 + b[2] - 128
                elseif #b == 3 and b[1] < 240 then point = ((b[1] - 224) * 64 + b[2] - 128) * 64 + b[3] - 128
                elseif #b == 4 then point = (((b[1] - 240) * 64 + b[2] - 128) * 64 + b[3] - 128) * 64 + b[4] - 128
                else return c end
                if point < 65536 then return string.format('\\u%04x', point) end
                point = point - 65536
                return string.format('\\u%04x\\u%04x', 55296 + math.floor(point / 1024), 56320 + point % 1024)
            end)
            return '"' .. s .. '"'
        end
        -- kombu's own layout of `properties`, the last key of every message it sends: when the message ends
        -- with it, the tag and delivery_info are read off the end without decoding the message. The pattern is
        -- tried only where its head is (a plain search; Lua's matcher tried at every offset of the last 1 KB cost
        -- more than the rest of the record) and matches from the end of the head. The strings kept are printable
        -- ASCII without quote or backslash (NUL, which a pattern cannot name, is looked for apart), which Python's
        -- json.dumps writes as they are, so they are copied into the record; those only skipped need no quote or
        -- backslash. The classes are ranges, not `%c`: Lua's matcher calls a function per character for a `%`
        -- class.
        local kombu_head = ', "properties": {"correlation_id": "'
        local kombu_tail = '^[^"\\]*", "reply_to": "[^"\\]*", "delivery_mode": %d+, "delivery_info": {"exchange": "([^"\\\1-\31\127-\255]*)", "routing_key": "([^"\\\1-\31\127-\255]*)"}, "priority": %d+, "body_encoding": "base64", "delivery_tag": "([^"\\\1-\31\127-\255]*)"}}$'
        -- Whether a string is valid UTF-8. cjson passes any byte through: a tag that is not UTF-8 is not recorded
        -- (kombu, which decodes the message as UTF-8 first, records nothing either), since the worker, which reads
        -- the tag as text, could never remove it.
        local function utf8(s)
            if not string.find(s, '[\128-\255]') then return true end
            local i, n = 1, #s
            while i <= n do
                local c = string.byte(s, i)
                local length = c < 128 and 1 or c >= 194 and c <= 223 and 2 or c >= 224 and c <= 239 and 3
                    or c >= 240 and c <= 244 and 4 or nil
                if not length or i + length - 1 > n then return false end
                for j = i + 1, i + length - 1 do
                    local d = string.byte(s, j)
                    if d < 128 or d > 191 then return false end
                end
                local d = string.byte(s, i + 1)
                -- Overlong forms, surrogates and code points past U+10FFFF.
                if (c == 224 and d < 160) or (c == 237 and d > 159) or (c == 240 and d < 144) or (c == 244 and d > 143) then
                    return false
                end
                i = i + length
            end
            return true
        end
        -- The tag, exchange and routing key kombu records for a message (the last two as JSON strings), or nil.
        local function record_fields(message)
            local at = string.find(message, kombu_head, -1024, true)
            while at do
                local exchange, routing_key, tag = string.match(message, kombu_tail, at + #kombu_head)
                if tag and not string.find(message, '\0', at, true) then
                    return tag, '"' .. exchange .. '"', '"' .. routing_key .. '"'
                end
                at = string.find(message, kombu_head, at + 1, true)
            end
            local ok, decoded = pcall(cjson.decode, message)
            if not (ok and type(decoded) == 'table' and type(decoded.properties) == 'table'
                and type(decoded.properties.delivery_tag) == 'string' and utf8(decoded.properties.delivery_tag)) then
                return nil
            end
            local info = decoded.properties.delivery_info
            local exchange, routing_key = '', ''
            if type(info) == 'table' then
                if type(info.exchange) == 'string' then exchange = info.exchange end
                if type(info.routing_key) == 'string' then routing_key = info.routing_key end
            end
            return decoded.properties.delivery_tag, jsonstring(exchange), jsonstring(routing_key)
        end
        -- Recorded with one ZADD and one HSET for the whole batch. Counted as they fill (no `#` per append).
        local out, scores, records, popped, recorded = {}, {}, {}, 0, 0
        local score, lists = ARGV[2], #KEYS
        if score == '' then
            local now = redis.call('TIME')
            score = now[1] .. '.' .. string.format('%06d', now[2])
        end
        for _ = 1, tonumber(ARGV[1]) do
            local message, list
            for i = 3, lists do
                message = redis.call('RPOP', KEYS[i])
                if message then list = i - 2 break end
            end
            if not message then break end
            local tag, exchange, routing_key = record_fields(message)
            if tag then
                scores[recorded + 1], scores[recorded + 2] = score, tag
                records[recorded + 1] = tag
                records[recorded + 2] = '[' .. message .. ', ' .. exchange .. ', ' .. routing_key .. ']'
                recorded = recorded + 2
            end
            out[popped + 1], out[popped + 2], out[popped + 3] = list, message, tag or false
            popped = popped + 3
        end
        local ok, failure = pcall(call_many, 'ZADD', KEYS[2], scores, 1, recorded)
        local indexed = ok
        if ok then ok, failure = pcall(call_many, 'HSET', KEYS[1], records, 1, recorded) end
        if not ok then
            -- Not recorded (a key of the wrong type, say): the batch goes back where it was, in its order, its
            -- index entries are removed, and the error is the reply, so nothing popped here is lost.
            if indexed then
                for i = 2, recorded, 2 do redis.pcall('ZREM', KEYS[2], scores[i]) end
            end
            for i = popped - 2, 1, -3 do redis.call('RPUSH', KEYS[out[i] + 2], out[i + 1]) end
            return redis.error_reply(type(failure) == 'table' and failure.err or tostring(failure))
        end
        return out
        """#)

    public func publish(_ envelope: [UInt8], queue: String, priority: Int) async throws(CeleryWorkerError) {
        try await commands.send(
            RedisCommand("LPUSH", RedisArgument(transport.list(for: queue, priority: priority, prefix: keyPrefix)), RedisArgument(envelope)))
    }

    public func ack(_ deliveries: [BrokerDelivery]) async throws(CeleryWorkerError) {
        let tags = deliveries.compactMap(\.deliveryTag)
        guard !tags.isEmpty else { return }
        var batch: [RedisCommand] = []
        for tag in tags {
            batch.append(RedisCommand("ZREM", RedisArgument(unackedIndexKey), RedisArgument(tag)))
            batch.append(RedisCommand("HDEL", RedisArgument(unackedKey), RedisArgument(tag)))
        }
        try await commands.transaction(batch)
    }

    public func restore(_ deliveries: [BrokerDelivery], atFront: Bool) async throws(CeleryWorkerError) {
        for delivery in deliveries {
            guard let tag = delivery.deliveryTag else { continue }
            try await restore(tag: tag, atFront: atFront)
        }
    }

    /// kombu's `restore_by_tag`: `WATCH unacked`, `HGET`, then in one transaction forget the tag and push the
    /// stored message back, marked redelivered, to the list for its queue and priority. Tried again when another
    /// client changed `unacked` in between (redis-py's `transaction` does the same).
    ///
    /// A record that is not kombu's `[message, exchange, routing_key]` (written by hand, or cut short) cannot go back
    /// to a queue: kombu's restore raises on it and leaves it, so that every Python worker's start stops there
    /// (`Unrecoverable error: JSONDecodeError(…)`). Here it is left in `unacked` for an operator to look at, and only
    /// its index entry goes, so that no sweep (a Python worker's either) meets it again: `false`.
    @discardableResult
    func restore(tag: String, atFront: Bool) async throws(CeleryWorkerError) -> Bool {
        let (unackedKey, unackedIndexKey, keyPrefix, transport) = (self.unackedKey, self.unackedIndexKey, self.keyPrefix, self.transport)
        for _ in 0..<10 {
            // WATCH … EXEC holds the connection throughout, so no other command can slip in and clear the WATCH.
            let done = try await commands.withConnection { connection throws(CeleryWorkerError) -> Bool? in
                let watched = try connection.execute([
                    RedisCommand("WATCH", RedisArgument(unackedKey)),
                    RedisCommand("HGET", RedisArgument(unackedKey), RedisArgument(tag)),
                ])
                var batch = [RedisCommand("MULTI"), RedisCommand("ZREM", RedisArgument(unackedIndexKey), RedisArgument(tag))]
                let stored = watched.count == 2 ? watched[1].bytes : nil
                let record = stored.flatMap(Self.restoreRecord)
                let readable = stored == nil || record != nil  // a record gone meanwhile needs nothing more
                if readable { batch.append(RedisCommand("HDEL", RedisArgument(unackedKey), RedisArgument(tag))) }
                if let record {
                    let queues = try Self.lookup(
                        exchange: record.exchange, routingKey: record.routingKey, prefix: keyPrefix, transport: transport, on: connection)
                    for queue in queues {
                        let list = transport.list(for: queue, priority: record.priority, prefix: keyPrefix)
                        batch.append(RedisCommand(atFront ? "RPUSH" : "LPUSH", RedisArgument(list), RedisArgument(record.envelope)))
                    }
                }
                batch.append(RedisCommand("EXEC"))
                let replies = try connection.execute(batch)
                for reply in replies { try reply.check("restoring \(tag)") }
                // A nil EXEC reply means `unacked` changed under WATCH: read again and retry, as redis-py does.
                return replies.last?.array == nil ? nil : readable
            }
            if let done { return done }
        }
        throw CeleryWorkerError(code: .unexpectedReply, message: "could not restore \(tag): unacked kept changing")
    }

    /// kombu's dead-letter queue for messages whose exchange routes nowhere.
    static let deadLetterQueue = "ae.undeliver"

    /// The queues a message published to `exchange` with `routingKey` goes to: the routing key itself for the
    /// anonymous exchange (every task message), else the direct bindings in `_kombu.binding.<exchange>`.
    func lookup(exchange: String, routingKey: String) async throws(CeleryWorkerError) -> [String] {
        guard !exchange.isEmpty else { return [routingKey] }
        return try await commands.withConnection { [keyPrefix, transport] connection throws(CeleryWorkerError) in
            try Self.lookup(exchange: exchange, routingKey: routingKey, prefix: keyPrefix, transport: transport, on: connection)
        }
    }

    /// The queues a producer's message to the named `exchange` with `routingKey` reaches, as kombu's `_lookup`
    /// finds them: the members of `_kombu.binding.<exchange>` with that routing key (a direct exchange, which is what
    /// kombu takes an exchange it was not told about for), or with `topic` those whose pattern matches it. Empty
    /// when none is bound so (kombu's Redis transport then drops the message).
    public func boundQueues(exchange: String, routingKey: String, topic: Bool = false) async throws(CeleryWorkerError) -> [String] {
        try await commands.withConnection { [keyPrefix, transport] connection throws(CeleryWorkerError) in
            try Self.lookup(
                exchange: exchange, routingKey: routingKey, prefix: keyPrefix, transport: transport, on: connection, topic: topic,
                deadLetter: false
            ).sorted()
        }
    }

    /// ``lookup(exchange:routingKey:)`` on a connection already held; `prefix` is the ``keyPrefix``, the queues
    /// come back without it; `transport` has the separator of the binding members.
    /// With `topic`, the members are matched by their patterns; without `deadLetter`, no match is an empty list.
    static func lookup(
        exchange: String, routingKey: String, prefix: String, transport: RedisTransportOptions, on connection: RedisConnection,
        topic: Bool = false, deadLetter: Bool = true
    ) throws(CeleryWorkerError) -> [String] {
        guard !exchange.isEmpty else { return [routingKey] }
        let reply = try connection.execute([RedisCommand("SMEMBERS", RedisArgument("\(prefix)_kombu.binding.\(exchange)"))])
        var queues: [String] = []
        for member in reply.first?.array ?? [] {
            guard let text = member.text else { continue }
            let queue =
                topic
                ? transport.topicBoundQueue(member: text, routingKey: routingKey) : transport.boundQueue(member: text, routingKey: routingKey)
            if let queue, !queues.contains(queue) { queues.append(queue) }
        }
        return queues.isEmpty && deadLetter ? [deadLetterQueue] : queues
    }

    /// A stored `[envelope, exchange, routing_key]` record, with the envelope marked redelivered.
    struct RestoreRecord {
        var envelope: [UInt8]
        var exchange: String
        var routingKey: String
        var priority: Int
    }

    static func restoreRecord(_ stored: [UInt8]) -> RestoreRecord? {
        guard case .array(let parts)? = try? CeleryJSON.decode(stored), parts.count == 3,
            case .object(var envelope) = parts[0], let exchange = parts[1].stringValue,
            let routingKey = parts[2].stringValue
        else { return nil }
        if case .object(var headers)? = envelope["headers"] {
            headers["redelivered"] = true
            envelope["headers"] = .object(headers)
        }
        var priority = 0
        if case .object(var properties)? = envelope["properties"] {
            priority = Self.restorePriority(properties["priority"])
            if case .object(var info)? = properties["delivery_info"] {
                info["redelivered"] = true
                properties["delivery_info"] = .object(info)
            }
            envelope["properties"] = .object(properties)
        }
        return RestoreRecord(
            envelope: CeleryJSON.encode(.object(envelope)), exchange: exchange, routingKey: routingKey,
            priority: priority)
    }

    /// kombu's `_get_message_priority`: `int()` of the message's priority, Python's (a float cut toward zero, a bool
    /// as 0 or 1, a string of digits read), or 0 when it has none that `int()` takes. Clamped to the steps later.
    static func restorePriority(_ value: CeleryValue?) -> Int {
        switch value {
        case .int(let number)?: Int(clamping: number)
        case .uint?: .max
        case .bigInt(let number)?: number.description.hasPrefix("-") ? .min : .max
        case .bool(let flag)?: flag ? 1 : 0
        case .double(let number)? where number.isFinite: Int(max(-100, min(100, number)).rounded(.towardZero))
        case .string(let text)?: Int(text.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
        default: 0
        }
    }

    // MARK: Visibility timeout

    /// kombu's `unacked_mutex`: held while one client sweeps, so two workers never restore the same message.
    let mutexKey: String

    /// How long our sweep lock lives if we die holding it: `unacked_mutex_expire` when it is set. kombu's default is
    /// 300 s, so a worker killed mid-sweep stops every sweep for five minutes; ours is five visibility timeouts,
    /// between 10 s and kombu's 300 s.
    static func mutexExpireMilliseconds(visibilityTimeout: Double, expire: Double? = nil) -> Int {
        Int((expire ?? min(300, max(10, visibilityTimeout * 5))) * 1000)
    }

    /// redis-py's `Lock.release` script: delete the lock only if it still holds our token.
    static let releaseScript = RedisScript(
        """
        local token = redis.call('get', KEYS[1])
        if not token or token ~= ARGV[1] then
            return 0
        end
        redis.call('del', KEYS[1])
        return 1
        """)

    public func restoreVisible(visibilityTimeout: Double) async throws(CeleryWorkerError) -> VisibilitySweep {
        let token = Self.randomToken()
        let locked = try await commands.send(
            RedisCommand(
                "SET", RedisArgument(mutexKey), RedisArgument(token), "NX", "PX",
                RedisArgument(Self.mutexExpireMilliseconds(visibilityTimeout: visibilityTimeout, expire: transport.unackedMutexExpire))))
        guard locked == .status("OK") else { return VisibilitySweep() }  // another worker is sweeping
        var sweep = VisibilitySweep()
        do {
            let ceiling = WallClock.now() - visibilityTimeout
            // kombu's own command (not Redis 6.2's `ZRANGE … BYSCORE REV`): older servers serve it too.
            var range = RedisCommand("ZREVRANGEBYSCORE", RedisArgument(unackedIndexKey), RedisArgument(ceiling), "0", "WITHSCORES")
            // kombu's `unacked_restore_limit`: at most that many, from the ceiling down, as kombu's ZREVRANGEBYSCORE.
            if let limit = transport.unackedRestoreLimit { range.arguments += [Array("LIMIT".utf8), Array("0".utf8), RedisArgument(limit).bytes] }
            let visible = try await commands.send(range)
            let entries = visible.array ?? []
            for index in stride(from: 0, to: entries.count - 1, by: 2) {
                guard let tag = entries[index].text else { continue }
                if try await restore(tag: tag, atFront: true) {
                    sweep.restored += 1
                } else {
                    sweep.unreadable.append(tag)
                }
            }
        } catch {
            _ = try? await commands.send(
                RedisCommand("EVAL", RedisArgument(Self.releaseScript.source), "1", RedisArgument(mutexKey), RedisArgument(token)))
            throw error
        }
        try await commands.send(RedisCommand("EVAL", RedisArgument(Self.releaseScript.source), "1", RedisArgument(mutexKey), RedisArgument(token)))
        return sweep
    }

    public func keepAlive(_ deliveries: [BrokerDelivery]) async throws(CeleryWorkerError) {
        let tags = deliveries.compactMap(\.deliveryTag)
        guard !tags.isEmpty else { return }
        let now = RedisArgument(WallClock.now())
        // XX: only entries still present; a message restored meanwhile is not brought back.
        let commands = tags.map { RedisCommand("ZADD", RedisArgument(unackedIndexKey), "XX", now, RedisArgument($0)) }
        _ = try await self.commands.pipeline(commands)
    }

    static func randomToken() -> String {
        var generator = SystemRandomNumberGenerator()
        return (0..<16).map { _ in String(UInt8.random(in: 0...255, using: &generator), radix: 16) }.joined()
    }
}
