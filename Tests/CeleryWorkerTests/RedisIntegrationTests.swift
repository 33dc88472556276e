import CeleryProtocol
import Foundation
import Logging
import ServiceLifecycle
import Synchronization
import Testing

@testable import CeleryWorker

/// The Redis server the test script started (`CELERY_TEST_REDIS_URL`, e.g. `redis://127.0.0.1:6390`).
/// Run by hand without it, these suites are skipped; in CI (`CI` set) a missing server fails them.
enum TestRedis {
    static let base = ProcessInfo.processInfo.environment["CELERY_TEST_REDIS_URL"]
    static let isCI = ProcessInfo.processInfo.environment["CI"] != nil
    static let enabled = base != nil || isCI

    static func client(database: Int) async throws -> RedisClient {
        let base = try #require(base, "CELERY_TEST_REDIS_URL is not set: scripts/test.sh starts a redis-server for these tests")
        let client = RedisClient(url: try RedisURL(parsing: "\(base)/\(database)"))
        try await client.send(RedisCommand("FLUSHDB"))
        return client
    }
}

@Suite("hiredis client against a real redis-server", .serialized, .enabled(if: TestRedis.enabled))
struct RedisClientTests {
    @Test("binary-safe arguments and replies")
    func binarySafe() async throws {
        let client = try await TestRedis.client(database: 2)
        let value: [UInt8] = [0, 13, 10, 255, 0x24, 0x2A] + Array("我".utf8)
        try await client.send(RedisCommand("SET", "k", RedisArgument(value)))
        #expect(try await client.send(RedisCommand("GET", "k")).bytes == value)
        #expect(try await client.send(RedisCommand("GET", "missing")) == .null)
        try await client.send(RedisCommand("SET", RedisArgument([UInt8]()), "empty-key"))
        #expect(try await client.send(RedisCommand("GET", RedisArgument([UInt8]()))).text == "empty-key")
    }

    @Test("pipelining sends many commands in one round trip, replies in order")
    func pipeline() async throws {
        let client = try await TestRedis.client(database: 2)
        let replies = try await client.pipeline((0..<100).map { _ in RedisCommand("INCR", "counter") })
        #expect(replies.map(\.integer) == (1...100).map { Int64($0) })
    }

    @Test("MULTI/EXEC returns the inner replies; error replies are typed")
    func transactionAndErrors() async throws {
        let client = try await TestRedis.client(database: 2)
        let results = try await client.transaction([RedisCommand("SET", "a", "1"), RedisCommand("INCRBY", "a", "4")])
        #expect(results == [.status("OK"), .integer(5)])
        await #expect(throws: CeleryWorkerError.self) { try await client.send(RedisCommand("NOSUCHCOMMAND")) }
        do {
            try await client.send(RedisCommand("LPUSH", "a", "x"))
            Issue.record("LPUSH on a string must fail")
        } catch {
            #expect(error.code == .redisError)
            #expect(error.message.contains("WRONGTYPE"))
        }
        // the connection is still usable after an error reply
        #expect(try await client.send(RedisCommand("GET", "a")).text == "5")
    }

    @Test("queued commands go out with the next call's, their replies read first, and then their callback runs")
    func appendUnread() throws {
        let base = try #require(TestRedis.base)
        let connection = RedisConnection(url: try RedisURL(parsing: "\(base)/2"))
        let other = RedisConnection(url: try RedisURL(parsing: "\(base)/2"))
        let read = Mutex(0)
        _ = try connection.appendUnread([RedisCommand("SET", "unread", "1"), RedisCommand("INCR", "unread")]) { _ in read.withLock { $0 += 1 } }
        // Only queued: nothing is written yet.
        #expect(try other.execute([RedisCommand("EXISTS", "unread")]) == [.integer(0)])
        #expect(read.withLock { $0 } == 0)
        #expect(try connection.execute([RedisCommand("GET", "unread")]) == [.string(Array("2".utf8))])
        #expect(read.withLock { $0 } == 1)
        let third = try connection.appendUnread([RedisCommand("INCR", "unread")]) { _ in read.withLock { $0 += 1 } }
        try connection.readUnread(through: third)
        #expect(read.withLock { $0 } == 2)
        #expect(try other.execute([RedisCommand("GET", "unread")]) == [.string(Array("3".utf8))])
        // A read for commands already read does nothing: what was queued since is not written.
        _ = try connection.appendUnread([RedisCommand("INCR", "unread")]) { _ in read.withLock { $0 += 1 } }
        try connection.readUnread(through: third)
        #expect(try other.execute([RedisCommand("GET", "unread")]) == [.string(Array("3".utf8))])
        #expect(read.withLock { $0 } == 2)
        // Closed before they are written: the callback still runs, so nobody waits for them forever, and says so.
        let failures = Mutex<[String?]>([])
        _ = try connection.appendUnread([RedisCommand("INCR", "unread")]) { failure in failures.withLock { $0.append(failure) } }
        connection.close()
        #expect(read.withLock { $0 } == 3)
        #expect(failures.withLock { $0 } == [RedisConnection.unanswered])
        #expect(try connection.execute([RedisCommand("GET", "unread")]) == [.string(Array("3".utf8))])
        // The first error among the replies, inside EXEC's too, is handed to the callback.
        _ = try connection.appendUnread([RedisCommand("SET", "text", "x"), RedisCommand("INCR", "unread")]) { failure in
            failures.withLock { $0.append(failure) }
        }
        _ = try connection.appendUnread([RedisCommand("MULTI"), RedisCommand("INCR", "text"), RedisCommand("EXEC")]) { failure in
            failures.withLock { $0.append(failure) }
        }
        try connection.readUnread()
        let last = failures.withLock { Array($0.suffix(2)) }
        #expect(last.first == .some(nil))
        #expect(last.last??.hasPrefix("ERR value is not an integer") == true)
    }

    @Test("a client's message is sent again 3 times, after 0, 0.2 and 0.4 s, while the broker is unreachable, as Celery's publish retry policy does")
    func clientPublishRetries() async throws {
        let client = CeleryClient(brokerURL: try RedisURL(parsing: "redis://127.0.0.1:1/0"))
        let started = ContinuousClock.now
        do {
            _ = try await client.send("tasks.add", args: [1, 2])
            Issue.record("port 1 must refuse")
        } catch {
            #expect(error.code == .connectionFailed)
        }
        let elapsed = ContinuousClock.now - started
        #expect(elapsed >= .milliseconds(600) && elapsed < .seconds(5))
        await client.shutdown()
    }

    @Test("an unreachable server is a connection error that names the address")
    func unreachable() async throws {
        let client = RedisClient(url: try RedisURL(parsing: "redis://127.0.0.1:1/0"))
        do {
            try await client.send(RedisCommand("PING"))
            Issue.record("port 1 must refuse")
        } catch {
            #expect(error.code == .connectionFailed)
            #expect(error.message.contains("127.0.0.1:1"))
        }
    }
}

@Suite("kombu's Redis bookkeeping, byte for byte", .serialized, .enabled(if: TestRedis.enabled))
struct RedisBrokerTests {
    static let separator = "\u{06}\u{16}"

    func broker() async throws -> (RedisBroker, RedisClient) {
        let client = try await TestRedis.client(database: 3)
        let blocking = RedisClient(url: client.url)
        return (RedisBroker(blocking: blocking, commands: client), client)
    }

    @Test("declare binds the queue as kombu does")
    func declare() async throws {
        let (broker, client) = try await broker()
        try await broker.declare(queues: ["celery"])
        let member = "celery" + Self.separator + Self.separator + "celery"
        #expect(try await client.send(RedisCommand("SMEMBERS", "_kombu.binding.celery")).array == [.string(Array(member.utf8))])
        #expect(try await client.send(RedisCommand("SISMEMBER", "_kombu.binding_permanent.celery", RedisArgument(member))) == .integer(1))

        // worker_direct: `<node>.dq2` bound to `C.dq2` by the node name, as the configuration, banner and
        // `active_queues` describe it.
        var configuration = WorkerConfiguration(brokerURL: client.url, nodeName: "w1@host")
        configuration.workerDirect = true
        let direct = QueueBinding(exchange: "C.dq2", routingKey: "w1@host")
        #expect(configuration.queueBindings == ["w1@host.dq2": direct] && configuration.binding(of: "celery") == .named("celery"))
        try await broker.declare(queues: ["celery", "w1@host.dq2"], bindings: configuration.queueBindings)
        let directMember = "w1@host" + Self.separator + Self.separator + "w1@host.dq2"
        #expect(try await client.send(RedisCommand("SMEMBERS", "_kombu.binding.C.dq2")).array == [.string(Array(directMember.utf8))])
        #expect(try await client.send(RedisCommand("SMEMBERS", "_kombu.binding.w1@host.dq2")).array == [])
        configuration.queues.append("w1@host.dq2")
        let banner = Banner.text(configuration: configuration, taskNames: [], version: "0")
        #expect(banner.contains(".> w1@host.dq2      exchange=C.dq2(direct) key=w1@host"))
        #expect(WorkerRun.queueInfo("w1@host.dq2", binding: direct)["exchange"]?["name"] == "C.dq2")
    }

    @Test("a fetched message is recorded in unacked and unacked_index; ack removes both")
    func fetchAndAck() async throws {
        let (broker, client) = try await broker()
        let raw = try fixture("v2-json-add.message.json")
        try await client.send(RedisCommand("LPUSH", "celery", RedisArgument(raw)))
        let deliveries = try await broker.fetch(queues: ["celery"], limit: 1)
        let delivery = try #require(deliveries.first)
        let tag = try #require(delivery.deliveryTag)
        let record = try await client.send(RedisCommand("HGET", "unacked", RedisArgument(tag)))
        #expect(record.bytes == Array("[".utf8) + raw + Array(#", "", "celery"]"#.utf8))
        let score = try await client.send(RedisCommand("ZSCORE", "unacked_index", RedisArgument(tag)))
        #expect(abs((Double(score.text ?? "") ?? 0) - delivery.receivedAt) < 0.001)
        try await broker.ack([delivery])
        #expect(try await client.send(RedisCommand("HLEN", "unacked")) == .integer(0))
        #expect(try await client.send(RedisCommand("ZCARD", "unacked_index")) == .integer(0))
    }

    @Test("restore pushes back to the consuming end, marked redelivered; requeue to the back")
    func restore() async throws {
        let (broker, client) = try await broker()
        let raw = try fixture("v2-json-add.message.json")
        try await client.send(RedisCommand("LPUSH", "celery", RedisArgument(raw)))
        let delivery = try #require(try await broker.fetch(queues: ["celery"], limit: 1).first)
        try await client.send(RedisCommand("LPUSH", "celery", "other"))
        try await broker.restore([delivery], atFront: true)
        let restored = try #require(try await client.send(RedisCommand("RPOP", "celery")).bytes)
        let envelope = try KombuEnvelope(decoding: restored)
        #expect(envelope.headers["redelivered"] == true)
        #expect(envelope.properties["delivery_info"]?["redelivered"] == true)
        #expect(envelope.deliveryTag == delivery.deliveryTag)
        #expect(try await client.send(RedisCommand("HLEN", "unacked")) == .integer(0))

        try await client.send(RedisCommand("RPUSH", "celery", RedisArgument(raw)))
        let again = try #require(try await broker.fetch(queues: ["celery"], limit: 1).first)
        #expect(again.raw == raw)
        try await broker.restore([again], atFront: false)
        #expect(
            try await client.send(RedisCommand("LINDEX", "celery", "0")).bytes.map { try KombuEnvelope(decoding: $0).deliveryTag }
                == delivery.deliveryTag)
    }

    @Test("priority sub-queues are taken in Python's order: lower numbers first")
    func priorities() async throws {
        let (broker, client) = try await broker()
        #expect(RedisBroker.list(for: "celery", priority: 0) == "celery")
        #expect(RedisBroker.list(for: "celery", priority: 5) == "celery" + Self.separator + "3")
        #expect(RedisBroker.list(for: "celery", priority: 10) == "celery" + Self.separator + "9")
        #expect(RedisBroker.list(for: "celery", priority: -3) == "celery")
        let kombu = RedisTransportOptions()
        for (queue, priority) in [("celery", 0), ("celery", 9), ("größe", 3), ("a\u{06}b", 6), ("", 9), ("q3", 0), ("q\u{06}\u{16}5", 0)] {
            #expect(kombu.queue(ofList: RedisBroker.list(for: queue, priority: priority)) == queue)
            for prefix in ["tenant1:", "\u{06}\u{16}", "ü"] {
                #expect(kombu.queue(ofList: RedisBroker.list(for: queue, priority: priority, prefix: prefix), prefix: prefix) == queue)
            }
        }
        for (priority, name) in [(9, "p9"), (0, "p0"), (5, "p5"), (3, "p3"), (8, "p8"), (1, "p1")] {
            let list = RedisBroker.list(for: "celery", priority: priority)
            try await client.send(RedisCommand("LPUSH", RedisArgument(list), RedisArgument(name)))
        }
        var order: [String] = []
        for _ in 0..<6 {
            let delivery = try #require(try await broker.fetch(queues: ["celery"], limit: 1).first)
            order.append(String(decoding: delivery.raw, as: UTF8.self))
        }
        #expect(order == ["p0", "p1", "p5", "p3", "p8", "p9"])
    }
}

extension RedisBrokerTests {
    @Test("a message that arrives while the worker waits is recorded too (blocking path)")
    func blockingPathRecords() async throws {
        let (broker, client) = try await broker()
        let raw = try fixture("v2-msgpack-add.message.json")
        async let fetched = broker.fetch(queues: ["celery"], limit: 4)
        try await Task.sleep(for: .milliseconds(200))
        let pusher = RedisClient(url: client.url)
        try await pusher.send(RedisCommand("LPUSH", "celery", RedisArgument(raw)))
        let delivery = try #require(try await fetched.first)
        let tag = try #require(delivery.deliveryTag)
        // The record is queued as the message is handed on and written with the next pop, or, with no fetch after
        // this one, by itself on the fetch thread, which reads its reply (without that the wait would never end).
        let record = try #require(delivery.pendingRecord)
        final class Flag: Sendable { let value = Mutex(false) }
        let confirmed = Flag()
        Task { [confirmed] in
            await record.wait()
            confirmed.value.withLock { $0 = true }
        }
        for _ in 0..<500 where !confirmed.value.withLock({ $0 }) { try await Task.sleep(for: .milliseconds(10)) }
        try #require(confirmed.value.withLock { $0 }, "the record's reply was never read")
        #expect(
            try await client.send(RedisCommand("HGET", "unacked", RedisArgument(tag))).bytes
                == Array("[".utf8) + raw + Array(#", "", "celery"]"#.utf8))
        #expect(try await client.send(RedisCommand("ZSCORE", "unacked_index", RedisArgument(tag))).text != nil)
    }

    @Test("a blocking pop records odd delivery fields as kombu does, hands on what it decoded, records a bad body")
    func blockingPathRecordsOddFields() async throws {
        let (broker, client) = try await broker()
        let pusher = RedisClient(url: client.url)
        let fixtureText = String(decoding: try fixture("v2-json-add.message.json"), as: UTF8.self)
        let odd = fixtureText.replacingOccurrences(
            of: #""delivery_info": {"exchange": "", "routing_key": "celery"}"#,
            with: #""delivery_info": {"exchange": "ex\"1", "routing_key": "gr\u00f6\u00dfe"}"#)
        // The body is declared base64 but is not: the envelope does not decode, its properties still do.
        let undecodable = fixtureText.replacingOccurrences(of: #""body": ""#, with: #""body": "!!!"#)
            .replacingOccurrences(of: "bad42c5a-2b5d-4faa-897a-4071e741eff8", with: "undecodable-tag")
        #expect(odd != fixtureText && undecodable != fixtureText)
        for (text, decodes, tail) in [(odd, true, #", "ex\"1", "gr\u00f6\u00dfe"]"#), (undecodable, false, #", "", "celery"]"#)] {
            let raw = Array(text.utf8)
            async let fetched = broker.fetch(queues: ["celery"], limit: 4)
            try await Task.sleep(for: .milliseconds(200))
            try await pusher.send(RedisCommand("LPUSH", "celery", RedisArgument(raw)))
            let delivery = try #require(try await fetched.first)
            let tag = try #require(delivery.deliveryTag)
            #expect((delivery.decoded != nil) == decodes)
            if case .success(let envelope) = delivery.envelope {
                #expect(envelope.deliveryInfo.routingKey == "größe" && envelope.deliveryInfo.exchange == #"ex"1"#)
            } else {
                #expect(!decodes)
            }
            await [delivery].recorded()
            let record = try await client.send(RedisCommand("HGET", "unacked", RedisArgument(tag)))
            #expect(record.bytes == Array("[".utf8) + raw + Array(tail.utf8))
            try await broker.ack([delivery])
        }
    }

    @Test("after a blocking pop that waited, the next fetch blocks at once; a message already waiting then brings back the batch pop")
    func blockingAfterWait() async throws {
        let (_, client) = try await broker()
        // Whether a pop waited is a matter of time: a generous threshold keeps a busy test machine from blurring it.
        let broker = RedisBroker(blocking: RedisClient(url: client.url), commands: client, records: nil, idleAfter: .milliseconds(100))
        let raw = try fixture("v2-json-add.message.json")
        let pusher = RedisClient(url: client.url)
        async let first = broker.fetch(queues: ["celery"], limit: 4)
        try await Task.sleep(for: .milliseconds(200))
        try await pusher.send(RedisCommand("LPUSH", "celery", RedisArgument(raw)))
        #expect(try await first.count == 1)
        // The queues were empty a moment ago: no batch script, straight to the blocking pop, which takes one.
        _ = try await pusher.pipeline((0..<3).map { _ in RedisCommand("LPUSH", "celery", RedisArgument(raw)) })
        #expect(try await broker.fetch(queues: ["celery"], limit: 4).count == 1)
        // That one was already waiting, so the next fetch is the batch script again.
        #expect(try await broker.fetch(queues: ["celery"], limit: 4).count == 2)
        #expect(try await client.send(RedisCommand("LLEN", "celery")).integer == 0)
    }

    @Test("one round trip takes a batch, no more than asked, in priority order")
    func batch() async throws {
        let (broker, client) = try await broker()
        for index in 0..<10 {
            let priority = index % 2 == 0 ? 0 : 6
            try await client.send(
                RedisCommand(
                    "LPUSH", RedisArgument(RedisBroker.list(for: "celery", priority: priority)),
                    RedisArgument("m\(index)")))
        }
        let first = try await broker.fetch(queues: ["celery"], limit: 7)
        #expect(first.map { String(decoding: $0.raw, as: UTF8.self) } == ["m0", "m2", "m4", "m6", "m8", "m1", "m3"])
        #expect(first.allSatisfy { $0.deliveryTag == nil })  // not kombu messages: nothing to record
        #expect(first.allSatisfy { $0.queue == "celery" })
        #expect(try await broker.fetch(queues: ["celery"], limit: 7).count == 3)

        // Each message names the queue whose list it came from, whatever its priority.
        for (queue, priority, name) in [("a", 6, "a6"), ("b", 0, "b0"), ("b", 9, "b9"), ("a", 0, "a0")] {
            try await client.send(
                RedisCommand("LPUSH", RedisArgument(RedisBroker.list(for: queue, priority: priority)), RedisArgument(name)))
        }
        let mixed = try await broker.fetch(queues: ["a", "b"], limit: 4)
        #expect(mixed.map { String(decoding: $0.raw, as: UTF8.self) } == ["a0", "b0", "a6", "b9"])
        #expect(mixed.map(\.queue) == ["a", "b", "a", "b"])
    }

    @Test("a batch recorded in more than one ZADD and HSET (over 500 messages) is recorded in full, as one at a time")
    func largeBatch() async throws {
        let (broker, client) = try await broker()
        let count = 1_203
        var pushes: [RedisCommand] = []
        for index in 0..<count {
            pushes.append(RedisCommand("LPUSH", "celery", RedisArgument(#"{"body": "", "# + Self.kombuProperties(tag: "big-\(index)") + "}")))
        }
        _ = try await client.pipeline(pushes)
        let deliveries = try await broker.fetch(queues: ["celery"], limit: count)
        #expect(deliveries.map(\.deliveryTag) == (0..<count).map { "big-\($0)" })
        #expect(try await client.send(RedisCommand("HLEN", "unacked")) == .integer(Int64(count)))
        #expect(try await client.send(RedisCommand("ZCARD", "unacked_index")) == .integer(Int64(count)))
        for index in [0, 499, 500, 999, 1_000, count - 1] {
            let delivery = deliveries[index]
            let record = try await client.send(RedisCommand("HGET", "unacked", RedisArgument("big-\(index)")))
            #expect(record.bytes == Array("[".utf8) + delivery.raw + Array(#", "", "celery"]"#.utf8))
            let score = try await client.send(RedisCommand("ZSCORE", "unacked_index", RedisArgument("big-\(index)")))
            #expect(abs((Double(score.text ?? "") ?? 0) - delivery.receivedAt) < 0.001)
        }
        try await broker.ack(deliveries)
        #expect(try await client.send(RedisCommand("HLEN", "unacked")) == .integer(0))
    }

    @Test("a blocking pop's record that Redis refuses is reported with the delivery, which still runs")
    func refusedBlockingRecord() async throws {
        let (broker, client) = try await broker()
        try await client.send(RedisCommand("SET", "unacked", "not a hash"))
        let raw = try fixture("v2-json-add.message.json")
        async let fetched = broker.fetch(queues: ["celery"], limit: 4)
        try await Task.sleep(for: .milliseconds(200))
        try await RedisClient(url: client.url).send(RedisCommand("LPUSH", "celery", RedisArgument(raw)))
        let deliveries = try await fetched
        #expect(deliveries.count == 1)
        let missing = await deliveries.recorded()
        #expect(missing.count == 1)
        #expect(missing.first?.failure.hasPrefix("WRONGTYPE") == true)
        // Reported once: the acknowledgement written apart after a failed settle script waits again.
        #expect(await deliveries.recorded().isEmpty)
    }

    @Test("a batch that cannot be recorded (unacked of the wrong type) goes back to its list, in order, with the error")
    func unrecordableBatch() async throws {
        let (broker, client) = try await broker()
        try await client.send(RedisCommand("SET", "unacked", "not a hash"))
        let messages = (0..<3).map { #"{"body": "", "# + Self.kombuProperties(tag: "w\($0)") + "}" }
        for message in messages { try await client.send(RedisCommand("LPUSH", "celery", RedisArgument(message))) }
        await #expect(throws: CeleryWorkerError.self) { try await broker.fetch(queues: ["celery"], limit: 4) }
        let left = try await client.send(RedisCommand("LRANGE", "celery", "0", "-1")).array?.compactMap(\.text)
        #expect(left == messages.reversed())
        #expect(try await client.send(RedisCommand("ZCARD", "unacked_index")) == .integer(0))
        // Once the key is right again, the same messages are taken and recorded, oldest first.
        try await client.send(RedisCommand("DEL", "unacked"))
        let deliveries = try await broker.fetch(queues: ["celery"], limit: 4)
        #expect(deliveries.map(\.deliveryTag) == ["w0", "w1", "w2"])
        #expect(try await client.send(RedisCommand("HLEN", "unacked")) == .integer(3))
    }

    @Test("the visibility sweep restores old entries only, under the shared lock; keepAlive protects live ones")
    func visibilitySweep() async throws {
        let (broker, client) = try await broker()
        let raw = try fixture("v2-json-add.message.json")
        try await client.send(RedisCommand("LPUSH", "celery", RedisArgument(raw)))
        let delivery = try #require(try await broker.fetch(queues: ["celery"], limit: 1).first)
        let tag = try #require(delivery.deliveryTag)
        #expect(try await broker.restoreVisible(visibilityTimeout: 60).restored == 0)
        try await Task.sleep(for: .milliseconds(1100))
        try await broker.keepAlive([delivery])
        #expect(try await broker.restoreVisible(visibilityTimeout: 1).restored == 0)  // refreshed just now
        try await Task.sleep(for: .milliseconds(1100))
        try await client.send(RedisCommand("SET", "unacked_mutex", "someone-else"))
        #expect(try await broker.restoreVisible(visibilityTimeout: 1).restored == 0)  // another sweep holds the lock
        try await client.send(RedisCommand("DEL", "unacked_mutex"))
        #expect(try await broker.restoreVisible(visibilityTimeout: 1).restored == 1)
        #expect(try await client.send(RedisCommand("HEXISTS", "unacked", RedisArgument(tag))) == .integer(0))
        #expect(try await client.send(RedisCommand("EXISTS", "unacked_mutex")) == .integer(0))
        let restored = try #require(try await client.send(RedisCommand("RPOP", "celery")).bytes)
        #expect(try KombuEnvelope(decoding: restored).headers["redelivered"] == true)
        // keepAlive never brings back an entry that is gone
        try await broker.keepAlive([delivery])
        #expect(try await client.send(RedisCommand("ZCARD", "unacked_index")) == .integer(0))
        // A record that is not kombu's (kombu's restore raises on it, and a Python worker's start stops there) is
        // left in unacked, out of the index: reported once, restored nowhere, and met by no later sweep.
        for (garbage, record) in [("garbage-1", "garbage{"), ("garbage-2", #"[{"body": ""}, "celery"]"#)] {
            try await client.send(RedisCommand("HSET", "unacked", RedisArgument(garbage), RedisArgument(record)))
            try await client.send(RedisCommand("ZADD", "unacked_index", "1000", RedisArgument(garbage)))
        }
        let sweep = try await broker.restoreVisible(visibilityTimeout: 1)
        #expect(sweep.restored == 0 && sweep.unreadable.sorted() == ["garbage-1", "garbage-2"])
        #expect(try await client.send(RedisCommand("HLEN", "unacked")) == .integer(2))
        #expect(try await client.send(RedisCommand("ZCARD", "unacked_index")) == .integer(0))
        #expect(try await client.send(RedisCommand("LLEN", "celery")) == .integer(0))
        #expect(try await broker.restoreVisible(visibilityTimeout: 1) == VisibilitySweep())
    }

    /// kombu's `properties` as the last key, as kombu writes it: the pop script reads these off the end.
    @Test("unacked_key, unacked_index_key and unacked_mutex_key name the bookkeeping; unacked_restore_limit caps a sweep, as kombu's")
    func namedBookkeeping() async throws {
        let client = try await TestRedis.client(database: 3)
        var transport = RedisTransportOptions()
        (transport.unackedKey, transport.unackedIndexKey, transport.unackedMutexKey) = ("u", "ui", "um")
        transport.unackedRestoreLimit = 2
        let broker = RedisBroker(blocking: RedisClient(url: client.url), commands: client, transport: transport)
        let messages = (0..<3).map { #"{"body": "", "# + Self.kombuProperties(tag: "n\($0)") + "}" }
        for message in messages { try await client.send(RedisCommand("LPUSH", "celery", RedisArgument(message))) }
        _ = try await broker.fetch(queues: ["celery"], limit: 3)
        #expect(try await client.send(RedisCommand("HLEN", "u")) == .integer(3))
        #expect(try await client.send(RedisCommand("ZCARD", "ui")) == .integer(3))
        #expect(try await client.send(RedisCommand("EXISTS", "unacked", "unacked_index")) == .integer(0))
        // A limit of 2 restores the two latest recorded below the ceiling first, n2 and n1 (from the ceiling down, as
        // kombu's ZREVRANGEBYSCORE), then n0.
        for (tag, age) in [("n0", 30.0), ("n1", 20.0), ("n2", 10.0)] {
            try await client.send(RedisCommand("ZADD", "ui", RedisArgument(WallClock.now() - age), RedisArgument(tag)))
        }
        try await client.send(RedisCommand("SET", "um", "someone-else"))
        #expect(try await broker.restoreVisible(visibilityTimeout: 5).restored == 0)  // the named lock is held
        try await client.send(RedisCommand("DEL", "um"))
        #expect(try await broker.restoreVisible(visibilityTimeout: 5).restored == 2)
        let left = try await client.send(RedisCommand("ZRANGE", "ui", "0", "-1")).array?.compactMap(\.text)
        #expect(left == ["n0"])
        #expect(try await broker.restoreVisible(visibilityTimeout: 5).restored == 1)
        #expect(try await client.send(RedisCommand("HLEN", "u")) == .integer(0))
        #expect(try await client.send(RedisCommand("LLEN", "celery")) == .integer(3))
    }

    static func kombuProperties(tag: String, exchange: String = "", routingKey: String = "celery", priority: Int = 0) -> String {
        #""properties": {"correlation_id": "c1", "reply_to": "r1", "delivery_mode": 2, "delivery_info": {"exchange": ""#
            + exchange + #"", "routing_key": ""# + routingKey + #""}, "priority": \#(priority), "body_encoding": "base64", "delivery_tag": ""#
            + tag + #""}"#
    }

    /// A routing key with every kind of escape Python's `json.dumps` writes (as Python writes it).
    static let oddKey = #"q\"x\u00e9\ud83d\ude00\b\u007f"#

    @Test(
        "every layout of a message is recorded as kombu records it, whether read off kombu's layout or decoded",
        arguments: [
            // kombu's own layout: read off the end of the message
            (#"{"body": "", "headers": {}, "# + kombuProperties(tag: "t1") + "}", "t1", #""", "celery""#),
            (#"{"body": "", "# + kombuProperties(tag: "t2", exchange: "ex", routingKey: "a.b", priority: 9) + "}", "t2", #""ex", "a.b""#),
            // kombu's layout first nested in a header (its tail does not end the message), then its own
            (#"{"headers": {"x": {"a": 1, "# + kombuProperties(tag: "nested") + #"}}, "# + kombuProperties(tag: "t9") + "}", "t9", #""", "celery""#),
            // read off the end, the rest unread: the worker then discards the broken message by this tag
            (#"[not json, "# + kombuProperties(tag: "t8") + "}", "t8", #""", "celery""#),
            // anything else: decoded
            (#"{"body":"","properties":{"delivery_tag":"t3","delivery_info":{"exchange":"","routing_key":"celery"}}}"#, "t3", #""", "celery""#),
            (#"{"# + kombuProperties(tag: "t4") + #", "headers": {}}"#, "t4", #""", "celery""#),
            (#"{"body": "", "# + kombuProperties(tag: "t5", routingKey: oddKey) + "}", "t5", #""", ""# + oddKey + #"""#),
            (#"{"body": "", "properties": {"expiration": "5", "# + kombuProperties(tag: "t6").dropFirst(15) + "}", "t6", #""", "celery""#),
            // kombu's layout with a kept string Python's json.dumps would escape (a control character, DEL, a raw
            // non-ASCII byte): decoded, and written into the record as Python writes it
            (#"{"body": "", "# + kombuProperties(tag: "t10", routingKey: "r\u{01}k") + "}", "t10", #""", "r\u0001k""#),
            (#"{"body": "", "# + kombuProperties(tag: "t12", exchange: "e\u{7f}") + "}", "t12", #""e\u007f", "celery""#),
            (#"{"body": "", "# + kombuProperties(tag: "t13", routingKey: "caf\u{e9}") + "}", "t13", #""", "caf\u00e9""#),
            (#"{"body": "", "# + kombuProperties(tag: "c\u{01}x") + "}", "c\u{01}x", #""", "celery""#),
            // a NUL in a kept string: not read off the end, and cjson refuses it: recorded under nothing (the worker
            // deletes the invalid message, as Celery does)
            (#"{"body": "", "# + kombuProperties(tag: "t11", routingKey: "r\u{0}k") + "}", nil, nil),
            // kombu's layout nested in a header, no tag of its own: recorded under nothing
            (#"{"properties": {}, "headers": {"x": {"# + kombuProperties(tag: "fake") + "}}}", nil, nil),
            (#"{"body": "", "# + kombuProperties(tag: "t7") + "} trailing", nil, nil),
        ] as [(String, String?, String?)])
    func recordLayouts(message: String, tag: String?, exchangeAndRoutingKey: String?) async throws {
        let (broker, client) = try await broker()
        try await client.send(RedisCommand("LPUSH", "celery", RedisArgument(message)))
        let delivery = try #require(try await broker.fetch(queues: ["celery"], limit: 4).first)
        #expect(delivery.deliveryTag == tag)
        if let tag, let exchangeAndRoutingKey {
            let record = try await client.send(RedisCommand("HGET", "unacked", RedisArgument(tag)))
            #expect(record.text == "[" + message + ", " + exchangeAndRoutingKey + "]")
            #expect(try await client.send(RedisCommand("ZSCORE", "unacked_index", RedisArgument(tag))).text != nil)
        } else {
            #expect(try await client.send(RedisCommand("HLEN", "unacked")) == .integer(0))
        }
    }

    @Test("kombu's sep, priority_steps and queue_order_strategy name the lists and order the queues")
    func transportOptions() async throws {
        let steps = RedisTransportOptions(separator: ":", prioritySteps: Array(0...9), queueOrder: .priority)
        #expect(steps.list(for: "celery", priority: 0) == "celery" && steps.list(for: "celery", priority: 7) == "celery:7")
        #expect(steps.list(for: "celery", priority: 12) == "celery:9")
        for (queue, priority) in [("celery", 4), ("a:b", 0), ("a:b", 3), ("x:10", 0), ("v2", 2)] {
            #expect(steps.queue(ofList: steps.list(for: queue, priority: priority, prefix: "p:"), prefix: "p:") == queue)
        }
        #expect(steps.bindingMember(routingKey: "rk", queue: "q") == "rk::q")
        #expect(steps.boundQueue(member: "rk::q", routingKey: "rk") == "q" && steps.boundQueue(member: "rk::q", routingKey: "x") == nil)
        // As kombu's bisect: a priority below every step takes the last.
        #expect(RedisTransportOptions(prioritySteps: [2, 5]).step(for: 0) == 5)
        #expect(RedisTransportOptions(prioritySteps: [2, 5]).step(for: 4) == 2)
        // The consumption order: sorted by name, or as given; round robin rotates, the others do not.
        var sorted = RedisBroker.FetchOrder(prefix: "", transport: RedisTransportOptions(queueOrder: .sorted))
        sorted.set(["b", "a"])
        #expect(sorted.lists.prefix(2) == ["a", "b"])
        sorted.moveToEnd("a")
        #expect(sorted.lists.prefix(2) == ["a", "b"])
        var priority = RedisBroker.FetchOrder(prefix: "", transport: steps)
        priority.set(["b", "a"])
        #expect(priority.lists.count == 20 && priority.lists.prefix(4) == ["b", "a", "b:1", "a:1"])
        priority.moveToEnd("b")
        #expect(priority.lists.prefix(2) == ["b", "a"])
        var roundRobin = RedisBroker.FetchOrder(prefix: "", transport: RedisTransportOptions())
        roundRobin.set(["b", "a"])
        roundRobin.moveToEnd("b")
        #expect(roundRobin.lists.prefix(2) == ["a", "b"])
        // The priority a restored message goes back with: kombu 5.7's `_get_message_priority` answered these (max 9).
        let priorities: [(CeleryValue?, Int)] = [
            (.string("x"), 0), (.int(1_000_000_000_000), 9), (.int(-7), 0), (.null, 0), (nil, 0), (.double(3.7), 3),
            (.array([.int(1)]), 0), (.bool(true), 1), (.bool(false), 0), (.string("5"), 5), (.string(" 6 "), 6),
            (.string("+2"), 2), (.string("4.0"), 0), (.double(-0.5), 0), (.double(9.99), 9), (.uint(.max), 9),
            (.bigInt(try #require(CeleryBigInt("1000000000000000000000000000000"))), 9),
            (.bigInt(try #require(CeleryBigInt("-1000000000000000000000000000000"))), 0), (.object([:]), 0), (.string(""), 0),
        ]
        for (given, expected) in priorities {
            #expect(min(max(RedisBroker.restorePriority(given), 0), 9) == expected, "\(String(describing: given))")
        }
        // A list set aside (its key held another type) is left out, through rotations, until its time is up.
        let now = ContinuousClock.now
        roundRobin.setAside("b\u{6}\u{16}3", until: now + .seconds(10))
        roundRobin.moveToEnd("a")
        #expect(roundRobin.lists == ["b", "a", "a\u{6}\u{16}3", "b\u{6}\u{16}6", "a\u{6}\u{16}6", "b\u{6}\u{16}9", "a\u{6}\u{16}9"])
        #expect(roundRobin.brpop.arguments.count == 2 + roundRobin.lists.count)
        roundRobin.takeBack(at: now + .seconds(9))
        #expect(roundRobin.lists.count == 7)
        roundRobin.takeBack(at: now + .seconds(10))
        #expect(roundRobin.lists.count == 8 && roundRobin.lists[2] == "b\u{6}\u{16}3")
    }

    @Test("restore of a message published to a named exchange follows the binding table")
    func namedExchange() async throws {
        let (broker, client) = try await broker()
        let sep = Self.separator
        try await client.send(RedisCommand("SADD", "_kombu.binding.ex1", RedisArgument("rk1" + sep + sep + "named")))
        #expect(try await broker.lookup(exchange: "ex1", routingKey: "rk1") == ["named"])
        #expect(try await broker.lookup(exchange: "ex1", routingKey: "other") == [RedisBroker.deadLetterQueue])
        #expect(try await broker.lookup(exchange: "", routingKey: "celery") == ["celery"])
    }

    @Test("a client sends to the queues bound to a named exchange: direct by routing key, topic by pattern; none bound throws")
    func exchangeRouting() async throws {
        let base = try #require(TestRedis.base)
        let redis = try await TestRedis.client(database: 3)
        let sep = Self.separator
        let lists = ["rimages", "rthumbs", "rdocs", "rfeeds"]
        for list in lists { _ = try await redis.send(RedisCommand("DEL", RedisArgument(list))) }
        _ = try await redis.send(RedisCommand("DEL", "_kombu.binding.rdirect", "_kombu.binding.rtopic"))
        for (routingKey, queue) in [("img", "rimages"), ("img", "rthumbs"), ("doc", "rdocs")] {
            _ = try await redis.send(RedisCommand("SADD", "_kombu.binding.rdirect", RedisArgument(routingKey + sep + sep + queue)))
        }
        // The member kombu writes for Queue("rfeeds", Exchange("rtopic", "topic"), routing_key="feed.#").
        let pattern = QueueBinding(exchange: "rtopic", routingKey: "feed.#", exchangeType: .topic).pattern
        _ = try await redis.send(RedisCommand("SADD", "_kombu.binding.rtopic", RedisArgument("feed.#" + sep + pattern + sep + "rfeeds")))
        func lengths() async throws -> [Int64] {
            var counts: [Int64] = []
            for list in lists { counts.append(try await redis.send(RedisCommand("LLEN", RedisArgument(list))).integer ?? -1) }
            return counts
        }
        let client = CeleryClient(brokerURL: try RedisURL(parsing: "\(base)/3"))
        let sent = try await client.send("add", args: [1, 2], options: TaskSendOptions(exchange: "rdirect", routingKey: "img"))
        #expect(try await lengths() == [1, 1, 0, 0])
        let raw = try #require(try await redis.send(RedisCommand("LINDEX", "rimages", "0")).bytes)
        let envelope = try KombuEnvelope(decoding: raw)
        #expect(envelope.headers["id"]?.stringValue == sent.id)
        #expect(envelope.deliveryInfo.exchange == "rdirect" && envelope.deliveryInfo.routingKey == "img")
        _ = try await client.send("add", options: TaskSendOptions(exchange: "rtopic", routingKey: "feed.rss.daily", exchangeType: "topic"))
        #expect(try await lengths() == [1, 1, 0, 1])
        // As kombu: an exchange not declared a topic one is looked up by equal routing keys; nothing bound so throws.
        for options in [
            TaskSendOptions(exchange: "rtopic", routingKey: "feed.rss.daily"), TaskSendOptions(exchange: "rdirect", routingKey: "nope"),
            TaskSendOptions(exchange: "rtopic", routingKey: "news.today", exchangeType: "topic"),
        ] {
            await #expect(throws: CeleryWorkerError.self) { try await client.send("add", options: options) }
        }
        #expect(try await lengths() == [1, 1, 0, 1])
        await client.shutdown()
    }

    @Test("the script digest is Redis's SHA-1")
    func digest() async throws {
        let client = try await TestRedis.client(database: 3)
        for script in [RedisBroker.popAndRecordScript, RedisResultBackend.chordPartReturnScript] {
            let loaded = try await client.send(RedisCommand("SCRIPT", "LOAD", RedisArgument(script.source)))
            #expect(loaded.text == script.digest)
        }
        #expect(ScriptDigest.sha1Hex("") == "da39a3ee5e6b4b0d3255bfef95601890afd80709")
    }
}

@Suite("Results as Python's Redis backend writes them", .serialized, .enabled(if: TestRedis.enabled))
struct RedisResultBackendTests {
    @Test("SETEX with the expiry; a stored SUCCESS is never overwritten")
    func successGuard() async throws {
        let client = try await TestRedis.client(database: 4)
        let backend = RedisResultBackend(client: client, serializer: .json, expires: 600)
        let success = CeleryResultDocument(taskID: "t1", status: .success, result: 5, dateDone: "2026-11-25T00:00:00+00:00")
        try await backend.store([success])
        let key = RedisArgument("celery-task-meta-t1")
        #expect(try await client.send(RedisCommand("GET", key)).bytes == success.encoded(as: .json))
        let ttl = try await client.send(RedisCommand("TTL", key)).integer ?? 0
        #expect(ttl > 590 && ttl <= 600)
        try await backend.store([CeleryResultDocument(taskID: "t1", status: .failure, result: nil)])
        #expect(try await client.send(RedisCommand("GET", key)).bytes == success.encoded(as: .json))
        // other states are overwritten freely
        try await backend.store([CeleryResultDocument(taskID: "t2", status: .retry, result: nil)])
        try await backend.store([CeleryResultDocument(taskID: "t2", status: .failure, result: nil)])
        let stored = try #require(try await client.send(RedisCommand("GET", "celery-task-meta-t2")).bytes)
        #expect(CeleryResultDocument.storedStatus(stored, serializer: .json) == .failure)
    }

    @Test("result_compression: documents stored behind Celery 5.7's marker; a compressed SUCCESS is still never overwritten")
    func compressedSuccessGuard() async throws {
        let client = try await TestRedis.client(database: 4)
        let broker = RedisBroker(blocking: RedisClient(url: client.url), commands: client)
        for method in KombuCompression.allCases {
            let backend = RedisResultBackend(client: client, serializer: .json, expires: 600, compression: method)
            let plain = RedisResultBackend(client: client, serializer: .json, expires: 600)
            func stored(_ id: String) async throws -> [UInt8] {
                try #require(try await client.send(RedisCommand("GET", RedisArgument("celery-task-meta-\(id)"))).bytes)
            }
            let success = CeleryResultDocument(taskID: "z1", status: .success, result: 5, dateDone: "2026-12-05T00:00:00+00:00")
            try await backend.store([success])
            let bytes = try await stored("z1")
            #expect(bytes == CeleryResultDocument.compressedStored(try success.encoded(as: .json), with: method))
            #expect(bytes.starts(with: Array("\0celery-compressed\0\(method.contentType)\0".utf8)))
            // A later FAILURE for the same task, compressed or not, in a store or a settle, leaves the SUCCESS.
            let failure = CeleryResultDocument(taskID: "z1", status: .failure, result: nil)
            try await backend.store([failure])
            try await plain.store([failure])
            try await backend.settle(earlyAcks: [], documents: [failure], lateAcks: [], broker: broker)
            #expect(try await stored("z1") == bytes)
            // A compressed STARTED is overwritten; STARTED and SUCCESS of one task in one batch end as SUCCESS, and a
            // FAILURE after them in the batch does not overwrite it.
            try await backend.store([CeleryResultDocument(taskID: "z2", status: .started, result: nil)])
            try await backend.store([CeleryResultDocument(taskID: "z2", status: .success, result: 7)])
            #expect(try CeleryResultDocument.decodeStored(await stored("z2"), serializer: .json)["result"] == 7)
            try await backend.settle(
                earlyAcks: [],
                documents: [
                    CeleryResultDocument(taskID: "z3", status: .started, result: nil),
                    CeleryResultDocument(taskID: "z3", status: .success, result: 8),
                    CeleryResultDocument(taskID: "z3", status: .failure, result: nil),
                ], lateAcks: [], broker: broker)
            #expect(try CeleryResultDocument.storedStatus(await stored("z3"), serializer: .json) == .success)
            // A plain backend also keeps a compressed SUCCESS (as a Celery 5.7 worker with result_compression stores it).
            try await plain.store([CeleryResultDocument(taskID: "z3", status: .failure, result: nil)])
            #expect(try CeleryResultDocument.storedStatus(await stored("z3"), serializer: .json) == .success)
            try await client.send(RedisCommand("DEL", "celery-task-meta-z1", "celery-task-meta-z2", "celery-task-meta-z3"))
        }
    }

    @Test("result_failure_expires: FAILURE documents get their own TTL (0: none) in a store and in a settle")
    func failureExpires() async throws {
        let client = try await TestRedis.client(database: 4)
        let broker = RedisBroker(blocking: RedisClient(url: client.url), commands: client)
        for (failureExpires, expected) in [(30, 21...30), (0, -1 ... -1), (600, 591...600)] {
            let backend = RedisResultBackend(client: client, serializer: .json, expires: 600, failureExpires: failureExpires)
            let documents = [
                CeleryResultDocument(taskID: "ok-\(failureExpires)", status: .success, result: 1),
                CeleryResultDocument(taskID: "bad-\(failureExpires)", status: .failure, result: nil),
                CeleryResultDocument(taskID: "retry-\(failureExpires)", status: .retry, result: nil),
            ]
            try await backend.store(documents)
            try await backend.settle(
                earlyAcks: [], documents: [CeleryResultDocument(taskID: "settled-\(failureExpires)", status: .failure, result: nil)],
                lateAcks: [], broker: broker)
            func ttl(_ id: String) async throws -> Int {
                Int(try await client.send(RedisCommand("TTL", RedisArgument("celery-task-meta-\(id)"))).integer ?? -3)
            }
            #expect(try await (591...600).contains(ttl("ok-\(failureExpires)")))
            #expect(try await (591...600).contains(ttl("retry-\(failureExpires)")))
            #expect(try await expected.contains(ttl("bad-\(failureExpires)")))
            #expect(try await expected.contains(ttl("settled-\(failureExpires)")))
        }
    }

    @Test("no expiry stores without a TTL; msgpack results are raw msgpack")
    func noExpiryMsgpack() async throws {
        let client = try await TestRedis.client(database: 4)
        let backend = RedisResultBackend(client: client, serializer: .msgpack, expires: nil)
        let document = CeleryResultDocument(taskID: "m", status: .success, result: .bytes([0, 1]))
        try await backend.store([document])
        #expect(try await client.send(RedisCommand("TTL", "celery-task-meta-m")) == .integer(-1))
        let stored = try #require(try await client.send(RedisCommand("GET", "celery-task-meta-m")).bytes)
        #expect(try CeleryMsgpack.decode(stored)["result"] == .bytes([0, 1]))
    }

    @Test("msgpack cannot write an integer beyond 64 bits: store keeps the others and names it, settle writes nothing")
    func unwritableInMsgpack() async throws {
        let client = try await TestRedis.client(database: 11)
        let backend = RedisResultBackend(client: client, serializer: .msgpack, expires: 600)
        let big = CeleryValue.bigInt(try #require(CeleryBigInt("18446744073709551616")))
        let fits = CeleryResultDocument(taskID: "fits", status: .success, result: 1)
        let result = CeleryResultDocument(taskID: "big-result", status: .success, result: [big])
        let arguments = CeleryResultDocument(taskID: "big-args", status: .failure, result: nil, extended: ["args": [big]])
        let keys = ["fits", "big-result", "big-args"].map { RedisArgument("celery-task-meta-\($0)") }
        try await client.send(RedisCommand("DEL", arguments: keys))
        #expect(!result.fits(.msgpack) && !arguments.fits(.msgpack) && result.fits(.json) && fits.fits(.msgpack))
        let error = await #expect(throws: CeleryWorkerError.self) { try await backend.store([result, fits, arguments]) }
        #expect(error?.code == .encodeError)
        #expect(error?.message == "OverflowError('Integer value out of range'): msgpack cannot write the result of big-result, big-args")
        #expect(try await client.send(RedisCommand("EXISTS", arguments: keys)) == .integer(1))
        let stored = try #require(try await client.send(RedisCommand("GET", "celery-task-meta-fits")).bytes)
        #expect(try CeleryMsgpack.decode(stored)["result"] == 1)

        // One script for acknowledgements and results: nothing done, so that the caller writes them apart.
        let broker = RedisBroker(blocking: RedisClient(url: client.url), commands: client)
        try await client.send(RedisCommand("DEL", "celery", "unacked", "unacked_index"))
        try await client.send(RedisCommand("LPUSH", "celery", RedisArgument(try fixture("v2-json-add.message.json"))))
        let tags = try await broker.fetch(queues: ["celery"], limit: 1).compactMap(\.deliveryTag)
        #expect(tags.count == 1)
        let settled = await #expect(throws: CeleryWorkerError.self) {
            try await backend.settle(earlyAcks: tags, documents: [fits, result], lateAcks: [], broker: broker)
        }
        #expect(settled?.code == .encodeError)
        #expect(try await client.send(RedisCommand("HLEN", "unacked")) == .integer(1))
    }

    @Test("a chord's size and saved header expire with results (never when results never do); the join reads them")
    func chordKeys() async throws {
        let client = try await TestRedis.client(database: 4)
        for expires in [nil, 0, 600] as [Int?] {
            let backend = RedisResultBackend(client: client, serializer: .json, expires: expires)
            let group = "g\(expires ?? -1)"
            try await backend.setChordSize(groupID: group, size: 2)
            let header: CeleryValue = [[.string(group), nil], [[["f", nil], [[["p", nil], nil], [["q", nil], nil]]], [["x", nil], nil]]]
            try await backend.saveGroup(groupID: group, result: header)
            for key in ["celery-taskset-meta-\(group).s", "celery-taskset-meta-\(group)"] {
                let ttl = try #require(try await client.send(RedisCommand("TTL", RedisArgument(key))).integer)
                #expect(expires == 600 ? (590...600).contains(ttl) : ttl == -1, "\(key): \(ttl)")
            }
            #expect(try await backend.savedGroup(group) == header)
            _ = try await backend.chordPartReturn(groupID: group, taskID: "p", groupIndex: 0, state: .success, result: 6, token: "p")
            let late = Task {
                try await Task.sleep(for: .milliseconds(300))
                try await backend.store([CeleryResultDocument(taskID: "q", status: .success, result: 9)])
            }
            let completion = try #require(
                try await backend.chordPartReturn(groupID: group, taskID: "x", groupIndex: 1, state: .success, result: 7, token: "x"))
            try await late.value
            // `q` is no part of this chord's count, so its stored result is read: here it arrives while the join waits.
            #expect(completion.missingTaskIDs().isEmpty && completion.storedResults.map(\.taskID) == ["q"])
            #expect(completion.join() == .results([[6, 9], 7]))
            try await client.send(RedisCommand("DEL", "celery-task-meta-q"))
        }
    }
}

extension RedisResultBackendTests {
    @Test(
        "result_chord_ordered: false keeps parts in a list; result_chord_expires sets the chord keys' TTL; the claim extends, or is refused once another worker holds it"
    )
    func chordOptions() async throws {
        let client = try await TestRedis.client(database: 4)
        let backend = RedisResultBackend(
            client: client, serializer: .json, expires: 600, chord: RedisResultBackend.ChordOptions(expires: 120, joinTimeout: 10, ordered: false))
        #expect((backend.claimExpires, backend.doneExpires, backend.publishClaimExpires) == (20, 300, 21))
        #expect(backend.chordResultExpires == 600)  // the group key never expires before results do
        let group = "ordered-false"
        func key(_ suffix: String) -> RedisArgument { RedisArgument(backend.groupKey(group, suffix)) }
        try await backend.setChordSize(groupID: group, size: 2)
        #expect((100...120).contains(try #require(try await client.send(RedisCommand("TTL", key(".s"))).integer)))
        #expect(try await backend.chordPartReturn(groupID: group, taskID: "b", groupIndex: 1, state: .success, result: 2, token: "b") == nil)
        #expect(try await client.send(RedisCommand("TYPE", key(".j"))) == .status("list"))
        #expect((100...120).contains(try #require(try await client.send(RedisCommand("TTL", key(".j"))).integer)))
        let completion = try #require(
            try await backend.chordPartReturn(groupID: group, taskID: "a", groupIndex: 0, state: .success, result: 1, token: "a"))
        #expect(completion.join() == .results([2, 1]))  // in the order they finished, as Python's list
        // The same call again (its reply lost to a Redis restart) counts nothing twice and keeps the claim it took;
        // another worker's copy of the part finds the claim held.
        let again = try #require(
            try await backend.chordPartReturn(groupID: group, taskID: "a", groupIndex: 0, state: .success, result: 1, token: "a"))
        #expect(again.join() == .results([2, 1]) && again.token == "a")
        // Another worker's copy of the part waits while the claim is held, and gets nothing once the body was sent.
        let copy = Task {
            try await backend.chordPartReturn(groupID: group, taskID: "a", groupIndex: 0, state: .success, result: 1, token: "copy")
        }
        try await Task.sleep(for: .milliseconds(100))
        #expect(try await backend.extendChordClaim(groupID: group, token: completion.token))
        #expect((15...21).contains(try #require(try await client.send(RedisCommand("TTL", key(".c"))).integer)))
        #expect(try await backend.extendChordClaim(groupID: group, token: "someone-else") == false)
        try await backend.chordFinished(groupID: group, token: completion.token)
        #expect(try await client.send(RedisCommand("GET", key(".c"))).text == "done")
        #expect(try await copy.value == nil)
        // A claim whose worker died before sending the body: the part that completes the chord (a copy, run again)
        // waits until the claim expires, then takes it. Celery 5.7's worker gives up at once.
        let orphan = "claim-held-by-the-dead"
        try await backend.setChordSize(groupID: orphan, size: 2)
        #expect(try await backend.chordPartReturn(groupID: orphan, taskID: "b", groupIndex: 1, state: .success, result: 2, token: "b") == nil)
        try await client.send(RedisCommand("SET", RedisArgument(backend.groupKey(orphan, ".c")), "dead-worker", "PX", "400"))
        let waited = ContinuousClock.now
        let takeover = try #require(
            try await backend.chordPartReturn(groupID: orphan, taskID: "a", groupIndex: 0, state: .success, result: 1, token: "late"))
        #expect(ContinuousClock.now - waited >= .milliseconds(300))
        #expect(takeover.join() == .results([2, 1]) && takeover.token == "late")
        #expect(try await client.send(RedisCommand("GET", RedisArgument(backend.groupKey(orphan, ".c")))).text == "late")
        try await backend.chordFinished(groupID: orphan, token: "late")
        // The join waits result_chord_join_timeout for a result that is never stored.
        let short = RedisResultBackend(client: client, chord: RedisResultBackend.ChordOptions(joinTimeout: 0.2))
        let started = ContinuousClock.now
        #expect(try await short.readyResults(of: ["never-stored"]).isEmpty)
        #expect(ContinuousClock.now - started >= .milliseconds(200) && ContinuousClock.now - started < .seconds(2))
        // A null join timeout: Celery's claim of 10 s.
        let unbounded = RedisResultBackend(client: client, chord: RedisResultBackend.ChordOptions(joinTimeout: nil))
        #expect(unbounded.claimExpires == 10 && unbounded.chordExpires == 86_400)
        let settings = try CelerySettings.parse(
            "result_chord_join_timeout: null\nCELERY_RESULT_CHORD_EXPIRES: 60\nresult_backend_transport_options: {result_chord_ordered: false}",
            source: "c.yaml")
        #expect(settings.chord == RedisResultBackend.ChordOptions(expires: 60, joinTimeout: nil, ordered: false) && settings.warnings.isEmpty)
        #expect(try CelerySettings.parse("result_chord_join_timeout: 1.5", source: "c.yaml").chord.joinTimeout == 1.5)
        #expect(throws: CeleryWorkerError.self) { try CelerySettings.parse("result_chord_join_timeout: -1", source: "c.yaml") }
    }
}

@Suite("Results and acknowledgements in one script", .serialized, .enabled(if: TestRedis.enabled))
struct RedisSettleTests {
    /// A broker in database 5 and a JSON backend (results expire in 600 s) in database 6 of the test server.
    static func servers() async throws -> (RedisBroker, RedisClient, RedisResultBackend, RedisClient) {
        let brokerClient = try await TestRedis.client(database: 5)
        let broker = RedisBroker(blocking: RedisClient(url: brokerClient.url), commands: brokerClient)
        let backendClient = try await TestRedis.client(database: 6)
        return (broker, brokerClient, RedisResultBackend(client: backendClient, serializer: .json, expires: 600), backendClient)
    }

    @Test("one script acknowledges in the broker's database and stores in the backend's, keeping a stored SUCCESS")
    func settleAcrossDatabases() async throws {
        let (broker, brokerClient, backend, backendClient) = try await Self.servers()
        #expect(backend.sharesServer(with: broker))
        let raw = try fixture("v2-json-add.message.json")
        var envelopes: [[UInt8]] = []
        for tag in ["tag-1", "tag-2", "tag-3"] {
            let envelope = try #require(String(bytes: raw, encoding: .utf8)).replacingOccurrences(
                of: #""delivery_tag": ""#, with: #""delivery_tag": "\#(tag)-"#)
            envelopes.append(Array(envelope.utf8))
        }
        for envelope in envelopes { try await brokerClient.send(RedisCommand("LPUSH", "celery", RedisArgument(envelope))) }
        let deliveries = try await broker.fetch(queues: ["celery"], limit: 3)
        let tags = deliveries.compactMap(\.deliveryTag)
        #expect(tags.count == 3)
        #expect(try await brokerClient.send(RedisCommand("HLEN", "unacked")) == .integer(3))

        let kept = CeleryResultDocument(taskID: "done", status: .success, result: 1, dateDone: "2026-11-25T00:00:00+00:00")
        try await backend.store([kept])
        let fresh = CeleryResultDocument(taskID: "fresh", status: .success, result: 2, dateDone: "2026-11-25T00:00:01+00:00")
        let late = CeleryResultDocument(taskID: "done", status: .failure, result: nil)
        try await backend.settle(earlyAcks: [tags[0]], documents: [fresh, late], lateAcks: [tags[1]], broker: broker)

        let left = try await brokerClient.send(RedisCommand("HKEYS", "unacked")).array?.compactMap(\.text)
        #expect(left == [tags[2]])
        #expect(try await brokerClient.send(RedisCommand("ZRANGE", "unacked_index", "0", "-1")).array?.compactMap(\.text) == [tags[2]])
        // The results went to the backend's database, and the backend's connection is still in it.
        #expect(try await backendClient.send(RedisCommand("GET", "celery-task-meta-fresh")).bytes == fresh.encoded(as: .json))
        #expect(try await backendClient.send(RedisCommand("GET", "celery-task-meta-done")).bytes == kept.encoded(as: .json))
        #expect(try await brokerClient.send(RedisCommand("EXISTS", "celery-task-meta-fresh")) == .integer(0))
        let ttl = try await backendClient.send(RedisCommand("TTL", "celery-task-meta-fresh")).integer ?? 0
        #expect(ttl > 590 && ttl <= 600)
    }

    @Test("with the broker and the backend in one database, one script acknowledges and stores there")
    func settleInOneDatabase() async throws {
        let client = try await TestRedis.client(database: 7)
        let broker = RedisBroker(blocking: RedisClient(url: client.url), commands: client)
        let backend = RedisResultBackend(client: client, serializer: .json, expires: 600)
        #expect(backend.sharesServer(with: broker))
        let raw = try fixture("v2-json-add.message.json")
        for tag in ["one-1", "one-2", "one-3"] {
            let envelope = try #require(String(bytes: raw, encoding: .utf8)).replacingOccurrences(
                of: #""delivery_tag": ""#, with: #""delivery_tag": "\#(tag)-"#)
            try await client.send(RedisCommand("LPUSH", "celery", RedisArgument(Array(envelope.utf8))))
        }
        let tags = try await broker.fetch(queues: ["celery"], limit: 3).compactMap(\.deliveryTag)
        #expect(tags.count == 3)
        let kept = CeleryResultDocument(taskID: "done", status: .success, result: 1)
        try await backend.store([kept])
        let fresh = CeleryResultDocument(taskID: "fresh", status: .success, result: 2)
        try await backend.settle(
            earlyAcks: [tags[0]], documents: [fresh, CeleryResultDocument(taskID: "done", status: .failure, result: nil)],
            lateAcks: [tags[1]], broker: broker)
        #expect(try await client.send(RedisCommand("HKEYS", "unacked")).array?.compactMap(\.text) == [tags[2]])
        #expect(try await client.send(RedisCommand("ZRANGE", "unacked_index", "0", "-1")).array?.compactMap(\.text) == [tags[2]])
        #expect(try await client.send(RedisCommand("GET", "celery-task-meta-fresh")).bytes == fresh.encoded(as: .json))
        #expect(try await client.send(RedisCommand("GET", "celery-task-meta-done")).bytes == kept.encoded(as: .json))
    }

    @Test(
        "a batch is written in full, over 1 000 acknowledgements and documents too; a key met twice sees the first write",
        arguments: [3, 1_100])
    func settleLargeBatch(count: Int) async throws {
        let (broker, brokerClient, backend, backendClient) = try await Self.servers()
        var records: [RedisCommand] = []
        for index in 0..<(2 * count) {
            records.append(RedisCommand("HSET", "unacked", RedisArgument("t\(index)"), "record"))
            records.append(RedisCommand("ZADD", "unacked_index", "1", RedisArgument("t\(index)")))
        }
        _ = try await brokerClient.pipeline(records)
        var documents = (0..<count).map { CeleryResultDocument(taskID: "d\($0)", status: .success, result: .int(Int64($0))) }
        // The same id twice in one batch, as a Python worker would store them one after the other: a SUCCESS
        // first is kept; a RETRY first is overwritten.
        let first = CeleryResultDocument(taskID: "twice", status: .success, result: 1)
        let retry = CeleryResultDocument(taskID: "again", status: .retry, result: nil)
        let after = CeleryResultDocument(taskID: "again", status: .success, result: 2)
        documents += [first, retry, CeleryResultDocument(taskID: "twice", status: .failure, result: nil), after]
        try await backend.settle(
            earlyAcks: (0..<count).map { "t\($0)" }, documents: documents, lateAcks: (count..<(2 * count)).map { "t\($0)" },
            broker: broker)
        #expect(try await brokerClient.send(RedisCommand("HLEN", "unacked")) == .integer(0))
        #expect(try await brokerClient.send(RedisCommand("ZCARD", "unacked_index")) == .integer(0))
        #expect(try await backendClient.send(RedisCommand("DBSIZE")) == .integer(Int64(count + 2)))
        for index in [0, 999, 1_000, count - 1] where index < count {
            let stored = try await backendClient.send(RedisCommand("GET", RedisArgument("celery-task-meta-d\(index)")))
            #expect(stored.bytes == (try documents[index].encoded(as: .json)))
        }
        #expect(try await backendClient.send(RedisCommand("GET", "celery-task-meta-twice")).bytes == first.encoded(as: .json))
        #expect(try await backendClient.send(RedisCommand("GET", "celery-task-meta-again")).bytes == after.encoded(as: .json))
    }

    @Test(
        "the thread pool's blocking pop writes its record at once on the results connection; its reply is read by the next call there, or by whoever waits for it"
    )
    func recordOnResultsConnection() async throws {
        let base = try #require(TestRedis.base)
        let brokerURL = try RedisURL(parsing: "\(base)/15")
        let results = RedisClient(url: try RedisURL(parsing: "\(base)/14"))
        let broker = RedisBroker(blocking: RedisClient(url: brokerURL), commands: RedisClient(url: brokerURL), records: results)
        let (brokerDatabase, resultsDatabase) = (try await TestRedis.client(database: 15), try await TestRedis.client(database: 14))
        let raw = try fixture("v2-json-add.message.json")
        func popWaiting() async throws -> BrokerDelivery {
            async let fetched = broker.fetch(queues: ["celery"], limit: 4)
            try await Task.sleep(for: .milliseconds(200))
            try await brokerDatabase.send(RedisCommand("LPUSH", "celery", RedisArgument(raw)))
            return try #require(try await fetched.first)
        }
        let first = try await popWaiting()
        let tag = try #require(first.deliveryTag)
        let record = try #require(first.pendingRecord)
        #expect(PendingRecord.precedes(record, on: results))
        #expect(!PendingRecord.precedes(record, on: broker.commands))
        // In Redis although nobody has read its reply: nothing else has used the results connection.
        var stored: [UInt8]?
        for _ in 0..<100 where stored == nil {
            stored = try await brokerDatabase.send(RedisCommand("HGET", "unacked", RedisArgument(tag))).bytes
            if stored == nil { try await Task.sleep(for: .milliseconds(10)) }
        }
        #expect(stored == Array("[".utf8) + raw + Array(#", "", "celery"]"#.utf8))
        #expect(try await brokerDatabase.send(RedisCommand("ZSCORE", "unacked_index", RedisArgument(tag))).text != nil)
        #expect(!record.isDone)
        // Waiting for it reads the reply (without that the wait would never end).
        #expect(await [first].recorded().isEmpty)
        #expect(record.isDone)
        // The next call on the results connection reads a record's reply before its own.
        let second = try await popWaiting()
        let secondRecord = try #require(second.pendingRecord)
        try await results.send(RedisCommand("SET", "after-record", "1"))
        #expect(secondRecord.isDone)
        #expect(secondRecord.takeFailure() == nil)
        // The results connection is back on its own database.
        #expect(try await resultsDatabase.send(RedisCommand("GET", "after-record")).text == "1")
        #expect(try await resultsDatabase.send(RedisCommand("EXISTS", "unacked", "unacked_index")).integer == 0)
        // The same message twice: one tag, recorded twice.
        #expect(second.deliveryTag == tag)
        #expect(try await brokerDatabase.send(RedisCommand("HLEN", "unacked")).integer == 1)
    }

    @Test(
        "at idle the thread pool acknowledges a task as it starts and stores its result after, also after Redis forgot its scripts; nothing stays in unacked"
    )
    func threadPoolAcknowledgesAtStart() async throws {
        try await SharedServerWorker(concurrency: 2).run { worker in
            try await worker.pushAtIdle(taskMessage("add", id: "idle-add", args: [2, 3]))
            try await worker.waitFor { try await worker.state("idle-add") == .success }
            try await worker.waitFor { try await worker.unacked() == 0 }
            // A long task: acknowledged as it starts (Celery's early acknowledgement), its result stored at the end.
            try await worker.pushAtIdle(taskMessage("slow", id: "idle-slow", args: [0.6]))
            try await Task.sleep(for: .milliseconds(300))
            #expect(try await worker.unacked() == 0)
            #expect(try await worker.state("idle-slow") == nil)
            try await worker.waitFor { try await worker.state("idle-slow") == .success }
            // A failure goes through the settler, after the acknowledgement.
            try await worker.pushAtIdle(taskMessage("fail", id: "idle-fail"))
            try await worker.waitFor { try await worker.state("idle-fail") == .failure }
            try await worker.waitFor { try await worker.unacked() == 0 }
            // Redis has forgotten its scripts (a restart): the acknowledgement still lands while the task runs.
            try await worker.resultsDatabase.send(RedisCommand("SCRIPT", "FLUSH"))
            try await worker.pushAtIdle(taskMessage("slow", id: "idle-flushed", args: [0.6]))
            try await Task.sleep(for: .milliseconds(300))
            #expect(try await worker.unacked() == 0)
            #expect(try await worker.state("idle-flushed") == nil)
            try await worker.waitFor { try await worker.state("idle-flushed") == .success }
            try await worker.resultsDatabase.send(RedisCommand("SCRIPT", "FLUSH"))
            try await worker.pushAtIdle(taskMessage("add", id: "idle-flushed-add", args: [4, 5]))
            try await worker.waitFor { try await worker.state("idle-flushed-add") == .success }
            try await worker.waitFor { try await worker.unacked() == 0 }
        }
    }

    @Test(
        "in the thread pool a message that comes while the only slot is busy is still popped and recorded at once, also when the body holds its thread (another thread takes the lead); a burst goes back to batch pops, and idle pops follow"
    )
    func threadPoolFetchesWhileBodiesBlock() async throws {
        try await SharedServerWorker(concurrency: 1).run { worker in
            // Every message here comes to an empty queue, so each is taken by a blocking pop.
            for index in 0..<5 {
                try await worker.pushAtIdle(taskMessage("add", id: "idle-\(index)", args: [.int(Int64(index)), 1]))
                try await worker.waitFor { try await worker.state("idle-\(index)") == .success }
            }
            // The only slot runs a long task (acknowledged as it starts); a message that comes meanwhile is popped and
            // recorded at once by the other task thread, as a Python worker prefetches it, and runs after.
            try await worker.pushAtIdle(taskMessage("slow", id: "busy-slow", args: [0.8]))
            try await Task.sleep(for: .milliseconds(200))
            try await worker.push(taskMessage("add", id: "busy-next", args: [1, 1]))
            try await worker.waitFor {
                let recorded = try await worker.recorded()
                return try await worker.queued() == 0 && recorded.hash == 1 && recorded.index == 1
            }
            #expect(try await worker.state("busy-slow") == nil)
            #expect(try await worker.state("busy-next") == nil)
            try await worker.waitFor { try await worker.state("busy-next") == .success }
            #expect(try await worker.state("busy-slow") == .success)
            // The same with a body that holds its thread: the leader runs it only for a moment, then the watchdog
            // demotes it and another thread takes the lead, and with it the next pop.
            try await worker.pushAtIdle(taskMessage("block", id: "busy-block", args: [0.8]))
            try await Task.sleep(for: .milliseconds(200))
            try await worker.push(taskMessage("add", id: "block-next", args: [2, 2]))
            try await Task.sleep(for: .milliseconds(200))
            let whileBlocked = try await worker.recorded()
            #expect(try await worker.queued() == 0)
            #expect(whileBlocked.hash == 1 && whileBlocked.index == 1)
            #expect(try await worker.state("busy-block") == nil)
            try await worker.waitFor { try await worker.state("block-next") == .success }
            #expect(try await worker.state("busy-block") == .success)
            // A burst: the pop script takes batches, then the queue is empty and the worker idle again.
            for index in 0..<40 { try await worker.push(taskMessage("add", id: "burst-\(index)", args: [.int(Int64(index)), 1])) }
            try await worker.waitFor { try await worker.state("burst-39") == .success }
            for index in 0..<40 { #expect(try await worker.state("burst-\(index)") == .success) }
            for index in 0..<5 {
                try await worker.pushAtIdle(taskMessage("add", id: "again-\(index)", args: [.int(Int64(index)), 2]))
                try await worker.waitFor { try await worker.state("again-\(index)") == .success }
            }
            try await worker.waitFor { try await worker.unacked() == 0 }
        }
    }

    @Test("heartbeat_sent follows each worker-heartbeat event")
    func heartbeatSignal() async throws {
        let beats = Mutex<[String]>([])
        try await SharedServerWorker(concurrency: 1) { configuration, registry in
            configuration.heartbeatInterval = 0.2
            registry.signals.onHeartbeatSent { event in beats.withLock { $0.append(event.hostname) } }
        }.run { worker in
            try await worker.waitFor { beats.withLock { $0.count } >= 3 }
        }
        #expect(Set(beats.withLock { $0 }) == ["idle@test"])
    }

    @Test("the client's remote control: broadcast with replies, revoke of a task waiting for its ETA, forget")
    func clientRemoteControl() async throws {
        let base = try #require(TestRedis.base)
        let client = CeleryClient(brokerURL: try RedisURL(parsing: "\(base)/15"), resultBackendURL: try RedisURL(parsing: "\(base)/14"))
        try await SharedServerWorker(concurrency: 1).run { worker in
            let pongs = try await client.broadcast("ping", destination: ["idle@test"], timeout: 5)
            #expect(pongs == [ControlReply(node: "idle@test", reply: ["ok": "pong"])])
            #expect(try await client.broadcast("ping", destination: ["nobody@nowhere"], timeout: 0.3).isEmpty)
            let waiting = try await client.send("add", args: [1, 2], options: TaskSendOptions(countdown: 1.5))
            try await worker.waitFor { try await worker.unacked() == 2 }  // received, held for its ETA
            try await waiting.revoke()
            try await worker.waitFor { try await worker.state(waiting.id) == .revoked }
            // Past its ETA the worker discards it instead of running it (a run would have stored SUCCESS over REVOKED).
            try await worker.waitFor { try await worker.unacked() == 0 }
            #expect(try await worker.state(waiting.id) == .revoked)
            let done = try await client.send("add", args: [2, 2])
            #expect(try await done.get(timeout: .seconds(10)) == 4)
            try await done.forget()
            #expect(try await done.state() == .pending)
        }
        await client.shutdown()
    }

    @Test("before_task_publish may set headers on what a task sends and on what a client sends; after_task_publish follows")
    func publishSignals() async throws {
        let base = try #require(TestRedis.base)
        let published = Mutex<[String]>([])
        var clientSignals = WorkerSignals()
        clientSignals.onBeforeTaskPublish { $0.headers["x-trace"] = .string("client-\($0.task)") }
        let client = CeleryClient(
            brokerURL: try RedisURL(parsing: "\(base)/15"), resultBackendURL: try RedisURL(parsing: "\(base)/14"),
            signals: clientSignals)
        try await SharedServerWorker(concurrency: 2) { _, registry in
            registry.signals.onBeforeTaskPublish { $0.headers["x-trace"] = .string("worker-\($0.task)") }
            registry.signals.onAfterTaskPublish { event in
                published.withLock { $0.append("\(event.task) \(event.queue) \(event.headers["x-trace"]?.stringValue ?? "-")") }
            }
            registry.register("traceHeader") { context in context.request.headers["x-trace"] ?? .null }
            registry.register("sendsTrace") { context in try await context.send("traceHeader").id }
        }.run { _ in
            #expect(try await client.send("traceHeader").get(timeout: .seconds(10)) == "client-traceHeader")
            let parent = try await client.send("sendsTrace").get(timeout: .seconds(10))
            let child = client.result(id: try #require(parent.stringValue))
            #expect(try await child.get(timeout: .seconds(10)) == "worker-traceHeader")
        }
        await client.shutdown()
        #expect(published.withLock { $0 } == ["traceHeader celery worker-traceHeader"])
    }

    @Test("only a broker on the same server, as the same user, shares the script")
    func sameServerOnly() throws {
        let base = try RedisURL(parsing: "redis://127.0.0.1:6379/1")
        let backend = RedisResultBackend(client: RedisClient(url: base))
        func broker(_ text: String) throws -> RedisBroker {
            let url = try RedisURL(parsing: text)
            return RedisBroker(blocking: RedisClient(url: url), commands: RedisClient(url: url))
        }
        #expect(backend.sharesServer(with: try broker("redis://127.0.0.1:6379/0")))
        #expect(!backend.sharesServer(with: try broker("redis://127.0.0.1:6380/1")))
        #expect(!backend.sharesServer(with: try broker("redis://:secret@127.0.0.1:6379/1")))
    }
}

func fixture(_ name: String) throws -> [UInt8] {
    let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures").appendingPathComponent(name)
    return Array(try Data(contentsOf: url))
}

/// A JSON fixture's top-level object by key (empty when it cannot be read, which the tests that need a key notice).
func fixtureObject(_ name: String) -> [String: CeleryValue] {
    guard let bytes = try? fixture(name), case .object(let object)? = try? CeleryJSON.decode(bytes) else { return [:] }
    return Dictionary(uniqueKeysWithValues: object.map { ($0.key, $0.value) })
}

/// A thread-pool worker with its broker (database 15) and results (database 14) on the test server, and what its
/// tests read back.
struct SharedServerWorker {
    let brokerDatabase: RedisClient
    let resultsDatabase: RedisClient
    let worker: CeleryWorkerService

    /// `configure` changes the configuration and the registry before the worker is made.
    init(concurrency: Int, configure: (inout WorkerConfiguration, inout TaskRegistry) -> Void = { _, _ in }) async throws {
        let base = try #require(TestRedis.base)
        (brokerDatabase, resultsDatabase) = (try await TestRedis.client(database: 15), try await TestRedis.client(database: 14))
        var configuration = WorkerConfiguration(
            brokerURL: try RedisURL(parsing: "\(base)/15"), resultBackendURL: try RedisURL(parsing: "\(base)/14"),
            concurrency: concurrency, nodeName: "idle@test")
        var registry = WorkerRuntimeTests.registry()
        configure(&configuration, &registry)
        // A body that holds its thread (no `await`), as synchronous work does.
        registry.register("block", parameters: ["seconds"]) { (_, seconds: Double) in
            usleep(UInt32(seconds * 1_000_000))
            return seconds
        }
        worker = CeleryWorkerService(
            configuration: configuration, registry: registry, logger: try WorkerRuntimeTests.quietLogger())
    }

    /// Runs the worker, waits until it has declared its queue, runs `body`, and shuts the worker down.
    func run(_ body: @escaping @Sendable (Self) async throws -> Void) async throws {
        let group = ServiceGroup(services: [worker], logger: Logger(label: "group", factory: { _ in SwiftLogNoOpLogHandler() }))
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            try await waitFor { try await brokerDatabase.send(RedisCommand("EXISTS", "_kombu.binding.celery")).integer == 1 }
            try await body(self)
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
        }
    }

    /// The state stored for task `id`, `nil` when none is.
    func state(_ id: String) async throws -> TaskState? {
        let stored = try await resultsDatabase.send(RedisCommand("GET", RedisArgument("celery-task-meta-" + id))).bytes
        return stored.flatMap { CeleryResultDocument.storedStatus($0, serializer: .json) }
    }

    /// Entries in `unacked` and `unacked_index` together.
    func unacked() async throws -> Int64 {
        let counts = try await recorded()
        return counts.hash + counts.index
    }

    /// Entries in `unacked` and in `unacked_index`.
    func recorded() async throws -> (hash: Int64, index: Int64) {
        let counts = try await brokerDatabase.pipeline([RedisCommand("HLEN", "unacked"), RedisCommand("ZCARD", "unacked_index")])
        return (counts.first?.integer ?? -1, counts.last?.integer ?? -1)
    }

    /// Messages waiting in the `celery` queue.
    func queued() async throws -> Int64 {
        try await brokerDatabase.send(RedisCommand("LLEN", "celery")).integer ?? -1
    }

    func push(_ message: [UInt8]) async throws {
        try await brokerDatabase.send(RedisCommand("LPUSH", "celery", RedisArgument(message)))
    }

    /// Pushes a message once the worker has waited in its blocking pop for a while (so it arrives at idle).
    func pushAtIdle(_ message: [UInt8]) async throws {
        try await Task.sleep(for: .milliseconds(100))
        try await push(message)
    }

    /// Waits up to 3 s for `condition`, then expects it.
    func waitFor(_ condition: () async throws -> Bool) async throws {
        for _ in 0..<300 where !(try await condition()) { try await Task.sleep(for: .milliseconds(10)) }
        #expect(try await condition())
    }
}
