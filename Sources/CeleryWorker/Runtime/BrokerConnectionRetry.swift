import CeleryProtocol

/// Celery's broker connection retries: whether the consumer tries again when it cannot reach the broker
/// (`broker_connection_retry`, `broker_connection_retry_on_startup`), how long it waits between attempts (kombu's
/// `ensure_connection`: 2, 4, 6 … 30 seconds) and when it gives up (`broker_connection_max_retries`). Giving up
/// stops the worker, as Celery's does: a warm shutdown, then exit 1. Every default is Celery's.
public struct BrokerConnectionRetry: Sendable, Equatable {
    /// `broker_connection_retry`: try again after the connection was lost. Default `true`.
    public var retry: Bool
    /// `broker_connection_retry_on_startup`: try again when the first connection fails. Default `nil`: as
    /// ``retry``, with Celery's deprecation warning when that is off.
    public var retryOnStartup: Bool?
    /// `broker_connection_max_retries`: failed attempts in a row before the worker gives up, counted afresh after
    /// each success; `nil` tries forever (`None` in Celery). Default 100.
    public var maxRetries: Int?

    public init(retry: Bool = true, retryOnStartup: Bool? = nil, maxRetries: Int? = 100) {
        self.retry = retry
        self.retryOnStartup = retryOnStartup
        self.maxRetries = maxRetries
    }

    /// What to do after a failed connection attempt.
    enum Step: Equatable {
        /// Wait `seconds`, then try again; `note` is Celery's "Trying again in 2.00 seconds... (1/100)".
        case wait(seconds: Double, note: String)
        /// Stop the worker; `reason` is Celery's critical log line.
        case giveUp(reason: String)
    }

    /// Whether the consumer retries at all, on start or after losing the connection.
    func retries(startup: Bool) -> Bool { startup ? retryOnStartup ?? retry : retry }

    /// Celery 5.x warns when `broker_connection_retry` alone turns retries on start off (Celery 6 will read only
    /// `broker_connection_retry_on_startup` there); the warning's text, else `nil`.
    var startupDeprecationWarning: String? {
        guard retryOnStartup == nil, !retry else { return nil }
        return "CPendingDeprecationWarning: The broker_connection_retry configuration setting will no longer determine\n"
            + "whether broker connection retries are made during startup in Celery 6.0 and above.\n"
            + "If you wish to refrain from retrying connections on startup,\n"
            + "you should set broker_connection_retry_on_startup to False instead."
    }

    /// Celery's line when retrying is off, naming the setting that turned it off.
    func disabledReason(startup: Bool) -> String {
        let setting = startup && retryOnStartup != nil ? "broker_connection_retry_on_startup" : "broker_connection_retry"
        return "Retrying to \(startup ? "establish" : "re-establish") a connection to the message broker after a connection loss has been "
            + "disabled (app.conf.\(setting)=False). Shutting down..."
    }

    /// kombu's `ensure_connection` wait after the `attempt`-th failed attempt in a row (from 1): 2 seconds more after
    /// each, at most 30.
    public static func delay(afterFailedAttempt attempt: Int) -> Double {
        Double(min(2 * attempt, 30))
    }

    /// What follows the `attempt`-th failed attempt in a row (from 1) to connect, which failed with `error`.
    func step(afterFailedAttempt attempt: Int, startup: Bool, error: String) -> Step {
        guard retries(startup: startup) else { return .giveUp(reason: disabledReason(startup: startup)) }
        if let maxRetries, attempt > maxRetries {
            // kombu re-raises the connection error, and Celery's worker logs it and stops.
            return .giveUp(reason: "Unrecoverable error: OperationalError(\(PythonRepr.repr(.string(error))))")
        }
        let seconds = Self.delay(afterFailedAttempt: attempt)
        let limit = maxRetries.map(String.init) ?? "None"
        return .wait(seconds: seconds, note: "Trying again in \(CeleryWorkerService.format(seconds: seconds)) seconds... (\(attempt)/\(limit))")
    }
}

/// Thrown by ``CeleryWorkerService/run()`` after the worker gave up reaching its broker
/// (``BrokerConnectionRetry``) and shut down warm; the reason was logged. Celery's worker then exits with 1.
public struct BrokerConnectionGivenUp: Error, Sendable, CustomStringConvertible {
    /// Celery's critical log line.
    public let reason: String

    public var description: String { reason }
}

/// billiard's `restart_state` as Celery's consumer keeps it (`maxR=5, maxT=1`): a consumer that lost its broker
/// connection a sixth time within a second of the first of those losses waits a second before it reconnects, with
/// Celery's critical line. Each reconnection succeeds at once when Redis accepts the connection the consumer
/// declares its queues on but refuses the one it fetches on (at `maxclients`, say); without the wait the consumer
/// would lose and regain its connection hundreds of times a second.
struct RestartFrequency {
    private let most = 5
    private let within: Duration = .seconds(1)
    private var restarts = 0
    private var since: ContinuousClock.Instant?

    /// Counts a restart at `now`: Celery's critical line when there were too many (the consumer then waits a
    /// second), else `nil`.
    mutating func step(at now: ContinuousClock.Instant = .now) -> String? {
        if let since, now - since >= within {
            (self.since, restarts) = (now, 0)
        } else if restarts >= most {
            defer { restarts = 0 }
            return "Frequent restarts detected: RestartFreqExceeded('\(restarts) in 1s')"
        }
        since = since ?? now
        restarts += 1
        return nil
    }
}
