"""What tasks print, logged as a Python worker logs it (`worker_redirect_stdouts`, `worker_redirect_stdouts_level`),
beside a Python worker given the same settings. The process pool's children are in test_pool.py."""
import re
import subprocess

import pytest

from conftest import WORKER_BINARY


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
