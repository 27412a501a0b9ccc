//! Reading files: the main config, its includes, and the checks that span
//! programs (duplicate names, `depends_on`).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use toml::de::{DeTable, DeValue};

use super::deps::find_cycles;
use super::diagnostic::{Diagnostic, Diagnostics, SourceFile, Span};
use super::reader::TableReader;
use super::schema::{self, ProgramDraft};
use super::{Config, SupervisorConfig};

/// Defaults that depend on who runs minder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Defaults {
    /// Control socket path when `[supervisor] socket` is absent.
    pub socket: PathBuf,
    /// Captured-log directory when `[supervisor] log_dir` is absent.
    pub log_dir: PathBuf,
}

impl Defaults {
    /// root: /run/minder/minder.sock and /var/log/minder; otherwise $XDG_RUNTIME_DIR/minder.sock (fallback /tmp/minder-$UID/minder.sock) and $XDG_STATE_HOME/minder/logs (fallback $HOME/.local/state/minder/logs).
    pub fn for_current_user() -> Defaults {
        let uid = nix::unistd::geteuid();
        let env = |k: &str| std::env::var_os(k).map(PathBuf::from);
        Defaults::for_user(uid.is_root(), uid.as_raw(), env)
    }

    /// The rule behind [`Defaults::for_current_user`], with the environment
    /// passed in so tests do not depend on (or mutate) the real one.
    fn for_user(root: bool, uid: u32, env: impl Fn(&str) -> Option<PathBuf>) -> Defaults {
        if root {
            return Defaults {
                socket: PathBuf::from("/run/minder/minder.sock"),
                log_dir: PathBuf::from("/var/log/minder"),
            };
        }
        // The XDG spec says relative values are invalid and must be ignored.
        let absolute = |k: &str| env(k).filter(|p| p.is_absolute());
        let fallback = PathBuf::from(format!("/tmp/minder-{uid}"));
        let socket = match absolute("XDG_RUNTIME_DIR") {
            Some(dir) => dir.join("minder.sock"),
            None => fallback.join("minder.sock"),
        };
        let log_dir = match (absolute("XDG_STATE_HOME"), absolute("HOME")) {
            (Some(state), _) => state.join("minder/logs"),
            (None, Some(home)) => home.join(".local/state/minder/logs"),
            (None, None) => fallback.join("logs"),
        };
        Defaults { socket, log_dir }
    }
}

/// Config lookup when -c is absent: ./minder.toml, then /etc/minder/minder.toml. Returns the explicit path if given.
pub fn find_config(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    // `exists`, not `is_file`: a ./minder.toml that cannot be read should be
    // reported, not silently skipped in favour of /etc.
    ["minder.toml", "/etc/minder/minder.toml"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Read, include, validate. Collect EVERY diagnostic before failing.
pub fn load(path: &Path, defaults: &Defaults) -> Result<Config, Vec<Diagnostic>> {
    match read_source(path, 0) {
        Ok(src) => load_main(src, path, defaults),
        Err(d) => Err(vec![d]),
    }
}

/// Same from a string (path used for messages and relative paths; includes still read from disk relative to it).
pub fn parse_str(text: &str, path: &Path, defaults: &Defaults) -> Result<Config, Vec<Diagnostic>> {
    load_main(SourceFile::new(path, 0, text.to_string()), path, defaults)
}

/// `path` made absolute without touching the file system beyond the
/// current directory (no symlink resolution: the user's path is kept).
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Largest config file minder reads: far above any real config, low enough
/// that `include`-ing a huge file (or /dev/zero) cannot exhaust memory.
pub(crate) const MAX_FILE_SIZE: u64 = 4 << 20;

/// Reads one file; a failure is a diagnostic at 1:1 (or, for bad UTF-8, at
/// the first bad byte).
fn read_source(path: &Path, seq: usize) -> Result<SourceFile, Diagnostic> {
    let at_start = |message: String| Diagnostic {
        file: path.to_path_buf(),
        line: 1,
        col: 1,
        message,
    };
    let bytes = read_bounded(path, MAX_FILE_SIZE).map_err(|e| {
        at_start(match e {
            ReadError::Io(e) => format!("cannot read: {e}"),
            ReadError::NotRegular(kind) => format!("not a regular file ({kind})"),
            ReadError::TooLarge => format!("larger than {} MiB", MAX_FILE_SIZE >> 20),
        })
    })?;
    match String::from_utf8(bytes) {
        Ok(text) => Ok(SourceFile::new(path, seq, text)),
        Err(e) => {
            let valid = e.utf8_error().valid_up_to();
            let prefix = String::from_utf8_lossy(&e.as_bytes()[..valid]).into_owned();
            Err(SourceFile::new(path, seq, prefix).diagnostic(&(valid..valid), "not valid UTF-8"))
        }
    }
}

/// Why [`read_bounded`] refused a file.
#[derive(Debug)]
enum ReadError {
    Io(std::io::Error),
    /// What it is instead: "a FIFO", "a directory", ...
    NotRegular(&'static str),
    TooLarge,
}

/// The contents of the regular file `path`, at most `limit` bytes.
///
/// Opened non-blocking: opening a FIFO for reading would otherwise wait for
/// a writer, and a character device such as /dev/zero never ends. The type
/// is checked on the open descriptor (not the path) so nothing can swap the
/// file in between, and at most `limit + 1` bytes are read whatever the
/// size claimed (a file may grow while it is read).
fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    use std::io::Read;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};

    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .map_err(ReadError::Io)?;
    let meta = file.metadata().map_err(ReadError::Io)?;
    let kind = meta.file_type();
    if !kind.is_file() {
        return Err(ReadError::NotRegular(if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_char_device() {
            "a character device"
        } else if kind.is_block_device() {
            "a block device"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "an unknown kind of file"
        }));
    }
    if meta.len() > limit {
        return Err(ReadError::TooLarge);
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(ReadError::Io)?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge);
    }
    Ok(bytes)
}

/// Parses `src` as TOML; syntax errors are recorded and yield `None`, since
/// checking the keys of a half-parsed file would report confusing follow-ups.
fn parse_toml<'s>(src: &'s SourceFile, diags: &Diagnostics) -> Option<DeTable<'s>> {
    let (table, errors) = DeTable::parse_recoverable(src.text());
    if errors.is_empty() {
        return Some(table.into_inner());
    }
    for e in errors {
        let span = e.span().unwrap_or(0..0);
        diags.error(src, &span, format!("invalid TOML: {}", e.message()));
    }
    None
}

/// Loads the main file (already read) and everything it includes.
fn load_main(
    main: SourceFile,
    path: &Path,
    defaults: &Defaults,
) -> Result<Config, Vec<Diagnostic>> {
    let diags = Diagnostics::default();
    let abs_path = absolute(path);
    let abs_dir = abs_path.parent().unwrap_or(Path::new("/")).to_path_buf();
    let mut sources = vec![main];
    let mut drafts: Vec<ProgramDraft> = Vec::new();

    let mut supervisor: Option<SupervisorConfig> = None;
    let mut includes: Vec<(String, Span)> = Vec::new();
    let mut hook_programs: Vec<(String, Span)> = Vec::new();
    if let Some(table) = parse_toml(&sources[0], &diags) {
        let mut root = TableReader::new(&sources[0], &diags, &table, "");
        let (sup, inc, refs) = match root.table("supervisor") {
            Some((r, _)) => schema::read_supervisor(r, defaults, &abs_dir),
            None => (default_supervisor(defaults), Vec::new(), Vec::new()),
        };
        hook_programs = refs;
        supervisor = Some(sup);
        includes = inc;
        read_programs(&mut root, &abs_path, 0, &mut drafts);
        root.finish_with_hint(" (expected [supervisor] or [program.NAME])");
    }

    // Included files, by pattern order then sorted name. A file reached
    // twice (two patterns, or the main file matching its own pattern such as
    // "*.toml") is read once.
    let shown_dir = path.parent().unwrap_or(Path::new("")).to_path_buf();
    let mut seen: HashSet<PathBuf> = HashSet::from([canonical(path)]);
    for (pattern, span) in includes {
        for file in expand_include(&sources[0], &diags, &pattern, &span, &shown_dir) {
            if !seen.insert(canonical(&file)) {
                continue;
            }
            let seq = sources.len();
            match read_source(&file, seq) {
                Ok(src) => sources.push(src),
                Err(d) => {
                    diags.push(seq, d);
                    continue;
                }
            }
            let src = &sources[seq];
            if let Some(table) = parse_toml(src, &diags) {
                let mut root = TableReader::new(src, &diags, &table, "");
                if let Some((_, value)) = root.raw("supervisor") {
                    root.error(
                        &value.span(),
                        "[supervisor] is only allowed in the main config file, not in an included file",
                    );
                }
                read_programs(&mut root, &absolute(&file), seq, &mut drafts);
                root.finish_with_hint(" (an included file may only define [program.NAME] tables)");
            }
        }
    }

    check_programs(&sources, &diags, &drafts);
    for (name, span) in &hook_programs {
        if !drafts.iter().any(|d| &d.config.name == name) {
            diags.error(
                &sources[0],
                span,
                format!("\"programs\": unknown program \"{name}\""),
            );
        }
    }
    if let Some(sup) = &supervisor {
        // Log names are relative to log_dir, known only once [supervisor] is read.
        for draft in &mut drafts {
            for target in [&mut draft.config.logs.stdout, &mut draft.config.logs.stderr] {
                if let super::LogTarget::File { dir, .. } = target {
                    dir.clone_from(&sup.log_dir);
                }
            }
        }
        check_log_paths(&sources, &diags, &drafts);
    }

    match supervisor {
        Some(supervisor) if diags.count() == 0 => Ok(Config {
            path: abs_path,
            supervisor,
            // Into a Vec of its own size: collected in place, the pointers
            // would keep the drafts' allocation (all of it, for the config's life).
            programs: {
                let mut programs = Vec::with_capacity(drafts.len());
                programs.extend(drafts.into_iter().map(|d| Arc::new(d.config)));
                programs
            },
        }),
        _ => Err(diags.into_sorted()),
    }
}

fn default_supervisor(defaults: &Defaults) -> SupervisorConfig {
    SupervisorConfig {
        socket: defaults.socket.clone(),
        socket_mode: 0o600,
        socket_group: None,
        log_dir: defaults.log_dir.clone(),
        log_level: "info".to_string(),
        shutdown_timeout: std::time::Duration::from_secs(60),
        log_format: super::LogFormat::Text,
        log_file: None,
        log_files: 7,
        metrics: None,
        hooks: Vec::new(),
        host: super::schema::this_host(super::schema::HOSTNAME),
    }
}

/// Identity of a file for "already read" checks.
fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| absolute(path))
}

/// Reads every `[program.NAME]` of a file's root table into `drafts`.
fn read_programs(
    root: &mut TableReader<'_, '_>,
    file: &Path,
    source: usize,
    drafts: &mut Vec<ProgramDraft>,
) {
    let Some((mut programs, _)) = root.table("program") else {
        return;
    };
    for (key, value) in programs.take_rest() {
        let name = *key.get_ref();
        if name == "." || name == ".." {
            programs.error(
                &key.span(),
                format!("invalid program name \"{name}\": \".\" and \"..\" stand for directories in paths such as log file names"),
            );
            continue;
        }
        if !schema::valid_program_name(name) {
            programs.error(
                &key.span(),
                format!(
                    "invalid program name \"{name}\": use letters, digits, '_', '.' and '-' (':' separates instance numbers)"
                ),
            );
            continue;
        }
        let DeValue::Table(t) = value.get_ref() else {
            programs.error(
                &value.span(),
                format!(
                    "\"{name}\": expected a table ({}), found {}",
                    schema::program_table_name(name),
                    value.get_ref().type_str()
                ),
            );
            continue;
        };
        let reader = TableReader::new(
            programs.src(),
            programs.diags(),
            t,
            schema::program_table_name(name),
        );
        drafts.push(schema::read_program(
            reader,
            name,
            file,
            source,
            value.span(),
        ));
    }
}

/// Most directory entries one `include` pattern may look at, and most files
/// it may match: a pattern such as "/*/*/*.toml" must fail, not scan the
/// whole file system while minder waits.
const INCLUDE_LIMITS: IncludeLimits = IncludeLimits {
    entries: 100_000,
    files: 1_000,
};

/// Bounds of one include pattern's expansion; see [`INCLUDE_LIMITS`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct IncludeLimits {
    pub(crate) entries: usize,
    pub(crate) files: usize,
}

/// Expands one `include` pattern (relative to the including file's
/// directory, as the user named it) into files, sorted.
fn expand_include(
    src: &SourceFile,
    diags: &Diagnostics,
    pattern: &str,
    span: &Span,
    dir: &Path,
) -> Vec<PathBuf> {
    let is_glob = pattern.contains(['*', '?', '[']);
    if !is_glob {
        let file = dir.join(pattern);
        if file.exists() {
            return vec![file];
        }
        diags.error(
            src,
            span,
            format!("include \"{pattern}\": {} does not exist", file.display()),
        );
        return Vec::new();
    }
    match expand_glob(dir, pattern, INCLUDE_LIMITS) {
        Ok(files) => files,
        Err(why) => {
            diags.error(src, span, format!("include \"{pattern}\": {why}"));
            Vec::new()
        }
    }
}

/// The paths matching `pattern` under `dir` (or from `/` when it is
/// absolute), sorted, walking one directory level per component of the
/// pattern. `**` is refused: it means "every directory below", which from
/// a high enough directory is the whole file system. Hidden entries match
/// only a component that starts with a literal `.`, since editors and tools
/// leave such files around. Directories that cannot be listed are errors,
/// except those that do not exist or are not directories.
pub(crate) fn expand_glob(
    dir: &Path,
    pattern: &str,
    limits: IncludeLimits,
) -> Result<Vec<PathBuf>, String> {
    if pattern.split('/').any(|c| c.contains("**")) {
        return Err(
            "\"**\" is not supported: name each directory level (e.g. \"conf.d/*.toml\")".into(),
        );
    }
    let options = glob::MatchOptions {
        require_literal_leading_dot: true,
        ..glob::MatchOptions::new()
    };
    let mut current = vec![if pattern.starts_with('/') {
        PathBuf::from("/")
    } else {
        dir.to_path_buf()
    }];
    let components: Vec<&str> = pattern.split('/').filter(|c| !c.is_empty()).collect();
    let mut visited = 0usize;
    for (i, component) in components.iter().enumerate() {
        let last = i + 1 == components.len();
        if !component.contains(['*', '?', '[']) {
            current = current
                .into_iter()
                .map(|p| p.join(component))
                .filter(|p| if last { p.exists() } else { p.is_dir() })
                .collect();
            continue;
        }
        let matcher =
            glob::Pattern::new(component).map_err(|e| format!("invalid pattern: {}", e.msg))?;
        let mut next = Vec::new();
        for parent in &current {
            let entries = match std::fs::read_dir(if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            }) {
                Ok(entries) => entries,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(format!("cannot read {}: {e}", parent.display())),
            };
            for entry in entries {
                let entry = entry.map_err(|e| format!("cannot read {}: {e}", parent.display()))?;
                visited += 1;
                if visited > limits.entries {
                    return Err(format!(
                        "looks at more than {} directory entries: name the directories more precisely",
                        limits.entries
                    ));
                }
                let name = entry.file_name();
                // Names that are not UTF-8 cannot match a (UTF-8) pattern.
                let Some(name) = name.to_str() else {
                    continue;
                };
                if !matcher.matches_with(name, options) {
                    continue;
                }
                let path = parent.join(name);
                // Only directories lead further; the last level keeps anything.
                if last || path.is_dir() {
                    next.push(path);
                }
            }
        }
        current = next;
        if current.len() > limits.files {
            return Err(format!(
                "matches more than {} paths: name the files more precisely",
                limits.files
            ));
        }
    }
    current.sort();
    Ok(current)
}

/// Longest file name Linux accepts (NAME_MAX).
const NAME_MAX: usize = 255;
/// Longest path Linux accepts (PATH_MAX, less its terminating NUL).
const PATH_MAX: usize = 4095;

/// Checks that every log file path can exist: with a name or path too long
/// for the kernel, opening the file fails and the output is lost.
fn check_log_paths(sources: &[SourceFile], diags: &Diagnostics, drafts: &[ProgramDraft]) {
    for draft in drafts {
        let Some(src) = sources.get(draft.source) else {
            continue;
        };
        let program = &draft.config;
        // Placeholders give no shorter text for a higher instance number
        // ({name} web:9 -> web:10, {instance}, {port} = port + instance), so
        // the last instance has the longest paths.
        let spec = program.spec(program.instances.max(1) - 1, false);
        for (stream, dest, span) in [
            ("stdout", &spec.stdout_log, &draft.log_spans[0]),
            ("stderr", &spec.stderr_log, &draft.log_spans[1]),
        ] {
            let super::LogDest::File(path) = dest else {
                continue;
            };
            let Some(problem) = path_too_long(path) else {
                continue;
            };
            match span {
                Some(span) => diags.error(src, span, format!("\"{stream}\": {problem}")),
                // The default name, from the program name: blame the table.
                None => diags.error(
                    src,
                    &draft.header,
                    format!(
                        "{} log of program \"{}\": {problem}; use a shorter program name or set logs.{stream}",
                        stream, program.name
                    ),
                ),
            }
        }
    }
}

/// Why the kernel would refuse `path` as too long, if it would.
fn path_too_long(path: &Path) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    let len = path.as_os_str().as_bytes().len();
    if len > PATH_MAX {
        return Some(format!(
            "the log file path is {len} bytes long, above the {PATH_MAX} bytes a path may have"
        ));
    }
    path.components().find_map(|c| {
        let name = c.as_os_str();
        let len = name.as_bytes().len();
        (len > NAME_MAX).then(|| {
            format!(
                "the file name \"{}\" is {len} bytes long, above the {NAME_MAX} bytes a file name may have",
                name.to_string_lossy()
            )
        })
    })
}

/// Checks across programs: names defined twice, and `depends_on` naming an
/// unknown program or forming a cycle.
fn check_programs(sources: &[SourceFile], diags: &Diagnostics, drafts: &[ProgramDraft]) {
    // Drafts are in load order, so the first definition is the one kept.
    let mut first: HashMap<&str, usize> = HashMap::new();
    for (i, d) in drafts.iter().enumerate() {
        let name = d.config.name.as_str();
        match first.get(name) {
            Some(&j) => {
                let (Some(here), Some(there)) =
                    (sources.get(d.source), sources.get(drafts[j].source))
                else {
                    continue;
                };
                diags.error(
                    here,
                    &d.header,
                    format!(
                        "program \"{name}\" is already defined at {}",
                        there.location(&drafts[j].header)
                    ),
                );
            }
            None => {
                first.insert(name, i);
            }
        }
    }

    // Edges only between first definitions; unknown targets are reported.
    // Edge ids index `edge_sites` so a cycle can be blamed on one entry.
    let mut edges: Vec<Vec<(usize, usize)>> = vec![Vec::new(); drafts.len()];
    let mut edge_sites: Vec<(usize, Span)> = Vec::new();
    for (i, d) in drafts.iter().enumerate() {
        if first.get(d.config.name.as_str()) != Some(&i) {
            continue;
        }
        let Some(src) = sources.get(d.source) else {
            continue;
        };
        for (dep, span) in &d.depends_on {
            match first.get(dep.as_str()) {
                Some(&j) => {
                    edges[i].push((j, edge_sites.len()));
                    edge_sites.push((i, span.clone()));
                }
                None => diags.error(
                    src,
                    span,
                    format!("\"depends_on\": unknown program \"{dep}\""),
                ),
            }
        }
    }
    for (edge, cycle) in find_cycles(&edges) {
        let Some((from, span)) = edge_sites.get(edge) else {
            continue;
        };
        let Some(src) = drafts.get(*from).and_then(|d| sources.get(d.source)) else {
            continue;
        };
        let mut names: Vec<&str> = cycle
            .iter()
            .map(|&n| drafts[n].config.name.as_str())
            .collect();
        names.push(drafts[*from].config.name.as_str());
        diags.error(
            src,
            span,
            format!("depends_on cycle: {}", names.join(" -> ")),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_for_root() {
        let d = Defaults::for_user(true, 0, |_| None);
        assert_eq!(d.socket, PathBuf::from("/run/minder/minder.sock"));
        assert_eq!(d.log_dir, PathBuf::from("/var/log/minder"));
    }

    #[test]
    fn defaults_for_a_user_with_xdg() {
        let d = Defaults::for_user(false, 1000, |k| match k {
            "XDG_RUNTIME_DIR" => Some("/run/user/1000".into()),
            "XDG_STATE_HOME" => Some("/home/u/.state".into()),
            "HOME" => Some("/home/u".into()),
            _ => None,
        });
        assert_eq!(d.socket, PathBuf::from("/run/user/1000/minder.sock"));
        assert_eq!(d.log_dir, PathBuf::from("/home/u/.state/minder/logs"));
    }

    #[test]
    fn defaults_for_a_user_without_xdg() {
        let d = Defaults::for_user(false, 1000, |k| match k {
            "HOME" => Some("/home/u".into()),
            "XDG_RUNTIME_DIR" => Some("relative/is/ignored".into()),
            _ => None,
        });
        assert_eq!(d.socket, PathBuf::from("/tmp/minder-1000/minder.sock"));
        assert_eq!(d.log_dir, PathBuf::from("/home/u/.local/state/minder/logs"));
        let d = Defaults::for_user(false, 7, |_| None);
        assert_eq!(d.log_dir, PathBuf::from("/tmp/minder-7/logs"));
    }

    #[test]
    fn find_config_prefers_the_explicit_path() {
        assert_eq!(
            find_config(Some(Path::new("x/y.toml"))),
            Some(PathBuf::from("x/y.toml"))
        );
    }
}
