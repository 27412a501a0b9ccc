//! The closed loop with load balancers (SPEC §5.2), end to end: a minder
//! daemon registering its processes in a real HAProxy (runtime API), a real
//! nginx (generated upstream file + reload) and a real etcd, driven only
//! through `minder ctl`.

mod common;

use common::etcd::EtcdServer;
use common::haproxy::{eventually, Haproxy};
use common::nginx::Nginx;
use common::*;
use serde_json::Value;

/// A program of `n` test children serving HTTP on `base`.. (500 while
/// `@TMP@/sick-INSTANCE` exists), health-checked every 100 ms, with
/// `register` (the `[program.web.register...]` tables) appended.
fn web(n: u16, base: u16, drain: &str, register: &str) -> String {
    program(
        "web",
        &[
            "--http",
            "{port}",
            "--unhealthy-if",
            "@TMP@/sick-{instance}",
        ],
        &format!(
            "instances = {n}\nport = {base}\n\
             [program.web.health]\nhttp = \"http://127.0.0.1:{{port}}/\"\ninterval = \"100ms\"\n\
             failure_threshold = 1\nstart_period = \"5s\"\n\
             [program.web.register]\ndrain = \"{drain}\"\n{register}"
        ),
    )
}

fn haproxy_table(h: &Haproxy) -> String {
    format!(
        "[program.web.register.haproxy]\nsocket = {}\nbackend = \"web\"\n",
        toml_str(&h.socket.display().to_string())
    )
}

/// `status --json`'s `register` field of one process.
fn register_of(d: &Daemon, name: &str) -> Value {
    let doc = d.ctl_ok(&["status", "--json", name]).json();
    doc["processes"][0]["register"].clone()
}

/// The port numbers of the `server` lines of an nginx upstream file.
fn upstream_ports(text: &str) -> Vec<u16> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("server 127.0.0.1:"))
        .filter(|rest| !rest.contains("down"))
        .filter_map(|rest| rest.trim_end_matches(';').parse().ok())
        .collect()
}

#[test]
fn haproxy_and_nginx_take_in_exactly_the_running_healthy_processes() {
    let base = free_ports(3);
    let dir = tempfile::tempdir().unwrap();
    let mut haproxy = Haproxy::new(dir.path());
    haproxy.start();
    let mut nginx = Nginx::new(dir.path());
    let file = format!(
        "[program.web.register.file]\npath = {}\nreload = {}\n",
        toml_str(&nginx.upstream.display().to_string()),
        toml_array(
            &nginx
                .reload_argv()
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
        )
    );
    let mut d = Daemon::start_with(
        "",
        &web(3, base, "5s", &format!("{}{file}", haproxy_table(&haproxy))),
    );
    d.wait_for("3 healthy", WAIT, |ps| {
        ps.iter().filter(|p| p.health == "healthy").count() == 3
    });
    // The file holds the three, so nginx can start on it.
    let text = wait_file_until(&nginx.upstream, "three servers", |t| {
        upstream_ports(t).len() == 3
    });
    assert_eq!(upstream_ports(&text), [base, base + 1, base + 2], "{text}");
    nginx.start();
    eventually("three servers ready in HAProxy", WAIT, || {
        let s = haproxy.servers("web");
        (0..3).all(|i| s.get(&format!("web_{i}")).is_some_and(|s| s.ready()))
    });
    let servers = haproxy.servers("web");
    assert_eq!(servers["web_1"].port, base + 1, "{servers:?}");
    // The reloads before nginx ran failed (no pid file); the retry after
    // it started succeeds.
    d.wait_for("both backends ok", WAIT, |_| {
        register_of(&d, "web:1") == serde_json::json!({"haproxy": "ok", "file": "ok"})
    });
    let mut events = subscribe(&d, &["web:1"]);

    // Unhealthy: out of both at once (HAProxy maint, no line in the file),
    // then restarted by minder, and in again once healthy.
    let old_pid = d.proc("web:1").pid.unwrap();
    std::fs::write(d.path("sick-1"), "").unwrap();
    let seen = read_until(&mut events, |e| e["to"] == "out");
    assert_eq!(seen.last().unwrap()["from"], "in", "{seen:#?}");
    assert!(
        seen.last().unwrap()["reason"]
            .as_str()
            .unwrap()
            .starts_with("registration: unhealthy"),
        "{seen:#?}"
    );
    eventually("web_1 out of HAProxy", WAIT, || {
        !haproxy.servers("web")["web_1"].ready()
    });
    wait_file_until(&nginx.upstream, "web:1 out of the file", |t| {
        !upstream_ports(t).contains(&(base + 1)) && upstream_ports(t).len() == 2
    });
    std::fs::remove_file(d.path("sick-1")).unwrap();
    d.wait_for("web:1 back, healthy", WAIT, |ps| {
        let p = get(ps, "web:1");
        p.pid != Some(old_pid) && p.health == "healthy"
    });
    read_until(&mut events, |e| e["to"] == "in");
    eventually("web_1 ready again", WAIT, || {
        haproxy.servers("web")["web_1"].ready()
    });
    wait_file_until(&nginx.upstream, "web:1 back in the file", |t| {
        upstream_ports(t).len() == 3
    });

    // A requested stop drains first: out of the file and HAProxy `drain`
    // while the process is still serving, and only then the stop signal.
    let pid2 = d.proc("web:2").pid.unwrap();
    d.ctl_ok(&["stop", "--no-wait", "web:2"]);
    eventually("web_2 draining in HAProxy", WAIT, || {
        haproxy.servers("web")["web_2"].draining()
    });
    let p = d.proc("web:2");
    assert_eq!(p.state, "stopping");
    assert!(p.description.contains("draining"), "{p:?}");
    assert!(pid_alive(pid2), "the stop signal came before the drain");
    wait_file_until(&nginx.upstream, "web:2 out of the file", |t| {
        !upstream_ports(t).contains(&(base + 2))
    });
    d.wait_state("web:2", "stopped");
    eventually("web_2 in maint once stopped", WAIT, || {
        haproxy.servers("web")["web_2"].maint()
    });

    // A reload without the program: its servers are deleted, the file keeps
    // a placeholder nginx still parses.
    d.write_config(&program("other", &[], ""));
    d.ctl_ok(&["reload"]);
    eventually("every web_N deleted from HAProxy", WAIT, || {
        haproxy.servers("web").is_empty()
    });
    let text = wait_file_until(&nginx.upstream, "no server left", |t| {
        upstream_ports(t).is_empty()
    });
    assert!(text.contains("down;"), "{text}");
    let test = std::process::Command::new("nginx")
        .args(&nginx.argv(&["-t"])[1..])
        .output()
        .unwrap();
    assert!(test.status.success(), "{test:?}");
    d.stop();
}

#[test]
fn restart_and_reload_of_a_registered_program_go_one_instance_at_a_time() {
    let base = free_ports(3);
    let dir = tempfile::tempdir().unwrap();
    let mut haproxy = Haproxy::new(dir.path());
    haproxy.start();
    let d = Daemon::start(&web(3, base, "200ms", &haproxy_table(&haproxy)));
    d.wait_for("3 healthy", WAIT, |ps| {
        ps.iter().filter(|p| p.health == "healthy").count() == 3
    });
    let mut events = subscribe(&d, &["web"]);
    d.ctl_ok(&["restart", "web"]);
    let seen = read_until(&mut events, |e| e["name"] == "web:2" && e["to"] == "in");
    assert_one_at_a_time(&seen, &["web:0", "web:1", "web:2"]);
    for e in seen.iter().filter(|e| e["to"] == "draining") {
        assert_eq!(e["reason"], "registration: ctl restart", "{seen:#?}");
    }
    eventually("all three ready in HAProxy", WAIT, || {
        haproxy.servers("web").values().all(|s| s.ready())
    });

    // A reload that changes the program replaces its processes the same way.
    let before: Vec<i32> = ["web:0", "web:1", "web:2"]
        .iter()
        .map(|n| d.proc(n).pid.unwrap())
        .collect();
    let changed = web(3, base, "200ms", &haproxy_table(&haproxy)).replace(
        "instances = 3",
        "instances = 3\nenvironment = { CHANGED = \"1\" }",
    );
    d.write_config(&changed);
    d.ctl_ok(&["reload"]);
    let seen = read_until(&mut events, |e| e["name"] == "web:2" && e["to"] == "in");
    assert_one_at_a_time(&seen, &["web:0", "web:1", "web:2"]);
    for e in seen.iter().filter(|e| e["to"] == "draining") {
        assert_eq!(e["reason"], "registration: reload", "{seen:#?}");
    }
    for (name, old) in ["web:0", "web:1", "web:2"].iter().zip(before) {
        assert_ne!(d.proc(name).pid, Some(old), "{name} not replaced");
    }

    // A replacement that never gets healthy (web:1 answers 500 from now
    // on): restart exits 1, and the instance after it is not touched.
    std::fs::write(d.path("sick-1"), "").unwrap();
    let pid2 = d.proc("web:2").pid.unwrap();
    let out = d.ctl(&["restart", "web"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout.contains("web:2") || out.stderr.contains("web:2"),
        "{out:?}"
    );
    assert_eq!(d.proc("web:2").pid, Some(pid2), "web:2 was touched");
    assert!(haproxy.servers("web")["web_2"].ready());
}

/// Each instance is out, stopped, started and in again before the next one
/// leaves: never more than one out at a time, and all of `order` in turn.
fn assert_one_at_a_time(seen: &[Value], order: &[&str]) {
    let mut out = std::collections::BTreeSet::new();
    let mut left = Vec::new();
    for e in seen {
        let name = e["name"].as_str().unwrap().to_string();
        match e["to"].as_str().unwrap() {
            "draining" | "out" => {
                out.insert(name.clone());
                assert!(out.len() <= 1, "two out at once: {seen:#?}");
                if left.last() != Some(&name) {
                    left.push(name);
                }
            }
            "in" => {
                out.remove(&name);
            }
            _ => {}
        }
    }
    assert_eq!(left, order, "{seen:#?}");
}

#[test]
fn a_balancer_that_is_down_never_holds_up_supervision_and_is_caught_up() {
    let base = free_ports(2);
    let dir = tempfile::tempdir().unwrap();
    let mut haproxy = Haproxy::new(dir.path());
    let metrics = free_port();
    let d = Daemon::start_with(
        &format!("metrics = \"127.0.0.1:{metrics}\""),
        &web(2, base, "0s", &haproxy_table(&haproxy)),
    );
    d.wait_for("2 healthy", WAIT, |ps| {
        ps.iter().filter(|p| p.health == "healthy").count() == 2
    });
    // No HAProxy yet: the error is shown, naming the socket.
    d.wait_for("the error in status", WAIT, |_| {
        register_of(&d, "web:0")["haproxy"]
            .as_str()
            .is_some_and(|e| e.contains("admin.sock") && e != "ok")
    });
    let (_, text) = http_get(metrics, "/metrics").unwrap();
    assert!(
        text.contains("minder_register_backend_up{program=\"web\",backend=\"haproxy\"} 0"),
        "{text}"
    );
    // Supervision goes on: a stop and a start answer as ever.
    d.ctl_ok(&["stop", "web:1"]);
    d.ctl_ok(&["start", "web:1"]);
    // HAProxy comes: everything that is in gets registered.
    haproxy.start();
    eventually("both ready in HAProxy", WAIT, || {
        let s = haproxy.servers("web");
        s.len() == 2 && s.values().all(|s| s.ready())
    });
    d.wait_for("status ok again", WAIT, |_| {
        register_of(&d, "web:0")["haproxy"] == "ok"
    });
    let (_, text) = http_get(metrics, "/metrics").unwrap();
    for line in [
        "minder_register_backend_up{program=\"web\",backend=\"haproxy\"} 1",
        "minder_register_in{name=\"web:0\",program=\"web\"} 1",
    ] {
        assert!(text.contains(line), "{line} not in {text}");
    }
}

/// Two minder daemons ("hosts") register into one etcd; `ctl fleet` lists
/// both; a clean shutdown revokes at once, a killed minder's keys expire.
#[test]
fn two_hosts_share_one_etcd_and_fleet_lists_them() {
    let etcd = EtcdServer::start();
    let etcd_table = format!(
        "[program.web.register.etcd]\nendpoints = [\"{}\"]\nttl = \"2s\"\n",
        etcd.url
    );
    let host = |name: &str| {
        let base = free_ports(2);
        let d = Daemon::start_with(
            &format!("host = \"{name}\""),
            &web(2, base, "0s", &etcd_table),
        );
        d.wait_for("2 healthy", WAIT, |ps| {
            ps.iter().filter(|p| p.health == "healthy").count() == 2
        });
        (d, base)
    };
    let (mut alpha, alpha_base) = host("alpha");
    let (mut beta, _) = host("beta");
    eventually("four keys", WAIT, || {
        etcd.keys("/minder/services/").len() == 4
    });
    let stored = etcd.get_prefix("/minder/services/web/alpha/web:1");
    assert_eq!(stored.len(), 1, "{stored:?}");
    let (_, value, lease) = &stored[0];
    assert_eq!(value["host"], "alpha");
    assert_eq!(value["address"], format!("127.0.0.1:{}", alpha_base + 1));
    assert_eq!(value["pid"], alpha.proc("web:1").pid.unwrap());
    assert!(*lease != 0, "not on a lease: {stored:?}");

    let fleet = alpha
        .ctl_ok(&["fleet", "--json", "--etcd", &etcd.url])
        .json();
    let hosts: Vec<&str> = fleet
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["host"].as_str().unwrap())
        .collect();
    assert_eq!(hosts, ["alpha", "alpha", "beta", "beta"], "{fleet}");
    // Without --etcd: the config's endpoints; the table has every column.
    let config = beta.path("minder.toml").display().to_string();
    let out = run_minder(&["ctl", "-c", &config, "fleet", "web"]);
    assert_eq!(out.code, 0, "{out:?}");
    let table = out.stdout;
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["HOST", "NAME", "ADDRESS", "PID", "SINCE"],
        "{table}"
    );
    assert_eq!(
        table.lines().filter(|l| l.contains("web:")).count(),
        4,
        "{table}"
    );

    // A stop takes the key away (the process is out).
    alpha.ctl_ok(&["stop", "web:0"]);
    eventually("alpha's web:0 key deleted", WAIT, || {
        etcd.keys("/minder/services/web/alpha/").len() == 1
    });

    // beta shuts down cleanly: its lease is revoked before it exits.
    beta.ctl_ok(&["shutdown"]);
    beta.wait_exit(WAIT);
    assert_eq!(
        etcd.keys("/minder/services/web/beta/"),
        Vec::<String>::new()
    );

    // alpha is killed: nobody keeps its lease alive, its key expires.
    let orphan = alpha.proc("web:1").pid.unwrap();
    alpha.signal(libc::SIGKILL);
    alpha.wait_exit(WAIT);
    eventually("alpha's keys expired", WAIT, || {
        etcd.keys("/minder/services/").is_empty()
    });
    // The orphaned child is ours to stop.
    kill_orphan(orphan);
}

/// SIGKILLs a process this test started (through the daemon it killed).
fn kill_orphan(pid: i32) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
}
