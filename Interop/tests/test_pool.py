"""The process pool (`--pool process`): hard time limits, terminate and crashes, as Python's prefork pool."""
import json
import os
import re
import signal
import subprocess
import time

import pytest

from conftest import WORKER_BINARY, answering, ends_apart, eventually, replies_by_node
from test_logging import printed_records


def children_of(pid: int) -> set:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    if int(stat.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.add(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return found


def running_children_of(pid: int) -> set:
    """The children of `pid` that run (not zombies, whose exit nobody has reaped yet)."""
    running = set()
    for child in children_of(pid):
        try:
            with open(f"/proc/{child}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] != "Z":
                    running.add(child)
        except OSError:
            pass
    return running


@pytest.mark.parametrize("kind", ["swift", "python"])
def test_idle_children_killed_from_outside_are_replaced_and_no_task_is_lost(start_worker, start_python_worker, make_app,
                                                                             kind):
    """Both idle children of the pool SIGKILLed from outside (an operator, the OOM killer). Python's prefork pool logs
    each (`Process 'ForkPoolWorker-1' pid:… exited with 'signal 9 (SIGKILL)'`) and starts another in its place within
    a second. The Swift worker's pool does the same; before, it noticed a dead idle child only when it gave it a job,
    which then failed with WorkerLostError, and the dead ones stayed zombies until then."""
    queue = f"killedidle{kind}"
    if kind == "swift":
        worker = start_worker("-P", "process", "-c", "2", "-Q", queue)
    else:
        worker = start_python_worker("-P", "prefork", "-c", "2", "-Q", queue)
    assert eventually(lambda: len(running_children_of(worker.proc.pid)) == 2, timeout=10)
    killed = running_children_of(worker.proc.pid)
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    for pid in killed:
        worker.wait_for_log(f"ERROR/MainProcess] Process 'ForkPoolWorker-", timeout=10)
        worker.wait_for_log(f" pid:{pid} exited with 'signal 9 (SIGKILL)'", timeout=10)
    assert eventually(lambda: not children_of(worker.proc.pid) & killed
                      and len(running_children_of(worker.proc.pid)) == 2, timeout=10), children_of(worker.proc.pid)
    app = make_app()
    results = [app.send_task("tasks.add", (i, i), queue=queue) for i in range(6)]
    assert [result.get(timeout=15) for result in results] == [2 * i for i in range(6)], worker.log
    assert "WorkerLostError" not in worker.log, worker.log


def test_hard_time_limit_kills_a_task_that_never_yields(start_worker, make_app, backend_redis):
    from billiard.exceptions import TimeLimitExceeded

    worker = start_worker("-n", "hard@%h", "-P", "process", "-c", "2", "--time-limit", "1")
    app = make_app()
    node = next(iter(app.control.inspect(timeout=1).ping()))
    pool = app.control.inspect(timeout=1).stats()[node]["pool"]
    before = set(pool["processes"])
    assert len(before) == 2 and before == children_of(worker.proc.pid)
    # As Python's prefork pool reports itself: (soft, hard) limits with 0 for none, no max-tasks-per-child.
    assert pool["timeouts"] == [0, 1] and pool["max-tasks-per-child"] == "N/A"
    assert pool["put-guarded-by-semaphore"] is False
    started = time.monotonic()
    spinning = app.tasks["tasks.spin"].delay(30)  # a busy loop: no cancellation can stop it
    with pytest.raises(TimeLimitExceeded) as raised:
        spinning.get(timeout=10)
    assert time.monotonic() - started < 5
    assert raised.value.args == (1.0,)
    stored = json.loads(backend_redis.get(f"celery-task-meta-{spinning.id}"))
    # What a Python prefork worker stores (see the Python run in the docs): traceback null, billiard's class.
    assert stored["status"] == "FAILURE" and stored["traceback"] is None
    assert stored["result"] == {"exc_type": "TimeLimitExceeded", "exc_message": [1.0],
                                "exc_module": "billiard.exceptions"}
    worker.wait_for_log(f"Hard time limit (1.0s) exceeded for tasks.spin[{spinning.id}]")
    worker.wait_for_log("exited with 'signal 9 (SIGKILL)'")
    # Capacity is back: a replacement child serves, two tasks run side by side.
    assert eventually(lambda: len(children_of(worker.proc.pid)) == 2, 10)
    after = set(app.control.inspect(timeout=1).stats()[node]["pool"]["processes"])
    assert len(after) == 2 and after != before
    pair = [app.tasks["tasks.sleep"].delay(0.5) for _ in range(2)]
    assert [r.get(timeout=10) for r in pair] == [0.5, 0.5]
    assert ends_apart(app, pair) < 0.4  # one after the other: 0.5 s apart
    # The replacement took over the killed child's count, as billiard's per-slot counts do: two entries, three jobs.
    writes = app.control.inspect(timeout=1).stats()[node]["pool"]["writes"]
    assert writes["total"] == 3 and len(writes["raw"].split(", ")) == 2


def test_stats_of_the_process_pool_as_python_prefork_reports_them(start_worker, start_python_worker, make_app):
    start_worker("-n", "swiftpool@%h", "-P", "process", "-c", "2", "-Q", "swiftonly")
    start_python_worker("-n", "pypool@%h", "-P", "prefork", "-c", "2", "-Q", "pyonly")
    app = make_app()
    answering(app, "pypool@")
    assert [app.tasks["tasks.add"].apply_async((i, i), queue="swiftonly").get(timeout=10) for i in range(5)] == \
        [0, 2, 4, 6, 8]
    stats = app.control.inspect(timeout=2).stats()
    swift = next(reply["pool"] for node, reply in stats.items() if node.startswith("swiftpool@"))
    python = next(reply["pool"] for node, reply in stats.items() if node.startswith("pypool@"))
    assert set(python) <= set(swift) and set(swift["writes"]) == set(python["writes"])
    for key in ("max-concurrency", "max-tasks-per-child", "put-guarded-by-semaphore", "timeouts"):
        assert swift[key] == python[key], key
    writes = swift["writes"]
    # Five jobs went to the children (one after another: the first child, free again, may take them all).
    assert writes["total"] == 5 and sum(int(n) for n in writes["raw"].split(", ")) == 5
    assert abs(sum(float(share) for share in writes["all"].split(", ")) - 1) < 0.02
    assert writes["strategy"] == python["writes"]["strategy"] and writes["inqueues"] == {"total": 2, "active": 0}


def test_time_limit_from_the_message_and_from_remote_control(start_worker, make_app):
    from billiard.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

    start_worker("-n", "msg@%h", "-P", "prefork", "-c", "1")
    app = make_app()
    with pytest.raises(TimeLimitExceeded) as raised:
        app.tasks["tasks.spin"].apply_async((30,), time_limit=1.5).get(timeout=10)
    assert raised.value.args == (1.5,)
    with pytest.raises(SoftTimeLimitExceeded):  # the soft limit cancels the task inside its child
        app.tasks["tasks.sleep"].apply_async((30,), soft_time_limit=0.5).get(timeout=10)
    node = next(iter(app.control.inspect(timeout=1).ping()))
    app.control.time_limit("tasks.spin", hard=0.5, reply=True, destination=[node])
    with pytest.raises(TimeLimitExceeded) as raised:
        app.tasks["tasks.spin"].delay(30).get(timeout=10)
    assert raised.value.args == (0.5,)


def test_tasks_behave_the_same_in_a_child(start_worker, make_app):
    start_worker("-n", "same@%h", "-P", "process", "-c", "2")
    app = make_app()
    assert app.tasks["tasks.add"].delay(2, 3).get(timeout=10) == 5
    with pytest.raises(ValueError, match="bad"):
        app.tasks["tasks.fail"].delay("bad").get(timeout=10)
    assert app.tasks["tasks.flaky"].delay(2).get(timeout=10) == 2  # retries decided in the child
    progress = app.tasks["tasks.progress"].delay(4)
    # One read for the state and its meta: the task may end between two.
    seen = []
    assert eventually(lambda: seen.append(app.backend.get_task_meta(progress.id)) or seen[-1]["status"] == "PROGRESS", 5)
    assert seen[-1]["result"]["total"] == 4 and progress.get(timeout=10) == 4


def test_worker_process_init_runs_in_each_child_before_its_tasks(start_worker, make_app):
    """The registry's `onWorkerProcessInit` receiver (Celery's `worker_process_init`) runs in each process-pool child
    as it starts: the demo's records its process's pid, and every task finds it set to its own child's pid, also in
    the children that replace those done after two tasks; each child that exits runs `onWorkerProcessShutdown`
    (Celery's `worker_process_shutdown`). Without children (the thread pool) neither runs."""
    worker = start_worker("-n", "processinit@%h", "-P", "process", "-c", "2", "--max-tasks-per-child", "2", "-l", "debug")
    app = make_app()
    results = [app.send_task("tasks.process_init").get(timeout=10) for _ in range(6)]
    assert all(r["initialized"] == r["pid"] != worker.proc.pid for r in results), results
    assert len({r["pid"] for r in results}) >= 3, results
    # Each child that was replaced ran the demo's worker_process_shutdown receiver (logged at DEBUG) as it exited.
    replaced = {r["pid"] for r in results} - children_of(worker.proc.pid)
    assert replaced and all(eventually(lambda pid=pid: f"worker_process_shutdown: pid {pid}" in worker.log) for pid in replaced)
    threads = start_worker("-n", "threadinit@%h", "-P", "threads", "-Q", "threadinit")
    result = app.send_task("tasks.process_init", queue="threadinit").get(timeout=10)
    assert result == {"initialized": None, "pid": threads.proc.pid}


def test_a_crashing_task_is_contained(start_worker, make_app):
    from celery.exceptions import WorkerLostError

    worker = start_worker("-n", "crash@%h", "-P", "process", "-c", "1")
    app = make_app()
    with pytest.raises(WorkerLostError, match="Worker exited prematurely: signal"):
        app.tasks["tasks.crash"].delay().get(timeout=10)
    assert worker.alive()
    assert app.tasks["tasks.add"].delay(1, 1).get(timeout=10) == 2


def test_reject_on_worker_lost_requeues_the_task_of_a_killed_child(start_worker, make_app, backend_redis, tmp_path):
    config = tmp_path / "celeryconfig.yaml"
    config.write_text("task_acks_late: true\ntask_reject_on_worker_lost: true\n")
    worker = start_worker("-n", "requeue@%h", "-P", "process", "-c", "1", "--config", str(config))
    app = make_app()
    spinning = app.tasks["tasks.spin"].delay(1.5)
    worker.wait_for_log(f"[{spinning.id}] received")
    time.sleep(0.3)
    (child,) = children_of(worker.proc.pid)
    os.kill(child, signal.SIGKILL)
    worker.wait_for_log(f"Task tasks.spin[{spinning.id}] requeued: its pool process was lost")
    # No FAILURE: the message went back to its queue, and the task runs again from the start.
    assert backend_redis.get(f"celery-task-meta-{spinning.id}") is None
    assert spinning.get(timeout=15) == 1.5
    assert worker.log.count(f"Task tasks.spin[{spinning.id}] received") == 2
    assert "WorkerLostError" in worker.log
    # Without acks-late the message was acknowledged when the task started: the loss is a FAILURE, as in Python.
    config.write_text("task_acks_late: false\ntask_reject_on_worker_lost: true\n")
    worker.stop()
    worker = start_worker("-n", "requeue2@%h", "-P", "process", "-c", "1", "--config", str(config))
    from celery.exceptions import WorkerLostError

    with pytest.raises(WorkerLostError):
        app.tasks["tasks.crash"].delay().get(timeout=10)


def test_retry_on_worker_lost_retries_until_max_retries_then_fails(start_worker, make_app, tmp_path):
    """Celery 5.7's retry_on_worker_lost, which takes precedence over reject_on_worker_lost."""
    from celery.exceptions import WorkerLostError

    config = tmp_path / "celeryconfig.yaml"
    config.write_text("task_acks_late: true\ntask_reject_on_worker_lost: true\ntask_retry_on_worker_lost: true\n")
    worker = start_worker("-n", "retrylost@%h", "-P", "process", "-c", "1", "--config", str(config))
    app = make_app()
    crashing = app.tasks["tasks.crash"].delay()  # default_retry_delay 0.1 s, max_retries 3
    with pytest.raises(WorkerLostError, match="Worker exited prematurely: signal"):
        crashing.get(timeout=20)
    assert worker.log.count(f"Task tasks.crash[{crashing.id}] received") == 4
    assert worker.log.count(f"Task tasks.crash[{crashing.id}] retry: Retry in 0.1s") == 3
    assert "requeued" not in worker.log
    assert app.tasks["tasks.add"].delay(1, 1).get(timeout=10) == 2


def test_max_tasks_per_child_replaces_the_child(start_worker, make_app):
    worker = start_worker("-n", "maxtasks@%h", "-P", "process", "-c", "1", "--max-tasks-per-child", "2")
    app = make_app()
    first = children_of(worker.proc.pid)
    assert len(first) == 1
    assert [app.tasks["tasks.add"].delay(i, i).get(timeout=10) for i in range(5)] == [0, 2, 4, 6, 8]
    assert worker.log.count("after 2 tasks (max tasks per child 2)") == 2
    now = children_of(worker.proc.pid)
    assert len(now) == 1 and now.isdisjoint(first)
    (stats,) = app.control.inspect(timeout=1).stats().values()
    assert stats["pool"]["max-tasks-per-child"] == 2 and stats["pool"]["processes"] == sorted(now)


def test_max_memory_per_child_replaces_a_child_past_the_limit(start_worker, make_app):
    # Every child holds more than 1 000 KiB, so each is replaced after its task; none holds 10 GiB.
    worker = start_worker("-n", "maxmem@%h", "-P", "process", "-c", "1", "--max-memory-per-child", "1000")
    app = make_app()
    assert [app.tasks["tasks.add"].delay(i, 1).get(timeout=10) for i in range(3)] == [1, 2, 3]
    assert worker.log.count("KiB resident (max memory per child 1000 KiB)") == 3
    roomy = start_worker("-n", "roomy@%h", "-P", "process", "-c", "1", "--max-memory-per-child", "10000000", "-Q", "roomy")
    first = children_of(roomy.proc.pid)
    assert [app.tasks["tasks.add"].apply_async((i, 1), queue="roomy").get(timeout=10) for i in range(3)] == [1, 2, 3]
    assert "max memory per child" not in roomy.log and children_of(roomy.proc.pid) == first


def test_terminate_kills_the_child(start_worker, make_app):
    from celery.exceptions import TaskRevokedError

    worker = start_worker("-n", "term@%h", "-P", "process", "-c", "1")
    app = make_app()
    spinning = app.tasks["tasks.spin"].delay(30)
    worker.wait_for_log(f"[{spinning.id}] received")
    time.sleep(0.3)
    app.control.revoke(spinning.id, terminate=True)
    with pytest.raises(TaskRevokedError):
        spinning.get(timeout=10)
    assert app.tasks["tasks.add"].delay(1, 2).get(timeout=10) == 3


def test_warm_shutdown_finishes_the_task_and_no_child_outlives_the_worker(start_worker, make_app):
    worker = start_worker("-n", "warm@%h", "-P", "process", "-c", "2")
    app = make_app()
    running = app.tasks["tasks.sleep"].delay(1.5)
    worker.wait_for_log(f"[{running.id}] received")
    children = children_of(worker.proc.pid)
    assert len(children) == 2
    assert worker.stop(signal.SIGTERM) == 0
    assert running.get(timeout=5) == 1.5
    assert eventually(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in children), 5)


def test_children_exit_when_the_worker_is_killed(start_worker, make_app):
    worker = start_worker("-n", "orphan@%h", "-P", "process", "-c", "2")
    app = make_app()
    spinning = app.tasks["tasks.spin"].delay(30)
    worker.wait_for_log(f"[{spinning.id}] received")
    time.sleep(0.3)
    children = children_of(worker.proc.pid)
    assert len(children) == 2
    worker.proc.kill()
    worker.proc.wait()
    # Even the child in the middle of a busy loop notices its worker is gone.
    assert eventually(lambda: not any(os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().split()[2] != "Z"
                                      for pid in children), 5)


def test_pool_grow_and_shrink_answer_as_python_prefork_and_threads_do(start_worker, start_python_worker, make_app):
    """`pool_grow` / `pool_shrink` as Python's prefork pool answers them, with children started and stopped and the
    prefetch window moved by n × multiplier; on the thread pool, Python's thread pool's error."""
    worker = start_worker("-n", "grow@%h", "-P", "process", "-c", "1")
    start_python_worker("-n", "pygrow@%h", "-P", "prefork", "-c", "1", "-Q", "pygrow")
    start_worker("-n", "thgrow@%h", "-P", "threads", "-c", "1", "-Q", "thgrow")
    start_python_worker("-n", "pythgrow@%h", "-P", "threads", "-c", "1", "-Q", "pythgrow")
    app = make_app()
    nodes = {prefix: answering(app, prefix + "@") for prefix in ("grow", "pygrow", "thgrow", "pythgrow")}
    names = tuple(nodes)

    def stats(prefix):
        return app.control.inspect(destination=[nodes[prefix]], timeout=2).stats()[nodes[prefix]]

    grown = replies_by_node(app.control.pool_grow(2, reply=True, timeout=2, destination=list(nodes.values())), *names)
    assert grown["grow"] == grown["pygrow"] == {"ok": "pool will grow"}
    assert grown["thgrow"] == grown["pythgrow"] == {"error": "AttributeError(\"'TaskPool' object has no attribute 'grow'\")"}
    assert eventually(lambda: len(children_of(worker.proc.pid)) == 3, 10)
    assert eventually(lambda: len(stats("pygrow")["pool"]["processes"]) == 3, 10)
    assert {prefix: stats(prefix)["prefetch_count"] for prefix in ("grow", "pygrow")} == {"grow": 12, "pygrow": 12}
    # Python reports the pool's size at start as its max-concurrency, whatever it grew to.
    assert stats("grow")["pool"]["max-concurrency"] == stats("pygrow")["pool"]["max-concurrency"] == 1
    assert set(stats("grow")["pool"]["processes"]) == children_of(worker.proc.pid)
    three = [app.tasks["tasks.sleep"].delay(0.5) for _ in range(3)]
    assert [r.get(timeout=10) for r in three] == [0.5, 0.5, 0.5]
    assert ends_apart(app, three) < 0.4  # side by side: on fewer children, some would end 0.5 s after the others

    shrunk = replies_by_node(app.control.pool_shrink(2, reply=True, timeout=2, destination=list(nodes.values())), *names)
    assert shrunk["grow"] == shrunk["pygrow"] == {"ok": "pool will shrink"}
    assert shrunk["thgrow"] == shrunk["pythgrow"] == {
        "error": "AttributeError(\"'TaskPool' object has no attribute 'shrink'\")"}
    assert eventually(lambda: len(children_of(worker.proc.pid)) == 1, 10)
    worker.wait_for_log("exited with 'exitcode 0' as the pool shrank", count=2)
    assert {prefix: stats(prefix)["prefetch_count"] for prefix in ("grow", "pygrow")} == {"grow": 4, "pygrow": 4}
    assert app.tasks["tasks.add"].delay(2, 3).get(timeout=10) == 5
    # Python would shrink to no process at all, and run nothing: the Swift worker keeps one.
    assert app.control.pool_shrink(1, reply=True, timeout=2, destination=[nodes["grow"]]) == [
        {nodes["grow"]: {"error": "ValueError(\"Can't shrink the pool below one process\")"}}]
    autoscale = replies_by_node(app.control.autoscale(3, 1, reply=True, timeout=2, destination=list(nodes.values())), *names)
    assert set(map(str, autoscale.values())) == {str({"error": "ValueError('Autoscale not enabled')"})}


def test_autoscale_grows_with_the_work_and_shrinks_back(start_worker, start_python_worker, make_app):
    """`--autoscale 3,1` as Python's: one child at start, more as tasks come (up to 3), back to the minimum once
    none came for AUTOSCALE_KEEPALIVE seconds; `inspect stats` and the `autoscale` command as a Python worker's."""
    keepalive = {"AUTOSCALE_KEEPALIVE": "1"}
    worker = start_worker("-n", "auto@%h", "-P", "process", "--autoscale", "3,1", env=keepalive)
    start_python_worker("-n", "pyauto@%h", "--autoscale", "3,1", "-Q", "pyauto", env=keepalive)
    assert ".> concurrency: {min=1, max=3} (swift processes)" in worker.stdout
    app = make_app()
    nodes = {prefix: answering(app, prefix + "@") for prefix in ("auto", "pyauto")}

    def stats(prefix):
        return app.control.inspect(destination=[nodes[prefix]], timeout=2).stats()[nodes[prefix]]

    for prefix in nodes:
        assert stats(prefix)["autoscaler"] == {"max": 3, "min": 1, "current": 1, "qty": 0}, prefix
        assert stats(prefix)["prefetch_count"] == 12, prefix
        assert list(stats(prefix)).index("autoscaler") == list(stats(prefix)).index("pool") + 1, prefix
    assert len(children_of(worker.proc.pid)) == 1

    three = [app.tasks["tasks.sleep"].delay(1) for _ in range(3)]
    worker.wait_for_log("Scaling up")
    assert eventually(lambda: len(children_of(worker.proc.pid)) == 3, 5)
    # Read while the tasks run: a second after the last one the pool may have shrunk already.
    assert stats("auto")["autoscaler"]["current"] == 3
    assert [r.get(timeout=10) for r in three] == [1, 1, 1]
    assert ends_apart(app, three) < 0.8  # on fewer children, some would end 1 s after the others
    # No task for the keepalive: back to the minimum. In one step, or, when a task still ran as the keepalive ran
    # out (seen in CI, under load), in two: down to the tasks still held, then down to the minimum (as Python's
    # autoscaler decides it too).
    assert eventually(lambda: len(children_of(worker.proc.pid)) == 1, 10)
    assert sum(int(count) for count in re.findall(r"Scaling down (\d+) processes\.", worker.log)) == 2, worker.log
    assert stats("auto")["autoscaler"] == {"max": 3, "min": 1, "current": 1, "qty": 0}

    destinations = list(nodes.values())
    updated = replies_by_node(app.control.autoscale(4, 2, reply=True, timeout=2, destination=destinations), "auto", "pyauto")
    assert updated == {"auto": {"ok": "autoscale now max=4 min=2"}, "pyauto": {"ok": "autoscale now max=4 min=2"}}
    for prefix in nodes:
        assert eventually(lambda: stats(prefix)["autoscaler"] == {"max": 4, "min": 2, "current": 2, "qty": 0}), prefix
        assert stats(prefix)["prefetch_count"] == 16, prefix
    assert len(children_of(worker.proc.pid)) == 2
    for method in ("pool_grow", "pool_shrink"):
        refused = replies_by_node(app.control.broadcast(method, arguments={"n": 1}, reply=True, timeout=2,
                                                        destination=destinations), "auto", "pyauto")
        expected = {"error": f"{method} is not supported with autoscale. Adjust autoscale range instead."}
        assert refused == {"auto": expected, "pyauto": expected}
    assert worker.stop() == 0
    assert children_of(worker.proc.pid) == set()


def test_pool_restart_replaces_every_child_when_restarts_are_enabled(start_worker, start_python_worker, make_app,
                                                                      tmp_path):
    """`pool_restart` as Python answers it: refused unless `worker_pool_restarts`; then every child is replaced
    (idle ones at once, a busy one after its task), and the thread pool has nothing to restart."""
    config = tmp_path / "restarts.yaml"
    config.write_text("worker_pool_restarts: true\n")
    refused = start_worker("-n", "norestart@%h", "-P", "process", "-c", "1", "-Q", "norestart")
    start_python_worker("-n", "pynorestart@%h", "-P", "prefork", "-c", "1", "-Q", "pynorestart")
    worker = start_worker("-n", "restart@%h", "-P", "process", "-c", "2", "--config", str(config))
    start_python_worker("-n", "pyrestart@%h", "-P", "prefork", "-c", "1", "-Q", "pyrestart", env={"POOL_RESTARTS": "1"})
    start_worker("-n", "threstart@%h", "-P", "threads", "-Q", "threstart", "--config", str(config))
    start_python_worker("-n", "pythrestart@%h", "-P", "threads", "-Q", "pythrestart", env={"POOL_RESTARTS": "1"})
    app = make_app()
    names = ("norestart", "pynorestart", "restart", "pyrestart", "threstart", "pythrestart")
    nodes = {prefix: answering(app, prefix + "@") for prefix in names}
    assert refused.alive()

    before = children_of(worker.proc.pid)
    assert len(before) == 2
    busy = app.tasks["tasks.sleep"].delay(5)  # still running after the broadcast, on a loaded machine too
    worker.wait_for_log(f"[{busy.id}] received")
    time.sleep(0.3)
    replies = replies_by_node(app.control.broadcast("pool_restart", arguments={"modules": None, "reload": False},
                                                    reply=True, timeout=2, destination=list(nodes.values())), *names)
    assert replies["norestart"] == replies["pynorestart"] == {"error": "ValueError('Pool restarts not enabled')"}
    assert replies["restart"] == replies["pyrestart"] == replies["threstart"] == replies["pythrestart"] == {
        "ok": "reload started"}
    # The idle child is replaced at once; the busy one still runs its task.
    worker.wait_for_log("as the pool restarted")
    assert len(before & children_of(worker.proc.pid)) == 1
    assert busy.get(timeout=15) == 5
    worker.wait_for_log("as the pool restarted", count=2)
    assert eventually(lambda: len(children_of(worker.proc.pid)) == 2 and not before & children_of(worker.proc.pid), 5)
    assert app.tasks["tasks.add"].delay(3, 4).get(timeout=10) == 7
    refused_reload = app.control.broadcast("pool_restart", arguments={"modules": ["tasks"], "reload": True}, reply=True,
                                           timeout=2, destination=[nodes["restart"]])
    assert "cannot reload modules" in refused_reload[0][nodes["restart"]]["error"]


def test_memsample_and_memdump(start_worker, make_app):
    """`memsample` answers the resident memory as Python's worker does with psutil installed (`humanbytes`), and
    `memdump` lists the samples since the last dump and the memory now, in Python's text."""
    import re

    worker = start_worker("-n", "mem@%h")
    app = make_app()
    node = next(iter(app.control.inspect(timeout=2, limit=1).ping()))
    size = re.compile(r"\d+(\.\d+)?(KB|MB)")
    samples = [app.control.broadcast("memsample", reply=True, timeout=2, destination=[node])[0][node] for _ in range(3)]
    assert all(size.fullmatch(sample) for sample in samples), samples
    statm = open(f"/proc/{worker.proc.pid}/statm").read().split()
    resident_mb = int(statm[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    assert 1 < resident_mb < 200 and samples[-1].endswith("MB")
    assert abs(float(samples[-1][:-2]) - resident_mb) < 5
    dump = app.control.broadcast("memdump", reply=True, timeout=2, destination=[node])[0][node]
    lines = dump.splitlines()
    assert lines[0] == "- rss (sample):" and lines[1:4] == [f"-    > {sample}," for sample in samples]
    assert re.fullmatch(r"- rss \(end\): \d+(\.\d+)?MB\.", lines[4]) and len(lines) == 5
    # The samples were cleared.
    assert app.control.broadcast("memdump", reply=True, timeout=2, destination=[node])[0][node].startswith("- rss (end):")


def test_acks_on_timeout_off_requeues_a_task_killed_at_its_hard_limit(start_worker, make_app, backend_redis, broker_redis,
                                                                      tmp_path):
    """With acks-late and `task_acks_on_failure_or_timeout: false`, as in Celery: a task killed at its hard time limit
    has its FAILURE stored and its message goes back to the queue, to run again (here: killed again)."""
    config = tmp_path / "celeryconfig.yaml"
    config.write_text("task_acks_late: true\ntask_acks_on_failure_or_timeout: false\n")
    worker = start_worker("-n", "timeoutrequeue@%h", "-P", "process", "-c", "1", "--time-limit", "0.5",
                          "--config", str(config))
    app = make_app()
    spinning = app.tasks["tasks.spin"].delay(30)
    worker.wait_for_log(f"Task tasks.spin[{spinning.id}] requeued after its hard time limit")
    assert json.loads(backend_redis.get(f"celery-task-meta-{spinning.id}"))["status"] == "FAILURE"
    # It came back and ran again.
    worker.wait_for_log(f"Task tasks.spin[{spinning.id}] received", count=2)
    worker.wait_for_log(f"Hard time limit (0.5s) exceeded for tasks.spin[{spinning.id}]", count=2)
    assert worker.stop() == 0
    # Stopped: the message waits in its queue (or in unacked for the visibility timeout), never lost.
    held = [raw for raw in broker_redis.lrange("celery", 0, -1)] + list(broker_redis.hvals("unacked"))
    assert any(spinning.id.encode() in raw for raw in held)


def test_a_child_logs_a_task_line_as_a_python_prefork_child_does(start_worker, start_python_worker, make_app):
    """A line a task logs in a process-pool child names the child as billiard names Python's: ForkPoolWorker-N. So
    do the lines of the task's outcome (`succeeded`, `raised unexpected`), and what it prints (worker_redirect_stdouts),
    logged before the task's "succeeded" line."""
    swift = start_worker("-P", "process", "-c", "1", "-Q", "swiftfork")
    python = start_python_worker("-P", "prefork", "-c", "1", "-Q", "pyfork")
    app = make_app()
    for worker, queue in ((swift, "swiftfork"), (python, "pyfork")):
        result = app.send_task("tasks.log", ("from a child",), queue=queue)
        assert result.get(timeout=15) == "from a child"
        worker.wait_for_log(f"INFO/ForkPoolWorker-1] tasks.log[{result.id}]: from a child")
        # The child logs the task's outcome, as billiard's children do; the main process logged its receipt.
        worker.wait_for_log(f"INFO/ForkPoolWorker-1] Task tasks.log[{result.id}] succeeded in ")
        assert f"INFO/MainProcess] Task tasks.log[{result.id}] received" in worker.log
        failed = app.send_task("tasks.fail", ("from a child",), queue=queue)
        with pytest.raises(ValueError):
            failed.get(timeout=15)
        worker.wait_for_log(f"ERROR/ForkPoolWorker-1] Task tasks.fail[{failed.id}] raised unexpected: ValueError('from a child')")
        printed = app.send_task("tasks.print", ("printed in a child",), queue=queue)
        assert printed.get(timeout=15) == "printed in a child"
        assert printed_records(worker, printed) == ["[WARNING/ForkPoolWorker-1] printed in a child"]


def test_a_log_file_per_child_with_percent_i(redis_urls, make_app, tmp_path):
    """`--logfile %n%I.log`: the main process writes `<name>.log`, each child `<name>-<n>.log`, as Celery's prefork
    children do; a task's own log lines land in the file of the child that ran it."""
    worker = subprocess.Popen(
        [str(WORKER_BINARY), "-P", "process", "-c", "2", "-n", "perchild@%h", "--logfile", str(tmp_path / "%n%I.log"),
         "--broker", redis_urls["broker"], "--result-backend", redis_urls["backend"]],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    main = tmp_path / "perchild.log"
    try:
        assert eventually(lambda: main.exists() and " ready." in main.read_text(), 15)
        app = make_app()
        results = [app.send_task("tasks.log", (f"line {i}",)) for i in range(6)]
        assert [r.get(timeout=10) for r in results] == [f"line {i}" for i in range(6)]
        children = [tmp_path / f"perchild-{index}.log" for index in (1, 2)]
        assert eventually(lambda: sum(path.read_text().count(": line ") for path in children if path.exists()) == 6)
        for index, path in enumerate(children, start=1):
            lines = path.read_text().splitlines() if path.exists() else []
            assert all(f"/ForkPoolWorker-{index}]" in line for line in lines), lines
        # The main process writes the outcome lines in the child's name (Celery's children write them to their own
        # files), and no other line of theirs.
        named = [line for line in main.read_text().splitlines() if "/ForkPoolWorker-" in line]
        assert len(named) == 6 and all(" succeeded in " in line for line in named), named
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(20) == 0

