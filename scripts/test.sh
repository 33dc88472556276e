#!/usr/bin/env bash
# Every test: Swift unit and Redis integration tests, then the Interop tests against real Python Celery 5.3 and 5.7,
# and against 5.7 once more with the solo pool.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/loopback-redis.sh
scripts/setup.sh --all

port=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
work=$(mktemp -d /tmp/swift-celery-test.XXXXXX)
trap 'redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true' EXIT
start_loopback_redis "$port" "$work"
export CELERY_TEST_REDIS_URL="redis://127.0.0.1:$port"

echo "==> swift format lint"
swift format lint --strict -r Sources Tests

echo "==> swift test (unit tests and Redis integration tests)"
swift build --build-tests 2>&1 | grep -v "prohibited flag"
swift test --skip-build 2>&1 | grep -v "prohibited flag"

export SWIFT_CELERY_WORKER="$PWD/.build/debug/swift-celery-worker"
echo "==> benchmark, small form (checks that it runs; figures from a debug build mean nothing)"
.venv/bin/python Benchmarks/drain.py --quick --tasks 200 --worker "$SWIFT_CELERY_WORKER"
.venv/bin/python Benchmarks/drain.py --quick --tasks 200 --prefetch-multiplier 16 --drain-only --worker "$SWIFT_CELERY_WORKER"
.venv/bin/python Benchmarks/threads.py --tasks 200 --runs 1 --worker "$SWIFT_CELERY_WORKER"
.venv/bin/python Benchmarks/threads.py --tasks 200 --runs 1 --pool solo --worker "$SWIFT_CELERY_WORKER"
.venv/bin/python Benchmarks/redis_cost.py --tasks 200 --runs 1 --worker "$SWIFT_CELERY_WORKER" --compare-args="--prefetch-multiplier 16" --compare-one-cpu
.venv/bin/python Benchmarks/round_trips.py --tasks 200 --runs 1 --worker "$SWIFT_CELERY_WORKER" -- --prefetch-multiplier 16
.venv/bin/python Benchmarks/request_cost.py --tasks 64 --runs 1 --batches 1,8
.venv/bin/python Benchmarks/relay_floor.py --tasks 200 --runs 1 --windows 8 --worker "$SWIFT_CELERY_WORKER"
.venv/bin/python Benchmarks/soak.py --rounds 2 --tasks 200 --worker "$SWIFT_CELERY_WORKER"
.venv/bin/python Benchmarks/herd.py --workers 2 --rate 100 --tasks 50 "$SWIFT_CELERY_WORKER"
CODEC_CONFIGURATION=debug Benchmarks/codec.sh 200
cc -O2 -Wall -Werror -o .build/wakeup Benchmarks/wakeup.c -lpthread
if [ "$(nproc)" -ge 2 ]; then .build/wakeup 2000; else echo "wakeup.c: built; it needs two CPUs to run"; fi
.venv/bin/python Benchmarks/redis_instructions.py --tasks 50 .

echo "==> Interop tests against real Python Celery: six passes side by side (each starts its own redis-server)"
# The passes spend most of their time waiting on workers, Redis and timeouts, not on the CPU: side by side they take
# about as long as the longest one. So the files for Celery 5.3 and for 5.7 are each run in two halves, split by name
# where the time splits about evenly (about 7 minutes each; one pass of all of them takes 14). Each writes its own log, printed whole when all are done. A pass still running
# after 25 minutes (they take about 7) is interrupted as Ctrl-C would: pytest then reports the test that hung, with
# its stack, and fails, instead of using up CI's time. Each log ends with its 15 slowest tests, to keep CI short.
interop_logs=$(mktemp -d /tmp/swift-celery-interop.XXXXXX)
interop_pass() {
    local name=$1
    shift
    (cd Interop && timeout --signal=INT --kill-after=60 1500 "$@" -q -p no:cacheprovider \
        --durations=15 --basetemp="$interop_logs/$name.tmp" >"$interop_logs/$name.log" 2>&1
        echo $? >"$interop_logs/$name.status") &
}
# Every file in one half or the other: the second half is whatever the first does not take.
first_half=$(cd Interop && ls tests/test_*.py | grep -E '^tests/test_[a-g]')
second_half=$(cd Interop && ls tests/test_*.py | grep -vE '^tests/test_[a-g]')
# shellcheck disable=SC2086 # one word per file
{
    interop_pass celery53-1 ../.venv-celery53/bin/python -m pytest $first_half
    interop_pass celery53-2 ../.venv-celery53/bin/python -m pytest $second_half
    interop_pass celery57-1 ../.venv/bin/python -m pytest $first_half
    interop_pass celery57-2 ../.venv/bin/python -m pytest $second_half
}
# The solo pass deselects the tests of tasks running side by side (the solo pool runs one at a time, as Python's
# does), the process pool's tests (they choose their pool themselves), and files whose subject is decided before a
# task reaches any pool or after it ran, the same code for every pool (kept to the two passes above): nested chords,
# Task.replace and add_to_chord, compression, the Swift client, key prefixes, Flower, worker_direct, malformed input,
# events (sent on the path every pool's tasks end on), the metrics endpoint, Redis Sentinel, TLS, the worker's
# start-up flags, gossip, the embedded beat and RedBeat, the remote control CLI and the event dump.
interop_pass solo env SWIFT_CELERY_POOL=solo ../.venv/bin/python -m pytest -m "not parallel_pool" \
    --ignore=tests/test_pool.py --ignore=tests/test_nested_chords.py --ignore=tests/test_replace_and_add_to_chord.py \
    --ignore=tests/test_compression.py --ignore=tests/test_client.py --ignore=tests/test_keyprefix.py \
    --ignore=tests/test_flower.py --ignore=tests/test_worker_direct.py --ignore=tests/test_malformed.py \
    --ignore=tests/test_events.py --ignore=tests/test_metrics.py --ignore=tests/test_sentinel.py --ignore=tests/test_tls.py \
    --ignore=tests/test_worker_flags.py --ignore=tests/test_gossip.py --ignore=tests/test_beat.py --ignore=tests/test_redbeat.py \
    --ignore=tests/test_cli_control.py --ignore=tests/test_evdump.py
# The process pool fetches on a thread of its own, not on the event loop the other pools share: the files about
# fetching, losing the broker and finding it again run with it too (they once passed only on the shared loop).
interop_pass process env SWIFT_CELERY_POOL=process ../.venv/bin/python -m pytest tests/test_delivery.py \
    tests/test_chaos.py tests/test_broker_retry.py tests/test_sentinel.py
wait

status=0
for pass in "celery53-1:Celery 5.3 (oldest supported), tests/test_[a-g]*" "celery53-2:Celery 5.3, the other files" \
    "celery57-1:Celery 5.7, tests/test_[a-g]*" "celery57-2:Celery 5.7, the other files" \
    "solo:Celery 5.7, every Swift worker with the solo pool" \
    "process:Celery 5.7, the Swift worker's fetching and reconnecting with the process pool"; do
    name=${pass%%:*}
    echo "==> Interop tests against ${pass#*:}"
    cat "$interop_logs/$name.log"
    [ "$(cat "$interop_logs/$name.status")" = 0 ] || status=1
done
exit $status
