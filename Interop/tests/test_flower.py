"""Flower (the Celery monitor) next to a Swift worker and a Python worker: it lists both workers, inspects the Swift
worker with remote control commands, and shows the Swift worker's tasks from its task events."""
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import slots
from redisproc import free_port

INTEROP = Path(__file__).resolve().parents[1]
SWIFT_QUEUE = "flower-swift"


class FlowerProcess:
    """`celery -A pytasks flower` (the Python worker's app) on a free loopback port, API without authentication."""

    def __init__(self, broker, backend, logfile: Path):
        self.port = free_port()
        self.logfile = logfile
        environment = {**os.environ, "CELERY_BROKER_URL": broker, "CELERY_RESULT_BACKEND": backend,
                       "FLOWER_UNAUTHENTICATED_API": "true"}
        celery = Path(sys.executable).with_name("celery")
        self.proc = subprocess.Popen(
            [str(celery), "-A", "pytasks", "flower", f"--port={self.port}", "--address=127.0.0.1"],
            cwd=INTEROP / "pyworker", env=environment, stdout=open(logfile, "wb"), stderr=subprocess.STDOUT)

    @property
    def log(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def get(self, path: str):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as response:
            body = response.read().decode()
            return json.loads(body) if response.headers.get_content_type() == "application/json" else body

    def poll(self, path: str, check, timeout: float = 15.0):
        """GETs `path` until `check(answer)` is true; returns that answer."""
        deadline = time.monotonic() + timeout
        answer = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"flower exited with {self.proc.returncode}:\n{self.log}")
            try:
                answer = self.get(path)
                if check(answer):
                    return answer
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"{path} did not satisfy the check within {timeout}s; last answer: {answer!r}\n{self.log}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def flower(redis_urls, tmp_path):
    process = FlowerProcess(redis_urls["broker"], redis_urls["backend"], tmp_path / "flower.log")
    yield process
    process.stop()


def test_flower_lists_the_swift_worker_and_its_tasks(start_worker, start_python_worker, flower, make_app):
    swift = start_worker("-E", "-l", "debug", "-n", "swiftflower@%h", "-Q", SWIFT_QUEUE, "-c", "2")
    start_python_worker("-E", "-n", "pyflower@%h")

    # Both workers' heartbeats reached Flower's event receiver, so it also sees the task events sent from now on.
    status = flower.poll("/api/workers?status=1",
                         lambda s: sum(1 for name, alive in s.items()
                                       if alive and name.split("@")[0] in ("swiftflower", "pyflower")) == 2)
    swift_node = next(name for name in status if name.startswith("swiftflower@"))
    python_node = next(name for name in status if name.startswith("pyflower@"))

    app = make_app()
    adds = [app.tasks["tasks.add"].apply_async((i, i), queue=SWIFT_QUEUE) for i in range(3)]
    failing = app.tasks["tasks.fail"].apply_async(("boom",), queue=SWIFT_QUEUE)
    on_python = app.tasks["tasks.whoami"].apply_async()  # the Python worker's queue, celery
    assert [r.get(timeout=10) for r in adds] == [0, 2, 4]
    # not raised: the failure is read as a value
    assert repr(failing.get(timeout=10, propagate=False)) == "ValueError('boom')"
    assert on_python.get(timeout=10) == "python"

    ids = {r.id for r in adds} | {failing.id, on_python.id}
    finished = {"SUCCESS", "FAILURE"}
    tasks = flower.poll("/api/tasks", lambda t: ids <= set(t) and all(t[i]["state"] in finished for i in ids))
    for result, expected in zip(adds, ["0", "2", "4"]):
        task = tasks[result.id]
        assert (task["name"], task["state"], task["worker"], task["result"]) == \
            ("tasks.add", "SUCCESS", swift_node, expected), task
        assert task["received"] and task["started"] and task["succeeded"] and task["runtime"] >= 0
    task = tasks[failing.id]
    assert (task["name"], task["state"], task["worker"]) == ("tasks.fail", "FAILURE", swift_node), task
    assert task["exception"] == "ValueError('boom')" and "ValueError: boom" in task["traceback"]
    assert (tasks[on_python.id]["name"], tasks[on_python.id]["worker"]) == ("tasks.whoami", python_node)
    info = flower.get(f"/api/task/info/{failing.id}")
    assert info["state"] == "FAILURE" and info["worker"] == swift_node
    swift_tasks = flower.get(f"/api/tasks?workername={swift_node}")
    assert set(swift_tasks) == {r.id for r in adds} | {failing.id}

    # What Flower learnt with its inspect commands (stats, registered, active_queues, conf). A refresh whose replies
    # come too late leaves Flower's answer from before the tasks ran (empty totals): poll until it has the new one.
    workers = flower.poll("/api/workers?refresh=1",
                          lambda w: {swift_node, python_node} <= set(w) and w[swift_node].get("stats", {}).get("total"))
    mine = workers[swift_node]
    assert mine["stats"]["pool"]["max-concurrency"] == slots(2) and mine["stats"]["sw_ident"] == "swift-celery"
    assert mine["stats"]["total"] == {"tasks.add": 3, "tasks.fail": 1}
    assert {"tasks.add", "tasks.fail", "seed_email"} <= set(mine["registered"])
    assert [q["name"] for q in mine["active_queues"]] == [SWIFT_QUEUE]
    assert mine["conf"]["worker_concurrency"] == 2 and "error" not in mine["conf"]  # the worker page's Config tab
    assert "tasks.whoami" in workers[python_node]["registered"]
    # One worker asked by name: Flower adds the task lists (active, reserved, scheduled, revoked)
    one = flower.get(f"/api/workers?workername={swift_node}&refresh=1")[swift_node]
    assert one["active"] == [] and one["reserved"] == [] and one["scheduled"] == [] and one["revoked"] == []

    # The worker's own page (Config tab included) and the workers table
    page = flower.get(f"/worker/{swift_node}")
    assert swift_node in page and "worker_prefetch_multiplier" in page
    listed = {w["hostname"]: w for w in flower.get("/workers?json=1")["data"]}
    assert listed[swift_node]["status"] is True and listed[swift_node]["sw_ident"] == "swift-celery"
    assert listed[swift_node]["task-succeeded"] == 3 and listed[swift_node]["task-failed"] == 1
    assert python_node in listed

    methods = set(re.findall(r"pidbox received method (\w+)", swift.log))
    assert {"stats", "registered", "active_queues", "conf", "active", "reserved", "scheduled", "revoked"} <= methods, \
        methods
