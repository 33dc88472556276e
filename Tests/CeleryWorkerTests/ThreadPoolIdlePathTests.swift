import CeleryProtocol
import Foundation
import Synchronization
import Testing

@testable import CeleryWorker

/// The thread pool's idle path: a job a thread keeps for itself stays there, a blocking pop's record goes out on the
/// results connection, and a task thread acknowledges and settles its task itself.
@Suite("the thread pool's idle path", .serialized)
struct ThreadPoolIdlePathTests {
    /// Which thread the caller runs on.
    static func thread() -> ObjectIdentifier { ObjectIdentifier(Thread.current) }

    /// A broker whose records go to a results client on another database (as the thread pool's, with the backend on
    /// the broker's server), and the message it fetched with a blocking pop, from a task on a new set of two threads
    /// (shut it down after).
    static func fetchOne() async throws -> (
        threads: WorkerThreads, broker: RedisBroker, results: RedisClient, brokerDatabase: RedisClient,
        resultsDatabase: RedisClient, raw: [UInt8], delivery: BrokerDelivery
    ) {
        let base = try #require(TestRedis.base)
        let threads = WorkerThreads(count: 2, name: "test-fetch")
        let brokerURL = try RedisURL(parsing: "\(base)/15")
        let results = RedisClient(url: try RedisURL(parsing: "\(base)/14"))
        let broker = RedisBroker(
            blocking: RedisClient(url: brokerURL), commands: RedisClient(url: brokerURL), records: results)
        let (brokerDatabase, resultsDatabase) = (try await TestRedis.client(database: 15), try await TestRedis.client(database: 14))
        let raw = try fixture("v2-json-add.message.json")
        let delivery = try await withTaskExecutorPreference(threads) { () async throws -> BrokerDelivery in
            async let fetched = broker.fetch(queues: ["celery"], limit: 4)
            try await Task.sleep(for: .milliseconds(200))
            try await brokerDatabase.send(RedisCommand("LPUSH", "celery", RedisArgument(raw)))
            return try #require(try await fetched.first)
        }
        return (threads, broker, results, brokerDatabase, resultsDatabase, raw, delivery)
    }

    @Test("a job kept for its thread in a set of several is not taken by a thread woken for a later one")
    func keptJobStaysOnItsThread() async throws {
        let threads = WorkerThreads(count: 2, name: "test-kept")
        defer { threads.shutdown() }
        final class Seen: Sendable { let threads = Mutex<(keptBy: ObjectIdentifier, ranOn: ObjectIdentifier)?>(nil) }
        let seen = Seen()
        await withTaskExecutorPreference(threads) {
            let handoff = Handoff<ObjectIdentifier>()
            await withDiscardingTaskGroup { group in
                group.addTask {
                    guard let keptBy = await handoff.next() else { return }
                    seen.threads.withLock { $0 = (keptBy, Self.thread()) }
                }
                group.addTask {
                    try? await Task.sleep(for: .milliseconds(50))  // the first task waits by then
                    WorkerThreads.keepNextJobOnThisThread()
                    handoff.yield(Self.thread())
                    threads.submit {}  // wakes the other thread, which takes whatever the shared queue holds
                    // Busy a while: long enough for the woken thread to take the waiting task's job, were it queued.
                    let until = ContinuousClock.now + .milliseconds(20)
                    while ContinuousClock.now < until {}
                }
            }
        }
        let (keptBy, ranOn) = try #require(seen.threads.withLock { $0 })
        #expect(keptBy == ranOn)
    }

    @Test(
        "a blocking pop's record goes out at once on the results connection; whoever waits for it reads its reply",
        .enabled(if: TestRedis.enabled))
    func recordFromTheTaskThread() async throws {
        let fetched = try await Self.fetchOne()
        defer { fetched.threads.shutdown() }
        let (results, brokerDatabase, resultsDatabase, raw, delivery) =
            (fetched.results, fetched.brokerDatabase, fetched.resultsDatabase, fetched.raw, fetched.delivery)
        let tag = try #require(delivery.deliveryTag)
        let record = try #require(delivery.pendingRecord)
        #expect(PendingRecord.precedes(record, on: results))
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
        #expect(await [delivery].recorded().isEmpty)
        #expect(record.isDone)
        // The results connection is back on its own database.
        try await results.send(RedisCommand("SET", "after-record", "1"))
        #expect(try await resultsDatabase.send(RedisCommand("GET", "after-record")).text == "1")
        #expect(try await resultsDatabase.send(RedisCommand("EXISTS", "unacked", "unacked_index")).integer == 0)
    }

    @Test(
        "at idle a task thread acknowledges without waiting and settles itself, after the record, in order, on the results connection",
        .enabled(if: TestRedis.enabled))
    func acknowledgeAndSettleHere() async throws {
        let fetched = try await Self.fetchOne()
        defer { fetched.threads.shutdown() }
        let (threads, broker, results, brokerDatabase, resultsDatabase, delivery) =
            (fetched.threads, fetched.broker, fetched.results, fetched.brokerDatabase, fetched.resultsDatabase, fetched.delivery)
        let backend = RedisResultBackend(client: results, serializer: .json, expires: 600)
        let tag = try #require(delivery.deliveryTag)
        let record = try #require(delivery.pendingRecord)
        // The acknowledgement follows the record without waiting for either reply (the settle script with early
        // acknowledgements only, sent with its source: there is no `NOSCRIPT` to answer).
        final class Outcome: Sendable { let failure = Mutex<String??>(.none) }
        let acknowledged = Outcome()
        let request = backend.settleRequest(earlyAcks: [tag], documents: [], lateAcks: [], broker: broker)
        results.sendWithoutWaiting(request: request, replies: 1) { failure in acknowledged.failure.withLock { $0 = .some(failure) } }
        var gone = false
        for _ in 0..<100 where !gone {
            gone = try await brokerDatabase.send(RedisCommand("EXISTS", "unacked", "unacked_index")).integer == 0
            if !gone { try await Task.sleep(for: .milliseconds(10)) }
        }
        #expect(gone)
        #expect(!record.isDone)
        #expect(acknowledged.failure.withLock { $0 } == .none)
        // The settle script written here, on a task thread, reads both replies first; it acknowledges again (a no-op
        // now) ahead of the result.
        let document = CeleryResultDocument(taskID: "here-1", status: .success, result: 3, dateDone: "2026-12-03T00:00:00+00:00")
        try await threads.run { () throws(CeleryWorkerError) in
            try backend.settleHere(earlyAcks: [tag], documents: [document], lateAcks: [], broker: broker)
        }
        #expect(record.isDone)
        #expect(acknowledged.failure.withLock { $0 } == .some(nil))
        #expect(await [delivery].recorded().isEmpty)
        #expect(try await resultsDatabase.send(RedisCommand("GET", "celery-task-meta-here-1")).bytes == document.encoded(as: .json))
        #expect(try await brokerDatabase.send(RedisCommand("EXISTS", "unacked", "unacked_index")).integer == 0)
        #expect(try await resultsDatabase.send(RedisCommand("EXISTS", "unacked", "unacked_index")).integer == 0)
    }
}
