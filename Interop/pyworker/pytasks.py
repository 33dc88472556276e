"""A Python Celery worker app with the same demo tasks as the Swift worker, for tests where both share a queue.

Run: celery -A pytasks worker   (settings from the environment, see below)
"""
import os
import time

from celery import Celery
from celery.utils.log import get_task_logger

app = Celery("pytasks", broker=os.environ["CELERY_BROKER_URL"], backend=os.environ["CELERY_RESULT_BACKEND"])
app.conf.update(
    task_serializer=os.environ.get("TASK_SERIALIZER", "json"),
    result_serializer=os.environ.get("RESULT_SERIALIZER", "json"),
    accept_content=["json", "msgpack"],
    task_acks_late=os.environ.get("ACKS_LATE", "0") == "1",
    worker_prefetch_multiplier=int(os.environ.get("PREFETCH_MULTIPLIER", "4")),
    broker_transport_options={"visibility_timeout": float(os.environ.get("VISIBILITY_TIMEOUT", "3600")),
                              **({"global_keyprefix": os.environ["BROKER_KEYPREFIX"]}
                                 if os.environ.get("BROKER_KEYPREFIX") else {})},
    worker_hijack_root_logger=True,
    task_compression=os.environ.get("TASK_COMPRESSION") or None,
    # Celery 5.7 compresses results with it; 5.3 has the setting but ignores it.
    result_compression=os.environ.get("RESULT_COMPRESSION") or None,
    result_backend_transport_options={"global_keyprefix": os.environ["RESULT_KEYPREFIX"]}
    if os.environ.get("RESULT_KEYPREFIX") else {},
    worker_direct=os.environ.get("WORKER_DIRECT", "0") == "1",
    worker_pool_restarts=os.environ.get("POOL_RESTARTS", "0") == "1",
)
if os.environ.get("TASK_ANNOTATIONS"):
    import json

    app.conf.task_annotations = json.loads(os.environ["TASK_ANNOTATIONS"])
if os.environ.get("DEFAULT_RATE_LIMIT"):
    app.conf.task_default_rate_limit = os.environ["DEFAULT_RATE_LIMIT"]
if os.environ.get("LOG_FORMAT"):
    app.conf.worker_log_format = os.environ["LOG_FORMAT"]
if os.environ.get("TASK_LOG_FORMAT"):
    app.conf.worker_task_log_format = os.environ["TASK_LOG_FORMAT"]
if os.environ.get("CELERY_SETTINGS"):
    # Any other settings, as JSON by Celery's names (the same mapping a test gives the Swift worker's --config).
    import json

    app.conf.update(json.loads(os.environ["CELERY_SETTINGS"]))
if os.environ.get("SETUP_SECURITY") == "1":
    # Celery's message signing, as the settings give it (task_serializer and accept_content auth, security_*).
    app.setup_security()

task_logger = get_task_logger("tasks")


@app.task(name="tasks.add")
def add(x, y):
    return x + y


@app.task(name="tasks.echo")
def echo(*args, **kwargs):
    return {"args": list(args), "kwargs": kwargs}


@app.task(name="tasks.sleep")
def sleep(seconds):
    time.sleep(seconds)
    return seconds


@app.task(name="tasks.noop")
def noop():
    return None


@app.task(name="tasks.log")
def log(message):
    task_logger.info(message)
    return message


@app.task(name="tasks.print")
def print_(text, end="\n"):
    print(text, end=end)
    return text


@app.task(name="tasks.record_error")
def record_error(request, exc, traceback, *args):
    """A new-style errback: called in the worker where the linked task failed."""
    task_logger.warning("errback: %s[%s] raised %r (args %r)", request.task, request.id, exc, list(args))


@app.task(name="tasks.whoami")
def whoami():
    return "python"


@app.task(name="tasks.report_state", bind=True)
def report_state(self, state, meta):
    """Stores `state` with `meta` (update_state), then returns "stored", as the Swift demo task does."""
    self.update_state(state=state, meta=meta)
    return "stored"


@app.task(name="tasks.send_then_retry", bind=True)
def send_then_retry(self, name, args, queue):
    """Sends a task to `queue` and retries itself once, 2 s later, as the Swift demo task does."""
    app.send_task(name, args, queue=queue)
    if self.request.retries < 1:
        raise self.retry(countdown=2)
    return self.request.retries


@app.task(name="tasks.delegate")
def delegate(name, args, queue):
    """Starts another task on `queue` and returns its result, as the Swift demo task does."""
    return app.send_task(name, args, queue=queue).get(timeout=60, disable_sync_subtasks=False)


@app.task(name="tasks.fail")
def fail(message):
    raise ValueError(message)


@app.task(name="tasks.flaky", bind=True, max_retries=None)
def flaky(self, n, countdown=0.1):
    if self.request.retries < n:
        raise self.retry(countdown=countdown)
    return self.request.retries


@app.task(name="tasks.mul")
def mul(x, y):
    return x * y


@app.task(name="tasks.tsum")
def tsum(numbers):
    return sum(numbers)


@app.task(name="tasks.replace_with", bind=True)
def replace_with(self, kind, queue):
    """Replaces itself (`Task.replace`) with a task, chain, group or chord of tasks on `queue`."""
    from celery import chain, chord, group
    s = lambda name, *args: app.signature(name, args=args).set(queue=queue)
    replacements = {
        "task": lambda: s("tasks.add", 2, 3),
        "chain": lambda: chain(s("tasks.add", 1, 1), s("tasks.mul", 10)),
        "group": lambda: group(s("tasks.add", 1, 1), s("tasks.add", 2, 2)),
        "chord": lambda: chord([s("tasks.add", 1, 1), s("tasks.add", 2, 2)], s("tasks.tsum")),
    }
    raise self.replace(replacements[kind]())


@app.task(name="tasks.grow", bind=True)
def grow(self, x, queue):
    """Adds tasks.add(x, 100) on `queue` to this task's chord, and returns x."""
    self.add_to_chord(app.signature("tasks.add", args=(x, 100)).set(queue=queue))
    return x


if os.environ.get("SIGNALS_FILE"):
    # What Celery's worker_shutting_down carries, for tests that compare it with the Swift worker's.
    from celery.signals import worker_shutting_down

    @worker_shutting_down.connect
    def write_shutting_down(sender=None, sig=None, how=None, exitcode=None, **kwargs):
        with open(os.environ["SIGNALS_FILE"], "a") as file:
            file.write(f"worker_shutting_down: {sig} {how} {exitcode}\n")
