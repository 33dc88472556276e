"""Canvas across Swift and Python workers: chains, callbacks, errbacks, groups and chords, driven by Python's Celery.

The Swift worker consumes queue `swift`, a real Python worker queue `py`; each step names its queue, so every
workflow below crosses between the two kinds of worker."""
import json
import time

import pytest
from celery import Celery, chain, chord, group

from conftest import answering, eventually, stored_outcome


@pytest.fixture
def both(start_worker, start_python_worker, make_app, request):
    serializer = getattr(request, "param", "json")
    swift = start_worker("-n", "swiftcanvas@%h", "-Q", "swift", "-c", "4")
    python = start_python_worker("-n", "pycanvas@%h", "-Q", "py", "-c", "2")
    app = make_app(task_serializer=serializer)
    return app, swift, python


def sig(app, name, *args, queue="swift", immutable=False):
    signature = app.signature(name, args=args, immutable=immutable)
    return signature.set(queue=queue)


def stored(backend_redis, task_id):
    raw = backend_redis.get(f"celery-task-meta-{task_id}")
    return json.loads(raw) if raw else None


@pytest.mark.parametrize("both", ["json", "msgpack"], indirect=True)
def test_chain_alternating_between_swift_and_python(both, backend_redis):
    app, swift, python = both
    workflow = chain(sig(app, "tasks.add", 1, 2), sig(app, "tasks.add", 10, queue="py"), sig(app, "tasks.mul", 3),
                     sig(app, "tasks.add", 5, queue="py"), sig(app, "tasks.echo", "x", queue="swift", immutable=True))
    result = workflow.apply_async()
    assert result.get(timeout=20) == {"args": ["x"], "kwargs": {}}
    steps = []
    node = result
    while node is not None:
        steps.append(node)
        node = node.parent
    steps.reverse()
    # Each result is read as Python's backend reads a stored document (`stored_outcome`). A Python worker sends the
    # next step of a chain before it stores its own result (celery/app/trace.py: "callback tasks must be applied
    # before the result is stored"), so the last step can finish first: each read waits up to 10 s. `get()` on these
    # parents once waited 5 s for a PUBLISH it had missed (Celery's client, between two Python processes).
    for index, (step, expected) in enumerate(zip(steps[:4], [3, 13, 39, 44])):
        worker = "Swift" if index % 2 == 0 else "Python"
        assert stored_outcome(app, step, timeout=10) == expected, f"step {index} ({step.id}, run by the {worker} worker)"
    for previous, step in zip(steps, steps[1:]):
        document = stored(backend_redis, step.id)
        assert document["parent_id"] == previous.id
        assert stored(backend_redis, previous.id)["children"] == [[[step.id, None], None]]
    for index, step in enumerate(steps):
        ran_on = swift if index % 2 == 0 else python
        ran_on.wait_for_log(f"[{step.id}] succeeded")  # a Python worker may write the line after the result


def test_link_callback_and_link_group(both, backend_redis):
    app, swift, python = both
    result = app.tasks["tasks.add"].apply_async((2, 2), queue="swift", link=sig(app, "tasks.mul", 10, queue="py"))
    assert result.get(timeout=10) == 4
    children = stored(backend_redis, result.id)["children"]
    assert len(children) == 1
    callback = app.AsyncResult(children[0][0][0])
    assert callback.get(timeout=10) == 40
    assert stored(backend_redis, callback.id)["parent_id"] == result.id

    several = app.tasks["tasks.add"].apply_async(
        (1, 1), queue="swift", link=[sig(app, "tasks.mul", 3, queue="py"), sig(app, "tasks.add", 5)])
    assert several.get(timeout=10) == 2
    (group_node,) = stored(backend_redis, several.id)["children"]
    # Celery's own result objects for the children: a Celery 5.3 client subscribes to a group's members when the
    # parent's result arrives, and only those objects see their results.
    (callback_group,) = several.children
    assert callback_group.id == group_node[0][0]
    assert [m.id for m in callback_group.results] == [member[0][0] for member in group_node[1]]
    assert callback_group.get(timeout=10) == [6, 7]
    assert {stored(backend_redis, m.id)["group_id"] for m in callback_group.results} == {group_node[0][0]}


def test_link_error_errback_runs_with_the_failed_id(both, backend_redis):
    app, swift, python = both
    failing = app.tasks["tasks.fail"].apply_async(("boom",), queue="swift",
                                                   link_error=sig(app, "tasks.echo", "extra", queue="py"))
    with pytest.raises(ValueError):
        failing.get(timeout=10)
    python.wait_for_log("tasks.echo[")
    python.wait_for_log("succeeded")
    echoed = [json.loads(backend_redis.get(key)) for key in backend_redis.keys("celery-task-meta-*")]
    errbacks = [d for d in echoed if isinstance(d.get("result"), dict) and d["result"].get("args") == [failing.id, "extra"]]
    assert len(errbacks) == 1 and errbacks[0]["parent_id"] == failing.id


def test_chain_failure_fails_the_remaining_steps(both, backend_redis):
    app, swift, python = both
    workflow = chain(sig(app, "tasks.add", 1, 2), sig(app, "tasks.fail", "bad 3", immutable=True), sig(app, "tasks.add", 5, queue="py"),
                     sig(app, "tasks.mul", 2, queue="py"))
    result = workflow.apply_async()
    with pytest.raises(ValueError, match="3"):
        result.get(timeout=10)
    for step in (result, result.parent):
        document = stored(backend_redis, step.id)
        assert document["status"] == "FAILURE" and document["result"]["exc_type"] == "ValueError"
        assert "parent_id" not in document
    assert "tasks.mul[" not in python.log and "tasks.add[" not in python.log


def test_group_across_both_workers(both, backend_redis):
    app, swift, python = both
    result = group(sig(app, "tasks.add", i, i, queue="swift" if i % 2 else "py") for i in range(6)).apply_async()
    assert result.get(timeout=20) == [0, 2, 4, 6, 8, 10]
    for child in result.results:
        assert stored(backend_redis, child.id)["group_id"] == result.id


@pytest.mark.parametrize("body_queue", ["swift", "py"])
def test_chord_split_across_both_workers(both, backend_redis, body_queue):
    app, swift, python = both
    header = [sig(app, "tasks.add", i, i, queue="swift" if i % 2 else "py") for i in range(8)]
    result = chord(header, sig(app, "tasks.tsum", queue=body_queue)).apply_async()
    assert result.get(timeout=20) == sum(2 * i for i in range(8))
    body_log = swift.log if body_queue == "swift" else python.log
    assert body_log.count(f"Task tasks.tsum[{result.id}] received") == 1


def test_chord_completed_by_the_swift_worker_orders_results(both, backend_redis):
    app, swift, python = both
    # The Python parts are quick; the Swift part sleeps, so the Swift worker records the last part and sends the
    # body. Results arrive out of order but the body gets them in header order.
    header = [sig(app, "tasks.echo", "first", queue="py"), sig(app, "tasks.sleep", 2.5),
              sig(app, "tasks.add", 20, 22, queue="py")]
    result = chord(header, sig(app, "tasks.echo", queue="py")).apply_async()
    outcome = result.get(timeout=20)
    assert outcome == {"args": [[{"args": ["first"], "kwargs": {}}, 2.5, 42]], "kwargs": {}}
    assert f"Task tasks.sleep[" in swift.log
    for key in backend_redis.keys("celery-taskset-meta-*"):
        assert not key.decode().endswith((".j", ".s", ".d")), key  # cleaned up after the body was sent
    # The body was sent by the Swift worker on behalf of the part that completed the chord.
    assert stored(backend_redis, result.id)["parent_id"] == result.parent.results[1].id


def test_chord_with_a_failing_part(both, backend_redis):
    from celery.exceptions import ChordError

    app, swift, python = both
    header = [sig(app, "tasks.add", 1, 1, queue="py"), sig(app, "tasks.fail", "broken"), sig(app, "tasks.sleep", 0.5)]
    result = chord(header, sig(app, "tasks.tsum", queue="py")).apply_async()
    with pytest.raises((ChordError, ValueError)):
        result.get(timeout=20)
    assert eventually(lambda: stored(backend_redis, result.id) is not None, 10)
    document = stored(backend_redis, result.id)
    assert document["status"] == "FAILURE" and document["result"]["exc_type"] == "ChordError"
    assert "raised ValueError('broken')" in document["result"]["exc_message"][0]
    assert f"tasks.tsum[{result.id}]" not in python.log  # the body never ran


def test_chain_into_a_group_and_into_a_chord_sent_by_the_swift_worker(both, backend_redis):
    app, swift, python = both
    into_group = (sig(app, "tasks.add", 1, 2) | group(sig(app, "tasks.mul", 2, queue="py"), sig(app, "tasks.mul", 3)))
    result = into_group.apply_async()
    assert result.get(timeout=20) == [6, 9]
    into_chord = (sig(app, "tasks.add", 1, 2) | group(sig(app, "tasks.mul", 2, queue="py"), sig(app, "tasks.mul", 3))
                  | sig(app, "tasks.tsum", queue="py"))
    assert into_chord.apply_async().get(timeout=20) == 15


def test_task_routes_send_chain_steps_and_callbacks_where_python_would(start_worker, start_python_worker, make_app,
                                                                       tmp_path):
    """The tasks a Swift worker sends (a chain's next step, a callback) follow `task_routes` as a Python worker's
    do: an exact name, then patterns in order; a queue given in the signature wins."""
    config = tmp_path / "routes.yaml"
    config.write_text('task_routes:\n  "tasks.mul": {queue: math}\n  "tasks.e*": echoes\n')
    router = start_worker("-n", "router@%h", "--config", str(config))
    math = start_worker("-n", "math@%h", "-Q", "math", "--config", str(config))
    python = start_python_worker("-n", "pyechoes@%h", "-P", "solo", "-Q", "echoes")
    app = make_app()
    workflow = chain(app.signature("tasks.add", (2, 3)), app.signature("tasks.mul", (10,)),
                     app.signature("tasks.echo", ("x",), immutable=True))
    result = workflow.apply_async()
    assert stored_outcome(app, result) == {"args": ["x"], "kwargs": {}}
    add, mul = result.parent.parent, result.parent
    assert stored_outcome(app, mul) == 50
    router.wait_for_log(f"Task tasks.add[{add.id}] succeeded")
    math.wait_for_log(f"Task tasks.mul[{mul.id}] succeeded")
    python.wait_for_log(f"Task tasks.echo[{result.id}] succeeded")

    linked = app.tasks["tasks.add"].apply_async((1, 1), link=app.signature("tasks.mul", (3,)))
    assert linked.get(timeout=10) == 2
    callback = app.AsyncResult(json.loads(app.backend.client.get(f"celery-task-meta-{linked.id}"))["children"][0][0][0])
    assert stored_outcome(app, callback) == 6
    math.wait_for_log(f"Task tasks.mul[{callback.id}] succeeded")
    node = answering(app, "router@")
    # `inspect conf` shows the routes, a queue name as the options it stands for.
    assert app.control.inspect(destination=[node], timeout=2).conf()[node]["task_routes"] == {
        "tasks.mul": {"queue": "math"}, "tasks.e*": {"queue": "echoes"}}
    # A queue in the signature wins over the route.
    pinned = app.tasks["tasks.add"].apply_async((1, 2), link=app.signature("tasks.mul", (2,)).set(queue="celery"))
    assert pinned.get(timeout=10) == 3
    pinned_callback = json.loads(app.backend.client.get(f"celery-task-meta-{pinned.id}"))["children"][0][0][0]
    assert stored_outcome(app, app.AsyncResult(pinned_callback)) == 6
    router.wait_for_log(f"Task tasks.mul[{pinned_callback}] succeeded")


@pytest.mark.parametrize("settings,expected", [
    ({}, 0), ({"task_inherit_parent_priority": True}, 7), ({"task_default_priority": 4}, 4),
    ({"task_inherit_parent_priority": True, "task_default_priority": 4}, 7),
], ids=["none", "inherit", "default", "both"])
def test_the_priority_of_a_chain_step_the_worker_sends(start_configured, make_app, broker_redis, settings, expected):
    """`task_inherit_parent_priority` and `task_default_priority`: the next step of a chain sent at priority 7, which
    names no priority of its own, is sent at the priority a Python worker given the same sends it at, to the same
    priority list."""
    workers = {kind: start_configured(kind, settings, "-Q", f"prio{kind}") for kind in ("swift", "python")}
    app = make_app()
    sent = {}
    for kind in workers:
        held = f"priosteps{kind}"
        chain = app.tasks["tasks.add"].s(1, 1).set(queue=f"prio{kind}", priority=7) | app.tasks["tasks.mul"].s(3).set(
            queue=held)
        chain.apply_async()
        lists = lambda: [key for key in broker_redis.keys(f"{held}*") if broker_redis.llen(key)]  # noqa: E731
        assert eventually(lists, 10), kind
        (name,) = lists()
        message = json.loads(broker_redis.lindex(name, 0))
        sent[kind] = (name.decode().removeprefix(held), message["properties"]["priority"])
    assert sent["swift"] == sent["python"], sent
    assert sent["swift"][1] == expected


def test_chord_settings_as_python_applies_them(start_configured, make_app, backend_redis):
    """`result_chord_ordered: false` (parts in a list, in the order they finished), `result_chord_expires` and
    `result_chord_join_timeout`, given to a Swift and a Python worker and the client: a chord split across both
    completes once, whichever worker records the last part, and its keys expire as set (Celery 5.3 has no
    `result_chord_expires`: its parts expire with results)."""
    settings = {"result_backend_transport_options": {"result_chord_ordered": False}, "result_chord_expires": 120,
                "result_chord_join_timeout": 10}
    start_configured("swift", settings, "-n", "swiftchords@%h", "-Q", "swift", "-c", "4")
    python = start_configured("python", settings, "-n", "pychords@%h", "-Q", "py", "-c", "2")
    app = make_app(**settings)
    node = answering(app, "swiftchords@")
    conf = app.control.inspect(destination=[node], timeout=2).conf()[node]
    assert (conf["result_chord_join_timeout"], conf["result_chord_expires"]) == (10, 120), conf
    for last in ("swift", "py"):
        waiting = sig(app, "tasks.sleep", 1.5, queue=last)
        header = [sig(app, "tasks.add", i, i, queue="swift" if i % 2 else "py") for i in range(6)] + [waiting]
        result = chord(header, sig(app, "tasks.tsum", queue="py")).apply_async()
        group_id = result.parent.id
        key = f"celery-taskset-meta-{group_id}.j"
        assert eventually(lambda: backend_redis.llen(key) == 6 if backend_redis.type(key) == b"list" else False, 10), \
            backend_redis.type(key)
        # Celery 5.3 has no result_chord_expires: its worker sets result_expires on the parts it records.
        assert 100 <= backend_redis.ttl(key) <= (120 if "result_chord_expires" in Celery().conf.keys() else 86400)
        assert result.get(timeout=20) == sum(2 * i for i in range(6)) + 1.5
        python.wait_for_log(f"Task tasks.tsum[{result.id}] succeeded")
        assert python.log.count(f"Task tasks.tsum[{result.id}] received") == 1


def test_new_style_errbacks_run_where_the_task_failed(both):
    """An errback whose function takes `(request, exc, traceback)` (`TaskRegistry.registerErrback` in Swift) runs in
    the worker where the linked task failed, with the signature's own arguments after those three, and no message
    is sent for it, as Celery's `_call_task_errbacks` calls one; sent as a message, it fails with Python's
    `TypeError` on both kinds of worker."""
    app, swift, python = both
    for queue, worker in (("swift", swift), ("py", python)):
        failing = app.tasks["tasks.fail"].apply_async(
            ("boom",), queue=queue, link_error=app.signature("tasks.record_error", args=("x",)))
        with pytest.raises(ValueError):
            failing.get(timeout=10)
        worker.wait_for_log(f"errback: tasks.fail[{failing.id}] raised ValueError('boom') (args ['x'])")
    assert "Task tasks.record_error[" not in swift.log + python.log  # never received as a message
    messages = [app.send_task("tasks.record_error", ("an-id",), queue=queue) for queue in ("swift", "py")]
    for message in messages:
        with pytest.raises(TypeError, match=r"record_error\(\) missing 2 required positional arguments: 'exc' and 'traceback'"):
            message.get(timeout=10)


@pytest.mark.parametrize("kind", ["swift", "python"])
def test_what_a_worker_sends_is_in_its_task_serializer(start_configured, make_app, broker_redis, kind):
    """A worker left at task_serializer json sends a msgpack message's callback and its retry in JSON: Celery
    serializes what a worker sends with the worker's own task_serializer, whatever the message came in."""
    start_configured(kind, {"accept_content": ["json", "msgpack"]})
    app = make_app(task_serializer="msgpack")
    linked = app.tasks["tasks.echo"].apply_async((1,), link=app.signature("tasks.echo", args=["cb"], queue="observed"))
    assert linked.get(timeout=10) == {"args": [1], "kwargs": {}}
    assert eventually(lambda: broker_redis.llen("observed") == 1, timeout=10)
    callback = json.loads(broker_redis.lindex("observed", 0))
    assert (callback["headers"]["task"], callback["content-type"]) == ("tasks.echo", "application/json")

    retried = app.tasks["tasks.flaky"].apply_async((1, 60))  # its retry is due in a minute: held, unacknowledged
    held = []

    def retry_held():
        held[:] = [json.loads(entry)[0] for entry in broker_redis.hvals("unacked")]
        return any(message["headers"]["id"] == retried.id and message["headers"]["retries"] == 1 for message in held)

    assert eventually(retry_held, timeout=10), held
    retry = next(message for message in held if message["headers"]["id"] == retried.id)
    assert retry["content-type"] == "application/json"


def test_a_chord_whose_claim_holder_died_is_completed_once_the_claim_expires(start_worker, make_app, backend_redis):
    """A worker that died holding the claim to send a chord's body (planted here: another token, 3 s to live) has
    not sent it. The Swift worker that counts the last part waits for the claim to expire, takes it and sends the
    body, once. Celery 5.7's worker gives up at once, and the body is sent only if a part comes back after the claim
    expired (README, "Workflows")."""
    worker = start_worker("-c", "4")
    app = make_app()
    header = [app.signature("tasks.add", args=(1, 1)), app.signature("tasks.add", args=(2, 2)).set(countdown=1.5)]
    result = chord(header, app.signature("tasks.tsum")).apply_async()
    claim = f"celery-taskset-meta-{result.parent.id}.c"
    backend_redis.set(claim, "a-worker-that-died", px=3000)
    started = time.monotonic()
    assert result.get(timeout=15) == 6
    assert time.monotonic() - started >= 2.5
    worker.wait_for_log(f"Chord '{result.parent.id}': the claim to send its body expired unused; this worker sends it")
    # The body may run (and its result be read) before the sender marks the claim `done` just after sending it.
    assert eventually(lambda: backend_redis.get(claim) == b"done"), backend_redis.get(claim)
    assert worker.log.count(f"Task tasks.tsum[{result.id}] received") == 1
