"""Writes Tests/Fixtures/beat-solar.json: what Celery's own `solar` schedule answers, for the Swift beat's unit tests.

For each case, Celery's `solar(event, lat, lon)` is asked, with its `nowfun` pinned to the case's `now`, for
`remaining_estimate(last_run_at)` (kept as the event's time, `now` plus the remaining) and `is_due(last_run_at)`.
Places run from the equator to beyond the polar circles, where some events do not happen for months. Events Celery
refuses are kept with its error. Run with the venv's Python after `pip install ephem`: `.venv/bin/python
Interop/capture_solar.py`. No Redis is needed. The cases are drawn from a seeded generator.
"""

import json
import random
from datetime import datetime, timezone
from pathlib import Path

import celery
import ephem
from celery import Celery
from celery.schedules import solar

OUT = Path(__file__).resolve().parent.parent / "Tests" / "Fixtures" / "beat-solar.json"

EVENTS = sorted(solar._all_events)
# Paris, Quito, Sydney, Reykjavik, Honolulu, Tromsø, McMurdo, Longyearbyen, and places drawn below.
PLACES = [(48.8566, 2.3522), (-0.1807, -78.4678), (-33.8688, 151.2093), (64.1466, -21.9426), (21.3069, -157.8583),
          (69.6492, 18.9553), (-77.846, 166.676), (78.2232, 15.6267)]
INVALID = [("moonrise", 0, 0), ("sunset", 91, 0), ("sunset", -90.5, 0), ("dawn_civil", 0, 180.25), ("dusk_civil", 0, -181)]


def main():
    rng = random.Random(20261206)
    start = datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp()
    app = Celery("solar", set_as_current=False)
    places = PLACES + [(round(rng.uniform(-66, 66), 4), round(rng.uniform(-180, 180), 4)) for _ in range(16)]
    cases = []
    for event in EVENTS:
        for lat, lon in places:
            for _ in range(3):
                last = start + rng.uniform(0, 2 * 365 * 86400)
                now = last + rng.choice([rng.uniform(0, 3600), rng.uniform(0, 2 * 86400)])
                now_dt = datetime.fromtimestamp(now, timezone.utc)
                sched = solar(event, lat, lon, nowfun=lambda now_dt=now_dt: now_dt, app=app)
                last_dt = datetime.fromtimestamp(last, timezone.utc)
                remaining = sched.remaining_estimate(last_dt).total_seconds()
                due, next_check = sched.is_due(last_dt)
                cases.append({"event": event, "lat": lat, "lon": lon, "last_run_at": last, "now": now,
                              "event_at": now + remaining, "is_due": due, "next": next_check})
    invalid = []
    for event, lat, lon in INVALID:
        try:
            solar(event, lat, lon, app=app)
        except ValueError as exc:
            invalid.append({"event": event, "lat": lat, "lon": lon, "error": str(exc)})
        else:
            raise SystemExit(f"Celery accepts {(event, lat, lon)}")
    reprs = [{"event": e, "lat": la, "lon": lo, "repr": repr(solar(e, la, lo, app=app))}
             for e, la, lo in [("sunset", 48.8566, 2.3522), ("solar_noon", 40, -74), ("dawn_civil", -33.5, 151.0)]]
    OUT.write_text(json.dumps({"celery": celery.__version__, "ephem": ephem.__version__, "solar": cases,
                               "invalid": invalid, "repr": reprs}, indent=1) + "\n")
    print(f"wrote {len(cases)} solar cases, {len(invalid)} refused, to {OUT}")


if __name__ == "__main__":
    main()
