import CHiredis
import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// One blocking hiredis connection, opened lazily and re-opened after a failure.
///
/// Every call blocks its thread: callers run them on the connection's own thread (see ``RedisClient``), never on
/// the cooperative pool. `@unchecked Sendable` is sound because the only mutable state, the hiredis context, is touched only inside
/// `state.withLock`, so at most one thread uses the (not thread-safe) context at any time.
final class RedisConnection: @unchecked Sendable {
    private struct State {
        var context: UnsafeMutablePointer<redisContext>?
        /// Commands queued by ``appendUnread(_:then:)`` whose replies are still to be read, in the order queued.
        var unread: [(replies: Int, then: @Sendable (_ failure: String?) -> Void)] = []
        /// How many of everything ever queued are done with: their replies read, or the connection closed without them.
        var unreadDone = 0
    }

    let url: RedisURL
    /// Socket read/write timeout for replies; a blocking pop's own timeout must be shorter.
    let commandTimeout: Duration
    let connectTimeout: Duration
    private let state = Mutex(State())

    init(url: RedisURL, commandTimeout: Duration = .seconds(30), connectTimeout: Duration = .seconds(5)) {
        self.url = url
        self.commandTimeout = commandTimeout
        self.connectTimeout = connectTimeout
    }

    deinit {
        state.withLock { state in
            if let context = state.context { redisFree(context) }
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
                var raw: UnsafeMutableRawPointer?
                guard redisGetReply(context, &raw) == REDIS_OK, let raw else {
                    let error = Self.error(from: context, code: .connectionLost, doing: command.name)
                    Self.close(&state)
                    throw error
                }
                let reply = raw.assumingMemoryBound(to: redisReply.self)
                replies.append(Self.convert(reply))
                freeReplyObject(raw)
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
        try state.withLock { (state: inout State) throws(CeleryWorkerError) -> Int in
            let context = try connectedContext(&state)
            for command in commands where Self.append(command, to: context) != REDIS_OK {
                let error = Self.error(from: context, code: .connectionLost, doing: command.name)
                Self.close(&state)
                throw error
            }
            state.unread.append((commands.count, then))
            return state.unreadDone + state.unread.count
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

    /// The first error reply in `reply`, or among the elements of an array reply (`EXEC`'s).
    private static func firstError(in reply: RedisReply) -> String? {
        switch reply {
        case .error(let message): message
        case .array(let elements): elements.lazy.compactMap { element in Self.firstError(in: element) }.first
        default: nil
        }
    }

    private static func readUnread(_ state: inout State, _ context: UnsafeMutablePointer<redisContext>) throws(CeleryWorkerError) {
        while !state.unread.isEmpty {
            let sent = state.unread.removeFirst()
            state.unreadDone += 1
            var failure: String?
            defer { sent.then(failure) }
            for _ in 0..<sent.replies {
                var raw: UnsafeMutableRawPointer?
                guard redisGetReply(context, &raw) == REDIS_OK, let raw else {
                    let error = Self.error(from: context, code: .connectionLost, doing: "reading replies")
                    failure = failure ?? Self.unanswered
                    close(&state)
                    throw error
                }
                if failure == nil { failure = Self.firstError(in: convert(raw.assumingMemoryBound(to: redisReply.self))) }
                freeReplyObject(raw)
            }
        }
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
        func head(_ name: String, _ script: String) -> [UInt8] {
            var head: [UInt8] = []
            head.reserveCapacity(64 + script.utf8.count)
            RESPArguments.writeLine(UInt8(ascii: "*"), 3 + arguments.count, into: &head)
            RESPArguments.writeArgument(name, into: &head)
            RESPArguments.writeArgument(script, into: &head)
            RESPArguments.writeArgument(String(keyCount), into: &head)
            return head
        }
        var reply = try execute(head: head("EVALSHA", script.digest), body: arguments.bytes, name: "EVALSHA")
        if case .error(let message) = reply, message.hasPrefix("NOSCRIPT") {
            reply = try execute(head: head("EVAL", script.source), body: arguments.bytes, name: "EVAL")
        }
        return try reply.check("EVALSHA")
    }

    /// Sends one command already written in Redis's protocol, `head` then `body`, and reads its reply (an error reply
    /// is returned, as by ``execute(_:)``).
    private func execute(head: [UInt8], body: [UInt8], name: String) throws(CeleryWorkerError) -> RedisReply {
        try state.withLock { (state: inout State) throws(CeleryWorkerError) -> RedisReply in
            let context = try connectedContext(&state)
            // Two appends make one command: hiredis only adds the bytes to its output buffer.
            func write(_ part: [UInt8]) -> Int32 {
                part.withUnsafeBufferPointer { buffer in
                    buffer.withMemoryRebound(to: CChar.self) { redisAppendFormattedCommand(context, $0.baseAddress, $0.count) }
                }
            }
            guard write(head) == REDIS_OK, write(body) == REDIS_OK else {
                let error = Self.error(from: context, code: .connectionLost, doing: name)
                Self.close(&state)
                throw error
            }
            try Self.readUnread(&state, context)
            var raw: UnsafeMutableRawPointer?
            guard redisGetReply(context, &raw) == REDIS_OK, let raw else {
                let error = Self.error(from: context, code: .connectionLost, doing: name)
                Self.close(&state)
                throw error
            }
            defer { freeReplyObject(raw) }
            return Self.convert(raw.assumingMemoryBound(to: redisReply.self))
        }
    }

    /// Subscribes to a channel pattern (`PSUBSCRIBE`), or to one channel with `exact` (`SUBSCRIBE`), and hands
    /// every message's data to `onMessage` until `shouldStop` returns true (checked after each message and at least
    /// every `pollInterval`). `onSubscribed` runs once the server confirmed the subscription. Returns normally when
    /// stopped; throws when the connection breaks.
    func subscribe(
        pattern: String, exact: Bool = false, pollInterval: Duration = .milliseconds(500), shouldStop: () -> Bool,
        onSubscribed: () -> Void = {}, onMessage: ([UInt8]) -> Void
    ) throws(CeleryWorkerError) {
        try state.withLock { (state: inout State) throws(CeleryWorkerError) -> Void in
            let context = try connectedContext(&state)
            var failure: CeleryWorkerError?
            func fail(_ action: String) {
                failure = Self.error(from: context, code: .connectionLost, doing: action)
                Self.close(&state)
            }
            let command = exact ? "SUBSCRIBE" : "PSUBSCRIBE"
            guard Self.append(RedisCommand(command, RedisArgument(pattern)), to: context) == REDIS_OK else {
                fail(command)
                if let failure { throw failure }
                return
            }
            // Flush the command: with nothing buffered to read, redisGetReply writes and then blocks for the reply.
            var confirmation: UnsafeMutableRawPointer?
            guard redisGetReply(context, &confirmation) == REDIS_OK, let confirmation else {
                fail(command)
                if let failure { throw failure }
                return
            }
            freeReplyObject(confirmation)
            onSubscribed()
            let (seconds, attoseconds) = pollInterval.components
            let timeoutMilliseconds = Int32(seconds * 1000 + attoseconds / 1_000_000_000_000_000)
            while !shouldStop() {
                var raw: UnsafeMutableRawPointer?
                guard redisGetReplyFromReader(context, &raw) == REDIS_OK else {
                    fail("reading a pub/sub message")
                    break
                }
                if let raw {
                    let reply = Self.convert(raw.assumingMemoryBound(to: redisReply.self))
                    freeReplyObject(raw)
                    if case .array(let parts) = reply, let kind = parts.first?.text,
                        kind == "pmessage" || kind == "message", let data = parts.last?.bytes
                    {
                        onMessage(data)
                    }
                    continue
                }
                var descriptor = pollfd(fd: context.pointee.fd, events: Int16(POLLIN), revents: 0)
                let ready = poll(&descriptor, 1, timeoutMilliseconds)
                if ready < 0, errno != EINTR {
                    fail("waiting for pub/sub messages")
                    break
                }
                if ready > 0, redisBufferRead(context) != REDIS_OK {
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

    /// Closes the connection; the next call re-opens it.
    func close() {
        state.withLock { Self.close(&$0) }
    }

    /// Whether a context is open (it may still turn out broken on use).
    var isOpen: Bool { state.withLock { $0.context != nil } }

    private static func close(_ state: inout State) {
        if let context = state.context { redisFree(context) }
        state.context = nil
        let unread = state.unread
        state.unread.removeAll()
        state.unreadDone += unread.count
        for sent in unread { sent.then(Self.unanswered) }
    }

    private func connectedContext(_ state: inout State) throws(CeleryWorkerError) -> UnsafeMutablePointer<redisContext> {
        if let context = state.context { return context }
        let timeout = Self.timeval(connectTimeout)
        let opened: UnsafeMutablePointer<redisContext>?
        switch url.endpoint {
        case .tcp(let host, let port):
            opened = redisConnectWithTimeout(host, Int32(port), timeout)
        case .unixSocket(let path):
            opened = redisConnectUnixWithTimeout(path, timeout)
        }
        guard let context = opened else {
            throw CeleryWorkerError(code: .connectionFailed, message: "cannot allocate a Redis context for \(url)")
        }
        if context.pointee.err != 0 {
            let error = Self.error(from: context, code: .connectionFailed, doing: "connect to \(url)")
            redisFree(context)
            throw error
        }
        redisSetTimeout(context, Self.timeval(commandTimeout))
        state.context = context
        var setup: [RedisCommand] = []
        if let password = url.password {
            if let username = url.username {
                setup.append(RedisCommand("AUTH", RedisArgument(username), RedisArgument(password)))
            } else {
                setup.append(RedisCommand("AUTH", RedisArgument(password)))
            }
        }
        if url.database != 0 { setup.append(RedisCommand("SELECT", RedisArgument(url.database))) }
        for command in setup {
            var raw: UnsafeMutableRawPointer?
            guard Self.append(command, to: context) == REDIS_OK, redisGetReply(context, &raw) == REDIS_OK, let raw
            else {
                let error = Self.error(from: context, code: .connectionFailed, doing: "set up the connection to \(url)")
                Self.close(&state)
                throw error
            }
            let reply = Self.convert(raw.assumingMemoryBound(to: redisReply.self))
            freeReplyObject(raw)
            if case .error(let message) = reply {
                Self.close(&state)
                throw CeleryWorkerError(code: .connectionFailed, message: "\(command.name) on \(url) failed: \(message)")
            }
        }
        return context
    }

    private static func append(_ command: RedisCommand, to context: UnsafeMutablePointer<redisContext>) -> Int32 {
        let request = resp(command)
        return request.withUnsafeBufferPointer { buffer in
            buffer.withMemoryRebound(to: CChar.self) { text in
                redisAppendFormattedCommand(context, text.baseAddress, text.count)
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

    private static func convert(_ reply: UnsafeMutablePointer<redisReply>) -> RedisReply {
        let value = reply.pointee
        switch value.type {
        case REDIS_REPLY_STRING:
            guard let pointer = value.str else { return .string([]) }
            return .string(Array(UnsafeRawBufferPointer(start: pointer, count: Int(value.len))))
        case REDIS_REPLY_STATUS:
            guard let pointer = value.str else { return .status("") }
            return .status(String(decoding: UnsafeRawBufferPointer(start: pointer, count: Int(value.len)), as: UTF8.self))
        case REDIS_REPLY_ERROR:
            guard let pointer = value.str else { return .error("") }
            return .error(String(decoding: UnsafeRawBufferPointer(start: pointer, count: Int(value.len)), as: UTF8.self))
        case REDIS_REPLY_INTEGER:
            return .integer(Int64(value.integer))
        case REDIS_REPLY_ARRAY:
            var elements: [RedisReply] = []
            elements.reserveCapacity(Int(value.elements))
            if let children = value.element {
                for index in 0..<Int(value.elements) {
                    if let child = children[index] { elements.append(convert(child)) } else { elements.append(.null) }
                }
            }
            return .array(elements)
        default:
            return .null
        }
    }

    private static func error(
        from context: UnsafeMutablePointer<redisContext>, code: CeleryWorkerError.Code, doing action: String
    ) -> CeleryWorkerError {
        let text = withUnsafeBytes(of: context.pointee.errstr) { raw in
            String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
        }
        let isTimeout = context.pointee.err == REDIS_ERR_IO && (errno == EAGAIN || errno == EWOULDBLOCK)
        return CeleryWorkerError(
            code: isTimeout ? .timeout : code,
            message: "\(action): \(text.isEmpty ? "connection closed" : text)"
        )
    }

    private static func timeval(_ duration: Duration) -> timeval {
        let (seconds, attoseconds) = duration.components
        return Glibc.timeval(tv_sec: Int(seconds), tv_usec: Int(attoseconds / 1_000_000_000_000))
    }
}
