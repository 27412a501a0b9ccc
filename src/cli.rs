//! The command line: `minder daemon | check | ctl | import` (SPEC §1, §5.6).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, Config, Defaults};
use crate::control::client::{self, ClientError};
use crate::control::protocol::{
    ActionReply, ErrorKind, PidReply, ProcessInfo, ReloadReply, Reply, Request, StateEvent,
    StatusReply, TailChunk,
};
use crate::text::sanitize;

/// minder: a process supervisor with health checks, backoff and zero-downtime restarts.
#[derive(Debug, Parser)]
#[command(name = "minder", version = crate::reexec::VERSION_TEXT, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Top,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Top {
    /// Run the supervisor in the foreground until SIGTERM/SIGINT or `ctl shutdown`.
    Daemon {
        /// Config file (default: ./minder.toml, then /etc/minder/minder.toml).
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Run as root even when a config file (or a directory above it) can be
        /// changed by another user than root.
        #[arg(long)]
        insecure_config: bool,
    },
    /// Validate a config file; print every error as FILE:LINE:COL: message.
    Check {
        /// Config file (default: ./minder.toml, then /etc/minder/minder.toml).
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Talk to a running daemon.
    Ctl(CtlArgs),
    /// Convert another supervisor's config to minder's; print it on stdout.
    #[command(subcommand)]
    Import(ImportFrom),
}

/// `minder import` sources.
#[derive(Debug, Subcommand)]
pub enum ImportFrom {
    /// A supervisord config (with its [include] files): prints the minder
    /// TOML on stdout, a warning on stderr for each setting not converted.
    Supervisord {
        /// supervisord's config file (e.g. /etc/supervisor/supervisord.conf).
        file: PathBuf,
    },
}

/// `minder ctl` options.
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// Control socket (default: $MINDER_SOCKET, then the config's `socket`).
    #[arg(short, long, value_name = "SOCKET")]
    pub socket: Option<PathBuf>,
    /// Config file whose `socket` to use.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print one JSON document on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// `minder ctl` subcommands. NAME is a process (`web:0`), a program (`web`) or `all`.
#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// One row per process; exit 3 if any selected process is not running.
    Status { names: Vec<String> },
    /// Start, waiting until running (ready) or failed.
    Start {
        #[arg(long)]
        no_wait: bool,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Stop (stop signal, then SIGKILL after stop_timeout), waiting until stopped.
    Stop {
        #[arg(long)]
        no_wait: bool,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Stop then start, waiting until running again.
    Restart {
        #[arg(long)]
        no_wait: bool,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Send a signal (HUP, SIGHUP or a number) to each process group.
    Signal {
        signal: String,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// The daemon's PID, or a process's.
    Pid { name: Option<String> },
    /// Re-read the config and apply the difference.
    Reload,
    /// Stop every program, then the daemon exits.
    Shutdown,
    /// Print the end of a process's captured log; -f follows it.
    Tail {
        /// Keep printing new output until interrupted.
        #[arg(short, long)]
        follow: bool,
        /// How many lines of history.
        #[arg(short = 'n', long, value_name = "LINES", default_value_t = 10)]
        lines: usize,
        /// The stderr log instead of stdout.
        #[arg(long)]
        stderr: bool,
        /// One process (`web` or `web:0`).
        name: String,
    },
    /// Print state changes as they happen, one line each, until interrupted.
    Events {
        /// Processes or programs to follow (all when none).
        names: Vec<String>,
    },
    /// Reopen every captured log file (same as SIGUSR1 to the daemon).
    ReopenLogs,
    /// Every registered process of every host, from etcd: HOST NAME ADDRESS PID SINCE.
    Fleet {
        /// Only this program's processes.
        program: Option<String>,
        /// etcd member to ask (default: the first `endpoints` of the config's
        /// `[register.etcd]`).
        #[arg(long, value_name = "URL")]
        etcd: Option<String>,
    },
    /// A live view: every process, the recent events, a process's log; keys
    /// start, stop and restart (press `?` in it). Needs a terminal.
    Top,
    /// Re-execute the daemon (an upgraded binary, say), keeping every child,
    /// socket and counter; returns once the new image answers.
    Reexec {
        /// The binary to run instead of the daemon's own.
        #[arg(long, value_name = "PATH")]
        binary: Option<PathBuf>,
    },
}

/// Runs `minder check`.
pub fn check(path: Option<&Path>) -> ExitCode {
    let Some(path) = config::find_config(path) else {
        eprintln!("minder: no config file: give -c FILE, or create ./minder.toml or /etc/minder/minder.toml");
        return ExitCode::from(1);
    };
    match config::load(&path, &Defaults::for_current_user()) {
        Ok(cfg) => {
            let processes: usize = cfg.programs.iter().map(|p| p.instances as usize).sum();
            println!(
                "{}: ok ({} programs, {} processes)",
                path.display(),
                cfg.programs.len(),
                processes
            );
            // Valid, but `minder daemon` as root would still refuse it: say so now.
            if let Err(e) = config::check_trusted(&cfg) {
                eprintln!("minder: warning: minder daemon would refuse it: {e}");
            }
            ExitCode::SUCCESS
        }
        Err(diagnostics) => {
            for d in &diagnostics {
                println!("{d}");
            }
            ExitCode::from(1)
        }
    }
}

/// `minder import supervisord FILE`: exit 0 converted (warnings allowed),
/// 1 when the file cannot be read or supervisord would refuse it.
pub fn import(from: ImportFrom) -> ExitCode {
    let ImportFrom::Supervisord { file } = from;
    match crate::import::supervisord(&file, &crate::import::Context::current()) {
        Ok(converted) => {
            for w in &converted.warnings {
                eprintln!("minder: warning: {w}");
            }
            let mut out = std::io::stdout().lock();
            match out
                .write_all(converted.toml.as_bytes())
                .and_then(|()| out.flush())
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("minder: writing the converted config: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

/// Loads the config for `daemon`, printing diagnostics on failure; as root,
/// refuses files others could change unless `insecure_config`.
pub fn load_for_daemon(path: Option<&Path>, insecure_config: bool) -> Result<Config, ExitCode> {
    let Some(path) = config::find_config(path) else {
        eprintln!("minder: no config file: give -c FILE, or create ./minder.toml or /etc/minder/minder.toml");
        return Err(ExitCode::from(1));
    };
    let config = config::load(&path, &Defaults::for_current_user()).map_err(|diagnostics| {
        for d in &diagnostics {
            eprintln!("{d}");
        }
        eprintln!(
            "minder: {} error(s) in the config; not starting",
            diagnostics.len()
        );
        ExitCode::from(1)
    })?;
    if !insecure_config {
        if let Err(e) = config::check_trusted(&config) {
            eprintln!("minder: not starting: {e}");
            return Err(ExitCode::from(1));
        }
    }
    Ok(config)
}

/// Socket lookup: -s, $MINDER_SOCKET, the config's `socket`, the default.
fn socket_path(args: &CtlArgs) -> PathBuf {
    if let Some(s) = &args.socket {
        return s.clone();
    }
    if let Some(s) = std::env::var_os("MINDER_SOCKET").filter(|s| !s.is_empty()) {
        return PathBuf::from(s);
    }
    let defaults = Defaults::for_current_user();
    config::find_config(args.config.as_deref())
        .and_then(|path| config::load(&path, &defaults).ok())
        .map(|cfg| cfg.supervisor.socket)
        .unwrap_or(defaults.socket)
}

/// `ctl fleet`: reads etcd directly (not through the daemon), so it shows
/// every host even where minder is down.
fn fleet(args: &CtlArgs, program: Option<&str>, etcd: Option<&str>) -> ExitCode {
    let defaults = Defaults::for_current_user();
    let config = config::find_config(args.config.as_deref())
        .and_then(|path| config::load(&path, &defaults).ok());
    let (endpoints, tls, prefix) = fleet_source(config.as_ref(), program, etcd);
    if endpoints.is_empty() {
        eprintln!(
            "minder: no etcd to ask: give --etcd URL, or a config (-c FILE) with [program.NAME.register.etcd]"
        );
        return ExitCode::from(2);
    }
    let listed = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| rt.block_on(crate::register::etcd::list(&endpoints, tls, &prefix)));
    let mut entries = match listed {
        Ok(entries) => entries,
        Err(e) => {
            eprintln!("minder: {}", sanitize(&e));
            return ExitCode::from(exit::FAILED);
        }
    };
    let text = |v: &serde_json::Value, key: &str| match &v[key] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    };
    if let Some(program) = program {
        entries.retain(|e| text(e, "program") == program);
    }
    entries.sort_by_key(|e| (text(e, "host"), text(e, "program"), e["instance"].as_u64()));
    let mut out = std::io::stdout().lock();
    if args.json {
        let _ = writeln!(out, "{}", serde_json::Value::Array(entries));
        return ExitCode::SUCCESS;
    }
    let now = std::time::SystemTime::now();
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let since = text(e, "since");
            let age = humantime::parse_rfc3339(&since)
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .map(|d| format!("{} ago", crate::text::short_duration(d)));
            ["host", "name", "address", "pid"]
                .iter()
                .map(|k| sanitize(&text(e, k)).into_owned())
                .chain([age.unwrap_or(since)])
                .collect()
        })
        .collect();
    let _ = out.write_all(table(&["HOST", "NAME", "ADDRESS", "PID", "SINCE"], &rows).as_bytes());
    ExitCode::SUCCESS
}

/// Where `ctl fleet` looks: `--etcd URL` or the config's first etcd
/// endpoints (of PROGRAM if given), with that etcd's TLS keys (also for an
/// `https://` `--etcd`), and the key prefix to list: the literal start of
/// the key template, before its first placeholder.
fn fleet_source(
    config: Option<&Config>,
    program: Option<&str>,
    etcd: Option<&str>,
) -> (Vec<String>, crate::http::TlsSettings, String) {
    let etcd_of = |c: &Config| -> Option<crate::config::EtcdConfig> {
        c.programs
            .iter()
            .filter(|p| program.is_none_or(|name| p.name == name))
            .find_map(|p| p.register.as_ref()?.etcd.clone())
    };
    let configured = config.and_then(etcd_of);
    let template = configured
        .as_ref()
        .map_or(crate::config::DEFAULT_ETCD_KEY, |e| e.key.as_str());
    let prefix = template.split('{').next().unwrap_or_default().to_string();
    let tls = configured
        .as_ref()
        .map(|e| e.tls.settings())
        .unwrap_or_default();
    let endpoints = match etcd {
        Some(url) => vec![url.trim_end_matches('/').to_string()],
        None => configured.map(|e| e.endpoints).unwrap_or_default(),
    };
    (endpoints, tls, prefix)
}

/// Rows under a header, each column as wide as its widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Exit codes of `ctl` (SPEC §1).
mod exit {
    pub const FAILED: u8 = 1;
    pub const NOT_RUNNING: u8 = 3;
    pub const UNREACHABLE: u8 = 4;
}

/// Runs `minder ctl`.
pub fn ctl(args: CtlArgs) -> ExitCode {
    let socket = socket_path(&args);
    if let CtlCommand::Tail {
        follow,
        lines,
        stderr,
        name,
    } = &args.command
    {
        let request = Request::Tail {
            name: name.clone(),
            lines: *lines,
            stderr: *stderr,
            follow: *follow,
        };
        return tail(&socket, &request, args.json);
    }
    if let CtlCommand::Events { names } = &args.command {
        return events(&socket, names, args.json);
    }
    if let CtlCommand::Top = &args.command {
        return crate::top::run(&socket);
    }
    if let CtlCommand::Fleet { program, etcd } = &args.command {
        return fleet(&args, program.as_deref(), etcd.as_deref());
    }
    let request = match &args.command {
        CtlCommand::Status { names } => Request::Status {
            names: names.clone(),
        },
        CtlCommand::Start { no_wait, names } => Request::Start {
            names: names.clone(),
            wait: !no_wait,
        },
        CtlCommand::Stop { no_wait, names } => Request::Stop {
            names: names.clone(),
            wait: !no_wait,
        },
        CtlCommand::Restart { no_wait, names } => Request::Restart {
            names: names.clone(),
            wait: !no_wait,
        },
        CtlCommand::Signal { signal, names } => Request::Signal {
            signal: signal.clone(),
            names: names.clone(),
        },
        CtlCommand::Pid { name } => Request::Pid { name: name.clone() },
        CtlCommand::Reload => Request::Reload,
        CtlCommand::Shutdown => Request::Shutdown,
        CtlCommand::ReopenLogs => Request::ReopenLogs,
        // Handled above: their replies are streams (top makes many requests).
        CtlCommand::Tail { .. }
        | CtlCommand::Events { .. }
        | CtlCommand::Fleet { .. }
        | CtlCommand::Top => return ExitCode::from(2),
        CtlCommand::Reexec { binary } => Request::Reexec {
            binary: binary.as_ref().map(|b| {
                std::path::absolute(b)
                    .unwrap_or_else(|_| b.clone())
                    .display()
                    .to_string()
            }),
        },
    };
    let reply = match client::request(&socket, &request) {
        Ok(Some(reply)) => reply,
        // The daemon closes the connection as it exits after `shutdown`.
        Ok(None) if request == Request::Shutdown => Reply::ok(serde_json::json!({})),
        // ...and as the old image is replaced by `reexec`.
        Ok(None) if matches!(request, Request::Reexec { .. }) => {
            match wait_for_new_image(&socket) {
                Ok(pid) => Reply::ok(serde_json::json!({ "pid": pid })),
                Err(e) => {
                    eprintln!("minder: {e}");
                    return ExitCode::from(exit::FAILED);
                }
            }
        }
        Ok(None) => {
            eprintln!("minder: the daemon closed the connection without replying");
            return ExitCode::from(exit::FAILED);
        }
        Err(e @ ClientError::Unreachable { .. }) => {
            eprintln!("minder: {e}");
            return ExitCode::from(exit::UNREACHABLE);
        }
        Err(e) => {
            eprintln!("minder: {e}");
            return ExitCode::from(exit::FAILED);
        }
    };
    let payload = match reply {
        Reply::Ok(payload) => payload,
        Reply::Error(error) => {
            if args.json {
                println!("{}", serde_json::json!({ "error": error }));
            }
            eprintln!("minder: {}", sanitize(&error.message));
            // Refused by peer-credential check: as unreachable as a socket we may not open.
            return ExitCode::from(if error.kind == ErrorKind::PermissionDenied {
                exit::UNREACHABLE
            } else {
                exit::FAILED
            });
        }
    };
    if args.json {
        println!("{payload}");
    }
    match render(&args, payload.get()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("minder: unexpected reply from the daemon: {e}");
            ExitCode::from(exit::FAILED)
        }
    }
}

/// Prints the human form (unless `--json`) and decides the exit code.
fn render(args: &CtlArgs, payload: &str) -> Result<ExitCode, serde_json::Error> {
    let human = !args.json;
    let mut out = std::io::stdout().lock();
    match &args.command {
        CtlCommand::Status { .. } => {
            let status: StatusReply = serde_json::from_str(payload)?;
            if human {
                let _ = out.write_all(status_table(&status.processes).as_bytes());
            }
            Ok(if all_up(&status.processes) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(exit::NOT_RUNNING)
            })
        }
        CtlCommand::Start { .. }
        | CtlCommand::Stop { .. }
        | CtlCommand::Restart { .. }
        | CtlCommand::Signal { .. }
        | CtlCommand::ReopenLogs => {
            let reply: ActionReply = serde_json::from_str(payload)?;
            let failed: Vec<_> = reply.results.iter().filter(|r| !r.ok).collect();
            for r in &failed {
                eprintln!("minder: {}: {}", r.name, sanitize(&r.message));
            }
            Ok(if failed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(exit::FAILED)
            })
        }
        CtlCommand::Pid { .. } => {
            let reply: PidReply = serde_json::from_str(payload)?;
            match reply.pid {
                Some(pid) => {
                    if human {
                        let _ = writeln!(out, "{pid}");
                    }
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    eprintln!("minder: not running");
                    Ok(ExitCode::from(exit::FAILED))
                }
            }
        }
        CtlCommand::Reload => {
            let reply: ReloadReply = serde_json::from_str(payload)?;
            if human {
                let _ = out.write_all(reload_summary(&reply).as_bytes());
            }
            Ok(ExitCode::SUCCESS)
        }
        CtlCommand::Shutdown
        | CtlCommand::Tail { .. }
        | CtlCommand::Events { .. }
        | CtlCommand::Fleet { .. }
        | CtlCommand::Top => Ok(ExitCode::SUCCESS),
        CtlCommand::Reexec { .. } => {
            let reply: PidReply = serde_json::from_str(payload)?;
            if human {
                let _ = writeln!(
                    out,
                    "minder re-executed (pid {})",
                    reply.pid.unwrap_or_default()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Whether `status` exits 0: every selected process is `running` and not
/// `unhealthy`. A draining predecessor is part of its successor's entry, not
/// a process of its own: its stopping does not count.
fn all_up(processes: &[ProcessInfo]) -> bool {
    processes
        .iter()
        .all(|p| p.state == "running" && p.health != "unhealthy")
}

/// `ctl tail`: prints the text as it comes; with `--json` one object per line
/// (`name`, `stream`, `line`), a partial last line held until it is complete.
fn tail(socket: &Path, request: &Request, json: bool) -> ExitCode {
    let follow = matches!(request, Request::Tail { follow: true, .. });
    let mut out = std::io::stdout().lock();
    let mut partial = String::new();
    let mut failure: Option<(ErrorKind, String)> = None;
    let mut last: Option<TailChunk> = None;
    let result = client::stream(socket, request, |reply| {
        let chunk = match reply {
            Reply::Ok(payload) => match serde_json::from_str::<TailChunk>(payload.get()) {
                Ok(chunk) => chunk,
                Err(e) => {
                    failure = Some((
                        ErrorKind::Failed,
                        format!("unexpected reply from the daemon: {e}"),
                    ));
                    return false;
                }
            },
            Reply::Error(error) => {
                if json {
                    println!("{}", serde_json::json!({ "error": error }));
                }
                failure = Some((error.kind, error.message));
                return false;
            }
        };
        if chunk.skipped_bytes > 0 {
            eprintln!(
                "minder: ... {} bytes skipped (output faster than this reader) ...",
                chunk.skipped_bytes
            );
        }
        let ok = if json {
            partial.push_str(&chunk.text);
            let mut ok = true;
            while let Some(i) = partial.find('\n') {
                let line: String = partial.drain(..=i).collect();
                ok &= print_line(&mut out, &chunk, &line[..i]);
            }
            ok
        } else {
            out.write_all(chunk.text.as_bytes())
                .and_then(|()| out.flush())
                .is_ok()
        };
        last = Some(chunk);
        // Without -f the first reply is all; a closed stdout (`| head`) ends it too.
        ok && follow
    });
    if json && !partial.is_empty() {
        if let Some(chunk) = &last {
            print_line(&mut out, chunk, &partial);
        }
    }
    stream_exit(result, failure)
}

/// `ctl events`: one line per state change (with `--json` one object per
/// line), until interrupted or the daemon exits.
fn events(socket: &Path, names: &[String], json: bool) -> ExitCode {
    let request = Request::Events {
        names: names.to_vec(),
    };
    let mut out = std::io::stdout().lock();
    let mut failure: Option<(ErrorKind, String)> = None;
    let mut acknowledged = false;
    let result = client::stream(socket, &request, |reply| {
        let payload = match reply {
            Reply::Ok(payload) => payload,
            Reply::Error(error) => {
                if json {
                    println!("{}", serde_json::json!({ "error": error }));
                }
                failure = Some((error.kind, error.message));
                return false;
            }
        };
        // The first reply only says the stream has begun.
        if !acknowledged {
            acknowledged = true;
            return true;
        }
        let event: StateEvent = match serde_json::from_str(payload.get()) {
            Ok(event) => event,
            Err(e) => {
                failure = Some((
                    ErrorKind::Failed,
                    format!("unexpected reply from the daemon: {e}"),
                ));
                return false;
            }
        };
        if event.skipped_events > 0 {
            eprintln!(
                "minder: ... {} events skipped (changes faster than this reader) ...",
                event.skipped_events
            );
        }
        let line = if json {
            payload.get().to_string()
        } else {
            sanitize(&event.to_string()).into_owned()
        };
        // A closed stdout (`| head`) ends it.
        writeln!(out, "{line}").and_then(|()| out.flush()).is_ok()
    });
    stream_exit(result, failure)
}

/// The exit code of a streamed request (`tail`, `events`).
fn stream_exit(result: Result<(), ClientError>, failure: Option<(ErrorKind, String)>) -> ExitCode {
    match (result, failure) {
        (Err(e @ ClientError::Unreachable { .. }), _) => {
            eprintln!("minder: {e}");
            ExitCode::from(exit::UNREACHABLE)
        }
        (Err(e), _) => {
            eprintln!("minder: {e}");
            ExitCode::from(exit::FAILED)
        }
        (Ok(()), Some((kind, message))) => {
            eprintln!("minder: {}", sanitize(&message));
            ExitCode::from(if kind == ErrorKind::PermissionDenied {
                exit::UNREACHABLE
            } else {
                exit::FAILED
            })
        }
        (Ok(()), None) => ExitCode::SUCCESS,
    }
}

fn print_line(out: &mut impl Write, chunk: &TailChunk, line: &str) -> bool {
    let doc = serde_json::json!({"name": chunk.name, "stream": chunk.stream, "line": line});
    writeln!(out, "{doc}").and_then(|()| out.flush()).is_ok()
}

/// After `reexec` closed the connection: polls (bounded) until the new image
/// answers, and returns its PID.
fn wait_for_new_image(socket: &Path) -> Result<Option<i32>, String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut last = String::new();
    for _ in 0..3000 {
        match client::request(socket, &Request::Pid { name: None }) {
            Ok(Some(Reply::Ok(payload))) => {
                return serde_json::from_str::<PidReply>(payload.get())
                    .map(|r| r.pid)
                    .map_err(|e| e.to_string());
            }
            Ok(Some(Reply::Error(e))) => last = e.message,
            Ok(None) => last = "connection closed".to_string(),
            Err(e) => last = e.to_string(),
        }
        if std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Err(format!("the new image did not answer within 30s ({last})"))
}

fn reload_summary(reply: &ReloadReply) -> String {
    let mut s = String::new();
    for (label, names) in [
        ("added", &reply.added),
        ("removed", &reply.removed),
        ("changed", &reply.changed),
    ] {
        for name in names {
            s.push_str(&format!("{label}: {name}\n"));
        }
    }
    s.push_str(&format!("unchanged: {} programs\n", reply.unchanged.len()));
    for note in &reply.not_applied {
        s.push_str(&format!("not applied: {note}\n"));
    }
    s
}

/// The `status` table: NAME STATE PID UPTIME HEALTH RESTARTS CPU MEM
/// DESCRIPTION, with an indented line under a process for each predecessor
/// still draining after a rolling restart (part of that process, not a row of
/// its own). CPU and MEM are `-` without a live process, MEM also when unknown.
pub fn status_table(processes: &[ProcessInfo]) -> String {
    let uptime = |secs: f64| crate::text::short_duration(std::time::Duration::from_secs_f64(secs));
    let rows: Vec<[String; 9]> = processes
        .iter()
        .map(|p| {
            [
                p.name.clone(),
                p.state.clone(),
                p.pid.map_or("-".to_string(), |pid| pid.to_string()),
                p.uptime_secs.map_or("-".to_string(), uptime),
                p.health.clone(),
                p.restarts.to_string(),
                p.pid
                    .map_or("-".to_string(), |_| crate::text::cpu_time(p.cpu_secs)),
                p.memory_bytes
                    .filter(|_| p.pid.is_some())
                    .map_or("-".to_string(), crate::text::short_bytes),
                sanitize(&p.description).into_owned(),
            ]
        })
        .collect();
    let header = [
        "NAME",
        "STATE",
        "PID",
        "UPTIME",
        "HEALTH",
        "RESTARTS",
        "CPU",
        "MEM",
        "DESCRIPTION",
    ]
    .map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |row: &[String; 9]| {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        let mut line = line.trim_end().to_string();
        line.push('\n');
        line
    };
    let mut out = line(&header);
    for (p, row) in processes.iter().zip(&rows) {
        out.push_str(&line(row));
        for old in &p.draining {
            out.push_str(&format!(
                "  draining: pid {}, up {}, {}\n",
                old.pid,
                uptime(old.uptime_secs),
                old.description
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::protocol::DrainingProcess;

    fn entry(name: &str, state: &str, pid: Option<i32>) -> ProcessInfo {
        ProcessInfo {
            program: name.into(),
            uptime_secs: pid.map(|_| 2.0),
            ..ProcessInfo::example(name, state, pid)
        }
    }

    #[test]
    fn a_draining_predecessor_is_an_indented_line_under_its_successor() {
        let mut web = entry("web", "running", Some(4242));
        web.draining.push(DrainingProcess {
            pid: 4241,
            uptime_secs: 90.1,
            description: "stop signal sent 3s ago; its replacement is ready".into(),
        });
        let table = status_table(&[web, entry("db", "stopped", None)]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(lines[0].starts_with("NAME "), "{table}");
        assert!(
            lines[1].starts_with("web ") && lines[1].contains("4242"),
            "{table}"
        );
        assert_eq!(
            lines[2],
            "  draining: pid 4241, up 1m, stop signal sent 3s ago; its replacement is ready"
        );
        assert!(lines[3].starts_with("db "), "{table}");
        // The columns are those of the processes alone.
        assert_eq!(lines[1].find("running"), lines[0].find("STATE"), "{table}");
    }

    #[test]
    fn cpu_and_mem_are_columns_with_a_dash_when_unknown() {
        let mut web = entry("web", "running", Some(4242));
        web.cpu_secs = 185.2;
        web.memory_bytes = Some(12_900_000);
        let mut unknown = entry("api", "running", Some(4243));
        unknown.cpu_secs = 0.4;
        let table = status_table(&[web, unknown, entry("db", "stopped", None)]);
        let lines: Vec<&str> = table.lines().collect();
        let words = |line: &str| {
            line.split_whitespace()
                .map(String::from)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            words(lines[0]),
            [
                "NAME",
                "STATE",
                "PID",
                "UPTIME",
                "HEALTH",
                "RESTARTS",
                "CPU",
                "MEM",
                "DESCRIPTION"
            ]
        );
        assert_eq!(
            words(lines[1]),
            ["web", "running", "4242", "2s", "none", "0", "3m05s", "12.3M"]
        );
        assert_eq!(words(lines[2])[6..], ["0.4s", "-"]);
        assert_eq!(words(lines[3])[2..], ["-", "-", "none", "0", "-", "-"]);
        assert_eq!(lines[1].find("3m05s"), lines[0].find("CPU"), "{table}");
        assert_eq!(lines[1].find("12.3M"), lines[0].find("MEM"), "{table}");
    }

    #[test]
    fn a_draining_predecessor_does_not_make_status_exit_3() {
        let mut web = entry("web", "running", Some(4242));
        web.draining.push(DrainingProcess {
            pid: 4241,
            uptime_secs: 90.1,
            description: "SIGKILL sent; its replacement is ready".into(),
        });
        assert!(all_up(std::slice::from_ref(&web)));
        assert!(!all_up(&[web, entry("db", "backoff", None)]));
    }
}
