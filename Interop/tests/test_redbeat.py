"""Beat with celery-redbeat's scheduler (`-S redbeat.RedBeatScheduler`): the schedule, each entry's last run and the
lock kept in Redis as RedBeat keeps them, so that Swift and Python RedBeat beats share them, and entries that Python
code saves at run time are sent by the Swift beat."""
import base64
import json
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from celery.schedules import crontab, schedule
from redbeat import RedBeatScheduler, RedBeatSchedulerEntry
from redbeat.schedules import rrule

from conftest import INTEROP, WORKER_BINARY, answering, eventually
from redisproc import RedisProcess


def write_config(tmp_path, name, settings):
    path = tmp_path / name
    path.write_text(json.dumps(settings))
    return str(path)


def start_beat(redis_urls, config, logfile, *args):
    return subprocess.Popen([str(WORKER_BINARY), "beat", "--broker", redis_urls["broker"], "--config", config,
                             "-l", "debug", "-f", str(logfile), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def stop(process, sig=signal.SIGTERM):
    if process.poll() is None:
        process.send_signal(sig)
    try:
        output, _ = process.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    return output


def read(path):
    return path.read_text() if path.exists() else ""


def popped(broker_redis, queue, timeout=10.0):
    reply = broker_redis.brpop([queue], timeout=timeout)
    return json.loads(reply[1]) if reply else None


def test_the_schedule_is_stored_as_python_redbeat_stores_it(make_app, redis_urls, broker_redis, tmp_path):
    """The same beat_schedule stored by Python's RedBeatScheduler and by the Swift beat (each under its own key
    prefix), with the app's time zone Europe/Paris: byte-identical definitions, the same statics, meta (last runs in
    Paris time) and scores (crontabs read in Paris); entries a removed static left are deleted;
    and Python's RedBeat reads back the Swift beat's entries as its own."""
    entries = {
        "every3": {"task": "tasks.add", "schedule": 3.0, "args": [1, 2], "options": {"queue": "rbq", "priority": 3}},
        "cron": {"task": "tasks.add", "schedule": crontab(minute="*/5", hour="1-23"), "args": [3, 4],
                 "kwargs": {"z": 1}},
        "off": {"task": "tasks.noop", "schedule": 1.0, "enabled": False},
    }
    # A static entry an earlier start stored, since removed from beat_schedule, under each prefix.
    for prefix in ("py:", "sw:"):
        broker_redis.sadd(f"{prefix}:statics", "gone")
        broker_redis.hset(f"{prefix}gone", "definition", "{}")
        broker_redis.zadd(f"{prefix}:schedule", {f"{prefix}gone": 1})
    app = make_app(redbeat_redis_url=redis_urls["broker"], redbeat_key_prefix="py:", beat_schedule=entries,
                   beat_max_loop_interval=5, timezone="Europe/Paris")
    RedBeatScheduler(app=app)  # setup_schedule stores the entries

    config = write_config(tmp_path, "beat.json", {
        "beat_scheduler": "redbeat.RedBeatScheduler", "redbeat_key_prefix": "sw:", "beat_max_loop_interval": 5,
        "timezone": "Europe/Paris",
        "beat_schedule": {
            "every3": entries["every3"],
            "cron": {"task": "tasks.add", "schedule": {"crontab": {"minute": "*/5", "hour": "1-23"}}, "args": [3, 4],
                     "kwargs": {"z": 1}},
            "off": entries["off"],
        }})
    logfile = tmp_path / "beat.log"
    beat = start_beat(redis_urls, config, logfile)
    try:
        assert eventually(lambda: "beat: Acquired lock" in read(logfile), timeout=10), read(logfile)
    finally:
        output = stop(beat)
    assert beat.returncode == 0, output
    # The banner shows RedBeat's Redis (here the broker's) and lock, as Python's RedBeat beat's does.
    lines = output.splitlines()
    at = lines.index("    . scheduler -> redbeat.schedulers.RedBeatScheduler")
    assert lines[at + 1:at + 4] == [f"       . redis -> {redis_urls['broker']}", "       . lock -> `sw::lock` 25.00 seconds (25s)",
                                    "    . logfile -> " + str(logfile) + "@%DEBUG"]
    log = read(logfile)
    assert "beat: Removing old static schedule entry 'gone'." in log
    assert "beat: Stored entry: <RedBeatSchedulerEntry: cron tasks.add(3, 4, z=1) <crontab: */5 1-23 * * * (m/h/dM/MY/d)>" in log
    assert "beat: Releasing lock" in log
    assert broker_redis.get("sw::lock") is None  # given up at shutdown

    for name in ("every3", "cron", "off"):
        assert broker_redis.hget(f"sw:{name}", "definition") == broker_redis.hget(f"py:{name}", "definition"), name
        ours = json.loads(broker_redis.hget(f"sw:{name}", "meta"))
        theirs = json.loads(broker_redis.hget(f"py:{name}", "meta"))
        assert list(ours) == list(theirs) == ["last_run_at"]
        assert list(ours["last_run_at"]) == list(theirs["last_run_at"])
        assert ours["last_run_at"]["timezone"] == theirs["last_run_at"]["timezone"] == "Europe/Paris"
        assert abs(ours["last_run_at"]["hour"] - theirs["last_run_at"]["hour"]) in (0, 1, 23)
    assert abs(broker_redis.zscore("sw::schedule", "sw:cron") - broker_redis.zscore("py::schedule", "py:cron")) <= 1
    assert broker_redis.smembers("sw::statics") == broker_redis.smembers("py::statics") == {b"every3", b"cron", b"off"}
    for prefix in ("py:", "sw:"):
        assert not broker_redis.exists(f"{prefix}gone")
        assert broker_redis.zscore(f"{prefix}:schedule", f"{prefix}gone") is None

    # Python's RedBeat reads the Swift beat's entries as its own.
    reader = make_app(redbeat_redis_url=redis_urls["broker"], redbeat_key_prefix="sw:", timezone="Europe/Paris")
    cron = RedBeatSchedulerEntry.from_key("sw:cron", app=reader)
    assert cron.schedule == crontab(minute="*/5", hour="1-23")
    assert (cron.task, cron.args, cron.kwargs, cron.enabled) == ("tasks.add", [3, 4], {"z": 1}, True)
    assert abs(time.time() - cron.last_run_at.timestamp()) < 30
    every = RedBeatSchedulerEntry.from_key("sw:every3", app=reader)
    assert every.schedule == schedule(3.0) and every.options == {"queue": "rbq", "priority": 3}


def test_entries_python_saves_are_sent_by_an_embedded_redbeat(start_worker, make_app, redis_urls, broker_redis,
                                                              tmp_path):
    """A worker with -B and RedBeat's scheduler sends what Python code saves with RedBeatSchedulerEntry, records each
    run where Python's RedBeat reads it, leaves a disabled entry unsent, sends an entry that never ran at once, drops
    a key whose entry is gone, sends dateutil's rrule entries as RedBeat does, and leaves one it cannot read (a
    schedule of a kind it does not know) as it is."""
    config = write_config(tmp_path, "beat.json", {
        "beat_scheduler": "redbeat.RedBeatScheduler", "redbeat_redis_url": redis_urls["broker"],
        "beat_max_loop_interval": 1})
    worker = start_worker("--config", config, "-B", "--scheduler", "redbeat.RedBeatScheduler", "-Q", "elsewhere",
                          "-l", "debug")
    worker.wait_for_log("beat: Acquired lock")
    app = make_app(redbeat_redis_url=redis_urls["broker"])
    # `inspect conf` shows the scheduler and RedBeat's settings in effect (the URL's password masked, as Celery's).
    node = answering(app, "celery@")
    conf = app.control.inspect(timeout=2, destination=[node]).conf()[node]
    assert conf["beat_scheduler"] == "redbeat.RedBeatScheduler"
    assert (conf["redbeat_key_prefix"], conf["redbeat_lock_key"], conf["redbeat_lock_timeout"]) == ("redbeat:", "redbeat::lock", 5)
    assert conf["redbeat_redis_url"] == redis_urls["broker"]
    # An entry it cannot read, and a key whose entry is gone: neither stops the others.
    broker_redis.hset("redbeat:odd", "definition", json.dumps({
        "name": "odd", "task": "tasks.add", "args": [], "kwargs": {}, "options": {},
        "schedule": {"__type__": "lunar", "phase": "full"}, "enabled": True}))
    broker_redis.zadd("redbeat::schedule", {"redbeat:odd": 1})  # due now
    broker_redis.zadd("redbeat::schedule", {"redbeat:ghost": 1})
    entry = RedBeatSchedulerEntry("dyn", "tasks.add", schedule(1.0), args=[5, 6], kwargs={"z": 7},
                                  options={"queue": "dynq"}, app=app).save()
    first = popped(broker_redis, "dynq")
    assert first is not None, worker.log
    second = popped(broker_redis, "dynq")
    assert second is not None, worker.log
    assert first["headers"]["task"] == "tasks.add" and first["headers"]["celery_beat_task"] is True
    assert json.loads(base64.b64decode(first["body"]))[:2] == [[5, 6], {"z": 7}]
    assert "Scheduler: Sending due task dyn (tasks.add)" in worker.log

    stored = RedBeatSchedulerEntry.from_key("redbeat:dyn", app=app)
    assert stored.total_run_count >= 2
    assert abs(time.time() - stored.last_run_at.timestamp()) < 3
    assert broker_redis.zscore("redbeat::schedule", "redbeat:dyn") > time.time() - 2

    worker.wait_for_log("beat: Failed to load redbeat:ghost, removing")
    assert broker_redis.zscore("redbeat::schedule", "redbeat:ghost") is None
    worker.wait_for_log("beat: Cannot read the entry redbeat:odd: its schedule is RedBeat's 'lunar'")
    assert worker.log.count("Cannot read the entry redbeat:odd") == 1
    assert broker_redis.exists("redbeat:odd")

    # Disabled: not sent.
    stored.enabled = False
    stored.save()
    time.sleep(1.5)
    broker_redis.delete("dynq")
    assert popped(broker_redis, "dynq", timeout=3) is None

    # An entry whose meta has no last run (as RedBeat reads it: never ran) is due at once, a crontab too.
    RedBeatSchedulerEntry("nightly", "tasks.add", crontab(minute="0", hour="4"), args=[8, 9],
                          options={"queue": "cronq"}, app=app).save()
    broker_redis.hdel("redbeat:nightly", "meta")
    broker_redis.zadd("redbeat::schedule", {"redbeat:nightly": 1})
    message = popped(broker_redis, "cronq")
    assert message is not None, worker.log
    nightly = RedBeatSchedulerEntry.from_key("redbeat:nightly", app=app)
    assert nightly.total_run_count == 1
    # Scored by its next run, 04:00 UTC, as RedBeat scores it (a second less: reckoned from a moment after the run).
    now = datetime.now(timezone.utc)
    four = now.replace(hour=4, minute=0, second=0, microsecond=0)
    if four <= now:
        four += timedelta(days=1)
    assert four.timestamp() - 2 <= broker_redis.zscore("redbeat::schedule", "redbeat:nightly") <= four.timestamp()
    assert popped(broker_redis, "cronq", timeout=2) is None

    # A meta that cannot be read counts as none: the entry is sent at once, and its run writes a new meta.
    RedBeatSchedulerEntry("healed", "tasks.add", schedule(3600), args=[4, 4], options={"queue": "healq"},
                          app=app).save()
    broker_redis.hset("redbeat:healed", "meta", "not json")
    broker_redis.zadd("redbeat::schedule", {"redbeat:healed": 1})
    assert popped(broker_redis, "healq") is not None, worker.log
    assert RedBeatSchedulerEntry.from_key("redbeat:healed", app=app).total_run_count == 1

    # dateutil's rrule, as RedBeat keeps it: every 2 s from its start, 3 occurrences in all, the first of them the
    # start itself, before the entry's first last run (its creation): two are sent, then none, and it is scored -1.
    RedBeatSchedulerEntry("thrice", "tasks.add", rrule("SECONDLY", interval=2, count=3), args=[7, 7],
                          options={"queue": "rrq"}, app=app).save()
    assert popped(broker_redis, "rrq") is not None, worker.log
    assert popped(broker_redis, "rrq") is not None, worker.log
    assert popped(broker_redis, "rrq", timeout=4) is None
    thrice = RedBeatSchedulerEntry.from_key("redbeat:thrice", app=app)
    assert thrice.total_run_count == 2
    assert broker_redis.zscore("redbeat::schedule", "redbeat:thrice") == -1


PYTHON_BEAT_SETTINGS = {"redbeat_lock_timeout": 3, "beat_max_loop_interval": 1,
                        "beat_schedule": {"tick": {"task": "tasks.add", "schedule": 0.5, "args": [1, 1],
                                                   "options": {"queue": "lockq"}}}}


def start_python_beat(redis_urls, logfile):
    import os
    settings = {**PYTHON_BEAT_SETTINGS, "redbeat_redis_url": redis_urls["broker"]}
    environment = {**os.environ, "CELERY_BROKER_URL": redis_urls["broker"], "CELERY_RESULT_BACKEND": redis_urls["backend"],
                   "CELERY_SETTINGS": json.dumps(settings)}
    celery = Path(sys.executable).with_name("celery")
    return subprocess.Popen([str(celery), "-A", "pytasks", "beat", "-S", "redbeat.RedBeatScheduler", "-l", "debug",
                             "--logfile", str(logfile), "-s", str(logfile.with_suffix(".db"))],
                            cwd=INTEROP / "pyworker", env=environment, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)


def test_swift_and_python_redbeat_beats_share_one_lock(redis_urls, broker_redis, tmp_path):
    """A Swift beat stands by while a Python RedBeat beat holds RedBeat's lock, and takes it once the Python beat is
    killed (when the lock expires); a Python beat started then waits, and takes it as soon as the Swift beat stops."""
    python_log = tmp_path / "python-beat.log"
    python_beat = start_python_beat(redis_urls, python_log)
    swift_log = tmp_path / "swift-beat.log"
    swift_beat = None
    try:
        assert eventually(lambda: "beat: Acquired lock" in read(python_log), timeout=20), read(python_log)
        swift_beat = start_beat(redis_urls, write_config(tmp_path, "beat.json", {
            **PYTHON_BEAT_SETTINGS, "beat_scheduler": "redbeat.RedBeatScheduler"}), swift_log)
        assert eventually(lambda: "Another beat holds the lock `redbeat::lock`; standing by" in read(swift_log),
                          timeout=10), read(swift_log)
        time.sleep(2)
        assert "Sending due task" not in read(swift_log)
        assert "Sending due task tick" in read(python_log)

        python_beat.kill()
        python_beat.wait()
        # The lock lives 3 s after the Python beat's last renewal; the Swift beat tries it every 3 s.
        assert eventually(lambda: "beat: Acquired lock" in read(swift_log), timeout=12), read(swift_log)
        assert eventually(lambda: "Scheduler: Sending due task tick (tasks.add)" in read(swift_log), timeout=5)
        stored = json.loads(broker_redis.hget("redbeat:tick", "meta"))
        assert stored["total_run_count"] >= 2

        python_log.unlink()
        python_beat = start_python_beat(redis_urls, python_log)
        assert eventually(lambda: "beat: Acquiring lock..." in read(python_log), timeout=20), read(python_log)
        time.sleep(2)
        assert "beat: Acquired lock" not in read(python_log)
        output = stop(swift_beat)
        assert swift_beat.returncode == 0, output
        assert "beat: Releasing lock" in read(swift_log)
        assert eventually(lambda: "beat: Acquired lock" in read(python_log), timeout=10), read(python_log)
    finally:
        python_beat.kill()
        python_beat.wait()
        if swift_beat is not None:
            stop(swift_beat, signal.SIGKILL)


def test_a_redbeat_redis_that_comes_back_empty_gets_the_schedule_again(redis_urls, broker_redis, tmp_path):
    """RedBeat's Redis stopped under the Swift beat: the error is logged once and the beat keeps trying; a new empty
    Redis on the same port gets beat_schedule again and the lock, and the entry is sent again. (RedBeat's beat ends
    at the first error, unless retry_period is set, and stores beat_schedule only at start.)"""
    server = RedisProcess().start()
    logfile = tmp_path / "beat.log"
    beat = start_beat(redis_urls, write_config(tmp_path, "beat.json", {
        "beat_scheduler": "redbeat.RedBeatScheduler", "redbeat_redis_url": server.url(0), "beat_max_loop_interval": 1,
        "beat_schedule": {"tick": {"task": "tasks.add", "schedule": 0.5, "args": [2, 2], "options": {"queue": "downq"}}},
    }), logfile)
    try:
        assert popped(broker_redis, "downq") is not None, read(logfile)
        server.proc.terminate()
        server.proc.wait(10)
        assert eventually(lambda: "beat: RedBeat's schedule: " in read(logfile), timeout=10), read(logfile)
        time.sleep(2.5)
        assert read(logfile).count("beat: RedBeat's schedule: ") == 1
        broker_redis.delete("downq")
        server = RedisProcess(port=server.port).start()
        assert eventually(lambda: "beat_schedule is stored in it again" in read(logfile), timeout=15), read(logfile)
        # Its lock went with the old Redis: the beat stood by and took the new one.
        log = read(logfile)
        assert "beat: The lock `redbeat::lock` is no longer this beat's" in log and log.count("beat: Acquired lock") == 2
        assert popped(broker_redis, "downq") is not None, read(logfile)
        import redis
        fresh = redis.Redis.from_url(server.url(0))
        assert fresh.sismember("redbeat::statics", "tick") and fresh.exists("redbeat::lock")
        assert json.loads(fresh.hget("redbeat:tick", "meta"))["total_run_count"] >= 1
    finally:
        output = stop(beat)
        server.stop()
    assert beat.returncode == 0, output


def test_a_run_the_broker_missed_is_sent_once_it_is_back(redis_urls, tmp_path):
    """The broker stopped when a RedBeat entry falls due: the run is recorded, logged as not sent, and sent once a
    broker answers again (RedBeat's beat logs it and gives it up)."""
    import redis
    broker = RedisProcess().start()
    logfile = tmp_path / "beat.log"
    beat = subprocess.Popen([str(WORKER_BINARY), "beat", "--broker", broker.url(1), "-l", "info", "-f", str(logfile),
                             "--config", write_config(tmp_path, "beat.json", {
                                 "beat_scheduler": "redbeat.RedBeatScheduler", "redbeat_redis_url": redis_urls["broker"],
                                 "beat_max_loop_interval": 1,
                                 "beat_schedule": {"hourly": {"task": "tasks.add", "schedule": 3600, "args": [3, 3],
                                                              "options": {"queue": "lateq"}}}})],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert eventually(lambda: "beat: Acquired lock" in read(logfile), timeout=10), read(logfile)
        broker.proc.terminate()
        broker.proc.wait(10)
        # Make the entry due now, as if its hour had passed.
        redis.Redis.from_url(redis_urls["broker"]).hdel("redbeat:hourly", "meta")
        redis.Redis.from_url(redis_urls["broker"]).zadd("redbeat::schedule", {"redbeat:hourly": 1})
        assert eventually(lambda: "Couldn't apply scheduled task hourly" in read(logfile), timeout=15), read(logfile)
        broker = RedisProcess(port=broker.port).start()
        assert eventually(lambda: "Scheduler: Sent task hourly (tasks.add), late: the broker answers again"
                          in read(logfile), timeout=15), read(logfile)
        assert redis.Redis.from_url(broker.url(1)).llen("lateq") == 1
        assert read(logfile).count("Scheduler: Sending due task hourly") == 1
    finally:
        output = stop(beat)
        broker.stop()
    assert beat.returncode == 0, output


@pytest.mark.parametrize("settings, message", [
    ({"beat_schedule": {"sun": {"task": "tasks.add", "schedule": {"solar": ["sunset", 48.85, 2.35]}}}},
     "beat_schedule: entry 'sun': RedBeat cannot store a solar schedule"),
    ({"redbeat_lock_timeout": 0}, "setting 'redbeat_lock_timeout' must be a number of seconds, 1 or more"),
    ({"redbeat_redis_url": "http://example.com"}, "redbeat_redis_url: "),
    ({"redbeat_key_prefix": ""}, "setting 'redbeat_key_prefix' must be a key prefix"),
    ({"beat_scheduler": "celery.beat:PersistentScheduler",
      "beat_schedule": {"off": {"task": "tasks.add", "schedule": 1, "enabled": False}}},
     "beat_schedule: entry 'off': enabled is RedBeat's"),
])
def test_redbeat_settings_it_cannot_use_stop_beat(redis_urls, tmp_path, settings, message):
    config = write_config(tmp_path, "beat.json", {"beat_scheduler": "redbeat.RedBeatScheduler", **settings})
    result = subprocess.run([str(WORKER_BINARY), "beat", "--broker", redis_urls["broker"], "--config", config],
                            capture_output=True, text=True, timeout=20)
    assert result.returncode != 0
    assert message in result.stderr + result.stdout
