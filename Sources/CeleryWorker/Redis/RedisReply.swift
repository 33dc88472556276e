/// One reply from Redis.
public enum RedisReply: Sendable, Hashable {
    case string([UInt8])
    case status(String)
    case integer(Int64)
    case array([RedisReply])
    case null
    case error(String)

    /// The bulk string as bytes.
    public var bytes: [UInt8]? {
        if case .string(let bytes) = self { return bytes }
        return nil
    }

    /// The bulk or status string as text.
    public var text: String? {
        switch self {
        case .string(let bytes): String(decoding: bytes, as: UTF8.self)
        case .status(let text): text
        default: nil
        }
    }

    /// The integer reply.
    public var integer: Int64? {
        if case .integer(let value) = self { return value }
        return nil
    }

    /// The array elements.
    public var array: [RedisReply]? {
        if case .array(let elements) = self { return elements }
        return nil
    }

    /// Throws when this is an error reply; returns it otherwise.
    @discardableResult
    public func check(_ context: @autoclosure () -> String) throws(CeleryWorkerError) -> RedisReply {
        if case .error(let message) = self {
            let unavailable = Self.unavailable.contains(message.prefix { $0 != " " })
            throw CeleryWorkerError(code: unavailable ? .redisUnavailable : .redisError, message: "\(context()): \(message)")
        }
        return self
    }

    /// Whether an error reply says Redis will not do it at all: an ACL (`NOPERM`), or a command or option it does not
    /// know (`ERR`). Not one that refuses for now (``CeleryWorkerError/Code/redisUnavailable``), or a failover's
    /// `UNBLOCKED`.
    static func refuses(_ message: String) -> Bool {
        message.hasPrefix("NOPERM") || message.hasPrefix("ERR")
    }

    /// Whether an error reply says Redis will not serve this client as it identified itself: a password it asks for
    /// and was not given (`NOAUTH`), or a wrong one (`WRONGPASS`).
    static func refusesCredentials(_ message: String) -> Bool {
        message.hasPrefix("NOAUTH") || message.hasPrefix("WRONGPASS")
    }

    /// Whether an error reply to a connection's setup (`AUTH`, `SELECT`) refuses it as configured, not for now.
    static func refusesClient(_ message: String) -> Bool {
        refuses(message) || refusesCredentials(message)
    }

    /// The error codes of replies that say Redis cannot serve the command for now (``CeleryWorkerError/Code/redisUnavailable``).
    static let unavailable: Set<Substring> = ["OOM", "LOADING", "BUSY", "MASTERDOWN", "NOREPLICAS", "MISCONF", "TRYAGAIN"]
}

/// One Redis command: the words of its argv, binary-safe.
public struct RedisCommand: Sendable, Hashable, ExpressibleByArrayLiteral {
    public var arguments: [[UInt8]]

    public init(_ arguments: [[UInt8]]) {
        self.arguments = arguments
    }

    public init(_ name: String, _ arguments: RedisArgument...) {
        self.arguments = [Array(name.utf8)] + arguments.map(\.bytes)
    }

    public init(_ name: String, arguments: [RedisArgument]) {
        self.arguments = [Array(name.utf8)] + arguments.map(\.bytes)
    }

    public init(arrayLiteral elements: RedisArgument...) {
        self.arguments = elements.map(\.bytes)
    }

    /// The command name, for error messages.
    public var name: String { arguments.first.map { String(decoding: $0, as: UTF8.self) } ?? "" }
}

/// A word of a command: text, bytes or a number.
public struct RedisArgument: Sendable, Hashable, ExpressibleByStringLiteral, ExpressibleByIntegerLiteral {
    public var bytes: [UInt8]

    public init(_ bytes: [UInt8]) { self.bytes = bytes }
    public init(_ text: String) { self.bytes = Array(text.utf8) }
    public init(_ number: Int) { self.bytes = Array(String(number).utf8) }
    public init(_ number: Double) { self.bytes = Array(number.description.utf8) }
    public init(stringLiteral value: String) { self.init(value) }
    public init(integerLiteral value: Int) { self.init(value) }
}

/// The server's error reply to a connection's setup (`AUTH`, `SELECT`, `CLIENT SETNAME`): it is up, and answered the
/// connection as its URL configures it with an error (a wrong password, a database it does not have). Carried as the
/// underlying error of the connection's failure.
struct RedisSetupRefused: Error {
    let reply: String
}
