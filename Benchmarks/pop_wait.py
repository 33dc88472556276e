"""How long a pop waits in Redis before Redis reads it: traced with `perf`, from the moment the worker's fetch thread
has written a pop script to the moment Redis starts reading it.

    .venv/bin/python Benchmarks/pop_wait.py --tasks 20000 --runs 2 [--compare BINARY] [-- worker arguments]

Each run pre-fills N `tasks.noop` messages made by Celery's own producer into a fresh loopback Redis (as
redis_cost.py does), starts the release build of the worker (`-c 2`, plus any arguments after `--`) and drains the
queue while `perf record` logs every system call of Redis and of the worker. Under load the fetch thread writes
nothing but pops, so each of its writes is a pop; its wait is the time from the end of that write to the start of
Redis's first read after it that returns as many bytes. Redis reads a request as soon as it is not running another
one, so a pop that reaches Redis while a settle script runs waits for that script, and one that reaches an idle Redis
only for Redis to wake. Prints the quartiles and the share of pops that waited 30 µs or more. The tracing slows the
drain (to about two thirds here), so the rates it prints are not the worker's; `--compare` runs another binary
alternately with the first. Needs `perf` and the right to trace other processes (root, or
`kernel.perf_event_paranoid` at -1); not run by CI.
"""
import argparse
import bisect
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from drain import WORKER, RedisProcess, make_messages
from redis_cost import drain, worker_before_drain

READ, WRITE = 0, 1  # x86-64 system call numbers
EVENT = re.compile(r"\s*(.+?)\s+(\d+)\s+([\d.]+):\s+raw_syscalls:sys_(enter|exit):\s+NR (\d+)(?: = (-?\d+))?")


def pop_waits(script_output):
    """The waits (µs) of the fetch thread's writes, from `perf script -F comm,tid,time,event,trace` output."""
    writes, reads, entered = [], [], {}
    for line in script_output.splitlines():
        match = EVENT.match(line)
        if not match:
            continue
        comm, tid, at, kind, number, value = match.groups()
        at, number = float(at), int(number)
        if kind == "enter":
            entered[tid] = at
        elif value is not None and int(value) > 0:
            if comm == "redis-fetch" and number == WRITE:
                writes.append((at, int(value)))
            elif comm == "redis-server" and number == READ and tid in entered:
                reads.append((entered[tid], int(value)))
    reads.sort()
    starts = [start for start, _ in reads]
    waits = []
    for written, size in writes:
        index = bisect.bisect_left(starts, written)
        while index < len(reads) and reads[index][1] != size:
            index += 1
        if index < len(reads):
            waits.append((reads[index][0] - written) * 1e6)
    return sorted(waits)


def run(server, messages, worker, extra):
    with worker_before_drain(server, messages, worker, extra) as (proc, rb, rr):
        with tempfile.TemporaryDirectory() as directory:
            data = Path(directory) / "perf.data"
            perf = subprocess.Popen(
                ["perf", "record", "-q", "-o", str(data), "-e", "raw_syscalls:sys_enter,raw_syscalls:sys_exit",
                 "-p", f"{proc.pid},{server.proc.pid}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(0.5)
            if perf.poll() is not None:
                sys.exit(f"perf record failed: {perf.stderr.read().decode(errors='replace')[-1000:]}")
            elapsed, done = drain(rb, rr, messages)
            perf.send_signal(subprocess.signal.SIGINT)
            perf.wait(60)
            output = subprocess.run(["perf", "script", "-i", str(data), "-F", "comm,tid,time,event,trace"],
                                    capture_output=True, text=True, check=True).stdout
    return done / elapsed, len(messages) - done, pop_waits(output)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--worker", default=WORKER)
    parser.add_argument("--compare", metavar="BINARY", help="another worker binary, run alternately with --worker")
    parser.add_argument("extra", nargs="*", help="worker arguments, after --")
    options = parser.parse_args()
    if options.tasks < 1 or options.runs < 1:
        parser.error("--tasks and --runs must be at least 1")
    if shutil.which("perf") is None:
        sys.exit("perf is not installed (apt-get install linux-perf)")
    workers = [options.worker] + ([options.compare] if options.compare else [])
    server = RedisProcess().start()
    lost = 0
    try:
        messages = make_messages(server.url(1), options.tasks, "tasks.noop", "json")
        for number in range(options.runs):
            for worker in (workers if number % 2 == 0 else workers[::-1]):
                rate, missing, waits = run(server, messages, worker, options.extra)
                lost += missing
                if not waits:
                    sys.exit(f"no pop of {worker} found in the trace")
                quartiles = [waits[len(waits) * q // 4] for q in (1, 2, 3)]
                share = sum(1 for wait in waits if wait >= 30) / len(waits)
                print(f"{worker}  {rate:6.0f} tasks/s traced  lost={missing}  {len(waits)} pops waited "
                      f"p25 {quartiles[0]:.0f} us  p50 {quartiles[1]:.0f} us  p75 {quartiles[2]:.0f} us  "
                      f">= 30 us: {share:.2f}", flush=True)
    finally:
        server.stop()
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
