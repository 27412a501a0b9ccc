#!/usr/bin/env bash
# Builds the Debian package (packaging/build-deb.sh) and checks it:
# - its contents (dpkg-deb -c) and conffiles;
# - as root with dpkg (CI): installs it on this machine, verifies the installed
#   unit with systemd-analyze, runs the installed minder with the installed
#   config exactly as the unit's ExecStart= would, drives it with `minder ctl`
#   (no flags: the default socket) and the unit's ExecReload=, shuts it down,
#   and purges the package again.
# Every wait is bounded; on any failure the package is purged all the same.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "check-deb: $*" >&2; exit 1; }

deb=$(packaging/build-deb.sh | tail -n1)
echo "== dpkg-deb -c $(basename "$deb")"
contents=$(dpkg-deb -c "$deb")
for path in \
    ./usr/bin/minder \
    ./etc/minder/minder.toml \
    ./etc/minder/conf.d/ \
    ./usr/lib/systemd/system/minder.service \
    ./usr/share/man/man1/minder.1.gz \
    ./usr/share/man/man1/minder-daemon.1.gz \
    ./usr/share/man/man1/minder-ctl.1.gz \
    ./usr/share/bash-completion/completions/minder \
    ./usr/share/zsh/vendor-completions/_minder \
    ./usr/share/fish/vendor_completions.d/minder.fish \
    ./usr/share/doc/minder/copyright; do
    grep -q " $path\$" <<<"$contents" || fail "$path is not in the package"
done
grep -q '^-rwxr-xr-x 0/0 .* ./usr/bin/minder$' <<<"$contents" \
    || fail "/usr/bin/minder is not root-owned 0755"
grep -q '^-rw-r--r-- 0/0 .* ./etc/minder/minder.toml$' <<<"$contents" \
    || fail "/etc/minder/minder.toml is not root-owned 0644 (minder would refuse it)"
dpkg-deb -I "$deb" conffiles | grep -qx /etc/minder/minder.toml \
    || fail "/etc/minder/minder.toml is not a conffile"
depends=$(dpkg-deb -f "$deb" Depends)
grep -q 'init-system-helpers' <<<"$depends" || fail "Depends lacks init-system-helpers: $depends"
if command -v dpkg-shlibdeps >/dev/null; then
    grep -q 'libc6' <<<"$depends" || fail "Depends lacks libc6: $depends"
fi
echo "contents ok: $(wc -l <<<"$contents") entries; Depends: $depends"

if [ "$(id -u)" != 0 ] || ! command -v dpkg >/dev/null; then
    echo "skipping the install test: it needs root and dpkg (CI has both)"
    exit 0
fi
if dpkg-query -W -f='${Status}' minder 2>/dev/null | grep -q 'install ok installed'; then
    echo "skipping the install test: a minder package is already installed here"
    exit 0
fi

daemon_pid=
work=$(mktemp -d)
cleanup() {
    if [ -n "$daemon_pid" ] && kill -0 "$daemon_pid" 2>/dev/null; then
        kill -TERM "$daemon_pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$daemon_pid" 2>/dev/null || true
    fi
    rm -f /etc/minder/conf.d/check-deb.toml
    dpkg --purge minder >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

echo "== dpkg -i"
dpkg -i "$deb"
[ -x /usr/bin/minder ] || fail "/usr/bin/minder missing after install"
unit=/usr/lib/systemd/system/minder.service

if command -v systemd-analyze >/dev/null; then
    echo "== systemd-analyze verify $unit"
    # With the package installed, the man page in Documentation= is checked too.
    verify=$(systemd-analyze verify "$unit" 2>&1) || fail "systemd-analyze verify: $verify"
    if grep -q minder <<<"$verify"; then fail "systemd-analyze verify: $verify"; fi
else
    echo "no systemd-analyze here: unit not verified"
fi
if command -v man >/dev/null; then
    man -w minder >/dev/null || fail "man minder finds no page"
fi

# What systemd would do before ExecStart=: RuntimeDirectory=, LogsDirectory=.
mkdir -p /run/minder /var/log/minder
exec_start=$(sed -n 's/^ExecStart=//p' "$unit")
exec_reload=$(sed -n 's/^ExecReload=//p' "$unit")
[ -n "$exec_start" ] && [ -n "$exec_reload" ] || fail "no ExecStart=/ExecReload= in $unit"

echo "== $exec_start"
# Like systemd: working directory /, so no ./minder.toml is found by `ctl`.
cd /
$exec_start >"$work/daemon.log" 2>&1 &
daemon_pid=$!

ctl() { (cd / && env -u MINDER_SOCKET /usr/bin/minder ctl "$@"); }
wait_until() { # DESCRIPTION COMMAND...: retries for up to 15s
    local what=$1; shift
    for _ in $(seq 150); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        kill -0 "$daemon_pid" 2>/dev/null || { cat "$work/daemon.log" >&2; fail "minder exited while waiting for $what"; }
        sleep 0.1
    done
    cat "$work/daemon.log" >&2
    fail "timed out waiting for $what"
}

wait_until "ctl status (default socket)" ctl status
[ -S /run/minder/minder.sock ] || fail "no control socket at /run/minder/minder.sock"
[ "$(ctl pid)" = "$daemon_pid" ] || fail "ctl pid is not the daemon's PID"

echo "== a program in conf.d, applied by ExecReload="
cat >/etc/minder/conf.d/check-deb.toml <<'TOML'
[program.sleeper]
command = ["/bin/sleep", "600"]
start_secs = "200ms"
TOML
chmod 0644 /etc/minder/conf.d/check-deb.toml
reloaded=$($exec_reload) || fail "ExecReload failed: $reloaded"
grep -q "added: sleeper" <<<"$reloaded" || fail "ExecReload did not add the program: $reloaded"
wait_until "sleeper running" ctl status sleeper
ctl status

echo "== a config others could write is refused on reload"
chmod 0666 /etc/minder/conf.d/check-deb.toml
if ctl reload 2>"$work/reload.err"; then fail "reload accepted a world-writable file"; fi
grep -q "writable by group and others" "$work/reload.err" || fail "unclear refusal: $(cat "$work/reload.err")"
chmod 0644 /etc/minder/conf.d/check-deb.toml

echo "== ctl shutdown"
ctl shutdown
for _ in $(seq 150); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$daemon_pid" 2>/dev/null; then fail "minder did not exit after ctl shutdown"; fi
status=0
wait "$daemon_pid" || status=$?
daemon_pid=
[ "$status" = 0 ] || { cat "$work/daemon.log" >&2; fail "minder exited with $status"; }
[ ! -e /run/minder/minder.sock ] || fail "control socket left behind"

echo "== dpkg --purge"
rm -f /etc/minder/conf.d/check-deb.toml
dpkg --purge minder
[ ! -e /usr/bin/minder ] || fail "/usr/bin/minder left after purge"
[ ! -e /etc/minder/minder.toml ] || fail "/etc/minder/minder.toml left after purge"
echo "install test ok"
