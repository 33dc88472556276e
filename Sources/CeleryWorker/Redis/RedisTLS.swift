import COpenSSL
import CeleryProtocol
import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// TLS settings for a Redis connection, as redis-py's `SSLConnection` takes them (the `ssl_*` query parameters of a
/// `rediss://` URL, or Celery's `broker_use_ssl` / `redis_backend_use_ssl` mappings).
public struct RedisTLS: Sendable, Hashable {
    /// Whether the server's certificate is verified: Python's `ssl.CERT_NONE`, `CERT_OPTIONAL` and
    /// `CERT_REQUIRED`. A client that verifies at all (optional or required) refuses a certificate that does not
    /// verify, as Python's client does.
    public enum CertificateRequirement: String, Sendable, Hashable {
        case none, optional, required

        /// Reads the names kombu and Celery take (`required`, `CERT_REQUIRED`, …) and Python's constants (0, 1, 2).
        public init?(celeryName: String) {
            switch celeryName {
            case "none", "CERT_NONE", "0": self = .none
            case "optional", "CERT_OPTIONAL", "1": self = .optional
            case "required", "CERT_REQUIRED", "2": self = .required
            default: return nil
            }
        }
    }

    /// `ssl_cert_reqs`; `nil` when not given (a broker URL then defaults to ``CertificateRequirement/none`` as kombu
    /// does, a result backend refuses it as Celery does, and elsewhere it is ``CertificateRequirement/required``, as
    /// in redis-py).
    public var certificateRequirement: CertificateRequirement?
    /// `ssl_ca_certs`: a PEM file of the certificate authorities to trust; the system's when none of it, ``caPath``
    /// and ``caData`` is given.
    public var caCertificates: String?
    /// `ssl_ca_path`: a directory of hashed certificate authority files.
    public var caPath: String?
    /// `ssl_ca_data`: the certificate authorities themselves, as PEM text of one or more certificates (redis-py also
    /// takes DER bytes, which neither a URL nor the configuration file can carry).
    public var caData: String?
    /// `ssl_include_verify_flags`: Python's `ssl.VerifyFlags` added to the certificate checks, by value (their
    /// names are read by ``set(_:to:)``).
    public var includeVerifyFlags: Int?
    /// `ssl_exclude_verify_flags`: the flags taken away, after those added.
    public var excludeVerifyFlags: Int?
    /// `ssl_certfile`: the client's certificate (PEM), for servers that ask for one (Redis's `tls-auth-clients`).
    public var certificateFile: String?
    /// `ssl_keyfile`: the client's private key (PEM); the certificate file's when not given.
    public var keyFile: String?
    /// `ssl_check_hostname`: whether the certificate must name the host connected to. `nil`: yes unless the
    /// certificate is not verified (redis-py 6's default; redis-py 5 did not check).
    public var checkHostname: Bool?
    /// `ssl_password`: the passphrase of an encrypted ``keyFile``. Without one, an encrypted key stops the worker at
    /// start with an error; it is never asked for on a terminal, where Python's `ssl` module would ask and wait.
    public var password: String?
    /// `ssl_ciphers`: an OpenSSL cipher list for TLS 1.2 and older (Python's `SSLContext.set_ciphers`).
    public var ciphers: String?
    /// `ssl_min_version`: the lowest protocol version, as Python's `ssl.TLSVersion` numbers it (`TLSv1_2` is 771,
    /// 0x0303, OpenSSL's number too).
    public var minimumVersion: Int?

    public init(
        certificateRequirement: CertificateRequirement? = nil, caCertificates: String? = nil, caPath: String? = nil,
        certificateFile: String? = nil, keyFile: String? = nil, checkHostname: Bool? = nil, password: String? = nil,
        ciphers: String? = nil, minimumVersion: Int? = nil, caData: String? = nil, includeVerifyFlags: Int? = nil,
        excludeVerifyFlags: Int? = nil
    ) {
        self.certificateRequirement = certificateRequirement
        self.caCertificates = caCertificates
        self.caPath = caPath
        self.certificateFile = certificateFile
        self.keyFile = keyFile
        self.checkHostname = checkHostname
        self.password = password
        self.ciphers = ciphers
        self.minimumVersion = minimumVersion
        self.caData = caData
        self.includeVerifyFlags = includeVerifyFlags
        self.excludeVerifyFlags = excludeVerifyFlags
    }

    /// Python's `ssl.TLSVersion` members that name a version, by name (also as `TLSVersion.X` and
    /// `ssl.TLSVersion.X`) with their values.
    static let versions = ["TLSv1": 769, "TLSv1_1": 770, "TLSv1_2": 771, "TLSv1_3": 772]

    /// Python's `ssl.VerifyFlags`, by name, with their values (OpenSSL's `X509_V_FLAG_*`).
    static let verifyFlags = [
        "VERIFY_DEFAULT": 0, "VERIFY_CRL_CHECK_LEAF": 0x4, "VERIFY_CRL_CHECK_CHAIN": 0xC, "VERIFY_X509_STRICT": 0x20,
        "VERIFY_ALLOW_PROXY_CERTS": 0x40, "VERIFY_X509_TRUSTED_FIRST": 0x8000, "VERIFY_X509_PARTIAL_CHAIN": 0x80000,
    ]

    /// Verify flags as redis-py's URL parser reads them (`VERIFY_X509_STRICT, VERIFY_X509_PARTIAL_CHAIN`, brackets
    /// allowed), also as `ssl.VerifyFlags.X` or by value; `nil` when one is not a flag.
    static func verifyFlags(_ text: String) -> Int? {
        var flags = 0
        let around: Set<Character> = [" ", "[", "]", "'", "\""]
        for item in text.split(separator: ",") {
            var cut = item
            while let first = cut.first, around.contains(first) { cut.removeFirst() }
            while let last = cut.last, around.contains(last) { cut.removeLast() }
            let given = String(cut)
            let name = given.split(separator: ".").last.map(String.init) ?? given
            guard let flag = Self.verifyFlags[name] ?? Int(given).flatMap({ $0 >= 0 ? $0 : nil }) else { return nil }
            flags |= flag
        }
        return flags
    }

    /// The settings as kombu's `Connection.info()` shows them (`inspect stats`): those given, `ssl_cert_reqs` as
    /// Python's `ssl.CERT_*` number.
    var celeryObject: CeleryObject {
        var shown: CeleryObject = [:]
        if let certificateRequirement {
            shown["ssl_cert_reqs"] = .int(certificateRequirement == .none ? 0 : certificateRequirement == .optional ? 1 : 2)
        }
        for (name, value) in [
            ("ssl_ca_certs", caCertificates), ("ssl_ca_path", caPath), ("ssl_ca_data", caData), ("ssl_certfile", certificateFile),
            ("ssl_keyfile", keyFile),
        ] {
            if let value { shown[name] = .string(value) }
        }
        if let checkHostname { shown["ssl_check_hostname"] = .bool(checkHostname) }
        if password != nil { shown["ssl_password"] = "**" }  // Python would show it
        if let ciphers { shown["ssl_ciphers"] = .string(ciphers) }
        if let minimumVersion { shown["ssl_min_version"] = .int(Int64(minimumVersion)) }
        for (name, flags) in [("ssl_include_verify_flags", includeVerifyFlags), ("ssl_exclude_verify_flags", excludeVerifyFlags)] {
            if let flags { shown[name] = .int(Int64(flags)) }
        }
        return shown
    }

    /// The names of the settings, as redis-py's keyword arguments.
    public static let settingNames: Set<String> = [
        "ssl_cert_reqs", "ssl_ca_certs", "ssl_ca_path", "ssl_ca_data", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname",
        "ssl_password", "ssl_ciphers", "ssl_min_version", "ssl_include_verify_flags", "ssl_exclude_verify_flags",
    ]

    /// Sets one setting from its text (a URL's query parameter or a config file's value).
    public mutating func set(_ name: String, to value: String) throws(CeleryWorkerError) {
        func invalid(_ expected: String) -> CeleryWorkerError {
            CeleryWorkerError(code: .invalidConfiguration, message: "TLS setting \(name) must be \(expected), got '\(value)'")
        }
        switch name {
        case "ssl_cert_reqs":
            guard let requirement = CertificateRequirement(celeryName: value) else {
                throw invalid("required, optional or none (or CERT_REQUIRED, CERT_OPTIONAL, CERT_NONE)")
            }
            certificateRequirement = requirement
        case "ssl_ca_certs": caCertificates = value
        case "ssl_ca_path": caPath = value
        case "ssl_ca_data": caData = value
        case "ssl_certfile": certificateFile = value
        case "ssl_keyfile": keyFile = value
        case "ssl_check_hostname":
            // kombu's reading: anything but "false" is true.
            checkHostname = value.lowercased() != "false"
        case "ssl_password": password = value
        case "ssl_ciphers": ciphers = value
        case "ssl_min_version":
            let name = value.split(separator: ".").last.map(String.init) ?? value
            guard let version = Self.versions[name] ?? Int(value).flatMap({ Self.versions.values.contains($0) ? $0 : nil }) else {
                throw invalid("one of Python's ssl.TLSVersion: TLSv1, TLSv1_1, TLSv1_2 or TLSv1_3 (or 769 to 772)")
            }
            minimumVersion = version
        case "ssl_include_verify_flags", "ssl_exclude_verify_flags":
            guard let flags = Self.verifyFlags(value) else {
                throw invalid(
                    "Python's ssl.VerifyFlags, comma-separated: "
                        + Self.verifyFlags.keys.sorted().joined(separator: ", "))
            }
            if name == "ssl_include_verify_flags" { includeVerifyFlags = flags } else { excludeVerifyFlags = flags }
        default:
            throw CeleryWorkerError(
                code: .invalidConfiguration,
                message: "unknown TLS setting \(name) (known: \(Self.settingNames.sorted().joined(separator: ", ")))")
        }
    }

    /// The requirement in effect: redis-py's default, `required`, when none was given.
    public var requirement: CertificateRequirement { certificateRequirement ?? .required }

    /// Whether the host name is checked: as redis-py, never when the certificate is not verified.
    public var checksHostname: Bool { requirement != .none && (checkHostname ?? true) }

    /// Builds the OpenSSL context these settings describe (and keeps it for every later connection with the same
    /// settings), so a missing or unreadable file is reported at start rather than at the first connection.
    public func validate() throws(CeleryWorkerError) {
        _ = try TLSContext.shared(for: self)
    }
}

/// An OpenSSL client context built from ``RedisTLS`` settings, shared by every connection that uses them. OpenSSL
/// itself is loaded when the first one is built (``COpenSSL``), so a worker without TLS does not map it.
///
/// `@unchecked Sendable` is sound because the context is configured once in `init` and only read afterwards:
/// OpenSSL allows sessions to be created from one `SSL_CTX` on many threads at once, and `deinit` runs when no
/// connection holds it.
final class TLSContext: @unchecked Sendable {
    private let context: OpaquePointer
    let settings: RedisTLS

    private static let built = Mutex<[RedisTLS: TLSContext]>([:])

    /// The context for `settings`, built the first time they are asked for.
    static func shared(for settings: RedisTLS) throws(CeleryWorkerError) -> TLSContext {
        if let known = built.withLock({ $0[settings] }) { return known }
        let made = try TLSContext(settings)
        return built.withLock { contexts in
            if let known = contexts[settings] { return known }
            contexts[settings] = made
            return made
        }
    }

    private init(_ settings: RedisTLS) throws(CeleryWorkerError) {
        // OpenSSL's own words for a missing file are "system lib"; the system's are clearer.
        for path in [settings.caCertificates, settings.caPath, settings.certificateFile, settings.keyFile].compactMap({ $0 })
        where access(path, R_OK) != 0 {
            throw CeleryWorkerError(code: .invalidConfiguration, message: "TLS: cannot read \(path): \(String(cString: strerror(errno)))")
        }
        if settings.certificateFile == nil, let key = settings.keyFile {
            throw CeleryWorkerError(code: .invalidConfiguration, message: "TLS: ssl_keyfile \(key) is given without ssl_certfile")
        }
        let verify = settings.requirement == .none ? COPENSSL_VERIFY_NONE : COPENSSL_VERIFY_PEER
        let made = Self.withErrorText { error, size in
            copenssl_context_new(
                Int32(verify), settings.caCertificates, settings.caPath, settings.caData, settings.certificateFile, settings.keyFile,
                settings.password, settings.ciphers, Int32(settings.minimumVersion ?? 0), UInt(settings.includeVerifyFlags ?? 0),
                UInt(settings.excludeVerifyFlags ?? 0), error, size)
        }
        guard let context = made.result else {
            throw CeleryWorkerError(code: .invalidConfiguration, message: "TLS: \(made.error)")
        }
        self.context = context
        self.settings = settings
    }

    deinit { copenssl_context_free(context) }

    /// Runs the TLS handshake on a connected socket (blocking, within the socket's timeout) with the server at
    /// `host`, and returns the session. The certificate is checked against `host` when the settings say so.
    func handshake(socket: Int32, host: String) throws(CeleryWorkerError) -> OpaquePointer {
        var timedOut: Int32 = 0
        let made = Self.withErrorText { error, size in
            copenssl_connect(context, socket, host, settings.checksHostname ? 1 : 0, &timedOut, error, size)
        }
        guard let session = made.result else {
            throw CeleryWorkerError(code: timedOut != 0 ? .timeout : .connectionFailed, message: "TLS handshake with \(host): \(made.error)")
        }
        return session
    }

    /// Calls `body` with a buffer (on the stack) for COpenSSL's error sentence, and returns its result with the
    /// sentence (empty when none was written). COpenSSL writes nothing into a buffer of size 0.
    static func withErrorText<Result>(_ body: (UnsafeMutablePointer<CChar>?, Int) -> Result) -> (result: Result, error: String) {
        withUnsafeTemporaryAllocation(of: CChar.self, capacity: 320) { buffer in
            buffer.baseAddress?.initialize(to: 0)
            let result = body(buffer.baseAddress, buffer.baseAddress == nil ? 0 : buffer.count)
            return (result, buffer.baseAddress.map { String(cString: $0) } ?? "")
        }
    }
}

extension RedisTLS {
    /// These settings with every one that `other` gives put in their place.
    func overlaid(by other: RedisTLS) -> RedisTLS {
        RedisTLS(
            certificateRequirement: other.certificateRequirement ?? certificateRequirement,
            caCertificates: other.caCertificates ?? caCertificates, caPath: other.caPath ?? caPath,
            certificateFile: other.certificateFile ?? certificateFile, keyFile: other.keyFile ?? keyFile,
            checkHostname: other.checkHostname ?? checkHostname, password: other.password ?? password,
            ciphers: other.ciphers ?? ciphers, minimumVersion: other.minimumVersion ?? minimumVersion,
            caData: other.caData ?? caData, includeVerifyFlags: other.includeVerifyFlags ?? includeVerifyFlags,
            excludeVerifyFlags: other.excludeVerifyFlags ?? excludeVerifyFlags)
    }
}

extension RedisURL {
    /// Settles the broker's TLS as kombu does: `ssl_*` parameters in the URL replace `broker_use_ssl`
    /// (`configured`) whole; without either, a `rediss://` URL does not verify the server, with kombu's warning,
    /// which is returned.
    public mutating func settleBrokerTLS(configured: RedisTLS?) throws(CeleryWorkerError) -> String? {
        var warning: String?
        if let fromURL = tls, fromURL != RedisTLS() {
            // The URL's own parameters win.
        } else if let configured {
            tls = configured
        } else if tls != nil {
            tls = RedisTLS(certificateRequirement: RedisTLS.CertificateRequirement.none)
            warning = "Secure redis scheme specified (rediss) with no ssl options, defaulting to insecure SSL behaviour."
        }
        try checkTLSEndpoint()
        return warning
    }

    /// Settles the result backend's TLS as Celery's Redis backend does: `redis_backend_use_ssl` (`configured`),
    /// then the `ssl_*` parameters of a `rediss://` URL one by one over it. TLS then needs `ssl_cert_reqs`; not
    /// verifying the server is allowed with Celery's warning, which is returned.
    public mutating func settleBackendTLS(configured: RedisTLS?) throws(CeleryWorkerError) -> String? {
        if !isSecureScheme, tls != nil {
            throw CeleryWorkerError(
                code: .invalidConfiguration,
                message: "SSL connection parameters have been provided but the specified URL scheme is redis://. "
                    + "A Redis SSL connection URL should use the scheme rediss://.")
        }
        var settled = configured
        if let fromURL = tls { settled = (configured ?? RedisTLS()).overlaid(by: fromURL) }
        tls = settled
        guard let settled else { return nil }
        try checkTLSEndpoint()
        switch settled.certificateRequirement {
        case nil:
            throw CeleryWorkerError(
                code: .invalidConfiguration,
                message: "A rediss:// URL must have parameter ssl_cert_reqs and this must be set to CERT_REQUIRED, "
                    + "CERT_OPTIONAL, or CERT_NONE")
        case .optional?:
            return "Setting ssl_cert_reqs=CERT_OPTIONAL when connecting to redis means that celery might not validate "
                + "the identity of the redis broker when connecting. This leaves you vulnerable to man in the middle attacks."
        case .none?:
            return "Setting ssl_cert_reqs=CERT_NONE when connecting to redis means that celery will not validate the "
                + "identity of the redis broker when connecting. This leaves you vulnerable to man in the middle attacks."
        case .required?:
            return nil
        }
    }

    private func checkTLSEndpoint() throws(CeleryWorkerError) {
        if tls != nil, case .unixSocket = endpoint {
            throw CeleryWorkerError(
                code: .invalidConfiguration, message: "TLS settings are for TCP connections, not the Unix socket of \(self)")
        }
    }
}
