//! The end of a captured log, for `ctl tail`: read from the files on disk,
//! reaching into `FILE.1` when the current file was just rotated.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use super::rotating::numbered;
use super::safe::{self, LogDir};

/// Most lines `tail` returns.
pub const MAX_TAIL_LINES: usize = 100_000;

/// Most bytes `tail` returns, whatever the number of lines asked for.
pub const MAX_TAIL_BYTES: usize = 1 << 20;

/// The last `n` lines of `path` (continued from `path.1` if needed), followed
/// by `unwritten` (output read but not in the file yet); at most
/// [`MAX_TAIL_BYTES`]. A last line without a newline counts as a line.
pub fn last_lines(path: &Path, n: usize, unwritten: &[u8]) -> Vec<u8> {
    if n == 0 {
        return Vec::new();
    }
    let mut buf = unwritten[unwritten.len().saturating_sub(MAX_TAIL_BYTES)..].to_vec();
    for file in [path.to_path_buf(), numbered(path, 1)] {
        if line_start(&buf, n).is_some() || buf.len() >= MAX_TAIL_BYTES {
            break;
        }
        let (bytes, whole) = read_end(&file, MAX_TAIL_BYTES - buf.len());
        let mut joined = bytes;
        joined.extend_from_slice(&buf);
        buf = joined;
        if !whole {
            break;
        }
    }
    last_lines_of(buf, n)
}

/// The last `n` lines of `buf` (all of it if it holds no more).
pub(super) fn last_lines_of(mut buf: Vec<u8>, n: usize) -> Vec<u8> {
    if n == 0 {
        return Vec::new();
    }
    match line_start(&buf, n) {
        Some(start) => buf.split_off(start),
        None => buf,
    }
}

/// Where the last `n` lines of `buf` begin, if `buf` holds more than `n` lines.
fn line_start(buf: &[u8], n: usize) -> Option<usize> {
    // A trailing newline ends the last line; it does not start another.
    let end = if buf.last() == Some(&b'\n') {
        buf.len() - 1
    } else {
        buf.len()
    };
    memchr::memrchr_iter(b'\n', &buf[..end])
        .nth(n - 1)
        .map(|i| i + 1)
}

/// Up to the last `max` bytes of `path`, and whether that is the whole file.
/// A missing or unreadable file reads as empty and whole.
fn read_end(path: &Path, max: usize) -> (Vec<u8>, bool) {
    // As the writer opens it: never through a link, never a FIFO (it would
    // hang the read), nothing others could have linked in a shared directory.
    let opened =
        safe::split(path).and_then(|(dir, name)| LogDir::open(dir, false)?.open_read(name));
    let Ok(mut file) = opened else {
        return (Vec::new(), true);
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    // Devices (/dev/null, /dev/full) have nothing to show.
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return (Vec::new(), true);
    }
    let from = len.saturating_sub(max as u64);
    if file.seek(SeekFrom::Start(from)).is_err() {
        return (Vec::new(), true);
    }
    let mut out = Vec::new();
    let _ = file.take(max as u64).read_to_end(&mut out);
    (out, from == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn last_lines_of_one_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a.log");
        fs::write(&path, "1\n2\n3\n4\n").unwrap();
        assert_eq!(last_lines(&path, 2, b""), b"3\n4\n");
        assert_eq!(last_lines(&path, 10, b""), b"1\n2\n3\n4\n");
        assert_eq!(last_lines(&path, 0, b""), b"");
        assert_eq!(last_lines(&path, 2, b"5 partial"), b"4\n5 partial");
        assert_eq!(last_lines(&tmp.path().join("missing"), 3, b""), b"");
    }

    #[test]
    fn reaches_into_the_rotated_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a.log");
        fs::write(numbered(&path, 1), "1\n2\n3\n").unwrap();
        fs::write(&path, "4\n").unwrap();
        assert_eq!(last_lines(&path, 3, b""), b"2\n3\n4\n");
        fs::write(&path, "").unwrap();
        assert_eq!(last_lines(&path, 2, b""), b"2\n3\n");
    }

    #[test]
    fn a_linked_file_or_a_fifo_reads_as_empty() {
        let tmp = tempfile::tempdir().unwrap();
        let secret = tmp.path().join("secret");
        fs::write(&secret, "root only\n").unwrap();
        std::os::unix::fs::symlink(&secret, tmp.path().join("a.log")).unwrap();
        assert_eq!(last_lines(&tmp.path().join("a.log"), 3, b""), b"");
        let fifo = tmp.path().join("p.log");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert_eq!(last_lines(&fifo, 3, b""), b"");
    }

    #[test]
    fn bounded_in_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a.log");
        let line = "x".repeat(1023) + "\n";
        fs::write(&path, line.repeat(2048)).unwrap();
        let out = last_lines(&path, 100_000, b"");
        assert_eq!(out.len(), MAX_TAIL_BYTES);
        assert!(out.starts_with(b"xxx"));
    }
}
