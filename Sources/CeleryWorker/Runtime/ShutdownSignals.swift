import CeleryProtocol

/// Celery's shutdown signals (`celery/apps/worker.py`, Celery 5.5 and later), as a pure state machine: each signal
/// comes in, what the worker does comes back, with the lines Celery prints for it.
///
/// - `SIGTERM` is a warm shutdown (exit 0). Another `SIGTERM` only says so again: it never turns cold, as in Celery.
/// - The first `SIGINT` is a warm shutdown too (exit 1), with Celery's hint; the next `SIGINT` is a cold shutdown.
/// - `SIGQUIT` is a cold shutdown (exit 1), and so is `SIGTERM` when the environment has `REMAP_SIGTERM=SIGQUIT`.
/// - With `worker_soft_shutdown_timeout` above 0, a cold shutdown while tasks run (or always, with
///   `worker_enable_soft_shutdown_on_idle`) first waits up to that many seconds as a warm shutdown would (no new task
///   starts, running ones may finish and store their results), then cancels what still runs. Celery sleeps the
///   whole time in its signal handler; here the wait ends as soon as the warm part is over. A cold signal during the
///   wait cancels at once (Celery cancels the tasks then but still sleeps out the rest).
/// - `SIGHUP` restarts a worker whose standard output is not a terminal (a daemon): a warm shutdown, then the same
///   program again in the same process, as Celery's `install_worker_restart_handler`. With a terminal, Celery leaves
///   `SIGHUP` alone and dies of it when the terminal closes; here it is a warm shutdown, so the messages the worker
///   holds go back to their queue at once instead of after the visibility timeout. A daemon's `SIGHUP` during a
///   shutdown lets that shutdown go on as it is (warm, soft or cold) and starts the worker again once it is over, as
///   Celery's restart runs at exit whatever stopped the worker; with a terminal it changes nothing.
public struct ShutdownSignals: Sendable {
    /// The signals Celery's worker handles for shutdown.
    public enum Signal: Sendable {
        case terminate, interrupt, quit, hangUp
    }

    /// What the worker does for a signal.
    public enum Reaction: Sendable, Equatable {
        /// Nothing more than the lines to print.
        case none
        /// Begin (or go on with) a warm shutdown.
        case warm
        /// Begin a soft shutdown: a warm shutdown for at most this many seconds, then cold.
        case soft(seconds: Double)
        /// Cold shutdown now.
        case cold
        /// Print ``restartLine(arguments:)``, shut down warm, then start the worker again in this process.
        case restart
        /// Print ``restartLine(arguments:)``; the shutdown under way goes on, then the worker starts again.
        case restartAfterShutdown
    }

    /// Where the shutdown stands.
    public enum Phase: Sendable, Equatable {
        case running, warm, soft, cold
    }

    /// `worker_soft_shutdown_timeout`: seconds; 0 (Celery's default) turns the soft shutdown off.
    public let softTimeout: Double
    /// `worker_enable_soft_shutdown_on_idle`: wait the soft shutdown even when no task runs.
    public let softOnIdle: Bool
    /// `REMAP_SIGTERM=SIGQUIT`: `SIGTERM` is a cold shutdown.
    public let termIsCold: Bool
    /// Whether `SIGHUP` restarts the worker (Celery's rule: its standard output is not a terminal).
    public let restartsOnHangUp: Bool
    public private(set) var phase = Phase.running
    /// Whether the worker starts again once its shutdown is over (after `SIGHUP`).
    public private(set) var restarts = false
    /// The exit status the signals so far ask for: 0 after `SIGTERM` alone, 1 once `SIGINT` or a cold shutdown came.
    public private(set) var exitCode: Int32 = 0
    private var interrupted = false
    /// What Celery's handler for the last signal sends with `worker_shutting_down`: the signal's name, `Warm` or
    /// `Cold`, and the exit code it names. `nil` after `SIGHUP`, which Celery's restart handler does not announce.
    public private(set) var announced: WorkerSignals.WorkerShuttingDown.Handler?

    public init(softTimeout: Double = 0, softOnIdle: Bool = false, termIsCold: Bool = false, restartsOnHangUp: Bool = false) {
        self.softTimeout = softTimeout
        self.softOnIdle = softOnIdle
        self.termIsCold = termIsCold
        self.restartsOnHangUp = restartsOnHangUp
    }

    /// Reads Celery's `REMAP_SIGTERM` from the environment: `SIGQUIT` remaps, nothing (or empty) does not; another
    /// value is not supported and comes back as a warning.
    public static func remapsTerm(_ value: String?) -> (remaps: Bool, warning: String?) {
        guard let value, !value.isEmpty else { return (false, nil) }
        if value == "SIGQUIT" { return (true, nil) }
        return (false, "REMAP_SIGTERM=\(value) is ignored: only SIGQUIT is supported (SIGTERM stays a warm shutdown).")
    }

    /// Handles one signal. `busy` says whether tasks are running now (for the soft shutdown). Returns the reaction
    /// and the lines Celery prints for the signal, in order.
    public mutating func receive(_ signal: Signal, busy: Bool) -> (Reaction, [String]) {
        announced = Self.handler(for: signal, interrupted: interrupted, termIsCold: termIsCold)
        if signal == .hangUp {
            guard restartsOnHangUp else {
                guard phase == .running else { return (.none, []) }
                phase = .warm
                return (.warm, [Self.warmLine])
            }
            restarts = true
            guard phase == .running else { return (.restartAfterShutdown, []) }
            phase = .warm
            return (.restart, [])
        }
        let cold = signal == .quit || (signal == .terminate && termIsCold) || (signal == .interrupt && interrupted)
        if !cold {
            if signal == .interrupt {
                interrupted = true
                exitCode = 1
                let hint = "worker: Hitting Ctrl+C again will initiate cold shutdown, terminating all running tasks!"
                guard phase == .running else { return (.none, [hint, Self.warmLine]) }
                phase = .warm
                return (.warm, [hint, Self.warmLine])
            }
            guard phase == .running else { return (.none, [Self.warmLine]) }
            phase = .warm
            return (.warm, [Self.warmLine])
        }
        exitCode = 1
        switch phase {
        case .running, .warm:
            let hint = "worker: Hitting Ctrl+C again will terminate all running tasks!"
            if softTimeout > 0, busy || softOnIdle {
                phase = .soft
                return (.soft(seconds: softTimeout), [hint])
            }
            phase = .cold
            return (.cold, [hint, Self.coldLine])
        case .soft:
            phase = .cold
            return (.cold, ["Waiting gracefully for cold shutdown to complete...", Self.coldLine])
        case .cold:
            return (.none, [])
        }
    }

    /// Celery's handler for `signal` (`install_worker_term_handler`, `…_term_hard_handler`, `…_int_handler`): the
    /// first `SIGINT` is warm with exit code 1, the next cold; `SIGTERM` warm with 0, or cold with 1 when remapped;
    /// `SIGQUIT` cold with 1.
    static func handler(for signal: Signal, interrupted: Bool, termIsCold: Bool) -> WorkerSignals.WorkerShuttingDown.Handler? {
        switch signal {
        case .terminate: termIsCold ? .init(signal: "SIGTERM", how: "Cold", exitCode: 1) : .init(signal: "SIGTERM", how: "Warm", exitCode: 0)
        case .interrupt: .init(signal: "SIGINT", how: interrupted ? "Cold" : "Warm", exitCode: 1)
        case .quit: .init(signal: "SIGQUIT", how: "Cold", exitCode: 1)
        case .hangUp: nil
        }
    }

    /// The soft shutdown's time is up: cold shutdown, unless it already began.
    public mutating func softTimeoutElapsed() -> (Reaction, [String]) {
        guard phase == .soft else { return (.none, []) }
        phase = .cold
        return (.cold, [Self.coldLine])
    }

    /// Celery's warning as the soft shutdown begins, with the setting as Python prints it (a whole number as an
    /// int, as a configuration most often gives it).
    public static func softShutdownLine(seconds: Double) -> String {
        "Initiating Soft Shutdown, terminating in \(PythonRepr.repr(.seconds(seconds))) seconds"
    }

    /// What Celery prints on its standard output as a `SIGHUP` restart begins: the command line, as `sys.argv`.
    public static func restartLine(arguments: [String]) -> String {
        "\nRestarting celery worker (\(arguments.joined(separator: " ")))\n"
    }

    static let warmLine = "worker: Warm shutdown (MainProcess)"
    static let coldLine = "worker: Cold shutdown (MainProcess)"
}

extension CeleryValue {
    /// Seconds as Python most often holds them: a whole number as an int (as a configuration gives it), else a float.
    static func seconds(_ value: Double) -> CeleryValue {
        value == value.rounded() && abs(value) < 1e15 ? .int(Int64(value)) : .double(value)
    }
}
