//! minder's own log: `tracing` to stderr, and optionally to a daily-rotated file.

use std::io::IsTerminal;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer, Registry};

use crate::config::{LogFormat, SupervisorConfig};

/// A boxed layer of the one subscriber minder installs.
type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// Installs minder's log: stderr (no timestamps under journald, which adds
/// its own: `JOURNAL_STREAM` is set), in `log_format`, filtered by `log_level`
/// or `MINDER_LOG`; plus `log_file` rotated daily (`minder.2024-05-06.log`
/// for `minder.log`), keeping `log_files` files. The guard flushes the file
/// on drop: keep it until exit.
pub fn init(cfg: &SupervisorConfig) -> Result<Option<WorkerGuard>, String> {
    let filter =
        EnvFilter::try_from_env("MINDER_LOG").unwrap_or_else(|_| EnvFilter::new(&cfg.log_level));
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
        std::fs::create_dir_all(dir).map_err(|e| {
            format!(
                "log_file {}: creating {}: {e}",
                path.display(),
                dir.display()
            )
        })?;
        let mut builder = RollingFileAppender::builder()
            .rotation(Rotation::DAILY)
            .filename_prefix(prefix)
            .max_log_files(cfg.log_files);
        if let Some(suffix) = suffix {
            builder = builder.filename_suffix(suffix);
        }
        let appender = builder
            .build(dir)
            .map_err(|e| format!("log_file {}: {e}", path.display()))?;
        // A stalled disk must not stall the daemon: lines go through a bounded
        // queue to a writer thread (and are dropped, not waited for, when it is full).
        let (writer, g) = tracing_appender::non_blocking(appender);
        guard = Some(g);
        layers.push(layer(cfg.log_format, true, false, writer));
    }
    tracing_subscriber::registry()
        .with(layers.with_filter(filter))
        .try_init()
        .map_err(|e| format!("installing the log: {e}"))?;
    Ok(guard)
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
