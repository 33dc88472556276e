"""Remote control from Python's `app.control` and the `celery` CLI, answered by the Swift worker."""
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import WORKER_POOL, answering, eventually, replies_by_node, slots


def test_ping_registered_stats_queues(start_worker, make_app):
    start_worker("-n", "ctl@%h", "-Q", "celery,extra", "-c", "3")
    app = make_app()
    inspect = app.control.inspect(timeout=1, limit=1)
    replies = inspect.ping()
    node = next(iter(replies))
    assert node.startswith("ctl@") and replies[node] == {"ok": "pong"}
    assert "seed_email" in inspect.registered()[node] and "tasks.add" in inspect.registered()[node]
    stats = inspect.stats()[node]
    assert stats["pool"]["max-concurrency"] == slots(3) and stats["prefetch_count"] == 12
    assert [q["name"] for q in inspect.active_queues()[node]] == ["celery", "extra"]
    assert inspect.revoked()[node] == []
    assert "error" in app.control.broadcast("no_such_command", reply=True, timeout=1, limit=1)[0][node]


def test_stats_report_what_a_python_worker_reports(start_worker, start_python_worker, make_app):
    """`inspect stats` carries every key a Python worker with the same kind of pool reports (Flower and scripts read
    them), with the same broker details and a real `rusage`."""
    start_worker("-n", "swiftstats@%h", "-c", "2")
    python_pool = "solo" if WORKER_POOL == "solo" else "threads"
    start_python_worker("-n", "pystats@%h", "-P", python_pool, "-c", "2")
    app = make_app()
    answering(app, "pystats@")
    stats = app.control.inspect(timeout=2, limit=2).stats()
    swift = next(reply for node, reply in stats.items() if node.startswith("swiftstats@"))
    python = next(reply for node, reply in stats.items() if node.startswith("pystats@"))
    assert set(python) <= set(swift)
    for part in ("pool", "broker"):
        assert set(python[part]) <= set(swift[part]), (part, set(python[part]) - set(swift[part]))
    for key in ("hostname", "port", "virtual_host", "transport", "userid", "insist", "ssl", "transport_options"):
        assert swift["broker"][key] == python["broker"][key], key
    if python_pool == "solo":
        for key in ("max-concurrency", "max-tasks-per-child", "put-guarded-by-semaphore", "timeouts"):
            assert swift["pool"][key] == python["pool"][key], key
    else:
        assert swift["pool"]["max-concurrency"] == python["pool"]["max-concurrency"] == 2
    usage = swift["rusage"]
    assert set(usage) == set(python["rusage"])
    assert all(isinstance(value, (int, float)) for value in usage.values())
    # maxrss in KiB, as Python's resource module gives it: a worker holds megabytes, not bytes or pages.
    assert 1_000 < usage["maxrss"] < 1_000_000 and usage["utime"] > 0 and usage["nvcsw"] > 0


def test_active_reserved_scheduled_and_query_task(start_worker, make_app):
    worker = start_worker("-n", "busy@%h", "-c", "1")
    app = make_app()
    running = app.tasks["tasks.sleep"].delay(6)
    waiting = app.tasks["tasks.sleep"].delay(0.1)
    later = app.tasks["tasks.add"].apply_async((1, 2), countdown=30)
    for result in (running, waiting, later):
        worker.wait_for_log(f"[{result.id}] received")
    inspect = app.control.inspect(timeout=5, limit=1)
    node = next(iter(inspect.ping()))
    active = inspect.active()[node]
    assert [t["id"] for t in active] == [running.id] and active[0]["name"] == "tasks.sleep" and active[0]["args"] == [6]
    assert [t["id"] for t in inspect.reserved()[node]] == [waiting.id]
    scheduled = inspect.scheduled()[node]
    assert [s["request"]["id"] for s in scheduled] == [later.id] and scheduled[0]["eta"]
    states = inspect.query_task([running.id, waiting.id, later.id])[node]
    assert states[running.id][0] == "active" and states[waiting.id][0] == "reserved"
    assert states[later.id][0] == "scheduled"
    assert running.get(timeout=15) == 6


def test_destination_and_pattern(start_worker, start_python_worker, make_app):
    start_worker("-n", "swiftnode@%h")
    start_python_worker("-n", "pynode@%h")
    app = make_app()
    answering(app, "pynode@")  # a Python worker that just logged "ready" may not answer yet
    everyone = app.control.inspect(timeout=1, limit=2).ping()
    assert {name.split("@")[0] for name in everyone} == {"swiftnode", "pynode"}
    swift = next(name for name in everyone if name.startswith("swiftnode@"))
    only = app.control.inspect(destination=[swift], timeout=1).ping()
    assert list(only) == [swift]
    assert app.control.inspect(destination=["nobody@x"], timeout=1).ping() is None
    matched = app.control.inspect(pattern="swift*", matcher="glob", timeout=1).ping()
    assert list(matched) == [swift]


def test_celery_status_cli_lists_both_workers(start_worker, start_python_worker, make_app, redis_urls):
    start_worker("-n", "swiftcli@%h")
    start_python_worker("-n", "pycli@%h")
    answering(make_app(), "pycli@")
    celery = Path(sys.executable).with_name("celery")
    proc = subprocess.run([str(celery), "-b", redis_urls["broker"], "status"], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "swiftcli@" in proc.stdout and "pycli@" in proc.stdout and "2 nodes online." in proc.stdout


def test_control_with_msgpack_serializer(start_worker, make_app):
    start_worker("-n", "mp@%h")
    app = make_app(task_serializer="msgpack")
    replies = app.control.inspect(timeout=1, limit=1).ping()
    assert list(replies.values()) == [{"ok": "pong"}]


def test_revoke_reserved_unknown_and_terminate(start_worker, make_app, backend_redis):
    import json

    from celery.exceptions import TaskRevokedError

    worker = start_worker("-n", "rev@%h", "-c", "1")
    app = make_app()
    running = app.tasks["tasks.sleep"].delay(10)
    queued = app.tasks["tasks.add"].delay(1, 1)
    worker.wait_for_log(f"[{queued.id}] received")
    reply = app.control.revoke(queued.id, reply=True, timeout=1, limit=1)
    assert list(reply[0].values()) == [{"ok": f"tasks {{'{queued.id}'}} flagged as revoked"}]
    with pytest.raises(TaskRevokedError):
        queued.get(timeout=5)
    app.control.revoke("never-sent-id", reply=True, timeout=1, limit=1)
    assert json.loads(backend_redis.get("celery-task-meta-never-sent-id"))["status"] == "REVOKED"
    node = next(iter(app.control.inspect(timeout=1, limit=1).ping()))
    assert set(app.control.inspect(timeout=1, limit=1).revoked()[node]) == {queued.id, "never-sent-id"}
    reply = app.control.revoke(running.id, terminate=True, reply=True, timeout=1, limit=1)
    assert list(reply[0].values()) == [{"ok": f"terminate: {running.id}"}]
    with pytest.raises(TaskRevokedError):
        running.get(timeout=5)
    stored = json.loads(backend_redis.get(f"celery-task-meta-{running.id}"))
    assert stored["result"]["exc_message"] == ["terminated"]
    worker.wait_for_log(f"Discarding revoked task: tasks.add[{queued.id}]")
    assert f"Task tasks.add[{queued.id}] succeeded" not in worker.log
    assert app.tasks["tasks.add"].delay(2, 2).get(timeout=10) == 4  # still serving


@pytest.mark.parametrize("held", ["reserved", "eta"])
def test_a_revoked_task_gives_its_prefetch_slot_back_once(start_worker, make_app, broker_redis, held):
    """A task revoked while it waits for a free slot (`reserved`), or for its ETA (which it waits for without a slot,
    as in Celery), is discarded when its turn comes; the worker then holds no more messages than its prefetch window.
    It gave its slot back twice (or, waiting for its ETA, one it did not hold), and each such revoke let the worker
    hold one more message from then on."""
    import datetime

    worker = start_worker("-c", "1", "--prefetch-multiplier", "2", "--acks-late")
    window = 2  # -c 1 (or the solo pool) times the multiplier
    app = make_app()
    if held == "reserved":
        first = app.tasks["tasks.sleep"].delay(1)
        revoked = app.tasks["tasks.add"].delay(1, 1)
        worker.wait_for_log(f"[{revoked.id}] received")
        app.control.revoke(revoked.id)
        assert first.get(timeout=10) == 1
    else:
        eta = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=1)
        revoked = app.tasks["tasks.add"].apply_async((1, 1), eta=eta)
        worker.wait_for_log(f"[{revoked.id}] received")
        app.control.revoke(revoked.id)
    worker.wait_for_log(f"Discarding revoked task: tasks.add[{revoked.id}]")
    # One task runs for a while, acknowledged late: with it, the worker holds a window's worth of messages.
    running = app.tasks["tasks.sleep"].delay(2)
    waiting = [app.tasks["tasks.add"].delay(i, i) for i in range(6)]
    worker.wait_for_log(f"Task tasks.sleep[{running.id}] received")
    assert eventually(lambda: broker_redis.hlen("unacked") == window and broker_redis.llen("celery") == 6 - (window - 1))
    time.sleep(0.5)  # a worker that gives back too many fetches more by now
    assert broker_redis.hlen("unacked") == window
    assert [result.get(timeout=10) for result in waiting] == [2 * i for i in range(6)]


def test_registered_items_report_terminate_and_the_dump_aliases(start_worker, start_python_worker, make_app):
    """Answered as a Python worker answers them: `registered` with task info items (compared with a Python worker's
    reply for the same task), `report`, the `terminate` command, and the old `dump_*` names."""
    from celery.exceptions import TaskRevokedError

    start_worker("-n", "items@%h", "-c", "1")
    start_python_worker("-n", "pyitems@%h", "-P", "solo", "-Q", "pyonly")
    app = make_app()
    answering(app, "pyitems@")
    inspect = app.control.inspect(timeout=2, limit=2)

    def add_entries(reply):
        """The `tasks.add` entry of each worker's reply, by worker kind."""
        return {("swift" if node.startswith("items@") else "python"): next(e for e in tasks if e.startswith("tasks.add"))
                for node, tasks in reply.items()}

    assert add_entries(inspect.registered()) == {"swift": "tasks.add", "python": "tasks.add"}
    app.control.rate_limit("tasks.add", "10/s", reply=True, timeout=2, limit=2)
    assert add_entries(inspect.registered()) == {"swift": "tasks.add [rate_limit=10/s]",
                                                 "python": "tasks.add [rate_limit=10/s]"}
    items = ("max_retries", "acks_late", "ignore_result", "default_retry_delay", "no_such_attribute", "rate_limit")
    entries = add_entries(inspect.registered(*items))
    assert entries["swift"] == entries["python"] == \
        "tasks.add [max_retries=3 acks_late=False ignore_result=False default_retry_delay=180 rate_limit=10/s]"
    node = next(n for n in inspect.ping() if n.startswith("items@"))
    assert app.control.broadcast("dump_tasks", reply=True, timeout=2, destination=[node])[0][node] == \
        inspect.registered()[node]
    assert app.control.broadcast("dump_revoked", reply=True, timeout=2, destination=[node])[0][node] == []

    reports = inspect.report()
    mine = reports[node]["ok"]
    python = next(reply["ok"] for n, reply in reports.items() if n != node)
    assert mine.startswith("\nsoftware -> swift-celery-worker:") and "task_acks_late: False" in mine
    # Python's layout: software and platform on two lines each, then loader and settings, then the settings table.
    labels = [line[:12] for line in mine.splitlines()[:8]]
    assert labels == [line[:12] for line in python.splitlines()[:8]]
    assert mine.splitlines()[7] == "" and ": " in mine.splitlines()[8]
    assert mine.splitlines()[6] == python.splitlines()[6]  # settings -> transport:redis results:<the setting>

    running = app.tasks["tasks.sleep"].delay(10)
    assert eventually(lambda: [t["id"] for t in inspect.active().get(node, [])] == [running.id])
    reply = app.control.broadcast("terminate", arguments={"signal": "SIGKILL", "task_id": running.id}, reply=True,
                                  timeout=2, destination=[node])
    assert reply == [{node: {"ok": f"terminate: {running.id}"}}]
    with pytest.raises(TaskRevokedError):
        running.get(timeout=5)


def test_enable_disable_events_and_remote_shutdown(start_worker, make_app):
    worker = start_worker("-n", "sd@%h")
    app = make_app()
    replies = app.control.enable_events(reply=True, timeout=1, limit=1)
    assert list(replies[0].values()) == [{"ok": "task events enabled"}]
    replies = app.control.disable_events(reply=True, timeout=1, limit=1)
    assert list(replies[0].values()) == [{"ok": "task events disabled"}]
    app.control.shutdown(destination=[next(iter(app.control.inspect(timeout=1, limit=1).ping()))])
    assert worker.proc.wait(15) == 0
    assert "Got shutdown from remote" in worker.log


def test_add_and_cancel_consumer(start_worker, make_app, broker_redis):
    worker = start_worker("-n", "cons@%h")
    app = make_app()
    node = next(iter(app.control.inspect(timeout=1, limit=1).ping()))
    early = app.tasks["tasks.add"].apply_async((1, 2), queue="late")
    time.sleep(1)
    assert broker_redis.llen("late") == 1  # nobody consumes "late" yet
    reply = app.control.add_consumer("late", reply=True, destination=[node])
    assert reply == [{node: {"ok": "add consumer late"}}]
    assert early.get(timeout=10) == 3
    assert [q["name"] for q in app.control.inspect(timeout=1, limit=1).active_queues()[node]] == ["celery", "late"]
    reply = app.control.cancel_consumer("late", reply=True, destination=[node])
    assert reply == [{node: {"ok": "no longer consuming from late"}}]
    assert [q["name"] for q in app.control.inspect(timeout=1, limit=1).active_queues()[node]] == ["celery"]
    # The pop in flight when the cancel came still names "late": what it takes goes back, as kombu requeues
    # "undeliverable" messages.
    app.tasks["tasks.add"].apply_async((2, 2), queue="late")
    assert app.tasks["tasks.add"].delay(3, 3).get(timeout=10) == 6  # still serving "celery"
    time.sleep(1)
    assert broker_redis.llen("late") == 1
    assert "Cancelled consuming from queue late" in worker.log


def test_rate_limit(start_worker, make_app, backend_redis):
    import json

    from celery.utils.time import maybe_iso8601

    worker = start_worker("-n", "rate@%h", "-c", "4")
    app = make_app()
    node = next(iter(app.control.inspect(timeout=1, limit=1).ping()))
    reply = app.control.rate_limit("tasks.add", "2/s", reply=True, destination=[node])
    assert reply == [{node: {"ok": "new rate limit set successfully"}}]
    results = [app.tasks["tasks.add"].delay(i, i) for i in range(5)]
    assert [r.get(timeout=15) for r in results] == [0, 2, 4, 6, 8]
    done = sorted(maybe_iso8601(json.loads(backend_redis.get(f"celery-task-meta-{r.id}"))["date_done"])
                  for r in results)
    assert (done[-1] - done[0]).total_seconds() >= 1.8  # 4 gaps of 0.5 s at least

    bad = app.control.rate_limit("tasks.add", "ten/s", reply=True, destination=[node])
    assert bad[0][node]["error"].startswith("Invalid rate limit string")
    unknown = app.control.rate_limit("tasks.nope", "1/s", reply=True, destination=[node])
    assert unknown == [{node: {"error": "unknown task"}}]
    # A name that is not a string is logged as Python's `%s` writes it.
    named = app.control.broadcast("rate_limit", arguments={"task_name": 5, "rate_limit": "1/s"}, reply=True,
                                  destination=[node])
    assert named == [{node: {"error": "unknown task"}}]
    assert "Rate limit attempt for unknown task tasks.nope" in worker.log
    assert "Rate limit attempt for unknown task 5" in worker.log
    off = app.control.rate_limit("tasks.add", 0, reply=True, destination=[node])
    assert off == [{node: {"ok": "rate limit disabled successfully"}}]
    results = [app.tasks["tasks.add"].delay(i, 1) for i in range(5)]
    assert [r.get(timeout=15) for r in results] == [1, 2, 3, 4, 5]
    done = sorted(maybe_iso8601(json.loads(backend_redis.get(f"celery-task-meta-{r.id}"))["date_done"])
                  for r in results)
    assert (done[-1] - done[0]).total_seconds() < 1.5


def test_time_limit_command(start_worker, make_app):
    from billiard.exceptions import SoftTimeLimitExceeded

    start_worker("-n", "tl@%h")
    app = make_app()
    node = next(iter(app.control.inspect(timeout=1, limit=1).ping()))
    reply = app.control.time_limit("tasks.sleep", soft=0.5, reply=True, destination=[node])
    assert reply == [{node: {"ok": "time limits set successfully"}}]
    with pytest.raises(SoftTimeLimitExceeded):
        app.tasks["tasks.sleep"].delay(5).get(timeout=10)
    unknown = app.control.time_limit("tasks.nope", soft=1, reply=True, destination=[node])
    assert unknown == [{node: {"error": "unknown task"}}]


def test_inspect_conf(start_worker, start_python_worker, make_app, redis_urls):
    """`conf` as Celery 5.7 answers it; the broker and the backend with their passwords masked as its `conf` masks
    them (side by side with a Python 5.7 worker given the same backend setting)."""
    import celery

    backend = redis_urls["backend"].replace("redis://", "redis://:s3cret@", 1) + "?socket_timeout=5"
    start_worker("-n", "conf@%h", "--acks-late", "--visibility-timeout", "120", backend=backend)
    app = make_app()
    node = answering(app, "conf@")
    conf = app.control.inspect(timeout=1, destination=[node]).conf()
    masked = redis_urls["broker"].replace("redis://", "redis://:********@", 1)
    assert conf[node]["broker_url"] == masked
    assert conf[node]["result_backend"] == backend.replace(":s3cret@", ":********@")
    # A password where Redis asks for none is no refusal (Redis answers `AUTH <password>` with an error, and the
    # connection is the default user's): results are stored, as a Python worker given it stores them.
    assert app.send_task("tasks.add", (2, 3)).get(timeout=10) == 5
    if celery.VERSION >= (5, 7):
        start_python_worker("-n", "pyconf@%h", env={"CELERY_RESULT_BACKEND": backend})
        python = answering(app, "pyconf@")
        theirs = app.control.inspect(timeout=2, destination=[python]).conf()[python]
        assert (theirs["broker_url"], theirs["result_backend"]) == (conf[node]["broker_url"], conf[node]["result_backend"])
    assert conf[node]["task_acks_late"] is True
    assert conf[node]["broker_transport_options"] == {"visibility_timeout": 120}
    assert conf[node]["accept_content"] == ["json", "msgpack"]
    celery = Path(sys.executable).with_name("celery")
    proc = subprocess.run([str(celery), "-b", redis_urls["broker"], "inspect", "conf", "-d", node],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "task_acks_late" in proc.stdout and "1 node online." in proc.stdout


def test_mingle_learns_revoked_ids_at_start_and_shares_its_own(start_worker, start_python_worker, make_app):
    """Celery's mingle: a Swift worker starting next to a Python worker learns the ids it holds revoked (a task
    revoked while the Swift worker was down is not run), and a Python worker starting with mingle learns the Swift
    worker's. A worker alone does not wait for replies; `--without-mingle` skips it."""
    from celery.exceptions import TaskRevokedError

    alone = start_worker("-n", "alone@%h")
    assert "mingle: all alone" in alone.log
    assert alone.stop() == 0
    skipped = start_worker("-n", "skipped@%h", "--without-mingle")
    assert "mingle" not in skipped.log
    assert skipped.stop() == 0

    start_python_worker("-n", "pymingle@%h", "-P", "solo", "-Q", "pyonly")
    app = make_app()
    answering(app, "pymingle@")  # it answers the revoke, and then the Swift worker's hello
    assert len(app.control.revoke("revoked-while-down", reply=True, timeout=2, limit=1)) == 1
    swift = start_worker("-n", "swmingle@%h")
    swift.wait_for_log("mingle: sync with 1 nodes")
    swift.wait_for_log("mingle: sync complete")
    node = answering(app, "swmingle@")
    assert app.control.inspect(destination=[node], timeout=2).revoked()[node] == ["revoked-while-down"]
    with pytest.raises(TaskRevokedError):
        app.tasks["tasks.add"].apply_async((1, 2), task_id="revoked-while-down").get(timeout=10)
    swift.wait_for_log("Discarding revoked task: tasks.add[revoked-while-down]")

    assert app.control.revoke("revoked-on-swift", reply=True, timeout=2, destination=[node]) == [
        {node: {"ok": "tasks {'revoked-on-swift'} flagged as revoked"}}]
    late = start_python_worker("-n", "pylate@%h", "-P", "solo", "-Q", "pylate", mingle=True)
    late.wait_for_log("mingle: sync with 2 nodes")
    swift.wait_for_log("sync with pylate@")  # the Swift worker answered its hello
    python = answering(app, "pylate@")
    assert set(app.control.inspect(destination=[python], timeout=2).revoked()[python]) == {
        "revoked-while-down", "revoked-on-swift"}


def test_revoke_by_stamped_headers_as_a_python_worker_answers_it(start_worker, start_python_worker, make_app):
    """Celery's `revoke_by_stamped_headers`, answered as a Python prefork worker answers it: a task stamped with a
    revoked value is not run (REVOKED stored, logged with the header), and with `terminate` a running one is stopped."""
    from celery.exceptions import TaskRevokedError

    swift = start_worker("-n", "stamps@%h", "-c", "2")
    start_python_worker("-n", "pystamps@%h", "-P", "prefork", "-c", "1", "-Q", "pystamps")
    app = make_app()
    nodes = {prefix: answering(app, prefix + "@") for prefix in ("stamps", "pystamps")}

    def both(arguments):
        return replies_by_node(app.control.broadcast("revoke_by_stamped_headers", arguments=arguments, reply=True,
                                                     timeout=2, destination=list(nodes.values())), "stamps", "pystamps")

    def stamped(name, args, queue, **stamps):
        signature = app.signature(name, args).set(queue=queue)
        signature.stamp(**stamps)
        return signature

    flagged = both({"headers": {"mid": "abc"}})
    assert flagged["stamps"] == flagged["pystamps"] == {"ok": "headers {'mid': 'abc'} flagged as revoked, but not terminated"}
    listed = both({"headers": ["k=v"]})
    assert listed["stamps"] == listed["pystamps"] == {"ok": "headers {'k': 'v'} flagged as revoked, but not terminated"}
    for queue in ("celery", "pystamps"):
        with pytest.raises(TaskRevokedError):
            stamped("tasks.add", (1, 2), queue, mid=["x", "abc"]).apply_async().get(timeout=10)
    swift.wait_for_log("(revoked by header: {'mid': 'abc'})")
    assert stamped("tasks.add", (2, 2), "celery", mid="other").apply_async().get(timeout=10) == 4

    running = [stamped("tasks.sleep", (10,), queue, mid="run").apply_async() for queue in ("celery", "pystamps")]
    swift.wait_for_log(f"[{running[0].id}] received")
    assert eventually(lambda: any(app.control.inspect(destination=[nodes["pystamps"]], timeout=1).active().values()))
    time.sleep(0.5)
    stopped = both({"headers": {"mid": "run"}, "terminate": True, "signal": None})
    assert stopped["stamps"] == stopped["pystamps"] == {"ok": "headers defaultdict(<class 'set'>, {'mid': {'run'}}) revoked"}
    for result in running:
        with pytest.raises(TaskRevokedError, match="terminated"):
            result.get(timeout=10)
    untouched = both({"headers": {"mid": "none"}, "terminate": True, "signal": None})
    assert untouched["stamps"] == untouched["pystamps"] == {"ok": "headers {'mid': 'none'} were not terminated"}


def test_control_and_event_exchanges_keep_apps_apart(start_configured, make_app):
    """`control_exchange` and `event_exchange`, as apps sharing one Redis database set them: a Swift and a Python
    worker given the same answer remote control, mingle and send events only on those exchanges. A client of the
    default exchanges reaches neither."""
    from test_events import Capture

    settings = {"control_exchange": "tenant", "event_exchange": "tenantev"}
    tenant = make_app(**settings)
    capture = Capture(tenant, seconds=15).start()
    start_configured("python", settings, "-n", "tenantpython@%h", "-Q", "tenantpython")
    answering(tenant, "tenantpython@")  # its pidbox consumer is up: it will answer the Swift worker's hello
    swift = start_configured("swift", settings, "-n", "tenantswift@%h", "-Q", "tenantswift", "-E")
    swift.wait_for_log("mingle: sync with 1 nodes")  # the Python worker answered the hello on tenant.pidbox
    # Two replies end the wait; the timeout only bounds a loaded machine's.
    nodes = {name.split("@")[0] for reply in tenant.control.ping(timeout=5, limit=2) for name in reply}
    assert nodes == {"tenantswift", "tenantpython"}, nodes
    conf = tenant.control.inspect(timeout=1, destination=[answering(tenant, "tenantswift")]).conf()
    assert {k: v for k, v in next(iter(conf.values())).items() if k in settings} == settings
    assert not [reply for reply in make_app().control.ping(timeout=1) for name in reply if name.startswith("tenant")]
    assert tenant.send_task("tasks.add", (1, 2), queue="tenantswift").get(timeout=10) == 3
    capture.wait_for(lambda events: {e["hostname"].split("@")[0] for e in events if e["type"] == "worker-heartbeat"}
                     >= {"tenantswift", "tenantpython"} and any(e["type"] == "task-succeeded" for e in events))
    capture.stop()
