//! minder's HTTPS client against real TLS servers on 127.0.0.1, with a
//! private CA and certificates made by the test: trust through `ca_file`,
//! certificate problems named, `server_name`, `insecure`, mutual TLS and
//! connection reuse.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

mod common;

use common::pki::{Issued, Pki};
use minder::http::{Client, TlsSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A TLS server on 127.0.0.1 answering every HTTP/1.1 request with `200 ok`
/// on a kept connection; it counts the connections it accepted and keeps the
/// heads of the requests it read.
struct Server {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// `client_ca`: a client certificate signed by this CA is required.
    async fn start(cert: &Issued, client_ca: Option<&Path>) -> Server {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                let pem = std::fs::read(ca).unwrap();
                for c in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
                    roots.add(c.unwrap()).unwrap();
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    roots.into(),
                    provider,
                )
                .build()
                .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder
            .with_single_cert(vec![cert.der.clone()], cert.key.clone_key())
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (counted, recorded) = (connections.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut pending = Vec::new();
                    let mut chunk = [0u8; 4096];
                    // At most 100 requests on one connection.
                    for _ in 0..100 {
                        let end = loop {
                            if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                                break end;
                            }
                            match tls.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => pending.extend_from_slice(&chunk[..n]),
                            }
                        };
                        let head = String::from_utf8_lossy(&pending[..end]).to_string();
                        pending.drain(..end + 4);
                        // A body (a webhook's POST) is recorded after the head.
                        let length: usize = head
                            .lines()
                            .find_map(|l| {
                                let (name, value) = l.split_once(':')?;
                                name.eq_ignore_ascii_case("content-length")
                                    .then(|| value.trim().parse().ok())?
                            })
                            .unwrap_or(0);
                        while pending.len() < length {
                            match tls.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => pending.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let body: Vec<u8> = pending.drain(..length).collect();
                        recorded
                            .lock()
                            .unwrap()
                            .push(format!("{head}\r\n\r\n{}", String::from_utf8_lossy(&body)));
                        let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                        if tls.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Server {
            addr,
            connections,
            requests,
        }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}/health", self.addr.port())
    }
}

async fn get(tls: TlsSettings, url: &str) -> Result<u16, String> {
    Client::new(tls)
        .request("GET", url, &[], None, 1024)
        .await
        .map(|r| r.status)
}

#[tokio::test]
async fn a_server_trusted_through_ca_file_answers() {
    let pki = Pki::new();
    let server = Server::start(&pki.issue("ip", &["127.0.0.1"], false, false), None).await;
    let tls = TlsSettings {
        ca_file: Some(pki.ca_file()),
        ..TlsSettings::default()
    };
    let response = Client::new(tls)
        .request("GET", &server.url(), &[("X-Probe", "1")], None, 1024)
        .await
        .unwrap();
    assert_eq!(
        (response.status, response.body.as_slice()),
        (200, &b"ok"[..])
    );
    let heads = server.requests.lock().unwrap().clone();
    assert_eq!(heads.len(), 1);
    assert!(
        heads[0].starts_with("GET /health HTTP/1.1\r\n"),
        "{heads:?}"
    );
    assert!(heads[0].contains("\r\nX-Probe: 1"), "{heads:?}");
}

#[tokio::test]
async fn an_unknown_authority_is_named() {
    let pki = Pki::new();
    let server = Server::start(&pki.issue("ip", &["127.0.0.1"], false, false), None).await;
    let why = get(TlsSettings::default(), &server.url())
        .await
        .unwrap_err();
    assert_eq!(why, "certificate signed by an unknown authority");
    assert!(server.requests.lock().unwrap().is_empty());
}

#[tokio::test]
async fn an_expired_certificate_is_named() {
    let pki = Pki::new();
    let server = Server::start(&pki.issue("old", &["127.0.0.1"], false, true), None).await;
    let tls = TlsSettings {
        ca_file: Some(pki.ca_file()),
        ..TlsSettings::default()
    };
    assert_eq!(
        get(tls, &server.url()).await.unwrap_err(),
        "certificate expired"
    );
}

#[tokio::test]
async fn server_name_is_the_name_verified() {
    let pki = Pki::new();
    let server = Server::start(&pki.issue("web", &["web.test"], false, false), None).await;
    let with_name = |name: Option<&str>| TlsSettings {
        ca_file: Some(pki.ca_file()),
        server_name: name.map(str::to_string),
        ..TlsSettings::default()
    };
    assert_eq!(
        get(with_name(Some("web.test")), &server.url()).await,
        Ok(200)
    );
    assert_eq!(
        get(with_name(Some("api.test")), &server.url())
            .await
            .unwrap_err(),
        "certificate not valid for \"api.test\""
    );
    // Without server_name, the URL's host (127.0.0.1) is not in the certificate.
    assert_eq!(
        get(with_name(None), &server.url()).await.unwrap_err(),
        "certificate not valid for \"127.0.0.1\""
    );
}

#[tokio::test]
async fn insecure_accepts_an_untrusted_server() {
    let pki = Pki::new();
    let server = Server::start(&pki.issue("web", &["web.test"], false, false), None).await;
    let tls = TlsSettings {
        insecure: true,
        ..TlsSettings::default()
    };
    assert_eq!(get(tls, &server.url()).await, Ok(200));
    assert_eq!(server.requests.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn mutual_tls_with_and_without_a_client_certificate() {
    let pki = Pki::new();
    let server_cert = pki.issue("ip", &["127.0.0.1"], false, false);
    let server = Server::start(&server_cert, Some(&pki.ca_file())).await;
    let client = pki.issue("client", &["minder.test"], true, false);
    let with_cert = TlsSettings {
        ca_file: Some(pki.ca_file()),
        client_cert: Some(client.cert_file.clone()),
        client_key: Some(client.key_file.clone()),
        ..TlsSettings::default()
    };
    assert_eq!(get(with_cert, &server.url()).await, Ok(200));
    let without = TlsSettings {
        ca_file: Some(pki.ca_file()),
        ..TlsSettings::default()
    };
    assert_eq!(
        get(without, &server.url()).await.unwrap_err(),
        "the server wants a client certificate"
    );
    // A certificate from another CA is refused by the server.
    let other_ca = Pki::named("another CA");
    let other = other_ca.issue("stranger", &["minder.test"], true, false);
    let stranger = TlsSettings {
        ca_file: Some(pki.ca_file()),
        client_cert: Some(other.cert_file.clone()),
        client_key: Some(other.key_file.clone()),
        ..TlsSettings::default()
    };
    assert_eq!(
        get(stranger, &server.url()).await.unwrap_err(),
        "the server refused the client certificate"
    );
    assert_eq!(server.requests.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_target_keeps_its_connection() {
    let pki = Pki::new();
    let server = Server::start(&pki.issue("ip", &["127.0.0.1"], false, false), None).await;
    let client = Client::new(TlsSettings {
        ca_file: Some(pki.ca_file()),
        ..TlsSettings::default()
    });
    for _ in 0..5 {
        let response = client
            .request("GET", &server.url(), &[], None, 1024)
            .await
            .unwrap();
        assert_eq!(response.status, 200);
    }
    assert_eq!(server.requests.lock().unwrap().len(), 5);
    assert_eq!(server.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_connection_the_server_closed_is_replaced_once() {
    // A plain server that answers one request per connection and then
    // closes it without saying so (no `Connection: close`).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/x", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let head = minder::http::read_request_head(&mut tcp).await;
            if head.is_ok() {
                let _ = tcp.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await;
            }
            // Dropped: closed after one answer.
        }
    });
    let client = Client::new(TlsSettings::default());
    for _ in 0..3 {
        let response = client.request("GET", &url, &[], None, 1024).await.unwrap();
        assert_eq!(response.status, 204);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn bodies_past_the_bound_are_cut_and_the_connection_kept() {
    // A plain server on one kept connection: a body by its length, then a
    // chunked one, both longer than the client's bound.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let page = "x".repeat(3000);
                let replies = [
                    format!("HTTP/1.1 200 OK\r\nContent-Length: 3000\r\n\r\n{page}"),
                    format!(
                        "HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n{:x}\r\n{page}\r\n0\r\n\r\n",
                        page.len()
                    ),
                    "HTTP/1.1 204 No Content\r\n\r\n".to_string(),
                ];
                let mut pending = Vec::new();
                let mut chunk = [0u8; 1024];
                for reply in replies {
                    let end = loop {
                        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                            break end;
                        }
                        match tcp.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => pending.extend_from_slice(&chunk[..n]),
                        }
                    };
                    pending.drain(..end + 4);
                    if tcp.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let client = Client::new(TlsSettings::default());
    let first = client.request("GET", &url, &[], None, 10).await.unwrap();
    assert_eq!(
        (first.status, first.body.as_slice()),
        (200, &b"xxxxxxxxxx"[..])
    );
    let second = client.request("GET", &url, &[], None, 10).await.unwrap();
    assert_eq!(
        (second.status, second.body.as_slice()),
        (503, &b"helloxxxxx"[..])
    );
    let third = client.request("GET", &url, &[], None, 10).await.unwrap();
    assert_eq!((third.status, third.body.len()), (204, 0));
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_missing_ca_file_is_named_before_the_server_is_tried() {
    // Nothing listens on this port once the listener is gone.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/", listener.local_addr().unwrap());
    drop(listener);
    let tls = TlsSettings {
        ca_file: Some("/nonexistent/ca.pem".into()),
        ..TlsSettings::default()
    };
    assert_eq!(
        get(tls, &url).await.unwrap_err(),
        "ca_file /nonexistent/ca.pem: no such file or directory"
    );
    assert_eq!(
        get(TlsSettings::default(), &url).await.unwrap_err(),
        "connection refused"
    );
}

/// Through the daemon: an `https://` check trusted through `ca_file` and
/// verified for `server_name` makes its process healthy on one kept
/// connection; without the CA the check names the certificate problem.
#[tokio::test]
async fn a_daemon_probes_https_on_a_kept_connection_and_names_a_certificate_problem() {
    let pki = Pki::new();
    let cert = pki.issue("web", &["web.test"], false, false);
    let good = Server::start(&cert, None).await;
    let bad = Server::start(&cert, None).await;
    let check = |url: &str, tls: &str| {
        format!(
            "[program.{{name}}.health]\nhttp = {url:?}\ninterval = \"100ms\"\nstart_period = \"30s\"\n{tls}"
        )
    };
    let body = common::program(
        "good",
        &[],
        &check(
            &good.url(),
            &format!(
                "ca_file = {:?}\nserver_name = \"web.test\"",
                pki.ca_file().display().to_string()
            ),
        )
        .replace("{name}", "good"),
    ) + &common::program("bad", &[], &check(&bad.url(), "").replace("{name}", "bad"));
    // The daemon's harness waits with blocking sleeps: off the runtime's threads.
    let good_connections = good.connections.clone();
    let good_requests = good.requests.clone();
    tokio::task::spawn_blocking(move || {
        let d = common::Daemon::start(&body);
        let web = d.wait_state("good", "running");
        assert_eq!(web.health, "healthy", "{web:?}");
        d.wait_for("a few probes", common::WAIT, |_| {
            good_requests.lock().unwrap().len() >= 4
        });
        assert_eq!(
            good_connections.load(Ordering::SeqCst),
            1,
            "every probe on one kept connection"
        );
        let procs = d.wait_for("the bad check's words", common::WAIT, |procs| {
            common::find(procs, "bad").is_some_and(|p| {
                p.description
                    .contains("certificate signed by an unknown authority")
            })
        });
        let bad = common::get(&procs, "bad");
        assert_eq!(bad.state, "starting", "{bad:?}");
    })
    .await
    .unwrap();
}

/// An `https://` webhook through the daemon: trusted through `ca_file` for
/// `server_name`, signed with `secret_file`; the test recomputes the
/// signature from the body the server received.
#[tokio::test]
async fn an_https_webhook_is_delivered_signed() {
    use hmac::{Hmac, Mac};
    let pki = Pki::new();
    let server = Server::start(&pki.issue("hook", &["hooks.test"], false, false), None).await;
    let secret = pki.dir.path().join("hook.secret");
    std::fs::write(&secret, "hook key\n").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let hooks = format!(
        "[[supervisor.hooks]]\non = [\"exited\"]\nwebhook = {:?}\nca_file = {:?}\nserver_name = \"hooks.test\"\nsecret_file = {:?}\n",
        server.url().replace("/health", "/hook"),
        pki.ca_file().display().to_string(),
        secret.display().to_string(),
    );
    let body = common::program("once", &["--exit-after", "200"], "restart = \"never\"");
    let requests = server.requests.clone();
    let recorded = tokio::task::spawn_blocking(move || {
        let d = common::Daemon::start(&format!("{body}\n{hooks}"));
        d.wait_state("once", "exited");
        d.wait_for("the webhook", common::WAIT, |_| {
            !requests.lock().unwrap().is_empty()
        });
        requests.lock().unwrap()[0].clone()
    })
    .await
    .unwrap();
    let (head, sent) = recorded.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("POST /hook HTTP/1.1"), "{head}");
    let signature = head
        .lines()
        .find_map(|l| l.strip_prefix("X-Minder-Signature: sha256="))
        .unwrap_or_else(|| panic!("no signature in {head}"));
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"hook key").unwrap();
    mac.update(sent.as_bytes());
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(signature, expected);
    assert!(sent.contains("\"to\":\"exited\""), "{sent}");
}
