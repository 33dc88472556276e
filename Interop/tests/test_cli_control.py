"""`swift-celery-worker status`, `inspect` and `control`: Celery's remote control CLI without Python, run side by side
with Python's `celery status`, `celery inspect` and `celery control` against the same Swift and Python workers, with
the same words, the same output and the same exit statuses."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import celery
import pytest

from conftest import WORKER_BINARY, answering, eventually


def python_cli(redis_urls, *args, timeout=30):
    celery = Path(sys.executable).with_name("celery")
    return subprocess.run([str(celery), "-b", redis_urls["broker"], *args], capture_output=True, text=True, timeout=timeout)


def swift_cli(redis_urls, *args, timeout=30):
    return subprocess.run([str(WORKER_BINARY), *args, "--broker", redis_urls["broker"]], capture_output=True, text=True,
                          timeout=timeout)


def both(redis_urls, *args):
    """The Python CLI's run and the Swift one's, of the same command line."""
    return python_cli(redis_urls, *args), swift_cli(redis_urls, *args)


def without_pygments(text):
    """Celery's CLI passes a mapping it prints through pygments when pygments is installed (it is here, for pytest),
    which ends it with a newline that the indent then turns into a line of four spaces. A Celery installed alone
    prints none, and neither does the Swift CLI."""
    return text.replace("\n    \n", "\n")


def test_inspect_and_control_print_what_celerys_cli_prints(start_worker, start_python_worker, make_app, redis_urls):
    start_worker("-n", "swiftcli@%h", "-Q", "celery,clique")
    start_python_worker("-n", "pycli@%h", "-P", "threads")
    app = make_app()
    nodes = [answering(app, "swiftcli@"), answering(app, "pycli@")]
    for node in nodes:
        for args in (["inspect", "ping"], ["inspect", "active_queues"], ["inspect", "registered", "rate_limit"],
                     ["inspect", "active"], ["inspect", "revoked"], ["control", "rate_limit", "tasks.add", "7/s"],
                     ["control", "revoke", f"cli-revoked-{node}"], ["inspect", "query_task", "no-such-id"],
                     ["inspect", "ping", "-j"], ["control", "heartbeat", "-j"]):
            # -d names the node, so both return with its reply; -t only bounds a loaded machine's wait.
            python, swift = both(redis_urls, *args, "-d", node, "-t", "10")
            assert (python.returncode, swift.returncode) == (0, 0), (args, python.stderr, swift.stderr)
            assert swift.stdout == without_pygments(python.stdout), (node, args, python.stdout, swift.stdout)
        assert f"cli-revoked-{node}" in app.control.inspect(destination=[node], timeout=2).revoked()[node]
    # Both nodes: each reply as it came (the order may differ), then the count.
    python, swift = both(redis_urls, "status", "-d", ",".join(nodes), "-t", "10")
    assert sorted(swift.stdout.splitlines()) == sorted(python.stdout.splitlines())
    assert swift.stdout.endswith("\n2 nodes online.\n"), swift.stdout
    python, swift = both(redis_urls, "inspect", "stats", "-d", ",".join(nodes), "-j", "-t", "10")
    assert set(json.loads(swift.stdout)) == set(json.loads(python.stdout)) == set(nodes)
    # A mapping is printed as Python's json.dumps(sort_keys=True, indent=4) prints it.
    stats = swift_cli(redis_urls, "inspect", "stats", "-d", nodes[0], "-t", "10")
    shown = stats.stdout.split("\n", 1)[1].rsplit("\n\n", 1)[0]
    parsed = json.loads(shown)
    assert shown == "\n".join("    " + line for line in json.dumps(parsed, sort_keys=True, indent=4).splitlines())
    assert parsed["pool"]["max-concurrency"] >= 1


def test_errors_as_celerys_cli_gives_them(start_worker, make_app, redis_urls, tmp_path):
    start_worker("-n", "clierrors@%h")
    # Nobody answers: Celery's error and EX_UNAVAILABLE.
    python, swift = both(redis_urls, "inspect", "ping", "-d", "nobody@nowhere", "-t", "0.5")
    assert python.returncode == swift.returncode == 69
    assert "Error: No nodes replied within time constraint" in python.stderr
    assert "Error: No nodes replied within time constraint" in swift.stderr
    # An unknown command: Celery's words (its usage errors exit 2, the Swift CLI's 64).
    python, swift = both(redis_urls, "inspect", "no_such_command")
    words = "Command no_such_command not recognized. Available inspect commands: active, active_queues, clock"
    assert swift.returncode == 64 and words in swift.stderr, swift.stderr
    assert python.returncode == 2, python.stderr
    if celery.VERSION >= (5, 4):  # Celery 5.3's click lists the choices in its usage line instead
        assert words in python.stderr, python.stderr
    extra = swift_cli(redis_urls, "control", "cancel_consumer", "a", "b")
    assert extra.returncode == 64 and "Command 'cancel_consumer' takes arguments: <queue>" in extra.stderr
    # A broker that cannot be reached: Celery's message, at once (Python's CLI retries the connection first).
    dead = subprocess.run([str(WORKER_BINARY), "status", "--broker", "redis://127.0.0.1:1/0"], capture_output=True,
                          text=True, timeout=30)
    assert dead.returncode == 69 and "Could not connect to the message broker" in dead.stderr, dead.stderr
    listing = swift_cli(redis_urls, "control", "--list")
    assert listing.returncode == 0 and "rate_limit <task_name> <rate_limit (e.g., 5/s | 5/m | 5/h)>" in listing.stdout


def test_control_shutdown_stops_the_worker(start_worker, make_app, redis_urls):
    worker = start_worker("-n", "clishutdown@%h")
    node = answering(make_app(), "clishutdown@")
    swift = swift_cli(redis_urls, "control", "shutdown", "-d", node, "-t", "10")
    assert swift.returncode == 0, swift.stderr
    assert swift.stdout == f"->  {node}: OK\n        shutdown\n", swift.stdout
    assert eventually(lambda: not worker.alive(), 15)
    assert "Got shutdown from remote" in worker.log


def test_purge_and_result_as_celerys_cli(start_worker, make_app, redis_urls, broker_redis):
    """`purge` (its prompt, `-f`, `-Q`, `-X`, the count kombu counts, priority lists included) and `result` (the
    value as Python's `str`, a failure's exit status, `--traceback`), beside Celery's CLI."""
    app = make_app()

    def fill():
        for priority in (0, 5, 9):
            app.send_task("tasks.add", (1, 1), queue="purgeme", priority=priority)
        app.send_task("tasks.add", (1, 1), queue="keepme")

    def waiting(queue):
        return sum(broker_redis.llen(key) for key in broker_redis.keys(queue + "*"))

    fill()
    for run in (python_cli, swift_cli):
        declined = subprocess.run(
            [*([str(Path(sys.executable).with_name("celery")), "-b", redis_urls["broker"], "purge", "-Q", "purgeme"]
               if run is python_cli else [str(WORKER_BINARY), "purge", "-Q", "purgeme", "--broker", redis_urls["broker"]])],
            input="n\n", capture_output=True, text=True, timeout=30)
        assert declined.returncode == 1 and "Aborted!" in declined.stderr, declined
        assert "remove all tasks from queue: purgeme." in declined.stdout and waiting("purgeme") == 3
    python = python_cli(redis_urls, "purge", "-f", "-Q", "purgeme,keepme", "-X", "keepme")
    fill()
    swift = swift_cli(redis_urls, "purge", "-f", "-Q", "purgeme,keepme", "-X", "keepme")
    assert swift.stdout == python.stdout == "Purged 3 messages from 1 known task queue.\n", (python.stdout, swift.stdout)
    assert waiting("purgeme") == 0 and waiting("keepme") == 2
    python, swift = both(redis_urls, "purge", "-f", "-Q", "purgeme")
    assert swift.stdout == python.stdout == "No messages purged from 1 queue.\n"

    start_worker("-n", "cliresult@%h")
    done = [app.send_task("tasks.add", (2, 3)), app.send_task("tasks.echo", (1, "x"), {"k": None}),
            app.send_task("tasks.fail", ("bad",))]
    for result in done:
        result.get(timeout=10, propagate=False)
    def results(*args):
        """Celery's `result` (the backend is a global option of `celery`) and the Swift CLI's."""
        backend = ["--result-backend", redis_urls["backend"]]
        return python_cli(redis_urls, *backend, "result", *args), swift_cli(redis_urls, "result", *args, *backend)

    outputs = []
    for result in done[:2]:
        python, swift = results(result.id)
        assert swift.returncode == python.returncode == 0 and swift.stdout == python.stdout, (python, swift)
        outputs.append(swift.stdout)
    assert outputs == ["5\n", "{'args': [1, 'x'], 'kwargs': {'k': None}}\n"]
    python, swift = results(done[2].id)
    assert swift.returncode == python.returncode == 1
    assert python.stderr.endswith("ValueError: bad\n") and swift.stderr.endswith("ValueError: bad\n"), swift.stderr
    for result in (done[0], done[2]):
        python, swift = results("--traceback", result.id)
        assert swift.returncode == python.returncode == 0 and swift.stdout == python.stdout, (python, swift)
    # Without a result backend: Celery's NotImplementedError, in its words (Python shows its traceback).
    python, swift = both(redis_urls, "result", done[0].id)
    assert swift.returncode == python.returncode == 1, (python, swift)
    assert "No result backend is configured.\nPlease see the documentation for more information.\n" in python.stderr
    assert "No result backend is configured. Please see the documentation for more information." in swift.stderr


def test_celerys_global_options_before_the_command(start_worker, make_app, redis_urls, tmp_path):
    """A command line written for `celery` (Celery 5 takes its global options before the command only) runs with
    `swift-celery-worker` in its place: `-A` (the tasks are the program's own), `-b`, `--result-backend`, `--workdir`
    (relative paths are then read there), `-C`, `--skip-checks` and `-q` (no banner) before `worker`, `inspect` and
    `result`; an option without its value, or a directory that is not there, is a usage error."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    # The fixture puts --broker and --result-backend in front, as the global options they are here.
    # Relative, with a process pool: its child reads the same arguments, and starts in that directory already.
    relative = os.path.relpath(workdir)
    worker = start_worker("-A", "proj", "--workdir", relative, "-C", "--skip-checks", "-q", "worker",
                          "-n", "globals@%h", "-Q", "globalq", "--pidfile", "worker.pid", "-P", "process", "-c", "1")
    assert (workdir / "worker.pid").read_text().strip() == str(worker.proc.pid)
    assert "[config]" not in worker.stdout and "[queues]" not in worker.stdout, worker.stdout
    result = make_app().send_task("tasks.add", (2, 3), queue="globalq")
    assert result.get(timeout=10) == 5
    node = answering(make_app(), "globals@")
    pinged = subprocess.run([str(WORKER_BINARY), "-A", "proj", "-q", "-b", redis_urls["broker"], "inspect", "ping",
                             "-d", node], capture_output=True, text=True, timeout=30)
    assert pinged.returncode == 0 and "pong" in pinged.stdout, pinged
    read = subprocess.run([str(WORKER_BINARY), "--app=proj", f"--broker={redis_urls['broker']}", "--result-backend",
                           redis_urls["backend"], "result", result.id], capture_output=True, text=True, timeout=30)
    assert (read.returncode, read.stdout) == (0, "5\n"), read
    for args, message in [(["-A"], "Option '-A' requires an argument."),
                          (["--workdir", str(tmp_path / "missing"), "status"], "Invalid value for '--workdir'")]:
        run = subprocess.run([str(WORKER_BINARY), *args], capture_output=True, text=True, timeout=30)
        assert run.returncode == 64 and message in run.stderr, run


@pytest.mark.parametrize("command", [["call", "tasks.add"], ["status"], ["inspect", "ping"], ["control", "shutdown"],
                                     ["purge", "-f"], ["result", "some-id"], ["events", "--dump"]])
@pytest.mark.parametrize("args, message", [
    (["--config", "/no/such/settings.yaml"],
     "Error: cannot read config file /no/such/settings.yaml: No such file or directory"),
    (["-b", "bogus://x"], "Error: invalid Redis URL 'bogus://x': scheme 'bogus' is not redis://"),
])
def test_a_client_commands_bad_settings_are_shown_with_its_own_usage(command, args, message):
    """What the client reads as it starts (its config file, the broker's URL) is a usage error of that command: its
    words, the command's usage (not the root command's) and exit status 64, as the worker and beat show theirs."""
    run = subprocess.run([str(WORKER_BINARY), *command, *args], capture_output=True, text=True, timeout=30)
    lines = run.stderr.splitlines()
    assert run.returncode == 64 and lines[0].startswith(message), run
    assert lines[1].startswith(f"Usage: swift-celery-worker {command[0]} "), run
    assert lines[2] == f"  See 'swift-celery-worker {command[0]} --help' for more information.", run


def test_two_workers_of_one_name_are_warned_of_as_celerys_cli_does(start_worker, redis_urls):
    """Two workers given one `-n`: `inspect` and `status` print both replies and count one node, and warn on standard
    error as Celery's `flatten_reply` does (`DuplicateNodenameWarning: Received multiple replies from node name: …`)."""
    for queue in ("dupname1", "dupname2"):
        start_worker("-n", "dupname@%h", "-Q", queue)
    warning = ("DuplicateNodenameWarning: Received multiple replies from node name: dupname@{}.\n"
               "Please make sure you give each node a unique nodename using\nthe celery worker `-n` option.\n")
    for command in (["inspect", "ping"], ["status"]):
        python, swift = both(redis_urls, *command, "--timeout", "2")
        assert swift.returncode == python.returncode == 0, (python, swift)
        assert swift.stdout == python.stdout, (python.stdout, swift.stdout)
        assert swift.stdout.count(f"dupname@{socket.gethostname()}: OK") == 2, swift.stdout
        for stderr in (python.stderr, swift.stderr):
            assert warning.format(socket.gethostname()) in stderr, stderr
