#!/usr/bin/env python3
"""Scrape cost of minder's /metrics (issue: observability).

1000 `sleep` programs under one minder with `metrics` on, all running; then
the bench scrapes /metrics N times, one request after the other on a fresh
loopback connection each (as Prometheus does), and times each from connect to
the last byte. Reference in the same run: a `status` request for the same
1000 processes on the control socket (the same data, as JSON), timed the same
way. A second round gives every program a TCP health check, so each process
also carries a probe histogram (the largest document).

Loopback only; every loop bounded in count and time; only the daemon this
script started is signalled, by PID. Results go to docs/benchmarks.md between
the "metrics" markers.

Usage: python3 bench/metrics.py [--target-dir DIR] [--programs N] [--scrapes N]
"""

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import docsection
from health import Minder, cpu_seconds, free_port, release_binaries, rss_mib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed_http_get(port, path):
    """(seconds from connect to EOF, status line, body bytes)."""
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while True:
            data = s.recv(1 << 16)
            if not data:
                break
            chunks.append(data)
    elapsed = time.perf_counter() - start
    response = b"".join(chunks)
    head, _, body = response.partition(b"\r\n\r\n")
    return elapsed, head.split(b"\r\n", 1)[0].decode(), body


def timed_status(sock):
    """Seconds for one `status` request on the control socket, and the reply size."""
    start = time.perf_counter()
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(sock)
        s.sendall(b'{"v":1,"cmd":"status"}\n')
        chunks = []
        while not chunks or not chunks[-1].endswith(b"\n"):
            data = s.recv(1 << 16)
            if not data:
                break
            chunks.append(data)
    return time.perf_counter() - start, sum(len(c) for c in chunks)


def pct(samples, p):
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def scenario(binary, child, programs, scrapes, probed):
    port = free_port()
    health_port = free_port()
    with tempfile.TemporaryDirectory(prefix="minder-bench-metrics.") as tmp:
        server = subprocess.Popen([child, "--tcp", str(health_port)]) if probed else None
        try:
            check = (f'[program.p{{i}}.health]\ntcp = "127.0.0.1:{health_port}"\n'
                     f'interval = "5s"\n' if probed else "")
            body = f'metrics = "127.0.0.1:{port}"\n\n' + "".join(
                f'[program.p{i}]\ncommand = ["/bin/sleep", "3600"]\nstart_secs = "0s"\n'
                + check.replace("{i}", str(i)) + "\n"
                for i in range(programs))
            d = Minder(binary, tmp, body)
            try:
                want = "healthy" if probed else "none"
                d.wait_for(lambda ps: len(ps) == programs and all(
                    p["state"] == "running" and p["health"] == want for p in ps),
                    120, f"{programs} programs running")
                time.sleep(1)
                # One scrape first: the document is checked, not timed.
                _, status_line, body = timed_http_get(port, "/metrics")
                if not status_line.startswith("HTTP/1.1 200"):
                    raise SystemExit(f"/metrics answered {status_line}")
                text = body.decode()
                samples = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
                cpu_before = cpu_seconds(d.proc.pid)
                times = [timed_http_get(port, "/metrics")[0] for _ in range(scrapes)]
                cpu_used = cpu_seconds(d.proc.pid) - cpu_before
                status = [timed_status(d.sock) for _ in range(scrapes)]
                rss = rss_mib(d.proc.pid)
            finally:
                d.stop()
        finally:
            if server is not None:
                server.send_signal(signal.SIGTERM)
                server.wait(timeout=10)
    return {
        "programs": programs,
        "probed": probed,
        "scrapes": scrapes,
        "bytes": len(body),
        "samples": samples,
        "median_ms": 1000 * statistics.median(times),
        "p90_ms": 1000 * pct(times, 90),
        "max_ms": 1000 * max(times),
        "cpu_ms_per_scrape": 1000 * cpu_used / scrapes,
        "status_median_ms": 1000 * statistics.median(t for t, _ in status),
        "status_bytes": status[0][1],
        "rss_mib": rss,
    }


def write_section(rows, command):
    path = os.path.join(ROOT, "docs", "benchmarks.md")
    lines = []
    for r in rows:
        what = f"{r['programs']} programs" + (", each with a TCP health check" if r["probed"] else "")
        met = "yes" if r["median_ms"] < 20 else "**no**"
        lines.append(
            f"| {what} | {r['median_ms']:.1f} ms (p90 {r['p90_ms']:.1f}, max {r['max_ms']:.1f}) "
            f"| {r['bytes'] / 1024:.0f} KiB, {r['samples']} samples | {r['cpu_ms_per_scrape']:.1f} ms "
            f"| {r['status_median_ms']:.1f} ms ({r['status_bytes'] / 1024:.0f} KiB) "
            f"| {r['median_ms'] / r['status_median_ms']:.1f}x | < 20 ms | {met} |")
    table = "\n".join(lines)
    load = os.getloadavg()[0]
    section = f"""## Metrics: the cost of a scrape

- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}
- command: `{command}` (after `cargo build --release --bins`)
- machine: {os.cpu_count()} CPUs, kernel {os.uname().release}, load average (1 min) {load:.2f} at the end

| processes | `/metrics` response, median of {rows[0]['scrapes']} | size | minder CPU per scrape | reference: `status` on the control socket, median | `/metrics` ÷ `status` | target | met |
|---|---:|---:|---:|---:|---:|---:|---|
{table}

Each scrape is a fresh loopback connection, timed from `connect` to the last
byte (`Connection: close`), one after the other, as Prometheus scrapes. The
reference is a `status` request for the same processes on the control socket
in the same run (the same data as JSON, without the OpenMetrics encoding).
"minder CPU per scrape" is minder's utime+stime over the scrapes, divided by
their number. A running process has 14 series (7 of them
`minder_process_state`, 4 the log bytes by stream); a health check adds 19
(the probe histogram's 17, health, failures).
"""
    docsection.replace_section(path, "metrics", section, "bench/metrics.py")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target-dir", default=os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")))
    ap.add_argument("--programs", type=int, default=1000)
    ap.add_argument("--scrapes", type=int, default=50)
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = ap.parse_args()
    binary, child = release_binaries(args.target_dir)

    rows = [scenario(binary, child, args.programs, args.scrapes, probed) for probed in (False, True)]
    print(json.dumps(rows, indent=2))
    if not args.no_write:
        write_section(rows, f"python3 bench/metrics.py --programs {args.programs} --scrapes {args.scrapes}")


if __name__ == "__main__":
    sys.exit(main())
