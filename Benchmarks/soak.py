"""Memory over a long run: the Swift worker's resident memory, round after round of real Celery messages, to show
that it stays flat (nothing that a task, a failure or a result leaves behind accumulates).

    .venv/bin/python Benchmarks/soak.py --rounds 10 --tasks 50000               # Benchmarks/README.md's figures
    .venv/bin/python Benchmarks/soak.py --rounds 2 --tasks 200 --worker BINARY  # CI: checks that it still works

For each pool (`--pools`, the thread pool, the solo pool and the process pool by default) it starts one worker with
task events on (`-E`; `--no-task-events` leaves them off), then, each round, pre-fills N messages made by Celery's
own producer and waits until every one of them has its result. The messages are a mix that takes the worker's main
paths: `tasks.add` in JSON and in msgpack, `tasks.fail` (a FAILURE with its traceback), a task no worker has
(FAILURE `NotRegistered`) and `tasks.echo` with a 2 KB argument (`--only KIND`: every message of one of those
kinds). After each round it waits a second and reads the resident memory (`VmRSS`) of the worker's process tree; at
the end the peak (`VmHWM`). The same messages serve every round, each with new task ids and delivery tags. A message
that gets no result within a minute of the last one that did ends the run with exit status 1: nothing may be lost.
"""
import argparse
import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "Interop"))

import redis  # noqa: E402
from celery import Celery  # noqa: E402

from drain import WORKER, fresh_databases, push_all, tree_memory  # noqa: E402
from redisproc import RedisProcess  # noqa: E402

# The kinds of message (task, args, kwargs, serializer), by the name `--only` takes.
KINDS = {
    "add": ("tasks.add", (2, 3), {}, "json"),
    "add-msgpack": ("tasks.add", (4, 5), {}, "msgpack"),
    "fail": ("tasks.fail", ("boom",), {}, "json"),
    "unknown": ("tasks.unknown_to_every_worker", (1,), {}, "json"),
    "echo-2k": ("tasks.echo", ("x" * 2048,), {"note": "soak"}, "json"),
}
# One round's mix, per ten messages.
MIX = [KINDS["add"]] * 5 + [KINDS["add-msgpack"]] * 2 + [KINDS["fail"], KINDS["unknown"], KINDS["echo-2k"]]
POOLS = {"threads": [], "solo": ["-P", "solo"], "process": ["-P", "process"]}


def make_messages(broker, count):
    """`count` messages of the mix, exactly as Celery's producer writes them, captured off the list."""
    r = redis.Redis.from_url(broker)
    r.delete("celery")
    apps = {}
    for serializer in ("json", "msgpack"):
        apps[serializer] = Celery("soak", broker=broker)
        apps[serializer].conf.task_serializer = serializer
    for index in range(count):
        task, args, kwargs, serializer = MIX[index % len(MIX)]
        apps[serializer].send_task(task, args, kwargs)
    raw = r.lrange("celery", 0, -1)
    r.delete("celery")
    if len(raw) != count:
        raise RuntimeError(f"captured {len(raw)} of {count} messages: something else consumes the 'celery' list")
    return raw


def renamed(messages):
    """The messages with new task ids and delivery tags (every other byte as it was)."""
    fresh = []
    for raw in messages:
        envelope = json.loads(raw)
        for old in (envelope["headers"]["id"], envelope["properties"]["delivery_tag"]):
            raw = raw.replace(old.encode(), str(uuid.uuid4()).encode())
        fresh.append(raw)
    return fresh


def wait_for_results(results, expected, stall=60.0):
    """Waits until `expected` results are stored; returns how many are, at the latest `stall` seconds after the
    count last grew."""
    last, moved = results.dbsize(), time.monotonic()
    while last < expected and time.monotonic() - moved < stall:
        time.sleep(0.05)
        now = results.dbsize()
        if now != last:
            last, moved = now, time.monotonic()
    return last


def soak(pool, server, messages, rounds, worker, acks_late, task_events=True):
    broker, backend, rb, rr = fresh_databases(server)
    args = [worker, "--broker", broker, "--result-backend", backend, "-c", "2", "-l", "WARNING", *POOLS[pool]]
    if task_events:
        args.append("-E")
    if acks_late:
        args.append("--acks-late")
    log = open(f"/tmp/swift-celery-soak-{pool}.log", "wb")
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log)
    rows, stored = [], 0
    try:
        time.sleep(0.5)
        for number in range(1, rounds + 1):
            batch = renamed(messages)
            started = time.monotonic()
            push_all(rb, "celery", batch)
            stored = wait_for_results(rr, number * len(batch))
            seconds = time.monotonic() - started
            if stored < number * len(batch):
                print(f"{pool}: round {number}: {number * len(batch) - stored} messages got no result "
                      f"(see /tmp/swift-celery-soak-{pool}.log)", flush=True)
                return rows, False
            time.sleep(1.0)
            rows.append({"round": number, "tasks": stored, "rate": len(batch) / seconds,
                         "rss_mb": tree_memory(proc.pid, "VmRSS") / 1e6})
            print(f"{pool}: round {number}: {stored} results, {len(batch) / seconds:,.0f} tasks/s, "
                  f"RSS {rows[-1]['rss_mb']:.1f} MB", flush=True)
        rows[-1]["peak_mb"] = tree_memory(proc.pid, "VmHWM") / 1e6
        return rows, True
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--tasks", type=int, default=50000, help="messages per round")
    parser.add_argument("--pools", default="threads,solo,process",
                        help=f"comma-separated, among {', '.join(POOLS)} (default: all three)")
    parser.add_argument("--acks-late", action="store_true", help="every worker with --acks-late")
    parser.add_argument("--no-task-events", action="store_true", help="every worker without -E")
    parser.add_argument("--only", choices=KINDS,
                        help="every message of one kind (for the rate of that kind, with and without task events)")
    parser.add_argument("--worker", default=WORKER, help="the swift-celery-worker binary (default: the release build)")
    options = parser.parse_args()
    pools = [name.strip() for name in options.pools.split(",") if name.strip()]
    unknown = [name for name in pools if name not in POOLS]
    if unknown or options.rounds < 1 or options.tasks < 1:
        parser.error(f"unknown pool {unknown[0]!r}" if unknown else "--rounds and --tasks must be 1 or more")
    if options.only:
        MIX[:] = [KINDS[options.only]]
    server = RedisProcess().start()
    table, ok = {}, True
    try:
        messages = make_messages(server.url(1), options.tasks)
        for pool in pools:
            rows, done = soak(pool, server, messages, options.rounds, options.worker, options.acks_late,
                              task_events=not options.no_task_events)
            table[pool] = rows
            ok = ok and done
    finally:
        server.stop()
    print(f"\n{options.rounds} rounds of {options.tasks} messages ({options.only or 'the mix'}), "
          f"acks-late {'on' if options.acks_late else 'off'}, task events {'off' if options.no_task_events else 'on'}; "
          "resident memory of the worker's process tree (MB)")
    print(f"{'pool':<8} {'after 1':>8} {'after 2':>8} {'last':>8} {'peak':>8} {'last - 2nd':>11} {'tasks':>10}")
    for pool, rows in table.items():
        if not rows:
            continue
        second = rows[1]["rss_mb"] if len(rows) > 1 else rows[0]["rss_mb"]
        print(f"{pool:<8} {rows[0]['rss_mb']:>8.1f} {second:>8.1f} {rows[-1]['rss_mb']:>8.1f} "
              f"{rows[-1].get('peak_mb', 0):>8.1f} {rows[-1]['rss_mb'] - second:>+11.1f} {rows[-1]['tasks']:>10}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
