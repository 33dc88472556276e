"""What a drain costs Redis: the Swift worker against one loopback redis-server, with Redis's own CPU per task and
its per-command statistics (`INFO commandstats`), the numbers behind the "why" list in Benchmarks/README.md.

    .venv/bin/python Benchmarks/redis_cost.py --tasks 20000 --runs 3
    .venv/bin/python Benchmarks/redis_cost.py --tasks 20000 --runs 3 -- --prefetch-multiplier 16
    .venv/bin/python Benchmarks/redis_cost.py --tasks 20000 --runs 5 --compare-args="--prefetch-multiplier 16"
    .venv/bin/python Benchmarks/redis_cost.py --tasks 20000 --runs 5 --compare-one-cpu

Each run starts the release build of the worker (`-c 2`, plus any arguments after `--`), pre-fills N `tasks.noop`
messages made by Celery's own producer into a list nobody consumes, resets Redis's statistics, renames the list onto
the queue and waits for every result. It prints the drain rate, the worker's and Redis's CPU per task (and how much
of one core Redis was busy during the drain: Redis runs commands on one thread, so near 1 it is what limits the
rate), and for each command Redis ran: calls and microseconds per task (`evalsha` is the worker's pop-and-record and
settle scripts).

`--compare-one-cpu` runs each pair once as usual and once with Redis and the whole worker on one CPU (CPU 0, with
`taskset`): how much faster two CPUs drain than one says how much of the time Redis and the worker run at once.
"""
import argparse
import contextlib
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import redis

from drain import (WORKER, RedisProcess, ResultWatch, make_messages, push_all, redis_cpu, redis_share,
                   tree_cpu_and_switches)


@contextlib.contextmanager
def worker_before_drain(server, messages, worker, extra, cpus=None):
    """The worker (`-c 2`, plus `extra`) started on fresh broker and backend databases, with every message waiting
    in `celery.prefill`, a list nobody consumes (``drain`` renames it onto the queue). Yields the worker's process
    and clients of the broker and backend databases; stops the worker on the way out. With `cpus` (taskset's list),
    the worker and every thread of Redis run only on those CPUs until then (Redis gets its own CPUs back after). A
    worker that exits at once (a bad argument) ends the benchmark with its own error."""
    broker, backend = server.url(1), server.url(0)
    rb, rr = redis.Redis.from_url(broker), redis.Redis.from_url(backend)
    rb.flushdb()
    rr.flushdb()
    command = [worker, "--broker", broker, "--result-backend", backend, "-c", "2", "-l", "WARNING", *extra]
    redis_cpus = None
    if cpus is not None:
        command = ["taskset", "-c", cpus, *command]
        redis_cpus = ",".join(str(cpu) for cpu in sorted(os.sched_getaffinity(server.proc.pid)))
        pin(server.proc.pid, cpus)
    log = tempfile.TemporaryFile()
    proc = None
    try:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
        time.sleep(0.3)
        if proc.poll() is not None:
            log.seek(0)
            sys.exit(f"the worker exited at once (status {proc.returncode}): {' '.join(command)}\n"
                     f"{log.read().decode(errors='replace')[-2000:]}")
        push_all(rb, "celery.prefill", messages)
        yield proc, rb, rr
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        log.close()
        if redis_cpus is not None:
            pin(server.proc.pid, redis_cpus)


def pin(pid, cpus):
    """Lets every thread of process `pid` run only on `cpus` (taskset's list)."""
    subprocess.run(["taskset", "-a", "-p", "-c", cpus, str(pid)], check=True, stdout=subprocess.DEVNULL)


def drain(rb, rr, messages):
    """Renames the pre-filled list onto the queue and waits (300 s at most) until every message's result is stored
    (``drain.ResultWatch``, which takes no CPU meanwhile); returns the seconds it took and how many were stored."""
    watch = ResultWatch(rr, messages)
    started = time.monotonic()
    rb.rename("celery.prefill", "celery")
    return watch.wait(started + 300) - started, rr.dbsize()


def run(server, messages, worker, extra, cpus=None):
    with worker_before_drain(server, messages, worker, extra, cpus) as (proc, rb, rr):
        rb.config_resetstat()
        worker0, _ = tree_cpu_and_switches(proc.pid)
        redis0 = redis_cpu(server)
        elapsed, done = drain(rb, rr, messages)
        worker1, _ = tree_cpu_and_switches(proc.pid)
        redis1 = redis_cpu(server)
        stats = rb.info("commandstats")
    return {"tasks": done, "rate": done / elapsed, "worker_us": (worker1 - worker0) / done * 1e6, "stats": stats,
            "lost": len(messages) - done, **redis_share(redis1 - redis0, done, elapsed)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--worker", default=WORKER, help="the swift-celery-worker binary (default: the release build)")
    parser.add_argument("--compare", metavar="BINARY",
                        help="another worker binary, run alternately with --worker (each of the --runs is a pair, "
                             "the order swapped every pair); the medians of both are printed at the end")
    parser.add_argument("--compare-args", metavar="ARGS",
                        help="run the worker alternately with these arguments added (one string, "
                             "--compare-args=\"...\"), as --compare does with another binary")
    parser.add_argument("--compare-one-cpu", action="store_true",
                        help="run the worker alternately as it is and with it and Redis on CPU 0 alone, as "
                             "--compare does with another binary")
    parser.add_argument("extra", nargs="*", help="worker arguments, after --")
    options = parser.parse_args()
    # Each variant: a label, the binary and its arguments.
    variants = [(options.worker, options.worker, options.extra, None)]
    if options.compare:
        variants.append((options.compare, options.compare, options.extra, None))
    if options.compare_args:
        added = shlex.split(options.compare_args)
        variants.append((f"{options.worker} {options.compare_args}", options.worker, options.extra + added, None))
    if options.compare_one_cpu:
        variants.append((f"{options.worker} on CPU 0 with Redis", options.worker, options.extra, "0"))
    paired = len(variants) > 1
    server = RedisProcess().start()
    lost = 0
    results = {label: [] for label, *_ in variants}
    try:
        messages = make_messages(server.url(1), options.tasks, "tasks.noop", "json")
        for number in range(options.runs):
            for label, worker, extra, cpus in (variants if number % 2 == 0 else variants[::-1]):
                result = run(server, messages, worker, extra, cpus)
                results[label].append(result)
                lost += result["lost"]
                prefix = f"{label}  " if paired else ""
                print(f"{prefix}{result['rate']:8.0f} tasks/s  worker {result['worker_us']:5.0f} us CPU/task  "
                      f"redis {result['redis_us']:5.0f} us CPU/task (busy {result['redis_busy']:.2f} of a core)  "
                      f"lost={result['lost']}", flush=True)
                for name, stat in sorted(result["stats"].items(), key=lambda item: -item[1]["usec"]):
                    if name.startswith(("cmdstat_config", "cmdstat_rename", "cmdstat_dbsize", "cmdstat_info")):
                        continue
                    print(f"    {name[8:]:10} {stat['calls'] / result['tasks']:6.3f} calls/task  "
                          f"{stat['usec'] / result['tasks']:6.1f} us/task", flush=True)
        if paired:
            for worker, runs in results.items():
                print(f"median of {len(runs)}: {statistics.median(r['rate'] for r in runs):8.0f} tasks/s  "
                      f"worker {statistics.median(r['worker_us'] for r in runs):5.1f} us CPU/task  "
                      f"redis {statistics.median(r['redis_us'] for r in runs):5.1f} us CPU/task "
                      f"(busy {statistics.median(r['redis_busy'] for r in runs):.2f})  {worker}", flush=True)
    finally:
        server.stop()
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
