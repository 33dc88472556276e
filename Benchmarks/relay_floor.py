"""The relay floor: how fast a worker that costs nothing could drain with the Swift worker's own Redis scripts, at
a given prefetch window, against the Swift worker itself in the same minutes.

    .venv/bin/python Benchmarks/relay_floor.py --tasks 20000 --runs 5
    .venv/bin/python Benchmarks/relay_floor.py --tasks 20000 --runs 5 --windows 8

`relay.c` (compiled here with the system C compiler and hiredis) is one thread that pops `window` messages at a time
with the worker's pop-and-record script (read from the Swift sources, as `redis_instructions.py` reads them), runs no
task, and settles each batch with the worker's settle script (its early acknowledgements and a SUCCESS result per
task), sent right after the next pop so that Redis runs it while the relay reads the popped messages. "relay2" keeps
two pops of half the window each in flight, so that Redis always has the next pop waiting. "relay2-1c" is relay2 with
its settles on the pops' connection (each written right after the next pop), where the others have a connection for
each. Nothing decodes a message, no thread hands anything to another, and no task runs: the rate it reaches is what
Redis, its scripts and the window allow on this machine. With `--work US` the relays spin that many microseconds per
task on their one thread, as a worker on one thread with that much CPU per task would. Each run alternates, for each
window, the three relays and the release build of the Swift worker (`-c 2 --prefetch-multiplier window/2`, so that
Celery's prefetch limit is that window), with its thread pool and with its solo pool (`-P solo`), on the same
pre-filled messages, made by Celery's own producer. Printed: tasks/s and Redis's CPU per task for each, the worker's
CPU per task, and its ratio to the fastest relay; medians of `--runs`. It exits non-zero if a task is lost.
"""
import argparse
import functools
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from drain import HERE, WORKER, RedisProcess, make_messages, push_all, redis_share
from redis_cost import run as run_worker
from redis_instructions import scripts


def build_relay(directory):
    compiler = shutil.which("cc") or shutil.which("clang") or shutil.which("gcc")
    if compiler is None:
        sys.exit("no C compiler (cc, clang or gcc) for relay.c")
    binary = Path(directory) / "relay"
    subprocess.run([compiler, "-O2", "-Wall", "-Werror", "-o", str(binary), str(HERE / "relay.c"), "-lhiredis"],
                   check=True)
    return binary


@functools.cache
def worker_scripts():
    """The working tree's pop-and-record and settle scripts, read from the Swift sources once."""
    return scripts(".")


def run_relay(server, messages, binary, window, depth, work=0.0, connections=2):
    """One drain of `messages` by the relay, `depth` pops in flight, spinning `work` µs per task, its settles on
    a connection of their own (`connections` 2) or on the pops' (1); its rate and Redis's CPU per task."""
    rb, rr = redis.Redis.from_url(server.url(1)), redis.Redis.from_url(server.url(0))
    rb.flushdb()
    rr.flushdb()
    pop_source, settle_source = worker_scripts()
    pop, settle = rb.script_load(pop_source), rb.script_load(settle_source)
    push_all(rb, "celery", messages)
    # The relay reads Redis's CPU itself, over the span it times, not around its start and connections.
    done = subprocess.run([str(binary), str(server.port), str(window), pop, settle, str(len(messages)), str(depth),
                           str(work), str(server.proc.pid), str(connections)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"relay failed (status {done.returncode}): {done.stderr.strip()}")
    settled, seconds, redis_seconds = done.stdout.split()
    stored, left = rr.dbsize(), rb.hlen("unacked") + rb.zcard("unacked_index")
    lost = len(messages) - stored
    if int(settled) != len(messages) or lost or left:
        sys.exit(f"relay: {settled} settled, {stored} results stored of {len(messages)}, {left} left in unacked")
    return {"rate": len(messages) / float(seconds), "lost": 0,
            **redis_share(float(redis_seconds), len(messages), float(seconds))}


def windows_list(text):
    """`--windows`: comma-separated even numbers of at least 2 (a multiplier times `-c 2`)."""
    try:
        windows = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of whole numbers: {text!r}") from None
    if any(w < 2 or w % 2 for w in windows):
        raise argparse.ArgumentTypeError("each window is a prefetch multiplier times 2 (-c 2): an even number of at "
                                         "least 2")
    return windows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--windows", type=windows_list, default="8,32,64",
                        help="prefetch windows, messages per -c 2 worker (default 8,32,64: multipliers 4, 16, 32)")
    parser.add_argument("--worker", default=WORKER, help="the swift-celery-worker binary (default: the release build)")
    parser.add_argument("--work", type=float, default=0.0,
                        help="microseconds of CPU the relays spin per task, on their one thread (default 0)")
    options = parser.parse_args()
    windows = options.windows
    if options.tasks < 1 or options.runs < 1:
        parser.error("--tasks and --runs must be at least 1")
    if not 0 <= options.work <= 10000:
        parser.error("--work: microseconds per task, from 0 to 10000")
    server = RedisProcess().start()
    try:
        with tempfile.TemporaryDirectory() as directory:
            relay = build_relay(directory)
            messages = make_messages(server.url(1), options.tasks, "tasks.noop", "json")
            kinds = ["relay", "relay2", "relay2-1c", "swift", "solo"]
            results = {(kind, w): [] for kind in kinds for w in windows}
            for number in range(options.runs):
                for window in windows:
                    for kind in kinds if number % 2 == 0 else kinds[::-1]:
                        if kind.startswith("relay"):
                            outcome = run_relay(server, messages, relay, window, 1 if kind == "relay" else 2,
                                                options.work, 1 if kind == "relay2-1c" else 2)
                        else:
                            pool = ["-P", "solo"] if kind == "solo" else []
                            outcome = run_worker(server, messages, options.worker,
                                                 [*pool, "--prefetch-multiplier", str(window // 2)])
                            if outcome["lost"]:
                                sys.exit(f"the Swift worker ({kind}) lost {outcome['lost']} task(s) at window {window}")
                        results[kind, window].append(outcome)
                        extra = f"  worker {outcome['worker_us']:5.1f} us CPU/task" if "worker_us" in outcome else ""
                        print(f"window {window:3}  {kind:9}  {outcome['rate']:8.0f} tasks/s  "
                              f"redis {outcome['redis_us']:5.1f} us CPU/task{extra}", flush=True)
                        time.sleep(0.2)
        print(f"\nmedians of {options.runs} run(s) of {options.tasks} tasks.noop (json); relay: one pop of the "
              f"whole window in flight; relay2: two pops of half the window each; relay2-1c: relay2 with its settles on "
              f"the pops' connection; {options.work:g} µs of work per task in the relays; swift: the thread pool, "
              "solo: the solo pool (-P solo)")

        def median(kind, window, key):
            return statistics.median(r[key] for r in results[kind, window])

        print("| window | relay tasks/s | Redis µs/task | relay2 tasks/s | Redis µs/task | relay2-1c tasks/s "
              "| Redis µs/task | Swift tasks/s | Redis µs/task | solo tasks/s | Redis µs/task | Swift worker µs/task "
              "| solo worker µs/task | Swift / best relay | solo / best relay |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for window in windows:
            best = max(median(kind, window, "rate") for kind in kinds if kind.startswith("relay"))
            cells = " | ".join(f"{median(kind, window, 'rate'):.0f} | {median(kind, window, 'redis_us'):.1f}"
                               for kind in kinds)
            print(f"| {window} | {cells} | {median('swift', window, 'worker_us'):.1f} "
                  f"| {median('solo', window, 'worker_us'):.1f} | {median('swift', window, 'rate') / best:.2f} "
                  f"| {median('solo', window, 'rate') / best:.2f} |")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
