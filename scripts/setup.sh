#!/usr/bin/env bash
# Installs what the project needs on a Debian machine (run as root), creates the Python venvs and builds the worker.
#   scripts/setup.sh            Debian packages, .venv (Celery 5.7), debug build
#   scripts/setup.sh --all      also .venv-celery53 (Celery 5.3, the oldest supported) for the Interop tests
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*" >&2; }

need=()
for pkg in libhiredis-dev libmsgpack-dev zlib1g-dev libbz2-dev liblzma-dev libbrotli-dev libzstd-dev libssl-dev openssl redis-server pkg-config; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
python3 -m venv --help >/dev/null 2>&1 || need+=(python3-venv)
command -v gcc >/dev/null || need+=(gcc)  # the benchmarks' malloc counter and C latency floor
command -v valgrind >/dev/null || need+=(valgrind)  # Benchmarks/instructions.py, redis_instructions.py, scripts/release-order.py
if ((${#need[@]})); then
    log "installing Debian packages: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v swift >/dev/null || { echo "swift is not on PATH: install the Swift 6 toolchain first" >&2; exit 1; }

make_venv() { # dir requirements
    local dir=$1 requirements=$2
    if [[ ! -x $dir/bin/python ]] || ! cmp -s "$requirements" "$dir/.requirements"; then
        log "creating $dir from $requirements"
        rm -rf "$dir"
        python3 -m venv "$dir"
        "$dir/bin/pip" install -q --disable-pip-version-check -r "$requirements"
        cp "$requirements" "$dir/.requirements"
    fi
}
make_venv .venv Interop/requirements.txt
if [[ ${1:-} == --all ]]; then
    make_venv .venv-celery53 Interop/requirements-celery53.txt
fi

log "building the worker"
swift build 2>&1 | grep -v "prohibited flag" >&2
