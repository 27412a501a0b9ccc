#!/usr/bin/env python3
"""Health-check benchmarks for minder (issue: health-aware supervision).

1. CPU cost: 1000 programs, each with an HTTP health check every 1 s against
   one local server (minder-testchild --http, started by this script, not
   supervised). minder's CPU time over a 30 s window, as % of one core.
   And with --https-programs N (default 100): N programs with an
   `https://` check every 1 s against one local TLS server (Python's
   http.server behind ssl, keep-alive, a certificate made with the openssl
   CLI; `insecure = true`, so the full handshake and encryption but no
   chain to build): minder keeps one connection per process.
2. Detection latency: one program serving /health (interval 1 s,
   failure_threshold 3). The bench creates the flag file that turns /health
   into 500 and records CLOCK_MONOTONIC; the child records when SIGTERM (the
   restart beginning) arrives. Latency = stop - flag, over several rounds.

Loopback only; every loop bounded in count and time; only processes this
script started are signalled, by PID. Results go to docs/benchmarks.md
between the "health" markers (the rest of the file is left alone).

With --reference DIR (a target dir holding another release build of
minder), measurement 1's http:// part runs for both builds, alternately,
twice each, and both figures are written: how the choice of the HTTP client
for http:// probes was made (docs/benchmarks.md, "Health checks").

Usage: python3 bench/health.py [--target-dir DIR] [--programs N] [--window S] [--rounds N]
                               [--reference DIR]
"""

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

import docsection

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def monotonic_ns():
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


class Minder:
    """A minder daemon on a config in a temp dir, stopped by PID."""

    def __init__(self, binary, tmp, body):
        self.binary = binary
        self.sock = os.path.join(tmp, "minder.sock")
        self.config = os.path.join(tmp, "minder.toml")
        with open(self.config, "w") as f:
            f.write(f'[supervisor]\nsocket = "{self.sock}"\nlog_dir = "{tmp}/logs"\nlog_level = "warn"\n\n')
            f.write(body)
        self.log = open(os.path.join(tmp, "daemon.log"), "w")
        self.proc = subprocess.Popen([binary, "daemon", "-c", self.config],
                                     stdout=self.log, stderr=self.log)

    def status(self):
        out = subprocess.run([self.binary, "ctl", "-s", self.sock, "status", "--json"],
                             capture_output=True, text=True, timeout=30)
        if out.returncode not in (0, 3):
            return None
        return json.loads(out.stdout)["processes"]

    def wait_for(self, pred, timeout, what):
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout / 0.05) + 2):
            procs = self.status()
            if procs is not None and pred(procs):
                return procs
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        raise SystemExit(f"timed out waiting for {what}")

    def stop(self):
        stop_daemon(self.proc, self.log)


def stop_daemon(proc, log):
    """SIGTERM to a daemon this bench started (SIGKILL after 60 s), then its log closed."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    log.close()


def probing_cpu(binary, tmp, server, url, extra, programs, window):
    """minder's CPU over `window` with `programs` sleeps checking `url` every
    second (plus `extra` health keys), once all are healthy; `server` is the
    probed server's process (its CPU is reported too)."""
    body = "".join(
        f'[program.p{i}]\ncommand = ["/bin/sleep", "3600"]\n'
        f'[program.p{i}.health]\nhttp = "{url}"\n{extra}'
        f'interval = "1s"\ntimeout = "2s"\n\n'
        for i in range(programs))
    d = Minder(binary, tmp, body)
    try:
        d.wait_for(lambda ps: len(ps) == programs and all(
            p["state"] == "running" and p["health"] == "healthy" for p in ps),
            120, f"{programs} programs healthy on {url}")
        time.sleep(2)  # let the start-up burst (and its handshakes) settle before measuring
        before = cpu_seconds(d.proc.pid)
        server_before = cpu_seconds(server.pid)
        time.sleep(window)
        used = cpu_seconds(d.proc.pid) - before
        server_used = cpu_seconds(server.pid) - server_before
        rss = rss_mib(d.proc.pid)
        procs = d.status()
        unhealthy = sum(1 for p in procs if p["health"] != "healthy")
    finally:
        d.stop()
    return {
        "programs": programs,
        "window_s": window,
        "minder_cpu_s": used,
        "minder_cpu_pct": 100.0 * used / window,
        "server_cpu_pct": 100.0 * server_used / window,
        "probes_per_s": programs / 1.0,
        "rss_mib": rss,
        "not_healthy_at_end": unhealthy,
    }


def bench_cpu(binary, child, programs, window):
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="minder-bench-health.") as tmp:
        server = subprocess.Popen([child, "--http", str(port)])
        try:
            return probing_cpu(binary, tmp, server, f"http://127.0.0.1:{port}/health", "",
                               programs, window)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=10)


HTTPS_SERVER = r"""
import http.server, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *a):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[2], sys.argv[3])
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"""


def bench_https_cpu(binary, programs, window):
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="minder-bench-https.") as tmp:
        cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", key, "-out", cert], check=True, capture_output=True, timeout=60)
        server = subprocess.Popen([sys.executable, "-c", HTTPS_SERVER, str(port), cert, key])
        try:
            for _ in range(200):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.05)
            return probing_cpu(binary, tmp, server, f"https://127.0.0.1:{port}/health",
                               "insecure = true\n", programs, window)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=10)


def read_record(path):
    events = []
    try:
        with open(path) as f:
            for line in f:
                kind, ns, pid = line.split()
                events.append((kind, int(ns), int(pid)))
    except FileNotFoundError:
        pass
    return events


def bench_detection(binary, child, rounds):
    port = free_port()
    latencies = []
    with tempfile.TemporaryDirectory(prefix="minder-bench-detect.") as tmp:
        flag = os.path.join(tmp, "sick")
        record = os.path.join(tmp, "web.rec")
        body = (
            f'[program.web]\ncommand = ["{child}", "--http", "{port}", "--unhealthy-if", "{flag}", '
            f'"--record", "{record}"]\nstop_timeout = "5s"\n'
            f'[program.web.backoff]\ninitial = "100ms"\njitter = 0.0\n'
            f'[program.web.health]\nhttp = "http://127.0.0.1:{port}/health"\n'
            f'interval = "1s"\ntimeout = "500ms"\nfailure_threshold = 3\n')
        d = Minder(binary, tmp, body)
        try:
            for _ in range(rounds):
                d.wait_for(lambda ps: ps[0]["state"] == "running" and ps[0]["health"] == "healthy",
                           60, "web healthy")
                stops_before = len([e for e in read_record(record) if e[0] == "stop"])
                # Start the round at a random phase of the probe interval.
                time.sleep(0.1 + (monotonic_ns() % 900) / 1000.0)
                t0 = monotonic_ns()
                open(flag, "w").close()
                deadline = time.monotonic() + 30
                stop = None
                while time.monotonic() < deadline:
                    stops = [e for e in read_record(record) if e[0] == "stop"]
                    if len(stops) > stops_before:
                        stop = stops[-1][1]
                        break
                    time.sleep(0.01)
                os.unlink(flag)
                if stop is None:
                    raise SystemExit("no restart within 30 s")
                latencies.append((stop - t0) / 1e9)
        finally:
            d.stop()
    latencies.sort()
    return {
        "rounds": rounds,
        "latencies_s": latencies,
        "median_s": latencies[len(latencies) // 2],
        "max_s": latencies[-1],
        "bound_s": 3 * 1.0 * 1.1,
    }


def release_binaries(target_dir):
    """The release minder and minder-testchild; also raises RLIMIT_NOFILE to
    its hard limit, for the daemon (and its 1000 programs) started from here."""
    binary = os.path.join(target_dir, "release", "minder")
    child = os.path.join(target_dir, "release", "minder-testchild")
    for b in (binary, child):
        if not os.access(b, os.X_OK):
            raise SystemExit(f"{b} not found: run `cargo build --release --bins` first")
    import resource
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return binary, child


def write_section(cpu, https, det, command, reference=None):
    path = os.path.join(ROOT, "docs", "benchmarks.md")
    cpu_ok = "yes" if cpu["minder_cpu_pct"] < 5.0 else "**no**"
    det_ok = "yes" if det["max_s"] <= det["bound_s"] else "**no**"
    https_ok = "yes" if https["minder_cpu_pct"] < 5.0 else "**no**"
    lat = ", ".join(f"{x:.2f}" for x in det["latencies_s"])
    section = f"""## Health checks

- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}
- command: `{command}`
- machine: {os.cpu_count()} CPUs, kernel {os.uname().release}

| measurement | minder | target | met |
|---|---:|---:|---|
| {cpu['programs']} programs, HTTP check every 1 s: minder CPU | {cpu['minder_cpu_pct']:.2f} % of one core ({cpu['minder_cpu_s']:.2f} s over {cpu['window_s']:.0f} s) | < 5 % | {cpu_ok} |
| {https['programs']} programs, HTTPS check every 1 s: minder CPU | {https['minder_cpu_pct']:.2f} % of one core ({https['minder_cpu_s']:.2f} s over {https['window_s']:.0f} s) | < 5 % | {https_ok} |
| detection latency (500 -> restart begins), interval 1 s, threshold 3: worst of {det['rounds']} | {det['max_s']:.2f} s (median {det['median_s']:.2f} s) | <= {det['bound_s']:.1f} s | {det_ok} |

- CPU: {cpu['programs']} `sleep` programs, each probing one local HTTP server
  (`minder-testchild --http`, outside minder; its own CPU was
  {cpu['server_cpu_pct']:.1f} % of a core) with `interval = "1s"`: about
  {cpu['probes_per_s']:.0f} probes per second, each a fresh loopback TCP connection
  (no pooling, so a dead server is noticed). CPU is utime+stime of the minder
  process from /proc over the window, after all were healthy. minder's RSS
  during the run: {cpu['rss_mib']:.1f} MiB. Processes not healthy at the end: {cpu['not_healthy_at_end']}.
- HTTPS: {https['programs']} `sleep` programs probing one local TLS server
  (Python's `http.server` behind `ssl`, keep-alive, an ECDSA P-256
  certificate made by `openssl`; `insecure = true`) every 1 s. Each process
  keeps its connection between probes, so after the first handshake a probe
  is a request on an open TLS session. minder's RSS during the run:
  {https['rss_mib']:.1f} MiB (each kept TLS connection holds rustls' state and
  buffers). Processes not healthy at the end: {https['not_healthy_at_end']}.
- Detection: the bench creates the flag file that turns `/health` into 500 at a
  random phase of the probe interval and reads the child's own record of when
  SIGTERM arrived. A failure is seen by the first probe after the flag (up to one
  interval later) and two more probes one interval apart, so the latency lies
  between 2 and 3 intervals plus probe time. Rounds (s): {lat}.
"""
    if reference:
        def runs(rs):
            return " / ".join(f"{r['minder_cpu_pct']:.2f} % ({r['rss_mib']:.1f} MiB)" for r in rs)
        section += f"""- Same go, alternating, {len(reference['this'])} runs each of the {cpu['programs']}
  http:// checks (CPU, RSS during the run): this build {runs(reference['this'])};
  the reference build in `{reference['dir']}` {runs(reference['runs'])}. The row
  above is this build's lower run.
"""
    docsection.replace_section(path, "health", section, "bench/health.py")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target-dir", default=os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")))
    ap.add_argument("--programs", type=int, default=1000)
    ap.add_argument("--window", type=float, default=30.0)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--https-programs", type=int, default=100)
    ap.add_argument("--reference", metavar="DIR",
                    help="target dir of a reference release build, for the http:// CPU figure")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = ap.parse_args()
    binary, child = release_binaries(args.target_dir)

    reference = None
    if args.reference:
        ref_binary, _ = release_binaries(args.reference)
        runs, ref_runs = [], []
        for _ in range(2):
            ref_runs.append(bench_cpu(ref_binary, child, args.programs, args.window))
            runs.append(bench_cpu(binary, child, args.programs, args.window))
        print(json.dumps({"reference": ref_runs, "this": runs}, indent=2))
        reference = {"runs": ref_runs, "this": runs, "dir": args.reference}
        cpu = min(runs, key=lambda r: r["minder_cpu_pct"])
    else:
        cpu = bench_cpu(binary, child, args.programs, args.window)
    print(json.dumps(cpu, indent=2))
    https = bench_https_cpu(binary, args.https_programs, args.window)
    print(json.dumps(https, indent=2))
    det = bench_detection(binary, child, args.rounds)
    print(json.dumps(det, indent=2))
    if not args.no_write:
        command = "python3 bench/health.py" + "".join(
            f" --{k.replace('_', '-')} {v}" for k, v in
            (("programs", args.programs), ("https-programs", args.https_programs),
             ("window", args.window), ("rounds", args.rounds)))
        if reference:
            command += f" --reference {reference['dir']}"
        write_section(cpu, https, det, command, reference)


if __name__ == "__main__":
    sys.exit(main())
