//! The upstream file backend against a real nginx: traffic goes only to the
//! processes that are in once the file is rewritten and nginx reloaded, an
//! upstream with none still parses, a failing reload is reported, and
//! reloads are at most one per 200 ms.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::haproxy::{eventually, names, traffic, NameServer};
use common::nginx::Nginx;
use common::{assert_all_ok, the_error, with_reaper};
use minder::config::{Registration, UpstreamFileConfig, UpstreamFormat};
use minder::process::{run_captured, Capture, ProcessEnd, SpawnRequest};
use minder::register::file::UpstreamFile;
use minder::register::{Applied, Member, Standing};

fn config(format: UpstreamFormat, reload: Vec<String>) -> UpstreamFileConfig {
    UpstreamFileConfig {
        path: PathBuf::from("/unused/template/{program}.conf"),
        format,
        reload,
        directory: PathBuf::from("/"),
    }
}

fn member(instance: u32, address: &str, standing: Standing) -> Member {
    Member {
        registration: Registration {
            name: format!("web:{instance}"),
            program: "web".into(),
            instance,
            host: "h1".into(),
            address: address.to_string(),
            server: None,
            key: None,
        },
        standing,
        pid: Some(1000 + instance),
        since: Some(SystemTime::now()),
    }
}

/// Applies `members`, then runs the reload whenever it is due, as the
/// caller does, until none is owed: the last results.
async fn apply_and_reload(file: &mut UpstreamFile, members: &[Member]) -> Applied {
    let mut applied = file.apply(members).await;
    while let Some(at) = file.next_timer() {
        tokio::time::sleep_until(at).await;
        applied = file.on_timer().await;
    }
    applied
}

/// Requests through nginx reach exactly `expected`.
fn assert_traffic_only(nginx: &Nginx, expected: &[&str]) {
    let seen = traffic(nginx.port, 10 * expected.len());
    assert_eq!(names(&seen), expected, "{seen:?}\n{}", nginx.error_log());
}

/// Applies `members` and waits until the workers that had the old upstream
/// are gone (they take requests for a while after a reload).
async fn apply_and_wait_for_workers(
    file: &mut UpstreamFile,
    nginx: &Nginx,
    members: &[Member],
) -> Applied {
    let old = nginx.workers();
    assert!(!old.is_empty());
    let applied = apply_and_reload(file, members).await;
    eventually(
        "nginx's old workers are gone",
        Duration::from_secs(10),
        || {
            let now = nginx.workers();
            !now.is_empty() && now.iter().all(|w| !old.contains(w))
        },
    );
    applied
}

fn quoted(argv: &[String]) -> String {
    serde_json::to_string(argv).unwrap()
}

#[test]
fn traffic_goes_only_to_the_processes_that_are_in() {
    with_reaper(|reaper| async move {
        let dir = tempfile::tempdir().unwrap();
        let mut nginx = Nginx::new(dir.path());
        let (a, b, c) = (
            NameServer::start("a"),
            NameServer::start("b"),
            NameServer::start("c"),
        );
        let mut file = UpstreamFile::new(
            config(UpstreamFormat::Nginx, nginx.reload_argv()),
            nginx.upstream.clone(),
            "web".into(),
            reaper,
        );
        // Written before nginx runs: the reload then fails, nginx reads the file when it starts.
        let mut members = vec![
            member(0, &a.address(), Standing::In),
            member(1, &b.address(), Standing::In),
            member(2, &c.address(), Standing::Out),
        ];
        let applied = apply_and_reload(&mut file, &members).await;
        assert!(the_error(&applied).contains("nginx.pid"), "{applied:?}");
        nginx.start();
        assert_traffic_only(&nginx, &["a", "b"]);

        members[0].standing = Standing::Out;
        members[2].standing = Standing::In;
        assert_all_ok(
            &apply_and_wait_for_workers(&mut file, &nginx, &members).await,
            &["web:0", "web:1", "web:2"],
        );
        assert_traffic_only(&nginx, &["b", "c"]);

        members[1].standing = Standing::Draining;
        assert_all_ok(
            &apply_and_wait_for_workers(&mut file, &nginx, &members).await,
            &["web:0", "web:1", "web:2"],
        );
        assert_traffic_only(&nginx, &["c"]);
        let text = std::fs::read_to_string(&nginx.upstream).unwrap();
        assert!(text.starts_with("# Written by minder"), "{text}");
        assert!(
            text.contains(&format!(
                "upstream web {{\n    server {};\n}}\n",
                c.address()
            )),
            "{text}"
        );
    });
}

#[test]
fn an_upstream_with_none_in_still_parses() {
    with_reaper(|reaper| async move {
        let dir = tempfile::tempdir().unwrap();
        let mut nginx = Nginx::new(dir.path());
        let mut file = UpstreamFile::new(
            config(UpstreamFormat::Nginx, Vec::new()),
            nginx.upstream.clone(),
            "web".into(),
            reaper.clone(),
        );
        let members = [
            member(0, "127.0.0.1:9", Standing::Out),
            member(1, "127.0.0.1:9", Standing::Draining),
        ];
        assert_all_ok(&file.apply(&members).await, &["web:0", "web:1"]);
        assert_eq!(file.next_timer(), None, "no reload command, nothing owed");
        let text = std::fs::read_to_string(&nginx.upstream).unwrap();
        assert!(text.contains("server 127.0.0.1:1 down;"), "{text}");

        let test = SpawnRequest::command(nginx.argv(&["-t"]));
        let (end, output) = run_captured(test, Capture::Both, Duration::from_secs(10), &reaper)
            .await
            .expect("nginx -t runs");
        assert_eq!(end, ProcessEnd::Exited(0), "{output}");
        nginx.start();
        let seen = traffic(nginx.port, 2);
        assert_eq!(names(&seen), ["HTTP502"], "{seen:?}");
    });
}

#[test]
fn a_failed_reload_is_reported_for_every_process_and_retried() {
    with_reaper(|reaper| async move {
        let dir = tempfile::tempdir().unwrap();
        let mut nginx = Nginx::new(dir.path());
        let a = NameServer::start("a");
        let members = [
            member(0, &a.address(), Standing::In),
            member(1, "127.0.0.1:9", Standing::Out),
        ];
        let mut good = UpstreamFile::new(
            config(UpstreamFormat::Nginx, Vec::new()),
            nginx.upstream.clone(),
            "web".into(),
            reaper.clone(),
        );
        assert_all_ok(&good.apply(&members).await, &["web:0", "web:1"]);
        nginx.start();
        assert_traffic_only(&nginx, &["a"]);

        // JSON where nginx expects its own syntax: `nginx -s reload` refuses it.
        let argv = nginx.reload_argv();
        let mut bad = UpstreamFile::new(
            config(UpstreamFormat::Json, argv.clone()),
            nginx.upstream.clone(),
            "web".into(),
            reaper.clone(),
        );
        for attempt in 0..2 {
            let error = the_error(&apply_and_reload(&mut bad, &members).await);
            let expected = format!("reload {} exited with code 1: ", quoted(&argv));
            assert!(error.starts_with(&expected), "attempt {attempt}: {error}");
            assert!(error.contains("[emerg]"), "attempt {attempt}: {error}");
        }
        // Asked again before the next reload may run (200 ms after the
        // last): still the failure, not "ok", until a reload succeeds.
        let again = bad.apply(&members).await;
        assert!(
            bad.next_timer().is_some(),
            "the retried reload is not scheduled"
        );
        assert!(
            the_error(&again).contains("[emerg]"),
            "a pending retry reported as {again:?}"
        );
        // The running nginx kept its last good config.
        assert_traffic_only(&nginx, &["a"]);

        let missing = vec!["/nonexistent/reload-command".to_string()];
        let mut unstartable = UpstreamFile::new(
            config(UpstreamFormat::Nginx, missing.clone()),
            dir.path().join("other.conf"),
            "web".into(),
            reaper.clone(),
        );
        let error = the_error(&apply_and_reload(&mut unstartable, &members).await);
        assert!(
            error.starts_with(&format!("reload {}: ", quoted(&missing))),
            "{error}"
        );
        assert!(error.contains("No such file or directory"), "{error}");
    });
}

/// The start times of the reload command, from the file it appends to.
fn runs(path: &Path) -> Vec<u128> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| l.trim().parse().expect("a time in ns"))
        .collect()
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[test]
fn reloads_are_debounced_to_one_per_200ms() {
    with_reaper(|reaper| async move {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("runs");
        let argv = vec![
            "sh".to_string(),
            "-c".to_string(),
            format!("date +%s%N >> {}", log.display()),
        ];
        let path = dir.path().join("upstream.conf");
        let mut file = UpstreamFile::new(
            config(UpstreamFormat::Nginx, argv),
            path.clone(),
            "web".into(),
            reaper,
        );
        let mut members = vec![
            member(0, "127.0.0.1:8080", Standing::In),
            member(1, "127.0.0.1:8081", Standing::Out),
        ];
        // A change every 10 ms for a second, the caller running the reload when due.
        let start = now_ns();
        let began = tokio::time::Instant::now();
        let mut changes = 0;
        while began.elapsed() < Duration::from_secs(1) {
            members[1].standing = if changes % 2 == 0 {
                Standing::In
            } else {
                Standing::Out
            };
            changes += 1;
            assert_all_ok(&file.apply(&members).await, &["web:0", "web:1"]);
            if file
                .next_timer()
                .is_some_and(|at| at <= tokio::time::Instant::now())
            {
                assert_all_ok(&file.on_timer().await, &["web:0", "web:1"]);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let last_change = now_ns();
        assert_all_ok(
            &apply_and_reload(&mut file, &members).await,
            &["web:0", "web:1"],
        );
        let end = now_ns();

        let times = runs(&log);
        let span_ms = (end - start) / 1_000_000;
        assert!(
            times.len() >= 3 && times.len() as u128 <= span_ms / 200 + 1,
            "{} runs in {span_ms} ms for {changes} changes: {times:?}",
            times.len()
        );
        for pair in times.windows(2) {
            let gap_ms = (pair[1] - pair[0]) / 1_000_000;
            // Start times as `date` saw them: a little jitter from the spawn.
            assert!(gap_ms >= 180, "runs {gap_ms} ms apart: {times:?}");
        }
        assert!(
            *times.last().unwrap() >= last_change,
            "the last change was reloaded"
        );

        // Nothing changed: nothing written, nothing run.
        let before = std::fs::metadata(&path).unwrap().modified().unwrap();
        let count = times.len();
        assert_all_ok(
            &apply_and_reload(&mut file, &members).await,
            &["web:0", "web:1"],
        );
        assert_eq!(file.next_timer(), None);
        assert_eq!(runs(&log).len(), count);
        assert_eq!(
            std::fs::metadata(&path).unwrap().modified().unwrap(),
            before
        );
    });
}

#[test]
fn a_write_error_names_the_path_and_runs_no_reload() {
    with_reaper(|reaper| async move {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("runs");
        let argv = vec![
            "sh".to_string(),
            "-c".to_string(),
            format!("date +%s%N >> {}", log.display()),
        ];
        let path = dir.path().join("missing-dir").join("upstream.conf");
        let mut file = UpstreamFile::new(
            config(UpstreamFormat::Nginx, argv),
            path.clone(),
            "web".into(),
            reaper,
        );
        let members = [member(0, "127.0.0.1:8080", Standing::In)];
        let error = the_error(&apply_and_reload(&mut file, &members).await);
        assert!(error.contains(&path.display().to_string()), "{error}");
        assert!(error.contains("No such file or directory"), "{error}");
        assert!(runs(&log).is_empty());

        // Once the directory exists, the next apply writes and reloads.
        std::fs::create_dir(path.parent().unwrap()).unwrap();
        assert_all_ok(&apply_and_reload(&mut file, &members).await, &["web:0"]);
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .contains("server 127.0.0.1:8080;"));
        assert_eq!(runs(&log).len(), 1);
    });
}
