"""Fixtures: a real redis-server, the Swift worker as a subprocess, and real Python Celery clients."""
import json
import os
import pty
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
import redis as redis_lib

INTEROP = Path(__file__).resolve().parents[1]
ROOT = INTEROP.parent
sys.path.insert(0, str(INTEROP))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from redisproc import RedisProcess  # noqa: E402
from celery.result import AsyncResult  # noqa: E402

# Celery's `AsyncResult.__del__` unsubscribes from the result's channel on the backend's pub/sub connection. Python's
# cyclic collector runs it at any allocation of the test's thread, also while that very connection is in the middle
# of a command: in CI, Celery 5.3's client then waited for good inside `subscribe` (a new `apply_async`), as it once
# did over TLS. Collected after a test's redis-server stopped, it retries for a minute. The tests' clients skip it
# (test_tls.py, test_broker_retry.py and test_flower.py no longer work around either): a channel stays subscribed
# until its app is closed, and results arriving there are ignored.
AsyncResult.__del__ = lambda self: None

WORKER_BINARY = Path(os.environ.get("SWIFT_CELERY_WORKER", ROOT / ".build" / "debug" / "swift-celery-worker"))
# The pool of every Swift worker a test starts without choosing one (`SWIFT_CELERY_POOL=solo` runs the suite against
# the solo pool); unset: the worker's default, threads.
WORKER_POOL = os.environ.get("SWIFT_CELERY_POOL")


def slots(concurrency: int) -> int:
    """How many tasks a Swift worker started with `-c concurrency` (and no pool of its own) runs at once: its
    `max-concurrency` in `inspect stats`. The solo pool runs one, as Python's does."""
    return 1 if WORKER_POOL == "solo" else concurrency


def eventually(condition, timeout=5.0):
    """Polls `condition` until it holds or `timeout` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def assert_detached(pid: int, workdir: Path, umask: str):
    """Checks a process that detached as Celery's `detached()` leaves one: the mask, a session of its own of which it
    is not the leader, the working directory, standard streams on /dev/null, and a command line without the detach."""
    assert f"Umask:\t{umask}" in Path(f"/proc/{pid}/status").read_text()
    assert os.getsid(pid) not in (os.getsid(0), pid)
    assert os.readlink(f"/proc/{pid}/cwd") == str(workdir)
    assert {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in (0, 1, 2)} == {"/dev/null"}
    arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert "-D" not in arguments and "--detach" not in arguments, arguments


def ends_apart(app, results) -> float:
    """Seconds between the first and the last of `results` to finish, by the `date_done` their worker stored. Tasks of
    one length that ran side by side end together; one after another, a length apart each. Unlike a clock read around
    `.get()`, it leaves out the time a client (on a loaded machine) takes to send and to read."""
    done = sorted(datetime.fromisoformat(app.backend.get_task_meta(r.id)["date_done"]) for r in results)
    return (done[-1] - done[0]).total_seconds()


def newest_client(server) -> int:
    """The id of the newest client of a Redis server (ids only grow), for ``new_subscribers``."""
    return max(int(client["id"]) for client in server.client_list())


def new_subscribers(server, last: int) -> int:
    """How many clients newer than id `last` hold a pattern subscription. Counting subscriptions instead (PUBSUB
    NUMPAT, or psub summed over clients) could miss a new one: another client on the same pattern, or an earlier
    test's subscriber leaving meanwhile, hides it."""
    return sum(int(client["id"]) > last and int(client.get("psub", 0)) > 0 for client in server.client_list())


def answering(app, prefix, timeout=10.0):
    """The name of the node starting with `prefix` once it answers a ping (a Python worker that just logged
    "ready" may not yet)."""
    found = []

    def answers():
        found[:] = [n for n in app.control.inspect(timeout=1).ping() or {} if n.startswith(prefix)]
        return bool(found)

    assert eventually(answers, timeout), f"no node {prefix}… answers a ping"
    return found[0]


def replies_by_node(replies, *prefixes):
    """A broadcast's replies by the node name prefix they came from."""
    found = {}
    for reply in replies:
        for node, answer in reply.items():
            found[next(p for p in prefixes if node.startswith(p + "@"))] = answer
    return found


def stored_outcome(app, result, timeout=15.0):
    """`result.get()` read as Python's backend reads a stored result (a GET and its decoding), every 50 ms until it
    is ready: the value, or the stored exception raised. Celery 5.3's `AsyncResult.get(timeout=…)` once waited past
    its timeout for the result of a chain into a chord that was stored; these reads cannot miss it."""
    from celery import states

    deadline = time.monotonic() + timeout
    while True:
        meta = app.backend.get_task_meta(result.id, cache=False)
        if meta["status"] in states.READY_STATES:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{result.id} is still {meta['status']} after {timeout} s")
        time.sleep(0.05)
    if meta["status"] != states.SUCCESS:
        raise meta["result"]
    return meta["result"]


@pytest.fixture(scope="session")
def redis_server():
    proc = RedisProcess().start()
    yield proc
    proc.stop()


@pytest.fixture
def redis_urls(redis_server):
    for db in (0, 1):
        redis_lib.Redis.from_url(redis_server.url(db)).flushdb()
    return {"broker": redis_server.url(1), "backend": redis_server.url(0), "server": redis_server}


@pytest.fixture
def broker_redis(redis_urls):
    return redis_lib.Redis.from_url(redis_urls["broker"])


@pytest.fixture
def backend_redis(redis_urls):
    return redis_lib.Redis.from_url(redis_urls["backend"])


class LoggedProcess:
    """A worker process whose log file the tests read (and a failed test's report shows)."""

    name = "worker"
    proc: subprocess.Popen
    logfile: Path

    @property
    def log(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def wait_for_log(self, text: str, timeout: float = 15.0, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log.count(text) >= count:
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode} before logging {text!r}:\n{self.log}")
            time.sleep(0.02)
        raise AssertionError(f"{self.name} did not log {text!r} within {timeout}s:\n{self.log}")

    def wait_ready(self, timeout: float = 15.0):
        self.wait_for_log(" ready.", timeout)
        return self

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout: float = 20.0) -> int:
        """Sends `sig` and returns the exit status; a process still running after `timeout` is killed and fails."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"{self.name} did not exit within {timeout}s after {sig!r}:\n{self.log}")


class WorkerProcess(LoggedProcess):
    """The Swift worker."""

    name = "Swift worker"

    def __init__(self, args, logfile: Path, env=None, terminal=False):
        """`terminal`: standard output and error on a pseudo-terminal (copied to the stdout file), as in a shell."""
        if not WORKER_BINARY.exists():
            raise RuntimeError(f"{WORKER_BINARY} is missing: run `swift build` first")
        self.logfile = logfile
        if WORKER_POOL and not any(arg in ("-P", "--pool") or arg.startswith("--pool=") for arg in args):
            args = [*args, "--pool", WORKER_POOL]
        self.args = [str(WORKER_BINARY), *args, "--logfile", str(logfile)]
        self.stdout_path = logfile.with_suffix(".stdout")
        output = open(self.stdout_path, "wb")
        if terminal:
            leader, follower = pty.openpty()
            self.proc = subprocess.Popen(self.args, stdout=follower, stderr=follower, env={**os.environ, **(env or {})})
            os.close(follower)
            threading.Thread(target=copy_until_closed, args=(leader, output), daemon=True).start()
        else:
            self.proc = subprocess.Popen(self.args, stdout=output, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""


def copy_until_closed(descriptor: int, output):
    """Copies what a pseudo-terminal's leader reads to `output` until the terminal's last writer is gone."""
    try:
        while chunk := os.read(descriptor, 65536):
            output.write(chunk)
            output.flush()
    except OSError:  # EIO: no writer is left
        pass
    os.close(descriptor)


def log_tail(text: str, lines: int = 150) -> str:
    kept = text.splitlines()[-lines:]
    return "\n".join(kept) if kept else "(empty)"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test's report ends with the logs of the workers it started: an intermittent failure in CI can then
    be told apart (a worker that never wrote, or a client that never saw what was written)."""
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    for index, worker in enumerate(getattr(item, "started_workers", [])):
        report.sections.append((f"{worker.name} {index} log ({worker.logfile.name})", log_tail(worker.log)))
        if isinstance(worker, WorkerProcess):
            report.sections.append((f"{worker.name} {index} stdout", log_tail(worker.stdout, 40)))


def remember(request, worker):
    """Records a worker the test started, for its report if it fails."""
    if not hasattr(request.node, "started_workers"):
        request.node.started_workers = []
    request.node.started_workers.append(worker)
    return worker


@pytest.fixture
def start_worker(redis_urls, tmp_path, request):
    workers = []

    def start(*extra, broker=None, backend=None, ready=True, env=None, terminal=False):
        args = ["--broker", broker or redis_urls["broker"], "--result-backend", backend or redis_urls["backend"],
                *extra]
        worker = remember(request, WorkerProcess(args, tmp_path / f"worker{len(workers)}.log", env=env,
                                                 terminal=terminal))
        workers.append(worker)
        return worker.wait_ready() if ready else worker

    yield start
    for worker in workers:
        if worker.alive():
            worker.stop(signal.SIGKILL)


class PythonWorker(LoggedProcess):
    """A real `celery worker` process running Interop/pyworker/pytasks.py."""

    name = "python worker"

    def __init__(self, broker, backend, logfile: Path, *args, env=None, mingle=False, gossip=False):
        self.logfile = logfile
        environment = {**os.environ, "CELERY_BROKER_URL": broker, "CELERY_RESULT_BACKEND": backend, **(env or {})}
        celery = Path(sys.executable).with_name("celery")
        self.proc = subprocess.Popen(
            [str(celery), "-A", "pytasks", "worker", "-l", "INFO", *([] if mingle else ["--without-mingle"]),
             *([] if gossip else ["--without-gossip"]), "--logfile", str(logfile), *args],
            cwd=INTEROP / "pyworker", env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            start_new_session=True)

    def kill_all(self):
        """SIGKILL the main process and its pool children, as a machine crash would."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


@pytest.fixture
def start_python_worker(redis_urls, tmp_path, request):
    workers = []

    def start(*args, env=None, ready=True, mingle=False, gossip=False):
        worker = remember(request, PythonWorker(redis_urls["broker"], redis_urls["backend"],
                                                tmp_path / f"pyworker{len(workers)}.log", *args, env=env, mingle=mingle,
                                                gossip=gossip))
        workers.append(worker)
        return worker.wait_ready() if ready else worker

    yield start
    for worker in workers:
        worker.kill_all()


@pytest.fixture
def start_configured(start_worker, start_python_worker, tmp_path):
    """Starts a Swift (`kind` "swift") or a Python worker given `settings` (Celery's names: a config file for the
    Swift one, CELERY_SETTINGS for pytasks), with `args` for both; killed when the test ends, as their fixtures do."""
    written = []

    def start(kind, settings, *args, ready=True):
        if kind == "swift":
            config = tmp_path / f"settings{len(written)}.json"
            config.write_text(json.dumps(settings))
            written.append(config)
            return start_worker("--config", str(config), *args, ready=ready)
        return start_python_worker(*args, env={"CELERY_SETTINGS": json.dumps(settings)}, ready=ready)

    return start


@pytest.fixture
def make_app(redis_urls):
    from clientapp import make_app as build

    apps = []

    def make(**options):
        app = build(redis_urls["broker"], redis_urls["backend"], **options)
        apps.append(app)
        return app

    yield make
    for app in apps:
        try:
            app.close()
        except Exception:
            pass


@pytest.fixture
def own_server(request, tmp_path):
    """A redis-server of the test's own, with a Swift worker and a Python worker on it, for a test that cuts every
    client's connection (which would break the connections other tests keep to the shared server). Yields
    `start(kind, settings, *args)`, as `start_configured`, and the server; the workers and the server stop with it."""
    server = RedisProcess().start()
    workers = []

    def start(kind, settings, *args):
        broker, backend = server.url(1), server.url(0)
        if kind == "swift":
            config = tmp_path / f"own{len(workers)}.json"
            config.write_text(json.dumps(settings))
            worker = WorkerProcess(["--broker", broker, "--result-backend", backend, "--config", str(config), *args],
                                   tmp_path / f"own{len(workers)}.log")
        else:
            worker = PythonWorker(broker, backend, tmp_path / f"ownpy{len(workers)}.log", *args,
                                  env={"CELERY_SETTINGS": json.dumps(settings)})
        workers.append(remember(request, worker))
        return worker.wait_ready()

    yield start, server
    for worker in workers:
        if isinstance(worker, PythonWorker):
            worker.kill_all()
        elif worker.alive():
            worker.proc.kill()
            worker.proc.wait()
    server.stop()

