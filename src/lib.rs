//! minder: a process supervisor for Linux hosts.
//!
//! The binary (`src/main.rs`) is a thin command-line layer over these modules.

pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod health;
pub mod hooks;
pub mod http;
pub mod import;
pub mod logs;
pub mod mailbox;
pub mod memory;
pub mod metrics;
pub mod notify;
pub mod process;
pub mod reexec;
pub mod register;
pub mod sockets;
pub mod supervisor;
pub mod systemd;
pub mod text;
pub mod top;
pub mod users;
