#!/usr/bin/env bash
# The release build for deployment, and the one Benchmarks/ measure. The Swift runtime and Foundation are linked in
# statically (`--static-swift-stdlib`), by the toolchain's lld (scripts/release-toolset.json), which is told to:
# pack the relative relocations; export no symbols (a static binary has no one to export them to, and the loader
# would page in their tables); and put the functions a loaded worker runs together at the start of .text, in the
# order of scripts/release-order.txt (written by scripts/release-order.py; every Swift function in a section of its
# own, `-function-sections`, so each can be placed). The kernel maps a binary's code 64 kB around each page touched,
# so code the worker runs, scattered over 20 MB, kept most of .text resident. The binary then only needs glibc 2.36
# or later (Debian 12, Ubuntu 24.04), libhiredis, libmsgpackc, zlib, libbz2 and liblzma (and, loaded when first asked for, libssl3, libbrotli1 and libzstd1), and a loaded worker's RSS is about 16 MB (about
# 20 MB without the last two steps, 30 MB with the Swift runtime as shared libraries).
#   scripts/build-release.sh                 # .build/release/swift-celery-worker
#   scripts/build-release.sh --product codec-benchmark
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -eq 0 ]; then set -- --product swift-celery-worker; fi
# The build does not track the order file: relink when it changed.
if [ scripts/release-order.txt -nt .build/release/swift-celery-worker ]; then rm -f .build/release/swift-celery-worker; fi
swift build -c release --static-swift-stdlib --toolset scripts/release-toolset.json -Xswiftc -Xfrontend -Xswiftc -function-sections \
    -Xlinker "--symbol-ordering-file=$PWD/scripts/release-order.txt" -Xlinker --no-warn-symbol-ordering "$@" 2>&1 | { grep -v "prohibited flag" || true; }
