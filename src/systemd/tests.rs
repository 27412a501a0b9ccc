//! What minder tells systemd, checked with plain values and paused time:
//! messages go to memory instead of a socket.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::unistd::Pid;
use tokio::sync::Notify;

use super::*;
use crate::config::{parse_str, Config, Defaults};

fn config(text: &str) -> Config {
    let defaults = Defaults {
        socket: PathBuf::from("/run/test/minder.sock"),
        log_dir: PathBuf::from("/var/log/test"),
    };
    parse_str(text, Path::new("/etc/test/minder.toml"), &defaults)
        .unwrap_or_else(|d| panic!("test config does not load: {d:?}"))
}

fn running() -> State {
    State::Running {
        pid: Pid::from_raw(100),
        started: Instant::now(),
    }
}

fn starting() -> State {
    State::Starting {
        pid: Pid::from_raw(101),
        started: Instant::now(),
    }
}

fn backoff() -> State {
    State::Backoff {
        until: Instant::now() + Duration::from_secs(1),
    }
}

#[test]
fn summary_always_names_running_and_unhealthy() {
    assert_eq!(summary(std::iter::empty()), "0 running, 0 unhealthy");
    let mut many = vec![(running(), Health::Healthy); 12];
    many.push((backoff(), Health::None));
    assert_eq!(
        summary(many.into_iter()),
        "12 running, 1 backoff, 0 unhealthy"
    );
    let mixed = [
        (running(), Health::Unhealthy),
        (starting(), Health::Starting),
        (State::Spawning, Health::None),
        (State::Fatal, Health::None),
        (State::Stopped, Health::None),
        (State::Exited, Health::None),
    ];
    assert_eq!(
        summary(mixed.into_iter()),
        "1 running, 2 starting, 1 exited, 1 fatal, 1 stopped, 1 unhealthy"
    );
}

#[test]
fn watchdog_is_half_the_interval_and_only_for_our_pid() {
    let half = Some(Duration::from_millis(200));
    assert_eq!(watchdog_interval(Some("400000"), None, 7), half);
    assert_eq!(watchdog_interval(Some("400000"), Some("7"), 7), half);
    assert_eq!(watchdog_interval(Some("400000"), Some("8"), 7), None);
    assert_eq!(watchdog_interval(Some("400000"), Some("x"), 7), None);
    assert_eq!(watchdog_interval(None, Some("7"), 7), None);
    assert_eq!(watchdog_interval(Some("0"), None, 7), None);
    assert_eq!(watchdog_interval(Some("soon"), None, 7), None);
}

const TWO_PROGRAMS: &str = r#"
[program.db]
command = "/bin/db"
[program.web]
command = "/bin/web"
depends_on = ["db"]
[program.manual]
command = "/bin/manual"
autostart = false
"#;

#[test]
fn settled_once_each_autostart_process_has_an_outcome() {
    let cfg = config(TWO_PROGRAMS);
    let stopped = State::Stopped;
    // Nothing started yet.
    assert!(!autostart_settled(
        &[("db", stopped), ("web", stopped), ("manual", stopped)],
        &cfg
    ));
    // web still starting.
    assert!(!autostart_settled(
        &[("db", running()), ("web", starting()), ("manual", stopped)],
        &cfg
    ));
    // Both up; a program without autostart does not count.
    assert!(autostart_settled(
        &[("db", running()), ("web", running()), ("manual", stopped)],
        &cfg
    ));
    // Failed outcomes count as started: backoff, fatal, exited.
    for outcome in [backoff(), State::Fatal, State::Exited] {
        assert!(autostart_settled(
            &[("db", running()), ("web", outcome), ("manual", stopped)],
            &cfg
        ));
    }
}

/// Regression: a program that can never start must not hold back READY=1,
/// nor may the programs that wait for it (they stay `stopped` forever).
#[test]
fn a_broken_dependency_does_not_hold_back_its_dependants() {
    let cfg = config(TWO_PROGRAMS);
    for broken in [backoff(), State::Fatal, State::Exited] {
        assert!(autostart_settled(
            &[("db", broken), ("web", State::Stopped)],
            &cfg
        ));
    }
    // A dependency that is merely starting does hold them back.
    assert!(!autostart_settled(
        &[("db", starting()), ("web", State::Stopped)],
        &cfg
    ));
}

#[test]
fn blocked_is_transitive() {
    let cfg = config(
        r#"
[program.a]
command = "/bin/a"
[program.b]
command = "/bin/b"
depends_on = ["a"]
[program.c]
command = "/bin/c"
depends_on = ["b"]
"#,
    );
    assert!(autostart_settled(
        &[
            ("a", State::Fatal),
            ("b", State::Stopped),
            ("c", State::Stopped)
        ],
        &cfg
    ));
    assert!(!autostart_settled(
        &[("a", running()), ("b", starting()), ("c", State::Stopped)],
        &cfg
    ));
}

struct Recorder {
    link: Systemd,
    changes: Arc<Notify>,
    messages: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    fn new(watchdog: Option<Duration>) -> Recorder {
        let changes = Arc::new(Notify::new());
        let messages = Arc::new(Mutex::new(Vec::new()));
        let link = Systemd::recording(Arc::clone(&changes), Arc::clone(&messages), watchdog);
        Recorder {
            link,
            changes,
            messages,
        }
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.messages.lock().unwrap())
    }

    /// Waits for the next duty (paused time moves on by itself) and performs it.
    async fn step(&mut self, cfg: &Config) -> Duty {
        let duty = tokio::time::timeout(Duration::from_secs(3600), self.link.next())
            .await
            .expect("a duty within an hour");
        self.link.perform(duty, &[], cfg);
        duty
    }
}

#[tokio::test(start_paused = true)]
async fn ready_status_reload_and_stopping_in_order() {
    let cfg = config("");
    let mut r = Recorder::new(None);
    // The first change (or the autostart task's end) leads to READY=1 with a summary.
    r.changes.notify_one();
    let before = tokio::time::Instant::now();
    assert_eq!(r.step(&cfg).await, Duty::Status);
    assert!(before.elapsed() >= STATUS_DEBOUNCE, "not debounced");
    assert_eq!(r.take(), ["READY=1\nSTATUS=0 running, 0 unhealthy"]);

    // An unchanged summary is not sent again.
    r.changes.notify_one();
    assert_eq!(r.step(&cfg).await, Duty::Status);
    assert!(r.take().is_empty());

    r.link.reloading();
    r.link.reloaded(&[], None);
    let sent = r.take();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(
        sent[0].starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{sent:?}"
    );
    let usec: u64 = sent[0]["RELOADING=1\nMONOTONIC_USEC=".len()..]
        .parse()
        .expect("MONOTONIC_USEC is a number");
    assert!(usec > 0);
    assert_eq!(sent[1], "READY=1\nSTATUS=0 running, 0 unhealthy");

    r.link.reloading();
    r.link.reloaded(&[], Some("minder.toml:3:1: unknown key"));
    let sent = r.take();
    assert_eq!(
        sent[1],
        "READY=1\nSTATUS=reload failed: minder.toml:3:1: unknown key"
    );

    r.link.stopping();
    r.link.stopping();
    assert_eq!(r.take(), ["STOPPING=1\nSTATUS=shutting down"]);
}

#[tokio::test(start_paused = true)]
async fn nothing_is_announced_before_ready() {
    let cfg = config("");
    let mut r = Recorder::new(None);
    r.link.reloading();
    r.link.reloaded(&[], None);
    assert!(r.take().is_empty(), "RELOADING=1 before READY=1");
    // After STOPPING=1, READY=1 never follows.
    r.link.stopping();
    r.changes.notify_one();
    assert_eq!(r.step(&cfg).await, Duty::Status);
    let sent = r.take();
    assert_eq!(sent[0], "STOPPING=1\nSTATUS=shutting down");
    assert!(sent.iter().all(|m| !m.contains("READY=1")), "{sent:?}");
}

#[tokio::test(start_paused = true)]
async fn the_autostart_task_ending_is_enough_for_ready() {
    // `web` depends on `db`; both look stopped (say, stopped by `ctl stop` during
    // the start): the autostart task's end still makes minder ready.
    let cfg = config(TWO_PROGRAMS);
    let mut r = Recorder::new(None);
    r.link.autostart_tracker().finished();
    assert_eq!(r.step(&cfg).await, Duty::Status);
    assert_eq!(r.take(), ["READY=1\nSTATUS=0 running, 0 unhealthy"]);
}

#[tokio::test(start_paused = true)]
async fn watchdog_every_half_interval() {
    let cfg = config("");
    let mut r = Recorder::new(Some(Duration::from_millis(400)));
    let start = tokio::time::Instant::now();
    for _ in 0..5 {
        assert_eq!(r.step(&cfg).await, Duty::Watchdog);
    }
    // The first at once, then every 200ms.
    assert_eq!(start.elapsed(), Duration::from_millis(800));
    assert_eq!(r.take(), vec!["WATCHDOG=1"; 5]);
}

#[tokio::test(start_paused = true)]
async fn status_changes_do_not_delay_the_watchdog() {
    let cfg = config("");
    let mut r = Recorder::new(Some(Duration::from_millis(400)));
    assert_eq!(r.step(&cfg).await, Duty::Watchdog);
    let start = tokio::time::Instant::now();
    let mut watchdogs = 0;
    // A storm of changes: one every 50ms.
    for _ in 0..40 {
        r.changes.notify_one();
        if let Ok(duty) = tokio::time::timeout(Duration::from_millis(50), r.link.next()).await {
            r.link.perform(duty, &[], &cfg);
            watchdogs += usize::from(duty == Duty::Watchdog);
        }
    }
    let elapsed = start.elapsed();
    let expected = (elapsed.as_millis() / 200) as usize;
    assert!(
        watchdogs + 1 >= expected,
        "{watchdogs} WATCHDOG=1 in {elapsed:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn without_notify_socket_nothing_is_ever_due() {
    let changes = Arc::new(Notify::new());
    let mut link = Systemd::disabled(Arc::clone(&changes));
    changes.notify_one();
    assert!(!link.enabled());
    let waited = tokio::time::timeout(Duration::from_secs(3600), link.next()).await;
    assert!(waited.is_err(), "a disabled link had a duty: {waited:?}");
}

#[test]
fn long_status_texts_are_clipped_to_one_line() {
    let long = format!("line one\n{}", "é".repeat(300));
    let clipped = clip(&long);
    assert!(!clipped.contains('\n'));
    assert!(clipped.len() <= MAX_STATUS + 3, "{}", clipped.len());
    assert!(clipped.ends_with("..."));
    assert_eq!(clip("short"), "short");
}
