//! The `ctl` side of the control socket: one request, one reply, blocking.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use super::protocol::{Reply, Request, VERSION};

/// Why a request got no reply.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The daemon could not be reached (ctl exit code 4).
    #[error("cannot connect to {path}: {reason}")]
    Unreachable { path: PathBuf, reason: String },
    /// The connection broke or the reply was not understood.
    #[error("talking to {path}: {reason}")]
    Protocol { path: PathBuf, reason: String },
}

/// Sends `request` and reads the reply. `Ok(None)` means the daemon closed the
/// connection without replying (as it does when it exits after `shutdown`).
pub fn request(socket: &Path, request: &Request) -> Result<Option<Reply>, ClientError> {
    let stream = UnixStream::connect(socket).map_err(|e| ClientError::Unreachable {
        path: socket.to_path_buf(),
        reason: unreachable_reason(&e),
    })?;
    let protocol = |e: io::Error| ClientError::Protocol {
        path: socket.to_path_buf(),
        reason: e.to_string(),
    };
    let mut body = serde_json::to_value(request).map_err(|e| protocol(io::Error::other(e)))?;
    if let Some(object) = body.as_object_mut() {
        object.insert("v".to_string(), VERSION.into());
    }
    let mut line = serde_json::to_vec(&body).map_err(|e| protocol(io::Error::other(e)))?;
    line.push(b'\n');
    (&stream).write_all(&line).map_err(protocol)?;
    let mut reply = String::new();
    BufReader::new(&stream)
        .read_line(&mut reply)
        .map_err(protocol)?;
    if reply.is_empty() {
        return Ok(None);
    }
    serde_json::from_str(&reply)
        .map(Some)
        .map_err(|e| protocol(io::Error::other(format!("unreadable reply: {e}"))))
}

fn unreachable_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "no such socket (is minder running?)".to_string(),
        io::ErrorKind::ConnectionRefused => {
            "connection refused (stale socket: minder is not running)".to_string()
        }
        io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => e.to_string(),
    }
}
