"""Celery events from the Swift worker, read by Python's own event receiver and `events.State` (what Flower and
`celery events` use)."""
import base64
import json
import socket
import threading
import time

import pytest
import redis as redis_lib

from conftest import eventually, new_subscribers, newest_client


class Capture:
    """Collects every event on the broker from a Python `app.events.Receiver`, until `stop()` or until no event came
    for `seconds`."""

    def __init__(self, app, seconds=10):
        self.app, self.seconds, self.events = app, seconds, []
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.receiver = None

    def run(self):
        with self.app.connection_for_read() as connection:
            self.receiver = self.app.events.Receiver(connection, handlers={"*": self.events.append})
            try:
                self.receiver.capture(limit=None, timeout=self.seconds, wakeup=False)
            except (socket.timeout, TimeoutError):
                pass

    def server(self):
        """The Redis server the receiver subscribes on."""
        return redis_lib.Redis.from_url(self.app.conf.broker_url)

    def start(self):
        server = self.server()

        last = newest_client(server)
        self.thread.start()
        # The receiver's PSUBSCRIBE is in place (a loaded machine can take seconds to get there).
        assert eventually(lambda: new_subscribers(server, last) > 0, 15), "the event receiver did not subscribe"
        return self

    def wait_for(self, condition, timeout=10.0):
        """Waits until `condition(events)` holds for the events so far."""
        assert eventually(lambda: condition(list(self.events)), timeout), sorted({e["type"] for e in self.events})

    def stop(self):
        """Ends the capture (at the receiver's next event or one-second poll) and returns the events."""
        self.receiver.should_stop = True
        self.thread.join(self.seconds + 5)
        return self.events


def count(events, kind, hostname=""):
    return sum(e["type"] == kind and e["hostname"].startswith(hostname) for e in events)


def test_worker_and_task_events_with_E(start_worker, make_app):
    app = make_app()
    capture = Capture(app).start()
    worker = start_worker("-E", "-n", "evt@%h")
    ok = app.tasks["tasks.add"].delay(2, 3)
    bad = app.tasks["tasks.fail"].delay("boom")
    assert ok.get(timeout=10) == 5
    with pytest.raises(ValueError):
        bad.get(timeout=10)
    capture.wait_for(lambda events: count(events, "worker-heartbeat") >= 2)
    worker.stop()
    capture.wait_for(lambda events: count(events, "worker-offline", "evt@") == 1)
    events = capture.stop()
    by_type = {}
    for event in events:
        by_type.setdefault(event["type"], []).append(event)
    assert {"worker-online", "worker-heartbeat", "worker-offline", "task-received", "task-started",
            "task-succeeded", "task-failed"} <= set(by_type), sorted(by_type)
    online = by_type["worker-online"][0]
    assert online["hostname"].startswith("evt@") and online["freq"] == 2.0 and len(online["loadavg"]) == 3
    keys = [key for key in online if key != "local_received"]  # added by the receiver
    assert keys[:4] == ["hostname", "utcoffset", "pid", "clock"] and keys[-2:] == ["timestamp", "type"]
    assert len(by_type["worker-heartbeat"]) >= 2
    received = next(e for e in by_type["task-received"] if e["uuid"] == ok.id)
    assert received["name"] == "tasks.add" and received["args"] == "(2, 3)" and received["kwargs"] == "{}"
    succeeded = next(e for e in by_type["task-succeeded"] if e["uuid"] == ok.id)
    assert succeeded["result"] == "5" and succeeded["runtime"] >= 0
    failed = next(e for e in by_type["task-failed"] if e["uuid"] == bad.id)
    assert failed["exception"] == "ValueError('boom')" and "ValueError: boom" in failed["traceback"]
    clocks = [e["clock"] for e in events if e["hostname"].startswith("evt@")]
    assert clocks == sorted(clocks) and len(set(clocks)) == len(clocks)

    # Python's own event state machine (Flower's) sees the worker and both tasks
    state = app.events.State()
    for event in events:
        state.event(event)
    worker_state = next(w for name, w in state.workers.items() if name.startswith("evt@"))
    assert worker_state.sw_ident == "swift-celery" and not worker_state.alive  # offline was the last event
    assert state.tasks[ok.id].state == "SUCCESS" and state.tasks[ok.id].name == "tasks.add"
    assert state.tasks[bad.id].state == "FAILURE"


def test_task_events_go_out_in_batches_as_a_prefork_worker_sends_them(start_worker, make_app, broker_redis):
    """Under load, task events go out as a Python prefork worker sends them: lists of at most 24 on `task.multi`,
    several to a message; Python's receiver and `events.State` read every one, and every event of the worker comes
    in clock order."""
    app = make_app()
    raw = broker_redis.pubsub()
    raw.psubscribe("*celeryev*")
    capture = Capture(app).start()
    results = [app.send_task("tasks.add", (i, i)) for i in range(200)]  # waiting before the worker starts
    worker = start_worker("-E", "-n", "batches@%h")
    assert [result.get(timeout=30) for result in results] == [2 * i for i in range(200)]
    capture.wait_for(lambda events: count(events, "task-succeeded", "batches@") == 200)
    worker.stop()
    capture.wait_for(lambda events: count(events, "worker-offline", "batches@") == 1)
    events = [e for e in capture.stop() if e["hostname"].startswith("batches@")]
    sizes, quiet = [], time.monotonic() + 2
    while time.monotonic() < quiet:
        message = raw.get_message(timeout=0.2)
        if message and message["type"] == "pmessage" and message["channel"].endswith(b"task.multi"):
            envelope = json.loads(message["data"])
            if envelope["headers"]["hostname"].startswith("batches@"):
                sizes.append(len(json.loads(base64.b64decode(envelope["body"]))))
            quiet = time.monotonic() + 2
    raw.close()
    assert sum(sizes) == 600 and max(sizes) <= 24 and max(sizes) > 1, sizes  # received, started, succeeded
    assert [count(events, kind) for kind in ("task-received", "task-started", "task-succeeded")] == [200] * 3
    clocks = [e["clock"] for e in events]
    assert clocks == sorted(clocks) and len(set(clocks)) == len(clocks)
    state = app.events.State()
    for event in events:
        state.event(event)
    assert all(state.tasks[result.id].state == "SUCCESS" for result in results)


def kind_of(key, value):
    return float if key == "utcoffset" and isinstance(value, int) else type(value)


def test_task_multi_messages_are_a_prefork_workers_byte_for_byte(start_worker, start_python_worker, make_app,
                                                                 broker_redis):
    """A `task.multi` message of the Swift worker is a Python prefork worker's, byte for byte, but for what differs
    by nature: the body's events, the hostname and the delivery tag; and each kind of event in it has the fields of
    the prefork worker's, in the same order, with values of the same types."""
    app = make_app()
    last = newest_client(broker_redis)
    raw = broker_redis.pubsub()
    raw.psubscribe("*celeryev*")
    assert eventually(lambda: raw.get_message(timeout=0.1) or new_subscribers(broker_redis, last) > 0, 15)
    start_python_worker("-E", "-P", "prefork", "-c", "1", "-Q", "pyevents", "-n", "pymulti@%h")
    start_worker("-E", "-n", "swiftmulti@%h")
    assert app.send_task("tasks.add", (1, 2), queue="pyevents").get(timeout=20) == 3
    assert app.send_task("tasks.add", (1, 2)).get(timeout=20) == 3
    messages, quiet = {}, time.monotonic() + 3
    while time.monotonic() < quiet and len(messages) < 2 * 3:
        message = raw.get_message(timeout=0.2)
        if message and message["type"] == "pmessage" and message["channel"].endswith(b"task.multi"):
            envelope = json.loads(message["data"])
            hostname = envelope["headers"]["hostname"]
            node = "python" if hostname.startswith("pymulti@") else "swift" if hostname.startswith("swiftmulti@") else None
            if node:
                data = message["data"]
                for variable in (envelope["body"], envelope["properties"]["delivery_tag"], hostname):
                    assert data.count(variable.encode()) == 1, data
                    data = data.replace(variable.encode(), b"<>")
                for event in json.loads(base64.b64decode(envelope["body"])):
                    messages.setdefault(node, {}).setdefault(data, []).append(event)
            quiet = time.monotonic() + 3
    raw.close()
    assert set(messages) == {"python", "swift"}, messages
    assert list(messages["swift"]) == list(messages["python"]), messages  # one layout, the same bytes
    kinds = {node: {event["type"]: event for events in layouts.values() for event in events}
             for node, layouts in messages.items()}
    assert {"task-received", "task-started", "task-succeeded"} <= set(kinds["python"])
    for kind, python_event in kinds["python"].items():
        swift_event = kinds["swift"][kind]
        assert list(swift_event) == list(python_event), kind
        # Celery 5.3 floors `utcoffset` to a whole number of hours (an int); 5.7, as the Swift worker, divides.
        assert [kind_of(key, value) for key, value in swift_event.items()] == [
            kind_of(key, value) for key, value in python_event.items()], (kind, swift_event, python_event)


def test_heartbeats_without_E_but_no_task_events(start_worker, make_app):
    app = make_app()
    capture = Capture(app).start()
    worker = start_worker()
    assert app.tasks["tasks.add"].delay(1, 1).get(timeout=10) == 2
    # A task event would come before the next heartbeat: the worker sends them as the task ends, in order.
    beats = count(capture.events, "worker-heartbeat")
    capture.wait_for(lambda events: count(events, "worker-heartbeat") > beats)
    state = app.events.State()
    events = capture.stop()
    for event in events:
        state.event(event)
    types = {event["type"] for event in events}
    assert "worker-online" in types and "worker-heartbeat" in types
    assert not any(t.startswith("task-") for t in types)
    assert any(w.alive for w in state.workers.values())
    worker.stop()


def test_enable_events_at_run_time(start_worker, make_app):
    app = make_app()
    capture = Capture(app).start()
    start_worker("-n", "toggle@%h")
    assert len(app.control.enable_events(reply=True, timeout=2, limit=1)) == 1
    result = app.tasks["tasks.add"].delay(3, 4)
    assert result.get(timeout=10) == 7
    capture.wait_for(lambda events: any(e["type"] == "task-succeeded" and e["uuid"] == result.id for e in events))
    capture.stop()


def test_task_sent_events_for_chain_steps_as_a_python_worker_sends_them(start_worker, start_python_worker, make_app,
                                                                       tmp_path):
    """`task_send_sent_event`: the next chain step a worker sends comes with a `task-sent` event from Celery's
    anonymous producer node (`gen<pid>@<host>`), the same fields as a Python worker's."""
    import json

    from celery import chain

    settings = {"task_send_sent_event": True}
    config = tmp_path / "sent.json"
    config.write_text(json.dumps(settings))
    start_worker("--config", str(config), "-Q", "sentswift", "-n", "sentswift@%h")
    start_python_worker("-Q", "sentpy", "-n", "sentpy@%h", env={"CELERY_SETTINGS": json.dumps(settings)})
    start_worker("-Q", "unsent", "-n", "unsent@%h")  # Celery's default: none
    app = make_app()
    capture = Capture(app).start()
    add = app.tasks["tasks.add"]
    chains = {queue: chain(add.s(1, 1).set(queue=queue), add.s(2).set(queue=queue)).apply_async()
              for queue in ("sentswift", "sentpy", "unsent")}
    assert [result.get(timeout=10) for result in chains.values()] == [4, 4, 4]
    capture.wait_for(lambda events: count(events, "task-sent") >= 2)
    sent = {event["queue"]: event for event in capture.stop() if event["type"] == "task-sent"}
    assert set(sent) == {"sentswift", "sentpy"}, sent
    del chains["unsent"]
    swift, python = sent["sentswift"], sent["sentpy"]
    assert set(swift) == set(python)
    for key in ("name", "args", "kwargs", "retries", "eta", "expires", "exchange"):
        assert swift[key] == python[key], (key, swift[key], python[key])
    for queue, event in sent.items():
        assert event["routing_key"] == queue
        assert event["uuid"] == chains[queue].id and event["parent_id"] == chains[queue].parent.id
        assert event["hostname"].startswith("gen") and not event["hostname"].startswith(queue)


def test_task_sent_events_for_what_a_task_sends(start_configured, start_python_worker, make_app):
    """`task_send_sent_event` covers what a task sends itself (`context.send`, Python's `.delay()` in a task), as
    Celery's producer in a Python worker sends it: a `task-sent` for the message, whose parent is the task."""
    start_configured("swift", {"task_send_sent_event": True}, "-Q", "sender", "-n", "sender@%h")
    start_python_worker("-Q", "delegated", "-n", "delegated@%h")
    app = make_app()
    capture = Capture(app).start()
    result = app.send_task("tasks.delegate", ("tasks.add", [5, 5], "delegated"), queue="sender")
    assert result.get(timeout=15) == 10
    capture.wait_for(lambda events: any(e["type"] == "task-sent" and e.get("parent_id") == result.id for e in events))
    (sent,) = [e for e in capture.stop() if e["type"] == "task-sent" and e.get("parent_id") == result.id]
    assert sent["name"] == "tasks.add" and sent["queue"] == "delegated" and sent["hostname"].startswith("gen"), sent


def test_a_worker_back_from_a_lost_connection_says_so_in_events_as_python_does(own_server):
    """Celery's consumer stops its heart as it restarts after a lost connection and starts it again: worker-offline,
    then worker-online once connected. The Swift worker's connections and a Python worker's are cut alike."""
    from clientapp import make_app

    start, server = own_server
    app = make_app(server.url(1), server.url(0))
    capture = Capture(app, seconds=30).start()
    start("swift", {}, "-n", "evswift@%h")
    start("python", {}, "-n", "evpython@%h")
    capture.wait_for(lambda events: count(events, "worker-online", "evswift@") == count(events, "worker-online", "evpython@") == 1)
    # The capture's subscription is not a normal client: it stays.
    redis_lib.Redis.from_url(server.url(1)).client_kill_filter(_type="normal", skipme=True)
    capture.wait_for(lambda events: count(events, "worker-online", "evswift@") == count(events, "worker-online", "evpython@") == 2,
                     20)
    events = capture.stop()
    for host in ("evswift@", "evpython@"):
        assert [e["type"] for e in events if e["hostname"].startswith(host) and e["type"] != "worker-heartbeat"] == [
            "worker-online", "worker-offline", "worker-online"], host
