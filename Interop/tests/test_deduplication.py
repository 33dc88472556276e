"""Celery's `worker_deduplicate_successful_tasks` and `task_ignore_result`: an acks-late task whose message comes back redelivered does not
run again once it succeeded, beside a Python worker given the same settings. Messages are made redelivered by
kombu itself: taken as its consumer takes them and given back with `reject(requeue=True)`."""
import json
import time
import uuid

import celery
import pytest

from conftest import answering, eventually

SETTINGS = {"worker_deduplicate_successful_tasks": True, "task_acks_late": True}
# Celery 5.7 also sends the callbacks and chain steps a deduplicated task's first run did not send.
PYTHON_RESENDS_CHAIN = celery.VERSION >= (5, 7)
# Celery 5.3's thread pool never adds a success to successful_requests (its request class calls task_ready without
# `successful=True`), so a copy of a task that succeeded there is looked up in the backend too.
PYTHON_REMEMBERS_SUCCESSES = celery.VERSION >= (5, 7)
# Celery 5.7's clients leave a message's ignore_result header null unless told, and its workers read it (an explicit
# value wins over the task's); Celery 5.3's clients always send false.
HEADER_WINS = celery.VERSION >= (5, 7)


def redeliver(app, queue, count=1):
    """Takes each of the `count` messages of `queue` as kombu's consumer takes them (oldest first) and gives it back
    with `reject(requeue=True)`: kombu marks it redelivered and puts it back at the end of the queue, so the queue
    keeps its order."""
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        for _ in range(count):
            message = channel.basic_get(queue)
            assert message is not None
            message.reject(requeue=True)
        stored = [json.loads(raw) for raw in channel.client.lrange(queue, 0, -1)]
    assert len(stored) == count
    assert all(m["properties"]["delivery_info"]["redelivered"] and m["headers"]["redelivered"] for m in stored)


@pytest.fixture
def start(start_configured):
    """Starts a Swift or a Python worker on `queue`, given `settings`."""

    def start(kind, queue, settings):
        # Python's thread pool: Celery's prefork children never see the main process's successful_requests, so there
        # every redelivered copy is looked up in the backend (and logged).
        pool = ("-P", "threads") if kind == "python" else ()
        return start_configured(kind, settings, "-Q", queue, "-n", f"{queue}@%h", *pool)

    return start


def lines_about(log, task_id, text):
    return [line for line in log.splitlines() if task_id in line and text in line]


@pytest.mark.parametrize("kind", ["swift", "python"])
def test_a_redelivered_task_that_succeeded_does_not_run_again(start, make_app, broker_redis, kind):
    app = make_app()
    add, mul = app.tasks["tasks.add"], app.tasks["tasks.mul"]
    queue = f"dedup{kind}"
    # Stored as succeeded by another worker, and redelivered: not run.
    done = str(uuid.uuid4())
    add.apply_async((2, 3), queue=queue, task_id=done)
    app.backend.store_result(done, 5, "SUCCESS")
    # Redelivered, never succeeded: runs.
    fresh = add.apply_async((3, 4), queue=queue)
    # A chain whose first step succeeded without sending the next one (its stored result has no children).
    chained = (add.s(1, 4) | mul.s(10).set(queue=queue)).apply_async(queue=queue)
    app.backend.store_result(chained.parent.id, 5, "SUCCESS")
    redeliver(app, queue, 3)
    worker = start(kind, queue, SETTINGS)
    assert fresh.get(timeout=15) == 7
    if kind == "swift" or PYTHON_RESENDS_CHAIN:
        assert chained.get(timeout=15) == 50
    assert eventually(lambda: broker_redis.llen(queue) == 0 and broker_redis.hlen("unacked") == 0)
    for task_id in (done, chained.parent.id):
        assert len(lines_about(worker.log, task_id, "Task already completed successfully.")) == 1, worker.log
        assert not lines_about(worker.log, task_id, "succeeded in"), worker.log
    assert app.AsyncResult(done).get(timeout=1) == 5  # the stored result stays as it was
    assert len(lines_about(worker.log, fresh.id, "succeeded in")) == 1

    # The same id succeeded here, then comes back redelivered on another queue: known to this worker, it is
    # acknowledged without a read of the backend, or a line (Celery's successful_requests).
    here = add.apply_async((4, 4), queue=queue)
    assert here.get(timeout=15) == 8
    held = f"{queue}held"
    add.apply_async((4, 4), queue=held, task_id=here.id)
    redeliver(app, held)
    node = answering(app, queue)
    app.control.add_consumer(held, destination=[node], reply=True)
    assert eventually(lambda: broker_redis.llen(held) == 0 and broker_redis.hlen("unacked") == 0, 10)
    time.sleep(0.3)
    assert len(lines_about(worker.log, here.id, "succeeded in")) == 1, worker.log
    looked_up = 0 if kind == "swift" or PYTHON_REMEMBERS_SUCCESSES else 1
    assert len(lines_about(worker.log, here.id, "already completed")) == looked_up, worker.log
    if kind == "swift":
        conf = app.control.inspect(destination=[node], timeout=2).conf()[node]
        assert conf["worker_deduplicate_successful_tasks"] is True


def test_without_the_setting_a_redelivered_task_runs_again(start, make_app):
    app = make_app()
    done = str(uuid.uuid4())
    app.tasks["tasks.add"].apply_async((2, 3), queue="nodedup", task_id=done)
    redeliver(app, "nodedup")
    app.backend.store_result(done, 5, "SUCCESS")
    worker = start("swift", "nodedup", {"task_acks_late": True})
    worker.wait_for_log(f"tasks.add[{done}] succeeded in")
    assert "already completed" not in worker.log


# Beside Celery 5.3's worker there is no common behaviour to compare: it does not read the header.
@pytest.mark.parametrize("kind", ["swift", "python"] if HEADER_WINS else ["swift"])
def test_task_ignore_result(start, make_app, backend_redis, kind):
    """`task_ignore_result: true` on the worker: tasks store no result (nor their failures), unless the message says
    `ignore_result: false`, as Celery 5.7's worker reads the header (Celery 5.3's clients always say false, and its
    worker does not read it: there the Swift worker stores what Celery 5.7 would)."""
    queue = f"ignored{kind}"
    worker = start(kind, queue, {"task_ignore_result": True})
    app = make_app()
    plain = app.send_task("tasks.add", (1, 2), queue=queue)
    failed = app.send_task("tasks.fail", ("ignored",), queue=queue)
    kept = app.send_task("tasks.add", (2, 2), queue=queue, ignore_result=False)
    assert kept.get(timeout=15) == 4
    worker.wait_for_log(f"tasks.add[{plain.id}] succeeded in")
    worker.wait_for_log(f"tasks.fail[{failed.id}] raised")
    time.sleep(0.2)
    stored = [backend_redis.exists(f"celery-task-meta-{r.id}") for r in (plain, failed)]
    assert stored == ([0, 0] if HEADER_WINS else [1, 1]), stored
    node = answering(app, queue)
    shown = app.control.inspect(destination=[node], timeout=2).registered("ignore_result")[node]
    assert "tasks.add [ignore_result=True]" in shown, shown
