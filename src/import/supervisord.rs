//! supervisord's sections and keys onto minder's, as supervisord 4 reads
//! them (`supervisor/options.py`, `supervisor/datatypes.py`): what it would
//! refuse is an error at its line; what minder has no equivalent for becomes
//! a `# not converted:` comment and a warning.

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use super::ini::{Entry, Ini, Section};
use super::pyfmt::{self, Instances, Var};
use super::{array, key, quote, Context, Converted, ImportError};

/// supervisord's own defaults where minder's differ, and the value each
/// becomes: written out so the converted program behaves the same.
const SUPERVISORD_AUTORESTART: &str = "unexpected";
const SUPERVISORD_STARTRETRIES: i64 = 3;

/// The placeholders an expansion may give, and words that stand for them
/// while `environment=` is split into pairs (braces would split them).
const PLACEHOLDER_WORDS: [(&str, &str); 2] = [
    ("{instance}", "__minder_instance__"),
    ("{port}", "__minder_port__"),
];

pub(super) fn convert(path: &Path, ctx: &Context) -> Result<Converted, ImportError> {
    let main = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut conv = Conv {
        ini: Ini::default(),
        ctx,
        warnings: Vec::new(),
        global_env: Vec::new(),
    };
    conv.read_file(&main)?;
    let included = conv.read_includes(&main)?;
    conv.convert(&main, &included)
}

struct Conv<'c> {
    ini: Ini,
    ctx: &'c Context,
    warnings: Vec<String>,
    /// `[supervisord] environment=`, which every program gets.
    global_env: Vec<(String, String)>,
}

/// Lines of the output: TOML and comments.
type Lines = Vec<String>;

/// A supervisord log destination (`stdout_logfile`, `stderr_logfile`).
#[derive(Debug, Clone, PartialEq)]
enum LogFile {
    Auto,
    None,
    Syslog,
    /// `/dev/stdout` and its kin: minder's own stream.
    Inherit,
    File(String),
}

impl Conv<'_> {
    fn error(&self, file: usize, line: usize, message: impl Into<String>) -> ImportError {
        ImportError {
            file: self.ini.files[file].clone(),
            line: Some(line),
            message: message.into(),
        }
    }

    fn entry_error(
        &self,
        sec: &Section,
        e: &Entry,
        message: impl std::fmt::Display,
    ) -> ImportError {
        self.error(
            e.file,
            e.line,
            format!("[{}] {}: {message}", sec.name, e.key),
        )
    }

    fn read_file(&mut self, path: &Path) -> Result<(), ImportError> {
        let text = std::fs::read_to_string(path).map_err(|e| ImportError {
            file: path.to_path_buf(),
            line: None,
            message: format!("cannot read it: {e}"),
        })?;
        self.ini.files.push(path.to_path_buf());
        let index = self.ini.files.len() - 1;
        self.ini
            .read(&text, index)
            .map_err(|(line, message)| self.error(index, line, message))
    }

    /// The files `[include] files=` names, read in supervisord's order: each
    /// pattern relative to the main file's directory, its matches sorted.
    fn read_includes(&mut self, main: &Path) -> Result<Vec<PathBuf>, ImportError> {
        let Some(section) = self.ini.section("include").cloned() else {
            return Ok(Vec::new());
        };
        let Some(files) = section.get("files") else {
            return Err(self.error(
                section.file,
                section.line,
                "[include] has no \"files\" setting (supervisord refuses it)",
            ));
        };
        let patterns = self.expand(&section, files, &|_| None, &mut Instances::default())?;
        let base = main.parent().unwrap_or(Path::new("/"));
        let options = glob::MatchOptions {
            require_literal_leading_dot: true,
            ..Default::default()
        };
        let mut read = Vec::new();
        for pattern in patterns.split_whitespace() {
            let full = base.join(pattern);
            let matches = glob::glob_with(&full.to_string_lossy(), options)
                .map_err(|e| self.entry_error(&section, files, format!("{pattern:?}: {e}")))?;
            let mut found: Vec<PathBuf> = matches.filter_map(Result::ok).collect();
            found.sort();
            if found.is_empty() {
                self.warn(
                    files.file,
                    files.line,
                    format_args!("no file matches the include pattern \"{}\"", full.display()),
                );
            }
            for file in found {
                self.read_file(&file)?;
                read.push(file);
            }
        }
        Ok(read)
    }

    /// The value of `e` as supervisord expands it: `%(here)s` is the
    /// directory of the file it is written in, then `%(name)s` from
    /// `extra`, the common names and the environment.
    fn expand(
        &self,
        sec: &Section,
        e: &Entry,
        extra: &dyn Fn(&str) -> Option<Var>,
        instances: &mut Instances,
    ) -> Result<String, ImportError> {
        let here = self.ini.files[e.file]
            .parent()
            .unwrap_or(Path::new("/"))
            .to_string_lossy()
            .into_owned();
        let text = e.value.replace("%(here)s", &here);
        let vars = |name: &str| -> Option<Var> {
            if let Some(v) = extra(name) {
                return Some(v);
            }
            match name {
                "here" => Some(Var::Text(here.clone())),
                "host_node_name" => Some(Var::Text(self.ctx.host.clone())),
                _ => {
                    let var = name.strip_prefix("ENV_")?;
                    self.global_env
                        .iter()
                        .chain(self.ctx.env.iter())
                        .find(|(k, _)| k == var)
                        .map(|(_, v)| Var::Text(v.clone()))
                }
            }
        };
        pyfmt::expand(&text, &vars, instances).map_err(|m| {
            let hint = if m.contains("ENV_") {
                " (set that variable in the environment of `minder import`, as supervisord would need it in its own)"
            } else {
                ""
            };
            self.entry_error(sec, e, format!("{m}{hint}"))
        })
    }

    /// A warning `FILE:LINE: text` about the file at index `file`.
    fn warn(&mut self, file: usize, line: usize, text: impl std::fmt::Display) {
        let warning = format!("{}:{line}: {text}", self.ini.files[file].display());
        self.warnings.push(warning);
    }

    /// A `# not converted:` comment in `out` and a warning.
    fn not_converted(&mut self, out: &mut Lines, sec: &Section, e: &Entry, why: &str) {
        let value = one_line(&e.value);
        out.push(format!("# not converted: {} = {value} ({why})", e.key));
        self.warn(
            e.file,
            e.line,
            format_args!("[{}] {} = {value}: not converted ({why})", sec.name, e.key),
        );
    }

    fn convert(mut self, main: &Path, included: &[PathBuf]) -> Result<Converted, ImportError> {
        let sections = self.ini.sections.clone();
        let mut supervisor: Lines = Vec::new();
        let mut body: Lines = Vec::new();

        if let Some(sec) = sections.iter().find(|s| s.name == "supervisord") {
            self.supervisord_section(sec, &mut supervisor)?;
        } else {
            self.warnings.push(format!(
                "{}: no [supervisord] section: supervisord would refuse this file; converting its programs anyway",
                main.display()
            ));
        }
        let fatal_listener = fatal_listener(&sections);

        for sec in &sections {
            let kind = sec
                .name
                .split_once(':')
                .map_or(sec.name.as_str(), |(k, _)| k);
            match kind {
                "supervisord" => {}
                "unix_http_server" => self.unix_http_server(sec, &mut supervisor)?,
                "include" if sec.file == 0 => {
                    let names: Vec<String> =
                        included.iter().map(|p| p.display().to_string()).collect();
                    body.push(String::new());
                    body.push(format!(
                        "# [include] files = {}: converted here with the rest ({})",
                        one_line(sec.get("files").map_or("", |e| &e.value)),
                        if names.is_empty() {
                            "no file matched".to_string()
                        } else {
                            names.join(", ")
                        }
                    ));
                }
                "program" | "fcgi-program" => {
                    let lines = self.program(sec, &sections, fatal_listener.as_deref())?;
                    body.push(String::new());
                    body.extend(lines);
                }
                "eventlistener" => {
                    body.push(String::new());
                    self.eventlistener(sec, &mut body)?;
                }
                "supervisorctl" => {
                    body.push(String::new());
                    body.push(
                        "# [supervisorctl]: `minder ctl -c minder.toml` finds the socket by itself (or -s SOCKET, or $MINDER_SOCKET)"
                            .into(),
                    );
                    for e in &sec.entries {
                        body.push(format!("#   {} = {}", e.key, one_line(&e.value)));
                    }
                }
                "rpcinterface"
                    if sec
                        .get("supervisor.rpcinterface_factory")
                        .map(|e| e.value.as_str())
                        == Some("supervisor.rpcinterface:make_main_rpcinterface") =>
                {
                    body.push(String::new());
                    body.push(format!(
                        "# [{}]: minder's control protocol is built in",
                        sec.name
                    ));
                }
                _ => {
                    let why = match kind {
                        "group" => "minder has no groups: name several programs in `minder ctl` instead, or use depends_on for an order",
                        "inet_http_server" => "minder answers on its Unix socket only; `metrics` serves Prometheus over TCP",
                        "include" => "supervisord reads [include] of the main file only",
                        _ => "minder has no equivalent",
                    };
                    body.push(String::new());
                    body.push(format!("# [{}]", sec.name));
                    if sec.entries.is_empty() {
                        self.warn(
                            sec.file,
                            sec.line,
                            format_args!("[{}]: not converted ({why})", sec.name),
                        );
                    }
                    for e in &sec.entries {
                        self.not_converted(&mut body, sec, e, why);
                    }
                }
            }
        }

        let mut out = format!(
            "# minder config converted from the supervisord config {}\n# by `minder import supervisord`. Check it with `minder check -c FILE`.\n",
            main.display()
        );
        if !supervisor.is_empty() {
            out.push_str("\n[supervisor]\n");
            for l in &supervisor {
                out.push_str(l);
                out.push('\n');
            }
        }
        for l in &body {
            out.push_str(l);
            out.push('\n');
        }
        Ok(Converted {
            toml: out,
            warnings: self.warnings,
        })
    }

    fn supervisord_section(&mut self, sec: &Section, out: &mut Lines) -> Result<(), ImportError> {
        out.push(format!(
            "# from [supervisord] ({})",
            self.ini.files[sec.file].display()
        ));
        // environment= first: %(ENV_X)s of later keys sees it.
        if let Some(e) = sec.get("environment") {
            let text = self.expand(sec, e, &|_| None, &mut Instances::default())?;
            self.global_env =
                pyfmt::key_value_pairs(&text).map_err(|m| self.entry_error(sec, e, m))?;
        }
        for e in &sec.entries {
            let value = self.expand(sec, e, &|_| None, &mut Instances::default())?;
            match e.key.as_str() {
                "logfile" => match special_log_path(&value) {
                    _ if value.trim() == "/dev/null" => out.push(format!(
                        "# logfile = {value}: minder's own log goes to its stderr only"
                    )),
                    Some(_) => out.push(format!(
                        "# logfile = {value}: minder's own log goes to its stderr already"
                    )),
                    None if value.eq_ignore_ascii_case("none") || value.eq_ignore_ascii_case("off") => {
                        out.push(format!("# logfile = {value}: minder's own log goes to its stderr only"))
                    }
                    None => out.push(format!("log_file = {}", quote(&value))),
                },
                "loglevel" => {
                    let level = match value.to_lowercase().as_str() {
                        "critical" | "error" => "error",
                        "warn" => "warn",
                        "info" => "info",
                        "debug" => "debug",
                        "trace" | "blather" => "trace",
                        other => {
                            return Err(self.entry_error(sec, e, format!("bad logging level name {other:?}")))
                        }
                    };
                    out.push(format!("log_level = {}", quote(level)));
                }
                "childlogdir" => out.push(format!("log_dir = {}", quote(&value))),
                "environment" => out.push(format!(
                    "# environment = {}: set in each program's environment below",
                    one_line(&value)
                )),
                "nodaemon" if parse_bool(&value).is_ok_and(|b| b) => {
                    out.push("# nodaemon = true: minder always runs in the foreground".into())
                }
                "nodaemon" => self.not_converted(
                    out,
                    sec,
                    e,
                    "minder always runs in the foreground: run it under systemd (packaging/systemd) or as a container's PID 1",
                ),
                "logfile_maxbytes" | "logfile_backups" => self.not_converted(
                    out,
                    sec,
                    e,
                    "minder's own log_file is rotated daily; log_files says how many days are kept",
                ),
                "pidfile" => self.not_converted(out, sec, e, "minder writes no pid file: `minder ctl pid` prints its PID"),
                "minfds" | "minprocs" => self.not_converted(
                    out,
                    sec,
                    e,
                    "set limits = { nofile = N } or { nproc = N } on the programs that need them",
                ),
                "user" => self.not_converted(out, sec, e, "run minder as that user (systemd's User=), or set user in each program"),
                "umask" => self.not_converted(out, sec, e, "minder has no umask setting; its children inherit minder's"),
                "directory" => self.not_converted(out, sec, e, "minder does not change directory; each program's directory defaults to the config file's"),
                _ => self.not_converted(out, sec, e, "minder has no equivalent"),
            }
        }
        Ok(())
    }

    fn unix_http_server(&mut self, sec: &Section, out: &mut Lines) -> Result<(), ImportError> {
        out.push(format!(
            "# from [unix_http_server] ({})",
            self.ini.files[sec.file].display()
        ));
        for e in &sec.entries {
            let value = self.expand(sec, e, &|_| None, &mut Instances::default())?;
            match e.key.as_str() {
                "file" => out.push(format!("socket = {}", quote(&value))),
                "chmod" => {
                    let mode = u32::from_str_radix(value.trim(), 8)
                        .ok()
                        .filter(|m| *m <= 0o777)
                        .ok_or_else(|| self.entry_error(sec, e, format!("{value} can not be converted to an octal type")))?;
                    out.push(format!("socket_mode = \"{mode:04o}\""));
                }
                "chown" => {
                    let (user, group) = match value.split_once(':') {
                        Some((u, g)) => (u, Some(g)),
                        None => (value.as_str(), None),
                    };
                    match group {
                        Some(g) if group_exists(g) => {
                            out.push(format!("socket_group = {}", quote(g)));
                            out.push(format!(
                                "# chown = {value}: the socket belongs to minder's own user, not {user:?}; socket_group lets {g:?} in"
                            ));
                        }
                        Some(g) => {
                            out.push(format!("# socket_group = {}", quote(g)));
                            self.not_converted(out, sec, e, &format!("no group {g:?} on this host: create it, then uncomment socket_group"));
                        }
                        None => self.not_converted(out, sec, e, "the socket belongs to minder's own user; socket_group lets a group in"),
                    }
                }
                "username" | "password" => self.not_converted(
                    out,
                    sec,
                    e,
                    "minder checks the peer's user (root, its own user, members of socket_group) instead of a password",
                ),
                _ => self.not_converted(out, sec, e, "minder has no equivalent"),
            }
        }
        Ok(())
    }

    fn eventlistener(&mut self, sec: &Section, out: &mut Lines) -> Result<(), ImportError> {
        let events = sec
            .get("events")
            .map(|e| e.value.clone())
            .unwrap_or_default();
        let mut on: Vec<&str> = Vec::new();
        for ev in events.split(',').map(|e| e.trim().to_uppercase()) {
            let states: &[&str] = match ev.as_str() {
                "PROCESS_STATE" => &[
                    "starting", "running", "backoff", "stopping", "stopped", "exited", "fatal",
                ],
                "PROCESS_STATE_STARTING" => &["starting"],
                "PROCESS_STATE_RUNNING" => &["running"],
                "PROCESS_STATE_BACKOFF" => &["backoff"],
                "PROCESS_STATE_STOPPING" => &["stopping"],
                "PROCESS_STATE_STOPPED" => &["stopped"],
                "PROCESS_STATE_EXITED" => &["exited"],
                "PROCESS_STATE_FATAL" => &["fatal"],
                _ => &[],
            };
            for s in states {
                if !on.contains(s) {
                    on.push(s);
                }
            }
        }
        out.push(format!(
            "# [{}]: minder runs hooks on state changes instead of event listeners; the nearest is",
            sec.name
        ));
        out.push("#   [[supervisor.hooks]]".into());
        out.push(format!("#   on = {}", array(&on)));
        if let Some(c) = sec.get("command") {
            let argv = shlex::split(&c.value).unwrap_or_else(|| vec![c.value.clone()]);
            out.push(format!("#   command = {}", array(&argv)));
        }
        out.push("# where the hook gets one event as JSON on stdin (not supervisord's listener protocol).".into());
        let (file, line) = sec
            .get("command")
            .map_or((sec.file, sec.line), |e| (e.file, e.line));
        self.warn(
            file,
            line,
            format_args!(
                "[{}]: not converted (write a [[supervisor.hooks]] entry: a hook gets the event as JSON on stdin)",
                sec.name
            ),
        );
        if on.contains(&"fatal") {
            out.push("# If it stops supervisord when a process goes FATAL, on_fatal = \"shutdown\" in a program does that".into());
            out.push("# (set in every program when the listener looks like it does: see on_fatal above).".into());
        }
        for e in &sec.entries {
            out.push(format!("#   {} = {}", e.key, one_line(&e.value)));
        }
        Ok(())
    }

    fn program(
        &mut self,
        sec: &Section,
        sections: &[Section],
        fatal_listener: Option<&str>,
    ) -> Result<Lines, ImportError> {
        let (kind, raw_name) = sec.name.split_once(':').unwrap_or(("program", ""));
        let program_name = raw_name.trim().to_string();
        if program_name.is_empty() || program_name.contains([' ', ':', '/']) {
            return Err(self.error(
                sec.file,
                sec.line,
                format!("[{}]: invalid program name {program_name:?} (supervisord refuses names with spaces, ':' or '/')", sec.name),
            ));
        }
        let group_name = sections
            .iter()
            .filter_map(|s| Some((s.name.strip_prefix("group:")?, s.get("programs")?)))
            .find(|(_, programs)| programs.value.split(',').any(|p| p.trim() == program_name))
            .map_or(program_name.clone(), |(g, _)| g.trim().to_string());

        // Keys read before the per-process loop know no process_num.
        let common = |name: &str| -> Option<Var> {
            match name {
                "program_name" => Some(Var::Text(program_name.clone())),
                "group_name" => Some(Var::Text(group_name.clone())),
                _ => None,
            }
        };
        let int_of = |this: &Self, key: &str, default: i64| -> Result<i64, ImportError> {
            match sec.get(key) {
                None => Ok(default),
                Some(e) => {
                    let v = this.expand(sec, e, &common, &mut Instances::default())?;
                    parse_int(&v).ok_or_else(|| {
                        this.entry_error(sec, e, format!("invalid literal for int(): {v:?}"))
                    })
                }
            }
        };
        let numprocs = int_of(self, "numprocs", 1)?;
        let numprocs_start = int_of(self, "numprocs_start", 0)?;
        let instances = numprocs.max(1);

        let env_vars: RefCell<Vec<(String, String)>> = RefCell::default();
        let per_process = |name: &str| -> Option<Var> {
            match name {
                "process_num" => Some(if numprocs > 1 {
                    Var::Instance {
                        start: numprocs_start,
                        count: numprocs,
                    }
                } else {
                    Var::Int(numprocs_start)
                }),
                "numprocs" => Some(Var::Int(numprocs)),
                _ => common(name).or_else(|| {
                    let var = name.strip_prefix("ENV_")?;
                    env_vars
                        .borrow()
                        .iter()
                        .find(|(k, _)| k == var)
                        .map(|(_, v)| Var::Text(v.clone()))
                }),
            }
        };
        let mut numbers = Instances::default();

        // process_name: supervisord's names for the first and last process.
        let process_name_entry = sec.get("process_name");
        let names = match process_name_entry {
            None => None,
            Some(e) => {
                if numprocs > 1 && !e.value.contains("%(process_num)") {
                    return Err(self.entry_error(
                        sec,
                        e,
                        "%(process_num) must be present within process_name when numprocs > 1",
                    ));
                }
                let name_of = |n: i64| {
                    let vars = |name: &str| {
                        if name == "process_num" {
                            Some(Var::Int(n))
                        } else {
                            per_process(name)
                        }
                    };
                    self.expand(sec, e, &vars, &mut Instances::default())
                };
                Some((
                    name_of(numprocs_start)?,
                    name_of(numprocs_start + instances - 1)?,
                ))
            }
        };
        if names.is_none() && numprocs > 1 {
            return Err(self.error(
                sec.file,
                sec.line,
                format!(
                    "[{}]: %(process_num) must be present within process_name when numprocs > 1",
                    sec.name
                ),
            ));
        }

        // environment: supervisord's, then the program's.
        let mut env = self.global_env.clone();
        let mut env_reserved = Vec::new();
        if let Some(e) = sec.get("environment") {
            let mut text = self.expand(sec, e, &per_process, &mut numbers)?;
            for (placeholder, word) in PLACEHOLDER_WORDS {
                text = text.replace(placeholder, word);
            }
            let pairs = pyfmt::key_value_pairs(&text).map_err(|m| self.entry_error(sec, e, m))?;
            for (k, mut v) in pairs {
                for (placeholder, word) in PLACEHOLDER_WORDS {
                    v = v.replace(word, placeholder);
                }
                if matches!(
                    k.as_str(),
                    "MINDER_PROCESS" | "MINDER_PROGRAM" | "MINDER_INSTANCE"
                ) {
                    env_reserved.push(k);
                    continue;
                }
                env_vars.borrow_mut().push((k.clone(), v.clone()));
                match env.iter_mut().find(|(key, _)| *key == k) {
                    Some(pair) => pair.1 = v,
                    None => env.push((k, v)),
                }
            }
        }

        let Some(command_entry) = sec.get("command") else {
            return Err(self.error(
                sec.file,
                sec.line,
                format!("program section [{}] does not specify a command", sec.name),
            ));
        };
        let command_text = self.expand(sec, command_entry, &per_process, &mut numbers)?;
        let argv = shlex::split(&command_text).ok_or_else(|| {
            self.entry_error(
                sec,
                command_entry,
                "cannot split it into arguments: unbalanced quotes or a trailing backslash",
            )
        })?;
        if argv.is_empty() {
            return Err(self.entry_error(sec, command_entry, "is empty"));
        }
        let shell = needs_shell(&argv, &command_text);

        // Values of the other keys, checked as supervisord checks them.
        let mut values: Vec<(Entry, String)> = Vec::new();
        for e in &sec.entries {
            let v = match e.key.as_str() {
                "command" => command_text.clone(),
                "environment" | "process_name" => e.value.clone(),
                _ => self.expand(sec, e, &per_process, &mut numbers)?,
            };
            values.push((e.clone(), v));
        }
        let value_of = |key: &str| {
            values
                .iter()
                .find(|(e, _)| e.key == key)
                .map(|(e, v)| (e, v.as_str()))
        };
        let bool_of = |key: &str, default: bool| -> Result<bool, ImportError> {
            match value_of(key) {
                None => Ok(default),
                Some((e, v)) => parse_bool(v).map_err(|m| self.entry_error(sec, e, m)),
            }
        };
        let stopasgroup = bool_of("stopasgroup", false)?;
        let killasgroup = bool_of("killasgroup", stopasgroup)?;
        if stopasgroup && !killasgroup {
            let e = value_of("killasgroup")
                .map(|(e, _)| e)
                .unwrap_or(command_entry);
            return Err(self.entry_error(
                sec,
                e,
                "cannot set stopasgroup=true and killasgroup=false",
            ));
        }
        let redirect_stderr = bool_of("redirect_stderr", false)?;
        bool_of("autostart", true)?;
        let log_of = |key: &str| -> LogFile {
            match value_of(key) {
                None => LogFile::Auto,
                Some((_, v)) => log_file(v),
            }
        };
        let stdout_log = log_of("stdout_logfile");
        let stderr_log = if redirect_stderr {
            LogFile::None
        } else {
            log_of("stderr_logfile")
        };
        // Rotation follows the first stream written to a file.
        let rotated = if matches!(stdout_log, LogFile::File(_) | LogFile::Auto) {
            "stdout"
        } else {
            "stderr"
        };

        // The program's name in minder.
        let name: String = program_name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let table = format!("program.{}", key(&name));

        let mut head: Lines = Vec::new();
        let mut keys: Lines = Vec::new();
        let mut backoff: Lines = Vec::new();
        let mut logs: Lines = Vec::new();
        head.push(format!(
            "# from [{}] ({}:{})",
            sec.name,
            self.ini.files[sec.file].display(),
            sec.line
        ));
        if name != program_name {
            head.push(format!(
                "# supervisord's name {program_name:?} has characters minder's names cannot have"
            ));
        }
        if let Some((first, last)) = &names {
            if numprocs > 1 {
                head.push(format!(
                    "# supervisord named its processes {group_name}:{first} .. {group_name}:{last}; minder names them {name}:0 .. {name}:{}",
                    instances - 1
                ));
            } else if *first != program_name {
                head.push(format!(
                    "# supervisord named the process {group_name}:{first}; minder names it {name}"
                ));
            }
        } else if group_name != program_name {
            head.push(format!("# supervisord named the process {group_name}:{program_name}; minder names it {name}"));
        }
        if kind == "fcgi-program" {
            head.push("# a FastCGI program: minder passes listen sockets as fd 3 (LISTEN_FDS), not as stdin".into());
        }
        head.push(format!("[{table}]"));

        for (e, v) in &values {
            let (e, v) = (e, v.as_str());
            let int = |this: &Self| -> Result<i64, ImportError> {
                parse_int(v).ok_or_else(|| {
                    this.entry_error(sec, e, format!("invalid literal for int(): {v:?}"))
                })
            };
            match e.key.as_str() {
                "command" => {
                    if shell {
                        keys.push("# shell syntax: run by sh -c (supervisord runs no shell and would pass it to the program as arguments)".into());
                        keys.push(format!("command = {}", array(&["sh", "-c", command_text.as_str()])));
                    } else {
                        keys.push(format!("command = {}", array(&argv)));
                    }
                }
                "numprocs" if numprocs > 1 => keys.push(format!("instances = {numprocs}")),
                "numprocs" if numprocs < 1 => {
                    keys.push("autostart = false".into());
                    self.not_converted(&mut keys, sec, e, "supervisord runs no process of it; minder has one, not started");
                }
                "numprocs" => {}
                "numprocs_start" if numprocs > 1 && numprocs_start != 0 => keys.push(format!(
                    "# numprocs_start = {numprocs_start}: minder numbers instances from 0"
                )),
                "numprocs_start" => {}
                "process_name" => keys.push(format!("# process_name = {} (see the names above)", one_line(v))),
                "directory" => keys.push(format!("directory = {}", quote(v))),
                "user" => {
                    if user_exists(v) {
                        keys.push(format!("user = {}", quote(v)));
                    } else {
                        keys.push(format!("# user = {}", quote(v)));
                        self.not_converted(&mut keys, sec, e, "no such user on this host: create it, then uncomment user");
                    }
                }
                "autostart" if numprocs < 1 => {}
                "autostart" => keys.push(format!("autostart = {}", parse_bool(v).unwrap_or(true))),
                "autorestart" => keys.push(restart_line(v).map_err(|m| self.entry_error(sec, e, m))?),
                "exitcodes" => {
                    let codes = parse_exit_codes(v).map_err(|m| self.entry_error(sec, e, m))?;
                    let list: Vec<String> = codes.iter().map(i64::to_string).collect();
                    keys.push(format!("exit_codes = [{}]", list.join(", ")));
                }
                "startsecs" => keys.push(format!("start_secs = \"{}s\"", int(self)?.max(0))),
                "startretries" => {
                    let n = int(self)?;
                    if n <= 0 {
                        backoff.push("max_retries = 1".into());
                        self.not_converted(
                            &mut backoff,
                            sec,
                            e,
                            "supervisord gives up after the first failed start; minder's max_retries = 0 never gives up, so 1 (two attempts) is the nearest",
                        );
                    } else {
                        backoff.push(format!("max_retries = {n}"));
                    }
                }
                "stopsignal" => {
                    let s = signal_name(v).ok_or_else(|| self.entry_error(sec, e, format!("value {v:?} is not a valid signal name")))?;
                    keys.push(format!("stop_signal = {}", quote(&s)));
                }
                "stopwaitsecs" => keys.push(format!("stop_timeout = \"{}s\"", int(self)?.max(0))),
                "stopasgroup" | "killasgroup" => {
                    let first = ["stopasgroup", "killasgroup"]
                        .iter()
                        .find(|k| sec.get(k).is_some())
                        .copied();
                    if first == Some(e.key.as_str()) {
                        if stopasgroup != killasgroup {
                            keys.push("# stopasgroup = false, killasgroup = true: minder signals the group for both".into());
                        }
                        keys.push(format!("kill_group = {}", stopasgroup || killasgroup));
                    }
                }
                "redirect_stderr" if redirect_stderr => {
                    logs.push("stderr = \"stdout\"".into());
                }
                "redirect_stderr" => {}
                "stdout_logfile" | "stderr_logfile" => {
                    let stream = &e.key[..6];
                    if stream == "stderr" && !redirect_stderr && matches!(stdout_log, LogFile::File(_)) && log_file(v) == stdout_log {
                        logs.push(format!("# stderr_logfile = {}: the stdout file, so stderr is merged into it", one_line(v)));
                        logs.push("stderr = \"stdout\"".into());
                        continue;
                    }
                    if stream == "stderr" && redirect_stderr {
                        logs.push(format!(
                            "# stderr_logfile = {}: ignored, as supervisord ignores it with redirect_stderr = true",
                            one_line(v)
                        ));
                        continue;
                    }
                    match log_file(v) {
                        LogFile::Auto => logs.push(format!(
                            "# {} = {v}: minder's default, {{name}}.{stream}.log in log_dir",
                            e.key
                        )),
                        LogFile::None => logs.push(format!("{stream} = \"none\"")),
                        LogFile::Inherit => {
                            if stream == "stderr" && special_log_path(v) == Some(1) {
                                logs.push(format!("# {} = {v}: minder's own stderr, not its stdout", e.key));
                            } else if stream == "stdout" && special_log_path(v) == Some(2) {
                                logs.push(format!("# {} = {v}: minder's own stdout, not its stderr", e.key));
                            }
                            logs.push(format!("{stream} = \"inherit\""));
                        }
                        LogFile::Syslog => {
                            self.not_converted(&mut logs, sec, e, "minder writes no syslog: \"inherit\" sends output to minder's own stream (the journal under systemd)")
                        }
                        LogFile::File(path) => {
                            let own_file = ["{instance}", "{port}"].iter().any(|p| path.contains(p));
                            let path = if numprocs > 1 && !own_file {
                                let per = per_instance(&path);
                                logs.push(format!(
                                    "# supervisord had all {numprocs} processes write {path}; minder gives each its own file"
                                ));
                                per
                            } else {
                                path
                            };
                            logs.push(format!("{stream} = {}", quote(&path)));
                        }
                    }
                }
                "stdout_logfile_maxbytes" | "stderr_logfile_maxbytes" => {
                    let bytes = parse_byte_size(v).ok_or_else(|| self.entry_error(sec, e, format!("invalid byte size {v:?}")))?;
                    let target = if e.key.starts_with("stdout") { &stdout_log } else { &stderr_log };
                    if e.key.starts_with(rotated) && matches!(target, LogFile::File(_) | LogFile::Auto) {
                        logs.push(format!("max_size = {}", quote(&size_text(bytes))));
                    } else if matches!(target, LogFile::File(_) | LogFile::Auto) {
                        logs.push(format!("# {} = {v}: minder rotates both files at {rotated}'s size", e.key));
                    } else {
                        logs.push(format!("# {} = {v}: no file to rotate", e.key));
                    }
                }
                "stdout_logfile_backups" | "stderr_logfile_backups" => {
                    let n = int(self)?;
                    let target = if e.key.starts_with("stdout") { &stdout_log } else { &stderr_log };
                    if e.key.starts_with(rotated) && matches!(target, LogFile::File(_) | LogFile::Auto) {
                        logs.push(format!("backups = {}", n.clamp(0, 1000)));
                    } else if matches!(target, LogFile::File(_) | LogFile::Auto) {
                        logs.push(format!("# {} = {v}: minder keeps {rotated}'s number for both files", e.key));
                    } else {
                        logs.push(format!("# {} = {v}: no file to rotate", e.key));
                    }
                }
                "stdout_syslog" | "stderr_syslog" if !parse_bool(v).unwrap_or(false) => {}
                "stdout_syslog" | "stderr_syslog" => self.not_converted(
                    &mut logs,
                    sec,
                    e,
                    "minder writes no syslog: \"inherit\" sends output to minder's own stream (the journal under systemd)",
                ),
                "priority" => {
                    let why = match started_before(sections, &program_name) {
                        Some(before) => format!(
                            "supervisord started {} first, without waiting; minder starts programs together, and depends_on = {} would wait until {} running",
                            before.join(", "),
                            array(&before),
                            if before.len() == 1 { "it is" } else { "they are" }
                        ),
                        None => "minder starts programs together: list the programs this one must wait for in depends_on".to_string(),
                    };
                    self.not_converted(&mut keys, sec, e, &why);
                }
                "umask" => self.not_converted(&mut keys, sec, e, "minder has no umask setting: wrap the command in sh -c 'umask 022; exec ...'"),
                "serverurl" if v.trim().eq_ignore_ascii_case("auto") => {}
                "serverurl" => self.not_converted(&mut keys, sec, e, "children talk to minder with `minder ctl`, which finds the socket from the config or $MINDER_SOCKET"),
                "stdout_events_enabled" | "stderr_events_enabled" | "stdout_capture_maxbytes" | "stderr_capture_maxbytes" => {
                    self.not_converted(&mut keys, sec, e, "minder has no output events: hooks see state changes only")
                }
                "environment" => {}
                "socket" | "socket_backlog" | "socket_owner" | "socket_mode" if kind == "fcgi-program" => self.not_converted(
                    &mut keys,
                    sec,
                    e,
                    "minder's listen sockets are passed as fd 3 with LISTEN_FDS: see listen in docs/config.md",
                ),
                _ => self.not_converted(&mut keys, sec, e, "supervisord does not know this key either"),
            }
        }
        // supervisord's defaults where minder's differ.
        if sec.get("autorestart").is_none() {
            keys.push(format!(
                "{}  # supervisord's default, autorestart = {SUPERVISORD_AUTORESTART}",
                restart_line(SUPERVISORD_AUTORESTART).unwrap_or_default()
            ));
        }
        if sec.get("stopasgroup").is_none() && sec.get("killasgroup").is_none() && shell {
            keys.push(
                "kill_group = true  # the shell runs the commands as its children: stop them all"
                    .into(),
            );
        } else if sec.get("stopasgroup").is_none() && sec.get("killasgroup").is_none() {
            keys.push("kill_group = false  # supervisord's default: signal the process only, not its group".into());
        }
        if sec.get("startretries").is_none() {
            backoff.push(format!(
                "max_retries = {SUPERVISORD_STARTRETRIES}  # supervisord's default startretries"
            ));
        }
        if let Some(listener) = fatal_listener {
            keys.push(format!(
                "on_fatal = \"shutdown\"  # as the event listener {listener:?} stopped supervisord on PROCESS_STATE_FATAL"
            ));
        }
        if let Some(base) = numbers.port {
            keys.push(format!(
                "port = {base}  # {{port}} = port + instance: {base} .. {}, as supervisord numbered them",
                base + numprocs - 1
            ));
        }
        if !numbers.lossy.is_empty() {
            numbers.lossy.sort();
            numbers.lossy.dedup();
            let spec = numbers.lossy[0].as_str();
            let supervisords = pyfmt::expand(
                spec,
                &|n| (n == "process_num").then_some(Var::Int(numprocs_start)),
                &mut Instances::default(),
            )
            .unwrap_or_default();
            keys.push(format!(
                "# {spec} became {{instance}}: minder counts from 0 unpadded, so the first process gets 0 where supervisord wrote {supervisords}"
            ));
            self.warn(
                sec.file,
                sec.line,
                format_args!(
                    "[{}] {spec}: written as {{instance}} (from 0, unpadded)",
                    sec.name
                ),
            );
        }
        if has_placeholder_like(&command_text) {
            self.warn(
                command_entry.file,
                command_entry.line,
                format_args!(
                    "[{}] command: {{word}} in it is a minder placeholder; check the converted command",
                    sec.name
                ),
            );
        }

        let mut out = head;
        out.extend(keys);
        if !env.is_empty() || !env_reserved.is_empty() {
            let mut env_lines: Lines = Vec::new();
            for k in &env_reserved {
                env_lines.push(format!(
                    "# {k} is set by minder for every process and cannot be configured"
                ));
            }
            for (k, v) in &env {
                env_lines.push(format!("{} = {}", key(k), quote(v)));
            }
            push_table(&mut out, &format!("{table}.environment"), env_lines);
        }
        push_table(&mut out, &format!("{table}.backoff"), backoff);
        push_table(&mut out, &format!("{table}.logs"), logs);
        Ok(out)
    }
}

/// The name of an event listener that looks like it stops supervisord
/// when a process goes FATAL (the usual "exit the container" listener): it
/// listens to PROCESS_STATE_FATAL and its command speaks of killing,
/// stopping or shutting down.
fn fatal_listener(sections: &[Section]) -> Option<String> {
    sections.iter().find_map(|sec| {
        let name = sec.name.strip_prefix("eventlistener:")?;
        let events = sec
            .get("events")
            .map(|e| e.value.to_uppercase())
            .unwrap_or_default();
        let fatal = events
            .split(',')
            .any(|ev| matches!(ev.trim(), "PROCESS_STATE_FATAL" | "PROCESS_STATE"));
        let command = sec
            .get("command")
            .map(|e| e.value.to_lowercase())
            .unwrap_or_default();
        let kills = ["kill", "shutdown", "supervisor", "exit", "stop"]
            .iter()
            .any(|w| command.contains(w));
        (fatal && kills).then(|| name.trim().to_string())
    })
}

/// The programs supervisord starts just before `name` by `priority` (the
/// nearest lower priority; 999 where none is given), if any.
fn started_before(sections: &[Section], name: &str) -> Option<Vec<String>> {
    let priorities: Vec<(String, i64)> = sections
        .iter()
        .filter_map(|s| {
            let n = s
                .name
                .strip_prefix("program:")
                .or_else(|| s.name.strip_prefix("fcgi-program:"))?;
            let p = s
                .get("priority")
                .map_or(Some(999), |e| parse_int(&e.value))?;
            Some((n.trim().to_string(), p))
        })
        .collect();
    let mine = priorities.iter().find(|(n, _)| n == name)?.1;
    let nearest = priorities
        .iter()
        .map(|(_, p)| *p)
        .filter(|p| *p < mine)
        .max()?;
    Some(
        priorities
            .into_iter()
            .filter(|(_, p)| *p == nearest)
            .map(|(n, _)| n)
            .collect(),
    )
}

/// Appends `[name]` with `lines`; comments alone go without a header.
fn push_table(out: &mut Lines, name: &str, lines: Lines) {
    if lines.iter().any(|l| !l.starts_with('#')) {
        out.push(format!("[{name}]"));
    }
    out.extend(lines);
}

fn one_line(s: &str) -> String {
    s.split('\n').collect::<Vec<_>>().join(" ")
}

/// `/dev/stdout`, `/proc/1/fd/1` and the like: 1 or 2 for the stream they name.
fn special_log_path(path: &str) -> Option<u8> {
    match path.trim() {
        "/dev/stdout" | "/proc/1/fd/1" | "/proc/self/fd/1" | "/dev/fd/1" => Some(1),
        "/dev/stderr" | "/proc/1/fd/2" | "/proc/self/fd/2" | "/dev/fd/2" => Some(2),
        _ => None,
    }
}

/// supervisord's `logfile_name`.
fn log_file(v: &str) -> LogFile {
    match v.to_lowercase().as_str() {
        "none" | "off" => LogFile::None,
        "auto" => LogFile::Auto,
        "syslog" => LogFile::Syslog,
        _ if special_log_path(v).is_some() => LogFile::Inherit,
        _ => LogFile::File(v.to_string()),
    }
}

/// `/var/log/worker.log` -> `/var/log/worker.{instance}.log`.
fn per_instance(path: &str) -> String {
    let file_start = path.rfind('/').map_or(0, |i| i + 1);
    match path[file_start..].rfind('.') {
        Some(dot) if dot > 0 => {
            let at = file_start + dot;
            format!("{}.{{instance}}{}", &path[..at], &path[at..])
        }
        _ => format!("{path}.{{instance}}"),
    }
}

/// supervisord's `boolean`.
fn parse_bool(v: &str) -> Result<bool, String> {
    match v.to_lowercase().as_str() {
        "yes" | "true" | "on" | "1" => Ok(true),
        "no" | "false" | "off" | "0" => Ok(false),
        _ => Err(format!("not a valid boolean value: {v:?}")),
    }
}

/// Python's `int()` of a string: blanks around, a sign, `_` between digits.
fn parse_int(v: &str) -> Option<i64> {
    let t = v.trim();
    let digits = t.trim_start_matches(['+', '-']);
    if digits.starts_with('_') || digits.ends_with('_') || digits.contains("__") {
        return None;
    }
    t.replace('_', "").parse().ok()
}

/// supervisord's `list_of_exitcodes`.
fn parse_exit_codes(v: &str) -> Result<Vec<i64>, String> {
    if v.is_empty() {
        return Ok(Vec::new());
    }
    v.split(',')
        .map(|c| parse_int(c).filter(|n| (0..=255).contains(n)))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| format!("not a valid list of exit codes: {v:?}"))
}

/// supervisord's `byte_size`: `KB`, `MB`, `GB` are powers of 1024.
fn parse_byte_size(v: &str) -> Option<u64> {
    let lower = v.to_lowercase();
    for (suffix, mult) in [("kb", 1u64 << 10), ("mb", 1 << 20), ("gb", 1 << 30)] {
        if let Some(n) = lower.strip_suffix(suffix) {
            return u64::try_from(parse_int(n)?).ok()?.checked_mul(mult);
        }
    }
    u64::try_from(parse_int(&lower)?).ok()
}

/// A byte count as minder's `max_size` reads it (KiB, MiB, GiB: powers of 1024).
fn size_text(bytes: u64) -> String {
    for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if bytes > 0 && bytes % size == 0 {
            return format!("{}{unit}", bytes / size);
        }
    }
    bytes.to_string()
}

fn restart_line(v: &str) -> Result<String, String> {
    let policy = match v.to_lowercase().as_str() {
        "yes" | "true" | "on" | "1" => "always",
        "no" | "false" | "off" | "0" => "never",
        "unexpected" => "on-failure",
        other => return Err(format!("invalid 'autorestart' value {other:?}")),
    };
    Ok(format!("restart = \"{policy}\""))
}

/// supervisord's `signal_number`, as a name minder reads (`TERM`).
fn signal_name(v: &str) -> Option<String> {
    use nix::sys::signal::Signal;
    use std::str::FromStr;
    let t = v.trim();
    let signal = match t.parse::<i32>() {
        Ok(n) => Signal::try_from(n).ok()?,
        Err(_) => {
            let upper = t.to_uppercase();
            let name = if upper.starts_with("SIG") {
                upper
            } else {
                format!("SIG{upper}")
            };
            Signal::from_str(&name).ok()?
        }
    };
    Some(signal.as_str().trim_start_matches("SIG").to_string())
}

/// Whether a command needs a shell: a word that is an operator or a
/// redirection, or any `$`, backquote or glob outside single quotes.
fn needs_shell(argv: &[String], text: &str) -> bool {
    let program = argv[0].rsplit('/').next().unwrap_or("");
    if matches!(program, "sh" | "bash" | "dash" | "zsh" | "ash" | "ksh") {
        return false;
    }
    let operator = argv.iter().any(|w| {
        matches!(w.as_str(), "|" | "||" | "&&" | ";" | "&" | ";;")
            || w.starts_with('>')
            || w.starts_with('<')
            || w.starts_with("2>")
            || w.starts_with("1>")
            || w.starts_with("&>")
    });
    operator || outside_single_quotes(text).contains(['$', '`'])
}

/// `text` without what single quotes enclose.
fn outside_single_quotes(text: &str) -> String {
    let mut out = String::new();
    let mut quoted = false;
    for c in text.chars() {
        if c == '\'' {
            quoted = !quoted;
        } else if !quoted {
            out.push(c);
        }
    }
    out
}

/// `{word}`, which minder would read as a placeholder.
fn has_placeholder_like(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(open) = text[i..].find('{').map(|o| o + i) {
        let rest = &bytes[open + 1..];
        let n = rest
            .iter()
            .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
            .count();
        let is_shell = open > 0 && bytes[open - 1] == b'$';
        if n > 0
            && rest.get(n) == Some(&b'}')
            && !is_shell
            && !matches!(&text[open + 1..open + 1 + n], "instance" | "port")
        {
            return true;
        }
        i = open + 1;
    }
    false
}

fn user_exists(name: &str) -> bool {
    crate::users::user(name).is_ok_and(|u| u.is_some())
}

fn group_exists(name: &str) -> bool {
    crate::users::group(name).is_ok_and(|g| g.is_some())
}
