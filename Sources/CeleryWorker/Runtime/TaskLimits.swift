import CeleryProtocol
import Foundation

/// Celery's rate limits: `"10/s"`, `"100/m"`, `"1000/h"`; a bare number is per second, and `0` or an empty
/// string means no limit (`celery.utils.time.rate`).
public enum RateLimit {
    /// Tasks per second, `nil` for no limit.
    public static func perSecond(_ text: String) throws(CeleryWorkerError) -> Double? {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        if trimmed.isEmpty { return nil }
        let parts = trimmed.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        guard let count = Double(parts[0].trimmingCharacters(in: .whitespaces)), count.isFinite, count >= 0 else {
            throw CeleryWorkerError(
                code: .invalidConfiguration, message: "ValueError(\"could not convert string to float: '\(parts[0])'\")")
        }
        let divisor: Double
        switch parts.count == 2 ? parts[1].trimmingCharacters(in: .whitespaces) : "s" {
        case "s", "": divisor = 1
        case "m": divisor = 60
        case "h": divisor = 3_600
        case let unit: throw CeleryWorkerError(code: .invalidConfiguration, message: "KeyError('\(unit)')")
        }
        return count == 0 ? nil : count / divisor
    }

    /// A rate limit as the remote command sends it: a string, a number, or `None`.
    static func perSecond(_ value: CeleryValue?) throws(CeleryWorkerError) -> Double? {
        switch value {
        case nil, .null?: return nil
        case .string(let text)?: return try perSecond(text)
        case let number?:
            guard let rate = number.doubleValue, rate >= 0 else {
                throw CeleryWorkerError(code: .invalidConfiguration, message: "ValueError('\(PythonRepr.repr(number))')")
            }
            return rate == 0 ? nil : rate
        }
    }
}

/// Rate and time limits that remote control (`rate_limit`, `time_limit`) changes while the worker runs, over the
/// registered tasks' own options, and the schedule that spaces rate-limited tasks.
struct TaskLimits: Sendable {
    /// Per-task rate overrides, tasks per second; a `nil` value turns a task's limit off.
    private var rates: [String: Double?] = [:]
    /// The overrides as remote control gave them (Python's `str()` of the value), for `registered`.
    private var rateTexts: [String: String?] = [:]
    /// Per-task time limit overrides (soft, hard), as `time_limit` sets them.
    private var timeLimits: [String: (soft: Double?, hard: Double?)] = [:]
    /// The earliest time the next task of each rate-limited type may start.
    private var nextStart: [String: Double] = [:]
    /// Celery's `worker_disable_rate_limits`: no task waits for its rate (the limits are still shown and set).
    var disabled = false

    mutating func setRate(_ rate: Double?, text: String?, for task: String) {
        rates[task] = .some(rate)
        rateTexts[task] = .some(text)
        nextStart = [:]  // Celery's reset_rate_limits: new buckets
    }

    mutating func setTimeLimits(soft: Double?, hard: Double?, for task: String) {
        timeLimits[task] = (soft, hard)
    }

    // Asked for every task: no name is hashed while remote control has set nothing (the usual case).
    func rate(for task: RegisteredTask) -> Double? {
        if disabled { return nil }
        if !rates.isEmpty, let override = rates[task.name] { return override }
        return task.options.rateLimit.flatMap { try? RateLimit.perSecond($0) }
    }

    /// A task's `rate_limit` attribute as Python would show it: remote control's value, else the task's option.
    func rateText(for task: RegisteredTask) -> String? {
        if let override = rateTexts[task.name] { return override }
        return task.options.rateLimit
    }

    /// The (soft, hard) limits set by remote control, if any.
    func timeLimits(for task: String) -> (soft: Double?, hard: Double?)? {
        timeLimits.isEmpty ? nil : timeLimits[task]
    }

    /// Celery's token bucket with capacity 1: the first task runs at once, the next ones `1 / rate` apart. Returns
    /// when this one may start (`nil` when the task is not rate limited) and books that slot.
    mutating func reserveStart(for task: RegisteredTask, now: Double) -> Double? {
        guard let rate = rate(for: task), rate > 0 else { return nil }
        let start = max(now, nextStart[task.name] ?? now)
        nextStart[task.name] = start + 1 / rate
        return start
    }
}
