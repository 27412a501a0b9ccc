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
Then minder's RSS with 1000 programs that never write, and with 1000 that
print a line at start. supervisord is installed with pip into bench/.venv on
first use. Writes the `logs` section of docs/benchmarks.md.

    python3 bench/logs.py [--size BYTES] [--runs N] [--cpus LIST] [--skip-supervisord] [--skip-memory] [--no-doc]

--cpus pins the benchmark and everything it starts to those CPUs: `--cpus 1`
puts the generator and its reader on one CPU, as a busy machine often does.
"""

import argparse
import datetime
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
    """Polls the log files until `size` bytes are there (or nothing moves for 10 s).

    Every 1 ms once 95 % are there, every 20 ms before: polling every 2 ms
    throughout woke this Python process 150+ times a run, and on a busy
    2-CPU machine it then shared a CPU with the writer and the capture,
    costing the capture up to 50 % more CPU in some runs (the cat and file
    methods, timed by waiting for their exit, pay no such poller).
    """
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
        time.sleep(0.001 if got >= size * 0.95 else 0.02)
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


def rss_with_programs(command, settle):
    """minder's VmRSS (KiB) with 1000 programs running `command`, after `settle` s."""
    work = Path(tempfile.mkdtemp(prefix="minder-bench-logs-rss."))
    try:
        body = [f'[supervisor]\nsocket = "{work}/m.sock"\nlog_dir = "{work}/logs"\n']
        for i in range(1000):
            body.append(f'[program.p{i}]\ncommand = {command!r}\nstart_secs = "0s"\n'.replace("'", '"'))
        config = work / "minder.toml"
        config.write_text("\n".join(body))
        daemon = subprocess.Popen([str(MINDER), "daemon", "-c", str(config)], stderr=subprocess.DEVNULL)
        try:
            time.sleep(settle)
            for line in Path(f"/proc/{daemon.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
            return None
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=120)
    finally:
        shutil.rmtree(work, ignore_errors=True)


STATIC_TEXT = """
A generator (`minder-testchild --write-bytes SIZE`) writes 128-byte lines to
stdout in 64 KiB writes, as fast as it can. Each method is timed from the
generator's start (for minder and supervisord: from the daemon's start) until
the last byte is in the log files; the methods run in rounds so a busy
machine slows all of them alike. "CPU s" is the user+system time of the
capturing process (minder: all its threads, the blocking pool that writes the
files included). "lost bytes" compares what is in all the files (current and
rotated) with what was written; for minder the line count is checked too.
minder and supervisord rotate at 100 MiB with 20 backups (nothing is pruned).
"""

HOW_TEXT = """
How minder gets there (`src/logs/`): the pipe is enlarged to 256 KiB once
the child fills it. Without timestamps and `tail -f` followers, a burst on
tokio's blocking pool moves the output with `splice(2)`, never through
userspace: from the child's pipe into a private relay pipe of the thread
(page references move, and the child's pipe is locked only for that), then
into the file, in 128 KiB steps that end on 128 KiB file offsets (whole,
aligned page-cache folios). `O_APPEND` is cleared while splicing (splice
refuses it) and each step writes at the end `fstat` reports. The last
256 KiB before `max_size` are read and written, to rotate at a newline; with
timestamps or followers a burst alternates `read` and `write` of 124 KiB
like `cat`. The pipe is unregistered from the runtime during a burst, which
waits 2 ms for more before handing the pipe back. A stream without output
for 10 s gives its task up and waits in one epoll set shared by all idle
streams.

Where `cat` stands: when the machine is busy the scheduler often puts the
generator and its reader on one CPU, and there `cat` is at its best (its 64
KiB pipe keeps every byte in the CPU cache); on two free CPUs it waits for a
cross-CPU wake-up every 64 KiB. The copy into the page cache dominates both
minder and `cat`, and splicing saves only the copy into `cat`'s buffer, so
on one CPU the two are level and minder's lead is on two. Minder before this
design (`read`/`write` of 124 KiB, 1 MiB pipe) and now, same VM, 1 GiB,
medians of 5 to 12 rounds: generator and capture on one CPU 86 % of `cat`,
now 99 to 100 % (`--cpus 1`, which runs this benchmark on one CPU: 3156
against 3189 MiB/s; with `taskset`: 3198 against 3183); on two CPUs 171 to
224 %, now 182 to 244 % depending on the hour (`cat` 735 to 967 MiB/s).
Choices measured on the way: splicing straight from the child's pipe holds
its lock while the file is written (two CPUs, 256 KiB steps: 2050 MiB/s
against 2820 with the relay); steps ending off the 128 KiB grid (after a
rotation cut) cost a tenth more CPU; 256 KiB steps were 3 % faster at best
but, in spells of minutes, 3x slower (the copy into 256 KiB page-cache
folios; 128 KiB ones were not hit); a 1 MiB pipe was 5 to 10 % slower than
256 KiB on one CPU.

Figures vary a lot between sessions on this shared machine (the same `cat`
pipeline has taken 0.35 s and 1.2 s for 1 GiB on different hours): compare
the rows of one run, not runs. The capture is timed by polling the log
files every 20 ms, then every 1 ms for the last 5 %: polling every 2 ms
throughout (as before 2026-11-25) made minder's capture cost up to 50 % more
CPU in some runs on a busy machine. Before log capture existed (children's
output to minder's stderr) the 1000 `sleep` programs took 8.9 MiB. Reference
figures from another 2-core machine of this kind (issue 4): generator to file
2205 MiB/s, through `cat` 1339, horust 779, supervisord 626, s6-log 133.
"""


def write_doc(args, rows, memory, load):
    sys.path.insert(0, str(ROOT / "bench"))
    import docsection

    by = {name: (mibs, cpu, lost) for name, mibs, cpu, lost in rows}
    lines = ["## Log capture: minder, cat and supervisord", "", "### This run", ""]
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cmd = "python3 bench/logs.py" + "".join(
        f" {a}" for a in sys.argv[1:] if a != "--no-doc"
    )
    lines += [f"- date: {when}", f"- command: `{cmd}`",
              f"- {os.cpu_count()} CPUs"
              + (f" (everything pinned to CPU {args.cpus})" if args.cpus else "")
              + f"; load average {load[0]} before, {load[1]} after",
              f"- {args.size / MIB:.0f} MiB through each method, median of {args.runs} rounds"]
    lines += ["", "### Throughput", "", STATIC_TEXT.strip(), "",
              "| method | MiB/s | CPU s | lost bytes |", "|---|---:|---:|---:|"]
    labels = {"file": "generator > file", "cat": "generator \\| cat > file",
              "minder": "**minder**", "minder+ts": "**minder, `timestamps = true`**",
              "supervisord": "supervisord"}
    for name, mibs, cpu, lost in rows:
        lines.append(f"| {labels[name]} | {mibs:.0f} | {cpu} | {lost} |")
    if "cat" in by and "minder" in by:
        cat = by["cat"][0]
        verdict = [f"minder at {100 * by['minder'][0] / cat:.0f} % of `cat`'s rate (target: at least 100 %)"]
        if "minder+ts" in by:
            verdict.append(f"with timestamps {100 * by['minder+ts'][0] / cat:.0f} % (target: at least 50 %)")
        if "supervisord" in by:
            verdict.append(f"{by['minder'][0] / by['supervisord'][0]:.1f}x supervisord's rate")
        lost = max(r[3] for r in rows)
        verdict.append("no byte lost" if lost == 0 else f"{lost} bytes lost")
        lines += ["", "This run: " + "; ".join(verdict) + "."]
    if memory:
        lines += ["", "### Memory with 1000 programs", "",
                  "minder's RSS (`VmRSS`) with 1000 programs, each with its two log pipes:", "",
                  "| programs | RSS |", "|---|---:|"]
        for label, kib in memory:
            lines.append(f"| {label} | {kib / 1024:.1f} MiB |" if kib else f"| {label} | - |")
    lines += ["", HOW_TEXT.strip()]
    docsection.replace_section(str(ROOT / "docs" / "benchmarks.md"), "logs", "\n".join(lines), "bench/logs.py")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1 << 30, help="bytes to write (default 1 GiB)")
    ap.add_argument("--runs", type=int, default=3, help="runs per method; the median is shown")
    ap.add_argument("--skip-supervisord", action="store_true")
    ap.add_argument("--skip-memory", action="store_true", help="no RSS measurement")
    ap.add_argument("--cpus", help="comma-separated CPU numbers to run everything on")
    ap.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    args = ap.parse_args()
    if args.cpus:
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    load_before = f"{os.getloadavg()[0]:.1f}"
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
    rows = []
    for name, _ in methods:
        rs = results[name]
        secs = statistics.median(r[0] for r in rs)
        cpus = [r[1] for r in rs if r[1] is not None]
        cpu = f"{statistics.median(cpus):.2f}" if cpus else "-"
        lost = max(r[2] for r in rs)
        rows.append((name, args.size / MIB / secs, cpu, lost))
        print(f"{name:<12} {args.size / MIB / secs:>8.0f} {cpu:>7} {lost:>11}", flush=True)
    memory = []
    if not args.skip_memory:
        # 15 s: past the 10 s after which idle streams give their task up.
        for label, command in [
            ("1000 x `sleep 3600` (never write)", ["sleep", "3600"]),
            ("1000 x `echo hello; exec sleep 3600`, 15 s after start",
             ["sh", "-c", "echo hello; exec sleep 3600"]),
        ]:
            kib = rss_with_programs(command, 15)
            memory.append((label, kib))
            print(f"RSS, {label}: {kib} KiB", flush=True)
    if not args.no_doc:
        write_doc(args, rows, memory, (load_before, f"{os.getloadavg()[0]:.1f}"))

if __name__ == "__main__":
    main()
