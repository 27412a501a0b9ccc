//! Packaging: the systemd unit (checked by `systemd-analyze verify` where it
//! exists), the packaged default config, and the man pages and completions
//! that minder-gen writes from the real command line. Building and installing
//! the Debian package is `packaging/check-deb.sh` (run by `.ci/run`).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

const GEN: &str = env!("CARGO_BIN_EXE_minder-gen");

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn unit() -> String {
    fs::read_to_string(repo("packaging/systemd/minder.service")).expect("reading the unit")
}

/// The value of `key=` in the unit (the last one wins, as in systemd).
fn unit_value(text: &str, key: &str) -> Option<String> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .next_back()
        .map(|v| v.trim().to_string())
}

fn found(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn unit_runs_minder_as_the_issue_and_docs_say() {
    let text = unit();
    let want = [
        ("Type", "notify"),
        (
            "ExecStart",
            "/usr/bin/minder daemon -c /etc/minder/minder.toml",
        ),
        (
            "ExecReload",
            "/usr/bin/minder ctl -c /etc/minder/minder.toml reload",
        ),
        ("KillMode", "mixed"),
        ("Delegate", "yes"),
        ("Restart", "on-failure"),
        ("RuntimeDirectory", "minder"),
        ("LogsDirectory", "minder"),
        ("WantedBy", "multi-user.target"),
    ];
    for (key, value) in want {
        assert_eq!(
            unit_value(&text, key).as_deref(),
            Some(value),
            "{key}= in minder.service"
        );
    }
    let secs = |key: &str| -> u64 {
        let v = unit_value(&text, key).unwrap_or_else(|| panic!("no {key}= in the unit"));
        humantime::parse_duration(&v)
            .unwrap_or_else(|e| panic!("{key}={v}: {e}"))
            .as_secs()
    };
    // Above the default shutdown_timeout (60s), so minder's ordered stop finishes.
    assert!(secs("TimeoutStopSec") > 60, "TimeoutStopSec too short");
    assert!(secs("WatchdogSec") > 0, "no WatchdogSec");
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    if !found("systemd-analyze") {
        eprintln!("skipping unit_passes_systemd_analyze_verify: no systemd-analyze here");
        return;
    }
    // `verify` insists that ExecStart= exists: point it at the binary under test.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("minder.service");
    fs::write(&path, unit().replace("/usr/bin/minder", MINDER)).unwrap();
    // The man page is checked after installing the package (check-deb.sh).
    let out = run_with_timeout(
        Command::new("systemd-analyze").args(["verify", "--man=no", path.to_str().unwrap()]),
        Duration::from_secs(60),
    );
    // Unknown keys and bad values are only warnings: any line about our unit fails.
    let complaints: Vec<&str> = out
        .stderr
        .lines()
        .chain(out.stdout.lines())
        .filter(|l| l.contains("minder"))
        .collect();
    assert!(
        out.code == 0 && complaints.is_empty(),
        "systemd-analyze verify: {out:?}"
    );
}

#[test]
fn packaged_config_is_valid_and_supervises_nothing() {
    let out = run_minder(&[
        "check",
        "-c",
        repo("packaging/debian/minder.toml").to_str().unwrap(),
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("(0 programs, 0 processes)"), "{out:?}");
}

#[test]
fn cargo_deb_metadata_installs_what_the_docs_promise() {
    let manifest = fs::read_to_string(repo("Cargo.toml")).unwrap();
    let doc: toml::Table = manifest.parse().expect("Cargo.toml parses");
    let deb = &doc["package"]["metadata"]["deb"];
    let assets: Vec<(String, String)> = deb["assets"]
        .as_array()
        .expect("assets")
        .iter()
        .map(|a| {
            let a = a.as_array().expect("asset triple");
            (
                a[0].as_str().unwrap().to_string(),
                a[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for dest in [
        "usr/bin/",
        "etc/minder/minder.toml",
        "etc/minder/conf.d/README",
        "usr/share/man/man1/",
        "usr/share/bash-completion/completions/minder",
        "usr/share/zsh/vendor-completions/_minder",
        "usr/share/fish/vendor_completions.d/minder.fish",
    ] {
        assert!(
            assets.iter().any(|(_, d)| d == dest),
            "no asset installed at {dest}: {assets:?}"
        );
    }
    // Every source outside the build's outputs exists in the repository.
    for (src, _) in &assets {
        if src.starts_with("target/") || src.starts_with("packaging/generated/") {
            continue;
        }
        let matches = glob::glob(repo(src).to_str().unwrap())
            .unwrap()
            .filter_map(Result::ok)
            .count();
        assert!(matches > 0, "asset source {src} matches no file");
    }
}

#[test]
fn man_pages_and_completions_come_from_the_real_cli() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_with_timeout(Command::new(GEN).arg(dir.path()), Duration::from_secs(60));
    assert_eq!(out.code, 0, "{out:?}");
    let read = |rel: &str| {
        fs::read_to_string(dir.path().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    };

    let main = read("man/minder.1");
    for needle in [
        ".TH minder 1",
        "minder\\-daemon(1)",
        ".SH FILES",
        "/etc/minder/minder.toml",
        ".SH ENVIRONMENT",
        "MINDER_SOCKET",
        ".SH \"EXIT STATUS\"",
        ".SH SYSTEMD",
    ] {
        assert!(main.contains(needle), "minder.1 lacks {needle:?}:\n{main}");
    }
    let daemon = read("man/minder-daemon.1");
    assert!(daemon.contains("insecure\\-config"), "{daemon}");
    let ctl = read("man/minder-ctl.1");
    for sub in ["status", "reload", "shutdown"] {
        assert!(ctl.contains(sub), "minder-ctl.1 lacks {sub}:\n{ctl}");
    }
    assert!(dir.path().join("man/minder-ctl-status.1").exists());

    if found("groff") {
        for page in ["man/minder.1", "man/minder-ctl.1", "man/minder-daemon.1"] {
            let out = run_with_timeout(
                Command::new("groff")
                    .args(["-man", "-Tutf8", "-ww", "-z"])
                    .arg(dir.path().join(page)),
                Duration::from_secs(60),
            );
            assert!(
                out.code == 0 && out.stderr.trim().is_empty(),
                "groff warns about {page}: {out:?}"
            );
        }
    } else {
        eprintln!("no groff here: man page syntax not checked");
    }

    let bash = read("completions/minder.bash");
    for word in ["daemon", "check", "ctl", "reload", "--insecure-config"] {
        assert!(bash.contains(word), "bash completion lacks {word}");
    }
    if found("bash") {
        let out = run_with_timeout(
            Command::new("bash")
                .arg("-n")
                .arg(dir.path().join("completions/minder.bash")),
            Duration::from_secs(60),
        );
        assert_eq!(out.code, 0, "bash completion syntax: {out:?}");
    }
    let zsh = read("completions/_minder");
    assert!(zsh.starts_with("#compdef minder"), "{zsh}");
    let fish = read("completions/minder.fish");
    assert!(fish.contains("complete -c minder"), "{fish}");
    assert!(fish.contains("insecure-config"), "{fish}");
}

#[test]
fn generator_refuses_a_wrong_command_line() {
    let out = run_with_timeout(&mut Command::new(GEN), Duration::from_secs(60));
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("usage"), "{out:?}");
}
