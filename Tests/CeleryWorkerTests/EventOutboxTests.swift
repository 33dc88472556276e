import CeleryProtocol
import Foundation
import Logging
import Testing

@testable import CeleryWorker

@Suite("Task events are buffered and never make a task wait")
struct EventOutboxTests {
    @Test("a stalled events connection: sending returns at once, events beyond the limit are dropped and the count logged")
    func stalledConnection() async throws {
        // A loopback listener that never accepts: the connect succeeds (the kernel's backlog), no reply ever comes.
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(listener) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { generic in
                bind(listener, generic, length) == 0 && listen(listener, 8) == 0 && getsockname(listener, generic, &length) == 0
            }
        }
        try #require(bound, "no loopback listener")
        let port = Int(UInt16(bigEndian: address.sin_port))
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("events-\(UUID().uuidString).log").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        let sink = try CeleryLogHandler.Sink(appendingTo: path)
        let events = EventDispatcher(
            client: RedisClient(url: try RedisURL(parsing: "redis://127.0.0.1:\(port)"), commandTimeout: .milliseconds(300)),
            hostname: "celery@test", database: 0, version: "0", sendsTaskEvents: true, outboxLimit: 50,
            logger: Logger(label: "celery.events", factory: { CeleryLogHandler(label: $0, sink: sink, level: .info) }))

        let started = ContinuousClock.now
        for number in 0..<200 { events.sendTaskEvent("task-received", ["uuid": .string("id-\(number)")]) }
        // Each publish waits 300 ms for a reply that never comes; the 200 sends did not wait for any of them.
        #expect(ContinuousClock.now - started < .milliseconds(250))
        await events.flushTaskEvents()

        let log = try String(contentsOfFile: path, encoding: .utf8)
        let counts = log.split(separator: "\n").compactMap { line -> Int? in
            guard let range = line.range(of: "Dropped ") else { return nil }
            return Int(line[range.upperBound...].prefix { $0.isNumber })
        }
        // At most 50 wait at a time: the first flush took at most 50, and the outbox then held at most 50 more.
        let dropped = counts.reduce(0, +)
        #expect(dropped >= 100 && dropped <= 150, "\(log)")
        #expect(log.contains(": WARNING/MainProcess] Dropped "), "\(log)")
        #expect(log.contains("task event(s): more than 50 were waiting to be published (the events connection fell behind)"))
    }

    @Test("a task event's body is written straight out as the event's object would encode, in every field's form")
    func sameBytesAsTheObject() throws {
        let events = EventDispatcher(
            client: RedisClient(url: try RedisURL(parsing: "redis://127.0.0.1:1")), hostname: "celery@h\u{e9}te", database: 0,
            version: "0", sendsTaskEvents: true)
        let cases: [(String, CeleryObject)] = [
            ("task-started", ["uuid": "0f0e"]),
            (
                "task-received",
                [
                    "uuid": "id", "name": "tasks.add", "args": "(2, 3)", "kwargs": "{}", "root_id": "r", "parent_id": nil, "retries": 0,
                    "eta": nil, "expires": "2026-12-07T06:00:00+00:00",
                ]
            ),
            ("task-succeeded", ["uuid": "id", "result": "'caf\u{e9}\n\"\\'", "runtime": .double(0.000123)]),
            ("task-failed", ["uuid": "id", "exception": "ValueError('x')", "traceback": "Traceback\n  \u{1F600}\n"]),
            (
                "task-revoked",
                [
                    "uuid": "id", "terminated": true, "signum": 15, "expired": false,
                    "big": .bigInt(try #require(CeleryBigInt("123456789012345678901234567890"))),
                ]
            ),
            ("task-custom", ["uuid": "id", "nested": ["a": [1, 2.5, nil, "b"], "e": [:]], "bytes": .bytes([0xFF, 0])]),
            // A field named as one of the event's own takes its place, as in the object.
            ("task-odd", ["uuid": "id", "hostname": "other", "type": "shadowed", "clock": 7]),
            ("task-empty", [:]),
        ]
        for (tick, (type, fields)) in cases.enumerated() {
            let timestamp = 1_765_090_000.123456 + Double(tick)
            var written: [UInt8] = []
            events.appendTaskEvent(type, fields, timestamp: timestamp, tick: tick + 40, utcoffset: -1.5, into: &written)
            let object = events.eventBody(type, fields, hostname: "celery@h\u{e9}te", timestamp: timestamp, tick: tick + 40, utcoffset: -1.5)
            #expect(written == CeleryJSON.encode(object), "\(type): \(String(decoding: written, as: UTF8.self))")
            // The task's id apart: first among the fields, or in its place among them when they name it too.
            var withID: [UInt8] = []
            var rest = fields
            rest["uuid"] = nil
            for given in [rest, fields] {
                withID.removeAll()
                events.appendTaskEvent(type, uuid: "given-id", given, timestamp: timestamp, tick: tick, utcoffset: 2, into: &withID)
                var merged: CeleryObject = ["uuid": "given-id"]
                for (key, value) in given { merged[key] = value }
                let expected = events.eventBody(type, merged, hostname: "celery@h\u{e9}te", timestamp: timestamp, tick: tick, utcoffset: 2)
                #expect(withID == CeleryJSON.encode(expected), "\(type): \(String(decoding: withID, as: UTF8.self))")
            }
        }
    }

    @Test("a task.multi message is the envelope every other event message gets, with its body and tag")
    func taskMultiEnvelope() throws {
        for exchange in ["celeryev", "my \"events\""] {
            let events = EventDispatcher(
                client: RedisClient(url: try RedisURL(parsing: "redis://127.0.0.1:1")), hostname: "w@h", database: 0, version: "0",
                sendsTaskEvents: true, exchange: exchange)
            let body = Array(#"[{"type": "task-started"}]"#.utf8)
            var (headers, properties) = EventDispatcher.envelope(hostname: "w@h", exchange: exchange, routingKey: "task.multi")
            properties["delivery_tag"] = "tag-1"
            let expected = KombuEnvelope(
                body: body, contentType: "application/json", contentEncoding: "utf-8", headers: headers, properties: properties
            ).encoded()
            #expect(events.eventMessage(routingKey: "task.multi", json: body, deliveryTag: "tag-1") == expected)
            let decoded = try KombuEnvelope(decoding: expected)
            #expect(decoded.body == body && decoded.deliveryTag == "tag-1")
            #expect(decoded.deliveryInfo.exchange == exchange && decoded.deliveryInfo.routingKey == "task.multi")
        }
    }

    @Test("delivery tags are uuid4 text, every one different, and two workers' generators start apart")
    func deliveryTags() {
        var tags = DeliveryTags()
        var other = DeliveryTags()
        var seen = Set<String>()
        let hex = Set("0123456789abcdef")
        for _ in 0..<10_000 {
            let tag = tags.next()
            let groups = tag.split(separator: "-", omittingEmptySubsequences: false)
            #expect(groups.map(\.count) == [8, 4, 4, 4, 12], "\(tag)")
            #expect(tag.allSatisfy { $0 == "-" || hex.contains($0) }, "\(tag)")
            #expect(groups[2].first == "4" && "89ab".contains(groups[3].first ?? "x"), "\(tag)")
            #expect(UUID(uuidString: tag) != nil, "\(tag)")
            seen.insert(tag)
            seen.insert(other.next())
        }
        #expect(seen.count == 20_000)
    }
}
