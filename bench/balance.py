#!/usr/bin/env python3
"""Load balancer registration benchmarks for minder (SPEC §5.2).

The stack is etc/examples/web-behind-balancers copied to a temp dir with free
ports, HAProxy and nginx as minder programs, except that the four instances
are minder-testchild --http PORT --unhealthy-if FILE (so health can be
flipped by creating a file), probed every 200 ms, and drain is --drain (500 ms
by default, to keep 20 rolling restarts short; nginx needs at least the 200 ms
reload debounce plus ~110 ms for its old workers).

1. steady load through HAProxy and nginx (client threads, a new connection
   per request): p50/p99 latency and failures;
2. 20 x `minder ctl restart web` under that load: failures, p99 vs steady;
3. one instance turned unhealthy: from minder's `in -> out` event to HAProxy
   no longer routing to it (admin socket polled every ~1 ms), and to nginx's
   upstream file rewritten, new nginx workers up, last request reaching the
   sick instance through nginx; failed requests in between;
4. kill -9 of one instance under load: failed requests through each;
5. kill -9 of minder registered in etcd (ttl 2 s): time until the keys are gone;
6. minder RSS with 100 processes registered in etcd and a file vs the same
   without [register]; minder CPU over 30 s idle with the etcd keep-alives.

Loopback only; every loop bounded in count and time; only processes this
script started (and, for 4 and 5, the instance or minder it kills on
purpose, and the children orphaned by 5) are signalled, by PID. Results go to
docs/benchmarks.md between the "balance" markers.

Usage: python3 bench/balance.py [--target-dir DIR] [--restarts N] [--drain D] [--no-write]
"""

import argparse
import base64
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
import urllib.request

import docsection
from health import Minder, cpu_seconds, free_port, release_binaries, rss_mib, stop_daemon

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "etc", "examples", "web-behind-balancers")
MAX_REQUESTS_PER_THREAD = 2_000_000  # a bound on every client loop besides its deadline


def free_ports(n):
    """The first of n consecutive loopback ports that were free a moment ago."""
    for _ in range(100):
        base = free_port()
        if base + n > 65535:
            continue
        held = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                s.bind(("127.0.0.1", p))
                held.append(s)
            return base
        except OSError:
            pass
        finally:
            for s in held:
                s.close()
    raise SystemExit(f"no {n} consecutive free ports")


def wait_until(pred, timeout, what, step=0.02):
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / step) + 2):
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            break
        time.sleep(step)
    raise SystemExit(f"timed out ({timeout} s) waiting for {what}")


def http_get(port, timeout=5.0):
    """GET / on a fresh connection: the status code, or the error's name."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            data = b""
            while len(data) < 65536:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        parts = data.split(b" ", 2)
        return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else "junk"
    except OSError as e:
        return type(e).__name__


class Load:
    """Client threads, each sending GET / to one balancer back to back on a
    new connection per request; every request recorded as (wall start, wall
    end, latency s, status)."""

    def __init__(self, ports, threads_each, max_seconds):
        self.ports = ports
        self.stop_flag = threading.Event()
        self.records = {name: [] for name in ports}
        self.deadline = time.monotonic() + max_seconds
        self.threads = []
        for name, port in ports.items():
            for _ in range(threads_each):
                out = []
                self.records[name].append(out)
                t = threading.Thread(target=self.run, args=(port, out), daemon=True)
                self.threads.append(t)

    def run(self, port, out):
        for _ in range(MAX_REQUESTS_PER_THREAD):
            if self.stop_flag.is_set() or time.monotonic() > self.deadline:
                return
            w0, t0 = time.time(), time.monotonic()
            status = http_get(port)
            out.append((w0, time.time(), time.monotonic() - t0, status))

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def stop(self):
        self.stop_flag.set()
        for t in self.threads:
            t.join(timeout=15)

    def window(self, name, w_from, w_to):
        """Records of `name` whose request started in [w_from, w_to)."""
        return [r for out in self.records[name] for r in list(out) if w_from <= r[0] < w_to]


def summary(records):
    lat = sorted(r[2] for r in records)
    failed = [r for r in records if r[3] != 200]
    kinds = {}
    for r in failed:
        kinds[str(r[3])] = kinds.get(str(r[3]), 0) + 1

    def pct(q):
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 if lat else float("nan")

    return {"requests": len(records), "failed": len(failed), "failures": kinds,
            "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": lat[-1] * 1000 if lat else float("nan")}


def haproxy_servers(sock_path):
    """`show servers state web`: {server name: (op state, admin state)}."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(2)
        s.connect(sock_path)
        s.sendall(b"show servers state web\n")
        data = b""
        for _ in range(1000):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    servers = {}
    for line in data.decode().splitlines()[1:]:
        f = line.split()
        if len(f) > 6 and not line.startswith("#"):
            servers[f[3]] = (int(f[5]), int(f[6]))
    return servers


def routable(state):
    # op 2 = running; admin 0 = neither maint (1) nor drain (8).
    return state is not None and state[0] == 2 and state[1] == 0


class Stack:
    """The example, copied with free ports and the test child as instance."""

    def __init__(self, binary, child, tmp, drain):
        self.binary, self.tmp = binary, tmp
        self.dir = os.path.join(tmp, "web-behind-balancers")
        self.nginx_port, self.haproxy_port, self.base = free_port(), free_port(), free_ports(4)
        shutil.copytree(EXAMPLE, self.dir, ignore=shutil.ignore_patterns("run"))
        subst = [("8080", str(self.nginx_port)), ("8081", str(self.haproxy_port))]
        subst += [(str(9001 + i), str(self.base + i)) for i in range(4)]
        for name in ("minder.toml", "nginx.conf", "haproxy.cfg"):
            path = os.path.join(self.dir, name)
            with open(path) as f:
                text = f.read()
            for old, new in subst:
                text = text.replace(old, new)
            if name == "minder.toml":
                text = self.adapt(text, child, drain)
            with open(path, "w") as f:
                f.write(text)
        self.config = os.path.join(self.dir, "minder.toml")
        self.sock = os.path.join(self.dir, "run", "minder.sock")
        self.admin = os.path.join(self.dir, "run", "admin.sock")
        self.upstream = os.path.join(self.dir, "run", "upstream-web.conf")
        self.log = open(os.path.join(tmp, "daemon.log"), "w")
        self.proc = subprocess.Popen([binary, "daemon", "-c", self.config], cwd=self.dir,
                                     stdout=self.log, stderr=self.log)

    def adapt(self, text, child, drain):
        def swap(old, new):
            if old not in text:
                raise SystemExit(f"the example's minder.toml has no {old!r} any more")
            return text.replace(old, new, 1)
        text = swap('command = ["python3", "-m", "http.server", "--bind", "127.0.0.1", "{port}"]',
                    f'command = ["{child}", "--http", "{{port}}", "--unhealthy-if", "{self.tmp}/sick-{{instance}}"]')
        text = swap('interval = "1s"', 'interval = "200ms"')
        text = swap('drain = "2s"', f'drain = "{drain}"')
        text = swap("[supervisor]\n", '[supervisor]\nlog_level = "warn"\n')
        return text

    def ctl(self, *args, timeout=120):
        return subprocess.run([self.binary, "ctl", "-s", self.sock, *args],
                              capture_output=True, text=True, timeout=timeout)

    def processes(self):
        out = self.ctl("status", "--json", timeout=30)
        if out.returncode not in (0, 3):
            return None
        return json.loads(out.stdout)["processes"]

    def all_in(self):
        ps = self.processes()
        if not ps:
            return False
        web = [p for p in ps if p["program"] == "web"]
        running = {p["name"] for p in ps if p["state"] == "running"}
        return (len(web) == 4 and {"nginx", "haproxy"} <= running and all(
            p["state"] == "running" and p["health"] == "healthy"
            and p.get("register") == {"haproxy": "ok", "file": "ok"} for p in web)
            and all(routable(s) for s in haproxy_servers(self.admin).values())
            and len(haproxy_servers(self.admin)) == 4)

    def wait_all_in(self, timeout=60):
        wait_until(self.all_in, timeout, "4 instances in both balancers", step=0.05)
        # nginx serves the reloaded file ~110 ms after its reload at most.
        wait_until(lambda: http_get(self.nginx_port) == 200, 10, "nginx answering 200")
        wait_until(lambda: http_get(self.haproxy_port) == 200, 10, "HAProxy answering 200")

    def pid_of(self, name):
        for p in self.processes() or []:
            if p["name"] == name:
                return p["pid"]
        return None

    def stop(self):
        stop_daemon(self.proc, self.log)


def bench_steady(stack, seconds, threads):
    load = Load({"haproxy": stack.haproxy_port, "nginx": stack.nginx_port}, threads, seconds + 30).start()
    w0 = time.time()
    time.sleep(seconds)
    w1 = time.time()
    load.stop()
    return {b: summary(load.window(b, w0, w1)) for b in ("haproxy", "nginx")}


def bench_restarts(stack, restarts, threads):
    load = Load({"haproxy": stack.haproxy_port, "nginx": stack.nginx_port}, threads, 60 * restarts + 60).start()
    time.sleep(0.5)
    w0 = time.time()
    durations, failed_ctl = [], 0
    for _ in range(restarts):
        t0 = time.monotonic()
        out = stack.ctl("restart", "web")
        durations.append(time.monotonic() - t0)
        if out.returncode != 0:
            failed_ctl += 1
    w1 = time.time()
    time.sleep(0.5)
    load.stop()
    res = {b: summary(load.window(b, w0, w1)) for b in ("haproxy", "nginx")}
    res["restarts"] = restarts
    res["restart_s_median"] = sorted(durations)[len(durations) // 2]
    res["ctl_failures"] = failed_ctl
    return res


def nginx_workers(master):
    try:
        with open(f"/proc/{master}/task/{master}/children") as f:
            return set(int(x) for x in f.read().split())
    except OSError:
        return set()


def bench_unhealthy_rounds(stack, threads, rounds):
    per = []
    for i in range(rounds):
        stack.wait_all_in()
        per.append(bench_unhealthy(stack, threads, 1 + i % 3))
        print(json.dumps(per[-1]), flush=True)
    return per


def bench_unhealthy(stack, threads, instance):
    name, server = f"web:{instance}", f"web_{instance}"
    port = stack.base + instance
    master = stack.pid_of("nginx")
    workers0 = nginx_workers(master)
    events = []
    ev = subprocess.Popen([stack.binary, "ctl", "-s", stack.sock, "events", "--json", name],
                          stdout=subprocess.PIPE, text=True)

    def read_events():
        for line in ev.stdout:
            try:
                events.append((time.time(), json.loads(line)))
            except ValueError:
                pass
    threading.Thread(target=read_events, daemon=True).start()
    polls = []  # (wall time, haproxy routable, upstream has the port, nginx workers)
    stop_poll = threading.Event()

    def poll():
        line = f"server 127.0.0.1:{port};"
        for _ in range(20000):  # ~1 ms apart: at most ~20 s
            if stop_poll.is_set():
                return
            t = time.time()
            try:
                h = routable(haproxy_servers(stack.admin).get(server))
            except OSError:
                h = None
            try:
                with open(stack.upstream) as f:
                    has = line in f.read()
            except OSError:
                has = None
            polls.append((t, h, has, frozenset(nginx_workers(master))))
            time.sleep(0.001)
    load = Load({"haproxy": stack.haproxy_port, "nginx": stack.nginx_port}, threads, 60).start()
    time.sleep(1.0)
    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    time.sleep(0.2)
    flag = os.path.join(stack.tmp, f"sick-{instance}")
    w_flag = time.time()
    open(flag, "w").close()
    out_event = wait_until(lambda: next((e for e in events if e[1].get("from") == "in" and e[1].get("to") == "out"), None),
                           10, f"{name} in -> out")
    time.sleep(1.5)  # observe the balancers after the event; bounded
    stop_poll.set()
    poller.join(timeout=5)
    w_end = time.time()
    load.stop()
    os.unlink(flag)
    ev.send_signal(signal.SIGTERM)
    ev.wait(timeout=10)
    recv_wall, event = out_event
    # The event's own time (ms resolution, minder's clock); the bench's
    # receive time bounds it from above.
    ev_wall = parse_rfc3339_ms(event["time"])
    after = [p for p in polls if p[0] >= ev_wall - 0.002]
    h_out = next((p[0] for p in polls if p[0] > w_flag and p[1] is False), None)
    f_out = next((p[0] for p in polls if p[0] > w_flag and p[2] is False), None)
    new_workers = next((p[0] for p in polls if p[0] > w_flag and (p[3] - workers0) and p[3]), None)
    old_gone = next((p[0] for p in after if p[3] and not (p[3] & workers0)), None)
    nginx_reqs = load.window("nginx", w_flag, w_end)
    nginx_500_after = [r for r in nginx_reqs if r[3] != 200 and r[0] >= ev_wall]
    last_bad = max((r[1] for r in nginx_reqs if r[3] == 500), default=None)

    def ms(t):
        return None if t is None else (t - ev_wall) * 1000
    return {
        "event_time": event["time"], "event_reason": event.get("reason"),
        "flag_to_event_ms": (ev_wall - w_flag) * 1000,
        "event_receive_delay_ms": (recv_wall - ev_wall) * 1000,
        "haproxy_out_ms": ms(h_out),
        "file_rewritten_ms": ms(f_out),
        "nginx_new_workers_ms": ms(new_workers),
        "nginx_old_workers_gone_ms": ms(old_gone),
        "nginx_last_500_end_ms": ms(last_bad),
        "haproxy_failed_after_event": sum(1 for r in load.window("haproxy", ev_wall, w_end) if r[3] != 200),
        "haproxy_failed_flag_to_event": sum(1 for r in load.window("haproxy", w_flag, ev_wall) if r[3] != 200),
        "nginx_failed_after_event": len(nginx_500_after),
        "nginx_failed_flag_to_event": sum(1 for r in load.window("nginx", w_flag, ev_wall) if r[3] != 200),
        "polls": len(polls),
        "poll_interval_ms": (polls[-1][0] - polls[0][0]) / max(1, len(polls) - 1) * 1000 if polls else None,
    }


def parse_rfc3339_ms(text):
    # "2026-12-03T22:43:38.431Z"
    main, frac = text.rstrip("Z").split(".")
    secs = time.mktime(time.strptime(main, "%Y-%m-%dT%H:%M:%S")) - time.timezone
    if time.localtime().tm_isdst and time.daylight:
        secs -= time.altzone - time.timezone
    return secs + int(frac) / 10 ** len(frac)


def bench_kill_instance(stack, threads, rounds):
    """kill -9 of instance 2, 3, 0, ... in turn; requests counted over all rounds."""
    per = [kill_one(stack, threads, (2 + i) % 4) for i in range(rounds)]
    res = {}
    for b in ("haproxy", "nginx"):
        failures = {}
        for p in per:
            for kind, n in p[b]["failures"].items():
                failures[kind] = failures.get(kind, 0) + n
        res[b] = {"requests": sum(p[b]["requests"] for p in per),
                  "failed": sum(p[b]["failed"] for p in per), "failures": failures,
                  "per_round": [p[b]["failed"] for p in per]}
    res["rounds"] = rounds
    res["window_s"] = [p["window_s"] for p in per]
    return res


def kill_one(stack, threads, instance):
    load = Load({"haproxy": stack.haproxy_port, "nginx": stack.nginx_port}, threads, 60).start()
    time.sleep(1.0)
    pid = stack.pid_of(f"web:{instance}")
    w0 = time.time()
    os.kill(pid, signal.SIGKILL)
    # Until it is back in both balancers (restarted after the 1 s backoff).
    time.sleep(0.3)
    stack.wait_all_in(timeout=30)
    time.sleep(0.5)
    w1 = time.time()
    load.stop()
    return {b: summary(load.window(b, w0, w1)) for b in ("haproxy", "nginx")} | {"window_s": w1 - w0}


def etcd_start(tmp):
    port, peer = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(os.path.join(tmp, "etcd.log"), "w")
    proc = subprocess.Popen(
        ["etcd", "--name", "b", "--data-dir", os.path.join(tmp, "etcd-data"),
         "--listen-client-urls", url, "--advertise-client-urls", url,
         "--listen-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-cluster", f"b=http://127.0.0.1:{peer}"],
        stdout=log, stderr=log)

    def up():
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as r:
                return b"true" in r.read()
        except OSError:
            return False
    wait_until(up, 20, "etcd answering", step=0.05)
    return proc, url, log


def etcd_count(url, prefix="/minder/services/"):
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    body = json.dumps({"key": base64.b64encode(prefix.encode()).decode(),
                       "range_end": base64.b64encode(end.encode()).decode(),
                       "count_only": True}).encode()
    req = urllib.request.Request(url + "/v3/kv/range", data=body, method="POST")
    with urllib.request.urlopen(req, timeout=2) as r:
        return int(json.loads(r.read()).get("count", "0"))


def kill_orphans(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def bench_etcd_kill(binary, child, url, tmp, rounds, ttl):
    results = []
    for r in range(rounds):
        d_tmp = os.path.join(tmp, f"etcd-kill-{r}")
        os.makedirs(d_tmp)
        base = free_ports(4)
        body = (f'[program.web]\ncommand = ["{child}", "--http", "{{port}}"]\ninstances = 4\nport = {base}\n'
                f'start_secs = "0s"\n[program.web.register.etcd]\nendpoints = ["{url}"]\nttl = "{ttl}s"\n')
        pids = []
        d = Minder(binary, d_tmp, body)
        try:
            wait_until(lambda: etcd_count(url) == 4, 30, "4 keys in etcd")
            pids = [p["pid"] for p in d.status() if p.get("pid")]
            time.sleep(ttl * 0.5)  # a random-ish point between keep-alives
            t0 = time.monotonic()
            d.proc.send_signal(signal.SIGKILL)
            d.proc.wait(timeout=10)
            wait_until(lambda: etcd_count(url) == 0, ttl + 10, "keys gone", step=0.02)
            results.append(time.monotonic() - t0)
        finally:
            d.stop()
            kill_orphans(pids)
    return {"ttl_s": ttl, "rounds_s": results, "max_s": max(results)}


def bench_rss(binary, url, tmp, n, idle, rounds):
    """Alternating daemons without and with registration; CPU in the last one."""
    per = []
    for i in range(rounds):
        per.append(rss_round(binary, url, tmp, n, idle if i == rounds - 1 else 0, i))
        print(json.dumps(per[-1]), flush=True)
    diffs = sorted(p["diff_mib"] for p in per)
    last = per[-1]
    return {"processes": n, "rounds": per, "diffs_mib": [p["diff_mib"] for p in per],
            "median_diff_mib": diffs[len(diffs) // 2], "max_diff_mib": diffs[-1],
            "rss_without_mib": [p["rss_without_mib"] for p in per],
            "rss_with_mib": [p["rss_with_mib"] for p in per],
            "rss_file_mib": [p["rss_file_mib"] for p in per],
            "median_diff_file_mib": sorted(p["diff_file_mib"] for p in per)[len(per) // 2],
            "threads": {k: per[-1][f"threads_{k}"] for k in ("without", "file", "with")},
            "idle_cpu_ms": last["idle_cpu_ms"], "idle_s": last["idle_s"],
            "rss_with_after_idle_mib": last["rss_with_after_idle_mib"]}


def rss_round(binary, url, tmp, n, idle, i):
    res = {}
    # "file": the file backend alone, to tell the etcd client's share apart.
    for label, register in (("without", False), ("file", "file"), ("with", True)):
        d_tmp = os.path.join(tmp, f"rss-{label}-{i}")
        os.makedirs(d_tmp)
        body = (f'[program.p]\ncommand = ["/bin/sleep", "3600"]\ninstances = {n}\nport = 30000\n'
                f'start_secs = "0s"\n')
        if register is True:
            body += f'[program.p.register.etcd]\nendpoints = ["{url}"]\nttl = "10s"\n'
        if register:
            body += f'[program.p.register.file]\npath = "{d_tmp}/upstream.conf"\n'

        d = Minder(binary, d_tmp, body)
        try:
            d.wait_for(lambda ps: len(ps) == n and all(p["state"] == "running" for p in ps), 60, f"{n} running")
            if register is True:
                wait_until(lambda: etcd_count(url, "/minder/services/p/") == n, 30, f"{n} keys")
            if register:
                wait_until(lambda: os.path.exists(f"{d_tmp}/upstream.conf"), 30, "the upstream file")
            time.sleep(3)
            res[f"rss_{label}_mib"] = rss_mib(d.proc.pid)
            res[f"threads_{label}"] = threads(d.proc.pid)
            if register is True and idle:
                c0 = cpu_seconds(d.proc.pid)
                time.sleep(idle)
                res["idle_cpu_ms"] = (cpu_seconds(d.proc.pid) - c0) * 1000
                res["idle_s"] = idle
                res["rss_with_after_idle_mib"] = rss_mib(d.proc.pid)
        finally:
            d.stop()
    res["diff_mib"] = res["rss_with_mib"] - res["rss_without_mib"]
    res["diff_file_mib"] = res["rss_file_mib"] - res["rss_without_mib"]
    return res


def threads(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return None


def version(argv):
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (out.stdout + out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "?"


def ok(cond):
    return "yes" if cond else "**no**"


def write_section(r, command, args):
    s, rs, us, k, e, m = r["steady"], r["restarts"], r["unhealthy"], r["kill"], r["etcd"], r["rss"]

    def row(b, x):
        return f"{x[b]['requests']} requests, {x[b]['failed']} failed, p50 {x[b]['p50_ms']:.2f} ms, p99 {x[b]['p99_ms']:.2f} ms"

    def fail_text(x):
        return ", ".join(f"{kind}: {n}" for kind, n in x.items()) or "none"
    ratio = {b: rs[b]["p99_ms"] / s[b]["p99_ms"] for b in ("haproxy", "nginx")}

    def med_max(key):
        vals = [u[key] for u in us]
        if any(v is None for v in vals):
            return "not seen in " + str(sum(1 for v in vals if v is None)) + " round(s)", None
        vals.sort()
        return f"median {vals[len(vals) // 2]:.1f} ms, worst {vals[-1]:.1f} ms", vals[-1]

    def each(key):
        return ", ".join("—" if u[key] is None else f"{u[key]:.1f}" for u in us)
    h_text, h_worst = med_max("haproxy_out_ms")
    f_text, _ = med_max("file_rewritten_ms")
    w_text, _ = med_max("nginx_new_workers_ms")
    o_text, _ = med_max("nginx_old_workers_gone_ms")
    n = len(us)
    nginx_after = sum(u["nginx_failed_after_event"] for u in us)
    if nginx_after == 0:
        nginx_after_text = "After the event no request through nginx got the sick instance's 500:"
    else:
        last = max(u["nginx_last_500_end_ms"] for u in us if u["nginx_last_500_end_ms"] is not None)
        nginx_after_text = (f"After the event {nginx_after} request(s) through nginx still got its 500, "
                            f"the last ending {last:.1f} ms after the event's timestamp (in flight at "
                            "that moment; the timestamp is cut to the millisecond), then none:")
    spread = max(m["diffs_mib"]) - min(m["diffs_mib"])
    rss_margin = ""
    if m["max_diff_mib"] > 1.0 - spread:
        rss_margin = (f" The margin to the 1 MiB target ({1.0 - m['max_diff_mib']:+.2f} MiB) is no larger than"
                      f" the spread between pairs of this run ({spread:.2f} MiB): another run can land above it.")
    body = f"""## Load balancers (bench/balance.py)

- date: {r.get('date') or time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}
- command: `{command}`
- machine: {os.cpu_count()} CPUs, kernel {os.uname().release}, uid {os.getuid()}; {r['versions']['haproxy']}; {r['versions']['nginx']}; {r['versions']['etcd']}; load average (1 min) {r['load'][0]:.2f} at the start, {r['load'][1]:.2f} at the end (the machine is shared)
- setup: `etc/examples/web-behind-balancers` copied to a temp dir with free
  ports; its nginx.conf and haproxy.cfg as they are (HAProxy `retry-on
  all-retryable-errors`, `retries 3`, `option redispatch`; nginx
  `proxy_next_upstream error timeout http_502`); in minder.toml the four
  instances are `minder-testchild --http {{port}} --unhealthy-if FILE`
  (it answers one request at a time), health probes every 200 ms
  (`failure_threshold = 2`), `drain = "{args.drain}"` (the example has 2 s).
  Load: {args.threads} client threads per balancer (Python), each sending
  `GET /` back to back on a new connection per request; a failure is
  anything but a 200 (an error status or a connection error).

| measurement | result | target | met |
|---|---|---|---|
| steady load, HAProxy | {row('haproxy', s)} | — | |
| steady load, nginx | {row('nginx', s)} | — | |
| {rs['restarts']} × `ctl restart web`, HAProxy | {rs['haproxy']['failed']} failed of {rs['haproxy']['requests']}; p99 {rs['haproxy']['p99_ms']:.2f} ms = {ratio['haproxy']:.2f}× steady | 0 failed, p99 ≤ 2× | {ok(rs['haproxy']['failed'] == 0 and ratio['haproxy'] <= 2)} |
| {rs['restarts']} × `ctl restart web`, nginx | {rs['nginx']['failed']} failed of {rs['nginx']['requests']}; p99 {rs['nginx']['p99_ms']:.2f} ms = {ratio['nginx']:.2f}× steady | 0 failed, p99 ≤ 2× | {ok(rs['nginx']['failed'] == 0 and ratio['nginx'] <= 2)} |
| unhealthy instance ({n} rounds): minder's `in -> out` event to HAProxy not routing to it | {h_text} | ≤ 50 ms | {ok(h_worst is not None and h_worst <= 50)} |
| unhealthy instance: event to upstream file rewritten | {f_text} | (measure) | |
| unhealthy instance: event to new nginx workers up (reloaded) | {w_text} | (measure) | |
| unhealthy instance: event to the old nginx workers gone | {o_text} | (measure) | |
| unhealthy instance: failed requests after the event, HAProxy / nginx (all rounds) | {sum(u['haproxy_failed_after_event'] for u in us)} / {sum(u['nginx_failed_after_event'] for u in us)} | (measure) | |
| kill -9 of one instance under load ({k['rounds']} rounds), HAProxy | {k['haproxy']['failed']} failed of {k['haproxy']['requests']} ({fail_text(k['haproxy']['failures'])}) | only those in flight on it | |
| kill -9 of one instance under load ({k['rounds']} rounds), nginx | {k['nginx']['failed']} failed of {k['nginx']['requests']} ({fail_text(k['nginx']['failures'])}) | only those in flight on it | |
| kill -9 of minder, etcd ttl {e['ttl_s']} s: keys gone after, worst of {len(e['rounds_s'])} | {e['max_s']:.2f} s ({', '.join(f'{x:.2f}' for x in e['rounds_s'])}) | ≤ {e['ttl_s'] + 1} s | {ok(e['max_s'] <= e['ttl_s'] + 1)} |
| RSS, {m['processes']} processes registered (etcd + file) minus without `[register]`, {len(m['rounds'])} pairs | median {m['median_diff_mib']:+.2f} MiB, worst {m['max_diff_mib']:+.2f} MiB | ≤ 1 MiB | {ok(m['max_diff_mib'] <= 1.0)} |
| RSS, the same with the file backend only, minus without | median {m['median_diff_file_mib']:+.2f} MiB | — | |
| minder CPU, {m['idle_s']:.0f} s idle with {m['processes']} registered (etcd keep-alives, ttl 10 s) | {m['idle_cpu_ms']:.0f} ms per {m['idle_s']:.0f} s | (report) | |

- Steady: {args.steady:.0f} s. Restarts: `ctl restart web` {rs['restarts']} times in a row
  (one instance at a time: out, drain, SIGTERM, start, healthy, in; median
  {rs['restart_s_median']:.2f} s per restart of the four, {rs['ctl_failures']} non-zero exits);
  failures by kind: HAProxy {fail_text(rs['haproxy']['failures'])}, nginx {fail_text(rs['nginx']['failures'])}.
- Unhealthy: in each round the bench creates one instance's flag file (its
  answers turn 500) and follows `minder ctl events --json NAME`. Times are
  from the `in -> out` event's own timestamp (minder's clock, millisecond
  resolution; the event reached the bench {', '.join(f"{u['event_receive_delay_ms']:.1f}" for u in us)} ms
  later): HAProxy's state from `show servers state web` polled about every
  {sum(u['poll_interval_ms'] for u in us) / n:.1f} ms (Python; one admin socket connection per poll), the
  upstream file and the nginx master's worker PIDs read on the same poll.
  Per round (ms): HAProxy out {each('haproxy_out_ms')}; file {each('file_rewritten_ms')};
  new workers {each('nginx_new_workers_ms')}; old workers gone {each('nginx_old_workers_gone_ms')}.
  The event came {', '.join(f"{u['flag_to_event_ms']:.0f}" for u in us)} ms after the flag (two failed probes 200 ms
  apart). Requests that failed between the flag and the event (health
  detection, not registration): HAProxy {sum(u['haproxy_failed_flag_to_event'] for u in us)}, nginx {sum(u['nginx_failed_flag_to_event'] for u in us)} in all —
  HAProxy retries a 500 on another server (`all-retryable-errors` includes
  500), nginx passes it on. {nginx_after_text} minder stops an unhealthy
  instance at once, and from then on nginx's `proxy_next_upstream error`
  sends elsewhere what its old workers still route to it, so nginx's reload
  time does not show as failed requests. The last 500 through nginx ended at
  {', '.join('—' if u['nginx_last_500_end_ms'] is None else f"{u['nginx_last_500_end_ms']:+.1f}" for u in us)} ms from the event.
- kill -9: SIGKILL to one instance's PID under load (web:2, web:3, ...); counted
  from the kill until it is back in both balancers ({', '.join(f'{w:.1f}' for w in k['window_s'])} s);
  failures per round: HAProxy {k['haproxy']['per_round']}, nginx {k['nginx']['per_round']}.
- etcd: a separate minder registering 4 test children in a local etcd
  (3.4, JSON gateway) with `ttl = "{e['ttl_s']}s"` (keep-alive every ttl/3); SIGKILL
  half a ttl after the keys appeared, then `/v3/kv/range` polled every 20 ms
  until no key is left; the orphaned children are then SIGKILLed by PID.
  etcd checks expiries about every 500 ms (see
  docs/registration-groundwork.md).
- RSS: `/bin/sleep 3600` as one program with `instances = {m['processes']}`,
  `port` set (the address), VmRSS 3 s after all are running (and, with
  registration, all {m['processes']} keys in etcd and the file written). Pairs
  (without, file only, etcd + file) in MiB: {', '.join(f'({a:.2f}, {c:.2f}, {b:.2f})' for a, b, c in zip(m['rss_without_mib'], m['rss_with_mib'], m['rss_file_mib']))};
  minder's threads (without, file only, etcd + file): {m['threads']['without']}, {m['threads']['file']}, {m['threads']['with']}. The
  difference is mostly a fixed cost (the backends' workers and the code
  they run), not a cost per process: an earlier build measured about the
  same with `--processes 10`.{rss_margin} The
  last registered daemon's RSS after the idle window: {m['rss_with_after_idle_mib']:.2f} MiB. CPU:
  utime + stime from /proc (10 ms ticks), in that last daemon.
"""
    docsection.replace_section(os.path.join(ROOT, "docs", "benchmarks.md"), "balance", body, "bench/balance.py")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target-dir", default=os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")))
    ap.add_argument("--restarts", type=int, default=20)
    ap.add_argument("--drain", default="500ms")
    ap.add_argument("--threads", type=int, default=2, help="client threads per balancer")
    ap.add_argument("--steady", type=float, default=10.0, help="seconds of steady load")
    ap.add_argument("--idle", type=float, default=30.0, help="seconds of the idle CPU window")
    ap.add_argument("--processes", type=int, default=100)
    ap.add_argument("--ttl", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5, help="rounds of the unhealthy and kill -9 measurements")
    ap.add_argument("--json-out", help="also write every figure to this file")
    ap.add_argument("--from-json", help="write docs/benchmarks.md from a --json-out file instead of running")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = ap.parse_args()
    command = "python3 bench/balance.py" + "".join(
        f" --{k} {v}" for k, v in (("restarts", args.restarts), ("drain", args.drain),
                                   ("threads", args.threads), ("steady", args.steady),
                                   ("idle", args.idle), ("processes", args.processes), ("ttl", args.ttl),
                                   ("rounds", args.rounds)))
    if args.from_json:
        # Rewrites the section from a saved run (same options), e.g. after a change of wording.
        with open(args.from_json) as f:
            r = json.load(f)
        write_section(r, r.get("command", command), args)
        return
    binary, child = release_binaries(args.target_dir)
    for prog in ("haproxy", "nginx", "etcd"):
        if not shutil.which(prog):
            raise SystemExit(f"{prog} not found in PATH")
    r = {"versions": {"haproxy": version(["haproxy", "-v"]), "nginx": version(["nginx", "-v"]),
                      "etcd": version(["etcd", "--version"])},
         "load": [os.getloadavg()[0]], "date": time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}
    with tempfile.TemporaryDirectory(prefix="minder-bench-balance.") as tmp:
        stack = Stack(binary, child, tmp, args.drain)
        try:
            stack.wait_all_in()
            r["steady"] = bench_steady(stack, args.steady, args.threads)
            print(json.dumps(r["steady"]), flush=True)
            r["restarts"] = bench_restarts(stack, args.restarts, args.threads)
            print(json.dumps(r["restarts"]), flush=True)
            r["unhealthy"] = bench_unhealthy_rounds(stack, args.threads, args.rounds)
            stack.wait_all_in()
            r["kill"] = bench_kill_instance(stack, args.threads, args.rounds)
            print(json.dumps(r["kill"]), flush=True)
        finally:
            stack.stop()
        etcd, url, elog = etcd_start(tmp)
        try:
            r["etcd"] = bench_etcd_kill(binary, child, url, tmp, 3, args.ttl)
            print(json.dumps(r["etcd"]), flush=True)
            r["rss"] = bench_rss(binary, url, tmp, args.processes, args.idle, 3)
            print(json.dumps(r["rss"]), flush=True)
        finally:
            etcd.send_signal(signal.SIGTERM)
            try:
                etcd.wait(timeout=20)
            except subprocess.TimeoutExpired:
                etcd.kill()
                etcd.wait(timeout=10)
            elog.close()
    r["load"].append(os.getloadavg()[0])
    r["command"] = command
    if not args.no_write:
        write_section(r, command, args)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(r, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
