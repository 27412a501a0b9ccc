#!/usr/bin/env bash
# Builds minder's Debian package and prints its path as the last line.
#
#   packaging/build-deb.sh        -> target/debian/minder_VERSION-1_ARCH.deb
#                                    (under $CARGO_TARGET_DIR when that is set)
#
# 1. installs cargo-deb if it is missing (once per machine, about a minute),
#    and dpkg-dev (dpkg-shlibdeps) as root if that is missing;
# 2. builds minder with the release profile (only that binary);
# 3. writes the man pages and shell completions from the real command line
#    with minder-gen into packaging/generated/ (gzipped pages, as Debian wants);
# 4. packs everything [package.metadata.deb] in Cargo.toml lists.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DEB_VERSION=3.8.0

if ! cargo deb --version >/dev/null 2>&1; then
    echo "== cargo install cargo-deb $CARGO_DEB_VERSION" >&2
    cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION" >&2
fi

# cargo deb computes the package's dependencies (libc6) with dpkg-shlibdeps.
if ! command -v dpkg-shlibdeps >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "== apt-get install dpkg-dev (for dpkg-shlibdeps)" >&2
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dpkg-dev >&2
    else
        echo "build-deb: dpkg-shlibdeps missing (package dpkg-dev): the package will not depend on libc6" >&2
    fi
fi

echo "== cargo build --release --bin minder" >&2
cargo build --release --locked --bin minder >&2

echo "== man pages and completions (minder-gen)" >&2
generated=packaging/generated
rm -rf "$generated"
cargo run --locked --quiet --bin minder-gen -- "$generated" >/dev/null
# -n: no name or time stamp inside, so the same sources give the same package.
gzip -9n "$generated"/man/*.1

echo "== cargo deb" >&2
out=$(cargo deb --no-build --locked)
deb=$(printf '%s\n' "$out" | grep '\.deb$' | tail -n1)
if [ ! -f "$deb" ]; then
    echo "build-deb: cargo deb printed no package path: $out" >&2
    exit 1
fi
echo "$deb"
