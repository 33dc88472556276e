"""`swift-celery-worker events --dump` beside Celery's own `celery events --dump` on one broker: the same lines for
the events of a Swift worker, a Python worker and a client, save the `local_received` each receiver adds."""
import inspect
import re
import signal
import subprocess
import sys
from pathlib import Path

import celery.events.dumper
import pytest
import redis as redis_lib

from conftest import WORKER_BINARY, eventually, new_subscribers, newest_client

CELERY = Path(sys.executable).with_name("celery")


class Dump:
    """An event dumper process; its standard output and error go to files of their own."""

    def __init__(self, args, path: Path):
        self.path, self.errors = path, path.with_suffix(".err")
        with open(path, "wb") as out, open(self.errors, "wb") as err:
            self.proc = subprocess.Popen(args, stdout=out, stderr=err)

    @property
    def lines(self):
        return self.path.read_text(errors="replace").splitlines()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(15)


def masked(lines):
    """The lines with each receiver's own arrival time masked."""
    return [re.sub(r"local_received=[0-9.e+-]+", "local_received=*", line) for line in lines]


# Celery 5.7 prints the event's time in UTC with its offset (`+00:00`), as the Swift dumper does; Celery 5.3 printed
# the same time without it (`datetime.utcfromtimestamp`).
NAIVE_TIMES = "timezone.utc" not in inspect.getsource(celery.events.dumper)


def test_dump_prints_what_celerys_dump_prints(start_worker, start_python_worker, make_app, redis_urls, tmp_path):
    broker = redis_urls["broker"]
    server = redis_lib.Redis.from_url(broker)
    last = newest_client(server)
    # The broker as Celery's global option, before the command, for both.
    swift = Dump([str(WORKER_BINARY), "-b", broker, "events", "--dump"], tmp_path / "swift.dump")
    python = Dump([str(CELERY), "-b", broker, "events", "--dump"], tmp_path / "python.dump")
    try:
        assert eventually(lambda: new_subscribers(server, last) >= 2, 15), (swift.lines, python.lines)
        swift_worker = start_worker("-E", "-n", "dumpswift@%h", "-Q", "dumpswift")
        python_worker = start_python_worker("-E", "-n", "dumppython@%h", "-Q", "dumppython")
        app = make_app(task_send_sent_event=True)
        for queue in ("dumpswift", "dumppython"):
            assert app.send_task("tasks.add", (2, 3), queue=queue).get(timeout=10) == 5
            with pytest.raises(Exception, match="boom"):
                app.send_task("tasks.fail", ("boom",), queue=queue).get(timeout=10)

        def both_saw(kind, count=1):
            return all(sum(f" {kind}: " in line and line.startswith(node) for line in dump.lines) >= count
                       for dump in (swift, python) for node in ("dumpswift@", "dumppython@"))

        assert eventually(lambda: both_saw("heartbeat"), 15), (swift.lines, python.lines)
        swift_worker.stop()
        python_worker.stop()
        assert eventually(lambda: both_saw("shutdown"), 15), (swift.lines, python.lines)
    finally:
        swift_status, _ = swift.stop(), python.stop()
    assert swift_status == 0, swift.errors.read_text()
    assert swift.errors.read_text() == ""
    ours, celerys = masked(swift.lines), masked(python.lines)
    assert all("+00:00] " in line for line in ours[1:] if line.startswith("dump"))
    if NAIVE_TIMES:
        ours = [re.sub(r"^(\S+ \[[^]]*)\+00:00\] ", r"\1] ", line) for line in ours]
    assert ours[0] == "-> evdump: starting capture..."
    kinds = {kind for line in ours for kind in re.findall(r"\] ([a-z ]+)[: ]", line)}
    assert {"started", "heartbeat", "task sent", "task received", "task started", "task succeeded", "task failed",
            "shutdown"} <= kinds, kinds
    for node in ("dumpswift@", "dumppython@"):
        assert any(line.startswith(node) and " task succeeded: tasks.add(" in line and "args=(2, 3)" in line
                   for line in ours), node
    # A heartbeat can fall between the two dumpers' last reads: compare what both printed.
    common = min(len(ours), len(celerys))
    assert len(ours) - len(celerys) in (-2, -1, 0, 1, 2)
    assert ours[:common] == celerys[:common]


def test_dump_waits_for_the_broker_and_says_so(tmp_path, redis_server):
    """No broker: Celery's lines, again after 2 then 4 seconds; SIGTERM ends it with status 0, as SIGINT does."""
    dump = Dump([str(WORKER_BINARY), "events", "--dump", "-b", "redis://:secret@127.0.0.1:1/0"], tmp_path / "gone.dump")
    try:
        assert eventually(lambda: sum("Trying again in 4.00 seconds" in line for line in dump.lines) == 1, 10), dump.lines
    finally:
        dump.proc.send_signal(signal.SIGTERM)
        assert dump.proc.wait(10) == 0
    lines = dump.lines
    assert lines[0] == "-> evdump: starting capture..."
    assert lines[1].startswith("-> Cannot connect to redis://:**@127.0.0.1:1/0: ") and "secret" not in "".join(lines)
    assert lines[2:4] == ["Trying again in 2.00 seconds", ""]
    assert lines[5] == "Trying again in 4.00 seconds"


def test_a_lost_broker_is_said_and_the_dump_goes_on_once_it_is_back(tmp_path):
    """Redis stops while the dump listens: Celery's "Connection lost" line, then its "Cannot connect" lines until
    Redis is back on the same port, and then the events of a worker started there."""
    from conftest import WorkerProcess
    from redisproc import RedisProcess

    server = RedisProcess().start()
    dump = Dump([str(WORKER_BINARY), "events", "--dump", "--broker", server.url(1)], tmp_path / "lost.dump")
    worker = None
    try:
        client = redis_lib.Redis.from_url(server.url(1))
        assert eventually(lambda: new_subscribers(client, 0) > 0, 15), dump.lines  # a server of its own
        server.proc.terminate()
        server.proc.wait(5)
        assert eventually(lambda: any("Trying again in 2.00 seconds" in line for line in dump.lines), 10), dump.lines
        server.start()
        worker = WorkerProcess(["--broker", server.url(1), "--result-backend", server.url(0), "-n", "back@%h"],
                               tmp_path / "w.log")
        worker.wait_ready(timeout=20)
        assert eventually(lambda: any(line.startswith("back@") for line in dump.lines), 20), dump.lines
    finally:
        if worker and worker.alive():
            worker.stop(signal.SIGKILL)
        assert dump.stop() == 0
        server.stop()
    lines = dump.lines
    assert lines[:2] == ["-> evdump: starting capture...", "-> Connection lost, attempting reconnect"], lines
    assert lines[2] == f"-> Cannot connect to redis://:**@127.0.0.1:{server.port}/1: Error 111 connecting to 127.0.0.1:{server.port}. " \
        "Connection refused..", lines


def test_a_message_that_holds_no_event_is_named_and_the_dump_goes_on(redis_urls, tmp_path):
    """Garbage, a pickled body (Celery's receiver refuses it too) and an event without a type: each is named on
    standard error; the events after them, JSON and msgpack (a Python worker's with `event_serializer: msgpack`),
    are printed."""
    import base64
    import json

    import msgpack

    broker = redis_urls["broker"]
    server = redis_lib.Redis.from_url(broker)
    last = newest_client(server)
    dump = Dump([str(WORKER_BINARY), "events", "--dump", "--broker", broker], tmp_path / "bad.dump")

    def envelope(body: bytes, content_type="application/json"):
        return json.dumps({"body": base64.b64encode(body).decode(), "content-encoding": "utf-8",
                           "content-type": content_type, "headers": {}, "properties": {"body_encoding": "base64"}})

    try:
        assert eventually(lambda: new_subscribers(server, last) >= 1, 15), dump.lines
        channel = f"/{broker.rsplit('/', 1)[1]}.celeryev/worker.heartbeat"
        server.publish(channel, b"garbage")
        server.publish(channel, envelope(b"\x80\x03}q\x00.", "application/x-python-serialize"))
        server.publish(channel, envelope(b'{"hostname": "x@y", "timestamp": 1}'))
        server.publish(channel, envelope(json.dumps({"hostname": "ok@y", "utcoffset": 0, "pid": 1, "clock": 3,
                                                     "timestamp": 0.5, "type": "worker-heartbeat"}).encode()))
        server.publish(channel, envelope(msgpack.packb({"hostname": "packed@y", "utcoffset": 0, "pid": 2, "clock": 4,
                                                        "timestamp": 1.25, "type": "worker-heartbeat"}),
                                         "application/x-msgpack"))
        assert eventually(lambda: len(dump.lines) == 3, 10), (dump.lines, dump.errors.read_text())
    finally:
        assert dump.stop() == 0
    assert dump.lines[1].startswith("ok@y [1970-01-01 00:00:00.500000+00:00] heartbeat: clock=3, local_received=")
    assert dump.lines[2].startswith("packed@y [1970-01-01 00:00:01.250000+00:00] heartbeat: clock=4, local_received=")
    errors = dump.errors.read_text().splitlines()
    assert [line.split(":")[0] for line in errors] == [
        "Can't decode message", "Can't decode message body (type", "An event without a type"], errors
    assert "application/x-python-serialize" in errors[1]


@pytest.mark.parametrize("args, message", [
    (["events"], "give --dump"),
    (["events", "--dump", "--camera", "myapp.Camera"], "--camera names a Python class (myapp.Camera)"),
])
def test_what_the_dump_cannot_do_is_refused(args, message):
    done = subprocess.run([str(WORKER_BINARY), *args], capture_output=True, text=True, timeout=30)
    assert done.returncode == 64 and message in done.stderr, done


def test_dump_under_sentinel_prints_each_event_once(sentinel_setup, tmp_path):
    """Under Sentinel the worker sends each event on kombu 5.4+'s topic and on the one kombu before 5.4 used; the
    dumper listens on both, as kombu 5.7's `sentinel_fanout_compat` does, and prints each event once."""
    from test_sentinel import sentinel_worker

    _, _, sentinel = sentinel_setup
    worker, client = sentinel_worker(sentinel, tmp_path, "sentineldump", "-E")
    config = tmp_path / "sentineldump.yaml"  # the worker's: the master's name
    dump = Dump([str(WORKER_BINARY), "events", "--dump", "--broker", f"sentinel://127.0.0.1:{sentinel.port}/1",
                 "--config", str(config)], tmp_path / "sentinel.dump")
    app = client()
    try:
        assert eventually(lambda: any(" heartbeat: " in line for line in dump.lines), 15), dump.lines
        result = app.send_task("tasks.add", (2, 3))
        assert result.get(timeout=10) == 5
        assert eventually(lambda: any(" task succeeded: " in line for line in dump.lines), 10), dump.lines
        assert worker.stop() == 0
        assert eventually(lambda: any(" shutdown: " in line for line in dump.lines), 10), dump.lines
    finally:
        app.close()
        if worker.alive():
            worker.stop(9)
        status = dump.stop()
    mine = [re.search(r"\] ([a-z ]+):", line).group(1) for line in dump.lines if result.id in line]
    assert mine == ["task received", "task started", "task succeeded"], dump.lines
    events = masked(dump.lines)
    assert len(set(events)) == len(events) and sum(" shutdown: " in line for line in events) == 1, events
    assert status == 0


from test_sentinel import sentinel_setup  # noqa: E402,F401 (the fixture, for the test above)
