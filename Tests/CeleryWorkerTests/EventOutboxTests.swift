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
}
