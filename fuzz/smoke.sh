#!/usr/bin/env bash
# Runs each fuzz target for 30 s (or $1 seconds) on its committed seeds, one
# after the other: a check before a release, not part of CI. Needs the
# nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
# New inputs go to fuzz/corpus-generated/ (ignored by git); a crash stops the
# script and leaves its input in fuzz/artifacts/TARGET/.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-30}
for target in config control_request notify reexec_state; do
    echo "== $target (${seconds}s)"
    mkdir -p "corpus-generated/$target"
    dict=()
    if [ -f "$target.dict" ]; then
        dict=("-dict=$target.dict")
    fi
    cargo +nightly fuzz run "$target" "corpus-generated/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -malloc_limit_mb=512 -timeout=10 \
        "${dict[@]}"
done
echo "== every target ran ${seconds}s without a finding"
