//! Configuration: TOML files -> a validated [`Config`].
//!
//! Loading happens in two stages: the files are parsed into a span-keeping
//! TOML tree (`toml::de::DeTable`), then walked table by table into the
//! validated types below, collecting every diagnostic (`FILE:LINE:COL:
//! message`) before failing. Nothing here does I/O after loading; the daemon
//! and `minder check` share it.
//!
//! - `load`: files, includes and checks across programs (duplicates, `depends_on`);
//! - `schema`: the keys of each table; `reader`: typed, error-collecting key access;
//! - `background`: reloads read off the event loop;
//! - `placeholder`, `deps`, `diff`, `signal`, `diagnostic`, `trust`: one concern each.
//!
//! A file with TOML syntax errors reports those only: checking the keys of a
//! half-parsed file would bury the real error under follow-ups.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;

mod background;
mod deps;
mod diagnostic;
mod diff;
mod load;
mod placeholder;
mod reader;
mod register;
pub use register::DEFAULT_KEY as DEFAULT_ETCD_KEY;
mod schema;
mod secret;
mod signal;
#[cfg(test)]
mod tests;
mod trust;

pub use background::{LoadResult, Reloads};
pub use diagnostic::Diagnostic;
pub use diff::{diff, ConfigDiff};
pub use load::{find_config, load, parse_str, Defaults};
pub use signal::parse_signal;
pub use trust::{check_trusted, Untrusted};

/// A whole, validated configuration: the main file plus its includes.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The main config file (absolute).
    pub path: PathBuf,
    /// The `[supervisor]` table.
    pub supervisor: SupervisorConfig,
    /// Every `[program.*]` table, in the order they were read (main file first, then includes).
    /// Shared, so the process actors of a program point at this one copy.
    pub programs: Vec<Arc<ProgramConfig>>,
}

/// Settings of minder itself (`[supervisor]`).
#[derive(Debug, Clone, PartialEq)]
pub struct SupervisorConfig {
    /// Path of the control socket.
    pub socket: PathBuf,
    /// File mode of the control socket.
    pub socket_mode: u32,
    /// Group whose members may use the control socket.
    pub socket_group: Option<String>,
    /// Directory of captured logs.
    pub log_dir: PathBuf,
    /// Level of minder's own log (`error`, `warn`, `info`, `debug`, `trace`).
    pub log_level: String,
    /// Upper bound for stopping everything on shutdown.
    pub shutdown_timeout: Duration,
    /// Format of minder's own log.
    pub log_format: LogFormat,
    /// Also write minder's own log to this file, rotated daily.
    pub log_file: Option<PathBuf>,
    /// How many daily files of `log_file` to keep.
    pub log_files: usize,
    /// Where to serve Prometheus metrics (`/metrics`, `/healthz`); off when `None`.
    pub metrics: Option<std::net::SocketAddr>,
    /// `[[supervisor.hooks]]`, in file order.
    pub hooks: Vec<HookConfig>,
    /// This host's name in registrations (`{hostname}` is the machine's hostname).
    pub host: String,
}

/// One `[[supervisor.hooks]]`: what to run when a process reaches a state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookConfig {
    /// Target states (`fatal`, `running`, ...) and health changes (`healthy`, `unhealthy`).
    pub on: Vec<String>,
    /// Programs it is for; empty means every program.
    pub programs: Vec<String>,
    /// What it does.
    pub action: HookAction,
    /// Bound for one run of the command, or one webhook attempt.
    pub timeout: Duration,
    /// Where the command runs: the main config file's directory.
    pub directory: PathBuf,
}

/// What a hook does with an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookAction {
    /// Runs this argv with the event on stdin and `MINDER_EVENT_*` variables.
    Command(Vec<String>),
    /// POSTs the event as JSON to a URL.
    Webhook(Box<Webhook>),
}

/// A webhook hook: where its events are POSTed and how they are signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// The `http://` or `https://` URL the event is POSTed to.
    pub url: String,
    /// `secret_file`'s key: with it, each request carries
    /// `X-Minder-Signature: sha256=<hex HMAC-SHA256 of the body>`.
    pub secret: Option<Secret>,
    /// How an `https://` URL is trusted (`ca_file`, `server_name`,
    /// `insecure`, `client_cert` + `client_key`).
    pub tls: TlsConfig,
}

/// A key read from a file (trailing newlines trimmed, never empty). Its
/// `Debug` prints `<secret>`, so no log or error shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<[u8]>);

impl Secret {
    /// Longest secret accepted, in bytes.
    pub const MAX_LEN: usize = 4096;

    /// The key's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

/// What `on` of a hook may name: the states of SPEC §3 and the two health changes.
pub const HOOK_EVENTS: &[&str] = &[
    "stopped",
    "starting",
    "running",
    "backoff",
    "stopping",
    "exited",
    "fatal",
    "healthy",
    "unhealthy",
];

/// Format of minder's own log (`[supervisor] log_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per event.
    Json,
}

/// Where one output stream of a program goes (`[program.*.logs] stdout/stderr`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    /// A file: `name` (placeholders unexpanded) relative to `dir` (the `log_dir`).
    File {
        /// The `log_dir` in force when the config was loaded.
        dir: PathBuf,
        /// The configured name, e.g. `{name}.stdout.log`.
        name: String,
    },
    /// Discarded: the stream goes to /dev/null, no pipe.
    Discard,
    /// stderr only: into the stdout pipe, so both streams keep their order.
    Stdout,
    /// minder's own stream of the same name (its stdout for stdout, its
    /// stderr for stderr), whole lines, prefixed `NAME | ` unless `prefix = false`.
    Inherit,
}

/// `[program.*.logs]`: capture and size rotation of a program's output.
#[derive(Debug, Clone, PartialEq)]
pub struct LogsConfig {
    /// Where stdout goes.
    pub stdout: LogTarget,
    /// Where stderr goes.
    pub stderr: LogTarget,
    /// Rotate before a write would make a file exceed this many bytes; 0 never rotates.
    pub max_size: u64,
    /// Rotated files kept (`.1` newest .. `.N` oldest).
    pub backups: u32,
    /// Prefix each line with an RFC 3339 time.
    pub timestamps: bool,
    /// Inherited streams: prefix each line with `NAME | `.
    pub prefix: bool,
}

impl Default for LogsConfig {
    fn default() -> Self {
        LogsConfig {
            stdout: LogTarget::File {
                dir: PathBuf::new(),
                name: "{name}.stdout.log".to_string(),
            },
            stderr: LogTarget::File {
                dir: PathBuf::new(),
                name: "{name}.stderr.log".to_string(),
            },
            max_size: 50_000_000,
            backups: 10,
            timestamps: false,
            prefix: true,
        }
    }
}

/// Where one stream of one process goes, with placeholders expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogDest {
    /// This file (absolute when `log_dir` is); shared, not copied, by the
    /// process's actor and capture tasks.
    File(std::sync::Arc<std::path::Path>),
    /// /dev/null.
    Discard,
    /// Merged into stdout (stderr only).
    Stdout,
    /// minder's own stdout or stderr (the stream of the same name).
    Inherit,
}

/// What to do when a process ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Restart whatever the exit.
    Always,
    /// Restart unless the exit code is one of `exit_codes`; a signal is a failure.
    OnFailure,
    /// Never restart.
    Never,
}

/// What a process going `fatal` leads to (`on_fatal`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFatal {
    /// It stays `fatal`; everything else runs on.
    Stay,
    /// minder stops everything, in order, and exits 1.
    Shutdown,
}

/// `[program.*.backoff]`: how restarts are spaced.
#[derive(Debug, Clone, PartialEq)]
pub struct BackoffConfig {
    /// Delay before the first retry.
    pub initial: Duration,
    /// Upper bound of the delay.
    pub max: Duration,
    /// Growth factor per consecutive failure (>= 1.0).
    pub multiplier: f64,
    /// +/- fraction of random spread (0.0..=1.0).
    pub jitter: f64,
    /// A run at least this long resets the delay to `initial`.
    pub reset_after: Duration,
    /// Retries after consecutive failed starts before `fatal`; 0 = never give up.
    pub max_retries: u32,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            multiplier: 2.0,
            jitter: 0.1,
            reset_after: Duration::from_secs(60),
            max_retries: 0,
        }
    }
}

/// One `[program.NAME]` table, validated, before instance expansion.
///
/// `command` and `environment` values still hold placeholders
/// (`{name}`, `{program}`, `{instance}`, `{port}`); [`ProgramConfig::processes`]
/// expands them.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgramConfig {
    /// The table name.
    pub name: String,
    /// The file this program was defined in.
    pub file: PathBuf,
    /// argv, never empty.
    pub command: Vec<String>,
    /// Working directory (default: the directory of the file defining the program).
    pub directory: PathBuf,
    /// Added to (or, with `clear_env`, replacing) minder's environment; sorted by key.
    pub environment: Vec<(String, String)>,
    /// Start from an empty environment.
    pub clear_env: bool,
    /// User to run as (name or numeric id).
    pub user: Option<String>,
    /// Group to run as (name or numeric id).
    pub group: Option<String>,
    /// Start with the daemon.
    pub autostart: bool,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// Expected exit codes (for `on-failure`).
    pub exit_codes: Vec<i32>,
    /// How long a process must stay up to count as started.
    pub start_secs: Duration,
    /// Signal sent to stop.
    pub stop_signal: Signal,
    /// Grace period after the stop signal before SIGKILL.
    pub stop_timeout: Duration,
    /// Signal the whole process group rather than the process alone.
    pub kill_group: bool,
    /// Number of processes (>= 1).
    pub instances: u32,
    /// Base port: `{port}` = port + instance.
    pub port: Option<u16>,
    /// Programs that must be running before this one starts.
    pub depends_on: Vec<String>,
    /// Restart spacing.
    pub backoff: BackoffConfig,
    /// What its processes going `fatal` leads to.
    pub on_fatal: OnFatal,
    /// Output capture and rotation.
    pub logs: LogsConfig,
    /// `[program.NAME.health]`: the probe that decides readiness and liveness.
    pub health: Option<HealthConfig>,
    /// The child reports readiness with `READY=1` on `NOTIFY_SOCKET`.
    pub notify: bool,
    /// With `notify` (and no `health`): `READY=1` must come within this.
    pub ready_timeout: Duration,
    /// Non-zero: the child must send `WATCHDOG=1` at least this often.
    pub watchdog: Duration,
    /// Sockets minder binds once and hands to every process as fds 3..
    pub listen: Vec<ListenAddress>,
    /// `LISTEN_FDNAMES`, one per `listen` entry.
    pub listen_names: Vec<String>,
    /// File mode of unix listen sockets.
    pub listen_mode: u32,
    /// `[program.NAME.register]`: the load balancers told which processes may take traffic.
    /// Boxed: most programs have none, and a thousand of them should not
    /// each carry its few hundred bytes.
    pub register: Option<Box<RegisterConfig>>,
    /// Each process in a cgroup (v2) of its own, when minder can make one.
    pub cgroup: bool,
    /// `memory_max`, `cpu_max`, `pids_max` and `limits` (SPEC §5.3).
    /// Boxed: most programs have none.
    pub resources: Option<Box<Resources>>,
}

/// What a program's processes may use (SPEC §5.3): cgroup v2 limits, and
/// resource limits set in the child with setrlimit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// `memory_max`: bytes, written to `memory.max`.
    pub memory_max: Option<u64>,
    /// `cpu_max`: percent of one CPU (`"150%"` = 150), written to `cpu.max`.
    pub cpu_max: Option<u32>,
    /// `pids_max`: written to `pids.max`.
    pub pids_max: Option<u64>,
    /// `limits`: set in the child (soft = hard), in the order written.
    pub limits: Vec<Rlimit>,
}

impl Resources {
    /// Whether nothing is limited (then a program's `resources` is `None`).
    pub fn is_empty(&self) -> bool {
        self.memory_max.is_none()
            && self.cpu_max.is_none()
            && self.pids_max.is_none()
            && self.limits.is_empty()
    }

    /// The cgroup limits that are set, by config key, in the order
    /// `memory_max`, `cpu_max`, `pids_max`: what needs a cgroup (and its
    /// controller: `memory`, `cpu`, `pids`).
    pub fn cgroup_keys(&self) -> Vec<&'static str> {
        [
            ("memory_max", self.memory_max.is_some()),
            ("cpu_max", self.cpu_max.is_some()),
            ("pids_max", self.pids_max.is_some()),
        ]
        .into_iter()
        .filter_map(|(key, set)| set.then_some(key))
        .collect()
    }
}

/// One entry of `limits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    /// Which limit (`RLIMIT_NOFILE` for `nofile`, ...), as setrlimit numbers it.
    pub resource: i32,
    /// The value for both soft and hard limit; `u64::MAX` is unlimited
    /// (`"infinity"`), RLIM_INFINITY to the kernel.
    pub value: u64,
}

impl Rlimit {
    /// The value meaning "no limit" (`"infinity"` or `"unlimited"` in the config).
    pub const INFINITY: u64 = u64::MAX;

    /// Its key in `limits` (`"nofile"`), or `"?"` for a number no key maps to.
    pub fn name(&self) -> &'static str {
        RLIMITS
            .iter()
            .find(|r| r.resource == self.resource)
            .map_or("?", |r| r.name)
    }

    /// Whether it is `"infinity"`.
    pub fn is_unlimited(&self) -> bool {
        self.value == Self::INFINITY
    }
}

/// One key of `limits`: a setrlimit resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RlimitKind {
    /// The key: the resource's name, lower-case, without `RLIMIT_`.
    pub name: &'static str,
    /// `libc::RLIMIT_*`.
    pub resource: i32,
    /// Counted in bytes, so a size string (`"64MiB"`) is accepted.
    pub bytes: bool,
}

/// An [`RlimitKind`]; `RLIMIT_*` are `c_uint` with glibc, `c_int` with musl.
macro_rules! rlimit_kind {
    ($name:literal, $resource:ident, $bytes:literal) => {
        RlimitKind {
            name: $name,
            resource: libc::$resource as i32,
            bytes: $bytes,
        }
    };
}

/// The keys `limits` accepts, in alphabetical order.
pub const RLIMITS: &[RlimitKind] = &[
    rlimit_kind!("as", RLIMIT_AS, true),
    rlimit_kind!("core", RLIMIT_CORE, true),
    rlimit_kind!("cpu", RLIMIT_CPU, false),
    rlimit_kind!("data", RLIMIT_DATA, true),
    rlimit_kind!("fsize", RLIMIT_FSIZE, true),
    rlimit_kind!("locks", RLIMIT_LOCKS, false),
    rlimit_kind!("memlock", RLIMIT_MEMLOCK, true),
    rlimit_kind!("msgqueue", RLIMIT_MSGQUEUE, true),
    rlimit_kind!("nice", RLIMIT_NICE, false),
    rlimit_kind!("nofile", RLIMIT_NOFILE, false),
    rlimit_kind!("nproc", RLIMIT_NPROC, false),
    rlimit_kind!("rss", RLIMIT_RSS, true),
    rlimit_kind!("rtprio", RLIMIT_RTPRIO, false),
    rlimit_kind!("rttime", RLIMIT_RTTIME, false),
    rlimit_kind!("sigpending", RLIMIT_SIGPENDING, false),
    rlimit_kind!("stack", RLIMIT_STACK, true),
];

impl TlsConfig {
    /// The HTTP client's settings for these keys.
    pub fn settings(&self) -> crate::http::TlsSettings {
        crate::http::TlsSettings {
            ca_file: self.ca_file.clone(),
            server_name: self.server_name.clone(),
            insecure: self.insecure,
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
        }
    }
}

/// `[program.NAME.register]` (SPEC §5.2). A process is *in* exactly while it
/// is `running` and its health is `healthy` or `none`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterConfig {
    /// What a balancer connects to, `HOST:PORT` with placeholders (default `127.0.0.1:{port}`).
    pub address: String,
    /// A stop, restart, removal or shutdown takes the process out, waits this long, then sends `stop_signal`.
    pub drain: Duration,
    /// HAProxy's runtime API.
    pub haproxy: Option<HaproxyConfig>,
    /// etcd v3 through its JSON gateway.
    pub etcd: Option<EtcdConfig>,
    /// A generated upstream file.
    pub file: Option<UpstreamFileConfig>,
}

/// One process as the balancers see it: [`RegisterConfig`]'s templates
/// expanded for it ([`ProgramConfig::registration`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// Process name (`web:1`).
    pub name: String,
    /// Program name.
    pub program: String,
    /// Instance number.
    pub instance: u32,
    /// This host's name (`[supervisor] host`).
    pub host: String,
    /// `HOST:PORT` a balancer connects to.
    pub address: String,
    /// Its HAProxy server name, with `[register.haproxy]`.
    pub server: Option<String>,
    /// Its etcd key, with `[register.etcd]`.
    pub key: Option<String>,
}

/// `[program.NAME.register.haproxy]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaproxyConfig {
    /// The admin socket (`stats socket PATH level admin`).
    pub socket: PathBuf,
    /// The backend the servers belong to.
    pub backend: String,
    /// Server name template (default `{program}_{instance}`).
    pub server: String,
}

/// `[program.NAME.register.etcd]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// `http://HOST:PORT` or `https://HOST:PORT` of etcd members, tried in order.
    pub endpoints: Vec<String>,
    /// Key template (default `/minder/services/{program}/{host}/{name}`).
    pub key: String,
    /// Lease TTL (at least 2 s, etcd's minimum).
    pub ttl: Duration,
    /// How `https://` endpoints are trusted, and minder's client certificate.
    pub tls: TlsConfig,
}

/// `[program.NAME.register.file]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamFileConfig {
    /// Where the file is written (placeholders `{program}`, `{host}`).
    pub path: PathBuf,
    /// What it holds.
    pub format: UpstreamFormat,
    /// Run after each change (at most once per 200 ms); empty: nothing.
    pub reload: Vec<String>,
    /// Where `reload` runs: the directory of the file defining the program
    /// (relative paths in it mean what they mean in the config).
    pub directory: PathBuf,
}

/// `format` of `[program.NAME.register.file]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFormat {
    /// `upstream PROGRAM { server ADDRESS; ... }`.
    Nginx,
    /// A JSON list of the registered objects.
    Json,
}

/// One `listen` entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ListenAddress {
    /// `tcp://127.0.0.1:8080`, `tcp://[::1]:8080`.
    Tcp(std::net::SocketAddr),
    /// `unix:///run/web.sock` (absolute path).
    Unix(PathBuf),
}

impl std::fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddress::Tcp(addr) => write!(f, "tcp://{addr}"),
            ListenAddress::Unix(path) => write!(f, "unix://{}", path.display()),
        }
    }
}

/// What a health probe checks; strings still hold placeholders until
/// [`ProgramConfig::processes`] expands them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeTarget {
    /// An HTTP request; healthy iff its status (and body) are as configured.
    Http(Box<HttpProbe>),
    /// Connect to this `host:port`.
    Tcp(String),
    /// Run this argv; healthy iff it exits 0.
    Exec(Vec<String>),
}

/// `health.http` and the keys that shape its request and what it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpProbe {
    /// The URL (placeholders expanded per process).
    pub url: String,
    /// The request method.
    pub method: HttpMethod,
    /// Headers to send, in file order (placeholders expanded per process);
    /// one named like a default header (`Host`, `User-Agent`, `Accept`)
    /// replaces it.
    pub headers: Vec<(String, String)>,
    /// The status codes that count as healthy.
    pub status: StatusSet,
    /// Text the first [`BODY_LIMIT`] bytes of the body must contain.
    pub body: Option<String>,
    /// TLS settings for an `https://` URL.
    pub tls: TlsConfig,
}

impl HttpProbe {
    /// A `GET url` probe with every other key at its default.
    pub fn get(url: impl Into<String>) -> HttpProbe {
        HttpProbe {
            url: url.into(),
            method: HttpMethod::Get,
            headers: Vec::new(),
            status: StatusSet::default(),
            body: None,
            tls: TlsConfig::default(),
        }
    }
}

/// How much of a probe's response body `body` is looked for in (64 KiB).
pub const BODY_LIMIT: usize = 64 * 1024;

/// The method of an HTTP probe (`method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HttpMethod {
    /// `GET` (the default).
    #[default]
    Get,
    /// `HEAD`: the status only (no `body` check).
    Head,
    /// `POST`, with an empty body.
    Post,
}

impl HttpMethod {
    /// The method as it goes on the request line.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Get => "GET",
            HttpMethod::Head => "HEAD",
            HttpMethod::Post => "POST",
        }
    }
}

/// Accepted status codes (`status`): inclusive ranges, e.g. `200,204,301-302`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusSet(Vec<(u16, u16)>);

impl Default for StatusSet {
    /// 200..=399: success and redirects (redirects are not followed).
    fn default() -> StatusSet {
        StatusSet(vec![(200, 399)])
    }
}

impl StatusSet {
    /// Whether `code` is accepted.
    pub fn contains(&self, code: u16) -> bool {
        self.0.iter().any(|(lo, hi)| (*lo..=*hi).contains(&code))
    }

    /// Parses `"200"`, `"200-299"` or `"200,204,301-302"`: comma-separated
    /// codes or ranges of 100..=599 (spaces around each part allowed), each
    /// range's low end at most its high end.
    pub fn parse(text: &str) -> Result<StatusSet, String> {
        let malformed = |why: String| format!("malformed status {text:?}: {why}");
        let code = |part: &str| -> Result<u16, String> {
            let part = part.trim();
            match part.parse::<u16>() {
                Ok(c) if (100..=599).contains(&c) => Ok(c),
                Ok(_) => Err(malformed(format!(
                    "{part} is not a status code (100..=599)"
                ))),
                Err(_) => Err(malformed(format!(
                    "{part:?} is not a code or a range like \"200-299\""
                ))),
            }
        };
        let mut ranges = Vec::new();
        for part in text.split(',') {
            let (lo, hi) = match part.split_once('-') {
                Some((lo, hi)) => (code(lo)?, code(hi)?),
                None => {
                    let c = code(part)?;
                    (c, c)
                }
            };
            if lo > hi {
                return Err(malformed(format!("the range {lo}-{hi} is empty")));
            }
            ranges.push((lo, hi));
        }
        Ok(StatusSet(ranges))
    }
}

impl std::fmt::Display for StatusSet {
    /// As written in the config: `200-299`, `200,204,301-302`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (lo, hi)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

/// TLS settings of an `https://` request: `ca_file`, `server_name`,
/// `insecure`, `client_cert`, `client_key`. Used by HTTP health probes and,
/// with the same keys, by webhooks. Paths are absolute (resolved against the
/// config file's directory) and were found to exist at load time.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsConfig {
    /// PEM certificates trusted in addition to the system roots.
    pub ca_file: Option<PathBuf>,
    /// The name the server's certificate must be valid for (default: the URL's host).
    pub server_name: Option<String>,
    /// No certificate check at all.
    pub insecure: bool,
    /// PEM client certificate chain for mutual TLS (always with `client_key`).
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    pub client_key: Option<PathBuf>,
}

/// What an unhealthy process leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUnhealthy {
    /// Stop it and restart it through the normal backoff.
    Restart,
    /// Only report it.
    None,
}

/// `[program.NAME.health]`.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    /// The check.
    pub probe: ProbeTarget,
    /// Time between probes while running.
    pub interval: Duration,
    /// A probe taking longer fails.
    pub timeout: Duration,
    /// Time allowed to become ready; failures inside it do not count.
    pub start_period: Duration,
    /// Consecutive failures that make a running process unhealthy.
    pub failure_threshold: u32,
    /// Consecutive successes that make an unhealthy process healthy again.
    pub success_threshold: u32,
    /// What unhealthy leads to.
    pub on_unhealthy: OnUnhealthy,
}

/// One process to supervise: a program's instance with placeholders expanded.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessSpec {
    /// `web` for a single instance, `web:0` .. `web:N-1` otherwise.
    pub name: String,
    /// The program it belongs to.
    pub program: String,
    /// Instance number, 0-based.
    pub instance: u32,
    /// argv with placeholders expanded.
    pub argv: Vec<String>,
    /// Environment additions with placeholders expanded, sorted, plus
    /// `MINDER_PROCESS`, `MINDER_PROGRAM` and `MINDER_INSTANCE` (not in a spec
    /// from [`ProgramConfig::processes_to_run`]: see
    /// [`ProcessSpec::full_environment`]).
    pub environment: Vec<(String, String)>,
    /// Where stdout goes.
    pub stdout_log: LogDest,
    /// Where stderr goes.
    pub stderr_log: LogDest,
    /// The health probe with placeholders expanded.
    pub probe: Option<ProbeTarget>,
}

impl Config {
    /// The program called `name`, if any.
    pub fn program(&self, name: &str) -> Option<&ProgramConfig> {
        self.programs.iter().find(|p| p.name == name).map(|p| &**p)
    }

    /// Program names in an order where every program comes after everything in its depends_on (stable: file order otherwise).
    pub fn start_order(&self) -> Vec<String> {
        deps::start_order(self)
            .into_iter()
            .filter_map(|i| self.programs.get(i).map(|p| p.name.clone()))
            .collect()
    }
}

impl ProgramConfig {
    /// The processes of this program with placeholders expanded ({name}, {program}, {instance}, {port}); environment gets MINDER_PROCESS, MINDER_PROGRAM, MINDER_INSTANCE added. Name is `web` when instances == 1, else `web:0`..`web:N-1`.
    pub fn processes(&self) -> Vec<ProcessSpec> {
        self.specs(true)
    }

    /// Like [`ProgramConfig::processes`], without the variables minder sets
    /// itself: what a process actor keeps (a thousand processes need not
    /// hold six more strings each), adding them back with
    /// [`ProcessSpec::full_environment`] when it spawns.
    pub fn processes_to_run(&self) -> Vec<ProcessSpec> {
        self.specs(false)
    }

    /// What process `instance` is to the balancers of `[register]` on
    /// `host`, its templates expanded; `None` without `[register]`.
    pub fn registration(&self, instance: u32, host: &str) -> Option<Registration> {
        let register = self.register.as_ref()?;
        let name = self.process_name(instance);
        let vars = placeholder::Vars {
            name: &name,
            program: &self.name,
            instance,
            port: self.port.map(|p| u32::from(p) + instance),
            host: Some(host),
        };
        Some(Registration {
            address: placeholder::expand(&register.address, &vars),
            server: register
                .haproxy
                .as_ref()
                .map(|h| placeholder::expand(&h.server, &vars)),
            key: register
                .etcd
                .as_ref()
                .map(|e| placeholder::expand(&e.key, &vars)),
            name,
            program: self.name.clone(),
            instance,
            host: host.to_string(),
        })
    }

    /// The upstream file's path on `host` (`{program}` and `{host}` expanded).
    pub fn upstream_file(&self, host: &str) -> Option<PathBuf> {
        let file = self.register.as_ref()?.file.as_ref()?;
        let vars = placeholder::Vars {
            name: &self.name,
            program: &self.name,
            instance: 0,
            port: self.port.map(u32::from),
            host: Some(host),
        };
        Some(PathBuf::from(placeholder::expand(
            &file.path.to_string_lossy(),
            &vars,
        )))
    }

    /// `web` when the program has one instance, else `web:0`..`web:N-1`.
    pub fn process_name(&self, instance: u32) -> String {
        if self.instances <= 1 {
            self.name.clone()
        } else {
            format!("{}:{instance}", self.name)
        }
    }

    fn specs(&self, minder_variables: bool) -> Vec<ProcessSpec> {
        (0..self.instances.max(1))
            .map(|instance| self.spec(instance, minder_variables))
            .collect()
    }

    /// The process of instance `instance` (see [`ProgramConfig::processes`]).
    pub(crate) fn spec(&self, instance: u32, minder_variables: bool) -> ProcessSpec {
        let name = self.process_name(instance);
        let vars = placeholder::Vars {
            name: &name,
            program: &self.name,
            instance,
            port: self.port.map(|p| u32::from(p) + instance),
            host: None,
        };
        let argv = self
            .command
            .iter()
            .map(|a| placeholder::expand(a, &vars))
            .collect();
        let mut environment: Vec<(String, String)> = self
            .environment
            .iter()
            .filter(|(k, _)| !is_reserved(k))
            .map(|(k, v)| (k.clone(), placeholder::expand(v, &vars)))
            .collect();
        if minder_variables {
            environment.extend(reserved_variables(&name, &self.name, instance));
        }
        environment.sort();
        // In file names `:` is written as `.` (web:0 -> web.0.stdout.log):
        // colons confuse tools that read `host:path`.
        let file_name = name.replace(':', ".");
        let file_vars = placeholder::Vars {
            name: &file_name,
            ..vars
        };
        let probe = self.health.as_ref().map(|h| match &h.probe {
            ProbeTarget::Http(http) => ProbeTarget::Http(Box::new(HttpProbe {
                url: placeholder::expand(&http.url, &vars),
                headers: http
                    .headers
                    .iter()
                    .map(|(k, v)| (k.clone(), placeholder::expand(v, &vars)))
                    .collect(),
                ..(**http).clone()
            })),
            ProbeTarget::Tcp(addr) => ProbeTarget::Tcp(placeholder::expand(addr, &vars)),
            ProbeTarget::Exec(argv) => {
                ProbeTarget::Exec(argv.iter().map(|a| placeholder::expand(a, &vars)).collect())
            }
        });
        ProcessSpec {
            stdout_log: log_dest(&self.logs.stdout, &file_vars),
            stderr_log: log_dest(&self.logs.stderr, &file_vars),
            name,
            program: self.name.clone(),
            instance,
            argv,
            environment,
            probe,
        }
    }
}

impl ProcessSpec {
    /// The environment additions of a spec from
    /// [`ProgramConfig::processes_to_run`] with minder's own variables, in
    /// the order [`ProgramConfig::processes`] gives.
    pub fn full_environment(&self) -> Vec<(String, String)> {
        let mut environment = Vec::with_capacity(self.environment.len() + 3);
        environment.extend(self.environment.iter().cloned());
        environment.extend(reserved_variables(&self.name, &self.program, self.instance));
        environment.sort();
        environment
    }
}

/// `MINDER_INSTANCE`, `MINDER_PROCESS` and `MINDER_PROGRAM`.
fn reserved_variables(name: &str, program: &str, instance: u32) -> [(String, String); 3] {
    [
        ("MINDER_INSTANCE".to_string(), instance.to_string()),
        ("MINDER_PROCESS".to_string(), name.to_string()),
        ("MINDER_PROGRAM".to_string(), program.to_string()),
    ]
}

fn log_dest(target: &LogTarget, vars: &placeholder::Vars<'_>) -> LogDest {
    match target {
        LogTarget::File { dir, name } => {
            LogDest::File(dir.join(placeholder::expand(name, vars)).into())
        }
        LogTarget::Discard => LogDest::Discard,
        LogTarget::Stdout => LogDest::Stdout,
        LogTarget::Inherit => LogDest::Inherit,
    }
}

/// Variables minder sets itself; a hand-built config cannot override them.
pub(crate) fn is_reserved(key: &str) -> bool {
    matches!(key, "MINDER_PROCESS" | "MINDER_PROGRAM" | "MINDER_INSTANCE")
}
