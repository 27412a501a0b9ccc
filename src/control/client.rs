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
    let mut first = None;
    stream(socket, request, |reply| {
        first = Some(reply);
        false
    })?;
    Ok(first)
}

/// Sends `request` and hands each reply line to `on_reply` until it returns
/// false or the daemon closes the connection (a streaming reply such as
/// `tail` with `follow`).
pub fn stream(
    socket: &Path,
    request: &Request,
    mut on_reply: impl FnMut(Reply) -> bool,
) -> Result<(), ClientError> {
    let mut replies = Replies::open(socket, request)?;
    while let Some(reply) = replies.next_reply()? {
        if !on_reply(reply) {
            break;
        }
    }
    Ok(())
}

/// The replies to one request, read one line at a time: what [`stream`]
/// reads, for a reader that must also be able to end it from another thread
/// ([`Replies::closer`]).
pub struct Replies {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    /// Why the request could not be written, reported if no reply comes.
    unsent: Option<io::Error>,
}

impl Replies {
    /// Connects and sends `request`.
    pub fn open(socket: &Path, request: &Request) -> Result<Replies, ClientError> {
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
        // A daemon that refuses this peer answers and closes without reading the
        // request, so the write may fail (EPIPE, ECONNRESET) with the answer
        // already waiting: read it before reporting the write.
        let unsent = (&stream).write_all(&line).err();
        Ok(Replies {
            path: socket.to_path_buf(),
            reader: BufReader::new(stream),
            unsent,
        })
    }

    /// The next reply; `Ok(None)` once the daemon has closed the connection
    /// (or [`Replies::closer`] shut it down).
    pub fn next_reply(&mut self) -> Result<Option<Reply>, ClientError> {
        let protocol = |e: io::Error| ClientError::Protocol {
            path: self.path.clone(),
            reason: e.to_string(),
        };
        let mut reply = String::new();
        match (self.reader.read_line(&mut reply), self.unsent.take()) {
            (Ok(n), _) if n > 0 => {}
            (_, Some(write_error)) => return Err(protocol(write_error)),
            (Ok(_), None) => return Ok(None),
            (Err(read_error), None) => return Err(protocol(read_error)),
        }
        serde_json::from_str(&reply)
            .map(Some)
            .map_err(|e| protocol(io::Error::other(format!("unreadable reply: {e}"))))
    }

    /// A handle on the same connection: `shutdown` on it ends a
    /// [`Replies::next_reply`] blocked in another thread.
    pub fn closer(&self) -> io::Result<UnixStream> {
        self.reader.get_ref().try_clone()
    }
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
