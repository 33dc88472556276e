import Metrics
import Synchronization

/// The worker's metrics, sent through swift-metrics to whatever backend the program bootstrapped (the executable's
/// `--metrics-port` serves them in Prometheus' text format):
///
/// - `celery_tasks_total{task, state}`: counter; `state` is the event that happened (`received`, `started`,
///   `succeeded`, `failed`, `retried`, `rejected`, `revoked`).
/// - `celery_task_runtime_seconds{task}`: timer; how long the task body ran.
/// - `celery_task_wait_seconds{task}`: timer; from the moment the message was taken from Redis (or its ETA, when
///   later) to the start of the task. Celery messages carry no publish time, so the time a message waited in the
///   Redis list itself cannot be measured by any worker.
/// - `celery_worker_active_tasks`: meter; tasks running now.
final class TaskMetrics: Sendable {
    static let states = ["received", "started", "succeeded", "failed", "retried", "rejected", "revoked"]

    private struct Handles: Sendable {
        /// By event type (`task-succeeded`).
        let counters: [String: Counter]
        let runtime: Timer
        let wait: Timer
    }

    private let factory: any MetricsFactory
    private let handles = Mutex<[String: Handles]>([:])
    /// `false` when nothing was bootstrapped (swift-metrics' no-op factory): then no handle is looked up at all,
    /// which saves a lock and two hashed look-ups per recording on the task path.
    private let enabled: Bool
    let active: Meter

    init(factory: any MetricsFactory) {
        self.factory = factory
        self.enabled = !(factory is NOOPMetricsHandler)
        self.active = Meter(label: "celery_worker_active_tasks", factory: factory)
    }

    private func handles(for task: String) -> Handles {
        handles.withLock { all in
            if let existing = all[task] { return existing }
            let dimensions = [("task", task)]
            var counters: [String: Counter] = [:]
            for state in Self.states {
                counters["task-" + state] = Counter(
                    label: "celery_tasks_total", dimensions: dimensions + [("state", state)], factory: factory)
            }
            let made = Handles(
                counters: counters,
                runtime: Timer(label: "celery_task_runtime_seconds", dimensions: dimensions, factory: factory),
                wait: Timer(label: "celery_task_wait_seconds", dimensions: dimensions, factory: factory))
            all[task] = made
            return made
        }
    }

    /// Counts a task event (`task-succeeded` counts as `succeeded`).
    func count(event: String, task: String) {
        guard enabled else { return }
        handles(for: task).counters[event]?.increment()
    }

    func recordRuntime(_ seconds: Double, task: String) {
        guard enabled else { return }
        handles(for: task).runtime.recordNanoseconds(Int64(seconds * 1e9))
    }

    func recordWait(_ seconds: Double, task: String) {
        guard enabled else { return }
        handles(for: task).wait.recordNanoseconds(Int64(max(0, seconds) * 1e9))
    }
}
