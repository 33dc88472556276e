"""Celery's shutdown signals, the cold shutdown of Celery 5.5 and later, and its soft shutdown
(`worker_soft_shutdown_timeout`, `worker_enable_soft_shutdown_on_idle`, `REMAP_SIGTERM=SIGQUIT`), each beside a
Python worker given the same where its Celery has them."""
import os
import signal
import time

import celery
import pytest

from conftest import answering, slots

# Celery 5.5 brought the soft shutdown, and the cold shutdown that gives acks-late work back at once.
PYTHON_SOFT = celery.VERSION >= (5, 5)


def start_pair(start_configured, name, settings, *args, python=True, swift_args=()):
    """A Swift worker (given `swift_args` too) and (unless `python` is false) a Python worker, each on a queue of its
    own and given `settings` (Celery's names), both ready."""
    workers = {"swift": start_configured("swift", settings, "-Q", f"{name}swift", "-n", f"{name}swift@%h", *args,
                                         *swift_args)}
    if python:
        workers["python"] = start_configured("python", settings, "-Q", f"{name}python", "-n", f"{name}python@%h",
                                             *args)
    return workers


def send_and_signal(worker, app, queue, seconds, count, signals, gap=0.3):
    """Sends `count` `tasks.sleep(seconds)` to `queue`; once the worker received them all, sends `signals`, `gap`
    seconds apart. Returns the results and the time of the first signal."""
    results = [app.tasks["tasks.sleep"].apply_async((seconds,), queue=queue) for _ in range(count)]
    worker.wait_for_log("received", count=count)
    time.sleep(0.3)
    signalled = time.monotonic()
    for index, sig in enumerate(signals):
        if index:
            time.sleep(gap)
        worker.proc.send_signal(sig)
    return results, signalled


def outcome(app, broker_redis, queue, results):
    """What a shutdown left: each task's stored state, the messages back in the queue, the unacked entries."""
    states = [app.backend.get_task_meta(r.id, cache=False)["status"] for r in results]
    return states, broker_redis.llen(queue), broker_redis.hlen("unacked")


def shut_down_each(workers, app, broker_redis, name, seconds, count, signals, timeout=20):
    """For each worker in turn: `send_and_signal` on its queue, then wait for it to exit. Returns, by worker, its exit
    status, the seconds from the first signal to its exit, and the `outcome`."""
    seen = {}
    for kind, worker in workers.items():
        queue = f"{name}{kind}"
        results, signalled = send_and_signal(worker, app, queue, seconds, count, signals)
        code = worker.proc.wait(timeout)
        seen[kind] = (code, time.monotonic() - signalled, outcome(app, broker_redis, queue, results), results)
    return seen


def outcomes(seen):
    """The distinct outcomes the workers left (one when they all left the same)."""
    return {repr(entry[2]) for entry in seen.values()}


def test_a_second_sigterm_stays_a_warm_shutdown_as_in_python(start_configured, make_app, broker_redis):
    """Celery's SIGTERM handler never turns cold: the running task still finishes and stores its result, the
    reserved one goes back, exit 0. Python's worker beside it does the same."""
    workers = start_pair(start_configured, "termtwice", {}, "-c", "1")
    app = make_app()
    seen = shut_down_each(workers, app, broker_redis, "termtwice", 1.5, 2, [signal.SIGTERM, signal.SIGTERM])
    assert [entry[0] for entry in seen.values()] == [0] * len(seen), seen
    assert outcomes(seen) == {repr((["SUCCESS", "PENDING"], 1, 0))}, seen
    assert "Cold shutdown" not in workers["swift"].log
    assert workers["swift"].log.count("worker: Warm shutdown (MainProcess)") == 2


def test_a_second_sigint_is_cold(start_worker, make_app, broker_redis):
    worker = start_worker("-c", "1", "--acks-late", "-Q", "inttwice")
    app = make_app()
    results, _ = send_and_signal(worker, app, "inttwice", 5, 2, [signal.SIGINT, signal.SIGINT])
    assert worker.proc.wait(10) == 1
    log = worker.log
    assert "worker: Hitting Ctrl+C again will initiate cold shutdown, terminating all running tasks!" in log
    assert log.index("worker: Warm shutdown (MainProcess)") < log.index("worker: Cold shutdown (MainProcess)")
    # The interrupted acks-late task and the reserved one are back in the queue at once.
    assert outcome(app, broker_redis, "inttwice", results) == (["PENDING", "PENDING"], 2, 0)


@pytest.mark.parametrize("pool", ["threads", "process"])
def test_cold_shutdown_gives_acks_late_work_back_at_once(start_configured, make_app, broker_redis, pool):
    """SIGQUIT cancels the running acks-late tasks and gives their messages back with the reserved ones, as
    Celery 5.5 and later's prefork pool does ("Restoring 3 unacknowledged message(s)"); nothing waits for the
    visibility timeout. Python's exit status is 0 here (its cold shutdown never sets one); the Swift worker's is 1."""
    workers = start_pair(start_configured, f"cold{pool}", {"task_acks_late": True}, "-c", "2",
                         python=PYTHON_SOFT and pool == "process", swift_args=("-P", "process") if pool == "process" else ())
    app = make_app()
    seen = shut_down_each(workers, app, broker_redis, f"cold{pool}", 5, 3, [signal.SIGQUIT])
    assert seen["swift"][0] == 1
    for worker in workers.values():
        assert "Restoring 3 unacknowledged message(s)" in worker.log, worker.log
    assert outcomes(seen) == {repr((["PENDING"] * 3, 3, 0))}, seen
    assert workers["swift"].log.count("interrupted by cold shutdown") == (2 if pool == "process" else slots(2))
    assert "ERROR" not in workers["swift"].log  # children stopped on purpose are not errors


def test_soft_shutdown_lets_running_tasks_finish(start_configured, make_app, broker_redis):
    """With `worker_soft_shutdown_timeout`, SIGQUIT first lets the running task finish and store its result, then
    gives the reserved one back. Python sleeps the whole timeout; the Swift worker ends once the task is done."""
    settings = {"worker_soft_shutdown_timeout": 4}
    workers = start_pair(start_configured, "soft", settings, "-c", "1", python=PYTHON_SOFT)
    app = make_app()
    for kind in workers:
        node = answering(app, f"soft{kind}@")
        conf = app.control.inspect(destination=[node], timeout=2).conf()[node]
        assert conf.get("worker_soft_shutdown_timeout") == 4, (kind, conf)
    # 2.5 s tasks: the first still runs when SIGQUIT comes, on a loaded machine too.
    seen = shut_down_each(workers, app, broker_redis, "soft", 2.5, 2, [signal.SIGQUIT])
    code, took, _, results = seen["swift"]
    assert code == 1
    assert took < 3.8, took  # the task had 2.5 s at most left; the timeout is 4
    for worker in workers.values():
        assert "Initiating Soft Shutdown, terminating in 4 seconds" in worker.log, worker.log
    assert outcomes(seen) == {repr((["SUCCESS", "PENDING"], 1, 0))}, seen
    assert results[0].get(timeout=1) == 2.5
    assert "interrupted by cold shutdown" not in workers["swift"].log


def test_soft_shutdown_cancels_what_still_runs_when_its_time_is_up(start_configured, make_app, broker_redis):
    """The running acks-late task outlasts the soft shutdown: it is cancelled and its message given back."""
    settings = {"worker_soft_shutdown_timeout": 1, "task_acks_late": True}
    workers = start_pair(start_configured, "softup", settings, "-c", "1", python=PYTHON_SOFT)
    app = make_app()
    seen = shut_down_each(workers, app, broker_redis, "softup", 10, 1, [signal.SIGQUIT], timeout=10)
    assert all(0.9 < entry[1] < 5 for entry in seen.values()), seen
    for worker in workers.values():
        assert "Initiating Soft Shutdown, terminating in 1 seconds" in worker.log, worker.log
    assert outcomes(seen) == {repr((["PENDING"], 1, 0))}, seen
    assert "interrupted by cold shutdown" in workers["swift"].log


def test_soft_shutdown_on_idle_and_remapped_sigterm(start_configured, start_worker, make_app, broker_redis):
    """`worker_enable_soft_shutdown_on_idle` logs the soft shutdown with no task running (and has nothing to wait
    for); `REMAP_SIGTERM=SIGQUIT` makes SIGTERM cold, so an acks-late task goes back at once."""
    settings = {"worker_soft_shutdown_timeout": 2, "worker_enable_soft_shutdown_on_idle": True}
    idle = start_configured("swift", settings, "-Q", "softidle")
    signalled = time.monotonic()
    assert idle.stop(signal.SIGQUIT) == 1
    assert time.monotonic() - signalled < 1.5
    assert "Initiating Soft Shutdown, terminating in 2 seconds" in idle.log

    remapped = start_worker("-c", "1", "--acks-late", "-Q", "remap", env={"REMAP_SIGTERM": "SIGQUIT"})
    app = make_app()
    results, _ = send_and_signal(remapped, app, "remap", 5, 1, [signal.SIGTERM])
    assert remapped.proc.wait(10) == 1
    assert "worker: Cold shutdown (MainProcess)" in remapped.log and "Warm shutdown" not in remapped.log
    assert outcome(app, broker_redis, "remap", results) == (["PENDING"], 1, 0)


def test_sighup_restarts_a_daemon_in_its_own_process_as_python_does(start_configured, make_app, tmp_path):
    """SIGHUP to a worker whose standard output is not a terminal (Celery's daemon): Celery's line on standard output,
    a warm shutdown (the running task finishes and stores its result, the reserved one goes back to its queue), then
    the same process runs the worker again, which runs what went back. Beside a Python worker, which does the same.
    SIGUSR1 leaves both running: Python prints its threads' stacks, the Swift worker its threads and running tasks."""
    pidfile = tmp_path / "hup.pid"
    workers = start_pair(start_configured, "hup", {}, "-c", "1", swift_args=("--pidfile", str(pidfile)))
    app = make_app()
    for kind, worker in workers.items():
        pid = worker.proc.pid
        # Long enough to still run when SIGHUP comes, on a loaded machine too: the one waiting must go back.
        running = app.tasks["tasks.sleep"].apply_async((3,), queue=f"hup{kind}")
        worker.wait_for_log(f"[{running.id}] received")
        waiting = app.tasks["tasks.add"].apply_async((2, 3), queue=f"hup{kind}")
        worker.wait_for_log(f"[{waiting.id}] received")
        time.sleep(0.2)
        os.kill(pid, signal.SIGUSR1)
        time.sleep(0.2)
        os.kill(pid, signal.SIGHUP)
        assert running.get(timeout=15) == 3
        assert waiting.get(timeout=20) == 5
        worker.wait_for_log(" ready.", count=2)
        assert worker.alive() and worker.proc.pid == pid, kind
        # Given back at the shutdown, received again after the start.
        assert worker.log.count(f"[{waiting.id}] received") == 2, kind
        assert answering(app, f"hup{kind}@")
        assert app.tasks["tasks.add"].apply_async((1, 1), queue=f"hup{kind}").get(timeout=10) == 2
    swift = workers["swift"]
    assert f"\nRestarting celery worker ({' '.join(swift.args)})\n" in swift.stdout
    assert swift.stdout.count(" -------------- hupswift@") == 2
    assert f"\nthread {swift.proc.pid} " in swift.stdout and "RUNNING TASKS" in swift.stdout
    assert "tasks.sleep[" in swift.stdout.split("RUNNING TASKS")[1]
    assert "Warm shutdown" not in swift.log  # as Python's: the restart is not announced as a shutdown
    assert pidfile.read_text() == f"{swift.proc.pid}\n"  # released before the restart, taken again after it


def test_sighup_during_a_warm_shutdown_restarts_once_it_is_over_as_python_does(start_configured, make_app):
    """Celery's SIGHUP handler registers its restart to run at exit, whatever stopped the worker: SIGHUP during a warm
    shutdown lets the running task finish, then the same process runs the worker again. Beside a Python worker."""
    workers = start_pair(start_configured, "hupwarm", {}, "-c", "1")
    app = make_app()
    for kind, worker in workers.items():
        pid = worker.proc.pid
        results, _ = send_and_signal(worker, app, f"hupwarm{kind}", 1, 1, [signal.SIGTERM, signal.SIGHUP])
        assert results[0].get(timeout=10) == 1
        worker.wait_for_log(" ready.", count=2)
        assert worker.alive() and worker.proc.pid == pid, kind
        assert answering(app, f"hupwarm{kind}@")
        assert app.tasks["tasks.add"].apply_async((1, 1), queue=f"hupwarm{kind}").get(timeout=10) == 2
    swift = workers["swift"]
    assert "worker: Warm shutdown (MainProcess)" in swift.log
    assert f"\nRestarting celery worker ({' '.join(swift.args)})\n" in swift.stdout
    assert swift.stdout.count(" -------------- hupwarmswift@") == 2


def test_sighup_with_a_terminal_shuts_down_warm(start_worker, make_app, broker_redis):
    """With a terminal, Celery leaves SIGHUP alone and dies of it when the terminal closes: the messages it held
    wait out the visibility timeout. The Swift worker shuts down warm and gives them back at once."""
    worker = start_worker("-n", "tty@%h", "-Q", "tty", "-c", "1", terminal=True)
    app = make_app()
    running = app.tasks["tasks.sleep"].apply_async((3,), queue="tty")
    worker.wait_for_log(f"[{running.id}] received")
    waiting = app.tasks["tasks.add"].apply_async((2, 3), queue="tty")
    worker.wait_for_log(f"[{waiting.id}] received")
    assert worker.stop(signal.SIGHUP) == 0
    assert running.get(timeout=5) == 3
    assert "worker: Warm shutdown (MainProcess)" in worker.log
    assert broker_redis.llen("tty") == 1 and broker_redis.hlen("unacked") == 0
    assert "Restarting" not in worker.stdout and " -------------- tty@" in worker.stdout
