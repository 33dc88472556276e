import CHiredis
import COpenSSL
import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// One blocking hiredis connection, opened lazily and re-opened after a failure.
///
/// Every call blocks its thread: callers run them on the connection's own thread (see ``RedisClient``), never on
/// the cooperative pool. The exception is ``send(_:replies:handle:)``, which writes a request and returns: its
/// replies are read by ``pump()`` when the thread's event loop finds the socket readable (the solo and thread
/// pools), or by the next blocking call, which reads earlier replies first.
///
/// `@unchecked Sendable` is sound because the only mutable state, the hiredis context and the replies awaited on
/// it, is touched only inside `state.withLock`, so at most one thread uses the (not thread-safe) context at any time.
final class RedisConnection: @unchecked Sendable {
    private struct State {
        var context: Link?
        /// The server of the URL's failover list that `context` is connected to.
        var failoverIndex: Int?
        /// Commands queued by ``appendUnread(_:then:)`` or sent by ``send(_:replies:handle:)`` whose replies are
        /// still to be read, in the order queued.
        var unread: [Unread] = []
        /// The replies read so far of the first of `unread` (``pump()`` may read part of a request's replies).
        var partial: [RedisReply] = []
        /// How many of everything ever queued are done with: their replies read, or the connection closed without them.
        var unreadDone = 0
        /// Since when a reply sent by ``send(_:replies:handle:)`` is awaited (or the last reply came); `nil`: none is.
        var awaitedSince: ContinuousClock.Instant?
        /// When a request last went out (``connectedContext(_:)``), for ``idleCheck``.
        var lastUsed: ContinuousClock.Instant?
        /// Whether a request checks a connection unused for ``idleCheck`` (``stopCheckingWhileIdle()``).
        var checksWhileIdle = true
        /// How many times the connection was opened (its setup done): a change means a new connection, on which any
        /// state a client set up on the old one (`CLIENT TRACKING`) is gone.
        var opened = 0

        /// Adds a reply to `partial`, the first of `count` (then with room for them all: grown one by one, the four
        /// replies of a message's record took three allocations).
        mutating func keep(_ reply: RedisReply, of count: Int) {
            if partial.isEmpty { partial.reserveCapacity(count) }
            partial.append(reply)
        }
    }

    /// An open connection: hiredis's context, and the TLS session on its socket when the URL asks for TLS, through
    /// which every byte then goes (hiredis 0.14 has no TLS of its own).
    private struct Link {
        let raw: UnsafeMutablePointer<redisContext>
        var session: OpaquePointer? = nil

        /// Writes what hiredis's output buffer holds, as `redisBufferWrite` does; `done` is 1 once it is empty.
        func write(_ done: inout Int32) -> Int32 {
            guard let session else { return redisBufferWrite(raw, &done) }
            guard raw.pointee.err == 0 else { return REDIS_ERR }
            let length = chiredis_output_length(raw)
            if length > 0 {
                let written = TLSContext.withErrorText { error, size in copenssl_write(session, raw.pointee.obuf, length, error, size) }
                guard written.result > 0 else {
                    fail(written.result, written.error)
                    return REDIS_ERR
                }
                chiredis_output_consume(raw, Int(written.result))
            }
            done = chiredis_output_length(raw) == 0 ? 1 : 0
            return REDIS_OK
        }

        /// Reads from the socket into hiredis's reader, as `redisBufferRead` does: one TLS record, and whatever
        /// OpenSSL then still holds decrypted, so that a `poll` on the socket tells whether more can be read. A record
        /// without data (a TLS 1.3 session ticket) reads nothing and is not an error.
        func read() -> Int32 {
            guard let session else { return redisBufferRead(raw) }
            guard raw.pointee.err == 0 else { return REDIS_ERR }
            return withUnsafeTemporaryAllocation(of: CChar.self, capacity: 16 * 1024) { buffer in
                guard let bytes = buffer.baseAddress else { return REDIS_ERR }
                repeat {
                    let read = TLSContext.withErrorText { error, size in copenssl_read(session, bytes, buffer.count, error, size) }
                    if read.result == COPENSSL_AGAIN { return REDIS_OK }
                    guard read.result > 0 else {
                        fail(read.result, read.error)
                        return REDIS_ERR
                    }
                    guard redisReaderFeed(raw.pointee.reader, bytes, Int(read.result)) == REDIS_OK else {
                        let problem = withUnsafeBytes(of: raw.pointee.reader.pointee.errstr) { text in
                            String(decoding: text.prefix { $0 != 0 }, as: UTF8.self)
                        }
                        chiredis_set_error(raw, REDIS_ERR_PROTOCOL, problem)
                        return REDIS_ERR
                    }
                } while copenssl_pending(session) > 0
                return REDIS_OK
            }
        }

        /// Marks the context failed as hiredis would for what COpenSSL's `code` says (a timeout leaves errno EAGAIN,
        /// which ``RedisConnection/error(from:code:doing:)`` reads).
        private func fail(_ code: Int, _ text: String) {
            switch code {
            case COPENSSL_TIMEOUT:
                chiredis_set_error(raw, REDIS_ERR_IO, "Resource temporarily unavailable")
                errno = EAGAIN
            case COPENSSL_CLOSED: chiredis_set_error(raw, REDIS_ERR_EOF, "Server closed the connection")
            default: chiredis_set_error(raw, REDIS_ERR_IO, text.isEmpty ? "TLS failure" : text)
            }
        }

        /// Ends the TLS session (without waiting for the server's answer) and closes the connection.
        func free() {
            if let session { copenssl_session_free(session) }
            redisFree(raw)
        }
    }

    /// Commands whose replies are read later, and what gets them: the replies, or the failure that closed the
    /// connection before they came.
    private struct Unread {
        let replies: Int
        let handle: @Sendable (Result<[RedisReply], CeleryWorkerError>) -> Void
    }

    let url: RedisURL
    /// With a failover list: the connects that failed, for the consumer's log (``takeFailovers()``).
    private let failoverLog = Mutex(RedisURL.Failover.Log())
    /// Socket read/write timeout for replies; a blocking pop's own timeout must be shorter.
    let commandTimeout: Duration
    let connectTimeout: Duration
    private let state = Mutex(State())

    /// How long connecting may take, unless a caller says otherwise.
    static let defaultConnectTimeout: Duration = .seconds(5)

    init(url: RedisURL, commandTimeout: Duration = .seconds(30), connectTimeout: Duration = defaultConnectTimeout) {
        self.url = url
        self.commandTimeout = commandTimeout
        self.connectTimeout = url.connectTimeout.map { .milliseconds(Int64(($0 * 1000).rounded())) } ?? connectTimeout
    }

    deinit {
        state.withLock { state in
            state.context?.free()
            state.context = nil
        }
    }

    /// Sends the commands in one write and reads one reply for each (pipelining). Error replies are returned as
    /// ``RedisReply/error(_:)``; only connection problems throw, after which the connection is closed and the next
    /// call opens a new one.
    func execute(_ commands: [RedisCommand]) throws(CeleryWorkerError) -> [RedisReply] {
        try state.withLock { (state: inout State) throws(CeleryWorkerError) -> [RedisReply] in
            let context = try connectedContext(&state)
            for command in commands {
                let status = Self.append(command, to: context)
                if status != REDIS_OK {
                    let error = Self.error(from: context, code: .connectionLost, doing: command.name)
                    Self.close(&state)
                    throw error
                }
            }
            // The replies to commands sent earlier come first; they are read as these go out, in one round trip.
            try Self.readUnread(&state, context)
            var replies: [RedisReply] = []
            replies.reserveCapacity(commands.count)
            for command in commands {
                guard let reply = Self.awaitReply(context) else {
                    let error = Self.error(from: context, code: .connectionLost, doing: command.name)
                    Self.close(&state)
                    throw error
                }
                replies.append(reply)
            }
            return replies
        }
    }

    /// Queues the commands without writing them or waiting for their replies: they go out in one write with the
    /// next call's commands on this connection (or with ``readUnread(through:)``), which reads (and discards) their
    /// replies before its own. `then` runs once they are read, with the first error among them (an error reply, or one
    /// inside `EXEC`'s), or once the connection is closed without them, with a failure that says so; when this throws,
    /// the commands were not queued and `then` never runs. Returns their place in the order queued, for
    /// ``readUnread(through:)``.
    func appendUnread(
        _ commands: [RedisCommand], then: @escaping @Sendable (_ failure: String?) -> Void
    ) throws(CeleryWorkerError) -> Int {
        try appendUnread(request: commands.flatMap(Self.resp), replies: commands.count, then: then)
    }

    /// ``appendUnread(_:then:)`` of a request already in Redis's protocol, together `replies` commands.
    func appendUnread(
        request: [UInt8], replies: Int, then: @escaping @Sendable (_ failure: String?) -> Void
    ) throws(CeleryWorkerError) -> Int {
        try state.withLock { (state: inout State) throws(CeleryWorkerError) -> Int in
            let context = try connectedContext(&state)
            guard Self.append(request, to: context) == REDIS_OK else {
                let error = Self.error(from: context, code: .connectionLost, doing: "queueing a request")
                Self.close(&state)
                throw error
            }
            state.unread.append(Unread(replies: replies) { then(Self.failure(of: $0)) })
            return state.unreadDone + state.unread.count
        }
    }

    /// Writes a request (`parts`, already in Redis's protocol, together `replies` commands) and returns without
    /// waiting: `handle` gets the replies (error replies included) once they are read, by ``pump()`` or by the next
    /// blocking call on this connection, or the failure if the connection closes first. When this throws, nothing
    /// was sent and `handle` never runs.
    func send(
        _ parts: [[UInt8]], replies: Int, handle: @escaping @Sendable (Result<[RedisReply], CeleryWorkerError>) -> Void
    ) throws(CeleryWorkerError) {
        try state.withLock { (state: inout State) throws(CeleryWorkerError) -> Void in
            let context = try connectedContext(&state)
            for part in parts {
                guard Self.append(part, to: context) == REDIS_OK else {
                    let error = Self.error(from: context, code: .connectionLost, doing: "sending a request")
                    Self.close(&state)
                    throw error
                }
            }
            var written: Int32 = 0
            repeat {
                guard context.write(&written) == REDIS_OK else {
                    let error = Self.error(from: context, code: .connectionLost, doing: "sending a request")
                    Self.close(&state)
                    throw error
                }
            } while written == 0
            state.unread.append(Unread(replies: replies, handle: handle))
            if state.awaitedSince == nil { state.awaitedSince = .now }
        }
    }

    /// Writes what ``appendUnread(_:then:)`` queued and reads the replies to it (they are discarded), unless the
    /// commands queued in place `place` are done with already: then it does nothing, and what was queued since waits
    /// for the next call's commands.
    func readUnread(through place: Int = .max) throws(CeleryWorkerError) {
        try state.withLock { (state: inout State) throws(CeleryWorkerError) -> Void in
            guard let context = state.context, state.unreadDone < place else { return }
            try Self.readUnread(&state, context)
        }
    }

    /// The failure given for queued commands whose replies never came.
    static let unanswered = "the connection closed before Redis answered"

    /// What went wrong with commands whose replies are `result`: the first error reply, or that no reply came.
    static func failure(of result: Result<[RedisReply], CeleryWorkerError>) -> String? {
        switch result {
        case .success(let replies): replies.lazy.compactMap { Self.firstError(in: $0) }.first
        case .failure: Self.unanswered
        }
    }

    /// The first error reply in `reply`, or among the elements of an array reply (`EXEC`'s).
    private static func firstError(in reply: RedisReply) -> String? {
        switch reply {
        case .error(let message): message
        case .array(let elements): elements.lazy.compactMap { element in Self.firstError(in: element) }.first
        default: nil
        }
    }

    private static func readUnread(_ state: inout State, _ context: Link) throws(CeleryWorkerError) {
        while let first = state.unread.first {
            while state.partial.count < first.replies {
                guard let reply = awaitReply(context) else {
                    let error = Self.error(from: context, code: .connectionLost, doing: "reading replies")
                    close(&state, failure: error)
                    throw error
                }
                state.keep(reply, of: first.replies)
            }
            complete(&state)
        }
        state.awaitedSince = nil
    }

    /// Hands the first of `unread` its replies (all in `partial`).
    private static func complete(_ state: inout State) {
        let sent = state.unread.removeFirst()
        let replies = state.partial
        state.partial = []
        state.unreadDone += 1
        sent.handle(.success(replies))
    }

    /// Runs a Lua script by its SHA1 (`EVALSHA`), loading it with `EVAL` the first time or after a server restart.
    /// An error reply is thrown.
    func evaluate(_ script: RedisScript, keys: [RedisArgument], arguments: [RedisArgument]) throws(CeleryWorkerError) -> RedisReply {
        let all = keys + arguments
        var written = RESPArguments(capacity: all.reduce(64) { $0 + 16 + $1.bytes.count })
        for argument in all { written.append(argument.bytes) }
        return try evaluate(script, keyCount: keys.count, arguments: written)
    }

    /// Runs a Lua script as ``evaluate(_:keys:arguments:)`` does, its keys and then its other arguments already
    /// written in Redis's protocol: the first `keyCount` of `arguments` are the keys.
    func evaluate(_ script: RedisScript, keyCount: Int, arguments: RESPArguments) throws(CeleryWorkerError) -> RedisReply {
        try evaluate(script, keyCount: keyCount, arguments: arguments, after: nil, then: []).script
    }

    /// Runs a Lua script as ``evaluate(_:keyCount:arguments:)`` does, and the commands `then` right after it in the
    /// same round trip (sent again after the script's `EVAL` when Redis did not know the script): the script's reply
    /// (an error thrown), and theirs (errors returned).
    ///
    /// With `blocking`, that command goes first, in the same write: Redis runs the script (and `then`) as soon as it
    /// returns. While it blocks, the thread also serves `watching` (its ``PolledSource/pump()`` when its descriptor
    /// is readable, its ``PolledSource/expire()`` at its deadline), which may unblock it. `blocking`'s reply is
    /// returned, and is not sent again when the script has to be sent again as `EVAL`.
    func evaluate(
        _ script: RedisScript, keyCount: Int, arguments: RESPArguments, after blocking: RedisCommand?,
        watching source: (any PolledSource)? = nil, then commands: [RedisCommand]
    ) throws(CeleryWorkerError) -> (blocking: RedisReply?, script: RedisReply, then: [RedisReply]) {
        let following = commands.map(Self.resp)
        let evalsha = Self.scriptHead("EVALSHA", script.digest, keyCount: keyCount, arguments: arguments)
        var replies = try execute(
            head: evalsha, body: arguments.bytes, name: "EVALSHA", then: following, after: blocking.map(Self.resp), watching: source)
        let blocked = blocking == nil || replies.isEmpty ? nil : replies.removeFirst()
        if case .error(let message)? = replies.first, message.hasPrefix("NOSCRIPT") {
            let eval = Self.scriptHead("EVAL", script.source, keyCount: keyCount, arguments: arguments)
            replies = try execute(head: eval, body: arguments.bytes, name: "EVAL", then: following)
        }
        guard let reply = replies.first else { throw CeleryWorkerError(code: .unexpectedReply, message: "no reply to EVALSHA") }
        return (blocked, try reply.check("EVALSHA"), Array(replies.dropFirst()))
    }

    /// The start of an `EVALSHA` or `EVAL` command (`name`) whose keys and other arguments, `arguments`, follow:
    /// the argument count, the name, the digest or source, and the key count.
    static func scriptHead(_ name: String, _ script: String, keyCount: Int, arguments: RESPArguments) -> [UInt8] {
        var head: [UInt8] = []
        head.reserveCapacity(64 + script.utf8.count)
        RESPArguments.writeLine(UInt8(ascii: "*"), 3 + arguments.count, into: &head)
        RESPArguments.writeArgument(name, into: &head)
        RESPArguments.writeArgument(script, into: &head)
        RESPArguments.writeArgument(String(keyCount), into: &head)
        return head
    }

    /// Sends one command already written in Redis's protocol, `head` then `body`, and the commands `then` (written
    /// too) after it, and reads their replies (error replies are returned, as by ``execute(_:)``).
    /// With `blocking`, that command goes first, and its reply is awaited while `source` is served (see
    /// ``evaluate(_:keyCount:arguments:after:watching:then:)``); it is the first of the replies returned.
    private func execute(
        head: [UInt8], body: [UInt8], name: String, then following: [[UInt8]], after blocking: [UInt8]? = nil,
        watching source: (any PolledSource)? = nil
    ) throws(CeleryWorkerError) -> [RedisReply] {
        try state.withLock { (state: inout State) throws(CeleryWorkerError) -> [RedisReply] in
            let context = try connectedContext(&state)
            // Two appends make one command: hiredis only adds the bytes to its output buffer.
            guard blocking.map({ Self.append($0, to: context) == REDIS_OK }) ?? true,
                Self.append(head, to: context) == REDIS_OK, Self.append(body, to: context) == REDIS_OK,
                following.allSatisfy({ Self.append($0, to: context) == REDIS_OK })
            else {
                let error = Self.error(from: context, code: .connectionLost, doing: name)
                Self.close(&state)
                throw error
            }
            try Self.readUnread(&state, context)
            var replies: [RedisReply] = []
            replies.reserveCapacity(2 + following.count)
            if blocking != nil {
                guard let reply = Self.awaitReply(context, serving: source, within: commandTimeout) else {
                    let error = Self.error(from: context, code: .connectionLost, doing: name)
                    Self.close(&state)
                    throw error
                }
                replies.append(reply)
            }
            for _ in 0...following.count {
                guard let reply = Self.awaitReply(context) else {
                    let error = Self.error(from: context, code: .connectionLost, doing: name)
                    Self.close(&state)
                    throw error
                }
                replies.append(reply)
            }
            return replies
        }
    }

    /// Subscribes to a channel pattern (`PSUBSCRIBE`), or to one channel with `exact` (`SUBSCRIBE`), and hands
    /// every message's data, with the pattern it matched (`nil` for `exact`), to `onMessage` until `shouldStop`
    /// returns true (checked after each message and at least every `pollInterval`). `onSubscribed` runs once the
    /// server confirmed the subscription. Returns normally when stopped; throws when the connection breaks.
    func subscribe(
        pattern: String, alsoPatterns: [String] = [], exact: Bool = false, pollInterval: Duration = .milliseconds(500),
        shouldStop: () -> Bool, onSubscribed: () -> Void = {}, onMessage: (_ data: [UInt8], _ pattern: [UInt8]?) -> Void
    ) throws(CeleryWorkerError) {
        try state.withLock { (state: inout State) throws(CeleryWorkerError) -> Void in
            let context = try connectedContext(&state)
            var failure: CeleryWorkerError?
            func fail(_ action: String) {
                failure = Self.error(from: context, code: .connectionLost, doing: action)
                Self.close(&state)
            }
            let command = exact ? "SUBSCRIBE" : "PSUBSCRIBE"
            // The confirmations of any further patterns come as the first messages, which are not `pmessage`s.
            let subscription = RedisCommand(command, arguments: ([pattern] + alsoPatterns).map { RedisArgument($0) })
            // Flush the command: with nothing buffered to read, this writes and then blocks for the reply. Refused (an
            // ACL without the channel, say): not subscribed, and no message would ever come.
            try Self.setUp(subscription, on: context, &state, code: .connectionLost, doing: command) {
                CeleryWorkerError(code: .redisError, message: "\(command) \(pattern) refused: \($0)")
            }
            onSubscribed()
            let (seconds, attoseconds) = pollInterval.components
            let timeoutMilliseconds = Int32(seconds * 1000 + attoseconds / 1_000_000_000_000_000)
            while !shouldStop() {
                let buffered = Self.bufferedReply(context)
                if case .failed = buffered {
                    fail("reading a pub/sub message")
                    break
                }
                if case .reply(let reply) = buffered {
                    if case .array(let parts) = reply, let kind = parts.first?.text,
                        kind == "pmessage" || kind == "message", let data = parts.last?.bytes
                    {
                        onMessage(data, kind == "pmessage" && parts.count == 4 ? parts[1].bytes : nil)
                    }
                    continue
                }
                var descriptor = pollfd(fd: context.raw.pointee.fd, events: Int16(POLLIN), revents: 0)
                let ready = poll(&descriptor, 1, timeoutMilliseconds)
                if ready < 0, errno != EINTR {
                    fail("waiting for pub/sub messages")
                    break
                }
                if ready > 0, context.read() != REDIS_OK {
                    fail("reading pub/sub messages")
                    break
                }
            }
            if failure == nil {
                // Leave the connection clean for the next subscriber: it is in subscribe mode now.
                Self.close(&state)
            }
            if let failure { throw failure }
        }
    }

    /// Subscribes to `channel` and returns once the server confirmed it, leaving the connection to listen: read
    /// it with ``heard(waiting:)`` alone from then on (until ``close()``).
    func listen(to channel: String) throws(CeleryWorkerError) {
        try state.withLock { (state: inout State) throws(CeleryWorkerError) -> Void in
            let context = try connectedContext(&state)
            let subscribe = RedisCommand("SUBSCRIBE", RedisArgument(channel))
            try Self.setUp(subscribe, on: context, &state, code: .connectionLost, doing: "SUBSCRIBE \(channel)") {
                CeleryWorkerError(code: .redisError, message: "SUBSCRIBE \(channel) refused: \($0)")
            }
        }
    }

    /// Sends `command` on the connection being set up (`context`) and reads its reply. When that fails (an error of
    /// `code`, saying what it was `doing`), or the reply is an error that it does not `accept` (`refused` makes the
    /// error thrown of its message), the connection is closed.
    private static func setUp(
        _ command: RedisCommand, on context: Link, _ state: inout State, code: CeleryWorkerError.Code, doing action: String,
        accepting accept: (String) -> Bool = { _ in false }, refused: (String) -> CeleryWorkerError
    ) throws(CeleryWorkerError) {
        guard append(command, to: context) == REDIS_OK, let reply = awaitReply(context) else {
            let error = error(from: context, code: code, doing: action)
            close(&state)
            throw error
        }
        if case .error(let message) = reply, !accept(message) {
            close(&state)
            throw refused(message)
        }
    }

    /// Whether the reply to `AUTH <password>` says that Redis asks for no password (its default user has `nopass`):
    /// Redis 6 and later (`AUTH <password> called without any password configured …`) and Redis 5 (`Client sent
    /// AUTH, but no password is set`). The connection is the default user's all the same. redis-py 8 (Celery 5.7's)
    /// sends `HELLO 3 AUTH default <password>`, which such a server takes, so a Python worker given a password there
    /// serves; so does this one.
    static func asksForNoPassword(_ message: String) -> Bool {
        message.contains("called without any password configured") || message.contains("Client sent AUTH, but no password is set")
    }

    /// How many messages came on a connection that ``listen(to:)``s: those already read, or else the first to come
    /// within `timeout` (with what came with them). Throws, and closes the connection, when it broke.
    func heard(waiting timeout: Duration) throws(CeleryWorkerError) -> Int {
        try heard(readable: false, waiting: timeout)
    }

    /// How many messages came on a connection that ``listen(to:)``s and that `poll(2)` found readable: one read,
    /// which does not block. Throws, and closes the connection, when it broke.
    func heardNow() throws(CeleryWorkerError) -> Int {
        try heard(readable: true, waiting: .zero)
    }

    private func heard(readable: Bool, waiting timeout: Duration) throws(CeleryWorkerError) -> Int {
        try state.withLock { (state: inout State) throws(CeleryWorkerError) -> Int in
            guard let context = state.context else {
                throw CeleryWorkerError(code: .connectionLost, message: "the connection is closed")
            }
            func fail(_ doing: String) -> CeleryWorkerError {
                let error = Self.error(from: context, code: .connectionLost, doing: doing)
                Self.close(&state)
                return error
            }
            let deadline = ContinuousClock.now + timeout
            var read = !readable
            while true {
                if !read {
                    if context.read() != REDIS_OK { throw fail("reading pub/sub messages") }
                    read = true
                }
                var count = 0
                while case .reply = Self.bufferedReply(context) { count += 1 }
                if context.raw.pointee.err != 0 { throw fail("reading a pub/sub message") }
                if count > 0 || readable { return count }
                let (seconds, attoseconds) = max(.zero, deadline - .now).components
                var descriptor = pollfd(fd: context.raw.pointee.fd, events: Int16(POLLIN), revents: 0)
                let ready = poll(&descriptor, 1, Int32(clamping: seconds * 1000 + attoseconds / 1_000_000_000_000_000))
                if ready < 0, errno != EINTR { throw fail("waiting for pub/sub messages") }
                if ready == 0 { return 0 }
                read = ready < 0
            }
        }
    }

    /// The socket's descriptor while the connection is open.
    var descriptor: Int32? { state.withLock { $0.context?.raw.pointee.fd } }

    /// Closes the connection; the next call re-opens it.
    func close() {
        state.withLock { Self.close(&$0) }
    }

    /// Whether a context is open (it may still turn out broken on use).
    var isOpen: Bool { state.withLock { $0.context != nil } }

    /// How many times the connection has been opened; `nil` while it is closed (the next call opens it anew).
    var openedCount: Int? { state.withLock { $0.context == nil ? nil : $0.opened } }

    /// Closes the connection when nothing is awaited on it and the server has hung up on it (it restarted since the
    /// connection's last use), so the next write opens a new one. Without this, a write that is not waited for goes
    /// out on the dead socket (the first write after the server's close succeeds) and is lost. One `poll(2)` that
    /// does not wait.
    func closeIfHungUp() {
        state.withLock { Self.closeIfHungUp(&$0) }
    }

    private static func closeIfHungUp(_ state: inout State) {
        guard let context = state.context, state.unread.isEmpty else { return }
        #if os(Linux)
            let hangUp = Int16(0x2000 | POLLHUP | POLLERR)  // POLLRDHUP (Linux's; Glibc's module leaves it out)
        #else
            let hangUp = Int16(POLLHUP | POLLERR)
        #endif
        var socket = pollfd(fd: context.raw.pointee.fd, events: hangUp, revents: 0)
        guard poll(&socket, 1, 0) == 1, socket.revents & hangUp != 0 else { return }
        Self.close(&state, failure: CeleryWorkerError(code: .connectionLost, message: "the server closed the connection"))
    }

    /// Leaves a close of the connection while it was unused to be found by the next request, which then fails: for the
    /// consumer's fetch connection, whose loss is the consumer's (logged, then its queues declared again as kombu's
    /// consumer does on revival, for a Redis that came back empty), not to be mended without a word.
    func stopCheckingWhileIdle() {
        state.withLock { $0.checksWhileIdle = false }
    }

    /// How long a connection may go unused before a request checks that the server has not closed it. Redis closes a
    /// client idle for its `timeout` (whole seconds, one at the least), so a connection used more often than this
    /// cannot have been closed for that; under load no request pays for the check.
    static let idleCheck: Duration = .milliseconds(500)

    private static func close(
        _ state: inout State,
        failure: CeleryWorkerError = CeleryWorkerError(code: .connectionLost, message: RedisConnection.unanswered)
    ) {
        state.context?.free()
        state.context = nil
        let unread = state.unread
        state.unread.removeAll()
        state.partial.removeAll()
        state.awaitedSince = nil
        state.unreadDone += unread.count
        for sent in unread { sent.handle(.failure(failure)) }
    }

    /// `SIGPIPE` ignored, once, before the first connection opens. hiredis writes with `write(2)`, and a second write
    /// to a connection the server has closed (a Redis restart) raises `SIGPIPE`, whose default action ends the
    /// process without a word; ignored, the write fails with `EPIPE` and the connection is re-opened. Python ignores
    /// `SIGPIPE` at start, so a Python worker or producer behaves the same.
    private static let sigpipeIgnored: Void = {
        _ = signal(SIGPIPE, SIG_IGN)
    }()

    /// What this connection's connects to a failover list's servers left to report (and forgets it).
    func takeFailovers() -> RedisURL.Failover.Log {
        failoverLog.withLock { log in
            defer { log = RedisURL.Failover.Log() }
            return log
        }
    }

    private func connectedContext(_ state: inout State) throws(CeleryWorkerError) -> Link {
        // A connection idle for a while may have been closed by the server meanwhile: for its `timeout`, or in a
        // restart. A request written to it would go out on the dead socket (the first write after the server's close
        // succeeds) and fail as its reply is read, when it can no longer be sent again safely; the connection is
        // replaced before the write instead, as redis-py reconnects a connection its next command finds closed. Not
        // the consumer's fetch connection (``stopCheckingWhileIdle()``), whose close the consumer must hear of.
        let now = ContinuousClock.now
        if state.checksWhileIdle, let lastUsed = state.lastUsed, now - lastUsed >= Self.idleCheck { Self.closeIfHungUp(&state) }
        state.lastUsed = now
        guard let failover = url.failover else {
            if let context = state.context { return context }
            return try connect(to: url, &state)
        }
        if let context = state.context {
            // Another connection of the same URL failed over: this one follows it to that server (as kombu's channels
            // follow their connection), once no reply is awaited here.
            if state.failoverIndex == failover.current.index || !state.unread.isEmpty { return context }
            Self.close(&state)
        }
        // kombu's failover: each server in turn, from the one in use, until one answers.
        var failure: CeleryWorkerError?
        for attempt in 1...failover.alternates.count {
            let server = failover.current
            let target = server.url(from: url)
            do {
                let context = try connect(to: target, &state)
                state.failoverIndex = server.index
                return context
            } catch {
                let failed = RedisURL.Failover.Failure(server: target.brokerDisplay, error: error.message)
                failover.failed(server, failed)
                let retried = attempt < failover.alternates.count
                failoverLog.withLock { log in
                    log.lastFailed = failed.server
                    guard retried else { return }
                    if log.failures.count == 64 { log.failures.removeFirst() }
                    log.failures.append(failed)
                }
                failure = error
            }
        }
        throw failure ?? CeleryWorkerError(code: .connectionFailed, message: "no server to connect to in \(url)")
    }

    /// Opens the connection to `url` (the connection's own, or the server of its failover list in use).
    private func connect(to url: RedisURL, _ state: inout State) throws(CeleryWorkerError) -> Link {
        Self.sigpipeIgnored
        let timeout = Self.timeval(connectTimeout)
        let opened: UnsafeMutablePointer<redisContext>?
        var target = "\(url)"
        var serverHost: String?
        // redis-py's name of the server in its errors (its connection's `_host_error`).
        var address: String
        switch url.endpoint {
        case .tcp(let host, let port):
            opened = redisConnectWithTimeout(host, Int32(port), timeout)
            serverHost = host
            address = "\(host):\(port)"
        case .unixSocket(let path):
            opened = redisConnectUnixWithTimeout(path, timeout)
            address = path
        case .sentinel(let nodes):
            // Asked again at every connection, so a connection lost in a failover reopens to the new master.
            let (host, port) = try Self.master(
                named: url.sentinelMaster, askingEachOf: nodes, as: (url.sentinelUsername, url.sentinelPassword), tls: url.sentinelTLS,
                timeout: timeout)
            opened = redisConnectWithTimeout(host, Int32(port), timeout)
            serverHost = host
            target = "master '\(url.sentinelMaster ?? "")' at \(host):\(port) (from \(url))"
            address = "\(host):\(port)"
        }
        guard let raw = opened else {
            throw CeleryWorkerError(code: .connectionFailed, message: "cannot allocate a Redis context for \(url)")
        }
        if raw.pointee.err != 0 {
            let error = Self.connectError(from: Link(raw: raw), to: address)
            redisFree(raw)
            throw error
        }
        var session: OpaquePointer?
        if let tls = url.tls, let serverHost {
            do {
                // The handshake waits at most the connect timeout for each read.
                redisSetTimeout(raw, timeout)
                session = try TLSContext.shared(for: tls).handshake(socket: raw.pointee.fd, host: serverHost)
            } catch {
                redisFree(raw)
                throw CeleryWorkerError(code: .connectionFailed, message: "connect to \(target): \(error.message)")
            }
        }
        redisSetTimeout(raw, Self.timeval(commandTimeout))
        let context = Link(raw: raw, session: session)
        state.context = context
        var setup: [RedisCommand] = []
        if let auth = Self.authentication((url.username, url.password)) { setup.append(auth) }
        if url.database != 0 { setup.append(RedisCommand("SELECT", RedisArgument(url.database))) }
        if let name = url.clientName { setup.append(RedisCommand("CLIENT", "SETNAME", RedisArgument(name))) }
        for command in setup {
            try Self.setUp(
                command, on: context, &state, code: .connectionFailed, doing: "set up the connection to \(url)",
                accepting: command.name == "AUTH" ? Self.asksForNoPassword : { _ in false }
            ) {
                CeleryWorkerError(
                    code: .connectionFailed, message: "\(command.name) on \(url) failed: \($0)", underlyingError: RedisSetupRefused(reply: $0))
            }
        }
        state.opened += 1
        return context
    }

    /// The master's address, from the first Sentinel that knows it (`SENTINEL get-master-addr-by-name`), as
    /// redis-py's `Sentinel.discover_master` asks them in order.
    private static func master(
        named name: String?, askingEachOf nodes: [RedisURL.SentinelNode], as credentials: (username: String?, password: String?),
        tls: RedisTLS?, timeout: timeval
    ) throws(CeleryWorkerError) -> (host: String, port: Int) {
        guard let name, !name.isEmpty else {
            throw CeleryWorkerError(
                code: .invalidConfiguration,
                message: "a sentinel:// URL needs the master's name: set master_name in broker_transport_options "
                    + "(or result_backend_transport_options)")
        }
        var failures: [String] = []
        for node in nodes {
            guard let raw = redisConnectWithTimeout(node.host, Int32(node.port), timeout) else { continue }
            var context = Link(raw: raw)
            defer { context.free() }
            guard raw.pointee.err == 0 else {
                failures.append("\(node.host):\(node.port): \(Self.error(from: context, code: .connectionFailed, doing: "connect").message)")
                continue
            }
            redisSetTimeout(raw, timeout)
            if let tls {
                do {
                    context.session = try TLSContext.shared(for: tls).handshake(socket: raw.pointee.fd, host: node.host)
                } catch {
                    failures.append("\(node.host):\(node.port): \(error.message)")
                    continue
                }
            }
            /// The node's reply to `command`, or `nil` with the failure recorded (an error reply is one).
            func ask(_ command: RedisCommand, failing prefix: String = "") -> RedisReply? {
                guard append(command, to: context) == REDIS_OK, let reply = awaitReply(context) else {
                    failures.append("\(node.host):\(node.port): no reply to \(command.name)")
                    return nil
                }
                if case .error(let message) = reply {
                    failures.append("\(node.host):\(node.port): \(prefix)\(message)")
                    return nil
                }
                return reply
            }
            if let command = authentication(credentials), ask(command, failing: "AUTH (sentinel_kwargs) failed: ") == nil {
                continue
            }
            let command = RedisCommand("SENTINEL", RedisArgument("get-master-addr-by-name"), RedisArgument(name))
            guard let reply = ask(command) else { continue }
            guard let address = reply.array, address.count == 2, let host = address[0].text, let port = address[1].text.flatMap({ Int($0) })
            else {
                failures.append("\(node.host):\(node.port): does not know a master named '\(name)'")
                continue
            }
            return (host, port)
        }
        throw CeleryWorkerError(
            code: .connectionFailed,
            message: "no Sentinel gave the address of master '\(name)' (\(failures.isEmpty ? "none reachable" : failures.joined(separator: "; ")))")
    }

    /// `AUTH [username] password`, or `nil` without a password.
    private static func authentication(_ credentials: (username: String?, password: String?)) -> RedisCommand? {
        guard let password = credentials.password else { return nil }
        if let username = credentials.username {
            return RedisCommand("AUTH", RedisArgument(username), RedisArgument(password))
        }
        return RedisCommand("AUTH", RedisArgument(password))
    }

    private static func append(_ command: RedisCommand, to context: Link) -> Int32 {
        append(resp(command), to: context)
    }

    /// Adds bytes already in Redis's protocol to hiredis's output buffer (nothing is written yet).
    private static func append(_ request: [UInt8], to context: Link) -> Int32 {
        request.withUnsafeBufferPointer { buffer in
            buffer.withMemoryRebound(to: CChar.self) { text in
                redisAppendFormattedCommand(context.raw, text.baseAddress, text.count)
            }
        }
    }

    /// The command in Redis's protocol (RESP): `*<count>`, then `$<length>` and the bytes of each argument, each
    /// line ending in CRLF; written here in one buffer, the form hiredis itself would build from an argument list.
    static func resp(_ command: RedisCommand) -> [UInt8] {
        func digits(_ number: Int) -> Int {
            var count = 1
            var rest = number / 10
            while rest > 0 {
                count += 1
                rest /= 10
            }
            return count
        }
        let size = command.arguments.reduce(3 + digits(command.arguments.count)) { $0 + 5 + digits($1.count) + $1.count }
        return [UInt8](unsafeUninitializedCapacity: size) { buffer, initialized in
            var position = 0
            func line(_ marker: UInt8, _ number: Int) {
                buffer[position] = marker
                var end = position + digits(number)
                position = end + 1
                var rest = number
                repeat {
                    buffer[end] = UInt8(ascii: "0") + UInt8(rest % 10)
                    rest /= 10
                    end -= 1
                } while rest > 0
                buffer[position] = 0x0D
                buffer[position + 1] = 0x0A
                position += 2
            }
            line(UInt8(ascii: "*"), command.arguments.count)
            for argument in command.arguments {
                line(UInt8(ascii: "$"), argument.count)
                argument.withUnsafeBufferPointer { bytes in
                    _ = UnsafeMutableBufferPointer(rebasing: buffer[position..<position + bytes.count]).initialize(fromContentsOf: bytes)
                }
                position += argument.count
                buffer[position] = 0x0D
                buffer[position + 1] = 0x0A
                position += 2
            }
            initialized = position
        }
    }

    /// The next whole reply in hiredis's read buffer, taken out of it (``RESPReader``).
    private enum Buffered {
        case reply(RedisReply)
        /// No whole reply has come yet.
        case none
        /// The bytes are not Redis's protocol: the context is marked failed, as hiredis's reader marks it.
        case failed
    }

    private static func bufferedReply(_ context: Link) -> Buffered {
        guard let reader = context.raw.pointee.reader, let buffer = reader.pointee.buf else { return .none }
        let (position, length) = (reader.pointee.pos, reader.pointee.len)
        guard position < length else { return .none }
        switch RESPReader.read(UnsafeRawBufferPointer(start: buffer, count: length), at: position) {
        case .incomplete:
            return .none
        case .invalid(let problem):
            fail(context, REDIS_ERR_PROTOCOL, problem)
            return .failed
        case .reply(let reply, let next):
            // What was read is dropped from the buffer as hiredis's reader drops it (so the buffer is not moved for
            // every small reply).
            chiredis_reader_consume(reader, next)
            if case .error(let message) = reply, message.hasPrefix(Self.tooManyClients) {
                // Redis refused the connection as it accepted it (`maxclients`), and closes it: not an answer to the
                // command, but a failed connection, as redis-py takes it (a `ConnectionError`), with redis-py's words.
                fail(context, REDIS_ERR_OTHER, String(Self.tooManyClients.dropFirst(4)))
                return .failed
            }
            if case .error(let message) = reply, message.hasPrefix("READONLY") || message.hasPrefix("UNBLOCKED") {
                // The server turned replica (a failover): the reply is handed on, and the connection's next write or
                // read fails, so it is reopened (through the Sentinels, at the new master), as redis-py's Sentinel
                // connections reconnect on `READONLY`.
                fail(context, REDIS_ERR_OTHER, "the server is a replica now (\(message.prefix(60)))")
            }
            return .reply(reply)
        }
    }

    /// What Redis sends a connection it refuses as it accepts it, at `maxclients`, before it closes it.
    static let tooManyClients = "ERR max number of clients reached"

    /// Marks the context failed, as hiredis does: its error code and message.
    private static func fail(_ context: Link, _ code: Int32, _ problem: String) {
        context.raw.pointee.err = code
        withUnsafeMutableBytes(of: &context.raw.pointee.errstr) { errstr in
            let text = problem.utf8.prefix(errstr.count - 1)
            errstr.copyBytes(from: text)
            errstr[text.count] = 0
        }
    }

    /// The next reply, as `redisGetReply` gets it: one already read, or else the commands queued are written and
    /// the socket read (blocking, within the command timeout) until one has come whole. `nil` when that failed: the
    /// context says why.
    ///
    /// With `source`, the thread serves it meanwhile, as an event loop serves a ``PolledSource``, until it awaits
    /// nothing more: one `poll(2)` waits for both, and gives up on the reply after `timeout`.
    private static func awaitReply(
        _ context: Link, serving source: (any PolledSource)? = nil, within timeout: Duration = .zero
    ) -> RedisReply? {
        switch bufferedReply(context) {
        case .reply(let reply): return reply
        case .failed: return nil
        case .none: break
        }
        var written: Int32 = 0
        repeat {
            guard context.write(&written) == REDIS_OK else { return nil }
        } while written == 0
        var source = source
        let deadline = ContinuousClock.now + timeout
        while true {
            if source != nil, !readable(context, serving: &source, until: deadline) { return nil }
            guard context.read() == REDIS_OK else { return nil }
            switch bufferedReply(context) {
            case .reply(let reply): return reply
            case .failed: return nil
            case .none: continue
            }
        }
    }

    /// Waits until `context`'s socket is readable, serving `source` meanwhile (set to `nil` once it awaits nothing
    /// more, and then returns at once). `false`, with the context failed, when `deadline` passed or the wait failed.
    private static func readable(_ context: Link, serving source: inout (any PolledSource)?, until deadline: ContinuousClock.Instant) -> Bool {
        while let serving = source {
            guard let awaited = serving.awaited() else {
                source = nil
                return true
            }
            var descriptors = [
                pollfd(fd: context.raw.pointee.fd, events: Int16(POLLIN), revents: 0),
                pollfd(fd: awaited.descriptor, events: Int16(POLLIN), revents: 0),
            ]
            let now = ContinuousClock.now
            guard now < deadline else {
                fail(context, REDIS_ERR_IO, "Resource temporarily unavailable")
                errno = EAGAIN
                return false
            }
            let (seconds, attoseconds) = (min(deadline, awaited.deadline) - now).components
            let milliseconds = Int32(clamping: max(0, seconds * 1000 + attoseconds / 1_000_000_000_000_000 + 1))
            if poll(&descriptors, 2, milliseconds) < 0, errno != EINTR {
                fail(context, REDIS_ERR_IO, "waiting for a reply: \(String(cString: strerror(errno)))")
                return false
            }
            if descriptors[0].revents != 0 { return true }
            if descriptors[1].revents != 0 {
                if !serving.pump() { source = nil }
            } else if awaited.deadline <= .now {
                serving.expire()
            }
        }
        return true
    }

    private static func error(
        from context: Link, code: CeleryWorkerError.Code, doing action: String
    ) -> CeleryWorkerError {
        let text = withUnsafeBytes(of: context.raw.pointee.errstr) { raw in
            String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
        }
        let isTimeout = context.raw.pointee.err == REDIS_ERR_IO && (errno == EAGAIN || errno == EWOULDBLOCK)
        return CeleryWorkerError(
            code: isTimeout ? .timeout : code,
            message: "\(action): \(text.isEmpty ? "connection closed" : text)"
        )
    }

    /// A failed connect, worded as redis-py words it (`format_error_message`), so that the lines Celery logs with it
    /// read the same: `Error 111 connecting to 127.0.0.1:6379. Connection refused.`, `Error 2 connecting to
    /// /run/redis.sock. No such file or directory.`, `Error -2 connecting to nohost:6379. Name or service not known.`,
    /// and `Timeout connecting to server`. hiredis gives the system's text alone (`strerror`, or `gai_strerror` for a
    /// name that does not resolve); the number is the one whose text it is.
    private static func connectError(from context: Link, to address: String) -> CeleryWorkerError {
        let text = withUnsafeBytes(of: context.raw.pointee.errstr) { raw in
            String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
        }
        return connectError(text, to: address)
    }

    /// ``connectError(from:to:)`` for hiredis's text of the failure.
    static func connectError(_ given: String, to address: String) -> CeleryWorkerError {
        func systemText(_ pointer: UnsafePointer<CChar>?) -> String? { pointer.map { String(cString: $0) } }
        // hiredis names the call that failed before the system's text for some (`Can't create socket: Too many open
        // files`); redis-py gives the system's text alone.
        let text = given.range(of: ": ", options: .backwards).map { String(given[$0.upperBound...]) } ?? given
        if text == systemText(strerror(ETIMEDOUT)) || text == systemText(strerror(EINPROGRESS)) {
            return CeleryWorkerError(code: .timeout, message: "Timeout connecting to server")
        }
        // EAI_* are negative; Linux's errno values run from 1 to 133 (EHWPOISON), each with a text of its own (for
        // others, glibc's strerror writes into a buffer shared by every thread).
        let number =
            (1...133).first { systemText(strerror(Int32($0))) == text }
            ?? (-20 ... -1).first { systemText(gai_strerror(Int32($0))) == text }
        guard let number, !text.isEmpty else {
            return CeleryWorkerError(
                code: .connectionFailed, message: "Error connecting to \(address). \(given.isEmpty ? "connection closed" : given).")
        }
        return CeleryWorkerError(code: .connectionFailed, message: "Error \(number) connecting to \(address). \(text).")
    }

    private static func timeval(_ duration: Duration) -> timeval {
        let (seconds, attoseconds) = duration.components
        return Glibc.timeval(tv_sec: Int(seconds), tv_usec: Int(attoseconds / 1_000_000_000_000))
    }
}

extension RedisConnection: PolledSource {
    func awaited() -> (descriptor: Int32, deadline: ContinuousClock.Instant)? {
        state.withLock { state in
            guard let context = state.context, let since = state.awaitedSince, !state.unread.isEmpty else { return nil }
            return (context.raw.pointee.fd, since + commandTimeout)
        }
    }

    /// Reads what the socket has (one `read`, which does not block: the event loop found it readable) and hands
    /// every complete request its replies. A read error, or the server closing the connection, closes it and fails
    /// what is awaited.
    func pump() -> Bool {
        state.withLock { state in
            guard let context = state.context, !state.unread.isEmpty else { return false }
            guard context.read() == REDIS_OK else {
                Self.close(&state, failure: Self.error(from: context, code: .connectionLost, doing: "reading replies"))
                return false
            }
            reading: while let first = state.unread.first {
                switch Self.bufferedReply(context) {
                case .reply(let reply):
                    state.keep(reply, of: first.replies)
                    state.awaitedSince = .now
                    if state.partial.count == first.replies { Self.complete(&state) }
                case .none:
                    break reading
                case .failed:
                    Self.close(&state, failure: Self.error(from: context, code: .connectionLost, doing: "reading replies"))
                    return false
                }
            }
            if state.unread.isEmpty { state.awaitedSince = nil }
            return !state.unread.isEmpty
        }
    }

    func expire() {
        state.withLock { state in
            Self.close(
                &state,
                failure: CeleryWorkerError(
                    code: .timeout, message: "no reply from \(url) within \(commandTimeout) (the connection is closed)"))
        }
    }
}
