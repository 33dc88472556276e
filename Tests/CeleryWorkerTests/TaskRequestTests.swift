import CeleryProtocol
import Testing

@testable import CeleryWorker

@Suite("Task requests")
struct TaskRequestTests {
    static func message() throws -> CeleryTaskMessage {
        let envelope = try KombuEnvelope(decoding: try fixture("v2-json-options.message.json"))
        return try CeleryTaskMessage(envelope: envelope, accept: [.json])
    }

    @Test("a request reads the message's fields, and a change stays with the copy that made it")
    func readsAndChanges() throws {
        let message = try Self.message()
        let info = DeliveryInfo(exchange: "", routingKey: "celery", priority: 5, redelivered: false)
        let request = TaskRequest(message: message, deliveryInfo: info, hostname: "celery@a")
        func expectMessageFields(_ request: TaskRequest, id: String = message.id) {
            #expect(request.id == id)
            #expect(request.name == message.name)
            #expect(request.args == message.args)
            #expect(request.kwargs == message.kwargs)
            #expect(request.retries == message.retries)
            #expect(request.rootID == message.rootID)
            #expect(request.parentID == message.parentID)
            #expect(request.groupID == message.groupID)
            #expect(request.groupIndex == message.groupIndex)
            #expect(request.eta == message.eta)
            #expect(request.expires == message.expires)
            #expect(request.contentType == message.contentType)
            #expect(request.embed.callbacks == message.embed.callbacks)
            #expect(request.embed.errbacks == message.embed.errbacks)
            #expect(request.ignoreResult == message.ignoreResult)
        }
        expectMessageFields(request)
        #expect(request.retries == 2)
        #expect(request.headers == message.headers)

        var changed = request
        changed.id = "other"
        changed.rootID = nil
        expectMessageFields(request)
        #expect(changed.id == "other")
        #expect(changed.rootID == nil)
        #expect(changed.retries == 2)

        // New headers leave the fields as they were read.
        var retried = request
        retried.headers["retries"] = 7
        #expect(retried.headers["retries"] == 7)
        #expect(retried.retries == 2)
        #expect(request.headers["retries"] == 2)

        var moved = changed
        moved.hostname = "celery@b"
        moved.deliveryInfo = DeliveryInfo(exchange: "x", routingKey: "q", priority: 0, redelivered: true)
        #expect(moved.id == "other")
        #expect(moved.rootID == nil)
        #expect(moved.hostname == "celery@b")
        #expect(moved.deliveryInfo.routingKey == "q")
        #expect(changed.hostname == "celery@a")
        #expect(changed.deliveryInfo == info)
    }
}
