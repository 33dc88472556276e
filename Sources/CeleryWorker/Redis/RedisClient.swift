/// Async access to one Redis connection, whose blocking hiredis I/O runs on a thread of its own.
///
/// Calls on one client are serialized (one connection, one command stream, one thread that owns the socket). Use
/// separate clients for a blocking pop and for everything else, as kombu does.
public final class RedisClient: Sendable {
    let connection: RedisConnection
    /// The thread that owns the socket: every call runs there, one after another, never on the cooperative pool.
    let lane: WorkerThreads

    /// - Parameters:
    ///   - commandTimeout: how long to wait for a reply before the connection is treated as broken.
    ///   - threadName: the name of the connection's thread (in `top -H`, `perf`).
    public init(url: RedisURL, commandTimeout: Duration = .seconds(30), threadName: String = "redis-io") {
        self.connection = RedisConnection(url: url, commandTimeout: commandTimeout)
        self.lane = WorkerThreads(count: 1, name: threadName)
    }

    deinit {
        lane.shutdown()
    }

    /// The server this client talks to.
    public var url: RedisURL { connection.url }

    /// Sends the commands in one round trip and returns one reply per command (error replies included).
    ///
    /// A connection that was open but turns out dead (the server restarted since its last use) is replaced and
    /// the commands are sent once more on the new one. Every command this package sends is safe to repeat that way
    /// (idempotent writes, or transactions guarded by `WATCH`), and a dead socket cannot have run them.
    public func pipeline(_ commands: [RedisCommand]) async throws(CeleryWorkerError) -> [RedisReply] {
        try await withConnection { connection throws(CeleryWorkerError) in try connection.execute(commands) }
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
        for (reply, command) in zip(replies.dropLast(), [RedisCommand("MULTI")] + commands) {
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
    /// on first use is replaced and `body` runs again, so `body` must be safe to repeat.
    func withConnection<Result: Sendable>(
        _ body: @escaping @Sendable (RedisConnection) throws(CeleryWorkerError) -> Result
    ) async throws(CeleryWorkerError) -> Result {
        let connection = self.connection
        // Runs even when the calling task is cancelled: a cold shutdown still needs Redis to give reserved messages
        // back. Every call is bounded by the socket timeouts. The lane is one thread that runs one body at a time to
        // its end, so no other caller's commands land in the middle of a sequence (between `WATCH` and `EXEC`).
        return try await lane.run { () throws(CeleryWorkerError) -> Result in
            let wasOpen = connection.isOpen
            do throws(CeleryWorkerError) {
                return try body(connection)
            } catch {
                guard wasOpen, error.code == .connectionLost else { throw error }
                return try body(connection)
            }
        }
    }

    /// Runs a Lua script by its SHA1 (`EVALSHA`), loading it with `EVAL` the first time or after a server restart.
    public func evaluate(_ script: RedisScript, keys: [RedisArgument], arguments: [RedisArgument]) async throws(CeleryWorkerError) -> RedisReply {
        try await withConnection { connection throws(CeleryWorkerError) in
            try connection.evaluate(script, keys: keys, arguments: arguments)
        }
    }

    /// Closes the connection; the next call opens a new one.
    public func close() {
        connection.close()
    }
}
