//! The etcd registration backend against a real etcd 3.4 (its JSON gateway),
//! checked with `list` and `etcdctl`.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::etcd::{EtcdServer, Tls};
use common::free_port;
use common::pki::Pki;
use minder::config::{EtcdConfig, Registration, TlsConfig};
use minder::http::TlsSettings;
use minder::register::etcd::{list, Etcd};
use minder::register::{Applied, Member, Standing};
use serde_json::{json, Value};
use tokio::time::Instant;

const PREFIX: &str = "/minder/services/";

fn key(i: u32) -> String {
    format!("{PREFIX}web/h1/web:{i}")
}

fn member(i: u32, standing: Standing) -> Member {
    Member {
        registration: Registration {
            name: format!("web:{i}"),
            program: "web".into(),
            instance: i,
            host: "h1".into(),
            address: format!("127.0.0.1:{}", 18080 + i),
            server: None,
            key: Some(key(i)),
        },
        standing,
        pid: Some(1000 + i),
        since: Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000 + u64::from(i))),
    }
}

fn config(endpoints: &[&str], ttl: u64) -> EtcdConfig {
    EtcdConfig {
        endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
        key: format!("{PREFIX}{{program}}/{{host}}/{{name}}"),
        ttl: Duration::from_secs(ttl),
        tls: Default::default(),
    }
}

fn dead_url() -> String {
    format!("http://127.0.0.1:{}", free_port())
}

/// The object a member that is in should have in etcd.
fn expected(m: &Member) -> Value {
    let r = &m.registration;
    json!({
        "name": r.name,
        "program": r.program,
        "instance": r.instance,
        "host": r.host,
        "address": r.address,
        "pid": m.pid,
        "since": m.since.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
    })
}

#[track_caller]
fn assert_all_ok(applied: &Applied, names: &[&str]) {
    let mut got: Vec<&str> = applied.iter().map(|(n, _)| n.as_str()).collect();
    got.sort();
    let mut want = names.to_vec();
    want.sort();
    assert_eq!(got, want, "processes reported: {applied:?}");
    assert!(
        applied.iter().all(|(_, r)| r.is_ok()),
        "expected every result Ok: {applied:?}"
    );
}

/// The revision etcd is at (it moves with every write).
fn revision(etcd: &EtcdServer) -> u64 {
    let out = etcd.ctl(&["get", "/", "-w", "json"]);
    let reply: Value = serde_json::from_str(&out).expect("etcdctl JSON");
    reply["header"]["revision"].as_u64().expect("revision")
}

/// Calls `on_timer` each time `next_timer` is due, for `period`; returns what
/// each call reported.
async fn drive(etcd: &mut Etcd, period: Duration) -> Vec<Applied> {
    let end = Instant::now() + period;
    let mut reports = Vec::new();
    while Instant::now() < end {
        let wake = etcd.next_timer().map_or(end, |t| t.min(end));
        tokio::time::sleep_until(wake).await;
        if etcd.next_timer().is_some_and(|t| t <= Instant::now()) {
            reports.push(etcd.on_timer().await);
        }
    }
    reports
}

/// Polls `list` until `pred` holds on the stored objects, until `deadline`.
async fn wait_list(
    endpoints: &[String],
    deadline: Instant,
    desc: &str,
    pred: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    loop {
        let objects = list(endpoints, TlsSettings::default(), PREFIX)
            .await
            .expect("list");
        if pred(&objects) {
            return objects;
        }
        assert!(
            Instant::now() < deadline,
            "{desc}: not seen in time; stored: {objects:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn members_in_are_put_on_one_lease_and_the_others_deleted() {
    let server = EtcdServer::start();
    let mut etcd = Etcd::new(config(&[&server.url], 10));
    assert!(etcd.next_timer().is_none(), "no lease before any apply");

    let mut members = vec![
        member(0, Standing::In),
        member(1, Standing::Out),
        member(2, Standing::Draining),
    ];
    let applied = etcd.apply(&members).await;
    assert_all_ok(&applied, &["web:0", "web:1", "web:2"]);
    let stored = server.get_prefix(PREFIX);
    assert_eq!(stored.len(), 1, "only web:0 is in: {stored:?}");
    assert_eq!(stored[0].0, key(0));
    assert_eq!(stored[0].1, expected(&members[0]));
    let lease = stored[0].2;
    assert_ne!(lease, 0, "the key is attached to a lease");
    assert_eq!(
        list(
            std::slice::from_ref(&server.url),
            TlsSettings::default(),
            PREFIX
        )
        .await,
        Ok(vec![expected(&members[0])])
    );
    assert!(etcd.next_timer().is_some(), "a lease is kept alive");

    // Nothing changed: nothing is written.
    let before = revision(&server);
    assert_all_ok(&etcd.apply(&members).await, &["web:0", "web:1", "web:2"]);
    assert_eq!(
        revision(&server),
        before,
        "an unchanged apply wrote to etcd"
    );

    // A new process (restart: new pid and since) is put again; web:1 comes in.
    members[0].pid = Some(4242);
    members[0].since = Some(SystemTime::now());
    members[1].standing = Standing::In;
    assert_all_ok(&etcd.apply(&members).await, &["web:0", "web:1", "web:2"]);
    let stored = server.get_prefix(PREFIX);
    assert_eq!(
        stored,
        vec![
            (key(0), expected(&members[0]), lease),
            (key(1), expected(&members[1]), lease),
        ]
    );

    // Draining and Out leave etcd.
    members[0].standing = Standing::Draining;
    assert_all_ok(&etcd.apply(&members).await, &["web:0", "web:1", "web:2"]);
    assert_eq!(server.keys(PREFIX), vec![key(1)]);

    // A process gone from the config leaves too, and is reported.
    members.remove(1);
    members[0].standing = Standing::Out;
    assert_all_ok(&etcd.apply(&members).await, &["web:0", "web:1", "web:2"]);
    assert_eq!(server.keys(PREFIX), Vec::<String>::new());
    assert_all_ok(&etcd.apply(&members).await, &["web:0", "web:2"]);
    etcd.close().await;
}

#[tokio::test]
async fn keepalive_keeps_the_keys_past_the_ttl() {
    let server = EtcdServer::start();
    let mut etcd = Etcd::new(config(&[&server.url], 2));
    let members = vec![member(0, Standing::In), member(1, Standing::In)];
    let start = Instant::now();
    assert_all_ok(&etcd.apply(&members).await, &["web:0", "web:1"]);
    let due = etcd.next_timer().expect("a keep-alive is due");
    assert!(
        due <= start + Duration::from_secs(2),
        "keep-alive due {:?} after the grant, past the ttl",
        due - start
    );

    let reports = drive(&mut etcd, Duration::from_secs(5)).await;
    assert!(
        reports.len() >= 5,
        "about one keep-alive per ttl/3 over 5 s; got {}",
        reports.len()
    );
    assert!(
        reports.iter().all(Vec::is_empty),
        "renewals report nothing: {reports:?}"
    );
    assert_eq!(server.keys(PREFIX), vec![key(0), key(1)]);
    etcd.close().await;
}

#[tokio::test]
async fn without_keepalive_the_keys_expire_within_ttl_plus_1s() {
    let server = EtcdServer::start();
    let endpoints = vec![server.url.clone()];
    let mut etcd = Etcd::new(config(&[&server.url], 2));
    let start = Instant::now();
    assert_all_ok(&etcd.apply(&[member(0, Standing::In)]).await, &["web:0"]);
    assert_eq!(server.keys(PREFIX), vec![key(0)]);
    // As if minder died: no keep-alive, no revoke.
    drop(etcd);
    wait_list(
        &endpoints,
        start + Duration::from_secs(3),
        "keys gone within ttl + 1 s",
        <[Value]>::is_empty,
    )
    .await;
}

#[tokio::test]
async fn close_revokes_the_lease_and_its_keys_at_once() {
    let server = EtcdServer::start();
    let mut etcd = Etcd::new(config(&[&server.url], 10));
    let members = vec![member(0, Standing::In), member(1, Standing::In)];
    assert_all_ok(&etcd.apply(&members).await, &["web:0", "web:1"]);
    assert_eq!(server.keys(PREFIX).len(), 2);
    etcd.close().await;
    assert_eq!(server.keys(PREFIX), Vec::<String>::new());
    assert_eq!(
        server.ctl(&["lease", "list"]).trim(),
        "found 0 leases",
        "the lease is revoked"
    );
    assert!(etcd.next_timer().is_none());
    // A second close has nothing to do.
    etcd.close().await;
}

#[tokio::test]
async fn a_dead_first_endpoint_fails_over_to_the_second() {
    let server = EtcdServer::start();
    let dead = dead_url();
    let mut etcd = Etcd::new(config(&[&dead, &server.url], 2));
    assert_all_ok(&etcd.apply(&[member(0, Standing::In)]).await, &["web:0"]);
    assert_eq!(server.keys(PREFIX), vec![key(0)]);
    let reports = drive(&mut etcd, Duration::from_secs(3)).await;
    assert!(
        !reports.is_empty() && reports.iter().all(Vec::is_empty),
        "{reports:?}"
    );
    assert_eq!(server.keys(PREFIX), vec![key(0)]);
    assert_eq!(
        list(
            &[dead.clone(), server.url.clone()],
            TlsSettings::default(),
            PREFIX
        )
        .await
        .map(|v| v.len()),
        Ok(1)
    );
    etcd.close().await;
    assert_eq!(server.keys(PREFIX), Vec::<String>::new());
}

#[tokio::test]
async fn all_endpoints_dead_is_an_error_then_everything_is_put_when_etcd_comes() {
    let dead = dead_url();
    let port = free_port();
    let later = format!("http://127.0.0.1:{port}");
    let mut etcd = Etcd::new(config(&[&dead, &later], 10));
    let members = vec![
        member(0, Standing::In),
        member(1, Standing::In),
        member(2, Standing::Out),
    ];
    let started = Instant::now();
    let applied = etcd.apply(&members).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "apply took {:?}",
        started.elapsed()
    );
    assert_eq!(applied.len(), 3, "{applied:?}");
    for (name, result) in &applied[..2] {
        let error = result.as_ref().expect_err(name);
        assert!(
            error.starts_with(&format!("etcd {later}: ")) && error.contains("refused"),
            "{name}: {error}"
        );
    }
    assert_eq!(applied[2], ("web:2".to_string(), Ok(())));
    assert_eq!(
        list(
            &[dead.clone(), later.clone()],
            TlsSettings::default(),
            PREFIX
        )
        .await,
        Err(format!("etcd {later}: connection refused"))
    );

    let server = EtcdServer::start_on(port);
    assert_all_ok(&etcd.apply(&members).await, &["web:0", "web:1", "web:2"]);
    assert_eq!(server.keys(PREFIX), vec![key(0), key(1)]);
    etcd.close().await;
}

#[tokio::test]
async fn an_etcd_restarted_empty_gets_everything_again() {
    let port = free_port();
    let mut server = EtcdServer::start_on(port);
    let mut etcd = Etcd::new(config(&[&server.url], 10));
    let mut members = vec![member(0, Standing::In), member(1, Standing::In)];
    assert_all_ok(&etcd.apply(&members).await, &["web:0", "web:1"]);

    server.stop();
    members[1].pid = Some(7);
    let applied = etcd.apply(&members).await;
    assert!(applied[1].1.is_err(), "{applied:?}");

    // A new member with no data at all: our lease is unknown there (put
    // answers 404 code 5), so a new one is granted and both keys put.
    drop(server);
    let server = EtcdServer::start_on(port);
    assert_all_ok(&etcd.apply(&members).await, &["web:0", "web:1"]);
    let stored = server.get_prefix(PREFIX);
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert_eq!(stored[1].1, expected(&members[1]));
    assert_ne!(stored[0].2, 0);
    etcd.close().await;
}

#[tokio::test]
async fn a_lease_revoked_behind_our_back_is_granted_again() {
    let server = EtcdServer::start();
    let mut etcd = Etcd::new(config(&[&server.url], 2));
    let mut members = vec![
        member(0, Standing::In),
        member(1, Standing::In),
        member(2, Standing::Out),
    ];
    assert_all_ok(&etcd.apply(&members).await, &["web:0", "web:1", "web:2"]);
    let revoke = |server: &EtcdServer| {
        let stored = server.get_prefix(PREFIX);
        let lease = stored.first().expect("a key").2;
        server.ctl(&["lease", "revoke", &format!("{lease:x}")]);
        assert_eq!(server.keys(PREFIX), Vec::<String>::new());
        lease
    };

    // Seen by the keep-alive: reply without TTL.
    let old = revoke(&server);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut report = Vec::new();
    while report.is_empty() {
        assert!(
            Instant::now() < deadline,
            "no on_timer reported the lost lease"
        );
        let due = etcd.next_timer().expect("a keep-alive is due");
        tokio::time::sleep_until(due).await;
        report = etcd.on_timer().await;
    }
    assert_all_ok(&report, &["web:0", "web:1", "web:2"]);
    let stored = server.get_prefix(PREFIX);
    assert_eq!(
        stored.iter().map(|s| s.0.clone()).collect::<Vec<_>>(),
        vec![key(0), key(1)]
    );
    let new = stored[0].2;
    assert!(new != 0 && new != old && stored[1].2 == new, "{stored:?}");

    // Seen by a put: 404 code 5.
    let old = revoke(&server);
    members[0].pid = Some(99);
    assert_all_ok(&etcd.apply(&members).await, &["web:0", "web:1", "web:2"]);
    let stored = server.get_prefix(PREFIX);
    assert_eq!(stored.len(), 2, "both put again: {stored:?}");
    assert_eq!(stored[0].1, expected(&members[0]));
    assert!(
        stored[0].2 != old && stored[0].2 == stored[1].2,
        "{stored:?}"
    );

    // The new lease is kept alive.
    let reports = drive(&mut etcd, Duration::from_secs(3)).await;
    assert!(reports.iter().all(Vec::is_empty), "{reports:?}");
    assert_eq!(server.keys(PREFIX), vec![key(0), key(1)]);
    etcd.close().await;
}

#[tokio::test]
async fn an_endpoint_that_never_answers_costs_one_second() {
    // Connections complete in the kernel's backlog; nothing ever answers.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", hung.local_addr().expect("addr"));
    let mut etcd = Etcd::new(config(&[&url], 10));
    let started = Instant::now();
    let applied = etcd.apply(&[member(0, Standing::In)]).await;
    let took = started.elapsed();
    assert!(took < Duration::from_millis(2500), "apply took {took:?}");
    assert_eq!(
        applied,
        vec![(
            "web:0".to_string(),
            Err(format!("etcd {url}: no answer within 1s"))
        )]
    );
}

#[tokio::test]
async fn close_is_bounded_when_etcd_hangs() {
    use nix::sys::signal::{kill, Signal};
    let server = EtcdServer::start();
    let mut etcd = Etcd::new(config(&[&server.url], 10));
    assert_all_ok(&etcd.apply(&[member(0, Standing::In)]).await, &["web:0"]);
    kill(server.pid(), Signal::SIGSTOP).expect("SIGSTOP etcd");
    let started = Instant::now();
    etcd.close().await;
    let took = started.elapsed();
    kill(server.pid(), Signal::SIGCONT).expect("SIGCONT etcd");
    assert!(took < Duration::from_millis(1500), "close took {took:?}");
    assert!(etcd.next_timer().is_none());
}

#[tokio::test]
async fn over_tls_with_a_client_certificate_keys_are_put_and_listed() {
    let pki = Pki::new();
    let served = pki.issue_server_and_client("etcd", &["127.0.0.1"]);
    let client = pki.issue("minder", &["minder"], true, false);
    let server = EtcdServer::start_tls(Tls {
        ca: pki.ca_file(),
        cert: served.cert_file.clone(),
        key: served.key_file.clone(),
        client: (client.cert_file.clone(), client.key_file.clone()),
    });
    let trusted = TlsConfig {
        ca_file: Some(pki.ca_file()),
        ..TlsConfig::default()
    };
    let with_client = TlsConfig {
        client_cert: Some(client.cert_file.clone()),
        client_key: Some(client.key_file.clone()),
        ..trusted.clone()
    };
    let members = [member(0, Standing::In)];

    // Without minder's certificate etcd refuses, and the result says why.
    let mut refused = Etcd::new(EtcdConfig {
        tls: trusted,
        ..config(&[&server.url], 10)
    });
    let applied = refused.apply(&members).await;
    let error = format!("{:?}", applied[0].1);
    assert!(
        applied[0].1.is_err() && error.contains("certificate"),
        "{applied:?}"
    );
    assert!(server.keys(PREFIX).is_empty());

    let mut etcd = Etcd::new(EtcdConfig {
        tls: with_client.clone(),
        ..config(&[&server.url], 10)
    });
    assert_all_ok(&etcd.apply(&members).await, &["web:0"]);
    assert_eq!(server.keys(PREFIX), vec![key(0)]);
    assert_eq!(
        list(
            std::slice::from_ref(&server.url),
            with_client.settings(),
            PREFIX
        )
        .await,
        Ok(vec![expected(&members[0])])
    );
    etcd.close().await;
    assert!(server.keys(PREFIX).is_empty(), "close revoked the lease");
}
