"""Compressed task messages (kombu's `compression` header, set by `task_compression` or `apply_async(compression=…)`)
and compressed results (Celery 5.7's `result_compression`), between real Python Celery and the Swift worker.

The Swift worker reads kombu's zlib, bzip2 and lzma, and brotli and zstd (which kombu registers when their Python
packages are installed, as they are here); it sends them when `task_compression` names one. It reads results a
Python 5.7 worker compressed, and stores its own compressed when `result_compression` names a method."""
import base64
import json
import shutil
import subprocess
from pathlib import Path

import celery
import pytest
from celery import chain, chord
from kombu.compression import decompress

from conftest import eventually
from test_client import swift

CONTENT_TYPES = {"zlib": "application/x-gzip", "bzip2": "application/x-bz2", "lzma": "application/x-lzma",
                 "brotli": "application/x-brotli", "zstd": "application/zstd"}
METHODS = list(CONTENT_TYPES)
# Made by libraries of one version on both sides (zlib, bzip2 and xz here): the same bytes. Python's brotli and zstd
# packages carry newer versions of their libraries than Debian's, whose output may differ.
SAME_BYTES = ["zlib", "bzip2", "lzma"]
MARKER = b"\x00celery-compressed\x00"


def sig(app, name, *args, queue="swift"):
    return app.signature(name, args=args).set(queue=queue)


def decompressed_body(raw):
    """The body of a raw message in a Redis list, decompressed as kombu would."""
    message = json.loads(raw)
    compression = message["headers"].get("compression")
    body = base64.b64decode(message["body"])
    return compression, json.loads(decompress(body, compression)) if compression else json.loads(body)


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
@pytest.mark.parametrize("compression", METHODS)
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
    for method in ("brotli", "zstd"):
        done = swift(redis_urls, "call", "tasks.echo", "--args", f'["{method}"]', "-Q", "py", "--compression", method, "--wait")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout.splitlines()[1]) == {"args": [method], "kwargs": {}}
    bad = swift(redis_urls, "call", "tasks.add", "--compression", "snappy")
    assert bad.returncode != 0 and "--compression must be zlib (gzip), bzip2, lzma (xz), brotli or zstd" in bad.stderr


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


@pytest.mark.parametrize("compression", METHODS)
def test_result_compression_in_the_swift_config_stores_results_as_celery_5_7_does(start_worker, make_app, backend_redis,
                                                                                  tmp_path, compression):
    config = tmp_path / "celeryconfig.yaml"
    config.write_text(f"result_compression: {compression}\ntask_track_started: true\n")
    start_worker("--config", str(config), "-Q", "swift")
    app = make_app()
    (conf,) = app.control.inspect(timeout=1).conf().values()
    assert conf["result_compression"] == compression
    result = app.send_task("tasks.add", (2, 3), queue="swift")
    stored = eventually_stored(backend_redis, result.id, "SUCCESS")
    header = MARKER + CONTENT_TYPES[compression].encode() + b"\x00"
    assert stored.startswith(header)
    document = json.loads(decompress(stored[len(header):], CONTENT_TYPES[compression]))
    assert document["status"] == "SUCCESS" and document["result"] == 5
    failed = app.send_task("tasks.fail", ("nope",), queue="swift")
    if celery.VERSION >= (5, 7):
        # Celery 5.7 reads them, and would have written the same bytes.
        from celery.backends.base import compress_payload
        assert result.get(timeout=10) == 5
        if compression in SAME_BYTES:
            assert stored == compress_payload(stored_payload(stored, header, compression), compression)
        with pytest.raises(ValueError, match="nope"):
            failed.get(timeout=10)
    else:
        failure = eventually_stored(backend_redis, failed.id, "FAILURE")
        assert failure.startswith(header)  # Celery 5.3 cannot read these: result_compression is Celery 5.7's


def stored_payload(stored, header, compression):
    return decompress(stored[len(header):], CONTENT_TYPES[compression])


def eventually_stored(backend_redis, task_id, status):
    """The stored bytes of a task's result once their (decompressed) status is `status`."""
    found = []

    def done():
        stored = backend_redis.get(f"celery-task-meta-{task_id}")
        if stored and stored.startswith(MARKER):
            content_type, _, body = stored[len(MARKER):].partition(b"\x00")
            if json.loads(decompress(body, content_type.decode()))["status"] == status:
                found[:] = [stored]
        elif stored and json.loads(stored)["status"] == status:
            found[:] = [stored]
        return bool(found)

    assert eventually(done, 10), backend_redis.get(f"celery-task-meta-{task_id}")
    return found[0]


def test_a_compressed_success_is_never_overwritten(start_worker, start_python_worker, make_app, backend_redis, tmp_path):
    """Python's rule, for results Celery 5.7 compressed: a stored SUCCESS stays, whoever runs the task again. The
    worker decompresses what its scripts cannot read and decides before it writes."""
    config = tmp_path / "celeryconfig.yaml"
    config.write_text("result_compression: zlib\n")
    workers = {"swift": start_worker("-Q", "swift", "-n", "plain@%h"),
               "zswift": start_worker("--config", str(config), "-Q", "zswift", "-n", "compressing@%h")}
    start_python_worker("-Q", "py", env={"RESULT_COMPRESSION": "zlib"})
    app = make_app()
    for first in ("py", "zswift"):
        ran = app.send_task("tasks.add", (20, 22), queue=first)
        before = eventually_stored(backend_redis, ran.id, "SUCCESS")  # Celery 5.3 cannot read it compressed
        if first == "zswift" or celery.VERSION >= (5, 7):
            assert before.startswith(MARKER)
        # The same task id runs again and fails, on the plain and on the compressing Swift worker.
        for again in ("swift", "zswift"):
            runs = workers[again].log.count(f"tasks.fail[{ran.id}]")
            app.send_task("tasks.fail", ("again",), queue=again, task_id=ran.id)
            workers[again].wait_for_log(f"Task tasks.fail[{ran.id}] raised", count=runs // 2 + 1)
            assert backend_redis.get(f"celery-task-meta-{ran.id}") == before, (first, again)


def test_brotli_and_zstd_are_loaded_only_when_a_message_asks_for_them(start_worker, make_app):
    worker = start_worker("-Q", "swift")
    maps = lambda: Path(f"/proc/{worker.proc.pid}/maps").read_text()  # noqa: E731
    assert "libbrotli" not in maps() and "libzstd" not in maps()
    app = make_app()
    assert app.tasks["tasks.add"].apply_async((1, 2), queue="swift", compression="zlib").get(timeout=10) == 3
    assert "libbrotli" not in maps() and "libzstd" not in maps()
    assert app.tasks["tasks.add"].apply_async((1, 2), queue="swift", compression="brotli").get(timeout=10) == 3
    assert "libbrotlidec.so" in maps() and "libzstd" not in maps()
    assert app.tasks["tasks.add"].apply_async((1, 2), queue="swift", compression="zstd").get(timeout=10) == 3
    assert "libzstd.so" in maps()


@pytest.fixture
def without_zstd(tmp_path):
    """An environment in which the loader finds a `libzstd.so.1` that has none of zstd's functions."""
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    assert compiler, "no C compiler to build the stand-in library with"
    directory = tmp_path / "nozstd"
    directory.mkdir()
    source = directory / "empty.c"
    source.write_text("int not_zstd;\n")
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(directory / "libzstd.so.1"), str(source)], check=True)
    return {"LD_LIBRARY_PATH": str(directory)}


def test_a_missing_compression_library_is_named_and_loses_nothing(start_worker, make_app, backend_redis, tmp_path,
                                                                 without_zstd, redis_urls):
    # Chosen in the settings: the worker does not start, and says why.
    config = tmp_path / "celeryconfig.yaml"
    config.write_text("result_compression: zstd\n")
    refused = start_worker("--config", str(config), ready=False, env=without_zstd)
    assert refused.proc.wait(15) == 64
    assert "setting 'result_compression': zstd is not available: libzstd.so.1 has no ZSTD_compressBound" in refused.stdout
    # Met in a message: FAILURE DecodeError that names the library, and the worker goes on serving.
    worker = start_worker("-Q", "swift", env=without_zstd)
    app = make_app()
    result = app.tasks["tasks.add"].apply_async((1, 2), queue="swift", compression="zstd")
    assert eventually(lambda: backend_redis.exists(f"celery-task-meta-{result.id}"), timeout=10)
    failure = json.loads(backend_redis.get(f"celery-task-meta-{result.id}"))
    assert failure["status"] == "FAILURE" and failure["result"]["exc_type"] == "DecodeError"
    assert "zstd is not available: libzstd.so.1 has no ZSTD_compressBound" in failure["result"]["exc_message"][0]
    assert app.tasks["tasks.add"].apply_async((1, 2), queue="swift", compression="brotli").get(timeout=10) == 3
    assert worker.alive()
    # The client refuses it before sending anything.
    sent = swift(redis_urls, "call", "tasks.add", "--compression", "zstd", env=without_zstd)
    assert sent.returncode != 0 and "--compression: zstd is not available: libzstd.so.1" in sent.stderr
