import Foundation

/// A Redis address as kombu and Celery take it: `redis://[[user]:password@]host[:port][/db]`, the same over TLS as
/// `rediss://` (with redis-py's `ssl_*` query parameters, ``tls``), `unix://` / `redis+socket://` socket paths
/// (`?virtual_host=N` or `?db=N` select the database), and Redis Sentinel:
/// `sentinel://[[user]:password@]host[:port][/db]`, several joined by `;`, whose master is named by the
/// `master_name` transport option (``sentinelMaster``).
public struct RedisURL: Sendable, Hashable, CustomStringConvertible {
    /// Where the server listens.
    public enum Endpoint: Sendable, Hashable {
        case tcp(host: String, port: Int)
        case unixSocket(path: String)
        /// The Sentinels to ask, in order, for the address of the master (kombu's `sentinel://` URLs).
        case sentinel([SentinelNode])
    }

    /// One Sentinel's address.
    public struct SentinelNode: Sendable, Hashable {
        public var host: String
        public var port: Int

        public init(host: String, port: Int = 26379) {
            self.host = host
            self.port = port
        }
    }

    public var endpoint: Endpoint
    /// The ACL user name (Redis 6+), if any.
    public var username: String?
    public var password: String?
    /// The database number; 0 when the URL names none.
    public var database: Int
    /// With a ``Endpoint/sentinel(_:)`` endpoint: the name of the master the Sentinels watch (kombu's
    /// `master_name` transport option).
    public var sentinelMaster: String?
    /// With a ``Endpoint/sentinel(_:)`` endpoint: the user name and password the Sentinels themselves ask for
    /// (`sentinel_kwargs: {username: …, password: …}` in the transport options); the URL's own credentials are the
    /// master's, as in kombu.
    public var sentinelUsername: String?
    public var sentinelPassword: String?
    /// With a ``Endpoint/sentinel(_:)`` endpoint: TLS for the connections to the Sentinels themselves
    /// (`sentinel_kwargs: {ssl: true, ssl_*: …}`), or `nil` for none; ``tls`` is the master's.
    public var sentinelTLS: RedisTLS?
    /// TLS for the connection to the server (with Sentinel: to the master), or `nil` for none: set by a `rediss://`
    /// URL or `ssl_*` query parameters, and by Celery's `broker_use_ssl` / `redis_backend_use_ssl`.
    public var tls: RedisTLS?
    /// Seconds a connection attempt may take (Celery's `broker_connection_timeout` for the broker), or `nil` for
    /// the worker's 5 s.
    public var connectTimeout: Double?
    /// The name each connection gives itself (`CLIENT SETNAME`, shown by `CLIENT LIST`): kombu's `client_name`
    /// transport option for the broker, Celery 5.7's `redis_client_name` for the result backend. `nil`: none.
    public var clientName: String?
    /// Whether the URL's scheme is `rediss://` (TLS may also come from settings with `redis://`).
    public internal(set) var isSecureScheme = false
    /// kombu's failover list (several `redis://` or `unix://` URLs joined by `;`), or `nil` for one server.
    public var failover: Failover?

    public init(endpoint: Endpoint, username: String? = nil, password: String? = nil, database: Int = 0) {
        self.endpoint = endpoint
        self.username = username
        self.password = password
        self.database = database
    }

    /// Parses a URL, with an error that says what is wrong.
    public init(parsing text: String) throws(CeleryWorkerError) {
        // Read past the white space around it: a value from the environment or a secret often ends in a newline,
        // which Python reads past too (`int('0\n')` is database 0).
        try self.init(trimmed: text.trimmingCharacters(in: .whitespacesAndNewlines))
    }

    private init(trimmed text: String) throws(CeleryWorkerError) {
        func invalid(_ why: String) -> CeleryWorkerError {
            CeleryWorkerError(code: .invalidConfiguration, message: "invalid Redis URL '\(RedisURL.masked(text))': \(why)")
        }
        if text.contains(";") {
            // kombu's failover list: for Sentinel, every URL names a Sentinel; the first gives credentials and db.
            let urls = try text.split(separator: ";").map { part throws(CeleryWorkerError) in try RedisURL(parsing: String(part)) }
            guard let first = urls.first else { throw invalid("expected redis://host[:port][/db]") }
            let sentinels = urls.filter(\.isSentinel).count
            guard sentinels == 0 || sentinels == urls.count else { throw invalid("sentinel:// URLs cannot be joined with others by ';'") }
            self = first
            if sentinels == 0 {
                // Servers to fail over to, in turn (kombu's alternates).
                if urls.count > 1 { failover = Failover(alternates: urls) }
                return
            }
            endpoint = .sentinel(
                urls.flatMap { url -> [SentinelNode] in
                    guard case .sentinel(let nodes) = url.endpoint else { return [] }
                    return nodes
                })
            return
        }
        guard let pieces = Pieces(text) else { throw invalid("expected redis://host[:port][/db]") }
        let scheme = pieces.scheme
        var query: [String: String] = [:]
        for pair in (pieces.query ?? "").split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1)
            query[String(parts[0])] = parts.count > 1 ? String(parts[1]) : ""
        }
        var username: String?
        var password: String?
        if let credentials = pieces.credentials {
            if let colon = credentials.firstIndex(of: ":") {
                let user = String(credentials[..<colon])
                username = user.isEmpty ? nil : Self.percentDecoded(user)
                password = Self.percentDecoded(String(credentials[credentials.index(after: colon)...]))
            } else if !credentials.isEmpty {
                password = Self.percentDecoded(String(credentials))
            }
        }
        func database(_ text: String?) throws(CeleryWorkerError) -> Int {
            guard let text, !text.isEmpty else { return 0 }
            guard let number = Int(text), number >= 0 else { throw invalid("database '\(text)' is not a number") }
            return number
        }
        var tls: RedisTLS?
        for (name, value) in query where name.hasPrefix("ssl_") {
            // kombu reads `ssl_*` parameters into its `ssl` options, which turn TLS on whatever the scheme.
            var settings = tls ?? RedisTLS()
            do {
                try settings.set(name, to: Self.percentDecoded(value))
            } catch {
                throw invalid(error.message)
            }
            tls = settings
        }
        if scheme == "rediss" { tls = tls ?? RedisTLS() }
        switch scheme {
        case "redis", "rediss", "sentinel":
            var db = try database(pieces.path.map(String.init))
            if let virtualHost = query["virtual_host"] ?? query["db"] { db = try database(virtualHost) }
            var host = String(pieces.host)
            var port = scheme == "sentinel" ? 26379 : 6379
            if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
            if let given = pieces.port {
                guard let parsed = Int(given), (1...65535).contains(parsed) else { throw invalid("port is not a number from 1 to 65535") }
                port = parsed
            }
            if host.isEmpty { host = "localhost" }
            let endpoint: Endpoint = scheme == "sentinel" ? .sentinel([SentinelNode(host: host, port: port)]) : .tcp(host: host, port: port)
            self.init(endpoint: endpoint, username: username, password: password, database: db)
            self.tls = tls
            isSecureScheme = scheme == "rediss"
        case "unix", "redis+socket", "socket":
            var path = String(pieces.location)
            if !path.hasPrefix("/") { path = "/" + path }
            guard path.count > 1 else { throw invalid("no socket path") }
            guard tls == nil else { throw invalid("TLS (ssl_* parameters) is for TCP connections, not a Unix socket") }
            let db = try database(query["virtual_host"] ?? query["db"])
            self.init(endpoint: .unixSocket(path: path), username: username, password: password, database: db)
        default:
            throw invalid("scheme '\(scheme)' is not redis://, rediss://, sentinel://, unix:// or redis+socket://")
        }
    }

    private static func percentDecoded(_ text: String) -> String {
        guard text.contains("%") else { return text }
        var bytes: [UInt8] = []
        var iterator = Array(text.utf8).makeIterator()
        while let byte = iterator.next() {
            if byte == UInt8(ascii: "%"), let high = iterator.next(), let low = iterator.next(),
                let value = UInt8(String(decoding: [high, low], as: UTF8.self), radix: 16)
            {
                bytes.append(value)
            } else {
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Whether the Sentinels give the server's address.
    var isSentinel: Bool {
        if case .sentinel = endpoint { return true }
        return false
    }

    /// Whether `other` reaches the same server as the same user (whatever the database). Never so for a failover
    /// list, whose server changes.
    func isSameServer(as other: RedisURL) -> Bool {
        failover == nil && other.failover == nil && endpoint == other.endpoint && username == other.username
            && password == other.password
    }

    /// The URL with any password replaced by `**`, as Celery's banner shows it.
    public var description: String {
        let credentials: String
        switch (username, password) {
        case (let user?, _?): credentials = "\(user):**@"
        case (nil, _?): credentials = ":**@"
        case (let user?, nil): credentials = "\(user)@"
        case (nil, nil): credentials = ""
        }
        switch endpoint {
        case .tcp(let host, let port):
            let shownHost = Self.shown(host)
            return "\(tls == nil ? "redis" : "rediss")://\(credentials)\(shownHost):\(port)/\(database)"
        case .unixSocket(let path):
            return "redis+socket://\(credentials)\(path)?virtual_host=\(database)"
        case .sentinel(let nodes):
            let shown = nodes.enumerated().map { index, node in
                "sentinel://\(index == 0 ? credentials : "")\(Self.shown(node.host)):\(node.port)"
            }
            return shown.joined(separator: ";") + "/\(database)"
        }
    }

    /// The URL as Celery shows its broker (kombu 5.7's `Connection.as_uri()`) in the banner and in its `Connected to`
    /// and `Cannot connect to` lines: the password masked even where there is none (`redis://:**@127.0.0.1:6379/0`,
    /// kombu 5.7's rule; kombu 5.3 left the `:**@` out then), a Unix socket's path alone, and of several Sentinels the
    /// first.
    /// With a ``failover`` list, the server in use (kombu shows its connection's current one).
    public var brokerDisplay: String { brokerDisplay(mask: "**") }

    /// ``brokerDisplay`` with the password's `mask` (Celery's `conf` reply masks it with `********`).
    public func brokerDisplay(mask: String) -> String {
        if let failover { return failover.current.url(from: self).brokerDisplay(mask: mask) }
        // kombu's `as_url`: the user and host quoted (`quote(…, safe='')`: `us%40er`, an IPv6 host `%3A%3A1`), the
        // host as `urlparse` gives it, in lower case.
        let credentials = "\(Self.quoted(username ?? "")):\(mask)@"
        switch endpoint {
        case .tcp(let host, let port):
            return "\(tls == nil ? "redis" : "rediss")://\(credentials)\(Self.quoted(host.lowercased())):\(port)/\(database)"
        case .unixSocket(let path):
            return "redis+socket://\(path)"
        case .sentinel(let nodes):
            guard let first = nodes.first else { return "sentinel://\(credentials)/\(database)" }
            return "sentinel://\(credentials)\(Self.quoted(first.host.lowercased())):\(first.port)/\(database)"
        }
    }

    /// A result backend's setting as Celery shows it (the banner's `results:` line, Celery's `backend.as_uri()`, and
    /// `report`): kombu's `maybe_sanitize_url` of the text as written, which parses it with HTTP's rules and writes
    /// it again, the password masked (`**`), the query left out, a port and a database only where the text has them
    /// (`redis://localhost` is `redis://localhost/`). Text without `://` is shown as it is; `nil` where kombu's parse
    /// fails (several Sentinels, a port that is not a number).
    public static func sanitized(_ written: String) -> String? {
        // Python's `urlsplit` drops every tab and line break first (a setting read from a secret ends in one).
        let text = String(String.UnicodeScalarView(written.unicodeScalars.filter { !["\t", "\r", "\n"].contains($0) }))
        guard let (writtenScheme, authority, rest) = authoritySplit(text) else { return text }
        let scheme = writtenScheme.lowercased()
        var path = rest[..<(rest.firstIndex { "?#".contains($0) } ?? rest.endIndex)]
        if path.first == "/" { path = path.dropFirst() }
        let at = authority.lastIndex(of: "@")
        let userInfo = at.map { authority[..<$0] }
        let hostInfo = at.map { authority[authority.index(after: $0)...] } ?? authority
        var user: Substring?
        var password: Substring?
        if let userInfo {
            if let colon = userInfo.firstIndex(of: ":") {
                user = userInfo[..<colon]
                password = userInfo[userInfo.index(after: colon)...]
            } else {
                user = userInfo
            }
        }
        var host: Substring
        var port: Substring
        if let open = hostInfo.firstIndex(of: "[") {
            let bracketed = hostInfo[hostInfo.index(after: open)...]
            let close = bracketed.firstIndex(of: "]") ?? bracketed.endIndex
            host = bracketed[..<close]
            let after = close < bracketed.endIndex ? bracketed[bracketed.index(after: close)...] : ""
            port = after.firstIndex(of: ":").map { after[after.index(after: $0)...] } ?? ""
        } else {
            let colon = hostInfo.firstIndex(of: ":")
            host = colon.map { hostInfo[..<$0] } ?? hostInfo
            port = colon.map { hostInfo[hostInfo.index(after: $0)...] } ?? ""
        }
        var portNumber = 0
        if !port.isEmpty {
            guard port.allSatisfy({ $0.isASCII && $0.isNumber }), let number = Int(port), number <= 65_535 else { return nil }
            portNumber = number
        }
        let (shownUser, shownPassword) = (user.map(percentDecoded) ?? "", password.map(percentDecoded) ?? "")
        var shown = "\(scheme)://"
        if !shownUser.isEmpty || !shownPassword.isEmpty {
            shown += quoted(shownUser) + (shownPassword.isEmpty ? "" : ":**") + "@"
        }
        shown += quoted(percentDecoded(Substring(host.lowercased())))
        if portNumber != 0 { shown += ":\(portNumber)" }
        shown += "/" + percentDecoded(path)
        // Celery's `as_uri` then drops the last `/` of a URL that is `scheme:///`.
        return shown.hasSuffix(":///") ? String(shown.dropLast()) : shown
    }

    /// A URL's scheme, its authority (up to the first `/`, `?` or `#`, as Python's `urlsplit` ends it) and the rest;
    /// `nil` without `://`.
    private static func authoritySplit(_ text: String) -> (scheme: Substring, authority: Substring, rest: Substring)? {
        guard let separator = text.range(of: "://") else { return nil }
        let rest = text[separator.upperBound...]
        let authorityEnd = rest.firstIndex { "/?#".contains($0) } ?? rest.endIndex
        return (text[..<separator.lowerBound], rest[..<authorityEnd], rest[authorityEnd...])
    }

    /// Python's `unquote`: `%XX` escapes decoded as UTF-8 (an invalid one kept as it is).
    private static func percentDecoded(_ text: Substring) -> String {
        String(text).removingPercentEncoding ?? String(text)
    }

    /// Python's `quote(text, safe='')`: every byte but ASCII letters, digits and `_.-~` as `%XX`.
    private static func quoted(_ text: String) -> String {
        var output = ""
        for byte in text.utf8 {
            let character = Character(Unicode.Scalar(byte))
            if byte < 0x80, character.isLetter || character.isNumber || "_.-~".contains(character) {
                output.append(character)
            } else {
                output += String(format: "%%%02X", byte)
            }
        }
        return output
    }

    /// A host as a URL writes it: an IPv6 address in brackets.
    private static func shown(_ host: String) -> String { host.contains(":") ? "[\(host)]" : host }

    /// A result backend's setting as Celery 5.7's `conf` reply shows it (its own `sanitize_url`, not kombu's): the
    /// text as written, each password in it replaced by `mask`, the query and the rest kept; several servers joined
    /// by `;` or `,` (Sentinels) each masked.
    public static func censored(_ text: String, mask: String = "********") -> String {
        guard let (scheme, authority, tail) = authoritySplit(text) else { return text }
        let parts = text.split(separator: ";", omittingEmptySubsequences: false)
        if parts.count > 1, parts.dropFirst().contains(where: { $0.contains("://") }) {
            return parts.map { censored($0.trimmingCharacters(in: .whitespaces), mask: mask) }.joined(separator: ";")
        }
        let serverSeparator: Character? = authority.contains(";") ? ";" : authority.contains(",") ? "," : nil
        let chunks =
            serverSeparator.map { separator in
                authority.split(separator: separator).map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
            } ?? []
        func maskedUserInfo(_ userInfo: Substring) -> String {
            guard let colon = userInfo.firstIndex(of: ":") else { return String(userInfo) }
            return "\(userInfo[..<colon]):\(mask)"
        }
        guard let at = authority.lastIndex(of: "@") else {
            guard let serverSeparator else { return "\(scheme)://\(authority)\(tail)" }
            return "\(scheme)://\(chunks.joined(separator: String(serverSeparator)))\(tail)"
        }
        let userInfo = authority[..<at]
        let hostPart = authority[authority.index(after: at)...]
        let multiserver =
            chunks.count > 1
            && !chunks.contains { !$0.contains("@") && $0.hasPrefix(":") }
            && !chunks.contains { chunk in chunk.lastIndex(of: "@").map { !chunk[..<$0].contains(":") } ?? false }
        guard multiserver, let serverSeparator else {
            if authority.filter({ $0 == "@" }).count > 1, !userInfo.contains(":") { return "\(scheme)://\(mask)@\(hostPart)\(tail)" }
            return "\(scheme)://\(maskedUserInfo(userInfo))@\(hostPart)\(tail)"
        }
        let servers = chunks.map { chunk -> String in
            guard let at = chunk.lastIndex(of: "@") else { return chunk }
            return "\(maskedUserInfo(chunk[..<at]))@\(chunk[chunk.index(after: at)...])"
        }
        return "\(scheme)://\(servers.joined(separator: String(serverSeparator)))\(tail)"
    }

    /// Masks the password in a URL that may not even parse, for error messages.
    public static func masked(_ text: String) -> String {
        if text.contains(";") {
            return text.split(separator: ";", omittingEmptySubsequences: false).map { masked(String($0)) }.joined(separator: ";")
        }
        guard let schemeEnd = text.range(of: "://"), let at = text.lastIndex(of: "@"), at > schemeEnd.upperBound
        else { return text }
        let credentials = text[schemeEnd.upperBound..<at]
        guard let colon = credentials.firstIndex(of: ":") else { return text }
        return String(text[..<colon]) + ":**" + String(text[at...])
    }
}

extension RedisURL {
    /// Celery's older settings for the parts of a URL (`broker_host`, `broker_port`, `broker_user`,
    /// `broker_password`, `broker_vhost`; the result backend's `redis_host`, `redis_port`, `redis_username`,
    /// `redis_password`, `redis_db`), which fill in what a URL leaves out, as kombu's `Connection` and Celery's
    /// `RedisBackend` fill them in.
    public struct Parts: Sendable, Equatable {
        public var host: String?
        public var port: Int?
        public var username: String?
        public var password: String?
        public var database: Int?

        public init(host: String? = nil, port: Int? = nil, username: String? = nil, password: String? = nil, database: Int? = nil) {
            (self.host, self.port, self.username, self.password, self.database) = (host, port, username, password, database)
        }

        /// Whether no part is given.
        public var isEmpty: Bool { self == Parts() }
    }

    /// `text` (a `redis://` or `rediss://` URL) with the host, port, credentials and database that it leaves out
    /// taken from `parts`; a part the URL gives wins. A text without a scheme is a host name, as Celery takes
    /// `broker_host`. Other schemes (sockets, Sentinel) are returned as they are.
    public static func completing(_ text: String, with parts: Parts) -> String {
        guard !parts.isEmpty else { return text }
        guard let pieces = Pieces(text) else { return completing("redis://" + text, with: parts) }
        guard pieces.scheme == "redis" || pieces.scheme == "rediss" else { return text }
        func escaped(_ text: String) -> String {
            text.addingPercentEncoding(withAllowedCharacters: .urlUserAllowed.subtracting(CharacterSet(charactersIn: ":@"))) ?? text
        }
        var credentials = pieces.credentials.map(String.init) ?? ""
        if credentials.isEmpty, parts.username != nil || parts.password != nil {
            credentials = escaped(parts.username ?? "") + (parts.password.map { ":" + escaped($0) } ?? "")
        }
        var result = pieces.scheme + "://" + (credentials.isEmpty ? "" : credentials + "@")
        result += pieces.host.isEmpty ? (parts.host ?? "") : String(pieces.host)
        if let port = pieces.port.flatMap({ $0.isEmpty ? nil : String($0) }) ?? parts.port.map(String.init) { result += ":" + port }
        if let path = pieces.path, !path.isEmpty {
            result += "/" + path
        } else if let database = parts.database {
            result += "/\(database)"
        } else if pieces.path != nil {
            result += "/"
        }
        if let query = pieces.query { result += "?" + query }
        return result
    }
}

extension RedisURL {
    /// A URL's text cut at its delimiters, nothing decoded or checked: ``init(parsing:)`` reads these pieces and
    /// ``completing(_:with:)`` fills in the missing ones, so both cut a URL the same way.
    struct Pieces {
        /// The scheme, lowercased.
        var scheme: String
        /// What comes before the last `@` (before the query), if there is one: `[user]:password` or a password.
        var credentials: Substring?
        /// What comes after the credentials and before the query: `host[:port][/path]`, or a socket's path.
        var location: Substring
        /// What comes after the first `?`, if there is one.
        var query: Substring?

        init?(_ text: String) {
            guard let schemeEnd = text.range(of: "://") else { return nil }
            scheme = text[..<schemeEnd.lowerBound].lowercased()
            var rest = text[schemeEnd.upperBound...]
            if let mark = rest.firstIndex(of: "?") {
                query = rest[rest.index(after: mark)...]
                rest = rest[..<mark]
            }
            if let at = rest.lastIndex(of: "@") {
                credentials = rest[..<at]
                rest = rest[rest.index(after: at)...]
            }
            location = rest
        }

        /// The host as written (an IPv6 address within its brackets): ``location`` up to the port or the path.
        var host: Substring { hostAndPort.host }

        /// The port as written, if the location gives one after the host.
        var port: Substring? { hostAndPort.port }

        /// What follows the first `/` of ``location`` (the database), or `nil` when there is no `/`.
        var path: Substring? {
            location.firstIndex(of: "/").map { location[location.index(after: $0)...] }
        }

        private var hostAndPort: (host: Substring, port: Substring?) {
            let hostPort = location.prefix { $0 != "/" }
            if hostPort.hasPrefix("["), let close = hostPort.firstIndex(of: "]") {
                let after = hostPort[hostPort.index(after: close)...]
                return (hostPort[...close], after.hasPrefix(":") ? after.dropFirst() : nil)
            }
            guard let colon = hostPort.lastIndex(of: ":") else { return (hostPort, nil) }
            return (hostPort[..<colon], hostPort[hostPort.index(after: colon)...])
        }
    }
}
