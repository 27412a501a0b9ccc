//! Config files that would hang or exhaust minder are refused: FIFOs and
//! devices, files above the size limit, include patterns that walk the
//! whole file system. Both `minder check` and a running daemon's reload.

mod common;

use std::fs;
use std::path::Path;

use common::*;

fn mkfifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .unwrap_or_else(|e| panic!("mkfifo {}: {e}", path.display()));
}

fn check(path: &Path) -> Out {
    run_minder(&["check", "-c", path.to_str().expect("utf-8 temp path")])
}

fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("minder-bounds.")
        .tempdir()
        .expect("temp dir")
}

/// A daemon running `keep`, and its PID.
fn daemon_with_one_program() -> (Daemon, i32) {
    let d = Daemon::start(&program("keep", &[], ""));
    let keep = d.wait_state("keep", "running");
    let pid = keep.pid.expect("running has a pid");
    (d, pid)
}

/// Reload (by `ctl reload`, then SIGHUP) of a config including `include`
/// is rejected with `expected` in the reason; `keep` goes on untouched and
/// the daemon keeps answering.
fn reload_is_refused(mut d: Daemon, keep: i32, include: &str, expected: &str) {
    d.set_supervisor_extra(&format!("include = [{}]", toml_str(include)));
    d.write_config(&(program("keep", &[], "") + &program("added", &[], "")));

    let out = d.ctl(&["reload"]);
    assert_eq!(out.code, 1, "the reload must be rejected: {out:?}");
    assert!(
        out.stderr.contains(expected),
        "the reason should say {expected:?}: {out:?}"
    );

    d.signal(libc::SIGHUP);
    wait_file_until(&d.log_path, "SIGHUP's reload rejected in the log", |log| {
        log.lines()
            .any(|l| l.contains("reload rejected") && l.contains(expected))
    });

    let after = d.status();
    assert_eq!(after.len(), 1, "nothing added: {after:#?}");
    let k = get(&after, "keep");
    assert_eq!(k.pid, Some(keep), "keep untouched: {k:?}");
    assert_eq!(k.state, "running");
}

#[test]
fn include_of_a_fifo_is_refused_and_the_daemon_keeps_serving() {
    let (d, keep) = daemon_with_one_program();
    let fifo = d.path("programs.toml");
    mkfifo(&fifo);
    let expected = format!("{}:1:1: not a regular file (a FIFO)", fifo.display());
    reload_is_refused(d, keep, &fifo.display().to_string(), &expected);
}

#[test]
fn include_of_dev_zero_is_refused() {
    let dir = tmp();
    let path = dir.path().join("minder.toml");
    fs::write(&path, "[supervisor]\ninclude = [\"/dev/zero\"]\n").expect("writing config");
    let out = check(&path);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout
            .contains("/dev/zero:1:1: not a regular file (a character device)"),
        "{out:?}"
    );

    let (d, keep) = daemon_with_one_program();
    reload_is_refused(
        d,
        keep,
        "/dev/zero",
        "/dev/zero:1:1: not a regular file (a character device)",
    );
}

#[test]
fn include_larger_than_the_limit_is_refused() {
    let (d, keep) = daemon_with_one_program();
    let big = d.path("big.toml");
    // Sparse: the size is what counts, not the blocks.
    fs::File::create(&big)
        .and_then(|f| f.set_len((4 << 20) + 1))
        .expect("creating a large file");
    let expected = format!("{}:1:1: larger than 4 MiB", big.display());
    reload_is_refused(d, keep, &big.display().to_string(), &expected);
}

#[test]
fn check_fails_fast_on_a_fifo() {
    let dir = tmp();
    let fifo = dir.path().join("minder.toml");
    mkfifo(&fifo);
    // The harness's deadline bounds the wait: before, `check` waited for a
    // writer forever.
    let out = check(&fifo);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout.contains(&format!(
            "{}:1:1: not a regular file (a FIFO)",
            fifo.display()
        )),
        "{out:?}"
    );

    let main = dir.path().join("main.toml");
    fs::write(&main, "[supervisor]\ninclude = [\"minder.toml\"]\n").expect("writing config");
    let out = check(&main);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout.contains("not a regular file (a FIFO)"),
        "{out:?}"
    );
}

#[test]
fn include_glob_from_the_root_is_refused() {
    let dir = tmp();
    let path = dir.path().join("minder.toml");
    fs::write(
        &path,
        "[supervisor]\ninclude = [\"conf.d/*.toml\", \"/**/*.toml\"]\n",
    )
    .expect("writing config");
    let out = check(&path);
    assert_eq!(out.code, 1, "{out:?}");
    let expected = format!(
        "{}:2:29: include \"/**/*.toml\": \"**\" is not supported",
        path.display()
    );
    assert!(out.stdout.contains(&expected), "{expected:?} in {out:?}");
}
