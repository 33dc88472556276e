#!/usr/bin/env bash
# The seed demo: a loopback redis-server, the Swift worker (-c 5), and the seed's Python producer calling
# seed_email.delay() five times and printing the five results read back with AsyncResult.get().
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/loopback-redis.sh
scripts/setup.sh

port=${DEMO_REDIS_PORT:-6399}
work=$(mktemp -d /tmp/swift-celery-demo.XXXXXX)
cleanup() {
    [[ -n ${worker_pid:-} ]] && kill -TERM "$worker_pid" 2>/dev/null && wait "$worker_pid" 2>/dev/null || true
    redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
}
trap cleanup EXIT

echo "==> redis-server on 127.0.0.1:$port"
start_loopback_redis "$port" "$work"

echo "==> swift-celery-worker -c 5 (log: $work/worker.log)"
.build/debug/swift-celery-worker worker --broker "redis://127.0.0.1:$port/1" \
    --result-backend "redis://127.0.0.1:$port/0" -c 5 --logfile "$work/worker.log" &
worker_pid=$!
for _ in $(seq 100); do grep -q " ready." "$work/worker.log" 2>/dev/null && break; sleep 0.1; done

echo "==> Python producer: seed_email.delay() x 5"
(cd Interop/seed && SEED_REDIS="redis://127.0.0.1:$port" ../../.venv/bin/python producer.py 5)

echo "==> worker log"
cat "$work/worker.log"
