#!/usr/bin/env python3
"""Log capture throughput: minder vs supervisord vs plain files.

A generator (minder-testchild --write-bytes) writes SIZE bytes (default 1 GiB)
of 128-byte lines to stdout as fast as it can. Measured, in one run:

  file         generator > file                   (the disk's own speed)
  cat          generator | cat > file             (the pipe-then-write path)
  minder       minder captures it, rotating at 100 MiB x 20 backups
  minder+ts    the same with timestamps = true
  supervisord  supervisord captures it, stdout_logfile_maxbytes=100MB x 20

Reports MiB/s (from the generator's start until every byte is in the log
files), the capturing process's CPU seconds, and bytes lost (must be 0).
supervisord is installed with pip into bench/.venv on first use.

    python3 bench/logs.py [--size BYTES] [--runs N] [--skip-supervisord]
"""

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
MINDER = TARGET / "release" / "minder"
CHILD = TARGET / "release" / "minder-testchild"
VENV = ROOT / "bench" / ".venv"
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024
DEADLINE = 600  # seconds for one run, whatever happens


def build():
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)


def supervisord_bin():
    exe = VENV / "bin" / "supervisord"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "--quiet", "supervisor"], check=True)
    return exe


def generator(size):
    return [str(CHILD), "--write-bytes", str(size), "--exit-after", "0"]


def cpu_seconds(pid):
    """user + system CPU of a live process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def log_bytes(directory, name):
    total = 0
    for p in Path(directory).glob(name + "*"):
        try:
            total += p.stat().st_size
        except FileNotFoundError:
            pass  # renamed by a rotation under our feet: counted next poll
    return total


def lines_in(directory, name):
    n = 0
    for p in Path(directory).glob(name + "*"):
        with open(p, "rb") as f:
            while chunk := f.read(1 << 22):
                n += chunk.count(b"\n")
    return n


def wait_bytes(directory, name, size, proc):
    """Polls the log files until `size` bytes are there (or nothing moves for 10 s)."""
    start = time.monotonic()
    last, last_change = -1, start
    while time.monotonic() - start < DEADLINE:
        got = log_bytes(directory, name)
        now = time.monotonic()
        if got >= size:
            return now
        if got != last:
            last, last_change = got, now
        elif now - last_change > 10 or proc.poll() is not None and now - last_change > 2:
            return now  # stalled: bytes are missing, the caller reports them
        time.sleep(0.002)
    return time.monotonic()


def run_file(size, work):
    out = work / "file.log"
    t0 = time.monotonic()
    with open(out, "wb") as f:
        subprocess.run(generator(size), stdout=f, check=True)
    t1 = time.monotonic()
    return t1 - t0, None, size - out.stat().st_size


def run_cat(size, work):
    out = work / "cat.log"
    t0 = time.monotonic()
    with open(out, "wb") as f:
        gen = subprocess.Popen(generator(size), stdout=subprocess.PIPE)
        cat = subprocess.Popen(["cat"], stdin=gen.stdout, stdout=f)
        gen.stdout.close()
        gen.wait()
        _, _, usage = os.wait4(cat.pid, 0)
        cat.returncode = 0
    t1 = time.monotonic()
    return t1 - t0, usage.ru_utime + usage.ru_stime, size - out.stat().st_size


def run_minder(size, work, timestamps=False):
    logs = work / "logs"
    config = work / "minder.toml"
    config.write_text(
        f"""[supervisor]
socket = "{work}/minder.sock"
log_dir = "{logs}"
[program.gen]
command = {generator(size)!r}
restart = "never"
start_secs = "0s"
[program.gen.logs]
max_size = "100MiB"
backups = 20
stderr = "none"
timestamps = {"true" if timestamps else "false"}
""".replace("'", '"')
    )
    t0 = time.monotonic()
    daemon = subprocess.Popen([str(MINDER), "daemon", "-c", str(config)], stderr=subprocess.DEVNULL)
    try:
        if timestamps:
            # Every line gets a 28-byte prefix ("2026-05-06T07:08:09.123456Z ").
            want = size // 128 * (128 + 28)
            t1 = wait_bytes(logs, "gen.stdout.log", want, daemon)
            got_lines = lines_in(logs, "gen.stdout.log")
            lost = (size // 128 - got_lines) * 128 + max(0, want - log_bytes(logs, "gen.stdout.log"))
        else:
            t1 = wait_bytes(logs, "gen.stdout.log", size, daemon)
            lost = size - log_bytes(logs, "gen.stdout.log")
            if lines_in(logs, "gen.stdout.log") != size // 128:
                lost = max(lost, 1)
        cpu = cpu_seconds(daemon.pid)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
    return t1 - t0, cpu, lost


def run_supervisord(size, work):
    exe = supervisord_bin()
    logs = work / "logs"
    logs.mkdir()
    config = work / "supervisord.conf"
    config.write_text(
        f"""[supervisord]
nodaemon=true
logfile={work}/supervisord.log
pidfile={work}/supervisord.pid
[unix_http_server]
file={work}/supervisor.sock
[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
[program:gen]
command={" ".join(generator(size))}
autorestart=false
startsecs=0
stdout_logfile={logs}/gen.stdout.log
stdout_logfile_maxbytes=100MB
stdout_logfile_backups=20
stderr_logfile=NONE
"""
    )
    t0 = time.monotonic()
    daemon = subprocess.Popen([str(exe), "-c", str(config)], stdout=subprocess.DEVNULL)
    try:
        t1 = wait_bytes(logs, "gen.stdout.log", size, daemon)
        lost = size - log_bytes(logs, "gen.stdout.log")
        cpu = cpu_seconds(daemon.pid)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
    return t1 - t0, cpu, lost


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1 << 30, help="bytes to write (default 1 GiB)")
    ap.add_argument("--runs", type=int, default=3, help="runs per method; the median is shown")
    ap.add_argument("--skip-supervisord", action="store_true")
    args = ap.parse_args()
    build()
    methods = [
        ("file", run_file),
        ("cat", run_cat),
        ("minder", run_minder),
        ("minder+ts", lambda s, w: run_minder(s, w, timestamps=True)),
    ]
    if not args.skip_supervisord:
        methods.append(("supervisord", run_supervisord))
    print(f"{args.size / MIB:.0f} MiB through each, median of {args.runs} runs, {os.cpu_count()} CPUs")
    print(f"{'method':<12} {'MiB/s':>8} {'CPU s':>7} {'lost bytes':>11}")
    # Rounds of every method in turn, so a busy neighbour on the machine
    # slows all of them alike rather than one.
    results = {name: [] for name, _ in methods}
    for _ in range(args.runs):
        for name, run in methods:
            work = Path(tempfile.mkdtemp(prefix="minder-bench-logs."))
            try:
                results[name].append(run(args.size, work))
            finally:
                shutil.rmtree(work, ignore_errors=True)
    for name, _ in methods:
        rs = results[name]
        secs = statistics.median(r[0] for r in rs)
        cpus = [r[1] for r in rs if r[1] is not None]
        cpu = f"{statistics.median(cpus):.2f}" if cpus else "-"
        lost = max(r[2] for r in rs)
        print(f"{name:<12} {args.size / MIB / secs:>8.0f} {cpu:>7} {lost:>11}", flush=True)

if __name__ == "__main__":
    main()
