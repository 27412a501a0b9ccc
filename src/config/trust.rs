//! Refusing config files that others than root could change, like sshd's
//! `StrictModes`: minder runs the commands its config names, as root when it
//! is root, so whoever can edit a config file (or replace it, through a
//! directory they can write) could run anything as root.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::Config;

/// The sticky bit: in such a directory others may add files, but not rename or remove ours.
const STICKY: u32 = 0o1000;

/// Why a config file cannot be trusted.
#[derive(Debug, thiserror::Error)]
pub enum Untrusted {
    /// The file, or a directory above it, is writable by group or others.
    #[error(
        "{what} {path} is writable by {by} (mode {mode:04o}), so others than root could {}; \
         fix it with `chmod go-w {path}`{}",
        risk(.what),
        escape(.what)
    )]
    Writable {
        /// `config file` or `directory`.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// `group`, `others` or `group and others`.
        by: &'static str,
        /// Its permission bits.
        mode: u32,
    },
    /// The file, or a directory above it, belongs to another user than root.
    #[error(
        "{what} {path} is owned by uid {uid}, not root, so that user could {}; \
         fix it with `chown root {path}`{}",
        risk(.what),
        escape(.what)
    )]
    Owner {
        /// `config file` or `directory`.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Its owner.
        uid: u32,
    },
    /// A secret file others may read.
    #[error(
        "{what} {path} is readable by others (mode {mode:04o}), so anyone on this machine could \
         read the key; fix it with `chmod o-r {path}`"
    )]
    Readable {
        /// `secret file`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file could not be examined.
    #[error("cannot check the permissions of {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
}

/// What a webhook's key file is named as in messages.
const SECRET_FILE: &str = "secret file";

/// What others than root could do with a file they can change.
fn risk(what: &str) -> &'static str {
    if what == SECRET_FILE {
        "choose or read the key minder signs webhooks with"
    } else {
        "make minder run anything as root"
    }
}

/// The way around the check, where there is one: a secret that others can
/// read or change is no secret, so there is none for secret files.
fn escape(what: &str) -> &'static str {
    if what == SECRET_FILE {
        ""
    } else {
        ", or start minder with --insecure-config"
    }
}

/// When minder runs as root: a secret file (`secret_file` of a webhook),
/// judged by `meta` (taken from the opened file, so the file judged is the
/// file read), must be owned by root, not writable by group or others, and
/// not readable by others. As another user there is nothing to check, as for
/// config files.
pub(crate) fn check_secret_file(path: &Path, meta: &std::fs::Metadata) -> Result<(), Untrusted> {
    let euid = nix::unistd::geteuid();
    if !euid.is_root() {
        return Ok(());
    }
    judge_secret(path, meta, euid.as_raw())
}

pub(super) fn judge_secret(
    path: &Path,
    meta: &std::fs::Metadata,
    owner: u32,
) -> Result<(), Untrusted> {
    judge(path, meta, SECRET_FILE, owner)?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o004 != 0 {
        return Err(Untrusted::Readable {
            what: SECRET_FILE,
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// When minder runs as root: every file of `config` (the main file and each
/// included file that defines programs) and every directory above it must be
/// owned by root and not writable by group or others (sticky directories such
/// as /tmp excepted). As another user, minder runs nothing with more rights
/// than that user has, so there is nothing to check.
pub fn check_trusted(config: &Config) -> Result<(), Untrusted> {
    let euid = nix::unistd::geteuid();
    if !euid.is_root() {
        return Ok(());
    }
    check_files(config_files(config), euid.as_raw())
}

/// The files a config was read from that matter: the main one, and every file
/// defining a program (an included file that defines none changes nothing).
fn config_files(config: &Config) -> BTreeSet<PathBuf> {
    std::iter::once(config.path.clone())
        .chain(config.programs.iter().map(|p| p.file.clone()))
        .collect()
}

/// Checks each file and the directories above it; `owner` is the one user
/// (besides root) allowed to own them.
fn check_files(files: BTreeSet<PathBuf>, owner: u32) -> Result<(), Untrusted> {
    let mut seen_dirs = BTreeSet::new();
    for file in files {
        let real = std::fs::canonicalize(&file).map_err(|source| Untrusted::Io {
            path: file.clone(),
            source,
        })?;
        check_one(&real, "config file", owner)?;
        // `ancestors` ends at `/`: the walk is as long as the path.
        for dir in real.ancestors().skip(1) {
            if seen_dirs.insert(dir.to_path_buf()) {
                check_one(dir, "directory", owner)?;
            }
        }
    }
    Ok(())
}

fn check_one(path: &Path, what: &'static str, owner: u32) -> Result<(), Untrusted> {
    let meta = std::fs::metadata(path).map_err(|source| Untrusted::Io {
        path: path.to_path_buf(),
        source,
    })?;
    judge(path, &meta, what, owner)
}

/// The owner and write permission checks of one file or directory.
fn judge(
    path: &Path,
    meta: &std::fs::Metadata,
    what: &'static str,
    owner: u32,
) -> Result<(), Untrusted> {
    if meta.uid() != 0 && meta.uid() != owner {
        return Err(Untrusted::Owner {
            what,
            path: path.to_path_buf(),
            uid: meta.uid(),
        });
    }
    let mode = meta.mode() & 0o7777;
    if meta.is_dir() && mode & STICKY != 0 {
        return Ok(());
    }
    let by = match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (false, false) => return Ok(()),
        (true, false) => "group",
        (false, true) => "others",
        (true, true) => "group and others",
    };
    Err(Untrusted::Writable {
        what,
        path: path.to_path_buf(),
        by,
        mode,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn me() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    /// A private temp dir (0700) under a trusted parent, holding `minder.toml`.
    /// The system temp dir itself may be anything on a developer's machine, so
    /// the checks start below it: only the paths the tests create are judged.
    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::Builder::new()
                .prefix("minder-trust.")
                .tempdir()
                .expect("temp dir");
            std::fs::write(dir.path().join("minder.toml"), "").expect("write");
            chmod(dir.path(), 0o700);
            chmod(&dir.path().join("minder.toml"), 0o644);
            Fixture { dir }
        }

        fn file(&self) -> PathBuf {
            self.dir.path().join("minder.toml")
        }

        /// Runs the check on the file, judging only paths inside the fixture.
        fn check(&self) -> Result<(), Untrusted> {
            let real = std::fs::canonicalize(self.file()).expect("canonicalize");
            check_one(&real, "config file", me())?;
            let root = std::fs::canonicalize(self.dir.path()).expect("canonicalize");
            check_one(&root, "directory", me())
        }
    }

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn a_private_file_in_a_private_directory_is_trusted() {
        let f = Fixture::new();
        f.check().expect("0644 file in a 0700 directory");
    }

    #[test]
    fn a_group_or_world_writable_file_is_refused_with_the_fix() {
        for (mode, by) in [
            (0o664, "group"),
            (0o646, "others"),
            (0o666, "group and others"),
        ] {
            let f = Fixture::new();
            chmod(&f.file(), mode);
            let err = f.check().expect_err("writable file");
            let text = err.to_string();
            assert!(
                matches!(&err, Untrusted::Writable { by: b, .. } if *b == by),
                "{mode:o}: {err:?}"
            );
            assert!(text.contains("chmod go-w"), "{text}");
            assert!(text.contains("--insecure-config"), "{text}");
            assert!(text.contains(&format!("{mode:04o}")), "{text}");
        }
    }

    #[test]
    fn a_writable_directory_is_refused_unless_sticky() {
        let f = Fixture::new();
        chmod(f.dir.path(), 0o777);
        let err = f.check().expect_err("world-writable directory");
        assert!(
            matches!(
                err,
                Untrusted::Writable {
                    what: "directory",
                    ..
                }
            ),
            "{err:?}"
        );
        // Like /tmp: others may add files, but not replace ours.
        chmod(f.dir.path(), 0o1777);
        f.check().expect("sticky directory");
        chmod(f.dir.path(), 0o700);
    }

    #[test]
    fn a_file_owned_by_another_user_is_refused() {
        let f = Fixture::new();
        let real = std::fs::canonicalize(f.file()).expect("canonicalize");
        // Judged as if only some other uid were allowed: our own file is then foreign.
        let other = me().wrapping_add(4242);
        let err = check_one(&real, "config file", other);
        if me() == 0 {
            // Root-owned files are always accepted.
            err.expect("root-owned file");
        } else {
            let err = err.expect_err("file of another user");
            assert!(matches!(err, Untrusted::Owner { .. }), "{err:?}");
            assert!(err.to_string().contains("chown root"), "{err}");
        }
    }

    #[test]
    fn a_missing_file_is_an_error_not_a_pass() {
        let err = check_files(
            BTreeSet::from([PathBuf::from("/nonexistent/minder.toml")]),
            me(),
        )
        .expect_err("missing file");
        assert!(matches!(err, Untrusted::Io { .. }), "{err:?}");
    }

    #[test]
    fn symlinks_are_judged_by_their_target() {
        let f = Fixture::new();
        let link = f.dir.path().join("link.toml");
        std::os::unix::fs::symlink(f.file(), &link).expect("symlink");
        chmod(&f.file(), 0o666);
        let real = std::fs::canonicalize(&link).expect("canonicalize");
        assert_eq!(real, std::fs::canonicalize(f.file()).expect("canonicalize"));
        let err = check_one(&real, "config file", me()).expect_err("writable target");
        assert!(matches!(err, Untrusted::Writable { .. }), "{err:?}");
    }
}
