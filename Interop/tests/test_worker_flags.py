"""Celery's worker flags for operators, beside a Python worker given the same ones: `--purge` (`--discard`),
`-X`/`--exclude-queues`, `--without-heartbeat`, `--heartbeat-interval`, `--pidfile` and `--without-gossip`."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import INTEROP, WORKER_BINARY, PythonWorker, WorkerProcess, answering, assert_detached, eventually, remember
from test_events import Capture, count


def fill(app, queue, priorities):
    """Messages that nobody consumes yet, one per priority (kombu puts each in the queue's priority list)."""
    return [app.send_task("tasks.add", (1, 1), queue=queue, priority=priority) for priority in priorities]


def python_celery(redis_urls, *args, settings=None):
    """A Python worker whose standard output and error the test reads (the purge line and the pidfile error go
    there, not to its log); `settings` are added to its app's."""
    env = {**os.environ, "CELERY_BROKER_URL": redis_urls["broker"], "CELERY_RESULT_BACKEND": redis_urls["backend"],
           "CELERY_SETTINGS": json.dumps(settings or {})}
    celery = Path(sys.executable).with_name("celery")
    return subprocess.Popen([str(celery), "-A", "pytasks", "worker", "-l", "INFO", "--without-mingle",
                             "--without-gossip", "-P", "solo", *args], cwd=INTEROP / "pyworker", env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def output_until(process, text, timeout=20):
    """What `process` printed up to the line holding `text`; the process is then killed."""
    import selectors

    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    seen = ""
    try:
        while text not in seen and process.poll() is None:
            if not selector.select(timeout):
                break
            seen += process.stdout.readline()
        return seen
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def test_purge_deletes_waiting_messages_as_python_does(start_worker, make_app, broker_redis, redis_urls):
    app = make_app()
    doomed = fill(app, "purged", [0, 0, 9])
    assert broker_redis.llen("purged") == 2 and broker_redis.llen("purged\x06\x169") == 1
    worker = start_worker("-Q", "purged", "--purge")
    assert "purge: Erased 3 messages from the queue." in worker.stdout
    assert worker.stdout.index("purge: Erased") < worker.stdout.index("[config]")  # before the banner, as Python
    assert app.send_task("tasks.add", (2, 2), queue="purged").get(timeout=10) == 4
    assert all(app.AsyncResult(result.id).state == "PENDING" for result in doomed)
    worker.stop()
    # Python's worker, given the same queue and flag, erases and says the same.
    fill(app, "purged", [0, 0, 9])
    python = output_until(python_celery(redis_urls, "-Q", "purged", "--purge"), "purge: Erased")
    assert "purge: Erased 3 messages from the queue." in python, python
    fill(app, "purged", [6])
    swift = start_worker("-Q", "purged", "--discard")  # Celery's other name for it
    assert "purge: Erased 1 message from the queue." in swift.stdout


def test_optimization_profiles_are_accepted_as_celery_takes_them(start_worker, make_app):
    """`-O fair` (common in Celery command lines) and `-O default` start the worker, which serves as usual."""
    start_worker("-O", "fair", "-Q", "fairq")
    start_worker("--optimization", "default", "-Q", "defaultq")
    app = make_app()
    assert app.send_task("tasks.add", (1, 2), queue="fairq").get(timeout=10) == 3
    assert app.send_task("tasks.add", (3, 4), queue="defaultq").get(timeout=10) == 7


def test_exclude_queues(start_worker, make_app):
    worker = start_worker("-Q", "a,b,c,a", "-X", "b", "-n", "excluding@%h")
    app = make_app()
    node = answering(app, "excluding@")
    queues = app.control.inspect(timeout=2, destination=[node]).active_queues()[node]
    assert [queue["name"] for queue in queues] == ["a", "c"]  # a queue named twice is consumed once
    worker.stop()
    done = subprocess.run([str(WORKER_BINARY), "-Q", "a,b", "--exclude-queues", "a,b"], capture_output=True, text=True,
                          timeout=10)
    assert done.returncode == 64 and "--exclude-queues leaves no queue to consume of a, b" in done.stderr


def test_node_names_are_made_as_celerys_hostname_option_makes_them(start_worker):
    """`-n` as Celery's own `Hostname` option turns it into a node name (`host_format(default_nodename(…))`): an empty
    name or host is Celery's default, `%i`/`%I` the main process's index (`%%`, a percent sign in Celery 5.7 and
    kept as written in 5.3, is the unit test's). An unknown `%x` is refused with Celery's words (a usage error, where
    Celery's command prints a traceback). Before, `-n ""` was `celery@`, and `%i`, `%I`, `%%` and `%z` were kept as
    written."""
    from celery.bin.worker import Hostname

    for pattern in ["", "w@", "@x", "w@%h.%i%I", "w@%n.%d"]:
        expected = Hostname().convert(pattern, None, None)
        worker = start_worker("-n", pattern)
        assert f"{expected} ready." in worker.log, (pattern, expected, worker.log)
        worker.stop()
    with pytest.raises(ValueError, match=r"^Unknown format %z in string '%z@x'\.\nPossible causes: "):
        Hostname().convert("%z@x", None, None)
    done = subprocess.run([str(WORKER_BINARY), "-n", "%z@x"], capture_output=True, text=True, timeout=10)
    assert done.returncode == 64 and "Error: Unknown format %z in string '%z@x'." in done.stderr, done.stderr


def test_without_heartbeat_and_heartbeat_interval(start_worker, make_app, start_python_worker):
    app = make_app()
    capture = Capture(app).start()
    quiet = start_worker("-n", "quiet@%h", "--without-heartbeat", "--without-gossip")
    fast = start_worker("-n", "fast@%h", "--heartbeat-interval", "1")
    start_python_worker("-n", "pyfast@%h", "--heartbeat-interval", "1")
    capture.wait_for(lambda events: count(events, "worker-heartbeat", "fast@") >= 3
                     and count(events, "worker-heartbeat", "pyfast@") >= 3, timeout=15)
    assert answering(app, "quiet@").startswith("quiet@")  # the quiet worker is there and answers
    quiet.stop()
    fast.stop()
    assert eventually(lambda: count(capture.events, "worker-offline", "fast@") == 1)
    events = capture.stop()
    assert not [e for e in events if e["hostname"].startswith("quiet@")]  # no online, heartbeat or offline
    for prefix in ("fast@", "pyfast@"):
        beats = [e for e in events if e["type"] == "worker-heartbeat" and e["hostname"].startswith(prefix)]
        assert {e["freq"] for e in beats} == {1.0}, (prefix, beats[:2])
        gaps = [later["timestamp"] - earlier["timestamp"] for earlier, later in zip(beats, beats[1:])]
        # The interval, not each gap: one late timer on a loaded machine is not a wrong interval.
        middle = sorted(gaps)[len(gaps) // 2]
        assert 0.5 < middle < 1.5 and all(0.3 < gap < 3 for gap in gaps), (prefix, gaps)
    bad = subprocess.run([str(WORKER_BINARY), "--heartbeat-interval", "0"], capture_output=True, text=True, timeout=10)
    assert bad.returncode == 64 and "--heartbeat-interval must be at least 1 second" in bad.stderr


def test_pidfile_is_a_lock_that_python_and_swift_workers_respect(start_worker, tmp_path, redis_urls):
    pidfile = tmp_path / "%n.pid"
    worker = start_worker("-n", "locked@%h", "--pidfile", str(pidfile))
    path = tmp_path / "locked.pid"
    assert path.read_text() == f"{worker.proc.pid}\n"
    # A second Swift worker, or a Python one, with the same pidfile refuses to start, with Celery's words.
    second = subprocess.run([str(WORKER_BINARY), "--broker", redis_urls["broker"], "--pidfile", str(path)],
                            capture_output=True, text=True, timeout=20)
    message = f"ERROR: Pidfile ({path}) already exists.\nSeems we're already running? (pid: {worker.proc.pid})"
    assert second.returncode == 73 and message in second.stderr, second.stderr
    python = python_celery(redis_urls, "--pidfile", str(path))
    assert python.wait(30) == 73
    assert message in python.stdout.read()
    assert worker.stop() == 0
    assert not path.exists()  # released at exit
    # A pidfile left by a process that is gone is removed, as Celery removes it.
    path.write_text("999999\n")
    stale = start_worker("-n", "stale@%h", "--pidfile", str(path))
    assert "Stale pidfile exists - Removing it." in stale.stdout
    assert path.read_text() == f"{stale.proc.pid}\n"
    stale.stop(signal.SIGINT)
    assert not path.exists()
    # Python's worker takes a pidfile the Swift worker left behind after a crash.
    crashed = start_worker("-n", "crashed@%h", "--pidfile", str(path))
    crashed.stop(signal.SIGKILL)
    assert path.exists()
    python = python_celery(redis_urls, "--pidfile", str(path))
    assert "ready." in output_until(python, "ready.")


def test_pidfile_is_whole_whenever_it_exists_and_one_of_a_race_wins(start_worker, tmp_path):
    """Celery creates its pid file and then writes it, so a reader can find it empty (a second worker starting then
    calls it broken and removes it). The Swift worker links a written file into place. Four started at once with one
    pid file: one runs and three exit 73 with Celery's words, a reader polling the path throughout sees it missing or
    holding the winner's pid and nothing else, and nothing of the staging is left. (The window this closes is too
    short for a test to hit at will: the check is that nothing else is ever seen, not that Celery's way fails.)"""
    import threading

    path = tmp_path / "race.pid"
    seen, done = set(), threading.Event()

    def poll():
        while not done.is_set():
            try:
                seen.add(path.read_text())
            except FileNotFoundError:
                pass

    reader = threading.Thread(target=poll)
    reader.start()
    try:
        racers = [start_worker("-n", f"racer{i}@%h", "-Q", "pidrace", "--pidfile", str(path), ready=False)
                  for i in range(4)]
        assert eventually(lambda: sum(r.proc.poll() is not None for r in racers) == 3, 20)
    finally:
        done.set()
        reader.join()
    losers = [r for r in racers if r.proc.poll() is not None]
    assert [r.proc.returncode for r in losers] == [73, 73, 73]
    assert all("already exists." in r.stdout_path.read_text() for r in losers)
    (winner,) = [r for r in racers if r.proc.poll() is None]
    assert seen == {f"{winner.proc.pid}\n"}, seen
    assert winner.stop() == 0
    assert not path.exists() and list(tmp_path.glob("race.pid*")) == []


def test_detach_umask_and_workdir_as_celery_daemonizes(tmp_path, redis_urls, make_app):
    """`-D` with `--workdir`, `--umask`, a relative `--pidfile` and a node-formatted `--logfile`: the command exits 0 at
    once, and the worker goes on in a session of its own, in that directory, with that mask and its standard streams
    on /dev/null, until SIGTERM. A log file it cannot write, or a pid file a running worker holds, stops the command
    itself, before it detaches."""
    workdir = tmp_path / "daemon"
    workdir.mkdir()
    command = [str(WORKER_BINARY), "-D", "--workdir", str(workdir), "--umask", "027", "--pidfile", "w.pid",
               "--logfile", "%n.log", "-n", "daemon@%h", "-Q", "detached",
               "--broker", redis_urls["broker"], "--result-backend", redis_urls["backend"]]
    started = subprocess.run(command, capture_output=True, text=True, timeout=10)
    assert started.returncode == 0, started.stderr
    assert eventually(lambda: (workdir / "w.pid").exists())
    pid = int((workdir / "w.pid").read_text())
    try:
        assert_detached(pid, workdir, "0027")
        app = make_app()
        assert app.send_task("tasks.add", (2, 3), queue="detached").get(timeout=15) == 5
        log = workdir / "daemon.log"
        assert "daemon@" in log.read_text() and oct(log.stat().st_mode & 0o777) == oct(0o640)
        # A second one with the same pid file refuses before detaching, with Celery's words and status.
        again = subprocess.run(command, capture_output=True, text=True, timeout=10)
        assert again.returncode == 73 and "already exists" in again.stderr, again.stderr
        unwritable = subprocess.run([*command[:-4], "--logfile", str(tmp_path / "missing" / "x.log"),
                                     *command[-4:]], capture_output=True, text=True, timeout=10)
        assert unwritable.returncode == 1 and "Cannot open the log file" in unwritable.stderr, unwritable.stderr
    finally:
        os.kill(pid, signal.SIGTERM)
    assert eventually(lambda: not Path(f"/proc/{pid}").exists(), 10)
    assert not (workdir / "w.pid").exists()
    assert "worker: Warm shutdown (MainProcess)" in (workdir / "daemon.log").read_text()


def test_daemon_settings_as_celery_reads_them(tmp_path, redis_urls, make_app):
    """Celery 5.4's daemon settings: an option of `celery worker` missing from the command line is read from the
    setting named after it (`worker_pidfile`, `worker_logfile`, `worker_umask`, …), node-formatted as the flags are.
    The Swift worker, detached with all three from its config file, and a Python worker given the same pid and log
    file settings."""
    workdir = tmp_path / "settings"
    workdir.mkdir()
    config = workdir / "daemon.yaml"
    config.write_text("worker_pidfile: '%n.pid'\nworker_logfile: '%n.log'\nworker_umask: '077'\n")
    started = subprocess.run([str(WORKER_BINARY), "-D", "--workdir", str(workdir), "--config", "daemon.yaml",
                              "-n", "fromsettings@%h", "-Q", "daemonsettings", "--broker", redis_urls["broker"],
                              "--result-backend", redis_urls["backend"]], capture_output=True, text=True, timeout=10)
    assert started.returncode == 0, started.stderr
    pidfile = workdir / "fromsettings.pid"
    assert eventually(pidfile.exists)
    pid = int(pidfile.read_text())
    try:
        assert_detached(pid, workdir, "0077")
        assert make_app().send_task("tasks.add", (2, 3), queue="daemonsettings").get(timeout=15) == 5
        log = workdir / "fromsettings.log"
        assert "fromsettings@" in log.read_text() and oct(log.stat().st_mode & 0o777) == oct(0o600)
    finally:
        os.kill(pid, signal.SIGTERM)
    assert eventually(lambda: not Path(f"/proc/{pid}").exists(), 10)
    assert not pidfile.exists()
    # Python's worker reads the same settings from Celery 5.4 on (`celery.bin.base.DaemonOption`).
    import celery

    python = python_celery(redis_urls, "-n", "pysettings@%h", settings={
        "worker_pidfile": str(workdir / "%n.pid"), "worker_logfile": str(workdir / "%n.log")})
    try:
        if celery.VERSION >= (5, 4):
            # Celery creates its pid file and then writes it: it can be read empty for a moment.
            assert eventually(lambda: (workdir / "pysettings.pid").exists()
                              and (workdir / "pysettings.pid").read_text().strip() == str(python.pid), 20)
            log = workdir / "pysettings.log"
            assert eventually(lambda: log.exists() and "pysettings@" in log.read_text(), 20)
        else:
            assert "ready." in output_until(python, "ready.")
            assert not (workdir / "pysettings.pid").exists()
    finally:
        python.terminate()
        python.wait(20)


def test_log_formats_as_a_python_worker_writes_them(start_worker, start_python_worker, make_app, tmp_path):
    """worker_log_format and worker_task_log_format, given to both workers: the same lines, task lines included."""
    formats = {"LOG_FORMAT": "%(levelname)-8s %(processName)s | %(message)s",
               "TASK_LOG_FORMAT": "%(levelname)s %(task_name)s %(task_id)s: %(message)s"}
    config = tmp_path / "logs.yaml"
    config.write_text(f"worker_log_format: '{formats['LOG_FORMAT']}'\nworker_task_log_format: '{formats['TASK_LOG_FORMAT']}'\n")
    swift = start_worker("--config", str(config), "-Q", "swiftlogs")
    python = start_python_worker("-Q", "pylogs", "-P", "solo", env=formats)
    app = make_app()
    lines = {}
    for name, worker, queue in (("swift", swift, "swiftlogs"), ("python", python, "pylogs")):
        result = app.send_task("tasks.log", ("hello from a task",), queue=queue)
        assert result.get(timeout=10) == "hello from a task"
        worker.wait_for_log(f"tasks.log[{result.id}] succeeded")
        lines[name] = [line.replace(result.id, "<id>") for line in worker.log.splitlines() if result.id in line]
    for name in lines:
        assert f"INFO     MainProcess | Task tasks.log[<id>] received" in lines[name], (name, lines[name])
        assert "INFO tasks.log <id>: hello from a task" in lines[name], (name, lines[name])
    assert [line.split(" succeeded")[0] for line in lines["swift"]] == [line.split(" succeeded")[0] for line in lines["python"]]
    bad = tmp_path / "bad.yaml"
    bad.write_text("worker_log_format: '%(asctime)s %(when)s'\n")
    done = subprocess.run([str(WORKER_BINARY), "--config", str(bad)], capture_output=True, text=True, timeout=10)
    assert done.returncode == 64 and "unknown field 'when'" in done.stderr, done.stderr


def test_task_annotations_as_a_python_worker_applies_them(start_worker, start_python_worker, make_app, tmp_path):
    """task_annotations by name and '*' ('*' applied last, as Celery applies it), shown by `inspect registered` as a
    Python worker given the same annotations shows them, and the rate limit enforced."""
    annotations = {"tasks.add": {"rate_limit": "2/s", "acks_late": True, "max_retries": 7},
                   "*": {"time_limit": 30, "max_retries": 9}}
    config = tmp_path / "annotations.yaml"
    config.write_text(json.dumps({"task_annotations": annotations}))
    start_worker("--config", str(config), "-Q", "annotated", "-n", "annotated@%h", "-P", "process", "-c", "1")
    start_python_worker("-Q", "pyannotated", "-n", "pyannotated@%h", "-P", "prefork", "-c", "1",
                        env={"TASK_ANNOTATIONS": json.dumps(annotations)})
    app = make_app()
    nodes = {prefix: answering(app, prefix + "@") for prefix in ("annotated", "pyannotated")}
    items = ["rate_limit", "acks_late", "max_retries", "time_limit"]
    shown = {}
    for prefix, node in nodes.items():
        registered = app.control.inspect(destination=[node], timeout=2).registered(*items)[node]
        shown[prefix] = sorted(line for line in registered if line.split(" ")[0] in ("tasks.add", "tasks.echo"))
    assert shown["annotated"] == shown["pyannotated"], shown
    assert "tasks.add [rate_limit=2/s acks_late=True max_retries=9 time_limit=30]" in shown["annotated"], shown
    # 2/s: the fourth of four tasks sent at once starts a second and a half after the first, or later.
    results = [app.send_task("tasks.add", (i, i), queue="annotated") for i in range(4)]
    assert [r.get(timeout=15) for r in results] == [0, 2, 4, 6]
    done = sorted(app.AsyncResult(r.id).date_done for r in results)
    assert (done[-1] - done[0]).total_seconds() >= 1.3, done


def test_default_rate_limit_and_disabled_rate_limits(start_worker, start_python_worker, make_app, tmp_path):
    """task_default_rate_limit is every task's rate_limit unless it sets one, as a Python worker shows it;
    worker_disable_rate_limits leaves the limits shown but not enforced."""
    defaulted = tmp_path / "defaulted.yaml"
    defaulted.write_text("task_default_rate_limit: 2/s\n")
    disabled = tmp_path / "disabled.yaml"
    disabled.write_text("task_default_rate_limit: 1/s\nworker_disable_rate_limits: true\n")
    start_worker("--config", str(defaulted), "-Q", "defaulted", "-n", "defaulted@%h")
    start_worker("--config", str(disabled), "-Q", "unlimited", "-n", "unlimited@%h")
    start_python_worker("-Q", "pydefaulted", "-n", "pydefaulted@%h", env={"DEFAULT_RATE_LIMIT": "2/s"})
    app = make_app()
    nodes = {prefix: answering(app, prefix + "@") for prefix in ("defaulted", "pydefaulted")}
    shown = {prefix: sorted(line for line in app.control.inspect(destination=[node], timeout=2).registered("rate_limit")[node]
                            if line.split(" ")[0] in ("tasks.add", "tasks.echo"))
             for prefix, node in nodes.items()}
    assert shown["defaulted"] == shown["pydefaulted"] == ["tasks.add [rate_limit=2/s]", "tasks.echo [rate_limit=2/s]"], shown
    for queue, spread in (("defaulted", lambda s: s >= 1.3), ("unlimited", lambda s: s < 0.9)):
        results = [app.send_task("tasks.add", (i, i), queue=queue) for i in range(4)]
        assert [r.get(timeout=15) for r in results] == [0, 2, 4, 6]
        done = sorted(app.AsyncResult(r.id).date_done for r in results)
        assert spread((done[-1] - done[0]).total_seconds()), (queue, done)


def test_statedb_keeps_revoked_ids_across_restarts(start_worker, make_app, tmp_path):
    """--statedb: a task revoked before a restart (here a crash: the file is saved at each revoke, not only at
    shutdown as Python saves it) is still not run after it, with no neighbour to mingle with."""
    state = tmp_path / "%n.state"
    args = ("-Q", "stateful", "-n", "stateful@%h", "--without-mingle", "--statedb", str(state))
    first = start_worker(*args)
    app = make_app()
    revoked_id = "0d5c8a51-state-db-revoked"
    node = answering(app, "stateful@")
    app.control.revoke(revoked_id, destination=[node], reply=True, timeout=2)
    saved = json.loads((tmp_path / "stateful.state").read_text())
    assert revoked_id in saved["revoked"] and saved["clock"] >= 1, saved
    first.stop(signal.SIGKILL)
    second = start_worker(*args)
    second.wait_for_log("statedb: loaded 1 revoked task ids")
    app.send_task("tasks.add", (1, 2), queue="stateful", task_id=revoked_id)
    second.wait_for_log(f"Discarding revoked task: tasks.add[{revoked_id}]")
    assert app.send_task("tasks.add", (2, 2), queue="stateful").get(timeout=10) == 4
    assert second.stop() == 0
    assert revoked_id in json.loads((tmp_path / "stateful.state").read_text())["revoked"]
    # A file that is not the worker's state is logged, and the worker starts without it. The file is moved aside,
    # not overwritten by the next save (a Python worker stops there, `dbm.error`, and leaves it as it is).
    shelve = b"\x00\x06\x15\x61 a shelve file"
    (tmp_path / "stateful.state").write_bytes(shelve)
    third = start_worker(*args)
    third.wait_for_log(f"is not the Swift worker's JSON state (a Python worker's shelve file cannot be read); moved to "
                       f"{tmp_path / 'stateful.state.unreadable'}, starting without it")
    assert (tmp_path / "stateful.state.unreadable").read_bytes() == shelve
    assert third.stop() == 0
    assert json.loads((tmp_path / "stateful.state").read_text())["revoked"] == {}
    # The file is written at start, as Python's shelve creates it: a path that cannot be written (a directory, which
    # is left where it is with nothing beside it; a directory that does not exist) stops the worker before it
    # consumes, with a line that says why. A Python worker stops too where the directory does not exist
    # (`FileNotFoundError`). Before, the Swift worker served, and lost the ids at its shutdown.
    (tmp_path / "dir.state").mkdir()
    for path, reason in [(tmp_path / "dir.state", "Is a directory"), (tmp_path / "none" / "x.state", "No such file or directory")]:
        refused = start_worker("-Q", "stateful", "-n", "statedir@%h", "--without-mingle", "--statedb", str(path), ready=False)
        assert refused.proc.wait(timeout=20) == 1, refused.log
        assert f"CRITICAL/MainProcess] statedb: cannot write state db {path}: {reason}. Give --statedb a path this worker can write. Aborting." in refused.log, refused.log
        assert " ready." not in refused.log, refused.log
    assert (tmp_path / "dir.state").is_dir() and not (tmp_path / "dir.state.tmp").exists()


def status_ids(pid):
    """The Uid, Gid and Groups lines of /proc/<pid>/status: (real uid, real gid, groups)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["Uid"].split()[0]), int(fields["Gid"].split()[0]), fields["Groups"].split()


def test_uid_and_gid_drop_privileges_as_celery_does(tmp_path, redis_urls, make_app, request):
    """Started as root with `--uid nobody --gid nogroup`, the worker and its pool children run as nobody, and its log
    file is written as nobody (so it is opened after the drop, as Python's). A worker left as root prints Celery's
    SecurityWarning. An unknown user stops the worker with Celery's words, as it stops a Python worker."""
    import pwd
    import shutil
    import tempfile

    if os.geteuid() != 0:
        pytest.skip("--uid needs a worker started as root (CI runs as root)")
    nobody = pwd.getpwnam("nobody")
    shared = Path(tempfile.mkdtemp(prefix="celery-uid-"))
    shared.chmod(0o777)
    try:
        worker = remember(request, WorkerProcess(
            ["--broker", redis_urls["broker"], "--result-backend", redis_urls["backend"], "--uid", "nobody",
             "--gid", "nogroup", "-P", "process", "-c", "1", "-Q", "dropped"], shared / "worker.log"))
        worker.wait_ready()
        app = make_app()
        assert app.send_task("tasks.add", (2, 3), queue="dropped").get(timeout=10) == 5
        assert status_ids(worker.proc.pid)[:2] == (nobody.pw_uid, nobody.pw_gid)
        assert status_ids(worker.proc.pid)[2] == [str(nobody.pw_gid)]
        # Children are listed under the thread that started them.
        children = [child for task in Path(f"/proc/{worker.proc.pid}/task").iterdir()
                    for child in (task / "children").read_text().split()]
        assert children and all(status_ids(child)[:2] == (nobody.pw_uid, nobody.pw_gid) for child in children)
        assert (shared / "worker.log").stat().st_uid == nobody.pw_uid
        # Celery's warning about root (from its check_privileges) is for workers that stay root.
        assert "SecurityWarning" not in worker.stdout
        assert worker.stop() == 0
        root = remember(request, WorkerProcess(["--broker", redis_urls["broker"], "-Q", "rooted"], shared / "root.log"))
        root.wait_ready()
        assert ("SecurityWarning: You're running the worker with superuser privileges: this is\nabsolutely not "
                "recommended!\n\nPlease specify a different user using the --uid option.\n\nUser information: uid=0 "
                "euid=0 gid=0 egid=0\n") in root.stdout
        assert root.stop() == 0
    finally:
        shutil.rmtree(shared, ignore_errors=True)
    swift = subprocess.run([str(WORKER_BINARY), "--broker", redis_urls["broker"], "--uid=no-such-user"],
                           capture_output=True, text=True, timeout=10)
    assert swift.returncode == 1 and "User does not exist: no-such-user" in swift.stderr, swift.stderr
    python = PythonWorker(redis_urls["broker"], redis_urls["backend"], tmp_path / "py.log", "--uid", "no-such-user")
    assert python.proc.wait(30) == 1


def test_remote_control_can_be_turned_off_as_in_celery(start_worker, start_python_worker, make_app, tmp_path):
    """`worker_enable_remote_control: false`: neither the Swift worker nor a Python worker given the same answers a
    ping (a third worker with remote control on does), and both still run their tasks."""
    settings = {"worker_enable_remote_control": False}
    config = tmp_path / "quiet.json"
    config.write_text(json.dumps(settings))
    start_worker("--config", str(config), "-Q", "quietswift", "-n", "quietswift@%h")
    start_python_worker("-Q", "quietpy", "-n", "quietpy@%h", env={"CELERY_SETTINGS": json.dumps(settings)})
    start_worker("-Q", "loud", "-n", "loud@%h")
    app = make_app()
    answering(app, "loud@")
    nodes = {node.split("@")[0] for reply in app.control.ping(timeout=1.5) for node in reply}
    assert "loud" in nodes and not nodes & {"quietswift", "quietpy"}, nodes
    assert app.send_task("tasks.add", (1, 1), queue="quietswift").get(timeout=10) == 2
    assert app.send_task("tasks.add", (2, 2), queue="quietpy").get(timeout=10) == 4


def test_quiet_prints_no_banner_and_no_color_is_accepted(start_worker, make_app):
    """Celery's global `-q`/`--quiet` (no banner) and `-C`/`--no-color`, as command lines carry them."""
    loud = start_worker("-n", "loud@%h", "-Q", "loud")
    quiet = start_worker("-q", "-C", "-n", "quiet@%h", "-Q", "quiet")
    assert "[queues]" in loud.stdout
    assert "[queues]" not in quiet.stdout and "quiet@" in quiet.log
    assert make_app().send_task("tasks.add", (1, 1), queue="quiet").get(timeout=10) == 2


def test_broker_and_backend_from_celerys_older_settings(redis_urls, make_app, tmp_path):
    """`broker_host`, `broker_port`, `broker_vhost` and `result_backend: redis` with `redis_host`, `redis_port` and
    `redis_db` (Celery 3's way, still read by Celery 5), with no URL given: the worker serves the broker and stores
    results where a Python client given the URLs finds them. A `broker_write_url` that names another broker than
    the one read is refused."""
    port = redis_urls["server"].port
    config = tmp_path / "old.json"
    config.write_text(json.dumps({"BROKER_HOST": "127.0.0.1", "BROKER_PORT": port, "BROKER_VHOST": "1",
                                  "CELERY_RESULT_BACKEND": "redis", "CELERY_REDIS_HOST": "127.0.0.1",
                                  "CELERY_REDIS_PORT": port, "CELERY_REDIS_DB": 0, "BROKER_TRANSPORT": "redis"}))
    env = {key: value for key, value in os.environ.items() if not key.startswith("CELERY_")}
    worker = subprocess.Popen([str(WORKER_BINARY), "--config", str(config), "-P", "solo", "-n", "oldstyle@%h"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        app = make_app()
        assert app.send_task("tasks.add", (20, 22)).get(timeout=15) == 42
    finally:
        worker.send_signal(signal.SIGTERM)
        output = worker.communicate(timeout=20)[0]
    assert f"transport:   redis://:**@127.0.0.1:{port}/1" in output and f"results:     redis://127.0.0.1:{port}/0" in output, output
    assert "setting 'BROKER_TRANSPORT' has no effect" in output and "unknown setting" not in output, output
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"broker_read_url": redis_urls["broker"], "broker_write_url": redis_urls["backend"]}))
    done = subprocess.run([str(WORKER_BINARY), "--config", str(split)], capture_output=True, text=True, timeout=10, env=env)
    assert done.returncode == 64 and "broker_read_url and broker_write_url name two brokers" in done.stderr, done.stderr


def test_every_celery_setting_is_read_or_answered(start_worker, make_app, tmp_path):
    """Every setting this Celery version defines, at its default value, in one config file: the worker starts and
    serves, reading each one or saying why it has no effect here; none is "unknown"."""
    import datetime

    from celery.app.defaults import NAMESPACES, flatten

    def plain(value):
        if isinstance(value, datetime.timedelta):
            return value.total_seconds()
        if isinstance(value, (set, frozenset, tuple)):
            return list(value)
        return str(value)

    settings = {name: option.default for name, option in flatten(NAMESPACES)}
    config = tmp_path / "every.json"
    config.write_text(json.dumps(settings, default=plain))
    worker = start_worker("--config", str(config), "-P", "solo")
    assert make_app().send_task("tasks.add", (1, 2)).get(timeout=10) == 3
    unknown = [line for line in worker.log.splitlines() if "unknown setting" in line]
    assert not unknown, unknown
    assert "has no effect on the Swift worker" in worker.log


def test_log_date_formats_as_celery_57_writes_them(start_configured, make_app):
    """worker_log_datefmt and worker_task_log_datefmt (Celery 5.7): `%(asctime)s` as strftime writes it, the same
    in both workers' lines (compared with a Python worker where its Celery has the settings)."""
    import re

    from celery import Celery

    settings = {"worker_log_datefmt": "%H:%M:%S", "worker_task_log_datefmt": "%d/%m/%Y"}
    workers = {"swift": start_configured("swift", settings, "-Q", "swiftdates")}
    if "worker_log_datefmt" in Celery().conf.keys():
        workers["python"] = start_configured("python", settings, "-Q", "pydates", "-P", "solo")
    app = make_app()
    for name, worker in workers.items():
        result = app.send_task("tasks.log", ("dated",), queue="swiftdates" if name == "swift" else "pydates")
        assert result.get(timeout=10) == "dated"
        worker.wait_for_log(f"tasks.log[{result.id}] succeeded")
        assert re.search(rf"^\[\d\d:\d\d:\d\d: INFO/MainProcess\] Task tasks.log\[{result.id}\] received$", worker.log, re.M), \
            (name, worker.log)
        assert re.search(rf"^\[\d\d/\d\d/\d{{4}}: INFO/MainProcess\] tasks.log\[{result.id}\]: dated$", worker.log, re.M), \
            (name, worker.log)


def test_node_names_as_celery_makes_them(start_worker, make_app):
    """`-n` as Celery's `host_format(default_nodename(…))`: a name without `@` is a host, named `celery`."""
    from celery.utils.nodenames import default_nodename, host_format

    for pattern in ("swiftbare", "named@%h"):
        expected = host_format(default_nodename(pattern))
        worker = start_worker("-n", pattern, "-Q", f"q-{pattern.split('@')[0]}")
        assert f"{expected} ready." in worker.log
        assert make_app().control.ping(destination=[expected], timeout=2) == [{expected: {"ok": "pong"}}]
        worker.stop()


def open_files_limit(soft, hard):
    """A `preexec_fn` that sets the child's limit on open files (`ulimit -n`)."""
    import resource

    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize("kind", ["swift", "python"])
def test_too_few_open_files_stop_the_worker_with_a_line_that_says_so(redis_urls, kind):
    """With `ulimit -n 12`, a Python worker stops: `Unrecoverable error: OSError(24, 'Too many open files')` (its
    prefork pool; the solo pool says `Too many open files. Aborting...`). The Swift worker, which needs about two
    dozen descriptors, does not start, with a line that says how many it has and needs, exit 1. Before, its
    connections failed and reconnected without end, and Dispatch stopped it with SIGILL within seconds."""
    env = {**os.environ, "CELERY_BROKER_URL": redis_urls["broker"], "CELERY_RESULT_BACKEND": redis_urls["backend"]}
    if kind == "swift":
        args, cwd = [str(WORKER_BINARY), "--broker", redis_urls["broker"], "--result-backend", redis_urls["backend"]], None
    else:
        celery = Path(sys.executable).with_name("celery")
        args = [str(celery), "-A", "pytasks", "worker", "-l", "INFO", "--without-mingle", "--without-gossip"]
        cwd = INTEROP / "pyworker"
    done = subprocess.run(args, preexec_fn=open_files_limit(12, 12), capture_output=True, text=True, timeout=60,
                          env=env, cwd=cwd)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "Too many open files" in output, output
    if kind == "swift":
        assert ("CRITICAL/MainProcess] Too many open files. Aborting... The limit on open files (ulimit -n) is 12, and "
                "this worker needs 32 at the least") in output, output


def test_a_soft_open_files_limit_is_raised_to_the_hard_one(redis_urls, make_app, tmp_path):
    """A soft limit on open files below what the worker needs, under a hard one that is not: the worker raises its
    soft limit to the hard one, as Go programs do, and serves."""
    log = tmp_path / "raised.log"
    worker = subprocess.Popen([str(WORKER_BINARY), "--broker", redis_urls["broker"], "--result-backend",
                               redis_urls["backend"], "-Q", "raisedlimit", "--logfile", str(log)],
                              preexec_fn=open_files_limit(12, 4096), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        assert eventually(lambda: log.exists() and " ready." in log.read_text(), timeout=15), log.read_text()
        limits = Path(f"/proc/{worker.pid}/limits").read_text()
        assert any(line.startswith("Max open files") and line.split()[3:5] == ["4096", "4096"]
                   for line in limits.splitlines()), limits
        assert make_app().send_task("tasks.add", (2, 2), queue="raisedlimit").get(timeout=10) == 4
    finally:
        worker.kill()
        worker.wait()


def test_the_broker_is_shown_as_kombu_shows_it(redis_urls, request, tmp_path):
    """A user whose name needs quoting and a host in capitals: both workers log `Connected to
    redis://us%40er:**@localhost:PORT/1`, and the Swift worker's banner shows the same (kombu's `as_url` quotes the
    user and the host, so an IPv6 host is `%3A%3A1`; `urlparse` lowers the host)."""
    import redis as redis_lib

    admin = redis_lib.Redis.from_url(redis_urls["broker"])
    admin.acl_setuser("us@er", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"], commands=["+@all"])
    port = redis_urls["server"].port
    broker = f"redis://us%40er:pw@LOCALHOST:{port}/1"
    swift = remember(request, WorkerProcess(["--broker", broker, "--result-backend", redis_urls["backend"], "-Q",
                                             "shownurl", "-n", "shownurl@%h"], tmp_path / "swift.log"))
    python = remember(request, PythonWorker(broker, redis_urls["backend"], tmp_path / "python.log", "-Q", "shownurl",
                                            "-n", "pyshownurl@%h"))
    try:
        shown = f"redis://us%40er:**@localhost:{port}/1"
        for worker in (swift, python):
            worker.wait_ready()
            assert f"INFO/MainProcess] Connected to {shown}\n" in worker.log, worker.log
        assert f".> transport:   {shown}\n" in swift.stdout, swift.stdout
    finally:
        swift.stop(signal.SIGKILL)
        python.kill_all()
        admin.acl_deluser("us@er")
