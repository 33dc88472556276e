"""`swift-celery-worker migrate`: Celery's `celery migrate`, run side by side with Python's on copies of one broker's
messages (made by Celery's own clients), and where Celery's falls short (`-T`, `-n` with `-a`, the order of what a copy
gives back), shown to do better."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis as redis_lib

from conftest import INTEROP, WORKER_BINARY, eventually

SEP = "\x06\x16"


def python_migrate(source, destination, *args, backend):
    """Celery's `celery migrate`, with the pytasks app (which accepts msgpack as the Swift worker does)."""
    env = {**os.environ, "CELERY_BROKER_URL": source, "CELERY_RESULT_BACKEND": backend}
    return subprocess.run([str(Path(sys.executable).with_name("celery")), "-A", "pytasks", "migrate", *args, source, destination],
                          capture_output=True, text=True, timeout=60, cwd=INTEROP / "pyworker", env=env)


def swift_migrate(source, destination, *args):
    return subprocess.run([str(WORKER_BINARY), "migrate", *args, source, destination], capture_output=True, text=True,
                          timeout=60)


def fill(broker, backend):
    """Celery's own messages: protocol 2 in JSON, at two priorities and in another queue, msgpack, zlib-compressed,
    and protocol 1. Returns {task id: expected result} of the `tasks.add` ones in the default queue."""
    from clientapp import make_app

    sent = {}
    plain = make_app(broker, backend)
    for i in range(3):
        sent[plain.send_task("tasks.add", (i, 1)).id] = i + 1
    plain.send_task("tasks.echo", ("high",), priority=9)
    plain.send_task("tasks.echo", ("elsewhere",), queue="other", priority=5)
    sent[make_app(broker, backend, task_serializer="msgpack").send_task("tasks.add", (10, 1)).id] = 11
    sent[make_app(broker, backend, task_compression="zlib").send_task("tasks.add", (20, 1)).id] = 21
    sent[make_app(broker, backend, protocol=1).send_task("tasks.add", (30, 1)).id] = 31
    return sent


def clone(source, destination):
    for key in source.keys("*"):
        destination.restore(key, 0, source.dump(key))


def contents(client):
    """Every key: a list as its messages in order (each parsed, without its delivery tag, which is new in each
    copy), a set as its members."""
    found = {}
    for key in client.keys("*"):
        kind = client.type(key)
        if kind == b"list":
            messages = [json.loads(raw) for raw in client.lrange(key, 0, -1)]
            for message in messages:
                message["properties"].pop("delivery_tag", None)
            found[key.decode()] = messages
        elif kind == b"set":
            found[key.decode()] = sorted(client.smembers(key))
        else:
            found[key.decode()] = kind.decode()
    return found


def same_as_pythons(swift, python):
    """Whether the Swift CLI left what Python's did. kombu 5.3 records no `_kombu.binding_permanent.*` sets, which
    kombu 5.7 (and the Swift worker, always) adds beside each binding."""
    if not any(key.startswith("_kombu.binding_permanent.") for key in python):
        swift = {key: value for key, value in swift.items() if not key.startswith("_kombu.binding_permanent.")}
    return swift == python


def redelivered(messages):
    """Messages as kombu gives them back: marked redelivered in their headers and delivery_info."""
    marked = json.loads(json.dumps(messages))
    for message in marked:
        message["headers"]["redelivered"] = True
        message["properties"]["delivery_info"]["redelivered"] = True
    return marked


def two_brokers(redis_urls):
    """A source and a destination broker (two databases of the test's server), empty, their clients, and a Celery
    client of the source."""
    from clientapp import make_app

    server = redis_urls["server"]
    source, destination = server.url(10), server.url(12)
    src, dst = (redis_lib.Redis.from_url(url) for url in (source, destination))
    for client in (src, dst):
        client.flushdb()
    return source, destination, src, dst, make_app(source, redis_urls["backend"])


def test_migrate_copies_and_moves_as_celerys_migrate(redis_urls, start_python_worker):
    server = redis_urls["server"]
    urls = {name: server.url(db) for name, db in (("py_src", 10), ("swift_src", 11), ("py_dst", 12))}
    urls["swift_dst"] = redis_urls["broker"]  # where a Python worker runs what the Swift CLI migrated
    dbs = {name: redis_lib.Redis.from_url(url) for name, url in urls.items()}
    for client in dbs.values():
        client.flushdb()
    sent = fill(urls["py_src"], redis_urls["backend"])
    clone(dbs["py_src"], dbs["swift_src"])
    original = contents(dbs["swift_src"])
    assert len(original["celery"]) == 6 and len(original[f"celery{SEP}9"]) == 1 and len(original[f"other{SEP}3"]) == 1

    # A copy (no -a) of the default queue: the same lines, the same messages on the destination, bound as kombu binds.
    python = python_migrate(urls["py_src"], urls["py_dst"], "-t", "1", backend=redis_urls["backend"])
    swift = swift_migrate(urls["swift_src"], urls["swift_dst"], "-t", "1")
    assert python.returncode == swift.returncode == 0, (python.stderr, swift.stderr)
    assert swift.stdout == python.stdout, (python.stdout, swift.stdout)
    lines = swift.stdout.splitlines()
    assert len(lines) == 7 and lines[0].startswith("Migrating task 1/7: [[0, 1], {}, {'callbacks': None"), lines
    assert any(line.startswith("Migrating task 6/7: {'task': 'tasks.add', 'id': ") for line in lines), lines  # protocol 1
    assert same_as_pythons(contents(dbs["swift_dst"]), contents(dbs["py_dst"]))
    assert set(contents(dbs["swift_dst"])) == {"celery", f"celery{SEP}9", "_kombu.binding.celery", "_kombu.binding_permanent.celery"}
    # Both sources keep every message, marked redelivered and none held; Celery's in the reverse order, this one's in
    # the order it had.
    after = contents(dbs["swift_src"])
    assert after["celery"] == redelivered(original["celery"]) and after[f"other{SEP}3"] == original[f"other{SEP}3"]
    # (kombu 5.3 gives a message of priority 9 back to the list of priority 0, where kombu 5.7 and this one do not.)
    python_gave_back = [message for message in contents(dbs["py_src"])["celery"] if message["properties"]["priority"] == 0]
    assert python_gave_back == redelivered(original["celery"])[::-1]
    assert after[f"celery{SEP}9"] == redelivered(original[f"celery{SEP}9"])
    assert "unacked" not in after and "unacked" not in contents(dbs["py_src"])

    # A move (-a) of two queues, one renamed, from sources alike again.
    dbs["swift_src"].flushdb()
    clone(dbs["py_src"], dbs["swift_src"])
    for db in ("py_dst", "swift_dst"):
        dbs[db].flushdb()
    python = python_migrate(urls["py_src"], urls["py_dst"], "-t", "1", "-a", "-Q", "celery:moved,other", backend=redis_urls["backend"])
    swift = swift_migrate(urls["swift_src"], urls["swift_dst"], "-t", "1", "-a", "-Q", "celery:moved,other")
    assert python.returncode == swift.returncode == 0, (python.stderr, swift.stderr)
    assert swift.stdout == python.stdout and len(swift.stdout.splitlines()) == 8, (python.stdout, swift.stdout)
    moved = contents(dbs["swift_dst"])
    assert same_as_pythons(moved, contents(dbs["py_dst"]))
    assert {message["properties"]["delivery_info"]["routing_key"] for message in moved["moved"]} == {"moved"}
    assert len(moved["moved"]) == 6 and len(moved[f"moved{SEP}9"]) == 1 and len(moved[f"other{SEP}3"]) == 1
    assert same_as_pythons(contents(dbs["swift_src"]), contents(dbs["py_src"]))
    assert set(contents(dbs["swift_src"])) == {"_kombu.binding.celery", "_kombu.binding_permanent.celery", "_kombu.binding.other",
                                               "_kombu.binding_permanent.other"}

    # A Python worker runs what the Swift CLI moved, every body as it was sent.
    start_python_worker("-Q", "moved,other", "-P", "threads")
    from clientapp import make_app

    app = make_app(redis_urls["broker"], redis_urls["backend"])
    for task_id, expected in sent.items():
        assert app.AsyncResult(task_id).get(timeout=15) == expected


def test_migrate_does_better_where_celerys_falls_short(redis_urls):
    """`-T` (Celery's raises TypeError on a protocol 2 message), `-n` with `-a` (Celery's migrates one more than it
    reports and leaves it on the source too), and the messages a filter leaves out (Celery's `-a` acknowledges them:
    lost)."""
    source, destination, src, dst, app = two_brokers(redis_urls)
    for i in range(4):
        app.send_task("tasks.echo" if i % 2 else "tasks.add", (i, i))
    python = python_migrate(source, destination, "-t", "1", "-a", "-T", "tasks.echo", backend=redis_urls["backend"])
    assert "TypeError: list indices must be integers or slices, not str" in python.stderr, python.stderr
    assert src.llen("celery") == 4 and dst.llen("celery") == 0

    swift = swift_migrate(source, destination, "-t", "1", "-a", "-T", "tasks.echo", "-n", "1")
    assert swift.returncode == 0, swift.stderr
    assert swift.stdout == "Migrating task 1/4: [[1, 1], {}, {'callbacks': None, 'errbacks': None, 'chain': None, 'chord': None}]\n"
    assert [json.loads(raw)["headers"]["argsrepr"] for raw in dst.lrange("celery", 0, -1)] == ["(1, 1)"]
    # What it took and did not move is back, in its order (taken from the right).
    assert [json.loads(raw)["headers"]["argsrepr"] for raw in src.lrange("celery", 0, -1)] == ["(3, 3)", "(2, 2)", "(0, 0)"]
    assert src.hlen("unacked") == 0 and src.zcard("unacked_index") == 0

    swift = swift_migrate(source, destination, "-t", "1", "-a", "-n", "2")
    assert swift.stdout.count("Migrating task") == 2 and src.llen("celery") == 1 and dst.llen("celery") == 3, swift.stdout


def test_migrate_refuses_bad_input_and_loses_nothing(redis_urls):
    server = redis_urls["server"]
    source = server.url(10)
    src = redis_lib.Redis.from_url(source)
    src.flushdb()
    from clientapp import make_app

    task_id = make_app(source, redis_urls["backend"]).send_task("tasks.add", (1, 1)).id
    src.lpush("celery", b"not a message")

    same = swift_migrate(source, source, "-t", "1")
    assert same.returncode == 64 and "queue 'celery' keeps its name" in same.stderr and "-Q celery:other" in same.stderr, same.stderr
    for args, message in [(["--config", "/no/such/settings.yaml", source, source], "Error: cannot read config file /no/such"),
                          (["bogus://x", source], "Error: invalid Redis URL 'bogus://x': scheme 'bogus' is not redis://"),
                          ([source, "redis://127.0.0.1:6379/x"], "Error: invalid Redis URL")]:
        run = subprocess.run([str(WORKER_BINARY), "migrate", *args], capture_output=True, text=True, timeout=30)
        lines = run.stderr.splitlines()
        assert run.returncode == 64 and lines[0].startswith(message), run
        assert lines[1].startswith("Usage: swift-celery-worker migrate "), run
    assert swift_migrate(source, source, "-t", "0").returncode == 64
    # A destination that cannot be reached: the message goes back, nothing stays held.
    dead = swift_migrate(source, "redis://127.0.0.1:1/0", "-t", "1", "-a")
    assert dead.returncode == 69 and "Migration stopped" in dead.stderr and "Connection refused" in dead.stderr, dead.stderr
    assert src.llen("celery") == 2 and src.hlen("unacked") == 0
    # Within one broker, to a queue of another name: a message that is not kombu's is reported and left where it was.
    moved = swift_migrate(source, source, "-t", "1", "-a", "-Q", "celery:elsewhere")
    assert moved.returncode == 0 and "is not a task message" in moved.stderr, moved.stderr
    assert moved.stdout.startswith("Migrating task 1/2: [[1, 1]")
    assert src.lrange("celery", 0, -1) == [b"not a message"] and src.hlen("unacked") == 0
    assert json.loads(src.lindex("elsewhere", 0))["headers"]["id"] == task_id


def test_migrate_forever_until_a_signal(redis_urls):
    """`-F` migrates what comes until SIGINT or SIGTERM; a copy then gives back what it holds."""
    source, destination, src, dst, app = two_brokers(redis_urls)
    for sig, ack in ((signal.SIGTERM, "-a"), (signal.SIGINT, None)):
        process = subprocess.Popen([str(WORKER_BINARY), "migrate", "-F", *([ack] if ack else []), source, destination],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(1.5)  # longer than a wait with nothing to take, which -F outlasts
            app.send_task("tasks.add", (2, 2))
            assert eventually(lambda: dst.llen("celery") >= (1 if ack else 2), 10)
            process.send_signal(sig)
            out, err = process.communicate(timeout=10)
        finally:
            process.kill()
        assert process.returncode == 0 and out.startswith("Migrating task 1/?: [[2, 2]"), (out, err)
        assert src.hlen("unacked") == 0
        assert src.llen("celery") == (0 if ack else 1)


def test_migrate_reads_the_transport_options_of_its_config(redis_urls, start_python_worker, tmp_path):
    """`--config`'s `global_keyprefix` and `priority_steps`/`sep` name the lists and bookkeeping on both brokers (Celery's
    `migrate` leaves the app's transport options out): a Python client's messages under a prefix, moved to another
    broker, where a Python worker given the same prefix runs them."""
    from clientapp import make_app

    options = {"global_keyprefix": "tenant:", "priority_steps": list(range(10)), "sep": ":"}
    config = tmp_path / "settings.yaml"
    config.write_text(f"broker_transport_options: {json.dumps(options)}\n")
    source, destination = redis_urls["server"].url(10), redis_urls["broker"]
    src, dst = (redis_lib.Redis.from_url(url) for url in (source, destination))
    src.flushdb()
    app = make_app(source, redis_urls["backend"], broker_transport_options=options)
    sent = [app.send_task("tasks.add", (i, i), priority=i) for i in (0, 7)]
    assert src.llen("tenant:celery") == 1 and src.llen("tenant:celery:7") == 1

    moved = subprocess.run([str(WORKER_BINARY), "migrate", "-a", "--config", str(config), source, destination],
                           capture_output=True, text=True, timeout=60)
    assert moved.returncode == 0 and moved.stdout.count("Migrating task") == 2 and "/2: " in moved.stdout, moved
    assert src.exists("tenant:celery", "tenant:celery:7", "tenant:unacked") == 0
    assert dst.llen("tenant:celery") == 1 and dst.llen("tenant:celery:7") == 1 and dst.exists("celery") == 0
    start_python_worker(env={"CELERY_SETTINGS": json.dumps({"broker_transport_options": options})})
    assert [result.get(timeout=15) for result in sent] == [0, 14]

