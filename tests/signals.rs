//! minder signals only the processes its reaper watches, through their
//! pidfds: never a PID it does not hold, which after a child has been
//! collected may belong to anyone.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::time::Duration;

mod common;

use common::with_reaper;
use minder::process::{spawn, ProcessEnd, SpawnRequest};
use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// The end of a spawned process, waited for at most 10 s.
async fn end_of(exit: minder::process::ExitReceiver) -> ProcessEnd {
    tokio::time::timeout(Duration::from_secs(10), exit)
        .await
        .expect("the process ends within 10 s")
        .expect("the reaper reports it")
}

fn request(argv: &[&str]) -> SpawnRequest {
    SpawnRequest::command(argv.iter().map(|a| a.to_string()).collect())
}

/// A process minder does not know: started by the test, leading a process
/// group of its own (as every child of minder does), with SIGUSR1 blocked so
/// that one sent to it stays pending where the test can see it.
fn stranger() -> Child {
    let mut command = Command::new("sleep");
    command.arg("30").process_group(0);
    // SAFETY: between fork and exec the closure makes only sigemptyset,
    // sigaddset and sigprocmask calls, all async-signal-safe, on a set on
    // its own stack; the mask is kept across exec.
    unsafe {
        command.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGUSR1);
            if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.spawn().expect("starting sleep")
}

/// Whether SIGUSR1 is pending for `pid` (blocked, so it stays there).
fn usr1_pending(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("reading status");
    let bit = 1u64 << (libc::SIGUSR1 - 1);
    ["SigPnd:", "ShdPnd:"].iter().any(|field| {
        let mask = status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .map(str::trim)
            .expect("a pending mask");
        u64::from_str_radix(mask, 16).expect("a hex mask") & bit != 0
    })
}

#[test]
fn a_pid_the_reaper_does_not_watch_is_never_signalled() {
    with_reaper(|reaper| async move {
        let mut stranger = stranger();
        let pid = Pid::from_raw(stranger.id() as i32);
        let to_process = reaper.signal(pid, Signal::SIGUSR1, false);
        let to_group = reaper.signal(pid, Signal::SIGUSR1, true);
        let pending = usr1_pending(stranger.id());
        let _ = stranger.kill();
        let _ = stranger.wait();
        assert!(!pending, "a process minder does not watch got SIGUSR1");
        assert_eq!(to_process, Err(Errno::ESRCH));
        assert_eq!(to_group, Err(Errno::ESRCH));
    });
}

#[test]
fn a_collected_child_is_not_signalled_by_its_old_pid() {
    with_reaper(|reaper| async move {
        let spawned = spawn(&request(&["true"]), &reaper).expect("spawning true");
        let end = end_of(spawned.exit).await;
        assert_eq!(end, ProcessEnd::Exited(0));
        // Its PID is free now; whoever gets it next must not be signalled.
        assert_eq!(
            reaper.signal(spawned.pid, Signal::SIGKILL, true),
            Err(Errno::ESRCH)
        );
        assert_eq!(
            reaper.signal(spawned.pid, Signal::SIGKILL, false),
            Err(Errno::ESRCH)
        );
    });
}

#[test]
fn a_watched_child_and_its_group_are_signalled_through_the_reaper() {
    with_reaper(|reaper| async move {
        let alone = spawn(&request(&["sleep", "30"]), &reaper).expect("spawning sleep");
        reaper
            .signal(alone.pid, Signal::SIGTERM, false)
            .expect("signalling the child");
        assert_eq!(
            end_of(alone.exit).await,
            ProcessEnd::Signaled(libc::SIGTERM)
        );
        let group = spawn(&request(&["sleep", "30"]), &reaper).expect("spawning sleep");
        reaper
            .signal(group.pid, Signal::SIGKILL, true)
            .expect("signalling the child's group");
        assert_eq!(
            end_of(group.exit).await,
            ProcessEnd::Signaled(libc::SIGKILL)
        );
    });
}

/// Whether `pid` is gone or a zombie, waiting at most 10 s for it.
fn gone_within_10s(pid: i32) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit(')').next().map(|rest| rest.trim().to_string()));
        match state {
            None => return true,
            Some(s) if s.starts_with('Z') => return true,
            Some(_) if std::time::Instant::now() >= deadline => return false,
            Some(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// A hook command or exec probe that leaves a process behind in its group:
/// the group is killed as the command is collected, while its leader still
/// holds the group id (never later, by a number that may be reused).
#[test]
fn what_a_command_leaves_in_its_group_is_killed_as_it_is_collected() {
    with_reaper(|reaper| async move {
        let command = request(&["sh", "-c", "sleep 30 >/dev/null 2>&1 & echo $!"]);
        let (end, stdout) = minder::process::run_captured(
            command,
            minder::process::Capture::Stdout,
            Duration::from_secs(10),
            &reaper,
        )
        .await
        .expect("running sh");
        assert_eq!(end, ProcessEnd::Exited(0));
        let left: i32 = stdout.trim().parse().expect("the background PID");
        assert!(
            gone_within_10s(left),
            "the background sleep (pid {left}) outlived the command that started it"
        );
    });
}

/// The child's side of a failed step reports the stage it failed at (its
/// code is `SpawnStage` itself): here `chdir`, with the OS error.
#[test]
fn a_failed_chdir_is_reported_as_the_chdir_stage() {
    with_reaper(|reaper| async move {
        let request = SpawnRequest {
            directory: std::path::PathBuf::from("/nonexistent/minder-test-directory"),
            clear_env: true,
            ..request(&["/bin/true"])
        };
        let err = spawn(&request, &reaper).expect_err("chdir must fail");
        assert_eq!(err.stage, minder::process::SpawnStage::Chdir, "{err}");
        assert_eq!(err.errno, Some(Errno::ENOENT), "{err}");
    });
}
