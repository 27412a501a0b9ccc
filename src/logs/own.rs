//! minder's own log: `tracing` to stderr, and optionally to a daily-rotated file.
//!
//! The file is opened as captured logs are (see `safe`): never through a
//! symbolic link, and in a directory others can write only if it is minder's
//! own single-link regular file. tracing-appender's rolling writer opens by
//! path, following links, so the daily file is minder's own `DailyFile`.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, Layer, Registry};

use crate::config::{LogFormat, SupervisorConfig};

/// A boxed layer of the one subscriber minder installs.
type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// Installs minder's log: stderr (no timestamps under journald, which adds
/// its own: `JOURNAL_STREAM` is set), in `log_format`, filtered by `log_level`
/// or `MINDER_LOG`; plus `log_file` rotated daily (`minder.2024-05-06.log`
/// for `minder.log`), keeping `log_files` files. The guard flushes the file
/// on drop: keep it until exit.
pub fn init(cfg: &SupervisorConfig) -> Result<Option<WorkerGuard>, String> {
    let (filter, ignored) = filter(std::env::var("MINDER_LOG").ok(), &cfg.log_level);
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let ansi = !journald && std::io::stderr().is_terminal();
    let mut layers: Vec<BoxedLayer> = vec![layer(cfg.log_format, !journald, ansi, std::io::stderr)];
    let mut guard = None;
    if let Some(path) = &cfg.log_file {
        let dir = path.parent().unwrap_or(std::path::Path::new("/"));
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| format!("log_file {}: not a file name", path.display()))?;
        let (prefix, suffix) = match name.rsplit_once('.') {
            Some((stem, ext)) if !stem.is_empty() => (stem.to_string(), Some(ext.to_string())),
            _ => (name, None),
        };
        let mut daily = DailyFile {
            dir: dir.to_path_buf(),
            prefix,
            suffix,
            keep: cfg.log_files,
            current: None,
            failed: None,
        };
        // Refused or failing now: minder does not start without the log it was told to keep.
        let now = SystemTime::now();
        daily
            .open(now)
            .map_err(|e| describe(&daily.dir, &daily.name(now), &e))?;
        // A stalled disk must not stall the daemon: lines go through a bounded
        // queue to a writer thread (and are dropped, not waited for, when it is full).
        let (writer, g) = tracing_appender::non_blocking(daily);
        guard = Some(g);
        layers.push(layer(cfg.log_format, true, false, writer));
    }
    tracing_subscriber::registry()
        .with(layers.with_filter(filter))
        .try_init()
        .map_err(|e| format!("installing the log: {e}"))?;
    if let Some((value, e)) = ignored {
        tracing::warn!(
            "MINDER_LOG={value:?} not used ({e}); logging at log_level {:?}",
            cfg.log_level
        );
    }
    Ok(guard)
}

/// The filter: `MINDER_LOG` when it parses (`debug`, `minder=trace,info`:
/// targets and levels), else `log_level` (validated with the config). A
/// `MINDER_LOG` that does not parse is returned with why, to be logged once
/// the log exists. `Targets` rather than `EnvFilter`: minder's own log needs
/// no span or field filters, and `EnvFilter` links a regex engine (~0.3 MB of
/// code, most of it paged in to no use).
fn filter(env: Option<String>, log_level: &str) -> (Targets, Option<(String, String)>) {
    let from_config = || log_level.parse::<Targets>().unwrap_or_default();
    match env {
        None => (from_config(), None),
        Some(value) => match value.parse::<Targets>() {
            Ok(targets) => (targets, None),
            Err(e) => (from_config(), Some((value, e.to_string()))),
        },
    }
}

fn layer<W>(format: LogFormat, time: bool, ansi: bool, writer: W) -> BoxedLayer
where
    W: for<'w> fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let base = fmt::layer()
        .with_writer(writer)
        .with_ansi(ansi)
        .with_target(false);
    match (format, time) {
        (LogFormat::Text, true) => base.boxed(),
        (LogFormat::Text, false) => base.without_time().boxed(),
        (LogFormat::Json, true) => base.json().boxed(),
        (LogFormat::Json, false) => base.json().without_time().boxed(),
    }
}

/// Days since the epoch (UTC): the file changes when this does.
fn day(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400)
}

/// An open failure is tried again and told on stderr at most this often.
const RETRY: Duration = Duration::from_secs(10);

/// `log_file` as a daily file: `PREFIX.YYYY-MM-DD.SUFFIX` (UTC date), the
/// newest `keep` of them kept.
struct DailyFile {
    dir: PathBuf,
    prefix: String,
    suffix: Option<String>,
    keep: usize,
    /// The day of the open file, and the file.
    current: Option<(u64, File)>,
    /// After a failure to open: when it was last tried, and the lines
    /// dropped since the first failure.
    failed: Option<(Instant, u64)>,
}

impl DailyFile {
    fn name(&self, t: SystemTime) -> OsString {
        let date = &humantime::format_rfc3339_seconds(t).to_string()[..10];
        let mut name = OsString::from(format!("{}.{date}", self.prefix));
        if let Some(suffix) = &self.suffix {
            name.push(format!(".{suffix}"));
        }
        name
    }

    /// Opens the file of the day of `now` and removes the oldest beyond `keep`.
    fn open(&mut self, now: SystemTime) -> io::Result<()> {
        let today = day(now);
        let dir = super::safe::LogDir::open(&self.dir, true)?;
        let file = dir.open_append(&self.name(now), 0o640)?;
        self.current = Some((today, file));
        self.prune(&dir);
        Ok(())
    }

    /// Removes dated files beyond the newest `keep` (by the date in the name).
    fn prune(&self, dir: &super::safe::LogDir) {
        // Without /proc, by path: what is removed is still a name in `dir`.
        let names = dir.names().or_else(|_| {
            std::fs::read_dir(&self.dir)?
                .map(|e| e.map(|e| e.file_name()))
                .collect()
        });
        let Ok(names) = names else { return };
        let suffix = self
            .suffix
            .as_ref()
            .map(|s| format!(".{s}"))
            .unwrap_or_default();
        let mut dated: Vec<OsString> = names
            .into_iter()
            .filter(|n| {
                let n = n.to_string_lossy();
                n.strip_prefix(&format!("{}.", self.prefix))
                    .and_then(|rest| rest.strip_suffix(&suffix))
                    .is_some_and(is_date)
            })
            .collect();
        dated.sort();
        let extra = dated.len().saturating_sub(self.keep);
        for name in &dated[..extra] {
            // A name, not what it may link to.
            let _ = dir.unlink(name);
        }
    }
}

/// "refusing to write PATH: REASON" or "log_file PATH: ERROR".
fn describe(dir: &Path, name: &OsString, e: &io::Error) -> String {
    let path = dir.join(name);
    match super::safe::refusal(e) {
        Some(reason) => format!("refusing to write {}: {reason}", path.display()),
        None => format!("log_file {}: {e}", path.display()),
    }
}

fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b.iter().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                *c == b'-'
            } else {
                c.is_ascii_digit()
            }
        })
}

impl Write for DailyFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let now = SystemTime::now();
        if self.current.as_ref().is_none_or(|(d, _)| *d != day(now)) {
            self.current = None;
            if let Some((at, lost)) = &mut self.failed {
                if at.elapsed() < RETRY {
                    *lost += 1;
                    return Ok(buf.len());
                }
            }
            if let Err(e) = self.open(now) {
                // The log cannot carry news of its own failure: stderr does,
                // once per attempt.
                let lost = self.failed.map_or(0, |(_, lost)| lost) + 1;
                eprintln!(
                    "minder: {}; dropping minder's own log lines",
                    describe(&self.dir, &self.name(now), &e)
                );
                self.failed = Some((Instant::now(), lost));
                return Ok(buf.len());
            }
            if let Some((_, lost)) = self.failed.take() {
                eprintln!(
                    "minder: writing {} again, after dropping {lost} lines",
                    self.dir.join(self.name(now)).display()
                );
            }
        }
        match &mut self.current {
            Some((_, file)) => file.write(buf),
            None => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn daily(dir: &Path, keep: usize) -> DailyFile {
        DailyFile {
            dir: dir.to_path_buf(),
            prefix: "minder".to_string(),
            suffix: Some("log".to_string()),
            keep,
            current: None,
            failed: None,
        }
    }

    #[test]
    fn minder_log_overrides_log_level_and_a_bad_one_is_reported() {
        use tracing::Level;
        let (f, ignored) = filter(None, "warn");
        assert!(f.would_enable("minder", &Level::WARN) && !f.would_enable("minder", &Level::INFO));
        assert!(ignored.is_none());

        let (f, _) = filter(Some("minder::health=trace,info".into()), "warn");
        assert!(f.would_enable("minder::health", &Level::TRACE));
        assert!(f.would_enable("minder::daemon", &Level::INFO));
        assert!(!f.would_enable("minder::daemon", &Level::DEBUG));

        let (f, ignored) = filter(Some("minder=loud".into()), "error");
        assert!(f.would_enable("minder", &Level::ERROR) && !f.would_enable("minder", &Level::WARN));
        let (value, why) = ignored.expect("a bad MINDER_LOG is reported");
        assert_eq!(value, "minder=loud");
        assert!(!why.is_empty());
    }

    #[test]
    fn writes_the_dated_file_and_keeps_the_newest() {
        let tmp = tempfile::tempdir().unwrap();
        for old in ["2020-01-01", "2020-01-02", "2020-01-03"] {
            fs::write(tmp.path().join(format!("minder.{old}.log")), "old\n").unwrap();
        }
        fs::write(tmp.path().join("minder.notadate.log"), "kept\n").unwrap();
        let mut f = daily(tmp.path(), 2);
        f.write_all(b"hello\n").unwrap();
        let name = f.name(SystemTime::now());
        assert_eq!(
            fs::read_to_string(tmp.path().join(&name)).unwrap(),
            "hello\n"
        );
        assert!(tmp.path().join("minder.2020-01-03.log").exists());
        assert!(!tmp.path().join("minder.2020-01-02.log").exists());
        assert!(!tmp.path().join("minder.2020-01-01.log").exists());
        assert!(tmp.path().join("minder.notadate.log").exists());
    }

    #[test]
    fn a_link_in_place_of_the_file_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        fs::write(&victim, "secret\n").unwrap();
        let mut f = daily(tmp.path(), 2);
        let name = f.name(SystemTime::now());
        std::os::unix::fs::symlink(&victim, tmp.path().join(&name)).unwrap();
        let e = f.open(SystemTime::now()).unwrap_err();
        assert!(
            describe(tmp.path(), &name, &e).starts_with("refusing to write"),
            "{e}"
        );
        // Lines are dropped, not written through.
        f.write_all(b"hello\n").unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "secret\n");
    }
}
