"""Chords whose header holds chains, groups and chords, run by Swift workers, Python workers or both.

Python freezes such a header so that the results that complete it carry the chord (a chain's last step, a chord's
body, each member of a group), counts those results as the chord's size, flattens a group in the header, and saves
the header as a `GroupResult` when one of its results is a group, so that the body gets a list for it. Each test runs
the same workflow on the Swift worker and on a Python worker and compares what the body received."""
import celery
import pytest
from celery import chain, chord, group

from conftest import eventually, stored_outcome
from test_canvas import both, sig, stored  # noqa: F401 (fixture)

# Shapes whose header Celery saves as a GroupResult (a chain that ends in a group). A Python worker that completes
# such a chord joins it with `children_result.get()`, which has no timeout, and that wait can hang on results
# already stored (seen once in forty runs of this file with Celery 5.3's worker alone, and Celery 5.3's client and
# worker alone did not complete one sent by the client when we tried). So Python's own run of these shapes is not part of the
# comparisons below (their expected values are what Python 5.7 gives), and a Python worker joins a header the Swift
# worker saved in one case, with Celery 5.7.
SAVED = ("chain-into-group", "all")
PYTHON_JOINS = celery.VERSION >= (5, 7)


def header(app, shape, queue, first=()):
    """The header of `shape`, its members taking the chain's result (2) as their first argument; `first=(2,)`
    writes it into their arguments for a chord that has no chain step before it."""
    s = lambda name, *args: sig(app, name, *args, queue=queue)
    head = lambda name, *args: s(name, *first, *args)
    shapes = {
        "chain": ([chain(head("tasks.mul", 2), s("tasks.mul", 10)), head("tasks.add", 5)], [40, 7]),
        # flattened as Python flattens it (a nested group's members come last first)
        "group": ([group(head("tasks.add", 1), head("tasks.add", 2)), head("tasks.add", 5)], [4, 3, 7]),
        "chain-into-group": ([chain(head("tasks.add", 1), group(s("tasks.mul", 2), s("tasks.mul", 3))),
                              head("tasks.add", 5)], [[6, 9], 7]),
        "chord": ([chord([head("tasks.add", 1), head("tasks.add", 2)], s("tasks.tsum")), head("tasks.add", 5)], [7, 7]),
    }
    if shape == "all":
        parts = [shapes[name] for name in ("chain", "chain-into-group", "chord")]
        return [task for tasks, _ in parts for task in tasks], [value for _, values in parts for value in values]
    return shapes[shape]


SHAPES = ["chain", "group", "chain-into-group", "chord", "all"]


def body_args(app, result):
    outcome = stored_outcome(app, result)
    assert outcome["kwargs"] == {}
    return outcome["args"][0]


def test_a_nested_header_sent_by_a_worker_as_a_chain_step(both):
    """The worker that runs the chain's first step sends the chord: Swift's canvas sender against Python's."""
    app, swift, python = both
    for shape in SHAPES:
        for queue in ("swift", "py") if shape not in SAVED else ("swift",):
            parts, expected = header(app, shape, queue)
            workflow = chain(sig(app, "tasks.add", 1, 1, queue=queue), chord(parts, sig(app, "tasks.echo", queue=queue)))
            assert body_args(app, workflow.apply_async()) == expected, (shape, queue)


# Python's client writes a msgpack body that no reader decodes (bytes left after the value; Python's worker logs
# "Can't decode message body") for a header chain that ends in a group, and for any nested chord that is a chain's
# step: those run with JSON only.
@pytest.mark.parametrize("both,shapes", [("json", SHAPES), ("msgpack", ["chain", "group", "chord"])], indirect=["both"])
def test_a_nested_header_sent_by_a_python_client(both, shapes):
    """Python's client freezes the chord (and saves its header); the Swift worker runs every task and completes it."""
    app, swift, python = both
    for shape in shapes:
        for queue in ("swift", "py") if shape not in SAVED else ("swift",):
            parts, expected = header(app, shape, queue, first=(2,))
            workflow = chord(parts, sig(app, "tasks.echo", queue=queue))
            assert body_args(app, workflow.apply_async()) == expected, (shape, queue)


def test_a_nested_header_split_across_workers(both):
    """Parts on both workers; the part that finishes last (it sleeps) is on `last`, so that worker joins the saved
    header and sends the body, which runs on the other one. The sender froze and saved the header."""
    app, swift, python = both
    cases = [("swift", "swift"), ("py", "swift")] + ([("swift", "py")] if PYTHON_JOINS else [])
    for sender, last in cases:
        other = "py" if last == "swift" else "swift"
        parts = [chain(sig(app, "tasks.add", 1, queue=other),
                       group(sig(app, "tasks.mul", 2, queue="swift"), sig(app, "tasks.mul", 3, queue="py"))),
                 chord([sig(app, "tasks.add", 1, queue="py"), sig(app, "tasks.add", 2, queue="swift")],
                       sig(app, "tasks.tsum", queue=other)),
                 sig(app, "tasks.sleep", 2, queue=last, immutable=True)]  # last, on a loaded machine too
        workflow = chain(sig(app, "tasks.add", 1, 1, queue=sender), chord(parts, sig(app, "tasks.echo", queue=other)))
        result = workflow.apply_async()
        assert body_args(app, result) == [[6, 9], 7, 2], (sender, last)
        body_worker = python if last == "swift" else swift
        body_worker.wait_for_log(f"Task tasks.echo[{result.id}] received")


def test_a_failed_part_of_a_nested_header_fails_the_chord_as_python_does(both, backend_redis):
    """Python joins a saved header and raises the part's exception: `ChordError('Join error: …')` is stored for the
    body, which never runs (Python 5.7 stores these words). The Swift part finishes last (it sleeps): the Swift worker
    joins."""
    app, swift, python = both
    for last in ("swift",):  # a Python worker's join can hang (see SAVED)
        other = "py" if last == "swift" else "swift"
        parts = [chain(sig(app, "tasks.add", 1, queue=other),
                       group(sig(app, "tasks.fail", "boom", queue=other, immutable=True), sig(app, "tasks.mul", 3, queue=other))),
                 sig(app, "tasks.sleep", 2, queue=last, immutable=True)]  # last, on a loaded machine too
        workflow = chain(sig(app, "tasks.add", 1, 1, queue="swift"), chord(parts, sig(app, "tasks.echo", queue=other)))
        result = workflow.apply_async()
        with pytest.raises(Exception):
            stored_outcome(app, result)
        assert eventually(lambda: stored(backend_redis, result.id) is not None, 10), last
        document = stored(backend_redis, result.id)
        assert document["status"] == "FAILURE", last
        assert document["result"] == {"exc_type": "ChordError", "exc_message": ["Join error: ValueError('boom')"],
                                      "exc_module": "celery.exceptions"}, last
        assert f"tasks.echo[{result.id}]" not in swift.log + python.log
