//! A real HAProxy for the registration tests: started in a test's directory
//! on a free loopback port with an admin socket, stopped by PID. Also the
//! small named HTTP servers the balancers send traffic to (the nginx tests
//! use them too).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long a balancer may take to start answering.
pub const START: Duration = Duration::from_secs(5);

/// Polls `cond` until it holds, panicking with `what` after `within`.
pub fn eventually(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        thread::sleep(super::POLL);
    }
}

/// Stops a child we started by its PID: SIGTERM, then SIGKILL if it lingers.
/// A child already collected (by a test's reaper) is left alone.
pub fn stop_child(child: &mut Child) {
    match child.try_wait() {
        Ok(None) => {}
        // Exited already, or collected by someone else: its PID is not ours any more.
        Ok(Some(_)) | Err(_) => return,
    }
    let pid = Pid::from_raw(child.id() as i32);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) if Instant::now() >= deadline => {
                let _ = kill(pid, Signal::SIGKILL);
                let _ = child.wait();
                return;
            }
            Ok(None) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// An HAProxy with backends `web` and `other` (both `balance roundrobin`,
/// no server), a frontend on `frontend` sending to `web`.
pub struct Haproxy {
    /// Its directory (config, socket, log).
    pub dir: PathBuf,
    /// The admin socket.
    pub socket: PathBuf,
    /// The frontend's loopback port.
    pub frontend: u16,
    child: Option<Child>,
}

/// One line of `show servers state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerState {
    /// srv_addr (`-` when it has none).
    pub addr: String,
    /// srv_op_state: 0 stopped, 2 running.
    pub op: u32,
    /// srv_admin_state: 0 ready, 1 forced maint, 8 forced drain.
    pub admin: u32,
    /// srv_port.
    pub port: u16,
}

impl ServerState {
    /// Taking traffic.
    pub fn ready(&self) -> bool {
        self.op == 2 && self.admin == 0
    }
    /// `state drain`.
    pub fn draining(&self) -> bool {
        self.admin & 8 != 0 && self.admin & 1 == 0
    }
    /// `state maint`.
    pub fn maint(&self) -> bool {
        self.admin & 1 != 0
    }
}

impl Haproxy {
    /// Writes the config in `dir`; not started yet.
    pub fn new(dir: &Path) -> Haproxy {
        let frontend = super::free_port();
        let socket = dir.join("admin.sock");
        let cfg = format!(
            "global\n    stats socket {} level admin mode 600\n    pidfile {}\n\
             defaults\n    mode http\n    timeout connect 1s\n    timeout client 5s\n    timeout server 5s\n\
             frontend fe\n    bind 127.0.0.1:{frontend}\n    default_backend web\n\
             backend web\n    balance roundrobin\n\
             backend other\n    balance roundrobin\n",
            socket.display(),
            dir.join("haproxy.pid").display(),
        );
        std::fs::write(dir.join("haproxy.cfg"), cfg).expect("writing haproxy.cfg");
        Haproxy {
            dir: dir.to_path_buf(),
            socket,
            frontend,
            child: None,
        }
    }

    /// Starts it (`haproxy -f CFG -db`) and waits until its socket answers.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "haproxy is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("haproxy.log"))
            .expect("haproxy.log");
        let child = Command::new("haproxy")
            .arg("-f")
            .arg(self.dir.join("haproxy.cfg"))
            .arg("-db")
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting haproxy (is it installed?): {e}"));
        self.child = Some(child);
        eventually("haproxy's admin socket answers", START, || {
            self.try_command("show version")
                .is_ok_and(|r| !r.trim().is_empty())
        });
    }

    /// Stops it and waits for its end.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child);
        }
    }

    /// One command on the admin socket, the reply read to EOF.
    pub fn try_command(&self, command: &str) -> std::io::Result<String> {
        let mut conn = UnixStream::connect(&self.socket)?;
        conn.set_read_timeout(Some(Duration::from_secs(2)))?;
        conn.write_all(format!("{command}\n").as_bytes())?;
        let mut reply = String::new();
        conn.read_to_string(&mut reply)?;
        Ok(reply)
    }

    /// As [`Haproxy::try_command`], panicking on a socket error.
    pub fn command(&self, command: &str) -> String {
        self.try_command(command)
            .unwrap_or_else(|e| panic!("{command:?} on {}: {e}", self.socket.display()))
    }

    /// `show servers state BACKEND`, by server name.
    pub fn servers(&self, backend: &str) -> BTreeMap<String, ServerState> {
        let reply = self.command(&format!("show servers state {backend}"));
        reply
            .lines()
            .skip(1)
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                assert!(f.len() > 18, "a short line in {reply:?}");
                let num = |i: usize| -> u32 { f[i].parse().expect("a number") };
                (
                    f[3].to_string(),
                    ServerState {
                        addr: f[4].to_string(),
                        op: num(5),
                        admin: num(6),
                        port: f[18].parse().expect("a port"),
                    },
                )
            })
            .collect()
    }

    /// The body (or `HTTPnnn`) of each of `n` requests through the frontend, counted.
    pub fn traffic(&self, n: usize) -> BTreeMap<String, usize> {
        traffic(self.frontend, n)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `n` requests to 127.0.0.1:`port`, each on a new connection: who answered
/// (the body of a 200, else `HTTPnnn` or the error), counted.
pub fn traffic(port: u16, n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let who = match super::http_get(port, "/") {
            Ok((200, body)) => body,
            Ok((status, _)) => format!("HTTP{status}"),
            Err(e) => e,
        };
        *seen.entry(who).or_insert(0) += 1;
    }
    seen
}

/// Who answered, as a sorted list of names.
pub fn names(seen: &BTreeMap<String, usize>) -> Vec<&str> {
    seen.keys().map(String::as_str).collect()
}

/// An HTTP server on a free loopback port answering every request with its
/// name; `/hold` is answered only once [`NameServer::release`] is called.
pub struct NameServer {
    /// What it answers.
    pub name: String,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Requests received so far (counted when their head has been read).
    pub requests: Arc<AtomicUsize>,
    released: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl NameServer {
    /// Starts it.
    pub fn start(name: &str) -> NameServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
        let port = listener.local_addr().expect("local address").port();
        let server = NameServer {
            name: name.to_string(),
            port,
            requests: Arc::new(AtomicUsize::new(0)),
            released: Arc::new(AtomicBool::new(false)),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (name, requests, released, stop) = (
            server.name.clone(),
            server.requests.clone(),
            server.released.clone(),
            server.stop.clone(),
        );
        thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (name, requests, released) = (name.clone(), requests.clone(), released.clone());
                thread::spawn(move || answer(conn, &name, &requests, &released));
            }
        });
        server
    }

    /// `HOST:PORT` of it.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Lets held requests (`/hold`) be answered.
    pub fn release(&self) {
        self.released.store(true, Ordering::SeqCst);
    }
}

impl Drop for NameServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.release();
        // Wakes the accept loop so that it sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn answer(mut conn: TcpStream, name: &str, requests: &AtomicUsize, released: &AtomicBool) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    requests.fetch_add(1, Ordering::SeqCst);
    if head.starts_with(b"GET /hold ") {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !released.load(Ordering::SeqCst) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
    }
    let _ = write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{name}",
        name.len()
    );
}
