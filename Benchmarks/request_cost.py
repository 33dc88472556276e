"""What one request costs Redis, apart from the commands in it: Redis's own CPU for batches of settle writes of
1 to 32 tasks each, sent one at a time (the client waits for each reply, as a relay does) or all pipelined (Redis
never waits for the next), as a script and as the same commands in a `MULTI` (which writes the results without
looking at the stored ones first).

    .venv/bin/python Benchmarks/request_cost.py --tasks 8000 --runs 3

No worker runs here: the client is this script, so the figures are Redis's alone. Each request settles B tasks the
way the worker's settle script does: `MGET` of their result keys, then per task `SETEX` and `PUBLISH` of a 200-byte
result unless a stored one says SUCCESS, then one `ZREM` of their tags from `unacked_index` and one `HDEL` from
`unacked` (recorded beforehand, 1 KB each, as a pop records them; not timed). Redis's CPU is read from `INFO cpu`
before and after each cell. A straight line fitted over the batch sizes, CPU per request = fixed + B × per task,
splits what Redis spends on a request as such (reading it, waking up for it, replying) from what it spends on each
task in it. With `--runs N` the cells alternate N times and the medians are printed.
"""
import argparse
import json
import statistics
import time
import uuid

import redis

from drain import RedisProcess

SETTLE = """
local count = tonumber(ARGV[1])
local current = redis.call('MGET', unpack(KEYS, 3, 2 + count))
for i = 1, count do
    local stored, success = current[i], false
    if stored then
        local ok, decoded = pcall(cjson.decode, stored)
        success = ok and type(decoded) == 'table' and decoded['status'] == 'SUCCESS'
    end
    if not success then
        redis.call('SETEX', KEYS[2 + i], 86400, ARGV[1 + count + i])
        redis.call('PUBLISH', KEYS[2 + i], ARGV[1 + count + i])
    end
end
redis.call('ZREM', KEYS[2], unpack(ARGV, 2, 1 + count))
redis.call('HDEL', KEYS[1], unpack(ARGV, 2, 1 + count))
return 0
"""

MODES = ("script, one at a time", "MULTI, one at a time", "script, pipelined", "MULTI, pipelined")


def redis_cpu(client):
    info = client.info("cpu")
    return info["used_cpu_user"] + info["used_cpu_sys"]


def multi(pipe, tags, keys, document):
    """The settle script's commands, unconditionally (a `MULTI` cannot read its own `MGET`)."""
    pipe.mget(keys)
    for key in keys:
        pipe.set(key, document, ex=86400)
        pipe.publish(key, document)
    pipe.zrem("unacked_index", *tags)
    pipe.hdel("unacked", *tags)


def cell(client, mode, batch, tasks):
    """Redis's CPU in microseconds per request for `tasks` tasks settled `batch` at a time in `mode`."""
    client.flushdb()
    sha = client.script_load(SETTLE)
    requests = []
    record = json.dumps([{"body": "x" * 900}, "", "celery"])
    fill = client.pipeline(transaction=False)
    for _ in range(tasks // batch):
        tags = [str(uuid.uuid4()) for _ in range(batch)]
        keys = ["celery-task-meta-" + str(uuid.uuid4()) for _ in range(batch)]
        document = json.dumps({"status": "SUCCESS", "result": None, "traceback": None, "children": [],
                               "date_done": "2026-12-03T04:00:00.000000+00:00", "task_id": keys[0][17:]})
        for tag in tags:
            fill.zadd("unacked_index", {tag: time.time()})
            fill.hset("unacked", tag, record)
        requests.append((tags, keys, document))
    fill.execute()
    before = redis_cpu(client)
    if mode == "script, pipelined":
        pipe = client.pipeline(transaction=False)
        for tags, keys, document in requests:
            pipe.evalsha(sha, 2 + batch, "unacked", "unacked_index", *keys, batch, *tags, *[document] * batch)
        pipe.execute()
    elif mode == "script, one at a time":
        for tags, keys, document in requests:
            client.evalsha(sha, 2 + batch, "unacked", "unacked_index", *keys, batch, *tags, *[document] * batch)
    elif mode == "MULTI, one at a time":
        for tags, keys, document in requests:
            pipe = client.pipeline(transaction=True)
            multi(pipe, tags, keys, document)
            pipe.execute()
    else:
        # redis-py's pipeline sends MULTI … EXEC around the whole pipeline: written here by hand, one per request.
        pipe = client.pipeline(transaction=False)
        for tags, keys, document in requests:
            pipe.execute_command("MULTI")
            multi(pipe, tags, keys, document)
            pipe.execute_command("EXEC")
        pipe.execute()
    spent = redis_cpu(client) - before
    if client.exists("unacked", "unacked_index") or client.dbsize() != len(requests) * batch:
        raise SystemExit(f"{mode}, batch {batch}: the writes did not all land")
    return spent * 1e6 / len(requests)


def fit(points):
    """Least squares of per-request CPU on batch size: (fixed µs per request, µs per task)."""
    xs, ys = [b for b, _ in points], [c for _, c in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - slope * mx, slope


def batch_sizes(text):
    """`--batches`: comma-separated whole numbers of at least 1."""
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of whole numbers: {text!r}") from None
    if any(size < 1 for size in sizes):
        raise argparse.ArgumentTypeError("a batch holds at least one task")
    return sizes


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=8000, help="tasks settled per cell (default 8000)")
    parser.add_argument("--runs", type=int, default=3, help="alternations of every cell (default 3)")
    parser.add_argument("--batches", type=batch_sizes, default="1,2,4,8,16,32",
                        help="batch sizes, tasks per request (default 1,2,4,8,16,32)")
    args = parser.parse_args()
    batches = args.batches
    if args.tasks < 1 or args.runs < 1:
        parser.error("--tasks and --runs must be at least 1")
    server = RedisProcess().start()
    try:
        client = redis.Redis.from_url(server.url(0))
        results = {(mode, b): [] for mode in MODES for b in batches}
        for _ in range(args.runs):
            for b in batches:
                for mode in MODES:
                    results[mode, b].append(cell(client, mode, b, max(args.tasks, b)))
        print(f"Redis CPU (µs), medians of {args.runs} run(s), {args.tasks} tasks per cell")
        print("| mode | " + " | ".join(f"B={b} per request / per task" for b in batches)
              + " | fixed per request | per task |")
        print("|---|" + "---|" * (len(batches) + 2))
        for mode in MODES:
            medians = [(b, statistics.median(results[mode, b])) for b in batches]
            fixed, per_task = fit(medians) if len(batches) > 1 else (float("nan"), float("nan"))
            cells = " | ".join(f"{c:.1f} / {c / b:.1f}" for b, c in medians)
            print(f"| {mode} | {cells} | {fixed:.1f} | {per_task:.1f} |")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
