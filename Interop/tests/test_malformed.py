"""Bad input: every malformed message is logged, settled as Celery settles it, and the worker keeps serving.

Where a task id can be read, the Swift worker also stores a FAILURE so that a waiting `.get()` raises instead of
hanging (Python Celery stores nothing for these and the caller waits forever).
"""
import base64
import bz2
import json
import uuid
import zlib

import msgpack
import pytest


def envelope(body: bytes, content_type="application/json", encoding="utf-8", headers=None, task_id=None,
             properties=None, base64_body=True):
    task_id = task_id or str(uuid.uuid4())
    return {
        "body": base64.b64encode(body).decode() if base64_body else body.decode(),
        "content-encoding": encoding,
        "content-type": content_type,
        "headers": headers if headers is not None else {"lang": "py", "task": "tasks.add", "id": task_id,
                                                        "retries": 0, "root_id": task_id},
        "properties": properties if properties is not None else {
            "correlation_id": task_id, "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": "celery"}, "priority": 0,
            "body_encoding": "base64", "delivery_tag": str(uuid.uuid4())},
    }, task_id


GOOD_BODY = json.dumps([[2, 3], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]).encode()


def assert_still_serving(app, broker_redis, worker):
    assert app.tasks["tasks.add"].delay(40, 2).get(timeout=10) == 42
    assert worker.alive()
    assert broker_redis.hlen("unacked") == 0
    assert broker_redis.llen("celery") == 0


@pytest.mark.parametrize("raw", [b"this is not json", b"[1, 2, 3]", b"{\"body\": 5}", b"\xff\xfe\x00 binary junk",
                                 b"{\"headers\": {\"task\": \"tasks.add\"}}"])
def test_unparseable_list_items_are_logged_and_dropped(start_worker, make_app, broker_redis, raw):
    worker = start_worker()
    app = make_app()
    broker_redis.lpush("celery", raw)
    worker.wait_for_log("Received and deleted invalid message")
    assert_still_serving(app, broker_redis, worker)


def test_bad_base64_body_fails_the_task_with_decode_error(start_worker, make_app, broker_redis):
    from kombu.exceptions import DecodeError

    worker = start_worker()
    app = make_app()
    message, task_id = envelope(b"")
    message["body"] = "%%% not base64 %%%"
    broker_redis.lpush("celery", json.dumps(message))
    with pytest.raises(DecodeError):
        app.AsyncResult(task_id).get(timeout=10)
    worker.wait_for_log(f"[{task_id}]")
    assert_still_serving(app, broker_redis, worker)


@pytest.mark.parametrize("compression,body,error", [
    ("application/x-snappy", zlib.compress(GOOD_BODY), "compression 'application/x-snappy' is not supported"),
    ("application/zstd", zlib.compress(GOOD_BODY), "body does not decompress as application/zstd"),
    ("application/x-brotli", GOOD_BODY, "body does not decompress as application/x-brotli"),
    ("application/x-gzip", GOOD_BODY, "body does not decompress as application/x-gzip"),
    ("application/x-bz2", bz2.compress(GOOD_BODY)[:-8], "body does not decompress as application/x-bz2"),
])
def test_bad_compression_fails_the_task_with_decode_error(start_worker, make_app, broker_redis, compression, body,
                                                          error):
    """Python logs "Can't decode message body" and deletes the message; the caller's `.get()` waits forever."""
    from kombu.exceptions import DecodeError

    worker = start_worker()
    app = make_app()
    task_id = str(uuid.uuid4())
    message, _ = envelope(body, task_id=task_id, headers={"lang": "py", "task": "tasks.add", "id": task_id,
                                                          "retries": 0, "root_id": task_id, "compression": compression})
    broker_redis.lpush("celery", json.dumps(message))
    with pytest.raises(DecodeError, match=error):
        app.AsyncResult(task_id).get(timeout=10)
    worker.wait_for_log(f"[{task_id}]")
    assert_still_serving(app, broker_redis, worker)


@pytest.mark.parametrize("content_type,encoding", [("application/x-python-serialize", "binary"),
                                                   ("application/x-yaml", "utf-8"),
                                                   ("application/data", "binary")])
def test_unaccepted_content_type_is_never_decoded(start_worker, make_app, broker_redis, content_type, encoding):
    from kombu.exceptions import ContentDisallowed

    worker = start_worker()
    app = make_app()
    # a pickle that would run code if it were ever unpickled
    message, task_id = envelope(b"cos\nsystem\n(S'touch /tmp/pwned-by-pickle'\ntR.", content_type, encoding)
    broker_redis.lpush("celery", json.dumps(message))
    with pytest.raises(ContentDisallowed):
        app.AsyncResult(task_id).get(timeout=10)
    worker.wait_for_log("Received invalid task message")
    assert_still_serving(app, broker_redis, worker)


def test_truncated_msgpack_body(start_worker, make_app, broker_redis):
    from kombu.exceptions import DecodeError

    worker = start_worker()
    app = make_app()
    body = msgpack.packb([[2, 3], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}],
                         use_bin_type=True)
    message, task_id = envelope(body[:-5], "application/x-msgpack", "binary")
    broker_redis.lpush("celery", json.dumps(message))
    with pytest.raises(DecodeError):
        app.AsyncResult(task_id).get(timeout=10)
    assert_still_serving(app, broker_redis, worker)


@pytest.mark.parametrize("body", [
    json.dumps([[2, 3], {}]).encode(),              # Python Celery exits on this one
    json.dumps({"no": "args"}).encode(),
    json.dumps(["not a list", {}, {}]).encode(),
    json.dumps([[2, 3], "not a dict", {}]).encode(),
    b"{not json",
])
def test_v2_body_of_the_wrong_shape(start_worker, make_app, broker_redis, body):
    worker = start_worker()
    app = make_app()
    message, task_id = envelope(body)
    broker_redis.lpush("celery", json.dumps(message))
    with pytest.raises(Exception) as raised:
        app.AsyncResult(task_id).get(timeout=10)
    assert type(raised.value).__name__ in ("InvalidTaskError", "DecodeError")
    worker.wait_for_log(f"[{task_id}]")
    assert_still_serving(app, broker_redis, worker)


def test_unknown_message_without_task_name_is_deleted(start_worker, make_app, broker_redis):
    worker = start_worker()
    app = make_app()
    message, _ = envelope(json.dumps({"hello": "world"}).encode(), headers={})
    broker_redis.lpush("celery", json.dumps(message))
    worker.wait_for_log("Received and deleted unknown message")
    assert_still_serving(app, broker_redis, worker)


def test_unparsable_eta_is_rejected(start_worker, make_app, broker_redis):
    worker = start_worker()
    app = make_app()
    message, task_id = envelope(GOOD_BODY)
    message["headers"]["eta"] = "next tuesday"
    broker_redis.lpush("celery", json.dumps(message))
    with pytest.raises(Exception) as raised:
        app.AsyncResult(task_id).get(timeout=10)
    assert type(raised.value).__name__ == "InvalidTaskError"
    assert_still_serving(app, broker_redis, worker)


def test_minimal_and_plain_messages_run(start_worker, make_app, broker_redis):
    """Messages Python loses (no delivery_tag / delivery_info) or accepts (plain JSON body) all run here."""
    worker = start_worker()
    app = make_app()
    ids = []
    minimal, task_id = envelope(GOOD_BODY, headers=None)
    minimal["headers"] = {"task": "tasks.add", "id": task_id}
    minimal["properties"] = {"delivery_tag": str(uuid.uuid4()), "body_encoding": "base64",
                             "delivery_info": {"exchange": "", "routing_key": "celery"}}
    ids.append(task_id)
    plain, task_id = envelope(GOOD_BODY, base64_body=False)
    del plain["properties"]["body_encoding"]
    ids.append(task_id)
    untagged, task_id = envelope(GOOD_BODY)
    del untagged["properties"]["delivery_tag"]
    del untagged["properties"]["delivery_info"]
    ids.append(task_id)
    for message in (minimal, plain, untagged):
        broker_redis.lpush("celery", json.dumps(message))
    for task_id in ids:
        assert app.AsyncResult(task_id).get(timeout=10) == 5
    assert_still_serving(app, broker_redis, worker)
