"""`swift-celery-worker multi`, as `celery multi`: the same nodes and command lines from the same arguments (compared
with Celery's own `multi`), and detached Swift workers started, restarted, killed and stopped by their pid files, as
Celery's init scripts and systemd unit do with `${CELERY_BIN} -A $CELERY_APP multi start …`."""
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import celery
import pytest

from conftest import WORKER_BINARY, answering, eventually

CASES = [
    ["names", "3"],
    ["names", "w1", "w2", "w3@elsewhere"],
    ["show", "3", "-c:1-2", "4", "-Q:3", "images", "{files}"],
    ["show", "w1", "w2", "-c:1", "3", "--queues:w2=a,b", "-A", "proj", "-b", "redis://x", "{files}"],
    ["show", "a", "b", "c", "-c:1,3", "5", "{files}", "--", "--foo", "bar"],
    ["show", "2", "--prefix=pre", "--suffix=host.example.com", "{files}"],
    ["show", "2", "--range-prefix=node", "-n", "example.org", "{files}"],
    ["show", "w1", "w2", "-c:w1@{host}", "9", "{files}", "--append=--extra"],
    ["show", "3", "-c:1-2,3", "5", "-l", "info", "{files}"],
    ["expand", "%n-%h-%d-%N-%p", "2", "--suffix=h.x"],
    ["get", "w2@{host}", "w1", "w2", "-c:2", "7", "{files}"],
]


def expanded(case, tmp_path):
    host = socket.gethostname()
    files = [f"--pidfile={tmp_path}/%n.pid", f"--logfile={tmp_path}/%n%I.log", "--executable=X"]
    words = []
    for word in case:
        words += files if word == "{files}" else [word.replace("{host}", host)]
    return words


@pytest.mark.parametrize("case", CASES, ids=[" ".join(c[:2]) for c in CASES])
def test_multi_reads_its_arguments_as_celerys_multi(case, tmp_path):
    """The nodes, their options (for all, by name, by number, by range and list), the command lines and the `%`
    expansions are Celery's; only the command differs (`worker`, where Celery's is `-m celery worker`)."""
    args = expanded(case, tmp_path)
    program = Path(sys.executable).with_name("celery")
    theirs = subprocess.run([str(program), "multi", *args], capture_output=True, text=True, timeout=30)
    ours = subprocess.run([str(WORKER_BINARY), "multi", *args], capture_output=True, text=True, timeout=30)
    assert theirs.returncode == ours.returncode == 0, (theirs, ours)
    read = ours.stdout
    if "-c:1,3" in case and celery.VERSION < (5, 7):
        # Celery before 5.7 drops numbered lists for named nodes (5.7 maps them to the names, as this does).
        read = read.replace(" -c 5", "")
    assert read == theirs.stdout.replace("-m celery ", ""), (theirs.stdout, ours.stdout)


def test_multi_starts_restarts_kills_and_stops_swift_workers(make_app, redis_urls, tmp_path):
    host = socket.gethostname()
    files = [f"--pidfile={tmp_path}/%n.pid", f"--logfile={tmp_path}/%n%I.log"]
    # As Celery's systemd unit runs it: the global options before `multi`, the nodes' options after.
    prefix = [str(WORKER_BINARY), "-A", "proj", "-b", redis_urls["broker"], "--result-backend", redis_urls["backend"]]

    def multi(*args):
        return subprocess.run([*prefix, "multi", *args], capture_output=True, text=True, timeout=60)

    seen = set()

    def pid(node):
        path = tmp_path / f"{node}.pid"
        found = int(path.read_text()) if path.exists() else None
        seen.add(found)
        return found

    def gone(process_id):
        try:
            os.kill(process_id, 0)
        except ProcessLookupError:
            return True
        return False

    try:
        started = multi("start", "2", "-Q:2", "multiq2", *files)
        assert started.returncode == 0, started
        assert started.stdout.splitlines() == ["celery multi v0.1.0 (swift-celery-worker)", "> Starting nodes...",
                                               f"\t> celery1@{host}: OK", f"\t> celery2@{host}: OK"], started.stdout
        app = make_app()
        assert {answering(app, "celery1@"), answering(app, "celery2@")} == {f"celery1@{host}", f"celery2@{host}"}
        assert app.send_task("tasks.whoami", queue="multiq2").get(timeout=10) == "swift"
        assert "celery2@" in (tmp_path / "celery2.log").read_text()

        # A node that runs is not started twice: its pid file refuses it (Celery's exit 73 for the worker).
        again = multi("start", "2", "-Q:2", "multiq2", *files)
        assert again.returncode == 1 and f"\t> celery1@{host}: * Child terminated with exit code 73" in again.stdout

        first = pid("celery1")
        restarted = multi("restart", "celery1", *files, "--nosplash", "--verbose")
        assert restarted.returncode == 0, restarted
        assert restarted.stdout.splitlines()[0] == "> Stopping nodes...", restarted.stdout
        assert f" worker --detach --pidfile={tmp_path}/celery1.pid " in restarted.stdout
        assert f"\t> celery1@{host}: TERM -> {first}" in restarted.stdout
        # --verbose: the command line between the node and its OK.
        assert f"> Restarting node celery1@{host}:   " in restarted.stdout and restarted.stdout.endswith("\nOK\n")
        # The detached worker writes its pid file once it runs, as Celery's does.
        assert gone(first) and eventually(lambda: pid("celery1") not in (None, first), timeout=10)
        assert answering(app, "celery1@") == f"celery1@{host}"

        second = pid("celery2")
        killed = multi("kill", "celery2", *files)
        assert f"Sending KILL to node celery2@{host} ({second})" in killed.stdout, killed.stdout
        assert eventually(lambda: gone(second), timeout=10)

        last = pid("celery1")
        seen.add(last)
        stopped = multi("stopwait", "2", *files, "-INT")
        assert stopped.returncode == 0, stopped
        assert f"\t> celery1@{host}: INT -> {last}" in stopped.stdout, stopped.stdout
        assert f"Could not signal celery2@{host} ({second}): No such process" in stopped.stdout, stopped.stdout
        assert f"\t> celery1@{host}: OK" in stopped.stdout
        assert pid("celery1") is None
        # celery1 left no pid file; the killed celery2's stays, as Celery's would, and is found dead again.
        down = multi("stop", "2", *files)
        assert down.returncode == 0 and down.stdout.splitlines()[1] == f"> celery1@{host}: DOWN", down.stdout
        assert f"Could not signal celery2@{host} ({second}): No such process" in down.stdout
    finally:
        pid("celery1"), pid("celery2")
        for process_id in seen - {None}:
            if not gone(process_id):
                os.kill(process_id, signal.SIGKILL)


def test_multi_refuses_what_it_cannot_read(tmp_path):
    for args, message in [([], "usage: swift-celery-worker multi start"),
                          (["bogus", "w1"], "Invalid command: bogus"),
                          (["show", "3", "-c:5", "2"], "No node at index '5'"),
                          (["show", "w1", f"--pidfile={tmp_path}/%Q.pid"], "Unknown format %Q")]:
        run = subprocess.run([str(WORKER_BINARY), "multi", *args], capture_output=True, text=True, timeout=30)
        assert run.returncode == 1, run
        assert message in run.stdout + run.stderr, run
