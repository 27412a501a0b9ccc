//! The reexec state decoder: any text in the handed-over memfd gives a state
//! or an error, never a panic; every process it restores can be driven on.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use minder::config::{parse_str, Config, Defaults};
use minder::reexec::{decode_state, restore};
use minder::supervisor::state::Event;

/// Programs of every readiness kind, so `restore` takes each of its paths.
const CONFIG: &str = r#"
[program.web]
command = ["/bin/web"]
listen = ["tcp://127.0.0.1:8080"]
[program.web.health]
http = "http://127.0.0.1:8080/health"

[program.worker]
command = ["/bin/worker"]
notify = true
watchdog = "10s"
instances = 2

[program.plain]
command = ["/bin/plain"]
"#;

fn config() -> &'static Config {
    static CONFIG_CELL: OnceLock<Config> = OnceLock::new();
    CONFIG_CELL.get_or_init(|| {
        let defaults = Defaults {
            socket: PathBuf::from("/run/minder/minder.sock"),
            log_dir: PathBuf::from("/var/log/minder"),
        };
        parse_str(CONFIG, Path::new("/etc/minder/minder.toml"), &defaults)
            .expect("the fuzz target's config is valid")
    })
}

fuzz_target!(|data: &[u8]| {
    // The previous image wrote JSON text; invalid UTF-8 is refused by
    // `read_to_string` before decoding.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(state) = decode_state(text) else {
        return;
    };
    let config = config();
    let now = Instant::now();
    for saved in &state.processes {
        // As the supervisor does: processes of programs no longer in the
        // config are not restored.
        let program = saved.name.split(':').next().unwrap_or_default();
        let Some(cfg) = config.program(program) else {
            continue;
        };
        let mut machine = restore(saved, cfg, now);
        if let Some(pid) = machine.state.pid() {
            // Signalled and waited for later: 0 or a negative number would
            // reach a process group or every process.
            assert!(pid.as_raw() > 0, "restored pid {pid}");
        }
        let _ = machine.deadline(cfg);
        let _ = machine.step(cfg, Event::Stop, now, 0.0);
        if let Some(deadline) = machine.deadline(cfg) {
            let _ = machine.step(cfg, Event::Deadline, deadline, 0.0);
        }
    }
});
