"""Celery's `worker_direct`: each worker also consumes `<node>.dq2`, bound to the `C.dq2` exchange by its node name,
and a task sent with `queue=worker_direct(node)` reaches that worker alone. And `task_queues`: the queues an app
declares, with their exchanges and routing keys."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from celery.utils.nodenames import worker_direct
from kombu import Exchange

from conftest import INTEROP, WORKER_BINARY, answering, eventually, stored_outcome


def test_worker_direct_queues_reach_one_worker_each(start_worker, start_python_worker, make_app, broker_redis,
                                                    tmp_path):
    config = tmp_path / "celeryconfig.yaml"
    config.write_text("worker_direct: true\n")
    host = socket.gethostname()
    swift_node, other_swift_node, python_node = (f"swiftdirect@{host}", f"otherdirect@{host}", f"pydirect@{host}")
    swift = start_worker("--config", str(config), "-n", swift_node, "-Q", "swift")
    other = start_worker("--config", str(config), "-n", other_swift_node, "-Q", "swift")
    python = start_python_worker("-n", python_node, "-Q", "py", env={"WORKER_DIRECT": "1"})
    app = make_app()

    # The banner lists the queue as Python's does.
    assert f".> {swift_node}.dq2 exchange=C.dq2(direct) key={swift_node}" in " ".join(swift.stdout.split())
    # kombu's binding: routing key, pattern and queue in `_kombu.binding.C.dq2`, next to the Python worker's.
    members = {m.decode() for m in broker_redis.smembers("_kombu.binding.C.dq2")}
    assert {f"{node}\x06\x16\x06\x16{node}.dq2" for node in (swift_node, other_swift_node, python_node)} <= members

    # Each task goes to the node it names, Swift or Python, and nowhere else.
    for node, expected in ((swift_node, "swift"), (python_node, "python"), (other_swift_node, "swift")):
        results = [app.tasks["tasks.whoami"].apply_async(queue=worker_direct(node)) for _ in range(3)]
        assert [stored_outcome(app, r) for r in results] == [expected] * 3, node
        for r in results:
            owner = {swift_node: swift, other_swift_node: other, python_node: python}[node]
            assert eventually(lambda: f"[{r.id}] received" in owner.log), node
            for worker in {swift, other, python} - {owner}:
                assert f"[{r.id}]" not in worker.log, node

    # `inspect active_queues` describes the queue as the Python worker describes its own.
    queues = app.control.inspect(timeout=2).active_queues()
    theirs = next(q for q in queues[python_node] if q["name"] == f"{python_node}.dq2")
    ours = next(q for q in queues[swift_node] if q["name"] == f"{swift_node}.dq2")
    assert ours["exchange"] == theirs["exchange"] and ours["exchange"]["name"] == "C.dq2"
    assert (ours["routing_key"], theirs["routing_key"]) == (swift_node, python_node)
    assert set(ours) == set(theirs)
    assert [q["name"] for q in queues[swift_node]] == ["swift", f"{swift_node}.dq2"]
    assert app.control.inspect(timeout=2, destination=[swift_node]).conf()[swift_node]["worker_direct"] is True


TASK_QUEUES = {"task_queues": {"tqdefault": {}, "tqfeeds": {"exchange": "tqmedia", "routing_key": "feed.#",
                                                             "exchange_type": "topic"},
                               "tqimages": {"routing_key": "img"}},
               "task_default_queue": "tqdefault"}


def test_task_queues_are_consumed_and_bound_as_python_binds_them(start_configured, make_app, broker_redis, redis_urls):
    """`task_queues` without `-Q`: the worker consumes every declared queue, bound as declared (a topic exchange's
    binding carries kombu's pattern), exactly as a Python worker given the same binds them; a Python client then
    routes by exchange and routing key to them."""
    app = make_app()

    def bindings():
        # kombu 5.7 also lists them in _kombu.binding_permanent.*; kombu 5.3 (Celery 5.3) does not.
        return {key: sorted(broker_redis.smembers(key)) for key in broker_redis.keys("_kombu.binding.tq*")}

    def queues_of(prefix):
        node = answering(app, prefix)
        replies = app.control.inspect(destination=[node], timeout=2).active_queues()[node]
        return sorted((q["name"], q["exchange"]["name"], q["exchange"]["type"], q["routing_key"]) for q in replies)

    python = start_configured("python", TASK_QUEUES, "-n", "tqpython@%h")
    python_bindings, python_queues = bindings(), queues_of("tqpython@")
    python.kill_all()
    for key in broker_redis.keys("_kombu.binding*.tq*"):
        broker_redis.delete(key)
    swift = start_configured("swift", TASK_QUEUES, "-n", "tqswift@%h")
    assert bindings() == python_bindings and len(python_bindings) == 2, (bindings(), python_bindings)
    assert queues_of("tqswift@") == python_queues == [
        ("tqdefault", "tqdefault", "direct", "tqdefault"), ("tqfeeds", "tqmedia", "topic", "feed.#"),
        ("tqimages", "tqdefault", "direct", "img")]
    assert "exchange=tqmedia(topic) key=feed.#" in swift.stdout
    media = Exchange("tqmedia", type="topic")
    # The client declares the exchange, as kombu needs to know it is a topic exchange to match the pattern.
    sent = app.send_task("tasks.add", (1, 2), exchange=media, routing_key="feed.rss.daily", declare=[media])
    assert sent.get(timeout=10) == 3
    assert app.send_task("tasks.add", (2, 2), exchange="tqdefault", routing_key="img").get(timeout=10) == 4
    assert swift.log.count(" received") == 2
    # The Swift CLI's call to a named exchange, as Celery's `call --exchange --routing-key`: the queues bound for the
    # key. Where none is, Celery's drops the message without a word; this one says so and exits 1.
    def call(*args):
        return subprocess.run([str(WORKER_BINARY), "call", "tasks.add", "--args", "[3, 4]", *args,
                               "-b", redis_urls["broker"], "--result-backend", redis_urls["backend"]],
                              capture_output=True, text=True, timeout=30)
    called = call("--exchange", "tqdefault", "--routing-key", "img", "--wait")
    assert called.returncode == 0 and called.stdout.split()[1] == "7", called.stderr
    unbound = call("--exchange", "tqdefault", "--routing-key", "nothing")
    assert unbound.returncode == 1, unbound.stderr
    assert "no queue is bound to the direct exchange 'tqdefault' for routing key 'nothing'" in unbound.stderr


def test_task_create_missing_queues_off_refuses_an_undeclared_queue_as_python_does(tmp_path, redis_urls):
    settings = {**TASK_QUEUES, "task_create_missing_queues": False}
    config = tmp_path / "strict.json"
    config.write_text(json.dumps(settings))
    swift = subprocess.run([str(WORKER_BINARY), "--config", str(config), "-Q", "tqimages,elsewhere",
                            "--broker", redis_urls["broker"]], capture_output=True, text=True, timeout=10)
    python = subprocess.run(
        [str(Path(sys.executable).with_name("celery")), "-A", "pytasks", "worker", "-Q", "tqimages,elsewhere"],
        cwd=INTEROP / "pyworker", capture_output=True, text=True, timeout=60,
        env={**os.environ, "CELERY_BROKER_URL": redis_urls["broker"],
             "CELERY_RESULT_BACKEND": redis_urls["backend"], "CELERY_SETTINGS": json.dumps(settings)})
    message = ("Trying to select queue subset of ['tqimages', 'elsewhere'], but queue 'elsewhere' isn't\n"
               "defined in the `task_queues` setting.")
    assert swift.returncode == 64 and message in swift.stderr, swift.stderr
    assert python.returncode != 0 and message in python.stdout + python.stderr


def test_bindings_lost_with_redis_are_declared_again_on_reconnection_as_python_does(own_server):
    """A Redis that comes back empty (its keys lost, every client cut off): each worker, reconnecting, declares its
    queues again, as kombu's consumer does on revival, so a client routing by exchange and routing key reaches them
    again. Side by side with a Python worker given the same `task_queues`."""
    import redis as redis_lib
    from clientapp import make_app

    start, server = own_server
    settings = {"task_queues": {"reswift": {"exchange": "rebound", "routing_key": "re.swift"},
                                "repython": {"exchange": "rebound", "routing_key": "re.python"}}}
    swift = start("swift", settings, "-n", "reswift@%h", "-Q", "reswift")
    python = start("python", settings, "-n", "repython@%h", "-Q", "repython")
    broker_redis = redis_lib.Redis.from_url(server.url(1))
    members = {b"re.swift\x06\x16\x06\x16reswift", b"re.python\x06\x16\x06\x16repython"}
    assert broker_redis.smembers("_kombu.binding.rebound") == members
    broker_redis.flushall()
    broker_redis.client_kill_filter(_type="normal", skipme=True)
    broker_redis.client_kill_filter(_type="pubsub")
    for worker in (swift, python):
        worker.wait_for_log("Connected to redis://", timeout=20, count=2)
    assert eventually(lambda: broker_redis.smembers("_kombu.binding.rebound") == members, 10), broker_redis.smembers(
        "_kombu.binding.rebound")
    app = make_app(server.url(1), server.url(0))
    for key, number in (("re.swift", 1), ("re.python", 2)):
        assert app.send_task("tasks.add", (number, number), exchange="rebound", routing_key=key).get(timeout=15) == 2 * number
    assert "Task tasks.add[" in swift.log and "Task tasks.add[" in python.log
