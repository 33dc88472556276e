import CeleryProtocol

/// Thrown by a task to reject its message, as Python's `celery.exceptions.Reject`.
///
/// `requeue: false` stores FAILURE `Reject` and forgets the message. `requeue: true` puts the message back at the
/// end of its queue (`LPUSH`) with no result; that needs acks-late, since an early-acked message is already gone
/// (Python behaves the same way).
public struct RejectTask: PythonConvertibleError, Sendable {
    public var reason: String?
    public var requeue: Bool

    public init(reason: String? = nil, requeue: Bool = false) {
        self.reason = reason
        self.requeue = requeue
    }

    /// Celery's `Reject(reason, requeue)`, as stored with FAILURE.
    public var pythonException: CeleryExceptionInfo {
        CeleryExceptionInfo(
            type: "Reject", arguments: [reason.map(CeleryValue.string) ?? .null, .bool(requeue)],
            module: "celery.exceptions")
    }
}

/// Thrown by a task to stop without storing anything, as Python's `celery.exceptions.Ignore`: the message is
/// acknowledged and the state stays as it was.
public struct IgnoreTask: Error, Sendable {
    public init() {}
}

/// Thrown by a task to hand its work over to another signature, as Python's `raise self.replace(sig)`
/// (``TaskContext/replace(with:)``). The worker sends the signature with this task's id (on a chain's last step, a
/// chord's body), its chord, group and root, its callbacks and errbacks, and the rest of its chain after it, so that
/// whoever waits for this task gets the replacement's result; a group is first made a chord with Celery's
/// `celery.accumulate` as its body, whose result is the group's list. This task stores nothing and logs
/// `ignored`, as in Python. A signature that is part of a chord, or an empty chain, fails the task with Celery's
/// `ImproperlyConfigured`.
public struct ReplaceTask: Error, Sendable {
    public var signature: Signature

    public init(with signature: Signature) {
        self.signature = signature
    }
}
