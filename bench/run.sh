#!/bin/sh
# Build minder (release), install supervisord into bench/.venv, run the comparison.
# Extra arguments go to bench/compare.py (see python3 bench/compare.py --help).
set -eu
cd "$(dirname "$0")/.."

# A venv made elsewhere (a moved checkout) has scripts whose interpreter is
# gone: check that it runs, not only that it exists.
if ! bench/.venv/bin/python3 -c '' 2>/dev/null; then
    rm -rf bench/.venv
    python3 -m venv bench/.venv
fi
if ! bench/.venv/bin/supervisord --version >/dev/null 2>&1; then
    bench/.venv/bin/python3 -m pip install --quiet --force-reinstall supervisor
fi

: "${CARGO_TARGET_DIR:=$PWD/target}"
export CARGO_TARGET_DIR
cargo build --release --bins

MINDER_BENCH_ENTRY=bench/run.sh exec python3 bench/compare.py --target-dir "$CARGO_TARGET_DIR" "$@"
