#!/bin/sh
# Build minder (release), install supervisord into bench/.venv, run the comparison.
# Extra arguments go to bench/compare.py (see python3 bench/compare.py --help).
set -eu
cd "$(dirname "$0")/.."

if [ ! -x bench/.venv/bin/python3 ]; then
    python3 -m venv bench/.venv
fi
if [ ! -x bench/.venv/bin/supervisord ]; then
    bench/.venv/bin/pip install --quiet supervisor
fi

: "${CARGO_TARGET_DIR:=$PWD/target}"
export CARGO_TARGET_DIR
cargo build --release --bins

MINDER_BENCH_ENTRY=bench/run.sh exec python3 bench/compare.py --target-dir "$CARGO_TARGET_DIR" "$@"
