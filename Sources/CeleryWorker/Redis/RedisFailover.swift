import Synchronization

extension RedisURL {
    /// kombu's failover list: several servers joined by `;` (`redis://a:6379/0;redis://b:6379/0`), of which every
    /// connection uses the same one until a connect to it fails; then the next (Celery's
    /// `broker_failover_strategy`: `round-robin`, the default, or `shuffle`). Each server's URL gives its address,
    /// credentials, database and TLS; the settings (client name, timeouts, `broker_use_ssl`) are the first URL's.
    ///
    /// Copies share the server in use: every connection made from one parsed URL follows the same server, as kombu's
    /// channels follow their connection's.
    public struct Failover: Sendable, Hashable {
        /// Celery's `broker_failover_strategy`.
        public enum Strategy: String, Sendable, Hashable {
            /// The next server in the order written, then the first again (kombu's `round-robin`).
            case roundRobin = "round-robin"
            /// Any other server, at random (kombu's `shuffle`, which may also pick the one that just failed).
            case shuffle
        }

        /// One server of the list.
        public struct Server: Sendable, Hashable {
            /// Its place in ``Failover/alternates``.
            public let index: Int
            /// Its URL as written.
            public let alternate: RedisURL

            /// The URL to connect to it with: `base`'s settings, this server's address, credentials, database and
            /// TLS.
            public func url(from base: RedisURL) -> RedisURL {
                var url = base
                url.failover = nil
                url.endpoint = alternate.endpoint
                url.username = alternate.username
                url.password = alternate.password
                url.database = alternate.database
                if alternate.tls != nil {
                    url.tls = alternate.tls
                    url.isSecureScheme = alternate.isSecureScheme
                }
                return url
            }
        }

        /// A connect that failed while another server was left to try: Celery's consumer logs it with "Will retry
        /// using next failover."
        public struct Failure: Sendable, Equatable {
            /// The server, as the broker is shown (``RedisURL/brokerDisplay``).
            public let server: String
            /// Why, in redis-py's words.
            public let error: String
        }

        /// What one connection's connects to the list's servers left to report: Celery's consumer logs each failed
        /// connect, with "Will retry using next failover." where another server was tried at once.
        public struct Log: Sendable, Equatable {
            /// The connects that failed over to another server, oldest first.
            public var failures: [Failure] = []
            /// The server the last failed connect was to, as the broker is shown.
            public var lastFailed: String?

            mutating func merge(_ other: Log) {
                failures += other.failures
                lastFailed = other.lastFailed ?? lastFailed
            }
        }

        private final class Cursor: Sendable {
            struct State {
                var index = 0
                /// Each server's last failed connect, by its place in the list.
                var lastFailures: [Int: Failure] = [:]
            }

            let state = Mutex(State())
        }

        /// Every server, the first URL's included, in the order written.
        public let alternates: [RedisURL]
        /// How the next server is chosen.
        public var strategy: Strategy = .roundRobin
        private let cursor = Cursor()

        init(alternates: [RedisURL]) {
            self.alternates = alternates
        }

        public static func == (lhs: Failover, rhs: Failover) -> Bool {
            lhs.alternates == rhs.alternates && lhs.strategy == rhs.strategy
        }

        public func hash(into hasher: inout Hasher) {
            hasher.combine(alternates)
            hasher.combine(strategy)
        }

        /// The server in use.
        public var current: Server {
            let index = cursor.state.withLock { $0.index }
            return Server(index: index, alternate: alternates[index])
        }

        /// A connect to `server` failed (`failure`): the next server is in use from now on, unless another connection
        /// moved on already.
        func failed(_ server: Server, _ failure: Failure) {
            cursor.state.withLock { state in
                state.lastFailures[server.index] = failure
                guard state.index == server.index else { return }
                switch strategy {
                case .roundRobin:
                    state.index = (server.index + 1) % alternates.count
                case .shuffle:
                    state.index = alternates.indices.filter { $0 != server.index }.randomElement() ?? server.index
                }
            }
        }

        /// The failed connects that took the list from the server at `previous` to the one in use (whichever
        /// connection made them), in the order tried: what Celery's consumer logs with "Will retry using next
        /// failover." before it is connected to the server in use. Empty when that is the same server.
        public func failures(since previous: Int) -> [Failure] {
            cursor.state.withLock { state in
                guard previous != state.index, alternates.indices.contains(previous) else { return [] }
                guard strategy == .roundRobin else { return state.lastFailures[previous].map { [$0] } ?? [] }
                var found: [Failure] = []
                var index = previous
                while index != state.index {
                    if let failure = state.lastFailures[index] { found.append(failure) }
                    index = (index + 1) % alternates.count
                }
                return found
            }
        }
    }
}
