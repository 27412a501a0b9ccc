//! A log file with size rotation by renaming, as a plain [`io::Write`].
//!
//! Rotation renames `FILE.N-1` to `FILE.N` (replacing the oldest), ..., `FILE`
//! to `FILE.1`, then creates a fresh `FILE`. Nothing is ever truncated or
//! copied, so every byte written is in exactly one file, in order: reading
//! `FILE.N` .. `FILE.1` then `FILE` gives the stream back.
//!
//! Besides `write`, [`RotatingFile::splice_from`] moves bytes from a pipe
//! straight into the file (splice(2), no copy through userspace) while the
//! file has ample room before `max_size` ([`RotatingFile::splice_room`]);
//! the last [`SPLICE_MARGIN`] bytes before the bound go through `write`,
//! which sees them and rotates at a newline.
//!
//! Every open, rename and removal goes through [`LogDir`]: relative to the
//! directory resolved anew each time, never through a symbolic link, with
//! stricter checks where others can write the directory (see `safe`).

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags};

use super::safe::{self, LogDir};

/// When to rotate and how many rotated files to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// Rotate before a write would make the file exceed this; 0 never rotates.
    pub max_size: u64,
    /// Rotated files kept: `FILE.1` (newest) .. `FILE.backups` (oldest).
    pub backups: u32,
}

/// A file that cannot be opened is retried at most this often, so a chatty
/// program with a broken log path does not cost an `open` per chunk.
const OPEN_RETRY: Duration = Duration::from_secs(1);

/// Mode of created log files: the program's output may be private.
const FILE_MODE: u32 = 0o640;

/// Splicing stops this far before `max_size`: the rest of the file is
/// written by `write`, which sees the bytes and cuts at a newline. Twice the
/// capture's read chunk, so the chunk that crosses the bound is one `write`
/// sees whole.
pub const SPLICE_MARGIN: u64 = 256 * 1024;

/// An append-only log file that rotates itself by size (see the module doc).
///
/// `write` writes a prefix of its buffer: up to the last newline that still
/// fits under `max_size`, rotating first when nothing fits, so lines are not
/// split across files unless a single line is longer than `max_size`. The
/// file is opened on the first write, and after a failure to open it is
/// retried on a later write: output resumes by itself once the cause is gone.
#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    rotation: Rotation,
    file: Option<File>,
    /// Bytes in the current file, as far as we know (refreshed before rotating).
    size: u64,
    /// Only regular files rotate: `/dev/full` or a FIFO must never be renamed.
    rotatable: bool,
    /// After a failed open: no new attempt before this, the error meanwhile.
    open_failure: Option<OpenFailure>,
    /// A rotation that failed since the caller last asked (the file then grows on).
    rotation_error: Option<io::Error>,
    /// The open file has O_APPEND set (cleared while splicing into it).
    append: bool,
    /// splice(2) into this file was refused as unsupported (EINVAL): the
    /// file system has no splice, so `write` only, until another file is opened.
    no_splice: bool,
}

/// A failed open, remembered until the next attempt.
#[derive(Debug)]
struct OpenFailure {
    retry: Instant,
    kind: io::ErrorKind,
    message: String,
    /// A refusal (see `safe`), not a failure of the disk.
    refused: bool,
}

impl OpenFailure {
    fn error(&self) -> io::Error {
        if self.refused {
            safe::refused_again(&self.message)
        } else {
            io::Error::new(self.kind, self.message.clone())
        }
    }
}

impl RotatingFile {
    /// A rotating file at `path`; nothing is opened until the first write.
    pub fn new(path: impl Into<PathBuf>, rotation: Rotation) -> RotatingFile {
        RotatingFile {
            path: path.into(),
            rotation,
            file: None,
            size: 0,
            rotatable: false,
            open_failure: None,
            rotation_error: None,
            append: true,
            no_splice: false,
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes in the current file as last known.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Closes the file and opens `path` again (for logrotate's `create`): writes
    /// go to whatever file is at `path` now, created if missing.
    pub fn reopen(&mut self) -> io::Result<()> {
        self.file = None;
        self.open_failure = None;
        self.open_now().map(|_| ())
    }

    /// The error of a rotation that failed since the last call, if any. A failed
    /// rotation loses nothing: the current file grows past `max_size` and the
    /// rotation is tried again on the next write that would exceed it.
    pub fn take_rotation_error(&mut self) -> Option<io::Error> {
        self.rotation_error.take()
    }

    /// How many bytes [`RotatingFile::splice_from`] may move into the file
    /// now; `None` when splicing is not the way: the file is not open yet
    /// (the first `write` opens it, so no file is created for nothing), not a
    /// regular file (a device, a FIFO), splice unsupported there, or within
    /// `SPLICE_MARGIN` of `max_size` (the caller then reads and `write`s,
    /// which rotates at a newline). Learns the file's size from `fstat`: a
    /// file truncated (or grown) by someone else is continued at its end, as
    /// O_APPEND would.
    pub fn splice_room(&mut self) -> io::Result<Option<u64>> {
        let max = self.rotation.max_size;
        let near_bound = |size: u64| max > 0 && max.saturating_sub(size) <= SPLICE_MARGIN;
        // A known size near the bound needs no fstat: `write` refreshes it.
        if !self.rotatable || self.no_splice || near_bound(self.size) {
            return Ok(None);
        }
        let Some(file) = self.file.as_ref() else {
            return Ok(None);
        };
        self.size = u64::try_from(nix::sys::stat::fstat(file)?.st_size).unwrap_or(0);
        Ok(match max {
            0 => Some(u64::MAX),
            _ if near_bound(self.size) => None,
            _ => Some(max - self.size - SPLICE_MARGIN),
        })
    }

    /// Moves up to `len` bytes from `pipe` to the end of the file with
    /// splice(2), never copied through userspace; call
    /// [`RotatingFile::splice_room`] first, and stay within what it allows.
    /// Returns 0 only at the pipe's end; an empty pipe is `WouldBlock`
    /// unless `pipe` blocks. On an error the bytes stay in the pipe; an
    /// `Unsupported` error means the file system cannot splice
    /// (`splice_room` says so from then on).
    ///
    /// splice(2) refuses O_APPEND files, so O_APPEND is cleared here (and
    /// set again by the next `write`), and the bytes go at the offset
    /// `splice_room` found, advanced by each splice.
    pub fn splice_from(&mut self, pipe: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
        let Some(file) = self.file.as_ref() else {
            return Err(io::Error::other("the log file is not open"));
        };
        if self.append {
            set_append(file, false)?;
            self.append = false;
        }
        let mut offset = i64::try_from(self.size).map_err(io::Error::other)?;
        let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
        match splice(pipe, None, file, Some(&mut offset), len, flags) {
            Ok(n) => {
                self.size += n as u64;
                Ok(n)
            }
            Err(Errno::EINVAL) => {
                self.no_splice = true;
                Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "splice(2) into this file is not supported",
                ))
            }
            Err(e) => Err(e.into()),
        }
    }

    fn open_now(&mut self) -> io::Result<&mut File> {
        let opened = split(&self.path).and_then(|(dir, name)| {
            let dir = LogDir::open(dir, true)?;
            dir.open_append(name, FILE_MODE)
        });
        self.opened(opened)
    }

    /// Keeps a freshly opened file, or remembers why there is none.
    fn opened(&mut self, opened: io::Result<File>) -> io::Result<&mut File> {
        match opened {
            Ok(file) => {
                let meta = file.metadata()?;
                self.size = meta.len();
                self.rotatable = meta.file_type().is_file();
                self.open_failure = None;
                self.append = true;
                self.no_splice = false;
                Ok(self.file.insert(file))
            }
            Err(e) => {
                self.open_failure = Some(OpenFailure {
                    retry: Instant::now() + OPEN_RETRY,
                    kind: e.kind(),
                    refused: safe::refusal(&e).is_some(),
                    message: safe::refusal(&e).map_or_else(|| e.to_string(), str::to_string),
                });
                Err(e)
            }
        }
    }

    fn ensure_open(&mut self) -> io::Result<()> {
        if self.file.is_some() {
            return Ok(());
        }
        if let Some(failure) = &self.open_failure {
            if Instant::now() < failure.retry {
                return Err(failure.error());
            }
        }
        self.open_now().map(|_| ())
    }

    /// How many bytes of `buf` go into the current file; rotates first when
    /// none would fit.
    fn fitting(&mut self, buf: &[u8]) -> usize {
        let max = self.rotation.max_size;
        let len = buf.len() as u64;
        if !self.rotatable || max == 0 || self.size + len <= max {
            return buf.len();
        }
        // Someone may have truncated the file (logrotate's copytruncate).
        if let Some(Ok(meta)) = self.file.as_ref().map(File::metadata) {
            self.size = meta.len();
            if self.size + len <= max {
                return buf.len();
            }
        }
        let room = max.saturating_sub(self.size).min(len) as usize;
        if let Some(i) = last_newline(&buf[..room]) {
            return i + 1;
        }
        if self.size > 0 {
            if let Err(e) = self.rotate() {
                self.rotation_error = Some(e);
                return buf.len();
            }
        }
        // A fresh file: a chunk larger than max_size is cut at its last
        // newline that fits, a single over-long line at max_size.
        let room = (max as usize).min(buf.len());
        last_newline(&buf[..room]).map_or(room, |i| i + 1)
    }

    /// Renames the chain and starts a new file, all by names in the
    /// directory as resolved now (renaming a planted link moves the link).
    fn rotate(&mut self) -> io::Result<()> {
        let backups = self.rotation.backups;
        let (dir, name) = split(&self.path)?;
        let dir = LogDir::open(dir, true)?;
        if backups == 0 {
            dir.unlink(name)?;
        } else {
            for i in (1..backups).rev() {
                match dir.rename(&numbered_name(name, i), &numbered_name(name, i + 1)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            dir.rename(name, &numbered_name(name, 1))?;
            // Left over from a larger `backups` before a reload.
            let _ = dir.unlink(&numbered_name(name, backups + 1));
        }
        self.file = None;
        self.size = 0;
        let opened = dir.open_append(name, FILE_MODE);
        self.opened(opened).map(|_| ())
    }
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.ensure_open()?;
        let n = self.fitting(buf);
        let Some(file) = self.file.as_mut() else {
            // Rotation renamed the file but could not create the next one.
            return self.ensure_open().map(|_| 0);
        };
        if !self.append {
            set_append(file, true)?;
            self.append = true;
        }
        let written = file.write(&buf[..n])?;
        self.size += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Writes go straight to the kernel: there is no buffer to flush.
        Ok(())
    }
}

/// `FILE.n`.
pub fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// Sets or clears O_APPEND on an open file.
fn set_append(file: &File, on: bool) -> io::Result<()> {
    let flags = OFlag::from_bits_retain(fcntl(file, FcntlArg::F_GETFL)?);
    fcntl(
        file,
        FcntlArg::F_SETFL(
            flags.difference(OFlag::O_APPEND) | if on { OFlag::O_APPEND } else { OFlag::empty() },
        ),
    )?;
    Ok(())
}

fn last_newline(buf: &[u8]) -> Option<usize> {
    memchr::memrchr(b'\n', buf)
}

/// `NAME.n`.
fn numbered_name(name: &OsStr, n: u32) -> OsString {
    let mut s = name.to_owned();
    s.push(format!(".{n}"));
    s
}

/// The directory and name of a log file's path.
fn split(path: &Path) -> io::Result<(&Path, &OsStr)> {
    safe::split(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::fs::{self, OpenOptions};
    use std::os::fd::{AsFd, OwnedFd};

    fn rot(max_size: u64, backups: u32) -> Rotation {
        Rotation { max_size, backups }
    }

    /// Writes all of `data` the way the capture does (write until done).
    fn write_all(f: &mut RotatingFile, data: &[u8]) {
        let mut rest = data;
        while !rest.is_empty() {
            let n = f.write(rest).expect("write");
            assert!(n > 0, "write made no progress");
            rest = &rest[n..];
        }
    }

    /// `FILE.N` .. `FILE.1`, `FILE` concatenated, and each file's content.
    fn read_chain(path: &Path, backups: u32) -> (Vec<u8>, Vec<Vec<u8>>) {
        let mut all = Vec::new();
        let mut files = Vec::new();
        for i in (1..=backups).rev() {
            if let Ok(b) = fs::read(numbered(path, i)) {
                all.extend_from_slice(&b);
                files.push(b);
            }
        }
        let b = fs::read(path).unwrap_or_default();
        all.extend_from_slice(&b);
        files.push(b);
        (all, files)
    }

    fn lines(n: usize) -> Vec<u8> {
        (0..n)
            .flat_map(|i| format!("line {i:04}\n").into_bytes())
            .collect()
    }

    #[test]
    fn rotates_at_the_bound_at_line_ends() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("sub/dir/a.log");
        let mut f = RotatingFile::new(&path, rot(100, 50));
        let data = lines(100); // 10 bytes a line
        for chunk in data.chunks(37) {
            write_all(&mut f, chunk);
        }
        let (all, files) = read_chain(&path, 50);
        assert_eq!(all, data, "every byte once, in order");
        for file in &files {
            assert!(file.len() <= 100, "a file exceeds max_size: {}", file.len());
        }
        for file in &files[..files.len() - 1] {
            assert_eq!(file.last(), Some(&b'\n'), "rotated files end at a line end");
            // Chunks are 37 bytes, so rotation cuts at the last newline that fits.
            assert!(file.len() >= 70, "rotated too early: {}", file.len());
        }
        let mode = fs::metadata(&path).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o640
        );
    }

    #[test]
    fn prunes_beyond_backups() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a.log");
        fs::write(numbered(&path, 3), "stale from a larger setting").unwrap();
        let mut f = RotatingFile::new(&path, rot(10, 2));
        for i in 0..10 {
            write_all(&mut f, format!("line {i:03}\n").as_bytes());
        }
        assert_eq!(fs::read_to_string(&path).unwrap(), "line 009\n");
        assert_eq!(
            fs::read_to_string(numbered(&path, 1)).unwrap(),
            "line 008\n"
        );
        assert_eq!(
            fs::read_to_string(numbered(&path, 2)).unwrap(),
            "line 007\n"
        );
        assert!(!numbered(&path, 3).exists());
    }

    #[test]
    fn zero_backups_starts_over_and_zero_size_never_rotates() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a.log");
        let mut f = RotatingFile::new(&path, rot(10, 0));
        write_all(&mut f, b"first 01\n");
        write_all(&mut f, b"second 2\n");
        assert_eq!(fs::read_to_string(&path).unwrap(), "second 2\n");
        assert!(!numbered(&path, 1).exists());

        let path = tmp.path().join("b.log");
        let mut f = RotatingFile::new(&path, rot(0, 3));
        let data = lines(1000);
        write_all(&mut f, &data);
        assert_eq!(fs::read(&path).unwrap(), data);
        assert!(!numbered(&path, 1).exists());
    }

    #[test]
    fn rotation_moves_and_removes_planted_links_never_their_targets() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        fs::write(&victim, "secret\n").unwrap();
        let path = tmp.path().join("a.log");
        std::os::unix::fs::symlink(&victim, numbered(&path, 1)).unwrap();
        std::os::unix::fs::symlink(&victim, numbered(&path, 3)).unwrap();
        let mut f = RotatingFile::new(&path, rot(10, 2));
        write_all(&mut f, b"line 001\n");
        // Rotates: a.log.1 (the link) -> a.log.2, a.log -> a.log.1, a.log.3 removed.
        write_all(&mut f, b"line 002\n");
        assert!(fs::symlink_metadata(numbered(&path, 2))
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(fs::symlink_metadata(numbered(&path, 3)).is_err());
        // A link in place of the file itself is not reopened.
        std::os::unix::fs::symlink(&victim, tmp.path().join("x")).unwrap();
        fs::rename(tmp.path().join("x"), &path).unwrap();
        f.reopen().expect_err("a link is not reopened");
        assert_eq!(fs::read_to_string(&victim).unwrap(), "secret\n");
        assert_eq!(
            fs::read_to_string(numbered(&path, 1)).unwrap(),
            "line 001\n"
        );
    }

    #[test]
    fn a_write_bigger_than_max_size() {
        let tmp = tempfile::tempdir().unwrap();
        // No newline at all: cut at max_size.
        let path = tmp.path().join("a.log");
        let mut f = RotatingFile::new(&path, rot(100, 5));
        let data = vec![b'x'; 250];
        write_all(&mut f, &data);
        let (all, files) = read_chain(&path, 5);
        assert_eq!(all, data);
        let sizes: Vec<usize> = files.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![100, 100, 50]);

        // With newlines: cut at the last one that fits.
        let path = tmp.path().join("b.log");
        let mut f = RotatingFile::new(&path, rot(100, 5));
        let data = lines(30);
        write_all(&mut f, &data);
        let (all, files) = read_chain(&path, 5);
        assert_eq!(all, data);
        let sizes: Vec<usize> = files.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![100, 100, 100]);
    }

    #[test]
    fn a_failed_rename_loses_nothing_and_is_retried() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a.log");
        // A non-empty directory where FILE.1 should go: rename(FILE, FILE.1) fails
        // even for root.
        let blocker = numbered(&path, 1);
        fs::create_dir(&blocker).unwrap();
        fs::write(blocker.join("x"), "x").unwrap();
        let mut f = RotatingFile::new(&path, rot(20, 1));
        write_all(&mut f, b"0123456789\n");
        write_all(&mut f, b"abcdefghij\n");
        assert!(f.take_rotation_error().is_some(), "the failure is reported");
        assert!(f.take_rotation_error().is_none(), "once");
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "0123456789\nabcdefghij\n",
            "kept writing to the current file"
        );
        fs::remove_dir_all(&blocker).unwrap();
        write_all(&mut f, b"after\n");
        assert!(f.take_rotation_error().is_none());
        assert_eq!(
            fs::read_to_string(numbered(&path, 1)).unwrap(),
            "0123456789\nabcdefghij\n"
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "after\n");
    }

    #[test]
    fn reopen_follows_a_moved_file_and_size_is_refreshed() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a.log");
        let mut f = RotatingFile::new(&path, rot(1000, 1));
        write_all(&mut f, b"old\n");
        let moved = tmp.path().join("a.log.moved");
        fs::rename(&path, &moved).unwrap();
        write_all(&mut f, b"still old\n");
        f.reopen().unwrap();
        write_all(&mut f, b"new\n");
        assert_eq!(fs::read_to_string(&moved).unwrap(), "old\nstill old\n");
        assert_eq!(fs::read_to_string(&path).unwrap(), "new\n");
        assert_eq!(f.size(), 4);
    }

    /// Moves everything `pipe` carries into `f` as the capture does: spliced
    /// while `splice_room` allows, read and written (in `read_chunk` pieces)
    /// near the bound. Returns the bytes (spliced, written).
    fn drain_pipe(f: &mut RotatingFile, pipe: &OwnedFd, read_chunk: usize) -> (usize, usize) {
        let (mut spliced, mut written) = (0, 0);
        let mut buf = vec![0; read_chunk];
        loop {
            let room = f.splice_room().expect("splice_room");
            if let Some(room) = room {
                let len = usize::try_from(room).unwrap_or(usize::MAX).min(100_000);
                match f.splice_from(pipe.as_fd(), len) {
                    Ok(0) => return (spliced, written),
                    Ok(n) => spliced += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        let mut fds = [PollFd::new(pipe.as_fd(), PollFlags::POLLIN)];
                        poll(&mut fds, PollTimeout::NONE).expect("poll");
                    }
                    Err(e) => panic!("splice_from: {e}"),
                }
                continue;
            }
            let n = nix::unistd::read(pipe, &mut buf).expect("read");
            if n == 0 {
                return (spliced, written);
            }
            write_all(f, &buf[..n]);
            written += n;
        }
    }

    /// Lines of uneven length, numbered, so a lost, doubled or moved byte shows.
    fn uneven_lines(n: usize) -> Vec<u8> {
        (0..n)
            .flat_map(|i| format!("{i:07} {}\n", "x".repeat(i * 7919 % 97)).into_bytes())
            .collect()
    }

    /// Writes `data` into a new pipe from a thread (in uneven pieces); returns
    /// the read end and the thread.
    fn feed(data: Vec<u8>) -> (OwnedFd, std::thread::JoinHandle<()>) {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        let writer = std::thread::spawn(move || {
            let mut out = File::from(write);
            for piece in data.chunks(12_345) {
                out.write_all(piece).unwrap();
            }
        });
        (read, writer)
    }

    #[test]
    fn splice_and_write_keep_every_byte_in_order_across_rotations() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a.log");
        const MAX: u64 = 700_000;
        let mut f = RotatingFile::new(&path, rot(MAX, 50));
        let data = uneven_lines(60_000); // about 3.4 MB
        let (pipe, writer) = feed(data.clone());
        let (spliced, written) = drain_pipe(&mut f, &pipe, 37_000);
        writer.join().unwrap();
        assert_eq!(spliced + written, data.len());
        assert!(spliced > data.len() / 2, "mostly spliced: {spliced}");
        assert!(written > 0, "near the bound, written");
        let (all, files) = read_chain(&path, 50);
        assert!(all == data, "every byte once, in order");
        assert!(
            files.len() as u64 > data.len() as u64 / MAX,
            "{} files",
            files.len()
        );
        for file in &files {
            assert!(
                file.len() as u64 <= MAX,
                "a file exceeds max_size: {}",
                file.len()
            );
        }
        for file in &files[..files.len() - 1] {
            assert_eq!(file.last(), Some(&b'\n'), "rotated files end at a line end");
            assert!(
                file.len() as u64 > MAX - 40_000,
                "rotated early: {}",
                file.len()
            );
        }
    }

    #[test]
    fn without_max_size_everything_is_spliced() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a.log");
        let mut f = RotatingFile::new(&path, rot(0, 3));
        write_all(&mut f, b"written first\n");
        let data = uneven_lines(20_000);
        let (pipe, writer) = feed(data.clone());
        let (spliced, written) = drain_pipe(&mut f, &pipe, 4096);
        writer.join().unwrap();
        assert_eq!((spliced, written), (data.len(), 0));
        write_all(&mut f, b"written last\n");
        let mut want = b"written first\n".to_vec();
        want.extend_from_slice(&data);
        want.extend_from_slice(b"written last\n");
        assert!(
            fs::read(&path).unwrap() == want,
            "spliced between the writes"
        );
        assert_eq!(f.size(), want.len() as u64);
    }

    #[test]
    fn splicing_goes_on_at_the_end_of_a_truncated_or_moved_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a.log");
        let mut f = RotatingFile::new(&path, rot(10_000_000, 1));
        let splice_all = |f: &mut RotatingFile, data: &[u8]| {
            let (pipe, writer) = feed(data.to_vec());
            let (spliced, _) = drain_pipe(f, &pipe, 4096);
            writer.join().unwrap();
            assert_eq!(spliced, data.len(), "all spliced");
        };
        assert_eq!(
            f.splice_room().unwrap(),
            None,
            "the first write opens the file"
        );
        write_all(&mut f, b"one\n");
        splice_all(&mut f, b"two\n");
        assert_eq!(fs::read_to_string(&path).unwrap(), "one\ntwo\n");
        // logrotate's copytruncate: no hole of zeros, the file goes on at 0.
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        splice_all(&mut f, b"three\n");
        assert_eq!(fs::read_to_string(&path).unwrap(), "three\n");
        // A write after splicing appends (O_APPEND is back), even after a
        // truncation it was not told of.
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(2)
            .unwrap();
        write_all(&mut f, b"four\n");
        assert_eq!(fs::read_to_string(&path).unwrap(), "thfour\n");
        // Moved away and reopened: splicing goes to the new file.
        let moved = tmp.path().join("a.log.moved");
        fs::rename(&path, &moved).unwrap();
        splice_all(&mut f, b"five\n");
        f.reopen().unwrap();
        splice_all(&mut f, b"six\n");
        assert_eq!(fs::read_to_string(&moved).unwrap(), "thfour\nfive\n");
        assert_eq!(fs::read_to_string(&path).unwrap(), "six\n");
    }

    #[test]
    fn splicing_stops_short_of_the_bound() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a.log");
        let mut f = RotatingFile::new(&path, rot(SPLICE_MARGIN + 1000, 1));
        write_all(&mut f, b"\n");
        assert_eq!(f.splice_room().unwrap(), Some(999));
        write_all(&mut f, &[b'x'; 998]);
        assert_eq!(f.splice_room().unwrap(), Some(1));
        write_all(&mut f, b"\n");
        assert_eq!(f.splice_room().unwrap(), None, "the rest is for write");
        let mut null = RotatingFile::new("/dev/null", rot(0, 0));
        write_all(&mut null, b"x\n");
        assert_eq!(null.splice_room().unwrap(), None, "devices are written");
    }

    #[test]
    fn devices_are_never_renamed() {
        let mut f = RotatingFile::new("/dev/null", rot(10, 3));
        write_all(&mut f, &lines(100));
        assert!(Path::new("/dev/null").exists());
        assert!(!Path::new("/dev/null.1").exists());
        let mut full = RotatingFile::new("/dev/full", rot(10, 3));
        let e = full.write(b"x\n").expect_err("/dev/full is full");
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
    }

    #[test]
    fn an_unopenable_path_fails_and_recovers() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        fs::write(&dir, "a file where a directory should be").unwrap();
        let path = dir.join("a.log");
        let mut f = RotatingFile::new(&path, rot(0, 0));
        assert!(f.write(b"x\n").is_err());
        assert!(
            f.write(b"x\n").is_err(),
            "retries are rate-limited, errors kept"
        );
        fs::remove_file(&dir).unwrap();
        f.reopen().expect("reopen creates the directory");
        write_all(&mut f, b"y\n");
        assert_eq!(fs::read_to_string(&path).unwrap(), "y\n");
    }
}
