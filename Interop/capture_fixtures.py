"""Capture golden messages and result documents from real Python Celery into Tests/Fixtures.

Run: python Interop/capture_fixtures.py [PREFIX ...]   (starts its own redis-server; with prefixes, only the
fixtures whose names start with one of them are written, so that the others keep their bytes)

For every message it writes `<name>.message.json` (the exact bytes kombu pushed into the Redis list) and
`<name>.expected.json` (what a Python worker reads from it: id, name, args, kwargs and embed in the lossless typed
form of typed.py, plus headers and delivery fields). For results it writes `<name>.result.<json|msgpack>` (the exact
bytes Celery's Redis backend stored) and `<name>.result-expected.json`; results that Celery 5.7's
`result_compression` compressed are `<name>.compressed.bin` with `<name>.compressed-expected.json`.

Messages that Celery's `auth` serializer signed (`signed-*`) come with the key and certificates they need:
`signing-key.pem` and `signing-certificate.pem` (which signed them, valid for a century), `signing-other-*.pem` (a
certificate that did not) and `signing-expired-certificate.pem` (one that expired in 2001), made when they are missing.
Run with Celery 5.3 (`.venv-celery53`), the signed messages are `signed-celery54-*`: Celery 5.4 and earlier lay them
out otherwise.
"""
import base64
import uuid
import datetime
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import celery  # noqa: E402
import kombu  # noqa: E402
import redis  # noqa: E402
from celery import Celery, chain  # noqa: E402
from kombu.compression import decompress  # noqa: E402
from kombu.serialization import loads  # noqa: E402

from redisproc import RedisProcess  # noqa: E402
from typed import typed  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "Tests" / "Fixtures"
ONLY = tuple(sys.argv[1:])


def wanted(name):
    return not ONLY or name.startswith(ONLY)

EDGE_ARGS = [
    2**63 - 1, -(2**63), 2**64 - 1, 0, -1, 1.0, 0.1, -2.5, 1e300, 1795566030.7772858,
    "我将发送邮件", "emoji 😀 and \"quotes\" \\ and \n newline", "", [], {}, [1, [2, [3, {}]]],
    True, False, None, b"plain bytes", b"\x00\xff\x10binary",
]
# Integers beyond 64 bits, which JSON carries (msgpack cannot): one past UInt64, one below Int64, and the 4300 digits
# Python reads and writes at most.
BIG_ARGS = [2**64, -(2**63) - 1, -(2**64) - 1, 2**70, -(2**70), 10**4299, -(10**4299)]
BIG_KWARGS = {"nested": {"list": [2**100, 1.5, 2**63 - 1]}}
EDGE_KWARGS = {"zeta": 1, "alpha": {"nested": [1, 2.0, "three"], "empty_list": [], "empty_dict": {}},
               "unicode_ключ": "значение", "middle": None}


def make_app(url, serializer="json", protocol=2):
    app = Celery("fixtures", broker=url, backend=url.rsplit("/", 1)[0] + "/0")
    app.conf.update(task_serializer=serializer, result_serializer="json",
                    accept_content=["json", "msgpack"], task_protocol=protocol)

    @app.task(name="tasks.add")
    def add(x, y):
        return x + y

    @app.task(name="tasks.echo")
    def echo(*args, **kwargs):
        return {"args": list(args), "kwargs": kwargs}

    @app.task(name="seed_email")
    def seed_email():
        return "我将发送邮件"

    return app


def pop_one(r, queue="celery"):
    for suffix in ["", "\x06\x163", "\x06\x166", "\x06\x169"]:
        raw = r.rpop(queue + suffix)
        if raw is not None:
            return raw
    raise RuntimeError(f"no message in {queue}")


def expected_for(raw):
    env = json.loads(raw)
    body = env["body"]
    if env["properties"].get("body_encoding") == "base64":
        body = base64.b64decode(body)
    if env["headers"].get("compression"):
        body = decompress(body, env["headers"]["compression"])
    decoded = loads(body, env["content-type"], env["content-encoding"], accept={"application/json",
                                                                                 "application/x-msgpack",
                                                                                 "application/data"})
    headers = env["headers"]
    if "task" in headers:
        args, kwargs, embed = decoded
        protocol, tid, name = 2, headers["id"], headers["task"]
    else:
        args, kwargs = decoded["args"], decoded["kwargs"]
        embed = {"callbacks": decoded.get("callbacks"), "errbacks": decoded.get("errbacks"), "chain": None,
                 "chord": decoded.get("chord")}
        protocol, tid, name = 1, decoded["id"], decoded["task"]
    props = env["properties"]
    return {
        "protocol": protocol, "id": tid, "name": name,
        "args": typed(list(args)), "kwargs": typed(kwargs), "embed": typed(embed),
        "headers": headers, "content_type": env["content-type"],
        "delivery_tag": props["delivery_tag"], "exchange": props["delivery_info"]["exchange"],
        "routing_key": props["delivery_info"]["routing_key"], "priority": props.get("priority", 0),
        "celery_version": celery.__version__, "kombu_version": kombu.__version__,
    }


def save_message(name, raw):
    if not wanted(name):
        return
    (OUT / f"{name}.message.json").write_bytes(raw)
    (OUT / f"{name}.expected.json").write_text(json.dumps(expected_for(raw), indent=1, ensure_ascii=False) + "\n")
    print("captured", name)


def capture_messages(redis_proc):
    url = redis_proc.url(1)
    r = redis.Redis.from_url(url)
    r.flushdb()
    for serializer in ["json", "msgpack"]:
        app = make_app(url, serializer)
        add, echo = app.tasks["tasks.add"], app.tasks["tasks.echo"]
        add.delay(2, 3)
        save_message(f"v2-{serializer}-add", pop_one(r))
        echo.delay(*EDGE_ARGS, **EDGE_KWARGS)
        save_message(f"v2-{serializer}-edge-values", pop_one(r))
        app.tasks["seed_email"].delay()
        save_message(f"v2-{serializer}-seed-email", pop_one(r))
        echo.apply_async(
            args=["options"], kwargs={"k": 1}, countdown=30, expires=600, priority=5, retries=2,
            headers={"x-custom": "v"}, shadow="shadow-name", time_limit=10, soft_time_limit=5,
            link=add.s(10), link_error=echo.si("failed"), queue="celery")
        save_message(f"v2-{serializer}-options", pop_one(r))
        app.send_task("tasks.add", args=[1, 2], eta=datetime.datetime(2030, 1, 1, 12, 0, 0))
        save_message(f"v2-{serializer}-send-task-naive-eta", pop_one(r))
        chain(add.s(1, 2), add.s(10), echo.s()).apply_async()
        save_message(f"v2-{serializer}-chain", pop_one(r))
        # kombu's compressions that every Python has, by the names apply_async takes.
        for method in (["zlib", "bzip2", "lzma"] if serializer == "json" else ["zlib"]):
            add.apply_async((2, 3), compression=method)
            save_message(f"v2-{serializer}-add-{method}", pop_one(r))
        echo.apply_async(EDGE_ARGS, EDGE_KWARGS, compression="zlib")
        save_message(f"v2-{serializer}-edge-values-zlib", pop_one(r))
        v1 = make_app(url, serializer, protocol=1)
        v1.tasks["tasks.add"].apply_async((5, 6), countdown=5)
        save_message(f"v1-{serializer}-add", pop_one(r))
        v1.tasks["tasks.echo"].delay(*EDGE_ARGS, **EDGE_KWARGS)
        save_message(f"v1-{serializer}-edge-values", pop_one(r))
        v1.tasks["tasks.add"].apply_async((5, 6), compression="zlib")
        save_message(f"v1-{serializer}-add-zlib", pop_one(r))
        if serializer == "json":
            echo.delay(*BIG_ARGS, **BIG_KWARGS)
            save_message("v2-json-big-integers", pop_one(r))
            v1.tasks["tasks.echo"].delay(*BIG_ARGS, **BIG_KWARGS)
            save_message("v1-json-big-integers", pop_one(r))


def make_certificate(name, not_before, not_after, key=None):
    """A self-signed RSA certificate (and its key), as `openssl req -x509` makes one, with these validity bounds."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Swift Celery Fixtures"),
                         x509.NameAttribute(NameOID.COMMON_NAME, name)])
    certificate = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(not_before)
                   .not_valid_after(not_after).sign(key, hashes.SHA256()))
    return key, certificate


def write_pem(name, key=None, certificate=None):
    from cryptography.hazmat.primitives import serialization

    if key is not None:
        (OUT / f"{name}-key.pem").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
    (OUT / f"{name}-certificate.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def capture_signed_messages(redis_proc):
    from celery.security.serialization import register_auth

    # Celery 5.4 and earlier lay signed bodies out otherwise (`signed-celery54-*`, captured with Celery 5.3).
    prefix = "signed-" if celery.VERSION >= (5, 5) else "signed-celery54-"
    if not wanted(prefix):
        return
    if not (OUT / "signing-key.pem").exists():
        # Made once: the signed fixtures of every Celery version share them (delete them to make new ones).
        utc = datetime.timezone.utc
        now = datetime.datetime.now(utc)
        century = now + datetime.timedelta(days=36500)
        key, certificate = make_certificate("signer", now - datetime.timedelta(days=1), century)
        other_key, other = make_certificate("other", now - datetime.timedelta(days=1), century)
        _, expired = make_certificate("expired", datetime.datetime(2000, 1, 1, tzinfo=utc),
                                      datetime.datetime(2001, 1, 1, tzinfo=utc), key=key)
        write_pem("signing", key, certificate)
        write_pem("signing-other", other_key, other)
        write_pem("signing-expired", None, expired)
    url = redis_proc.url(1)
    r = redis.Redis.from_url(url)
    r.flushdb()
    # Celery 5.3 cannot read its own signed msgpack (its verification fails on the body it made).
    for serializer in ["json", "msgpack"] if prefix == "signed-" else ["json"]:
        # What app.setup_security(serializer=...) registers, without disabling the other serializers here.
        register_auth((OUT / "signing-key.pem").read_text(), None, (OUT / "signing-certificate.pem").read_text(),
                      str(OUT / "signing-certificate.pem"), "sha256", serializer=serializer)
        for protocol in [2, 1]:
            app = make_app(url, "auth", protocol=protocol)
            app.tasks["tasks.echo"].delay(*EDGE_ARGS, **EDGE_KWARGS)
            save_message(f"{prefix}v{protocol}-{serializer}-edge-values", pop_one(r))
        make_app(url, "auth").tasks["tasks.add"].apply_async((2, 3), compression="zlib")
        save_message(f"{prefix}v2-{serializer}-add-zlib", pop_one(r))


def capture_results(redis_proc):
    url = redis_proc.url(1)
    r0 = redis.Redis.from_url(redis_proc.url(0))
    r0.flushdb()
    for serializer in ["json", "msgpack"]:
        app = make_app(url)
        app.conf.result_serializer = serializer
        backend = app.backend
        cases = {
            "success-int": ("SUCCESS", 5, None),
            "success-unicode": ("SUCCESS", "我将发送邮件", None),
            "success-nested": ("SUCCESS", {"args": [1, 2.0, None, b"\x00\xff"], "kwargs": {"k": "v"}}, None),
            "success-null": ("SUCCESS", None, None),
            "failure-valueerror": ("FAILURE", ValueError("bad input"), "Traceback (most recent call last):\n"
                                   "  File \"tasks.py\", line 1, in fail\nValueError: bad input\n"),
            "progress": ("PROGRESS", {"current": 1, "total": 2}, None),
        }
        if serializer == "json":
            cases["success-big-integers"] = ("SUCCESS", {"args": BIG_ARGS, "kwargs": BIG_KWARGS}, None)
        for case, (state, result, tb) in cases.items():
            tid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{serializer}/{case}"))
            name = f"result-{serializer}-{case}"
            ext = "json" if serializer == "json" else "msgpack"
            save_result(backend, r0, tid, state, result, tb, serializer, name, f"{name}.result.{ext}",
                        f"{name}.result-expected.json")
        # Celery 5.7's result_compression: the compression named inside the stored value.
        if celery.VERSION < (5, 7):
            continue
        for method in (["zlib", "bzip2", "lzma"] if serializer == "json" else ["zlib"]):
            app = make_app(url)
            app.conf.update(result_serializer=serializer, result_compression=method)
            for case in ["success-nested", "failure-valueerror"]:
                state, result, tb = cases[case]
                tid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{serializer}/{case}/{method}"))
                name = f"result-{serializer}-{case}-{method}"
                save_result(app.backend, r0, tid, state, result, tb, serializer, name, f"{name}.compressed.bin",
                            f"{name}.compressed-expected.json")


def save_result(backend, r0, tid, state, result, tb, serializer, name, stored_file, expected_file):
    if not wanted(name):
        return
    backend.store_result(tid, result, state, traceback=tb)
    raw = r0.get(f"celery-task-meta-{tid}")
    (OUT / stored_file).write_bytes(raw)
    doc = backend.decode(raw)
    (OUT / expected_file).write_text(json.dumps({
        "task_id": tid, "status": state, "date_done": doc["date_done"], "traceback": tb,
        "result": typed(doc["result"]), "serializer": serializer,
        "celery_version": celery.__version__}, indent=1, ensure_ascii=False) + "\n")
    print("captured", name)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    proc = RedisProcess().start()
    try:
        capture_messages(proc)
        capture_signed_messages(proc)
        capture_results(proc)
    finally:
        proc.stop()


if __name__ == "__main__":
    main()
