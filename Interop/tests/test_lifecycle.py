"""Signals, shutdown, concurrency and Redis outages, with real Python clients."""
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis as redis_lib

from conftest import INTEROP, WORKER_BINARY, ends_apart
from redisproc import RedisProcess


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 0), (signal.SIGINT, 1), (signal.SIGQUIT, 1)])
def test_exit_status_per_signal(start_worker, sig, code):
    worker = start_worker()
    assert worker.stop(sig) == code
    expected = "Cold shutdown" if sig == signal.SIGQUIT else "Warm shutdown"
    assert expected in worker.log


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGQUIT])
def test_worker_shutting_down_carries_what_celerys_handler_sends(start_worker, start_python_worker, tmp_path, sig):
    """Celery's `worker_shutting_down` with the signal's name, Warm or Cold, and the exit code, as a Python worker's
    handler sends it (its receiver writes a file; the Swift demo's logs at DEBUG, after the shutdown line); and
    `worker_init` before `ready.`."""
    signals_file = tmp_path / "python-signals.txt"
    swift = start_worker("-n", "shuttingdown@%h", "-l", "debug")
    python = start_python_worker("-P", "solo", env={"SIGNALS_FILE": str(signals_file)})
    python.stop(sig)
    (expected,) = signals_file.read_text().splitlines()
    assert expected.startswith(f"worker_shutting_down: {sig.name} ")
    swift.stop(sig)
    log = swift.log
    assert log.count(expected) == 1, log
    assert log.index("shutdown (MainProcess)") < log.index(expected)
    assert log.index("worker_init: shuttingdown@") < log.index("ready.")


def test_warm_shutdown_finishes_running_tasks_and_gives_back_reserved_ones(start_worker, make_app, broker_redis):
    worker = start_worker("-c", "1", "--prefetch-multiplier", "4")
    app = make_app()
    sleep = app.tasks["tasks.sleep"]
    results = [sleep.delay(1.5) for _ in range(3)]
    worker.wait_for_log("received", count=3)
    assert worker.stop(signal.SIGTERM) == 0
    assert results[0].get(timeout=5) == 1.5  # the running task finished and stored its result
    assert "Restoring 2 unacknowledged message(s)" in worker.log
    assert broker_redis.llen("celery") == 2
    assert broker_redis.hlen("unacked") == 0 and broker_redis.zcard("unacked_index") == 0
    restored = broker_redis.lrange("celery", 0, -1)
    assert all(b'"redelivered": true' in raw for raw in restored)
    # a new worker picks the restored messages up
    start_worker("-c", "2")
    assert [r.get(timeout=10) for r in results[1:]] == [1.5, 1.5]


@pytest.mark.parallel_pool
def test_concurrency_runs_tasks_at_once(start_worker, make_app):
    start_worker("-c", "4")
    app = make_app()
    results = [app.tasks["tasks.sleep"].delay(1) for _ in range(4)]
    assert [r.get(timeout=10) for r in results] == [1, 1, 1, 1]
    assert ends_apart(app, results) < 0.8  # on fewer slots, some would end 1 s after the others


@pytest.mark.parallel_pool
def test_cpu_bound_tasks_do_not_stall_other_work(start_worker, make_app):
    worker = start_worker("-c", "3")
    app = make_app()
    spinning = [app.tasks["tasks.spin"].delay(3) for _ in range(2)]
    worker.wait_for_log("received", count=2)
    time.sleep(0.3)
    started = time.monotonic()
    assert app.tasks["tasks.add"].delay(1, 1).get(timeout=10) == 2
    assert time.monotonic() - started < 2.0  # the spinners still have over 2 s to go
    assert all(r.state != "SUCCESS" for r in spinning)
    assert [r.get(timeout=15) for r in spinning] == [3, 3]


@pytest.mark.parallel_pool
def test_bodies_that_hold_every_slot_do_not_stall_the_worker(start_worker, make_app, broker_redis):
    """Every slot runs a busy loop: remote control, the next fetch and the results of other tasks still go on."""
    worker = start_worker("-n", "held@%h", "-c", "2", "--prefetch-multiplier", "2")
    app = make_app()
    spinning = [app.tasks["tasks.spin"].delay(3) for _ in range(2)]
    worker.wait_for_log("received", count=2)
    time.sleep(0.3)
    started = time.monotonic()
    replies = app.control.ping(timeout=1.0)
    assert any(node.startswith("held@") for reply in replies for node in reply)
    assert time.monotonic() - started < 1.5
    # No slot is free, but the worker still fetches: the message is received and recorded in unacked at once.
    waiting = app.tasks["tasks.add"].delay(2, 2)
    worker.wait_for_log(f"[{waiting.id}] received", timeout=2)
    assert broker_redis.llen("celery") == 0
    assert time.monotonic() - started < 2.5  # the spinners still run
    assert all(r.state != "SUCCESS" for r in spinning)
    assert waiting.get(timeout=10) == 4
    assert [r.get(timeout=15) for r in spinning] == [3, 3]


def test_redis_down_at_start_up_is_retried(tmp_path, make_app):
    from conftest import WorkerProcess

    server = RedisProcess()
    worker = WorkerProcess(["--broker", server.url(1), "--result-backend", server.url(0)], tmp_path / "w.log")
    try:
        worker.wait_for_log("Cannot connect to", timeout=10)
        assert worker.alive()
        server.start()
        worker.wait_ready(timeout=20)
        from clientapp import make_app as build
        app = build(server.url(1), server.url(0))
        assert app.tasks["tasks.add"].delay(2, 2).get(timeout=10) == 4
        assert worker.stop() == 0
    finally:
        if worker.alive():
            worker.stop(signal.SIGKILL)
        server.stop()


def test_redis_restart_mid_run(tmp_path):
    from conftest import WorkerProcess
    from clientapp import make_app as build

    server = RedisProcess().start()
    worker = WorkerProcess(["--broker", server.url(1), "--result-backend", server.url(0)], tmp_path / "w.log")
    try:
        worker.wait_ready()
        app = build(server.url(1), server.url(0))
        assert app.tasks["tasks.add"].delay(1, 2).get(timeout=10) == 3
        server.proc.terminate()
        server.proc.wait(5)
        worker.wait_for_log("Connection to broker lost", timeout=10)
        assert worker.alive()
        server.start()
        app2 = build(server.url(1), server.url(0))
        assert app2.tasks["tasks.add"].delay(3, 4).get(timeout=30) == 7
        assert worker.stop() == 0
    finally:
        if worker.alive():
            worker.stop(signal.SIGKILL)
        server.stop()


def test_bad_flags_fail_with_a_clear_message():
    for args, text in [(["-c", "0"], "--concurrency must be at least 1"),
                       (["-c", "-3"], "--concurrency must be at least 1, got -3"),
                       (["-c", "abc"], "'abc' is invalid for '-c <concurrency>'"),
                       (["--visibility-timeout", "-5"], "--visibility-timeout must be more than 0 seconds"),
                       (["--prefetch-multiplier", "-1"], "--prefetch-multiplier must be 0 or more"),
                       (["-O", "fast"], "Invalid value for '-O': 'fast' is not one of 'default', 'fair'."),
                       (["--metrics-port", "-1"], "--metrics-port must be a TCP port"),
                       (["--max-tasks-per-child", "0"], "--max-tasks-per-child must be at least 1"),
                       (["--max-memory-per-child", "-5"], "--max-memory-per-child must be at least 1 KiB"),
                       (["-P", "process", "--autoscale", "3,5"], "--autoscale must be MAX or MAX,MIN"),
                       (["-P", "process", "--autoscale", "0"], "--autoscale must be MAX or MAX,MIN"),
                       (["--autoscale", "3"], "--autoscale needs --pool process"),
                       (["--broker", "http://x"], "invalid Redis URL"),
                       (["--broker", "sentinel://127.0.0.1:1/0"], "A sentinel:// broker needs the master's name"),
                       (["--broker", "sentinel://a:1;redis://b:2"], "sentinel:// URLs cannot be joined with others by ';'"),
                       (["--result-backend", "redis://a:1;redis://b:2"], "Celery's Redis backend takes no failover list"),
                       (["-l", "LOUD"], "Invalid log level"),
                       (["--result-serializer", "pickle"], "json or msgpack"),
                       (["-B", "--scheduler", "django_celery_beat.schedulers:DatabaseScheduler"],
                        "run Python's `celery beat` for another scheduler"),
                       (["-I", "proj.tasks"], "the Swift worker's tasks are compiled in"),
                       (["--umask", "0999"], "--umask must be a mask from 0 to 0777"),
                       (["--workdir", "/nonexistent/dir"], "--workdir /nonexistent/dir: No such file or directory"),
                       (["--no-such-flag"], "Unknown option")]:
        proc = subprocess.run([str(WORKER_BINARY), *args], capture_output=True, text=True, timeout=10)
        assert proc.returncode != 0
        assert text in proc.stderr, (args, proc.stderr)


def test_banner_masks_the_password(tmp_path, redis_urls):
    from conftest import WorkerProcess

    port = redis_urls["server"].port
    worker = WorkerProcess(["--broker", f"redis://:s3cret@127.0.0.1:{port}/1", "--result-backend", redis_urls["backend"]],
                           tmp_path / "w.log")
    try:
        # The server asks for no password: Redis answers AUTH with an error, and the worker serves all the same, as a
        # Python worker does.
        worker.wait_ready()
        assert "redis://:**@127.0.0.1" in worker.stdout
        assert f"Connected to redis://:**@127.0.0.1:{port}/1" in worker.log
        assert "s3cret" not in worker.stdout and "s3cret" not in worker.log
    finally:
        worker.stop(signal.SIGKILL)


def test_banner_shows_the_result_backend_as_celery_does(tmp_path, redis_urls):
    """Celery's banner shows `result_backend` as written, through kombu's `maybe_sanitize_url` (its
    `backend.as_uri()`): no port or database added, the query dropped, the host in lower case."""
    from celery import Celery

    from conftest import WorkerProcess

    port = redis_urls["server"].port
    for index, setting in enumerate([f"redis://127.0.0.1:{port}", f"redis://:@127.0.0.1:{port}/0?socket_timeout=5",
                                     f"redis://LOCALHOST:{port}/1"]):
        expected = Celery(broker=redis_urls["broker"], backend=setting, set_as_current=False).backend.as_uri()
        worker = WorkerProcess(["--broker", redis_urls["broker"], "--result-backend", setting, "-n", f"shown{index}@%h"],
                               tmp_path / f"w{index}.log")
        try:
            worker.wait_ready()
        finally:
            worker.stop()
        assert f".> results:     {expected}\n" in worker.stdout, (setting, expected, worker.stdout)


def test_environment_supplies_broker_and_backend(redis_urls, tmp_path, make_app):
    from conftest import WorkerProcess

    worker = WorkerProcess([], tmp_path / "w.log", env={"CELERY_BROKER_URL": redis_urls["broker"],
                                                         "CELERY_RESULT_BACKEND": redis_urls["backend"]})
    try:
        worker.wait_ready()
        assert make_app().tasks["tasks.add"].delay(5, 5).get(timeout=10) == 10
    finally:
        worker.stop()


def test_named_queues(start_worker, make_app):
    start_worker("-Q", "alpha,beta")
    app = make_app()
    assert app.tasks["tasks.add"].apply_async((1, 1), queue="beta").get(timeout=10) == 2
    assert app.tasks["tasks.add"].apply_async((2, 2), queue="alpha").get(timeout=10) == 4


@pytest.mark.parallel_pool
def test_seed_scenario(redis_urls, start_worker):
    start_worker("-c", "5")
    base = redis_urls["broker"].rsplit("/", 1)[0]
    proc = subprocess.run([sys.executable, str(INTEROP / "seed" / "producer.py")], capture_output=True, text=True,
                          timeout=60, env={"SEED_REDIS": base, "PATH": "/usr/bin:/bin"}, cwd=INTEROP / "seed")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("result ")]
    assert len(lines) == 5 and all("我将发送邮件" in line and "SUCCESS" in line for line in lines)
    # Five one-second tasks with -c 5 run side by side (one after the other would need 5 s), as the producer timed
    # them from the first .delay() to the last result (Python's start-up and imports left out).
    elapsed = float(re.search(r"^5 results in ([0-9.]+)s$", proc.stdout, re.M).group(1))
    assert elapsed < 3.5, proc.stdout


def test_unix_socket_urls(tmp_path):
    from conftest import WorkerProcess
    from clientapp import make_app as build

    server = RedisProcess(unix_socket=True).start()
    worker = WorkerProcess(["--broker", f"unix://{server.socket}?virtual_host=1",
                            "--result-backend", f"redis+socket://{server.socket}?virtual_host=0"], tmp_path / "w.log")
    try:
        worker.wait_ready()
        app = build(f"redis+socket://{server.socket}?virtual_host=1", f"redis+socket://{server.socket}?virtual_host=0")
        result = app.tasks["tasks.add"].delay(20, 1)
        assert result.get(timeout=10) == 21
        assert redis_lib.Redis(unix_socket_path=server.socket, db=0).exists(f"celery-task-meta-{result.id}") == 1
        assert worker.stop() == 0
    finally:
        if worker.alive():
            worker.stop(signal.SIGKILL)
        server.stop()


def test_log_level_filters_lines(start_worker, make_app):
    worker = start_worker("-l", "WARNING", ready=False)
    app = make_app()
    assert app.tasks["tasks.add"].delay(1, 2).get(timeout=15) == 3
    app.send_task("tasks.nope")
    worker.wait_for_log("Received unregistered task")
    assert "received" not in worker.log and "succeeded" not in worker.log
