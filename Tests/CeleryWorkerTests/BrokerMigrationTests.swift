import CeleryProtocol
import Foundation
import Testing

@testable import CeleryWorker

@Suite("celery migrate (BrokerMigration) against a real redis-server", .serialized, .enabled(if: TestRedis.enabled))
struct BrokerMigrationTests {
    /// Golden messages of Celery 5.7 in one queue, taken from the right: protocol 2 (`tasks.add`, plain and
    /// zlib-compressed), protocol 1, a `seed_email`, and one that is not kombu's envelope.
    private func filled() async throws -> (RedisClient, RedisBroker) {
        let client = try await TestRedis.client(database: 8)
        let url = try RedisURL(parsing: "\(try #require(TestRedis.base))/8")
        let broker = RedisBroker(blocking: RedisClient(url: url), commands: RedisClient(url: url))
        for name in ["v2-json-add", "v2-json-seed-email", "v2-json-add-zlib", "v1-json-add"] {
            try await client.send(RedisCommand("LPUSH", "celery", RedisArgument(try fixture("\(name).message.json"))))
        }
        try await client.send(RedisCommand("LPUSH", "celery", "not a message"))
        return (client, broker)
    }

    /// Each message of `list` from left to right, by its task id (a protocol 1 message's is in its body), or
    /// `"not a message"`.
    private func ids(_ client: RedisClient, _ list: String) async throws -> [String] {
        let reply = try await client.send(RedisCommand("LRANGE", RedisArgument(list), "0", "-1"))
        return (reply.array ?? []).map { item in
            guard let envelope = try? KombuEnvelope(decoding: item.bytes ?? []) else { return "not a message" }
            if let id = envelope.headers["id"]?.stringValue { return id }
            return (try? CeleryJSON.decode(envelope.body))?["id"]?.stringValue ?? "?"
        }
    }

    @Test("a move renames the queue, filters by task name in headers or body, stops at the limit; what it took and left keeps its order")
    func moveWithFilterAndLimit() async throws {
        let (client, broker) = try await filled()
        let before = try await ids(client, "celery")  // the protocol 1 add, the zlib add, the seed_email, the add
        #expect(before.count == 5 && Set(before).count == 5 && before[0] == "not a message")
        var lines: [String] = []
        var skipped: [String] = []
        let migration = BrokerMigration(
            routes: [.init(source: "celery", destination: "moved")], tasks: ["tasks.add"], limit: 2, acknowledge: true)
        let summary = try await migration.run(from: broker, to: broker, migrated: { lines.append($0.line) }, skipped: { skipped.append($0) })
        #expect(summary == BrokerMigration.Summary(migrated: 2, givenBack: 1))
        #expect(lines.count == 2 && lines.allSatisfy { $0.hasPrefix("Migrating task ") && $0.contains("/5: ") })
        // Taken from the right: the add, the seed_email (left out by the filter, given back), the zlib add.
        #expect(try await ids(client, "moved") == [before[2], before[4]])
        #expect(try await ids(client, "celery") == [before[0], before[1], before[3]])
        #expect(skipped.isEmpty)
        #expect(try await client.send(RedisCommand("HLEN", "unacked")).integer == 0)
        // The moved messages name their new queue, carry new delivery tags, and keep their bodies.
        for raw in try await client.send(RedisCommand("LRANGE", "moved", "0", "-1")).array ?? [] {
            let envelope = try KombuEnvelope(decoding: try #require(raw.bytes))
            #expect(envelope.deliveryInfo.routingKey == "moved")
            #expect(envelope.deliveryTag != "bad42c5a-2b5d-4faa-897a-4071e741eff8")
        }
        #expect(try await client.send(RedisCommand("SMEMBERS", "_kombu.binding.moved")).array?.first?.text == "moved\u{06}\u{16}\u{06}\u{16}moved")
    }

    @Test("a copy gives back every message in its order, marked redelivered, and reports one that is not kombu's")
    func copyKeepsOrder() async throws {
        let (client, broker) = try await filled()
        let before = try await ids(client, "celery")
        var skipped: [String] = []
        let migration = BrokerMigration(routes: [.init(source: "celery", destination: "copied")], timeout: .milliseconds(100))
        let summary = try await migration.run(from: broker, to: broker, migrated: { _ in }, skipped: { skipped.append($0) })
        #expect(summary == BrokerMigration.Summary(migrated: 4, givenBack: 5))
        #expect(try await ids(client, "celery") == before)
        #expect(try await ids(client, "copied") == Array(before.dropFirst()))
        #expect(skipped.count == 1 && skipped[0].contains("'celery' is not a task message"))
        let first = try #require(try await client.send(RedisCommand("LINDEX", "celery", "-1")).bytes)
        #expect(try KombuEnvelope(decoding: first).deliveryInfo.redelivered)
        #expect(try await client.send(RedisCommand("HLEN", "unacked")).integer == 0)
    }
}
