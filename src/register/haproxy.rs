//! HAProxy's runtime API: the servers of one backend, over the admin socket
//! of a `stats socket PATH level admin`.
//!
//! One command per connection, its reply read to EOF: HAProxy closes a
//! non-interactive connection after answering, and its replies are not
//! reliably ended by an empty line (`del server`'s success and several
//! errors end in a single newline), so EOF is the only end to trust.
//! Success is recognised by its text; any other reply is an error whose
//! first line is shown as it is.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::{Applied, Member, Standing};
use crate::config::HaproxyConfig;

/// Bound on one command (connect, send, read to EOF) and on a name lookup.
const TIMEOUT: Duration = Duration::from_secs(1);
/// How often the servers believed in are checked against what HAProxy
/// shows: a reload or restart of HAProxy (`systemctl reload haproxy`)
/// drops every server added at run time and puts the others back as its
/// config file has them, without a word to minder.
const VERIFY_EVERY: Duration = Duration::from_secs(10);
/// A reply longer than this is cut (ours are a line or two).
const REPLY_BOUND: u64 = 64 * 1024;

/// Drives the servers of one backend for one program's processes.
pub struct Haproxy {
    config: HaproxyConfig,
    /// Per process name: its server, and what HAProxy was last seen to show
    /// for it (`None`: unknown, everything is sent again).
    known: HashMap<String, Known>,
    /// The members of the last apply, sent again when a check finds
    /// HAProxy showing something else.
    last: Vec<Member>,
    /// When the next check is due (while some server is believed in).
    verify_at: Option<tokio::time::Instant>,
}

struct Known {
    server: String,
    shown: Option<Shown>,
}

/// What a server was brought to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shown {
    standing: Standing,
    /// Set while it is known to exist with this address.
    addr: Option<SocketAddr>,
}

/// Why a step failed.
#[derive(Debug)]
enum Fault {
    /// The socket could not be reached or answered nothing in time: all
    /// HAProxy shows is unknown from now on (it may have restarted).
    Unreachable(String),
    /// HAProxy answered something else than success.
    Reply(Reply),
    /// Anything else (an address that does not resolve).
    Other(String),
}

/// A reply to one command, sorted.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reply {
    Ok,
    NoBackend,
    NoServer,
    Exists,
    StillConnected,
    /// Anything else: its first line.
    Error(String),
}

fn classify(reply: &str) -> Reply {
    let line = reply.lines().map(str::trim).find(|l| !l.is_empty());
    let Some(line) = line else {
        // `set server ... state` answers just an empty line.
        return Reply::Ok;
    };
    match line {
        "New server registered." | "Server deleted." => Reply::Ok,
        // `show servers state` gives the first; `add`/`set`/`del` the second.
        "No such backend." | "Can't find backend." => Reply::NoBackend,
        "No such server." => Reply::NoServer,
        _ if line.starts_with("Already exists a server with the same name") => Reply::Exists,
        _ if line.starts_with("Server still has connections attached") => Reply::StillConnected,
        // `set server ... addr`: "no need to change the addr[, port changed ...]",
        // "IP changed from 'A' to 'B'[, port changed ...]".
        _ if line.starts_with("no need to change the addr")
            || line.starts_with("IP changed from") =>
        {
            Reply::Ok
        }
        _ => Reply::Error(line.to_string()),
    }
}

impl Haproxy {
    /// A backend for the servers of `config.backend`; nothing is sent until [`Haproxy::apply`].
    pub fn new(config: HaproxyConfig) -> Haproxy {
        Haproxy {
            config,
            known: HashMap::new(),
            last: Vec::new(),
            verify_at: None,
        }
    }

    /// Brings the backend's servers to show `members` (see the contract in
    /// [`crate::register`]): `in` is `state ready` at the member's address
    /// (added if missing), `draining` is `state drain`, `out` is `state maint`,
    /// and a process gone from `members` has its server put in maint and deleted.
    pub async fn apply(&mut self, members: &[Member]) -> Applied {
        self.last = members.to_vec();
        let first = self.pass(members).await;
        let results = if first.lost {
            // A server believed to exist was missing: HAProxy restarted
            // (dynamic servers do not survive that) and may lack others
            // that would never be sent again, so everything is sent anew.
            self.forget();
            self.pass(members).await.results
        } else {
            first.results
        };
        self.schedule_check();
        results
    }

    /// The next check of the servers believed in (see [`VERIFY_EVERY`]).
    pub fn next_timer(&self) -> Option<tokio::time::Instant> {
        self.verify_at
    }

    /// Checks that every server believed in is there and ready (one `show
    /// servers state`); if HAProxy shows anything else, everything is sent
    /// again. Results only when something was sent or the check failed.
    pub async fn on_timer(&mut self) -> Applied {
        self.verify_at = None;
        let believed_in: Vec<&str> = self
            .known
            .values()
            .filter(|k| k.shown.is_some_and(|s| s.standing == Standing::In))
            .map(|k| k.server.as_str())
            .collect();
        if believed_in.is_empty() {
            return Vec::new();
        }
        let backend = &self.config.backend;
        let shown = match exchange(
            &self.config.socket,
            &format!("show servers state {backend}"),
        )
        .await
        {
            Ok(reply) => ready_servers(&reply),
            Err(fault) => {
                let why = self.describe(fault, None);
                self.forget();
                self.schedule_check();
                return self
                    .last
                    .iter()
                    .map(|m| (m.registration.name.clone(), Err(why.clone())))
                    .collect();
            }
        };
        if believed_in.iter().all(|s| shown.contains(*s)) {
            self.schedule_check();
            return Vec::new();
        }
        tracing::info!(
            "haproxy backend {backend:?} lost servers minder put in (reloaded or restarted?): sending them again"
        );
        self.forget();
        let members = std::mem::take(&mut self.last);
        self.apply(&members).await
    }

    /// Nothing to undo: the servers stay as the last apply left them.
    pub async fn close(&mut self) {}

    fn schedule_check(&mut self) {
        let any_in = self
            .known
            .values()
            .any(|k| k.shown.is_some_and(|s| s.standing == Standing::In));
        self.verify_at = any_in.then(|| tokio::time::Instant::now() + VERIFY_EVERY);
    }

    fn forget(&mut self) {
        for known in self.known.values_mut() {
            known.shown = None;
        }
    }

    async fn pass(&mut self, members: &[Member]) -> Pass {
        let mut pass = Pass::default();
        // Once the socket is out of reach, the rest is not tried: each
        // attempt could cost the whole timeout.
        let mut unreachable: Option<String> = None;
        for member in members {
            let name = member.registration.name.clone();
            if let Some(why) = &unreachable {
                pass.results.push((name, Err(why.clone())));
                continue;
            }
            let result = self.member(member, &mut pass.lost).await;
            let result = match result {
                Ok(()) => Ok(()),
                Err(Fault::Unreachable(why)) => {
                    self.forget();
                    unreachable = Some(why.clone());
                    Err(why)
                }
                Err(fault) => Err(self.describe(fault, member.registration.server.as_deref())),
            };
            pass.results.push((name, result));
        }
        let present: std::collections::HashSet<&str> = members
            .iter()
            .map(|m| m.registration.name.as_str())
            .collect();
        let mut gone: Vec<(String, String)> = self
            .known
            .iter()
            .filter(|(name, _)| !present.contains(name.as_str()))
            .map(|(name, k)| (name.clone(), k.server.clone()))
            .collect();
        gone.sort();
        for (name, server) in gone {
            if let Some(why) = &unreachable {
                pass.results.push((name, Err(why.clone())));
                continue;
            }
            let result = match self.retire(&server).await {
                Ok(()) => {
                    self.known.remove(&name);
                    Ok(())
                }
                Err(Fault::Unreachable(why)) => {
                    self.forget();
                    unreachable = Some(why.clone());
                    Err(why)
                }
                Err(fault) => Err(self.describe(fault, Some(&server))),
            };
            pass.results.push((name, result));
        }
        if let Some(why) = unreachable {
            // What HAProxy shows is now unknown for every process, also
            // for those that needed nothing before the socket failed.
            for (_, result) in &mut pass.results {
                *result = Err(why.clone());
            }
        }
        pass
    }

    /// Brings one member's server to its standing; `lost` is set when a
    /// server believed to exist turned out not to.
    async fn member(&mut self, member: &Member, lost: &mut bool) -> Result<(), Fault> {
        let name = &member.registration.name;
        let Some(server) = member.registration.server.clone() else {
            return Err(Fault::Other(
                "no HAProxy server name for this process".to_string(),
            ));
        };
        if let Some(known) = self.known.get(name) {
            if known.server != server {
                // The server template changed: the old name must not keep taking traffic.
                let old = known.server.clone();
                self.retire(&old).await?;
                self.known.remove(name);
            }
        }
        let addr = match member.standing {
            Standing::In => Some(resolve(&member.registration.address).await?),
            Standing::Draining | Standing::Out => None,
        };
        let before = self.known.get(name).and_then(|k| k.shown);
        let unchanged = before.is_some_and(|b| {
            b.standing == member.standing && (member.standing != Standing::In || b.addr == addr)
        });
        if unchanged {
            return Ok(());
        }
        // Whatever happens below, what HAProxy shows is unsure until it succeeds.
        self.known.insert(
            name.clone(),
            Known {
                server: server.clone(),
                shown: None,
            },
        );
        let shown = match (member.standing, addr) {
            (Standing::In, Some(addr)) => {
                let believed = before.and_then(|b| b.addr);
                self.bring_in(&server, addr, believed, lost).await?;
                Shown {
                    standing: Standing::In,
                    addr: Some(addr),
                }
            }
            (standing, _) => {
                let state = if standing == Standing::Draining {
                    "drain"
                } else {
                    "maint"
                };
                let addr = match self.set(&server, &format!("state {state}")).await? {
                    Reply::Ok => before.and_then(|b| b.addr),
                    // A server that does not exist takes no traffic: nothing to do.
                    Reply::NoServer => {
                        if before.is_some_and(|b| b.addr.is_some()) {
                            *lost = true;
                        }
                        None
                    }
                    other => return Err(Fault::Reply(other)),
                };
                Shown { standing, addr }
            }
        };
        if let Some(known) = self.known.get_mut(name) {
            known.shown = Some(shown);
        }
        Ok(())
    }

    /// Makes sure `server` exists at `addr`, then puts it in `state ready`.
    /// `believed`: the address it is known to have (then it is not sent again).
    async fn bring_in(
        &self,
        server: &str,
        addr: SocketAddr,
        believed: Option<SocketAddr>,
        lost: &mut bool,
    ) -> Result<(), Fault> {
        if believed != Some(addr) {
            self.place(server, addr).await?;
        }
        match self.set(server, "state ready").await? {
            Reply::Ok => Ok(()),
            Reply::NoServer => {
                *lost = true;
                self.place(server, addr).await?;
                match self.set(server, "state ready").await? {
                    Reply::Ok => Ok(()),
                    other => Err(Fault::Reply(other)),
                }
            }
            other => Err(Fault::Reply(other)),
        }
    }

    /// Gives `server` the address `addr`, adding it (in maint, as HAProxy
    /// adds every dynamic server) if the backend lacks it.
    async fn place(&self, server: &str, addr: SocketAddr) -> Result<(), Fault> {
        let set_addr = format!("addr {} port {}", addr.ip(), addr.port());
        // Twice at most: an `add` that finds the server already there (added
        // by someone else meanwhile) is followed by a `set` again.
        for _ in 0..2 {
            match self.set(server, &set_addr).await? {
                Reply::Ok => return Ok(()),
                Reply::NoServer => {}
                other => return Err(Fault::Reply(other)),
            }
            let backend = &self.config.backend;
            // Brackets keep an IPv6 address apart from its port.
            match self
                .command(&format!("add server {backend}/{server} {addr}"))
                .await?
            {
                Reply::Ok => return Ok(()),
                Reply::Exists => {}
                other => return Err(Fault::Reply(other)),
            }
        }
        Err(Fault::Other(
            "the server kept appearing and disappearing while being added".to_string(),
        ))
    }

    /// Takes `server` out of the backend for good: maint, then `del server`.
    async fn retire(&self, server: &str) -> Result<(), Fault> {
        match self.set(server, "state maint").await? {
            Reply::Ok => {}
            // Already gone (deleted, or HAProxy restarted without it).
            Reply::NoServer => return Ok(()),
            other => return Err(Fault::Reply(other)),
        }
        let backend = &self.config.backend;
        let del = format!("del server {backend}/{server}");
        match self.command(&del).await? {
            Reply::Ok | Reply::NoServer => Ok(()),
            Reply::StillConnected => {
                // Its process has left the config: what it still serves is cut,
                // as HAProxy refuses to delete a server with sessions attached.
                // Idle pooled connections are not sessions and may keep it
                // refusing until HAProxy purges them; the caller retries.
                let shutdown = format!("shutdown sessions server {backend}/{server}");
                match self.command(&shutdown).await? {
                    Reply::Ok | Reply::NoServer => {}
                    other => return Err(Fault::Reply(other)),
                }
                match self.command(&del).await? {
                    Reply::Ok | Reply::NoServer => Ok(()),
                    other => Err(Fault::Reply(other)),
                }
            }
            other => Err(Fault::Reply(other)),
        }
    }

    /// `set server BACKEND/SERVER WHAT`.
    async fn set(&self, server: &str, what: &str) -> Result<Reply, Fault> {
        let backend = &self.config.backend;
        self.command(&format!("set server {backend}/{server} {what}"))
            .await
    }

    /// Sends one command on a connection of its own and sorts the reply.
    async fn command(&self, command: &str) -> Result<Reply, Fault> {
        let reply = exchange(&self.config.socket, command).await?;
        tracing::debug!(command, reply = reply.trim_end(), "haproxy");
        Ok(classify(&reply))
    }

    fn describe(&self, fault: Fault, server: Option<&str>) -> String {
        let backend = &self.config.backend;
        match fault {
            Fault::Unreachable(why) => why,
            Fault::Other(why) => format!("haproxy: {why}"),
            Fault::Reply(Reply::NoBackend) => {
                format!("haproxy: backend {backend:?}: No such backend.")
            }
            Fault::Reply(reply) => {
                let text = match reply {
                    Reply::NoServer => "No such server.".to_string(),
                    Reply::Exists => {
                        "Already exists a server with the same name in backend.".to_string()
                    }
                    Reply::StillConnected => {
                        "Server still has connections attached to it, cannot remove it.".to_string()
                    }
                    Reply::Error(text) => text,
                    Reply::Ok | Reply::NoBackend => String::new(),
                };
                match server {
                    Some(server) => format!("haproxy: server \"{backend}/{server}\": {text}"),
                    None => format!("haproxy: backend {backend:?}: {text}"),
                }
            }
        }
    }
}

/// The servers `show servers state` lists as taking traffic: operational
/// (`srv_op_state` 2) and neither in maintenance nor draining
/// (`srv_admin_state` 0).
fn ready_servers(reply: &str) -> std::collections::HashSet<String> {
    reply
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (name, op, admin) = (f.get(3)?, f.get(5)?, f.get(6)?);
            (*op == "2" && *admin == "0").then(|| name.to_string())
        })
        .collect()
}

#[derive(Default)]
struct Pass {
    results: Applied,
    lost: bool,
}

/// One command on its own connection, the reply read to EOF; all of it
/// bounded by [`TIMEOUT`].
async fn exchange(socket: &Path, command: &str) -> Result<String, Fault> {
    let at = |what: &str, e: std::io::Error| {
        let why = match e.raw_os_error() {
            Some(errno) => nix::errno::Errno::from_raw(errno).desc().to_string(),
            None => e.to_string(),
        };
        Fault::Unreachable(format!("haproxy {}: {what}: {why}", socket.display()))
    };
    let talk = async {
        let mut conn = UnixStream::connect(socket)
            .await
            .map_err(|e| at("connect", e))?;
        let mut line = command.as_bytes().to_vec();
        line.push(b'\n');
        conn.write_all(&line).await.map_err(|e| at("send", e))?;
        let mut reply = Vec::new();
        (&mut conn)
            .take(REPLY_BOUND)
            .read_to_end(&mut reply)
            .await
            .map_err(|e| at("read", e))?;
        Ok(String::from_utf8_lossy(&reply).into_owned())
    };
    match tokio::time::timeout(TIMEOUT, talk).await {
        Ok(result) => result,
        Err(_) => Err(Fault::Unreachable(format!(
            "haproxy {}: no reply to {command:?} within {}",
            socket.display(),
            crate::text::short_duration(TIMEOUT)
        ))),
    }
}

/// `HOST:PORT` as an IP address and port.
///
/// HAProxy takes a host name silently and never resolves it without a
/// `resolvers` section (`add server` gives a server with no address) and
/// refuses one in `set server ... addr`: so the name is resolved here, at
/// each apply that sends the address, and the first IPv4 address it has
/// (else the first) is sent. A name whose addresses change is followed at
/// the next apply, not in between.
async fn resolve(address: &str) -> Result<SocketAddr, Fault> {
    let bad = |why: &str| Fault::Other(format!("address {address:?}: {why}"));
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| bad("no port (HOST:PORT)"))?;
    let port: u16 = match port.parse() {
        Ok(p) if p > 0 => p,
        _ => return Err(bad("the port is not a number in 1..=65535")),
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let found = tokio::time::timeout(TIMEOUT, tokio::net::lookup_host((host, port)))
        .await
        .map_err(|_| bad("no answer from the resolver within 1s"))?
        .map_err(|e| bad(&format!("cannot resolve {host:?}: {e}")))?;
    let found: Vec<SocketAddr> = found.collect();
    found
        .iter()
        .find(|a| a.is_ipv4())
        .or(found.first())
        .copied()
        .ok_or_else(|| bad(&format!("{host:?} has no address")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_servers_are_read_from_show_servers_state() {
        let reply = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n\
            3 web 1 web_0 127.0.0.1 2 0 1 1 5 1 0 0 0 0 0 0 - 9001 - 0 0 - - 0\n\
            3 web 2 web_1 127.0.0.1 0 1 1 1 5 1 0 0 0 0 0 0 - 9002 - 0 0 - - 0\n\
            3 web 3 web_2 127.0.0.1 2 8 1 1 5 1 0 0 0 0 0 0 - 9003 - 0 0 - - 0\n";
        let ready = ready_servers(reply);
        assert_eq!(ready.into_iter().collect::<Vec<_>>(), ["web_0"]);
    }

    #[test]
    fn replies_are_sorted_by_their_text() {
        assert_eq!(classify("\n"), Reply::Ok);
        assert_eq!(classify(""), Reply::Ok);
        assert_eq!(classify("New server registered.\n\n"), Reply::Ok);
        assert_eq!(classify("Server deleted.\n"), Reply::Ok);
        assert_eq!(
            classify("no need to change the addr, port changed from '18082' to '18081' by 'stats socket command'\n\n"),
            Reply::Ok
        );
        assert_eq!(
            classify("IP changed from '127.0.0.1' to '127.0.0.2' by 'stats socket command'\n\n"),
            Reply::Ok
        );
        assert_eq!(classify("No such backend.\n"), Reply::NoBackend);
        assert_eq!(classify("Can't find backend.\n\n"), Reply::NoBackend);
        assert_eq!(classify("No such server.\n\n"), Reply::NoServer);
        assert_eq!(
            classify("Already exists a server with the same name in backend.\n\n"),
            Reply::Exists
        );
        assert_eq!(
            classify("Server still has connections attached to it, cannot remove it.\n"),
            Reply::StillConnected
        );
        assert_eq!(
            classify("Only servers in maintenance mode can be deleted.\n"),
            Reply::Error("Only servers in maintenance mode can be deleted.".into())
        );
        assert_eq!(
            classify("Unknown command, but maybe one of the following ones is a better match:\n  add map\n\n"),
            Reply::Error(
                "Unknown command, but maybe one of the following ones is a better match:".into()
            )
        );
    }

    #[tokio::test]
    async fn addresses_become_ip_and_port() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            resolve("127.0.0.1:8080").await.unwrap(),
            at("127.0.0.1:8080")
        );
        assert_eq!(resolve("[::1]:80").await.unwrap(), at("[::1]:80"));
        assert_eq!(resolve("localhost:80").await.unwrap().port(), 80);
        for bad in ["127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000", "h:x"] {
            assert!(resolve(bad).await.is_err(), "{bad}");
        }
    }
}
