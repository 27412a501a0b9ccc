//! Health-aware supervision: HTTP/TCP/exec probes, readiness, NOTIFY_SOCKET
//! and watchdog heartbeats, driven through `minder ctl` only.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use common::*;

fn http_program(name: &str, port: u16, on_unhealthy: &str) -> String {
    program(
        name,
        &[
            "--http",
            &port.to_string(),
            "--unhealthy-if",
            "@TMP@/sick",
            "--pidfile",
            &format!("@TMP@/{name}.pid"),
        ],
        &format!(
            r#"
[program.{name}.backoff]
initial = "100ms"
jitter = 0.0
[program.{name}.health]
http = "http://127.0.0.1:{port}/health"
interval = "100ms"
timeout = "2s"
start_period = "10s"
failure_threshold = 2
on_unhealthy = "{on_unhealthy}"
"#
        ),
    )
}

#[test]
fn unhealthy_http_server_is_restarted_and_counted() {
    let port = free_port();
    let d = Daemon::start(&http_program("web", port, "restart"));
    let first = d.wait_for("web running and healthy", WAIT, |ps| {
        let p = get(ps, "web");
        p.state == "running" && p.health == "healthy"
    });
    let old_pid = get(&first, "web").pid.expect("running has a pid");
    assert_eq!(get(&first, "web").restarts, 0);

    fs::write(d.path("sick"), "").expect("creating the flag file");
    let seen = d.wait_for("web to be stopped for being unhealthy", WAIT, |ps| {
        let p = get(ps, "web");
        p.restarts >= 1 || p.pid.is_some_and(|pid| pid != old_pid)
    });
    assert_pid_gone(old_pid, "the unhealthy process");
    let p = get(&seen, "web");
    assert!(
        p.description.contains("500") || p.health == "starting",
        "the reason is shown: {p:?}"
    );
    fs::remove_file(d.path("sick")).expect("removing the flag file");
    let after = d.wait_for("web healthy again after the restart", WAIT, |ps| {
        let p = get(ps, "web");
        p.state == "running" && p.health == "healthy" && p.restarts >= 1
    });
    assert_ne!(get(&after, "web").pid, Some(old_pid));
}

#[test]
fn on_unhealthy_none_reports_and_recovers_without_restarting() {
    let port = free_port();
    let d = Daemon::start(&http_program("api", port, "none"));
    let healthy = d.wait_for("api healthy", WAIT, |ps| get(ps, "api").health == "healthy");
    let pid = get(&healthy, "api").pid;
    assert_eq!(d.ctl(&["status"]).code, 0);

    fs::write(d.path("sick"), "").expect("creating the flag file");
    let sick = d.wait_for("api unhealthy", WAIT, |ps| {
        get(ps, "api").health == "unhealthy"
    });
    let p = get(&sick, "api");
    assert_eq!(p.state, "running");
    assert_eq!(p.pid, pid, "no restart with on_unhealthy = none");
    assert!(
        p.description
            .contains(&format!("GET http://127.0.0.1:{port}/health: 500")),
        "{p:?}"
    );
    let out = d.ctl(&["status", "api"]);
    assert_eq!(out.code, 3, "status exits 3 while unhealthy: {out:?}");

    fs::remove_file(d.path("sick")).expect("removing the flag file");
    let back = d.wait_for("api healthy again", WAIT, |ps| {
        get(ps, "api").health == "healthy"
    });
    assert_eq!(get(&back, "api").pid, pid);
    assert_eq!(get(&back, "api").restarts, 0);
    assert_eq!(d.ctl(&["status"]).code, 0);

    let last = &get(&back, "api").raw["last_probe"];
    assert_eq!(last["ok"], true, "{last}");
    assert!(
        last["message"]
            .as_str()
            .is_some_and(|m| m.ends_with(": 200")),
        "{last}"
    );
    assert!(last["duration_ms"].as_f64().is_some(), "{last}");
    assert!(
        last["time"].as_str().is_some_and(|t| t.contains('T')),
        "{last}"
    );
}

#[test]
fn tcp_check_passes_when_listening_and_never_ready_goes_fatal() {
    let open = free_port();
    let closed = free_port();
    let d = Daemon::start(&format!(
        "{}{}",
        program(
            "db",
            &["--tcp", &open.to_string()],
            &format!("[program.db.health]\ntcp = \"127.0.0.1:{open}\"\ninterval = \"100ms\"\n"),
        ),
        program(
            "ghost",
            &[],
            &format!(
                r#"
[program.ghost.backoff]
initial = "50ms"
max_retries = 1
[program.ghost.health]
tcp = "127.0.0.1:{closed}"
interval = "100ms"
start_period = "500ms"
"#
            ),
        )
    ));
    d.wait_for("db healthy", WAIT, |ps| {
        let p = get(ps, "db");
        p.state == "running" && p.health == "healthy"
    });
    let fatal = d.wait_state("ghost", "fatal");
    assert!(
        fatal.description.contains("not ready within 500ms")
            && fatal
                .description
                .contains(&format!("connect 127.0.0.1:{closed}: connection refused")),
        "{fatal:?}"
    );
}

#[test]
fn exec_check_reports_the_first_line_of_stderr() {
    let d = Daemon::start(&program(
        "job",
        &[],
        r#"
[program.job.health]
exec = ["sh", "-c", "test ! -e @TMP@/flag || { echo broken today >&2; exit 1; }"]
interval = "100ms"
failure_threshold = 1
on_unhealthy = "none"
"#,
    ));
    d.wait_for("job healthy", WAIT, |ps| get(ps, "job").health == "healthy");
    fs::write(d.path("flag"), "").expect("creating the flag file");
    let sick = d.wait_for("job unhealthy", WAIT, |ps| {
        get(ps, "job").health == "unhealthy"
    });
    assert!(
        get(&sick, "job")
            .description
            .contains("exit 1: broken today"),
        "{:?}",
        get(&sick, "job")
    );
}

#[test]
fn hung_exec_probe_is_killed_at_its_timeout() {
    let d = Daemon::start(&program(
        "slow",
        &[],
        &format!(
            r#"
[program.slow.health]
exec = [{}, "--pidfile", "@TMP@/probe.pid"]
interval = "100ms"
timeout = "300ms"
start_period = "60s"
"#,
            toml_str(CHILD)
        ),
    ));
    let probe = read_pid(&d.path("probe.pid"));
    assert!(
        wait_pid_gone(probe, WAIT),
        "the hung probe {probe} is still alive"
    );
    let p = d.wait_for("the timeout to be reported", WAIT, |ps| {
        get(ps, "slow")
            .description
            .contains("timed out after 300ms")
    });
    assert_eq!(get(&p, "slow").state, "starting");
}

#[test]
fn notify_ready_gates_running_and_status_text_is_shown() {
    let d = Daemon::start(&program(
        "svc",
        &["--notify-ready-after", "700", "--write-env", "@TMP@/env"],
        "notify = true\nautostart = false\nstart_secs = \"0s\"",
    ));
    let out = d.ctl(&["start", "svc"]);
    assert_eq!(out.code, 0, "{out:?}");
    let p = d.proc("svc");
    assert_eq!(p.state, "running", "ctl start waits for READY=1");
    assert!(
        p.uptime_secs.is_some_and(|u| u >= 0.6),
        "running only after READY=1 (sent after 700ms): {p:?}"
    );
    assert_eq!(p.description, "ready", "STATUS= text is the description");
    let env = parse_env(&fs::read_to_string(d.path("env")).expect("env file"));
    let socket = env_get(&env, "NOTIFY_SOCKET").expect("NOTIFY_SOCKET is set");
    assert!(
        socket.starts_with(d.tmp().to_str().unwrap_or_default()),
        "{socket}"
    );
}

#[test]
fn no_ready_within_ready_timeout_is_a_failed_start() {
    let d = Daemon::start(&program(
        "mute",
        &[],
        r#"notify = true
ready_timeout = "300ms"
[program.mute.backoff]
initial = "50ms"
max_retries = 1
"#,
    ));
    let p = d.wait_state("mute", "fatal");
    assert!(p.description.contains("no READY=1 within 300ms"), "{p:?}");
}

#[test]
fn missed_watchdog_restarts_the_process() {
    let d = Daemon::start(&program(
        "dog",
        &[
            "--watchdog-for",
            "1000",
            "--write-env",
            "@TMP@/env",
            "--pidfile",
            "@TMP@/dog.pid",
        ],
        "watchdog = \"400ms\"\nstart_secs = \"0s\"\n[program.dog.backoff]\ninitial = \"100ms\"",
    ));
    let pid = read_pid(&d.path("dog.pid"));
    let env = parse_env(&fs::read_to_string(d.path("env")).expect("env file"));
    assert_eq!(env_get(&env, "WATCHDOG_USEC"), Some("400000"));
    assert_eq!(
        env_get(&env, "WATCHDOG_PID"),
        Some(pid.to_string().as_str())
    );
    assert!(env_get(&env, "NOTIFY_SOCKET").is_some());
    // Pings keep it alive for a second, then the missed deadline restarts it.
    let p = d.wait_for("the watchdog to restart dog", WAIT, |ps| {
        get(ps, "dog").restarts >= 1
    });
    assert_ne!(get(&p, "dog").pid, Some(pid));
    assert_pid_gone(pid, "the process that stopped pinging");
}

#[test]
fn depends_on_waits_for_readiness() {
    let d = Daemon::start(&format!(
        "{}{}",
        program(
            "base",
            &["--notify-ready-after", "800", "--record", "@TMP@/base.rec"],
            "notify = true",
        ),
        program(
            "top",
            &["--record", "@TMP@/top.rec"],
            "depends_on = [\"base\"]",
        ),
    ));
    let base = wait_record(&d.path("base.rec"), "start", 1);
    let top = wait_record(&d.path("top.rec"), "start", 1);
    let gap_ms = (events_of(&top, "start")[0].ns - events_of(&base, "start")[0].ns) / 1_000_000;
    assert!(
        gap_ms >= 800,
        "top started {gap_ms}ms after base, before base was ready"
    );
    d.wait_state("top", "running");
}

/// A loopback HTTP server that answers every request with the reply set
/// last and records the head of each request it received.
struct RecordingServer {
    port: u16,
    reply: Arc<Mutex<(u16, String)>>,
    heads: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RecordingServer {
    /// Far more connections than a test's probes open; the thread ends there at the latest.
    const MAX_CONNECTIONS: usize = 100_000;

    fn start(status: u16, body: &str) -> RecordingServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
        let port = listener.local_addr().expect("local address").port();
        let reply = Arc::new(Mutex::new((status, body.to_string())));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (reply, heads, stop) = (reply.clone(), heads.clone(), stop.clone());
            std::thread::spawn(move || {
                for _ in 0..Self::MAX_CONNECTIONS {
                    let Ok((conn, _)) = listener.accept() else {
                        continue;
                    };
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let reply = reply.lock().expect("reply lock").clone();
                    if let Some(head) = Self::answer(conn, &reply) {
                        heads.lock().expect("heads lock").push(head);
                    }
                }
            })
        };
        RecordingServer {
            port,
            reply,
            heads,
            stop,
            thread: Some(thread),
        }
    }

    /// Reads one request head (at most 8 KiB) and writes `reply`; the head.
    fn answer(mut conn: TcpStream, (status, body): &(u16, String)) -> Option<String> {
        conn.set_read_timeout(Some(WAIT)).ok()?;
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8 * 1024 {
            let n = conn.read(&mut buf).ok()?;
            if n == 0 {
                return None;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let mut out = format!(
            "HTTP/1.1 {status} Test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        if !head.starts_with("HEAD ") {
            out.push_str(body);
        }
        // The prober may have hung up already (it reads what it needs).
        let _ = conn.write_all(out.as_bytes());
        Some(head)
    }

    fn set_reply(&self, status: u16, body: &str) {
        *self.reply.lock().expect("reply lock") = (status, body.to_string());
    }

    /// The head of the last request received.
    fn last_head(&self) -> String {
        self.heads
            .lock()
            .expect("heads lock")
            .last()
            .cloned()
            .expect("a request was received")
    }
}

impl Drop for RecordingServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept; the thread sees `stop` and ends.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The values of header `name` (any case) in a request head.
fn header_values(head: &str, name: &str) -> Vec<String> {
    head.lines()
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
        .collect()
}

fn probe_message(p: &Proc) -> String {
    p.raw["last_probe"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn http_probe_options_shape_the_request_and_what_is_accepted() {
    let web = RecordingServer::start(200, "all ok here");
    let ping = RecordingServer::start(204, "");
    let post = RecordingServer::start(301, "");
    let health = |name: &str, lines: &str| {
        format!(
            "[program.{name}.health]\n{lines}\ninterval = \"100ms\"\nstart_period = \"10s\"\nfailure_threshold = 1\non_unhealthy = \"none\"\n"
        )
    };
    let d = Daemon::start(&format!(
        "{}{}{}",
        program(
            "web",
            &[],
            &health(
                "web",
                &format!(
                    "http = \"http://127.0.0.1:{}/health\"\nheaders = {{ Host = \"web.example\", X-Probe = \"{{name}}\" }}\nstatus = \"200-299\"\nbody = \"ok\"",
                    web.port
                )
            )
        ),
        program(
            "ping",
            &[],
            &health(
                "ping",
                &format!(
                    "http = \"http://127.0.0.1:{}/ping\"\nmethod = \"HEAD\"\nstatus = \"204\"",
                    ping.port
                )
            )
        ),
        program(
            "post",
            &[],
            &health(
                "post",
                &format!(
                    "http = \"http://127.0.0.1:{}/hook\"\nmethod = \"POST\"",
                    post.port
                )
            )
        ),
    ));
    let web_url = format!("http://127.0.0.1:{}/health", web.port);
    let ping_url = format!("http://127.0.0.1:{}/ping", ping.port);

    // Accepted: 200 with the body, 204 by `status`, 301 by the default 200-399.
    let all = d.wait_for("every probe healthy", WAIT, |ps| {
        ["web", "ping", "post"]
            .iter()
            .all(|n| get(ps, n).health == "healthy")
    });
    assert_eq!(
        probe_message(get(&all, "web")),
        format!("GET {web_url}: 200")
    );
    assert_eq!(
        probe_message(get(&all, "ping")),
        format!("HEAD {ping_url}: 204")
    );

    // What was sent: the method, the configured headers, Host replaced.
    let head = web.last_head();
    assert!(head.starts_with("GET /health HTTP/1.1\r\n"), "{head}");
    assert_eq!(header_values(&head, "host"), vec!["web.example"], "{head}");
    assert_eq!(header_values(&head, "x-probe"), vec!["web"], "{head}");
    assert_eq!(header_values(&head, "connection"), vec!["close"], "{head}");
    let head = ping.last_head();
    assert!(head.starts_with("HEAD /ping HTTP/1.1\r\n"), "{head}");
    assert_eq!(
        header_values(&head, "host"),
        vec![format!("127.0.0.1:{}", ping.port)],
        "the default Host: {head}"
    );
    let head = post.last_head();
    assert!(head.starts_with("POST /hook HTTP/1.1\r\n"), "{head}");
    assert_eq!(header_values(&head, "content-length"), vec!["0"], "{head}");

    // Refused by `status`.
    web.set_reply(503, "ok");
    ping.set_reply(200, "");
    let sick = d.wait_for("web and ping unhealthy", WAIT, |ps| {
        get(ps, "web").health == "unhealthy" && get(ps, "ping").health == "unhealthy"
    });
    assert_eq!(
        get(&sick, "web").description,
        format!("unhealthy: GET {web_url}: 503 (expected 200-299)")
    );
    assert_eq!(
        get(&sick, "ping").description,
        format!("unhealthy: HEAD {ping_url}: 200 (expected 204)")
    );
    assert_eq!(get(&sick, "post").health, "healthy");

    // An accepted status with a body that does not match.
    web.set_reply(200, "all is well");
    let mismatch = d.wait_for("web's body refused", WAIT, |ps| {
        get(ps, "web").description.contains("but the body")
    });
    assert_eq!(
        get(&mismatch, "web").description,
        format!("unhealthy: GET {web_url}: 200 but the body does not contain \"ok\"")
    );
    assert_eq!(get(&mismatch, "web").health, "unhealthy");

    // The text anywhere in the first 64 KiB will do.
    web.set_reply(200, &format!("{}ok", "x".repeat(60 * 1024)));
    let back = d.wait_for("web healthy again", WAIT, |ps| {
        get(ps, "web").health == "healthy"
    });
    assert_eq!(get(&back, "web").description, "");
}
