import Testing

@testable import CeleryWorker

@Suite("Delivery state machine")
struct DeliveryStateMachineTests {
    @Test("early ack: acked when the task starts, nothing after")
    func earlyAck() {
        var machine = DeliveryStateMachine(acksLate: false)
        #expect(machine.start() == .ack)
        #expect(machine.finish() == .none)
        #expect(machine.giveBack() == .none)
    }

    @Test("late ack: acked only after the result")
    func lateAck() {
        var machine = DeliveryStateMachine(acksLate: true)
        #expect(machine.start() == .none)
        #expect(machine.finish() == .ack)
        #expect(machine.finish() == .none)
    }

    @Test("shutdown before start gives the message back at the front")
    func giveBack() {
        var machine = DeliveryStateMachine(acksLate: false)
        #expect(machine.giveBack() == .restore(atFront: true))
        #expect(machine.start() == .none)
    }

    @Test("discarding forgets a message once")
    func discard() {
        var machine = DeliveryStateMachine(acksLate: true)
        #expect(machine.discard() == .ack)
        #expect(machine.discard() == .none)
        var running = DeliveryStateMachine(acksLate: false)
        _ = running.start()
        #expect(running.discard() == .none)
    }

    @Test("cold shutdown gives a running acks-late message back at once; an early-acked one is gone")
    func abandon() {
        var machine = DeliveryStateMachine(acksLate: true)
        _ = machine.start()
        #expect(machine.abandon() == .restore(atFront: true))
        #expect(machine.finish() == .none)
        #expect(machine.abandon() == .none)
        var early = DeliveryStateMachine(acksLate: false)
        #expect(early.start() == .ack)
        #expect(early.abandon() == .none)
    }
}

@Suite("Delivery state machine: Reject")
struct DeliveryRejectTests {
    @Test("Reject(requeue) puts an unacknowledged message at the back of its queue")
    func requeue() {
        var machine = DeliveryStateMachine(acksLate: true)
        _ = machine.start()
        #expect(machine.reject(requeue: true) == .restore(atFront: false))
        #expect(machine.finish() == .none)
    }

    @Test("Reject without requeue forgets it; an early-acked message cannot be requeued")
    func noRequeue() {
        var late = DeliveryStateMachine(acksLate: true)
        _ = late.start()
        #expect(late.reject(requeue: false) == .ack)
        var early = DeliveryStateMachine(acksLate: false)
        _ = early.start()
        #expect(early.reject(requeue: true) == .none)
    }
}
