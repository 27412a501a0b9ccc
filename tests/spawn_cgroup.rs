//! Spawning straight into a cgroup, both ways: `clone3` with
//! `CLONE_INTO_CGROUP`, and, where a seccomp filter refuses `clone3`
//! (Docker's default profile), the child joining its cgroup itself before
//! its exec. Alone in its test binary: it runs minder's reaper, which
//! collects every child of the process, tests' own included.
//!
//! Runs where minder can make a cgroup (root and a cgroup2 mount with
//! `cgroup.kill`); elsewhere it says so and checks nothing.

use std::os::fd::AsRawFd;
use std::time::Duration;

use minder::process::cgroup::Tree;
use minder::process::{set_clone3, spawn, ProcessEnd, Reaper, SpawnRequest};

#[test]
fn a_child_starts_in_its_cgroup_and_a_kill_empties_it_setsid_or_not() {
    let dir = tempfile::tempdir().unwrap();
    let tree = match Tree::open(&dir.path().join("minder.sock")) {
        Ok(tree) => tree,
        Err(off) => {
            eprintln!("skipped: no cgroups here ({off})");
            return;
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let reaper = Reaper::start().unwrap();
        for clone3 in [true, false] {
            set_clone3(clone3);
            let home = tree.home("t", u32::from(clone3));
            let cgroup = tree.create(&home, None).unwrap();
            let directory = cgroup.open().unwrap();
            let mut request = SpawnRequest::command(vec![
                "sh".into(),
                "-c".into(),
                "setsid sleep 60 & exec sleep 60".into(),
            ]);
            request.cgroup = Some(directory.as_raw_fd());
            let child = spawn(&request, &reaper).unwrap();
            drop(directory);
            // The main process and the setsid grandchild it forked (bounded wait).
            let mut members = cgroup.pids();
            for _ in 0..500 {
                if members.len() >= 2 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                members = cgroup.pids();
            }
            assert!(members.contains(&child.pid), "clone3 {clone3}: {members:?}");
            assert_eq!(members.len(), 2, "clone3 {clone3}: {members:?}");
            assert!(cgroup.populated().unwrap());
            cgroup.kill();
            tokio::time::timeout(Duration::from_secs(10), cgroup.emptied())
                .await
                .expect("the cgroup empties after cgroup.kill");
            assert!(!cgroup.populated().unwrap());
            let end = child.exit.await.unwrap();
            assert_eq!(end, ProcessEnd::Signaled(libc::SIGKILL));
            cgroup.remove();
            assert!(!cgroup.path().exists());
        }
        set_clone3(true);
        tree.remove_program("t");
        tree.leave(Duration::from_secs(5)).await;
    });
}
