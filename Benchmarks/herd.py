"""What idle workers sharing one queue cost Redis: N Swift workers (`-c 1` each) on one loopback redis-server, fed
messages one at a time at a steady rate, so that every worker is idle when each message comes.

    .venv/bin/python Benchmarks/herd.py --workers 8 --rate 200 --tasks 1000 BINARY [BINARY …]

With `BRPOP` Redis wakes one waiting worker per message. An idle Swift worker blocks in `BLMOVE` of its list onto
itself with its pop script behind it, which leaves the message where it is: Redis wakes every idle worker, each runs
its script, and one of them gets the message (README, "Delivery guarantees"). For each binary, in turn, this prints
how busy Redis was (its CPU time over the run, as a share of one core, and per message) and the calls per message of
the commands that show the difference.
"""
import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
from celery import Celery

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "Interop"))
from redisproc import RedisProcess  # noqa: E402


def measure(binary, workers, rate, tasks):
    work = tempfile.mkdtemp(prefix="herd.")
    server = RedisProcess().start()
    running = []
    try:
        client = redis.Redis(port=server.port)
        broker, backend = server.url(1), server.url(0)
        for index in range(workers):
            running.append(subprocess.Popen(
                [binary, "worker", "--broker", broker, "--result-backend", backend, "-c", "1", "-n", f"herd{index}@%h",
                 "--without-mingle", "--without-gossip", "--logfile", os.path.join(work, f"worker{index}.log")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        logs = [os.path.join(work, f"worker{index}.log") for index in range(workers)]
        deadline = time.monotonic() + 10
        def ready(log):
            return os.path.exists(log) and " ready." in Path(log).read_text()

        while time.monotonic() < deadline and not all(ready(log) for log in logs):
            time.sleep(0.05)
        if not all(ready(log) for log in logs):
            raise SystemExit(f"{binary}: not every worker was ready within 10 s (logs in {work})")
        app = Celery(broker=broker, backend=backend)
        client.config_resetstat()
        before, started = client.info("cpu"), time.monotonic()
        sent = []
        for index in range(tasks):
            sent.append(app.send_task("tasks.add", (index, index)).id)
            time.sleep(1 / rate)
        results = redis.Redis(port=server.port, db=0)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and results.dbsize() < tasks:
            time.sleep(0.01)
        if results.dbsize() < tasks:
            raise SystemExit(f"{binary}: {results.dbsize()} of {tasks} results stored (logs in {work})")
        after, elapsed = client.info("cpu"), time.monotonic() - started
        busy = sum(after[key] - before[key] for key in ("used_cpu_sys", "used_cpu_user"))
        stats = client.info("commandstats")
        calls = {name: round(stats[f"cmdstat_{name}"]["calls"] / tasks, 2)
                 for name in ("brpop", "blmove", "evalsha", "llen", "client|unblock") if f"cmdstat_{name}" in stats}
        print(f"{binary}: {workers} workers, {rate:g} messages/s, {tasks} messages: Redis busy {100 * busy / elapsed:.1f} % "
              f"of a core, {1e6 * busy / tasks:.0f} us per message; calls per message {calls}", flush=True)
    finally:
        for worker in running:
            worker.send_signal(signal.SIGKILL)
            worker.wait()
        server.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("binaries", nargs="+")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--rate", type=float, default=200, help="messages per second")
    parser.add_argument("--tasks", type=int, default=1000)
    options = parser.parse_args()
    for binary in options.binaries:
        measure(binary, options.workers, options.rate, options.tasks)


if __name__ == "__main__":
    main()
