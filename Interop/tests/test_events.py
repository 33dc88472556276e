"""Celery events from the Swift worker, read by Python's own event receiver and `events.State` (what Flower and
`celery events` use)."""
import socket
import threading
import time

import pytest


class Capture:
    """Collects every event on the broker for `seconds`, from a Python `app.events.Receiver`."""

    def __init__(self, app, seconds):
        self.app, self.seconds, self.events = app, seconds, []
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.ready = threading.Event()

    def run(self):
        with self.app.connection_for_read() as connection:
            receiver = self.app.events.Receiver(connection, handlers={"*": self.events.append})
            self.ready.set()
            try:
                receiver.capture(limit=None, timeout=self.seconds, wakeup=False)
            except (socket.timeout, TimeoutError):
                pass

    def start(self):
        self.thread.start()
        self.ready.wait(5)
        time.sleep(1.0)  # the receiver's PSUBSCRIBE is in place
        return self

    def join(self):
        self.thread.join(self.seconds + 5)
        return self.events


def test_worker_and_task_events_with_E(start_worker, make_app):
    app = make_app()
    capture = Capture(app, 9).start()
    worker = start_worker("-E", "-n", "evt@%h")
    ok = app.tasks["tasks.add"].delay(2, 3)
    bad = app.tasks["tasks.fail"].delay("boom")
    assert ok.get(timeout=10) == 5
    with pytest.raises(ValueError):
        bad.get(timeout=10)
    time.sleep(4.5)  # two heartbeats
    worker.stop()
    events = capture.join()
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


def test_heartbeats_without_E_but_no_task_events(start_worker, make_app):
    app = make_app()
    capture = Capture(app, 5).start()
    worker = start_worker()
    assert app.tasks["tasks.add"].delay(1, 1).get(timeout=10) == 2
    time.sleep(2.5)
    state = app.events.State()
    events = capture.join()
    for event in events:
        state.event(event)
    types = {event["type"] for event in events}
    assert "worker-online" in types and "worker-heartbeat" in types
    assert not any(t.startswith("task-") for t in types)
    assert any(w.alive for w in state.workers.values())
    worker.stop()


def test_enable_events_at_run_time(start_worker, make_app):
    app = make_app()
    capture = Capture(app, 5).start()
    start_worker("-n", "toggle@%h")
    app.control.enable_events(reply=True, timeout=1)
    result = app.tasks["tasks.add"].delay(3, 4)
    assert result.get(timeout=10) == 7
    time.sleep(0.5)
    events = capture.join()
    assert any(e["type"] == "task-succeeded" and e["uuid"] == result.id for e in events)
