#!/usr/bin/env bash
# The codec micro-benchmark: time and heap allocations to decode one task message and encode one result.
#   Benchmarks/codec.sh [iterations]        (release build; CODEC_CONFIGURATION=debug for a quick check)
set -euo pipefail
cd "$(dirname "$0")/.."
configuration=${CODEC_CONFIGURATION:-release}
swift build -c "$configuration" --product codec-benchmark 2>&1 | grep -v "prohibited flag" | tail -1
counter=$(mktemp -d /tmp/malloc-count.XXXXXX)/malloc-count.so
gcc -O2 -shared -fPIC -o "$counter" Benchmarks/CodecBenchmark/malloc-count.c -ldl
LD_PRELOAD=$counter ".build/$configuration/codec-benchmark" "${1:-20000}"
