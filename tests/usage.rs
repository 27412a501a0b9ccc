//! What a process uses (SPEC §5.1): `cpu_secs` and `memory_bytes` in
//! `status --json`, the CPU and MEM columns of `ctl status`, and the
//! `minder_process_cpu_seconds_total` and `minder_process_memory_bytes`
//! metrics, for a process whose descendant burns CPU and holds memory.
//! Measured from `/proc` with `cgroup = false`, and with the default
//! `cgroup = true` from the cgroup when minder made one (else from `/proc`
//! again): both must show the same usage.

mod common;

use common::*;

/// What the descendant allocates, MiB.
const ALLOC_MIB: u64 = 32;

/// A program whose main process is `sh`, waiting for its child, a
/// minder-testchild that burns 300 ms of CPU and holds [`ALLOC_MIB`], then
/// writes its PID to `busy.pid`: the usage is that of a descendant.
fn busy(extra: &str) -> String {
    let script = format!("\"$0\" --burn-ms 300 --alloc-mib {ALLOC_MIB} --pidfile \"$1\" & wait");
    format!(
        "[program.busy]\ncommand = {}\nstart_secs = \"100ms\"\nstop_timeout = \"2s\"\n{extra}\n",
        toml_array(&["sh", "-c", &script, CHILD, "@TMP@/busy.pid"])
    )
}

/// The value of the series `name{...name="busy"...}` in a /metrics document.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix('{')?;
        let (labels, value) = rest.split_once("} ")?;
        labels
            .split(',')
            .any(|l| l == "name=\"busy\"")
            .then(|| value.trim().parse().ok())?
    })
}

fn scrape(port: u16) -> String {
    let (code, body) =
        http_get(port, "/metrics").unwrap_or_else(|e| panic!("GET /metrics on {port}: {e}"));
    assert_eq!(code, 200, "{body}");
    body
}

/// The cells of `busy`'s row of the `ctl status` table under `columns`.
fn table_cells(d: &Daemon, columns: &[&str]) -> Vec<String> {
    let out = d.ctl(&["status"]);
    assert!(out.code == 0 || out.code == 3, "{out:?}");
    let mut lines = out.stdout.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let row: Vec<&str> = lines
        .find(|l| l.starts_with("busy "))
        .unwrap_or_else(|| panic!("no busy row in {}", out.stdout))
        .split_whitespace()
        .collect();
    columns
        .iter()
        .map(|c| {
            let i = header
                .iter()
                .position(|h| h == c)
                .unwrap_or_else(|| panic!("no {c} column in {}", out.stdout));
            row.get(i).map_or_else(String::new, |s| s.to_string())
        })
        .collect()
}

/// The usage of `busy` shows in status, the table and /metrics.
fn usage_shows_everywhere(extra: &str) {
    let port = free_port();
    let d = Daemon::start_with(&format!("metrics = \"127.0.0.1:{port}\""), &busy(extra));
    let child = read_pid(&d.path("busy.pid"));
    let alloc = ALLOC_MIB * 1024 * 1024;
    let procs = d.wait_for("busy's CPU time and memory in status", WAIT, |ps| {
        find(ps, "busy").is_some_and(|p| {
            p.raw["cpu_secs"].as_f64().is_some_and(|c| c > 0.1)
                && p.raw["memory_bytes"].as_u64().is_some_and(|m| m > alloc)
        })
    });
    let p = get(&procs, "busy");
    assert_ne!(
        p.pid,
        Some(child),
        "the burner is a descendant, not the main process"
    );
    let cpu = p.raw["cpu_secs"].as_f64().unwrap();
    assert!(cpu < 60.0, "implausible CPU time: {:?}", p.raw);

    let cells = table_cells(&d, &["CPU", "MEM"]);
    assert!(
        cells[0].ends_with('s') && cells[0] != "-",
        "CPU cell: {cells:?}"
    );
    let mib: f64 = cells[1]
        .strip_suffix('M')
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("MEM cell in MiB: {cells:?}"));
    assert!(mib >= ALLOC_MIB as f64, "MEM cell: {cells:?}");

    let metrics = scrape(port);
    assert!(
        metrics.contains("# TYPE minder_process_cpu_seconds counter")
            && metrics.contains("# TYPE minder_process_memory_bytes gauge"),
        "{metrics}"
    );
    let cpu = sample(&metrics, "minder_process_cpu_seconds_total");
    assert!(cpu.is_some_and(|c| c > 0.1), "{cpu:?} in {metrics}");
    let memory = sample(&metrics, "minder_process_memory_bytes");
    assert!(
        memory.is_some_and(|m| m > alloc as f64),
        "{memory:?} in {metrics}"
    );
}

#[test]
fn usage_of_a_process_tree_without_a_cgroup() {
    usage_shows_everywhere("cgroup = false");
}

#[test]
fn usage_of_a_process_tree_with_the_default_cgroup() {
    // Whether minder could make a cgroup or not, the usage is the same.
    usage_shows_everywhere("");
}

#[test]
fn a_stopped_process_uses_nothing_and_its_memory_is_unknown() {
    let port = free_port();
    let d = Daemon::start_with(&format!("metrics = \"127.0.0.1:{port}\""), &busy(""));
    read_pid(&d.path("busy.pid"));
    d.wait_state("busy", "running");
    d.ctl_ok(&["stop", "busy"]);
    let p = d.wait_state("busy", "stopped");
    assert_eq!(p.raw["cpu_secs"].as_f64(), Some(0.0), "{:?}", p.raw);
    assert!(
        p.raw.get("memory_bytes").is_some_and(|m| m.is_null()),
        "present, null: {:?}",
        p.raw
    );
    assert_eq!(table_cells(&d, &["CPU", "MEM"]), ["-", "-"]);
    let metrics = scrape(port);
    assert_eq!(
        sample(&metrics, "minder_process_cpu_seconds_total"),
        Some(0.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "minder_process_memory_bytes"),
        None,
        "{metrics}"
    );
}
