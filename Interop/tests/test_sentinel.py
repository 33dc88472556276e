"""Redis Sentinel: `sentinel://` URLs with the `master_name` transport option, as kombu's Sentinel transport takes
them. The Swift worker asks the Sentinels for the master, works there with Python's client, and after a failover
reaches the new master."""
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import kombu
import pytest
import redis as redis_lib
from celery import Celery

from conftest import WORKER_BINARY, WorkerProcess, answering, eventually
from test_events import Capture
from redisproc import RedisProcess, free_port

MASTER = "mymaster"


class SentinelProcess:
    """`redis-server --sentinel` watching one master, deciding a failover alone (quorum 1) after 1 s down."""

    def __init__(self, master_port: int, directory: Path, password: str | None = None):
        self.port = free_port()
        config = directory / "sentinel.conf"
        config.write_text(f"port {self.port}\nbind 127.0.0.1\ndir {directory}\n"
                          + (f"requirepass {password}\n" if password else "") +
                          f"sentinel monitor {MASTER} 127.0.0.1 {master_port} 1\n"
                          f"sentinel down-after-milliseconds {MASTER} 1000\nsentinel failover-timeout {MASTER} 5000\n")
        self.proc = subprocess.Popen([shutil.which("redis-server"), str(config), "--sentinel"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert eventually(self.answers, 10), "the Sentinel did not start"

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def master_port(self) -> int:
        host, port = redis_lib.Redis(port=self.port).execute_command("SENTINEL", "get-master-addr-by-name", MASTER)
        return int(port)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def sentinel_setup(tmp_path):
    master = RedisProcess().start()
    replica = RedisProcess(args=("--replicaof", "127.0.0.1", str(master.port))).start()
    assert eventually(lambda: redis_lib.Redis(port=replica.port).info("replication")["master_link_status"] == "up", 10)
    sentinel = SentinelProcess(master.port, tmp_path)
    yield master, replica, sentinel
    sentinel.stop()
    replica.stop()
    master.stop()


def sentinel_worker(sentinel, tmp_path, name, *extra, sentinel_password=None, ready=True):
    """A Swift worker on `sentinel://` URLs with the master's name (and the Sentinels' password, if any) in its
    config file, and a function that makes a Python client on the same URLs (each new client asks the Sentinel for
    the master)."""
    broker, backend = f"sentinel://127.0.0.1:{sentinel.port}/1", f"sentinel://127.0.0.1:{sentinel.port}/0"
    options = {"master_name": MASTER}
    if sentinel_password:
        options["sentinel_kwargs"] = {"password": sentinel_password}
    config = tmp_path / f"{name}.yaml"
    config.write_text(json.dumps({"broker_transport_options": options, "result_backend_transport_options": options}))
    worker = WorkerProcess(["--broker", broker, "--result-backend", backend, "--config", str(config), "-n", f"{name}@%h",
                            *extra],
                           tmp_path / f"{name}.log")
    if ready:
        worker.wait_ready()

    def client():
        app = Celery(f"{name}-client", broker=broker, backend=backend)
        app.conf.broker_transport_options = dict(options)
        app.conf.result_backend_transport_options = dict(options)
        return app

    return worker, client


def test_sentinels_that_ask_for_a_password(sentinel_setup, tmp_path):
    """`sentinel_kwargs: {password: …}` in the transport options is what the Sentinels ask for (the URL's credentials
    are the master's, as in kombu). Without it, the worker logs the Sentinel's refusal and tries again."""
    master, _, _ = sentinel_setup
    (tmp_path / "guarded").mkdir()
    guarded = SentinelProcess(master.port, tmp_path / "guarded", password="s3cret")
    refused, _ = sentinel_worker(guarded, tmp_path, "refused", ready=False)
    worker, client = sentinel_worker(guarded, tmp_path, "guarded", sentinel_password="s3cret")
    app = client()
    try:
        assert app.send_task("tasks.add", (2, 3)).get(timeout=10) == 5
        assert answering(app, "guarded@").startswith("guarded@")
        refused.wait_for_log("NOAUTH", count=2)  # logged, and tried again
        assert "no Sentinel gave the address of master 'mymaster'" in refused.log and refused.alive()
    finally:
        app.close()
        for process in (worker, refused):
            if process.alive():
                process.stop(9)
        guarded.stop()


def test_tasks_results_and_control_through_sentinel_and_after_a_failover(sentinel_setup, tmp_path):
    master, replica, sentinel = sentinel_setup
    worker, client = sentinel_worker(sentinel, tmp_path, "sentinel")
    app = client()
    try:
        assert ".> transport:   sentinel://:**@127.0.0.1:" in worker.stdout  # as kombu 5.7 shows it
        result = app.send_task("tasks.add", (2, 3))
        assert result.get(timeout=10) == 5
        assert redis_lib.Redis(port=master.port, db=0).exists(f"celery-task-meta-{result.id}")
        # kombu before 5.4 sends remote control under Sentinel to the literal '/{db}.celery.pidbox'; the worker
        # listens there too.
        replies = app.control.inspect(timeout=2, limit=1).ping()
        assert list(replies.values()) == [{"ok": "pong"}], kombu.VERSION
        if kombu.VERSION >= (5, 7):
            # kombu 5.7's sentinel_fanout_compat sends each request on both topics: it is answered once.
            compat = client()
            compat.conf.broker_transport_options = {"master_name": MASTER, "sentinel_fanout_compat": True}
            try:
                assert compat.control.broadcast("ping", reply=True, timeout=1.5) == [
                    {next(iter(replies)): {"ok": "pong"}}]
            finally:
                compat.close()

        master.stop()  # the master goes down: the Sentinel promotes the replica
        assert eventually(lambda: sentinel.master_port() == replica.port, 20), "no failover"
        deadline = time.monotonic() + 30
        while True:
            try:
                after = app.send_task("tasks.add", (20, 3))
                assert after.get(timeout=10) == 23
                break
            except (redis_lib.ConnectionError, OSError, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        assert redis_lib.Redis(port=replica.port, db=0).exists(f"celery-task-meta-{after.id}")
        worker.wait_for_log("Connection to broker lost")
        assert worker.log.count("Connected to sentinel://") >= 1 and worker.alive()
        assert worker.stop() == 0
    finally:
        app.close()
        if worker.alive():
            worker.stop(9)


class SentinelCapture(Capture):
    """A Python event receiver on the Sentinel broker (its PSUBSCRIBE is watched on the master itself)."""

    def __init__(self, app, master_port):
        super().__init__(app, seconds=15)
        self.master = redis_lib.Redis(port=master_port)

    def server(self):
        return self.master


def test_events_reach_python_receivers_under_sentinel(sentinel_setup, tmp_path):
    """kombu before 5.4 (Celery 5.3) listens for events under Sentinel on the literal '/{db}.celeryev' topic, kombu
    5.4+ on '/1.celeryev': the worker sends each event to both, and a kombu 5.7 receiver with
    sentinel_fanout_compat, which listens on both, keeps one copy."""
    master, _, sentinel = sentinel_setup
    worker, client = sentinel_worker(sentinel, tmp_path, "events", "-E")
    apps = [client()]
    if kombu.VERSION >= (5, 7):
        apps.append(client())
        apps[1].conf.broker_transport_options = {"master_name": MASTER, "sentinel_fanout_compat": True}
    captures = [SentinelCapture(app, master.port).start() for app in apps]
    try:
        result = apps[0].send_task("tasks.add", (2, 3))
        assert result.get(timeout=10) == 5
        for capture in captures:
            capture.wait_for(lambda events: any(e["type"] == "task-succeeded" for e in events))
            capture.wait_for(lambda events: any(e["type"] == "worker-heartbeat" for e in events))
        for capture in captures:
            events = capture.stop()
            mine = [e["type"] for e in events if e.get("uuid") == result.id]
            assert mine == ["task-received", "task-started", "task-succeeded"], (kombu.VERSION, mine)
        assert worker.stop() == 0
    finally:
        for app in apps:
            app.close()
        if worker.alive():
            worker.stop(9)


def test_a_planned_failover_moves_the_worker_to_the_new_master(sentinel_setup, tmp_path):
    """`SENTINEL FAILOVER` with the old master left running: when the Sentinel turns it into a replica (about 10 s
    later), it closes its clients' connections, and the worker reopens them through the Sentinels, at the new
    master, and serves there."""
    master, replica, sentinel = sentinel_setup
    worker, client = sentinel_worker(sentinel, tmp_path, "planned")

    first = client()
    try:
        assert first.send_task("tasks.add", (1, 1)).get(timeout=10) == 2
    finally:
        first.close()
    # A Sentinel refuses the failover (NOGOODSLAVE) until it has seen the replica's INFO (every 10 s at first).
    def failover_accepted():
        try:
            redis_lib.Redis(port=sentinel.port).execute_command("SENTINEL", "FAILOVER", MASTER)
            return True
        except redis_lib.ResponseError as error:
            assert "NOGOODSLAVE" in str(error), error
            return False

    assert eventually(failover_accepted, 30), "the Sentinel never accepted the failover"
    assert eventually(lambda: sentinel.master_port() == replica.port, 20), "no failover"
    # The old master keeps running until the Sentinel turns it into a replica (about 10 s later). As it turns, it
    # closes its clients' connections, this probe's too (CI saw a reset mid-handshake): that read is not yet an answer.
    def demoted():
        try:
            return redis_lib.Redis(port=master.port).info("replication")["role"] == "slave"
        except redis_lib.ConnectionError:
            return False

    assert eventually(demoted, 30)
    app = client()  # a fresh client asks the Sentinel: the new master
    try:
        result = app.send_task("tasks.add", (20, 3))
        assert result.get(timeout=20) == 23
        assert redis_lib.Redis(port=replica.port, db=0).exists(f"celery-task-meta-{result.id}")
        worker.wait_for_log("Connection to broker lost")
        assert answering(app, "planned@").startswith("planned@")  # remote control resubscribed at the new master
        assert worker.alive() and worker.stop() == 0
    finally:
        app.close()
        if worker.alive():
            worker.stop(9)


def test_the_swift_client_calls_through_sentinel_with_the_workers_config(sentinel_setup, tmp_path):
    """`call --config` takes `master_name` from the transport options, as the worker does, and sends and waits
    through the Sentinel."""
    _, _, sentinel = sentinel_setup
    worker, _ = sentinel_worker(sentinel, tmp_path, "called")
    try:
        broker, backend = f"sentinel://127.0.0.1:{sentinel.port}/1", f"sentinel://127.0.0.1:{sentinel.port}/0"
        done = subprocess.run([str(WORKER_BINARY), "call", "tasks.mul", "--args", "[6, 7]", "-b", broker,
                               "--result-backend", backend, "--config", str(tmp_path / "called.yaml"), "--wait"],
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split()[1] == "42"
        refused = subprocess.run([str(WORKER_BINARY), "call", "tasks.mul", "-b", broker], capture_output=True, text=True,
                                 timeout=30)
        assert refused.returncode != 0 and "needs the master's name" in refused.stderr
    finally:
        worker.stop()
