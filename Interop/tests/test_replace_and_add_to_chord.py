"""Celery's `Task.replace` and `add_to_chord`, called by Swift tasks and by Python tasks, with the replacement or
the added task running on either kind of worker.

`tasks.replace_with(kind, queue)` replaces itself with a task, chain, group or chord of tasks on `queue`;
`tasks.grow(x, queue)` adds `tasks.add(x, 100)` on `queue` to its chord and returns x. Both exist on both workers."""
import pytest
from celery import chain, chord

from conftest import eventually, stored_outcome
from test_canvas import sig, stored

EXPECTED = {"task": 5, "chain": 20, "group": [2, 4], "chord": 6}


@pytest.fixture
def both(start_worker, start_python_worker, make_app, request):
    """A Swift worker on queue `swift` and a Python worker on `py`; one of them (the param, default Swift) also
    consumes Celery's default queue, where the `celery.accumulate` body of a group replacement goes."""
    default = getattr(request, "param", "swift")
    swift = start_worker("-n", "swiftreplace@%h", "-Q", "swift,celery" if default == "swift" else "swift", "-c", "4")
    python = start_python_worker("-n", "pyreplace@%h", "-Q", "py,celery" if default == "py" else "py", "-c", "2")
    return make_app(), swift, python


# (replaced, replacement, the worker that runs celery.accumulate): each sender of a group replacement's chord with
# each runner of its body.
@pytest.mark.parametrize("replaced,replacement,both", [("swift", "swift", "swift"), ("swift", "py", "swift"),
                                                        ("py", "swift", "py"), ("py", "py", "py")], indirect=["both"])
def test_a_task_replaced_by_a_signature_returns_its_result(both, backend_redis, replaced, replacement):
    app, swift, python = both
    for kind, expected in EXPECTED.items():
        result = app.tasks["tasks.replace_with"].apply_async((kind, replacement), queue=replaced)
        assert stored_outcome(app, result, 15) == expected, kind
        # The replacement's result is stored under the replaced task's id; the replaced task logged `ignored`.
        assert stored(backend_redis, result.id)["status"] == "SUCCESS", kind
        (swift if replaced == "swift" else python).wait_for_log(f"Task tasks.replace_with[{result.id}] ignored")


def test_a_replaced_chain_step_goes_on_with_the_chain_and_its_callbacks(both, backend_redis):
    app, swift, python = both
    for replaced in ("swift", "py"):
        other = "py" if replaced == "swift" else "swift"
        workflow = chain(sig(app, "tasks.replace_with", "chain", other, queue=replaced), sig(app, "tasks.add", 1, queue=other),
                         sig(app, "tasks.mul", 2, queue=replaced))
        assert stored_outcome(app, workflow.apply_async(), 15) == (20 + 1) * 2, replaced
        linked = app.tasks["tasks.replace_with"].apply_async(("task", other), queue=replaced,
                                                             link=sig(app, "tasks.mul", 3, queue=other))
        assert stored_outcome(app, linked, 15) == 5, replaced
        assert eventually(lambda: stored(backend_redis, linked.id).get("children"), 10), replaced
        callback = app.AsyncResult(stored(backend_redis, linked.id)["children"][0][0][0])
        assert stored_outcome(app, callback, 15) == 15, replaced


def test_a_replaced_chord_part_still_completes_its_chord(both):
    app, swift, python = both
    for replaced in ("swift", "py"):
        other = "py" if replaced == "swift" else "swift"
        parts = [sig(app, "tasks.replace_with", "task", other, queue=replaced), sig(app, "tasks.add", 1, 1, queue=other),
                 sig(app, "tasks.replace_with", "chain", replaced, queue=replaced)]
        assert stored_outcome(app, chord(parts, sig(app, "tasks.tsum", queue=other)).apply_async(), 15) == 5 + 2 + 20, replaced


def test_add_to_chord(both):
    """A header part adds a task to its chord (`add_to_chord`): the body waits for it and gets its result too."""
    app, swift, python = both
    for grower in ("swift", "py"):
        for added in ("swift", "py"):
            runner = swift if added == "swift" else python
            before = runner.log.count("s: 101")  # "Task tasks.add[…] succeeded in …s: 101"
            parts = [sig(app, "tasks.grow", 1, added, queue=grower), sig(app, "tasks.add", 2, 2, queue="py"),
                     sig(app, "tasks.add", 3, 3, queue="swift")]
            result = chord(parts, sig(app, "tasks.tsum", queue="swift" if grower == "py" else "py")).apply_async()
            assert stored_outcome(app, result, 15) == 1 + 4 + 6 + 101, (grower, added)
            assert eventually(lambda: runner.log.count("s: 101") == before + 1), (grower, added)


def test_add_to_chord_outside_a_chord_raises_pythons_error(both):
    app, swift, python = both
    for queue in ("swift", "py"):
        with pytest.raises(ValueError, match="^Current task is not member of any chord$"):
            stored_outcome(app, app.tasks["tasks.grow"].apply_async((1, queue), queue=queue), 10)
