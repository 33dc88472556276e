"""Where a drain's time goes, round trip by round trip: how long Redis runs each of the worker's two scripts, and how
much of the machine sat idle meanwhile.

    .venv/bin/python Benchmarks/round_trips.py --tasks 20000 --runs 3
    .venv/bin/python Benchmarks/round_trips.py --tasks 20000 --runs 3 -- --prefetch-multiplier 32

Each run pre-fills N `tasks.noop` messages made by Celery's own producer into a fresh loopback Redis (as
redis_cost.py does), has Redis time every command it runs (`SLOWLOG` with a threshold of 0 µs: a script is timed
whole, and each command it calls once more on its own), drains the queue with the release build of the worker (`-c
2`, plus any arguments after `--`) and prints the drain rate; for the pop-and-record script and the settle script,
how often each ran per task, the median and mean time Redis took to run one and the share of the drain's wall time
Redis spent running them; the commands Redis ran, most of them inside the scripts, by their time per task; and the
CPU the worker and Redis used (in cores, from /proc) against the whole machine's
idle time (`/proc/stat`). No message of a batch reaches the worker before its pop script ends, and under load the
worker asks for the next batch only once the tasks of the last one have started: the pop script is on the drain's
critical path, and while it runs the worker has little to do.
"""
import argparse
import collections
import statistics
import sys

from drain import CLOCK_TICKS, WORKER, RedisProcess, make_messages, tree_stats
from redis_cost import drain, worker_before_drain


def script_sha(entry):
    """The script digest of an EVALSHA in the slow log, else None."""
    words = entry["command"].split(b" ", 2)
    if words[0].upper() != b"EVALSHA" or len(words) < 3:
        return None
    return words[1]


def classify(log):
    """The slow log's EVALSHA durations (µs) grouped as pop and settle scripts: a script that ever names a result
    key (`celery-task-meta-…`) is the settle script, the other the pop-and-record script."""
    durations, names_result = collections.defaultdict(list), collections.defaultdict(bool)
    for entry in log:
        sha = script_sha(entry)
        if sha is None:
            continue
        durations[sha].append(entry["duration"])
        if b"celery-task-meta-" in entry["command"]:
            names_result[sha] = True
    kinds = {"pop": [], "settle": []}
    for sha, values in durations.items():
        kinds["settle" if names_result[sha] else "pop"].extend(values)
    return kinds


def commands(log):
    """Total µs per command name for everything but the scripts themselves (the commands they call included)."""
    totals = collections.Counter()
    for entry in log:
        name = entry["command"].split(b" ", 1)[0].upper()
        if name not in (b"EVALSHA", b"EVAL", b"SLOWLOG", b"CONFIG"):
            totals[name.decode(errors="replace")] += entry["duration"]
    return totals


def machine_idle():
    """Seconds every CPU of the machine has spent idle so far (`/proc/stat`), and how many CPUs there are."""
    with open("/proc/stat") as handle:
        lines = handle.read().splitlines()
    fields = lines[0].split()
    cpus = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
    return (int(fields[4]) + int(fields[5])) / CLOCK_TICKS, cpus


def run(server, messages, worker, extra):
    with worker_before_drain(server, messages, worker, extra) as (proc, rb, rr):
        rb.config_set("slowlog-max-len", 10 * len(messages) + 1000)
        rb.config_set("slowlog-log-slower-than", 0)
        rb.slowlog_reset()
        worker0, _ = tree_stats(proc.pid)
        redis0, _ = tree_stats(server.proc.pid)
        idle0, cpus = machine_idle()
        elapsed, done = drain(rb, rr, messages)
        worker1, _ = tree_stats(proc.pid)
        redis1, _ = tree_stats(server.proc.pid)
        idle1, _ = machine_idle()
        rb.config_set("slowlog-log-slower-than", 10000)
        entries = rb.slowlog_get(10 * len(messages) + 1000)
    kinds = classify(entries)
    print(f"{len(messages) / elapsed:8.0f} tasks/s  lost={len(messages) - done}  worker {(worker1 - worker0) / elapsed:.2f} "
          f"cores  Redis {(redis1 - redis0) / elapsed:.2f}  machine idle {(idle1 - idle0) / elapsed:.2f} of {cpus} "
          f"cores (CPU times in ticks of {1000 / CLOCK_TICKS:.0f} ms)")
    for kind, values in kinds.items():
        if values:
            print(f"    {kind:6} script {len(values) / len(messages):6.3f} per task ({len(messages) / len(values):5.1f} "
                  f"tasks per call)  median {statistics.median(values):6.1f} us  mean {statistics.mean(values):6.1f} us"
                  f"  running {sum(values) / 1e6 / elapsed:.2f} of the drain's wall time")
    problems = [f"no {kind} script in Redis's slow log" for kind, values in kinds.items() if not values]
    if done != len(messages):
        problems.append(f"{len(messages) - done} of {len(messages)} tasks have no result")
    if problems:
        sys.exit(f"round_trips.py: {'; '.join(problems)}")
    inside = ", ".join(f"{name} {total / len(messages):.1f}" for name, total in commands(entries).most_common(6))
    print(f"    commands (most inside the scripts), us per task: {inside}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--worker", default=WORKER, help="the swift-celery-worker binary (default: the release build)")
    parser.add_argument("extra", nargs="*", help="worker arguments, after --")
    args = parser.parse_args()
    if args.tasks < 1 or args.runs < 1:
        parser.error("--tasks and --runs must be at least 1")
    server = RedisProcess().start()
    try:
        messages = make_messages(server.url(1), args.tasks, "tasks.noop", "json")
        for _ in range(args.runs):
            run(server, messages, args.worker, args.extra)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
