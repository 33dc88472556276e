"""The Swift client (`CeleryClient`, the `call` and `canvas-demo` commands): messages a Python worker runs, and
results awaited through pub/sub."""
import base64
import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from conftest import WORKER_BINARY, eventually


def swift(redis_urls, *args, timeout=60, env=None):
    return subprocess.run([str(WORKER_BINARY), *args, "-b", redis_urls["broker"],
                           "--result-backend", redis_urls["backend"]],
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_call_runs_on_a_python_worker_and_waits_for_the_result(start_python_worker, redis_urls, serializer):
    start_python_worker("-Q", "py")
    done = swift(redis_urls, "call", "tasks.add", "--args", "[20, 22]", "-Q", "py", "--serializer", serializer, "--wait")
    assert done.returncode == 0, done.stderr
    task_id, value = done.stdout.split()
    assert value == "42"
    echoed = swift(redis_urls, "call", "tasks.echo", "--args", '["ü", 1.5, null]', "--kwargs", '{"k": [true]}',
                   "-Q", "py", "--serializer", serializer, "--wait")
    assert json.loads(echoed.stdout.splitlines()[1]) == {"args": ["ü", 1.5, None], "kwargs": {"k": [True]}}
    failed = swift(redis_urls, "call", "tasks.fail", "--args", '["nope"]', "-Q", "py", "--serializer", serializer,
                   "--wait")
    assert failed.returncode == 1 and "FAILURE: ValueError: nope" in failed.stderr


def raw_message(broker_redis, queue):
    (raw,) = broker_redis.lrange(queue, 0, -1)
    broker_redis.delete(queue)
    return json.loads(raw)


VARIABLE = {"id", "root_id", "eta", "expires", "origin", "correlation_id", "reply_to", "delivery_tag"}


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_a_swift_message_is_shaped_as_pythons(make_app, broker_redis, redis_urls, serializer):
    app = make_app(task_serializer=serializer)
    app.tasks["tasks.add"].apply_async((1, 2), queue="shape", countdown=30, expires=60, priority=5,
                                       headers={"x-custom": "v"})
    python = raw_message(broker_redis, "shape\x06\x163")
    sent = swift(redis_urls, "call", "tasks.add", "--args", "[1, 2]", "-Q", "shape", "--countdown", "30", "--expires",
                 "60", "--priority", "5", "--header", "x-custom=v", "--serializer", serializer)
    assert sent.returncode == 0, sent.stderr
    ours = raw_message(broker_redis, "shape\x06\x163")
    assert list(ours) == list(python)
    assert list(ours["headers"]) == list(python["headers"])
    assert list(ours["properties"]) == list(python["properties"])
    for part in ("headers", "properties"):
        for key, value in python[part].items():
            if key not in VARIABLE:
                assert ours[part][key] == value, (part, key)
    assert ours["headers"]["root_id"] == ours["headers"]["id"] == sent.stdout.strip()
    assert ours["properties"]["expiration"] == "60000"
    assert base64.b64decode(ours["body"]) == base64.b64decode(python["body"])
    assert ours["content-type"] == python["content-type"] and ours["content-encoding"] == python["content-encoding"]


@pytest.mark.parametrize("eta,expires", [("2030-01-01 00:00", "2030-01-02T00:00:00+01:00"),
                                         ("2030-01-01T05:06:07.5Z", "90.5"),
                                         ("2030-01-01", "2030-06-01T00:00:00.123456-05:30")])
def test_call_sends_eta_and_expires_as_celerys_call(broker_redis, redis_urls, eta, expires):
    """`call --eta` and `--expires` (seconds, or an ISO 8601 time) as Celery's `celery call` sends them: the times
    written as Python's isoformat() writes them, naive kept naive, and kombu's `expiration` in milliseconds."""
    celery = Path(sys.executable).with_name("celery")
    theirs = subprocess.run([str(celery), "-b", redis_urls["broker"], "--result-backend", redis_urls["backend"], "call",
                             "tasks.add", "--args", "[1, 2]", "--queue", "etaq", "--eta", eta, "--expires", expires],
                            capture_output=True, text=True, timeout=60)
    assert theirs.returncode == 0, theirs.stderr
    python = raw_message(broker_redis, "etaq")
    ours = swift(redis_urls, "call", "tasks.add", "--args", "[1, 2]", "-Q", "etaq", "--eta", eta, "--expires", expires)
    assert ours.returncode == 0, ours.stderr
    swift_message = raw_message(broker_redis, "etaq")
    assert swift_message["headers"]["eta"] == python["headers"]["eta"]
    if expires.replace(".", "").isdigit():  # seconds from now: both an aware time about that far off
        for message in (python, swift_message):
            left = datetime.fromisoformat(message["headers"]["expires"]) - datetime.now(timezone.utc)
            assert 80 < left.total_seconds() <= 90.5, message["headers"]["expires"]
        assert python["properties"]["expiration"] == swift_message["properties"]["expiration"] == "90500"
    else:
        assert swift_message["headers"]["expires"] == python["headers"]["expires"]
        assert abs(int(swift_message["properties"]["expiration"]) - int(python["properties"]["expiration"])) < 60_000
    bad = swift(redis_urls, "call", "tasks.add", "--eta", "tomorrow")
    assert bad.returncode == 64 and "--eta must be an ISO 8601 time" in bad.stderr, bad.stderr


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
@pytest.mark.parametrize("queue", ["py", "swift"])
def test_canvas_built_in_swift_runs_on_python_and_swift_workers(start_worker, start_python_worker, redis_urls, queue,
                                                                   serializer):
    start_python_worker("-Q", "py") if queue == "py" else start_worker("-Q", "swift")
    done = swift(redis_urls, "canvas-demo", "-Q", queue, "--serializer", serializer)
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert lines == {"chain": "35", "group": "[0, 2, 4, 6]", "chord": "100",
                     "chained-group": "15",
                     "nested": '{"args": [[[6, 9], 7]], "kwargs": {}}', "children": "task:6 group:[4, 6]",
                     "failure": "builtins ValueError('from swift')"}


def test_a_swift_task_starts_a_python_task_and_returns_its_result(start_worker, start_python_worker, make_app,
                                                                   backend_redis):
    start_worker("-Q", "swift")
    python = start_python_worker("-Q", "py")
    app = make_app()
    result = app.tasks["tasks.delegate"].apply_async(("tasks.mul", [6, 7], "py"), queue="swift")
    assert result.get(timeout=20) == 42
    python.wait_for_log("tasks.mul[")
    child_id = python.log.split("Task tasks.mul[", 1)[1].split("]", 1)[0]
    child = json.loads(backend_redis.get(f"celery-task-meta-{child_id}"))
    assert child["result"] == 42 and child["parent_id"] == result.id


@pytest.mark.parametrize("kind", ["swift", "swift-process", "python"])
def test_what_a_task_sends_is_among_its_results_children(start_worker, start_python_worker, make_app, kind):
    """A task that sends another lists it in its result's `children`, before its callbacks, as Python's trail does:
    `AsyncResult.children` finds both, from a Swift worker (its process pool's children relay them) or a Python one."""
    start_worker("-Q", "helper", "-n", "helper@%h")
    if kind == "python":
        start_python_worker("-Q", "sender", "-n", "pysender@%h")
    else:
        start_worker("-Q", "sender", "-n", "sender@%h", *(["-P", "process", "-c", "1"] if kind == "swift-process" else []))
    app = make_app()
    after = app.signature("tasks.echo", args=["after"], queue="helper", immutable=True)
    result = app.tasks["tasks.delegate"].apply_async(("tasks.mul", [6, 7], "helper"), queue="sender", link=after)
    assert result.get(timeout=20) == 42
    children = result.children
    assert len(children) == 2, children
    assert children[0].get(timeout=10) == 42
    assert children[1].get(timeout=10) == {"args": ["after"], "kwargs": {}}
    # A task that fails after it sent one lists it too.
    failed = app.tasks["tasks.delegate"].apply_async(("tasks.fail", ["no"], "helper"), queue="sender")
    with pytest.raises(ValueError):
        failed.get(timeout=20)
    assert [child.state for child in failed.children] == ["FAILURE"]
    # A RETRY lists what the task sent, then the retry's own message.
    retried = app.send_task("tasks.send_then_retry", ("tasks.mul", [2, 3], "helper"), queue="sender")
    assert eventually(lambda: retried.state == "RETRY", timeout=10)
    children = app.backend.get_task_meta(retried.id)["children"]
    assert len(children) == 2 and children[1] == [[retried.id, None], None], children
    assert app.AsyncResult(children[0][0][0]).get(timeout=10) == 6
    assert retried.get(timeout=20) == 1


def test_call_reads_the_workers_config_file(start_worker, broker_redis, redis_urls, tmp_path):
    """`call --config` takes the workers' settings file: the broker and backend from it (no flags), its
    task_serializer, and kombu's transport options, so a message with priority 7 waits in `cfgq:7` under
    `priority_steps: [0..9]` and `sep: ':'`, where a worker given the same file takes it."""
    settings = {"broker_url": redis_urls["broker"], "result_backend": redis_urls["backend"], "task_serializer": "msgpack",
                "broker_transport_options": {"priority_steps": list(range(10)), "sep": ":"}}
    config = tmp_path / "client.json"
    config.write_text(json.dumps(settings))
    sent = subprocess.run([str(WORKER_BINARY), "call", "tasks.add", "--args", "[40, 2]", "-Q", "cfgq", "--priority", "7",
                           "--config", str(config)], capture_output=True, text=True, timeout=30)
    assert sent.returncode == 0, sent.stderr
    (raw,) = broker_redis.lrange("cfgq:7", 0, -1)
    assert json.loads(raw)["content-type"] == "application/x-msgpack"
    start_worker("--config", str(config), "-Q", "cfgq")
    waited = subprocess.run([str(WORKER_BINARY), "call", "tasks.add", "--args", "[1, 2]", "-Q", "cfgq", "--config", str(config),
                             "--wait"], capture_output=True, text=True, timeout=30)
    assert waited.returncode == 0 and waited.stdout.split()[1] == "3", waited.stderr
    from clientapp import make_app

    app = make_app(redis_urls["broker"], redis_urls["backend"])
    assert app.AsyncResult(sent.stdout.strip()).get(timeout=10) == 42
