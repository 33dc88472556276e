import Foundation
import Testing

@testable import CeleryWorker

@Suite("Redis URLs as kombu takes them")
struct RedisURLTests {
    @Test("host, port, database, credentials")
    func tcp() throws {
        let url = try RedisURL(parsing: "redis://user:p%40ss@example.org:6380/3")
        #expect(url.endpoint == .tcp(host: "example.org", port: 6380))
        #expect(url.username == "user")
        #expect(url.password == "p@ss")
        #expect(url.database == 3)
        #expect(url.description == "redis://user:**@example.org:6380/3")
        let passwordOnly = try RedisURL(parsing: "redis://:secret@localhost/1")
        #expect(passwordOnly.username == nil && passwordOnly.password == "secret")
        #expect(passwordOnly.description == "redis://:**@localhost:6379/1")
        let defaults = try RedisURL(parsing: "redis://")
        #expect(defaults.endpoint == .tcp(host: "localhost", port: 6379) && defaults.database == 0)
        #expect(try RedisURL(parsing: "redis://[::1]:7000/2").endpoint == .tcp(host: "::1", port: 7000))
    }

    @Test("unix sockets")
    func sockets() throws {
        #expect(try RedisURL(parsing: "unix:///run/redis.sock").endpoint == .unixSocket(path: "/run/redis.sock"))
        let socket = try RedisURL(parsing: "redis+socket:///tmp/r.sock?virtual_host=4")
        #expect(socket.endpoint == .unixSocket(path: "/tmp/r.sock") && socket.database == 4)
    }

    @Test("Sentinel: one URL or several joined by ';', the first giving credentials and database")
    func sentinel() throws {
        let one = try RedisURL(parsing: "sentinel://:pw@sentinel-a/2")
        #expect(one.endpoint == .sentinel([RedisURL.SentinelNode(host: "sentinel-a", port: 26379)]))
        #expect(one.password == "pw" && one.database == 2 && one.sentinelMaster == nil)
        #expect(one.description == "sentinel://:**@sentinel-a:26379/2")
        let several = try RedisURL(parsing: "sentinel://:pw@a:26380/1;sentinel://b;sentinel://[::1]:26381")
        #expect(
            several.endpoint
                == .sentinel([
                    RedisURL.SentinelNode(host: "a", port: 26380), RedisURL.SentinelNode(host: "b"),
                    RedisURL.SentinelNode(host: "::1", port: 26381),
                ]))
        #expect(several.password == "pw" && several.database == 1)
        #expect(several.description == "sentinel://:**@a:26380;sentinel://b:26379;sentinel://[::1]:26381/1")
        #expect(RedisURL.masked("sentinel://:pw@a/1;sentinel://:pw@b") == "sentinel://:**@a/1;sentinel://:**@b")
    }

    @Test("kombu's failover list: servers joined by ';', each with its own address, credentials and database")
    func failoverList() throws {
        let url = try RedisURL(parsing: "redis://:pw@a:6380/1;redis://b/2;unix:///run/c.sock")
        let failover = try #require(url.failover)
        #expect(failover.alternates.map(\.endpoint) == [.tcp(host: "a", port: 6380), .tcp(host: "b", port: 6379), .unixSocket(path: "/run/c.sock")])
        #expect(url.endpoint == .tcp(host: "a", port: 6380) && url.password == "pw" && url.database == 1)
        #expect(failover.current.index == 0 && url.brokerDisplay == "redis://:**@a:6380/1")
        // The second server with its own database and no password; the first URL's settings.
        var named = url
        named.clientName = "worker"
        let second = RedisURL.Failover.Server(index: 1, alternate: failover.alternates[1]).url(from: named)
        #expect(second.endpoint == .tcp(host: "b", port: 6379) && second.password == nil && second.database == 2)
        #expect(second.clientName == "worker" && second.failover == nil)
        // Round-robin: each failed connect moves every copy on to the next server, once.
        let down = { (server: String) in RedisURL.Failover.Failure(server: server, error: "Connection refused.") }
        failover.failed(failover.current, down("a"))
        failover.failed(RedisURL.Failover.Server(index: 0, alternate: failover.alternates[0]), down("a again"))
        #expect(named.failover?.current.index == 1 && url.brokerDisplay == "redis://:**@b:6379/2")
        #expect(failover.failures(since: 0) == [down("a again")] && failover.failures(since: 1).isEmpty)
        failover.failed(failover.current, down("b"))
        #expect(failover.failures(since: 0) == [down("a again"), down("b")])
        failover.failed(failover.current, down("c"))
        #expect(failover.current.index == 0 && failover.failures(since: 1) == [down("b"), down("c")])
        #expect(!url.isSameServer(as: url))
        #expect(try RedisURL(parsing: "redis://a").failover == nil)
        #expect(throws: CeleryWorkerError.self) { try RedisURL(parsing: "redis://a;sentinel://b") }
        do {
            _ = try RedisURL(parsing: "sentinel://a;redis://:secret@b")
        } catch {
            #expect(error.message == "invalid Redis URL 'sentinel://a;redis://:**@b': sentinel:// URLs cannot be joined with others by ';'")
        }
    }

    @Test("a Sentinel connection without a master's name, or with no Sentinel reachable, fails saying so")
    func sentinelFailures() async throws {
        var url = try RedisURL(parsing: "sentinel://127.0.0.1:1/0;sentinel://127.0.0.1:2")
        do {
            _ = try await RedisClient(url: url).send(RedisCommand("PING"))
            Issue.record("no master is named")
        } catch {
            #expect(error.code == .invalidConfiguration && error.message.contains("master_name"))
        }
        url.sentinelMaster = "mymaster"
        do {
            _ = try await RedisClient(url: url).send(RedisCommand("PING"))
            Issue.record("no Sentinel listens there")
        } catch {
            #expect(error.code == .connectionFailed)
            #expect(error.message.contains("no Sentinel gave the address of master 'mymaster'"))
            #expect(error.message.contains("127.0.0.1:1") && error.message.contains("127.0.0.1:2"))
        }
    }

    @Test(
        "bad URLs say what is wrong and never show the password",
        arguments: [
            "localhost:6379", "http://localhost", "redis://host:notaport/0", "redis://host:70000", "redis://host/x",
            "rediss://:pw@host:0", "unix://", "unix:///tmp/r.sock?ssl_cert_reqs=required",
            "rediss://:pw@host?ssl_cert_reqs=maybe", "rediss://:pw@host?ssl_verify=yes", "sentinel://:pw@a;redis://:pw@b", "sentinel://a:0",
        ])
    func invalid(text: String) {
        do {
            _ = try RedisURL(parsing: text)
            Issue.record("\(text) should not parse")
        } catch {
            #expect(error.code == .invalidConfiguration)
            #expect(!error.message.contains(":pw@"))
        }
    }

    @Test("rediss:// and redis-py's ssl_* parameters, percent-decoded, as kombu reads them")
    func tls() throws {
        let plain = try RedisURL(parsing: "rediss://:pw@cache.example:6380/2")
        #expect(plain.endpoint == .tcp(host: "cache.example", port: 6380) && plain.database == 2)
        #expect(plain.tls == RedisTLS())
        #expect(plain.description == "rediss://:**@cache.example:6380/2")
        let full = try RedisURL(
            parsing: "rediss://h/0?ssl_cert_reqs=CERT_OPTIONAL&ssl_ca_certs=%2Fetc%2Fca.pem&ssl_certfile=/c.pem"
                + "&ssl_keyfile=/k.pem&ssl_check_hostname=False&ssl_ca_path=/certs")
        #expect(
            full.tls
                == RedisTLS(
                    certificateRequirement: .optional, caCertificates: "/etc/ca.pem", caPath: "/certs", certificateFile: "/c.pem",
                    keyFile: "/k.pem", checkHostname: false))
        // kombu turns TLS on for ssl_* parameters whatever the scheme.
        let byParameters = try RedisURL(parsing: "redis://h/0?ssl_cert_reqs=none")
        #expect(byParameters.tls == RedisTLS(certificateRequirement: RedisTLS.CertificateRequirement.none))
        #expect(try RedisURL(parsing: "redis://h/0").tls == nil)
        for (name, requirement) in [("required", "required"), ("CERT_NONE", "none"), ("1", "optional")] {
            #expect(try RedisURL(parsing: "rediss://h?ssl_cert_reqs=\(name)").tls?.certificateRequirement?.rawValue == requirement)
        }
    }

    @Test("the broker's TLS as kombu settles it: URL parameters replace broker_use_ssl; rediss:// alone does not verify")
    func brokerTLS() throws {
        let configured = RedisTLS(certificateRequirement: .required, caCertificates: "/ca.pem")
        var byConfig = try RedisURL(parsing: "redis://h/1")
        #expect(try byConfig.settleBrokerTLS(configured: configured) == nil)
        #expect(byConfig.tls == configured)
        var byURL = try RedisURL(parsing: "rediss://h/1?ssl_certfile=/c.pem")
        #expect(try byURL.settleBrokerTLS(configured: configured) == nil)
        #expect(byURL.tls == RedisTLS(certificateFile: "/c.pem"))
        #expect(byURL.tls?.requirement == .required && byURL.tls?.checksHostname == true)
        var bare = try RedisURL(parsing: "rediss://h/1")
        let warning = try bare.settleBrokerTLS(configured: nil)
        #expect(warning?.contains("defaulting to insecure SSL behaviour") == true)
        #expect(bare.tls == RedisTLS(certificateRequirement: RedisTLS.CertificateRequirement.none))
        #expect(bare.tls?.checksHostname == false)
        var plain = try RedisURL(parsing: "redis://h/1")
        #expect(try plain.settleBrokerTLS(configured: nil) == nil && plain.tls == nil)
        var socket = try RedisURL(parsing: "unix:///tmp/r.sock")
        #expect(throws: CeleryWorkerError.self) { try socket.settleBrokerTLS(configured: configured) }
    }

    @Test("the result backend's TLS as Celery settles it: ssl_cert_reqs is needed, URL parameters win one by one")
    func backendTLS() throws {
        let configured = RedisTLS(certificateRequirement: .required, caCertificates: "/ca.pem")
        var merged = try RedisURL(parsing: "rediss://h/0?ssl_ca_certs=/other.pem")
        #expect(try merged.settleBackendTLS(configured: configured) == nil)
        #expect(merged.tls == RedisTLS(certificateRequirement: .required, caCertificates: "/other.pem"))
        // Every setting of the URL is laid over the configured ones, the newest too.
        var everything = try RedisURL(
            parsing: "rediss://h/0?ssl_ca_data=PEM&ssl_password=pw&ssl_ciphers=HIGH&ssl_min_version=TLSv1_3&ssl_check_hostname=false"
                + "&ssl_include_verify_flags=VERIFY_X509_STRICT&ssl_exclude_verify_flags=VERIFY_X509_PARTIAL_CHAIN")
        #expect(try everything.settleBackendTLS(configured: configured) == nil)
        #expect(
            everything.tls
                == RedisTLS(
                    certificateRequirement: .required, caCertificates: "/ca.pem", checkHostname: false, password: "pw", ciphers: "HIGH",
                    minimumVersion: 772, caData: "PEM", includeVerifyFlags: 0x20, excludeVerifyFlags: 0x80000))
        // redis-py's URL form of verify flags: names, comma-separated, brackets allowed; ssl.VerifyFlags.X and values too.
        for (text, flags) in [
            ("VERIFY_X509_STRICT, VERIFY_X509_PARTIAL_CHAIN", 0x80020), ("[VERIFY_CRL_CHECK_LEAF]", 4),
            ("ssl.VerifyFlags.VERIFY_CRL_CHECK_CHAIN", 12), ("32", 32),
        ] {
            #expect(try RedisURL(parsing: "rediss://h/0?ssl_include_verify_flags=\(text)").tls?.includeVerifyFlags == flags)
        }
        #expect(throws: CeleryWorkerError.self) { try RedisURL(parsing: "rediss://h/0?ssl_exclude_verify_flags=VERIFY_NOPE") }
        var byConfig = try RedisURL(parsing: "redis://h/0")
        _ = try byConfig.settleBackendTLS(configured: configured)
        #expect(byConfig.tls == configured)
        func message(_ text: String, _ configured: RedisTLS? = nil) -> String? {
            do {
                var url = try RedisURL(parsing: text)
                return try url.settleBackendTLS(configured: configured)
            } catch {
                return "error: \(error.message)"
            }
        }
        #expect(message("rediss://h/0")?.hasPrefix("error: A rediss:// URL must have parameter ssl_cert_reqs") == true)
        #expect(message("rediss://h/0", RedisTLS(caCertificates: "/ca.pem"))?.hasPrefix("error: A rediss:// URL must") == true)
        #expect(message("redis://h/0?ssl_cert_reqs=required")?.hasPrefix("error: SSL connection parameters have been provided") == true)
        #expect(message("rediss://h/0?ssl_cert_reqs=optional")?.hasPrefix("Setting ssl_cert_reqs=CERT_OPTIONAL") == true)
        #expect(message("rediss://h/0?ssl_cert_reqs=CERT_NONE")?.hasPrefix("Setting ssl_cert_reqs=CERT_NONE") == true)
        #expect(message("rediss://h/0?ssl_cert_reqs=required") == nil)
        #expect(message("redis://h/0") == nil)
    }

    /// Why the OpenSSL context of `tls` cannot be built, or `nil` when it can.
    static func failure(_ tls: RedisTLS) -> String? {
        do {
            try tls.validate()
            return nil
        } catch {
            return error.message
        }
    }

    @Test("TLS files that cannot be read are reported when the settings are checked, before any connection")
    func tlsFiles() {
        #expect(
            Self.failure(RedisTLS(certificateRequirement: .required, caCertificates: "/nonexistent/ca.pem"))
                == "TLS: cannot read /nonexistent/ca.pem: No such file or directory")
        #expect(Self.failure(RedisTLS(certificateFile: "/nonexistent/client.pem"))?.contains("cannot read /nonexistent/client.pem") == true)
        // A file that is there but holds no certificate: OpenSSL's reason.
        #expect(
            Self.failure(RedisTLS(certificateRequirement: .required, caCertificates: "/etc/hostname"))?
                .hasPrefix("TLS: cannot load the certificate authorities from /etc/hostname: ") == true)
        #expect(Self.failure(RedisTLS(keyFile: "/etc/hostname"))?.contains("ssl_keyfile /etc/hostname is given without ssl_certfile") == true)
        #expect(Self.failure(RedisTLS(certificateRequirement: RedisTLS.CertificateRequirement.none)) == nil)
    }

    @Test("redis-py's ssl_password, ssl_ciphers and ssl_min_version: read as kombu passes them, applied to the context")
    func tlsPasswordCiphersAndVersion() throws {
        let url = try RedisURL(
            parsing: "rediss://h/0?ssl_cert_reqs=none&ssl_password=p%40ss&ssl_ciphers=ECDHE%2BAESGCM&ssl_min_version=TLSv1_3")
        #expect(
            url.tls
                == RedisTLS(
                    certificateRequirement: RedisTLS.CertificateRequirement.none, password: "p@ss", ciphers: "ECDHE+AESGCM", minimumVersion: 772))
        for name in ["TLSv1_2", "TLSVersion.TLSv1_2", "ssl.TLSVersion.TLSv1_2", "771"] {
            #expect(try RedisURL(parsing: "rediss://h/0?ssl_min_version=\(name)").tls?.minimumVersion == 771)
        }
        for bad in ["TLSv9", "3", "", "SSLv3"] {
            #expect(throws: CeleryWorkerError.self) { try RedisURL(parsing: "rediss://h/0?ssl_min_version=\(bad)") }
        }
        #expect(url.tls?.celeryObject["ssl_password"] == "**")

        let unverified = RedisTLS(certificateRequirement: RedisTLS.CertificateRequirement.none)
        var ciphers = unverified
        ciphers.ciphers = "NO-SUCH-CIPHER"
        #expect(Self.failure(ciphers)?.hasPrefix("TLS: cannot use the ciphers 'NO-SUCH-CIPHER': ") == true)
        ciphers.ciphers = "ECDHE+AESGCM:!aNULL"
        ciphers.minimumVersion = 772
        #expect(Self.failure(ciphers) == nil)

        // A client key encrypted with a passphrase, as `openssl` writes one.
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("tls-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let openssl = Process()
        openssl.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        openssl.arguments = [
            "req", "-x509", "-newkey", "rsa:2048", "-keyout", "key.pem", "-out", "cert.pem", "-days", "1", "-subj", "/CN=worker",
            "-passout", "pass:s3cret",
        ]
        openssl.currentDirectoryURL = directory
        openssl.standardError = FileHandle.nullDevice
        try openssl.run()
        openssl.waitUntilExit()
        try #require(openssl.terminationStatus == 0)
        var client = unverified
        client.certificateFile = directory.appendingPathComponent("cert.pem").path
        client.keyFile = directory.appendingPathComponent("key.pem").path
        // Without the passphrase: an error that says what to give, never a prompt on the terminal.
        #expect(Self.failure(client)?.contains("(if it is encrypted, ssl_password gives its passphrase)") == true)
        client.password = "wrong"
        #expect(Self.failure(client)?.hasPrefix("TLS: cannot load the client key \(client.keyFile ?? ""): ") == true)
        client.password = "s3cret"
        #expect(Self.failure(client) == nil)
    }

    @Test("Celery's broker_* and redis_* parts fill in what a URL leaves out; the URL's own parts win")
    func completingParts() throws {
        let all = RedisURL.Parts(host: "h", port: 6380, username: "u", password: "p w@:", database: 2)
        #expect(RedisURL.completing("redis://", with: all) == "redis://u:p%20w%40%3A@h:6380/2")
        let filled = try RedisURL(parsing: RedisURL.completing("redis://", with: all))
        #expect(filled.endpoint == .tcp(host: "h", port: 6380) && filled.username == "u" && filled.password == "p w@:" && filled.database == 2)
        #expect(RedisURL.completing("redis://x:1/5", with: all) == "redis://u:p%20w%40%3A@x:1/5")
        #expect(RedisURL.completing("rediss://:secret@x?ssl_cert_reqs=none", with: all) == "rediss://:secret@x:6380/2?ssl_cert_reqs=none")
        #expect(RedisURL.completing("myhost", with: RedisURL.Parts(port: 6390)) == "redis://myhost:6390")
        #expect(RedisURL.completing("redis://[::1]/3", with: RedisURL.Parts(port: 7000)) == "redis://[::1]:7000/3")
        #expect(RedisURL.completing("redis://[::1]:7001", with: RedisURL.Parts(port: 7000)) == "redis://[::1]:7001")
        #expect(RedisURL.completing("redis+socket:///tmp/r.sock", with: all) == "redis+socket:///tmp/r.sock")
        #expect(RedisURL.completing("redis://x/1", with: RedisURL.Parts()) == "redis://x/1")
        #expect(RedisURL.completing("redis://x:/", with: RedisURL.Parts(port: 7000)) == "redis://x:7000/")
        // Cut as the parser cuts it: the credentials end at the last `@`, even with a `/` in the password.
        let slashed = try RedisURL(parsing: RedisURL.completing("redis://:pa/ss@x", with: all))
        #expect(slashed.password == "pa/ss" && slashed.endpoint == .tcp(host: "x", port: 6380) && slashed.database == 2)
        let settings = try CelerySettings.parse(
            """
            BROKER_HOST: myhost
            BROKER_PORT: 6390
            BROKER_VHOST: /
            broker_password: s
            CELERY_REDIS_HOST: rh
            redis_db: '3'
            redis_password: null
            """, source: "p.yaml")
        #expect(settings.brokerHost == "myhost" && settings.brokerParts == RedisURL.Parts(port: 6390, password: "s"))
        #expect(settings.backendParts == RedisURL.Parts(host: "rh", database: 3) && settings.warnings.isEmpty)
        #expect(throws: CeleryWorkerError.self) { try CelerySettings.parse("broker_port: 70000", source: "p.yaml") }
    }

    @Test("the broker as Celery 5.7 shows it: the password masked even where there is none")
    func brokerDisplay() throws {
        // White space around a URL (a secret's trailing newline) is read past, as Python reads `int('0\n')`; the
        // `results:` line drops tabs and line breaks as Python's `urlsplit` does.
        #expect(try RedisURL(parsing: "redis://127.0.0.1:6379/2\n").database == 2)
        #expect(try RedisURL(parsing: " redis://h/1 ").brokerDisplay == "redis://:**@h:6379/1")
        #expect(try RedisURL(parsing: "redis://a:1/0 ; redis://b:2/0\n").failover?.alternates.count == 2)
        #expect(RedisURL.sanitized("redis://127.0.0.1:6399/1\n") == "redis://127.0.0.1:6399/1")
        #expect(try RedisURL(parsing: "redis://127.0.0.1:6379/1").brokerDisplay == "redis://:**@127.0.0.1:6379/1")
        #expect(try RedisURL(parsing: "redis://user:secret@h/2").brokerDisplay == "redis://user:**@h:6379/2")
        #expect(try RedisURL(parsing: "rediss://:pw@h:6380/0").brokerDisplay == "rediss://:**@h:6380/0")
        // Celery 5.7's lines for these (kombu's `as_url` quotes the user and host, and `urlparse` lowers the host).
        #expect(try RedisURL(parsing: "redis://us%40er:pw@LOCALHOST:6399/0").brokerDisplay == "redis://us%40er:**@localhost:6399/0")
        #expect(try RedisURL(parsing: "redis://[::1]:6441/0").brokerDisplay == "redis://:**@%3A%3A1:6441/0")
        #expect(try RedisURL(parsing: "redis+socket:///run/redis.sock?virtual_host=3").brokerDisplay == "redis+socket:///run/redis.sock")
        #expect(
            try RedisURL(parsing: "sentinel://a:26379/1;sentinel://b:26380/1").brokerDisplay == "sentinel://:**@a:26379/1")
    }

    @Test("the result backend's setting as Celery's banner shows it: kombu 5.7's maybe_sanitize_url of the text as written")
    func backendSettingShown() {
        // Each pair is what Celery 5.7's `backend.as_uri()` (kombu 5.7's `maybe_sanitize_url`) gave for the text.
        let shown: [(String, String)] = [
            ("redis://localhost", "redis://localhost/"), ("redis://:pw@localhost:6379/1?foo=bar", "redis://:**@localhost:6379/1"),
            ("redis://localhost/", "redis://localhost/"), ("redis://127.0.0.1:6399/1", "redis://127.0.0.1:6399/1"),
            ("redis://user:pw@h/2", "redis://user:**@h/2"), ("rediss://h:6380/0?ssl_cert_reqs=required", "rediss://h:6380/0"),
            ("unix:///tmp/r.sock?db=2", "unix:///tmp/r.sock"), ("REDIS://User:P%40ss@HOST.example:0/3#frag", "redis://User:**@host.example/3"),
            ("redis://", "redis://"), ("redis://[::1]:6379/0", "redis://%3A%3A1:6379/0"), ("redis://us%20er@h:6379", "redis://us%20er@h:6379/"),
            ("redis+socket:///tmp/x.sock?virtual_host=1", "redis+socket:///tmp/x.sock"), ("redis://h:/4", "redis://h/4"),
            ("redis://:@h/5", "redis://h/5"), ("sentinel://:pw@h1:26379/0", "sentinel://:**@h1:26379/0"), ("redis", "redis"),
        ]
        for (text, expected) in shown {
            #expect(RedisURL.sanitized(text) == expected, "\(text)")
        }
        // Where kombu's parse raises, the worker shows the URL it reads instead.
        for text in ["sentinel://h1:26379;sentinel://h2:26379/0", "redis://h:port/0", "redis://h:70000/0"] {
            #expect(RedisURL.sanitized(text) == nil, "\(text)")
        }
    }

    @Test("the broker and the backend's setting as Celery 5.7's conf reply shows them, every password masked")
    func confShown() throws {
        // Each pair is what Celery 5.7's `celery.app.utils.sanitize_url` gave for the text.
        let shown: [(String, String)] = [
            ("redis://:pw@127.0.0.1:6399/1?foo=bar", "redis://:********@127.0.0.1:6399/1?foo=bar"),
            ("redis://user:pw@h/2", "redis://user:********@h/2"), ("redis://h:6379/0", "redis://h:6379/0"), ("redis", "redis"),
            ("rediss://:p@ss@h:6380/0?ssl_cert_reqs=required", "rediss://:********@h:6380/0?ssl_cert_reqs=required"),
            ("sentinel://:pw@h1:26379;sentinel://:pw@h2:26379/0", "sentinel://:********@h1:26379;sentinel://:********@h2:26379/0"),
            ("sentinel://:pw@h1:26379;h2:26379/0", "sentinel://:********@h1:26379;h2:26379/0"), ("redis://user@h/0", "redis://user@h/0"),
            ("unix:///tmp/r.sock?db=2", "unix:///tmp/r.sock?db=2"), ("redis://a@b@h/0", "redis://********@h/0"),
            ("redis://h1;h2/0", "redis://h1;h2/0"),
        ]
        for (text, expected) in shown {
            #expect(RedisURL.censored(text) == expected, "\(text)")
        }
        #expect(try RedisURL(parsing: "redis://127.0.0.1:6379/1").brokerDisplay(mask: "********") == "redis://:********@127.0.0.1:6379/1")
    }

    @Test("a failed connect is worded as redis-py words it")
    func connectErrors() {
        #expect(
            RedisConnection.connectError("Connection refused", to: "127.0.0.1:1").message
                == "Error 111 connecting to 127.0.0.1:1. Connection refused.")
        #expect(
            RedisConnection.connectError("No such file or directory", to: "/run/redis.sock").message
                == "Error 2 connecting to /run/redis.sock. No such file or directory.")
        #expect(
            RedisConnection.connectError("Name or service not known", to: "nohost:6379").message
                == "Error -2 connecting to nohost:6379. Name or service not known.")
        let timeout = RedisConnection.connectError("Connection timed out", to: "10.255.255.1:6379")
        #expect(timeout.message == "Timeout connecting to server" && timeout.code == .timeout)
        #expect(RedisConnection.connectError("odd", to: "h:1").message == "Error connecting to h:1. odd.")
        #expect(
            RedisConnection.connectError("Can't create socket: Too many open files", to: "127.0.0.1:6379").message
                == "Error 24 connecting to 127.0.0.1:6379. Too many open files.")
    }
}

/// A failover list's connections, told apart by the database each one is on (`CLIENT INFO`), so that no key is read
/// or written: other suites flush their databases at any time.
@Suite("failover lists against a real redis-server", .serialized, .enabled(if: TestRedis.enabled))
struct RedisFailoverTests {
    private func database(_ client: RedisClient) async throws -> String? {
        let info = try await client.send(RedisCommand("CLIENT", "INFO")).text ?? ""
        return info.split(separator: " ").first { $0.hasPrefix("db=") }.map(String.init)
    }

    @Test("a failover list's connections go to the first server that answers, and follow one another to it")
    func failoverConnections() async throws {
        let base = try #require(TestRedis.base)
        let url = try RedisURL(parsing: "redis://127.0.0.1:1/0;\(base)/1")
        let client = RedisClient(url: url)
        #expect(try await database(client) == "db=1")
        #expect(url.failover?.current.index == 1)
        #expect(
            client.takeFailovers()
                == RedisURL.Failover.Log(
                    failures: [.init(server: "redis://:**@127.0.0.1:1/0", error: "Error 111 connecting to 127.0.0.1:1. Connection refused.")],
                    lastFailed: "redis://:**@127.0.0.1:1/0"))
        #expect(client.takeFailovers() == RedisURL.Failover.Log())
        // Another connection of the same URL goes straight to the server in use.
        let other = RedisClient(url: url)
        #expect(try await database(other) == "db=1")
        #expect(other.takeFailovers() == RedisURL.Failover.Log())
        // Every server down: the last one's error, after the others' (the next attempt starts over at the first).
        let dead = try RedisURL(parsing: "redis://127.0.0.1:1/0;redis://127.0.0.1:2/0")
        let unreachable = RedisClient(url: dead)
        await #expect { try await unreachable.send(RedisCommand("PING")) } throws: { error in
            (error as? CeleryWorkerError)?.message == "Error 111 connecting to 127.0.0.1:2. Connection refused."
        }
        let log = unreachable.takeFailovers()
        #expect(log.failures.map(\.server) == ["redis://:**@127.0.0.1:1/0"] && log.lastFailed == "redis://:**@127.0.0.1:2/0")
        #expect(dead.failover?.current.index == 0)
    }

    @Test("a connection to one server of a failover list follows the others when they move on")
    func failoverFollows() async throws {
        let base = try #require(TestRedis.base)
        let url = try RedisURL(parsing: "\(base)/1;\(base)/2")
        let client = RedisClient(url: url)
        #expect(try await database(client) == "db=1")
        let failover = try #require(url.failover)
        failover.failed(failover.current, .init(server: "db 1", error: "down"))  // as another connection would
        #expect(try await database(client) == "db=2")
        #expect(client.takeFailovers() == RedisURL.Failover.Log())
    }
}
