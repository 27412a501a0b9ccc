//! `minder ctl top` in a real terminal: tmux (Debian package `tmux`, installed
//! by .ci/run) runs it in a detached session on a server of the test's own,
//! and `capture-pane -p` reads the screen.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// How long the screen may take to show what a test waits for.
const SCREEN: Duration = Duration::from_secs(10);
/// How often the screen is read while waiting.
const EVERY: Duration = Duration::from_millis(20);

/// A tmux server on a socket in the test's directory, running `ctl top` in
/// one window; the server (and only it) is killed when dropped.
struct Tmux {
    socket: PathBuf,
    /// Where the shell around `ctl top` writes its exit code.
    exit_file: PathBuf,
    /// Where it writes `stty -a` and tmux's `alternate_on` after top.
    stty_file: PathBuf,
    alternate_file: PathBuf,
}

impl Tmux {
    /// `None` (after saying why) when tmux is not installed and this is not
    /// CI; in CI a missing tmux fails the test, as .ci/run installs it.
    fn available() -> Option<()> {
        let found = Command::new("tmux")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if found {
            return Some(());
        }
        assert!(
            std::env::var_os("CI").is_none(),
            "tmux is not installed (Debian package tmux; .ci/run installs it)"
        );
        eprintln!("skipped: tmux is not installed (apt-get install tmux)");
        None
    }

    /// Starts `minder ctl -s SOCKET top` in a 140x40 window.
    fn top(d: &Daemon) -> Tmux {
        let tmux = Tmux {
            socket: d.path("tmux.sock"),
            exit_file: d.path("top.exit"),
            stty_file: d.path("stty"),
            alternate_file: d.path("alternate"),
        };
        // After top: the terminal's modes and whether the pane is still on
        // the alternate screen, then the exit code (written last).
        let command = format!(
            "{} ctl -s {} top; code=$?; stty -a > {}; tmux display -p '#{{alternate_on}}' > {}; echo $code > {}",
            MINDER,
            d.sock.display(),
            tmux.stty_file.display(),
            tmux.alternate_file.display(),
            tmux.exit_file.display()
        );
        let status = tmux
            .command()
            .args(["new-session", "-d", "-x", "140", "-y", "40", "sh", "-c"])
            .arg(&command)
            .status()
            .expect("running tmux");
        assert!(status.success(), "tmux new-session: {status}");
        tmux
    }

    fn command(&self) -> Command {
        let mut command = Command::new("tmux");
        command
            .args(["-f", "/dev/null", "-S"])
            .arg(&self.socket)
            .env_remove("TMUX")
            .stdin(Stdio::null());
        command
    }

    /// The screen, as text.
    fn screen(&self) -> String {
        let out = self
            .command()
            .args(["capture-pane", "-p"])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the screen satisfies `cond`; returns it.
    fn wait_screen(&self, what: &str, mut cond: impl FnMut(&str) -> bool) -> String {
        let deadline = Instant::now() + SCREEN;
        let mut screen = String::new();
        for _ in 0..SCREEN.as_millis() / EVERY.as_millis() {
            screen = self.screen();
            if cond(&screen) || Instant::now() > deadline {
                break;
            }
            thread::sleep(EVERY);
        }
        assert!(cond(&screen), "the screen never showed {what}:\n{screen}");
        screen
    }

    fn keys(&self, keys: &[&str]) {
        let status = self
            .command()
            .arg("send-keys")
            .args(keys)
            .status()
            .expect("tmux send-keys");
        assert!(status.success(), "tmux send-keys {keys:?}");
    }

    /// `ctl top`'s exit code, once it has exited, after checking that it
    /// gave the terminal back: out of raw mode, off the alternate screen.
    fn wait_exit(&self) -> i32 {
        let text = wait_file_until(&self.exit_file, "ctl top's exit code", |t| {
            t.ends_with('\n')
        });
        let stty = std::fs::read_to_string(&self.stty_file).expect("stty -a after top");
        let modes: Vec<&str> = stty.split([' ', ';', '\n']).collect();
        for mode in ["icanon", "echo", "isig", "icrnl", "opost"] {
            assert!(modes.contains(&mode), "{mode} not restored: {stty}");
        }
        let alternate = std::fs::read_to_string(&self.alternate_file).expect("alternate_on");
        assert_eq!(alternate.trim(), "0", "still on the alternate screen");
        text.trim().parse().expect("an exit code")
    }

    /// The PID of `ctl top` (the child of the pane's shell).
    fn top_pid(&self) -> i32 {
        let out = self
            .command()
            .args(["display-message", "-p", "#{pane_pid}"])
            .output()
            .expect("tmux display-message");
        let shell: i32 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("the pane's PID");
        let children = proc_children(shell);
        assert_eq!(children.len(), 1, "the shell runs top alone: {children:?}");
        children[0].0
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        // Gone already when `ctl top` exited: its session was the only one.
        let _ = self
            .command()
            .arg("kill-server")
            .stderr(Stdio::null())
            .status();
    }
}

/// The row of process `name` on `screen`, split into words.
fn row<'a>(screen: &'a str, name: &str) -> Option<Vec<&'a str>> {
    screen
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|w| w.first() == Some(&name))
}

fn state_on_screen(screen: &str, name: &str) -> Option<String> {
    row(screen, name).and_then(|w| w.get(1).map(|s| s.to_string()))
}

fn config(dir_marker: &str) -> String {
    [
        program("web", &["--tick", "1000"], "instances = 2"),
        program(
            "victim",
            &["--print", "hello from victim", "--pidfile", dir_marker],
            "",
        ),
        program("idle", &[], "autostart = false"),
    ]
    .concat()
}

#[test]
fn top_shows_every_process_follows_changes_and_acts_on_keys() {
    if Tmux::available().is_none() {
        return;
    }
    let d = Daemon::start(&config("@TMP@/victim.pid"));
    let victim = read_pid(&d.path("victim.pid"));
    for name in ["web:0", "web:1", "victim"] {
        d.wait_state(name, "running");
    }
    let tmux = Tmux::top(&d);
    let screen = tmux.wait_screen("a running row for every process", |s| {
        ["web:0", "web:1", "victim"]
            .iter()
            .all(|n| state_on_screen(s, n).as_deref() == Some("running"))
            && state_on_screen(s, "idle").as_deref() == Some("stopped")
    });
    assert!(screen.contains("4 processes"), "{screen}");
    let header = screen
        .lines()
        .find(|l| l.starts_with("NAME"))
        .expect("a header");
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        [
            "NAME",
            "STATE",
            "PID",
            "UPTIME",
            "HEALTH",
            "RESTARTS",
            "CPU%",
            "MEM",
            "DESCRIPTION"
        ]
    );
    assert_eq!(
        row(&screen, "victim").unwrap()[2],
        victim.to_string(),
        "{screen}"
    );

    // A crash shows without a key press: its event, and its row.
    // SAFETY: kill(2) on the PID of the test child the daemon started for this test.
    assert_eq!(unsafe { libc::kill(victim, libc::SIGKILL) }, 0);
    tmux.wait_screen("the crash in the events", |s| {
        s.contains("victim running -> backoff (killed by SIGKILL)")
            || s.contains("victim running -> exited (killed by SIGKILL)")
    });

    // r asks first; y restarts the selected process (the first row).
    let before = d.proc("web:0").pid.expect("web:0 runs");
    tmux.keys(&["r"]);
    tmux.wait_screen("the prompt", |s| s.contains("restart web:0? (y/n)"));
    assert_eq!(d.proc("web:0").pid, Some(before), "not before y");
    tmux.keys(&["y"]);
    d.wait_for("web:0 restarted", WAIT, |ps| {
        get(ps, "web:0").state == "running" && get(ps, "web:0").pid != Some(before)
    });
    tmux.wait_screen("the outcome", |s| s.contains("restart web:0: done"));

    // / filters by name.
    tmux.keys(&["/", "v", "i", "c", "Enter"]);
    let screen = tmux.wait_screen("only victim", |s| {
        s.contains("1 of 4 processes match /vic") && row(s, "victim").is_some()
    });
    assert!(row(&screen, "web:0").is_none(), "{screen}");
    assert!(row(&screen, "idle").is_none(), "{screen}");

    // l follows the selected log: what victim printed, each time it started.
    tmux.keys(&["l"]);
    tmux.wait_screen("victim's log", |s| {
        s.contains("log of victim (stdout") && s.contains("hello from victim")
    });

    tmux.keys(&["q"]);
    assert_eq!(tmux.wait_exit(), 0);
}

#[test]
fn top_says_when_the_daemon_is_gone_and_reconnects() {
    if Tmux::available().is_none() {
        return;
    }
    let mut d = Daemon::start(&program("web", &[], ""));
    d.wait_state("web", "running");
    let tmux = Tmux::top(&d);
    tmux.wait_screen("web running", |s| {
        state_on_screen(s, "web").as_deref() == Some("running")
    });
    d.stop();
    tmux.wait_screen("a line saying so", |s| s.contains("daemon not answering"));
    d.respawn();
    tmux.wait_screen("the daemon back", |s| {
        !s.contains("daemon not answering")
            && state_on_screen(s, "web").as_deref() == Some("running")
    });
    // Ctrl-C quits as q does.
    tmux.keys(&["C-c"]);
    assert_eq!(tmux.wait_exit(), 0);
}

#[test]
fn sigterm_quits_top_and_gives_the_terminal_back() {
    if Tmux::available().is_none() {
        return;
    }
    let d = Daemon::start(&program("web", &[], ""));
    let tmux = Tmux::top(&d);
    tmux.wait_screen("web", |s| row(s, "web").is_some());
    let top = tmux.top_pid();
    // SAFETY: kill(2) on `ctl top`, which this test started (in its tmux), still running.
    assert_eq!(unsafe { libc::kill(top, libc::SIGTERM) }, 0);
    assert_eq!(tmux.wait_exit(), 0);
}

#[test]
fn top_without_a_terminal_exits_2() {
    let d = Daemon::start(&program("web", &[], ""));
    let out = d.ctl(&["top"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("needs a terminal"), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
}
