"""Task semantics from real Python producers: countdown/ETA, expires, retries across Swift and Python workers,
time limits, STARTED, result_extended and a config file with Celery's setting names."""
import datetime
import json
import signal
import time

import pytest

from conftest import eventually


def test_countdown_never_runs_early(start_worker, make_app, backend_redis):
    worker = start_worker()
    app = make_app()
    sent = time.time()
    result = app.tasks["tasks.add"].apply_async((1, 2), countdown=1.5)
    worker.wait_for_log(f"Task tasks.add[{result.id}] received")
    assert result.state == "PENDING"
    assert result.get(timeout=10) == 3
    done = datetime.datetime.fromisoformat(result.date_done.isoformat() if hasattr(result.date_done, "isoformat")
                                           else result.date_done)
    assert done.timestamp() >= sent + 1.5


@pytest.mark.parametrize("form", ["naive-utc", "aware-plus-0530", "aware-minus-0800"])
def test_eta_forms(start_worker, make_app, form):
    start_worker()
    app = make_app()
    target = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=1.2)
    if form == "naive-utc":
        eta = target.replace(tzinfo=None)
    elif form == "aware-plus-0530":
        eta = target.astimezone(datetime.timezone(datetime.timedelta(hours=5, minutes=30)))
    else:
        eta = target.astimezone(datetime.timezone(datetime.timedelta(hours=-8)))
    result = app.tasks["tasks.add"].apply_async((2, 2), eta=eta)
    assert result.get(timeout=10) == 4
    assert app.backend.get_task_meta(result.id)["date_done"] >= target.isoformat()[:19]


def test_expired_before_running_is_revoked(start_worker, make_app, backend_redis):
    from celery.exceptions import TaskRevokedError

    worker = start_worker()
    app = make_app()
    result = app.tasks["tasks.add"].apply_async((1, 1), countdown=2, expires=1)
    with pytest.raises(TaskRevokedError):
        result.get(timeout=10)
    assert result.state == "REVOKED"
    stored = json.loads(backend_redis.get(f"celery-task-meta-{result.id}"))
    assert stored["result"] == {"exc_type": "TaskRevokedError", "exc_message": ["expired"],
                                "exc_module": "celery.exceptions"}
    worker.wait_for_log(f"Discarding revoked task: tasks.add[{result.id}] (expired)")


def test_expired_on_arrival_is_revoked_and_not_received(start_worker, make_app):
    from celery.exceptions import TaskRevokedError

    app = make_app()
    result = app.tasks["tasks.add"].apply_async(
        (1, 1), expires=datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=5))
    worker = start_worker()
    with pytest.raises(TaskRevokedError):
        result.get(timeout=10)
    assert f"[{result.id}] received" not in worker.log


def test_messages_expired_on_arrival_are_acknowledged_and_free_their_slots(start_worker, make_app, broker_redis):
    """Three prefetch windows of messages that expired before they arrived: each is REVOKED and acknowledged (gone
    from `unacked`, as Celery's `Request.revoked()` acknowledges it), and the task sent after them runs. Each used to
    keep its prefetch slot and its `unacked` record, so a window of them stopped the worker."""
    from celery.exceptions import TaskRevokedError

    app = make_app()
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=5)
    expired = [app.tasks["tasks.add"].apply_async((i, i), expires=past) for i in range(24)]  # 3 windows of -c 2
    start_worker("-c", "2")
    assert app.tasks["tasks.add"].delay(40, 2).get(timeout=10) == 42
    for result in expired:
        with pytest.raises(TaskRevokedError):
            result.get(timeout=10)
    assert eventually(lambda: broker_redis.hlen("unacked") == 0 and broker_redis.zcard("unacked_index") == 0)


def test_retry_on_swift_only(start_worker, make_app):
    worker = start_worker()
    result = make_app().tasks["tasks.flaky"].delay(3)
    assert result.get(timeout=15) == 3
    assert worker.log.count(f"Task tasks.flaky[{result.id}] retry: Retry in 0.1s") == 3


def test_swift_retries_and_a_python_worker_finishes(start_worker, start_python_worker, make_app, broker_redis,
                                                    backend_redis):
    swift = start_worker("-c", "1")
    app = make_app()
    # Retried 2 s later: the Swift worker, killed as soon as its log says "retry", must not run the retry itself.
    result = app.tasks["tasks.flaky"].delay(1, 2)
    swift.wait_for_log(f"Task tasks.flaky[{result.id}] retry")
    swift.stop(signal.SIGKILL)
    document = app.backend.decode(backend_redis.get(f"celery-task-meta-{result.id}"))
    assert document["status"] == "RETRY" and document["children"] == [[[result.id, None], None]]
    assert "celery.exceptions.Retry: Retry in 2s" in document["traceback"]
    pending = broker_redis.lrange("celery", 0, -1) + [json.dumps(json.loads(v)[0]).encode()
                                                     for v in broker_redis.hvals("unacked")]
    republished = json.loads(pending[0])
    assert republished["headers"]["id"] == result.id and republished["headers"]["retries"] == 1
    assert republished["headers"]["parent_id"] == result.id and republished["headers"]["eta"]
    assert "origin" in republished["properties"]
    time.sleep(1.1)
    python = start_python_worker("-c", "1", env={"VISIBILITY_TIMEOUT": "1"})
    assert result.get(timeout=20) == 1
    python.wait_for_log(f"Task tasks.flaky[{result.id}] succeeded")


def test_python_retries_and_the_swift_worker_finishes(start_worker, start_python_worker, make_app):
    python = start_python_worker("-c", "1")
    app = make_app()
    # Retried 3 s later: the Python worker, killed as soon as its log says "retry", must not run the retry itself
    # (with 0.1 s it sometimes had, its log line written after the retry was already due).
    result = app.tasks["tasks.flaky"].delay(1, 3)
    python.wait_for_log(f"Task tasks.flaky[{result.id}] retry")
    python.kill_all()
    time.sleep(1.1)
    swift = start_worker("--visibility-timeout", "1")
    assert result.get(timeout=20) == 1
    swift.wait_for_log(f"Task tasks.flaky[{result.id}] succeeded")


def test_soft_time_limit_from_the_message(start_worker, make_app):
    from billiard.exceptions import SoftTimeLimitExceeded

    start_worker()
    app = make_app()
    started = time.monotonic()
    result = app.tasks["tasks.sleep"].apply_async((10,), soft_time_limit=0.5)
    with pytest.raises(SoftTimeLimitExceeded):
        result.get(timeout=10)
    assert time.monotonic() - started < 5


def test_soft_time_limit_flag(start_worker, make_app):
    from billiard.exceptions import SoftTimeLimitExceeded

    start_worker("--soft-time-limit", "0.5")
    app = make_app()
    with pytest.raises(SoftTimeLimitExceeded):
        app.tasks["tasks.sleep"].delay(10).get(timeout=10)
    assert app.tasks["tasks.sleep"].delay(0.1).get(timeout=10) == 0.1


def test_config_file_with_celery_names(redis_urls, tmp_path, make_app):
    from conftest import WorkerProcess

    config = tmp_path / "celeryconfig.yaml"
    config.write_text(f"""
broker_url: {redis_urls['broker']}
result_backend: {redis_urls['backend']}
task_serializer: msgpack
result_serializer: json
accept_content: [json, msgpack]
timezone: Europe/Paris
enable_utc: true
task_track_started: true
result_extended: true
CELERY_ACKS_LATE: true
some_unknown_setting: 1
""")
    worker = WorkerProcess(["--config", str(config), "-n", "cfg@%h"], tmp_path / "w.log")
    try:
        worker.wait_ready()
        assert "unknown setting 'some_unknown_setting' is ignored" in worker.log
        app = make_app(task_serializer="msgpack", result_extended=True)
        result = app.tasks["tasks.sleep"].delay(1)
        deadline = time.monotonic() + 5
        while result.state != "STARTED" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert result.state == "STARTED"
        assert result.info["hostname"].startswith("cfg@")
        assert result.get(timeout=10) == 1
        assert (result.name, result.args, result.queue, result.retries) == ("tasks.sleep", [1], "celery", 0)
        assert result.worker.startswith("cfg@")
        assert app.backend.get_task_meta(result.id)["date_done"].endswith(("+01:00", "+02:00"))
    finally:
        worker.stop()


@pytest.mark.parametrize("kind", ["swift", "python"])
def test_an_extended_result_holds_the_messages_stamps(start_configured, make_app, backend_redis, kind):
    """`result_extended` with a stamped message: Celery 5.7 adds `stamped_headers` and each stamp after the request's
    fields; an unstamped message's extended result has neither."""
    start_configured(kind, {"result_extended": True})
    app = make_app(result_extended=True)
    stamped = app.signature("tasks.echo", (1,))
    stamped.stamp(mid="abc", tags=["x", "y"])
    for signature, stamps in ((stamped, {"stamped_headers": ["mid", "tags"], "mid": "abc", "tags": ["x", "y"]}),
                              (app.signature("tasks.echo", (2,)), {})):
        result = signature.apply_async()
        result.get(timeout=10)
        document = json.loads(backend_redis.get(f"celery-task-meta-{result.id}"))
        keys = list(document)
        assert keys[:5] == ["status", "result", "traceback", "children", "date_done"], keys
        assert keys[-1] == "task_id", keys
        extended = {key: document[key] for key in keys[keys.index("name"):-1]}
        assert list(extended)[:6] == ["name", "args", "kwargs", "worker", "retries", "queue"], keys
        shown = {key: extended[key] for key in list(extended)[6:]}
        if "stamped_headers" in shown:
            shown["stamped_headers"] = sorted(shown["stamped_headers"])  # the order stamp() lists them in
        assert shown == stamps, (kind, document)


def test_config_file_errors_name_the_key(tmp_path):
    import subprocess

    from conftest import WORKER_BINARY

    config = tmp_path / "bad.yaml"
    config.write_text("result_expires: tomorrow\n")
    proc = subprocess.run([str(WORKER_BINARY), "--config", str(config)], capture_output=True, text=True, timeout=10)
    assert proc.returncode != 0
    assert "result_expires" in proc.stderr and "number of seconds" in proc.stderr



def test_without_enable_utc_or_timezone_the_app_zone_is_the_machines(start_worker, start_python_worker, make_app,
                                                                      tmp_path):
    """Celery's `app.timezone` with `enable_utc: false` and no `timezone`: the machine's local zone (`TZ`). Both
    workers, given the same, write `date_done` in it (Celery 5.5 and later; 5.3 writes a naive UTC time)."""
    import celery

    config = tmp_path / "local.yaml"
    config.write_text("enable_utc: false\n")
    start_worker("--config", str(config), "-Q", "swiftlocal", env={"TZ": "Asia/Kolkata"})
    start_python_worker("-Q", "pylocal", env={"TZ": "Asia/Kolkata", "CELERY_SETTINGS": json.dumps({"enable_utc": False})})
    app = make_app()
    for queue, expected in (("swiftlocal", "swift"), ("pylocal", "python")):
        result = app.tasks["tasks.whoami"].apply_async(queue=queue)
        assert result.get(timeout=10) == expected
        date_done = app.backend.get_task_meta(result.id)["date_done"]
        if queue == "pylocal" and celery.VERSION < (5, 5):
            assert "+" not in date_done, date_done
            continue
        assert date_done.endswith("+05:30"), (queue, date_done)
