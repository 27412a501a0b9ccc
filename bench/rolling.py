#!/usr/bin/env python3
"""Zero-downtime restarts: minder's rolling restart vs supervisord's stop/start.

A simple HTTP child (minder-testchild) is restarted 20 times while a bounded
loopback client load runs (CLIENTS threads requesting back to back). Reports
failed requests and latency percentiles in steady state and during the
restarts, for:
  - minder: `listen` socket held by minder, `notify = true`, `ctl restart`
    (rolling: the old process drains only once the new one is ready);
  - supervisord: the same child binding its own port, `supervisorctl restart`.

Loopback only; every loop bounded in count and time; only processes started
here are signalled, by PID. Results go to docs/benchmarks.md between the
"rolling" markers.

Usage: python3 bench/rolling.py [--target-dir DIR] [--restarts N] [--clients N]
(supervisord comes from bench/.venv, created by bench/run.sh, or PATH).
"""

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import docsection

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_request(port):
    """Latency in seconds, or raises."""
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    if not data.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"bad response {data[:40]!r}")
    return time.perf_counter() - t0


class Load:
    """CLIENTS threads requesting back to back; samples tagged with a phase."""

    def __init__(self, port, clients):
        self.port = port
        self.phase = "steady"
        self.stop = False
        self.lock = threading.Lock()
        self.samples = {"steady": [], "restarts": []}
        self.failures = {"steady": [], "restarts": []}
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(clients)]
        for t in self.threads:
            t.start()

    def run(self):
        deadline = time.monotonic() + 600
        for _ in range(1_000_000):
            if self.stop or time.monotonic() > deadline:
                return
            phase = self.phase
            try:
                lat = one_request(self.port)
                with self.lock:
                    self.samples[phase].append(lat)
            except Exception as e:  # noqa: BLE001 - every failure is counted
                with self.lock:
                    self.failures[phase].append(repr(e))
                time.sleep(0.001)

    def finish(self):
        self.stop = True
        for t in self.threads:
            t.join(timeout=30)


def pct(samples, p):
    if not samples:
        return float("nan")
    s = sorted(samples)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


def measure(load, restart, restarts, steady_s):
    time.sleep(steady_s)
    load.phase = "restarts"
    started = time.monotonic()
    for i in range(restarts):
        restart(i)
    elapsed = time.monotonic() - started
    load.phase = "steady"
    time.sleep(0.5)
    load.finish()
    return elapsed


def run_minder(target, restarts, clients, steady_s):
    minder = os.path.join(target, "release", "minder")
    child = os.path.join(target, "release", "minder-testchild")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="minder-bench-roll.") as tmp:
        sock = os.path.join(tmp, "minder.sock")
        cfg = os.path.join(tmp, "minder.toml")
        with open(cfg, "w") as f:
            f.write(f'[supervisor]\nsocket = "{sock}"\nlog_dir = "{tmp}/logs"\nlog_level = "warn"\n'
                    f'[program.web]\ncommand = ["{child}", "--serve-inherited", "--notify-ready-after", "20"]\n'
                    f'listen = ["tcp://127.0.0.1:{port}"]\nnotify = true\nstop_timeout = "10s"\n')
        log = open(os.path.join(tmp, "daemon.log"), "w")
        d = subprocess.Popen([minder, "daemon", "-c", cfg], stdout=log, stderr=log)
        try:
            ctl = [minder, "ctl", "-s", sock]
            for _ in range(400):
                if subprocess.run(ctl + ["status"], capture_output=True).returncode == 0:
                    break
                time.sleep(0.025)
            load = Load(port, clients)

            def restart(i):
                r = subprocess.run(ctl + ["restart", "web"], capture_output=True, text=True, timeout=60)
                if r.returncode != 0:
                    raise SystemExit(f"minder restart {i} failed: {r.stderr}")

            elapsed = measure(load, restart, restarts, steady_s)
        finally:
            d.send_signal(signal.SIGTERM)
            d.wait(timeout=60)
            log.close()
    return load, elapsed


def supervisord_bin():
    venv = os.path.join(ROOT, "bench", ".venv", "bin")
    for name in ("supervisord", "supervisorctl"):
        if not os.access(os.path.join(venv, name), os.X_OK) and not shutil.which(name):
            raise SystemExit("supervisord not found: run bench/run.sh once (it creates bench/.venv)")
    if os.access(os.path.join(venv, "supervisord"), os.X_OK):
        return os.path.join(venv, "supervisord"), os.path.join(venv, "supervisorctl")
    return shutil.which("supervisord"), shutil.which("supervisorctl")


def run_supervisord(target, restarts, clients, steady_s):
    child = os.path.join(target, "release", "minder-testchild")
    supd, supctl = supervisord_bin()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="minder-bench-sup.") as tmp:
        conf = os.path.join(tmp, "supervisord.conf")
        sock = os.path.join(tmp, "supervisor.sock")
        with open(conf, "w") as f:
            f.write(f"[unix_http_server]\nfile={sock}\n[supervisord]\nnodaemon=true\nlogfile={tmp}/supervisord.log\n"
                    f"pidfile={tmp}/supervisord.pid\n[rpcinterface:supervisor]\n"
                    "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n"
                    f"[supervisorctl]\nserverurl=unix://{sock}\n"
                    f"[program:web]\ncommand={child} --http {port}\nstartsecs=0\nstopwaitsecs=10\n"
                    "stdout_logfile=NONE\nstderr_logfile=NONE\n")
        d = subprocess.Popen([supd, "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(400):
                try:
                    one_request(port)
                    break
                except OSError:
                    time.sleep(0.025)
            load = Load(port, clients)

            def restart(i):
                r = subprocess.run([supctl, "-c", conf, "restart", "web"], capture_output=True, text=True, timeout=60)
                if r.returncode != 0:
                    raise SystemExit(f"supervisorctl restart {i} failed: {r.stdout}{r.stderr}")

            elapsed = measure(load, restart, restarts, steady_s)
        finally:
            d.send_signal(signal.SIGTERM)
            d.wait(timeout=60)
    return load, elapsed


def summary(name, load, elapsed):
    st, rs = load.samples["steady"], load.samples["restarts"]
    fs, fr = load.failures["steady"], load.failures["restarts"]
    return {
        "name": name,
        "ok_steady": len(st), "ok_restarts": len(rs),
        "failed_steady": len(fs), "failed_restarts": len(fr),
        "p50_steady_ms": pct(st, 50) * 1e3, "p99_steady_ms": pct(st, 99) * 1e3,
        "p50_restarts_ms": pct(rs, 50) * 1e3, "p99_restarts_ms": pct(rs, 99) * 1e3,
        "restart_window_s": elapsed,
        "failure_kinds": sorted({re.sub(r"\d+", "N", f)[:60] for f in fr})[:3],
    }


def write_section(rows, args):
    path = os.path.join(ROOT, "docs", "benchmarks.md")
    m, s = rows
    ratio = m["p99_restarts_ms"] / m["p99_steady_ms"] if m["p99_steady_ms"] else float("nan")
    lines = [
        "## Zero-downtime restarts",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- command: `python3 bench/rolling.py --restarts {args.restarts} --clients {args.clients}`",
        f"- machine: {os.cpu_count()} CPUs, kernel {os.uname().release}",
        "",
        f"{args.clients} loopback clients request back to back from a simple HTTP child "
        f"(`minder-testchild`) while it is restarted {args.restarts} times. minder holds the "
        "listening socket (`listen`) and restarts rolling (`ctl restart`: the new process is "
        "started on the same socket, the old one drains once the new one sent READY=1); "
        "supervisord runs the same child binding its own port and restarts it with "
        "`supervisorctl restart` (stop, then start).",
        "",
        "| | minder (rolling) | supervisord (stop/start) |",
        "|---|---:|---:|",
        f"| requests served during the restarts | {m['ok_restarts']} | {s['ok_restarts']} |",
        f"| failed requests during the restarts | {m['failed_restarts']} | {s['failed_restarts']} |",
        f"| failed requests in steady state | {m['failed_steady']} | {s['failed_steady']} |",
        f"| latency p50 / p99, steady | {m['p50_steady_ms']:.2f} / {m['p99_steady_ms']:.2f} ms | {s['p50_steady_ms']:.2f} / {s['p99_steady_ms']:.2f} ms |",
        f"| latency p50 / p99, during restarts | {m['p50_restarts_ms']:.2f} / {m['p99_restarts_ms']:.2f} ms | {s['p50_restarts_ms']:.2f} / {s['p99_restarts_ms']:.2f} ms |",
        f"| time for {args.restarts} restarts | {m['restart_window_s']:.2f} s | {s['restart_window_s']:.2f} s |",
        "",
        f"Targets for minder: 0 failed requests (met: {'yes' if m['failed_restarts'] == 0 else '**no**'}); "
        f"p99 during restarts within 2x of steady state (here {ratio:.2f}x: "
        f"{'met' if ratio <= 2 else '**not met**'}). supervisord's failures: "
        f"{', '.join(s['failure_kinds']) or 'none'}.",
        "",
    ]
    docsection.replace_section(path, "rolling", "\n".join(lines), "bench/rolling.py")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target-dir", default=os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")))
    ap.add_argument("--restarts", type=int, default=20)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--steady", type=float, default=3.0, help="seconds of steady load before the restarts")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    m = summary("minder", *run_minder(args.target_dir, args.restarts, args.clients, args.steady))
    print(m)
    s = summary("supervisord", *run_supervisord(args.target_dir, args.restarts, args.clients, args.steady))
    print(s)
    if not args.no_write:
        write_section((m, s), args)


if __name__ == "__main__":
    sys.exit(main())
