//! An upstream file (placeholder: filled in by the HAProxy backend work).

use std::path::PathBuf;

use super::{Applied, Member};
use crate::config::UpstreamFileConfig;
use crate::process::Reaper;

/// The upstream file of one program.
pub struct UpstreamFile {
    config: UpstreamFileConfig,
}

impl UpstreamFile {
    /// A file not written yet.
    pub fn new(
        config: UpstreamFileConfig,
        path: PathBuf,
        upstream: String,
        reaper: std::sync::Arc<Reaper>,
    ) -> UpstreamFile {
        let _ = (path, upstream, reaper);
        UpstreamFile { config }
    }

    /// Writes the file for `members`.
    pub async fn apply(&mut self, members: &[Member]) -> Applied {
        let _ = &self.config;
        members
            .iter()
            .map(|m| {
                (
                    m.registration.name.clone(),
                    Err("not built yet".to_string()),
                )
            })
            .collect()
    }

    /// When [`UpstreamFile::on_timer`] is due.
    pub fn next_timer(&self) -> Option<tokio::time::Instant> {
        None
    }

    /// Does what was due.
    pub async fn on_timer(&mut self) -> Applied {
        Vec::new()
    }

    /// At clean shutdown.
    pub async fn close(&mut self) {}
}
