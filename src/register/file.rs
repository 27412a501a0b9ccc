//! An upstream file: the addresses of the processes that are in, written
//! for nginx (`upstream NAME { server ADDRESS; }`) or as JSON, and a reload
//! command run after each change, at most once per [`DEBOUNCE`].

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{Applied, Member, Standing};
use crate::config::{UpstreamFileConfig, UpstreamFormat};
use crate::process::{self, Capture, ProcessEnd, Reaper, RunError, SpawnRequest};

/// Least time between two starts of the reload command.
pub const DEBOUNCE: Duration = Duration::from_millis(200);
/// A reload running longer than this is killed and reported.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// nginx refuses an upstream without a server (`[emerg] no servers are
/// inside upstream`), so an empty one gets this one, which takes nothing.
const PLACEHOLDER: &str = "server 127.0.0.1:1 down;";

/// Writes one program's upstream file and runs its reload command.
pub struct UpstreamFile {
    config: UpstreamFileConfig,
    path: PathBuf,
    upstream: String,
    reaper: Arc<Reaper>,
    /// What the file is known to hold (`None`: unknown, compared with the
    /// disk at the next apply).
    written: Option<String>,
    /// A reload is owed: it runs at this time (`next_timer`).
    due: Option<Instant>,
    /// When the reload command last started.
    last_run: Option<Instant>,
    /// Why the last reload failed: the next apply runs it again even
    /// without a change, and until then every process is told this (not
    /// `ok`, which would reset the caller's backoff and flap in the log).
    failed: Option<String>,
    /// The processes of the last apply, each told how a later reload went.
    names: Vec<String>,
}

impl UpstreamFile {
    /// A file at `path` (already expanded) holding upstream `upstream` (the
    /// program's name); `reaper` runs the reload command.
    pub fn new(
        config: UpstreamFileConfig,
        path: PathBuf,
        upstream: String,
        reaper: Arc<Reaper>,
    ) -> UpstreamFile {
        UpstreamFile {
            config,
            path,
            upstream,
            reaper,
            written: None,
            due: None,
            last_run: None,
            failed: None,
            names: Vec::new(),
        }
    }

    /// Writes the file with exactly the members that are in (if that
    /// changes it) and runs or schedules the reload; see the contract in
    /// [`crate::register`].
    pub async fn apply(&mut self, members: &[Member]) -> Applied {
        self.names = members
            .iter()
            .map(|m| m.registration.name.clone())
            .collect();
        let content = render(self.config.format, &self.upstream, members);
        let first = self.written.is_none();
        let changed = if self.written.as_deref() == Some(content.as_str()) {
            false
        } else {
            let path = self.path.clone();
            let text = content.clone();
            let wrote = tokio::task::spawn_blocking(move || write_if_changed(&path, &text))
                .await
                .unwrap_or_else(|e| Err(format!("writing {}: {e}", self.path.display())));
            match wrote {
                Ok(changed) => {
                    self.written = Some(content);
                    changed
                }
                Err(why) => {
                    self.written = None;
                    return self.every(Err(why));
                }
            }
        };
        // At the first apply the file may have been written by an earlier
        // minder that died before its reload: a reload makes sure the
        // balancer reads what the file holds.
        if !self.config.reload.is_empty() && (changed || first || self.failed.is_some()) {
            let now = Instant::now();
            let earliest = self.last_run.map_or(now, |t| t + DEBOUNCE);
            self.due = Some(earliest);
        }
        match self.due {
            Some(due) if due <= Instant::now() => self.on_timer().await,
            _ => self.every(self.failed.clone().map_or(Ok(()), Err)),
        }
    }

    /// When a debounced reload is due, if one is owed.
    pub fn next_timer(&self) -> Option<Instant> {
        self.due
    }

    /// Runs the reload if it is due: its result for every process of the
    /// last apply (nothing if it is not due yet).
    pub async fn on_timer(&mut self) -> Applied {
        match self.due {
            Some(due) if due <= Instant::now() => {}
            _ => return Vec::new(),
        }
        self.due = None;
        self.last_run = Some(Instant::now());
        let result = reload(&self.config.reload, &self.config.directory, &self.reaper).await;
        self.failed = result.clone().err();
        self.every(result)
    }

    /// Nothing to undo: the file stays as the last apply wrote it.
    pub async fn close(&mut self) {}

    fn every(&self, result: Result<(), String>) -> Applied {
        self.names
            .iter()
            .map(|name| (name.clone(), result.clone()))
            .collect()
    }
}

/// The file's content: the members that are in, in their order.
fn render(format: UpstreamFormat, upstream: &str, members: &[Member]) -> String {
    let ins = members.iter().filter(|m| m.standing == Standing::In);
    match format {
        UpstreamFormat::Nginx => {
            let mut text = format!(
                "# Written by minder: the processes of program {upstream:?} that take traffic.\n\
                 # Rewritten whenever one comes or goes; changes made here are lost.\n\
                 upstream {upstream} {{\n"
            );
            let mut any = false;
            for member in ins {
                text.push_str(&format!("    server {};\n", member.registration.address));
                any = true;
            }
            if !any {
                text.push_str(&format!("    {PLACEHOLDER}\n"));
            }
            text.push_str("}\n");
            text
        }
        UpstreamFormat::Json => {
            let list: Vec<serde_json::Value> = ins.map(Member::record).collect();
            let mut text = serde_json::to_string_pretty(&list).unwrap_or_else(|_| "[]".into());
            text.push('\n');
            text
        }
    }
}

/// Replaces the file at `path` by one holding `content`, unless it already
/// does: `Ok(true)` when it was written.
///
/// A reader (nginx reloading) sees the old file or the new one, never a
/// part: a temporary file in the same directory is written, synced and
/// renamed over it, keeping its mode and owner (0644 for a new file).
fn write_if_changed(path: &Path, content: &str) -> Result<bool, String> {
    let old = fs::metadata(path).ok();
    if old.is_some() && fs::read(path).ok().as_deref() == Some(content.as_bytes()) {
        return Ok(false);
    }
    let fail = |what: &str, on: &Path, e: std::io::Error| {
        format!(
            "upstream file {}: {what} {}: {e}",
            path.display(),
            on.display()
        )
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .ok_or_else(|| format!("upstream file {}: not a file name", path.display()))?;
    let tmp = dir.join(format!(".{}.minder-tmp", file_name.to_string_lossy()));
    let mode = old.as_ref().map_or(0o644, |m| m.mode() & 0o7777);
    let written = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| fail("creating", &tmp, e))?;
        // The umask must not decide the mode nginx's workers need to read it.
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| fail("setting the mode of", &tmp, e))?;
        if let Some(old) = &old {
            // Best effort: only root may give a file away.
            let _ = std::os::unix::fs::fchown(&file, Some(old.uid()), Some(old.gid()));
        }
        file.write_all(content.as_bytes())
            .map_err(|e| fail("writing", &tmp, e))?;
        file.sync_all().map_err(|e| fail("syncing", &tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| fail("renaming onto it", &tmp, e))
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    // The rename itself survives a crash only once the directory is synced.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(true)
}

/// Runs the reload command: `Err` names it, how it ended and the first line it wrote.
async fn reload(argv: &[String], directory: &Path, reaper: &Reaper) -> Result<(), String> {
    let shown = serde_json::to_string(argv).unwrap_or_default();
    let request = SpawnRequest {
        directory: directory.to_path_buf(),
        ..SpawnRequest::command(argv.to_vec())
    };
    match process::run_captured(request, Capture::Both, RELOAD_TIMEOUT, reaper).await {
        Ok((ProcessEnd::Exited(0), _)) => Ok(()),
        Ok((end, output)) => Err(match telling_line(&output) {
            Some(line) => format!("reload {shown} {end}: {line}"),
            None => format!("reload {shown} {end}"),
        }),
        Err(RunError::TimedOut) => Err(format!(
            "reload {shown} killed after {}",
            crate::text::short_duration(RELOAD_TIMEOUT)
        )),
        Err(e) => Err(format!("reload {shown}: {e}")),
    }
}

/// The line of a failed reload's output that says why: the first with an
/// error level in nginx's words (nginx says `[notice] signal process
/// started` before `[error] open() ".../nginx.pid" failed`), else the first.
fn telling_line(output: &str) -> Option<&str> {
    let mut lines = output.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.clone().next();
    lines
        .find(|l| {
            ["[emerg]", "[alert]", "[crit]", "[error]"]
                .iter()
                .any(|level| l.contains(level))
        })
        .or(first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Registration;
    use std::time::UNIX_EPOCH;

    fn member(instance: u32, standing: Standing) -> Member {
        Member {
            registration: Registration {
                name: format!("web:{instance}"),
                program: "web".into(),
                instance,
                host: "h1".into(),
                address: format!("127.0.0.1:{}", 8080 + instance),
                server: None,
                key: None,
            },
            standing,
            pid: Some(100 + instance),
            since: Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
        }
    }

    #[test]
    fn nginx_lists_only_the_processes_that_are_in() {
        let members = [
            member(0, Standing::In),
            member(1, Standing::Draining),
            member(2, Standing::Out),
            member(3, Standing::In),
        ];
        let text = render(UpstreamFormat::Nginx, "web", &members);
        let body: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            body,
            [
                "upstream web {",
                "    server 127.0.0.1:8080;",
                "    server 127.0.0.1:8083;",
                "}"
            ]
        );
        assert!(text.starts_with("# Written by minder"), "{text}");
        assert!(text.ends_with("}\n"));
    }

    #[test]
    fn nginx_gets_a_placeholder_when_none_is_in() {
        let members = [member(0, Standing::Out), member(1, Standing::Draining)];
        let text = render(UpstreamFormat::Nginx, "web", &members);
        assert!(
            text.contains("upstream web {\n    server 127.0.0.1:1 down;\n}\n"),
            "{text}"
        );
        assert_eq!(render(UpstreamFormat::Nginx, "web", &[]), text);
    }

    #[test]
    fn json_holds_the_registered_objects() {
        let mut unstarted = member(2, Standing::In);
        unstarted.pid = None;
        unstarted.since = None;
        let members = [member(0, Standing::In), member(1, Standing::Out), unstarted];
        let text = render(UpstreamFormat::Json, "web", &members);
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            doc,
            serde_json::json!([
                {"name": "web:0", "program": "web", "instance": 0, "host": "h1",
                 "address": "127.0.0.1:8080", "pid": 100, "since": "2023-11-14T22:13:20Z"},
                {"name": "web:2", "program": "web", "instance": 2, "host": "h1",
                 "address": "127.0.0.1:8082", "pid": null, "since": null},
            ])
        );
        assert_eq!(render(UpstreamFormat::Json, "web", &[]), "[]\n");
    }

    #[test]
    fn the_line_saying_why_a_reload_failed() {
        let nginx = "2026/12/03 22:29:35 [notice] 15091#15091: signal process started\n\
                     2026/12/03 22:29:35 [error] 15091#15091: open() \"/x/nginx.pid\" failed\n";
        assert_eq!(
            telling_line(nginx),
            Some("2026/12/03 22:29:35 [error] 15091#15091: open() \"/x/nginx.pid\" failed")
        );
        assert_eq!(telling_line("\n  boom \nmore\n"), Some("boom"));
        assert_eq!(telling_line("\n"), None);
    }

    #[test]
    fn writes_replace_the_file_keeping_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("up.conf");
        assert_eq!(write_if_changed(&path, "one\n"), Ok(true));
        assert_eq!(fs::read_to_string(&path).unwrap(), "one\n");
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o644);
        assert_eq!(write_if_changed(&path, "one\n"), Ok(false));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let inode = fs::metadata(&path).unwrap().ino();
        assert_eq!(write_if_changed(&path, "two\n"), Ok(true));
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o640);
        assert_ne!(
            meta.ino(),
            inode,
            "replaced by a rename, not rewritten in place"
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "two\n");
        let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file left behind");
    }

    #[test]
    fn a_write_error_names_the_path_and_the_cause() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("up.conf");
        let err = write_if_changed(&path, "x").unwrap_err();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("No such file or directory"), "{err}");
    }
}
