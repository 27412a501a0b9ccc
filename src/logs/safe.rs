//! Opening log files so that nobody else can redirect minder's writes.
//!
//! minder usually runs as root, and the directories its log files go in may
//! be writable by the programs it supervises. A program could then replace
//! its log file with a symbolic link, a hard link or a FIFO, and wait for
//! minder to open the name again (an idle stream's file is closed, rotation
//! and `reopen-logs` open it anew): root would append the program's output
//! to a file of its choosing, or hang on the FIFO. So:
//!
//! - a directory is resolved one name at a time ([`LogDir::open`]); a
//!   symbolic link on the way is followed only if it sits in a directory
//!   that nobody but root and minder's user can change;
//! - the file is opened relative to that directory with `O_NOFOLLOW` (a
//!   symbolic link is never written through) and `O_NONBLOCK` (a FIFO
//!   without a reader cannot hang the open), then checked on the open fd;
//! - in a directory that others can change (writable by others, owned by
//!   another user, or reached through one), only a regular file owned by
//!   root or minder's user, with a single link, is written;
//! - rotation renames and removes names relative to the same directory fd.
//!
//! A refusal is an [`io::Error`] carrying [`Refused`], so callers can tell it
//! from a failing disk and say "refusing to write".

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{fcntl, openat, readlinkat, renameat, FcntlArg, OFlag};
use nix::sys::stat::{fstat, mkdirat, FileStat, Mode};
use nix::unistd::{unlinkat, UnlinkatFlags};

/// Symbolic links followed on the way to one directory at most (as the kernel).
const MAX_LINKS: usize = 40;

/// Why minder will not write (or read) a file: a refusal, not an I/O failure.
#[derive(Debug)]
pub struct Refused(String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

fn refused(reason: String) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, Refused(reason))
}

/// The reason, if `e` is a refusal.
pub fn refusal(e: &io::Error) -> Option<&str> {
    e.get_ref()?.downcast_ref::<Refused>().map(|r| r.0.as_str())
}

/// A refusal again (for an error remembered as its kind and message).
pub(super) fn refused_again(reason: &str) -> io::Error {
    refused(reason.to_string())
}

/// Root and minder's own user: the users whose files and directories minder
/// trusts.
fn trusted(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

/// Why users other than root and minder's user can add, remove or rename
/// entries of the directory `st`, if they can. A group-writable directory
/// whose group is root (gid 0) counts as safe, as logrotate has it; sticky
/// directories (`/tmp`) count as writable by others.
fn others_can_write(st: &FileStat) -> Option<String> {
    if !trusted(st.st_uid) {
        return Some(format!("is owned by uid {}", st.st_uid));
    }
    let mode = st.st_mode & 0o7777;
    if mode & 0o002 != 0 {
        return Some(format!("is writable by everyone (mode {mode:04o})"));
    }
    if mode & 0o020 != 0 && st.st_gid != 0 {
        return Some(format!(
            "is writable by group {} (mode {mode:04o})",
            st.st_gid
        ));
    }
    None
}

fn kind(st: &FileStat) -> u32 {
    st.st_mode & libc::S_IFMT
}

/// The names of `path` in order, `..` kept, `.` and `/` dropped.
fn names(path: &Path) -> impl Iterator<Item = OsString> + '_ {
    path.components().filter_map(|c| match c {
        Component::Normal(n) => Some(n.to_owned()),
        Component::ParentDir => Some(OsString::from("..")),
        Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
    })
}

/// `O_PATH`: enough to resolve names under it and to `fstat` it, and it opens
/// a symbolic link itself (with `O_NOFOLLOW`) instead of what it points to.
fn open_path(dir: &OwnedFd, name: &OsStr) -> nix::Result<OwnedFd> {
    openat(
        dir,
        name,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

fn open_root() -> io::Result<OwnedFd> {
    Ok(nix::fcntl::open(
        "/",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?)
}

/// A directory of log files, resolved safely (see the module doc).
#[derive(Debug)]
pub struct LogDir {
    fd: OwnedFd,
    /// The path it was reached by, after links.
    #[cfg(test)]
    path: PathBuf,
    /// Why others than root and minder's user could change what is in it,
    /// if they can: its files are then checked strictly.
    shared: Option<String>,
}

impl LogDir {
    /// Opens the directory `dir`, creating missing directories (0755, less
    /// the umask) when `create`. Refuses a symbolic link on the way that
    /// others could have put there.
    pub fn open(dir: &Path, create: bool) -> io::Result<LogDir> {
        let dir = if dir.is_absolute() {
            dir.to_path_buf()
        } else {
            std::env::current_dir()?.join(dir)
        };
        let mut todo: VecDeque<OsString> = names(&dir).collect();
        let mut fd = open_root()?;
        let mut st = fstat(&fd)?;
        let mut at = PathBuf::from("/");
        let mut shared: Option<String> = None;
        let mut links = 0;
        while let Some(name) = todo.pop_front() {
            if name == ".." {
                fd = openat(
                    &fd,
                    "..",
                    OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )?;
                st = fstat(&fd)?;
                at.pop();
                continue;
            }
            let here = at.join(&name);
            let entry = match open_path(&fd, &name) {
                Err(Errno::ENOENT) if create => {
                    match mkdirat(&fd, name.as_os_str(), Mode::from_bits_truncate(0o755)) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(with_path(e, &here)),
                    }
                    open_path(&fd, &name)
                }
                other => other,
            }
            .map_err(|e| with_path(e, &here))?;
            let est = fstat(&entry)?;
            // Who could have put this entry here: anyone who can write the
            // directory, unless it is sticky and the entry is ours.
            let sticky_keeps =
                st.st_mode & libc::S_ISVTX != 0 && trusted(st.st_uid) && trusted(est.st_uid);
            let exposed = others_can_write(&st)
                .filter(|_| !sticky_keeps)
                .map(|why| format!("{} {why}", at.display()));
            match kind(&est) {
                libc::S_IFLNK => {
                    if let Some(why) = exposed {
                        return Err(refused(format!(
                            "{} is a symbolic link, and {why}",
                            here.display()
                        )));
                    }
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(with_path(Errno::ELOOP, &here));
                    }
                    let target = readlinkat(&fd, name.as_os_str())?;
                    let target = PathBuf::from(target);
                    if target.is_absolute() {
                        fd = open_root()?;
                        st = fstat(&fd)?;
                        at = PathBuf::from("/");
                    }
                    for n in names(&target).collect::<Vec<_>>().into_iter().rev() {
                        todo.push_front(n);
                    }
                }
                libc::S_IFDIR => {
                    if shared.is_none() {
                        shared = exposed
                            .map(|why| format!("{} could be swapped: {why}", here.display()));
                    }
                    fd = entry;
                    st = est;
                    at = here;
                }
                _ => return Err(with_path(Errno::ENOTDIR, &here)),
            }
        }
        if shared.is_none() {
            shared = others_can_write(&st).map(|why| format!("{} {why}", at.display()));
        }
        Ok(LogDir {
            fd,
            #[cfg(test)]
            path: at,
            shared,
        })
    }

    /// Why others can change this directory's entries, if they can.
    #[cfg(test)]
    pub fn shared(&self) -> Option<&str> {
        self.shared.as_deref()
    }

    /// Opens `name` for appending, creating it with `mode` if missing. Never
    /// through a symbolic link; in a shared directory only a regular file
    /// owned by root or minder's user with one link. The file is blocking
    /// once opened (a FIFO in a private directory is written as before).
    pub fn open_append(&self, name: &OsStr, mode: u32) -> io::Result<File> {
        let flags = OFlag::O_WRONLY
            | OFlag::O_APPEND
            | OFlag::O_CLOEXEC
            | OFlag::O_NOCTTY
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK;
        // A name that vanishes and reappears between the two opens is tried
        // again, a few times.
        for _ in 0..4 {
            let fd = match openat(&self.fd, name, flags, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => {
                    // O_EXCL: a name planted meanwhile is not created through.
                    let create = flags | OFlag::O_CREAT | OFlag::O_EXCL;
                    match openat(&self.fd, name, create, Mode::from_bits_truncate(mode)) {
                        Ok(fd) => fd,
                        Err(Errno::EEXIST) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(e) => return Err(self.open_error(e)),
            };
            self.check(&fd)?;
            let fl = OFlag::from_bits_retain(fcntl(&fd, FcntlArg::F_GETFL)?);
            fcntl(&fd, FcntlArg::F_SETFL(fl.difference(OFlag::O_NONBLOCK)))?;
            return Ok(File::from(fd));
        }
        Err(io::Error::other(
            "it kept appearing and disappearing while being opened",
        ))
    }

    /// Opens `name` for reading, under the same rules as
    /// [`LogDir::open_append`], and only if it is a regular file (`tail`
    /// must not hang on a FIFO).
    pub fn open_read(&self, name: &OsStr) -> io::Result<File> {
        let flags = OFlag::O_RDONLY
            | OFlag::O_CLOEXEC
            | OFlag::O_NOCTTY
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK;
        let fd = openat(&self.fd, name, flags, Mode::empty()).map_err(|e| self.open_error(e))?;
        self.check(&fd)?;
        if kind(&fstat(&fd)?) != libc::S_IFREG {
            return Err(refused("it is not a regular file".to_string()));
        }
        Ok(File::from(fd))
    }

    fn open_error(&self, e: Errno) -> io::Error {
        match e {
            // O_NOFOLLOW on the last name: it is a link.
            Errno::ELOOP => refused("it is a symbolic link".to_string()),
            // O_NONBLOCK: a FIFO nobody reads, or a socket.
            Errno::ENXIO => match &self.shared {
                Some(why) => refused(format!("it is not a regular file, and {why}")),
                None => io::Error::other("it is a FIFO that nobody reads, or a socket"),
            },
            e => e.into(),
        }
    }

    /// The checks on an opened file that the directory calls for.
    fn check(&self, fd: &OwnedFd) -> io::Result<()> {
        let st = fstat(fd)?;
        if kind(&st) == libc::S_IFDIR {
            return Err(refused("it is a directory".to_string()));
        }
        let Some(why) = &self.shared else {
            return Ok(());
        };
        if kind(&st) != libc::S_IFREG {
            return Err(refused(format!("it is not a regular file, and {why}")));
        }
        if !trusted(st.st_uid) {
            return Err(refused(format!(
                "it is owned by uid {}, not by minder's user (uid {}), and {why}",
                st.st_uid,
                nix::unistd::geteuid()
            )));
        }
        // Whoever can write the directory may have linked a file of root's
        // here (where /proc/sys/fs/protected_hardlinks is off): writing it
        // would change the other name's file too. minder's own files have
        // one link.
        if st.st_nlink > 1 {
            return Err(refused(format!(
                "it has {} hard links (it may be another file's), and {why}",
                st.st_nlink
            )));
        }
        Ok(())
    }

    /// Renames `from` to `to` in the directory (the names themselves, links
    /// included: rename never follows one).
    pub fn rename(&self, from: &OsStr, to: &OsStr) -> io::Result<()> {
        Ok(renameat(&self.fd, from, &self.fd, to)?)
    }

    /// Removes the name `name` (a link is removed, not what it points to).
    pub fn unlink(&self, name: &OsStr) -> io::Result<()> {
        Ok(unlinkat(&self.fd, name, UnlinkatFlags::NoRemoveDir)?)
    }

    /// The names in the directory (read through its fd, not its path).
    pub fn names(&self) -> io::Result<Vec<OsString>> {
        let me = format!("/proc/self/fd/{}", self.fd.as_raw_fd());
        std::fs::read_dir(me)?
            .map(|e| e.map(|e| e.file_name()))
            .collect()
    }

    /// The path it was reached by.
    #[cfg(test)]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn with_path(e: Errno, path: &Path) -> io::Error {
    let e = io::Error::from(e);
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// The directory and file name of `path`.
pub fn split(path: &Path) -> io::Result<(&Path, &OsStr)> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not a file name", path.display()),
        )
    })?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Ok((dir, name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::io::Write;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    /// A private temp dir (0700, ours).
    fn private() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn a_symbolic_link_is_never_written_through() {
        let tmp = private();
        let victim = tmp.path().join("victim");
        fs::write(&victim, "secret\n").unwrap();
        symlink(&victim, tmp.path().join("a.log")).unwrap();
        let dir = LogDir::open(tmp.path(), false).unwrap();
        assert!(dir.shared().is_none(), "{:?}", dir.shared());
        let e = dir.open_append(OsStr::new("a.log"), 0o640).unwrap_err();
        assert_eq!(refusal(&e), Some("it is a symbolic link"), "{e}");
        // Dangling: not created through either.
        symlink(tmp.path().join("new"), tmp.path().join("b.log")).unwrap();
        let e = dir.open_append(OsStr::new("b.log"), 0o640).unwrap_err();
        assert!(refusal(&e).is_some(), "{e}");
        assert!(!tmp.path().join("new").exists());
        assert_eq!(fs::read_to_string(&victim).unwrap(), "secret\n");
        let e = dir.open_read(OsStr::new("a.log")).unwrap_err();
        assert!(refusal(&e).is_some(), "{e}");
    }

    #[test]
    fn a_fifo_does_not_hang_the_open() {
        let tmp = private();
        let fifo = tmp.path().join("p");
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600)).unwrap();
        let dir = LogDir::open(tmp.path(), false).unwrap();
        // Nobody reads it: an error at once, not a hang.
        assert!(dir.open_append(OsStr::new("p"), 0o640).is_err());
        assert!(dir.open_read(OsStr::new("p")).is_err());
    }

    #[test]
    fn in_a_shared_directory_only_our_own_single_link_files() {
        let tmp = private();
        let shared = tmp.path().join("shared");
        fs::create_dir(&shared).unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
        let dir = LogDir::open(&shared, false).unwrap();
        assert!(
            dir.shared()
                .is_some_and(|w| w.contains("writable by everyone")),
            "{:?}",
            dir.shared()
        );
        // Created by us: fine, and written.
        let mut f = dir.open_append(OsStr::new("ok.log"), 0o640).unwrap();
        f.write_all(b"x\n").unwrap();
        // A hard link to a file elsewhere.
        let victim = tmp.path().join("victim");
        fs::write(&victim, "secret\n").unwrap();
        fs::hard_link(&victim, shared.join("h.log")).unwrap();
        let e = dir.open_append(OsStr::new("h.log"), 0o640).unwrap_err();
        assert!(refusal(&e).is_some_and(|r| r.contains("hard links")), "{e}");
        // A FIFO with a reader.
        let fifo = shared.join("p.log");
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o666)).unwrap();
        let _reader = nix::fcntl::open(
            &fifo,
            OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        let e = dir.open_append(OsStr::new("p.log"), 0o640).unwrap_err();
        assert!(
            refusal(&e).is_some_and(|r| r.contains("not a regular")),
            "{e}"
        );
        assert_eq!(fs::read_to_string(&victim).unwrap(), "secret\n");
        if !is_root() {
            eprintln!("skipping the foreign owner case: needs root to chown");
            return;
        }
        let foreign = shared.join("f.log");
        fs::write(&foreign, "theirs\n").unwrap();
        nix::unistd::chown(&foreign, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        let e = dir.open_append(OsStr::new("f.log"), 0o640).unwrap_err();
        assert!(refusal(&e).is_some_and(|r| r.contains("uid 65534")), "{e}");
    }

    #[test]
    fn a_directory_link_is_followed_only_where_others_cannot_put_it() {
        let tmp = private();
        let real = tmp.path().join("real");
        fs::create_dir(&real).unwrap();
        // Our own link in our own directory: followed.
        symlink(&real, tmp.path().join("via")).unwrap();
        let dir = LogDir::open(&tmp.path().join("via"), false).unwrap();
        assert_eq!(dir.path(), real.as_path());
        assert!(dir.shared().is_none());
        // A relative link with `..`.
        symlink("../real", real.join("up")).unwrap();
        let dir = LogDir::open(&real.join("up"), false).unwrap();
        assert_eq!(dir.path(), real.as_path());
        // A link in a directory everyone can write: refused.
        let shared = tmp.path().join("shared");
        fs::create_dir(&shared).unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).unwrap();
        symlink(&real, shared.join("via")).unwrap();
        let e = LogDir::open(&shared.join("via"), false).unwrap_err();
        assert!(
            refusal(&e).is_some_and(|r| r.contains("symbolic link")),
            "{e}"
        );
        // Creating: missing directories are made.
        let dir = LogDir::open(&tmp.path().join("a/b/c"), true).unwrap();
        assert!(tmp.path().join("a/b/c").is_dir());
        assert!(dir.shared().is_none());
        // A directory inside a shared one is shared too.
        fs::create_dir(shared.join("sub")).unwrap();
        let dir = LogDir::open(&shared.join("sub"), false).unwrap();
        assert!(dir.shared().is_some());
    }
}
