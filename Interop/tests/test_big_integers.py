"""Integers beyond 64 bits: Python's `int` has no size, JSON carries any, msgpack none beyond 64 bits. The Swift worker
reads, passes on, adds and writes them as a Python worker does, and fails where Python fails, with Python's words."""
import json

import pytest

from test_cli_control import python_cli, swift_cli
from conftest import eventually
from test_malformed import envelope

# As Python's worker logs the failure of a task whose result or callback msgpack cannot carry.
RAISED = "EncodeError(OverflowError('Integer value out of range'))"
# 2**64 is one past UInt64; -(2**63) - 1 one below Int64; 10**4299 has the 4300 digits Python reads and writes at most.
BIG = [2**64, -(2**63) - 1, -(2**64) - 1, 2**70, -(2**70), 10**4299, -(10**4299)]


@pytest.mark.parametrize("protocol", [1, 2])
def test_they_round_trip_and_are_stored_as_python_writes_them(start_worker, make_app, backend_redis, protocol):
    start_worker()
    app = make_app(protocol=protocol)
    result = app.tasks["tasks.echo"].delay(*BIG, nested={"list": [2**100, 1.5, 2**63 - 1]})
    echoed = result.get(timeout=10)
    assert echoed == {"args": BIG, "kwargs": {"nested": {"list": [2**100, 1.5, 2**63 - 1]}}}
    assert all(type(value) is int for value in echoed["args"])
    raw = backend_redis.get(f"celery-task-meta-{result.id}")
    assert raw == app.backend.encode(app.backend.decode(raw)).encode()


@pytest.mark.parametrize("x,y", [(2**70, 1), (-(2**70), 1), (2**63 - 1, 1), (-(2**63), -1), (2**64 - 1, 1),
                                 (2**70, -(2**70)), (-(2**64), 2**64 - 1), (10**4299 - 1, -(10**4299)),
                                 (2**64, 2**64)])
def test_add_is_exact_at_any_size(start_worker, make_app, x, y):
    start_worker()
    result = make_app().tasks["tasks.add"].delay(x, y).get(timeout=10)
    assert type(result) is int and result == x + y


@pytest.mark.parametrize("kind", ["swift", "python"])
def test_a_result_msgpack_cannot_carry_fails_the_task_as_python_fails_it(start_configured, make_app, broker_redis,
                                                                           backend_redis, kind):
    """Celery's trace sends the callbacks first, then storing the result raises kombu's EncodeError: FAILURE, the
    wrapped OverflowError as its message. The same test runs against a Python worker, which writes the same."""
    worker = start_configured(kind, {"result_serializer": "msgpack", "accept_content": ["json", "msgpack"]})
    app = make_app(result_serializer="msgpack")
    callback = app.tasks["tasks.echo"].si("linked")
    result = app.tasks["tasks.echo"].apply_async((2**70,), link=callback)
    assert_fails_with_encode_error(app, backend_redis, result)
    assert result.children and result.children[0].get(timeout=10) == {"args": ["linked"], "kwargs": {}}
    worker.wait_for_log(f"Task tasks.echo[{result.id}] raised unexpected: {RAISED}")
    assert_still_serving(app, broker_redis, worker)


@pytest.mark.parametrize("kind", ["swift", "swift-process", "python"])
def test_a_state_msgpack_cannot_carry_raises_in_the_task_as_python_raises_it(start_configured, make_app, broker_redis,
                                                                              backend_redis, kind):
    """`update_state` with a meta msgpack cannot carry raises kombu's EncodeError in the task, which fails with it;
    one it can carry is stored. In a process-pool child too."""
    pool = ["-P", "process", "-c", "1"] if kind == "swift-process" else []
    worker = start_configured(kind.split("-")[0], {"result_serializer": "msgpack", "accept_content": ["json", "msgpack"]},
                              *pool)
    app = make_app(result_serializer="msgpack")
    result = app.send_task("tasks.report_state", ("PROGRESS", {"n": 2**70}))
    assert_fails_with_encode_error(app, backend_redis, result)
    worker.wait_for_log(f"Task tasks.report_state[{result.id}] raised unexpected: {RAISED}")
    assert app.send_task("tasks.report_state", ("PROGRESS", {"n": 7})).get(timeout=10) == "stored"
    assert_still_serving(app, broker_redis, worker)


@pytest.mark.parametrize("kind", ["swift", "python"])
def test_a_callback_msgpack_cannot_carry_fails_the_task_as_python_fails_it(start_configured, make_app, broker_redis,
                                                                             backend_redis, kind):
    """With task_serializer msgpack, the callback that would carry the result cannot be sent: the trace fails the
    task with EncodeError, as Python's does; the result (JSON) is not stored as a success."""
    worker = start_configured(kind, {"task_serializer": "msgpack", "accept_content": ["json", "msgpack"]})
    app = make_app()
    result = app.tasks["tasks.echo"].apply_async((2**70,), link=app.tasks["tasks.echo"].s())
    assert_fails_with_encode_error(app, backend_redis, result)
    assert result.children == []
    worker.wait_for_log(f"Task tasks.echo[{result.id}] raised unexpected: {RAISED}")
    assert broker_redis.llen("celery") == 0
    assert_still_serving(app, broker_redis, worker)


@pytest.mark.parametrize("kind", ["swift", "python"])
def test_a_chord_body_msgpack_cannot_carry_fails_the_chord_as_python_fails_it(start_configured, make_app, broker_redis,
                                                                                backend_redis, kind):
    """The part that completes the chord cannot send the body with the header's results in msgpack: Celery's Redis
    backend stores ChordError('Callback error: EncodeError(...)') for the body."""
    from celery import chord
    from celery.exceptions import ChordError

    worker = start_configured(kind, {"task_serializer": "msgpack", "accept_content": ["json", "msgpack"]})
    app = make_app()
    echo = app.tasks["tasks.echo"]
    result = chord([echo.si(2**70), echo.si(1)], echo.s()).apply_async()
    with pytest.raises(ChordError) as raised:
        result.get(timeout=10)
    assert raised.value.args == ("Callback error: EncodeError(OverflowError('Integer value out of range'))",)
    document = app.backend.decode(backend_redis.get(f"celery-task-meta-{result.id}"))
    assert document["status"] == "FAILURE" and document["result"]["exc_type"] == "ChordError"
    worker.wait_for_log(f"Chord callback for '{result.parent.id}' raised: EncodeError(OverflowError('Integer value out of range'))")
    assert_still_serving(app, broker_redis, worker)


def assert_fails_with_encode_error(app, backend_redis, result):
    from kombu.exceptions import EncodeError

    with pytest.raises(EncodeError) as raised:
        result.get(timeout=10)
    assert raised.value.args == ("OverflowError('Integer value out of range')",)
    document = app.backend.decode(backend_redis.get(f"celery-task-meta-{result.id}"))
    assert document["status"] == "FAILURE"
    assert document["result"] == {"exc_type": "EncodeError", "exc_module": "kombu.exceptions",
                                  "exc_message": ["OverflowError('Integer value out of range')"]}
    assert "EncodeError" in document["traceback"]


def test_an_integer_longer_than_python_reads_fails_with_its_words(start_worker, make_app, broker_redis):
    """No Python client can send one (`json.dumps` refuses it too); another producer's fails with DecodeError."""
    from kombu.exceptions import DecodeError

    worker = start_worker()
    app = make_app()
    body = b"[[1" + b"0" * 4300 + b", 1], {}, {}]"
    message, task_id = envelope(body)
    broker_redis.lpush("celery", json.dumps(message))
    with pytest.raises(DecodeError, match=r"Exceeds the limit \(4300 digits\) for integer string conversion: "
                                          r"value has 4301 digits"):
        app.AsyncResult(task_id).get(timeout=10)
    worker.wait_for_log(f"[{task_id}]")
    assert_still_serving(app, broker_redis, worker)


def test_the_result_command_prints_them_as_celery_does(start_worker, make_app, redis_urls):
    start_worker()
    app = make_app()
    result = app.send_task("tasks.echo", BIG[:5])
    result.get(timeout=10)
    backend = ["--result-backend", redis_urls["backend"]]
    python = python_cli(redis_urls, *backend, "result", result.id)
    swift = swift_cli(redis_urls, "result", result.id, *backend)
    assert swift.returncode == python.returncode == 0 and swift.stdout == python.stdout, (python, swift)
    assert str(2**70) in swift.stdout


def assert_still_serving(app, broker_redis, worker):
    """The worker goes on: it runs a task, and its queue and `unacked` empty (a Python prefork worker acknowledges
    as its child starts the task, so perhaps after the result is in)."""
    assert app.tasks["tasks.add"].delay(40, 2).get(timeout=10) == 42
    assert worker.alive()
    assert eventually(lambda: broker_redis.hlen("unacked") == 0 and broker_redis.llen("celery") == 0)
