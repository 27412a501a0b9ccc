//! The control socket: protocol types, the daemon's server, and the `ctl` client.

pub mod client;
pub mod dispatch;
pub mod protocol;
pub mod server;
pub mod status;
