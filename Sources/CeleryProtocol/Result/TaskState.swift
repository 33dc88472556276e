/// A task state as Celery stores it in `status` (case-sensitive). Any string is a valid custom state.
public struct TaskState: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
    public var rawValue: String
    public init(rawValue: String) { self.rawValue = rawValue }
    public init(_ rawValue: String) { self.rawValue = rawValue }

    public static let pending = TaskState("PENDING")
    public static let received = TaskState("RECEIVED")
    public static let started = TaskState("STARTED")
    public static let success = TaskState("SUCCESS")
    public static let failure = TaskState("FAILURE")
    public static let retry = TaskState("RETRY")
    public static let revoked = TaskState("REVOKED")
    public static let rejected = TaskState("REJECTED")

    /// `SUCCESS`, `FAILURE` and `REVOKED`: the states after which a result no longer changes.
    public var isReady: Bool { self == .success || self == .failure || self == .revoked }

    public var description: String { rawValue }
}
