import CeleryProtocol

/// Thrown by a task to be run again later, as Python's `self.retry(...)`: `throw context.retry(countdown: 5)`.
///
/// The same task id is republished with `retries` + 1 and an ETA, RETRY is stored, and the current message is
/// acknowledged. Past `maxRetries` the task fails with `cause`, or with `MaxRetriesExceededError` without one.
public struct RetryTask: Error, Sendable {
    /// Seconds from now; `nil` with no `eta` uses the task's `defaultRetryDelay` (Celery's 180 s).
    public var countdown: Double?
    /// Absolute Unix time of the next attempt.
    public var eta: Double?
    /// Overrides the task's `maxRetries` (`nil`: the task's own).
    public var maxRetries: Int?
    /// The error that made the task retry; stored with RETRY and raised when retries are exhausted.
    public var cause: (any Error)?

    public init(countdown: Double? = nil, eta: Double? = nil, maxRetries: Int? = nil, cause: (any Error)? = nil) {
        self.countdown = countdown
        self.eta = eta
        self.maxRetries = maxRetries
        self.cause = cause
    }
}

extension RetryTask {
    /// The retry a failure asks for: an explicit ``RetryTask``, or an error the task's `autoretry` accepts (with its
    /// back-off countdown); `nil` when the failure is final.
    static func request(for error: any Error, options: TaskOptions, retries: Int) -> RetryTask? {
        if let retry = error as? RetryTask { return retry }
        // Python's autoretry re-raises `Ignore` (which `Task.replace` raises too) whatever `autoretry_for` says.
        if error is IgnoreTask || error is ReplaceTask { return nil }
        let policy = options.retryPolicy
        guard let autoretry = policy.autoretry, autoretry(error) else { return nil }
        var countdown: Double?
        if let factor = policy.backoff {
            var generator = SystemRandomNumberGenerator()
            countdown = Double(
                RetryPolicy.backoffInterval(
                    factor: factor, retries: retries, maximum: policy.backoffMax, jitter: policy.jitter,
                    using: &generator))
        }
        return RetryTask(countdown: countdown, cause: error)
    }
}

/// When a task is retried automatically, and how long it waits (Celery's `autoretry_for`, `retry_backoff`,
/// `retry_backoff_max`, `retry_jitter`).
public struct RetryPolicy: Sendable {
    /// Which errors retry the task automatically; `nil` never does.
    public var autoretry: (@Sendable (any Error) -> Bool)?
    /// Exponential back-off factor in seconds (`retry_backoff`); `nil` waits `defaultRetryDelay` instead.
    public var backoff: Int?
    /// The longest back-off in seconds (`retry_backoff_max`, default 600).
    public var backoffMax: Int
    /// Pick a random wait between 0 and the back-off (`retry_jitter`, default on).
    public var jitter: Bool

    public init(
        autoretry: (@Sendable (any Error) -> Bool)? = nil, backoff: Int? = nil, backoffMax: Int = 600,
        jitter: Bool = true
    ) {
        self.autoretry = autoretry
        self.backoff = backoff
        self.backoffMax = backoffMax
        self.jitter = jitter
    }

    /// Celery's `get_exponential_backoff_interval`: `min(maximum, factor × 2^retries)`, then with jitter a whole
    /// number of seconds picked from `0…countdown`.
    public static func backoffInterval(
        factor: Int, retries: Int, maximum: Int, jitter: Bool,
        using generator: inout some RandomNumberGenerator
    ) -> Int {
        let exponent = min(retries, 62)
        let (scaled, overflow) = factor.multipliedReportingOverflow(by: 1 << exponent)
        var countdown = overflow ? maximum : min(maximum, scaled)
        if jitter, countdown >= 0 { countdown = Int.random(in: 0...countdown, using: &generator) }
        return max(0, countdown)
    }
}
