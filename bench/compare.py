#!/usr/bin/env python3
"""Measure minder and supervisord side by side, on the same programs, in one run.

Measurements (see docs/benchmarks.md for the method and the targets):

  1. 1000 idle programs (/bin/sleep 3600): time from daemon start until all are
     running, RSS of the supervisor, CPU time of the supervisor over an idle window.
  2. crash-to-restart latency of a program that exits 1 at once.
  3. latency of `ctl status` with 100 and with 1000 programs.
  4. `stop all` of 100 programs, and daemon shutdown (SIGTERM to exit) with 100.

Only the standard library is used. supervisord comes from bench/.venv (see
bench/run.sh). Every loop is bounded in count and time; only processes this
script started are signalled, by PID; the temporary directory is removed.
"""

import argparse
import ctypes
import datetime
import json
import os
import platform
import resource
import select
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

import docsection

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
CLK_TCK = os.sysconf("SC_CLK_TCK")
PR_SET_CHILD_SUBREAPER = 36
SLEEP_ARGV = ["/bin/sleep", "3600"]


class BenchError(Exception):
    """A measurement could not be taken; the message says why."""


# --------------------------------------------------------------------------
# /proc helpers


def proc_status_field(pid, field):
    """A field of /proc/PID/status, as its first token (e.g. VmRSS -> kB)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return line.split()[1]
    return None


def rss_kib(pid):
    v = proc_status_field(pid, "VmRSS")
    return int(v) if v is not None else None


def hwm_kib(pid):
    v = proc_status_field(pid, "VmHWM")
    return int(v) if v is not None else None


def stat_fields(pid):
    """Fields of /proc/PID/stat after the command name: [state, ppid, ...]."""
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    return data[data.rindex(")") + 2:].split()


def cpu_ms(pid):
    """utime + stime of the whole process (all threads, living and dead), in ms."""
    rest = stat_fields(pid)
    return (int(rest[11]) + int(rest[12])) * 1000.0 / CLK_TCK


def thread_count(pid):
    return len(os.listdir(f"/proc/{pid}/task"))


def context_switches(pid):
    """Voluntary + involuntary context switches summed over the live threads."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def children_of(ppid):
    """PIDs whose parent is ppid (scan of /proc)."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            rest = stat_fields(int(name))
        except (OSError, ValueError):
            continue
        if int(rest[1]) == ppid:
            out.append(int(name))
    return out


def alive(pid):
    """True if pid exists and is not a zombie."""
    try:
        return stat_fields(pid)[0] != "Z"
    except (OSError, ValueError):
        return False


def pid_wait(proc, timeout):
    """Wait for a Popen to exit, woken by its pidfd (no polling granularity).

    Returns the monotonic time at which the exit was noticed, or None on timeout.
    """
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        fd = None
    if fd is None:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        return time.monotonic()
    try:
        p = select.poll()
        p.register(fd, select.POLLIN)
        if not p.poll(max(0, timeout) * 1000):
            return None
        t = time.monotonic()
        proc.wait()
        return t
    finally:
        os.close(fd)


# --------------------------------------------------------------------------
# the two supervisors


def run(argv, timeout):
    """Run a command, capture its output, return (seconds, CompletedProcess)."""
    t0 = time.perf_counter()
    cp = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, timeout=timeout, text=True)
    return time.perf_counter() - t0, cp


class Daemon:
    """One supervisor daemon in its own temporary directory."""

    label = "?"

    def __init__(self, bench, tag):
        self.bench = bench
        self.dir = tempfile.mkdtemp(prefix=f"{self.key}-{tag}-", dir=bench.tmp)
        self.proc = None
        self.t_start = None

    # subclasses: write_config(programs), daemon_argv(), states(), status_argv(json),
    # stop_all_argv()

    def start(self):
        out = subprocess.DEVNULL
        if self.bench.args.debug:
            out = open(os.path.join(self.dir, "daemon.out"), "wb")
        self.t_start = time.monotonic()
        self.proc = subprocess.Popen(self.daemon_argv(), stdin=subprocess.DEVNULL,
                                     stdout=out, stderr=out, cwd=self.dir,
                                     start_new_session=True)
        self.bench.daemons.append(self)

    def wait_all_running(self, n, timeout):
        """Poll status until n processes are running; seconds since daemon start.

        The time is taken when the status call that first shows all running
        returns, so it includes that one call (an upper bound)."""
        deadline = time.monotonic() + timeout
        polls = 0
        last = None
        while True:
            polls += 1
            states = self.states()
            now = time.monotonic()
            if states is not None:
                running = sum(1 for s in states.values() if s == "running")
                last = running
                if running >= n:
                    return now - self.t_start, polls
            if self.proc.poll() is not None:
                raise BenchError(f"{self.label} exited with {self.proc.returncode} "
                                 f"before all {n} were running")
            if now > deadline:
                raise BenchError(f"{self.label}: only {last} of {n} running after {timeout:g} s")
            time.sleep(self.poll_interval)

    def wait_states(self, want, timeout):
        """Poll until every process is in state `want`; True when reached."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.states()
            if st is not None and st and all(s == want for s in st.values()):
                return True
            time.sleep(0.05)
        return False

    def terminate(self, timeout):
        """SIGTERM the daemon, wait for its exit; seconds, or None on timeout."""
        t0 = time.monotonic()
        os.kill(self.proc.pid, signal.SIGTERM)
        t = pid_wait(self.proc, timeout)
        return None if t is None else t - t0

    def stop(self):
        """Make sure the daemon is gone (SIGTERM, bounded wait, then SIGKILL)."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                if self.terminate(self.bench.args.cleanup_secs) is None:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        if self in self.bench.daemons:
            self.bench.daemons.remove(self)


class Minder(Daemon):
    key = "minder"
    label = "minder"
    poll_interval = 0.005

    def __init__(self, bench, tag):
        super().__init__(bench, tag)
        self.sock = os.path.join(self.dir, "minder.sock")
        self.cfg = os.path.join(self.dir, "minder.toml")

    def write_config(self, programs):
        q = json.dumps  # a JSON string is a valid TOML basic string here
        lines = ["[supervisor]", f"socket = {q(self.sock)}",
                 f"log_dir = {q(os.path.join(self.dir, 'logs'))}", ""]
        for p in programs:
            lines.append(f"[program.{p['name']}]")
            lines.append("command = [" + ", ".join(q(a) for a in p["argv"]) + "]")
            lines.append('start_secs = "0s"')
            if self.bench.args.program_extra:
                lines.append(self.bench.args.program_extra)
            if p.get("crash"):
                lines += ["", f"[program.{p['name']}.backoff]", 'initial = "0s"', "jitter = 0.0"]
            lines.append("")
        with open(self.cfg, "w") as f:
            f.write("\n".join(lines))

    def daemon_argv(self):
        return [self.bench.minder, "daemon", "-c", self.cfg]

    def ctl(self, *args):
        return [self.bench.minder, "ctl", "-s", self.sock, *args]

    def status_argv(self, json_out=False):
        return self.ctl("status", "--json") if json_out else self.ctl("status")

    def stop_all_argv(self):
        return self.ctl("stop", "all")

    def states(self):
        try:
            _, cp = run(self.status_argv(True), 30)
        except subprocess.TimeoutExpired:
            return None
        if cp.returncode not in (0, 3):
            return None
        try:
            doc = json.loads(cp.stdout)
        except ValueError:
            return None
        return {p["name"]: p["state"] for p in doc.get("processes", [])}


SV_STATES = {"STOPPED", "STARTING", "RUNNING", "BACKOFF", "STOPPING", "EXITED",
             "FATAL", "UNKNOWN"}


class Supervisord(Daemon):
    key = "supervisord"
    label = "supervisord"
    poll_interval = 0.05

    def __init__(self, bench, tag):
        super().__init__(bench, tag)
        self.sock = os.path.join(self.dir, "supervisor.sock")
        self.cfg = os.path.join(self.dir, "supervisord.conf")

    def write_config(self, programs):
        d = self.dir
        lines = [
            "[unix_http_server]", f"file={d}/supervisor.sock", "chmod=0700", "",
            "[supervisord]", "nodaemon=true", f"logfile={d}/supervisord.log",
            f"pidfile={d}/supervisord.pid", f"childlogdir={d}", "",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface", "",
            "[supervisorctl]", f"serverurl=unix://{d}/supervisor.sock", "",
        ]
        for p in programs:
            lines += [f"[program:{p['name']}]",
                      "command=" + " ".join(shlex.quote(a) for a in p["argv"]),
                      "startsecs=0", "stdout_logfile=NONE", "stderr_logfile=NONE"]
            if p.get("crash"):
                lines += ["autorestart=true", "startretries=1000000"]
            lines.append("")
        with open(self.cfg, "w") as f:
            f.write("\n".join(lines).replace("%", "%%"))

    def daemon_argv(self):
        return [self.bench.supervisord, "-c", self.cfg]

    def status_argv(self, json_out=False):
        return [self.bench.supervisorctl, "-c", self.cfg, "status"]

    def stop_all_argv(self):
        return [self.bench.supervisorctl, "-c", self.cfg, "stop", "all"]

    def states(self):
        try:
            _, cp = run(self.status_argv(), 60)
        except subprocess.TimeoutExpired:
            return None
        out = {}
        for line in cp.stdout.splitlines():
            tok = line.split()
            if len(tok) >= 2 and tok[1] in SV_STATES:
                out[tok[0]] = tok[1].lower()
        return out or None


# --------------------------------------------------------------------------
# measurements


def median_ms(samples):
    return statistics.median(samples) * 1000.0


def sleep_programs(n):
    return [{"name": f"p{i}", "argv": SLEEP_ARGV} for i in range(n)]


class Bench:
    def __init__(self, args):
        self.args = args
        self.daemons = []
        self.tmp = None
        self.results = {}  # key -> {"minder": value|None, "supervisord": ..., "errors": {...}}
        self.notes = []
        self.minder = args.minder
        self.testchild = args.testchild
        self.supervisord = args.supervisord
        self.supervisorctl = os.path.join(os.path.dirname(args.supervisord), "supervisorctl")
        self.kinds = [k for k in (Minder, Supervisord) if k.key in args.only]

    def log(self, msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    def put(self, key, who, value, **extra):
        r = self.results.setdefault(key, {})
        r[who] = value
        for k, v in extra.items():
            r.setdefault("extra", {}).setdefault(who, {})[k] = v

    def fail(self, keys, who, err):
        for key in keys:
            self.results.setdefault(key, {}).setdefault("errors", {})[who] = str(err)
        self.log(f"{who}: {err}")

    def check_leftovers(self, kids, who, what):
        left = [p for p in kids if alive(p)]
        if left:
            self.notes.append(f"{who}: {len(left)} of {len(kids)} children still alive "
                              f"after {what} (killed by the bench)")
        return len(left)

    # 1 + 3 (1000) -----------------------------------------------------------
    def m_idle(self, kind):
        n = self.args.programs
        d = kind(self, f"idle{n}")
        keys = ["start_all", "rss", "idle_cpu", f"status_{n}", f"status_json_{n}", f"shutdown_{n}"]
        try:
            d.write_config(sleep_programs(n))
            d.start()
            t_all, polls = d.wait_all_running(n, self.args.start_timeout)
            self.start_samples = [t_all]
            self.put("start_all", d.key, t_all, polls=polls, samples=list(self.start_samples))
            self.log(f"{d.label}: {n} running after {t_all:.3f} s ({polls} status polls)")
            time.sleep(self.args.settle_secs)
            pid = d.proc.pid
            c0, x0, r0 = cpu_ms(pid), context_switches(pid), time.monotonic()
            time.sleep(self.args.idle_secs)
            c1, x1, r1 = cpu_ms(pid), context_switches(pid), time.monotonic()
            rss = rss_kib(pid)
            self.put("rss", d.key, rss / 1024.0, hwm_mib=hwm_kib(pid) / 1024.0,
                     threads=thread_count(pid))
            self.put("idle_cpu", d.key, c1 - c0, window_s=r1 - r0, ctxsw=x1 - x0)
            self.log(f"{d.label}: RSS {rss / 1024:.1f} MiB, CPU {c1 - c0:.0f} ms and "
                     f"{x1 - x0} context switches over {r1 - r0:.1f} s idle")
            self.m_status(d, n)
            self.put("rss", d.key, rss / 1024.0, after_status_mib=rss_kib(pid) / 1024.0)
            kids = children_of(pid)
            t = d.terminate(self.args.shutdown_timeout)
            if t is None:
                raise BenchError(f"{d.label} did not exit within {self.args.shutdown_timeout} s of SIGTERM")
            self.put(f"shutdown_{n}", d.key, t)
            self.log(f"{d.label}: shutdown with {n} took {t:.3f} s")
            self.check_leftovers(kids, d.label, f"shutdown with {n}")
        except Exception as e:  # one failed measurement must not hide the others
            if self.args.debug:
                traceback.print_exc()
            done = [k for k in keys if d.key in self.results.get(k, {})]
            self.fail([k for k in keys if k not in done], d.key, e)
        finally:
            d.stop()

    # 1, more samples of the start -------------------------------------------
    def m_start_again(self, kind):
        """Further fresh daemons of n programs, for the median time until all run."""
        n = self.args.programs
        samples = list(getattr(self, "start_samples", []))
        if not samples:
            return
        for rep in range(1, self.args.start_repeat):
            d = kind(self, f"start{n}-{rep}")
            try:
                d.write_config(sleep_programs(n))
                d.start()
                t, _ = d.wait_all_running(n, self.args.start_timeout)
                samples.append(t)
                self.log(f"{d.label}: {n} running after {t:.3f} s (repetition {rep + 1})")
            except Exception as e:
                self.notes.append(f"{d.label}: repetition {rep + 1} of the start of {n}: {e}")
                break
            finally:
                d.stop()
        self.put("start_all", kind.key, statistics.median(samples), samples=samples)
        self.start_samples = []

    # 1, without any status call ---------------------------------------------
    def m_rss_quiet(self, kind):
        """RSS with n programs when no status request was ever made: the daemon's
        children are counted in /proc instead of asking the daemon."""
        n = self.args.programs
        d = kind(self, f"quiet{n}")
        try:
            d.write_config(sleep_programs(n))
            d.start()
            deadline = time.monotonic() + self.args.start_timeout
            while len(children_of(d.proc.pid)) < n:
                if d.proc.poll() is not None:
                    raise BenchError(f"{d.label} exited with {d.proc.returncode}")
                if time.monotonic() > deadline:
                    raise BenchError(f"{d.label}: fewer than {n} children after {self.args.start_timeout:g} s")
                time.sleep(0.1)
            time.sleep(self.args.settle_secs + 2)
            v = rss_kib(d.proc.pid) / 1024.0
            self.put("rss_quiet", d.key, v)
            self.log(f"{d.label}: RSS {v:.1f} MiB with {n} children and no status call made")
        except Exception as e:
            if self.args.debug:
                traceback.print_exc()
            self.fail(["rss_quiet"], d.key, e)
        finally:
            d.stop()

    # 3 -----------------------------------------------------------------------
    def m_status(self, d, n):
        variants = [(f"status_{n}", False)]
        if d.key == "minder":
            variants.append((f"status_json_{n}", True))
            runs = self.args.status_runs
        else:
            runs = self.args.sv_status_runs
        for key, js in variants:
            argv = d.status_argv(js)
            for _ in range(2):  # warm-up: page cache, first connection
                run(argv, 60)
            samples = []
            for _ in range(runs):
                t, cp = run(argv, 60)
                if cp.returncode not in (0, 3):
                    raise BenchError(f"{' '.join(argv[-2:])} exited {cp.returncode}: {cp.stderr.strip()[:200]}")
                samples.append(t)
            self.put(key, d.key, median_ms(samples), runs=runs,
                     p90_ms=sorted(samples)[int(0.9 * (len(samples) - 1))] * 1000.0,
                     min_ms=min(samples) * 1000.0)
            self.log(f"{d.label}: {key} median {median_ms(samples):.2f} ms over {runs} runs")

    # 3 (100) + 4 -------------------------------------------------------------
    def m_hundred(self, kind):
        n = self.args.small
        stops, shutdowns = [], []
        for rep in range(self.args.repeat):
            d = kind(self, f"stop{n}-{rep}")
            try:
                d.write_config(sleep_programs(n))
                d.start()
                d.wait_all_running(n, self.args.start_timeout)
                time.sleep(self.args.settle_secs)
                if rep == 0:
                    try:
                        self.m_status(d, n)
                    except Exception as e:
                        self.fail([f"status_{n}", f"status_json_{n}"], d.key, e)
                kids = children_of(d.proc.pid)
                t, cp = run(d.stop_all_argv(), self.args.shutdown_timeout)
                if cp.returncode != 0:
                    raise BenchError(f"stop all exited {cp.returncode}: {cp.stderr.strip()[:200]}")
                left = [p for p in kids if alive(p)]
                if left:
                    self.notes.append(f"{d.label}: {len(left)} of {len(kids)} children alive right "
                                      f"after `stop all` returned")
                if not d.wait_states("stopped", 10):
                    self.notes.append(f"{d.label}: not every process showed `stopped` after stop all")
                stops.append(t)
                self.log(f"{d.label}: stop all of {n} took {t:.3f} s")
            except Exception as e:
                if self.args.debug:
                    traceback.print_exc()
                self.fail([f"stop_{n}"], d.key, e)
                break
            finally:
                d.stop()
        if stops:
            self.put(f"stop_{n}", d.key, statistics.median(stops), samples=stops)

        for rep in range(self.args.repeat):
            d = kind(self, f"shutdown{n}-{rep}")
            try:
                d.write_config(sleep_programs(n))
                d.start()
                d.wait_all_running(n, self.args.start_timeout)
                time.sleep(self.args.settle_secs)
                kids = children_of(d.proc.pid)
                t = d.terminate(self.args.shutdown_timeout)
                if t is None:
                    raise BenchError(f"{d.label} did not exit within {self.args.shutdown_timeout} s of SIGTERM")
                if d.proc.returncode != 0:
                    self.notes.append(f"{d.label}: exit code {d.proc.returncode} on SIGTERM")
                shutdowns.append(t)
                self.log(f"{d.label}: shutdown with {n} took {t:.3f} s (exit {d.proc.returncode})")
                self.check_leftovers(kids, d.label, f"shutdown with {n}")
            except Exception as e:
                if self.args.debug:
                    traceback.print_exc()
                self.fail([f"shutdown_{n}"], d.key, e)
                break
            finally:
                d.stop()
        if shutdowns:
            self.put(f"shutdown_{n}", d.key, statistics.median(shutdowns), samples=shutdowns)

    # 2 -----------------------------------------------------------------------
    def m_crash(self, kind):
        d = kind(self, "crash")
        try:
            if not (self.testchild and os.access(self.testchild, os.X_OK)):
                raise BenchError(f"test child not found: {self.testchild} (cargo build --release --bins)")
            rec = os.path.join(d.dir, "record.txt")
            argv = [self.testchild, "--exit-after", "0", "--exit-code", "1", "--record", rec]
            d.write_config([{"name": "x", "argv": argv, "crash": True}])
            d.start()
            want = self.args.crash_restarts
            deadline = time.monotonic() + self.args.crash_secs
            starts = 0
            while time.monotonic() < deadline and d.proc.poll() is None:
                time.sleep(0.1)
                try:
                    with open(rec) as f:
                        starts = sum(1 for line in f if line.startswith("start "))
                except FileNotFoundError:
                    pass
                if starts > want:
                    break
            if d.proc.poll() is not None:
                raise BenchError(f"{d.label} exited with {d.proc.returncode}")
            d.stop()
            lat = crash_latencies(rec)
            if not lat:
                raise BenchError(f"no restart recorded in {self.args.crash_secs:g} s "
                                 f"({starts} starts in {rec})")
            lat = lat[:want]
            ms = [x / 1e6 for x in lat]
            third = max(1, len(ms) // 3)
            self.put("crash", d.key, statistics.median(ms), n=len(ms),
                     p90_ms=sorted(ms)[int(0.9 * (len(ms) - 1))], min_ms=min(ms), max_ms=max(ms),
                     first_third_median_ms=statistics.median(ms[:third]),
                     last_third_median_ms=statistics.median(ms[-third:]))
            self.log(f"{d.label}: crash-to-restart median {statistics.median(ms):.3f} ms "
                     f"over {len(ms)} restarts (min {min(ms):.3f}, max {max(ms):.3f})")
        except Exception as e:
            if self.args.debug:
                traceback.print_exc()
            self.fail(["crash"], d.key, e)
        finally:
            d.stop()

    def cleanup(self):
        for d in list(self.daemons):
            d.stop()
        # This script is a child subreaper: whatever a supervisor left behind
        # was re-parented to us. Kill exactly those PIDs and reap them.
        for _ in range(5):
            orphans = children_of(os.getpid())
            if not orphans:
                break
            self.notes.append(f"cleanup: killed {len(orphans)} leftover process(es)")
            for pid in orphans:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            for pid in orphans:
                try:
                    os.waitpid(pid, 0)
                except ChildProcessError:
                    pass
        if self.tmp and not self.args.keep_tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)


def crash_latencies(path):
    """Next start minus previous exit, in ns, from a minder-testchild record file."""
    out = []
    last_exit = None
    with open(path) as f:
        for line in f:
            tok = line.split()
            if len(tok) < 2:
                continue
            if tok[0] == "exit":
                last_exit = int(tok[1])
            elif tok[0] == "start" and last_exit is not None:
                out.append(int(tok[1]) - last_exit)
                last_exit = None
    return out


# --------------------------------------------------------------------------
# report


def machine_facts():
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = proc_status_like("/proc/meminfo", "MemTotal")
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "kernel": platform.release(),
        "mem_gib": round(int(mem) / 1024 / 1024, 1) if mem else None,
        "uid": os.getuid(),
    }


def proc_status_like(path, field):
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return line.split()[1]
    except OSError:
        pass
    return None


def command_line():
    """The command that produced this run, as the user typed it."""
    args = sys.argv[1:]
    if os.environ.get("MINDER_BENCH_ENTRY") == "bench/run.sh":
        # run.sh adds --target-dir "$CARGO_TARGET_DIR" in front of the user's arguments
        if args[:1] == ["--target-dir"]:
            args = args[2:]
        prefix = []
        if os.environ.get("CARGO_TARGET_DIR") and \
                os.path.abspath(os.environ["CARGO_TARGET_DIR"]) != os.path.join(REPO, "target"):
            prefix = [f"CARGO_TARGET_DIR={os.environ['CARGO_TARGET_DIR']}"]
        return " ".join(prefix + ["bench/run.sh"] + [shlex.quote(x) for x in args])
    return " ".join(shlex.quote(x) for x in
                    ["python3", os.path.relpath(os.path.abspath(__file__), REPO)] + args)


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[0]
    except OSError:
        return "?"


def cmd_out(argv):
    try:
        return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=30, cwd=REPO).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def fmt(v, unit):
    if v is None:
        return "—"
    if unit == "s":
        return f"{v:.3f} s"
    if unit == "ms":
        if v == 0:
            return "0 ms"
        return f"{v:.2f} ms" if v < 100 else f"{v:.0f} ms"
    if unit == "MiB":
        return f"{v:.1f} MiB"
    return f"{v}"


def ratio(m, s):
    if m is None or s is None:
        return "—"
    if m == 0:
        return "∞" if s > 0 else "—"
    return f"{s / m:.1f}×" if s / m < 100 else f"{s / m:.0f}×"


class Report:
    def __init__(self, bench):
        self.b = bench
        self.r = bench.results
        n, k = bench.args.programs, bench.args.small
        self.rows = [
            # key, label, unit, target (value or None), section
            ("start_all", f"{n} programs: start until all running", "s", 1.0, 1),
            ("rss", f"{n} programs: supervisor RSS", "MiB", 10.0, 1),
            ("rss_quiet", f"{n} programs: supervisor RSS, no status call ever made", "MiB", None, 1),
            ("idle_cpu", f"{n} programs: CPU over {bench.args.idle_secs:g} s idle", "ms", 0.0, 1),
            (f"shutdown_{n}", f"{n} programs: shutdown (SIGTERM to exit)", "s", None, 1),
            ("crash", "crash-to-restart, median", "ms", 5.0, 2),
            (f"status_{k}", f"`status`, {k} programs, median", "ms", 5.0, 3),
            (f"status_json_{k}", f"`status --json`, {k} programs, median", "ms", 5.0, 3),
            (f"status_{n}", f"`status`, {n} programs, median", "ms", 20.0, 3),
            (f"status_json_{n}", f"`status --json`, {n} programs, median", "ms", 20.0, 3),
            (f"stop_{k}", f"`stop all`, {k} programs", "s", 0.2, 4),
            (f"shutdown_{k}", f"shutdown with {k} programs (SIGTERM to exit)", "s", 0.2, 4),
        ]

    def value(self, key, who):
        # supervisorctl has no --json: the --json rows compare against plain status
        if who == "supervisord" and key.startswith("status_json_"):
            key = key.replace("status_json_", "status_")
        return self.r.get(key, {}).get(who)

    def cell(self, key, who, unit):
        if who == "supervisord" and key.startswith("status_json_"):
            key = key.replace("status_json_", "status_")
        r = self.r.get(key, {})
        if who in r:
            return fmt(r[who], unit)
        err = r.get("errors", {}).get(who)
        if err:
            return "failed"
        return "—"

    def met(self, key, target):
        if target is None:
            return "(no target)"
        v = self.r.get(key, {}).get("minder")
        if v is None:
            return "not measured"
        return "yes" if v <= target else "**no**"

    def table(self, sections=None, with_target=True):
        head = "| measurement | minder | supervisord | supervisord ÷ minder |"
        sep = "|---|---:|---:|---:|"
        if with_target:
            head += " minder target | met |"
            sep += "---:|---|"
        lines = [head, sep]
        for key, label, unit, target, sec in self.rows:
            if sections and sec not in sections:
                continue
            line = (f"| {label} | {self.cell(key, 'minder', unit)} | "
                    f"{self.cell(key, 'supervisord', unit)} | "
                    f"{ratio(self.value(key, 'minder'), self.value(key, 'supervisord'))} |")
            if with_target:
                tgt = "—" if target is None else (
                    "0 ms" if target == 0 else f"≤ {fmt(target, unit)}" if unit == "MiB"
                    else f"< {fmt(target, unit)}")
                line += f" {tgt} | {self.met(key, target)} |"
            lines.append(line)
        return "\n".join(lines)

    def extra(self, key, who, name, f="{:.2f}"):
        v = self.r.get(key, {}).get("extra", {}).get(who, {}).get(name)
        return None if v is None else f.format(v)

    def errors(self):
        out = []
        for key, _, _, _, _ in self.rows:
            for who, err in self.r.get(key, {}).get("errors", {}).items():
                out.append(f"- {key}, {who}: {err}")
        return out

    def doc(self, meta):
        b = self.b
        a = b.args
        n, k = a.programs, a.small
        ex = self.extra
        L = []
        L += ["# Process life cycle: minder and supervisord side by side", "",
              "## This run", "",
              f"- date: {meta['date']}",
              f"- command: `{meta['command']}` (`bench/run.sh` builds minder in release mode, "
              "installs supervisor into `bench/.venv` and runs `python3 bench/compare.py`)",
              f"- machine: {meta['machine']['nproc']} CPUs ({meta['machine']['cpu']}), "
              f"kernel {meta['machine']['kernel']}, {meta['machine']['mem_gib']} GiB RAM, "
              f"run as uid {meta['machine']['uid']}",
              f"- minder: {meta['minder_version']} (commit {meta['commit']}, {meta['rustc']}, release profile)",
              f"- supervisord: {meta['supervisord_version']} ({meta['python']})",
              f"- load average (1 min) {meta['load_start']} when the run began, "
              f"{meta.get('load_end', '?')} when it ended; other work on the machine during the "
              "run affects both columns, at different moments",
              f"- RLIMIT_NOFILE soft limit raised to the hard limit ({meta['nofile']}) before "
              "starting either daemon", "",
              "Both supervisors run the same programs in the same run, one after the other, "
              "never at the same time. The ratio column is supervisord's figure divided by "
              "minder's: above 1 means minder is faster or smaller.", "",
              self.table(), ""]
        errs = self.errors()
        if errs:
            L += ["Measurements that failed in this run:", ""] + errs + [""]
        if b.notes:
            L += ["Noticed during the run:", ""] + [f"- {x}" for x in b.notes] + [""]

        L += [f"## 1. {n} idle programs", "",
              f"{n} programs `/bin/sleep 3600`; minder with `start_secs = \"0s\"`, supervisord "
              "with `startsecs=0`, `stdout_logfile=NONE`, `stderr_logfile=NONE`.", "",
              "- *start until all running*: from just before the daemon is spawned until the "
              "first status call (`minder ctl status --json`, polled every 5 ms; "
              "`supervisorctl status`, polled back to back with 50 ms pauses) that shows every "
              "process running has returned. It includes that status call, so it is an upper "
              "bound; for supervisord one `supervisorctl status` call with 1000 programs is "
              f"itself a large part of a second. The daemon of this section is one sample; "
              f"{a.start_repeat - 1} more fresh daemons are timed the same way (no idle window), "
              "and the table shows the median; the samples are listed below. A status request "
              "that arrives while a daemon is still spawning may only be answered once the "
              "burst is over, so the number of polls can be as low as 1.",
              f"- *RSS*: `VmRSS` of the daemon process (for supervisord, the `supervisord` "
              f"Python process) after the idle window; children not counted. The status "
              "polls of the start measurement (up to the one listing all processes) were the "
              "only requests the daemon had served by then.",
              "- *RSS, no status call ever made*: a separate, fresh daemon with the same "
              f"programs; the bench counts its children in /proc instead of asking it, and "
              f"reads VmRSS {self.b.args.settle_secs + 2:g} s after all {n} exist. The difference "
              "to the row above is what answering status requests (for minder, a `--json` "
              f"reply listing {n} processes) leaves behind.",
              f"- *idle CPU*: utime + stime of the daemon from `/proc/PID/stat` "
              f"(clock ticks of {1000 // CLK_TCK} ms) over {a.idle_secs:g} s, starting "
              f"{a.settle_secs:g} s after all were running, with no status polling in the window.",
              "", self.table({1}), ""]
        det = []
        for who in ("minder", "supervisord"):
            cs = ex("idle_cpu", who, "ctxsw", "{}")
            th = ex("rss", who, "threads", "{}")
            hw = ex("rss", who, "hwm_mib", "{:.1f}")
            po = ex("start_all", who, "polls", "{}")
            af = ex("rss", who, "after_status_mib", "{:.1f}")
            if cs or th or hw:
                det.append(f"- {who}: {th} thread(s), peak RSS (VmHWM) {hw} MiB, RSS {af} MiB after "
                           f"the status timings of section 3, {cs} context switches of its "
                           f"threads during the idle window, {po} status polls until all were running")
        for who in ("minder", "supervisord"):
            sm = self.r.get("start_all", {}).get("extra", {}).get(who, {}).get("samples")
            if sm:
                det.append(f"- start of {n}, {who}: " + ", ".join(f"{x:.3f} s" for x in sm)
                           + f" (best {min(sm):.3f} s)")
        L += det + ([""] if det else [])
        L += ["The time until all run is the figure most sensitive to other work on the "
              f"machine: spawning {n} processes needs CPU, and on {meta['machine']['nproc']} CPUs "
              "a concurrent compiler job takes a large share of it. Compare the samples and the "
              "load average at the top; the best sample is the closest to an idle machine.", ""]
        L += ["Targets for minder: ≤ 10 MiB RSS, 0 ms CPU over 30 s idle, all running within 1 s.", "",
              "Earlier reference figures (measured before this run on the same machine kind, "
              "not by this script): supervisord 32.8 MiB RSS, 320 ms CPU per 30 s idle, 12.9 s "
              "until all 1000 ran; horust 43.6 MiB, 11.5 s; runit and s6 91–123 MiB PSS "
              "(supervision tree together), 0 idle CPU, 3.7–4.5 s to start 1000.", ""]

        L += ["## 2. Crash-to-restart latency", "",
              "One program, `minder-testchild --exit-after 0 --exit-code 1 --record FILE`, which "
              "appends `start <CLOCK_MONOTONIC ns> <pid>` when it starts and `exit <ns> <pid>` right "
              "before it exits. Latency = a start minus the exit before it, both taken by the "
              "child itself, so the supervisor's reaping, restart decision, clone and exec, and the "
              "child's own start-up until its first line of `main`, are all inside it.", "",
              "- minder: `start_secs = \"0s\"`, `[program.x.backoff] initial = \"0s\"`, "
              "`jitter = 0.0` (restart policy `always` by default).",
              "- supervisord: `startsecs=0`, `autorestart=true`, `startretries=1000000`. "
              "supervisord is measured as it behaves: its restart happens on a later turn of its "
              "main loop (whose `select` waits up to 1 s), and with `startsecs` > 0 a quick exit "
              "would put it into BACKOFF with a delay growing by 1 s per retry; with "
              "`startsecs=0` the exit counts as a run, not a failed start, so the delay does not grow.",
              f"- bounded by {a.crash_restarts} restarts or {a.crash_secs:g} s per supervisor, "
              "whichever comes first.", "",
              self.table({2}), ""]
        for who in ("minder", "supervisord"):
            nn = ex("crash", who, "n", "{}")
            if nn:
                L.append(f"- {who}: {nn} restarts; min {ex('crash', who, 'min_ms', '{:.3f}')} ms, "
                         f"p90 {ex('crash', who, 'p90_ms', '{:.3f}')} ms, max "
                         f"{ex('crash', who, 'max_ms', '{:.3f}')} ms; median of the first third "
                         f"{ex('crash', who, 'first_third_median_ms', '{:.3f}')} ms, of the last third "
                         f"{ex('crash', who, 'last_third_median_ms', '{:.3f}')} ms")
        L += ["", "Target for minder: median < 5 ms.", "",
              "Earlier reference figures (not from this run): about 1 s everywhere — supervisord "
              "1013 ms, horust 1201 ms, runit 1004 ms, s6 1005 ms.", ""]

        L += ["## 3. `ctl status` latency", "",
              f"Wall time of one whole CLI invocation (process start to exit, output captured), "
              f"median of {a.status_runs} runs of `minder ctl -s SOCK status` and of "
              f"`... status --json`, and of {a.sv_status_runs} runs of `supervisorctl -c FILE "
              f"status` (a Python program, so its interpreter start-up is part of what a user "
              f"waits for). Two warm-up runs are not counted. The {k}-program daemon is the one "
              f"of section 4; the {n}-program daemon is the one of section 1, after its idle window.",
              "", self.table({3}), "",
              "The ratio compares `status --json` rows against the same `supervisorctl status` "
              "figure (supervisorctl has no JSON output).", "",
              "Targets for minder: status of 100 < 5 ms, of 1000 < 20 ms.", "",
              "Earlier reference figures (not from this run): status of 100 programs — "
              "supervisorctl 194 ms, runit `sv status` 3.0 ms.", ""]

        L += ["## 4. Stopping 100 programs", "",
              f"- *stop all*: wall time of `minder ctl stop all` and `supervisorctl stop all` with "
              f"{k} running `/bin/sleep 3600` (they exit on SIGTERM at once); both commands wait "
              "until every process is stopped.",
              f"- *shutdown*: a fresh daemon with {k} running programs; from sending SIGTERM to "
              "the daemon until its exit is noticed (pidfd of the daemon, no polling).",
              "- After each, the bench checks that none of the daemon's children is still alive.",
              f"- Each is repeated {a.repeat} times on a fresh daemon; the table shows the median, "
              "the samples follow it.",
              "", self.table({4}), ""]
        for key in (f"stop_{k}", f"shutdown_{k}"):
            for who in ("minder", "supervisord"):
                sm = self.r.get(key, {}).get("extra", {}).get(who, {}).get("samples")
                if sm:
                    L.append(f"- {key}, {who}: " + ", ".join(f"{x:.3f} s" for x in sm))
        L += ["",
              "Targets for minder: < 0.2 s each.", "",
              "Earlier reference figures (not from this run): supervisord 0.26 s via "
              "`supervisorctl stop all`, 1.12 s on daemon shutdown; s6 0.27 s.", ""]

        L += ["## Notes on fairness", "",
              "- minder at this stage sends its children's stdout/stderr to its own stderr; the "
              "bench points minder's stderr at /dev/null. supervisord's children write to "
              "pipes that supervisord reads and discards (`stdout_logfile=NONE`). `/bin/sleep` "
              "writes nothing, so neither pays for output here.",
              "- supervisord writes its own log (info level) to a file in the temporary "
              "directory, as it would in production; its stdout (a copy of that log under "
              "`nodaemon=true`) goes to /dev/null.",
              "- Everything runs from a temporary directory on the same file system, over Unix "
              "sockets only; the temporary directory is removed at the end.",
              f"- Machine with {meta['machine']['nproc']} CPUs: the status polling client competes "
              "with the daemon for CPU while 1000 programs start.", ""]
        return "\n".join(L)


# --------------------------------------------------------------------------


def main():
    tgt = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target-dir", default=tgt, help="cargo target dir holding release/minder")
    ap.add_argument("--minder", help="minder binary (default TARGET/release/minder)")
    ap.add_argument("--testchild", help="minder-testchild binary (default TARGET/release/minder-testchild)")
    ap.add_argument("--supervisord", default=os.path.join(BENCH_DIR, ".venv", "bin", "supervisord"))
    ap.add_argument("--only", default="minder,supervisord", help="comma list: minder,supervisord")
    ap.add_argument("--programs", type=int, default=1000)
    ap.add_argument("--small", type=int, default=100, help="programs for status/stop/shutdown")
    ap.add_argument("--idle-secs", type=float, default=30.0)
    ap.add_argument("--settle-secs", type=float, default=1.0)
    ap.add_argument("--start-timeout", type=float, default=180.0)
    ap.add_argument("--shutdown-timeout", type=float, default=120.0)
    ap.add_argument("--cleanup-secs", type=float, default=60.0)
    ap.add_argument("--crash-restarts", type=int, default=200)
    ap.add_argument("--crash-secs", type=float, default=120.0)
    ap.add_argument("--status-runs", type=int, default=50)
    ap.add_argument("--sv-status-runs", type=int, default=20)
    ap.add_argument("--start-repeat", type=int, default=3, help="fresh daemons timed for the start of all programs")
    ap.add_argument("--repeat", type=int, default=5, help="repetitions of stop all / shutdown with 100")
    ap.add_argument("--program-extra", default="",
                    help="TOML line(s) added to every minder program, e.g. 'cgroup = false'")
    ap.add_argument("--skip", default="", help="comma list of idle,crash,small")
    ap.add_argument("--doc", default=os.path.join(REPO, "docs", "benchmarks.md"))
    ap.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    ap.add_argument("--json-out", help="also write the raw results here")
    ap.add_argument("--keep-tmp", action="store_true")
    ap.add_argument("--debug", action="store_true", help="keep daemon output in the tmp dir, print tracebacks")
    args = ap.parse_args()
    args.only = [x.strip() for x in args.only.split(",") if x.strip()]
    args.skip = [x.strip() for x in args.skip.split(",") if x.strip()]
    args.minder = os.path.abspath(args.minder or os.path.join(args.target_dir, "release", "minder"))
    args.testchild = os.path.abspath(args.testchild or os.path.join(args.target_dir, "release", "minder-testchild"))
    if "supervisord" in args.only and not os.access(args.supervisord, os.X_OK):
        found = shutil.which("supervisord")
        if not found:
            sys.exit(f"supervisord not found at {args.supervisord}; run bench/run.sh or pass --supervisord")
        args.supervisord = found
    if "minder" in args.only and not os.access(args.minder, os.X_OK):
        sys.exit(f"minder not found at {args.minder}; build it with cargo build --release --bins")

    # A thousand children, each with pipes: lift the soft fd limit to the hard one.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    # Orphans of a misbehaving supervisor are re-parented to us, so cleanup can find them by PID.
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except OSError:
        pass

    def on_term(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)

    b = Bench(args)
    base = None
    for cand in (os.environ.get("TMPDIR"), "/tmp"):
        if cand and os.path.isdir(cand) and len(cand) < 40:
            base = cand
            break
    b.tmp = tempfile.mkdtemp(prefix="minder-bench-", dir=base)
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command_line(),
        "machine": machine_facts(),
        "nofile": hard,
        "load_start": loadavg(),
        "commit": cmd_out(["git", "rev-parse", "--short", "HEAD"]),
        "rustc": cmd_out(["rustc", "--version"]),
        "minder_version": cmd_out([args.minder, "--version"]) if "minder" in args.only else "not run",
        "supervisord_version": ("supervisord " + cmd_out([args.supervisord, "--version"]))
        if "supervisord" in args.only else "not run",
        "python": cmd_out([os.path.join(os.path.dirname(args.supervisord), "python3"), "--version"])
        if "supervisord" in args.only else "-",
    }
    b.log(f"tmp dir {b.tmp}; nofile {soft} -> {hard}; {meta['machine']}")
    interrupted = False
    try:
        for kind in b.kinds:
            if "crash" not in args.skip:
                b.m_crash(kind)
            if "small" not in args.skip:
                b.m_hundred(kind)
            if "idle" not in args.skip:
                b.m_idle(kind)
                b.m_start_again(kind)
                b.m_rss_quiet(kind)
    except KeyboardInterrupt:
        interrupted = True
        b.log("interrupted; cleaning up")
    finally:
        b.cleanup()
    meta["load_end"] = loadavg()
    rep = Report(b)
    doc = rep.doc(meta)
    print(rep.table())
    for e in rep.errors():
        print(e)
    for x in b.notes:
        print("note:", x)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"meta": meta, "results": b.results, "notes": b.notes}, f, indent=1)
    if interrupted:
        sys.exit(130)
    if not args.no_doc:
        # A section of the shared file: one heading level down.
        doc = "\n".join("#" + line if line.startswith("#") else line for line in doc.splitlines())
        docsection.replace_section(args.doc, "lifecycle", doc, "bench/compare.py")
        b.log(f"wrote {args.doc}")


if __name__ == "__main__":
    main()
