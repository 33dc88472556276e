/// Async access to one Redis connection, whose blocking hiredis I/O runs on a thread of its own.
///
/// Calls on one client are serialized (one connection, one command stream, one thread that owns the socket). Use
/// separate clients for a blocking pop and for everything else, as kombu does.
public final class RedisClient: Sendable {
    let connection: RedisConnection
    /// The thread that owns the socket: every call runs there, one after another, never on the cooperative pool.
    let lane: WorkerThreads
    /// Whether the lane is shared with other work (the solo and thread pools), see
    /// ``init(url:commandTimeout:sharedLane:)``.
    let sharesLane: Bool

    /// - Parameters:
    ///   - commandTimeout: how long to wait for a reply before the connection is treated as broken.
    ///   - threadName: the name of the connection's thread (in `top -H`, `perf`).
    public init(url: RedisURL, commandTimeout: Duration = .seconds(30), threadName: String = "redis-io") {
        self.connection = RedisConnection(url: url, commandTimeout: commandTimeout)
        self.lane = WorkerThreads(count: 1, name: threadName)
        self.sharesLane = false
    }

    /// A client whose calls run on `sharedLane`, the event loop that also runs the worker's tasks (the solo and
    /// thread pools). ``pipeline(_:)`` and script calls do not block it: they write their request and suspend, and
    /// the lane's event loop reads the reply when the socket is readable, while the thread runs other work. Calls
    /// through ``withConnection(_:)`` (sequences such as `WATCH … EXEC`, all short) still block it.
    init(url: RedisURL, commandTimeout: Duration = .seconds(30), sharedLane: WorkerThreads) {
        precondition(sharedLane.isEventLoop, "a shared lane must be an event-loop WorkerThreads")
        self.connection = RedisConnection(url: url, commandTimeout: commandTimeout)
        self.lane = sharedLane
        self.sharesLane = true
    }

    deinit {
        if !sharesLane { lane.shutdown() }
    }

    /// The server this client talks to.
    public var url: RedisURL { connection.url }

    /// What the connection's connects to a failover list's servers left to report (and forgets it).
    func takeFailovers() -> RedisURL.Failover.Log { connection.takeFailovers() }

    /// Sends the commands in one round trip and returns one reply per command (error replies included).
    ///
    /// A connection that was open but turns out dead (the server restarted since its last use) is replaced and
    /// the commands are sent once more on the new one. Every command this package sends is safe to repeat that way
    /// (idempotent writes, or transactions guarded by `WATCH`), and a dead socket cannot have run them.
    public func pipeline(_ commands: [RedisCommand]) async throws(CeleryWorkerError) -> [RedisReply] {
        if sharesLane { return try await request(commands.map(RedisConnection.resp), replies: commands.count) }
        return try await withConnection { connection throws(CeleryWorkerError) in try connection.execute(commands) }
    }

    /// Sends a request without blocking the lane (on a shared lane only): the calling task suspends until the
    /// lane's event loop has read the replies. As with ``withConnection(_:)``, a connection that was open but
    /// turns out dead when the request is written is replaced and the request written once more; one that breaks
    /// after it was written is not (the request may have run), and the error is thrown.
    func request(_ parts: [[UInt8]], replies: Int) async throws(CeleryWorkerError) -> [RedisReply] {
        let outcome = await withUnsafeContinuation {
            (continuation: UnsafeContinuation<Result<[RedisReply], CeleryWorkerError>, Never>) in
            write(parts, replies: replies, retrying: true) { continuation.resume(returning: $0) }
        }
        return try outcome.get()
    }

    /// Sends a request already in Redis's protocol (together `replies` commands) without waiting for its replies:
    /// `then` gets the first error among them once they are read, or the failure when they could not be written or
    /// the connection closed first. A connection the server has hung up on since its last use is replaced first
    /// (``RedisConnection/closeIfHungUp()``): nobody waits for this request to find out that it was lost.
    ///
    /// On a shared lane the lane's event loop reads the replies. Otherwise the request is written on the calling
    /// thread (the connection's lock keeps it apart from the lane's calls) and the replies are read by the next call
    /// on this client, before its own, or by ``readUnread()``.
    func sendWithoutWaiting(request: [UInt8], replies: Int, then: @escaping @Sendable (_ failure: String?) -> Void) {
        guard sharesLane else {
            connection.closeIfHungUp()
            do throws(CeleryWorkerError) {
                try connection.send([request], replies: replies) { then(RedisConnection.failure(of: $0)) }
            } catch {
                then(RedisConnection.failure(of: .failure(error)))
            }
            return
        }
        write([request], replies: replies, retrying: false, checkingHangUp: true) { result in
            then(RedisConnection.failure(of: result))
        }
    }

    /// Reads the replies to what ``sendWithoutWaiting(request:replies:then:)`` sent that no later call has read yet,
    /// on the lane (not a shared one: there the event loop reads them).
    func readUnread() async {
        try? await withConnection { connection throws(CeleryWorkerError) in try connection.readUnread() }
    }

    /// Writes a request on the lane's thread (at once when called there) and has the event loop watch the
    /// connection for its replies. `handle` runs exactly once: with the replies, or with the failure, also when the
    /// request could not be written.
    private func write(
        _ parts: [[UInt8]], replies: Int, retrying: Bool, checkingHangUp: Bool = false,
        handle: @escaping @Sendable (Result<[RedisReply], CeleryWorkerError>) -> Void
    ) {
        let connection = self.connection
        let lane = self.lane
        let body: @Sendable () -> Void = {
            if checkingHangUp { connection.closeIfHungUp() }
            let wasOpen = connection.isOpen
            do throws(CeleryWorkerError) {
                do throws(CeleryWorkerError) {
                    try connection.send(parts, replies: replies, handle: handle)
                } catch  where retrying && wasOpen && error.code == .connectionLost {
                    try connection.send(parts, replies: replies, handle: handle)
                }
                lane.watch(connection)
            } catch {
                handle(.failure(error))
            }
        }
        if lane.isEventLoopThread { body() } else { lane.submit(body) }
    }

    /// Sends one command; an error reply is thrown.
    @discardableResult
    public func send(_ command: RedisCommand) async throws(CeleryWorkerError) -> RedisReply {
        let replies = try await pipeline([command])
        guard let reply = replies.first else {
            throw CeleryWorkerError(code: .unexpectedReply, message: "no reply to \(command.name)")
        }
        return try reply.check(command.name)
    }

    /// Runs the commands inside `MULTI … EXEC` in one round trip and returns the replies of the commands.
    @discardableResult
    public func transaction(_ commands: [RedisCommand]) async throws(CeleryWorkerError) -> [RedisReply] {
        let replies = try await pipeline([RedisCommand("MULTI")] + commands + [RedisCommand("EXEC")])
        try replies.first?.check("MULTI")
        for (reply, command) in zip(replies.dropFirst().dropLast(), commands) {
            try reply.check("queueing \(command.name) in MULTI")
        }
        guard let exec = replies.last else {
            throw CeleryWorkerError(code: .unexpectedReply, message: "no reply to EXEC")
        }
        try exec.check("EXEC")
        guard let results = exec.array else {
            throw CeleryWorkerError(code: .unexpectedReply, message: "EXEC aborted (a watched key changed)")
        }
        return results
    }

    /// Runs `body` with the connection on the client's thread, for a sequence of commands that must follow each
    /// other with nothing in between (no thread hop, no other caller). Like ``pipeline(_:)``, a connection found dead
    /// on first use is replaced and `body` runs again, so `body` must be safe to repeat; not with `retrying` off
    /// (the consumer's fetches, which report a lost connection as kombu's consumer does: logged, and given up on
    /// when `broker_connection_retry` is off).
    func withConnection<Result: Sendable>(
        retrying: Bool = true, _ body: @escaping @Sendable (RedisConnection) throws(CeleryWorkerError) -> Result
    ) async throws(CeleryWorkerError) -> Result {
        let connection = self.connection
        // Runs even when the calling task is cancelled: a cold shutdown still needs Redis to give reserved messages
        // back. Every call is bounded by the socket timeouts. The lane is one thread that runs one body at a time to
        // its end, so no other caller's commands land in the middle of a sequence (between `WATCH` and `EXEC`).
        return try await lane.run { () throws(CeleryWorkerError) -> Result in
            retrying ? try Self.once(connection, body) : try body(connection)
        }
    }

    /// Runs `body` on the client's thread without waiting for it: after every call queued before it, before any
    /// queued after it. `body` gets `execute`, which sends commands in one round trip and returns their replies, as
    /// ``pipeline(_:)`` does on a lane of its own (a connection found dead on first use is replaced and the commands
    /// sent once more). On a shared lane, `body` blocks the event loop while it waits for replies.
    func submit(_ body: @escaping @Sendable (_ execute: ([RedisCommand]) throws(CeleryWorkerError) -> [RedisReply]) -> Void) {
        let connection = self.connection
        lane.submit {
            body { commands throws(CeleryWorkerError) in
                try Self.once(connection) { connection throws(CeleryWorkerError) in try connection.execute(commands) }
            }
        }
    }

    /// Runs `body` with the connection on the calling thread; a connection that was open but turns out dead is
    /// replaced and `body` runs once more (see ``pipeline(_:)``).
    private static func once<Result>(
        _ connection: RedisConnection, _ body: (RedisConnection) throws(CeleryWorkerError) -> Result
    ) throws(CeleryWorkerError) -> Result {
        let wasOpen = connection.isOpen
        do {
            return try body(connection)
        } catch {
            guard wasOpen, error.code == .connectionLost else { throw error }
            return try body(connection)
        }
    }

    /// Runs a Lua script as ``evaluate(_:keys:arguments:)`` does, its keys and then its other arguments written in
    /// Redis's protocol by `arguments`: the first `keyCount` are the keys. `arguments` runs on the lane's thread,
    /// where the write happens, not on the caller's. On a shared lane it does not block the lane (see
    /// ``request(_:replies:)``).
    func evaluate(
        _ script: RedisScript, keyCount: Int, arguments makeArguments: @escaping @Sendable () -> RESPArguments
    ) async throws(CeleryWorkerError) -> RedisReply {
        try await evaluate(script, keyCount: keyCount, after: nil, then: [], arguments: makeArguments).script
    }

    /// Runs a Lua script as ``evaluate(_:keyCount:arguments:)`` does, and the commands `then` right after it in the
    /// same round trip (again after the script's `EVAL`, when Redis did not know the script): the script's reply
    /// (an error thrown), and theirs (errors returned).
    ///
    /// With `blocking`, that command goes first, in the same write (see
    /// ``RedisConnection/evaluate(_:keyCount:arguments:after:watching:then:)``): `watching` is served while it
    /// blocks, by the lane's event loop on a shared lane (told to watch it here), or else by the connection's thread
    /// as it waits. With `retrying` off, a connection found dead is not replaced for another
    /// try on a lane of its own (``withConnection(retrying:_:)``), as on a shared lane once the request is written.
    func evaluate(
        _ script: RedisScript, keyCount: Int, after blocking: RedisCommand?, watching source: (any PolledSource)? = nil,
        then commands: [RedisCommand], retrying: Bool = true, arguments makeArguments: @escaping @Sendable () -> RESPArguments
    ) async throws(CeleryWorkerError) -> (blocking: RedisReply?, script: RedisReply, then: [RedisReply]) {
        guard sharesLane else {
            return try await withConnection(retrying: retrying) { connection throws(CeleryWorkerError) in
                try connection.evaluate(
                    script, keyCount: keyCount, arguments: makeArguments(), after: blocking, watching: source, then: commands)
            }
        }
        let arguments = makeArguments()
        let following = commands.map(RedisConnection.resp)
        // The script, its arguments and whatever follows, as one list of parts (one array: this is every batch's path).
        func parts(_ head: [UInt8], after first: [UInt8]?) -> [[UInt8]] {
            var parts = first.map { [$0, head, arguments.bytes] } ?? [head, arguments.bytes]
            if !following.isEmpty { parts.append(contentsOf: following) }
            return parts
        }
        if let source {
            let lane = self.lane
            if lane.isEventLoopThread { lane.watch(source) } else { lane.submit { lane.watch(source) } }
        }
        let evalsha = RedisConnection.scriptHead("EVALSHA", script.digest, keyCount: keyCount, arguments: arguments)
        let first = blocking.map(RedisConnection.resp)
        var replies = try await request(parts(evalsha, after: first), replies: (first == nil ? 1 : 2) + commands.count)
        let blocked = first == nil || replies.isEmpty ? nil : replies.removeFirst()
        if case .error(let message)? = replies.first, message.hasPrefix("NOSCRIPT") {
            let eval = RedisConnection.scriptHead("EVAL", script.source, keyCount: keyCount, arguments: arguments)
            replies = try await request(parts(eval, after: nil), replies: 1 + commands.count)
        }
        guard let reply = replies.first else { throw CeleryWorkerError(code: .unexpectedReply, message: "no reply to EVALSHA") }
        return (blocked, try reply.check("EVALSHA"), Array(replies.dropFirst()))
    }

    /// Runs a Lua script by its SHA1 (`EVALSHA`), loading it with `EVAL` the first time or after a server restart.
    public func evaluate(_ script: RedisScript, keys: [RedisArgument], arguments: [RedisArgument]) async throws(CeleryWorkerError) -> RedisReply {
        try await withConnection { connection throws(CeleryWorkerError) in
            try connection.evaluate(script, keys: keys, arguments: arguments)
        }
    }

    /// Why this Redis will not serve the worker as its URL configures it, asked once at start.
    public enum Refusal: Sendable, Equatable {
        /// It refuses the connection itself: its setup (`AUTH`, `SELECT`) or the client's credentials were answered
        /// with an error (a wrong password, a database it does not have, a password it asks for and was not given).
        case connection(String)
        /// It will not run the worker's Lua scripts, with which it fetches, acknowledges and stores: an ACL that
        /// leaves out `EVAL` or `EVALSHA` (`NOPERM`), or a server that renamed them away (`ERR unknown command`).
        case scripts(String)
    }

    /// Why this Redis will not serve the worker (``Refusal``), from the replies to a script run by `EVAL` and by
    /// `EVALSHA`. `nil` when both run, or when Redis cannot be asked now (the worker's usual retries report that).
    public func refusal() async -> Refusal? {
        let probe = RedisScript("return 1")
        let commands = [RedisCommand("EVAL", RedisArgument(probe.source), "0"), RedisCommand("EVALSHA", RedisArgument(probe.digest), "0")]
        let replies: [RedisReply]
        do {
            replies = try await pipeline(commands)
        } catch {
            guard let refused = error.underlyingError as? RedisSetupRefused, RedisReply.refusesClient(refused.reply) else { return nil }
            return .connection(error.message)
        }
        for (command, reply) in zip(commands, replies) {
            guard case .error(let message) = reply else { continue }
            let said = "\(String(decoding: command.arguments[0], as: UTF8.self)): \(message)"
            if RedisReply.refusesCredentials(message) { return .connection(said) }
            if RedisReply.refuses(message) { return .scripts(said) }
        }
        return nil
    }

    /// Closes the connection; the next call opens a new one.
    public func close() {
        connection.close()
    }
}
