"""What tasks print, logged as a Python worker logs it (`worker_redirect_stdouts`, `worker_redirect_stdouts_level`),
beside a Python worker given the same settings. The process pool's children are in test_pool.py."""
import json
import os
import re
import signal
import subprocess
import sys

import pytest

from conftest import INTEROP, WORKER_BINARY, WORKER_POOL, eventually


def printed_records(worker, result):
    """The log lines from `result`'s "received" line to its "succeeded" one, without their timestamps (and without
    lines about other tasks)."""
    worker.wait_for_log(f"tasks.print[{result.id}] succeeded")
    lines = worker.log.splitlines()
    first = next(i for i, line in enumerate(lines) if f"tasks.print[{result.id}] received" in line)
    last = next(i for i, line in enumerate(lines) if f"tasks.print[{result.id}] succeeded" in line)
    # Without the worker's lines about other tasks, which may fall in between.
    return [re.sub(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}: ", "[", line) for line in lines[first + 1:last]
            if not re.search(r"\] Task tasks\.\w+\[", line)]


@pytest.mark.parametrize("settings,expected", [
    ({}, ["[WARNING/MainProcess] hello", "world", "[WARNING/MainProcess] partial"]),
    ({"worker_redirect_stdouts_level": "info"}, ["[INFO/MainProcess] hello", "world", "[INFO/MainProcess] partial"]),
    ({"worker_redirect_stdouts_level": "DEBUG"}, []),
    ({"worker_redirect_stdouts": False}, []),
], ids=["default", "info", "below-the-log-level", "off"])
def test_what_tasks_print_is_logged_as_a_python_worker_logs_it(start_configured, make_app, settings, expected):
    """worker_redirect_stdouts and worker_redirect_stdouts_level, given to both workers: a task's print becomes
    the same records in both logs (one per write, trailing newlines dropped), before the task's "succeeded" line;
    below the worker's log level, or turned off, nothing is logged (the Swift worker's print then reaches its
    standard output)."""
    swift = start_configured("swift", settings, "-Q", "swiftprint", "-l", "INFO")
    python = start_configured("python", settings, "-Q", "pyprint", "-P", "solo")
    app = make_app()
    records = {}
    for name, worker, queue in (("swift", swift, "swiftprint"), ("python", python, "pyprint")):
        # One after the other: the records of one task are then the lines between its received and succeeded lines.
        first = app.send_task("tasks.print", ("hello\nworld",), queue=queue)
        assert first.get(timeout=10) == "hello\nworld"
        second = app.send_task("tasks.print", ("partial",), {"end": ""}, queue=queue)
        assert second.get(timeout=10) == "partial"
        records[name] = printed_records(worker, first) + printed_records(worker, second)
    assert records["swift"] == records["python"] == expected, records
    if settings.get("worker_redirect_stdouts") is False:
        # Buffered, as Python's standard output is when it is not a terminal: written by the time the worker exits.
        assert swift.stop() == 0
        assert "hello\nworld\npartial" in swift.stdout, swift.stdout


def test_a_bad_redirect_level_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("worker_redirect_stdouts_level: LOUD\n")
    done = subprocess.run([str(WORKER_BINARY), "--config", str(bad)], capture_output=True, text=True, timeout=10)
    assert done.returncode == 64, done.stderr
    assert "setting 'worker_redirect_stdouts_level' must be a log level" in done.stderr, done.stderr


def test_a_setup_logging_receiver_sets_logging_up_itself(start_worker, make_app, redis_urls, tmp_path):
    """Celery's `setup_logging`: a program that connects a receiver sets up logging itself, in the worker, in each
    process-pool child, and in `beat`. The demo's receiver (connected when SWIFT_CELERY_DEMO_JSON_LOG names a file)
    keeps the handler the program would have made, Celery's lines at `-l`'s level, and adds one that writes each line
    as JSON to that file."""
    path = tmp_path / "log.jsonl"
    env = {"SWIFT_CELERY_DEMO_JSON_LOG": str(path)}
    worker = start_worker("-P", "process", "-c", "1", "-l", "info", "-Q", "jsonlog", env=env)
    result = make_app().send_task("tasks.log", ("from the task",), queue="jsonlog")
    assert result.get(timeout=10) == "from the task"
    worker.wait_for_log(f"tasks.log[{result.id}] succeeded")
    assert f"INFO/MainProcess] Task tasks.log[{result.id}] received" in worker.log
    assert f"INFO/ForkPoolWorker-1] tasks.log[{result.id}]: from the task" in worker.log, worker.log
    records = [json.loads(line) for line in path.read_text().splitlines()]
    received = [r for r in records if r["message"] == f"Task tasks.log[{result.id}] received"]
    assert [(r["level"], r["process"]) for r in received] == [("info", "MainProcess")], records
    logged = [r for r in records if r["message"] == "from the task"]
    assert [(r["process"], r["celery.task.id"], r["celery.task.name"]) for r in logged] == \
        [("ForkPoolWorker-1", result.id, "tasks.log")], records
    assert not any(r["level"] == "debug" for r in records)

    beat_log = tmp_path / "beat.jsonl"
    beat = subprocess.Popen([str(WORKER_BINARY), "beat", "--broker", redis_urls["broker"], "-l", "info",
                             "-s", str(tmp_path / "schedule")], env={**env, "SWIFT_CELERY_DEMO_JSON_LOG": str(beat_log)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert eventually(lambda: beat_log.exists() and "beat: Starting..." in beat_log.read_text(), timeout=10)
        beat.send_signal(signal.SIGTERM)
        _, stderr = beat.communicate(timeout=10)
    finally:
        if beat.poll() is None:
            beat.kill()
            beat.wait()
    assert beat.returncode == 0
    assert "INFO/MainProcess] beat: Starting..." in stderr
    assert {"level": "info", "logger": "celery.beat", "process": "MainProcess", "message": "beat: Starting..."} in \
        [json.loads(line) for line in beat_log.read_text().splitlines()]


def worker_command(kind, queue, *args):
    """The command line and working directory of a worker of `kind` ("swift" or "python") on `queue`."""
    if kind == "swift":
        return [str(WORKER_BINARY), "-Q", queue, *(["--pool", WORKER_POOL] if WORKER_POOL else []), *args], None
    celery = os.path.join(os.path.dirname(sys.executable), "celery")
    return [celery, "-A", "pytasks", "worker", "-l", "INFO", "-P", "solo", "--without-mingle", "--without-gossip",
            "-Q", queue, *args], INTEROP / "pyworker"


def worker_environment(redis_urls):
    return {**os.environ, "CELERY_BROKER_URL": redis_urls["broker"], "CELERY_RESULT_BACKEND": redis_urls["backend"]}


@pytest.mark.parametrize("kind", ["swift", "python"])
def test_a_log_file_on_a_full_disk_loses_lines_not_tasks(redis_urls, make_app, tmp_path, kind):
    """`--logfile /dev/full`, whose every write fails with ENOSPC, as a log file on a full disk does. A Python
    worker drops the lines and serves. The Swift worker stopped at its first line (Foundation's `FileHandle.write`
    traps, SIGILL); now it drops them too, says so once on standard error, and serves."""
    command, cwd = worker_command(kind, f"fulldisk{kind}", "--logfile", "/dev/full")
    stderr = tmp_path / "stderr"
    with open(stderr, "wb") as output:
        worker = subprocess.Popen(command, cwd=cwd, env=worker_environment(redis_urls), stdout=output,
                                  stderr=subprocess.STDOUT)
    try:
        app = make_app()
        results = [app.send_task(name, args, queue=f"fulldisk{kind}")
                   for name, args in (("tasks.add", (2, 3)), ("tasks.print", ("printed",)), ("tasks.log", ("logged",)))]
        assert [result.get(timeout=20) for result in results] == [5, "printed", "logged"], stderr.read_text()
        assert worker.poll() is None, stderr.read_text()
    finally:
        worker.kill()
        worker.wait()
    if kind == "swift":
        report = "Cannot write to the log file /dev/full: No space left on device; its lines are lost until it can be\n"
        assert report in stderr.read_text(), stderr.read_text()
        assert "Fatal error" not in stderr.read_text(), stderr.read_text()


@pytest.mark.parametrize("kind", ["swift", "python"])
def test_a_worker_whose_log_reader_is_gone_keeps_serving(redis_urls, make_app, kind):
    """Standard output and error on a pipe whose reader is gone (a log collector that stopped, `| head -1`): every
    write fails with EPIPE. A Python worker stops at its banner (`BrokenPipeError`, exit 1). The Swift worker ended
    with SIGPIPE there, and with SIGILL (Foundation's `FileHandle.write` traps) once SIGPIPE was ignored; now it
    drops what it cannot write and serves."""
    command, cwd = worker_command(kind, f"noreader{kind}")
    reader, writer = os.pipe()
    os.close(reader)
    worker = subprocess.Popen(command, cwd=cwd, env=worker_environment(redis_urls), stdout=writer, stderr=writer)
    os.close(writer)
    try:
        if kind == "python":
            assert worker.wait(timeout=30) == 1
            return
        result = make_app().send_task("tasks.add", (2, 3), queue=f"noreader{kind}")
        assert result.get(timeout=20) == 5
        assert worker.poll() is None
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=20) == 0
    finally:
        worker.kill()
        worker.wait()


def close_standard_streams():
    for descriptor in (0, 1, 2):
        os.close(descriptor)


@pytest.mark.parametrize("kind", ["swift", "python"])
def test_a_worker_started_with_its_standard_streams_closed_serves(redis_urls, make_app, kind):
    """Standard input, output and error closed at start (`<&- >&- 2>&-`). A Python worker stops (exit 1). The Swift
    worker puts `/dev/null` in their place before it opens anything, as daemons do, and serves; before, its event
    loop's descriptors took those numbers, and its log lines were written into them."""
    command, cwd = worker_command(kind, f"closedstreams{kind}")
    worker = subprocess.Popen(command, cwd=cwd, env=worker_environment(redis_urls), preexec_fn=close_standard_streams)
    try:
        if kind == "python":
            assert worker.wait(timeout=30) == 1
            return
        assert make_app().send_task("tasks.add", (2, 3), queue=f"closedstreams{kind}").get(timeout=20) == 5
        assert [os.readlink(f"/proc/{worker.pid}/fd/{descriptor}") for descriptor in (0, 1, 2)] == ["/dev/null"] * 3
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=20) == 0
    finally:
        worker.kill()
        worker.wait()
