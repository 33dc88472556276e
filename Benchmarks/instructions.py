"""The worker's instructions per task, counted by valgrind's callgrind, so two builds can be compared where timings
drown in the machine's noise. With `--one-at-a-time` the figure repeats within 0.1 % run after run, whatever else the
machine is doing. Under load it follows how many messages each pop takes, which follows the timing under valgrind
(one build counted 66 600-98 200 per task on one afternoon): compare builds there over several alternating runs.

    .venv/bin/python Benchmarks/instructions.py --tasks 3000
    .venv/bin/python Benchmarks/instructions.py --tasks 3000 --worker /path/to/other/build
    .venv/bin/python Benchmarks/instructions.py --tasks 3000 --pool solo
    .venv/bin/python Benchmarks/instructions.py --tasks 1000 --one-at-a-time 20
    .venv/bin/python Benchmarks/instructions.py --tasks 3000 --by-thread
    .venv/bin/python Benchmarks/instructions.py --tasks 3000 --pool solo -- --prefetch-multiplier 32
    .venv/bin/python Benchmarks/instructions.py --profile /tmp/profile && callgrind_annotate /tmp/profile | head -60

A loopback Redis, Celery's own producer's `tasks.noop` messages (JSON), the worker (`-c 2`, the thread pool unless
`--pool` says otherwise, plus any arguments after `--`) under callgrind. A first
300 tasks warm it up (code run once, metadata looked up the first time), the counters are zeroed, the N tasks are
drained, and the counters dumped: instructions in every thread of the worker (not in Redis, not in the kernel),
divided by N. With `--one-at-a-time MS` each message is pushed alone once the last one's result is stored, MS
milliseconds after it, so the worker waits in its blocking pop for every one: the idle path of the latency
figures, where nothing is shared by a batch. The binary runs without its debug information (valgrind 3.19 cannot read the toolchain's DWARF 5).
It needs the release build (`scripts/build-release.sh`): valgrind 3.19 crashes on the debug build, which loads the
Swift runtime as shared libraries, so CI does not run it.
"""
import argparse
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from drain import WORKER, RedisProcess, make_messages, push_all

WARM_UP = 300


def count(worker, tasks, serializer, keep=None, pool="threads", gap=None, by_thread=False, extra=()):
    """Instructions per task in every thread of the worker, and with `by_thread` per thread too: a list of (valgrind's
    thread number, in the order the threads were started, instructions per task)."""
    with tempfile.TemporaryDirectory() as tmp:
        stripped, profile = Path(tmp) / "worker", Path(tmp) / "callgrind.out"
        subprocess.run(["objcopy", "--strip-debug", str(worker), str(stripped)], check=True)
        server = RedisProcess().start()
        try:
            broker, backend = server.url(1), server.url(0)
            messages = make_messages(broker, WARM_UP + tasks, "tasks.noop", serializer)
            separate = ["--separate-threads=yes"] if by_thread else []
            proc = subprocess.Popen(
                ["valgrind", "--tool=callgrind", "--compress-strings=no", *separate, f"--callgrind-out-file={profile}",
                 str(stripped),
                 "--broker", broker, "--result-backend", backend, "-c", "2", "-P", pool, "-l", "WARNING", *extra],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                rb, rr = redis.Redis.from_url(broker), redis.Redis.from_url(backend)

                def wait_for(stored, deadline):
                    while rr.dbsize() < stored:
                        if time.monotonic() > deadline:
                            raise SystemExit(f"only {rr.dbsize()} of {stored} results were stored under callgrind")
                        time.sleep(0.05 if gap is None else 0.001)

                def drain(batch, timeout):
                    deadline = time.monotonic() + timeout
                    if gap is None:
                        push_all(rb, "celery", batch)
                        wait_for(len(batch), deadline)
                    else:
                        for stored, raw in enumerate(batch, start=1):
                            rb.lpush("celery", raw)
                            wait_for(stored, deadline)
                            time.sleep(gap)
                    rr.flushdb()

                deadline = time.monotonic() + 60
                while not rb.exists("_kombu.binding.celery"):
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise SystemExit("the worker did not start under callgrind")
                    time.sleep(0.1)
                drain(messages[:WARM_UP], 120)
                time.sleep(0.5)
                subprocess.run(["callgrind_control", "--zero", str(proc.pid)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                drain(messages[WARM_UP:], 600)
                subprocess.run(["callgrind_control", "--dump", str(proc.pid)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(120)
        finally:
            server.stop()
        def summary(dump):
            return int(re.search(r"^summary: (\d+)", dump.read_text(errors="replace"), re.M).group(1))

        if not by_thread:
            dump = Path(f"{profile}.1")
            if keep:
                shutil.copyfile(dump, keep)
            return summary(dump) / tasks, []
        # One dump per thread: callgrind.out.1-01, -02, … (valgrind's thread numbers).
        threads = []
        for dump in sorted(Path(tmp).glob("callgrind.out.1-*")):
            number = int(dump.name.rsplit("-", 1)[1])
            threads.append((number, summary(dump) / tasks))
            if keep:
                shutil.copyfile(dump, f"{keep}-{number:02}")
        return sum(per_task for _, per_task in threads), threads


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--serializer", choices=["json", "msgpack"], default="json")
    parser.add_argument("--worker", default=WORKER, help="the swift-celery-worker binary (default: the release build)")
    parser.add_argument("--pool", choices=["threads", "solo"], default="threads", help="the worker's pool (default: threads)")
    parser.add_argument("--profile", metavar="PATH", help="keep the callgrind profile there (for callgrind_annotate)")
    parser.add_argument("--by-thread", action="store_true",
                        help="also count each thread apart (callgrind's --separate-threads; with --profile, one file each, "
                             "PATH-NN)")
    parser.add_argument("--one-at-a-time", metavar="MS", type=float,
                        help="push each message alone, MS milliseconds after the last one's result (the idle path)")
    parser.add_argument("extra", nargs="*", help="worker arguments, after --")
    options = parser.parse_args()
    if options.tasks < 1:
        parser.error("--tasks must be at least 1")
    if options.one_at_a_time is not None and options.one_at_a_time < 0:
        parser.error("--one-at-a-time must be 0 or more milliseconds")
    if not Path(options.worker).is_file():
        parser.error(f"{options.worker} is missing: run scripts/build-release.sh first")
    gap = None if options.one_at_a_time is None else options.one_at_a_time / 1000
    per_task, threads = count(options.worker, options.tasks, options.serializer, options.profile, options.pool, gap,
                              options.by_thread, options.extra)
    how = ("" if gap is None else f", one at a time {options.one_at_a_time:g} ms apart") + (
        f", with {' '.join(options.extra)}" if options.extra else "")
    print(f"{per_task:,.0f} instructions per task (tasks.noop, {options.serializer}, {options.pool} pool, {options.tasks} tasks after "
          f"{WARM_UP} to warm up{how})")
    for number, thread_per_task in threads:
        if thread_per_task >= per_task / 100:
            print(f"    thread {number:2} (valgrind's numbering, in the order started): {thread_per_task:9,.0f} per task")


if __name__ == "__main__":
    main()
