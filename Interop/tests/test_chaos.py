"""Chaos: thousands of tasks, a Swift and a Python worker on one queue, the Swift worker SIGKILLed again and again,
redis-server restarted once. Every task must end with its result; duplicates only where acks-late allows them.

The Python worker joins after the Redis restart: kombu's consumer pops with BRPOP and records the message in
`unacked` in a second round trip, so a Redis shutdown between the two loses that message on the Python side (a known
kombu window, seen in this test when Python consumed across the restart). The Swift worker pops and records in one
script and is consuming while Redis restarts.
"""
import json
import os
import random
import re
import signal
import threading
import time

import redis as redis_lib
from celery import Celery, chain, chord

from conftest import PythonWorker, WorkerProcess
from redisproc import RedisProcess

TASKS = 4000
KILLS = 4
VISIBILITY = "4"


class Chaos:
    """Swift workers (acks late, `-c 4`) SIGKILLed `KILLS` times at random moments, each replaced at once; after the
    second kill redis-server restarts (keeping every key) and a Python worker joins the queue."""

    def __init__(self, rng, server, tmp_path, visibility=VISIBILITY):
        self.rng, self.server, self.tmp_path, self.visibility = rng, server, tmp_path, visibility
        self.broker, self.backend = server.url(1), server.url(0)
        self.args = ["--broker", self.broker, "--result-backend", self.backend, "--acks-late", "--visibility-timeout",
                     visibility, "-c", "4"]
        self.swifts = []
        self.python = None
        self.kills = 0
        self.queued_after = None
        self.events = []

    def run(self):
        self.swifts.append(WorkerProcess(self.args, self.tmp_path / "swift0.log"))
        self.swifts[-1].wait_ready()
        while self.kills < KILLS:
            time.sleep(self.rng.uniform(0.3, 1.2))
            self.swifts[-1].stop(signal.SIGKILL)
            self.events.append(f"kill at {time.time():.3f}")
            self.kills += 1
            self.swifts.append(WorkerProcess(self.args, self.tmp_path / f"swift{len(self.swifts)}.log"))
            self.swifts[-1].wait_ready(timeout=30)
            if self.kills == 2:
                time.sleep(self.rng.uniform(0.1, 0.5))
                self.events.append(f"restart at {time.time():.3f}")
                self.server.restart()
                self.events.append(f"restarted at {time.time():.3f}")
                self.python = PythonWorker(self.broker, self.backend, self.tmp_path / "python.log", "-c", "2",
                                           env={"ACKS_LATE": "1", "VISIBILITY_TIMEOUT": self.visibility})
                self.python.wait_ready()
        self.queued_after = redis_lib.Redis.from_url(self.broker).llen("celery")

    def wait_for_results(self, ids, seconds=60, describe=lambda task_id: task_id):
        """Waits until every id has a stored result; else fails, saying where the missing ones are (`describe`
        names one)."""
        results = redis_lib.Redis.from_url(self.backend)
        deadline = time.monotonic() + seconds
        missing = list(ids)
        while missing and time.monotonic() < deadline:
            values = results.mget([f"celery-task-meta-{task_id}" for task_id in missing])
            missing = [task_id for task_id, raw in zip(missing, values) if raw is None]
            time.sleep(0.5)
        if missing:
            broker_redis = redis_lib.Redis.from_url(self.broker)
            held = {json.loads(raw)[0]["headers"]["id"] for raw in broker_redis.hvals("unacked")}
            queued = broker_redis.llen("celery")
            raise AssertionError(f"{len(missing)} tasks never got a result, e.g. {[describe(i) for i in missing[:3]]}; "
                                 f"{len(held & set(missing))} of them still in unacked, {queued} messages queued, "
                                 f"unacked holds {broker_redis.hlen('unacked')}, "
                                 f"sweep lock ttl {broker_redis.pttl('unacked_mutex')} ms; {self.events}")
        decode = Celery(backend=self.backend).backend.decode
        return {task_id: decode(raw) for task_id, raw in
                zip(ids, results.mget([f"celery-task-meta-{task_id}" for task_id in ids]))}

    def stop(self):
        for worker in self.swifts:
            if worker.alive():
                worker.stop(signal.SIGKILL)
        if self.python is not None:
            self.python.kill_all()

    def runs(self, names):
        """How often each task id of the named tasks succeeded, on the Swift workers and on the Python worker; and
        how many runs each kind of worker made."""
        pattern = re.compile(r"Task tasks\.(?:" + "|".join(names) + r")\[([0-9a-f-]+)\] succeeded")
        runs: dict[str, int] = {}
        for log in [worker.log for worker in self.swifts] + [self.python.log]:
            for task_id in pattern.findall(log):
                runs[task_id] = runs.get(task_id, 0) + 1
        swift_runs = sum(len(pattern.findall(worker.log)) for worker in self.swifts)
        return runs, swift_runs, len(pattern.findall(self.python.log))


def test_kill_swift_workers_and_restart_redis(tmp_path):
    rng = random.Random(int(os.environ.get("CHAOS_SEED", "1234")))
    server = RedisProcess().start()
    chaos = Chaos(rng, server, tmp_path)
    producer = Celery("producer", broker=chaos.broker)
    producer.conf.task_serializer = "json"
    expected = {}
    with producer.producer_or_acquire() as publisher:
        for i in range(TASKS):
            # a quarter of the tasks sleep, so the queue is still full while workers are killed and Redis restarts
            if i % 4 == 0:
                expected[producer.send_task("tasks.sleep", (0.02,), producer=publisher).id] = 0.02
            else:
                expected[producer.send_task("tasks.add", (i, i), producer=publisher).id] = 2 * i
    ids = list(expected)
    try:
        chaos.run()
        for task_id, document in chaos.wait_for_results(ids).items():
            assert document["status"] == "SUCCESS" and document["result"] == expected[task_id], document
    finally:
        chaos.stop()
        server.stop()

    runs, swift_runs, python_runs = chaos.runs(["add", "sleep"])
    duplicates = sum(count - 1 for count in runs.values())
    print(f"\n{TASKS} tasks: {swift_runs} runs on Swift workers ({len(chaos.swifts)} processes, {chaos.kills} "
          f"SIGKILLs), {python_runs} on the Python worker, {duplicates} duplicate runs, redis-server restarted once, "
          f"{chaos.queued_after} still queued when the last kill was done")
    assert set(runs) == set(ids)
    assert swift_runs > 0 and python_runs > 0
    # acks-late redelivery can repeat what a killed Swift worker held (at most its prefetch window, 4 x 4), and what
    # was in flight across the Redis restart
    assert duplicates <= (chaos.kills + 1) * 16


CANVASES = 150
BACKLOG = 2000
BACKLOG_LIST = "celery\x06\x169"
# Longer than a chord's claim to send its body (Celery 5.7: 6 s, and 21 s once the body is being sent). A part run
# again after its worker was killed between the claim and the body's message finds the claim gone only then: a Python
# worker gives up on a claim still held, and the chord's body would never be sent.
CANVAS_VISIBILITY = "25"


def test_chords_and_chains_survive_killed_workers_and_a_redis_restart(tmp_path):
    """Chords and chains whose steps the workers send themselves, sent while the same chaos goes on. Every chord's
    body and every chain's last step must end with the right result, and each chord's body run at least once: a part
    run again after its worker was killed is counted once (Celery 5.7's `.d` set), and the claim lets one worker send
    the body.

    A backlog of tasks that sleep, at the lowest priority, keeps every worker busy throughout, so the Swift workers
    always fetch with the script that pops and records at once. An idle worker blocks in `BRPOP` instead and records
    what it pops straight after: a SIGKILL in between loses that message, as it does kombu's (README, "Reliability").
    The canvases go at the default priority, ahead of the backlog."""
    rng = random.Random(int(os.environ.get("CHAOS_SEED", "1234")))
    server = RedisProcess().start()
    chaos = Chaos(rng, server, tmp_path, visibility=CANVAS_VISIBILITY)
    producer = Celery("producer", broker=chaos.broker, backend=chaos.backend)
    producer.conf.task_serializer = "json"
    add, mul, tsum = (producer.signature(f"tasks.{name}") for name in ("add", "mul", "tsum"))
    with producer.producer_or_acquire() as publisher:
        for _ in range(BACKLOG):
            producer.send_task("tasks.sleep", (0.02,), priority=9, producer=publisher)
    expected, bodies, lasts, refused, kinds = {}, [], [], [], {}

    def send():
        # A chord and a chain every 30 ms, for about as long as the chaos lasts. One that cannot be sent while Redis
        # restarts (after kombu's retries) is left out.
        for i in range(CANVASES):
            try:
                body = chord([add.clone((i, j)) for j in range(4)], tsum.clone()).apply_async()
                expected[body.id] = 4 * i + 6
                bodies.append(body.id)
                kinds[body.id] = f"the body of chord {body.parent.id} (parts {[r.id for r in body.parent.results]})"
                last = chain(add.clone((i, 1)), add.clone((10,)), mul.clone((2,))).apply_async()
                expected[last.id] = (i + 11) * 2
                lasts.append(last.id)
                kinds[last.id] = f"the last of chain {[last.parent.parent.id, last.parent.id, last.id]}"
            except Exception as error:  # noqa: BLE001 - only counted
                refused.append(repr(error))
            time.sleep(0.03)

    sender = threading.Thread(target=send)
    try:
        sender.start()
        chaos.run()
        backlog_after = redis_lib.Redis.from_url(chaos.broker).llen(BACKLOG_LIST)
        sender.join()
        assert backlog_after > 0, "the backlog ran out before the chaos ended: make it longer"
        assert len(refused) < 10, refused
        for task_id, document in chaos.wait_for_results(list(expected), describe=lambda task_id: kinds[task_id]).items():
            assert document["status"] == "SUCCESS" and document["result"] == expected[task_id], document
    finally:
        sender.join()
        chaos.stop()
        server.stop()

    body_runs, swift_runs, python_runs = chaos.runs(["tsum"])
    step_runs, _, _ = chaos.runs(["add", "mul"])
    print(f"\n{len(bodies)} chords, {len(lasts)} chains ({len(refused)} refused while Redis restarted): "
          f"{len(chaos.swifts)} Swift processes, {chaos.kills} SIGKILLs, redis-server restarted once; chord bodies "
          f"run {swift_runs} times on Swift workers and {python_runs} on the Python worker; "
          f"{sum(count - 1 for count in body_runs.values())} bodies run twice or more; {backlog_after} of the "
          f"backlog left when the last kill was done")
    assert set(bodies) <= set(body_runs)
    assert set(lasts) <= set(step_runs)
