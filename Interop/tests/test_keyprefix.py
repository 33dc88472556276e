"""kombu's and Celery's `global_keyprefix`: `broker_transport_options` puts it in front of every broker key and
channel (queues, `unacked`, bindings, the pidbox, events), `result_backend_transport_options` in front of every result
and chord key. The Swift worker and Python workers share both."""
import json
import signal
import time

import redis
from celery import chord

from conftest import eventually

PREFIX = "tenant1:"


def prefixed_config(tmp_path, acks_late=False):
    config = tmp_path / "celeryconfig.yaml"
    config.write_text(f"broker_transport_options: {{global_keyprefix: '{PREFIX}'}}\n"
                      "result_backend_transport_options: {global_keyprefix: tenant1}\n"
                      f"task_acks_late: {'true' if acks_late else 'false'}\n")
    return str(config)


def prefixed_app(make_app):
    return make_app(broker_transport_options={"global_keyprefix": PREFIX},
                    result_backend_transport_options={"global_keyprefix": "tenant1"})


PYTHON_ENV = {"BROKER_KEYPREFIX": PREFIX, "RESULT_KEYPREFIX": "tenant1"}


def unprefixed(client):
    return [key for key in client.keys("*") if not key.startswith((PREFIX.encode(), b"tenant1_"))]


def test_a_prefixed_queue_is_shared_with_a_python_worker(start_worker, start_python_worker, make_app, broker_redis,
                                                         backend_redis, tmp_path):
    start_worker("--config", prefixed_config(tmp_path), "-c", "2")
    start_python_worker("-c", "2", env=PYTHON_ENV)
    app = prefixed_app(make_app)
    pending = [app.tasks["tasks.whoami"].delay() for _ in range(100)]
    assert set(r.get(timeout=30) for r in pending) == {"swift", "python"}
    assert backend_redis.exists(f"tenant1_celery-task-meta-{pending[0].id}")
    # A chord whose parts run on both workers and whose body either may run.
    parts = [app.signature("tasks.add", args=(i, i)) for i in range(6)]
    assert chord(parts, app.signature("tasks.tsum")).apply_async().get(timeout=20) == 30
    assert eventually(lambda: broker_redis.hlen(PREFIX + "unacked") == 0)
    assert broker_redis.sismember(PREFIX + "_kombu.binding.celery", "celery\x06\x16\x06\x16celery")
    assert unprefixed(broker_redis) == [] and unprefixed(backend_redis) == []


def test_unacked_restore_control_and_events_use_the_prefix(start_worker, make_app, broker_redis, redis_urls,
                                                           tmp_path):
    events = redis.Redis.from_url(redis_urls["broker"]).pubsub()
    events.psubscribe(PREFIX + "/*.celeryev/*")
    worker = start_worker("--config", prefixed_config(tmp_path, acks_late=True), "-c", "1", "-n", "prefixed@%h")
    app = prefixed_app(make_app)
    # Remote control over the prefixed pidbox.
    names = [name for reply in app.control.ping(timeout=2) for name in reply]
    assert len(names) == 1 and names[0].startswith("prefixed@"), names
    # Events on prefixed channels.
    deadline = time.time() + 5
    seen = None
    while time.time() < deadline and seen is None:
        message = events.get_message(timeout=1)
        if message and message["type"] == "pmessage":
            seen = message["channel"]
    assert seen is not None and seen.startswith(PREFIX.encode()), seen
    # The running task is recorded in the prefixed unacked; a warm shutdown gives the reserved ones back to the
    # prefixed list.
    running = app.tasks["tasks.sleep"].delay(1)
    waiting = [app.tasks["tasks.add"].delay(i, i) for i in range(3)]
    worker.wait_for_log(f"[{running.id}] received")
    # Every message taken (the prefetch window of 4 holds them all) before the warm shutdown: under load the worker
    # may still be fetching the waiting ones when the running one is logged (seen in CI).
    assert eventually(lambda: broker_redis.llen(PREFIX + "celery") == 0 and broker_redis.hlen(PREFIX + "unacked") == 4)
    worker.stop(signal.SIGTERM)
    assert broker_redis.llen(PREFIX + "celery") == 3
    assert json.loads(broker_redis.lindex(PREFIX + "celery", 0))["headers"]["redelivered"] is True
    assert broker_redis.hlen(PREFIX + "unacked") == 0
    assert running.get(timeout=5) == 1
    start_worker("--config", prefixed_config(tmp_path), "-c", "1")
    assert [r.get(timeout=10) for r in waiting] == [0, 2, 4]
    assert unprefixed(broker_redis) == []

