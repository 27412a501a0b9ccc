//! `minder check -c FILE`: exit 0 for a valid config, 1 with `FILE:LINE:COL: message` lines otherwise.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{run_minder, Out};

/// Writes `text` as `name` in `dir` and returns its path.
fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("creating config dir");
    }
    fs::write(&path, text).expect("writing config");
    path
}

fn check(path: &Path) -> Out {
    run_minder(&["check", "-c", path.to_str().expect("utf-8 temp path")])
}

/// Lines of stdout and stderr that look like `PATH:LINE:COL: message`.
fn diagnostics(out: &Out, path: &Path) -> Vec<(usize, usize, String)> {
    let prefix = format!("{}:", path.display());
    out.stdout
        .lines()
        .chain(out.stderr.lines())
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let mut it = rest.splitn(3, ':');
            let line = it.next()?.parse().ok()?;
            let col = it.next()?.parse().ok()?;
            let msg = it.next()?.trim().to_owned();
            Some((line, col, msg))
        })
        .collect()
}

fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("minder-check.")
        .tempdir()
        .expect("temp dir")
}

#[test]
fn check_valid_config_exits_0() {
    let dir = tmp();
    let path = write(
        dir.path(),
        "minder.toml",
        r#"
[supervisor]
socket = "/tmp/minder-check-unused.sock"
shutdown_timeout = "5s"

[program.db]
command = ["/bin/sleep", "1000"]
start_secs = "250ms"

[program.web]
command = "/bin/sleep 1000 --port {port}"
directory = "/"
environment = { RUST_LOG = "info", PORT = "{port}" }
clear_env = false
autostart = true
restart = "on-failure"
exit_codes = [0, 3]
start_secs = "1s"
stop_signal = "TERM"
stop_timeout = "10s"
kill_group = true
instances = 2
port = 8080
depends_on = ["db"]

[program.web.backoff]
initial = "1s"
max = "60s"
multiplier = 2.0
jitter = 0.1
reset_after = "60s"
max_retries = 3

"#,
    );
    let out = check(&path);
    assert_eq!(out.code, 0, "valid config rejected: {out:?}");
}

#[test]
fn check_spec_example_keys_are_valid() {
    // Health, logs, listen and notify keys from SPEC section 2 (no user/group: those need root).
    let dir = tmp();
    let path = write(
        dir.path(),
        "minder.toml",
        r#"
[supervisor]
socket = "/tmp/minder-check-unused.sock"
socket_mode = "0600"
log_level = "info"
log_format = "text"
log_files = 7

[program.web]
command = ["/bin/sleep", "1000"]
port = 8080
listen = ["tcp://127.0.0.1:8080"]
listen_names = ["http"]
notify = false
ready_timeout = "60s"
watchdog = "0s"

[program.web.health]
http = "http://127.0.0.1:{port}/health"
interval = "5s"
timeout = "2s"
start_period = "30s"
failure_threshold = 3
success_threshold = 1
on_unhealthy = "restart"

[program.web.logs]
stdout = "{name}.out.log"
stderr = "stdout"
max_size = "50MB"
backups = 10
timestamps = false
"#,
    );
    let out = check(&path);
    assert_eq!(out.code, 0, "SPEC example keys rejected: {out:?}");
}

#[test]
fn check_unknown_key_reports_file_line_col() {
    let dir = tmp();
    let path = write(
        dir.path(),
        "minder.toml",
        "[program.a]\ncommand = [\"/bin/true\"]\nbogus_key = 1\n",
    );
    let out = check(&path);
    assert_eq!(out.code, 1, "unknown key accepted: {out:?}");
    let diags = diagnostics(&out, &path);
    assert!(
        diags
            .iter()
            .any(|(l, c, m)| *l == 3 && *c == 1 && m.contains("bogus_key")),
        "expected `{}:3:1: ... bogus_key ...`, got {out:?}",
        path.display()
    );
}

#[test]
fn check_bad_duration_is_reported_on_its_line() {
    let dir = tmp();
    let path = write(
        dir.path(),
        "minder.toml",
        "[program.a]\ncommand = [\"/bin/true\"]\nstart_secs = \"5 parsecs\"\n",
    );
    let out = check(&path);
    assert_eq!(out.code, 1, "bad duration accepted: {out:?}");
    let diags = diagnostics(&out, &path);
    assert!(
        diags.iter().any(|(l, _, _)| *l == 3),
        "expected a diagnostic on line 3, got {out:?}"
    );
}

#[test]
fn check_empty_command_is_reported() {
    let dir = tmp();
    let path = write(
        dir.path(),
        "minder.toml",
        "[program.a]\ncommand = []\n[program.b]\ncommand = \"\"\n",
    );
    let out = check(&path);
    assert_eq!(out.code, 1, "empty command accepted: {out:?}");
    let diags = diagnostics(&out, &path);
    assert!(
        diags.iter().any(|(l, _, _)| *l == 2),
        "expected a diagnostic on line 2 (command = []), got {out:?}"
    );
    assert!(
        diags.iter().any(|(l, _, _)| *l == 4),
        "expected a diagnostic on line 4 (command = \"\"), got {out:?}"
    );
}

#[test]
fn check_dependency_cycle_is_reported() {
    let dir = tmp();
    let path = write(
        dir.path(),
        "minder.toml",
        r#"[program.a]
command = ["/bin/true"]
depends_on = ["b"]

[program.b]
command = ["/bin/true"]
depends_on = ["a"]
"#,
    );
    let out = check(&path);
    assert_eq!(out.code, 1, "dependency cycle accepted: {out:?}");
    let diags = diagnostics(&out, &path);
    assert!(
        diags
            .iter()
            .any(|(_, _, m)| m.to_lowercase().contains("cycle")),
        "expected a FILE:LINE:COL diagnostic mentioning the cycle, got {out:?}"
    );
}

#[test]
fn check_unknown_dependency_is_reported() {
    let dir = tmp();
    let path = write(
        dir.path(),
        "minder.toml",
        "[program.a]\ncommand = [\"/bin/true\"]\ndepends_on = [\"nope\"]\n",
    );
    let out = check(&path);
    assert_eq!(
        out.code, 1,
        "dependency on an unknown program accepted: {out:?}"
    );
    assert!(
        !diagnostics(&out, &path).is_empty(),
        "expected a FILE:LINE:COL diagnostic, got {out:?}"
    );
}

#[test]
fn check_reports_every_error() {
    let dir = tmp();
    let path = write(
        dir.path(),
        "minder.toml",
        r#"[program.a]
command = ["/bin/true"]
bogus_key = 1

[program.b]
command = ["/bin/true"]
stop_timeout = "soon"
"#,
    );
    let out = check(&path);
    assert_eq!(out.code, 1, "{out:?}");
    let diags = diagnostics(&out, &path);
    assert!(
        diags.iter().any(|(l, _, _)| *l == 3) && diags.iter().any(|(l, _, _)| *l == 7),
        "expected diagnostics on lines 3 and 7 (all errors, not just the first), got {out:?}"
    );
}

#[test]
fn check_duplicate_name_across_include_names_both_files() {
    let dir = tmp();
    let main = write(
        dir.path(),
        "minder.toml",
        "[supervisor]\ninclude = [\"conf.d/*.toml\"]\n\n[program.a]\ncommand = [\"/bin/true\"]\n",
    );
    let _inc = write(
        dir.path(),
        "conf.d/extra.toml",
        "[program.a]\ncommand = [\"/bin/false\"]\n",
    );
    let out = check(&main);
    assert_eq!(out.code, 1, "duplicate program name accepted: {out:?}");
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(
        all.contains("minder.toml") && all.contains("extra.toml"),
        "expected both files named, got {out:?}"
    );
}

#[test]
fn check_include_merges_programs() {
    let dir = tmp();
    let main = write(
        dir.path(),
        "minder.toml",
        "[supervisor]\ninclude = [\"conf.d/*.toml\"]\n\n[program.a]\ncommand = [\"/bin/true\"]\ndepends_on = [\"b\"]\n",
    );
    write(
        dir.path(),
        "conf.d/b.toml",
        "[program.b]\ncommand = [\"/bin/true\"]\n",
    );
    let out = check(&main);
    assert_eq!(
        out.code, 0,
        "include with a dependency across files rejected: {out:?}"
    );
}

/// `check` of `text` exits 1 with exactly the diagnostics `expected`
/// (line, column, message) for the file.
fn assert_check_fails(text: &str, expected: &[(usize, usize, &str)]) {
    let dir = tmp();
    let path = write(dir.path(), "minder.toml", text);
    let out = check(&path);
    assert_eq!(out.code, 1, "{out:?}");
    let expected: Vec<(usize, usize, String)> = expected
        .iter()
        .map(|(l, c, m)| (*l, *c, m.to_string()))
        .collect();
    assert_eq!(diagnostics(&out, &path), expected, "{out:?}");
}

#[test]
fn unknown_user_fails_check() {
    assert_check_fails(
        "[program.a]\ncommand = [\"/bin/true\"]\nuser = \"nosuchuser\"\n",
        &[(3, 8, "\"user\": unknown user \"nosuchuser\"")],
    );
}

#[test]
fn unknown_group_fails_check() {
    assert_check_fails(
        "[supervisor]\nsocket_group = \"nosuchgroup\"\n[program.a]\ncommand = [\"/bin/true\"]\ngroup = \"nosuchgroup\"\n",
        &[
            (2, 16, "\"socket_group\": unknown group \"nosuchgroup\""),
            (5, 9, "\"group\": unknown group \"nosuchgroup\""),
        ],
    );
}

#[test]
fn overlong_log_name_fails_check() {
    // Opening such a file fails with ENAMETOOLONG and the output is lost.
    // Checked on the final name: "{name}.stdout.log" adds 11 bytes to a
    // 250-byte program name, {port} expands to 4 digits.
    let name = "w".repeat(250);
    let long = "x".repeat(252);
    let program = format!("[program.{name}]\ncommand = [\"/bin/true\"]\n");
    assert_check_fails(
        &format!("{program}[program.a]\ncommand = [\"/bin/true\"]\nport = 9000\nlogs.stderr = \"none\"\nlogs.stdout = \"{long}{{port}}\"\n"),
        &[
            (1, 1, &format!("stdout log of program \"{name}\": the file name \"{name}.stdout.log\" is 261 bytes long, above the 255 bytes a file name may have; use a shorter program name or set logs.stdout")),
            (1, 1, &format!("stderr log of program \"{name}\": the file name \"{name}.stderr.log\" is 261 bytes long, above the 255 bytes a file name may have; use a shorter program name or set logs.stderr")),
            (7, 15, &format!("\"stdout\": the file name \"{long}9000\" is 256 bytes long, above the 255 bytes a file name may have")),
        ],
    );
}

#[test]
fn dot_names_fail_check() {
    assert_check_fails(
        "[program.\".\"]\ncommand = [\"/bin/true\"]\n[program.\"..\"]\ncommand = [\"/bin/true\"]\n",
        &[
            (1, 10, "invalid program name \".\": \".\" and \"..\" stand for directories in paths such as log file names"),
            (3, 10, "invalid program name \"..\": \".\" and \"..\" stand for directories in paths such as log file names"),
        ],
    );
}

#[test]
fn check_accepts_the_spec_register_tables() {
    let dir = tmp();
    let path = write(
        dir.path(),
        "minder.toml",
        r#"
[supervisor]
socket = "/tmp/minder-check-unused.sock"
host = "{hostname}"

[program.web]
command = ["/bin/sleep", "1000"]
port = 8080
instances = 4

[program.web.register]
address = "127.0.0.1:{port}"
drain = "5s"

[program.web.register.haproxy]
socket = "/run/haproxy/admin.sock"
backend = "web"
server = "{program}_{instance}"

[program.web.register.etcd]
endpoints = ["http://127.0.0.1:2379"]
key = "/minder/services/{program}/{host}/{name}"
ttl = "10s"

[program.web.register.file]
path = "/etc/nginx/conf.d/upstream-{program}.conf"
format = "nginx"
reload = ["nginx", "-s", "reload"]
"#,
    );
    let out = check(&path);
    assert_eq!(out.code, 0, "SPEC §5.2 keys rejected: {out:?}");
}

/// Each malformed register table, and where `check` must point.
#[test]
fn check_rejects_malformed_register_tables_at_their_place() {
    let cases: &[(&str, usize, usize, &str)] = &[
        (
            "[program.web.register.haproxy]\nbackend = \"web\"\n",
            6,
            1,
            "needs \"socket\"",
        ),
        (
            "[program.web.register.haproxy]\nsocket = \"/run/h.sock\"\n",
            6,
            1,
            "needs \"backend\"",
        ),
        (
            "[program.web.register.etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\nttl = \"1s\"\n",
            8,
            7,
            "minimum lease TTL",
        ),
        (
            "[program.web.register.etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\nttl = \"2500ms\"\n",
            8,
            7,
            "whole seconds",
        ),
        (
            "[program.web.register.etcd]\nendpoints = [\"127.0.0.1:2379\"]\n",
            7,
            14,
            "not an http://",
        ),
        (
            "[program.web.register.etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\ninsecure = true\n",
            8,
            1,
            "\"insecure\" needs an https:// endpoint",
        ),
        (
            "[program.web.register.etcd]\nendpoints = [\"https://127.0.0.1:2379\"]\nclient_cert = \"/etc/passwd\"\n",
            8,
            15,
            "\"client_cert\" needs \"client_key\"",
        ),
        (
            "[program.web.register.file]\npath = \"/tmp/up.conf\"\nformat = \"yaml\"\n",
            8,
            10,
            "yaml",
        ),
    ];
    for (table, line, col, says) in cases {
        let dir = tmp();
        let text = format!(
            "[program.web]\ncommand = [\"/bin/true\"]\nport = 8080\n[program.web.register]\ndrain = \"1s\"\n{table}"
        );
        let path = write(dir.path(), "minder.toml", &text);
        let out = check(&path);
        assert_eq!(out.code, 1, "accepted:\n{text}\n{out:?}");
        let diags = diagnostics(&out, &path);
        assert!(
            diags
                .iter()
                .any(|(l, c, m)| l == line && c == col && m.contains(says)),
            "expected {line}:{col}: ...{says}... for\n{text}\ngot {out:?}"
        );
    }
}

#[test]
fn check_rejects_an_address_without_a_port_and_a_register_without_backends() {
    let dir = tmp();
    let path = write(
        dir.path(),
        "minder.toml",
        "[program.web]\ncommand = [\"/bin/true\"]\n[program.web.register]\naddress = \"10.0.0.5\"\n\n[program.api]\ncommand = [\"/bin/true\"]\n[program.api.register]\ndrain = \"1s\"\n",
    );
    let out = check(&path);
    assert_eq!(out.code, 1, "{out:?}");
    let diags = diagnostics(&out, &path);
    assert!(
        diags
            .iter()
            .any(|(l, c, m)| *l == 4 && *c == 11 && m.contains("has no port")),
        "{out:?}"
    );
    assert!(
        diags
            .iter()
            .any(|(l, _, m)| *l == 8 && m.contains("at least one backend")),
        "{out:?}"
    );
    // The default address needs the program's port.
    let path = write(
        dir.path(),
        "noport.toml",
        "[program.web]\ncommand = [\"/bin/true\"]\n[program.web.register]\n[program.web.register.file]\npath = \"/tmp/x\"\n",
    );
    let out = check(&path);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        diagnostics(&out, &path)
            .iter()
            .any(|(l, _, m)| *l == 3 && m.contains("\"port\"")),
        "{out:?}"
    );
}

#[test]
fn check_accepts_the_spec_resource_keys() {
    let dir = tmp();
    let path = write(
        dir.path(),
        "minder.toml",
        r#"
[program.web]
command = ["/bin/sleep", "1000"]
cgroup = true
memory_max = "512MiB"
cpu_max = "150%"
pids_max = 256
limits = { nofile = 65536, core = 0, nproc = 4096 }

[program.batch]
command = ["/bin/true"]
cgroup = false

[program.batch.limits]
as = "4GiB"
cpu = 3600
stack = "infinity"
"#,
    );
    let out = check(&path);
    assert_eq!(out.code, 0, "SPEC resource keys rejected: {out:?}");
}

#[test]
fn check_rejects_a_bad_cpu_max_and_a_limit_without_a_cgroup() {
    assert_check_fails(
        "[program.a]\ncommand = [\"/bin/true\"]\ncpu_max = 150\n[program.b]\ncommand = [\"/bin/true\"]\ncgroup = false\nmemory_max = \"1GiB\"\n",
        &[
            (3, 11, "\"cpu_max\": write a percentage of one CPU as a string: \"15000%\" for 150 CPUs, \"150%\" for 150% of one"),
            (7, 14, "\"memory_max\" needs cgroup = true, and this program has cgroup = false"),
        ],
    );
}

#[test]
fn check_rejects_an_unknown_limit_naming_the_known_ones() {
    assert_check_fails(
        "[program.a]\ncommand = [\"/bin/true\"]\nlimits = { open_files = 1024, nofile = 0 }\n",
        &[
            (3, 12, "unknown key \"open_files\" in [program.a.limits] (known limits: as, core, cpu, data, fsize, locks, memlock, msgqueue, nice, nofile, nproc, rss, rtprio, rttime, sigpending, stack)"),
            (3, 40, "\"nofile\": 0 is below 1: a process needs file descriptors, if only for stdin, stdout and stderr"),
        ],
    );
}

#[test]
fn http_probe_options_are_checked_at_file_line_col() {
    let dir = tmp();
    fs::write(dir.path().join("client.pem"), "pem").expect("writing the certificate");
    let path = write(
        dir.path(),
        "minder.toml",
        r#"[program.web]
command = ["/bin/true"]
[program.web.health]
http = "https://127.0.0.1:8443/health"
status = "200-2x"
ca_file = "missing-ca.pem"
client_cert = "client.pem"
"#,
    );
    let out = check(&path);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(
        diagnostics(&out, &path),
        vec![
            (
                5,
                10,
                "\"status\": malformed status \"200-2x\": \"2x\" is not a code or a range like \"200-299\""
                    .to_string()
            ),
            (
                6,
                11,
                format!(
                    "\"ca_file\": {} does not exist",
                    dir.path().join("missing-ca.pem").display()
                )
            ),
            (
                7,
                15,
                "\"client_cert\" needs \"client_key\" (its private key) for mutual TLS".to_string()
            ),
        ],
        "{out:?}"
    );
}

#[test]
fn check_accepts_the_container_keys() {
    let dir = tmp();
    let path = write(
        dir.path(),
        "minder.toml",
        r#"
[program.web]
command = ["/bin/sleep", "1000"]
instances = 2
on_fatal = "shutdown"

[program.web.logs]
stdout = "inherit"
stderr = "inherit"
prefix = true

[program.worker]
command = ["/bin/sleep", "1000"]
on_fatal = "stay"

[program.worker.logs]
stdout = "inherit"
stderr = "stdout"
prefix = false
"#,
    );
    let out = check(&path);
    assert_eq!(out.code, 0, "container keys rejected: {out:?}");
}

#[test]
fn check_rejects_bad_container_keys_at_their_place() {
    assert_check_fails(
        "[program.a]\ncommand = [\"/bin/true\"]\non_fatal = \"exit\"\n[program.a.logs]\nstdout = \"inherit\"\nprefix = \"yes\"\n[program.b]\ncommand = [\"/bin/true\"]\n[program.b.logs]\nprefix = false\n",
        &[
            (3, 12, "\"on_fatal\": unknown value \"exit\" (expected one of \"stay\", \"shutdown\")"),
            (6, 10, "\"prefix\": expected true or false, found string"),
            (10, 10, "\"prefix\" applies to inherited streams only (stdout or stderr = \"inherit\")"),
        ],
    );
}
