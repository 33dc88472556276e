"""Celery's broker connection settings (broker_connection_retry, broker_connection_retry_on_startup,
broker_connection_max_retries, broker_connection_timeout), each beside a Python worker given the same settings."""
import contextlib
import json
import re
import signal
import subprocess
import time

import pytest
import redis as redis_lib

from conftest import WORKER_BINARY, PythonWorker, WorkerProcess, answering, eventually, remember
from redisproc import RedisProcess, free_port


def pair(request, tmp_path, broker, backend, settings, swift_args=(), python_args=()):
    """A Swift worker and a Python worker on `broker`, both given `settings` (Celery's names)."""
    config = tmp_path / "settings.json"
    config.write_text(json.dumps(settings))
    swift = remember(request, WorkerProcess(["--broker", broker, "--result-backend", backend, "--config", str(config),
                                             *swift_args], tmp_path / "swift.log"))
    python = remember(request, PythonWorker(broker, backend, tmp_path / "python.log", *python_args,
                                            env={"CELERY_SETTINGS": json.dumps(settings)}))
    return swift, python


def exit_status(worker, timeout):
    """The worker's exit status once it stopped by itself within `timeout` seconds."""
    try:
        return worker.proc.wait(timeout)
    except Exception:
        worker.stop(signal.SIGKILL)
        raise AssertionError(f"{worker.name} still runs after {timeout}s:\n{worker.log}")


def critical_lines(log):
    """The CRITICAL lines' messages, without the time stamp (Python's are followed by a traceback)."""
    return [line.split("] ", 1)[1] for line in log.splitlines() if "CRITICAL/MainProcess]" in line]


def stop_both(*workers):
    for worker in workers:
        if isinstance(worker, PythonWorker):
            worker.kill_all()
        elif worker.alive():
            worker.stop(signal.SIGKILL)


@contextlib.contextmanager
def on_own_redis(request, tmp_path, kind="swift", redis_config=None, swift_args=(), python_args=(), env=None):
    """A worker (the Swift one, or with `kind` "python" a Python one) on a redis-server of its own, set up with
    `redis_config` first: the broker on database 1, results on 0. Yields the server, a client of the broker's
    database, the worker and an app once a first task ran; stops the worker and the server after."""
    from clientapp import make_app

    server = RedisProcess().start()
    client = redis_lib.Redis.from_url(server.url(1))
    for name, value in (redis_config or {}).items():
        client.config_set(name, value)
    if kind == "swift":
        worker = remember(request, WorkerProcess(["--broker", server.url(1), "--result-backend", server.url(0),
                                                  *swift_args], tmp_path / "swift.log"))
    else:
        worker = remember(request, PythonWorker(server.url(1), server.url(0), tmp_path / "python.log", *python_args,
                                                env=env))
    try:
        worker.wait_ready()
        app = make_app(server.url(1), server.url(0))
        assert app.tasks["tasks.add"].delay(1, 2).get(timeout=10) == 3
        yield server, client, worker, app
    finally:
        stop_both(worker)
        server.stop()


UNRECOVERABLE = "Unrecoverable error: OperationalError("


@pytest.mark.parametrize("settings,expected,absent", [
    ({"broker_connection_max_retries": 1},
     ["Trying again in 2.00 seconds... (1/1)", UNRECOVERABLE], ["(2/1)"]),
    ({"broker_connection_max_retries": 0}, [UNRECOVERABLE], ["Trying again"]),
    ({"broker_connection_retry_on_startup": False},
     ["Retrying to establish a connection to the message broker after a connection loss has been disabled "
      "(app.conf.broker_connection_retry_on_startup=False). Shutting down..."], ["Trying again"]),
    ({"broker_connection_retry": False},
     ["CPendingDeprecationWarning: The broker_connection_retry configuration setting will no longer determine",
      "(app.conf.broker_connection_retry=False). Shutting down..."], ["Trying again"]),
], ids=["max-retries", "no-retries", "retry-on-startup-off", "retry-off"])
def test_a_dead_broker_at_start_is_given_up_on_as_python_does(request, tmp_path, redis_urls, settings, expected, absent):
    """With a broker nobody listens on, both workers retry as the settings say, then stop with exit 1 and the same
    critical line, the connection error in redis-py's words in both."""
    swift, python = pair(request, tmp_path, f"redis://127.0.0.1:{free_port()}/0", redis_urls["backend"], settings)
    try:
        assert exit_status(swift, 20) == 1
        assert exit_status(python, 30) == 1
        for worker in (swift, python):
            for text in expected:
                assert text in worker.log, (worker.name, text)
            for text in absent:
                assert text not in worker.log, (worker.name, text)
        swift_critical, python_critical = critical_lines(swift.log), critical_lines(python.log)
        assert len(swift_critical) == len(python_critical) == 1, (swift_critical, python_critical)
        assert swift_critical == python_critical
        # "consumer: Cannot connect to redis://:**@127.0.0.1:<port>/0: Error 111 connecting to 127.0.0.1:<port>.
        # Connection refused..", the URL as kombu 5.7 shows it (kombu 5.3 leaves out a password there is none of:
        # then only what follows the URL is compared).
        lines = [[line.split("] ", 1)[1] for line in worker.log.splitlines() if "Cannot connect to " in line]
                 for worker in (swift, python)]
        if not any(":**@" in line for line in lines[1]):
            lines = [[line.split("Cannot connect to ", 1)[1].split(": ", 1)[1] for line in kind] for kind in lines]
        assert lines[0] == lines[1], lines
    finally:
        stop_both(swift, python)


def test_a_broker_lost_with_retries_off_stops_the_worker_and_loses_nothing(request, tmp_path):
    """broker_connection_retry: false. The consumer's connection is killed while one task runs and two wait: the
    worker logs Celery's line, finishes the running task, gives the waiting ones back and exits 1, as a Python worker
    with the same setting stops. A new worker then runs what was given back."""
    server = RedisProcess().start()
    broker, backend = server.url(1), server.url(0)
    swift, python = pair(request, tmp_path, broker, backend, {"broker_connection_retry": False},
                         swift_args=("-c", "1", "--prefetch-multiplier", "4"), python_args=("-Q", "pyqueue", "-P", "solo"))
    after = running = waiting = None
    try:
        swift.wait_ready()
        python.wait_ready()
        from clientapp import make_app

        app = make_app(broker, backend)
        running = app.tasks["tasks.sleep"].delay(1.5)
        waiting = [app.tasks["tasks.add"].delay(i, i) for i in range(2)]
        swift.wait_for_log("received", count=3)
        swift.wait_for_log(f"[{running.id}] received")
        time.sleep(0.2)  # the fetch loop is back in its blocking pop
        killed = redis_lib.Redis.from_url(broker).client_kill_filter(_type="normal", skipme=True)
        assert killed >= 2
        assert exit_status(swift, 20) == 1
        assert exit_status(python, 20) == 1
        line = ("Retrying to re-establish a connection to the message broker after a connection loss has been disabled "
                "(app.conf.broker_connection_retry=False). Shutting down...")
        assert critical_lines(swift.log) == [line]
        assert critical_lines(python.log) == [line]
        assert running.get(timeout=5) == 1.5  # finished in the warm shutdown
        after = WorkerProcess(["--broker", broker, "--result-backend", backend], tmp_path / "after.log").wait_ready()
        assert [r.get(timeout=10) for r in waiting] == [0, 2]
        unacked = redis_lib.Redis.from_url(broker)
        assert unacked.hlen("unacked") == 0 and unacked.llen("celery") == 0
    finally:
        stop_both(swift, python, *([after] if after else []))
        server.stop()


def test_a_broker_down_mid_run_is_given_up_on_after_max_retries_as_python_does(request, tmp_path):
    server = RedisProcess().start()
    swift, python = pair(request, tmp_path, server.url(1), server.url(0), {"broker_connection_max_retries": 1},
                         python_args=("-P", "solo"))
    try:
        swift.wait_ready()
        python.wait_ready()
        server.stop()
        assert exit_status(swift, 20) == 1
        assert exit_status(python, 30) == 1
        for worker in (swift, python):
            log = worker.log
            assert "consumer: Connection to broker lost. Trying to re-establish the connection..." in log, worker.name
            assert "Trying again in 2.00 seconds... (1/1)" in log, worker.name
            assert "(2/1)" not in log, worker.name
            assert [line.startswith(UNRECOVERABLE) for line in critical_lines(log)] == [True], worker.name
    finally:
        stop_both(swift, python)


def test_the_retry_count_starts_afresh_after_each_reconnection(start_worker, tmp_path):
    """broker_connection_max_retries counts failed attempts in a row, as Celery's consumer does: two outages that
    each take one failed attempt do not add up to two."""
    server = RedisProcess().start()
    config = tmp_path / "retry.yaml"
    config.write_text("broker_connection_max_retries: 1\n")
    worker = start_worker("--config", str(config), broker=server.url(1), backend=server.url(0))
    try:
        for outage in (1, 2):
            server.proc.terminate()
            server.proc.wait(5)
            worker.wait_for_log("Trying again in 2.00 seconds... (1/1)", count=outage, timeout=10)
            server.start()
            worker.wait_for_log("Connected to", count=1 + outage, timeout=10)
        from clientapp import make_app

        app = make_app(server.url(1), server.url(0))
        assert app.tasks["tasks.add"].delay(5, 5).get(timeout=10) == 10
        assert worker.alive() and "CRITICAL" not in worker.log
        assert worker.stop() == 0
    finally:
        server.stop()


@pytest.mark.parametrize("settings", [
    {},
    {"broker_connection_timeout": 7.5, "broker_connection_max_retries": None, "broker_connection_retry_on_startup": True,
     "broker_connection_retry": False},
], ids=["defaults", "set"])
def test_stats_and_conf_show_the_connection_settings_as_python_does(request, tmp_path, redis_urls, make_app, settings):
    swift, python = pair(request, tmp_path, redis_urls["broker"], redis_urls["backend"], settings,
                         swift_args=("-Q", "retryswift", "-n", "retryswift@%h"),
                         python_args=("-Q", "retrypy", "-n", "retrypy@%h", "-P", "solo"))
    try:
        swift.wait_ready()
        python.wait_ready()
        app = make_app()
        keys = ["broker_connection_timeout", "broker_connection_max_retries", "broker_connection_retry_on_startup",
                "broker_connection_retry"]
        # Python's `conf` leaves out what is at Celery's default; the Swift worker's shows every setting in effect.
        from celery import Celery

        defaults = Celery(set_as_current=False).conf
        shown = {}
        for prefix in ("retryswift", "retrypy"):
            node = answering(app, prefix + "@")
            inspect = app.control.inspect(destination=[node], timeout=2)
            conf = inspect.conf()[node]
            if prefix == "retryswift":
                assert all(key in conf for key in keys), conf
            shown[prefix] = ({key: conf.get(key, defaults[key]) for key in keys},
                             inspect.stats()[node]["broker"]["connect_timeout"])
        assert shown["retryswift"] == shown["retrypy"], shown
        assert shown["retryswift"][1] == settings.get("broker_connection_timeout", 4)
    finally:
        stop_both(swift, python)


@pytest.mark.parametrize("limited", [True, False], ids=["max-retries", "forever"])
def test_result_writes_retry_as_result_backend_always_retry_says(request, tmp_path, redis_urls, limited):
    """A result backend on a server of its own stops while a task runs. With `result_backend_always_retry` the write
    is retried with Celery's back-off: up to `result_backend_max_retries` times, then the result is logged as lost;
    without a limit until the backend is back, and the result is stored then."""
    from clientapp import make_app

    settings = {"result_backend_always_retry": True, "result_backend_max_sleep_between_retries_ms": 200}
    if limited:
        settings |= {"result_backend_max_retries": 3, "result_backend_max_sleep_between_retries_ms": 50}
    backend = RedisProcess().start()
    config = tmp_path / "retry.json"
    config.write_text(json.dumps(settings))
    worker = remember(request, WorkerProcess(["--broker", redis_urls["broker"], "--result-backend", backend.url(0),
                                              "--config", str(config), "-Q", "resultretry"], tmp_path / "swift.log"))
    try:
        worker.wait_ready()
        app = make_app(redis_urls["broker"], backend.url(0))
        node = answering(app, "celery@")
        conf = app.control.inspect(destination=[node], timeout=2).conf()[node]
        assert {key: conf[key] for key in settings} == settings, conf
        result = app.send_task("tasks.sleep", (1.5,), queue="resultretry")
        worker.wait_for_log(f"tasks.sleep[{result.id}] received")
        backend.proc.terminate()
        backend.proc.wait(5)
        worker.wait_for_log(f"tasks.sleep[{result.id}] succeeded in")
        if limited:
            worker.wait_for_log(f"Cannot store the result of {result.id}", timeout=5)
            assert worker.log.count("Result backend unreachable") == 3, worker.log
        else:
            time.sleep(3)
            assert "Cannot store the result" not in worker.log
            assert worker.log.count("Result backend unreachable") >= 5, worker.log
            backend.start()
            worker.wait_for_log(f"Stored the result of {result.id} after", timeout=5)
            assert redis_lib.Redis.from_url(backend.url(0)).get(f"celery-task-meta-{result.id}") is not None
    finally:
        worker.stop(signal.SIGKILL)
        backend.stop()


def test_a_failover_list_moves_the_workers_to_the_next_server_as_python_does(request, tmp_path):
    """kombu's failover list: `broker_url` as servers joined by ';' (or as a list in the settings). A worker whose
    server goes down mid-run moves on to the next at once, and one whose first server is down at start connects to the
    next; each logs Celery's lines, as a Python worker beside it does; a Python client given the same list reaches
    them; `stats` names the server in use, the strategy and the list, as Python's does."""
    from clientapp import make_app

    first, second = RedisProcess().start(), RedisProcess().start()
    broker, backend = f"{first.url(0)};{second.url(0)}", second.url(1)
    swift, python = pair(request, tmp_path, broker, backend, {"broker_failover_strategy": "round-robin"},
                         swift_args=("-n", "swiftfailover@%h"), python_args=("-n", "pyfailover@%h", "-P", "threads"))
    later = None
    failed_over = (f"consumer: Cannot connect to redis://:**@127.0.0.1:{first.port}/0: Error 111 connecting to "
                   f"127.0.0.1:{first.port}. Connection refused..\nWill retry using next failover.")
    connected = f"Connected to redis://:**@127.0.0.1:{second.port}/0"
    try:
        swift.wait_ready()
        python.wait_ready()
        first.stop()
        for worker in (swift, python):
            # kombu 5.3 shows a URL without a password as redis://host…, kombu 5.7 (and the Swift worker) as redis://:**@host…
            worker.wait_for_log("Connected to redis://", timeout=20, count=2)
            log = worker.log.replace("redis://:**@", "redis://")
            assert failed_over.replace("redis://:**@", "redis://") in log, worker.log
            assert connected.replace("redis://:**@", "redis://") in log, worker.log
            assert "Trying again in" not in log, worker.log
        app = make_app(broker, backend)
        assert [app.send_task("tasks.add", (i, i)).get(timeout=15) for i in range(4)] == [0, 2, 4, 6]
        nodes = [answering(app, "swiftfailover@"), answering(app, "pyfailover@")]
        stats = app.control.inspect(destination=nodes, timeout=5).stats()
        shown = [{key: stats[node]["broker"][key] for key in ("hostname", "port", "failover_strategy", "alternates")}
                 for node in nodes]
        assert shown[0] == shown[1] == {"hostname": "127.0.0.1", "port": second.port, "failover_strategy": "round-robin",
                                        "alternates": [first.url(0), second.url(0)]}, shown

        config = tmp_path / "list.json"
        config.write_text(json.dumps({"broker_url": [first.url(0), second.url(0)]}))
        later = remember(request, WorkerProcess(["--result-backend", backend, "--config", str(config), "-n", "later@%h",
                                                 "-Q", "later"], tmp_path / "later.log")).wait_ready()
        assert failed_over in later.log and connected in later.log, later.log
        assert f"transport:   redis://:**@127.0.0.1:{first.port}/0" in later.stdout, later.stdout  # the first, as Celery's
        assert app.send_task("tasks.add", (5, 5), queue="later").get(timeout=15) == 10
        refused = subprocess.run([str(WORKER_BINARY), "--result-backend", broker], capture_output=True, text=True, timeout=30)
        assert refused.returncode == 64 and "takes no failover list" in refused.stderr, refused.stderr
    finally:
        stop_both(swift, python, *([later] if later else []))
        first.stop()
        second.stop()


def test_a_worker_back_from_a_lost_connection_mingles_again_as_python_does(request, tmp_path):
    """Celery's consumer restarts after a lost connection, mingle included, so a task revoked while the worker could
    not hear it is not run: the Swift worker's user is shut out (and its connections killed) while a revoke is sent,
    which only the Python worker beside it hears; once let back in, it mingles again and holds the id revoked."""
    from celery.exceptions import TaskRevokedError
    from clientapp import make_app

    server = RedisProcess().start()
    admin = redis_lib.Redis.from_url(server.url(1))
    admin.acl_setuser("swiftuser", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"], commands=["+@all"])
    backend = server.url(0)
    python = remember(request, PythonWorker(server.url(1), backend, tmp_path / "python.log", "-n", "pymingle@%h", "-P", "threads"))
    swift = None
    try:
        python.wait_ready()
        app = make_app(server.url(1), backend)
        answering(app, "pymingle@")
        swift = remember(request, WorkerProcess(
            ["--broker", f"redis://swiftuser:pw@127.0.0.1:{server.port}/1", "--result-backend", backend, "-n", "remingle@%h",
             "-Q", "remingle"], tmp_path / "swift.log")).wait_ready()
        assert "mingle: sync with 1 nodes" in swift.log, swift.log
        node = answering(app, "remingle@")
        admin.acl_setuser("swiftuser", enabled=False)
        admin.client_kill_filter(user="swiftuser")
        swift.wait_for_log("consumer: Cannot connect to redis://swiftuser:**@", timeout=15)
        app.control.revoke("revoked-while-away")
        assert eventually(lambda: "revoked-while-away" in (app.control.inspect(timeout=1).revoked() or {}).get(
            answering(app, "pymingle@"), []), 10)
        admin.acl_setuser("swiftuser", enabled=True)
        swift.wait_for_log("mingle: sync with 1 nodes", timeout=20, count=2)
        assert swift.log.rindex("Connected to") < swift.log.rindex("mingle: searching for neighbors"), swift.log
        assert "revoked-while-away" in app.control.inspect(destination=[node], timeout=5).revoked()[node]
        revoked = app.send_task("tasks.add", (1, 1), queue="remingle", task_id="revoked-while-away")
        with pytest.raises(TaskRevokedError):
            revoked.get(timeout=10)
        assert app.send_task("tasks.add", (2, 2), queue="remingle").get(timeout=10) == 4
    finally:
        stop_both(python, *([swift] if swift else []))
        server.stop()


@pytest.mark.parametrize("kind", ["swift", "python"])
def test_a_result_redis_refuses_for_want_of_memory_is_stored_once_it_has_room(request, tmp_path, redis_urls, kind):
    """A result backend out of memory (`maxmemory` reached, `noeviction`) refuses the result's write with `OOM`. The
    Swift worker keeps the result and tries again with the back-off it uses for an unreachable backend, and stores
    it once Redis has room again. Python's Redis backend retries connection errors only: its result is lost, and the
    task stays PENDING."""
    from clientapp import make_app

    backend = RedisProcess().start()
    server = redis_lib.Redis.from_url(backend.url(0))
    if kind == "swift":
        worker = remember(request, WorkerProcess(["--broker", redis_urls["broker"], "--result-backend", backend.url(0),
                                                  "-Q", "oomretry"], tmp_path / "swift.log"))
    else:
        worker = remember(request, PythonWorker(redis_urls["broker"], backend.url(0), tmp_path / "python.log",
                                                "-Q", "oomretry"))
    try:
        worker.wait_ready()
        app = make_app(redis_urls["broker"], backend.url(0))
        result = app.send_task("tasks.sleep", (1.5,), queue="oomretry")
        worker.wait_for_log(f"tasks.sleep[{result.id}] received")
        used = server.info("memory")["used_memory"]
        server.set("filler", b"x" * 4_000_000)
        server.config_set("maxmemory-policy", "noeviction")
        server.config_set("maxmemory", used + 1_000_000)
        worker.wait_for_log("OOM command not allowed" if kind == "swift" else "OutOfMemoryError", timeout=10)
        time.sleep(2)
        assert server.get(f"celery-task-meta-{result.id}") is None
        server.config_set("maxmemory", 0)
        server.delete("filler")
        if kind == "swift":
            assert "Result backend cannot serve the request for now (EVALSHA: OOM command not allowed" in worker.log
            worker.wait_for_log(f"Stored the result of {result.id} after", timeout=15)
            assert result.get(timeout=5) == 1.5
            assert "Cannot store the result" not in worker.log
        else:
            time.sleep(4)
            assert server.get(f"celery-task-meta-{result.id}") is None
            assert result.state == "PENDING"
    finally:
        worker.stop(signal.SIGKILL)
        backend.stop()


def test_an_idle_worker_on_a_broker_out_of_memory_waits_and_does_not_spin(request, tmp_path):
    """Out of memory, Redis refuses `BLMOVE` (which may grow a list) at once. An idle Swift worker then waits for its
    watch's report instead of blocking, until it has waited once, rather than fetch again and again: a handful of
    scripts a second, not thousands. Once Redis has room it blocks again, and tasks run."""
    with on_own_redis(request, tmp_path) as (server, client, worker, app):
        used = client.info("memory")["used_memory"]
        client.set("filler", b"x" * 4_000_000)
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", used + 1_000_000)
        client.config_resetstat()
        time.sleep(2)
        stats = client.info("commandstats")
        assert stats.get("cmdstat_blmove", {}).get("rejected_calls", 0) >= 1, stats
        assert stats.get("cmdstat_evalsha", {}).get("calls", 0) <= 20, stats
        client.config_set("maxmemory", 0)
        client.delete("filler")
        assert app.tasks["tasks.add"].delay(2, 3).get(timeout=10) == 5
        time.sleep(1.5)
        blocked = [line for line in client.client_list() if line.get("cmd") == "blmove"]
        assert len(blocked) == 1, client.client_list()


def test_a_fetch_connection_redis_refuses_restarts_the_consumer_at_most_five_times_a_second(request, tmp_path):
    """At `maxclients`, Redis refuses the connection the worker fetches on while its other connections still work:
    each reconnection succeeds (the queues are declared on another connection) and is lost at the next fetch.
    Celery's consumer counts its restarts (billiard's `restart_state`, 5 in 1 s): the sixth within a second logs
    "Frequent restarts detected" and waits a second. The Swift worker does the same; before, it lost and regained
    its connection about 400 times a second. Once Redis takes connections again, tasks run. (A Python worker showed
    the same line by hand, but whether its reconnection finds a free slot depends on when it closes its old
    connections, so it is not run here.)"""
    with on_own_redis(request, tmp_path) as (server, client, worker, app):
        def fetching():
            return [c for c in client.client_list() if c["cmd"] in ("blmove", "brpop")]

        assert eventually(fetching), client.client_list()
        # Every connection there is now but the fetch's: Redis refuses the next one.
        client.config_set("maxclients", len(client.client_list()) - 1)
        client.client_kill_filter(_id=fetching()[0]["id"])
        time.sleep(3)
        client.config_set("maxclients", 10000)
        losses = worker.log.count("Connection to broker lost")
        assert "Frequent restarts detected: RestartFreqExceeded('5 in 1s')" in worker.log, worker.log
        assert 6 <= losses <= 24, losses
        # Redis's reason, as redis-py gives it (before, "Server closed the connection" or "Connection reset by peer").
        assert re.search(r"Connection to broker lost\. .*\(.*: max number of clients reached\)$", worker.log, re.M), worker.log
        assert app.tasks["tasks.add"].delay(2, 3).get(timeout=15) == 5


@pytest.mark.parametrize("kind", ["swift", "python"])
def test_connections_redis_closes_when_idle_are_replaced_before_the_next_request(request, tmp_path, kind):
    """Redis's `timeout` closes a client left idle that many seconds (here 1). A worker idle longer than that finds
    its result, acknowledgement, sweep and unblocking connections closed: redis-py reconnects when its next command
    finds its connection closed, and so does the Swift worker, before it writes. Before, the Swift worker wrote the
    next request on the dead socket, found no reply, logged `Redis unreachable` and tried again a second later; its
    visibility sweep failed, and a priority task waited for its fetch's `BLMOVE` to time out."""
    with on_own_redis(request, tmp_path, kind, redis_config={"timeout": 1}, swift_args=("--visibility-timeout", "6"),
                      python_args=("-P", "solo"), env={"VISIBILITY_TIMEOUT": "6"}) as (server, client, worker, app):
        backend = redis_lib.Redis.from_url(server.url(0))
        for number in range(4):
            time.sleep(2.2)
            started = time.monotonic()
            # Every other one on a priority list, which the Swift worker's idle fetch is unblocked for.
            result = app.send_task("tasks.add", (number, 1), priority=3 if number % 2 else None)
            # Read with GET, not `result.get()`: Celery's result consumer itself sometimes waits in vain on a
            # connection Redis closed while it was subscribed to nothing.
            key = f"celery-task-meta-{result.id}"
            assert eventually(lambda: backend.exists(key), timeout=10), (number, worker.log)
            assert time.monotonic() - started < 0.5, (number, worker.log)
            assert json.loads(backend.get(key))["result"] == number + 1
        # (Celery 5.3 warns at start that broker_connection_retry will change meaning: not a problem here.)
        problems = [line for line in worker.log.splitlines()
                    if ("WARNING/" in line or "ERROR/" in line) and "DeprecationWarning" not in line]
        assert not problems, worker.log


def test_a_broker_that_may_evict_its_keys_is_warned_about_at_start(request, tmp_path):
    """A Redis with `maxmemory` set and a policy that evicts keys can drop a queue's list or `unacked` under memory
    pressure, messages and all. Celery starts without a word; the Swift worker warns, names the setting that keeps
    them, and serves. With `noeviction` (Redis's default policy) it says nothing."""
    evicting = {"maxmemory": "100mb", "maxmemory-policy": "allkeys-lru"}
    with on_own_redis(request, tmp_path, redis_config=evicting) as (server, client, worker, app):
        assert ("WARNING/MainProcess] The broker's Redis may evict keys when it is full (maxmemory 104857600 bytes, "
                "maxmemory-policy allkeys-lru): a queue's list or unacked evicted loses its messages. "
                "maxmemory-policy noeviction keeps them") in worker.log, worker.log
    kept = tmp_path / "kept"
    kept.mkdir()
    with on_own_redis(request, kept, redis_config={"maxmemory": "100mb"}) as (server, client, worker, app):
        assert "may evict" not in worker.log, worker.log


@pytest.mark.parametrize("kind,role,rule", [
    ("swift", "broker", "-@scripting"), ("swift", "result backend", "-@scripting"), ("swift", "broker", "-evalsha"),
    ("python", "broker", "-@scripting"),
], ids=["swift-broker", "swift-backend", "swift-evalsha", "python"])
def test_a_redis_that_refuses_scripts_stops_the_worker_at_start_with_a_line_that_says_so(request, tmp_path, kind, role,
                                                                                         rule):
    """A Redis user that may not run Lua scripts (an ACL without `@scripting`, or without `EVALSHA` alone). A Python
    worker stops at its first visibility sweep, whose lock redis-py releases with a script (`Unrecoverable error`,
    exit 1). The Swift worker fetches, acknowledges and stores with scripts: it does not start either, with a line
    that says why and what to change (exit 1), where before it retried its fetch without end or, with only the result
    backend's user refused, ran tasks and lost their results. The message waits in its queue, untouched, and runs
    once the user may run scripts."""
    from clientapp import make_app

    server = RedisProcess().start()
    admin = redis_lib.Redis.from_url(server.url(1))
    admin.acl_setuser("noscripts", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"], commands=["+@all", rule])
    limited = f"redis://noscripts:pw@127.0.0.1:{server.port}"
    broker, backend = server.url(1), server.url(0)
    if kind == "python":
        broker, backend = f"{limited}/1", f"{limited}/0"
    elif role == "broker":
        broker = f"{limited}/1"
    else:
        backend = f"{limited}/0"
    app = make_app(server.url(1), server.url(0))
    worker = None
    try:
        waiting = app.send_task("tasks.add", (2, 3), queue="noscripts")
        if kind == "swift":
            worker = remember(request, WorkerProcess(["--broker", broker, "--result-backend", backend, "-Q", "noscripts"],
                                                     tmp_path / "refused.log"))
            assert exit_status(worker, 30) == 1, worker.log
            command = "evalsha" if rule == "-evalsha" else "eval"
            assert critical_lines(worker.log) == [
                f"The {role}'s Redis refuses Lua scripts ({command.upper()}: NOPERM this user has no permissions to run "
                f"the '{command}' command). This worker fetches and acknowledges messages and stores results with "
                "scripts: let its Redis user run EVAL and EVALSHA (ACL +@scripting), or give them back their names. "
                "Aborting."], worker.log
        else:
            worker = remember(request, PythonWorker(broker, backend, tmp_path / "refused.log", "-Q", "noscripts"))
            assert exit_status(worker, 30) == 1, worker.log
            assert "Unrecoverable error: " in worker.log and "NoPermissionError" in worker.log, worker.log
        assert " ready." not in worker.log, worker.log
        assert admin.llen("noscripts") == 1 and admin.hlen("unacked") == 0
        admin.acl_setuser("noscripts", enabled=True, commands=["+@all"])
        if kind == "swift":
            worker = remember(request, WorkerProcess(["--broker", broker, "--result-backend", backend, "-Q", "noscripts"],
                                                     tmp_path / "swift.log"))
        else:
            worker = remember(request, PythonWorker(broker, backend, tmp_path / "python.log", "-Q", "noscripts"))
        worker.wait_ready()
        assert waiting.get(timeout=10) == 5
        assert admin.llen("noscripts") == 0
    finally:
        if worker:
            stop_both(worker)
        server.stop()


@pytest.mark.parametrize("kind, fault", [("swift", "database"), ("swift", "password"), ("python", "database")])
def test_a_result_backend_that_refuses_the_connection_stops_the_worker_at_start(request, tmp_path, kind, fault):
    """A result backend's URL that its Redis refuses: a database it does not have (`/4000`), or a wrong password. The
    Swift worker does not start, with a line that says why (exit 1), and the message waits in its queue and runs once
    the URL is mended. Before, it started, and retried each result's write for a quarter of an hour (holding a warm
    shutdown meanwhile) before losing it. A Python worker starts and takes the message; at its result, its prefork
    pool logs `Pool callback raised exception: …` and serves on (its solo pool stops there:
    `Unrecoverable error`). The message is gone, and its result with it."""
    from clientapp import make_app

    server = RedisProcess().start()
    admin = redis_lib.Redis.from_url(server.url(1))
    admin.acl_setuser("results", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"], commands=["+@all"])
    backend = server.url(4000) if fault == "database" else f"redis://results:wrong@127.0.0.1:{server.port}/0"
    app = make_app(server.url(1), server.url(0))
    worker = None
    try:
        waiting = app.send_task("tasks.add", (2, 3), queue="refused")
        if kind == "swift":
            worker = remember(request, WorkerProcess(["--broker", server.url(1), "--result-backend", backend, "-Q", "refused"],
                                                     tmp_path / "refused.log"))
            assert exit_status(worker, 30) == 1, worker.log
            refusal = ("SELECT on redis://127.0.0.1:{port}/4000 failed: ERR DB index is out of range" if fault == "database"
                       else "AUTH on redis://results:**@127.0.0.1:{port}/0 failed: WRONGPASS invalid username-password "
                       "pair or user is disabled.").format(port=server.port)
            assert critical_lines(worker.log) == [
                f"The result backend's Redis refuses this worker's connection ({refusal}). Check its URL's password and "
                "database number. Aborting."], worker.log
            assert " ready." not in worker.log, worker.log
            assert admin.llen("refused") == 1 and admin.hlen("unacked") == 0
            worker = remember(request, WorkerProcess(["--broker", server.url(1), "--result-backend", server.url(0), "-Q",
                                                      "refused"], tmp_path / "mended.log"))
            worker.wait_ready()
            assert waiting.get(timeout=10) == 5
        else:
            worker = remember(request, PythonWorker(server.url(1), backend, tmp_path / "refused.log", "-Q", "refused"))
            worker.wait_for_log("Pool callback raised exception: ")  # 5.3: ResponseError('DB index is out of range')
            assert "DB index is out of range" in worker.log, worker.log
            assert waiting.state == "PENDING"
        assert admin.llen("refused") == 0 and admin.hlen("unacked") == 0
    finally:
        if worker:
            stop_both(worker)
        server.stop()


@pytest.mark.parametrize("kind", ["swift", "python"])
def test_a_result_redis_refuses_costs_only_that_result(request, tmp_path, kind):
    """A result larger than Redis takes (`proto-max-bulk-len`, 1 MB here; a compressed message carries it in) is
    refused, and lost with an error line. The results written with it are not: a Python worker writes each result
    alone (it retries the refused one for about 20 s first, as a lost connection, and its solo pool waits
    meanwhile); the Swift worker writes a batch in one script and, when Redis refuses the batch, writes each alone.
    Before, the whole batch was lost. In place of the refused result, a Python worker stores FAILURE with its write's
    `ConnectionError`; the Swift worker stores FAILURE at once, with Celery's `BackendStoreError` and Redis's reason.
    Before, it stored nothing and `get()` waited for ever."""
    from celery.exceptions import BackendStoreError

    import redis as redis_lib

    with on_own_redis(request, tmp_path, kind, redis_config={"proto-max-bulk-len": "1mb"},
                      python_args=("-P", "solo")) as (server, client, worker, app):
        # Sent while the worker is stopped, so that it fetches them together and writes their results in batches.
        worker.proc.send_signal(signal.SIGSTOP)
        small = [app.send_task("tasks.add", (i, 1)) for i in range(10)]
        big = app.send_task("tasks.add", ("x" * 600_000, "y" * 600_000), compression="zlib")
        small += [app.send_task("tasks.add", (i, 1)) for i in range(10, 20)]
        worker.proc.send_signal(signal.SIGCONT)
        assert [result.get(timeout=60) for result in small] == list(range(1, 21)), worker.log
        if kind == "swift":
            worker.wait_for_log(f"Cannot store the result of {big.id}: EVALSHA: ERR Protocol error: invalid bulk length; "
                                "storing FAILURE (BackendStoreError) in its place")
            with pytest.raises(BackendStoreError, match="^failed to store result on the backend: .*invalid bulk length"):
                big.get(timeout=2)
            assert big.state == "FAILURE"
        else:
            with pytest.raises(redis_lib.exceptions.ConnectionError):
                big.get(timeout=30)
