"""Writes scripts/release-order.txt: the functions the release worker runs, hottest first, for the linker.

    scripts/build-release.sh && .venv/bin/python scripts/release-order.py

`scripts/build-release.sh` passes the file to lld (`--symbol-ordering-file`), which places those functions together
at the start of `.text`. A loaded worker then keeps about 4 MB fewer pages of its binary resident (the kernel maps
a file's pages 64 kB at a time around each page it touches, so code scattered over 20 MB of `.text` is mostly
resident). The order changes only where code lies, never what it does; a name the linker no longer finds is
skipped, so a stale file costs memory, not correctness. Regenerate it after large changes (the next
`scripts/build-release.sh` relinks with it).

How: the release build, without its DWARF (valgrind 3.19 cannot read the toolchain's DWARF 5), runs under
`valgrind --tool=callgrind` against a throw-away loopback Redis while Celery's own producer sends it JSON and msgpack
messages (`tasks.noop`, `tasks.add`, `tasks.fail`, an unregistered task, a message that is not JSON), in a batch
and one at a time to an idle worker, and then stops it with SIGTERM (warm shutdown). Every function with any
instructions counted is listed, by the instructions counted in it, most first; then, the same way, the functions
that only the same load with task events on (`-E`) ran.
"""
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "Benchmarks"))

import redis  # noqa: E402

from drain import RedisProcess, make_messages  # noqa: E402

WORKER = ROOT / ".build" / "release" / "swift-celery-worker"
OUTPUT = ROOT / "scripts" / "release-order.txt"


def self_costs(profile):
    """Instructions counted in each function itself (not in what it calls), from callgrind's output format."""
    names, costs, current, skip_next = {}, {}, None, False
    for line in profile.read_text(errors="replace").splitlines():
        if line.startswith("fn="):
            match = re.match(r"fn=\((\d+)\)(?: (.*))?", line)
            if match:
                if match.group(2):
                    names[match.group(1)] = match.group(2)
                current = names.get(match.group(1))
            skip_next = False
        elif line.startswith("calls="):
            skip_next = True  # the next cost line is the call's inclusive cost, not this function's own
        elif line and (line[0].isdigit() or line[0] in "+-*") and current is not None:
            if skip_next:
                skip_next = False
                continue
            fields = line.split()
            if len(fields) >= 2:
                costs[current] = costs.get(current, 0) + int(fields[1])
        elif line.startswith(("cfn=", "cfi=", "cfl=", "cob=")):
            match = re.match(r"cfn=\((\d+)\) (.*)", line)
            if match:
                names[match.group(1)] = match.group(2)
    return costs


def run_workload(worker, profile, *extra):
    server = RedisProcess().start()
    try:
        broker, backend = server.url(1), server.url(0)
        batch = (make_messages(broker, 300, "tasks.noop", "json") + make_messages(broker, 300, "tasks.add", "msgpack")
                 + make_messages(broker, 20, "tasks.fail", "json") + make_messages(broker, 5, "no.such.task", "json"))
        single = make_messages(broker, 100, "tasks.add", "json") + make_messages(broker, 100, "tasks.noop", "msgpack")
        proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--demangle=no", f"--callgrind-out-file={profile}", str(worker),
             "--broker", broker, "--result-backend", backend, "-c", "2", "-l", "WARNING", *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rb, rr = redis.Redis.from_url(broker), redis.Redis.from_url(backend)
        deadline = time.monotonic() + 60
        while not rb.exists("_kombu.binding.celery") and time.monotonic() < deadline:
            time.sleep(0.2)
        rb.lpush("celery", b"this is not JSON")
        pipe = rb.pipeline(transaction=False)
        for raw in batch:
            pipe.lpush("celery", raw)
        pipe.execute()
        expected = len(batch)
        for raw in single:
            rb.lpush("celery", raw)
            expected += 1
            time.sleep(0.02)
        deadline = time.monotonic() + 300
        while rr.dbsize() < expected and time.monotonic() < deadline:
            time.sleep(0.2)
        if rr.dbsize() < expected:
            raise SystemExit(f"only {rr.dbsize()} of {expected} results were stored under callgrind")
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
    finally:
        server.stop()


def main():
    if not WORKER.exists():
        raise SystemExit(f"{WORKER} is missing: run scripts/build-release.sh first")
    with tempfile.TemporaryDirectory() as tmp:
        worker, profile, with_events = Path(tmp) / "worker", Path(tmp) / "callgrind.out", Path(tmp) / "events.out"
        subprocess.run(["objcopy", "--strip-debug", str(WORKER), str(worker)], check=True)
        run_workload(worker, profile)
        costs = self_costs(profile)
        # The same load with task events on (-E): what only they run goes after the rest, so a worker without
        # them keeps its code as close together as before.
        run_workload(worker, with_events, "-E")
        event_costs = self_costs(with_events)

    def by_cost(table):
        return [name for name, cost in sorted(table.items(), key=lambda item: -item[1])
                if cost > 0 and not name.startswith("0x")]

    ordered = by_cost(costs)
    listed = set(ordered)
    ordered += [name for name in by_cost(event_costs) if name not in listed]
    header = ("# Generated by scripts/release-order.py: the functions the release worker ran under a test load, most\n"
              "# instructions first, then those only the same load with -E ran. lld places them at the start of .text\n"
              "# (scripts/build-release.sh).\n")
    OUTPUT.write_text(header + "\n".join(ordered) + "\n")
    print(f"{OUTPUT.relative_to(ROOT)}: {len(ordered)} functions")


if __name__ == "__main__":
    main()
