//! A log file with size rotation by renaming, as a plain [`io::Write`].
//!
//! Rotation renames `FILE.N-1` to `FILE.N` (replacing the oldest), ..., `FILE`
//! to `FILE.1`, then creates a fresh `FILE`. Nothing is ever truncated or
//! copied, so every byte written is in exactly one file, in order: reading
//! `FILE.N` .. `FILE.1` then `FILE` gives the stream back.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
    open_failure: Option<(Instant, io::ErrorKind, String)>,
    /// A rotation that failed since the caller last asked (the file then grows on).
    rotation_error: Option<io::Error>,
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

    fn open_now(&mut self) -> io::Result<&mut File> {
        match open_append(&self.path) {
            Ok(file) => {
                let meta = file.metadata()?;
                self.size = meta.len();
                self.rotatable = meta.file_type().is_file();
                self.open_failure = None;
                Ok(self.file.insert(file))
            }
            Err(e) => {
                let retry = Instant::now() + OPEN_RETRY;
                self.open_failure = Some((retry, e.kind(), e.to_string()));
                Err(e)
            }
        }
    }

    fn ensure_open(&mut self) -> io::Result<()> {
        if self.file.is_some() {
            return Ok(());
        }
        if let Some((retry, kind, message)) = &self.open_failure {
            if Instant::now() < *retry {
                return Err(io::Error::new(*kind, message.clone()));
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

    /// Renames the chain and starts a new file.
    fn rotate(&mut self) -> io::Result<()> {
        let backups = self.rotation.backups;
        if backups == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            for i in (1..backups).rev() {
                match std::fs::rename(numbered(&self.path, i), numbered(&self.path, i + 1)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            std::fs::rename(&self.path, numbered(&self.path, 1))?;
            // Left over from a larger `backups` before a reload.
            let _ = std::fs::remove_file(numbered(&self.path, backups + 1));
        }
        self.file = None;
        self.size = 0;
        self.open_now().map(|_| ())
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

fn last_newline(buf: &[u8]) -> Option<usize> {
    memchr::memrchr(b'\n', buf)
}

/// Opens `path` for appending, creating it (0640) and its directories.
fn open_append(path: &Path) -> io::Result<File> {
    let open = || {
        OpenOptions::new()
            .append(true)
            .create(true)
            .mode(FILE_MODE)
            .open(path)
    };
    match open() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                DirBuilder::new().recursive(true).mode(0o755).create(dir)?;
            }
            open()
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

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
