"""Message signing (Celery's `auth` serializer, `app.setup_security()`) between real Python Celery and the Swift worker.

Each side signs with its own RSA key and trusts the certificates of one store: the Python client and the Python
worker sign with `python`'s key, the Swift worker with `swift`'s (encrypted, with `security_key_password`). A
`stranger`'s certificate is not in the store. The settings are those of Celery's own integration tests of signing:
`task_serializer` and `event_serializer` `auth`, `accept_content` `[auth]`, results unsigned (`result_accept_content`
`[json]`). Celery 5.4 and earlier lay signed bodies out otherwise than 5.5 and later, and neither reads the other's:
with Celery 5.3 the Swift worker is told to write 5.4's layout (`swift_security_layout`); it reads both."""
import base64
import datetime
import json
import signal
import subprocess
import time

import celery
import pytest
from celery import chain
from celery.security.serialization import register_auth

from conftest import WORKER_BINARY, answering, eventually, stored_outcome
from test_client import swift


def make_certificate(name):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Interop"),
                         x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=30)).sign(key, hashes.SHA256()))
    return key, certificate


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """`{name: (key file, certificate file)}` for python, swift and stranger, and `store`: the directory that holds the
    certificates of python and swift."""
    from cryptography.hazmat.primitives import serialization

    directory = tmp_path_factory.mktemp("signing")
    (directory / "store").mkdir()
    made = {}
    for name in ["python", "swift", "stranger"]:
        key, certificate = make_certificate(name)
        encryption = (serialization.BestAvailableEncryption(b"s3cret") if name == "swift"
                      else serialization.NoEncryption())
        key_file, certificate_file = directory / f"{name}.key", directory / f"{name}.pem"
        key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               encryption))
        certificate_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        if name != "stranger":
            (directory / "store" / f"{name}.pem").write_bytes(certificate_file.read_bytes())
        made[name] = (str(key_file), str(certificate_file))
    made["store"] = str(directory / "store")
    return made


def sign_as(keys, name, serializer="json"):
    """Registers kombu's `auth` serializer for this process as `setup_security` does, signing as `name` (without
    disabling the other serializers, which the other tests of this process use)."""
    key, certificate = keys[name]
    register_auth(open(key).read(), b"s3cret" if name == "swift" else None, open(certificate).read(), keys["store"],
                  "sha256", serializer=serializer)


def signing_settings(keys, name="swift"):
    key, certificate = keys[name]
    # Celery 5.4 and earlier lay signed bodies out otherwise; the Swift worker reads both, and writes the one named.
    layout = {"swift_security_layout": "celery-5.4"} if name == "swift" and celery.VERSION < (5, 5) else {}
    return {**layout, "task_serializer": "auth", "event_serializer": "auth", "accept_content": ["auth"],
            "result_accept_content": ["json"], "security_key": key, "security_certificate": certificate,
            "security_cert_store": keys["store"], "security_digest": "sha256",
            **({"security_key_password": "s3cret"} if name == "swift" else {})}


@pytest.fixture
def signed_app(make_app, keys):
    sign_as(keys, "python")
    app = make_app(task_serializer="auth")
    app.conf.update(accept_content=["auth"], result_accept_content=["json"])
    return app


def start_signing_python_worker(start_python_worker, keys, *args, **options):
    settings = {**signing_settings(keys, "python"), "worker_send_task_events": False}
    return start_python_worker(*args, env={"CELERY_SETTINGS": json.dumps(settings), "SETUP_SECURITY": "1"}, **options)


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
@pytest.mark.parametrize("protocol", [2, 1])
def test_signed_tasks_from_python_run_on_the_swift_worker(start_configured, make_app, keys, broker_redis,
                                                          backend_redis, serializer, protocol):
    sign_as(keys, "python", serializer)
    app = make_app(task_serializer="auth", protocol=protocol)
    app.conf.update(accept_content=["auth"], result_accept_content=["json"])
    result = app.tasks["tasks.echo"].delay("ü", 2**63 - 1, [1.5, None], k={"x": True})
    (raw,) = broker_redis.lrange("celery", 0, -1)
    assert json.loads(raw)["content-type"] == "application/data"
    start_configured("swift", signing_settings(keys))
    assert result.get(timeout=10) == {"args": ["ü", 2**63 - 1, [1.5, None]], "kwargs": {"k": {"x": True}}}
    # Results are stored unsigned, as result_serializer says.
    assert json.loads(backend_redis.get(f"celery-task-meta-{result.id}"))["status"] == "SUCCESS"


def test_unsigned_foreign_and_altered_messages_are_refused_and_the_worker_goes_on(start_configured, make_app,
                                                                                  signed_app, keys, broker_redis):
    plain = make_app().tasks["tasks.add"].delay(1, 1)
    sign_as(keys, "stranger")
    foreign = signed_app.tasks["tasks.add"].delay(2, 2)
    sign_as(keys, "python")
    altered = signed_app.tasks["tasks.add"].delay(3, 3)
    # The signed body with its arguments changed after signing (the message's outer base64 and the signed text's).
    queued = broker_redis.lrange("celery", 0, -1)
    position = next(i for i, raw in enumerate(queued) if altered.id.encode() in raw)
    message = json.loads(queued[position])
    signed = base64.b64decode(base64.b64decode(message["body"]))
    body = b"[[3, 3], {}, {\"callbacks\": null, \"errbacks\": null, \"chain\": null, \"chord\": null}]"
    assert signed.endswith(b"\x00\x01" + body)
    signed = signed[:-len(body)] + body.replace(b"[3, 3]", b"[3, 4]")
    message["body"] = base64.b64encode(base64.b64encode(signed)).decode()
    broker_redis.lset("celery", position, json.dumps(message))
    good = signed_app.tasks["tasks.add"].delay(20, 22)
    worker = start_configured("swift", signing_settings(keys))

    assert good.get(timeout=10) == 42
    with pytest.raises(Exception) as refused:
        stored_outcome(make_app(), plain)
    assert type(refused.value).__name__ == "ContentDisallowed"
    with pytest.raises(Exception) as unknown:
        stored_outcome(make_app(), foreign)
    assert type(unknown.value).__name__ == "SecurityError"
    assert "Unknown certificate: b'Interop stranger " in str(unknown.value)
    with pytest.raises(Exception) as bad:
        stored_outcome(make_app(), altered)
    assert type(bad.value).__name__ == "SecurityError"
    assert str(bad.value) == "Unable to deserialize: SecurityError('Bad signature: InvalidSignature()')"
    assert "Received invalid task message tasks.add[" in worker.log
    assert f"[{altered.id}]: invalid signature: Unable to deserialize: SecurityError('Bad signature" in worker.log
    assert eventually(lambda: broker_redis.hlen("unacked") == 0)


def test_each_side_verifies_what_the_other_signed(start_configured, start_python_worker, signed_app, keys):
    """A chain that goes Swift, Python, Swift: each worker signs the next step with its own key, and the other
    verifies it against the store. The last step runs on the Swift worker, sent by the Python one."""
    start_configured("swift", signing_settings(keys), "-Q", "swift")
    start_signing_python_worker(start_python_worker, keys, "-Q", "python")
    add, mul = signed_app.tasks["tasks.add"], signed_app.tasks["tasks.mul"]
    workflow = chain(add.s(2, 3).set(queue="swift"), mul.s(10).set(queue="python"), add.s(1).set(queue="swift"))
    assert workflow.apply_async().get(timeout=15) == 51


def test_the_call_command_signs_with_the_config_files_key(start_python_worker, keys, redis_urls, tmp_path):
    start_signing_python_worker(start_python_worker, keys, "-Q", "py")
    config = tmp_path / "signing.json"
    config.write_text(json.dumps(signing_settings(keys)))
    done = swift(redis_urls, "call", "tasks.add", "--args", "[20, 22]", "-Q", "py", "--config", str(config), "--wait")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[1] == "42"


def test_remote_control_is_signed_both_ways(start_configured, start_python_worker, make_app, signed_app, keys, redis_urls,
                                            tmp_path):
    """`inspect` and `revoke` from a signing client: the request is verified and the reply signed, as the client
    accepts only `auth`. An unsigned request is not answered, as a signing Python worker does not answer it. At start
    the Swift worker's signed `hello` is answered by the signing Python worker (mingle)."""
    start_signing_python_worker(start_python_worker, keys, "-Q", "python", "-n", "py@%h", mingle=True)
    answering(signed_app, "py@")  # its pidbox consumer is up: it will answer the Swift worker's hello
    worker = start_configured("swift", signing_settings(keys), "-n", "swift@%h")
    assert "mingle: sync with 1 nodes" in worker.log
    replies = signed_app.control.inspect(timeout=5, limit=2).ping()  # two replies end the wait
    assert sorted(name.split("@")[0] for name in replies) == ["py", "swift"]
    confs = signed_app.control.inspect(timeout=5, limit=2).conf()
    assert len(confs) == 2
    for name, conf in confs.items():
        assert (conf["task_serializer"], conf["accept_content"]) == ("auth", ["auth"]), name
    assert make_app().control.inspect(timeout=1).ping() is None
    assert eventually(lambda: "Refusing a message that is not signed" in worker.log)
    # The Swift CLI with the same key signs its request and reads only signed replies: both workers answer.
    config = tmp_path / "cli-signing.json"
    config.write_text(json.dumps(signing_settings(keys)))
    signed = swift(redis_urls, "status", "--config", str(config))
    assert signed.returncode == 0 and signed.stdout.endswith("\n2 nodes online.\n"), (signed.stdout, signed.stderr)
    signed_app.control.revoke("doomed-id", reply=False)
    doomed = signed_app.tasks["tasks.add"].apply_async((1, 2), task_id="doomed-id")
    with pytest.raises(Exception) as revoked:
        doomed.get(timeout=10)
    assert type(revoked.value).__name__ == "TaskRevokedError"


@pytest.mark.parametrize("change, message", [
    ({"accept_content": ["auth", "json"]}, "task_serializer = 'auth'"),
    ({"task_serializer": "json"}, "task_serializer = 'auth'"),
    ({"security_cert_store": "/nonexistent/*.pem"}, "security_cert_store '/nonexistent/*.pem' names no certificate"),
    ({"security_key_password": "wrong"}, "Invalid private key: not a private key in PEM, or the password is wrong"),
    ({"security_digest": "sha1024"}, "security_digest 'sha1024' is not one of"),
    ({"result_serializer": "auth"}, "the worker does not sign results"),
])
def test_incomplete_signing_settings_stop_the_worker_at_start(keys, redis_urls, tmp_path, change, message):
    config = tmp_path / "signing.json"
    config.write_text(json.dumps({**signing_settings(keys), **change}))
    done = subprocess.run([str(WORKER_BINARY), "--config", str(config), "-b", redis_urls["broker"]],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 64, done.stderr
    assert message in done.stderr


def test_gossip_hears_signed_heartbeats(start_configured, start_python_worker, keys, broker_redis):
    """A signing Python worker signs its events (`event_serializer: auth`): the Swift worker verifies its heartbeats
    and logs Celery's `missed heartbeat` once it is killed. The Python worker hears the Swift worker's JSON ones,
    as every event receiver accepts JSON."""
    events = broker_redis.pubsub()
    events.psubscribe("*celeryev*")
    swift_worker = start_configured("swift", signing_settings(keys), "-n", "gossipswift@%h", "-Q", "swift")
    python = start_signing_python_worker(start_python_worker, keys, "-n", "gossippy@%h", "-Q", "python", gossip=True)
    deadline, content_types = time.monotonic() + 3, set()  # a heartbeat each way
    while time.monotonic() < deadline:
        event = events.get_message(timeout=0.2)
        if event and event["type"] == "pmessage" and b"heartbeat" in event["channel"]:
            content_types.add(json.loads(event["data"])["content-type"])
    events.close()
    assert content_types == {"application/data", "application/json"}  # Python's signed, Swift's not
    python.kill_all()
    swift_worker.wait_for_log("missed heartbeat from gossippy@", timeout=20)
    assert "cannot be decoded" not in swift_worker.log
    listener = start_signing_python_worker(start_python_worker, keys, "-n", "listener@%h", "-Q", "listener",
                                           gossip=True)
    time.sleep(3)
    swift_worker.stop(signal.SIGKILL)
    listener.wait_for_log("missed heartbeat from gossipswift@", timeout=20)


def test_the_event_dump_opens_signed_events_with_the_config_files_keys(start_python_worker, keys, redis_urls,
                                                                        tmp_path):
    """A signing Python worker signs its events: `events --dump` given the signing settings prints its heartbeats;
    without them it names each signed message on standard error and goes on."""
    from test_evdump import Dump

    config = tmp_path / "signing.json"
    config.write_text(json.dumps(signing_settings(keys)))
    signed = Dump([str(WORKER_BINARY), "events", "--dump", "--broker", redis_urls["broker"], "--config", str(config)],
                  tmp_path / "signed.dump")
    plain = Dump([str(WORKER_BINARY), "events", "--dump", "--broker", redis_urls["broker"]], tmp_path / "plain.dump")
    try:
        start_signing_python_worker(start_python_worker, keys, "-n", "signedevents@%h", "-Q", "python")
        assert eventually(lambda: any(line.startswith("signedevents@") and " heartbeat: " in line
                                      for line in signed.lines), 15), (signed.lines, signed.errors.read_text())
        assert eventually(lambda: "type:'application/data'" in plain.errors.read_text(), 10)
    finally:
        assert signed.stop() == 0 and plain.stop() == 0
    # Only the settings file's warnings (settings that change nothing for the Swift worker), no refused message.
    assert all(line.startswith("warning: ") for line in signed.errors.read_text().splitlines())
    assert not [line for line in plain.lines if line.startswith("signedevents@")]
