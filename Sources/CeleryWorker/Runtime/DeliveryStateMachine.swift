/// Decides when one delivery is acknowledged or given back, as Celery's worker does on Redis.
///
/// Pure: events come in, the action to carry out comes back, and the I/O layer does it. On Redis, rejecting without
/// requeue is the same operation as an ack (the message is forgotten), so both are ``Action/ack``.
struct DeliveryStateMachine: Sendable {
    enum State: Sendable, Equatable {
        /// Received and recorded as unacknowledged; not started.
        case reserved
        /// The task body runs; `acknowledged` tells whether the early ack happened.
        case running(acknowledged: Bool)
        /// Nothing more to do for this delivery.
        case settled
    }

    enum Action: Sendable, Equatable {
        case none
        /// Forget the message (`ZREM`/`HDEL`): ack, or reject without requeue.
        case ack
        /// Give the message back: `atFront` for kombu's restore (`RPUSH`), else `reject(requeue=True)` (`LPUSH`).
        case restore(atFront: Bool)
    }

    let acksLate: Bool
    private(set) var state: State = .reserved

    init(acksLate: Bool) {
        self.acksLate = acksLate
    }

    /// The task body is about to run. Early ack happens now (Celery acks right after `task-started`).
    mutating func start() -> Action {
        guard state == .reserved else { return .none }
        state = .running(acknowledged: !acksLate)
        return acksLate ? .none : .ack
    }

    /// The task finished and its result (success or failure) is stored, or it needed no result.
    mutating func finish() -> Action {
        guard case .running(let acknowledged) = state else { return .none }
        state = .settled
        return acknowledged ? .none : .ack
    }

    /// The message will never run here: invalid, unregistered, expired or revoked. Celery rejects it without
    /// requeue (or acks it after storing REVOKED), which on Redis both forget it.
    mutating func discard() -> Action {
        switch state {
        case .reserved:
            state = .settled
            return .ack
        case .running(let acknowledged):
            state = .settled
            return acknowledged ? .none : .ack
        case .settled:
            return .none
        }
    }

    /// The task rejected its message (`Reject`). Only a message not yet acknowledged can still be requeued; it goes
    /// to the back of its queue (`LPUSH`).
    mutating func reject(requeue: Bool) -> Action {
        guard case .running(let acknowledged) = state else { return .none }
        state = .settled
        if acknowledged { return .none }
        return requeue ? .restore(atFront: false) : .ack
    }

    /// Shutdown came before the task started: give it back where the next worker takes it first.
    mutating func giveBack() -> Action {
        guard state == .reserved else { return .none }
        state = .settled
        return .restore(atFront: true)
    }

    /// The task was interrupted while running (cold shutdown). An early-acked message is gone, as in Celery; an
    /// acks-late one goes back to the front of its queue, as Celery 5.5 and later restore it when the cancelled
    /// task's channel closes.
    mutating func abandon() -> Action {
        guard case .running(let acknowledged) = state else { return .none }
        state = .settled
        return acknowledged ? .none : .restore(atFront: true)
    }
}
