#!/usr/bin/env bash
# The README's Flower screenshot: a loopback redis-server, the Swift worker (swift@<host>, -E) and a Python Celery
# worker (python@<host>) on it, Flower, a few tasks for each worker, then headless Chromium photographs Flower's
# workers page into docs/flower-workers.png. Needs .venv (scripts/setup.sh) and chromium (apt-get install chromium).
#   scripts/flower-screenshot.sh [output.png]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/loopback-redis.sh
root=$PWD
out=${1:-docs/flower-workers.png}
[[ $out == /* ]] || out=$root/$out
python=$root/.venv/bin/python
worker=$root/.build/debug/swift-celery-worker

log() { printf '==> %s\n' "$*" >&2; }

[[ -x $python ]] || { echo "$python is missing: run scripts/setup.sh first" >&2; exit 1; }
"$python" -c "import flower" 2>/dev/null || { echo "flower is missing from .venv: run scripts/setup.sh" >&2; exit 1; }
chromium=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
[[ -n $chromium ]] || { echo "chromium is not installed (apt-get install chromium)" >&2; exit 1; }
if [[ ! -x $worker ]]; then
    log "building the worker"
    swift build 2>&1 | grep -v "prohibited flag" >&2
fi

free_port() { "$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
redis_port=$(free_port)
flower_port=$(free_port)
broker=redis://127.0.0.1:$redis_port/1
backend=redis://127.0.0.1:$redis_port/0
work=$(mktemp -d /tmp/flower-screenshot.XXXXXX)
pids=()

cleanup() {
    local pid
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

log "redis-server on 127.0.0.1:$redis_port"
start_loopback_redis "$redis_port" "$work"

log "Swift worker swift@%h (queues celery, swift)"
"$worker" worker --broker "$broker" --result-backend "$backend" -E -n 'swift@%h' -Q celery,swift -c 4 \
    --logfile "$work/swift.log" >/dev/null 2>&1 &
pids+=($!)

export CELERY_BROKER_URL=$broker CELERY_RESULT_BACKEND=$backend
log "Python worker python@%h (queues celery, python)"
(cd Interop/pyworker && exec "$root/.venv/bin/celery" -A pytasks worker -E -n 'python@%h' -Q celery,python -c 2 \
    -l INFO --without-mingle --without-gossip --logfile "$work/python.log" >/dev/null 2>&1) &
pids+=($!)

log "flower on 127.0.0.1:$flower_port"
(cd Interop/pyworker && FLOWER_UNAUTHENTICATED_API=true exec "$root/.venv/bin/celery" -A pytasks flower \
    --port="$flower_port" --address=127.0.0.1 >"$work/flower.log" 2>&1) &
pids+=($!)

log "tasks for both workers; waiting until Flower lists both"
FLOWER=http://127.0.0.1:$flower_port "$python" - <<'EOF'
import json
import os
import sys
import time
import urllib.request

sys.path.insert(0, "Interop/tests")
from clientapp import make_app  # noqa: E402

flower = os.environ["FLOWER"]


def get(path):
    with urllib.request.urlopen(flower + path, timeout=5) as response:
        return json.load(response)


def wait(what, check, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            answer = check()
            if answer:
                return answer
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit(f"timed out waiting for {what}")


def online():
    status = get("/api/workers?status=1")
    return {name.split("@")[0] for name, alive in status.items() if alive} >= {"swift", "python"}


wait("both workers online in Flower", online)
app = make_app(os.environ["CELERY_BROKER_URL"], os.environ["CELERY_RESULT_BACKEND"])
results = [app.tasks["tasks.add"].apply_async((i, i), queue="swift") for i in range(12)]
results += [app.tasks["tasks.sleep"].apply_async((0.2,), queue="swift") for _ in range(4)]
results += [app.tasks["tasks.add"].apply_async((i, 1), queue="python") for i in range(6)]
results += [app.tasks["tasks.fail"].apply_async(("boom",), queue=queue) for queue in ("swift", "python")]
for result in results:
    result.get(timeout=30, propagate=False)


def counted():
    workers = {w["hostname"].split("@")[0]: w for w in get("/workers?json=1")["data"]}
    return all(name in workers and workers[name].get("processed", 0) > 0 for name in ("swift", "python")) \
        and workers["swift"].get("task-succeeded", 0) >= 16 and workers["python"].get("task-succeeded", 0) >= 6


wait("Flower to count the tasks", counted)
time.sleep(2.5)  # a heartbeat after the last task: its "active" and "processed" columns are up to date
for name, alive in sorted(get("/api/workers?status=1").items()):
    print(f"    {name}: {'online' if alive else 'offline'}", file=sys.stderr)
app.close()
EOF

log "screenshot of http://127.0.0.1:$flower_port/workers -> $out"
mkdir -p "$(dirname "$out")"
"$chromium" --headless --no-sandbox --disable-gpu --hide-scrollbars --user-data-dir="$work/chromium" \
    --window-size=1400,700 --virtual-time-budget=5000 --screenshot="$out" \
    "http://127.0.0.1:$flower_port/workers" 2>"$work/chromium.log" >/dev/null \
    || { cat "$work/chromium.log" >&2; exit 1; }
[[ -s $out ]] || { echo "no screenshot written" >&2; cat "$work/chromium.log" >&2; exit 1; }
log "done: $out"
