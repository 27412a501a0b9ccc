//! `minder import supervisord FILE` (SPEC §5.6): a supervisord config, with
//! its `[include]` files and `%(...)s` expansions, as commented minder TOML.
//!
//! [`ini`] reads the ini syntax as Python's configparser does, [`pyfmt`] the
//! `%` expansions and `environment=` pairs as supervisord does, and
//! [`supervisord`] maps sections and keys onto minder's and writes the TOML.

mod ini;
mod pyfmt;
mod supervisord;

use std::fmt;
use std::path::{Path, PathBuf};

/// The converted config and one warning per setting left out.
#[derive(Debug)]
pub struct Converted {
    /// The minder config, commented.
    pub toml: String,
    /// `FILE:LINE: ...` for each setting with no minder equivalent.
    pub warnings: Vec<String>,
}

/// Why a file could not be converted: it cannot be read, or supervisord
/// would refuse it.
#[derive(Debug)]
pub struct ImportError {
    pub file: PathBuf,
    /// Absent when the whole file is at fault (it cannot be read).
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.file.display(), self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// What supervisord would take from its surroundings: the environment
/// (`%(ENV_X)s`) and the host name (`%(host_node_name)s`).
#[derive(Debug, Clone)]
pub struct Context {
    pub env: Vec<(String, String)>,
    pub host: String,
}

impl Context {
    /// This process's environment and this machine's host name.
    pub fn current() -> Context {
        Context {
            env: std::env::vars().collect(),
            host: nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_default(),
        }
    }
}

/// Converts the supervisord config at `path`.
pub fn supervisord(path: &Path, ctx: &Context) -> Result<Converted, ImportError> {
    supervisord::convert(path, ctx)
}

/// A TOML string literal for `s`.
fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// A TOML key: bare when it can be, quoted otherwise.
fn key(s: &str) -> String {
    let bare = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        s.to_string()
    } else {
        quote(s)
    }
}

/// A TOML array of strings.
fn array<S: AsRef<str>>(items: &[S]) -> String {
    let parts: Vec<String> = items.iter().map(|s| quote(s.as_ref())).collect();
    format!("[{}]", parts.join(", "))
}

#[cfg(test)]
mod tests;
