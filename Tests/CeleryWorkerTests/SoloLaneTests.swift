import CeleryProtocol
import Foundation
import Synchronization
import Testing

@testable import CeleryWorker

/// The solo pool's thread: one ``WorkerThreads`` thread that runs jobs and, while nothing is queued, waits for the
/// replies of the Redis requests its clients sent (``RedisClient/init(url:commandTimeout:sharedLane:)``).
@Suite("the solo pool's event loop", .serialized)
struct SoloLaneTests {
    /// A client of the test server's database 12 whose calls run on a new event-loop thread (shut it down after).
    static func soloClient(commandTimeout: Duration = .seconds(30)) throws -> (lane: WorkerThreads, client: RedisClient) {
        let base = try #require(TestRedis.base)
        let lane = WorkerThreads(count: 1, name: "test-solo", eventLoop: true)
        let url = try RedisURL(parsing: "\(base)/12")
        return (lane, RedisClient(url: url, commandTimeout: commandTimeout, sharedLane: lane))
    }

    /// Has the server close the connection `id` (its `CLIENT ID`), from another connection.
    static func kill(connection id: Int64?) async throws {
        let id = try #require(id)
        try await TestRedis.client(database: 12).send(RedisCommand("CLIENT", "KILL", "ID", RedisArgument(Int(id))))
    }

    @Test("work that waits for the thread to be idle runs after everything queued before and meanwhile")
    func whenIdle() async {
        let lane = WorkerThreads(count: 1, name: "test-solo", eventLoop: true)
        defer { lane.shutdown() }
        let order = Shared<[String]>([])
        await withTaskExecutorPreference(lane) {
            await withDiscardingTaskGroup { group in
                group.addTask {
                    await lane.whenIdle()
                    order.withLock { $0.append("idle") }
                }
                for name in ["a", "b", "c"] {
                    group.addTask {
                        order.withLock { $0.append(name) }
                        await Task.yield()  // queued again, behind the idle waiter: still before it
                        order.withLock { $0.append(name.uppercased()) }
                    }
                }
            }
        }
        #expect(order.withLock { $0 } == ["a", "b", "c", "A", "B", "C", "idle"])
    }

    @Test(
        "requests on a shared lane are answered in order, from the lane and from elsewhere, without blocking it",
        .enabled(if: TestRedis.enabled))
    func requests() async throws {
        let (lane, client) = try Self.soloClient()
        defer { lane.shutdown() }
        try await client.send(RedisCommand("DEL", "solo-counter", "solo-list"))
        // From the lane: many requests in flight on one connection at once, each answered with its own reply.
        let replies = await withTaskExecutorPreference(lane) {
            await withTaskGroup(of: Int64?.self) { group in
                for _ in 0..<50 { group.addTask { try? await client.send(RedisCommand("INCR", "solo-counter")).integer } }
                return await group.reduce(into: [Int64?]()) { $0.append($1) }
            }
        }
        #expect(Set(replies.compactMap { $0 }) == Set(1...50))
        // While a blocking pop waits for its reply, the thread runs other jobs.
        let ranAfter = Shared<Duration?>(nil)
        let started = ContinuousClock.now
        let popped = await withTaskExecutorPreference(lane) {
            async let pop = client.send(RedisCommand("BLPOP", "solo-list", "0.5"))
            await Task {
                try? await Task.sleep(for: .milliseconds(50))
                ranAfter.withLock { $0 = ContinuousClock.now - started }
            }.value
            return try? await pop
        }
        #expect(popped == .null)
        #expect(ContinuousClock.now - started >= .milliseconds(450))
        // Had the pop blocked the thread, the job would have run after its reply, 0.5 s in.
        #expect(try #require(ranAfter.withLock { $0 }) < .milliseconds(400))
        // Error replies are typed, as on a blocking client, and the connection goes on.
        await #expect(throws: CeleryWorkerError.self) { try await client.send(RedisCommand("NOSUCHCOMMAND")) }
        #expect(try await client.send(RedisCommand("GET", "solo-counter")).text == "50")
    }

    @Test("a task that yields in a loop does not keep replies unread", .enabled(if: TestRedis.enabled))
    func busyQueue() async throws {
        let (lane, client) = try Self.soloClient()
        defer { lane.shutdown() }
        let answered = Shared(false)
        let spins = await withTaskExecutorPreference(lane) {
            Task(executorPreference: lane) {
                _ = try? await client.send(RedisCommand("PING"))
                answered.withLock { $0 = true }
            }
            // The queue never empties while this loops: the reply is read between its turns, or only once it gives
            // up (a million turns, seconds).
            var spins = 0
            while !answered.withLock({ $0 }), spins < 1_000_000 {
                spins += 1
                await Task.yield()
            }
            return spins
        }
        #expect(answered.withLock { $0 })
        #expect(spins < 10_000)
    }

    @Test("a script is loaded again after SCRIPT FLUSH", .enabled(if: TestRedis.enabled))
    func scripts() async throws {
        let (lane, client) = try Self.soloClient()
        defer { lane.shutdown() }
        let script = RedisScript("return tonumber(ARGV[1]) + 1")
        let arguments: @Sendable () -> RESPArguments = {
            var arguments = RESPArguments(capacity: 16)
            arguments.append(41)
            return arguments
        }
        #expect(try await client.evaluate(script, keyCount: 0, arguments: arguments).integer == 42)
        try await TestRedis.client(database: 12).send(RedisCommand("SCRIPT", "FLUSH"))
        #expect(try await client.evaluate(script, keyCount: 0, arguments: arguments).integer == 42)
    }

    @Test(
        "a connection killed while a reply is awaited fails that request; the next one reconnects",
        .enabled(if: TestRedis.enabled))
    func killed() async throws {
        let (lane, client) = try Self.soloClient()
        defer { lane.shutdown() }
        let id = try await client.send(RedisCommand("CLIENT", "ID")).integer
        async let pop = client.send(RedisCommand("BLPOP", "solo-never", "5"))
        try await Task.sleep(for: .milliseconds(100))
        try await Self.kill(connection: id)
        let started = ContinuousClock.now
        do {
            _ = try await pop
            Issue.record("the killed connection's pop must fail")
        } catch {
            #expect((error as? CeleryWorkerError)?.code == .connectionLost)
        }
        #expect(ContinuousClock.now - started < .seconds(2))
        #expect(try await client.send(RedisCommand("PING")) == .status("PONG"))
    }

    @Test(
        "a blocking pop's record sent on the results connection lands in the broker's database, ahead of what follows it",
        .enabled(if: TestRedis.enabled))
    func recordOnResultsConnection() async throws {
        let (lane, results) = try Self.soloClient()
        defer { lane.shutdown() }
        let brokerURL = try RedisURL(parsing: "\(try #require(TestRedis.base))/13")
        let broker = RedisBroker(
            blocking: RedisClient(url: brokerURL, sharedLane: lane), commands: RedisClient(url: brokerURL, sharedLane: lane),
            records: results)
        let (brokerDatabase, resultsDatabase) = (try await TestRedis.client(database: 13), try await TestRedis.client(database: 12))
        for database in [brokerDatabase, resultsDatabase] { try await database.send(RedisCommand("FLUSHDB")) }
        let raw = try fixture("v2-json-add.message.json")
        let delivery = try await withTaskExecutorPreference(lane) { () async throws -> BrokerDelivery in
            async let fetched = broker.fetch(queues: ["celery"], limit: 4)
            try await Task.sleep(for: .milliseconds(200))
            try await brokerDatabase.send(RedisCommand("LPUSH", "celery", RedisArgument(raw)))
            return try #require(try await fetched.first)
        }
        let tag = try #require(delivery.deliveryTag)
        #expect(PendingRecord.precedes(delivery.pendingRecord, on: results))
        #expect(!PendingRecord.precedes(delivery.pendingRecord, on: broker.commands))
        // Sent right after the record on its connection, not waiting for the record's reply: its reply comes after.
        let written = try await withTaskExecutorPreference(lane) { () async throws -> Bool in
            let done = try #require(delivery.pendingRecord)
            try await results.send(RedisCommand("SET", "after-record", "1"))
            return done.isDone
        }
        #expect(written)
        #expect(await [delivery].recorded().isEmpty)
        let record = try await brokerDatabase.send(RedisCommand("HGET", "unacked", RedisArgument(tag)))
        #expect(record.bytes == Array("[".utf8) + raw + Array(#", "", "celery"]"#.utf8))
        #expect(try await brokerDatabase.send(RedisCommand("ZSCORE", "unacked_index", RedisArgument(tag))).text != nil)
        // The results connection is back on its own database.
        #expect(try await resultsDatabase.send(RedisCommand("GET", "after-record")).text == "1")
        #expect(try await resultsDatabase.send(RedisCommand("EXISTS", "unacked", "unacked_index")).integer == 0)
    }

    @Test(
        "a request not waited for goes out on a new connection when the server hung up on the idle one",
        .enabled(if: TestRedis.enabled))
    func hungUp() async throws {
        let (lane, client) = try Self.soloClient()
        defer { lane.shutdown() }
        let other = try await TestRedis.client(database: 12)
        try await other.send(RedisCommand("DEL", "hung-up"))
        try await Self.kill(connection: try await client.send(RedisCommand("CLIENT", "ID")).integer)
        try await Task.sleep(for: .milliseconds(50))
        let failure = Shared<String?>("not answered")
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
            client.sendWithoutWaiting(request: RedisConnection.resp(RedisCommand("SET", "hung-up", "1")), replies: 1) {
                failure.withLock { [failure = $0] in $0 = failure }
                done.resume()
            }
        }
        #expect(failure.withLock { $0 } == nil)
        #expect(try await other.send(RedisCommand("GET", "hung-up")).text == "1")
    }

    @Test(
        "a request waited for goes out on a new connection when the server closed the idle one (Redis's timeout)",
        .enabled(if: TestRedis.enabled))
    func closedWhileIdle() async throws {
        let (lane, client) = try Self.soloClient()
        defer { lane.shutdown() }
        try await Self.kill(connection: try await client.send(RedisCommand("CLIENT", "ID")).integer)
        try await Task.sleep(for: RedisConnection.idleCheck + .milliseconds(100))
        // Written to the dead socket, its reply would never come, and a request may not be sent twice once written.
        #expect(try await client.send(RedisCommand("ECHO", "after the close")).text == "after the close")
    }

    @Test("writes to a socket the server closed fail with an error, not SIGPIPE", .enabled(if: TestRedis.enabled))
    func brokenPipe() async throws {
        let connection = RedisConnection(url: try RedisURL(parsing: "\(try #require(TestRedis.base))/12"))
        try await Self.kill(connection: try connection.execute([RedisCommand("CLIENT", "ID")]).first?.integer)
        try await Task.sleep(for: .milliseconds(50))
        // The first write after the server's close succeeds; Redis's side answers it with a reset, and a later write
        // then raises SIGPIPE, which would end the test process if the connection had not had it ignored.
        var failed: CeleryWorkerError?
        for _ in 0..<20 where failed == nil {
            do throws(CeleryWorkerError) {
                try connection.send([RedisConnection.resp(RedisCommand("PING"))], replies: 1) { _ in }
            } catch {
                failed = error
            }
            try await Task.sleep(for: .milliseconds(10))
        }
        #expect(failed?.code == .connectionLost)
        connection.close()
    }

    @Test("a reply overdue past the command timeout fails the request", .enabled(if: TestRedis.enabled))
    func overdue() async throws {
        let (lane, client) = try Self.soloClient(commandTimeout: .milliseconds(300))
        defer { lane.shutdown() }
        let started = ContinuousClock.now
        do {
            _ = try await client.send(RedisCommand("BLPOP", "solo-never", "3"))
            Issue.record("a reply 3 s away must be overdue after 0.3 s")
        } catch {
            #expect(error.code == .timeout)
        }
        #expect(ContinuousClock.now - started < .seconds(2))
        #expect(try await client.send(RedisCommand("PING")) == .status("PONG"))
    }
}

/// A value shared with the tasks a test starts.
private final class Shared<Value: Sendable>: Sendable {
    private let value: Mutex<Value>

    init(_ value: Value) {
        self.value = Mutex(value)
    }

    func withLock<Result>(_ body: (inout Value) -> Result) -> Result {
        value.withLock { body(&$0) }
    }
}
