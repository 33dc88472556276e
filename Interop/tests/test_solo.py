"""The solo pool (`-P solo`): what sets it apart from the thread pool. The rest of the suite runs against it too, with
SWIFT_CELERY_POOL=solo (scripts/test.sh)."""
import time
from datetime import datetime

from conftest import eventually


def test_solo_runs_one_task_at_a_time_with_celerys_window(start_worker, make_app, backend_redis):
    worker = start_worker("-P", "solo", "-c", "3", "-n", "solo@%h")
    assert "concurrency: 3 (swift solo)" in worker.stdout
    app = make_app()
    stats = app.control.inspect(timeout=1).stats()
    node = next(iter(stats))
    # As Python's solo pool: one task at a time, the prefetch window still concurrency x multiplier.
    assert stats[node]["pool"]["max-concurrency"] == 1 and stats[node]["prefetch_count"] == 12
    assert stats[node]["pool"]["implementation"] == "swift-celery-worker:solo"
    results = [app.tasks["tasks.sleep"].delay(0.4) for _ in range(3)]
    assert [r.get(timeout=10) for r in results] == [0.4, 0.4, 0.4]
    done = sorted(datetime.fromisoformat(app.backend.get_task_meta(r.id)["date_done"]) for r in results)
    # Each started after the one before had finished: their ends are at least a task's length apart.
    assert all((b - a).total_seconds() >= 0.35 for a, b in zip(done, done[1:])), done


def test_solo_runs_a_waiting_task_while_the_blocking_pop_waits(start_worker, make_app):
    """At idle the one thread's blocking pop (up to 1 s) is a request in flight, not a blocked thread: a task that
    awaits a timer goes on when the timer fires, not when the pop returns."""
    worker = start_worker("-P", "solo")
    app = make_app()
    assert app.tasks["tasks.add"].delay(1, 1).get(timeout=10) == 2
    time.sleep(1.5)  # the queue is empty: the worker waits in a blocking pop
    durations = []
    for _ in range(3):
        started = time.monotonic()
        assert app.tasks["tasks.sleep"].delay(0.2).get(timeout=10) == 0.2
        durations.append(time.monotonic() - started)
    # The pop sent after the task started waits for 1 s: had it held the thread, every result would come then (the
    # best of three, so that one slow round trip on a loaded machine does not count).
    assert min(durations) < 0.8, durations
    assert eventually(lambda: "succeeded" in worker.log)
