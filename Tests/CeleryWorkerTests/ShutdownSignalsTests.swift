import Testing

@testable import CeleryWorker

@Suite("Shutdown signals: Celery's handlers")
struct ShutdownSignalsTests {
    @Test("SIGTERM is warm and stays warm when repeated, exit 0")
    func terminateTwice() {
        var signals = ShutdownSignals()
        #expect(signals.receive(.terminate, busy: true) == (.warm, ["worker: Warm shutdown (MainProcess)"]))
        #expect(signals.receive(.terminate, busy: true) == (.none, ["worker: Warm shutdown (MainProcess)"]))
        #expect(signals.phase == .warm)
        #expect(signals.exitCode == 0)
    }

    @Test("the first SIGINT is warm with Celery's hint, the second cold, exit 1")
    func interruptTwice() {
        var signals = ShutdownSignals()
        let (first, firstLines) = signals.receive(.interrupt, busy: true)
        #expect(first == .warm)
        #expect(
            firstLines == [
                "worker: Hitting Ctrl+C again will initiate cold shutdown, terminating all running tasks!",
                "worker: Warm shutdown (MainProcess)",
            ])
        #expect(signals.exitCode == 1)
        let (second, secondLines) = signals.receive(.interrupt, busy: true)
        #expect(second == .cold)
        #expect(secondLines == ["worker: Hitting Ctrl+C again will terminate all running tasks!", "worker: Cold shutdown (MainProcess)"])
        #expect(signals.receive(.interrupt, busy: true).0 == .none)
    }

    @Test("SIGINT after SIGTERM is the first SIGINT; SIGQUIT is cold at any time")
    func mixed() {
        var signals = ShutdownSignals()
        #expect(signals.receive(.terminate, busy: false).0 == .warm)
        #expect(signals.receive(.interrupt, busy: false).0 == .none)
        #expect(signals.exitCode == 1)
        #expect(signals.receive(.quit, busy: false).0 == .cold)
        var quit = ShutdownSignals()
        #expect(quit.receive(.quit, busy: true).0 == .cold)
        #expect(quit.exitCode == 1)
    }

    @Test(
        "SIGHUP restarts a daemon after a warm shutdown, or after the shutdown under way; with a terminal it is a warm shutdown, and nothing once stopping"
    )
    func hangUp() {
        var daemon = ShutdownSignals(restartsOnHangUp: true)
        #expect(daemon.receive(.hangUp, busy: true) == (.restart, []))
        #expect(daemon.restarts && daemon.phase == .warm && daemon.exitCode == 0)
        #expect(daemon.receive(.hangUp, busy: true) == (.restartAfterShutdown, []))
        #expect(daemon.receive(.quit, busy: false).0 == .cold)
        #expect(daemon.restarts)
        var terminal = ShutdownSignals()
        #expect(terminal.receive(.hangUp, busy: true) == (.warm, ["worker: Warm shutdown (MainProcess)"]))
        #expect(!terminal.restarts && terminal.exitCode == 0)
        #expect(terminal.receive(.hangUp, busy: true) == (.none, []))
        #expect(!terminal.restarts)
        // Celery's restart runs at exit, whatever stopped the worker: a warm, soft or cold shutdown goes on as it is.
        var stopping = ShutdownSignals(restartsOnHangUp: true)
        #expect(stopping.receive(.terminate, busy: true).0 == .warm)
        #expect(stopping.receive(.hangUp, busy: true) == (.restartAfterShutdown, []))
        #expect(stopping.restarts && stopping.phase == .warm && stopping.exitCode == 0)
        var soft = ShutdownSignals(softTimeout: 5, restartsOnHangUp: true)
        #expect(soft.receive(.quit, busy: true).0 == .soft(seconds: 5))
        #expect(soft.receive(.hangUp, busy: true) == (.restartAfterShutdown, []))
        #expect(soft.restarts && soft.phase == .soft)
        var cold = ShutdownSignals(restartsOnHangUp: true)
        #expect(cold.receive(.quit, busy: true).0 == .cold)
        #expect(cold.receive(.hangUp, busy: true) == (.restartAfterShutdown, []))
        #expect(cold.restarts && cold.phase == .cold)
        #expect(
            ShutdownSignals.restartLine(arguments: ["swift-celery-worker", "-n", "a@%h"])
                == "\nRestarting celery worker (swift-celery-worker -n a@%h)\n")
    }

    @Test("REMAP_SIGTERM=SIGQUIT makes SIGTERM cold; other values are refused with a warning")
    func remap() {
        var signals = ShutdownSignals(termIsCold: true)
        #expect(signals.receive(.terminate, busy: true).0 == .cold)
        #expect(signals.exitCode == 1)
        #expect(ShutdownSignals.remapsTerm("SIGQUIT") == (true, nil))
        #expect(ShutdownSignals.remapsTerm(nil) == (false, nil))
        #expect(ShutdownSignals.remapsTerm("") == (false, nil))
        let other = ShutdownSignals.remapsTerm("SIGKILL")
        #expect(!other.remaps && other.warning?.contains("REMAP_SIGTERM=SIGKILL is ignored") == true)
    }

    @Test("a soft shutdown waits only while tasks run, unless told to wait when idle; its time up, or another cold signal, is cold")
    func soft() {
        var idle = ShutdownSignals(softTimeout: 3)
        #expect(idle.receive(.quit, busy: false).0 == .cold)
        var busy = ShutdownSignals(softTimeout: 3)
        #expect(busy.receive(.quit, busy: true) == (.soft(seconds: 3), ["worker: Hitting Ctrl+C again will terminate all running tasks!"]))
        #expect(busy.receive(.terminate, busy: true) == (.none, ["worker: Warm shutdown (MainProcess)"]))
        #expect(busy.softTimeoutElapsed() == (.cold, ["worker: Cold shutdown (MainProcess)"]))
        #expect(busy.softTimeoutElapsed().0 == .none)
        var onIdle = ShutdownSignals(softTimeout: 1.5, softOnIdle: true)
        #expect(onIdle.receive(.interrupt, busy: false).0 == .warm)
        #expect(onIdle.receive(.interrupt, busy: false).0 == .soft(seconds: 1.5))
        #expect(
            onIdle.receive(.quit, busy: false) == (
                .cold, ["Waiting gracefully for cold shutdown to complete...", "worker: Cold shutdown (MainProcess)"]
            ))
        #expect(onIdle.softTimeoutElapsed().0 == .none)
    }

    @Test("the soft shutdown's warning prints the setting as Python does")
    func softLine() {
        #expect(ShutdownSignals.softShutdownLine(seconds: 10) == "Initiating Soft Shutdown, terminating in 10 seconds")
        #expect(ShutdownSignals.softShutdownLine(seconds: 2.5) == "Initiating Soft Shutdown, terminating in 2.5 seconds")
    }
}

@Suite("Shutdown signals: what worker_shutting_down carries")
struct WorkerShuttingDownTests {
    typealias Handler = WorkerSignals.WorkerShuttingDown.Handler

    @Test("each signal names Celery's handler: SIGTERM warm 0, SIGINT warm 1 then cold 1, SIGQUIT cold 1, SIGHUP nothing")
    func announced() {
        var signals = ShutdownSignals()
        _ = signals.receive(.terminate, busy: true)
        #expect(signals.announced == Handler(signal: "SIGTERM", how: "Warm", exitCode: 0))
        _ = signals.receive(.interrupt, busy: true)
        #expect(signals.announced == Handler(signal: "SIGINT", how: "Warm", exitCode: 1))
        _ = signals.receive(.interrupt, busy: true)
        #expect(signals.announced == Handler(signal: "SIGINT", how: "Cold", exitCode: 1))
        _ = signals.receive(.quit, busy: true)
        #expect(signals.announced == Handler(signal: "SIGQUIT", how: "Cold", exitCode: 1))
        var daemon = ShutdownSignals(restartsOnHangUp: true)
        _ = daemon.receive(.hangUp, busy: true)
        #expect(daemon.announced == nil)
    }

    @Test("with REMAP_SIGTERM=SIGQUIT, SIGTERM is announced cold with exit code 1")
    func remapped() {
        var signals = ShutdownSignals(termIsCold: true)
        _ = signals.receive(.terminate, busy: false)
        #expect(signals.announced == Handler(signal: "SIGTERM", how: "Cold", exitCode: 1))
    }
}
