#!/usr/bin/env python3
"""Containment benchmarks for minder: what a cgroup per process buys and costs.

1. setsid survivors: one program whose main process double-forks a grandchild
   that calls setsid, then waits. `ctl start`, wait running, read the
   grandchild's PID, `ctl stop`, and check by PID and /proc start time that
   the grandchild is gone the moment `ctl stop` returns. --rounds times with
   cgroups, --rounds-nocg times with `cgroup = false` (survivors expected
   there; the bench kills them by PID afterwards).
2. kill -9 recovery: 100 programs (20 serving HTTP on `listen` sockets),
   SIGKILL to minder, a new minder on the same config: time until all 100
   run, processes of the old generation alive at that moment, and the PID
   each port answers with. With cgroups and with `cgroup = false` on every
   program (the `<socket>.pids` state file), alternating, --recoveries times each.
3. cost of the cgroup per spawn: bench/compare.py for minder only (1000
   programs, crash-to-restart), with and without `cgroup = false` on every
   program, alternating, --cost-runs times each.

Loopback only; every loop is bounded in count and time; only processes this
script started (the daemons, and what they leave behind, found by PID and
start time) are signalled, by PID; the temporary directory is removed.
Results go to docs/benchmarks.md between the "containment" markers.

Usage: python3 bench/containment.py [--rounds N] [--recoveries N] [--cost-runs N] [--no-doc]
"""

import argparse
import ctypes
import datetime
import http.client
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import docsection

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
PR_SET_CHILD_SUBREAPER = 36
PF_EXITING = 0x4


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# /proc


def stat_rest(pid):
    """Fields of /proc/PID/stat after the command name: [state, ppid, pgrp, session, ...]."""
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    return data[data.rindex(")") + 2:].split()


def start_time(pid):
    """Start time of pid in clock ticks since boot, or None if it does not exist."""
    try:
        return int(stat_rest(pid)[19])
    except (OSError, ValueError, IndexError):
        return None


def same_alive(pid, st):
    """'alive', 'exiting' (PF_EXITING: dying, past the point of no return) or
    'gone' (no such PID, a zombie, or a different process with that PID)."""
    try:
        rest = stat_rest(pid)
    except (OSError, ValueError):
        return "gone"
    if int(rest[19]) != st or rest[0] in ("Z", "X", "x"):
        return "gone"
    if int(rest[6]) & PF_EXITING:
        return "exiting"
    return "alive"


def ppid_map():
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                out[int(name)] = int(stat_rest(int(name))[1])
            except (OSError, ValueError, IndexError):
                pass
    return out


def descendants(root):
    """PIDs below root (not root itself), from one scan of /proc."""
    kids = {}
    for pid, ppid in ppid_map().items():
        kids.setdefault(ppid, []).append(pid)
    out, todo = [], list(kids.get(root, []))
    for _ in range(100000):
        if not todo:
            break
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def reap(pids):
    """Reap those of pids that are our zombies (we are a child subreaper); the
    ones not reaped yet are returned."""
    left = []
    for pid in pids:
        try:
            r, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            continue  # not our child (or already reaped)
        if r == 0:
            left.append(pid)
    return left


def kill_same(pid, st):
    """SIGKILL pid if it is still the process that started at st; True if sent."""
    if same_alive(pid, st) == "gone":
        return False
    try:
        os.kill(pid, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False


def free_ports(n):
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def pct(samples, q):
    s = sorted(samples)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


# --------------------------------------------------------------------------
# one minder daemon


class Minder:
    def __init__(self, binary, d, body):
        self.binary = binary
        self.dir = d
        self.sock = os.path.join(d, "minder.sock")
        self.config = os.path.join(d, "minder.toml")
        with open(self.config, "w") as f:
            f.write(f'[supervisor]\nsocket = "{self.sock}"\nlog_dir = "{d}/logs"\n\n{body}')
        self.proc = None
        self.logf = None
        self.t_start = None

    def start(self, logname="daemon.log"):
        self.logpath = os.path.join(self.dir, logname)
        self.logf = open(self.logpath, "w")
        self.t_start = time.monotonic()
        self.proc = subprocess.Popen([self.binary, "daemon", "-c", self.config],
                                     stdin=subprocess.DEVNULL, stdout=self.logf, stderr=self.logf,
                                     start_new_session=True)

    def ctl(self, *args, timeout=60):
        return subprocess.run([self.binary, "ctl", "-s", self.sock, *args], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout)

    def status(self):
        try:
            cp = self.ctl("status", "--json", timeout=30)
        except subprocess.TimeoutExpired:
            return None
        if cp.returncode not in (0, 3):
            return None
        try:
            return {p["name"]: p for p in json.loads(cp.stdout)["processes"]}
        except (ValueError, KeyError):
            return None

    def wait_for(self, pred, timeout, what, interval=0.005):
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout / interval) + 2):
            st = self.status()
            if st is not None and pred(st):
                return st
            if self.proc.poll() is not None:
                raise RuntimeError(f"minder exited ({self.proc.returncode}) waiting for {what}; "
                                   f"log: {self.log_tail()}")
            if time.monotonic() > deadline:
                break
            time.sleep(interval)
        raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")

    def log_tail(self, n=600):
        try:
            with open(self.logpath) as f:
                return f.read()[-n:]
        except OSError:
            return "?"

    def log_count(self, needle):
        try:
            with open(self.logpath) as f:
                return sum(1 for line in f if needle in line)
        except OSError:
            return 0

    def sigkill(self):
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.logf.close()

    def stop(self):
        """SIGTERM (SIGKILL after 60 s) to this daemon, by PID."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.logf and not self.logf.closed:
            self.logf.close()


def cgroup_of(pid):
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].strip()
    except OSError:
        pass
    return None


# --------------------------------------------------------------------------
# 1. setsid survivors


def bench_setsid(a, tmp, cgroup, rounds, pause=0.0):
    """pause: seconds between the grandchild being in place and `ctl stop`."""
    d = tempfile.mkdtemp(prefix=f"setsid-{'cg' if cgroup else 'nocg'}-", dir=tmp)
    gcdir = os.path.join(d, "gc")
    os.mkdir(gcdir)
    # The subshell forks the grandchild and exits, so the grandchild is an
    # orphan (re-parented to this script, a child subreaper); setsid puts it in
    # a session of its own. The file is named after the main process's PID.
    script = (f"(setsid /bin/sleep 600 & echo $! > {gcdir}/$$.t && mv {gcdir}/$$.t {gcdir}/$$) ; "
              "exec /bin/sleep 600")
    body = ("[program.g]\n"
            f"command = {json.dumps(['/bin/sh', '-c', script])}\n"
            'autostart = false\nstart_secs = "0s"\n'
            + ("" if cgroup else "cgroup = false\n"))
    m = Minder(a.minder, d, body)
    m.start()
    lat, survivors, exiting, errors = [], [], 0, []
    pending, cg_seen = [], None
    try:
        m.wait_for(lambda st: "g" in st, 30, "minder to answer")
        t_end = time.monotonic() + a.setsid_secs
        for r in range(rounds):
            if time.monotonic() > t_end:
                errors.append(f"stopped after {r} rounds: --setsid-secs {a.setsid_secs:g} s reached")
                break
            cp = m.ctl("start", "g")
            if cp.returncode != 0:
                raise RuntimeError(f"ctl start exited {cp.returncode}: {cp.stderr.strip()[:200]}")
            st = m.wait_for(lambda s: s["g"]["state"] == "running" and s["g"].get("pid"), 10,
                            "g running", interval=0.002)
            main = st["g"]["pid"]
            if cg_seen is None:
                cg_seen = cgroup_of(main)
            path = os.path.join(gcdir, str(main))
            gc = None
            for _ in range(5000):  # up to ~5 s
                try:
                    with open(path) as f:
                        gc = int(f.read().strip())
                    break
                except (FileNotFoundError, ValueError):
                    time.sleep(0.001)
            if gc is None:
                raise RuntimeError(f"round {r}: no grandchild PID in {path}")
            # Wait until the grandchild has called setsid and is /bin/sleep:
            # from then on it is outside the main process's group and session.
            gst = None
            for _ in range(5000):
                try:
                    rest = stat_rest(gc)
                    with open(f"/proc/{gc}/comm") as f:
                        comm = f.read().strip()
                except (OSError, ValueError):
                    break
                if int(rest[3]) == gc and comm == "sleep":
                    gst = int(rest[19])
                    break
                time.sleep(0.001)
            if gst is None:
                raise RuntimeError(f"round {r}: grandchild {gc} never became a setsid sleep")
            # ... and until the main process has exec'd sleep: the subshell
            # (and its mv) are gone, only the two sleeps are left.
            for _ in range(5000):
                try:
                    with open(f"/proc/{main}/comm") as f:
                        if f.read().strip() == "sleep":
                            break
                except OSError:
                    break
                time.sleep(0.001)
            else:
                raise RuntimeError(f"round {r}: main process {main} never exec'd sleep")
            if pause:
                time.sleep(pause)
            t0 = time.perf_counter()
            cp = m.ctl("stop", "g")
            t = time.perf_counter() - t0
            state = same_alive(gc, gst)
            if cp.returncode != 0:
                raise RuntimeError(f"ctl stop exited {cp.returncode}: {cp.stderr.strip()[:200]}")
            lat.append(t)
            if state == "alive":
                survivors.append((gc, gst))
            elif state == "exiting":
                exiting += 1
            pending = reap(pending + [gc])
            os.unlink(path)
            if (r + 1) % 100 == 0:
                log(f"setsid {'cgroup' if cgroup else 'cgroup = false'}: {r + 1} rounds, "
                    f"{len(survivors)} survivors, stop median {statistics.median(lat) * 1000:.2f} ms")
    finally:
        m.stop()
        killed = sum(1 for pid, st in survivors if kill_same(pid, st))
        deadline = time.monotonic() + 10
        for _ in range(1000):
            pending = reap(pending + [pid for pid, _ in survivors])
            if not pending or time.monotonic() > deadline:
                break
            time.sleep(0.01)
    res = {"cgroup": cgroup, "pause_ms": pause * 1000, "rounds": len(lat), "survivors": len(survivors), "exiting": exiting,
           "killed_by_bench": killed, "errors": errors, "cgroup_path": cg_seen}
    if lat:
        ms = [x * 1000 for x in lat]
        res.update(median_ms=statistics.median(ms), p99_ms=pct(ms, 0.99), max_ms=max(ms),
                   min_ms=min(ms))
    log(f"setsid {'cgroup' if cgroup else 'cgroup = false'}: {json.dumps(res)}")
    return res


# --------------------------------------------------------------------------
# 2. kill -9 recovery


def recovery_config(a, ports, cgroup):
    extra = "" if cgroup else "cgroup = false\n"
    body = []
    for i in range(a.recovery_programs):
        if i < len(ports):
            body.append(f"[program.web{i}]\n"
                        f"command = {json.dumps([a.testchild, '--serve-inherited'])}\n"
                        f'listen = ["tcp://127.0.0.1:{ports[i]}"]\n')
        else:
            body.append(f'[program.idle{i}]\ncommand = ["/bin/sleep", "3600"]\n')
        body.append(f'start_secs = "0s"\n{extra}\n')
    return "".join(body)


def socket_holders(path):
    """Processes holding a unix socket bound at path: 'PID comm (flags)'."""
    inodes = set()
    try:
        with open("/proc/net/unix") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 8 and parts[7] == path:
                    inodes.add(f"socket:[{parts[6]}]")
    except OSError:
        return []
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or not inodes:
            continue
        try:
            fds = os.listdir(f"/proc/{name}/fd")
            if any(os.readlink(f"/proc/{name}/fd/{fd}") in inodes for fd in fds):
                with open(f"/proc/{name}/comm") as f:
                    comm = f.read().strip()
                flags = int(stat_rest(int(name))[6])
                out.append(f"{name} {comm}" + (" (forked, not yet exec'd)" if flags & 0x40 else ""))
        except (OSError, ValueError):
            continue
    return out


def remove_empty_cgroups(tag):
    """rmdir the (empty) cgroups a minder of this bench left below ours; tag is
    part of their name (the temp dir). Populated ones are left alone."""
    mount = cgroup_facts()["mount"]
    here = cgroup_of(os.getpid())
    if not mount or here is None:
        return
    base = os.path.join(mount, here.lstrip("/"))
    try:
        names = [x for x in os.listdir(base) if x.startswith("minder-") and tag in x]
    except OSError:
        return
    for name in names:
        top = os.path.join(base, name)
        for root, dirs, _ in sorted(os.walk(top), key=lambda t: -t[0].count("/")):
            try:
                os.rmdir(root)
            except OSError:
                pass


def http_pid(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", "/")
        r = c.getresponse()
        return int(r.read().decode().strip())
    finally:
        c.close()


def bench_recovery(a, tmp, cgroup, rep):
    d = tempfile.mkdtemp(prefix=f"recovery-{'cg' if cgroup else 'nocg'}-{rep}-", dir=tmp)
    n = a.recovery_programs
    ports = free_ports(a.recovery_listen)
    body = recovery_config(a, ports, cgroup)
    old = Minder(a.minder, d, body)
    new = Minder(a.minder, d, body)
    gen = []
    res = {"cgroup": cgroup}
    try:
        old.start("old.log")
        st = old.wait_for(lambda s: len(s) == n and all(p["state"] == "running" for p in s.values()),
                          60, f"{n} running (first minder)", interval=0.01)
        old_main = {p["pid"] for p in st.values()}
        pids = set(old_main) | set(descendants(old.proc.pid))
        gen = [(pid, start_time(pid)) for pid in pids]
        gen = [(p, s) for p, s in gen if s is not None]
        old.sigkill()
        # A new minder that finds the control socket still accepting
        # connections refuses to start ("another minder is already
        # listening"). It is started again after 100 ms (as systemd's
        # Restart= with its default RestartSec= would), at most
        # --recovery-attempts times; every refusal is counted and reported.
        t_first = None
        refusals, holders, early = 0, [], []
        for attempt in range(a.recovery_attempts):
            new.start(f"new{attempt}.log")
            if t_first is None:
                t_first = new.t_start
                # Who still holds the control socket as the new minder starts
                # (its own PID left out): a reading of the cause of a refusal.
                early = [h for h in socket_holders(old.sock)
                         if h.split()[0] != str(new.proc.pid)]
            try:
                st = new.wait_for(lambda s: len(s) == n and all(p["state"] == "running" for p in s.values()),
                                  60, f"{n} running (second minder)")
                break
            except RuntimeError:
                if new.proc.poll() is None or "already listening" not in new.log_tail(4000):
                    raise
                holders += socket_holders(new.sock)
                refusals += 1
                new.logf.close()
                time.sleep(0.1)
        else:
            raise RuntimeError(f"the new minder refused to start {refusals} times: control socket in use")
        t_all = time.monotonic() - t_first
        res.update(refusals=refusals, holders=holders[:4], holders_at_start=early[:4],
                   all_running_last_attempt_s=time.monotonic() - new.t_start)
        states = [same_alive(p, s) for p, s in gen]
        res.update(all_running_s=t_all, old_procs=len(gen),
                   old_alive=states.count("alive"), old_exiting=states.count("exiting"),
                   logged=new.log_count("left in cgroup") if cgroup else new.log_count("left"))
        new_pids = {name: p["pid"] for name, p in st.items()}
        ok = 0
        wrong = []
        for i, port in enumerate(ports):
            try:
                got = http_pid(port)
            except (OSError, ValueError, http.client.HTTPException) as e:
                wrong.append(f"web{i}: {e}")
                continue
            if got == new_pids.get(f"web{i}") and got not in old_main:
                ok += 1
            else:
                wrong.append(f"web{i}: answered by {got}, new pid {new_pids.get(f'web{i}')}")
        res.update(ports_new=ok, ports=len(ports), port_errors=wrong[:3])
        log(f"recovery {'cgroup' if cgroup else 'cgroup = false'} #{rep + 1}: "
            f"{json.dumps(res)}")
    finally:
        new.stop()
        if old.proc is not None and old.proc.poll() is None:
            old.stop()
        left = [(p, s) for p, s in gen if kill_same(p, s)]
        if left:
            res["killed_by_bench"] = len(left)
        pend = [p for p, _ in gen]
        for _ in range(500):
            pend = reap(pend)
            if not pend:
                break
            time.sleep(0.01)
        remove_empty_cgroups(os.path.basename(d))
    return res


# --------------------------------------------------------------------------
# 3. cost of the cgroup per spawn


def bench_cost(a, tmp, cgroup, rep):
    out = os.path.join(tmp, f"cost-{'cg' if cgroup else 'nocg'}-{rep}.json")
    argv = [sys.executable, os.path.join(BENCH_DIR, "compare.py"), "--only", "minder",
            "--skip", "small", "--no-doc", "--json-out", out,
            "--minder", a.minder, "--testchild", a.testchild,
            "--programs", str(a.cost_programs), "--idle-secs", str(a.idle_secs),
            "--start-repeat", "1", "--status-runs", "5", "--crash-restarts", str(a.crash_restarts)]
    if not cgroup:
        argv += ["--program-extra", "cgroup = false"]
    cp = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=900)
    if cp.returncode != 0 or not os.path.exists(out):
        raise RuntimeError(f"compare.py exited {cp.returncode}: {cp.stderr.strip()[-400:]}")
    with open(out) as f:
        r = json.load(f)["results"]

    def v(key):
        return r.get(key, {}).get("minder")
    res = {"cgroup": cgroup, "start_all_s": v("start_all"), "rss_mib": v("rss"),
           "idle_cpu_ms": v("idle_cpu"), "crash_median_ms": v("crash"),
           "crash_n": r.get("crash", {}).get("extra", {}).get("minder", {}).get("n"),
           "shutdown_s": v(f"shutdown_{a.cost_programs}"),
           "errors": {k: e["errors"]["minder"] for k, e in r.items() if "errors" in e}}
    log(f"cost {'cgroup' if cgroup else 'cgroup = false'} #{rep + 1}: {json.dumps(res)}")
    return res


# --------------------------------------------------------------------------
# report


def cgroup_facts():
    mount, hybrid = None, None
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                parts = line.split()
                sep = parts.index("-")
                if parts[sep + 1] == "cgroup2":
                    mount = parts[4]
                elif parts[sep + 1] == "cgroup":
                    hybrid = True
    except (OSError, ValueError):
        pass
    ctrl = "?"
    if mount:
        try:
            with open(os.path.join(mount, "cgroup.controllers")) as f:
                ctrl = f.read().strip() or "none"
        except OSError:
            pass
    kind = "none" if not mount else ("hybrid (v1 controllers + v2)" if hybrid else "pure v2")
    return {"mount": mount, "kind": kind, "controllers": ctrl}


def machine():
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"nproc": len(os.sched_getaffinity(0)), "cpu": cpu, "kernel": platform.release(),
            "uid": os.getuid()}


def cmd_out(argv):
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=REPO).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[0]
    except OSError:
        return "?"


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def f3(x, fmt="{:.3f}"):
    return "—" if x is None else fmt.format(x)


def doc(a, meta, r):
    L = ["## Containment (bench/containment.py)", "",
         f"- date: {meta['date']}; commit {meta['commit']} ({meta['version']}, release profile)",
         f"- command: `{meta['command']}`",
         f"- machine: {meta['machine']['nproc']} CPUs ({meta['machine']['cpu']}), kernel "
         f"{meta['machine']['kernel']}, run as uid {meta['machine']['uid']}",
         f"- cgroups: {meta['cg']['kind']}, cgroup2 at `{meta['cg']['mount']}`, controllers "
         f"there: {meta['cg']['controllers']}",
         f"- load average (1 min) {meta['load_start']} at the start, {meta['load_end']} at the end "
         "(other builds share the machine)", ""]
    s_cg, s_no, s_pa = r.get("setsid_cg"), r.get("setsid_nocg"), r.get("setsid_cg_pause")
    L += ["### 1. A `setsid` grandchild and `ctl stop`", "",
          "One program, `sh -c '(setsid /bin/sleep 600 & echo $! > DIR/$$) ; exec /bin/sleep 600'`: "
          "the subshell forks the grandchild and exits, the grandchild calls `setsid` (its own "
          "session and process group). Each round: `ctl start g`, poll `status --json` until "
          "running, read the grandchild's PID, wait until it has called `setsid` and is "
          "`sleep` and the main process has exec'd `sleep` (nothing else is left running), record the grandchild's start time (`/proc/PID/stat`), then time `ctl stop g` (which "
          "replies once the process is stopped) and, the moment it returns, check the "
          "grandchild by PID and start time. *Survivor*: the same process, not a zombie and "
          "not exiting. *Exiting*: `PF_EXITING` set (killed, past the point of no return, not "
          "yet a zombie). Survivors of `cgroup = false` are SIGKILLed by the bench afterwards.", "",
          "| | rounds | survivors | exiting at the check | `ctl stop` median | p99 | max |",
          "|---|---:|---:|---:|---:|---:|---:|"]
    for label, s in (("cgroup (default)", s_cg), ("`cgroup = false`", s_no),
                     (f"cgroup, `ctl stop` {a.pause_ms:g} ms later", s_pa)):
        if s:
            L.append(f"| {label} | {s['rounds']} | {s['survivors']} | {s['exiting']} | "
                     f"{f3(s.get('median_ms'), '{:.2f} ms')} | {f3(s.get('p99_ms'), '{:.2f} ms')} | "
                     f"{f3(s.get('max_ms'), '{:.2f} ms')} |")
    for s in (s_cg, s_no, s_pa):
        if s and s.get("errors"):
            L += [""] + [f"- {e}" for e in s["errors"]]
    if s_cg:
        L += ["", f"Target: 0 survivors with cgroups — "
              f"{'met' if s_cg['survivors'] == 0 and s_cg['rounds'] == a.rounds else '**missed**'}. "
              f"The main process's cgroup was `{s_cg.get('cgroup_path')}`."]
    if s_cg and s_pa and s_cg.get("median_ms") and s_pa.get("median_ms"):
        L += ["", f"The last row waits {a.pause_ms:g} ms between the grandchild being in place and "
              "`ctl stop`; otherwise it is the first row. minder learns that a cgroup is empty from "
              "the kernel's notification on `cgroup.events`, and the kernel sends at most one "
              "notification per `cgroup.events` file every 10 ms (`CGROUP_FILE_NOTIFY_MIN_INTV`, "
              "kernel/cgroup/cgroup.c) and holds back a later one until then. The cgroup became "
              "populated when the process was spawned a few milliseconds before the stop, so the "
              "\"empty\" notification of a stop that soon after a start waits out the rest of those "
              f"10 ms: median {s_cg['median_ms']:.2f} ms right after the start, "
              f"{s_pa['median_ms']:.2f} ms {a.pause_ms:g} ms later."]
    L.append("")

    rc = r.get("recovery_cg", [])
    rn = r.get("recovery_nocg", [])
    L += ["### 2. kill -9 of minder, then a new minder on the same config", "",
          f"{a.recovery_programs} programs, {a.recovery_listen} of them "
          "`minder-testchild --serve-inherited` with `listen = [\"tcp://127.0.0.1:PORT\"]`, the "
          "others `/bin/sleep 3600`, all `start_secs = \"0s\"` and the default `stop_timeout`. "
          "The first minder runs until all are running; the bench records every PID below it "
          "(main processes and descendants) with its start time, SIGKILLs minder, and starts a "
          "new one on the same config at once. *All running*: from spawning the new minder "
          "until a `status --json` (polled every 5 ms) shows every process running. *Old "
          "alive*: processes of the first generation still alive (same PID and start time, "
          "not a zombie, not exiting) at that moment. *Ports*: each listen port asked for `/`; "
          "the body is the serving PID, which must be the new minder's process. With cgroups "
          "the new minder stops what it finds in its predecessor's cgroups; with `cgroup = "
          "false` on every program it uses the `<socket>.pids` state file. The two modes "
          f"alternate, {a.recoveries} times each. *Refused*: starts of the new minder that "
          "exited at once with `another minder is already listening on SOCKET`; the bench "
          "then starts it again 100 ms later (as systemd's `Restart=` would with the default "
          f"`RestartSec=`), up to {a.recovery_attempts} starts, and *all running* counts from "
          "the first start.", "",
          "| | runs | all running, median | max | refused starts (sum) | old alive (sum) | exiting at the check (sum) | ports answered by the new generation | log lines per run |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, rs in (("cgroup (default)", rc), ("`cgroup = false` (state file)", rn)):
        ok = [x for x in rs if "all_running_s" in x]
        if not rs:
            continue
        L.append(f"| {label} | {len(ok)} of {len(rs)} | "
                 f"{f3(med([x['all_running_s'] for x in ok]), '{:.3f} s')} | "
                 f"{f3(max([x['all_running_s'] for x in ok]) if ok else None, '{:.3f} s')} | "
                 f"{sum(x.get('refusals', 0) for x in ok)} | "
                 f"{sum(x['old_alive'] for x in ok)} | {sum(x['old_exiting'] for x in ok)} | "
                 f"{sum(x['ports_new'] for x in ok)} of {sum(x['ports'] for x in ok)} | "
                 f"{', '.join(str(x['logged']) for x in ok)} |")
    for label, rs in (("cgroup", rc), ("cgroup = false", rn)):
        ok = [x for x in rs if "all_running_s" in x]
        if ok:
            L.append(f"- {label}, all running after: " + ", ".join(f"{x['all_running_s']:.3f} s" for x in ok)
                     + f" (old generation: {', '.join(str(x['old_procs']) for x in ok)} processes)")
        for x in rs:
            if x.get("error"):
                L.append(f"- {label}: failed: {x['error']}")
            if x.get("refusals"):
                L.append(f"- {label}: {x['refusals']} refused start(s), then all running "
                         f"{x['all_running_last_attempt_s']:.3f} s after the last start; holding the "
                         f"control socket as the new minder started: "
                         f"{', '.join(x.get('holders_at_start') or ['none found'])}; at the refusal: "
                         f"{', '.join(x.get('holders') or ['none left'])}")
            if x.get("port_errors"):
                L.append(f"- {label}: ports: {'; '.join(x['port_errors'])}")
    worst = [x["all_running_s"] for x in rc + rn if "all_running_s" in x]
    alive = sum(x.get("old_alive", 0) for x in rc + rn)
    refused = sum(x.get("refusals", 0) for x in rc + rn)
    failed = sum(1 for x in rc + rn if "all_running_s" not in x)
    if worst:
        L += ["", f"Targets: all {a.recovery_programs} running within 2 s of the new minder's start "
              f"(worst {max(worst):.3f} s: {'met' if max(worst) < 2 else '**missed**'}), no process of the "
              f"old generation alive then ({alive}: {'met' if alive == 0 else '**missed**'}), the "
              f"new minder starting at the first attempt ({refused} refused starts, {failed} failed "
              f"runs: {'met' if refused == 0 and failed == 0 else '**missed**'}). "
              "*Log lines*: the new minder's lines naming a process "
              "`left in cgroup … by a minder that ended without stopping it` (with cgroups) or "
              "mentioning what was `left` (state file)."]
    L.append("")

    cc = r.get("cost_cg", [])
    cn = r.get("cost_nocg", [])
    L += ["### 3. The cost of a cgroup per spawn", "",
          f"`bench/compare.py --only minder --skip small --programs {a.cost_programs} "
          f"--idle-secs {a.idle_secs:g} --start-repeat 1 --status-runs 5 --crash-restarts "
          f"{a.crash_restarts}`, and the same with `--program-extra 'cgroup = false'` (every "
          "program without a cgroup, so minder makes none), alternating, "
          f"{a.cost_runs} runs each; the table shows medians over the runs. See the life cycle "
          "section for what each figure is.", "",
          "| | runs | all running | RSS | idle CPU | crash-to-restart median | shutdown |",
          "|---|---:|---:|---:|---:|---:|---:|"]
    agg = {}
    for label, rs, key in (("cgroup (default)", cc, "cg"), ("`cgroup = false`", cn, "nocg")):
        if not rs:
            continue
        m = {k: med([x.get(k) for x in rs]) for k in
             ("start_all_s", "rss_mib", "idle_cpu_ms", "crash_median_ms", "shutdown_s")}
        agg[key] = m
        L.append(f"| {label} | {len(rs)} | {f3(m['start_all_s'], '{:.3f} s')} | "
                 f"{f3(m['rss_mib'], '{:.1f} MiB')} | {f3(m['idle_cpu_ms'], '{:.0f} ms')} | "
                 f"{f3(m['crash_median_ms'], '{:.3f} ms')} | {f3(m['shutdown_s'], '{:.3f} s')} |")
    for label, rs in (("cgroup", cc), ("cgroup = false", cn)):
        if rs:
            L.append(f"- {label}: all running " + ", ".join(f3(x.get('start_all_s'), '{:.3f}') for x in rs)
                     + " s; crash-to-restart " + ", ".join(f3(x.get('crash_median_ms'), '{:.3f}') for x in rs)
                     + " ms; RSS " + ", ".join(f3(x.get('rss_mib'), '{:.1f}') for x in rs) + " MiB")
        for x in rs:
            for k, e in (x.get("errors") or {}).items():
                L.append(f"- {label}: {k} failed: {e}")
    if "cg" in agg and "nocg" in agg:
        g, n = agg["cg"], agg["nocg"]
        d_restart = (g["crash_median_ms"] - n["crash_median_ms"]) if None not in (
            g["crash_median_ms"], n["crash_median_ms"]) else None
        d_start = ((g["start_all_s"] - n["start_all_s"]) * 1000 / a.cost_programs) if None not in (
            g["start_all_s"], n["start_all_s"]) else None
        r["per_spawn"] = {"restart_ms": d_restart, "start_ms": d_start}
        L += ["", f"Per spawn, cgroup minus none: {f3(d_restart, '{:+.3f} ms')} on a restart "
              f"(crash-to-restart medians), {f3(d_start, '{:+.3f} ms')} per process on the start of "
              f"{a.cost_programs} (difference of the all-running medians ÷ {a.cost_programs})."]
    L.append("")
    L += ["### What the numbers mean", "", meta["reading"], ""]
    return "\n".join(L)


def reading(a, r, cg):
    """One paragraph on the figures, written from them (no fixed conclusions)."""
    out = []
    s_cg, s_no = r.get("setsid_cg"), r.get("setsid_nocg")
    if s_cg and s_no:
        out.append(f"With a cgroup per process, {s_cg['survivors']} of {s_cg['rounds']} `setsid` "
                   f"grandchildren outlived `ctl stop`; with `cgroup = false`, {s_no['survivors']} of "
                   f"{s_no['rounds']} did, because a stop by process group cannot reach a process "
                   "that left the group. The stop with cgroups includes emptying the cgroup "
                   "(`cgroup.kill` of the grandchild once the main process has exited, then waiting "
                   "for `populated 0`) and removing it; a stop within 10 ms of the start also waits "
                   "for the kernel's rate limit on `cgroup.events` notifications (see section 1).")
    rc = [x for x in r.get("recovery_cg", []) if "all_running_s" in x]
    rn = [x for x in r.get("recovery_nocg", []) if "all_running_s" in x]
    if rc and rn:
        out.append(f"After a kill -9 of minder both recoveries stop the old generation before "
                   f"starting the new one (median {med([x['all_running_s'] for x in rc]):.3f} s "
                   f"with cgroups, {med([x['all_running_s'] for x in rn]):.3f} s with the state "
                   "file); the listen ports are free again because the old processes holding "
                   "them are gone, and the new ones answer.")
    ps = r.get("per_spawn")
    if ps and ps.get("restart_ms") is not None and ps.get("start_ms") is not None:
        def overlap(key):
            g = [x[key] for x in r.get("cost_cg", []) if x.get(key) is not None]
            n = [x[key] for x in r.get("cost_nocg", []) if x.get(key) is not None]
            if not g or not n:
                return "?"
            return ("the per-run figures of the two modes overlap: within this machine's noise"
                    if min(g) <= max(n) and min(n) <= max(g)
                    else "the per-run figures of the two modes do not overlap")
        out.append(f"Per spawn the cgroup (a mkdir, `clone3` into it, an rmdir once empty) "
                   f"costs {ps['restart_ms']:+.3f} ms on a restart ({overlap('crash_median_ms')}) "
                   f"and {ps['start_ms']:+.3f} ms per process when {a.cost_programs} start "
                   f"({overlap('start_all_s')}).")
    allr = r.get("recovery_cg", []) + r.get("recovery_nocg", [])
    refused = sum(x.get("refusals", 0) for x in allr)
    seen = [h for x in allr for h in x.get("holders_at_start") or []]
    if refused:
        out.append(f"The new minder refused to start {refused} time(s) in "
                   f"{len(allr)} recoveries. It decides that another minder is alive when a "
                   "connect to the control socket succeeds, and a listening Unix socket accepts "
                   "connections into its backlog for as long as any process holds a copy of it. "
                   "minder's spawn does not wait for the child's exec, so a child the killed minder "
                   "had just cloned, not yet exec'd, still holds every descriptor of minder, the "
                   "listening control socket included (close-on-exec takes effect at the exec); a "
                   "new minder started within those few milliseconds takes it for a live "
                   "predecessor and exits 1."
                   + (f" Holders seen as the new minder started: {', '.join(seen[:4])}." if seen else "")
                   + " Started again, it recovers as usual. Under systemd this does not arise: "
                   "systemd kills what is left of the unit's cgroup before `Restart=` starts minder "
                   "again.")
    if "memory" not in cg["controllers"]:
        out.append(f"On this host ({cg['kind']}) the v2 hierarchy at `{cg['mount']}` offers "
                   f"no memory, cpu or pids controller (`cgroup.controllers`: {cg['controllers']}): "
                   "`memory.current` does not exist, so minder's per-process "
                   "`memory_bytes` is the sum of the RSS of the processes in the cgroup, and no "
                   "memory, cpu or pids controller is charged — the cost measured here is that of "
                   "the cgroup itself (creation, `clone3` into it, `cgroup.events`, `cgroup.kill`, "
                   "removal), not of controller accounting, which a pure v2 host with "
                   "`memory`/`cpu`/`pids` enabled would add.")
    return " ".join(out)


def command_line():
    return " ".join(shlex.quote(x) for x in
                    ["python3", os.path.relpath(os.path.abspath(__file__), REPO)] + sys.argv[1:])


def main():
    tgt = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target-dir", default=tgt)
    ap.add_argument("--rounds", type=int, default=1000, help="setsid rounds with cgroups")
    ap.add_argument("--rounds-nocg", type=int, default=50, help="setsid rounds with cgroup = false")
    ap.add_argument("--rounds-pause", type=int, default=200,
                    help="setsid rounds with cgroups and --pause-ms before each stop")
    ap.add_argument("--pause-ms", type=float, default=20.0)
    ap.add_argument("--setsid-secs", type=float, default=600, help="time bound of each setsid run")
    ap.add_argument("--recoveries", type=int, default=5, help="kill -9 recoveries per mode")
    ap.add_argument("--recovery-programs", type=int, default=100)
    ap.add_argument("--recovery-listen", type=int, default=20)
    ap.add_argument("--recovery-attempts", type=int, default=5,
                    help="starts of the new minder per recovery, 100 ms apart, while it refuses")
    ap.add_argument("--cost-runs", type=int, default=3, help="compare.py runs per mode")
    ap.add_argument("--cost-programs", type=int, default=1000)
    ap.add_argument("--idle-secs", type=float, default=10.0, help="idle window of each compare.py run")
    ap.add_argument("--crash-restarts", type=int, default=200)
    ap.add_argument("--skip", default="", help="comma list of setsid,recovery,cost")
    ap.add_argument("--doc", default=os.path.join(REPO, "docs", "benchmarks.md"))
    ap.add_argument("--no-doc", action="store_true")
    ap.add_argument("--json-out")
    a = ap.parse_args()
    a.minder = os.path.join(a.target_dir, "release", "minder")
    a.testchild = os.path.join(a.target_dir, "release", "minder-testchild")
    skip = {x.strip() for x in a.skip.split(",") if x.strip()}
    for b in (a.minder, a.testchild):
        if not os.access(b, os.X_OK):
            sys.exit(f"{b} missing: cargo build --release --bin minder --bin minder-testchild")

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # Orphans (the setsid grandchildren, the processes of a killed minder) are
    # re-parented to this script, which reaps them by PID.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)

    def on_term(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)

    cg = cgroup_facts()
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": command_line(), "machine": machine(), "cg": cg, "load_start": loadavg(),
            "commit": cmd_out(["git", "rev-parse", "--short", "HEAD"]),
            "version": cmd_out([a.minder, "--version"])}
    log(f"{meta['machine']}; cgroups {cg}")
    tmp = tempfile.mkdtemp(prefix="minder-bench-cg-", dir="/tmp")
    r = {}
    try:
        if "setsid" not in skip:
            r["setsid_cg"] = bench_setsid(a, tmp, True, a.rounds)
            r["setsid_nocg"] = bench_setsid(a, tmp, False, a.rounds_nocg)
            if a.rounds_pause:
                r["setsid_cg_pause"] = bench_setsid(a, tmp, True, a.rounds_pause, a.pause_ms / 1000)
        if "recovery" not in skip:
            r["recovery_cg"], r["recovery_nocg"] = [], []
            for rep in range(a.recoveries):
                for cgroup in (True, False):
                    key = "recovery_cg" if cgroup else "recovery_nocg"
                    try:
                        r[key].append(bench_recovery(a, tmp, cgroup, rep))
                    except Exception as e:  # one failed run must not hide the others
                        log(f"recovery failed: {e}")
                        r[key].append({"cgroup": cgroup, "error": str(e)[:300]})
        if "cost" not in skip:
            r["cost_cg"], r["cost_nocg"] = [], []
            for rep in range(a.cost_runs):
                for cgroup in (True, False):
                    try:
                        r["cost_cg" if cgroup else "cost_nocg"].append(bench_cost(a, tmp, cgroup, rep))
                    except Exception as e:
                        log(f"cost run failed: {e}")
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        shutil.rmtree(tmp, ignore_errors=True)
        sys.exit(130)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    meta["load_end"] = loadavg()
    meta["reading"] = ""
    text = doc(a, meta, r)  # computes r["per_spawn"]
    meta["reading"] = reading(a, r, cg)
    text = doc(a, meta, r)
    print(text)
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump({"meta": meta, "results": r}, f, indent=1)
    if not a.no_doc:
        docsection.replace_section(a.doc, "containment", text, "bench/containment.py")
        log(f"wrote {a.doc}")


if __name__ == "__main__":
    main()
