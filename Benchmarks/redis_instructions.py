"""What the worker's two Lua scripts cost Redis, in instructions: deterministic where CPU time is not.

    .venv/bin/python Benchmarks/redis_instructions.py [--tasks 1000] [--batch 5] [REV ...]

For each git revision named (default: the working tree, as `.`), the pop-and-record script and the settle script are
read from that revision's Swift sources and run against a `redis-server` under `valgrind --tool=callgrind`, the way
a loaded worker runs them: N `tasks.noop` messages made by Celery's own producer are popped `--batch` at a time
(each pop followed by the settle of the batch popped before it: its early acknowledgements and its JSON results, so
`unacked` stays as small as under load), with Redis's database numbers the benchmark's (broker 1, results 0: the
settle script selects both). It prints Redis's instructions per task for each revision, counted over the whole
run (pops, records, settles, the network), and checks that every message was recorded, acknowledged and stored.
It also prints what one call of each script costs when it has nothing to do (a pop of empty queues, a settle of
nothing): the part of a script's cost that bigger batches share. Not the worker's own code:
`Benchmarks/instructions.py` counts that.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from drain import ROOT, make_messages, push_all  # noqa: E402
from redisproc import free_port  # noqa: E402

BROKER_SOURCE = "Sources/CeleryWorker/Broker/RedisBroker.swift"
BACKEND_SOURCE = "Sources/CeleryWorker/Backend/RedisResultBackend.swift"
DIGEST_SOURCE = "Sources/CeleryWorker/Redis/ScriptDigest.swift"


def source(rev, path):
    if rev == ".":
        return (ROOT / path).read_text()
    return subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{path}"], check=True, capture_output=True,
                          text=True).stdout


def swift_string(text, start):
    """The text of the Swift multi-line string literal (`\"\"\"` or `#\"\"\"`) that begins at or after `start`, and
    whether it is raw. A literal that is not raw has its `\\` unescaped (the scripts use no other escape)."""
    match = re.compile(r'(#?)"""\n(.*?)\n\s*"""\1', re.S).search(text, start)
    raw = match.group(1) == "#"
    body = textwrap.dedent(match.group(2))
    return (body if raw else body.replace("\\\\", "\\")), raw


def scripts(rev):
    """The pop-and-record and settle scripts' Lua text at `rev`, with the shared pieces they interpolate."""
    digest = source(rev, DIGEST_SOURCE)
    call_many = ""
    if "static let callMany" in digest:
        call_many, _ = swift_string(digest, digest.index("static let callMany"))
    broker = source(rev, BROKER_SOURCE)
    pop, raw = swift_string(broker, broker.index("static let popAndRecordScript"))
    pop = pop.replace(r"\#(RedisScript.callMany)" if raw else r"\(RedisScript.callMany)", call_many)
    backend = source(rev, BACKEND_SOURCE)
    store, _ = swift_string(backend, backend.index("static let storeFunction"))
    store = store.replace(r"\(RedisScript.callMany)", call_many)
    settle, _ = swift_string(backend, backend.index("static let settleScript"))
    return pop, store + "\n" + settle


def result(task_id):
    return json.dumps({"status": "SUCCESS", "result": None, "traceback": None, "children": [],
                       "date_done": "2026-12-02T00:00:00.000000+00:00", "task_id": task_id})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=5)
    parser.add_argument("revs", nargs="*", default=["."])
    options = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        server = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p", "redis-server", "--port", str(port),
             "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        broker = redis.Redis(port=port, db=1)
        backend = redis.Redis(port=port, db=0)
        for _ in range(300):
            try:
                broker.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.1)
        try:
            messages = make_messages(f"redis://127.0.0.1:{port}/1", options.tasks, "tasks.noop", "json")
            lists = ["celery"] + ["celery\x06\x16" + step for step in "369"]
            for rev in options.revs:
                pop_source, settle_source = scripts(rev)
                pop, settle = broker.script_load(pop_source), broker.script_load(settle_source)
                broker.flushall()
                push_all(broker, "celery", messages)

                def settle_batch(tags):
                    keys = ["unacked", "unacked_index"] + [f"celery-task-meta-{tag}" for tag in tags]
                    backend.evalsha(settle, len(keys), *keys, 1, 0, 86400, "json", len(tags), len(tags), *tags,
                                    *[result(tag) for tag in tags])

                def counted(run):
                    """Redis's instructions while `run` runs: the counters zeroed before, dumped after."""
                    subprocess.run(["callgrind_control", "-z", str(server.pid)], check=True, capture_output=True)
                    run()
                    subprocess.run(["callgrind_control", "-d", str(server.pid)], check=True, capture_output=True)
                    dumps = sorted(Path(tmp).glob(f"callgrind.out.{server.pid}.*"), key=os.path.getmtime)
                    return int(re.search(r"^summary: (\d+)", dumps[-1].read_text(), re.M).group(1))

                def repeated(call):
                    return lambda: [call() for _ in range(calls)]

                def drain():
                    before = []
                    while True:
                        popped = broker.evalsha(pop, 2 + len(lists), "unacked", "unacked_index", *lists,
                                                options.batch, repr(time.time()))
                        if before:
                            settle_batch(before)
                        if not popped:
                            break
                        before = [popped[index + 2].decode() for index in range(0, len(popped), 3)]

                calls = max(10, options.tasks // 5)
                empty_pop = counted(repeated(lambda: broker.evalsha(
                    pop, 2 + len(lists), "unacked", "unacked_index", *["empty"] * len(lists), 5, repr(time.time()))))
                empty_settle = counted(repeated(lambda: backend.evalsha(
                    settle, 2, "unacked", "unacked_index", 1, 0, 86400, "json", 0, 0)))
                total = counted(drain)
                stored, left = backend.dbsize(), broker.hlen("unacked") + broker.zcard("unacked_index")
                if stored != options.tasks or left:
                    raise RuntimeError(f"{rev}: {stored} results stored of {options.tasks}, {left} left in unacked")
                print(f"{rev:12} {total / options.tasks:9.0f} Redis instructions per task "
                      f"({options.tasks} tasks, {options.batch} per pop and per settle); a call with nothing to do: "
                      f"pop {empty_pop / calls:.0f}, settle {empty_settle / calls:.0f}", flush=True)
        finally:
            try:
                broker.shutdown(nosave=True)
            except redis.ConnectionError:
                pass
            server.wait(60)


if __name__ == "__main__":
    main()
