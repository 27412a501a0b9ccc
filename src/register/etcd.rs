//! etcd v3 (placeholder: filled in by the HAProxy backend work).

use super::{Applied, Member};
use crate::config::EtcdConfig;

/// The etcd backend of one program.
#[derive(Debug)]
pub struct Etcd {
    config: EtcdConfig,
}

impl Etcd {
    /// A backend that has applied nothing yet.
    pub fn new(config: EtcdConfig) -> Etcd {
        Etcd { config }
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

    /// When [`Etcd::on_timer`] is due.
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

/// Every object stored under `prefix`.
pub async fn list(endpoints: &[String], prefix: &str) -> Result<Vec<serde_json::Value>, String> {
    let _ = (endpoints, prefix);
    Err("not built yet".to_string())
}
