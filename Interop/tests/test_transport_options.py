"""kombu's Redis transport options that name the broker's keys and order its queues (`sep`, `priority_steps`,
`queue_order_strategy`), as Celery's documentation suggests them for more priority levels, shared by a Python
producer, a Python worker and the Swift worker."""
import json
import re
import signal

import redis as redis_lib

from conftest import answering, eventually

OPTIONS = {"visibility_timeout": 3600.0, "priority_steps": list(range(10)), "sep": ":", "queue_order_strategy": "priority"}
SETTINGS = {"broker_transport_options": OPTIONS}


def config_file(tmp_path, settings=None):
    path = tmp_path / "transport.json"
    path.write_text(json.dumps(settings or SETTINGS))
    return str(path)


def received_order(worker, task_name="tasks.echo"):
    """The ids of the tasks the worker received, in the order it logged them."""
    return re.findall(rf"Task {re.escape(task_name)}\[([0-9a-f-]+)\] received", worker.log)


def test_priority_steps_and_sep_name_the_lists_as_kombu_does(start_worker, make_app, broker_redis, tmp_path):
    """Ten priority steps and `sep: ':'`: a Python producer's messages wait in `prio`, `prio:1` … `prio:9`, and the
    Swift worker takes them highest priority (lowest number) first."""
    app = make_app(broker_transport_options=OPTIONS)
    priorities = [5, 0, 9, 3, 7, 1, 2]
    sent = {priority: app.send_task("tasks.echo", (priority,), queue="prio", priority=priority) for priority in priorities}
    assert sorted(key.decode() for key in broker_redis.keys("prio*")) == sorted(
        "prio" if p == 0 else f"prio:{p}" for p in priorities)
    worker = start_worker("--config", config_file(tmp_path), "-Q", "prio", "-P", "solo", "-c", "1",
                          "--prefetch-multiplier", "1")
    assert [sent[p].get(timeout=10)["args"] for p in priorities] == [[p] for p in priorities]
    assert received_order(worker) == [sent[p].id for p in sorted(priorities)]


def test_messages_given_back_go_to_the_lists_a_python_worker_reads(start_worker, start_python_worker, make_app,
                                                                  broker_redis, tmp_path):
    """A warm shutdown gives the reserved messages back to their priority lists under the custom names (`hold:7`),
    where a Python worker with the same options finds them."""
    app = make_app(broker_transport_options=OPTIONS)
    worker = start_worker("--config", config_file(tmp_path), "-Q", "hold", "-c", "1", "--prefetch-multiplier", "3")
    running = app.send_task("tasks.sleep", (1,), queue="hold", priority=7)
    waiting = [app.send_task("tasks.add", (i, i), queue="hold", priority=7) for i in range(2)]
    worker.wait_for_log("received", count=3)
    assert worker.stop(signal.SIGTERM) == 0
    assert "Restoring 2 unacknowledged message(s)" in worker.log
    assert broker_redis.llen("hold:7") == 2 and broker_redis.llen("hold") == 0
    assert broker_redis.hlen("unacked") == 0
    start_python_worker("-Q", "hold", env={"CELERY_SETTINGS": json.dumps(SETTINGS)})
    assert running.get(timeout=10) == 1
    assert [r.get(timeout=15) for r in waiting] == [0, 2]


def test_remote_control_and_mingle_with_a_custom_sep(start_worker, start_python_worker, make_app, tmp_path):
    """Replies find the client's reply queue through binding members split by `sep`, and the Swift worker's mingle
    `hello` binds its reply queue with it, so a Python worker's reply reaches it. `inspect stats` shows the
    transport options as a Python worker does."""
    start_python_worker("-Q", "pyside", "-n", "pyside@%h", env={"CELERY_SETTINGS": json.dumps(SETTINGS)})
    app = make_app(broker_transport_options=OPTIONS)
    answering(app, "pyside@")  # its pidbox consumer is up: it will answer the Swift worker's hello
    swift = start_worker("--config", config_file(tmp_path), "-Q", "swiftside", "-n", "swiftside@%h")
    assert "mingle: sync with 1 nodes" in swift.log
    nodes = {prefix: answering(app, prefix + "@") for prefix in ("swiftside", "pyside")}
    shown = {prefix: app.control.inspect(destination=[node], timeout=2).stats()[node]["broker"]["transport_options"]
             for prefix, node in nodes.items()}
    assert shown["swiftside"] == shown["pyside"] == OPTIONS, shown
    assert app.send_task("tasks.add", (1, 2), queue="swiftside", priority=4).get(timeout=10) == 3


def test_queue_order_strategies(start_worker, make_app, broker_redis, tmp_path):
    """kombu's `queue_order_strategy`: `round_robin` (the default) alternates between queues that both hold
    messages, `priority` drains them in `-Q`'s order, `sorted` in the order of their names."""
    for strategy, queues, expected in [("round_robin", "qa,qb", ["qa", "qb"] * 3),
                                       ("priority", "qb,qa", ["qb"] * 3 + ["qa"] * 3),
                                       ("sorted", "qb,qa", ["qa"] * 3 + ["qb"] * 3)]:
        broker_redis.delete("qa", "qb")
        app = make_app()
        # The results are kept and waited on as sent: Celery 5.3's client can hang in `get()` on a second
        # AsyncResult of an id while the first is collected.
        results = [app.send_task("tasks.echo", (queue, i), queue=queue) for queue in ("qa", "qb") for i in range(3)]
        settings = {"broker_transport_options": {"queue_order_strategy": strategy}}
        (tmp_path / strategy).mkdir()
        worker = start_worker("--config", config_file(tmp_path / strategy, settings), "-Q", queues, "-P", "solo", "-c", "1",
                              "--prefetch-multiplier", "1", "-n", f"{strategy}@%h")
        queue_of = {result.id: result.get(timeout=10)["args"][0] for result in results}
        assert [queue_of[task_id] for task_id in received_order(worker)] == expected, strategy
        assert worker.stop() == 0


NAMES = {"fanout_prefix": False, "fanout_patterns": False, "unacked_key": "jobs_unacked",
         "unacked_index_key": "jobs_unacked_index", "unacked_mutex_key": "jobs_unacked_mutex",
         "visibility_timeout": 2.0, "unacked_restore_limit": 5}


def test_fanout_channels_and_bookkeeping_keys_named_as_kombu_names_them(start_configured, make_app, broker_redis):
    """`fanout_prefix: false` and `fanout_patterns: false` (remote control on `celery.pidbox`, every event on
    `celeryev`) and kombu's `unacked_*` key names, given to a Swift and a Python worker: they mingle, answer ping and
    send events where a Python client given the same listens (a default client reaches neither); an acks-late
    message is recorded under the custom names; and what a killed Python worker held there is restored and run by
    a Swift worker."""
    from test_events import Capture

    settings = {"broker_transport_options": NAMES, "task_acks_late": True}
    app = make_app(broker_transport_options=NAMES)
    capture = Capture(app, seconds=15).start()
    python = start_configured("python", settings, "-n", "namespython@%h", "-Q", "namespython", "-c", "1")
    answering(app, "namespython@")  # its pidbox consumer is up: it will answer the Swift worker's hello
    swift = start_configured("swift", settings, "-n", "namesswift@%h", "-Q", "namesswift", "-E")
    swift.wait_for_log("mingle: sync with 1 nodes")  # the Python worker answered the hello on celery.pidbox
    replies = app.control.ping(timeout=5, limit=2)  # two replies end the wait
    assert {name.split("@")[0] for reply in replies for name in reply} == {"namesswift", "namespython"}
    assert not [name for reply in make_app().control.ping(timeout=1) for name in reply if name.startswith("names")]
    node = answering(app, "namesswift")
    shown = app.control.inspect(destination=[node], timeout=2).stats()[node]["broker"]["transport_options"]
    assert shown == NAMES, shown
    # Recorded under the custom names while it runs.
    running = app.send_task("tasks.sleep", (1,), queue="namesswift")
    swift.wait_for_log(f"tasks.sleep[{running.id}] received")
    assert broker_redis.hlen("jobs_unacked") == 1 and broker_redis.zcard("jobs_unacked_index") == 1
    assert not broker_redis.exists("unacked", "unacked_index")
    assert running.get(timeout=10) == 1
    assert eventually(lambda: broker_redis.hlen("jobs_unacked") == 0)
    capture.wait_for(lambda events: any(e["type"] == "task-succeeded" and e["uuid"] == running.id for e in events)
                     and {e["hostname"].split("@")[0] for e in events if e["type"] == "worker-heartbeat"}
                     >= {"namesswift", "namespython"})
    capture.stop()
    # Gossip hears every event on the one channel (task events too) and takes only the workers'.
    assert "Gossip:" not in swift.log, swift.log
    # A Python worker dies holding an acks-late message under the custom names; a Swift worker restores it.
    held = app.send_task("tasks.sleep", (30,), queue="namespython")
    python.wait_for_log(f"tasks.sleep[{held.id}] received")
    assert broker_redis.hlen("jobs_unacked") == 1
    python.kill_all()
    restorer = start_configured("swift", settings, "-n", "namesrestorer@%h", "-Q", "namespython", "-P", "solo")
    # Either Swift worker's sweep may restore it (namesswift sweeps the same keys every few seconds); the restorer,
    # the one consuming its queue, runs it.
    restored = "Restored 1 message(s) left unacknowledged"
    assert eventually(lambda: restored in swift.log or restored in restorer.log, 20), (swift.log, restorer.log)
    restorer.wait_for_log(f"tasks.sleep[{held.id}] received")


def test_client_names_name_the_workers_connections(start_configured, make_app, broker_redis):
    """kombu's `client_name` transport option names each connection to the broker, and Celery 5.7's
    `redis_client_name` those to the result backend (`CLIENT SETNAME`), as `CLIENT LIST` shows them."""
    settings = {"broker_transport_options": {"client_name": "swift-broker"}, "redis_client_name": "swift-results"}
    swift = start_configured("swift", settings, "-n", "named@%h", "-E")
    assert make_app().send_task("tasks.add", (1, 2)).get(timeout=10) == 3
    names = [client["name"] for client in broker_redis.client_list()]
    assert names.count("swift-broker") >= 3 and names.count("swift-results") >= 1, names
    node = answering(make_app(), "named@")
    shown = make_app().control.inspect(destination=[node], timeout=2).stats()[node]["broker"]["transport_options"]
    assert shown["client_name"] == "swift-broker", shown
    assert swift.alive()
