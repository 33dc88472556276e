import Testing

@testable import CeleryWorker

@Suite("Held deliveries")
struct HeldDeliveriesTests {
    static func delivery(_ tag: String?) -> BrokerDelivery {
        BrokerDelivery(raw: Array((tag ?? "none").utf8), queue: "celery", receivedAt: 0, deliveryTag: tag)
    }

    @Test("a delivery is a value: setting a field of one copy, to a value or to nil, leaves the other copies as they were")
    func deliveryIsAValue() {
        let original = BrokerDelivery(
            raw: Array("x".utf8), queue: "celery", receivedAt: 1, deliveryTag: "a",
            pendingRecord: PendingRecord(sentOn: nil), decoded: nil)
        var copy = original
        copy.raw = Array("y".utf8)
        copy.queue = "other"
        copy.receivedAt = 2
        copy.deliveryTag = nil
        copy.pendingRecord = nil
        copy.heldKey = 7
        #expect(copy.raw == Array("y".utf8) && copy.queue == "other" && copy.receivedAt == 2)
        #expect(copy.deliveryTag == nil && copy.pendingRecord == nil && copy.heldKey == 7)
        #expect(original.raw == Array("x".utf8) && original.queue == "celery" && original.receivedAt == 1)
        #expect(original.deliveryTag == "a" && original.pendingRecord != nil && original.heldKey == 0)
        copy.deliveryTag = "b"
        #expect(copy.deliveryTag == "b" && copy.raw == Array("y".utf8) && original.deliveryTag == "a")
    }

    @Test("deliveries are held by their own key: untagged ones not at all, two of one tag apart, unstarted in order")
    func heldByKey() {
        var held = HeldDeliveries()
        var first = [Self.delivery("a"), Self.delivery(nil), Self.delivery("b")]
        var second = [Self.delivery("a"), Self.delivery("c")]
        held.add(&first)
        held.add(&second)
        #expect(first[1].heldKey == 0)
        #expect(Set([first[0], first[2], second[0], second[1]].map(\.heldKey)).count == 4)
        #expect(held.all.count == 4)
        #expect(held.unstarted.map(\.deliveryTag) == ["a", "b", "a", "c"])

        held.markStarted(first[2])
        held.markStarted(first[1])  // not held: nothing happens
        #expect(held.unstarted.map(\.deliveryTag) == ["a", "a", "c"])
        held.remove(first[0])
        #expect(held.unstarted.map(\.raw) == [Array("a".utf8), Array("c".utf8)])
        #expect(held.unstarted.map(\.heldKey) == [second[0].heldKey, second[1].heldKey])
        held.remove(second[0])
        held.remove(first[2])
        held.remove(second[1])
        #expect(held.all.isEmpty)
    }
}
