//! The config keys: one function per table, reading keys by name through a
//! [`TableReader`]. A new key is one `get` line here plus a field.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use toml::de::DeValue;

use super::diagnostic::Span;
use super::reader::{conv, TableReader, Value, ValueError};
use super::Defaults;
use super::{
    placeholder, BackoffConfig, HealthConfig, HttpMethod, HttpProbe, ListenAddress, LogFormat,
    LogTarget, LogsConfig, OnFatal, OnUnhealthy, ProbeTarget, ProgramConfig, Resources,
    RestartPolicy, Rlimit, RlimitKind, StatusSet, SupervisorConfig, TlsConfig, BODY_LIMIT, RLIMITS,
};
use super::{HookAction, HookConfig, Webhook};

/// Upper bound for `instances`: far above any sane use, low enough that a
/// typo cannot make minder try to start millions of processes.
pub(crate) const MAX_INSTANCES: u32 = 10_000;

/// A program as read from its file, with what cross-program checks need.
#[derive(Debug)]
pub(crate) struct ProgramDraft {
    /// The validated settings (defaults where a value was rejected: the load
    /// fails then anyway).
    pub(crate) config: ProgramConfig,
    /// Index of the file (in load order) that defines it.
    pub(crate) source: usize,
    /// Where the program's table is defined (its `[program.NAME]` header).
    pub(crate) header: Span,
    /// `depends_on` entries with their spans, self-references removed.
    pub(crate) depends_on: Vec<(String, Span)>,
    /// Where `logs.stdout` and `logs.stderr` are set, when they are.
    pub(crate) log_spans: [Option<Span>; 2],
}

/// Names with where they are written.
pub(crate) type SpannedNames = Vec<(String, Span)>;

/// `[supervisor]` of the main file; `dir` is that file's (absolute) directory.
/// Returns the settings, the `include` patterns, and the program names hooks
/// refer to (checked once every program is known), with their spans.
pub(crate) fn read_supervisor(
    mut r: TableReader<'_, '_>,
    defaults: &Defaults,
    dir: &Path,
) -> (SupervisorConfig, SpannedNames, SpannedNames) {
    let metrics = r.get("metrics", socket_address);
    let mut hook_programs = Vec::new();
    let hooks = match r.raw("hooks") {
        Some((_, value)) => read_hooks(&r, value, dir, &mut hook_programs),
        None => Vec::new(),
    };
    let sup = SupervisorConfig {
        socket: r
            .get("socket", conv::text)
            .map(|s| dir.join(s))
            .unwrap_or_else(|| defaults.socket.clone()),
        socket_mode: r.get("socket_mode", file_mode).unwrap_or(0o600),
        socket_group: r.get("socket_group", known_group),
        log_dir: r
            .get("log_dir", conv::text)
            .map(|s| dir.join(s))
            .unwrap_or_else(|| defaults.log_dir.clone()),
        log_level: r
            .get("log_level", conv::one_of(LOG_LEVELS))
            .and_then(|i| LOG_LEVELS.get(i))
            .unwrap_or(&"info")
            .to_string(),
        shutdown_timeout: r
            .get("shutdown_timeout", conv::duration)
            .unwrap_or(Duration::from_secs(60)),
        log_format: match r.get("log_format", conv::one_of(&["text", "json"])) {
            Some(1) => LogFormat::Json,
            _ => LogFormat::Text,
        },
        log_file: r.get("log_file", conv::text).map(|s| dir.join(s)),
        log_files: r
            .get("log_files", conv::int_in::<usize>(1, 10_000))
            .unwrap_or(7),
        metrics,
        hooks,
        host: r
            .get("host", host_name)
            .unwrap_or_else(|| this_host(HOSTNAME)),
    };
    let include = r.get("include", include_list).unwrap_or_default();
    r.finish();
    (sup, include, hook_programs)
}

/// The default `host`, and the placeholder in it for the machine's hostname.
pub(crate) const HOSTNAME: &str = "{hostname}";

/// `host` with `{hostname}` replaced by the machine's hostname
/// (`localhost` if it has none).
pub(crate) fn this_host(template: &str) -> String {
    let hostname = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string());
    template.replace(HOSTNAME, &hostname)
}

/// `host`: a name that fits in a key or a file name (no `/`, no spaces).
fn host_name(v: &Value<'_>) -> Result<String, ValueError> {
    let text = conv::text(v)?;
    let host = this_host(&text);
    match host
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || *c == '/')
    {
        _ if host.is_empty() => Err(ValueError::invalid("is empty", v)),
        Some(bad) => Err(ValueError::invalid(
            format!("{bad:?} cannot be in a host name (it goes into etcd keys and file names)"),
            v,
        )),
        None => Ok(host),
    }
}

/// `metrics`: an `IP:PORT` to listen on.
fn socket_address(v: &Value<'_>) -> Result<std::net::SocketAddr, ValueError> {
    let text = conv::text(v)?;
    text.parse().map_err(|_| {
        ValueError::invalid(
            format!("{text:?} is not IP:PORT (e.g. \"127.0.0.1:9101\" or \"[::1]:9101\")"),
            v,
        )
    })
}

/// Default bound of one hook run or webhook attempt.
const HOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// `[[supervisor.hooks]]`: an array of tables. The `programs` entries are
/// added to `refs` with their spans, to be checked once every program is known.
fn read_hooks(
    parent: &TableReader<'_, '_>,
    value: &Value<'_>,
    dir: &Path,
    refs: &mut Vec<(String, Span)>,
) -> Vec<HookConfig> {
    let DeValue::Array(items) = value.get_ref() else {
        parent.error(
            &value.span(),
            format!(
                "\"hooks\": expected an array of tables ([[supervisor.hooks]]), found {}",
                value.get_ref().type_str()
            ),
        );
        return Vec::new();
    };
    let mut hooks = Vec::new();
    for item in items {
        let DeValue::Table(table) = item.get_ref() else {
            parent.error(
                &item.span(),
                format!(
                    "\"hooks\": expected a table ([[supervisor.hooks]]), found {}",
                    item.get_ref().type_str()
                ),
            );
            continue;
        };
        let mut r = TableReader::new(parent.src(), parent.diags(), table, "[[supervisor.hooks]]");
        let on = r.get_spanned("on", conv::text_list);
        let programs = r.get("programs", conv::text_list).unwrap_or_default();
        let command = r.get_spanned("command", conv::command);
        let webhook = r.get_spanned("webhook", conv::text);
        let secret_file = r.get_spanned("secret_file", conv::text);
        let (tls, tls_keys) = read_tls(&mut r, dir);
        let timeout = r.get("timeout", positive_duration).unwrap_or(HOOK_TIMEOUT);
        let on = match on {
            Some((list, _)) if !list.is_empty() => {
                for (name, span) in &list {
                    if !crate::config::HOOK_EVENTS.contains(&name.as_str()) {
                        r.error(
                            span,
                            format!(
                                "\"on\": unknown event \"{name}\" (expected one of {})",
                                crate::config::HOOK_EVENTS.join(", ")
                            ),
                        );
                    }
                }
                list.into_iter().map(|(n, _)| n).collect()
            }
            Some((_, span)) => {
                r.error(
                    &span,
                    "\"on\": is empty: name the states that run this hook",
                );
                Vec::new()
            }
            None => {
                r.error(
                    &item.span(),
                    "[[supervisor.hooks]] needs \"on\" (e.g. on = [\"fatal\"])",
                );
                Vec::new()
            }
        };
        let action = match (command, webhook) {
            (Some((argv, _)), None) => {
                if let Some((_, span)) = &secret_file {
                    r.error(
                        span,
                        "\"secret_file\": only a \"webhook\" hook is signed (a \"command\" hook gets the event on its stdin)",
                    );
                }
                if let Some((key, span)) = tls_keys.first() {
                    r.error(
                        span,
                        format!("\"{key}\" applies to an https:// \"webhook\" only"),
                    );
                }
                Some(HookAction::Command(
                    argv.into_iter().map(|(a, _)| a).collect(),
                ))
            }
            (None, Some((url, span))) => {
                if !url.starts_with("https://") {
                    if let Some((key, key_span)) = tls_keys.first() {
                        r.error(key_span, format!("\"{key}\" needs an https:// URL"));
                    }
                }
                if let Err(why) = crate::http::check_url(&url) {
                    r.error(
                        &span,
                        format!(
                            "\"webhook\": {url:?}: {why} (e.g. \"http://127.0.0.1:9000/hook\")"
                        ),
                    );
                }
                let secret = secret_file.and_then(|(file, span)| {
                    super::secret::read_secret(&dir.join(file))
                        .map_err(|why| r.error(&span, format!("\"secret_file\": {why}")))
                        .ok()
                });
                Some(HookAction::Webhook(Box::new(Webhook { url, secret, tls })))
            }
            (None, None) => {
                r.error(
                    &item.span(),
                    "[[supervisor.hooks]] needs one of \"command\" or \"webhook\"",
                );
                None
            }
            (Some(_), Some((_, span))) => {
                r.error(
                    &span,
                    "[[supervisor.hooks]] takes one of \"command\" or \"webhook\", not both",
                );
                None
            }
        };
        r.finish();
        refs.extend(programs.iter().cloned());
        if let Some(action) = action {
            hooks.push(HookConfig {
                on,
                programs: programs.into_iter().map(|(p, _)| p).collect(),
                action,
                timeout,
                directory: dir.to_path_buf(),
            });
        }
    }
    hooks
}

const LOG_LEVELS: &[&str] = &["error", "warn", "info", "debug", "trace"];

/// `include`: an array of patterns; a lone string is accepted as a
/// one-element list because that is what people write for a single pattern.
fn include_list(v: &Value<'_>) -> Result<Vec<(String, Span)>, ValueError> {
    match v.get_ref() {
        DeValue::String(_) => Ok(vec![(conv::text(v)?, v.span())]),
        DeValue::Array(_) => conv::text_list(v),
        _ => Err(ValueError::wrong_type("an array of glob patterns", v)),
    }
}

/// A file mode written as an octal string ("0600").
fn file_mode(v: &Value<'_>) -> Result<u32, ValueError> {
    let Some(s) = v.get_ref().as_str() else {
        let found = v.get_ref().type_str();
        return Err(ValueError::invalid(
            format!(
                "expected an octal string like \"0600\", found {found} (quote the mode: a TOML integer would be read as decimal)"
            ),
            v,
        ));
    };
    let digits = s.strip_prefix("0o").unwrap_or(s);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) && mode <= 0o777 => Ok(mode),
        _ => Err(ValueError::invalid(
            format!("invalid mode \"{s}\": expected octal digits from \"0000\" to \"0777\", like \"0600\""),
            v,
        )),
    }
}

/// A `user`: a name or id the user database knows, looked up the way
/// starting the program will look it up. Checked whoever runs minder (as
/// another user than root, `user` is only accepted if it names that user,
/// which the start checks): `minder check` run as anyone should catch a
/// typo before a daemon running as root fails to start the program.
fn known_user(v: &Value<'_>) -> Result<String, ValueError> {
    let name = conv::user_or_id(v)?;
    let found = crate::users::user(&name).map(|u| u.is_some());
    identity_found(found, "user", name, v)
}

/// A `group` or `socket_group`: like [`known_user`], in the group database.
fn known_group(v: &Value<'_>) -> Result<String, ValueError> {
    let name = conv::user_or_id(v)?;
    let found = crate::users::group(&name).map(|g| g.is_some());
    identity_found(found, "group", name, v)
}

fn identity_found(
    found: nix::Result<bool>,
    what: &str,
    name: String,
    v: &Value<'_>,
) -> Result<String, ValueError> {
    let numeric = name.parse::<u32>().is_ok();
    match found {
        Ok(true) => Ok(name),
        Ok(false) if numeric => Err(ValueError::invalid(
            format!("no {what} has id {name} (the {what} database has no entry for it)"),
            v,
        )),
        Ok(false) => Err(ValueError::invalid(format!("unknown {what} \"{name}\""), v)),
        Err(e) => Err(ValueError::invalid(
            format!("looking up {what} \"{name}\": {}", e.desc()),
            v,
        )),
    }
}

/// Whether `name` may be a program name: it is part of process names,
/// log file names and CLI arguments, and `:` separates the instance number.
/// `.` and `..` are refused: as `{name}` in a log file name they would name
/// a directory.
pub(crate) fn valid_program_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// `[program.NAME]` as written in messages (quoted when the name has a dot).
pub(crate) fn program_table_name(name: &str) -> String {
    if name.contains('.') || !valid_program_name(name) {
        format!("[program.{name:?}]")
    } else {
        format!("[program.{name}]")
    }
}

/// One `[program.NAME]` table. `file` is the defining file (absolute),
/// `header` where the table is defined.
pub(crate) fn read_program(
    mut r: TableReader<'_, '_>,
    name: &str,
    file: &Path,
    source: usize,
    header: Span,
) -> ProgramDraft {
    let file_dir = file.parent().unwrap_or(Path::new("/")).to_path_buf();

    let port: Option<(u16, Span)> = r.get_spanned("port", conv::int_in::<u16>(1, 65535));
    let instances: Option<(u32, Span)> = r.get_spanned(
        "instances",
        conv::int_in::<u32>(1, i64::from(MAX_INSTANCES)),
    );
    if let (Some((p, span)), Some((n, _))) = (&port, &instances) {
        let last = u32::from(*p) + n - 1;
        if last > 65535 {
            r.error(
                span,
                format!("\"port\": {p} with {n} instances needs ports up to {last}, above 65535"),
            );
        }
    }
    // A rejected `port` still counts: `{port}` is then not blamed a second time.
    let has_port = r.contains("port");

    let command = if let Some((_, value)) = r.raw("command") {
        r.convert("command", value, conv::command)
            .map(|(argv, _)| argv)
            .unwrap_or_default()
    } else {
        r.error(
            &header,
            format!("program \"{name}\" has no \"command\" (e.g. command = [\"/usr/bin/web\", \"--port\", \"8080\"])"),
        );
        Vec::new()
    };
    for (arg, span) in &command {
        for problem in placeholder::check(arg, has_port) {
            r.error(span, format!("\"command\": {problem}"));
        }
    }

    let environment = read_environment(&mut r, has_port);

    let mut depends_on: Vec<(String, Span)> = Vec::new();
    for (dep, span) in r.get("depends_on", conv::text_list).unwrap_or_default() {
        if dep == name {
            r.error(&span, format!("program \"{name}\" depends on itself"));
        } else if !depends_on.iter().any(|(d, _)| *d == dep) {
            depends_on.push((dep, span));
        }
    }

    let backoff = match r.table("backoff") {
        Some((b, _)) => read_backoff(b),
        None => BackoffConfig::default(),
    };
    let health = r
        .table("health")
        .and_then(|(h, span)| read_health(h, span, has_port, &file_dir));
    let listen: Vec<(ListenAddress, Span)> = r
        .get("listen", conv::text_list)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(text, span)| match parse_listen(&text) {
            Ok(addr) => Some((addr, span)),
            Err(why) => {
                r.error(&span, format!("\"listen\": {why}"));
                None
            }
        })
        .collect();
    for (i, (addr, span)) in listen.iter().enumerate() {
        if listen[..i].iter().any(|(other, _)| other == addr) {
            r.error(span, format!("\"listen\": {addr} is listed twice"));
        }
    }
    let listen_names = match r.get_spanned("listen_names", conv::text_list) {
        None => vec![name.to_string(); listen.len()],
        Some((names, span)) => {
            if names.len() != listen.len() {
                r.error(
                    &span,
                    format!(
                        "\"listen_names\": {} names for {} listen entries (one name per entry)",
                        names.len(),
                        listen.len()
                    ),
                );
            }
            for (n, nspan) in &names {
                if n.contains(':') || n.len() > 255 {
                    r.error(nspan, "\"listen_names\": a name must not contain ':' (LISTEN_FDNAMES separates names with it)");
                }
            }
            names.into_iter().map(|(n, _)| n).collect()
        }
    };

    let (logs, log_spans) = match r.table("logs") {
        Some((l, _)) => read_logs(l, has_port, instances.as_ref().map_or(1, |(n, _)| *n)),
        None => (LogsConfig::default(), [None, None]),
    };

    let cgroup = r.get("cgroup", conv::boolean).unwrap_or(true);
    let resources = read_resources(&mut r, cgroup);

    let config = ProgramConfig {
        name: name.to_string(),
        file: file.to_path_buf(),
        command: command.into_iter().map(|(a, _)| a).collect(),
        directory: r
            .get("directory", conv::text)
            .map(|d| file_dir.join(d))
            .unwrap_or_else(|| file_dir.clone()),
        environment,
        clear_env: r.get("clear_env", conv::boolean).unwrap_or(false),
        user: r.get("user", known_user),
        group: r.get("group", known_group),
        autostart: r.get("autostart", conv::boolean).unwrap_or(true),
        restart: r
            .get("restart", conv::one_of(&["always", "on-failure", "never"]))
            .map(|i| match i {
                1 => RestartPolicy::OnFailure,
                2 => RestartPolicy::Never,
                _ => RestartPolicy::Always,
            })
            .unwrap_or(RestartPolicy::Always),
        exit_codes: r.get("exit_codes", exit_codes).unwrap_or_else(|| vec![0]),
        start_secs: r
            .get("start_secs", conv::duration)
            .unwrap_or(Duration::from_secs(1)),
        stop_signal: r
            .get("stop_signal", conv::signal)
            .unwrap_or(Signal::SIGTERM),
        stop_timeout: r
            .get("stop_timeout", conv::duration)
            .unwrap_or(Duration::from_secs(10)),
        kill_group: r.get("kill_group", conv::boolean).unwrap_or(true),
        instances: instances.map(|(n, _)| n).unwrap_or(1),
        port: port.map(|(p, _)| p),
        depends_on: depends_on.iter().map(|(d, _)| d.clone()).collect(),
        backoff,
        on_fatal: match r.get("on_fatal", conv::one_of(&["stay", "shutdown"])) {
            Some(1) => OnFatal::Shutdown,
            _ => OnFatal::Stay,
        },
        logs,
        health,
        notify: r.get("notify", conv::boolean).unwrap_or(false),
        ready_timeout: r
            .get("ready_timeout", positive_duration)
            .unwrap_or(Duration::from_secs(60)),
        watchdog: r.get("watchdog", conv::duration).unwrap_or(Duration::ZERO),
        listen: listen.iter().map(|(a, _)| a.clone()).collect(),
        listen_names,
        cgroup,
        resources,
        listen_mode: r.get("listen_mode", file_mode).unwrap_or(0o660),
        register: r
            .table("register")
            .and_then(|(t, span)| super::register::read_register(t, span, has_port, &file_dir))
            .map(Box::new),
    };
    r.finish();
    ProgramDraft {
        config,
        source,
        header,
        depends_on,
        log_spans,
    }
}

/// One page: the least `memory_max`, and the least `as`, `data` and `stack`
/// (no program can be loaded with less).
const PAGE: u64 = 4096;

/// Upper bound of `pids_max`: the kernel's `PID_MAX_LIMIT`; `pids.max`
/// refuses anything above.
const MAX_PIDS: i64 = 4_194_304;

/// Upper bound of `cpu_max`, in percent of one CPU: a thousand CPUs.
pub(crate) const MAX_CPU_PERCENT: u32 = 100_000;

/// Upper bound of `limits.nofile`: what `fs.nr_open` can be raised to at
/// most on a 64-bit kernel (`INT_MAX` rounded down to 64), so no host
/// accepts more.
const MAX_NOFILE: u64 = 2_147_483_584;

/// `memory_max`, `cpu_max`, `pids_max` and `limits` (SPEC §5.3); `None` when
/// nothing is limited. With `cgroup = false`, each cgroup limit set is an
/// error at its value: a limit is never silently left unenforced.
fn read_resources(r: &mut TableReader<'_, '_>, cgroup: bool) -> Option<Box<Resources>> {
    let memory_max = r.get_spanned("memory_max", memory_max);
    let cpu_max = r.get_spanned("cpu_max", cpu_max);
    let pids_max = r.get_spanned("pids_max", conv::int_in::<u64>(1, MAX_PIDS));
    let limits = r
        .table("limits")
        .map(|(t, _)| read_limits(t))
        .unwrap_or_default();
    if !cgroup {
        let spans = [
            ("memory_max", memory_max.as_ref().map(|(_, s)| s)),
            ("cpu_max", cpu_max.as_ref().map(|(_, s)| s)),
            ("pids_max", pids_max.as_ref().map(|(_, s)| s)),
        ];
        for (key, span) in spans {
            if let Some(span) = span {
                r.error(
                    span,
                    format!("\"{key}\" needs cgroup = true, and this program has cgroup = false"),
                );
            }
        }
    }
    let resources = Resources {
        memory_max: memory_max.map(|(m, _)| m),
        cpu_max: cpu_max.map(|(c, _)| c),
        pids_max: pids_max.map(|(p, _)| p),
        limits,
    };
    (!resources.is_empty()).then(|| Box::new(resources))
}

/// `memory_max`: a size of at least one page.
fn memory_max(v: &Value<'_>) -> Result<u64, ValueError> {
    if let Some(s) = v.get_ref().as_str() {
        if ["max", "infinity", "unlimited"].contains(&s.trim().to_ascii_lowercase().as_str()) {
            return Err(ValueError::invalid(
                format!("\"{}\": leave memory_max out for no limit", s.trim()),
                v,
            ));
        }
    }
    let bytes = size(v)?;
    if bytes < PAGE {
        return Err(ValueError::invalid(below_a_page(bytes, ""), v));
    }
    Ok(bytes)
}

/// Why a size is too small; `why` (empty or `": ..."`) follows the bound.
fn below_a_page(bytes: u64, why: &str) -> String {
    format!(
        "{bytes} bytes is below one page (4096 bytes){why}; a number without a unit counts bytes (write e.g. \"512MiB\")"
    )
}

const CPU_MAX_EXPECTED: &str = "a percentage string like \"150%\"";

/// `cpu_max`: `"N%"`, N percent of one CPU, 1..=[`MAX_CPU_PERCENT`]. A bare
/// number is refused: `2` could mean two CPUs as well as 2 %.
fn cpu_max(v: &Value<'_>) -> Result<u32, ValueError> {
    let text = match v.get_ref() {
        DeValue::String(s) => s.trim(),
        DeValue::Integer(_) => {
            let n = conv::integer(v)?;
            if n < 1 {
                return Err(ValueError::wrong_type(CPU_MAX_EXPECTED, v));
            }
            return Err(ValueError::invalid(
                format!(
                    "write a percentage of one CPU as a string: \"{}%\" for {n} CPU{}, \"{n}%\" for {n}% of one",
                    n.saturating_mul(100),
                    if n == 1 { "" } else { "s" }
                ),
                v,
            ));
        }
        _ => return Err(ValueError::wrong_type(CPU_MAX_EXPECTED, v)),
    };
    let digits = text.strip_suffix('%').map(str::trim_end).unwrap_or("");
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ValueError::invalid(
            format!("invalid CPU share \"{text}\" (write a whole percentage of one CPU: \"50%\", or \"150%\" for one and a half CPUs)"),
            v,
        ));
    }
    match digits.parse::<u32>() {
        Ok(n) if (1..=MAX_CPU_PERCENT).contains(&n) => Ok(n),
        _ => Err(ValueError::invalid(
            format!("\"{text}\" is out of range (expected \"1%\" to \"{MAX_CPU_PERCENT}%\", a thousand CPUs)"),
            v,
        )),
    }
}

/// `limits`: a table of setrlimit resources ([`RLIMITS`]), in the order
/// written. An unknown key is an error listing the known ones.
fn read_limits(mut r: TableReader<'_, '_>) -> Vec<Rlimit> {
    let mut limits: Vec<(Rlimit, Span)> = Vec::new();
    for kind in RLIMITS {
        if let Some((value, span)) = r.get_spanned(kind.name, |v| rlimit_value(kind, v)) {
            let resource = kind.resource;
            limits.push((Rlimit { resource, value }, span));
        }
    }
    // Read by name above; the spans give back the order written.
    limits.sort_by_key(|(_, span)| span.start);
    let known: Vec<&str> = RLIMITS.iter().map(|k| k.name).collect();
    r.finish_with_hint(&format!(" (known limits: {})", known.join(", ")));
    limits.into_iter().map(|(l, _)| l).collect()
}

/// One value of `limits`: a non-negative integer, `"infinity"` or
/// `"unlimited"` ([`Rlimit::INFINITY`]), or for a limit in bytes a size
/// string; then the checks of that limit.
fn rlimit_value(kind: &RlimitKind, v: &Value<'_>) -> Result<u64, ValueError> {
    let value = match v.get_ref() {
        DeValue::Integer(_) => conv::int_in::<u64>(0, i64::MAX)(v)?,
        DeValue::String(s) => {
            let s = s.trim();
            if s.eq_ignore_ascii_case("infinity") || s.eq_ignore_ascii_case("unlimited") {
                Rlimit::INFINITY
            } else if let Some(bytes) = parse_size(s).filter(|_| kind.bytes) {
                bytes
            } else {
                let expected = if kind.bytes {
                    "a number of bytes, a size like \"64MiB\" or \"infinity\""
                } else {
                    "a number or \"infinity\""
                };
                return Err(ValueError::invalid(
                    format!("invalid value \"{s}\" (expected {expected})"),
                    v,
                ));
            }
        }
        _ if kind.bytes => {
            return Err(ValueError::wrong_type(
                "a number of bytes, a size like \"64MiB\" or \"infinity\"",
                v,
            ))
        }
        _ => return Err(ValueError::wrong_type("a number or \"infinity\"", v)),
    };
    let problem = match kind.name {
        "nofile" if value == Rlimit::INFINITY => Some(
            "cannot be \"infinity\": Linux caps open files at fs.nr_open (1048576 unless raised); give a number"
                .to_string(),
        ),
        "nofile" if value == 0 => Some(
            "0 is below 1: a process needs file descriptors, if only for stdin, stdout and stderr"
                .to_string(),
        ),
        "nofile" if value > MAX_NOFILE => Some(format!(
            "{value} is above {MAX_NOFILE}, the most any Linux kernel allows (the ceiling of fs.nr_open)"
        )),
        "cpu" if value == 0 => Some(
            "0 is below 1 (seconds of CPU time; the kernel would take 0 as 1 and stop the process after a second)"
                .to_string(),
        ),
        "nice" if value != Rlimit::INFINITY && value > 40 => Some(format!(
            "{value} is out of range (expected 0..=40 or \"infinity\": the process may lower its nice value to 20 minus this, so 40 allows -20)"
        )),
        "rtprio" if value != Rlimit::INFINITY && value > 99 => Some(format!(
            "{value} is out of range (expected 0..=99 or \"infinity\": 99 is the highest real-time priority)"
        )),
        "as" | "data" | "stack" if value < PAGE => Some(below_a_page(
            value,
            ": no program can be loaded with so little",
        )),
        _ => None,
    };
    match problem {
        Some(message) => Err(ValueError::invalid(message, v)),
        None => Ok(value),
    }
}

/// `exit_codes`: integers 0..=255.
fn exit_codes(v: &Value<'_>) -> Result<Vec<i32>, ValueError> {
    conv::array(v)
        .map_err(|_| ValueError::wrong_type("an array of exit codes like [0, 2]", v))?
        .iter()
        .map(conv::int_in::<i32>(0, 255))
        .collect()
}

/// `environment`: a table of strings, sorted by key. Read entry by entry so
/// every bad value is reported, not just the first.
fn read_environment(r: &mut TableReader<'_, '_>, has_port: bool) -> Vec<(String, String)> {
    let Some((mut env, _)) = r.table("environment") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (key, value) in env.take_rest() {
        let k = *key.get_ref();
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            env.error(
                &key.span(),
                format!("invalid environment variable name \"{k}\": it must be non-empty and contain no '=' or NUL"),
            );
            continue;
        }
        if super::is_reserved(k) {
            env.error(
                &key.span(),
                format!("\"{k}\" is set by minder for every process and cannot be configured"),
            );
            continue;
        }
        let text = match conv::string(value) {
            Ok(s) if s.contains('\0') => {
                env.error(
                    &value.span(),
                    format!("\"{k}\": must not contain a NUL character"),
                );
                continue;
            }
            Ok(s) => s,
            Err(e) => {
                env.error(&value.span(), format!("\"{k}\": {e}"));
                continue;
            }
        };
        for problem in placeholder::check(&text, has_port) {
            env.error(&value.span(), format!("\"{k}\": {problem}"));
        }
        out.push((k.to_string(), text));
    }
    env.finish();
    out.sort();
    out
}

/// A `listen` entry: `tcp://HOST:PORT` (IP literals: minder binds exactly
/// that address) or `unix:///absolute/path`.
fn parse_listen(text: &str) -> Result<ListenAddress, String> {
    if let Some(addr) = text.strip_prefix("tcp://") {
        return addr.parse::<std::net::SocketAddr>().map(ListenAddress::Tcp).map_err(|_| {
            format!("{text:?}: expected tcp://IP:PORT, e.g. \"tcp://127.0.0.1:8080\" or \"tcp://[::1]:8080\"")
        });
    }
    if let Some(path) = text.strip_prefix("unix://") {
        if !path.starts_with('/') {
            return Err(format!(
                "{text:?}: a unix socket path must be absolute (unix:///run/web.sock)"
            ));
        }
        if path.len() > 107 {
            return Err(format!(
                "{text:?}: unix socket paths are limited to 107 bytes"
            ));
        }
        return Ok(ListenAddress::Unix(PathBuf::from(path)));
    }
    Err(format!("{text:?}: expected tcp://IP:PORT or unix:///PATH"))
}

/// A duration that must be above zero (a zero interval or timeout makes no sense).
fn positive_duration(v: &Value<'_>) -> Result<Duration, ValueError> {
    let d = conv::duration(v)?;
    if d.is_zero() {
        return Err(ValueError::invalid("must be longer than 0s", v));
    }
    Ok(d)
}

/// `[program.NAME.health]`: exactly one of `http`, `tcp`, `exec`.
fn read_health(
    mut r: TableReader<'_, '_>,
    header: Span,
    has_port: bool,
    file_dir: &Path,
) -> Option<HealthConfig> {
    let http = r.get_spanned("http", conv::text);
    let tcp = r.get_spanned("tcp", conv::text);
    let exec = r.get_spanned("exec", conv::command);
    let interval = r.get("interval", positive_duration);
    let timeout = r.get("timeout", positive_duration);
    let start_period = r.get("start_period", positive_duration);
    let failure_threshold = r.get("failure_threshold", conv::int_in::<u32>(1, 1_000_000));
    let success_threshold = r.get("success_threshold", conv::int_in::<u32>(1, 1_000_000));
    let on_unhealthy = r
        .get("on_unhealthy", conv::one_of(&["restart", "none"]))
        .map(|i| {
            if i == 1 {
                OnUnhealthy::None
            } else {
                OnUnhealthy::Restart
            }
        });
    let options = read_http_options(&mut r, has_port, file_dir);

    let mut checks: Vec<(ProbeTarget, Span)> = Vec::new();
    if let Some((url, span)) = http {
        for problem in placeholder::check(&url, has_port) {
            r.error(&span, format!("\"http\": {problem}"));
        }
        match url.split_once("://") {
            Some(("http", rest)) if !rest.is_empty() => {
                // TLS keys on a plain URL would be silently ignored.
                if let Some((key, key_span)) = options.tls_keys.first() {
                    r.error(key_span, format!("\"{key}\" needs an https:// URL"));
                }
            }
            // The TLS keys apply; the URL is checked like an http:// one.
            Some(("https", rest)) if !rest.is_empty() => {}
            _ => r.error(
                &span,
                format!("\"http\": {url:?} is not an http:// URL (e.g. \"http://127.0.0.1:8080/health\")"),
            ),
        }
        let HttpOptions {
            method,
            headers,
            status,
            body,
            tls,
            ..
        } = options;
        checks.push((
            ProbeTarget::Http(Box::new(HttpProbe {
                url,
                method,
                headers,
                status,
                body,
                tls,
            })),
            span,
        ));
    } else if let Some((key, key_span)) = options.keys.first() {
        r.error(
            key_span,
            format!("\"{key}\" applies to an \"http\" check only"),
        );
    }
    if let Some((addr, span)) = tcp {
        for problem in placeholder::check(&addr, has_port) {
            r.error(&span, format!("\"tcp\": {problem}"));
        }
        match addr.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && !port.is_empty() => {}
            _ => r.error(
                &span,
                format!("\"tcp\": {addr:?} is not HOST:PORT (e.g. \"127.0.0.1:5432\")"),
            ),
        }
        checks.push((ProbeTarget::Tcp(addr), span));
    }
    if let Some((argv, span)) = exec {
        for (arg, arg_span) in &argv {
            for problem in placeholder::check(arg, has_port) {
                r.error(arg_span, format!("\"exec\": {problem}"));
            }
        }
        checks.push((
            ProbeTarget::Exec(argv.into_iter().map(|(a, _)| a).collect()),
            span,
        ));
    }
    let probe = match checks.len() {
        1 => checks.pop().map(|(p, _)| p),
        0 => {
            r.error(
                &header,
                "[health] needs one of \"http\", \"tcp\" or \"exec\"",
            );
            None
        }
        _ => {
            r.error(
                &checks[1].1,
                "[health] takes exactly one of \"http\", \"tcp\" or \"exec\"",
            );
            None
        }
    };
    r.finish();
    Some(HealthConfig {
        probe: probe?,
        interval: interval.unwrap_or(Duration::from_secs(5)),
        timeout: timeout.unwrap_or(Duration::from_secs(2)),
        start_period: start_period.unwrap_or(Duration::from_secs(30)),
        failure_threshold: failure_threshold.unwrap_or(3),
        success_threshold: success_threshold.unwrap_or(1),
        on_unhealthy: on_unhealthy.unwrap_or(OnUnhealthy::Restart),
    })
}

/// The keys of an `http` check besides the URL, with where each is set.
struct HttpOptions {
    method: HttpMethod,
    headers: Vec<(String, String)>,
    status: StatusSet,
    body: Option<String>,
    tls: TlsConfig,
    /// Every one of these keys present, with its span (for "applies to http only").
    keys: Vec<(&'static str, Span)>,
    /// The TLS keys present, with their spans (for "needs an https:// URL").
    tls_keys: Vec<(&'static str, Span)>,
}

/// Headers minder writes itself from the request's framing: configuring
/// them could make the request say something other than what is sent.
const FRAMING_HEADERS: &[&str] = &["content-length", "transfer-encoding", "connection"];

/// `method`, `headers`, `status`, `body` and the TLS keys of `[health]`.
fn read_http_options(r: &mut TableReader<'_, '_>, has_port: bool, dir: &Path) -> HttpOptions {
    let mut keys: Vec<(&'static str, Span)> = Vec::new();
    for key in ["method", "headers", "status", "body"] {
        if let Some((span, _)) = r.raw(key) {
            keys.push((key, span));
        }
    }
    let (tls, tls_keys) = read_tls(r, dir);
    keys.extend(tls_keys.iter().cloned());
    // HTTP methods are case-sensitive (RFC 9110 §9.1): "get" is not GET.
    let method = r.get_spanned("method", conv::one_of(&["GET", "HEAD", "POST"]));
    let method = match method {
        Some((1, _)) => HttpMethod::Head,
        Some((2, _)) => HttpMethod::Post,
        _ => HttpMethod::Get,
    };
    let headers = read_headers(r, has_port);
    let status = r
        .get("status", |v| {
            let text = match v.get_ref() {
                DeValue::Integer(_) => conv::integer(v)?.to_string(),
                DeValue::String(s) => s.to_string(),
                _ => {
                    return Err(ValueError::wrong_type(
                        "a status code or a list like \"200,204,301-302\"",
                        v,
                    ))
                }
            };
            StatusSet::parse(&text).map_err(|why| ValueError::invalid(why, v))
        })
        .unwrap_or_default();
    let body = r.get_spanned("body", |v| {
        let s = conv::string(v)?;
        if s.is_empty() {
            Err(ValueError::invalid(
                "must not be empty (leave \"body\" out to check the status only)",
                v,
            ))
        } else if s.len() > BODY_LIMIT {
            Err(ValueError::invalid(
                format!(
                    "is {} bytes long: only the first {BODY_LIMIT} bytes of a reply are searched",
                    s.len()
                ),
                v,
            ))
        } else {
            Ok(s)
        }
    });
    if let (Some((_, span)), HttpMethod::Head) = (&body, method) {
        r.error(
            span,
            "\"body\": a HEAD request gets no body to check (use method = \"GET\")",
        );
    }
    let body = body.map(|(b, _)| b);

    HttpOptions {
        method,
        headers,
        status,
        body,
        tls,
        keys,
        tls_keys,
    }
}

/// The TLS keys of an `https://` check or webhook (SPEC §5.4), files
/// resolved against `dir` and checked, with the span of each key present
/// (for "needs an https:// URL").
pub(super) fn read_tls(
    r: &mut TableReader<'_, '_>,
    dir: &Path,
) -> (TlsConfig, Vec<(&'static str, Span)>) {
    let mut present: Vec<(&'static str, Span)> = Vec::new();
    for key in [
        "ca_file",
        "server_name",
        "insecure",
        "client_cert",
        "client_key",
    ] {
        if let Some((span, _)) = r.raw(key) {
            present.push((key, span));
        }
    }
    let file = |r: &mut TableReader<'_, '_>, key: &'static str| {
        let (path, span) = r.get_spanned(key, conv::text)?;
        let path = dir.join(path);
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => {
                r.error(
                    &span,
                    format!("\"{key}\": {} is a directory", path.display()),
                );
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                r.error(
                    &span,
                    format!("\"{key}\": {} does not exist", path.display()),
                );
            }
            Err(e) => r.error(
                &span,
                format!(
                    "\"{key}\": {}: {}",
                    path.display(),
                    crate::http::describe_io(&e)
                ),
            ),
        }
        Some((path, span))
    };
    let ca_file = file(r, "ca_file").map(|(p, _)| p);
    let server_name = r.get("server_name", conv::text);
    let insecure = r.get("insecure", conv::boolean).unwrap_or(false);
    let client_cert = file(r, "client_cert");
    let client_key = file(r, "client_key");
    match (&client_cert, &client_key) {
        (Some((_, span)), None) => r.error(
            span,
            "\"client_cert\" needs \"client_key\" (its private key) for mutual TLS",
        ),
        (None, Some((_, span))) => r.error(
            span,
            "\"client_key\" needs \"client_cert\" (its certificate) for mutual TLS",
        ),
        _ => {}
    }
    let tls = TlsConfig {
        ca_file,
        server_name,
        insecure,
        client_cert: client_cert.map(|(p, _)| p),
        client_key: client_key.map(|(p, _)| p),
    };
    (tls, present)
}

/// Whether `name` is an HTTP token (RFC 9110 §5.6.2), as a header name must be.
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `headers`: a table of strings, in file order. A value may hold
/// placeholders; none may hold a line break (it would end the header and
/// start another, or the body: request smuggling).
fn read_headers(r: &mut TableReader<'_, '_>, has_port: bool) -> Vec<(String, String)> {
    let Some((mut table, _)) = r.table("headers") else {
        return Vec::new();
    };
    let mut out: Vec<(String, String)> = Vec::new();
    for (key, value) in table.take_rest() {
        let name = *key.get_ref();
        if !is_token(name) {
            table.error(
                &key.span(),
                format!("\"headers\": {name:?} is not a valid header name (letters, digits and !#$%&'*+-.^_`|~)"),
            );
            continue;
        }
        if FRAMING_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            table.error(
                &key.span(),
                format!("\"headers\": \"{name}\" is set by minder and cannot be configured"),
            );
            continue;
        }
        if out.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
            table.error(
                &key.span(),
                format!("\"headers\": \"{name}\" is given twice (header names ignore case)"),
            );
            continue;
        }
        let text = match conv::string(value) {
            Ok(s) => s,
            Err(e) => {
                table.error(&value.span(), format!("\"{name}\": {e}"));
                continue;
            }
        };
        if text.contains(['\r', '\n']) {
            table.error(
                &value.span(),
                format!("\"{name}\": a header value must not contain a line break (CR or LF)"),
            );
            continue;
        }
        if text.chars().any(|c| c.is_control() && c != '\t') {
            table.error(
                &value.span(),
                format!("\"{name}\": a header value must not contain control characters"),
            );
            continue;
        }
        for problem in placeholder::check(&text, has_port) {
            table.error(&value.span(), format!("\"{name}\": {problem}"));
        }
        out.push((name.to_string(), text));
    }
    table.finish();
    out
}

/// `[program.NAME.backoff]`.
fn read_backoff(mut r: TableReader<'_, '_>) -> BackoffConfig {
    let d = BackoffConfig::default();
    let initial = r.get_spanned("initial", conv::duration);
    let max = r.get_spanned("max", conv::duration);
    let multiplier = r.get("multiplier", |v| {
        let m = conv::number(v)?;
        if m < 1.0 {
            return Err(ValueError::invalid(
                format!("{m} is below 1.0: the delay must not shrink between retries"),
                v,
            ));
        }
        Ok(m)
    });
    let jitter = r.get("jitter", |v| {
        let j = conv::number(v)?;
        if !(0.0..=1.0).contains(&j) {
            return Err(ValueError::invalid(
                format!("{j} is outside 0.0..=1.0 (a fraction of the delay)"),
                v,
            ));
        }
        Ok(j)
    });
    let reset_after = r.get("reset_after", conv::duration);
    let max_retries = r.get("max_retries", conv::int_in::<u32>(0, i64::from(u32::MAX)));

    let initial_value = initial.as_ref().map(|(x, _)| *x).unwrap_or(d.initial);
    let max_value = max.as_ref().map(|(x, _)| *x).unwrap_or(d.max);
    if max_value < initial_value {
        // Blame the key the user wrote: max if present, else initial.
        let span = max.as_ref().or(initial.as_ref()).map(|(_, s)| s.clone());
        if let Some(span) = span {
            r.error(
                &span,
                format!(
                    "\"max\" ({}) must not be shorter than \"initial\" ({})",
                    humantime::format_duration(max_value),
                    humantime::format_duration(initial_value)
                ),
            );
        }
    }
    r.finish();
    BackoffConfig {
        initial: initial_value,
        max: max_value,
        multiplier: multiplier.unwrap_or(d.multiplier),
        jitter: jitter.unwrap_or(d.jitter),
        reset_after: reset_after.unwrap_or(d.reset_after),
        max_retries: max_retries.unwrap_or(d.max_retries),
    }
}

/// Upper bound for `backups`: each rotation renames every backup.
const MAX_BACKUPS: i64 = 1000;

/// `[program.NAME.logs]`. Names stay relative here; the loader joins them
/// with `log_dir` once the whole file is read. Returns where `stdout` and
/// `stderr` are set too.
fn read_logs(
    mut r: TableReader<'_, '_>,
    has_port: bool,
    instances: u32,
) -> (LogsConfig, [Option<Span>; 2]) {
    let d = LogsConfig::default();
    let stdout = r.get_spanned("stdout", |v| log_target(v, false));
    let stderr = r.get_spanned("stderr", |v| log_target(v, true));
    for (target, span) in stdout.iter().chain(stderr.iter()) {
        let LogTarget::File { name, .. } = target else {
            continue;
        };
        for problem in placeholder::check(name, has_port) {
            r.error(span, problem);
        }
        // Two processes appending to (and rotating) one file would garble it.
        let per_process = ["{name}", "{instance}", "{port}"]
            .iter()
            .any(|p| name.contains(p));
        if instances > 1 && !per_process {
            r.error(
                span,
                format!("\"{name}\" would be shared by all {instances} instances; put {{name}} or {{instance}} in it"),
            );
        }
    }
    if let (
        Some((LogTarget::File { name: a, .. }, _)),
        Some((LogTarget::File { name: b, .. }, span)),
    ) = (&stdout, &stderr)
    {
        if a == b {
            r.error(
                span,
                "stderr names the stdout file: write stderr = \"stdout\" to merge the two streams",
            );
        }
    }
    let spans = [
        stdout.as_ref().map(|(_, s)| s.clone()),
        stderr.as_ref().map(|(_, s)| s.clone()),
    ];
    let prefix = r.get_spanned("prefix", conv::boolean);
    // stderr = "stdout" goes wherever stdout goes.
    let inherits = [&stdout, &stderr]
        .iter()
        .any(|t| matches!(t, Some((LogTarget::Inherit, _))));
    if let (Some((_, span)), false) = (&prefix, inherits) {
        r.error(
            span,
            "\"prefix\" applies to inherited streams only (stdout or stderr = \"inherit\")",
        );
    }
    let logs = LogsConfig {
        stdout: stdout.map(|(t, _)| t).unwrap_or(d.stdout),
        stderr: stderr.map(|(t, _)| t).unwrap_or(d.stderr),
        max_size: r.get("max_size", size).unwrap_or(d.max_size),
        backups: r
            .get("backups", conv::int_in::<u32>(0, MAX_BACKUPS))
            .unwrap_or(d.backups),
        timestamps: r.get("timestamps", conv::boolean).unwrap_or(d.timestamps),
        prefix: prefix.map_or(d.prefix, |(p, _)| p),
    };
    r.finish();
    (logs, spans)
}

/// `stdout`/`stderr`: a file name, `"none"`, `"inherit"`, or (stderr only) `"stdout"`.
fn log_target(v: &Value<'_>, is_stderr: bool) -> Result<LogTarget, ValueError> {
    let s = conv::text(v)?;
    Ok(match s.as_str() {
        "none" => LogTarget::Discard,
        "inherit" => LogTarget::Inherit,
        "stdout" if is_stderr => LogTarget::Stdout,
        _ if s.ends_with('/') => {
            return Err(ValueError::invalid(
                format!("\"{s}\" names a directory; give a file name like \"{{name}}.log\""),
                v,
            ))
        }
        _ => LogTarget::File {
            dir: std::path::PathBuf::new(),
            name: s,
        },
    })
}

/// A size: `"50MB"`, `"64KiB"`, `"1G"`, `"0"`, or an integer number of bytes.
/// KB/MB/GB/TB are powers of 1000; KiB/MiB/GiB/TiB, and K/M/G/T alone (as
/// cgroup's `memory.max`, systemd and `ulimit` read them), powers of 1024.
pub(crate) fn size(v: &Value<'_>) -> Result<u64, ValueError> {
    let text = match v.get_ref() {
        DeValue::Integer(_) => return conv::int_in::<u64>(0, i64::MAX)(v),
        DeValue::String(s) => s.trim(),
        _ => return Err(ValueError::wrong_type("a size string like \"50MB\"", v)),
    };
    parse_size(text).ok_or_else(|| {
        ValueError::invalid(
            format!("invalid size \"{text}\" (write e.g. \"50MB\", \"64KiB\", \"1GiB\" or \"0\")"),
            v,
        )
    })
}

/// The number of bytes in a size string (see [`size`]).
pub(crate) fn parse_size(text: &str) -> Option<u64> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "mb" => 1000 * 1000,
        "gb" => 1000 * 1000 * 1000,
        "tb" => 1000 * 1000 * 1000 * 1000,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(factor)
}
