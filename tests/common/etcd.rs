//! A real etcd for the registration tests: one member in a temp dir on free
//! loopback ports, stopped by PID on drop, and `etcdctl` against it.

use std::fs::{self, File};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use super::{free_port, http_get, POLL};

/// How long etcd may take to answer after spawn (groundwork: up to 0.92 s).
const START: Duration = Duration::from_secs(15);

/// TLS on an etcd's client URL: its certificate and key, and the CA that
/// signed it and the client certificates it requires (`client`, for etcdctl).
pub struct Tls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client: (PathBuf, PathBuf),
}

/// One etcd member, answering on `url`.
pub struct EtcdServer {
    child: Child,
    tls: Option<Tls>,
    /// Where its data and log are.
    pub dir: tempfile::TempDir,
    /// Client port.
    pub port: u16,
    /// `http://127.0.0.1:PORT` (`https://` with TLS).
    pub url: String,
}

impl EtcdServer {
    /// Starts etcd on a free port and waits until it answers.
    pub fn start() -> EtcdServer {
        EtcdServer::start_on(free_port())
    }

    /// Starts etcd with its client URL on `port` and waits until it answers.
    pub fn start_on(port: u16) -> EtcdServer {
        EtcdServer::start_with(port, None)
    }

    /// Starts etcd on a free port with an `https://` client URL that
    /// requires a client certificate, and waits until it answers.
    pub fn start_tls(tls: Tls) -> EtcdServer {
        EtcdServer::start_with(free_port(), Some(tls))
    }

    fn start_with(port: u16, tls: Option<Tls>) -> EtcdServer {
        let dir = tempfile::Builder::new()
            .prefix("minder-etcd-")
            .tempdir()
            .expect("creating a temp dir");
        let peer = free_port();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://127.0.0.1:{port}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = File::create(dir.path().join("etcd.log")).expect("creating etcd.log");
        let mut etcd = Command::new("etcd");
        if let Some(tls) = &tls {
            etcd.arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        let child = etcd
            .args(["--name", "t", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &url])
            .args(["--advertise-client-urls", &url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("t={peer_url}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup of etcd.log"))
            .stderr(log)
            .spawn()
            .expect("spawning `etcd` (Debian package etcd-server): is it installed?");
        let mut server = EtcdServer {
            child,
            tls,
            dir,
            port,
            url,
        };
        let deadline = Instant::now() + START;
        loop {
            let healthy = match &server.tls {
                None => {
                    matches!(http_get(port, "/health"), Ok((200, body)) if body.contains("true"))
                }
                Some(_) => server.etcdctl(&["endpoint", "health"]).status.success(),
            };
            if healthy {
                return server;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("etcd exited at start ({status}):\n{}", server.log());
            }
            if Instant::now() >= deadline {
                panic!("etcd did not answer within {START:?}:\n{}", server.log());
            }
            thread::sleep(POLL);
        }
    }

    /// Its PID.
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_else(|e| format!("<{e}>"))
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// Runs `etcdctl` (API v3) against this member; panics unless it exits 0.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = self.etcdctl(args);
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn etcdctl(&self, args: &[&str]) -> std::process::Output {
        let mut ctl = Command::new("etcdctl");
        if let Some(tls) = &self.tls {
            ctl.arg("--cacert")
                .arg(&tls.ca)
                .arg("--cert")
                .arg(&tls.client.0)
                .arg("--key")
                .arg(&tls.client.1);
        }
        ctl.env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.url, "--command-timeout=5s"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running `etcdctl` (Debian package etcd-client): is it installed?")
    }

    /// `(key, value, lease)` of every key under `prefix`, from
    /// `etcdctl get --prefix -w json` (lease 0: none).
    pub fn get_prefix(&self, prefix: &str) -> Vec<(String, Value, u64)> {
        let out = self.ctl(&["get", "--prefix", prefix, "-w", "json"]);
        let reply: Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("etcdctl -w json gave {out:?}: {e}"));
        let Some(kvs) = reply.get("kvs").and_then(Value::as_array) else {
            return Vec::new();
        };
        kvs.iter()
            .map(|kv| {
                let key = decode(kv["key"].as_str().expect("key"));
                let value = decode(kv["value"].as_str().unwrap_or(""));
                let value = serde_json::from_str(&value)
                    .unwrap_or_else(|e| panic!("{key}: {value:?} is not JSON: {e}"));
                (key, value, kv["lease"].as_u64().unwrap_or(0))
            })
            .collect()
    }

    /// Keys under `prefix`, sorted.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let mut keys: Vec<String> = self
            .get_prefix(prefix)
            .into_iter()
            .map(|(k, _, _)| k)
            .collect();
        keys.sort();
        keys
    }

    /// Stops it (SIGTERM, bounded wait, then SIGKILL), by PID.
    pub fn stop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        // A test may have left it stopped (SIGSTOP).
        let _ = kill(self.pid(), Signal::SIGCONT);
        let _ = kill(self.pid(), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("--- etcd log ({}) ---\n{}", self.url, self.log());
        }
        self.stop();
    }
}

/// etcdctl's JSON has keys and values in standard base64.
fn decode(text: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.trim_end_matches('=').bytes() {
        let v = ALPHABET
            .iter()
            .position(|&b| b == c)
            .unwrap_or_else(|| panic!("{text:?} is not base64"));
        acc = acc << 6 | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    String::from_utf8(out).expect("UTF-8 key or value")
}
