"""Writes Tests/Fixtures/redbeat-rrules.json: what celery-redbeat's `rrule` schedule (over dateutil) answers, for the
Swift beat's unit tests.

For each case, an rrule is made as RedBeat makes one (`redbeat.schedules.rrule`), encoded with RedBeat's JSON encoder
(as it is kept in Redis), decoded again (so `dtstart` carries its UTC offset alone, as RedBeat reads it back), and asked
for `rrule.after(last_run_at)` and `is_due(last_run_at)` with its `nowfun` pinned to the case's `now`. Run with the
venv's Python: `.venv/bin/python Interop/capture_rrules.py`. No Redis is needed. The cases are drawn from a seeded
generator, so a rerun with the same RedBeat and dateutil writes the same file.
"""

import json
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

from dateutil.rrule import FR, MO, SA, SU, TH, TU, WE
from redbeat.decoder import RedBeatJSONDecoder, RedBeatJSONEncoder
from redbeat.schedules import rrule

OUT = Path(__file__).resolve().parent.parent / "Tests" / "Fixtures" / "redbeat-rrules.json"

RULES = [
    {"freq": "MINUTELY", "interval": 15},
    {"freq": "HOURLY", "interval": 2, "byminute": [0, 30]},
    {"freq": "DAILY", "byhour": [9, 17], "byminute": 0},
    {"freq": "DAILY", "interval": 3},
    {"freq": "WEEKLY", "byweekday": [MO, WE, FR], "byhour": 8, "byminute": 0, "bysecond": 0},
    {"freq": "WEEKLY", "interval": 2, "wkst": SU, "byweekday": [SU, TH]},
    {"freq": "WEEKLY"},
    {"freq": "MONTHLY", "bymonthday": -1, "byhour": 23, "byminute": 59},
    {"freq": "MONTHLY", "bymonthday": [1, 15, 31]},
    {"freq": "MONTHLY", "interval": 5, "byweekday": SA},
    {"freq": "YEARLY", "bymonth": [1, 7], "byweekday": MO, "byhour": 6, "byminute": 0},
    {"freq": "YEARLY"},
    {"freq": "YEARLY", "bymonth": 2, "bymonthday": 29, "byhour": 0, "byminute": 0, "bysecond": 0},
    {"freq": "SECONDLY", "interval": 7, "count": 5},
    {"freq": "DAILY", "count": 3, "byhour": 4},
    {"freq": "HOURLY", "until_days": 2},
    {"freq": "MINUTELY", "bysecond": [0, 30], "byhour": [10, 11]},
    {"freq": "HOURLY", "interval": 5, "byhour": [0, 5, 10]},
    {"freq": "DAILY", "byweekday": [SA, SU], "bymonth": 12},
    {"freq": "MONTHLY", "bymonthday": 31, "bymonth": [2, 4]},
    {"freq": "SECONDLY", "interval": 45, "byminute": [0, 1, 2]},
    {"freq": "MINUTELY", "interval": 90, "count": 40},
    {"freq": "MONTHLY", "bysetpos": -1, "byweekday": FR, "byhour": 18, "byminute": 0},
    {"freq": "MONTHLY", "bysetpos": [1, -1], "byweekday": [MO, TU, WE, TH, FR]},
    {"freq": "DAILY", "bysetpos": [2, -1], "byhour": [6, 12, 18], "byminute": [0, 30]},
    {"freq": "WEEKLY", "bysetpos": 3, "byweekday": [MO, WE, FR, SU], "count": 4},
    {"freq": "HOURLY", "bysetpos": -2, "byminute": [5, 25, 45]},
    {"freq": "YEARLY", "byyearday": [1, 100, -1], "byhour": 12},
    {"freq": "MONTHLY", "byyearday": [32, 60, -300]},
    {"freq": "DAILY", "byyearday": -1, "interval": 2},
    {"freq": "YEARLY", "byweekno": [1, 20, -1], "byweekday": MO, "byhour": 9},
    {"freq": "WEEKLY", "byweekno": 1, "wkst": SU, "byweekday": [MO, TU, WE, TH, FR, SA, SU], "start": "12-27"},
    {"freq": "YEARLY", "byweekno": 53, "byweekday": [TH, FR]},
    {"freq": "DAILY", "byweekno": [52, 53, 1], "byweekday": SU, "start": "12-20"},
    {"freq": "MONTHLY", "byweekno": [-2], "wkst": TH},
    {"freq": "YEARLY", "byeaster": 0, "byhour": 10},
    {"freq": "DAILY", "byeaster": [-2, 1], "byminute": 15},
    {"freq": "WEEKLY", "byeaster": [-100, 39], "start": "01-03"},
    {"freq": "SECONDLY", "interval": 7, "bymonth": 2, "bymonthday": 29},
    {"freq": "MINUTELY", "bymonth": 12, "bymonthday": 25, "byhour": 7},
    {"freq": "HOURLY", "interval": 5, "byweekno": 10, "byweekday": TU},
]

OFFSETS = [0, 60, -300, 330]


def timestamp(value):
    return None if value is None else value.timestamp()


def main():
    generator = random.Random(20261207)
    cases = []
    for spec in RULES:
        for offset in OFFSETS:
            zone = timezone(timedelta(minutes=offset)) if offset else timezone.utc
            start = datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=generator.randrange(0, 400 * 86400))
            if spec["freq"] == "YEARLY" and spec.get("bymonth") is None:
                start = datetime(2024, 2, 29, 13, 7, 5, tzinfo=timezone.utc)
            if "start" in spec:
                month, day = spec["start"].split("-")
                start = start.replace(year=2026, month=int(month), day=int(day))
            if spec.get("bymonthday") == [1, 15, 31]:
                start = start.replace(day=31) if start.month in (1, 3, 5, 7, 8, 10, 12) else start
            kwargs = {key: value for key, value in spec.items() if key not in ("until_days", "start")}
            if "until_days" in spec:
                kwargs["until"] = (start + timedelta(days=spec["until_days"])).astimezone(zone)
            made = rrule(dtstart=start.astimezone(zone), **kwargs)
            encoded = json.loads(json.dumps(made, cls=RedBeatJSONEncoder))
            lasts = [start - timedelta(days=1), start + timedelta(seconds=generator.randrange(0, 3 * 86400)),
                     start + timedelta(seconds=generator.randrange(0, 500 * 86400))]
            for last in lasts:
                now = last + timedelta(seconds=generator.choice([1, 59, 600, 3600, 86400 * 3, 86400 * 40]))
                read = json.loads(json.dumps(encoded), cls=RedBeatJSONDecoder)
                pinned = rrule(**{**{key: getattr(read, key) for key in (
                    "freq", "dtstart", "interval", "wkst", "count", "until", "bysetpos", "bymonth", "bymonthday",
                    "byyearday", "byeaster", "byweekno", "byweekday", "byhour", "byminute", "bysecond")}},
                    nowfun=lambda now=now: now)
                due, rem = pinned.is_due(last)
                cases.append({
                    "rrule": encoded, "last_run_at": last.timestamp(), "now": now.timestamp(),
                    "after": timestamp(pinned.rrule.after(last)), "is_due": due, "next": rem,
                })
    OUT.write_text(json.dumps({"redbeat-rrule": cases}, indent=1) + "\n")
    print(f"{len(cases)} cases written to {OUT}")


if __name__ == "__main__":
    main()
