"""Compressed task messages (kombu's `compression` header, set by `task_compression` or `apply_async(compression=…)`)
and compressed results (Celery 5.7's `result_compression`), between real Python Celery and the Swift worker.

The Swift worker reads kombu's zlib, bzip2 and lzma; it sends them when `task_compression` names one. It reads
results a Python 5.7 worker compressed; it stores its own uncompressed (Celery 5.7 reads both)."""
import base64
import bz2
import json
import lzma
import zlib

import celery
import pytest
from celery import chain, chord

from conftest import eventually
from test_client import swift

CONTENT_TYPES = {"zlib": "application/x-gzip", "bzip2": "application/x-bz2", "lzma": "application/x-lzma"}
DECOMPRESS = {"application/x-gzip": zlib.decompress, "application/x-bz2": bz2.decompress,
              "application/x-lzma": lzma.decompress}
MARKER = b"\x00celery-compressed\x00"


def sig(app, name, *args, queue="swift"):
    return app.signature(name, args=args).set(queue=queue)


def decompressed_body(raw):
    """The body of a raw message in a Redis list, decompressed as kombu would."""
    message = json.loads(raw)
    compression = message["headers"].get("compression")
    body = base64.b64decode(message["body"])
    return compression, json.loads(DECOMPRESS[compression](body)) if compression else json.loads(body)


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
@pytest.mark.parametrize("compression", ["zlib", "bzip2", "lzma"])
def test_compressed_messages_from_python_run(start_worker, make_app, broker_redis, serializer, compression):
    app = make_app(task_serializer=serializer, task_compression=compression)
    big = "我将发送邮件 " * 20_000  # 140 kB: decompressed in more than one step
    args = [big, 2**63 - 1, {"k": [1.5, None, True]}]
    result = app.tasks["tasks.echo"].delay(*args, x=1)
    (raw,) = broker_redis.lrange("celery", 0, -1)
    assert json.loads(raw)["headers"]["compression"] == CONTENT_TYPES[compression]
    start_worker()
    assert result.get(timeout=10) == {"args": args, "kwargs": {"x": 1}}
    assert app.tasks["tasks.add"].apply_async((40, 2), compression=compression).get(timeout=10) == 42


def test_messages_the_swift_worker_sends_are_compressed_as_configured(start_worker, start_python_worker, make_app,
                                                                     broker_redis, tmp_path):
    config = tmp_path / "celeryconfig.yaml"
    config.write_text("task_compression: bzip2\n")
    start_worker("--config", str(config), "-Q", "swift")
    app = make_app()
    (conf,) = app.control.inspect(timeout=1).conf().values()
    assert conf["task_compression"] == "bzip2"
    # The chain's second step is sent by the Swift worker to a queue that no one consumes yet.
    result = chain(sig(app, "tasks.add", 1, 2), sig(app, "tasks.add", 10, queue="py")).apply_async()
    eventually(lambda: broker_redis.llen("py") == 1, timeout=10)
    (raw,) = broker_redis.lrange("py", 0, -1)
    compression, body = decompressed_body(raw)
    assert compression == "application/x-bz2"
    assert body[0] == [3, 10]
    start_python_worker("-Q", "py")
    assert result.get(timeout=20) == 13
    # A retry is published compressed too, and the Swift worker reads it back.
    assert app.tasks["tasks.flaky"].apply_async((2, 0.1), queue="swift").get(timeout=20) == 2


def test_the_swift_client_sends_compressed_messages_that_python_runs(start_python_worker, redis_urls, broker_redis):
    sent = swift(redis_urls, "call", "tasks.add", "--args", "[20, 22]", "-Q", "held", "--compression", "lzma")
    assert sent.returncode == 0, sent.stderr
    (raw,) = broker_redis.lrange("held", 0, -1)
    compression, body = decompressed_body(raw)
    assert (compression, body[0]) == ("application/x-lzma", [20, 22])
    start_python_worker("-Q", "held,py")
    done = swift(redis_urls, "call", "tasks.echo", "--args", '["ü"]', "-Q", "py", "--compression", "zlib", "--wait")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[1]) == {"args": ["ü"], "kwargs": {}}
    bad = swift(redis_urls, "call", "tasks.add", "--compression", "zstd")
    assert bad.returncode != 0 and "--compression must be zlib (gzip), bzip2 or lzma (xz)" in bad.stderr


def test_results_python_compressed_are_read_by_the_swift_worker_and_client(start_worker, start_python_worker,
                                                                           make_app, backend_redis, redis_urls):
    start_worker("-Q", "swift", "-c", "2")
    start_python_worker("-Q", "py", "-c", "2", env={"RESULT_COMPRESSION": "zlib"})
    app = make_app()
    # The Python parts are quick and the Swift part sleeps, so the Swift worker completes the chord: it reads the
    # parts' results as Python stored them, compressed by Celery 5.7.
    parts = [sig(app, "tasks.add", 1, 2, queue="py"), sig(app, "tasks.sleep", 0.5), sig(app, "tasks.add", 3, 4, queue="py")]
    result = chord(parts, sig(app, "tasks.echo", queue="swift")).apply_async()
    assert result.get(timeout=20) == {"args": [[3, 0.5, 7]], "kwargs": {}}
    python_part = result.parent.results[0].id
    stored = backend_redis.get(f"celery-task-meta-{python_part}")
    if celery.VERSION >= (5, 7):
        assert stored.startswith(MARKER + b"application/x-gzip\x00")
    else:
        assert json.loads(stored)["status"] == "SUCCESS"  # Celery 5.3 ignores result_compression
    # `call --wait` reads a compressed result through pub/sub, and its failure.
    done = swift(redis_urls, "call", "tasks.add", "--args", "[20, 22]", "-Q", "py", "--wait")
    assert done.returncode == 0 and done.stdout.split()[1] == "42", done.stderr
    failed = swift(redis_urls, "call", "tasks.fail", "--args", '["nope"]', "-Q", "py", "--wait")
    assert failed.returncode == 1 and "FAILURE: ValueError: nope" in failed.stderr


def test_result_compression_in_the_swift_config_warns_and_stores_plain_results(start_worker, make_app, backend_redis,
                                                                                tmp_path):
    config = tmp_path / "celeryconfig.yaml"
    config.write_text("result_compression: zlib\n")
    worker = start_worker("--config", str(config))
    worker.wait_for_log("'result_compression' is not supported")
    result = make_app().tasks["tasks.add"].delay(2, 3)
    assert result.get(timeout=10) == 5
    assert json.loads(backend_redis.get(f"celery-task-meta-{result.id}"))["status"] == "SUCCESS"
