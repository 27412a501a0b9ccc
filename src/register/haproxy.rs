//! HAProxy's runtime API (placeholder: filled in by the HAProxy backend work).

use super::{Applied, Member};
use crate::config::HaproxyConfig;

/// The haproxy backend of one program.
#[derive(Debug)]
pub struct Haproxy {
    config: HaproxyConfig,
}

impl Haproxy {
    /// A backend that has applied nothing yet.
    pub fn new(config: HaproxyConfig) -> Haproxy {
        Haproxy { config }
    }

    /// Brings the balancer to show `members`.
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

    /// When [`Haproxy::on_timer`] is due.
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
