#!/usr/bin/env python3
"""`minder ctl top` benchmark: what a live view costs, on its side and the daemon's.

1000 programs: 999 `/bin/sleep 3600` and one `minder-testchild` in a crash
loop (it exits 200 ms after it is running; backoff 200 ms, no growth), so
events flow all the time. Two windows of the same length on one daemon:

1. without `ctl top`: the daemon's CPU, and the events of that window;
2. with `ctl top` attached in tmux (a server on its own socket in a temp
   dir, a 200x50 window): top's own CPU, the daemon's CPU and RSS growth,
   and the events of that window; then, 5 times, the time from a SIGKILL of
   one of the `sleep`s to top's screen showing it.

The events are counted by one `events` subscriber of this script's own
(in both windows, so it costs the same in each). CPU is utime+stime from
/proc over the window, RSS is VmRSS at its start and end.

Loopback only; every loop bounded in count and time; only processes this
script started are signalled, by PID; the tmux server it started is killed
through its own socket. Results go to docs/benchmarks.md between the "top"
markers (the rest of the file is left alone).

Usage: python3 bench/top.py [--target-dir DIR] [--programs N] [--window S]
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import docsection
from health import Minder, cpu_seconds, release_binaries, rss_mib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class EventCounter:
    """One `events` subscriber on the daemon's socket, counting events."""

    def __init__(self, sock_path):
        self.count = 0
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(sock_path)
        self.sock.sendall(b'{"v":1,"cmd":"events"}\n')
        self.thread = threading.Thread(target=self.read, daemon=True)
        self.thread.start()

    def read(self):
        first = True
        buf = b""
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            buf += data
            *lines, buf = buf.split(b"\n")
            for _ in lines:
                if first:
                    first = False  # the acknowledgement
                else:
                    self.count += 1

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(timeout=10)


class Tmux:
    """A tmux server on a socket in `tmp`, running one command."""

    def __init__(self, tmp, argv, width, height):
        self.base = ["tmux", "-f", "/dev/null", "-S", os.path.join(tmp, "tmux.sock")]
        env = dict(os.environ)
        env.pop("TMUX", None)
        self.env = env
        subprocess.run(self.base + ["new-session", "-d", "-x", str(width), "-y", str(height)] + argv,
                       check=True, env=env, timeout=30)

    def run(self, *args):
        return subprocess.run(self.base + list(args), capture_output=True, text=True,
                              env=self.env, timeout=30).stdout

    def screen(self):
        return self.run("capture-pane", "-p")

    def pane_pid(self):
        return int(self.run("display-message", "-p", "#{pane_pid}").strip())

    def wait_screen(self, pred, timeout, what):
        deadline = time.monotonic() + timeout
        screen = ""
        for _ in range(int(timeout / 0.05) + 2):
            screen = self.screen()
            if pred(screen) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if not pred(screen):
            raise SystemExit(f"the screen never showed {what}:\n{screen}")
        return screen

    def kill(self):
        self.run("kill-server")


def window(d, counter, seconds, top_pid=None):
    """CPU (and RSS) of the daemon, and of top if given, over `seconds`."""
    events_before = counter.count
    cpu_before = cpu_seconds(d.proc.pid)
    rss_before = rss_mib(d.proc.pid)
    top_before = cpu_seconds(top_pid) if top_pid else 0.0
    time.sleep(seconds)
    out = {
        "window_s": seconds,
        "events": counter.count - events_before,
        "daemon_cpu_s": cpu_seconds(d.proc.pid) - cpu_before,
        "daemon_rss_start_mib": rss_before,
        "daemon_rss_end_mib": rss_mib(d.proc.pid),
    }
    if top_pid:
        out["top_cpu_s"] = cpu_seconds(top_pid) - top_before
    out["daemon_cpu_pct"] = 100.0 * out["daemon_cpu_s"] / seconds
    out["daemon_rss_growth_mib"] = out["daemon_rss_end_mib"] - rss_before
    out["daemon_ms_per_event"] = 1000.0 * out["daemon_cpu_s"] / max(out["events"], 1)
    return out


def crash_to_screen(d, tmux, rounds):
    """SIGKILL to one `sleep` after another (children of the daemon this
    script started), and the time until top's screen shows it, read with
    `capture-pane` every 10 ms: an upper bound, tmux's own time included."""
    procs = {p["name"]: p for p in d.status()}
    latencies = []
    for i in range(rounds):
        name = f"p{i:04}"
        pid = procs[name]["pid"]
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        deadline = t0 + 5
        shown = None
        for _ in range(500):
            screen = tmux.screen()
            if f"{name} running -> " in screen or any(
                    line.split()[:2] == [name, "backoff"] for line in screen.splitlines()
                    if line.strip()):
                shown = time.monotonic()
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
        if shown is None:
            raise SystemExit(f"the crash of {name} did not show within 5 s:\n{screen}")
        latencies.append(1000.0 * (shown - t0))
    return latencies


def bench(binary, child, programs, seconds):
    body = (f'[program.crashy]\ncommand = ["{child}", "--exit-after", "200", "--exit-code", "1"]\n'
            'start_secs = "100ms"\n'
            '[program.crashy.backoff]\ninitial = "200ms"\nmax = "200ms"\njitter = 0.0\n\n')
    body += "".join(f'[program.p{i:04}]\ncommand = ["/bin/sleep", "3600"]\n\n'
                    for i in range(programs - 1))
    with tempfile.TemporaryDirectory(prefix="minder-bench-top.") as tmp:
        d = Minder(binary, tmp, body)
        tmux = None
        counter = None
        try:
            d.wait_for(lambda ps: len(ps) == programs and sum(
                p["state"] == "running" for p in ps) >= programs - 1, 120,
                f"{programs - 1} programs running")
            counter = EventCounter(d.sock)
            time.sleep(2)  # the start-up burst settles
            without = window(d, counter, seconds)
            tmux = Tmux(tmp, [binary, "ctl", "-s", d.sock, "top"], 200, 50)
            top_pid = tmux.pane_pid()
            with open(f"/proc/{top_pid}/comm") as f:
                assert f.read().strip() == "minder", "the pane runs ctl top itself"
            tmux.wait_screen(lambda s: f"{programs} processes" in s and "crashy" in s, 30,
                             f"{programs} processes")
            time.sleep(2)  # its first samples
            attached = window(d, counter, seconds, top_pid)
            screen = tmux.screen()
            attached["latencies_ms"] = crash_to_screen(d, tmux, rounds=5)
            attached["top_cpu_pct"] = 100.0 * attached["top_cpu_s"] / seconds
            attached["top_rss_mib"] = rss_mib(top_pid)
            attached["screen_shows_crashy_events"] = screen.count("crashy ") >= 3
        finally:
            if counter:
                counter.close()
            if tmux:
                tmux.kill()
            d.stop()
    return {"programs": programs, "binary_mb": os.path.getsize(binary) / 1e6,
            "without_top": without, "with_top": attached}


def write_section(r, command):
    path = os.path.join(ROOT, "docs", "benchmarks.md")
    a, b = r["without_top"], r["with_top"]
    top_ok = "yes" if b["top_cpu_pct"] < 5.0 else "**no**"
    rss_ok = "yes" if b["daemon_rss_growth_mib"] < 1.0 else "**no**"
    added = b["daemon_cpu_pct"] - a["daemon_cpu_pct"]
    lat_ok = "yes" if max(b["latencies_ms"]) < 100 else "**no**"
    section = f"""## A live view: `ctl top`

- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}
- command: `{command}` (after `cargo build --release --bins`)
- machine: {os.cpu_count()} CPUs, kernel {os.uname().release}

| measurement, {r['programs']} programs, one in a crash loop, {b['window_s']:.0f} s | value | target | met |
|---|---:|---:|---|
| `ctl top`'s own CPU (in tmux, 200x50) | {b['top_cpu_pct']:.2f} % of one core ({b['top_cpu_s']:.2f} s) | < 5 % | {top_ok} |
| daemon RSS while top is attached | {b['daemon_rss_start_mib']:.2f} -> {b['daemon_rss_end_mib']:.2f} MiB over the window ({b['daemon_rss_growth_mib']:+.2f}); {a['daemon_rss_end_mib']:.2f} MiB before top attached | grows < 1 MiB | {rss_ok} |
| a crash (SIGKILL) to top's screen showing it, worst of {len(b['latencies_ms'])} | {max(b['latencies_ms']):.0f} ms (each: {', '.join(f'{x:.0f}' for x in b['latencies_ms'])}) | < 100 ms | {lat_ok} |
| daemon CPU with top attached | {b['daemon_cpu_pct']:.2f} % of one core; {b['events']} events, {b['daemon_ms_per_event']:.2f} ms per event | | |
| daemon CPU without top, same daemon | {a['daemon_cpu_pct']:.2f} % of one core; {a['events']} events, {a['daemon_ms_per_event']:.2f} ms per event | | |

- The crash loop: `minder-testchild --exit-after 200`, `start_secs = "100ms"`,
  backoff 200 ms without growth: three events per cycle (`backoff -> starting`,
  `starting -> running`, `running -> backoff`), each sent to top's `events`
  stream and to the bench's own counter (there in both windows).
- What top adds to the daemon ({added:+.2f} % of a core) is its `status`
  sample once a second ({r['programs']} processes, CPU and memory read for each
  live one from its cgroup or /proc) and one more `events` subscriber; the
  window without top has the same crash loop and the bench's own subscriber.
  "Per event" divides all of the daemon's CPU in the window (the crash loop's
  spawns and exits, the idle programs, top's samples) by the events, so it is
  an upper bound on what an event costs.
- The release binary (daemon and `ctl` are one) is {r['binary_mb']:.2f} MB with
  ratatui and crossterm linked in for top (5.48 MB before them, in the HTTPS
  section above).
- The crash latency is from the bench's `kill` to a `capture-pane` (every
  10 ms) showing the event or the row in `backoff`: the daemon's reaping,
  the event on the stream, top's redraw and tmux's own copy of the screen.
- top's RSS at the end: {b['top_rss_mib']:.1f} MiB (1000 rows, 200 events and the
  screen kept). Its screen showed the crash loop's events at the end:
  {'yes' if b['screen_shows_crashy_events'] else '**no**'}.
"""
    docsection.replace_section(path, "top", section, "bench/top.py")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target-dir", default=os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")))
    ap.add_argument("--programs", type=int, default=1000)
    ap.add_argument("--window", type=float, default=30.0)
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = ap.parse_args()
    if shutil.which("tmux") is None:
        raise SystemExit("tmux not found (apt-get install tmux)")
    binary, child = release_binaries(args.target_dir)
    result = bench(binary, child, args.programs, args.window)
    print(json.dumps(result, indent=2))
    if not args.no_write:
        command = f"python3 bench/top.py --programs {args.programs} --window {args.window:g}"
        write_section(result, command)


if __name__ == "__main__":
    sys.exit(main())
