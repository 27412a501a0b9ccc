//! `secret_file` of a webhook: the key its requests are signed with, read
//! when the config is loaded (at start and on each reload).
//!
//! No message here ever holds the key, only the file's path.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use super::trust::check_secret_file;
use super::Secret;

/// Reads the key in `path`: at most [`Secret::MAX_LEN`] bytes once its
/// trailing newlines are trimmed, not empty, and as root in a file only root
/// can change or read (see [`check_secret_file`]).
pub(crate) fn read_secret(path: &Path) -> Result<Secret, String> {
    let shown = path.display();
    // Non-blocking: a FIFO put there must not hold up loading; it is
    // refused below as not a regular file.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("cannot read {shown}: {}", crate::http::describe_io(&e)))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read {shown}: {}", crate::http::describe_io(&e)))?;
    if !meta.is_file() {
        return Err(format!("{shown} is not a regular file"));
    }
    check_secret_file(path, &meta).map_err(|e| e.to_string())?;
    // Room for the longest key, a CRLF and one byte to tell a longer file.
    let bound = Secret::MAX_LEN + 3;
    let mut bytes = Vec::with_capacity(256);
    file.take(bound as u64)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {shown}: {}", crate::http::describe_io(&e)))?;
    let key = trim_newlines(&bytes);
    if key.is_empty() {
        return Err(format!("{shown} is empty: write the key into it"));
    }
    if key.len() > Secret::MAX_LEN || bytes.len() == bound {
        return Err(format!(
            "{shown} is longer than {} bytes: a key is a line, not a document",
            Secret::MAX_LEN
        ));
    }
    Ok(Secret(Arc::from(key)))
}

/// `bytes` without its trailing `\n` and `\r\n` (an editor's or `echo`'s).
fn trim_newlines(mut bytes: &[u8]) -> &[u8] {
    while let Some(rest) = bytes.strip_suffix(b"\n") {
        bytes = rest.strip_suffix(b"\r").unwrap_or(rest);
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn file_with(content: &[u8], mode: u32) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(file.path(), content).expect("write");
        std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(mode))
            .expect("chmod");
        file
    }

    #[test]
    fn trailing_newlines_are_trimmed_and_nothing_else() {
        assert_eq!(trim_newlines(b"key\n"), b"key");
        assert_eq!(trim_newlines(b"key\r\n\n"), b"key");
        assert_eq!(trim_newlines(b" key \t"), b" key \t");
        assert_eq!(trim_newlines(b"\n\n"), b"");
        let f = file_with(b"s3cret\n", 0o600);
        assert_eq!(read_secret(f.path()).unwrap().bytes(), b"s3cret");
    }

    #[test]
    fn an_empty_or_oversized_key_is_refused_without_showing_it() {
        let f = file_with(b"\n", 0o600);
        let err = read_secret(f.path()).unwrap_err();
        assert!(err.contains("is empty"), "{err}");
        let f = file_with(&[b'k'; Secret::MAX_LEN], 0o600);
        assert_eq!(
            read_secret(f.path()).unwrap().bytes().len(),
            Secret::MAX_LEN
        );
        let f = file_with(&[b'k'; Secret::MAX_LEN + 1], 0o600);
        let err = read_secret(f.path()).unwrap_err();
        assert!(err.contains("longer than 4096 bytes"), "{err}");
        assert!(!err.contains("kkkk"), "{err}");
        let f = file_with(&[b'k'; 3 * Secret::MAX_LEN], 0o600);
        assert!(read_secret(f.path()).is_err());
    }

    #[test]
    fn a_fifo_or_a_directory_is_refused_at_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .expect("mkfifo");
        let err = read_secret(&fifo).unwrap_err();
        assert!(err.ends_with("is not a regular file"), "{err}");
        let err = read_secret(dir.path()).unwrap_err();
        assert!(err.ends_with("is not a regular file"), "{err}");
    }

    #[test]
    fn a_secret_never_shows_in_debug_output() {
        let f = file_with(b"hunter2\n", 0o600);
        let secret = read_secret(f.path()).unwrap();
        assert_eq!(format!("{secret:?}"), "<secret>");
        let hook = super::super::Webhook {
            url: "http://127.0.0.1:1/".into(),
            secret: Some(secret),
            tls: Default::default(),
        };
        let shown = format!("{hook:?} {hook:#?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<secret>"), "{shown}");
    }

    #[test]
    fn as_root_a_key_others_can_read_or_change_is_refused() {
        let me = nix::unistd::geteuid().as_raw();
        for (mode, refused) in [
            (0o600, None),
            (0o640, None),
            (0o644, Some("readable by others")),
            (0o620, Some("writable by group")),
            (0o602, Some("writable by others")),
        ] {
            let f = file_with(b"k", mode);
            let meta = std::fs::metadata(f.path()).unwrap();
            let judged = super::super::trust::judge_secret(f.path(), &meta, me);
            match refused {
                None => judged.unwrap_or_else(|e| panic!("{mode:o}: {e}")),
                Some(why) => {
                    let err = judged.expect_err("refused").to_string();
                    assert!(err.contains(why), "{mode:o}: {err}");
                    assert!(err.starts_with("secret file "), "{err}");
                    assert!(!err.contains("--insecure-config"), "{err}");
                }
            }
        }
    }

    #[test]
    fn as_root_a_key_owned_by_another_user_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let f = file_with(b"k", 0o600);
        nix::unistd::chown(f.path(), Some(nix::unistd::Uid::from_raw(4242)), None).expect("chown");
        let err = read_secret(f.path()).expect_err("a key uid 4242 could change");
        assert!(err.contains("is owned by uid 4242, not root"), "{err}");
        assert!(err.contains("chown root"), "{err}");
    }
}
