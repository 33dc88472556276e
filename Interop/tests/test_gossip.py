"""Celery's gossip beside Python workers: a worker that stops sending heartbeats is logged as missed, in both
directions, and elections (the `election` remote control command)."""
import signal
import time
import uuid

from conftest import answering


def test_a_silent_worker_is_logged_as_missed_both_ways(start_worker, start_python_worker, make_app):
    """Each worker hears the other's heartbeats (every 2 s); once one is killed, the other logs Celery's
    `missed heartbeat from <node>` within twice the heartbeat interval and a gossip period (5 s)."""
    swift = start_worker("-n", "gossipswift@%h", "-Q", "gossipswift")
    python = start_python_worker("-n", "gossippy@%h", "-Q", "gossippy", gossip=True)
    time.sleep(3)  # a heartbeat each way
    python.kill_all()
    swift.wait_for_log("missed heartbeat from gossippy@", timeout=20)
    assert swift.log.count("missed heartbeat from") == 1, swift.log
    listener = start_python_worker("-n", "gossiplistener@%h", "-Q", "gossiplistener", gossip=True)
    # A Python worker logs "ready" before its consumers listen: once it answers, its gossip hears the next heartbeat.
    answering(make_app(), "gossiplistener@")
    time.sleep(3)
    swift.stop(signal.SIGKILL)
    listener.wait_for_log("missed heartbeat from gossipswift@", timeout=20)


def test_an_election_held_alone_is_won_and_its_task_sent(start_worker, make_app):
    """`app.control.election(id, "task", action=signature)`: the worker holds it, wins it (no other worker is
    alive), logs Celery's `I won the election 'id'` and sends the signature's task. `--without-gossip` takes no
    part."""
    swift = start_worker("-n", "elector@%h")
    silent = start_worker("-n", "silent@%h", "--without-gossip")
    app = make_app()
    answering(app, "elector@")
    task_id = str(uuid.uuid4())
    action = app.signature("tasks.add", args=(20, 22), options={"task_id": task_id})
    app.control.election("e-1", "task", action=dict(action))  # to every worker: the silent one ignores it
    swift.wait_for_log("I won the election 'e-1'")
    assert app.AsyncResult(task_id).get(timeout=10) == 42
    assert "election" not in silent.log
