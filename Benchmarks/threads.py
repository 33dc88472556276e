"""Where the Swift worker spends its CPU, thread by thread, while it drains a queue.

    .venv/bin/python Benchmarks/threads.py --tasks 20000 --runs 3 [--pool solo] [-- --prefetch-multiplier 32]

Each run pre-fills N `tasks.noop` messages made by Celery's own producer into a fresh loopback Redis, starts the
release build of the worker (`-c 2`, the thread pool unless `--pool` says otherwise, plus any arguments after `--`),
renames the messages onto the queue and sleeps until every result is stored (`drain.ResultWatch`, so the harness
takes no CPU from the drain), and prints the drain rate, the worker's CPU per task, and for each of its
threads (named by the worker: celery-task-N, the thread pool's event loop, of which one leads at a time, and
celery-watchdog, which watches the leader; celery-solo
in the solo pool; redis-io, the threads of remote control's and events' connections) the CPU per task
and the voluntary and involuntary context switches per task, read from /proc/<pid>/task/*; then the worker's
resident memory by mapping (the binary, each shared library, anonymous memory), read from /proc/<pid>/smaps.
"""
import argparse
import signal
import subprocess
import time
from pathlib import Path

import redis

from drain import CLOCK_TICKS, WORKER, RedisProcess, make_messages, push_all, tree_stats
from redis_cost import drain


def thread_stats(pid):
    """CPU seconds (user, system) and context switches per thread name."""
    totals = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            name = (task / "comm").read_text().strip()
            status = (task / "status").read_text()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        voluntary = int(status.split("\nvoluntary_ctxt_switches:")[1].split()[0])
        involuntary = int(status.split("nonvoluntary_ctxt_switches:")[1].split()[0])
        entry = totals.setdefault(name, [0.0, 0.0, 0, 0])
        entry[0] += int(fields[11]) / CLOCK_TICKS
        entry[1] += int(fields[12]) / CLOCK_TICKS
        entry[2] += voluntary
        entry[3] += involuntary
    return totals


def rss_by_mapping(pid):
    """Resident kB per mapped file (anonymous mappings together), largest first."""
    totals, name = {}, "[anon]"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        parts = line.split()
        if "-" in parts[0] and len(parts) >= 5:
            name = parts[5] if len(parts) > 5 and not parts[5].startswith("[") else "[anon]"
        elif parts[0] == "Rss:":
            totals[name] = totals.get(name, 0) + int(parts[1])
    return sorted(totals.items(), key=lambda item: -item[1])


def run(count, worker, pool, extra):
    server = RedisProcess().start()
    try:
        broker, backend = server.url(1), server.url(0)
        messages = make_messages(broker, count, "tasks.noop", "json")
        rb, rr = redis.Redis.from_url(broker), redis.Redis.from_url(backend)
        push_all(rb, "celery.prefill", messages)
        proc = subprocess.Popen([worker, "-b", broker, "--result-backend", backend, "-c", "2", "-P", pool,
                                 "-l", "WARNING", *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            before, _ = tree_stats(proc.pid)
            threads_before = thread_stats(proc.pid)
            elapsed, stored = drain(rb, rr, messages)
            if stored < count:
                raise SystemExit(f"only {stored} of {count} results were stored")
            after, _ = tree_stats(proc.pid)
            threads_after = thread_stats(proc.pid)
            print(f"{count / elapsed:8.0f} tasks/s  {(after - before) / count * 1e6:5.0f} us CPU/task")
            for name, (user, system, voluntary, involuntary) in sorted(threads_after.items()):
                base = threads_before.get(name, [0.0, 0.0, 0, 0])
                user_us, system_us = (user - base[0]) / count * 1e6, (system - base[1]) / count * 1e6
                if user_us + system_us < 0.5:
                    continue
                print(f"    {name:16} {user_us + system_us:5.0f} us/task ({user_us:.0f} user, {system_us:.0f} system)"
                      f"  voluntary switches {(voluntary - base[2]) / count:.2f}/task"
                      f"  involuntary {(involuntary - base[3]) / count:.2f}/task")
            mappings = rss_by_mapping(proc.pid)
            print(f"    RSS {sum(kb for _, kb in mappings) / 1024:.1f} MB: "
                  + ", ".join(f"{Path(name).name} {kb / 1024:.1f}" for name, kb in mappings[:6]))
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(30)
    finally:
        server.stop()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--worker", default=WORKER, help="the swift-celery-worker binary (default: the release build)")
    parser.add_argument("--pool", choices=["threads", "solo"], default="threads", help="the worker's pool (default: threads)")
    parser.add_argument("extra", nargs="*", help="worker arguments, after --")
    options = parser.parse_args()
    for _ in range(options.runs):
        run(options.tasks, options.worker, options.pool, options.extra)


if __name__ == "__main__":
    main()
