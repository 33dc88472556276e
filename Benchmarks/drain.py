"""Side-by-side drain benchmark: the Swift worker (its thread pool, and its solo pool: `swift-solo`) against Python
Celery (prefork and threads pools) on one Redis.

    .venv/bin/python Benchmarks/drain.py --tasks 5000 --fast-tasks 20000 --repeat 3   # the README table
    .venv/bin/python Benchmarks/drain.py --tasks 200 --quick     # CI: checks that it still works
    .venv/bin/python Benchmarks/drain.py --tasks 5000 --repeat 3 --prefetch-multiplier 16 --drain-only

For each worker and variant it pre-fills N real Celery messages (made by Celery itself; with `--fast-tasks`, more
for the Swift pools, the bare loop and the relay, whose drains of 5 000 last a seventh of a second), starts the worker, and
measures the time to drain them with every result written (tasks/s), the worker process tree's CPU time per task
and peak RSS. It also measures `.delay()`-style pick-up latency on an idle worker (raw push -> result published,
p50/p99, timed on raw sockets), also for the simplest possible consumers (a loop that only BRPOPs and PUBLISHes, in
Python and in C with hiredis: `floor.c`, built here with the system C compiler), the time from
starting a worker to the result of a message already waiting, and a throughput floor: a bare batched Python loop
(pop many, pipeline the result writes, no Celery). Beside it, the zero-cost relay (`relay.c`, see
`relay_floor.py`): the worker's own pop-and-record and settle scripts driven by one C thread that runs no task, two
pops of half the prefetch window in flight, early acknowledgements in every row: what a worker that cost nothing
could drain with kombu's bookkeeping at that window. Every worker runs with Celery's defaults (`-c 2`, prefetch
multiplier 4), or with `--prefetch-multiplier N` all of them with that multiplier. A second table gives what Redis
spent in the same drains of the Swift worker, the relay and the bare loop: its CPU per task, and how busy its one
thread was (the share of a core; near 1, Redis is what limits the drain).
"""
import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "Interop"))

import redis  # noqa: E402
from celery import Celery  # noqa: E402

from redisproc import RedisProcess  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
WORKER = str(ROOT / ".build" / "release" / "swift-celery-worker")


def tree_pids(pid):
    pids = [pid]
    for child in Path(f"/proc/{pid}/task").glob("*/children"):
        for text in child.read_text().split():
            pids.extend(tree_pids(int(text)))
    return pids


def tree_cpu_and_switches(pid):
    """The CPU time of every thread of the process tree so far, to the nanosecond (`schedstat`; `stat` counts
    ticks of 10 ms, too coarse for one idle sample), and how often its threads were switched out (each a sleep and
    a wake-up, or a preemption)."""
    total, switches = 0, 0
    for p in tree_pids(pid):
        for task in Path(f"/proc/{p}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[0])
                for line in (task / "status").read_text().splitlines():
                    if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                        switches += int(line.split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                pass
    return total / 1e9, switches


def redis_cpu(server):
    """The CPU time the Redis server has used so far, in seconds (to the nanosecond, as for the workers)."""
    return tree_cpu_and_switches(server.proc.pid)[0]


def redis_share(spent, tasks, seconds):
    """Redis's CPU per task (µs) and how busy it was during a drain (the share of one core: Redis runs commands
    on one thread, so near 1 it is what limits the drain)."""
    return {"redis_us": spent / max(tasks, 1) * 1e6, "redis_busy": spent / seconds}


def tree_stats(pid):
    """The CPU time of the process tree so far (in ticks of `stat`) and its RSS now, in bytes."""
    cpu = 0.0
    for p in tree_pids(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        except (FileNotFoundError, ProcessLookupError, IndexError):
            pass
    return cpu, tree_memory(pid, "VmRSS")


def tree_memory(pid, field):
    """The sum over the process tree of one memory line of `/proc/PID/status`, in bytes: `VmRSS` for the RSS now,
    `VmHWM` for each process's peak RSS, a high-water mark the kernel keeps, so that nothing needs to sample the
    tree while it works."""
    total = 0
    for p in tree_pids(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(f"{field}:"):
                    total += int(line.split()[1]) * 1024
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            pass
    return total


class ResultWatch:
    """Waits for a drain's last result without taking CPU from Redis and the worker while they drain.

    Sampling the worker's `/proc` files and polling `DBSIZE` every 10 ms took the harness about 1.4 ms of CPU each
    time, an eighth of a core beside a drain on this 2-core machine, and cost the drains about a sixth of their rate
    (paired drains of the same worker, `Benchmarks/JOURNAL.md`); the relay and the bare loop time themselves and paid
    nothing. This subscribes to the result channels of the messages popped last (the queue is drained from its far
    end, so the last result stored is one of theirs: every worker publishes each result as it stores it) and sleeps
    until all of them came, then checks `DBSIZE`, polling it every millisecond only if some other result is still
    missing."""

    TAIL = 16

    def __init__(self, results, messages):
        self.results, self.count = results, len(messages)
        ids = [json.loads(raw)["headers"]["id"] for raw in messages[-self.TAIL:]]
        self.channels = {f"celery-task-meta-{task_id}" for task_id in ids}
        self.pubsub = results.pubsub()
        self.pubsub.subscribe(*self.channels)
        # Every subscription confirmed before the drain starts (Redis answers each one on this connection).
        confirmed, deadline = 0, time.monotonic() + 10
        while confirmed < len(self.channels) and time.monotonic() < deadline:
            message = self.pubsub.get_message(timeout=1.0)
            if message and message["type"] == "subscribe":
                confirmed += 1
        if confirmed < len(self.channels):
            raise RuntimeError("the result channels' subscriptions were not confirmed")

    def wait(self, deadline):
        """When (`time.monotonic()`) the last result was stored, or the deadline if it was not by then."""
        pending = set(self.channels)
        try:
            while pending and time.monotonic() < deadline:
                message = self.pubsub.get_message(timeout=min(1.0, max(0.0, deadline - time.monotonic())))
                if message and message["type"] == "message":
                    pending.discard(message["channel"].decode())
            ended = time.monotonic()
            while self.results.dbsize() < self.count and time.monotonic() < deadline:
                time.sleep(0.001)
                ended = time.monotonic()
            return ended
        finally:
            self.pubsub.close()


def make_messages(broker, count, task, serializer):
    """Messages exactly as Celery's producer writes them, captured off the list."""
    app = Celery("bench", broker=broker)
    app.conf.task_serializer = serializer
    r = redis.Redis.from_url(broker)
    # A worker stopped a moment ago may still have a blocking pop registered until Redis sees its socket close; a
    # message pushed then goes to it. Wait until no client is blocked.
    deadline = time.monotonic() + 10
    while r.info("clients")["blocked_clients"] > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    r.delete("celery")
    args = (2, 3) if task == "tasks.add" else ()
    with app.producer_or_acquire() as producer:
        for _ in range(count):
            app.send_task(task, args, producer=producer, ignore_result=False)
    raw = r.lrange("celery", 0, -1)
    r.delete("celery")
    if len(raw) != count:
        raise RuntimeError(f"captured {len(raw)} of {count} messages: something else consumes the 'celery' list")
    return raw



def push_all(client, key, messages):
    """LPUSHes every message onto the list `key`, pipelined in one round trip, in their order (so the first message
    is popped first from the far end, as Celery's producer left them)."""
    pipe = client.pipeline(transaction=False)
    for raw in messages:
        pipe.lpush(key, raw)
    pipe.execute()

# A reference for the latency: no worker, just a Python loop that answers each message with the PUBLISH the
# measurement waits for (one BRPOP, one PUBLISH; nothing recorded, nothing stored): the simplest possible consumer.
FLOOR_RESPONDER = """
import json, sys, redis
broker, backend = redis.Redis.from_url(sys.argv[1]), redis.Redis.from_url(sys.argv[2])
while True:
    item = broker.brpop("celery", 1)
    if item is not None:
        backend.publish("celery-task-meta-" + json.loads(item[1])["headers"]["id"], "{}")
"""


def build_floor(logdir):
    """Compiles floor.c; raises with the compiler's own message when that is not possible."""
    compiler = shutil.which("cc") or shutil.which("clang") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler (cc, clang or gcc) for the C latency floor")
    binary = logdir / "floor"
    subprocess.run([compiler, "-O2", "-o", str(binary), str(HERE / "floor.c"), "-lhiredis"], check=True)
    return binary


SWIFT_KINDS = ("swift", "swift-solo")
PREFETCH_MULTIPLIER = None  # Celery's default (4) unless --prefetch-multiplier is given; the same for every worker


def start_worker(kind, broker, backend, acks_late, serializer, logdir, settle=True):
    env = {**os.environ, "CELERY_BROKER_URL": broker, "CELERY_RESULT_BACKEND": backend}
    # The same flag for the Swift worker and for Celery's.
    prefetch = [] if PREFETCH_MULTIPLIER is None else ["--prefetch-multiplier", str(PREFETCH_MULTIPLIER)]
    log = open(logdir / f"{kind}.log", "ab")
    if kind == "c-loop":
        port = broker.rsplit(":", 1)[1].split("/")[0]
        proc = subprocess.Popen([str(build_floor(logdir)), port], stdout=subprocess.DEVNULL, stderr=log,
                                start_new_session=True)
        time.sleep(0.3)
        return proc
    if kind == "python-loop":
        proc = subprocess.Popen([sys.executable, "-c", FLOOR_RESPONDER, broker, backend], stdout=subprocess.DEVNULL,
                                stderr=log, start_new_session=True)
        time.sleep(0.5)
        return proc
    if kind in SWIFT_KINDS:
        # swift-solo: the solo pool (one thread fetches, runs the tasks and writes the results); same -c, so the
        # same prefetch window.
        pool = ["-P", "solo"] if kind == "swift-solo" else []
        args = [WORKER, "--broker", broker, "--result-backend",
                backend, "-c", "2", "-l", "WARNING", *pool, *prefetch]
        if acks_late:
            args.append("--acks-late")
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log, env=env)
        if settle:
            time.sleep(0.3)
        return proc
    env.update({"ACKS_LATE": "1" if acks_late else "0", "RESULT_SERIALIZER": "json"})
    pool = "prefork" if kind == "python-prefork" else "threads"
    celery = Path(sys.executable).with_name("celery")
    proc = subprocess.Popen([str(celery), "-A", "pytasks", "worker", "-P", pool, "-c", "2", "-l", "WARNING",
                             "--without-mingle", "--without-gossip", "--without-heartbeat", *prefetch],
                            cwd=ROOT / "Interop" / "pyworker", stdout=subprocess.DEVNULL, stderr=log, env=env,
                            start_new_session=True)
    if settle:
        time.sleep(3.0)
    return proc


def wait_idle(r_results, expected, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if r_results.dbsize() >= expected:
            return True
        time.sleep(0.005)
    return False


def fresh_databases(server):
    """The broker's URL (database 1) and the backend's (0) on `server`, and a client of each, both emptied."""
    broker, backend = server.url(1), server.url(0)
    rb, rr = redis.Redis.from_url(broker), redis.Redis.from_url(backend)
    rb.flushdb()
    rr.flushdb()
    return broker, backend, rb, rr


def drain(kind, server, messages, acks_late, serializer, logdir):
    broker, backend, rb, rr = fresh_databases(server)
    proc = start_worker(kind, broker, backend, acks_late, serializer, logdir)
    try:
        # Pre-filled: every message waits in a list nobody consumes, then one RENAME puts them all on the queue at
        # once (waking the worker's BRPOP), so the clock measures the drain alone, as for the bare loop.
        push_all(rb, "celery.prefill", messages)
        watch = ResultWatch(rr, messages)
        cpu0, _ = tree_cpu_and_switches(proc.pid)
        redis0 = redis_cpu(server)
        started = time.monotonic()
        rb.rename("celery.prefill", "celery")
        elapsed = watch.wait(started + 600) - started
        redis1 = redis_cpu(server)
        cpu1, _ = tree_cpu_and_switches(proc.pid)
        peak = tree_memory(proc.pid, "VmHWM")
        done = rr.dbsize()
    finally:
        if kind in SWIFT_KINDS:
            proc.send_signal(signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return {"tasks": done, "seconds": elapsed, "rate": done / elapsed, "cpu_us": (cpu1 - cpu0) / max(done, 1) * 1e6,
            "rss_mb": peak / 1e6, "lost": len(messages) - done,
            **redis_share(redis1 - redis0, done, elapsed)}


def resp(*args):
    """One command in Redis's protocol."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        arg = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


class RespReader:
    """Reads replies off a raw socket: the probe uses no client library, so its own cost stays out of the figure."""

    def __init__(self, sock):
        self.sock, self.buffer = sock, b""

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("Redis closed the connection")
        self.buffer += chunk

    def _line(self):
        while b"\r\n" not in self.buffer:
            self._fill()
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def read(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind in (b"+", b":"):
            return rest
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            while len(self.buffer) < size + 2:
                self._fill()
            value, self.buffer = self.buffer[:size], self.buffer[size + 2:]
            return value
        if kind in (b"*", b">"):
            return [self.read() for _ in range(int(rest))]
        raise RuntimeError(f"unexpected reply {line!r}")


def redis_line(result):
    """Redis's share of a drain, for the progress lines."""
    return f"redis {result['redis_us']:5.1f} us CPU/task (busy {result['redis_busy']:.2f})"


def latency(kind, server, samples, logdir, gap=0.01):
    """Raw push -> result published on an idle worker: the clock starts as the LPUSH is written to a raw socket and
    stops when the first byte of the result's PUBLISH reaches a subscriber. `gap` seconds pass between samples, with
    the worker waiting in its blocking pop: the longer the gap, the colder the machine's caches and cores."""
    broker, backend = server.url(1), server.url(0)
    rb, rr = redis.Redis.from_url(broker), redis.Redis.from_url(backend)
    rb.flushdb()
    rr.flushdb()
    messages = make_messages(broker, samples, "tasks.noop", "json")
    proc = start_worker(kind, broker, backend, False, "json", logdir)
    address = ("127.0.0.1", rb.connection_pool.connection_kwargs["port"])
    push, sub = socket.create_connection(address), socket.create_connection(address)
    for sock in (push, sub):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    pushed, subscribed = RespReader(push), RespReader(sub)
    times = []
    try:
        push.sendall(resp("SELECT", 1))
        pushed.read()
        cpu_before, switches_before = tree_cpu_and_switches(proc.pid)
        for raw in messages:
            task_id = json.loads(raw)["headers"]["id"]
            sub.sendall(resp("SUBSCRIBE", f"celery-task-meta-{task_id}"))
            subscribed.read()  # the confirmation
            command = resp("LPUSH", "celery", raw)
            sub.settimeout(5)
            sent = time.perf_counter_ns()
            push.sendall(command)
            try:
                sub.recv(1, socket.MSG_PEEK)
            except socket.timeout:
                raise RuntimeError(f"{kind}: no result for {task_id}") from None
            times.append((time.perf_counter_ns() - sent) / 1e6)
            message = subscribed.read()
            if message[0] != b"message":
                raise RuntimeError(f"{kind}: unexpected {message!r}")
            pushed.read()
            sub.sendall(resp("UNSUBSCRIBE"))
            subscribed.read()
            time.sleep(gap)
        cpu_after, switches_after = tree_cpu_and_switches(proc.pid)
        cpu = (cpu_after - cpu_before) / len(messages)
        switches = (switches_after - switches_before) / len(messages)
    finally:
        push.close()
        sub.close()
        proc.send_signal(signal.SIGTERM) if kind in SWIFT_KINDS else os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    times.sort()
    return {"p50_ms": statistics.median(times), "p99_ms": times[min(len(times) - 1, int(len(times) * 0.99))],
            "cpu_us": cpu * 1e6, "switches": switches}


def startup(kind, server, logdir, runs=5):
    """Time from starting the worker to the stored result of a message that was already waiting (median of runs):
    process start, connecting, declaring the queue, the first fetch and one task."""
    broker, backend = server.url(1), server.url(0)
    rb, rr = redis.Redis.from_url(broker), redis.Redis.from_url(backend)
    times = []
    for _ in range(runs):
        rb.flushdb()
        rr.flushdb()
        raw = make_messages(broker, 1, "tasks.noop", "json")[0]
        key = f"celery-task-meta-{json.loads(raw)['headers']['id']}"
        rb.lpush("celery", raw)
        started = time.perf_counter()
        proc = start_worker(kind, broker, backend, False, "json", logdir, settle=False)
        try:
            while not rr.exists(key):
                if time.perf_counter() - started > 60:
                    raise RuntimeError(f"{kind}: no result 60 s after start")
                time.sleep(0.001)
            times.append((time.perf_counter() - started) * 1000)
        finally:
            proc.send_signal(signal.SIGTERM) if kind in SWIFT_KINDS else os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
    return statistics.median(times)


def median_run(runs):
    """The run with the median rate (the lower middle one for an even count); `lost` counts every run's losses."""
    ordered = sorted(runs, key=lambda run: run["rate"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    if any("lost" in run for run in runs):
        chosen["lost"] = sum(run.get("lost", 0) for run in runs)
    return chosen


def bare_loop(server, messages):
    """The floor: pop many messages per round trip and pipeline SETEX + PUBLISH for each, no Celery at all."""
    broker, backend = server.url(1), server.url(0)
    rb, rr = redis.Redis.from_url(broker), redis.Redis.from_url(backend)
    rb.flushdb()
    rr.flushdb()
    push_all(rb, "celery", messages)
    redis0 = redis_cpu(server)
    started = time.monotonic()
    done = 0
    while True:
        batch = rb.rpop("celery", 200)
        if not batch:
            break
        pipe = rr.pipeline(transaction=False)
        for raw in batch:
            task_id = json.loads(raw)["headers"]["id"]
            document = json.dumps({"status": "SUCCESS", "result": None, "traceback": None, "children": [],
                                   "date_done": "2026-01-01T00:00:00+00:00", "task_id": task_id})
            pipe.set(f"celery-task-meta-{task_id}", document, ex=86400)
            pipe.publish(f"celery-task-meta-{task_id}", document)
        pipe.execute()
        done += len(batch)
    elapsed = time.monotonic() - started
    return {"tasks": done, "seconds": elapsed, "rate": done / elapsed,
            **redis_share(redis_cpu(server) - redis0, done, elapsed)}


# The Redis commands the Swift worker makes per task (inside its pop-and-record, store and ack round trips).
TASK_COMMAND_MIX = [
    ["RPOP", "celery"],
    ["ZADD", "unacked_index", "1795583298.4", "tag:__rand_int__"],
    ["HSET", "unacked", "tag:__rand_int__", "x" * 700],
    ["GET", "celery-task-meta-__rand_int__"],
    ["SETEX", "celery-task-meta-__rand_int__", "86400", "y" * 200],
    ["PUBLISH", "celery-task-meta-__rand_int__", "y" * 200],
    ["ZREM", "unacked_index", "tag:__rand_int__"],
    ["HDEL", "unacked", "tag:__rand_int__"],
]


def relay_window():
    """The prefetch window of a `-c 2` worker with the benchmark's multiplier (256 messages when it is unlimited)."""
    multiplier = 4 if PREFETCH_MULTIPLIER is None else PREFETCH_MULTIPLIER
    return 2 * multiplier if multiplier else 256


def redis_ceiling(server, requests=100000):
    """What the Redis server itself allows for the per-task command mix: each command measured pipelined (64 deep,
    2 clients) with redis-benchmark against the same server, then combined as 1 / sum(1 / rate)."""
    seconds_per_task = 0.0
    rates = {}
    for command in TASK_COMMAND_MIX:
        out = subprocess.run(["redis-benchmark", "-p", str(server.port), "-n", str(requests), "-P", "64", "-c", "2",
                              "-r", "100000", "--csv", *command], capture_output=True, text=True, check=True).stdout
        rate = float(out.strip().splitlines()[-1].split(",")[1].strip('"'))
        rates[command[0]] = rate
        seconds_per_task += 1 / rate
    return {"rate": 1 / seconds_per_task, "commands": rates}


def milliseconds(text):
    """`--latency-gaps`: comma-separated positive numbers."""
    try:
        values = [float(value) for value in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of milliseconds: {text!r}") from None
    if not values or any(value <= 0 for value in values):
        raise argparse.ArgumentTypeError(f"gaps must be positive: {text!r}")
    return values


LATENCY_KINDS = ["swift", "swift-solo", "python-prefork", "python-loop", "c-loop"]


def latency_kinds(text):
    """`--latency-only`'s comma-separated list of workers, each one of LATENCY_KINDS."""
    kinds = [kind.strip() for kind in text.split(",") if kind.strip()]
    unknown = [kind for kind in kinds if kind not in LATENCY_KINDS]
    if not kinds or unknown:
        raise argparse.ArgumentTypeError(f"expected some of {', '.join(LATENCY_KINDS)} (comma-separated), got {text!r}")
    return kinds


def print_latency(kind, gap, lat):
    label = {"python-loop": "python BRPOP+PUBLISH loop", "c-loop": "C BRPOP+PUBLISH loop"}.get(kind, kind)
    print(f"idle pick-up latency, {gap:g} ms apart, {label:26} p50 {lat['p50_ms']:.2f} ms  "
          f"p99 {lat['p99_ms']:.2f} ms  CPU {lat['cpu_us']:.0f} us and {lat['switches']:.1f} switches per sample", flush=True)


def whole(text):
    """A whole number, 0 or more, for argparse."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(text)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--fast-tasks", type=int,
                        help="messages for the Swift pools, the bare loop and the zero-cost relay, which drain 5 000 "
                             "in a fraction of a second (default: --tasks); Python's pools drain --tasks of them")
    parser.add_argument("--latency-samples", type=int, default=200)
    parser.add_argument("--latency-gaps", type=milliseconds, default="10,1",
                        help="milliseconds between latency samples, one measurement per value (default: 10,1)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per cell; the run with the median rate is reported, lost tasks are summed")
    parser.add_argument("--quick", action="store_true", help="one variant per worker: checks the benchmark runs")
    parser.add_argument("--worker", default=WORKER, help="the swift-celery-worker binary (default: the release build)")
    parser.add_argument("--latency-only", metavar="KINDS", type=latency_kinds,
                        help="measure only the idle pick-up latency of these workers (comma-separated: "
                             f"{', '.join(LATENCY_KINDS)}), --repeat times")
    parser.add_argument("--prefetch-multiplier", type=whole,
                        help="every worker's prefetch multiplier, 0 for no limit (default: Celery's, 4)")
    parser.add_argument("--drain-only", action="store_true",
                        help="only the drains and the bare loop: no Redis ceiling, latency or start-up measurements")
    options = parser.parse_args()
    globals()["WORKER"] = options.worker
    globals()["PREFETCH_MULTIPLIER"] = options.prefetch_multiplier
    logdir = Path("/tmp/swift-celery-bench")
    logdir.mkdir(exist_ok=True)
    server = RedisProcess().start()
    rows = []
    try:
        if options.latency_only:
            for _ in range(options.repeat):
                for gap in options.latency_gaps:
                    for kind in options.latency_only:
                        print_latency(kind, gap, latency(kind, server, options.latency_samples, logdir, gap / 1000))
            return 0
        kinds = ["swift", "swift-solo", "python-prefork", "python-threads"]
        from relay_floor import build_relay, run_relay  # it imports this module: here, not at the top
        relay_binary = build_relay(logdir)
        variants = [("tasks.noop", "json", False)] if options.quick else [
            (task, serializer, acks) for task in ["tasks.noop", "tasks.add"] for serializer in ["json", "msgpack"]
            for acks in [False, True]]
        fast_tasks = options.fast_tasks or options.tasks
        for task, serializer, acks in variants:
            messages = make_messages(server.url(1), max(options.tasks, fast_tasks), task, serializer)
            for kind in kinds:
                drained = messages[:fast_tasks] if kind in SWIFT_KINDS else messages[:options.tasks]
                runs = [drain(kind, server, drained, acks, serializer, logdir) for _ in range(options.repeat)]
                result = median_run(runs)
                rows.append((kind, task, serializer, acks, result))
                print(f"{kind:15} {task:11} {serializer:8} acks_late={str(acks):5} "
                      f"{result['rate']:9.0f} tasks/s  {result['cpu_us']:7.0f} us CPU/task  "
                      f"{result['rss_mb']:6.1f} MB RSS  lost={result['lost']}  {redis_line(result)}", flush=True)
            floor = median_run([bare_loop(server, messages[:fast_tasks]) for _ in range(options.repeat)])
            print(f"{'bare-python':15} {task:11} {serializer:8} {'':15} {floor['rate']:9.0f} tasks/s"
                  f"{'':48}{redis_line(floor)}", flush=True)
            rows.append(("bare-python", task, serializer, acks, floor))
            relay = median_run([run_relay(server, messages[:fast_tasks], relay_binary, relay_window(), 2)
                                for _ in range(options.repeat)])
            print(f"{'zero-cost relay':15} {task:11} {serializer:8} {'':15} {relay['rate']:9.0f} tasks/s"
                  f"{'':48}{redis_line(relay)}", flush=True)
            rows.append(("relay", task, serializer, acks, relay))
        ceiling = None
        if not options.drain_only:
            ceiling = redis_ceiling(server, 20000 if options.quick else 200000)
            print(f"redis ceiling for the per-task command mix: {ceiling['rate']:.0f} tasks/s "
                  f"({', '.join(f'{k} {v:.0f}/s' for k, v in ceiling['commands'].items())})", flush=True)
            print()
            for gap in options.latency_gaps:
                for kind in LATENCY_KINDS:
                    print_latency(kind, gap, latency(kind, server, 20 if options.quick else options.latency_samples,
                                                     logdir, gap / 1000))
            for kind in ["swift", "swift-solo", "python-prefork"]:
                print(f"start to first result {kind:25} {startup(kind, server, logdir, 1 if options.quick else 5):.0f} "
                      "ms (median; a message already waiting)", flush=True)
        print()
        # The Redis ceiling's column only when it was measured (not with --drain-only).
        ceiling_head, ceiling_rule = (" Redis ceiling |", "---|") if ceiling else ("", "")
        print("| variant | Swift tasks/s | Swift solo tasks/s | prefork tasks/s | threads tasks/s | Swift / prefork | "
              "solo / prefork | bare Python loop | Swift / bare | solo / bare | zero-cost relay | relay / prefork |"
              f"{ceiling_head} Swift CPU µs/task | solo CPU µs/task | Swift RSS MB | solo RSS MB | prefork RSS MB |")
        print(f"|---|---|---|---|---|---|---|---|---|---|---|---|{ceiling_rule}---|---|---|---|---|")
        ceiling_cell = f" {ceiling['rate']:.0f} |" if ceiling else ""
        def cells(task, serializer, acks):
            """The results of one variant, by worker."""
            return {kind: res for kind, t, s, a, res in rows if (t, s, a) == (task, serializer, acks)}

        for task, serializer, acks in variants:
            got = cells(task, serializer, acks)
            sw, pf, th, floor = got["swift"], got["python-prefork"], got["python-threads"], got["bare-python"]
            solo, relay = got["swift-solo"], got["relay"]
            print(f"| {task} {serializer}{' acks_late' if acks else ''} | {sw['rate']:.0f} | {solo['rate']:.0f} | "
                  f"{pf['rate']:.0f} | {th['rate']:.0f} | {sw['rate'] / pf['rate']:.1f}x | "
                  f"{solo['rate'] / pf['rate']:.1f}x | {floor['rate']:.0f} | {sw['rate'] / floor['rate']:.2f}x | "
                  f"{solo['rate'] / floor['rate']:.2f}x | {relay['rate']:.0f} | {relay['rate'] / pf['rate']:.1f}x |"
                  f"{ceiling_cell} {sw['cpu_us']:.0f} | {solo['cpu_us']:.0f} | "
                  f"{sw['rss_mb']:.1f} | {solo['rss_mb']:.1f} | {pf['rss_mb']:.1f} |")
        print()
        # What Redis spent in the same drains (the median run of each cell): how close each drain came to Redis's
        # one thread being busy all the time, and what each task cost it.
        redis_kinds = [("swift", "Swift"), ("swift-solo", "solo"), ("relay", "relay"), ("bare-python", "bare loop")]
        print("| variant | " + " | ".join(f"Redis µs/task, {name}" for _, name in redis_kinds) + " | "
              + " | ".join(f"Redis busy, {name}" for _, name in redis_kinds) + " |")
        print("|---|" + "---|" * (2 * len(redis_kinds)))
        for task, serializer, acks in variants:
            got = cells(task, serializer, acks)
            print(f"| {task} {serializer}{' acks_late' if acks else ''} | "
                  + " | ".join(f"{got[kind]['redis_us']:.1f}" for kind, _ in redis_kinds) + " | "
                  + " | ".join(f"{got[kind]['redis_busy']:.2f}" for kind, _ in redis_kinds) + " |")
        lost = sum(res.get("lost", 0) for *_, res in rows)
        print(f"\nbenchmark: {len(rows)} cells x {options.repeat} run(s), {options.tasks} messages per drain of "
              f"Python's pools and {fast_tasks} of the others, {lost} tasks lost")
        return 1 if lost else 0
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
