"""kombu's delivery contract with Swift and Python workers on the same Redis: nothing lost, bookkeeping shared."""
import json
import signal
import threading
import time

import pytest

from conftest import eventually


def results(backend_redis, app, ids):
    out = {}
    for task_id in ids:
        raw = backend_redis.get(f"celery-task-meta-{task_id}")
        if raw is not None:
            out[task_id] = app.backend.decode(raw)
    return out


def wait_for_results(backend_redis, app, ids, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = results(backend_redis, app, ids)
        if len(found) == len(ids) and all(doc["status"] == "SUCCESS" for doc in found.values()):
            return found
        time.sleep(0.2)
    found = results(backend_redis, app, ids)
    missing = [task_id for task_id in ids if task_id not in found]
    raise AssertionError(f"{len(missing)} of {len(ids)} tasks have no result, e.g. {missing[:5]}")


def test_swift_and_python_workers_share_a_queue(start_worker, start_python_worker, make_app, broker_redis):
    start_python_worker("-c", "2")
    start_worker("-c", "2")
    app = make_app()
    pending = [app.tasks["tasks.whoami"].delay() for _ in range(200)]
    answers = [r.get(timeout=30) for r in pending]
    assert set(answers) == {"swift", "python"}, answers
    assert eventually(lambda: broker_redis.hlen("unacked") == 0 and broker_redis.zcard("unacked_index") == 0)


def test_swift_dies_and_a_python_worker_restores_its_message(start_worker, start_python_worker, make_app,
                                                            broker_redis):
    swift = start_worker("--acks-late", "-c", "1")
    app = make_app()
    result = app.tasks["tasks.sleep"].delay(1)
    swift.wait_for_log("received")
    time.sleep(0.2)
    swift.stop(signal.SIGKILL)
    assert broker_redis.hlen("unacked") == 1
    time.sleep(1.2)
    python = start_python_worker("-c", "1", env={"VISIBILITY_TIMEOUT": "1", "ACKS_LATE": "1"})
    assert result.get(timeout=30) == 1
    python.wait_for_log(f"Task tasks.sleep[{result.id}] succeeded")
    assert eventually(lambda: broker_redis.hlen("unacked") == 0)


def test_python_dies_and_the_swift_worker_restores_its_message(start_worker, start_python_worker, make_app,
                                                               broker_redis):
    python = start_python_worker("-c", "1", env={"ACKS_LATE": "1"})
    app = make_app()
    result = app.tasks["tasks.sleep"].delay(2)
    python.wait_for_log(f"Task tasks.sleep[{result.id}] received")
    time.sleep(0.3)
    python.kill_all()
    assert broker_redis.hlen("unacked") == 1
    time.sleep(1.2)
    swift = start_worker("--visibility-timeout", "1")
    assert result.get(timeout=30) == 2
    swift.wait_for_log(f"Task tasks.sleep[{result.id}] succeeded")
    assert "Restored 1 message(s)" in swift.log
    assert eventually(lambda: broker_redis.hlen("unacked") == 0)


def test_long_acks_late_task_is_not_stolen_by_another_workers_sweep(start_worker, make_app, broker_redis):
    """Python would redeliver a task running longer than the visibility timeout; the Swift worker keeps it alive."""
    first = start_worker("--acks-late", "--visibility-timeout", "2", "-c", "1")
    app = make_app()
    result = app.tasks["tasks.sleep"].delay(5)
    first.wait_for_log("received")
    time.sleep(3)
    second = start_worker("--acks-late", "--visibility-timeout", "2", "-c", "1")  # sweeps at start
    assert result.get(timeout=15) == 5
    time.sleep(0.5)
    assert "Restored" not in second.log and "received" not in second.log
    assert first.log.count(f"[{result.id}] succeeded") == 1


def test_warm_shutdown_under_load_loses_nothing(start_worker, make_app, backend_redis, broker_redis):
    app = make_app()
    ids = [app.tasks["tasks.sleep"].delay(0.05).id for _ in range(300)]
    worker = start_worker("-c", "4")
    deadline = time.monotonic() + 30
    while len(results(backend_redis, app, ids)) < 60 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert worker.stop(signal.SIGTERM) == 0
    done = results(backend_redis, app, ids)
    assert 60 <= len(done) < 300
    assert broker_redis.hlen("unacked") == 0
    assert len(done) + broker_redis.llen("celery") == 300  # each task either ran or is back in the queue
    start_worker("-c", "4")
    wait_for_results(backend_redis, app, ids, timeout=60)


def test_priorities_run_in_python_order(start_worker, make_app):
    app = make_app()
    sent = {}
    for priority in [9, 0, 5, 3, 8, 1]:
        sent[app.tasks["tasks.echo"].apply_async((priority,), priority=priority).id] = priority
    worker = start_worker("-c", "1", "--prefetch-multiplier", "1")
    worker.wait_for_log("succeeded", count=6)
    order = []
    for line in worker.log.splitlines():
        if line.endswith("received"):
            task_id = line.split("[")[-1].split("]")[0]
            order.append(sent[task_id])
    assert order == [0, 1, 5, 3, 8, 9]


def test_several_queues_are_all_consumed(start_worker, make_app):
    app = make_app()
    ids = [app.tasks["tasks.add"].apply_async((i, i), queue=q) for i, q in enumerate(["qa", "qb", "qa", "qb"])]
    start_worker("-Q", "qa,qb")
    assert [r.get(timeout=10) for r in ids] == [0, 2, 4, 6]


@pytest.mark.parametrize("kind", ["swift", "python"])
def test_a_queue_whose_key_is_not_a_list_is_left_out_and_the_others_consumed(start_worker, start_python_worker, make_app,
                                                                            broker_redis, kind):
    """A key of another type where a queue's list should be (a string, here) makes every fetch of the lists fail
    with `WRONGTYPE`. A Python worker stops (`Unrecoverable error`). The Swift worker logs the key, leaves it out of
    its fetches for 10 seconds at a time and consumes the other queues, priorities included; once the key is a list
    again (here: gone), its queue is consumed too."""
    queues = [f"wrongtype-{kind}-a", f"wrongtype-{kind}-b"]
    broker_redis.set(queues[1], "not a list")
    app = make_app()
    if kind == "python":
        worker = start_python_worker("-Q", ",".join(queues), "-P", "solo", ready=False)
        worker.wait_for_log("Unrecoverable error", timeout=15)
        assert worker.proc.wait(timeout=15) != 0
        return
    worker = start_worker("-Q", ",".join(queues))
    assert app.tasks["tasks.add"].apply_async((1, 2), queue=queues[0]).get(timeout=10) == 3
    assert app.tasks["tasks.add"].apply_async((3, 4), queue=queues[0], priority=6).get(timeout=10) == 7
    assert (f"consumer: Cannot fetch from '{queues[1]}': the key holds a string, not a list (WRONGTYPE); left out of "
            "the fetches for 10 seconds, the other queues are consumed.") in worker.log
    broker_redis.delete(queues[1])
    assert app.tasks["tasks.add"].apply_async((5, 6), queue=queues[1]).get(timeout=15) == 11
    assert "Unrecoverable" not in worker.log


def test_an_unacked_record_that_is_not_kombus_is_set_aside_not_lost_and_python_workers_start_again(
        start_worker, start_python_worker, make_app, broker_redis):
    """A record in `unacked` that is not kombu's `[message, exchange, routing_key]` (written by hand, or cut short),
    past the visibility timeout. kombu's restore raises on it and leaves it: a Python worker stops at its start's
    sweep (`Unrecoverable error: JSONDecodeError(…)`), every time. The Swift worker's sweep logs it and leaves the
    record in `unacked`, out of its index, so that no sweep meets it again: a Python worker then starts. Before, the
    Swift worker deleted it and counted it as restored."""
    broker_redis.hset("unacked", "cut-short", '[{"body": "e30=", "headers": {}')
    broker_redis.zadd("unacked_index", {"cut-short": 1000})
    stopped = start_python_worker("-P", "solo", ready=False)
    stopped.wait_for_log("Unrecoverable error: JSONDecodeError", timeout=15)
    assert stopped.proc.wait(timeout=15) != 0
    worker = start_worker()
    worker.wait_for_log("Cannot restore the unacknowledged message cut-short: its record is not kombu's [message, "
                        "exchange, routing_key]. It is left in the unacked hash, out of its index, so that no sweep "
                        "meets it again")
    assert "Restored" not in worker.log, worker.log
    assert broker_redis.hget("unacked", "cut-short") == b'[{"body": "e30=", "headers": {}'
    assert broker_redis.zscore("unacked_index", "cut-short") is None
    worker.stop()
    start_python_worker("-P", "solo")
    assert make_app().send_task("tasks.add", (1, 2)).get(timeout=10) == 3


def test_early_ack_removes_the_message_before_the_task_runs(start_worker, make_app, broker_redis):
    worker = start_worker("-c", "1")
    app = make_app()
    result = app.tasks["tasks.sleep"].delay(1)
    worker.wait_for_log("received")
    time.sleep(0.3)
    assert broker_redis.hlen("unacked") == 0  # acked at start: a crash now loses it, as in Python
    assert result.get(timeout=10) == 1


def test_acks_late_keeps_the_message_until_the_result_is_stored(start_worker, make_app, broker_redis,
                                                               backend_redis):
    worker = start_worker("-c", "1", "--acks-late")
    app = make_app()
    result = app.tasks["tasks.sleep"].delay(1)
    worker.wait_for_log("received")
    time.sleep(0.3)
    assert broker_redis.hlen("unacked") == 1
    stored = json.loads(list(broker_redis.hgetall("unacked").values())[0])
    assert stored[1:] == ["", "celery"] and stored[0]["headers"]["id"] == result.id
    assert result.get(timeout=10) == 1
    assert eventually(lambda: broker_redis.hlen("unacked") == 0)


def test_cold_shutdown_gives_acks_late_work_back_for_redelivery(start_worker, make_app, broker_redis):
    worker = start_worker("-c", "1", "--acks-late")
    app = make_app()
    results = [app.tasks["tasks.sleep"].delay(3) for _ in range(3)]
    worker.wait_for_log("received", count=3)
    assert worker.stop(signal.SIGQUIT) == 1
    assert "Cold shutdown" in worker.log and "Restoring 3 unacknowledged message(s)" in worker.log
    # The interrupted one is back at once with the two that never started, as in Celery 5.5 and later.
    assert broker_redis.hlen("unacked") == 0
    assert broker_redis.llen("celery") == 3
    start_worker("-c", "3")
    assert [r.get(timeout=15) for r in results] == [3, 3, 3]


@pytest.mark.parametrize("acks_late", [False, True], ids=["early-ack", "acks-late"])
def test_disable_prefetch_holds_only_what_runs_as_python_does(start_worker, start_python_worker, make_app,
                                                              broker_redis, acks_late):
    """`--disable-prefetch` (Celery 5.5): a message is fetched only when a slot is free, whatever the multiplier and
    even when the running task's message was acknowledged at its start. A Python worker given the same holds as
    many."""
    import celery

    late = ("--acks-late",) if acks_late else ()
    workers = {"swift": start_worker("-c", "1", "--disable-prefetch", "-Q", "noprefetchswift", *late)}
    if celery.VERSION >= (5, 5):
        workers["python"] = start_python_worker("-c", "1", "--disable-prefetch", "-Q", "noprefetchpython",
                                                env={"ACKS_LATE": "1" if acks_late else "0"})
    app = make_app()
    for kind, worker in workers.items():
        queue = f"noprefetch{kind}"
        # Tasks long enough that the first still runs when the fetches are counted, on a loaded machine too.
        results = [app.tasks["tasks.sleep"].apply_async((2.5,), queue=queue) for _ in range(3)]
        worker.wait_for_log("received")
        time.sleep(0.6)
        assert worker.log.count(" received") == 1, (kind, worker.log)
        assert broker_redis.llen(queue) == 2, kind
        assert [r.get(timeout=30) for r in results] == [2.5] * 3
        assert worker.log.count(" received") == 3


def test_eta_task_limit_bounds_the_eta_tasks_held_as_python_does(start_configured, make_app, broker_redis):
    """An ETA task frees its prefetch slot while it waits, as in Celery, but `worker_eta_task_limit` caps the messages
    held: with a window of 1 and a limit of 3, three of five ETA tasks are held and two wait in the queue. A Python
    worker given the same holds as many. All five run once their time comes."""
    import celery

    settings = {"worker_eta_task_limit": 3, "worker_prefetch_multiplier": 1}
    workers = {"swift": start_configured("swift", settings, "-c", "1", "-Q", "etalimitswift")}
    if celery.VERSION >= (5, 5):
        workers["python"] = start_configured("python", settings, "-c", "1", "-Q", "etalimitpython")
    app = make_app()
    for kind, worker in workers.items():
        queue = f"etalimit{kind}"
        results = [app.tasks["tasks.add"].apply_async((i, i), queue=queue, countdown=5) for i in range(5)]
        worker.wait_for_log("received", count=3)
        time.sleep(0.8)
        assert worker.log.count(" received") == 3, (kind, worker.log)
        assert broker_redis.llen(queue) == 2, kind
        assert [r.get(timeout=20) for r in results] == [0, 2, 4, 6, 8]


def test_prefetch_limit_is_concurrency_times_multiplier(start_worker, make_app, broker_redis):
    worker = start_worker("-c", "1", "--prefetch-multiplier", "2", "--acks-late")
    app = make_app()
    # The first task runs long enough that no third fetch can come before the counts, on a loaded machine too.
    results = [app.tasks["tasks.sleep"].delay(2 if index == 0 else 0.2) for index in range(6)]
    worker.wait_for_log("received", count=2)
    time.sleep(0.3)
    assert broker_redis.hlen("unacked") == 2  # one running, one reserved: prefetch_count = 1 x 2
    assert broker_redis.llen("celery") == 4
    assert [r.get(timeout=15) for r in results] == [2] + [0.2] * 5


def test_the_prefetch_window_holds_after_every_way_a_message_can_end(start_worker, make_app, broker_redis):
    """150 messages that end every way a message can (run, failed, retried, expired on arrival or while waiting,
    revoked before or while running or while waiting for an ETA, unknown, not a message at all, rate limited),
    shuffled: once they are all settled, nothing is left in the queue or in `unacked`, and the worker holds exactly
    its window again (each kind that gave a slot back twice, or never, would show here). Messages expired on arrival
    used to keep their slots, and stopped the worker once they filled its window."""
    import datetime
    import random

    from conftest import slots

    start_worker("-c", "2", "--prefetch-multiplier", "2", "--acks-late")
    app = make_app()
    rng = random.Random(20261207)

    def now():
        return datetime.datetime.now(datetime.timezone.utc)

    def later(seconds):
        return now() + datetime.timedelta(seconds=seconds)

    sent = []
    for index in range(150):
        kind = rng.randrange(11)
        if kind == 0:
            sent.append(app.send_task("tasks.add", (index, index), expires=now() - datetime.timedelta(seconds=1)))
        elif kind == 1:
            sent.append(app.send_task("tasks.add", (index, index), eta=later(rng.random() * 2)))
        elif kind == 2:
            sent.append(app.send_task("tasks.add", (index, index), countdown=rng.random()))
            app.control.revoke(sent[-1].id)
        elif kind == 3:
            sent.append(app.send_task("tasks.not_registered", (index,)))
        elif kind == 4:
            broker_redis.lpush("celery", b"not a message")
        elif kind == 5:
            sent.append(app.send_task("tasks.fail", ("x",)))
        elif kind == 6:
            sent.append(app.send_task("tasks.flaky", (2,)))
        elif kind == 7:
            sent.append(app.send_task("tasks.sleep", (0.05,)))
            if rng.random() < 0.5:
                app.control.revoke(sent[-1].id, terminate=rng.random() < 0.5)
        elif kind == 8:
            sent.append(app.send_task("tasks.add", (index, index), expires=later(rng.random() * 0.5)))
        elif kind == 9:
            app.control.rate_limit("tasks.mul", rng.choice(["100/s", "20/s", "0"]))
            sent.append(app.send_task("tasks.mul", (index, 2)))
        else:
            sent.append(app.send_task("tasks.add", (index, index)))
    assert eventually(lambda: broker_redis.llen("celery") == 0 and broker_redis.hlen("unacked") == 0, timeout=60)
    # Each task ended with a state stored (the unregistered ones' FAILURE too, where Python stores nothing).
    states = {result.id: app.backend.get_task_meta(result.id)["status"] for result in sent}
    assert {state for state in states.values()} <= {"SUCCESS", "FAILURE", "REVOKED"}, states
    # Every slot busy for a while, acknowledged late: the worker holds its window, no more, no less.
    running = [app.send_task("tasks.sleep", (3,)) for _ in range(slots(2))]
    waiting = [app.send_task("tasks.add", (index, index)) for index in range(10)]
    window = 2 * 2  # concurrency times the multiplier, with the solo pool too (as in Celery)
    assert eventually(lambda: broker_redis.hlen("unacked") == window)
    time.sleep(0.5)  # a worker that gives back too many fetches more by now
    assert broker_redis.hlen("unacked") == window and broker_redis.llen("celery") == len(running) + len(waiting) - window
    assert [result.get(timeout=20) for result in running + waiting] == [3] * len(running) + [2 * i for i in range(10)]


def test_an_idle_swift_worker_waits_without_brpop_and_pops_with_the_recording_script(start_worker, make_app,
                                                                                      broker_redis):
    """An idle worker waits for messages in BLMOVE of the queue's list onto itself, which takes nothing off it, with
    the script that pops and records behind it (and client tracking for the priority lists), not in BRPOP: nothing
    leaves a list before the script that records it in `unacked` takes it (a worker killed at any moment loses
    nothing). Each task below reaches an idle worker; MONITOR sees the worker blocked before the push, the message
    popped by that script after it, and no BRPOP at all."""
    worker = start_worker("-c", "2", "--acks-late")
    app = make_app()
    time.sleep(0.5)
    commands, stop = [], threading.Event()

    def watch():
        with broker_redis.monitor() as monitor:
            while not stop.is_set():
                commands.append(monitor.next_command())

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    time.sleep(1.3)  # an idle fetch's BLMOVE ends within a second, and MONITOR sees the next
    for i in range(5):
        assert app.tasks["tasks.add"].delay(i, i).get(timeout=10) == 2 * i
        time.sleep(0.2)
    # One on a priority list, which the worker watches while it blocks on the queue's own: the watch unblocks it
    # (MONITOR does not show CLIENT UNBLOCK; Redis counts it).
    unblocks = broker_redis.info("commandstats").get("cmdstat_client|unblock", {}).get("calls", 0)
    assert app.tasks["tasks.add"].apply_async((7, 7), priority=9).get(timeout=10) == 14
    assert broker_redis.info("commandstats").get("cmdstat_client|unblock", {}).get("calls", 0) > unblocks
    stop.set()
    thread.join(timeout=5)
    names = [command["command"].split(" ")[0].upper() for command in commands]
    assert "BRPOP" not in names, [c["command"][:80] for c in commands if c["command"].upper().startswith("BRPOP")]
    pushes = [i for i, command in enumerate(commands) if command["command"].startswith("LPUSH celery ")]
    assert len(pushes) == 5, [command["command"][:40] for command in commands]
    fetchers = {(c["client_address"], c["client_port"]) for c in commands if c["command"].startswith("BLMOVE ")}
    assert len(fetchers) == 1, fetchers
    fetcher = fetchers.pop()
    for push in pushes:
        # Blocked before it: the fetch connection's last command before the push is its BLMOVE.
        fetching = [c["command"] for c in commands[:push] if (c["client_address"], c["client_port"]) == fetcher]
        assert fetching and fetching[-1].startswith("BLMOVE celery celery RIGHT RIGHT "), fetching[-3:]
        # The recording script follows it (MONITOR lists the script's own RPOP, ZADD and HSET after it).
        assert "EVALSHA" in names[push + 1:push + 20], names[push:push + 20]
    [prioritized] = [i for i, command in enumerate(commands) if command["command"].startswith("LPUSH celery\\x06")]
    fetching = [c["command"] for c in commands[prioritized + 1:] if (c["client_address"], c["client_port"]) == fetcher]
    assert fetching and fetching[0].startswith("EVALSHA "), fetching[:3]
    assert "Redis refused" not in worker.log
    assert eventually(lambda: broker_redis.hlen("unacked") == 0)
