"""Beat, embedded in the worker (`-B`) or on its own (`swift-celery-worker beat`): the periodic tasks of
`beat_schedule`, sent as Celery's beat sends them, run by Swift and Python workers, with each entry's last run kept in
the schedule file across restarts, and one beat sending however many run."""
import base64
import json
import signal
import socket
import subprocess
import sys
import time

import celery
import redis
from celery.beat import Scheduler, ScheduleEntry

from conftest import WORKER_BINARY, eventually
from redisproc import RedisProcess


def popped(broker_redis, queue, timeout=10.0):
    """The first message that arrives on `queue`, decoded, or None."""
    reply = broker_redis.brpop([queue], timeout=timeout)
    return json.loads(reply[1]) if reply else None


def body(message):
    return json.loads(base64.b64decode(message["body"]))


def write_schedule(path, entries, tz="UTC"):
    """A schedule file as the Swift worker writes it: each entry's last run and run count."""
    path.write_text(json.dumps({"swift_celery_beat": 1, "tz": tz, "utc_enabled": True, "entries": {
        name: {"last_run_at": last_run_at, "total_run_count": count} for name, (last_run_at, count) in entries.items()}}))


def write_config(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_beat_sends_what_celerys_beat_sends(start_worker, make_app, broker_redis, tmp_path):
    """The same entry, sent by Python's own Scheduler and by the Swift worker's beat: the same headers (with
    `celery_beat_task`), properties and body."""
    app = make_app()
    options = {"queue": "pybeat", "priority": 6, "expires": 30}
    entry = ScheduleEntry(name="adder", task="tasks.add", schedule=1.0, args=(2, 3), kwargs={"z": 1},
                          options=options, app=app)
    Scheduler(app, lazy=True).apply_async(entry, advance=False)
    theirs = popped(broker_redis, "pybeat\x06\x166")
    assert theirs is not None
    # Celery 5.7 marks what beat sends; the Swift worker always does (an extra header older workers ignore).
    if celery.VERSION < (5, 7):
        assert "celery_beat_task" not in theirs["headers"]
        theirs["headers"]["celery_beat_task"] = True
    assert theirs["headers"]["celery_beat_task"] is True

    config = write_config(tmp_path, "beat.yaml", """
beat_schedule:
  adder:
    task: tasks.add
    schedule: 1.0
    args: [2, 3]
    kwargs: {z: 1}
    options: {queue: swiftbeat, priority: 6, expires: 30}
""")
    worker = start_worker("--config", config, "-B", "-s", str(tmp_path / "schedule"), "-Q", "elsewhere")
    ours = popped(broker_redis, "swiftbeat\x06\x166")
    assert ours is not None, worker.log
    assert "beat: Starting..." in worker.log
    assert "Scheduler: Sending due task adder (tasks.add)" in worker.log

    assert list(ours["headers"]) == list(theirs["headers"])
    for key in ("lang", "task", "shadow", "eta", "group", "group_index", "retries", "timelimit", "parent_id",
                "argsrepr", "kwargsrepr", "replaced_task_nesting", "stamped_headers", "stamps", "celery_beat_task"):
        assert ours["headers"][key] == theirs["headers"][key], key
    assert ours["headers"]["argsrepr"] == "[2, 3]"
    assert ours["headers"]["root_id"] == ours["headers"]["id"]
    assert list(ours["properties"]) == list(theirs["properties"])
    assert ours["properties"]["expiration"] == theirs["properties"]["expiration"] == "30000"
    assert ours["properties"]["priority"] == theirs["properties"]["priority"] == 6
    assert ours["properties"]["delivery_info"]["routing_key"] == "swiftbeat"
    assert (ours["content-type"], ours["content-encoding"]) == (theirs["content-type"], theirs["content-encoding"])
    assert body(ours) == body(theirs)
    # Celery's binding of the queue, as its producer declares it.
    assert broker_redis.sismember("_kombu.binding.swiftbeat", "swiftbeat\x06\x16\x06\x16swiftbeat")


def test_beat_tasks_run_on_python_and_swift_workers(start_worker, start_python_worker, backend_redis, tmp_path):
    config = write_config(tmp_path, "beat.yaml", """
beat_schedule:
  to-python:
    task: tasks.whoami
    schedule: 0.5
    options: {queue: pyq}
  to-swift:
    task: tasks.whoami
    schedule: {timedelta: {milliseconds: 500}}
    options: {queue: swiftq}
""")
    start_python_worker("-Q", "pyq")
    swift = start_worker("--config", config, "-B", "-s", str(tmp_path / "schedule"), "-Q", "swiftq")

    def outcomes():
        values = [json.loads(backend_redis.get(key)) for key in backend_redis.keys("celery-task-meta-*")]
        return [(v["status"], v["result"]) for v in values]

    assert eventually(lambda: outcomes().count(("SUCCESS", "python")) >= 3 and
                      outcomes().count(("SUCCESS", "swift")) >= 3, timeout=15), (outcomes(), swift.log)
    assert swift.log.count("Scheduler: Sending due task to-python (tasks.whoami)") >= 3
    assert swift.stop() == 0
    assert "beat: Shutting down..." in swift.log
    saved = json.loads((tmp_path / "schedule").read_text())
    assert saved["tz"] == "UTC" and saved["utc_enabled"] is True
    assert saved["entries"]["to-python"]["total_run_count"] >= 3
    sent = swift.log.count("Scheduler: Sending due task to-swift")
    assert saved["entries"]["to-swift"]["total_run_count"] == sent


def test_schedule_file_keeps_last_runs_across_a_crash(start_worker, broker_redis, tmp_path):
    """A run missed while the worker was down is sent once at start; an entry new to the file counts from start; the
    file is written after each send, so a killed worker does not send again what it sent."""
    schedule = tmp_path / "celerybeat-schedule"
    now = time.time()
    write_schedule(schedule, {"hourly": (now - 7200, 4), "minutely": (now - 130, 1), "gone": (now, 1)})
    config = write_config(tmp_path, "beat.yaml", """
beat_schedule:
  hourly: {task: tasks.noop, schedule: 3600, options: {queue: beatq}}
  minutely: {task: tasks.noop, schedule: {crontab: '* * * * *'}, options: {queue: beatq}}
  daily-new: {task: tasks.noop, schedule: 86400, options: {queue: beatq}}
""")
    worker = start_worker("--config", config, "-B", "--workdir", str(tmp_path), "-Q", "elsewhere")
    worker.wait_for_log("Sending due task minutely")
    worker.wait_for_log("Sending due task hourly")
    assert eventually(lambda: broker_redis.llen("beatq") == 2)
    # Written once both were sent.
    assert eventually(lambda: json.loads(schedule.read_text())["entries"]["hourly"]["total_run_count"] == 5)
    saved = json.loads(schedule.read_text())
    assert set(saved["entries"]) == {"hourly", "minutely", "daily-new"}
    assert saved["entries"]["minutely"]["total_run_count"] == 2
    assert saved["entries"]["daily-new"]["total_run_count"] == 0
    assert worker.stop(9) == -9

    again = start_worker("--config", config, "-B", "--workdir", str(tmp_path), "-Q", "elsewhere")
    # The killed beat's lock outlives it by up to 10 s; then this one takes over, from the runs the first saved.
    again.wait_for_log("standing by")
    again.wait_for_log("beat: Taking the schedule over (swift-celery-beat.lock)", timeout=25)
    time.sleep(1.5)
    assert "Sending due task hourly" not in again.log
    assert "Sending due task daily-new" not in again.log
    assert again.stop() == 0
    assert json.loads(schedule.read_text())["entries"]["hourly"]["total_run_count"] == 5


def test_a_file_that_is_not_the_workers_is_replaced(start_worker, tmp_path):
    schedule = tmp_path / "schedule"
    schedule.write_bytes(b"\x00\x06\x15a python shelve file")
    config = write_config(tmp_path, "beat.yaml", "beat_schedule: {often: {task: tasks.noop, schedule: 0.3}}\n")
    worker = start_worker("--config", config, "-B", "-s", str(schedule), "-Q", "elsewhere")
    worker.wait_for_log("Sending due task often")
    assert "is not the Swift worker's JSON schedule (a Python beat's shelve file cannot be read); starting afresh" \
        in worker.log
    assert eventually(lambda: json.loads(schedule.read_text())["entries"]["often"]["total_run_count"] >= 1)
    assert worker.stop() == 0


def test_changing_the_time_zone_starts_the_schedule_afresh(start_worker, broker_redis, tmp_path):
    schedule = tmp_path / "schedule"
    write_schedule(schedule, {"hourly": (time.time() - 7200, 2)}, tz="Europe/Paris")
    config = write_config(tmp_path, "beat.yaml",
                          "beat_schedule: {hourly: {task: tasks.noop, schedule: 3600, options: {queue: beatq}}}\n")
    worker = start_worker("--config", config, "-B", "-s", str(schedule), "-Q", "elsewhere")
    worker.wait_for_log("Reset: Timezone changed from 'Europe/Paris' to 'UTC'")
    time.sleep(1)
    assert "Sending due task hourly" not in worker.log
    assert broker_redis.llen("beatq") == 0
    assert worker.stop() == 0
    assert json.loads(schedule.read_text())["entries"]["hourly"]["total_run_count"] == 0


def test_beat_settings_celery_refuses_stop_the_worker(redis_urls, tmp_path):
    cases = [
        ("beat_schedule: {bad: {task: tasks.noop, schedule: {crontab: {minute: '*/'}}}}\n", [],
         "entry 'bad': crontab: empty filter"),
        ("beat_schedule: {bad: {task: tasks.noop, schedule: {crontab: {day_of_month: 30, month_of_year: 2}}}}\n", [],
         "Invalid crontab: day_of_month '30' never occurs in month_of_year '2'."),
        ("beat_schedule: {bad: {task: tasks.noop, schedule: 5, relative: maybe}}\n", [], "relative must be true or false"),
        ("beat_schedule: {bad: {task: tasks.noop, schedule: {solar: [sundown, 0, 0]}}}\n", [],
         "entry 'bad': solar: Argument event \"sundown\" is invalid, must be one of dawn_astronomical, dawn_civil,"),
        ("beat_schedule: {bad: {task: tasks.noop, schedule: {solar: {event: sunset, lat: -91, lon: 0}}}}\n", [],
         "Argument latitude -91 is invalid, must be between -90 and 90."),
        ("beat_schedule: {}\n", ["--scheduler", "django_celery_beat.schedulers:DatabaseScheduler"],
         "run Python's `celery beat` for another scheduler"),
    ]
    for text, extra, message in cases:
        config = write_config(tmp_path, "bad.yaml", text)
        run = subprocess.run([str(WORKER_BINARY), "--broker", redis_urls["broker"], "-B", "--config", config, *extra],
                             capture_output=True, text=True, timeout=30)
        assert run.returncode == 64, (text, run.stderr)
        assert message in run.stderr, (text, run.stderr)


def test_a_relative_interval_is_sent(start_worker, broker_redis, tmp_path):
    """`relative: true` (Celery's `schedule(run_every, relative=True)`) is read and the entry sent on its interval;
    the rounding to the clock's boundaries is checked against Celery 5.7 by the golden fixtures of the unit tests."""
    config = write_config(tmp_path, "relative.yaml",
                          "beat_schedule: {tick: {task: tasks.noop, schedule: 1, relative: true, options: {queue: relq}}}\n")
    worker = start_worker("--config", config, "-B", "-s", str(tmp_path / "schedule"), "-Q", "elsewhere", "-l", "debug")
    sent = [popped(broker_redis, "relq") for _ in range(3)]
    assert all(sent), worker.log
    assert worker.log.count("Scheduler: Sending due task tick (tasks.noop)") >= 3
    # The demo's receivers of beat_init and beat_embedded_init (logged at DEBUG), in Celery's order, named by the node.
    init = worker.log.index("beat_init: celery@")
    assert worker.log.index("beat: Starting...") < init < worker.log.index("beat_embedded_init: celery@"), worker.log


def test_a_solar_entry_is_sent_when_celerys_solar_says(start_worker, make_app, broker_redis, tmp_path):
    """`{solar: [solar_noon, lat, lon]}` (Celery's `solar`), at a longitude where the Sun crosses the meridian a few
    seconds after the worker starts: sent then, and not before, as Celery's own `solar` over PyEphem times it. The
    times of every event, polar nights included, are checked against Celery 5.7 by the unit tests' golden fixtures."""
    import ephem
    from celery.schedules import solar

    # The longitude whose meridian the Sun crosses 8 s from now: where the local sidereal time is the Sun's right
    # ascension.
    observer = ephem.Observer()
    observer.date = ephem.Date(ephem.now() + 8 * ephem.second)
    sun = ephem.Sun(observer)
    longitude = round((float(sun.g_ra - observer.sidereal_time()) * 180 / ephem.pi + 180) % 360 - 180, 4)
    schedule = solar("solar_noon", 48.85, longitude, app=make_app())
    noon = time.time() + schedule.remaining_estimate(schedule.now()).total_seconds()
    assert 3 < noon - time.time() < 15

    config = write_config(tmp_path, "solar.yaml", f"""
beat_schedule:
  noon: {{task: tasks.noop, schedule: {{solar: [solar_noon, 48.85, {longitude}]}}, options: {{queue: solarq}}}}
""")
    worker = start_worker("--config", config, "-B", "-s", str(tmp_path / "schedule"), "-Q", "elsewhere", "-l", "debug")
    # Logged by beat's first tick, just after the worker logs that it is ready.
    worker.wait_for_log(f"<solar: solar_noon at latitude 48.85, longitude: {longitude}>", timeout=3)
    message = None
    while message is None and time.time() < noon + 10:
        message = popped(broker_redis, "solarq", timeout=1)
    arrived = time.time()
    assert message is not None, worker.log
    assert message["headers"]["task"] == "tasks.noop"
    # Not before Celery's time (the two agree within half a second), and soon after it.
    print("solar noon: sent", arrived - noon, "s after Celery's time")
    assert noon - 0.5 < arrived < noon + 2, (arrived - noon, worker.log)
    assert worker.log.count("Scheduler: Sending due task noon (tasks.noop)") == 1


def test_without_dash_b_the_schedule_is_read_and_nothing_is_sent(start_worker, broker_redis, tmp_path):
    config = write_config(tmp_path, "beat.yaml",
                          "beat_schedule: {often: {task: tasks.noop, schedule: 0.2, options: {queue: beatq}}}\n")
    worker = start_worker("--config", config, "-Q", "elsewhere")
    time.sleep(1)
    assert "beat: Starting" not in worker.log
    assert broker_redis.llen("beatq") == 0
    assert not (tmp_path / "celerybeat-schedule").exists()
    assert worker.stop() == 0


def test_inspect_conf_and_node_name_expansion(start_worker, make_app, tmp_path):
    config = write_config(tmp_path, "beat.yaml", "beat_schedule: {often: {task: tasks.noop, schedule: 60}}\n"
                                                 "beat_max_loop_interval: 7\n")
    node = f"beater@{socket.gethostname()}"
    worker = start_worker("--config", config, "-B", "-n", node, "-s", str(tmp_path / "%n-schedule"), "-Q", "elsewhere",
                          "-l", "debug")
    worker.wait_for_log("beat: Ticking with max interval->7.00 seconds")
    assert eventually(lambda: (tmp_path / "beater-schedule").exists())
    conf = make_app().control.inspect(timeout=2, destination=[node]).conf()[node]
    assert conf["beat_schedule_filename"] == str(tmp_path / "beater-schedule")
    assert conf["beat_max_loop_interval"] == 7
    assert worker.stop() == 0


def test_a_run_the_broker_missed_is_sent_once_it_is_back(start_worker, tmp_path):
    """Celery's beat gives up a run it cannot send; the Swift worker's tries it again every second until it is sent
    (or the entry is due again). The hourly entry here is due 8 s after start, while Redis is away."""
    server = RedisProcess().start()
    try:
        schedule = tmp_path / "schedule"
        write_schedule(schedule, {"hourly": (time.time() - 3592, 1)})  # due once the worker runs and Redis is away
        config = write_config(tmp_path, "beat.yaml",
                              "beat_schedule: {hourly: {task: tasks.noop, schedule: 3600, options: {queue: beatq}}}\n")
        worker = start_worker("--config", config, "-B", "-s", str(schedule), "-Q", "elsewhere",
                              broker=server.url(1), backend=server.url(0))
        server.stop()
        worker.wait_for_log("Message Error: Couldn't apply scheduled task hourly:", timeout=20)
        assert "trying again every second until it is sent or due again" in worker.log
        server = RedisProcess(port=server.port).start()
        worker.wait_for_log("Scheduler: Sent task hourly (tasks.noop), late: the broker answers again", timeout=15)
        client = redis.Redis(port=server.port, db=1)
        assert eventually(lambda: client.llen("beatq") == 1)
        time.sleep(1.5)
        assert client.llen("beatq") == 1
        assert worker.log.count("Scheduler: Sending due task hourly") == 1
        assert json.loads(schedule.read_text())["entries"]["hourly"]["total_run_count"] == 2
        assert worker.stop() == 0
    finally:
        server.stop()


def test_one_beat_sends_however_many_workers_run_dash_b(start_worker, broker_redis, tmp_path):
    """Two workers started with -B and one schedule (replicas): one sends, the other stands by and takes over when
    the first stops, going on from the last runs the first kept in Redis. Two Python beats would both send."""
    config = write_config(tmp_path, "beat.yaml",
                          "beat_schedule: {often: {task: tasks.noop, schedule: 0.5, options: {queue: beatq}}}\n")
    first = start_worker("--config", config, "-B", "-s", str(tmp_path / "first"), "-Q", "elsewhere")
    first.wait_for_log("Sending due task often", count=2)
    second = start_worker("--config", config, "-B", "-s", str(tmp_path / "second"), "-Q", "elsewhere")
    second.wait_for_log("sends this schedule (swift-celery-beat.lock); standing by")
    assert f"beat: {first_node(first)}" in second.log
    time.sleep(1.5)
    assert "Sending due task" not in second.log
    sent_by_first = first.log.count("Sending due task often")
    assert eventually(lambda: broker_redis.llen("beatq") >= sent_by_first)

    assert first.stop() == 0
    sent_by_first = first.log.count("Sending due task often")
    runs = json.loads(broker_redis.hget("swift-celery-beat.runs", "often"))
    assert runs["total_run_count"] == sent_by_first
    second.wait_for_log("beat: Taking the schedule over (swift-celery-beat.lock)", timeout=10)
    second.wait_for_log("Sending due task often", count=2)
    assert eventually(lambda: broker_redis.llen("beatq") == sent_by_first + second.log.count("Sending due task often"))
    assert second.stop() == 0
    # The count goes on from the first beat's.
    saved = json.loads((tmp_path / "second").read_text())["entries"]["often"]
    assert saved["total_run_count"] == sent_by_first + second.log.count("Sending due task often")


def first_node(worker):
    """The node name in a worker's `ready.` line."""
    line = next(line for line in worker.log.splitlines() if line.endswith(" ready."))
    return line.split("] ")[-1].removesuffix(" ready.")


def test_without_the_lock_every_beat_sends(start_worker, broker_redis, tmp_path):
    config = write_config(tmp_path, "beat.yaml", "swift_beat_lock: false\n"
                          "beat_schedule: {often: {task: tasks.noop, schedule: 0.5, options: {queue: beatq}}}\n")
    first = start_worker("--config", config, "-B", "-s", str(tmp_path / "first"), "-Q", "elsewhere")
    second = start_worker("--config", config, "-B", "-s", str(tmp_path / "second"), "-Q", "elsewhere")
    first.wait_for_log("Sending due task often", count=2)
    second.wait_for_log("Sending due task often", count=2)
    assert not broker_redis.exists("swift-celery-beat.lock")


def test_standalone_beat_as_celery_beat(start_python_worker, start_worker, backend_redis, broker_redis, tmp_path,
                                        redis_urls):
    """`swift-celery-worker beat`, as `celery beat`: its banner, tasks that a Python worker runs, SIGTERM writing the
    schedule file and exiting 0; and beside a worker started with -B on the same schedule, one of them sends."""
    config = write_config(tmp_path, "beat.yaml", """
beat_schedule:
  to-python: {task: tasks.whoami, schedule: 0.5, options: {queue: pyq}}
""")
    start_python_worker("-Q", "pyq")
    schedule = tmp_path / "standalone"
    logfile = tmp_path / "beat.log"
    beat = subprocess.Popen([str(WORKER_BINARY), "beat", "--broker", redis_urls["broker"], "--config", config,
                             "-s", str(schedule), "-l", "info", "-f", str(logfile), "--max-interval", "7.5"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def python_ran():
            values = [json.loads(backend_redis.get(key)) for key in backend_redis.keys("celery-task-meta-*")]
            return sum(1 for v in values if v["result"] == "python")

        assert eventually(lambda: python_ran() >= 2, timeout=15), logfile.read_text()
        # A worker with -B on the same schedule stands by while the standalone beat sends.
        worker = start_worker("--config", config, "-B", "-s", str(tmp_path / "worker"), "-Q", "elsewhere")
        worker.wait_for_log("(swift-celery-beat.lock); standing by")
        assert "celerybeat@" in worker.log
        beat.send_signal(signal.SIGTERM)
        output, _ = beat.communicate(timeout=15)
        assert beat.returncode == 0, output
        worker.wait_for_log("beat: Taking the schedule over", timeout=10)
    finally:
        if beat.poll() is None:
            beat.kill()
            beat.wait()
    lines = output.splitlines()
    assert lines[0] == "celery beat v0.1.0 (swift-celery-worker) is starting."
    assert lines[1:4] == ["__    -    ... __   -        _", lines[2], "Configuration ->"]
    assert lines[2].startswith("LocalTime -> ")
    broker = redis_urls["broker"].replace("redis://", "redis://:**@")  # as kombu 5.7 shows it
    assert lines[4:10] == [f"    . broker -> {broker}", "    . loader -> swift-celery-worker",
                           "    . scheduler -> celery.beat.PersistentScheduler", f"    . db -> {schedule}",
                           f"    . logfile -> {logfile}@%INFO", "    . maxinterval -> 7.50 seconds (7.5s)"]
    log = logfile.read_text()
    assert "beat: Starting..." in log and "beat: Shutting down..." in log
    sent = log.count("Scheduler: Sending due task to-python (tasks.whoami)")
    assert json.loads(schedule.read_text())["entries"]["to-python"]["total_run_count"] == sent >= 2


def test_standalone_beat_detaches_as_celery_beat(broker_redis, redis_urls):
    """`beat --detach` with `--workdir`, as `celery beat --detach`: the command exits 0 at once and beat goes on in the
    background. The pid file and the mask come from `beat_pidfile` and `beat_umask` (Celery 5.4's daemon settings),
    `-f` wins over `beat_logfile`; started as root with `beat_uid: nobody`, beat runs as nobody. A second beat with
    the same pid file refuses before detaching; SIGTERM stops beat, which writes its schedule and drops the pid file."""
    import os
    import pwd
    import shutil
    import tempfile
    from pathlib import Path

    from conftest import assert_detached

    # The background process reads its config file again, as nobody when started as root.
    workdir = Path(tempfile.mkdtemp(prefix="celery-beat-"))
    workdir.chmod(0o777)
    as_root = os.geteuid() == 0
    try:
        (workdir / "beat.yaml").write_text(
            "beat_schedule: {daemon: {task: tasks.noop, schedule: 0.5, options: {queue: detachedbeat}}}\n"
            "beat_pidfile: beat.pid\nbeat_umask: '027'\nbeat_logfile: unused.log\n"
            + ("beat_uid: nobody\n" if as_root else ""))
        command = [str(WORKER_BINARY), "beat", "--detach", "--workdir", str(workdir), "--config", "beat.yaml",
                   "--broker", redis_urls["broker"], "-s", "schedule", "-l", "debug", "-f", "beat.log"]
        started = subprocess.run(command, capture_output=True, text=True, timeout=10)
        assert started.returncode == 0, started.stderr
        assert eventually(lambda: (workdir / "beat.pid").exists())
        pid = int((workdir / "beat.pid").read_text())
        try:
            assert_detached(pid, workdir, "0027")
            if as_root:
                status = Path(f"/proc/{pid}/status").read_text()
                assert f"Uid:\t{pwd.getpwnam('nobody').pw_uid}\t" in status, status
            assert popped(broker_redis, "detachedbeat") is not None
            log = workdir / "beat.log"
            assert "Scheduler: Sending due task daemon (tasks.noop)" in log.read_text()
            # The program's beat_init receiver (the demo's, at DEBUG); no beat_embedded_init outside a worker.
            assert "beat_init: celerybeat@" in log.read_text() and "beat_embedded_init" not in log.read_text()
            assert oct(log.stat().st_mode & 0o777) == oct(0o640) and not (workdir / "unused.log").exists()
            again = subprocess.run(command, capture_output=True, text=True, timeout=10)
            assert again.returncode == 73 and "already exists" in again.stderr, again.stderr
        finally:
            os.kill(pid, signal.SIGTERM)
        assert eventually(lambda: not Path(f"/proc/{pid}").exists(), 10)
        assert not (workdir / "beat.pid").exists()
        assert "beat: Shutting down..." in (workdir / "beat.log").read_text()
        missing = subprocess.run([*command, "--executable", str(workdir / "missing")], capture_output=True, text=True,
                                 timeout=10)
        assert missing.returncode == 1 and "Cannot run" in missing.stderr, missing.stderr
        assert json.loads((workdir / "schedule").read_text())["entries"]["daemon"]["total_run_count"] >= 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_standalone_beat_refuses_bad_flags(redis_urls, tmp_path):
    config = write_config(tmp_path, "beat.yaml", "beat_schedule: {a: {task: tasks.noop, schedule: {crontab: '* *'}}}\n")
    for args, message in [(["--scheduler", "django_celery_beat.schedulers:DatabaseScheduler"],
                           "run Python's `celery beat` for another scheduler"),
                          (["-l", "LOUD"], "Invalid log level 'LOUD'"),
                          (["--max-interval", "0"], "--max-interval must be a number of seconds above 0"),
                          (["--config", config], "entry 'a': crontab: a crontab string has five fields")]:
        run = subprocess.run([str(WORKER_BINARY), "beat", "--broker", redis_urls["broker"], *args],
                             capture_output=True, text=True, timeout=30)
        assert run.returncode == 64, (args, run.stderr)
        assert message in run.stderr, (args, run.stderr)


def test_beat_answers_ping_with_remote_control(make_app, redis_urls, tmp_path):
    """Celery 5.7's `--enable-remote-control`: beat answers `ping` as its own node (and nothing else), as Celery
    5.7's beat does beside it; with `beat_remote_control_max_tick_age` passed since beat last looked at its
    schedule, it stays silent."""
    config = write_config(tmp_path, "beat.yaml", "swift_beat_lock: false\n"
                          "beat_schedule: {hourly: {task: tasks.noop, schedule: 3600, options: {queue: beatq}}}\n")
    host = socket.gethostname()
    started = []

    def start(*args, name):
        logfile = tmp_path / f"{name}.log"
        proc = subprocess.Popen([*args, "-l", "info", "-f", str(logfile)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
        started.append(proc)
        return proc, logfile

    try:
        ours, our_log = start(str(WORKER_BINARY), "beat", "--broker", redis_urls["broker"], "--config", config,
                              "-s", str(tmp_path / "ours"), "--enable-remote-control", "-n", "swiftbeat@%h",
                              name="ours")
        app = make_app()
        assert eventually(lambda: "beat pidbox: Connected to" in (our_log.read_text() if our_log.exists() else ""))
        if celery.VERSION >= (5, 7):
            from pathlib import Path
            python_beat = Path(sys.executable).with_name("celery")
            theirs, their_log = start(str(python_beat), "-b", redis_urls["broker"], "beat", "--enable-remote-control",
                                      "-n", "pybeat@%h", "-s", str(tmp_path / "theirs"), name="theirs")
            assert eventually(lambda: "beat pidbox: Connected to" in (their_log.read_text()
                                                                      if their_log.exists() else ""), timeout=15)
        # Python's beat logs "Connected to" before its subscription is in place: pinged until it can answer.
        expected = {f"swiftbeat@{host}"} | ({f"pybeat@{host}"} if celery.VERSION >= (5, 7) else set())
        nodes = {}

        def all_answer():
            nodes.clear()
            nodes.update({node: reply for answer in app.control.ping(timeout=1.5) for node, reply in answer.items()})
            return expected <= set(nodes)

        assert eventually(all_answer, timeout=10), nodes
        assert nodes[f"swiftbeat@{host}"] == {"ok": "pong"}
        if celery.VERSION >= (5, 7):
            assert nodes[f"pybeat@{host}"] == nodes[f"swiftbeat@{host}"]
        # Another command is not answered, by either.
        assert app.control.inspect(timeout=1, destination=[f"swiftbeat@{host}"]).active() is None
        ours.send_signal(signal.SIGTERM)
        output, _ = ours.communicate(timeout=15)
        assert ours.returncode == 0
        assert f"    . remote control -> swiftbeat@{host}" in output.splitlines()
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    # Stalled: no look at the schedule for longer than the max tick age (here 1 s, beside a 300 s sleep).
    stalled_config = write_config(tmp_path, "stalled.yaml", "swift_beat_lock: false\nbeat_remote_control_max_tick_age: 1\n"
                                  "beat_schedule: {hourly: {task: tasks.noop, schedule: 3600}}\n")
    stalled, stalled_log = start(str(WORKER_BINARY), "beat", "--broker", redis_urls["broker"], "--config",
                                 stalled_config, "-s", str(tmp_path / "stalled"), "--enable-remote-control",
                                 name="stalled")
    try:
        assert eventually(lambda: "beat pidbox: Connected to" in (stalled_log.read_text()
                                                                  if stalled_log.exists() else ""))
        time.sleep(1.5)
        assert make_app().control.ping(destination=[f"celerybeat@{host}"], timeout=1) == []
        assert "beat pidbox: not answering ping, the scheduler has not ticked for" in stalled_log.read_text()
        assert "(over the 1.0s limit)" in stalled_log.read_text()
    finally:
        stalled.kill()
        stalled.wait()
