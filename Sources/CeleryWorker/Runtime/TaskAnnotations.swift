import CeleryProtocol

/// Celery's `task_annotations`: task attributes set from the configuration, by task name or for every task (`*`).
///
/// A mapping, or a list of mappings tried in order, as Celery's `MapAnnotation`s: a task takes the first mapping that
/// names it, then the first that has `*`, whose attributes are applied after (and so win over) the named ones, as in
/// Celery. The attributes are those ``TaskOptions`` has: `rate_limit`, `time_limit`, `soft_time_limit`, `acks_late`,
/// `track_started`, `ignore_result`, `max_retries`, `default_retry_delay`, `reject_on_worker_lost`,
/// `store_errors_even_if_ignored`.
public struct TaskAnnotations: Sendable, Equatable {
    /// One mapping's attributes for one task name (or `*`).
    public struct Attributes: Sendable, Equatable {
        /// Each attribute as given; `.some(nil)` where the configuration sets it to null (Python's `None`).
        var rateLimit: String??
        var timeLimit: Double??
        var softTimeLimit: Double??
        var maxRetries: Int??
        var defaultRetryDelay: Double?
        var acksLate: Bool?
        var trackStarted: Bool?
        var ignoreResult: Bool?
        var rejectOnWorkerLost: Bool?
        var storeErrorsEvenIfIgnored: Bool?

        /// The attribute names the worker applies.
        static let names: Set<String> = [
            "rate_limit", "time_limit", "soft_time_limit", "max_retries", "default_retry_delay", "acks_late",
            "track_started", "ignore_result", "reject_on_worker_lost", "store_errors_even_if_ignored",
        ]

        func apply(to options: inout TaskOptions) {
            if let rateLimit { options.rateLimit = rateLimit }
            if let timeLimit { options.timeLimit = timeLimit }
            if let softTimeLimit { options.softTimeLimit = softTimeLimit }
            if let maxRetries { options.maxRetries = maxRetries }
            if let defaultRetryDelay { options.defaultRetryDelay = defaultRetryDelay }
            if let acksLate { options.acksLate = acksLate }
            if let trackStarted { options.trackStarted = trackStarted }
            if let ignoreResult { options.ignoreResult = ignoreResult }
            if let rejectOnWorkerLost { options.rejectOnWorkerLost = rejectOnWorkerLost }
            if let storeErrorsEvenIfIgnored { options.storeErrorsEvenIfIgnored = storeErrorsEvenIfIgnored }
        }
    }

    /// The mappings in order, each from task name (or `*`) to its attributes.
    var tables: [[String: Attributes]]

    public init() { tables = [] }

    init(tables: [[String: Attributes]]) { self.tables = tables }

    /// Whether no mapping names anything.
    public var isEmpty: Bool { tables.allSatisfy(\.isEmpty) }

    /// `options` with the annotations for `name` applied: the first mapping that names it, then the first with `*`.
    func options(for name: String, from options: TaskOptions) -> TaskOptions {
        var annotated = options
        tables.lazy.compactMap { $0[name] }.first?.apply(to: &annotated)
        tables.lazy.compactMap { $0["*"] }.first?.apply(to: &annotated)
        return annotated
    }
}

extension TaskRegistry {
    /// The registry with Celery's `task_default_rate_limit` given to every task that sets no `rate_limit` of its own.
    public func withDefaultRateLimit(_ rate: String?) -> TaskRegistry {
        guard let rate else { return self }
        var defaulted = self
        defaulted.mapOptions { task in
            var options = task.options
            if options.rateLimit == nil { options.rateLimit = rate }
            return options
        }
        return defaulted
    }

    /// The registry with Celery's `task_ignore_result` on: every task ignores its result (Celery's task attribute
    /// default; a message's own `ignore_result` header still wins, and annotations come after it).
    public func ignoringResults(_ ignore: Bool) -> TaskRegistry {
        guard ignore else { return self }
        var defaulted = self
        defaulted.mapOptions { task in
            var options = task.options
            options.ignoreResult = true
            return options
        }
        return defaulted
    }

    /// The registry with Celery's `task_annotations` applied to every task's options (the built-in tasks keep theirs,
    /// as Celery's own tasks are annotated by name only when named).
    public func annotated(by annotations: TaskAnnotations) -> TaskRegistry {
        guard !annotations.isEmpty else { return self }
        var annotated = self
        annotated.mapOptions { task in annotations.options(for: task.name, from: task.options) }
        return annotated
    }
}
