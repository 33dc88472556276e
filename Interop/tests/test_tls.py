"""TLS: `rediss://` URLs with redis-py's `ssl_*` parameters, and Celery's `broker_use_ssl` / `redis_backend_use_ssl`,
against a real `redis-server` that speaks only TLS to its clients and asks each for a certificate. Python's Celery
client and worker on one side, the Swift worker on the other."""
import inspect
import json
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import redis as redis_lib
from celery import Celery

from conftest import WORKER_BINARY, PythonWorker, answering, eventually, remember
from redisproc import RedisProcess, free_port


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def issue(directory: Path, name: str, subject: str, ca: str, extensions: str | None = None):
    """A key and a certificate for `subject`, signed by the authority `ca` (its .crt and .key in `directory`)."""
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject,
            cwd=directory)
    extra = []
    if extensions:
        (directory / f"{name}.ext").write_text(extensions + "\n")
        extra = ["-extfile", f"{name}.ext"]
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", *extra, cwd=directory)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    """A certificate authority; a server certificate for the name `localhost` only (so 127.0.0.1 does not match it);
    a client certificate; and a second authority that signed none of them."""
    directory = tmp_path_factory.mktemp("tls")
    for ca in ("ca", "other-ca"):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.crt", "-days", "2",
                "-subj", f"/CN=Test {ca}", cwd=directory)
    issue(directory, "server", "/CN=localhost", "ca", "subjectAltName=DNS:localhost")
    issue(directory, "client", "/CN=worker", "ca")
    return directory


@pytest.fixture(scope="module")
def tls_server(certificates):
    """A redis-server whose clients' port speaks TLS only and requires a client certificate (Redis's default); its
    plain port is for the test's own checks."""
    port = free_port()
    server = RedisProcess(args=(
        "--tls-port", str(port), "--tls-cert-file", str(certificates / "server.crt"),
        "--tls-key-file", str(certificates / "server.key"), "--tls-ca-cert-file", str(certificates / "ca.crt"))).start()
    server.tls_port = port
    yield server
    server.stop()


@pytest.fixture
def tls(tls_server, certificates):
    """URLs of the TLS port, as Celery takes them, with the client's certificate and the right authority."""
    for db in (0, 1):
        redis_lib.Redis(port=tls_server.port, db=db).flushdb()

    def url(db, host="localhost", **overrides):
        parameters = {"ssl_cert_reqs": "required", "ssl_ca_certs": certificates / "ca.crt",
                      "ssl_certfile": certificates / "client.crt", "ssl_keyfile": certificates / "client.key", **overrides}
        query = "&".join(f"{key}={value}" for key, value in parameters.items() if value is not None)
        return f"rediss://{host}:{tls_server.tls_port}/{db}" + (f"?{query}" if query else "")

    return url


def client(broker, backend, name="tls-client"):
    app = Celery(name, broker=broker, backend=backend)
    app.conf.broker_connection_retry_on_startup = False
    return app


def test_round_trip_remote_control_and_a_redis_restart_over_tls(tls, tls_server, certificates, start_worker):
    worker = start_worker("-n", "tls@%h", "-E", broker=tls(1), backend=tls(0))
    assert f".> transport:   rediss://:**@localhost:{tls_server.tls_port}/1" in worker.stdout  # as kombu 5.7 shows it
    assert f"Connected to rediss://:**@localhost:{tls_server.tls_port}/1" in worker.log
    app = client(tls(1), tls(0))
    assert app.send_task("tasks.add", (2, 3)).get(timeout=10) == 5
    assert app.send_task("tasks.echo", ("über", [1, None])).get(timeout=10) == {"args": ["über", [1, None]], "kwargs": {}}
    node = answering(app, "tls@")
    assert app.control.ping(destination=[node], timeout=2) == [{node: {"ok": "pong"}}]
    # kombu's Connection.info(), as a Python worker on the same URL reports it.
    broker = app.control.inspect(timeout=2, destination=[node]).stats()[node]["broker"]
    assert broker["transport"] == "rediss"
    assert broker["ssl"] == {"ssl_cert_reqs": 2, "ssl_ca_certs": str(certificates / "ca.crt"),
                             "ssl_certfile": str(certificates / "client.crt"),
                             "ssl_keyfile": str(certificates / "client.key")}
    conf = app.control.inspect(timeout=2, destination=[node]).conf()[node]
    assert conf["broker_use_ssl"] == broker["ssl"] and conf["redis_backend_use_ssl"] == broker["ssl"]
    # A restart closes every TLS session; the worker opens new ones and serves the next task.
    tls_server.restart()
    assert client(tls(1), tls(0), "after-restart").send_task("tasks.add", (40, 2)).get(timeout=30) == 42
    assert worker.alive()


def test_swift_and_python_workers_share_a_tls_queue(tls, start_worker, tmp_path, request):
    python = remember(request, PythonWorker(tls(1), tls(0), tmp_path / "pyworker.log", "-P", "threads", "-c", "2"))
    try:
        python.wait_ready()
        start_worker("-c", "2", broker=tls(1), backend=tls(0))
        app = client(tls(1), tls(0))
        results = [app.send_task("tasks.whoami") for _ in range(60)]
        names = [result.get(timeout=20) for result in results]
        assert set(names) == {"swift", "python"}, names
    finally:
        python.kill_all()


def test_tls_from_the_config_file_with_redis_urls(tls, tls_server, certificates, start_worker, tmp_path):
    """broker_use_ssl and redis_backend_use_ssl turn TLS on for redis:// URLs, as kombu and Celery read them
    (Python's constants for ssl_cert_reqs included)."""
    config = tmp_path / "tls.yaml"
    files = (f"ssl_ca_certs: {certificates / 'ca.crt'}\n  ssl_certfile: {certificates / 'client.crt'}\n"
             f"  ssl_keyfile: {certificates / 'client.key'}\n")
    config.write_text(f"broker_use_ssl:\n  ssl_cert_reqs: 2\n  {files}redis_backend_use_ssl:\n  ssl_cert_reqs: required\n  {files}")
    plain = lambda db: f"redis://localhost:{tls_server.tls_port}/{db}"  # noqa: E731
    start_worker("--config", str(config), broker=plain(1), backend=plain(0))
    ssl_options = {"ssl_cert_reqs": "required", "ssl_ca_certs": str(certificates / "ca.crt"),
                   "ssl_certfile": str(certificates / "client.crt"), "ssl_keyfile": str(certificates / "client.key")}
    app = client(plain(1), tls(0))
    app.conf.broker_use_ssl = ssl_options  # Celery 5.3's backend takes TLS settings with a rediss:// URL only
    assert app.send_task("tasks.mul", (6, 7)).get(timeout=10) == 42


def test_redbeat_keeps_its_schedule_over_tls(tls_server, certificates, redis_urls, broker_redis, tmp_path):
    """RedBeat's Redis reached over TLS with redbeat_redis_use_ssl, as RedBeat reads it: the schedule kept there, the
    task sent to the broker."""
    config = tmp_path / "redbeat.json"
    config.write_text(json.dumps({
        "beat_scheduler": "redbeat.RedBeatScheduler", "beat_max_loop_interval": 1,
        "redbeat_redis_url": f"rediss://localhost:{tls_server.tls_port}/2",
        "redbeat_redis_use_ssl": {"ssl_cert_reqs": "required", "ssl_ca_certs": str(certificates / "ca.crt"),
                                  "ssl_certfile": str(certificates / "client.crt"),
                                  "ssl_keyfile": str(certificates / "client.key")},
        "beat_schedule": {"tick": {"task": "tasks.add", "schedule": 0.5, "args": [1, 2], "options": {"queue": "tlsq"}}}}))
    plain = redis_lib.Redis(port=tls_server.port, db=2)
    plain.flushdb()
    beat = subprocess.Popen([str(WORKER_BINARY), "beat", "--broker", redis_urls["broker"], "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert broker_redis.brpop(["tlsq"], timeout=10) is not None
        assert plain.sismember("redbeat::statics", "tick") and plain.exists("redbeat::lock")
    finally:
        beat.send_signal(signal.SIGTERM)
        output, _ = beat.communicate(timeout=15)
    assert beat.returncode == 0, output
    assert f"       . redis -> rediss://localhost:{tls_server.tls_port}/2" in output


def test_the_server_certificate_is_checked_as_redis_py_checks_it(tls, certificates, start_worker):
    """The certificate names `localhost`: at 127.0.0.1 the host name check fails, unless ssl_check_hostname is off;
    with another authority the certificate does not verify, unless ssl_cert_reqs is none (kombu's default for a bare
    rediss:// broker URL, with its warning). A refused connection is logged and retried; the worker keeps running."""
    mismatch = start_worker(broker=tls(1, host="127.0.0.1"), backend=tls(0), ready=False)
    mismatch.wait_for_log("IP address mismatch")
    wrong_ca = tls(1, ssl_ca_certs=certificates / "other-ca.crt")
    unverified = start_worker(broker=wrong_ca, backend=tls(0), ready=False)
    unverified.wait_for_log("certificate verify failed")
    mismatch.wait_for_log("Cannot connect", count=2)  # retried
    assert mismatch.alive() and unverified.alive()
    # Python's client refuses the same certificate (and, from redis-py 6 on, checks the host name by default).
    with pytest.raises(Exception, match="certificate verify failed"):
        redis_lib.Redis.from_url(wrong_ca).ping()
    if int(redis_lib.__version__.split(".")[0]) >= 6:
        with pytest.raises(Exception, match="IP address mismatch"):
            redis_lib.Redis.from_url(tls(1, host="127.0.0.1")).ping()
    # Either check turned off, each worker connects and serves.
    start_worker("-Q", "by-ip", broker=tls(1, host="127.0.0.1", ssl_check_hostname="false"), backend=tls(0))
    start_worker("-Q", "unverified", broker=tls(1, ssl_cert_reqs="none", ssl_ca_certs=None), backend=tls(0))
    app = client(tls(1), tls(0))
    assert app.send_task("tasks.add", (1, 1), queue="by-ip").get(timeout=10) == 2
    assert app.send_task("tasks.add", (2, 2), queue="unverified").get(timeout=10) == 4


def test_a_plain_connection_or_one_without_a_client_certificate_is_logged_and_retried(tls, tls_server, start_worker):
    plain = start_worker(broker=f"redis://localhost:{tls_server.tls_port}/1", backend=tls(0), ready=False)
    anonymous = start_worker(broker=tls(1, ssl_certfile=None, ssl_keyfile=None), backend=tls(0), ready=False)
    plain.wait_for_log("Cannot connect to redis://:**@localhost")
    anonymous.wait_for_log("Cannot connect to rediss://:**@localhost")
    plain.wait_for_log("Cannot connect", count=2)  # retried
    assert plain.alive() and anonymous.alive()
    # TLS 1.3 ends the client's handshake before the server checks its certificate: the refusal comes as the
    # server's alert, or as a reset when the client's first command crossed it.
    assert any(reason in anonymous.log for reason in ("certificate required", "Server closed the connection",
                                                      "Connection reset by peer")), anonymous.log


@pytest.mark.parametrize("backend, message, celery_says", [
    ("rediss://localhost:{port}/0", "A rediss:// URL must have parameter ssl_cert_reqs", True),
    ("rediss://localhost:{port}/0?ssl_cert_reqs=maybe", "ssl_cert_reqs must be required, optional or none", False),
    ("redis://localhost:{port}/0?ssl_cert_reqs=required",
     "SSL connection parameters have been provided but the specified URL scheme is redis://", True),
    ("rediss://localhost:{port}/0?ssl_cert_reqs=required&ssl_ca_certs=/nonexistent/ca.pem",
     "TLS: cannot read /nonexistent/ca.pem: No such file or directory", False),
    ("rediss://localhost:{port}/0?ssl_cert_reqs=required&ssl_ca_data=nope",
     "TLS: cannot load the certificate authorities of ssl_ca_data", False),
])
def test_bad_tls_settings_stop_the_worker_at_start(tls_server, tls, backend, message, celery_says):
    backend = backend.format(port=tls_server.tls_port)
    done = subprocess.run([str(WORKER_BINARY), "--broker", tls(1), "--result-backend", backend],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 64, done.stderr
    assert message in done.stderr, done.stderr
    if celery_says:
        # Celery's own backend refuses the same URL with the same words.
        with pytest.raises(ValueError, match=re.escape(message)):
            Celery(backend=backend).backend
    else:
        with pytest.raises(Exception):  # redis-py refuses it when connecting
            Celery(backend=backend).backend.client.ping()


def test_the_swift_client_sends_and_waits_over_tls(tls, start_worker):
    start_worker(broker=tls(1), backend=tls(0))
    done = subprocess.run([str(WORKER_BINARY), "call", "tasks.add", "--args", "[20, 22]", "--wait",
                           "-b", tls(1), "--result-backend", tls(0)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "42"


def test_openssl_is_loaded_only_by_a_worker_that_speaks_tls(tls, start_worker):
    plain = start_worker("-Q", "plain")
    secure = start_worker("-Q", "secure", broker=tls(1), backend=tls(0))
    maps = lambda worker: Path(f"/proc/{worker.proc.pid}/maps").read_text()  # noqa: E731
    assert "libssl.so" not in maps(plain) and "libcrypto.so" not in maps(plain)
    assert "libssl.so" in maps(secure)


@pytest.fixture
def tls_sentinel(certificates, tmp_path):
    """A master that speaks TLS to its clients (its certificate names 127.0.0.1, the address a Sentinel gives), and
    a Sentinel that speaks only TLS, to its clients and to the master; both ask clients for a certificate."""
    if not (certificates / "address.crt").exists():
        issue(certificates, "address", "/CN=127.0.0.1", "ca", "subjectAltName=IP:127.0.0.1")
    files = {"cert": certificates / "address.crt", "key": certificates / "address.key", "ca-cert": certificates / "ca.crt"}
    tls_port = free_port()
    master = RedisProcess(args=("--tls-port", str(tls_port), *[a for k, v in files.items() for a in (f"--tls-{k}-file", str(v))]))
    master.start()
    sentinel_port = free_port()
    config = tmp_path / "sentinel.conf"
    config.write_text(f"port 0\ntls-port {sentinel_port}\nbind 127.0.0.1\ndir {tmp_path}\ntls-replication yes\nlogfile {tmp_path / 'sentinel.log'}\n"
                      + "".join(f"tls-{k}-file {v}\n" for k, v in files.items())
                      + f"sentinel monitor mymaster 127.0.0.1 {tls_port} 1\n")
    sentinel = subprocess.Popen([shutil.which("redis-server"), str(config), "--sentinel"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ask = redis_lib.Redis(host="127.0.0.1", port=sentinel_port, ssl=True, ssl_ca_certs=str(certificates / "ca.crt"),
                          ssl_certfile=str(certificates / "client.crt"), ssl_keyfile=str(certificates / "client.key"))

    def knows_master():
        try:
            return ask.execute_command("SENTINEL", "get-master-addr-by-name", "mymaster") is not None
        except redis_lib.RedisError:
            return False

    try:
        assert eventually(knows_master, 10), "the TLS Sentinel did not start"
        yield sentinel_port
    finally:
        sentinel.terminate()
        sentinel.wait(10)
        master.stop()


def test_sentinel_over_tls_to_the_sentinels_and_the_master(tls_sentinel, certificates, start_worker, tmp_path):
    """sentinel:// with TLS everywhere, as kombu and Celery take it: `sentinel_kwargs: {ssl: true, ssl_*: …}` for the
    Sentinels (redis-py's keyword arguments), `broker_use_ssl` / `redis_backend_use_ssl` for the master it names.
    A worker without TLS to the Sentinel logs that none gave the master's address, and tries again."""
    files = {"ssl_ca_certs": str(certificates / "ca.crt"), "ssl_certfile": str(certificates / "client.crt"),
             "ssl_keyfile": str(certificates / "client.key")}
    options = {"master_name": "mymaster", "sentinel_kwargs": {"ssl": True, **files}}
    settings = {"broker_transport_options": options, "result_backend_transport_options": options,
                "broker_use_ssl": {"ssl_cert_reqs": "required", **files},
                "redis_backend_use_ssl": {"ssl_cert_reqs": "required", **files}}
    broker, backend = f"sentinel://127.0.0.1:{tls_sentinel}/1", f"sentinel://127.0.0.1:{tls_sentinel}/0"
    config = tmp_path / "sentinel-tls.json"
    config.write_text(json.dumps(settings))
    start_worker("--config", str(config), "-n", "sentineltls@%h", broker=broker, backend=backend)
    plain = tmp_path / "sentinel-plain.json"
    plain.write_text(json.dumps({**settings, "broker_transport_options": {"master_name": "mymaster"}}))
    refused = start_worker("--config", str(plain), "-n", "plainsentinel@%h", broker=broker, backend=backend, ready=False)
    app = Celery("sentinel-tls-client", broker=broker, backend=backend)
    app.conf.update(settings)
    try:
        assert app.send_task("tasks.add", (20, 22)).get(timeout=15) == 42
        assert answering(app, "sentineltls@").startswith("sentineltls@")
        refused.wait_for_log("no Sentinel gave the address of master 'mymaster'", count=2)
        assert refused.alive()
    finally:
        app.close()


def test_certificate_authorities_given_as_text_as_redis_py_takes_them(tls, tls_server, certificates, start_worker,
                                                                       tmp_path):
    """redis-py's `ssl_ca_data`: the authorities' PEM text instead of a file, in `broker_use_ssl` and
    `redis_backend_use_ssl`, given to the Swift worker and to Python's client alike. Another authority's text is
    refused at the handshake, as a wrong `ssl_ca_certs` file is."""
    def settings(authority):
        return {"ssl_cert_reqs": "required", "ssl_ca_data": (certificates / f"{authority}.crt").read_text(),
                "ssl_certfile": str(certificates / "client.crt"), "ssl_keyfile": str(certificates / "client.key")}

    plain = lambda db: f"redis://localhost:{tls_server.tls_port}/{db}"  # noqa: E731
    for name, authority in (("good", "ca"), ("other", "other-ca")):
        config = tmp_path / f"{name}.yaml"
        config.write_text(json.dumps({"broker_use_ssl": settings(authority), "redis_backend_use_ssl": settings(authority)}))
        worker = start_worker("--config", str(config), "-Q", name, broker=plain(1), backend=plain(0),
                              ready=authority == "ca")
    worker.wait_for_log("certificate verify failed", timeout=20)
    assert worker.alive() and " ready." not in worker.log
    app = client(plain(1), tls(0))
    app.conf.broker_use_ssl = settings("ca")
    assert app.send_task("tasks.mul", (6, 7), queue="good").get(timeout=10) == 42
    (stats,) = app.control.inspect(timeout=1, destination=None).stats().values()
    assert stats["broker"]["ssl"]["ssl_ca_data"] == settings("ca")["ssl_ca_data"]


def test_verify_flags_as_redis_py_takes_them(tls, start_worker):
    """redis-py's `ssl_include_verify_flags` and `ssl_exclude_verify_flags` (Python's `ssl.VerifyFlags`): checking
    the server certificate against revocation lists, with none loaded, fails the handshake for Python's client and the
    Swift worker alike; excluded again, it passes."""
    crl = "VERIFY_CRL_CHECK_LEAF"
    refused = start_worker("-Q", "crl", broker=tls(1, ssl_include_verify_flags=crl), backend=tls(0), ready=False)
    refused.wait_for_log("unable to get certificate CRL", timeout=20)
    assert refused.alive() and " ready." not in refused.log
    start_worker("-Q", "nocrl", broker=tls(1, ssl_include_verify_flags=f"[{crl}]", ssl_exclude_verify_flags=crl),
                 backend=tls(0))
    app = client(tls(1), tls(0))
    assert app.send_task("tasks.add", (1, 2), queue="nocrl").get(timeout=20) == 3
    if "ssl_include_verify_flags" in inspect.signature(redis_lib.connection.SSLConnection.__init__).parameters:
        with pytest.raises(redis_lib.exceptions.ConnectionError, match="unable to get certificate CRL"):
            redis_lib.Redis.from_url(tls(1, ssl_include_verify_flags=crl)).ping()


def test_an_encrypted_key_ciphers_and_a_minimum_version_as_redis_py_takes_them(tls, tls_server, certificates,
                                                                              start_worker):
    """redis-py's `ssl_password` (the passphrase of an encrypted client key), `ssl_ciphers` and `ssl_min_version`,
    given to the Swift worker and (the first two) to Python's client. A worker whose minimum version the server does
    not speak logs the refused handshake and retries; it never becomes ready."""
    if not (certificates / "client-locked.key").exists():
        openssl("pkey", "-in", "client.key", "-out", "client-locked.key", "-aes256", "-passout", "pass:s3cret",
                cwd=certificates)
    locked = {"ssl_keyfile": certificates / "client-locked.key", "ssl_password": "s3cret", "ssl_ciphers": "ECDHE+AESGCM"}
    start_worker("-Q", "locked", broker=tls(1, **locked, ssl_min_version="TLSv1_2"), backend=tls(0, **locked))
    app = client(tls(1, **locked), tls(0, **locked))
    assert app.send_task("tasks.add", (20, 22), queue="locked").get(timeout=20) == 42

    older = RedisProcess(args=(
        "--tls-port", str(port := free_port()), "--tls-protocols", "TLSv1.2",
        "--tls-cert-file", str(certificates / "server.crt"), "--tls-key-file", str(certificates / "server.key"),
        "--tls-ca-cert-file", str(certificates / "ca.crt"))).start()
    try:
        def on_older(db, **overrides):
            return tls(db, **overrides).replace(f":{tls_server.tls_port}/", f":{port}/")

        refused = start_worker("-Q", "newer", broker=on_older(1, ssl_min_version="TLSv1_3"), backend=on_older(0),
                               ready=False)
        refused.wait_for_log("TLS handshake with localhost: ", timeout=20)
        assert refused.alive() and " ready." not in refused.log
        accepted = start_worker("-Q", "older", broker=on_older(1, ssl_min_version="TLSv1_2"), backend=on_older(0))
        assert accepted.alive()
    finally:
        older.stop()
