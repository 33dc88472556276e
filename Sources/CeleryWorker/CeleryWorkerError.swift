import CeleryProtocol

/// An error from the worker runtime or its Redis transport.
public struct CeleryWorkerError: Error, Sendable, CustomStringConvertible {
    /// What kind of failure this is.
    public struct Code: Sendable, Hashable, CustomStringConvertible {
        enum Base: Sendable, Hashable {
            case invalidConfiguration, connectionFailed, connectionLost, timeout, redisError, redisUnavailable
            case unexpectedReply, shutdown, encodeError
        }

        let base: Base

        /// A flag, URL or setting is not valid.
        public static let invalidConfiguration = Code(base: .invalidConfiguration)
        /// The Redis server could not be reached.
        public static let connectionFailed = Code(base: .connectionFailed)
        /// The connection broke during a command; it is re-established on the next use.
        public static let connectionLost = Code(base: .connectionLost)
        /// Redis did not answer in time.
        public static let timeout = Code(base: .timeout)
        /// Redis answered with an error reply.
        public static let redisError = Code(base: .redisError)
        /// Redis answered with an error reply that says it cannot serve the command for now: out of memory
        /// (`OOM`), loading its data (`LOADING`), busy with a script (`BUSY`), without its master or replicas
        /// (`MASTERDOWN`, `NOREPLICAS`), unable to persist (`MISCONF`), or asking to try again (`TRYAGAIN`).
        public static let redisUnavailable = Code(base: .redisUnavailable)
        /// Redis answered with a reply of a shape the command does not produce.
        public static let unexpectedReply = Code(base: .unexpectedReply)
        /// The worker is shutting down.
        public static let shutdown = Code(base: .shutdown)
        /// kombu's `EncodeError`: the serializer has no form for a value (an integer beyond 64 bits in msgpack).
        public static let encodeError = Code(base: .encodeError)

        public var description: String {
            switch base {
            case .invalidConfiguration: "invalid configuration"
            case .connectionFailed: "cannot connect to Redis"
            case .connectionLost: "Redis connection lost"
            case .timeout: "Redis timed out"
            case .redisError: "Redis error"
            case .redisUnavailable: "Redis cannot serve the command for now"
            case .unexpectedReply: "unexpected Redis reply"
            case .shutdown: "worker shutting down"
            case .encodeError: "cannot encode"
            }
        }
    }

    public var code: Code
    public var message: String
    public var underlyingError: (any Error)?

    public init(code: Code, message: String, underlyingError: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.underlyingError = underlyingError
    }

    /// Whether the operation may succeed when tried again on a fresh connection.
    public var isConnectionProblem: Bool {
        code == .connectionFailed || code == .connectionLost || code == .timeout
    }

    /// Whether the operation may succeed when tried again later: a connection problem, or Redis refusing for now
    /// (``Code/redisUnavailable``: out of memory, say, until keys expire or are evicted).
    public var isTransient: Bool {
        isConnectionProblem || code == .redisUnavailable
    }

    public var description: String { "\(code): \(message)" }
}

extension CeleryWorkerError {
    /// Runs `encode`, its failure turned into kombu's `EncodeError` (``Code/encodeError``), whose message is the
    /// wrapped error as Celery stores it: `OverflowError('Integer value out of range')` for an integer msgpack cannot
    /// carry.
    static func encoding<Value>(_ encode: () throws(CeleryProtocolError) -> Value) throws(CeleryWorkerError) -> Value {
        do {
            return try encode()
        } catch {
            throw CeleryWorkerError(code: .encodeError, message: "OverflowError('\(error.message)')", underlyingError: error)
        }
    }
}
