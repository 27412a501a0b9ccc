//! Observability: `/metrics` (parsed as the exposition format), `/healthz`,
//! the `events` stream, and hooks (command and webhook), driven through the
//! real daemon on loopback only.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// One sample of the exposition: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: HashMap<String, String>,
    value: f64,
}

/// Parses the OpenMetrics text format: `# ` lines are metadata, every other
/// line is `name{label="value",...} number`; the document ends with `# EOF`.
fn parse_exposition(text: &str) -> Vec<Sample> {
    assert!(
        text.trim_end().ends_with("# EOF"),
        "an OpenMetrics document ends with # EOF: {text}"
    );
    let mut samples = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), HashMap::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
                let mut labels = HashMap::new();
                for pair in body.split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair
                        .split_once("=\"")
                        .unwrap_or_else(|| panic!("bad label {pair:?} in {line:?}"));
                    labels.insert(k.to_string(), v.trim_end_matches('"').to_string());
                }
                (name.to_string(), labels)
            }
        };
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':'),
            "bad metric name in {line:?}"
        );
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    samples
}

/// The value of `name` whose labels include every `(key, value)` of `want`.
fn value(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && want
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

/// `GET path` on 127.0.0.1:port, which must answer: (status code, body).
fn fetch(port: u16, path: &str) -> (u16, String) {
    http_get(port, path).unwrap_or_else(|e| panic!("GET {path} on port {port}: {e}"))
}

fn scrape(port: u16) -> Vec<Sample> {
    let (status, body) = fetch(port, "/metrics");
    assert_eq!(status, 200, "{body}");
    parse_exposition(&body)
}

/// A program that exits with code 3 shortly after starting, restarted
/// quickly, until `max_retries` (when given) make it fatal.
fn crasher(name: &str, max_retries: Option<u32>, extra: &str) -> String {
    let retries = max_retries
        .map(|n| format!("max_retries = {n}\n"))
        .unwrap_or_default();
    program(
        name,
        &["--exit-after", "300", "--exit-code", "3"],
        &format!("{extra}\n[program.{name}.backoff]\ninitial = \"50ms\"\njitter = 0.0\n{retries}"),
    )
}

#[test]
fn metrics_after_a_crash_loop_match_status_and_drop_removed_programs() {
    let port = free_port();
    let health_port = free_port();
    let body = format!(
        "{}{}{}",
        crasher("crash", Some(2), "start_secs = \"1s\""),
        program("steady", &["--print", "hello"], ""),
        program(
            "probed",
            &["--tcp", &health_port.to_string()],
            &format!("[program.probed.health]\ntcp = \"127.0.0.1:{health_port}\"\ninterval = \"100ms\"\n"),
        ),
    );
    let d = Daemon::start_with(&format!("metrics = \"127.0.0.1:{port}\""), &body);
    d.wait_for("crash fatal, steady running, probed healthy", WAIT, |ps| {
        get(ps, "crash").state == "fatal"
            && get(ps, "steady").state == "running"
            && get(ps, "probed").health == "healthy"
    });
    let status = d.status();
    let m = scrape(port);
    let crash = [("name", "crash"), ("program", "crash")];
    let steady = [("name", "steady"), ("program", "steady")];
    assert_eq!(value(&m, "minder_process_up", &crash), Some(0.0));
    assert_eq!(value(&m, "minder_process_up", &steady), Some(1.0));
    for state in [
        "stopped", "starting", "running", "backoff", "stopping", "exited", "fatal",
    ] {
        let want = if state == "fatal" { 1.0 } else { 0.0 };
        let labels = [("name", "crash"), ("state", state)];
        assert_eq!(
            value(&m, "minder_process_state", &labels),
            Some(want),
            "{state}"
        );
    }
    assert_eq!(
        value(&m, "minder_process_restarts_total", &crash),
        Some(get(&status, "crash").restarts as f64)
    );
    assert!(get(&status, "crash").restarts >= 2);
    assert_eq!(
        value(&m, "minder_process_last_exit_code", &crash),
        Some(3.0)
    );
    assert_eq!(value(&m, "minder_process_last_exit_code", &steady), None);
    let started = value(&m, "minder_process_start_time_seconds", &steady)
        .expect("a running process has a start time");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        started <= now && now - started < 120.0,
        "start time {started} vs now {now}"
    );
    assert_eq!(value(&m, "minder_process_start_time_seconds", &crash), None);
    let probed = [("name", "probed")];
    assert_eq!(value(&m, "minder_process_health", &probed), Some(1.0));
    assert_eq!(value(&m, "minder_process_health", &steady), None);
    assert!(value(&m, "minder_health_probe_duration_seconds_count", &probed).unwrap() >= 1.0);
    assert_eq!(
        value(&m, "minder_health_probe_failures_total", &probed),
        Some(0.0)
    );
    assert!(
        value(
            &m,
            "minder_log_bytes_total",
            &[("name", "steady"), ("stream", "stdout")]
        )
        .unwrap()
            >= "hello\n".len() as f64
    );
    assert_eq!(
        value(
            &m,
            "minder_log_dropped_bytes_total",
            &[("name", "steady"), ("stream", "stdout")]
        ),
        Some(0.0)
    );
    assert_eq!(
        value(
            &m,
            "minder_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    assert_eq!(value(&m, "minder_reloads_total", &[]), Some(0.0));
    assert_eq!(
        value(&m, "minder_config_last_reload_successful", &[]),
        Some(1.0)
    );

    // A reload that removes `crash`: its series are gone.
    d.write_config(&format!(
        "{}{}",
        program("steady", &["--print", "hello"], ""),
        program(
            "probed",
            &["--tcp", &health_port.to_string()],
            &format!("[program.probed.health]\ntcp = \"127.0.0.1:{health_port}\"\ninterval = \"100ms\"\n"),
        ),
    ));
    d.ctl_ok(&["reload"]);
    let m = scrape(port);
    assert!(
        !m.iter()
            .any(|s| s.labels.get("name").map(String::as_str) == Some("crash")),
        "series of a removed program remain: {m:?}"
    );
    assert_eq!(value(&m, "minder_process_up", &steady), Some(1.0));
    assert_eq!(value(&m, "minder_reloads_total", &[]), Some(1.0));

    // A rejected reload is counted and flagged.
    std::fs::write(&d.config_path, "[program.x]\ncommand = 1\n").unwrap();
    assert_eq!(d.ctl(&["reload"]).code, 1);
    let m = scrape(port);
    assert_eq!(value(&m, "minder_reloads_total", &[]), Some(2.0));
    assert_eq!(
        value(&m, "minder_config_last_reload_successful", &[]),
        Some(0.0)
    );

    assert_eq!(fetch(port, "/healthz"), (200, "ok\n".to_string()));
    assert_eq!(fetch(port, "/nope").0, 404);
}

#[test]
fn a_metrics_address_in_use_is_a_clear_error() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut d = Daemon::prepare(&format!("metrics = \"127.0.0.1:{port}\""), "");
    d.spawn();
    let status = d.wait_exit(WAIT);
    assert_eq!(status.code(), Some(1));
    let log = std::fs::read_to_string(&d.log_path).unwrap_or_default();
    assert!(
        log.contains(&format!("metrics 127.0.0.1:{port}")) && log.contains("in use"),
        "{log}"
    );
}

#[test]
fn events_stream_shows_start_running_and_the_exit_code() {
    let d = Daemon::start(&format!(
        "{}{}",
        crasher("crash", None, "autostart = false"),
        program("quiet", &[], "")
    ));
    d.wait_state("quiet", "running");
    let mut reader = subscribe(&d, &["crash"]);

    d.ctl_ok(&["start", "crash"]);
    let seen = read_until(&mut reader, |e| e["to"] == "backoff");
    let transitions: Vec<(String, String)> = seen
        .iter()
        .map(|e| {
            (
                e["from"].as_str().unwrap().to_string(),
                e["to"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        transitions,
        [
            ("stopped".to_string(), "starting".to_string()),
            ("starting".to_string(), "running".to_string()),
            ("running".to_string(), "backoff".to_string()),
        ],
        "{seen:#?}"
    );
    assert_eq!(seen[0]["reason"], "ctl start");
    assert!(seen[0]["pid"].is_i64(), "{seen:#?}");
    let reason = seen[2]["reason"].as_str().unwrap();
    assert!(reason.contains("code 3"), "{reason}");
    for e in &seen {
        assert_eq!(e["name"], "crash");
        assert_eq!(e["program"], "crash");
        assert!(e["time"].as_str().unwrap().ends_with('Z'), "{e}");
    }
    // Only the named process: `quiet` stopping is not sent.
    d.ctl_ok(&["stop", "quiet"]);
    d.ctl_ok(&["stop", "crash"]);
    let rest = read_until(&mut reader, |e| e["to"] == "stopped");
    assert!(rest.iter().all(|e| e["name"] == "crash"), "{rest:#?}");

    // An unknown name is refused with the cause.
    let out = d.ctl(&["events", "ghost"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("ghost"), "{out:?}");
}

/// Opens an `events` stream for `names` (single-instance programs) on the
/// daemon's socket, past its acknowledgement.

#[test]
fn events_give_the_probe_message_and_the_reload_as_reasons() {
    let port = free_port();
    let web = |extra: &str| {
        program(
            "web",
            &["--http", &port.to_string(), "--unhealthy-if", "@TMP@/sick"],
            &format!(
                "{extra}\n[program.web.health]\nhttp = \"http://127.0.0.1:{port}/health\"\ninterval = \"100ms\"\nfailure_threshold = 1\non_unhealthy = \"none\"\n"
            ),
        )
    };
    let d = Daemon::start(&web(""));
    d.wait_for("web healthy", WAIT, |ps| get(ps, "web").health == "healthy");
    let mut reader = subscribe(&d, &["web"]);
    std::fs::write(d.path("sick"), "").unwrap();
    let seen = read_until(&mut reader, |e| e["to"] == "unhealthy");
    let sick = seen.last().unwrap();
    assert_eq!(sick["from"], "healthy", "{seen:#?}");
    let reason = sick["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("GET http://127.0.0.1:{port}/health")) && reason.contains("500"),
        "{reason}"
    );
    std::fs::remove_file(d.path("sick")).unwrap();
    read_until(&mut reader, |e| e["to"] == "healthy");

    // A reload that changes the program restarts it, for the reason "reload".
    d.write_config(&web("environment = { CHANGED = \"1\" }"));
    d.ctl_ok(&["reload"]);
    let seen = read_until(&mut reader, |e| e["to"] == "stopping");
    assert_eq!(seen.last().unwrap()["reason"], "reload", "{seen:#?}");
}

#[test]
fn ctl_events_prints_one_line_per_change() {
    let d = Daemon::start(&crasher("crash", None, ""));
    let sock = d.sock.display().to_string();
    let mut child = Command::new(MINDER)
        .args(["ctl", "-s", &sock, "events", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // The loop goes on by itself: a backoff with the exit code comes soon.
    let deadline = Instant::now() + WAIT;
    let mut lines = Vec::new();
    let found = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let event: Value = serde_json::from_str(&line).expect("one JSON object per line");
                lines.push(line);
                if event["to"] == "backoff" {
                    break Some(event);
                }
            }
            Err(_) => break None,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let event = found.unwrap_or_else(|| panic!("no backoff event; lines {lines:#?}"));
    assert_eq!(event["name"], "crash");
    assert!(
        event["reason"].as_str().unwrap().contains("code 3"),
        "{event}"
    );
}

/// A `[[supervisor.hooks]]` table.
fn hook(on: &[&str], programs: &[&str], action: &str, timeout: &str) -> String {
    let programs = if programs.is_empty() {
        String::new()
    } else {
        format!("programs = {}\n", toml_array(programs))
    };
    format!(
        "[[supervisor.hooks]]\non = {}\n{programs}{action}\ntimeout = \"{timeout}\"\n\n",
        toml_array(on)
    )
}

#[test]
fn a_command_hook_gets_the_event_as_json_and_variables() {
    let script = "cat > \"$MINDER_EVENT_NAME.json\"; env | grep ^MINDER_EVENT_ > \"$MINDER_EVENT_NAME.env\"; echo hook-ran-for-$MINDER_EVENT_NAME";
    let body = format!(
        "{}{}{}",
        hook(
            &["fatal"],
            &["crash"],
            &format!("command = {}", toml_array(&["sh", "-c", script])),
            "10s"
        ),
        crasher("crash", Some(1), "start_secs = \"1s\""),
        crasher("other", Some(1), "start_secs = \"1s\""),
    );
    let d = Daemon::start(&body);
    d.wait_for("both fatal", WAIT, |ps| {
        get(ps, "crash").state == "fatal" && get(ps, "other").state == "fatal"
    });
    // The hook runs in the config's directory.
    let json = wait_file_until(&d.path("crash.env"), "the variables", |t| {
        t.contains("MINDER_EVENT_TO")
    });
    let event: Value =
        serde_json::from_str(&std::fs::read_to_string(d.path("crash.json")).unwrap()).unwrap();
    assert_eq!(event["name"], "crash");
    assert_eq!(event["program"], "crash");
    assert_eq!(event["to"], "fatal");
    assert!(
        event["reason"].as_str().unwrap().contains("code 3"),
        "{event}"
    );
    assert!(json.contains("MINDER_EVENT_TO=fatal"), "{json}");
    assert!(json.contains("MINDER_EVENT_NAME=crash"), "{json}");
    assert!(json.contains("MINDER_EVENT_FROM="), "{json}");
    // Its output goes to minder's log.
    wait_file_until(&d.log_path, "the hook's output", |t| {
        t.contains("hook-ran-for-crash")
    });
    // `other` is not in the hook's programs: no run for it.
    assert!(!d.path("other.json").exists());
}

/// A loopback HTTP server answering each request with the next status of
/// `statuses`; sends every request (head and body) it got.
fn webhook_server(statuses: Vec<u16>) -> (u16, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for status in statuses {
            let Ok((mut stream, _)) = listener.accept() else {
                return;
            };
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // Head, then as much body as Content-Length says.
            loop {
                let n = stream.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request);
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let length = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if body.len() >= length {
                        break;
                    }
                }
            }
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            if tx
                .send(String::from_utf8_lossy(&request).into_owned())
                .is_err()
            {
                return;
            }
        }
    });
    (port, rx)
}

#[test]
fn a_webhook_posts_the_event_and_retries_a_failure() {
    let (port, requests) = webhook_server(vec![500, 200]);
    let body = format!(
        "{}{}",
        hook(
            &["running"],
            &[],
            &format!("webhook = \"http://127.0.0.1:{port}/hook\""),
            "5s"
        ),
        program("web", &[], ""),
    );
    let _d = Daemon::start(&body);
    let first = requests.recv_timeout(WAIT).expect("a first POST");
    let second = requests.recv_timeout(WAIT).expect("a retry after the 500");
    for request in [&first, &second] {
        let (head, body) = request.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("POST /hook HTTP/1.1\r\n"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{head}"
        );
        let event: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
        assert_eq!(event["name"], "web");
        assert_eq!(event["from"], "starting");
        assert_eq!(event["to"], "running");
    }
}

/// A private file holding `key`, in a directory of its own (as root, minder
/// refuses a key others may read).
fn secret_file(key: &str) -> (tempfile::TempDir, String) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hook.secret");
    std::fs::write(&file, key).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let path = file.display().to_string();
    (dir, path)
}

/// A webhook on every `running` to `port`, signed with the key in `secret`,
/// and a program `web`.
fn signed_webhook_config(port: u16, secret: &str) -> String {
    format!(
        "{}{}",
        hook(
            &["running"],
            &[],
            &format!("webhook = \"http://127.0.0.1:{port}/hook\"\nsecret_file = {secret:?}"),
            "5s"
        ),
        program("web", &[], ""),
    )
}

/// Whether `request` carries `X-Minder-Signature: sha256=<hex>` of the
/// HMAC-SHA256 of its exact body with `key`: what a receiver checks.
fn signed_with(request: &str, key: &[u8]) -> bool {
    use hmac::Mac;
    let (head, body) = request.split_once("\r\n\r\n").unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(body.as_bytes());
    let hex: String = (mac.finalize().into_bytes().iter())
        .map(|b| format!("{b:02x}"))
        .collect();
    head.contains(&format!("\r\nX-Minder-Signature: sha256={hex}\r\n"))
}

#[test]
fn a_signed_webhook_carries_the_hmac_of_its_exact_body() {
    let (_secret_dir, secret) = secret_file("s3cret key\n");
    let (port, requests) = webhook_server(vec![200]);
    let _d = Daemon::start(&signed_webhook_config(port, &secret));
    let request = requests.recv_timeout(WAIT).expect("a POST");
    // The key's trailing newline is not part of it.
    assert!(signed_with(&request, b"s3cret key"), "{request}");
    let (_, body) = request.split_once("\r\n\r\n").unwrap();
    let event: Value = serde_json::from_str(body).unwrap();
    assert_eq!(event["to"], "running");
}

#[test]
fn a_reload_reads_the_webhook_key_again() {
    let (_secret_dir, secret) = secret_file("first\n");
    let (port, requests) = webhook_server(vec![200; 11]);
    let d = Daemon::start(&signed_webhook_config(port, &secret));
    let first = requests.recv_timeout(WAIT).expect("a POST");
    assert!(signed_with(&first, b"first"), "{first}");
    // The same config text, a new key: the reload reads it.
    std::fs::write(&secret, "second\n").unwrap();
    d.ctl_ok(&["reload"]);
    // The hooks are replaced by a task that follows reloads: an event right
    // after `reload` returns may still go to the old ones, with the old key.
    for attempt in 1.. {
        d.ctl_ok(&["restart", "web"]);
        let next = requests
            .recv_timeout(WAIT)
            .expect("a POST after the restart");
        if signed_with(&next, b"second") {
            break;
        }
        assert!(
            signed_with(&next, b"first"),
            "signed with neither key: {next}"
        );
        assert!(attempt < 10, "still the old key after {attempt} restarts");
    }
}

#[test]
fn a_dead_webhook_drops_and_counts_what_its_queue_cannot_hold() {
    // Accepts connections (the kernel's backlog) and never answers: every
    // delivery waits out its timeout.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = silent.local_addr().unwrap().port();
    let metrics = free_port();
    let body = format!(
        "{}{}",
        hook(
            &["starting", "running", "stopping", "stopped"],
            &[],
            &format!("webhook = \"http://127.0.0.1:{dead}/hook\""),
            "60s"
        ),
        // 40 processes, each starting and running: 80 events, more than the
        // 64 the queue holds besides the one being delivered.
        program("web", &[], "instances = 40"),
    );
    let d = Daemon::start_with(&format!("metrics = \"127.0.0.1:{metrics}\""), &body);
    d.wait_for("all running", WAIT, |ps| {
        ps.iter().filter(|p| p.state == "running").count() == 40
    });
    // 80 more: stopping and stopped for each.
    d.ctl_ok(&["stop", "web"]);
    // The counter once it reaches `least` (or when WAIT is over).
    let dropped_reaching = |least: f64| {
        let deadline = Instant::now() + WAIT;
        loop {
            let m = scrape(metrics);
            let dropped = value(&m, "minder_hook_webhook_dropped_total", &[("hook", "0")])
                .expect("a dropped series for the webhook hook");
            if dropped >= least || Instant::now() > deadline {
                return dropped;
            }
            thread::sleep(Duration::from_millis(50));
        }
    };
    let dropped = dropped_reaching(95.0);
    // 160 events: 64 queued and the one in delivery are kept (or 64 and
    // none, if the second came before the worker took the first).
    assert!((95.0..=96.0).contains(&dropped), "dropped {dropped}");
    // The supervisor answers at once all the while.
    let asked = Instant::now();
    let procs = d.status();
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "status took {:?}",
        asked.elapsed()
    );
    assert!(procs.iter().all(|p| p.state == "stopped"), "{procs:?}");
    d.ctl_ok(&["start", "web"]);
    // The queue is still full: each of the 80 new events is dropped.
    let more = dropped_reaching(dropped + 80.0);
    assert!(more >= dropped + 80.0, "dropped {dropped}, then {more}");
    let m = scrape(metrics);
    // Drops are not failed runs, and the delivery in progress has not failed yet.
    assert_eq!(
        value(&m, "minder_hook_failures_total", &[("hook", "0")]),
        Some(0.0)
    );
    drop(silent);
}

#[test]
fn a_hanging_hook_is_killed_at_its_timeout_and_supervision_goes_on() {
    let port = free_port();
    let script = "echo $$ > hook.pid; exec sleep 1000";
    let body = format!(
        "{}{}{}",
        hook(
            &["running"],
            &["slow"],
            &format!("command = {}", toml_array(&["sh", "-c", script])),
            "1s"
        ),
        program("slow", &[], ""),
        program("other", &[], "autostart = false"),
    );
    let d = Daemon::start_with(&format!("metrics = \"127.0.0.1:{port}\""), &body);
    let pid_text = wait_file_until(&d.path("hook.pid"), "the hook's pid", |t| t.ends_with('\n'));
    let hook_pid: i32 = pid_text.trim().parse().unwrap();
    // While the hook hangs, minder supervises as ever.
    d.ctl_ok(&["start", "other"]);
    d.ctl_ok(&["stop", "other"]);
    assert_pid_gone(hook_pid, "the hook past its timeout");
    wait_file_until(&d.log_path, "the hook's failure", |t| {
        t.contains("killed after 1s")
    });
    let m = scrape(port);
    assert_eq!(
        value(&m, "minder_hook_failures_total", &[("hook", "0")]),
        Some(1.0)
    );
    assert_eq!(d.proc("slow").state, "running");
}

#[test]
fn hook_and_metrics_config_errors_are_reported_by_check() {
    let d = Daemon::prepare(
        "metrics = \"nowhere\"",
        &format!(
            "{}{}{}",
            hook(&["exploded"], &["ghost"], "command = \"true\"", "1s"),
            hook(
                &["fatal"],
                &[],
                "webhook = \"http://127.0.0.1:9/\"\nsecret_file = \"missing.secret\"",
                "1s"
            ),
            program("a", &[], "")
        ),
    );
    let out = run_minder(&["check", "-c", &d.config_path.display().to_string()]);
    assert_eq!(out.code, 1, "{out:?}");
    for needle in [
        "\"metrics\": \"nowhere\" is not IP:PORT",
        "\"on\": unknown event \"exploded\"",
        "\"programs\": unknown program \"ghost\"",
        "\"secret_file\": cannot read ",
    ] {
        assert!(
            out.stdout.contains(needle) || out.stderr.contains(needle),
            "{needle}: {out:?}"
        );
    }
    // FILE:LINE:COL of the value, naming the file looked for.
    let missing = d.config_path.with_file_name("missing.secret");
    let all = format!("{}{}", out.stdout, out.stderr);
    let line = all
        .lines()
        .find(|l| l.contains("\"secret_file\""))
        .unwrap_or_else(|| panic!("{out:?}"));
    let prefix = format!("{}:", d.config_path.display());
    let position = line
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{line}"));
    let mut parts = position.splitn(3, ':');
    assert!(parts.next().unwrap().parse::<u32>().is_ok(), "{line}");
    assert!(parts.next().unwrap().parse::<u32>().is_ok(), "{line}");
    assert!(
        line.ends_with(&format!(
            "cannot read {}: no such file or directory",
            missing.display()
        )),
        "{line}"
    );
}

#[test]
fn reload_moves_the_metrics_endpoint_or_changes_nothing() {
    let (first, second) = (free_port(), free_port());
    let body = program("web", &[], "");
    let mut d = Daemon::start_with(&format!("metrics = \"127.0.0.1:{first}\""), &body);
    assert_eq!(fetch(first, "/healthz").0, 200);

    // An address in use: the reload is rejected and the endpoint stays.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    d.set_supervisor_extra(&format!("metrics = \"127.0.0.1:{taken_port}\""));
    d.write_config(&body);
    let out = d.ctl(&["reload"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("metrics 127.0.0.1:{taken_port}")),
        "{out:?}"
    );
    assert_eq!(fetch(first, "/healthz").0, 200);

    // A free one: served there, no longer at the first.
    d.set_supervisor_extra(&format!("metrics = \"127.0.0.1:{second}\""));
    d.write_config(&body);
    d.ctl_ok(&["reload"]);
    assert_eq!(fetch(second, "/healthz").0, 200);
    assert!(TcpStream::connect(("127.0.0.1", first)).is_err());
}

/// Output large enough to be spliced into its file counts like written output.
#[test]
fn log_bytes_count_everything_in_the_file() {
    const LINES: u64 = 200_000;
    let port = free_port();
    let d = Daemon::start_with(
        &format!("metrics = \"127.0.0.1:{port}\""),
        &program(
            "chatty",
            &["--write-lines", &LINES.to_string(), "--exit-after", "0"],
            "restart = \"never\"\nstart_secs = \"0s\"\n[program.chatty.logs]\nmax_size = \"0\"",
        ),
    );
    d.wait_state("chatty", "exited");
    // Each line is `line NNNNNNNNN\n`.
    let total = LINES * 15;
    let path = d.path("logs/chatty.stdout.log");
    let deadline = Instant::now() + WAIT;
    while std::fs::metadata(&path).map_or(0, |m| m.len()) < total && Instant::now() < deadline {
        thread::sleep(POLL);
    }
    assert_eq!(std::fs::metadata(&path).unwrap().len(), total);
    let m = scrape(port);
    let stdout = [("name", "chatty"), ("stream", "stdout")];
    assert_eq!(
        value(&m, "minder_log_bytes_total", &stdout),
        Some(total as f64)
    );
    assert_eq!(
        value(&m, "minder_log_dropped_bytes_total", &stdout),
        Some(0.0)
    );
}
