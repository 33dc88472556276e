import CeleryProtocol
import Logging
import Synchronization
import Testing

@testable import CeleryWorker

/// The watch on empty queues (``ListWatch``), in the broker's serialized suite: it shares that suite's database.
extension RedisBrokerTests {
    /// What a test logger was told, each line `<level>: <message>`.
    final class LogLines: Sendable {
        let lines = Mutex<[String]>([])

        var logger: Logger {
            Logger(label: "celery.test") { _ in Handler(lines: self) }
        }

        struct Handler: LogHandler {
            let lines: LogLines
            var metadata: Logger.Metadata = [:]
            var logLevel: Logger.Level = .info

            subscript(metadataKey key: String) -> Logger.Metadata.Value? {
                get { metadata[key] }
                set { metadata[key] = newValue }
            }

            func log(event: LogEvent) {
                lines.lines.withLock { $0.append("\(event.level): \(event.message)") }
            }
        }
    }

    /// The `CLIENT LIST` lines of the clients named `name` (or whose other `field` is `name`), each as its fields.
    func clients(named name: String, on client: RedisClient, field: String = "name") async throws -> [[String: String]] {
        let list = try #require(try await client.send(RedisCommand("CLIENT", "LIST")).text)
        return list.split(separator: "\n").map { line in
            Dictionary(
                line.split(separator: " ").compactMap { field -> (String, String)? in
                    guard let equals = field.firstIndex(of: "=") else { return nil }
                    return (String(field[..<equals]), String(field[field.index(after: equals)...]))
                }, uniquingKeysWith: { first, _ in first })
        }.filter { $0[field] == name }
    }

    /// A broker whose connections carry a name of their own, and a queue of its own (tracking does not tell
    /// databases apart, and other suites push to `celery`).
    func namedBroker(_ prefix: String) async throws -> (broker: RedisBroker, client: RedisClient, name: String, queue: String) {
        let (_, client) = try await broker()
        var url = client.url
        url.clientName = prefix + "-" + RedisBroker.randomToken()
        let broker = RedisBroker(blocking: RedisClient(url: url), commands: client)
        return (broker, client, url.clientName ?? "", prefix + "-" + RedisBroker.randomToken())
    }

    /// The `CLIENT LIST` fields of the watch's connection and of the fetch connection of the broker named `name`.
    func watchAndFetcher(named name: String, on client: RedisClient) async throws -> (watch: [String: String], fetcher: [String: String]) {
        let named = try await clients(named: name, on: client)
        let watch = try #require(named.first { $0["flags"] == "P" }, "the watch's connection: \(named)")
        let fetcher = try #require(named.first { $0["flags"]?.contains("t") == true }, "the fetch connection: \(named)")
        return (watch, fetcher)
    }

    /// ``watchAndFetcher(named:on:)`` once the fetch connection is blocked in `BLMOVE` (looked for every 30 ms for
    /// 3 s: the fetch may take a while to start on a busy machine), or as they stand after that.
    func blockedFetcher(named name: String, on client: RedisClient) async throws -> (watch: [String: String], fetcher: [String: String]) {
        for _ in 0..<100 {
            try await Task.sleep(for: .milliseconds(30))
            let connections = try await watchAndFetcher(named: name, on: client)
            if connections.fetcher["cmd"] == "blmove" { return connections }
        }
        return try await watchAndFetcher(named: name, on: client)
    }

    /// The first fetch that brings anything (an idle fetch returns empty after about a second, as `BRPOP` times out).
    func firstDeliveries(_ broker: RedisBroker, queue: String) async throws -> [BrokerDelivery] {
        for _ in 0..<30 {
            let deliveries = try await broker.fetch(queues: [queue], limit: 4)
            if !deliveries.isEmpty { return deliveries }
        }
        return []
    }

    /// How many times Redis has run `CLIENT UNBLOCK` (`INFO commandstats`).
    func unblocks(on client: RedisClient) async throws -> Int {
        let stats = try #require(try await client.send(RedisCommand("INFO", "commandstats")).text)
        guard let line = stats.split(separator: "\r\n").first(where: { $0.hasPrefix("cmdstat_client|unblock:") }),
            let calls = line.split(separator: ",").first?.split(separator: "=").last
        else { return 0 }
        return Int(calls) ?? 0
    }

    @Test(
        "while consuming, an idle fetch blocks in BLMOVE with the script behind it, tracking on for the other lists; the script pops and records what comes"
    )
    func watchedFetch() async throws {
        let (broker, client, name, queue) = try await namedBroker("watched")
        let messages = [try fixture("v2-json-add.message.json"), try fixture("v2-msgpack-add.message.json")]
        let log = LogLines()
        try await broker.consuming(logger: log.logger) { () async throws -> Void in
            // Nothing waiting: the script finds the lists empty and has Redis watch them.
            #expect(try await broker.fetch(queues: [queue], limit: 4).isEmpty)
            async let fetched = firstDeliveries(broker, queue: queue)
            let (watch, fetcher) = try await blockedFetcher(named: name, on: client)
            #expect(watch["cmd"] == "subscribe" && watch["sub"] == "1")
            #expect(fetcher["redir"] == watch["id"])
            #expect(fetcher["flags"]?.contains("b") == true && fetcher["cmd"] == "blmove", "blocked on the queue's list: \(fetcher)")
            // Two messages in one push: the block ends, and the script behind it takes both.
            let pushedAt = WallClock.now()
            try await client.send(RedisCommand("LPUSH", RedisArgument(queue), RedisArgument(messages[0]), RedisArgument(messages[1])))
            let deliveries = try await fetched
            #expect(deliveries.map(\.raw) == messages)
            for delivery in deliveries {
                #expect(delivery.pendingRecord == nil, "recorded by the script that popped it")
                let tag = try #require(delivery.deliveryTag)
                #expect(try await client.send(RedisCommand("HEXISTS", "unacked", RedisArgument(tag))) == .integer(1))
                // Indexed and received when it came, not when the fetch began to block (300 ms before).
                let score = try #require(try await client.send(RedisCommand("ZSCORE", "unacked_index", RedisArgument(tag))).text)
                #expect(try #require(Double(score)) >= pushedAt - 0.05, "\(score) against \(pushedAt)")
                #expect(delivery.receivedAt >= pushedAt)
            }
            #expect(try await client.send(RedisCommand("LLEN", RedisArgument(queue))) == .integer(0))
            // Fewer than asked for: the other lists were left watched, and a push to one has the watch unblock the
            // next fetch (well before its BLMOVE's second is up).
            let unblocked = try await unblocks(on: client)
            async let next = firstDeliveries(broker, queue: queue)
            #expect(try await blockedFetcher(named: name, on: client).fetcher["cmd"] == "blmove")
            let pushed = ContinuousClock.now
            try await client.send(RedisCommand("LPUSH", RedisArgument(queue + Self.separator + "3"), RedisArgument(messages[0])))
            #expect(try await next.map(\.queue) == [queue])
            #expect(ContinuousClock.now - pushed < .milliseconds(600))
            #expect(try await unblocks(on: client) > unblocked)
        }
        #expect(log.lines.withLock { $0 }.isEmpty)
        // Once consuming ends, the watch's connection closes.
        var open = try await clients(named: name, on: client).filter { $0["flags"] == "P" }
        for _ in 0..<50 where !open.isEmpty {
            try await Task.sleep(for: .milliseconds(20))
            open = try await clients(named: name, on: client).filter { $0["flags"] == "P" }
        }
        #expect(open.isEmpty)
    }

    @Test("a watch whose connection is killed subscribes anew, and tracking follows it; so does a killed fetch connection")
    func watchKilled() async throws {
        let (broker, client, name, queue) = try await namedBroker("killed")
        let raw = try fixture("v2-json-add.message.json")
        func connections() async throws -> (watch: [String: String], fetcher: [String: String]) {
            try await watchAndFetcher(named: name, on: client)
        }
        let log = LogLines()
        try await broker.consuming(logger: log.logger) { () async throws -> Void in
            #expect(try await broker.fetch(queues: [queue], limit: 4).isEmpty)
            let before = try await connections()
            for victim in [before.watch, before.fetcher] {
                try await client.send(RedisCommand("CLIENT", "KILL", "ID", RedisArgument(try #require(victim["id"]))))
                // The fetch that notices (a broken wait, or a failed script, thrown as the worker's fetch loop sees
                // it) is followed by one that works.
                async let fetched = { () async throws -> [BrokerDelivery] in
                    for _ in 0..<30 {
                        do {
                            let deliveries = try await broker.fetch(queues: [queue], limit: 4)
                            if !deliveries.isEmpty { return deliveries }
                        } catch let error as CeleryWorkerError where error.isConnectionProblem {
                            continue
                        }
                    }
                    return []
                }()
                try await Task.sleep(for: .milliseconds(300))
                try await client.send(RedisCommand("LPUSH", RedisArgument(queue), RedisArgument(raw)))
                #expect(try await fetched.map(\.raw) == [raw])
                // The next fetch finds nothing, with tracking on where the kill made a new connection.
                #expect(try await broker.fetch(queues: [queue], limit: 4).isEmpty)
                let after = try await connections()
                #expect(after.fetcher["redir"] == after.watch["id"], "\(after)")
                if victim["id"] == before.watch["id"] {
                    #expect(after.watch["id"] != before.watch["id"] && after.fetcher["id"] == before.fetcher["id"])
                } else {
                    #expect(after.fetcher["id"] != before.fetcher["id"])
                }
            }
        }
        #expect(log.lines.withLock { $0 }.isEmpty)
    }

    /// A broker whose fetch connection logs in as a new ACL user with every right but what `rule` takes away.
    func limitedBroker(_ prefix: String, rule: String) async throws -> (broker: RedisBroker, client: RedisClient, user: String) {
        let (_, client) = try await broker()
        let user = prefix + RedisBroker.randomToken()
        try await client.send(RedisCommand("ACL", "SETUSER", RedisArgument(user), "reset", "on", ">secret", "~*", "&*", "+@all", RedisArgument(rule)))
        var url = client.url
        url.username = user
        url.password = "secret"
        return (RedisBroker(blocking: RedisClient(url: url), commands: client), client, user)
    }

    @Test(
        "Redis that refuses what the watch needs: one warning, and idle fetches block in BRPOP as kombu's",
        arguments: [
            ("-client", "CLIENT ID"),  // no CLIENT at all
            ("-client|tracking", "CLIENT TRACKING"),  // no tracking
            ("resetchannels", "SUBSCRIBE __redis__:invalidate"),  // no channel
        ])
    func refusedWatch(rule: String, refused: String) async throws {
        let (broker, client, user) = try await limitedBroker("no-watch-", rule: rule)
        let queue = "refused-" + RedisBroker.randomToken()
        let raw = try fixture("v2-json-add.message.json")
        let log = LogLines()
        try await broker.consuming(logger: log.logger) { () async throws -> Void in
            #expect(try await broker.fetch(queues: [queue], limit: 4).isEmpty)
            async let fetched = firstDeliveries(broker, queue: queue)
            try await Task.sleep(for: .milliseconds(300))
            let list = try #require(try await client.send(RedisCommand("CLIENT", "LIST")).text)
            let blocked = list.split(separator: "\n").filter { $0.contains("user=\(user)") && $0.contains("cmd=brpop") }
            #expect(blocked.count == 1, "\(list)")
            try await client.send(RedisCommand("LPUSH", RedisArgument(queue), RedisArgument(raw)))
            #expect(try await fetched.map(\.raw) == [raw])
            #expect(try await broker.fetch(queues: [queue], limit: 4).isEmpty)
        }
        try await client.send(RedisCommand("ACL", "DELUSER", RedisArgument(user)))
        let lines = log.lines.withLock { $0 }
        #expect(lines.count == 1, "\(lines)")
        #expect(lines.first?.hasPrefix("warning: Redis refused client tracking (\(refused)") == true, "\(lines)")
    }

    @Test(
        "Redis that refuses scripts says so, in the reply to the command it refuses",
        arguments: [("-@scripting", "EVAL"), ("-evalsha", "EVALSHA"), ("+@all", nil)])
    func refusedScripts(rule: String, refused: String?) async throws {
        let (_, client, user) = try await limitedBroker("no-scripts-", rule: rule)
        var url = client.url
        url.username = user
        url.password = "secret"
        let limited = RedisClient(url: url)
        let refusal = await limited.refusal()
        try await client.send(RedisCommand("ACL", "DELUSER", RedisArgument(user)))
        if let refused {
            let lower = refused.lowercased()
            #expect(refusal == .scripts("\(refused): NOPERM this user has no permissions to run the '\(lower)' command"))
        } else {
            #expect(refusal == nil)
        }
        // Redis that cannot be asked is not said to refuse: the worker's usual retries report it.
        #expect(await RedisClient(url: try RedisURL(parsing: "redis://127.0.0.1:1/0")).refusal() == nil)
    }

    @Test("Redis that refuses the connection as its URL configures it says so: a database it does not have, a wrong password")
    func refusedConnection() async throws {
        let (_, client) = try await broker()
        let url = client.url
        var missing = url
        missing.database = 4096
        #expect(
            await RedisClient(url: missing).refusal() == .connection("SELECT on \(missing) failed: ERR DB index is out of range"))
        var stranger = url
        stranger.username = "no-such-user-" + RedisBroker.randomToken()
        stranger.password = "secret"
        guard case .connection(let reason)? = await RedisClient(url: stranger).refusal() else {
            Issue.record("a wrong password was not said to be refused")
            return
        }
        #expect(reason.hasPrefix("AUTH on \(stranger) failed: WRONGPASS"), "\(reason)")
        // A password where Redis asks for none is no refusal: Redis answers `AUTH <password>` with an error, and the
        // connection is the default user's all the same (redis-py's `HELLO 3 AUTH default …` is taken there).
        var needless = url
        needless.password = "s3cret"
        let asked = RedisClient(url: needless)
        #expect(await asked.refusal() == nil)
        #expect(try await asked.send(RedisCommand("PING")) == .status("PONG"))
    }

    @Test(
        "Redis that refuses BLMOVE or CLIENT UNBLOCK: one line, and idle fetches wait for the watch's report",
        arguments: ["blmove", "client|unblock"])
    func refusedBlock(command: String) async throws {
        let (broker, client, user) = try await limitedBroker("no-block-", rule: "-" + command)
        let queue = "unblocked-" + RedisBroker.randomToken()
        let raw = try fixture("v2-json-add.message.json")
        let log = LogLines()
        try await broker.consuming(logger: log.logger) { () async throws -> Void in
            // The second fetch is the first that would block.
            #expect(try await broker.fetch(queues: [queue], limit: 4).isEmpty)
            #expect(try await broker.fetch(queues: [queue], limit: 4).isEmpty)
            for list in [queue, queue + Self.separator + "6"] {
                async let fetched = firstDeliveries(broker, queue: queue)
                try await Task.sleep(for: .milliseconds(300))
                let fetcher = try #require(try await clients(named: user, on: client, field: "user").first { $0["flags"]?.contains("t") == true })
                #expect(fetcher["flags"]?.contains("b") == false && fetcher["cmd"] == "llen", "waiting, not blocked: \(fetcher)")
                try await client.send(RedisCommand("LPUSH", RedisArgument(list), RedisArgument(raw)))
                #expect(try await fetched.map(\.raw) == [raw])
            }
        }
        try await client.send(RedisCommand("ACL", "DELUSER", RedisArgument(user)))
        let lines = log.lines.withLock { $0 }
        let refused = command == "blmove" ? "BLMOVE" : "CLIENT UNBLOCK"
        #expect(lines.count == 1, "\(lines)")
        #expect(lines.first?.hasPrefix("info: Redis refused \(refused): NOPERM") == true, "\(lines)")
    }
}
