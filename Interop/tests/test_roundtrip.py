"""Python Celery produces, the Swift worker runs, Python's AsyncResult reads: success, failure, values."""
import json
import threading
import time

import pytest

EDGE_VALUES = [2**63 - 1, -(2**63), 2**64 - 1, 0, 1.0, 0.1, 1e300, "我将发送邮件", "😀 \"q\" \\ \n", "", [],
               {}, [1, [2, {}]], True, False, None]
EDGE_KWARGS = {"zeta": 1, "alpha": {"nested": [1, 2.0], "empty_list": [], "empty_dict": {}}, "ключ": "значение"}


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
@pytest.mark.parametrize("protocol", [1, 2])
def test_add(start_worker, make_app, serializer, protocol):
    start_worker("-c", "2")
    app = make_app(task_serializer=serializer, protocol=protocol)
    result = app.tasks["tasks.add"].delay(2, 3)
    assert result.get(timeout=10) == 5
    assert result.state == "SUCCESS"


@pytest.mark.parametrize("task_serializer", ["json", "msgpack"])
@pytest.mark.parametrize("result_serializer", ["json", "msgpack"])
@pytest.mark.parametrize("protocol", [1, 2])
def test_echo_round_trips_every_value(start_worker, make_app, task_serializer, result_serializer, protocol):
    start_worker("-c", "2", "--result-serializer", result_serializer)
    app = make_app(task_serializer=task_serializer, result_serializer=result_serializer, protocol=protocol)
    result = app.tasks["tasks.echo"].delay(*EDGE_VALUES, **EDGE_KWARGS).get(timeout=10)
    assert result == {"args": EDGE_VALUES, "kwargs": EDGE_KWARGS}
    assert list(result["kwargs"]) == list(EDGE_KWARGS)
    assert isinstance(result["args"][4], float) and isinstance(result["args"][3], int)


def test_bytes_round_trip_in_msgpack(start_worker, make_app):
    start_worker("--result-serializer", "msgpack")
    app = make_app(task_serializer="msgpack", result_serializer="msgpack")
    payload = [b"\x00\xff binary", b"text"]
    assert app.tasks["tasks.echo"].delay(*payload).get(timeout=10) == {"args": payload, "kwargs": {}}


def test_bytes_round_trip_in_json(start_worker, make_app):
    start_worker()
    app = make_app()
    payload = [b"\x00\xff binary", b"text"]
    assert app.tasks["tasks.echo"].delay(*payload).get(timeout=10) == {"args": payload, "kwargs": {}}


def test_result_document_has_every_field_python_writes(start_worker, make_app, backend_redis):
    start_worker()
    app = make_app()
    result = app.tasks["tasks.add"].delay(20, 22)
    assert result.get(timeout=10) == 42
    raw = backend_redis.get(f"celery-task-meta-{result.id}")
    doc = app.backend.decode(raw)
    assert list(doc) == ["status", "result", "traceback", "children", "date_done", "task_id"]
    assert doc["status"] == "SUCCESS" and doc["traceback"] is None and doc["children"] == []
    assert 86000 < backend_redis.ttl(f"celery-task-meta-{result.id}") <= 86400
    # the same bytes Python's backend would write for this document
    encoded = app.backend.encode(doc)
    assert raw == (encoded.encode() if isinstance(encoded, str) else encoded)


def test_result_expires_flag(start_worker, make_app, backend_redis):
    start_worker("--result-expires", "60")
    result = make_app().tasks["tasks.add"].delay(1, 1)
    assert result.get(timeout=10) == 2
    assert 0 < backend_redis.ttl(f"celery-task-meta-{result.id}") <= 60


@pytest.mark.parametrize("result_serializer", ["json", "msgpack"])
def test_failure_raises_the_python_exception(start_worker, make_app, result_serializer):
    start_worker("--result-serializer", result_serializer)
    app = make_app(result_serializer=result_serializer)
    result = app.tasks["tasks.fail"].delay("bad input")
    with pytest.raises(ValueError) as raised:
        result.get(timeout=10)
    assert raised.value.args == ("bad input",)
    assert result.state == "FAILURE"
    assert "ValueError: bad input" in result.traceback


def test_wrong_arguments_raise_type_error(start_worker, make_app):
    start_worker()
    app = make_app()
    with pytest.raises(TypeError):
        app.tasks["tasks.add"].delay(1).get(timeout=10)
    with pytest.raises(TypeError):
        app.tasks["tasks.add"].delay(1, 2, 3).get(timeout=10)
    assert app.tasks["tasks.add"].delay(x=4, y=5).get(timeout=10) == 9


def test_unknown_task_is_rejected_and_stored_as_not_registered(start_worker, make_app, broker_redis):
    from celery.exceptions import NotRegistered

    worker = start_worker()
    app = make_app()
    result = app.send_task("tasks.nope", args=[1])
    with pytest.raises(NotRegistered):
        result.get(timeout=10)
    worker.wait_for_log("Received unregistered task of type 'tasks.nope'")
    assert app.tasks["tasks.add"].delay(1, 2).get(timeout=10) == 3
    assert broker_redis.hlen("unacked") == 0
    assert worker.alive()


def test_get_started_before_the_worker_returns_when_the_result_arrives(redis_urls, start_worker, make_app):
    app = make_app()
    result = app.tasks["tasks.add"].delay(7, 8)
    box = {}

    def wait():
        box["value"] = result.get(timeout=30)

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.5)
    assert "value" not in box
    start_worker()
    waiter.join(30)
    assert box.get("value") == 15


def test_whoami_noop_and_progress(start_worker, make_app, backend_redis):
    start_worker()
    app = make_app()
    assert app.tasks["tasks.whoami"].delay().get(timeout=10) == "swift"
    assert app.tasks["tasks.noop"].delay().get(timeout=10) is None
    result = app.tasks["tasks.progress"].delay(5)
    seen = set()
    deadline = time.monotonic() + 10
    while not result.ready() and time.monotonic() < deadline:
        # One read: `state` then `info` read the result twice, and the task may end in between.
        meta = app.backend.get_task_meta(result.id)
        if meta["status"] == "PROGRESS":
            seen.add(meta["result"]["current"])
        time.sleep(0.05)
    assert result.get(timeout=10) == 5
    assert seen and seen <= {0, 1, 2, 3, 4}


def test_ignore_result_stores_nothing(start_worker, make_app, backend_redis):
    start_worker("-c", "1")
    app = make_app()
    result = app.tasks["tasks.add"].apply_async((1, 2), ignore_result=True)
    failed = app.tasks["tasks.fail"].apply_async(("ignored",), ignore_result=True)
    app.tasks["tasks.add"].delay(0, 0).get(timeout=10)  # the worker has handled the first ones by now
    assert backend_redis.get(f"celery-task-meta-{result.id}") is None
    assert backend_redis.get(f"celery-task-meta-{failed.id}") is None


def test_result_failure_expires(start_worker, make_app, backend_redis, tmp_path):
    """Celery 5.7's result_failure_expires: FAILURE documents get their own TTL (0: none), the rest result_expires."""
    config = tmp_path / "celeryconfig.yaml"
    app = make_app()
    for failure_expires, expected in [(60, range(1, 61)), (0, [-1])]:
        config.write_text(f"result_expires: 3600\nresult_failure_expires: {failure_expires}\n")
        worker = start_worker("-c", "1", "--config", str(config))
        ok = app.tasks["tasks.add"].delay(1, 2)
        bad = app.tasks["tasks.fail"].delay("short-lived")
        assert ok.get(timeout=10) == 3
        with pytest.raises(ValueError):
            bad.get(timeout=10)
        assert 3590 <= backend_redis.ttl(f"celery-task-meta-{ok.id}") <= 3600
        assert backend_redis.ttl(f"celery-task-meta-{bad.id}") in expected
        worker.stop()


def test_store_errors_even_if_ignored(start_worker, make_app, backend_redis, tmp_path):
    config = tmp_path / "celeryconfig.yaml"
    config.write_text("task_store_errors_even_if_ignored: true\n")
    start_worker("-c", "1", "--config", str(config))
    app = make_app()
    result = app.tasks["tasks.add"].apply_async((1, 2), ignore_result=True)
    failed = app.tasks["tasks.fail"].apply_async(("kept",), ignore_result=True)
    app.tasks["tasks.add"].delay(0, 0).get(timeout=10)  # the worker has handled the first ones by now
    # (AsyncResult.get returns at once for a task sent with ignore_result: read what is stored.)
    stored = json.loads(backend_redis.get(f"celery-task-meta-{failed.id}"))
    assert stored["status"] == "FAILURE" and stored["result"]["exc_message"] == ["kept"]
    with pytest.raises(ValueError, match="kept"):
        app.AsyncResult(failed.id).get(timeout=10)
    assert backend_redis.get(f"celery-task-meta-{result.id}") is None
