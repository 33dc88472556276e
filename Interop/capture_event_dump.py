"""Writes Tests/Fixtures/event-dump.json: what Celery's own event receiver and dumper (`celery events --dump`) make
of a stream of event messages, for the Swift dumper's unit tests.

Each message body (an event, or a list of them as Celery 4+ sends task events) goes through Celery's
`EventReceiver.event_from_message` (its Lamport clock, `adjust_timestamp` to this machine's UTC offset, pinned here,
and `local_received`, pinned to the message's `now`) and then `celery.events.dumper.Dumper.on_event`; the lines it
prints are kept, and the receiver's clock after each message. The events are made as Celery's `EventDispatcher`
makes them (`Event(type, hostname=…, utcoffset=…, pid=…, clock=…, **fields)`), with the fields Celery's worker,
client and `app.events.send` give each type, and some values that test Python's `str` and `repr`. Run with the venv's
Python: `.venv/bin/python Interop/capture_event_dump.py`. No Redis is needed.
"""

import io
import json
from pathlib import Path

import celery
from celery import Celery
from celery.events.dumper import TASK_NAMES, Dumper
from celery.events.event import Event
from celery.utils.time import adjust_timestamp

OUT = Path(__file__).resolve().parent.parent / "Tests" / "Fixtures" / "event-dump.json"
START = 1796572800.25  # 2026-12-06 16:00:00.25 UTC


def stream(utcoffset):
    """(message body, now) pairs: a Python and a Swift worker's life, a client's task, and odd events."""
    clock = iter(range(1, 1000))
    time = iter(START + step * 0.731 for step in range(1000))

    def event(type, hostname="celery@host", pid=4242, offset=utcoffset, with_clock=True, **fields):
        head = {"hostname": hostname, "utcoffset": offset, "pid": pid}
        if with_clock:
            head["clock"] = next(clock)
        return Event(type, **head, **fields, timestamp=next(time))

    worker = {"freq": 2.0, "sw_ident": "py-celery", "sw_ver": celery.__version__, "sw_sys": "Linux"}
    tid, tid2, tid3 = "0b2a7d5e-0000-4000-8000-000000000001", "0b2a7d5e-0000-4000-8000-000000000002", "x" * 8
    bodies = [
        event("worker-online", **worker, active=0, processed=0, loadavg=[0.52, 0.3, 0.25]),
        event("worker-heartbeat", **worker, active=0, processed=0, loadavg=[0.5, 0.31, 0.25]),
        event("task-sent", hostname="gen99@host", pid=99, uuid=tid, root_id=tid, parent_id=None, name="tasks.add",
              args="(2, 3)", kwargs="{}", retries=0, eta=None, expires=None, queue="celery", exchange="",
              routing_key="celery"),
        [event("task-received", uuid=tid, name="tasks.add", args="(2, 3)", kwargs="{}", root_id=tid, parent_id=None,
               retries=0, eta=None, expires=None),
         event("task-started", uuid=tid)],
        [event("task-succeeded", uuid=tid, result="5", runtime=0.0012345)],
        [event("task-received", uuid=tid2, name="tasks.fail", args="('boom',)", kwargs="{'why': 'test'}",
               root_id=tid2, parent_id=None, retries=1, eta="2026-12-06T16:00:05.500000+00:00",
               expires="2026-12-06T17:00:00+00:00"),
         event("task-started", uuid=tid2),
         event("task-failed", uuid=tid2, exception="ValueError('boom')",
               traceback='Traceback (most recent call last):\n  File "x.py", line 1\nValueError: boom\n')],
        [event("task-retried", uuid=tid2, exception="Retry('again')", traceback="tb")],
        [event("task-revoked", uuid=tid3, terminated=True, signum=15, expired=False)],  # a task never received here
        [event("task-rejected", uuid=tid, requeue=False)],
        event("worker-heartbeat", hostname="swift@host", pid=7, offset=0.0, freq=2.0, sw_ident="py-celery",
              sw_ver="5.7.0", sw_sys="Linux", active=1, processed=12, loadavg=[1.0, 0.0, 1e-05]),
        event("worker-heartbeat", hostname="east@host", offset=-5.5, freq=2.0, active=0, processed=0, loadavg=[]),
        event("worker-heartbeat", hostname="west@host", offset=8, freq=5, active=0, processed=0, loadavg=[0, 0, 0]),
        event("my-custom-event", with_clock=False, note="ünïcode ✓ 'quoted' \"both\"\n", nested={"a": [1, 2.5, None],
              "b": {"c": True, "d": False}, "é": "x"}, empty={}, items=[], big=2 ** 63 - 1, small=-(2 ** 63),
              tiny=1.5e-07, huge=1.5e+300, whole=3.0, neg=-0.0,
              floats=[1e16, 2.0 ** 53 + 2, 1.5e16, 1e15 + 0.5, 0.0001, 0.00012345, 1e-05, 123456789.123, 5e-324,
                      1.7976931348623157e308, 0.1 + 0.2, 100.0, 1e22, 1e21]),
        event("worker-heartbeat", hostname="late@host", clock_skew=1, with_clock=False, freq=2.0, active=0,
              processed=0, loadavg=[0.1, 0.2, 0.3]),
        event("task-sent", hostname="gen99@host", pid=99, uuid=tid3, root_id=tid3, parent_id=tid, name="tasks.mul",
              args="(4,)", kwargs="{}", retries=0, eta=None, expires=5.5, queue="q", exchange="", routing_key="q"),
        [event("task-started", uuid=tid3), event("task-succeeded", uuid=tid3, result="[1, 'a']", runtime=2)],
        event("worker-offline", **worker, active=0, processed=2, loadavg=[0.5, 0.31, 0.25]),
        event("WORKER-ONLINE", hostname="Upper@host"),
        event("worker-elect", id="e1", topic="task", action="tasks.add", clock_bid=3),
    ]
    return [(body, START + 0.1 + index * 0.731) for index, body in enumerate(bodies)]


def dump(utcoffset_here, utcoffset_sent):
    app = Celery("events", set_as_current=False)
    TASK_NAMES.clear()  # the dumper's module-wide memory of task names: each run starts as a new program
    out = io.StringIO()
    dumper = Dumper(out=out)
    receiver = app.events.Receiver(None, handlers={"*": dumper.on_event})
    messages = []
    for body, now in stream(utcoffset_sent):
        wire = json.dumps(body)  # what the worker publishes: the receiver gets it back from JSON
        events = json.loads(wire)
        out.seek(0)
        out.truncate()
        for event in events if isinstance(events, list) else [events]:
            receiver.process(*receiver.event_from_message(
                event, now=lambda now=now: now,
                adjust_timestamp=lambda ts, offset: adjust_timestamp(ts, offset, here=lambda: utcoffset_here)))
        messages.append({"body": wire, "now": now, "lines": out.getvalue().splitlines(), "clock": app.clock.value})
    return {"utcoffset_here": utcoffset_here, "utcoffset_sent": utcoffset_sent, "messages": messages}


def main():
    runs = [dump(0.0, 0.0), dump(-1.0, 0.0), dump(5.0, -5.5)]
    OUT.write_text(json.dumps({"celery": celery.__version__, "runs": runs}, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {sum(len(run['messages']) for run in runs)} messages in {len(runs)} runs to {OUT}")


if __name__ == "__main__":
    main()
