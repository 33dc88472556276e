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

from conftest import eventually


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


def test_a_delivery_tag_that_is_not_utf8_is_never_recorded(start_worker, make_app, broker_redis, backend_redis):
    """Tags past ASCII, fetched several at a time: a UTF-8 one (escaped as kombu writes it, or not) is recorded in
    `unacked` and removed with the task's acknowledgement; one whose bytes are not UTF-8 is not recorded (kombu, which
    decodes the message first, records nothing either), and the message is deleted as invalid. Recorded, it stayed in
    `unacked` for good, since the worker reads tags as text and could never remove it."""
    def message(tag_json: bytes):
        body, task_id = envelope(GOOD_BODY)
        raw = json.dumps(body).encode()
        return raw.replace(json.dumps(body["properties"]["delivery_tag"]).encode(), tag_json), task_id

    good = [message(json.dumps(f"t\u00e5g-{i}-\U0001F600").encode()) for i in range(3)]  # escaped, as kombu writes
    good += [message(f'"t\u00e5g-{i}-\U0001F600-raw"'.encode()) for i in range(3)]  # UTF-8 as it is
    # A lone continuation byte, a lead byte without its continuation, an overlong form, a surrogate, a code point
    # past U+10FFFF, a byte that never starts one.
    bad = [message(b'"tag-' + raw + b'-end"')
           for raw in (b"\x91", b"\xc3", b"\xe0\x80\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80")]
    for raw, _ in good + bad:
        broker_redis.lpush("celery", raw)
    worker = start_worker()
    app = make_app()
    assert [app.AsyncResult(task_id).get(timeout=10) for _, task_id in good] == [5] * len(good)
    worker.wait_for_log("Received and deleted invalid message", count=len(bad))
    assert eventually(lambda: broker_redis.hlen("unacked") == 0 and broker_redis.zcard("unacked_index") == 0)
    assert_still_serving(app, broker_redis, worker)


FIXTURES = __import__("pathlib").Path(__file__).resolve().parents[2] / "Tests" / "Fixtures"


def damaged(raw: bytes, rng) -> bytes:
    """One to three random edits of a message: in its JSON text, or in its body once base64-decoded (where most
    edits of the text would only break the base64)."""
    if rng.random() < 0.5:
        try:
            message = json.loads(raw)
            body = bytearray(base64.b64decode(message["body"]))
            message["body"] = base64.b64encode(bytes(edits(body, rng))).decode()
            return json.dumps(message).encode()
        except Exception:  # noqa: BLE001 - not every message has a base64 body: edit its text instead
            pass
    return bytes(edits(bytearray(raw), rng))


def edits(data: bytearray, rng) -> bytearray:
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(data) + 1)
        kind = rng.randrange(6)
        if kind == 0 and data:
            data[min(at, len(data) - 1)] ^= 1 << rng.randrange(8)
        elif kind == 1 and data:
            data[min(at, len(data) - 1)] = rng.choice(b'"\\{}[]:,0-9e\x00\x80\xc0\xff\x91\xdc\xde\xd9\xcb')
        elif kind == 2:
            del data[at:]
        elif kind == 3:
            del data[at:at + rng.randint(1, 16)]
        elif kind == 4:
            data[at:at] = b"9" * rng.randint(1, 40)
        else:
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    return data


@pytest.mark.parametrize("ack", ["early-ack", "acks-late"])
def test_damaged_messages_never_stop_the_worker(start_worker, make_app, broker_redis, ack):
    """2 000 real Celery messages (the golden fixtures, JSON and msgpack, protocol 1 and 2, compressed, signed),
    each damaged at random, pushed at once: each is refused, failed or run, the worker serves on, and a task sent after
    them runs. None is left in the queue, and what stays in `unacked` is only what waits for an ETA."""
    import random

    rng = random.Random(20261207)
    originals = [path.read_bytes() for path in sorted(FIXTURES.glob("*.message.json"))]
    assert len(originals) >= 30
    worker = start_worker("-c", "4", *(["--acks-late"] if ack == "acks-late" else []))
    app = make_app()
    mutants = [damaged(rng.choice(originals), rng) for _ in range(2000)]
    for start in range(0, len(mutants), 500):
        broker_redis.lpush("celery", *mutants[start:start + 500])
    assert app.tasks["tasks.add"].delay(40, 2).get(timeout=60) == 42

    # A damaged message may still be a task whose ETA is later: held, as Python holds it. Anything else still held
    # once the queue is empty (the steps of chains that ran are sent on, to the same queue) is lost.
    def only_eta_held():
        held = [json.loads(raw)[0].get("headers", {}) for raw in broker_redis.hvals("unacked")]
        return broker_redis.llen("celery") == 0 and all(headers.get("eta") or headers.get("countdown") for headers in held)

    assert eventually(only_eta_held, timeout=30), broker_redis.hvals("unacked")
    assert worker.alive()
    assert "Fatal error" not in worker.log and "panic" not in worker.log.lower()
