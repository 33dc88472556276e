"""Writes Tests/Fixtures/beat-schedules.json: what Celery's own schedules answer, for the Swift beat's unit tests.

For each case, Celery's `crontab` (or `schedule`, also `relative=True`) is asked, with its `nowfun` pinned to the case's `now`, for
`remaining_estimate(last_run_at)` and `is_due(last_run_at)` in the app's time zone; crontab specs that Celery refuses
are kept with its error. Run with the venv's Python: `.venv/bin/python Interop/capture_schedules.py`. No Redis is
needed. The cases are drawn from a seeded generator, so a rerun with the same Celery writes the same file.
"""

import json
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

import celery
from celery import Celery
from celery.schedules import crontab, schedule

OUT = Path(__file__).resolve().parent.parent / "Tests" / "Fixtures" / "beat-schedules.json"

SPECS = [
    {},
    {"minute": "*/15"},
    {"minute": "0", "hour": "4"},
    {"minute": "0,30", "hour": "9-17", "day_of_week": "mon-fri"},
    {"minute": "50-10"},
    {"minute": "*/7", "hour": "*/5"},
    {"minute": "0", "hour": "0", "day_of_week": "sun"},
    {"minute": "15", "hour": "23", "day_of_week": "sat,sun"},
    {"minute": "0", "hour": "12", "day_of_month": "1"},
    {"minute": "0", "hour": "0", "day_of_month": "31"},
    {"minute": "30", "hour": "6", "day_of_month": "29", "month_of_year": "2"},
    {"minute": "0", "hour": "8", "day_of_month": "1-31/3", "month_of_year": "2-12/2"},
    {"minute": "0", "hour": "8", "day_of_month": "13", "day_of_week": "fri"},
    {"minute": "45", "hour": "2", "month_of_year": "jan,jul"},
    {"minute": "5", "hour": "22-3"},
    {"minute": "0-59/20", "hour": "1", "day_of_week": "1"},
    {"minute": "0", "hour": "2,3"},
    {"minute": "30", "hour": "2"},
    {"minute": "59", "hour": "23", "day_of_month": "28-31"},
    {"minute": "10", "day_of_week": "tuesday"},
]

INVALID = [
    {"minute": "60"},
    {"hour": "24"},
    {"day_of_month": "0"},
    {"month_of_year": "13"},
    {"day_of_week": "7"},
    {"minute": "*/"},
    {"minute": "1-5/"},
    {"minute": "a-b"},
    {"minute": "1,,2"},
    {"day_of_month": "30", "month_of_year": "2"},
    {"minute": "-5"},
    {"day_of_week": "funday"},
]

ZONES = ["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata"]


def app_for(zone):
    app = Celery("schedules", set_as_current=False)
    app.conf.timezone = zone
    app.conf.enable_utc = True
    return app


def main():
    rng = random.Random(20261206)
    start = datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp()
    cases = []
    for spec in SPECS:
        for _ in range(12):
            zone = rng.choice(ZONES)
            last = start + rng.uniform(0, 2 * 365 * 86400)
            # Sometimes on the minute, as beat's own runs of a crontab usually are.
            if rng.random() < 0.3:
                last = last - last % 60
            now = last + rng.choice([rng.uniform(0, 120), rng.uniform(0, 86400), rng.uniform(0, 40 * 86400)])
            app = app_for(zone)
            now_dt = datetime.fromtimestamp(now, timezone.utc)
            cron = crontab(**spec, nowfun=lambda now_dt=now_dt: now_dt, app=app)
            last_dt = datetime.fromtimestamp(last, timezone.utc)
            remaining = cron.remaining_estimate(last_dt).total_seconds()
            due, next_check = cron.is_due(last_dt)
            cases.append({
                "crontab": spec, "timezone": zone, "last_run_at": last, "now": now,
                "remaining": remaining, "is_due": due, "next": next_check,
            })
    intervals = []
    for _ in range(20):
        every = rng.choice([1, 2.5, 10, 60, 3600, 86400])
        last = start + rng.uniform(0, 365 * 86400)
        now = last + rng.uniform(0, 2 * every)
        now_dt = datetime.fromtimestamp(now, timezone.utc)
        sched = schedule(every, nowfun=lambda now_dt=now_dt: now_dt, app=app_for("UTC"))
        due, next_check = sched.is_due(datetime.fromtimestamp(last, timezone.utc))
        intervals.append({"every": every, "last_run_at": last, "now": now, "is_due": due, "next": next_check})
    relative = relative_cases()
    invalid = []
    for spec in INVALID:
        try:
            crontab(**spec, app=app_for("UTC"))
        except Exception as exc:  # what Celery says
            invalid.append({"crontab": spec, "error": f"{type(exc).__name__}: {exc}"})
        else:
            raise SystemExit(f"Celery accepts {spec}")
    reprs = [{"crontab": spec, "repr": repr(crontab(**spec, app=app_for("UTC")))} for spec in SPECS[:6]]
    OUT.write_text(json.dumps({
        "celery": celery.__version__, "crontab": cases, "interval": intervals, "invalid": invalid, "repr": reprs,
        "relative": relative,
    }, indent=1) + "\n")
    print(f"wrote {len(cases)} crontab cases, {len(intervals)} interval cases, {len(relative)} relative interval cases, "
          f"{len(invalid)} refused specs to {OUT}")


# The changes of the clocks in 2026 the relative cases crowd around (UTC), besides times drawn from the year.
TRANSITIONS = {
    "Europe/Paris": [datetime(2026, 3, 29, 1, tzinfo=timezone.utc), datetime(2026, 10, 25, 1, tzinfo=timezone.utc)],
    "America/New_York": [datetime(2026, 3, 8, 7, tzinfo=timezone.utc), datetime(2026, 11, 1, 6, tzinfo=timezone.utc)],
    "Australia/Lord_Howe": [datetime(2026, 4, 4, 15, tzinfo=timezone.utc), datetime(2026, 10, 3, 15, 30, tzinfo=timezone.utc)],
}


def relative_cases():
    """`schedule(every, relative=True)`: its `is_due(last_run_at)` with `last_run_at` in the app's zone, as beat keeps
    it (Celery 5.7 rounds in that zone's wall-clock time). Lord Howe's clocks change by half an hour."""
    from zoneinfo import ZoneInfo

    rng = random.Random(20261207)  # a generator of its own: the cases above stay as they were
    start = datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp()
    cases = []
    draws = []
    for _ in range(160):
        every = rng.choice([1, 30, 45, 60, 90, 300, 1800, 3600, 5400, 7200, 86400, 2 * 86400])
        zone = rng.choice(ZONES + ["Australia/Lord_Howe"])
        if zone in TRANSITIONS and rng.random() < 0.6:
            last = rng.choice(TRANSITIONS[zone]).timestamp() + rng.uniform(-1.5 * every - 3600, 3600)
        else:
            last = start + rng.uniform(0, 365 * 86400)
        if rng.random() < 0.3:
            last -= last % 60
        draws.append((every, zone, last, last + rng.uniform(0, 1.5 * every + 60)))
    # A grid across each change of the clocks, where a rounded boundary can fall in a skipped or repeated half hour
    # (Lord Howe) or hour, or before the last run.
    for zone, changes in TRANSITIONS.items():
        for change in changes:
            for every in (60, 1800, 3600, 5400):
                for step in range(-5, 4):
                    last = change.timestamp() + step * 900 - every + 7
                    draws.append((every, zone, last, last + every * 0.999))
                    draws.append((every, zone, last, last + every + 1900))
    for every, zone, last, now in draws:
        app = app_for(zone)
        now_dt = datetime.fromtimestamp(now, timezone.utc)
        sched = schedule(every, relative=True, nowfun=lambda now_dt=now_dt: now_dt, app=app)
        last_dt = datetime.fromtimestamp(last, ZoneInfo(zone))
        remaining = sched.remaining_estimate(last_dt).total_seconds()
        due, next_check = sched.is_due(last_dt)
        cases.append({"every": every, "timezone": zone, "last_run_at": last, "now": now, "remaining": remaining,
                      "is_due": due, "next": next_check})
    return cases


if __name__ == "__main__":
    main()
