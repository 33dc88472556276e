import Foundation

/// How the worker retries a result write while the result backend cannot be reached.
///
/// Celery's `result_backend_always_retry` (off by default) retries a failed write with an exponential back-off
/// (`result_backend_base_sleep_between_retries_ms` × 2ⁿ, at most `result_backend_max_sleep_between_retries_ms`,
/// with full jitter) up to `result_backend_max_retries` times (forever by default). Off, Celery's Redis backend gives
/// up after about 20 one-second attempts and the result is lost; the worker's own policy then retries 30 times, 1
/// to 32 seconds apart (about a quarter of an hour), before it logs the result as lost.
public struct ResultBackendRetry: Sendable, Equatable {
    /// `result_backend_always_retry`. Default off (the worker's own policy).
    public var alwaysRetry: Bool
    /// `result_backend_max_retries`: `nil` retries forever (Celery's `float("inf")`, its default).
    public var maxRetries: Int?
    /// `result_backend_base_sleep_between_retries_ms`, in seconds. Default 0.01.
    public var baseSleep: Double
    /// `result_backend_max_sleep_between_retries_ms`, in seconds. Default 10.
    public var maxSleep: Double

    public init(alwaysRetry: Bool = false, maxRetries: Int? = nil, baseSleep: Double = 0.01, maxSleep: Double = 10) {
        self.alwaysRetry = alwaysRetry
        self.maxRetries = maxRetries
        self.baseSleep = baseSleep
        self.maxSleep = maxSleep
    }

    /// Retries after the first failed attempt: Celery's with ``alwaysRetry``, else the worker's 30; `nil` is no limit.
    var retries: Int? { alwaysRetry ? maxRetries : 30 }

    /// Seconds before retry `attempt` (from 1): Celery's `get_exponential_backoff_interval` with full jitter (a whole
    /// number of milliseconds from 0 to the capped exponential) given `random` in 0..<1; else the worker's own
    /// 1, 2, 4 … 32 seconds.
    func delay(attempt: Int, random: Double = Double.random(in: 0..<1)) -> Double {
        guard alwaysRetry else { return RetryDelays().delay(attempt: attempt) }
        let exponent = Double(min(max(attempt, 0), 60))
        let ceiling = (min(maxSleep, baseSleep * pow(2, exponent)) * 1000).rounded(.down)
        return (random * (ceiling + 1)).rounded(.down) / 1000
    }
}
