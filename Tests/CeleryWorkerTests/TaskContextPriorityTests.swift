import CeleryProtocol
import Foundation
import Logging
import Testing

@testable import CeleryWorker

@Suite("What a running task sends: its priority", .serialized, .enabled(if: TestRedis.enabled))
struct TaskContextPriorityTests {
    @Test("context.send without a priority gets the fallback (parent's or default); one of its own wins")
    func fallback() async throws {
        let redis = try await TestRedis.client(database: 9)
        let base = try #require(TestRedis.base)
        let client = CeleryClient(brokerURL: try RedisURL(parsing: "\(base)/9"))
        let envelope = try KombuEnvelope(decoding: taskMessage("tasks.parent", id: "parent-1"))
        let message = try CeleryTaskMessage(envelope: envelope, accept: [.json])
        let info = DeliveryInfo(exchange: "", routingKey: "celery", priority: 7, redelivered: false)
        let configuration = WorkerConfiguration(inheritingParentPriority: true)
        let context = TaskContext(
            request: TaskRequest(message: message, deliveryInfo: info, hostname: "celery@test"),
            workerLogger: Logger(label: "test"), client: client, stateReporter: IgnoredStates(),
            fallbackPriority: configuration.fallbackPriority(parent: info.priority))
        try await context.send("tasks.child", options: TaskSendOptions(queue: "kids"))
        try await context.send("tasks.child", options: TaskSendOptions(queue: "kids", priority: 2))
        // kombu's default steps [0, 3, 6, 9]: 7 goes to the list of step 6, 2 to that of step 0 (the queue itself).
        func priorities(_ list: String) async throws -> [Int] {
            let raw = try await redis.send(RedisCommand("LRANGE", RedisArgument(list), "0", "-1")).array ?? []
            return try raw.compactMap(\.bytes).map { try KombuEnvelope(decoding: $0).properties["priority"]?.intValue ?? -1 }
        }
        #expect(try await priorities("kids\u{06}\u{16}6") == [7])
        #expect(try await priorities("kids") == [2])
        await client.shutdown()
    }
}

extension WorkerConfiguration {
    fileprivate init(inheritingParentPriority: Bool) {
        self.init()
        inheritParentPriority = inheritingParentPriority
    }
}
