#!/usr/bin/env bash
# The release build for deployment, and the one Benchmarks/ measure: the Swift runtime and Foundation linked in
# statically (`--static-swift-stdlib`), linked by the toolchain's lld with packed relative relocations
# (scripts/release-toolset.json). The binary then only needs glibc 2.36 or later (Debian 12, Ubuntu 24.04),
# libhiredis and libmsgpackc, and a loaded worker's RSS is about 20 MB instead of 30 MB.
#   scripts/build-release.sh                 # .build/release/swift-celery-worker
#   scripts/build-release.sh --product codec-benchmark
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -eq 0 ]; then set -- --product swift-celery-worker; fi
swift build -c release --static-swift-stdlib --toolset scripts/release-toolset.json "$@" 2>&1 | { grep -v "prohibited flag" || true; }
