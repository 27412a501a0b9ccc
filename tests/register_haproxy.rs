//! The HAProxy registration backend against a real HAProxy: servers added,
//! put ready, drained, put in maint, moved and deleted through the admin
//! socket, and everything sent again once HAProxy is back after being away.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::haproxy::{eventually, names, Haproxy, NameServer};
use common::{assert_all_ok, the_error};
use minder::config::{HaproxyConfig, Registration};
use minder::register::haproxy::Haproxy as Backend;
use minder::register::{Member, Standing};

fn config(socket: &Path, backend: &str) -> HaproxyConfig {
    HaproxyConfig {
        socket: socket.to_path_buf(),
        backend: backend.to_string(),
        server: "{program}_{instance}".to_string(),
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
            server: Some(format!("web_{instance}")),
            key: None,
        },
        standing,
        pid: Some(1000 + instance),
        since: None,
    }
}

/// `n` requests through the frontend answered only by `expected`, each at least once.
fn assert_traffic_only(h: &Haproxy, expected: &[&str]) {
    let seen = h.traffic(10 * expected.len().max(1));
    assert_eq!(names(&seen), expected, "{seen:?}");
}

#[tokio::test]
async fn servers_are_added_and_follow_the_standing() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Haproxy::new(dir.path());
    h.start();
    let (b0, b1) = (NameServer::start("b0"), NameServer::start("b1"));
    let mut backend = Backend::new(config(&h.socket, "web"));
    assert!(h.servers("web").is_empty());
    assert_eq!(h.traffic(2).keys().collect::<Vec<_>>(), ["HTTP503"]);

    let mut members = vec![
        member(0, &b0.address(), Standing::In),
        member(1, &b1.address(), Standing::In),
    ];
    assert_all_ok(&backend.apply(&members).await, &["web:0", "web:1"]);
    let servers = h.servers("web");
    assert_eq!(servers.len(), 2, "{servers:?}");
    assert!(servers["web_0"].ready(), "{servers:?}");
    assert_eq!(
        (servers["web_0"].addr.as_str(), servers["web_0"].port),
        ("127.0.0.1", b0.port)
    );
    assert!(servers["web_1"].ready(), "{servers:?}");
    assert_eq!(servers["web_1"].port, b1.port);
    assert_traffic_only(&h, &["b0", "b1"]);

    members[0].standing = Standing::Draining;
    assert_all_ok(&backend.apply(&members).await, &["web:0", "web:1"]);
    let servers = h.servers("web");
    assert!(servers["web_0"].draining(), "{servers:?}");
    assert!(servers["web_1"].ready(), "{servers:?}");
    assert_traffic_only(&h, &["b1"]);

    members[0].standing = Standing::Out;
    assert_all_ok(&backend.apply(&members).await, &["web:0", "web:1"]);
    assert!(h.servers("web")["web_0"].maint());
    assert_traffic_only(&h, &["b1"]);

    members[0].standing = Standing::In;
    assert_all_ok(&backend.apply(&members).await, &["web:0", "web:1"]);
    assert!(h.servers("web")["web_0"].ready());
    assert_traffic_only(&h, &["b0", "b1"]);

    // Only differences are sent: a change made behind the backend's back
    // stays while its members do not change.
    assert_eq!(h.command("set server web/web_1 state maint"), "\n");
    assert_all_ok(&backend.apply(&members).await, &["web:0", "web:1"]);
    assert!(h.servers("web")["web_1"].maint());
}

#[tokio::test]
async fn out_and_draining_need_no_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Haproxy::new(dir.path());
    h.start();
    let mut backend = Backend::new(config(&h.socket, "web"));
    let members = [
        member(0, "127.0.0.1:1", Standing::Out),
        member(1, "127.0.0.1:2", Standing::Draining),
    ];
    assert_all_ok(&backend.apply(&members).await, &["web:0", "web:1"]);
    assert!(
        h.servers("web").is_empty(),
        "nothing added for processes that are not in"
    );
}

#[tokio::test]
async fn an_address_change_moves_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Haproxy::new(dir.path());
    h.start();
    let (b0, b2) = (NameServer::start("b0"), NameServer::start("b2"));
    let mut backend = Backend::new(config(&h.socket, "web"));
    let mut members = vec![member(0, &b0.address(), Standing::In)];
    assert_all_ok(&backend.apply(&members).await, &["web:0"]);
    assert_traffic_only(&h, &["b0"]);

    members[0].registration.address = b2.address();
    assert_all_ok(&backend.apply(&members).await, &["web:0"]);
    let servers = h.servers("web");
    assert_eq!(servers["web_0"].port, b2.port, "{servers:?}");
    assert!(servers["web_0"].ready());
    assert_traffic_only(&h, &["b2"]);

    // A host name is resolved by minder: HAProxy would keep it unresolved.
    members[0].registration.address = format!("localhost:{}", b0.port);
    assert_all_ok(&backend.apply(&members).await, &["web:0"]);
    let servers = h.servers("web");
    assert!(
        ["127.0.0.1", "::1"].contains(&servers["web_0"].addr.as_str()),
        "{servers:?}"
    );
    assert_eq!(servers["web_0"].port, b0.port);
}

#[tokio::test]
async fn a_process_that_left_has_its_server_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Haproxy::new(dir.path());
    h.start();
    let (b0, b1) = (NameServer::start("b0"), NameServer::start("b1"));
    let mut backend = Backend::new(config(&h.socket, "web"));
    let members = vec![
        member(0, &b0.address(), Standing::In),
        member(1, &b1.address(), Standing::In),
    ];
    assert_all_ok(&backend.apply(&members).await, &["web:0", "web:1"]);
    assert_traffic_only(&h, &["b0", "b1"]);

    assert_all_ok(&backend.apply(&members[..1]).await, &["web:0", "web:1"]);
    let servers = h.servers("web");
    assert_eq!(servers.keys().collect::<Vec<_>>(), ["web_0"], "{servers:?}");
    assert_traffic_only(&h, &["b0"]);
    // Gone for good: not reported again.
    assert_all_ok(&backend.apply(&members[..1]).await, &["web:0"]);
}

#[tokio::test]
async fn a_server_with_a_request_in_flight_is_deleted_once_cut() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Haproxy::new(dir.path());
    h.start();
    let b0 = NameServer::start("b0");
    let mut backend = Backend::new(config(&h.socket, "web"));
    let members = vec![member(0, &b0.address(), Standing::In)];
    assert_all_ok(&backend.apply(&members).await, &["web:0"]);
    let frontend = h.frontend;
    let client = std::thread::spawn(move || common::http_get(frontend, "/hold"));
    eventually(
        "the held request reached b0",
        Duration::from_secs(5),
        || b0.requests.load(std::sync::atomic::Ordering::SeqCst) == 1,
    );

    // The process left the config while still serving: its session is cut
    // so that the server can go. Retried as the caller would, bounded.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let applied = backend.apply(&[]).await;
        assert_eq!(applied.len(), 1, "{applied:?}");
        match &applied[0].1 {
            Ok(()) => break,
            Err(e) => {
                assert!(e.contains("web/web_0"), "{e}");
                assert!(Instant::now() < deadline, "never deleted: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert!(h.servers("web").is_empty());
    b0.release();
    let answer = client.join().unwrap();
    assert!(
        !matches!(&answer, Ok((200, body)) if body == "b0"),
        "the held request was cut: {answer:?}"
    );
}

#[tokio::test]
async fn an_unknown_backend_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Haproxy::new(dir.path());
    h.start();
    let mut backend = Backend::new(config(&h.socket, "nope"));
    for standing in [Standing::In, Standing::Draining, Standing::Out] {
        let applied = backend
            .apply(&[member(0, "127.0.0.1:8080", standing)])
            .await;
        let error = the_error(&applied);
        assert_eq!(
            error, "haproxy: backend \"nope\": No such backend.",
            "{standing:?}"
        );
    }
}

#[tokio::test]
async fn a_missing_socket_is_an_error_then_everything_is_sent_when_haproxy_starts() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Haproxy::new(dir.path());
    let (b0, b1) = (NameServer::start("b0"), NameServer::start("b1"));
    let mut backend = Backend::new(config(&h.socket, "web"));
    let members = vec![
        member(0, &b0.address(), Standing::In),
        member(1, &b1.address(), Standing::Out),
    ];
    let started = Instant::now();
    let error = the_error(&backend.apply(&members).await);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(
        error,
        format!(
            "haproxy {}: connect: No such file or directory",
            h.socket.display()
        )
    );

    h.start();
    assert_all_ok(&backend.apply(&members).await, &["web:0", "web:1"]);
    let servers = h.servers("web");
    assert!(servers["web_0"].ready(), "{servers:?}");
    assert!(!servers.contains_key("web_1"), "{servers:?}");
    assert_traffic_only(&h, &["b0"]);
}

#[tokio::test]
async fn a_restarted_haproxy_gets_its_servers_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Haproxy::new(dir.path());
    h.start();
    let (b0, b1) = (NameServer::start("b0"), NameServer::start("b1"));
    let mut backend = Backend::new(config(&h.socket, "web"));
    let mut members = vec![
        member(0, &b0.address(), Standing::In),
        member(1, &b1.address(), Standing::In),
    ];
    assert_all_ok(&backend.apply(&members).await, &["web:0", "web:1"]);

    // Down while a change is applied: it fails, and the next apply re-adds
    // every server, web:0's too although it did not change meanwhile.
    h.stop();
    members[1].standing = Standing::Out;
    let error = the_error(&backend.apply(&members).await);
    assert!(
        error.starts_with(&format!("haproxy {}: connect: ", h.socket.display())),
        "{error}"
    );
    h.start();
    assert!(
        h.servers("web").is_empty(),
        "dynamic servers do not survive a restart"
    );
    members[1].standing = Standing::In;
    assert_all_ok(&backend.apply(&members).await, &["web:0", "web:1"]);
    let servers = h.servers("web");
    assert!(
        servers["web_0"].ready() && servers["web_1"].ready(),
        "{servers:?}"
    );
    assert_traffic_only(&h, &["b0", "b1"]);

    // Restarted between two applies: the next change finds a server
    // missing and sends everything again, unchanged members too.
    h.stop();
    h.start();
    members[1].standing = Standing::Draining;
    assert_all_ok(&backend.apply(&members).await, &["web:0", "web:1"]);
    let servers = h.servers("web");
    assert!(servers["web_0"].ready(), "{servers:?}");
    assert_traffic_only(&h, &["b0"]);

    // Restarted with no change to follow (`systemctl reload haproxy`): the
    // periodic check finds the servers gone and sends them again.
    assert!(backend.next_timer().is_some(), "no check scheduled");
    assert_eq!(
        backend.on_timer().await,
        vec![],
        "nothing to do while all is in place"
    );
    h.stop();
    h.start();
    assert!(h.servers("web").is_empty());
    assert_all_ok(&backend.on_timer().await, &["web:0", "web:1"]);
    let servers = h.servers("web");
    // Draining needs no server: a missing one takes no traffic either.
    assert!(
        servers["web_0"].ready() && !servers.contains_key("web_1"),
        "{servers:?}"
    );
    assert!(
        backend.next_timer().is_some(),
        "no check scheduled after the repair"
    );
}
