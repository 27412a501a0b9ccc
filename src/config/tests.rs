//! Tests of loading whole configs from strings and files.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::*;

const MAIN: &str = "/cfg/minder.toml";

fn defaults() -> Defaults {
    Defaults {
        socket: PathBuf::from("/default/minder.sock"),
        log_dir: PathBuf::from("/default/logs"),
    }
}

/// Parses `text` as /cfg/minder.toml, failing the test with every diagnostic.
fn parse(text: &str) -> Config {
    match parse_str(text, Path::new(MAIN), &defaults()) {
        Ok(c) => c,
        Err(diags) => panic!(
            "expected a valid config, got:\n{}\n--- config:\n{text}",
            diags
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
}

/// Parses `text`, expecting failure; the diagnostics as strings.
fn errors(text: &str) -> Vec<String> {
    match parse_str(text, Path::new(MAIN), &defaults()) {
        Ok(c) => panic!("expected errors, got a valid config: {c:?}\n--- config:\n{text}"),
        Err(diags) => diags.iter().map(|d| d.to_string()).collect(),
    }
}

/// Expects exactly one error, equal to `expected` (path prefix added).
fn assert_error(text: &str, expected: &str) {
    let errs = errors(text);
    assert_eq!(errs, vec![format!("{MAIN}:{expected}")], "config:\n{text}");
}

fn durations(s: u64) -> Duration {
    Duration::from_secs(s)
}

// ---------------------------------------------------------------- defaults

#[test]
fn empty_config_is_valid_with_supervisor_defaults() {
    let c = parse("");
    assert_eq!(c.path, PathBuf::from(MAIN));
    assert!(c.programs.is_empty());
    let s = &c.supervisor;
    assert_eq!(s.socket, PathBuf::from("/default/minder.sock"));
    assert_eq!(s.log_dir, PathBuf::from("/default/logs"));
    assert_eq!(s.socket_mode, 0o600);
    assert_eq!(s.socket_group, None);
    assert_eq!(s.log_level, "info");
    assert_eq!(s.shutdown_timeout, durations(60));
}

#[test]
fn program_defaults() {
    let c = parse("[program.a]\ncommand = [\"sleep\", \"10\"]\n");
    let p = c.program("a").expect("program a");
    assert_eq!(p.name, "a");
    assert_eq!(p.file, PathBuf::from(MAIN));
    assert_eq!(p.command, vec!["sleep", "10"]);
    assert_eq!(p.directory, PathBuf::from("/cfg"));
    assert!(p.environment.is_empty());
    assert!(!p.clear_env);
    assert_eq!(p.user, None);
    assert_eq!(p.group, None);
    assert!(p.autostart);
    assert_eq!(p.restart, RestartPolicy::Always);
    assert_eq!(p.exit_codes, vec![0]);
    assert_eq!(p.start_secs, durations(1));
    assert_eq!(p.stop_signal, Signal::SIGTERM);
    assert_eq!(p.stop_timeout, durations(10));
    assert!(p.kill_group);
    assert_eq!(p.instances, 1);
    assert_eq!(p.port, None);
    assert!(p.depends_on.is_empty());
    assert_eq!(p.backoff, BackoffConfig::default());
    assert!(c.program("b").is_none());
}

#[test]
fn relative_config_path_becomes_absolute() {
    let c = parse_str("", Path::new("etc/x.toml"), &defaults()).expect("valid");
    assert!(c.path.is_absolute());
    assert!(c.path.ends_with("etc/x.toml"));
}

// ---------------------------------------------------------------- every key

const FULL: &str = r#"
[supervisor]
socket = "run/minder.sock"
socket_mode = "0660"
socket_group = "adm"
log_dir = "/var/log/elsewhere"
log_level = "debug"
shutdown_timeout = "2m"

[program.db]
command = "/usr/bin/db --data '/var/lib/my db'"

[program.web]
command = ["/usr/bin/web", "--port", "{port}"]
directory = "srv"
environment = { RUST_LOG = "info", A = "{name}" }
clear_env = true
user = "www-data"
group = 33
autostart = false
restart = "on-failure"
exit_codes = [0, 2, 255]
start_secs = "250ms"
stop_signal = "INT"
stop_timeout = "0"
kill_group = false
instances = 3
port = 8080
depends_on = ["db"]

[program.web.backoff]
initial = "2s"
max = "30s"
multiplier = 3
jitter = 0.5
reset_after = "5m"
max_retries = 4
"#;

#[test]
fn every_key_is_parsed() {
    let c = parse(FULL);
    let s = &c.supervisor;
    assert_eq!(s.socket, PathBuf::from("/cfg/run/minder.sock"));
    assert_eq!(s.socket_mode, 0o660);
    assert_eq!(s.socket_group.as_deref(), Some("adm"));
    assert_eq!(s.log_dir, PathBuf::from("/var/log/elsewhere"));
    assert_eq!(s.log_level, "debug");
    assert_eq!(s.shutdown_timeout, durations(120));

    let db = c.program("db").expect("db");
    assert_eq!(db.command, vec!["/usr/bin/db", "--data", "/var/lib/my db"]);

    let p = c.program("web").expect("web");
    assert_eq!(p.command, vec!["/usr/bin/web", "--port", "{port}"]);
    assert_eq!(p.directory, PathBuf::from("/cfg/srv"));
    assert_eq!(
        p.environment,
        vec![
            ("A".to_string(), "{name}".to_string()),
            ("RUST_LOG".to_string(), "info".to_string())
        ]
    );
    assert!(p.clear_env);
    assert_eq!(p.user.as_deref(), Some("www-data"));
    assert_eq!(p.group.as_deref(), Some("33"));
    assert!(!p.autostart);
    assert_eq!(p.restart, RestartPolicy::OnFailure);
    assert_eq!(p.exit_codes, vec![0, 2, 255]);
    assert_eq!(p.start_secs, Duration::from_millis(250));
    assert_eq!(p.stop_signal, Signal::SIGINT);
    assert_eq!(p.stop_timeout, Duration::ZERO);
    assert!(!p.kill_group);
    assert_eq!(p.instances, 3);
    assert_eq!(p.port, Some(8080));
    assert_eq!(p.depends_on, vec!["db"]);
    assert_eq!(
        p.backoff,
        BackoffConfig {
            initial: durations(2),
            max: durations(30),
            multiplier: 3.0,
            jitter: 0.5,
            reset_after: durations(300),
            max_retries: 4,
        }
    );
}

#[test]
fn other_spellings_of_values() {
    let c = parse(
        r#"
[supervisor]
socket_mode = "600"
include = []
[program.a]
command = ["x"]
restart = "never"
stop_signal = 9
user = 0
directory = "/abs/dir"
[program.b]
command = "y"
restart = "always"
stop_signal = "SIGHUP"
[program.b.backoff]
multiplier = 1
jitter = 0
"#,
    );
    assert_eq!(c.supervisor.socket_mode, 0o600);
    let a = c.program("a").expect("a");
    assert_eq!(a.restart, RestartPolicy::Never);
    assert_eq!(a.stop_signal, Signal::SIGKILL);
    assert_eq!(a.user.as_deref(), Some("0"));
    assert_eq!(a.directory, PathBuf::from("/abs/dir"));
    let b = c.program("b").expect("b");
    assert_eq!(b.stop_signal, Signal::SIGHUP);
    assert_eq!(b.backoff.multiplier, 1.0);
    assert_eq!(b.backoff.jitter, 0.0);
}

#[test]
fn program_tables_in_other_toml_shapes() {
    let c = parse(
        "program.a.command = \"x\"\n[program.b]\ncommand = \"y\"\n[program.c.backoff]\nmax = \"1m\"\n[program.c]\ncommand = \"z\"\n",
    );
    let names: Vec<&str> = c.programs.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, vec!["a", "b", "c"]);
    assert_eq!(c.program("c").map(|p| p.backoff.max), Some(durations(60)));
    let c = parse(
        "[program]
web = { command = \"x\", instances = 2 }\n",
    );
    assert_eq!(c.program("web").map(|p| p.instances), Some(2));
}

// ---------------------------------------------------------------- errors

#[test]
fn syntax_error_at_its_position() {
    let errs = errors("[program.a]\ncommand = = \"x\"\n");
    assert!(!errs.is_empty());
    assert!(
        errs[0].starts_with(&format!("{MAIN}:2:11: invalid TOML:")),
        "{errs:?}"
    );
}

#[test]
fn unknown_key_at_the_key() {
    assert_error(
        "[program.web]\ncommand = \"x\"\n  lisen = [\"tcp://127.0.0.1:80\"]\n",
        "3:3: unknown key \"lisen\" in [program.web] (did you mean \"listen\"?)",
    );
}

#[test]
fn unknown_key_suggests_a_near_miss() {
    let errs = errors("[program.web]\ncomand = \"x\"\n");
    assert_eq!(errs.len(), 2, "{errs:?}");
    // The missing command is reported too, at the header.
    assert!(errs[0].starts_with(&format!("{MAIN}:1:1: program \"web\" has no \"command\"")));
    assert_eq!(
        errs[1],
        format!("{MAIN}:2:1: unknown key \"comand\" in [program.web] (did you mean \"command\"?)")
    );
}

#[test]
fn wrong_type_at_the_value() {
    assert_error(
        "[program.web]\ncommand = \"x\"\nstart_secs = 5\n",
        "3:14: \"start_secs\": expected a duration string like \"5s\", found integer",
    );
}

#[test]
fn bad_duration() {
    let errs = errors("[program.web]\ncommand = \"x\"\nstop_timeout = \"5 parsecs\"\n");
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with(&format!(
            "{MAIN}:3:16: \"stop_timeout\": invalid duration \"5 parsecs\""
        )),
        "{errs:?}"
    );
}

#[test]
fn bad_signal() {
    let errs = errors("[program.web]\ncommand = \"x\"\nstop_signal = \"FOO\"\n");
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with(&format!(
            "{MAIN}:3:15: \"stop_signal\": unknown signal \"FOO\""
        )),
        "{errs:?}"
    );
}

#[test]
fn empty_command() {
    assert_error(
        "[program.a]\ncommand = \"  \"\n",
        "2:11: \"command\": is empty: name the program to run",
    );
    assert_error(
        "[program.a]\ncommand = []\n",
        "2:11: \"command\": is empty: name the program to run",
    );
    assert_error(
        "[program.a]\ncommand = [\"\", \"x\"]\n",
        "2:12: \"command\": the program to run is an empty string",
    );
}

#[test]
fn unsplittable_command() {
    let errs = errors("[program.a]\ncommand = \"sh -c 'echo\"\n");
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with(&format!("{MAIN}:2:11: \"command\": cannot split")),
        "{errs:?}"
    );
}

#[test]
fn command_of_wrong_types() {
    assert_error(
        "[program.a]\ncommand = 3\n",
        "2:11: \"command\": expected an array of strings or a command line string, found integer",
    );
    assert_error(
        "[program.a]\ncommand = [\"x\", 3]\n",
        "2:17: \"command\": expected a string, found integer",
    );
}

#[test]
fn missing_command_at_the_header() {
    let errs = errors("\n[program.web]\nautostart = true\n");
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with(&format!("{MAIN}:2:1: program \"web\" has no \"command\"")),
        "{errs:?}"
    );
}

#[test]
fn depends_on_unknown_program_at_the_entry() {
    assert_error(
        "[program.a]\ncommand = \"x\"\ndepends_on = [\"b\", \"nope\"]\n[program.b]\ncommand = \"x\"\n",
        "3:20: \"depends_on\": unknown program \"nope\"",
    );
}

#[test]
fn depends_on_itself() {
    assert_error(
        "[program.a]\ncommand = \"x\"\ndepends_on = [\"a\"]\n",
        "3:15: program \"a\" depends on itself",
    );
}

#[test]
fn depends_on_cycle_is_named() {
    let text = "\
[program.a]
command = \"x\"
depends_on = [\"b\"]
[program.b]
command = \"x\"
depends_on = [\"c\"]
[program.c]
command = \"x\"
depends_on = [\"a\"]
";
    assert_error(text, "9:15: depends_on cycle: c -> a -> b -> c");
}

#[test]
fn two_program_cycle() {
    let text = "\
[program.a]
command = \"x\"
depends_on = [\"b\"]
[program.b]
command = \"x\"
depends_on = [\"a\"]
";
    assert_error(text, "6:15: depends_on cycle: b -> a -> b");
}

#[test]
fn socket_mode_must_be_an_octal_string() {
    let errs = errors("[supervisor]\nsocket_mode = 0o600\n");
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with(&format!(
            "{MAIN}:2:15: \"socket_mode\": expected an octal string like \"0600\", found integer"
        )),
        "{errs:?}"
    );
    let errs = errors("[supervisor]\nsocket_mode = \"0680\"\n");
    assert!(errs[0].contains("invalid mode \"0680\""), "{errs:?}");
    let errs = errors("[supervisor]\nsocket_mode = \"01777\"\n");
    assert!(errs[0].contains("invalid mode \"01777\""), "{errs:?}");
    let errs = errors("[supervisor]\nsocket_mode = \"\"\n");
    assert!(errs[0].contains("invalid mode \"\""), "{errs:?}");
}

#[test]
fn enumerations_list_their_choices() {
    assert_error(
        "[supervisor]\nlog_level = \"loud\"\n",
        "2:13: \"log_level\": unknown value \"loud\" (expected one of \"error\", \"warn\", \"info\", \"debug\", \"trace\")",
    );
    assert_error(
        "[program.a]\ncommand = \"x\"\nrestart = \"sometimes\"\n",
        "3:11: \"restart\": unknown value \"sometimes\" (expected one of \"always\", \"on-failure\", \"never\")",
    );
}

#[test]
fn program_names_are_checked() {
    assert_error(
        "[program.\"web:1\"]\ncommand = \"x\"\n",
        "1:10: invalid program name \"web:1\": use letters, digits, '_', '.' and '-' (':' separates instance numbers)",
    );
    let errs = errors("[program.\"\"]\ncommand = \"x\"\n");
    assert!(errs[0].contains("invalid program name \"\""), "{errs:?}");
    // Dots, dashes and underscores are fine.
    let c = parse("[program.\"a.b-c_D9\"]\ncommand = \"x\"\n");
    assert!(c.program("a.b-c_D9").is_some());
}

#[test]
fn program_must_be_a_table() {
    assert_error(
        "[program]\nweb = 3\n",
        "2:7: \"web\": expected a table ([program.web]), found integer",
    );
    assert_error(
        "program = 3\n",
        "1:11: \"program\": expected a table, found integer",
    );
}

#[test]
fn numeric_ranges() {
    assert_error(
        "[program.a]\ncommand = \"x\"\nexit_codes = [0, 256]\n",
        "3:18: \"exit_codes\": 256 is out of range (expected 0..=255)",
    );
    assert_error(
        "[program.a]\ncommand = \"x\"\ninstances = 0\n",
        "3:13: \"instances\": 0 is out of range (expected 1..=10000)",
    );
    assert_error(
        "[program.a]\ncommand = \"x\"\nport = 0\n",
        "3:8: \"port\": 0 is out of range (expected 1..=65535)",
    );
    assert_error(
        "[program.a]\ncommand = \"x\"\ninstances = 3\nport = 65534\n",
        "4:8: \"port\": 65534 with 3 instances needs ports up to 65536, above 65535",
    );
    // The last port exactly at the limit is fine.
    parse("[program.a]\ncommand = \"x\"\ninstances = 2\nport = 65534\n");
    assert_error(
        "[program.a]\ncommand = \"x\"\nport = 99999999999999999999\n",
        "3:8: \"port\": integer 99999999999999999999 is out of range",
    );
}

#[test]
fn backoff_is_validated() {
    let text = "\
[program.a]
command = \"x\"
[program.a.backoff]
multiplier = 0.5
jitter = 1.5
max_retries = -1
";
    let errs = errors(text);
    assert_eq!(
        errs,
        vec![
            format!("{MAIN}:4:14: \"multiplier\": 0.5 is below 1.0: the delay must not shrink between retries"),
            format!("{MAIN}:5:10: \"jitter\": 1.5 is outside 0.0..=1.0 (a fraction of the delay)"),
            format!("{MAIN}:6:15: \"max_retries\": -1 is out of range (expected 0..=4294967295)"),
        ]
    );
    assert_error(
        "[program.a]\ncommand = \"x\"\n[program.a.backoff]\ninitial = \"10s\"\nmax = \"5s\"\n",
        "5:7: \"max\" (5s) must not be shorter than \"initial\" (10s)",
    );
    assert_error(
        "[program.a]\ncommand = \"x\"\n[program.a.backoff]\ninitial = \"2m\"\n",
        "4:11: \"max\" (1m) must not be shorter than \"initial\" (2m)",
    );
    assert_error(
        "[program.a]\ncommand = \"x\"\nbackoff = 3\n",
        "3:11: \"backoff\": expected a table, found integer",
    );
    assert_error(
        "[program.a]\ncommand = \"x\"\n[program.a.backoff]\nmaximum = \"5s\"\n",
        "4:1: unknown key \"maximum\" in [program.a.backoff]",
    );
}

#[test]
fn environment_values_must_be_strings() {
    let text = "\
[program.a]
command = \"x\"
environment = { A = 1, B = \"ok\", C = true, MINDER_PROCESS = \"x\" }
";
    assert_eq!(
        errors(text),
        vec![
            format!("{MAIN}:3:21: \"A\": expected a string, found integer"),
            format!("{MAIN}:3:38: \"C\": expected a string, found boolean"),
            format!(
                "{MAIN}:3:44: \"MINDER_PROCESS\" is set by minder for every process and cannot be configured"
            ),
        ]
    );
}

#[test]
fn user_and_group_types() {
    assert_error(
        "[program.a]\ncommand = \"x\"\nuser = true\n",
        "3:8: \"user\": expected a name or a numeric id, found boolean",
    );
    assert_error(
        "[program.a]\ncommand = \"x\"\ngroup = \"\"\n",
        "3:9: \"group\": must not be empty",
    );
}

#[test]
fn placeholder_errors_at_the_value() {
    assert_error(
        "[program.a]\ncommand = [\"x\", \"{foo}\"]\n",
        "2:17: \"command\": unknown placeholder {foo} (known: {name}, {program}, {instance}, {port})",
    );
    assert_error(
        "[program.a]\ncommand = \"x --port {port}\"\n",
        "2:11: \"command\": placeholder {port} needs the program's \"port\" key",
    );
    assert_error(
        "[program.a]\ncommand = \"x\"\nenvironment = { P = \"{port}\" }\n",
        "3:21: \"P\": placeholder {port} needs the program's \"port\" key",
    );
    // Shell syntax is not a placeholder.
    parse("[program.a]\ncommand = [\"sh\", \"-c\", \"echo ${HOME} | awk '{print $1}'\"]\n");
}

#[test]
fn metrics_address_and_hooks_are_read() {
    let config = parse(
        "[supervisor]\nmetrics = \"127.0.0.1:9101\"\n\n[[supervisor.hooks]]\non = [\"fatal\", \"unhealthy\"]\nprograms = [\"a\"]\ncommand = \"/bin/page-me --now\"\n\n[[supervisor.hooks]]\non = [\"running\"]\nwebhook = \"http://127.0.0.1:9000/hook\"\ntimeout = \"2s\"\n\n[program.a]\ncommand = \"x\"\n",
    );
    let sup = &config.supervisor;
    assert_eq!(sup.metrics, Some("127.0.0.1:9101".parse().unwrap()));
    assert_eq!(
        sup.hooks,
        vec![
            HookConfig {
                on: vec!["fatal".into(), "unhealthy".into()],
                programs: vec!["a".into()],
                action: HookAction::Command(vec!["/bin/page-me".into(), "--now".into()]),
                timeout: Duration::from_secs(10),
                directory: PathBuf::from("/cfg"),
            },
            HookConfig {
                on: vec!["running".into()],
                programs: vec![],
                action: HookAction::Webhook(Box::new(Webhook {
                    url: "http://127.0.0.1:9000/hook".into(),
                    secret: None,
                    tls: Default::default(),
                })),
                timeout: Duration::from_secs(2),
                directory: PathBuf::from("/cfg"),
            },
        ]
    );
    assert_eq!(
        parse("[program.a]\ncommand = \"x\"\n").supervisor.metrics,
        None
    );
}

#[test]
fn metrics_and_hook_errors_name_the_cause() {
    assert_error(
        "[supervisor]\nmetrics = \"localhost\"\n",
        "2:11: \"metrics\": \"localhost\" is not IP:PORT (e.g. \"127.0.0.1:9101\" or \"[::1]:9101\")",
    );
    assert_error(
        "[[supervisor.hooks]]\non = [\"crashed\"]\ncommand = \"x\"\n",
        "2:7: \"on\": unknown event \"crashed\" (expected one of stopped, starting, running, backoff, stopping, exited, fatal, healthy, unhealthy)",
    );
    assert_error(
        "[[supervisor.hooks]]\non = []\ncommand = \"x\"\n",
        "2:6: \"on\": is empty: name the states that run this hook",
    );
    assert_error(
        "[[supervisor.hooks]]\non = [\"fatal\"]\n",
        "1:1: [[supervisor.hooks]] needs one of \"command\" or \"webhook\"",
    );
    assert_error(
        "[[supervisor.hooks]]\non = [\"fatal\"]\ncommand = \"x\"\nwebhook = \"http://h/\"\n",
        "4:11: [[supervisor.hooks]] takes one of \"command\" or \"webhook\", not both",
    );
    assert_error(
        "[[supervisor.hooks]]\non = [\"fatal\"]\nwebhook = \"http://127.0.0.1:9/x\"\ninsecure = true\n",
        "4:1: \"insecure\" needs an https:// URL",
    );
    assert_error(
        "[[supervisor.hooks]]\non = [\"fatal\"]\ncommand = \"x\"\nserver_name = \"a\"\n",
        "4:1: \"server_name\" applies to an https:// \"webhook\" only",
    );
    assert_error(
        "[[supervisor.hooks]]\non = [\"fatal\"]\ncommand = \"x\"\nprograms = [\"ghost\"]\n",
        "4:13: \"programs\": unknown program \"ghost\"",
    );
    assert_error(
        "[[supervisor.hooks]]\non = [\"fatal\"]\ncommand = \"x\"\nretries = 3\n",
        "4:1: unknown key \"retries\" in [[supervisor.hooks]]",
    );
    assert_error(
        "[supervisor]\nhooks = 1\n",
        "2:9: \"hooks\": expected an array of tables ([[supervisor.hooks]]), found integer",
    );
}

/// A webhook hook signed with the key in `file` (line 4 holds `secret_file`).
fn signed_hook(file: &str) -> String {
    format!(
        "[[supervisor.hooks]]\non = [\"fatal\"]\nwebhook = \"http://127.0.0.1:9000/x\"\nsecret_file = {file:?}\n"
    )
}

/// A private directory holding `hook.secret` with `content` and `mode`.
fn secret_dir(content: &[u8], mode: u32) -> (tempfile::TempDir, String) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("hook.secret");
    std::fs::write(&file, content).expect("write");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).expect("chmod");
    let path = file.display().to_string();
    (dir, path)
}

#[test]
fn a_webhook_secret_is_read_when_the_config_is() {
    let (_dir, file) = secret_dir(b"k3y\n", 0o600);
    let config = parse(&signed_hook(&file));
    let HookAction::Webhook(webhook) = &config.supervisor.hooks[0].action else {
        panic!("not a webhook: {config:?}");
    };
    assert_eq!(webhook.url, "http://127.0.0.1:9000/x");
    assert_eq!(
        webhook.secret.as_ref().map(Secret::bytes),
        Some(&b"k3y"[..])
    );
    assert!(!format!("{config:?}").contains("k3y"));
    // Read anew on each load: a reload picks up a new key.
    std::fs::write(&file, "other\n").expect("write");
    assert_ne!(parse(&signed_hook(&file)), config);
}

#[test]
fn webhook_secret_errors_name_the_file_and_never_the_key() {
    assert_error(
        "[[supervisor.hooks]]\non = [\"fatal\"]\ncommand = \"x\"\nsecret_file = \"/etc/k\"\n",
        "4:15: \"secret_file\": only a \"webhook\" hook is signed (a \"command\" hook gets the event on its stdin)",
    );
    // Relative to the config's directory.
    assert_error(
        &signed_hook("hook.secret"),
        "4:15: \"secret_file\": cannot read /cfg/hook.secret: no such file or directory",
    );
    let (_dir, file) = secret_dir(b"\n", 0o600);
    assert_error(
        &signed_hook(&file),
        &format!("4:15: \"secret_file\": {file} is empty: write the key into it"),
    );
    let (_dir, file) = secret_dir(&[b'x'; 5000], 0o600);
    assert_error(
        &signed_hook(&file),
        &format!(
            "4:15: \"secret_file\": {file} is longer than 4096 bytes: a key is a line, not a document"
        ),
    );
    // As root only: as another user, minder runs nothing with more rights.
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let (_dir, file) = secret_dir(b"hunter2\n", 0o644);
    let errs = errors(&signed_hook(&file));
    {
        assert_eq!(
            errs,
            vec![format!(
                "{MAIN}:4:15: \"secret_file\": secret file {file} is readable by others (mode 0644), \
                 so anyone on this machine could read the key; fix it with `chmod o-r {file}`"
            )]
        );
    }
    assert!(!errs.concat().contains("hunter2"));
    let (_dir, file) = secret_dir(b"hunter2\n", 0o666);
    let errs = errors(&signed_hook(&file));
    {
        assert_eq!(
            errs,
            vec![format!(
                "{MAIN}:4:15: \"secret_file\": secret file {file} is writable by group and others (mode 0666), \
                 so others than root could choose or read the key minder signs webhooks with; \
                 fix it with `chmod go-w {file}`"
            )]
        );
    }
    assert!(!errs.concat().contains("hunter2"));
}

#[test]
fn unknown_top_level_key() {
    assert_error(
        "[programs.a]\ncommand = \"x\"\n",
        "1:2: unknown key \"programs\" at the top level (did you mean \"program\"?) (expected [supervisor] or [program.NAME])",
    );
}

#[test]
fn several_errors_in_one_file_are_all_reported_in_order() {
    let text = "\
[supervisor]
log_level = \"loud\"
bogus = 1

[program.a]
command = \"x\"
start_secs = 5
stop_signal = \"NOPE\"
depends_on = [\"ghost\"]

[program.b]
instances = 0
";
    let errs = errors(text);
    let positions: Vec<&str> = errs
        .iter()
        .map(|e| {
            e.trim_start_matches(MAIN)
                .split(": ")
                .next()
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(
        positions,
        vec![":2:13", ":3:1", ":7:14", ":8:15", ":9:15", ":11:1", ":12:13"],
        "{errs:#?}"
    );
}

// ---------------------------------------------------------------- processes

#[test]
fn single_instance_process() {
    let c = parse(
        "[program.web]\ncommand = \"web --name {name} --i {instance} --p {program}\"\nenvironment = { Z = \"{name}\" }\n",
    );
    let procs = c.program("web").expect("web").processes();
    assert_eq!(procs.len(), 1);
    let p = &procs[0];
    assert_eq!(p.name, "web");
    assert_eq!(p.program, "web");
    assert_eq!(p.instance, 0);
    assert_eq!(
        p.argv,
        vec!["web", "--name", "web", "--i", "0", "--p", "web"]
    );
    assert_eq!(
        p.environment,
        vec![
            ("MINDER_INSTANCE".to_string(), "0".to_string()),
            ("MINDER_PROCESS".to_string(), "web".to_string()),
            ("MINDER_PROGRAM".to_string(), "web".to_string()),
            ("Z".to_string(), "web".to_string()),
        ]
    );
}

#[test]
fn instances_expand_names_ports_and_environment() {
    let c = parse(
        "[program.web]\ncommand = [\"web\", \"--port={port}\", \"{name}\"]\ninstances = 2\nport = 8080\nenvironment = { PORT = \"{port}\", A = \"i{instance}\" }\n",
    );
    let procs = c.program("web").expect("web").processes();
    let names: Vec<&str> = procs.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, vec!["web:0", "web:1"]);
    assert_eq!(procs[1].instance, 1);
    assert_eq!(procs[1].program, "web");
    assert_eq!(procs[0].argv, vec!["web", "--port=8080", "web:0"]);
    assert_eq!(procs[1].argv, vec!["web", "--port=8081", "web:1"]);
    assert_eq!(
        procs[1].environment,
        vec![
            ("A".to_string(), "i1".to_string()),
            ("MINDER_INSTANCE".to_string(), "1".to_string()),
            ("MINDER_PROCESS".to_string(), "web:1".to_string()),
            ("MINDER_PROGRAM".to_string(), "web".to_string()),
            ("PORT".to_string(), "8081".to_string()),
        ]
    );
}

#[test]
fn the_specs_actors_keep_get_minders_variables_back_at_spawn() {
    let c = parse(
        "[program.web]\ncommand = \"web\"\ninstances = 2\nport = 8080\nenvironment = { PORT = \"{port}\", A = \"i{instance}\", Z = \"{name}\" }\n",
    );
    let web = c.program("web").expect("web");
    let lean = web.processes_to_run();
    for (full, lean) in web.processes().iter().zip(&lean) {
        assert!(lean
            .environment
            .iter()
            .all(|(k, _)| !k.starts_with("MINDER_")));
        assert_eq!(lean.full_environment(), full.environment);
        assert_eq!((&lean.name, &lean.argv), (&full.name, &full.argv));
    }
}

// ---------------------------------------------------------------- order and diff

#[test]
fn start_order_puts_dependencies_first_and_keeps_file_order() {
    let c = parse(
        "\
[program.web]
command = \"x\"
depends_on = [\"db\", \"cache\"]
[program.other]
command = \"x\"
[program.db]
command = \"x\"
[program.cache]
command = \"x\"
depends_on = [\"db\"]
",
    );
    assert_eq!(c.start_order(), vec!["other", "db", "cache", "web"]);
    let c = parse("[program.b]\ncommand = \"x\"\n[program.a]\ncommand = \"x\"\n");
    assert_eq!(c.start_order(), vec!["b", "a"]);
}

#[test]
fn start_order_survives_a_hand_made_cycle() {
    let mut c = parse("[program.a]\ncommand = \"x\"\n[program.b]\ncommand = \"x\"\n");
    Arc::make_mut(&mut c.programs[0]).depends_on = vec!["b".into(), "ghost".into()];
    Arc::make_mut(&mut c.programs[1]).depends_on = vec!["a".into()];
    assert_eq!(c.start_order(), vec!["a", "b"]);
}

#[test]
fn diff_sorts_programs_into_kinds() {
    let old = parse(
        "[supervisor]\nlog_level = \"info\"\n[program.keep]\ncommand = \"x\"\n[program.gone]\ncommand = \"x\"\n[program.grow]\ncommand = \"x\"\n",
    );
    let new = parse(
        "[supervisor]\nlog_level = \"info\"\n[program.keep]\ncommand = \"x\"\n[program.grow]\ncommand = \"x\"\ninstances = 2\n[program.fresh]\ncommand = \"x\"\n",
    );
    let d = diff(&old, &new);
    assert_eq!(d.added, vec!["fresh"]);
    assert_eq!(d.removed, vec!["gone"]);
    assert_eq!(d.changed, vec!["grow"]);
    assert_eq!(d.unchanged, vec!["keep"]);
    assert!(!d.supervisor_changed);

    let newer = parse("[supervisor]\nlog_level = \"debug\"\n");
    let d = diff(&new, &newer);
    assert!(d.supervisor_changed);
    assert_eq!(d.removed, vec!["keep", "grow", "fresh"]);
    assert!(d.added.is_empty() && d.changed.is_empty() && d.unchanged.is_empty());
}

// ---------------------------------------------------------------- files and includes

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create dir");
    }
    std::fs::write(&path, text).expect("write file");
    path
}

fn load_errors(path: &Path) -> Vec<String> {
    match load(path, &defaults()) {
        Ok(c) => panic!("expected errors, got {c:?}"),
        Err(diags) => diags.iter().map(|d| d.to_string()).collect(),
    }
}

#[test]
fn includes_are_merged_in_order() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let main = write(
        tmp.path(),
        "minder.toml",
        "[supervisor]\ninclude = [\"conf.d/*.toml\", \"extra.toml\"]\nsocket = \"run/m.sock\"\n[program.main]\ncommand = \"x\"\n",
    );
    write(
        tmp.path(),
        "conf.d/b.toml",
        "[program.b]\ncommand = \"x\"\ndepends_on = [\"a\"]\n",
    );
    write(
        tmp.path(),
        "conf.d/a.toml",
        "[program.a]\ncommand = \"x\"\ndirectory = \"work\"\n",
    );
    write(tmp.path(), "conf.d/.hidden.toml", "this is not toml");
    write(tmp.path(), "conf.d/notes.txt", "ignored");
    write(
        tmp.path(),
        "extra.toml",
        "[program.extra]\ncommand = \"x\"\n",
    );
    let c = load(&main, &defaults()).expect("valid config");
    let names: Vec<&str> = c.programs.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, vec!["main", "a", "b", "extra"]);
    let a = c.program("a").expect("a");
    assert_eq!(a.file, tmp.path().join("conf.d/a.toml"));
    assert_eq!(a.directory, tmp.path().join("conf.d/work"));
    assert_eq!(c.program("main").expect("main").directory, tmp.path());
    assert_eq!(c.supervisor.socket, tmp.path().join("run/m.sock"));
    assert_eq!(c.start_order(), vec!["main", "a", "b", "extra"]);
}

#[test]
fn include_of_an_empty_directory_and_of_itself() {
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(tmp.path().join("conf.d")).expect("mkdir");
    let main = write(
        tmp.path(),
        "minder.toml",
        "[supervisor]\ninclude = [\"conf.d/*.toml\", \"*.toml\"]\n[program.a]\ncommand = \"x\"\n",
    );
    let c = load(&main, &defaults()).expect("valid config");
    assert_eq!(c.programs.len(), 1);
}

#[test]
fn duplicate_program_across_files_names_both() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let main = write(
        tmp.path(),
        "a.toml",
        "[supervisor]\ninclude = [\"b.toml\"]\n\n\n\n\n[program.web]\ncommand = \"x\"\n",
    );
    write(tmp.path(), "b.toml", "\n\n[program.web]\ncommand = \"y\"\n");
    let a = tmp.path().join("a.toml");
    let b = tmp.path().join("b.toml");
    assert_eq!(
        load_errors(&main),
        vec![format!(
            "{}:3:1: program \"web\" is already defined at {}:7:1",
            b.display(),
            a.display()
        )]
    );
}

#[test]
fn included_file_may_not_have_supervisor() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let main = write(
        tmp.path(),
        "m.toml",
        "[supervisor]\ninclude = [\"*.inc\"]\n",
    );
    write(
        tmp.path(),
        "x.inc",
        "[program.a]\ncommand = \"x\"\n[supervisor]\nlog_level = \"debug\"\n[other]\n",
    );
    let inc = tmp.path().join("x.inc");
    assert_eq!(
        load_errors(&main),
        vec![
            format!(
                "{}:3:1: [supervisor] is only allowed in the main config file, not in an included file",
                inc.display()
            ),
            format!(
                "{}:5:2: unknown key \"other\" at the top level (an included file may only define [program.NAME] tables)",
                inc.display()
            ),
        ]
    );
}

#[test]
fn missing_plain_include_is_an_error_but_an_empty_glob_is_not() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let main = write(
        tmp.path(),
        "m.toml",
        "[supervisor]\ninclude = [\"nothing/*.toml\", \"missing.toml\"]\n",
    );
    let errs = load_errors(&main);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with(&format!(
            "{}:2:30: include \"missing.toml\": ",
            main.display()
        )),
        "{errs:?}"
    );
}

#[test]
fn errors_in_several_files_are_all_reported() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let main = write(
        tmp.path(),
        "m.toml",
        "[supervisor]\ninclude = [\"d/*.toml\"]\nlog_level = 3\n",
    );
    write(tmp.path(), "d/1.toml", "[program.a]\ncommand = 3\n");
    write(tmp.path(), "d/2.toml", "[program.b\n");
    write(
        tmp.path(),
        "d/3.toml",
        "[program.c]\ncommand = \"x\"\ndepends_on = [\"zz\"]\n",
    );
    let errs = load_errors(&main);
    assert_eq!(errs.len(), 4, "{errs:#?}");
    assert!(errs[0].starts_with(&format!("{}:3:13:", main.display())));
    assert!(errs[1].starts_with(&format!("{}:2:11:", tmp.path().join("d/1.toml").display())));
    assert!(errs[2].contains("invalid TOML"), "{errs:#?}");
    assert!(errs[3].starts_with(&format!("{}:3:15:", tmp.path().join("d/3.toml").display())));
}

#[test]
fn unreadable_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let missing = tmp.path().join("nope.toml");
    let errs = load_errors(&missing);
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].starts_with(&format!("{}:1:1: cannot read: ", missing.display())),
        "{errs:?}"
    );
}

#[test]
fn invalid_utf8_is_reported_at_the_byte() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("bad.toml");
    std::fs::write(&path, b"# ok\nx = \"\xff\"\n").expect("write");
    assert_eq!(
        load_errors(&path),
        vec![format!("{}:2:6: not valid UTF-8", path.display())]
    );
}

#[test]
fn example_config_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/minder.toml");
    let c = load(&path, &defaults()).unwrap_or_else(|diags| {
        panic!(
            "etc/minder.toml is invalid:\n{}",
            diags
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    assert!(c.programs.len() >= 6, "{:?}", c.start_order());
    assert!(c.programs.iter().any(|p| p.instances > 1));
    assert!(c.programs.iter().any(|p| !p.depends_on.is_empty()));
    assert!(c
        .programs
        .iter()
        .any(|p| p.restart == RestartPolicy::OnFailure));
    assert!(c
        .programs
        .iter()
        .any(|p| p.file.ends_with("conf.d/example.toml")));
    assert!(c
        .programs
        .iter()
        .any(|p| p.resources.as_ref().is_some_and(|r| !r.limits.is_empty())));
}

#[test]
fn no_panic_on_truncated_or_damaged_input() {
    let example =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/minder.toml"))
            .expect("read example");
    for text in [FULL, example.as_str()] {
        let cuts = text.char_indices().map(|(i, _)| i);
        for cut in cuts {
            let _ = parse_str(&text[..cut], Path::new(MAIN), &defaults());
            // Drop one character: unbalanced quotes, brackets, broken keys.
            let mut damaged = text[..cut].to_string();
            damaged.push_str(text[cut..].get(1..).unwrap_or_default());
            let _ = parse_str(&damaged, Path::new(MAIN), &defaults());
        }
    }
}

// ---------------------------------------------------------------- logs

#[test]
fn log_defaults() {
    let c = parse("[program.web]\ncommand = \"x\"\ninstances = 2\n");
    let p = c.program("web").expect("web");
    assert_eq!(
        p.logs,
        LogsConfig {
            stdout: LogTarget::File {
                dir: "/default/logs".into(),
                name: "{name}.stdout.log".into()
            },
            stderr: LogTarget::File {
                dir: "/default/logs".into(),
                name: "{name}.stderr.log".into()
            },
            max_size: 50_000_000,
            backups: 10,
            timestamps: false,
            prefix: true,
        }
    );
    assert_eq!(p.on_fatal, OnFatal::Stay);
    let specs = p.processes();
    assert_eq!(
        specs[1].stdout_log,
        LogDest::File(Path::new("/default/logs/web.1.stdout.log").into())
    );
    assert_eq!(
        specs[1].stderr_log,
        LogDest::File(Path::new("/default/logs/web.1.stderr.log").into())
    );
    let s = &c.supervisor;
    assert_eq!(s.log_format, LogFormat::Text);
    assert_eq!(s.log_file, None);
    assert_eq!(s.log_files, 7);
}

#[test]
fn log_keys_are_read() {
    let c = parse(
        "[supervisor]\nlog_dir = \"logs\"\nlog_format = \"json\"\nlog_file = \"m/minder.log\"\nlog_files = 3\n\
         [program.web]\ncommand = \"x\"\nport = 8000\n\
         [program.web.logs]\nstdout = \"{program}-{port}.out\"\nstderr = \"stdout\"\n\
         max_size = \"64KiB\"\nbackups = 0\ntimestamps = true\n\
         [program.quiet]\ncommand = \"x\"\n[program.quiet.logs]\nstdout = \"none\"\nstderr = \"/var/log/q.err\"\n",
    );
    assert_eq!(c.supervisor.log_format, LogFormat::Json);
    assert_eq!(
        c.supervisor.log_file,
        Some(PathBuf::from("/cfg/m/minder.log"))
    );
    assert_eq!(c.supervisor.log_files, 3);
    let web = c.program("web").expect("web");
    assert_eq!(web.logs.max_size, 65536);
    assert_eq!(web.logs.backups, 0);
    assert!(web.logs.timestamps);
    let spec = &web.processes()[0];
    assert_eq!(
        spec.stdout_log,
        LogDest::File(Path::new("/cfg/logs/web-8000.out").into())
    );
    assert_eq!(spec.stderr_log, LogDest::Stdout);
    let quiet = &c.program("quiet").expect("quiet").processes()[0];
    assert_eq!(quiet.stdout_log, LogDest::Discard);
    assert_eq!(
        quiet.stderr_log,
        LogDest::File(Path::new("/var/log/q.err").into())
    );
}

#[test]
fn inherit_prefix_and_on_fatal_are_read() {
    let c = parse(
        "[program.web]\ncommand = \"x\"\non_fatal = \"shutdown\"\n\
         [program.web.logs]\nstdout = \"inherit\"\nstderr = \"inherit\"\nprefix = false\n\
         [program.job]\ncommand = \"x\"\n[program.job.logs]\nstdout = \"inherit\"\nstderr = \"stdout\"\n",
    );
    let web = c.program("web").expect("web");
    assert_eq!(web.on_fatal, OnFatal::Shutdown);
    assert!(!web.logs.prefix);
    let spec = &web.processes()[0];
    assert_eq!(spec.stdout_log, LogDest::Inherit);
    assert_eq!(spec.stderr_log, LogDest::Inherit);
    let job = c.program("job").expect("job");
    assert!(job.logs.prefix);
    assert_eq!(job.processes()[0].stderr_log, LogDest::Stdout);
}

#[test]
fn sizes() {
    use super::schema::parse_size;
    assert_eq!(parse_size("0"), Some(0));
    assert_eq!(parse_size("50MB"), Some(50_000_000));
    assert_eq!(parse_size("64KiB"), Some(65_536));
    assert_eq!(parse_size("1 GiB"), Some(1 << 30));
    assert_eq!(parse_size("10kb"), Some(10_000));
    assert_eq!(parse_size("123"), Some(123));
    // A lone K/M/G/T is binary, as memory.max, systemd and ulimit read it.
    assert_eq!(parse_size("1G"), Some(1 << 30));
    assert_eq!(parse_size("512m"), Some(512 << 20));
    assert_eq!(parse_size("4k"), Some(4096));
    assert_eq!(parse_size("2T"), Some(2 << 40));
    assert_eq!(parse_size("2TiB"), Some(2 << 40));
    assert_eq!(parse_size("2TB"), Some(2_000_000_000_000));
    assert_eq!(parse_size("MB"), None);
    assert_eq!(parse_size("5 parsecs"), None);
    assert_eq!(parse_size("99999999999999GiB"), None);
}

#[test]
fn log_settings_are_validated() {
    let t = |logs: &str| format!("[program.web]\ncommand = \"x\"\n[program.web.logs]\n{logs}\n");
    assert_error(
        &t("max_size = \"5 parsecs\""),
        "4:12: \"max_size\": invalid size \"5 parsecs\" (write e.g. \"50MB\", \"64KiB\", \"1GiB\" or \"0\")",
    );
    assert_error(
        &t("backups = -1"),
        "4:11: \"backups\": -1 is out of range (expected 0..=1000)",
    );
    assert_error(
        &t("stdout = \"a.log\"\nstderr = \"a.log\""),
        "5:10: stderr names the stdout file: write stderr = \"stdout\" to merge the two streams",
    );
    assert_error(
        &t("stdout = \"{nmae}.log\""),
        "4:10: unknown placeholder {nmae} (known: {name}, {program}, {instance}, {port})",
    );
    assert_error(
        &t("stdout = \"logs/\""),
        "4:10: \"stdout\": \"logs/\" names a directory; give a file name like \"{name}.log\"",
    );
    assert_error(
        &t("colour = true"),
        "4:1: unknown key \"colour\" in [program.web.logs]",
    );
    assert_error(
        "[program.web]\ncommand = \"x\"\ninstances = 2\n[program.web.logs]\nstdout = \"web.log\"\n",
        "5:10: \"web.log\" would be shared by all 2 instances; put {name} or {instance} in it",
    );
    assert_error(
        "[supervisor]\nlog_format = \"xml\"\n",
        "2:14: \"log_format\": unknown value \"xml\" (expected one of \"text\", \"json\")",
    );
    assert_error(
        "[supervisor]\nlog_files = 0\n",
        "2:13: \"log_files\": 0 is out of range (expected 1..=10000)",
    );
}

#[test]
fn health_notify_and_watchdog_keys() {
    let cfg = parse(
        r#"
[program.web]
command = ["web", "--port", "{port}"]
port = 8000
instances = 2
notify = true
ready_timeout = "5s"
watchdog = "10s"
[program.web.health]
http = "http://127.0.0.1:{port}/health"
interval = "1s"
timeout = "500ms"
start_period = "20s"
failure_threshold = 2
success_threshold = 3
on_unhealthy = "none"
"#,
    );
    let web = &cfg.programs[0];
    assert!(web.notify);
    assert_eq!(web.ready_timeout, Duration::from_secs(5));
    assert_eq!(web.watchdog, Duration::from_secs(10));
    let h = web.health.as_ref().expect("health is set");
    assert_eq!(h.interval, Duration::from_secs(1));
    assert_eq!(h.timeout, Duration::from_millis(500));
    assert_eq!(h.start_period, Duration::from_secs(20));
    assert_eq!((h.failure_threshold, h.success_threshold), (2, 3));
    assert_eq!(h.on_unhealthy, OnUnhealthy::None);
    let probes: Vec<_> = web.processes().into_iter().map(|p| p.probe).collect();
    assert_eq!(
        probes,
        vec![
            Some(ProbeTarget::Http(Box::new(HttpProbe::get(
                "http://127.0.0.1:8000/health"
            )))),
            Some(ProbeTarget::Http(Box::new(HttpProbe::get(
                "http://127.0.0.1:8001/health"
            )))),
        ]
    );
}

#[test]
fn health_defaults_and_other_probe_kinds() {
    let cfg = parse(
        r#"
[program.db]
command = "db"
[program.db.health]
tcp = "127.0.0.1:5432"
[program.job]
command = "job"
[program.job.health]
exec = "pg_isready -q"
"#,
    );
    let db = cfg.programs[0].health.as_ref().expect("db health");
    assert_eq!(db.probe, ProbeTarget::Tcp("127.0.0.1:5432".into()));
    assert_eq!(db.interval, Duration::from_secs(5));
    assert_eq!(db.timeout, Duration::from_secs(2));
    assert_eq!(db.start_period, Duration::from_secs(30));
    assert_eq!((db.failure_threshold, db.success_threshold), (3, 1));
    assert_eq!(db.on_unhealthy, OnUnhealthy::Restart);
    let job = cfg.programs[1].health.as_ref().expect("job health");
    assert_eq!(
        job.probe,
        ProbeTarget::Exec(vec!["pg_isready".into(), "-q".into()])
    );
    assert!(!cfg.programs[0].notify);
    assert_eq!(cfg.programs[0].watchdog, Duration::ZERO);
    assert_eq!(cfg.programs[0].ready_timeout, Duration::from_secs(60));
}

#[test]
fn health_errors_at_their_position() {
    assert_error(
        "[program.web]\ncommand = \"x\"\n[program.web.health]\ninterval = \"1s\"\n",
        "3:1: [health] needs one of \"http\", \"tcp\" or \"exec\"",
    );
    assert_error(
        "[program.web]\ncommand = \"x\"\n[program.web.health]\nhttp = \"http://a/\"\ntcp = \"a:1\"\n",
        "5:7: [health] takes exactly one of \"http\", \"tcp\" or \"exec\"",
    );
    assert_error(
        "[program.web]\ncommand = \"x\"\n[program.web.health]\nhttp = \"ftp://a/\"\n",
        "4:8: \"http\": \"ftp://a/\" is not an http:// URL (e.g. \"http://127.0.0.1:8080/health\")",
    );
    assert_error(
        "[program.web]\ncommand = \"x\"\n[program.web.health]\ntcp = \"nohost\"\n",
        "4:7: \"tcp\": \"nohost\" is not HOST:PORT (e.g. \"127.0.0.1:5432\")",
    );
    assert_error(
        "[program.web]\ncommand = \"x\"\n[program.web.health]\nhttp = \"http://a:{port}/\"\n",
        "4:8: \"http\": placeholder {port} needs the program's \"port\" key",
    );
    assert_error(
        "[program.web]\ncommand = \"x\"\n[program.web.health]\ntcp = \"a:1\"\ninterval = \"0s\"\n",
        "5:12: \"interval\": must be longer than 0s",
    );
    assert_error(
        "[program.web]\ncommand = \"x\"\n[program.web.health]\ntcp = \"a:1\"\nfailure_threshold = 0\n",
        "5:21: \"failure_threshold\": 0 is out of range (expected 1..=1000000)",
    );
    assert_error(
        "[program.web]\ncommand = \"x\"\n[program.web.health]\ntcp = \"a:1\"\non_unhealthy = \"panic\"\n",
        "5:16: \"on_unhealthy\": unknown value \"panic\" (expected one of \"restart\", \"none\")",
    );
}

#[test]
fn listen_keys() {
    let cfg = parse(
        "[program.web]\ncommand = \"x\"\nlisten = [\"tcp://127.0.0.1:8080\", \"tcp://[::1]:8080\", \"unix:///run/web.sock\"]\nlisten_names = [\"http\", \"http6\", \"local\"]\nlisten_mode = \"0600\"\n",
    );
    let web = &cfg.programs[0];
    assert_eq!(
        web.listen,
        vec![
            ListenAddress::Tcp("127.0.0.1:8080".parse().unwrap()),
            ListenAddress::Tcp("[::1]:8080".parse().unwrap()),
            ListenAddress::Unix("/run/web.sock".into()),
        ]
    );
    assert_eq!(web.listen_names, vec!["http", "http6", "local"]);
    assert_eq!(web.listen_mode, 0o600);
    let plain = parse("[program.api]\ncommand = \"x\"\nlisten = [\"tcp://127.0.0.1:1\"]\n");
    assert_eq!(plain.programs[0].listen_names, vec!["api"]);
    assert_eq!(plain.programs[0].listen_mode, 0o660);
}

#[test]
fn listen_errors() {
    assert_error(
        "[program.web]\ncommand = \"x\"\nlisten = [\"tcp://localhost:80\"]\n",
        "3:11: \"listen\": \"tcp://localhost:80\": expected tcp://IP:PORT, e.g. \"tcp://127.0.0.1:8080\" or \"tcp://[::1]:8080\"",
    );
    assert_error(
        "[program.web]\ncommand = \"x\"\nlisten = [\"unix://run/x\"]\n",
        "3:11: \"listen\": \"unix://run/x\": a unix socket path must be absolute (unix:///run/web.sock)",
    );
    assert_error(
        "[program.web]\ncommand = \"x\"\nlisten = [\"tcp://127.0.0.1:1\"]\nlisten_names = [\"a\", \"b\"]\n",
        "4:16: \"listen_names\": 2 names for 1 listen entries (one name per entry)",
    );
}

// ---------------------------------------------------------------- resources (SPEC §5.3)

/// `keys` on line 3 of a program `a`.
fn program_a(keys: &str) -> String {
    format!("[program.a]\ncommand = \"x\"\n{keys}\n")
}

fn resources_of(keys: &str) -> Option<Resources> {
    let c = parse(&program_a(keys));
    let p = c.program("a").expect("program a");
    p.resources.as_deref().cloned()
}

fn rlimit(name: &str, value: u64) -> Rlimit {
    let kind = RLIMITS
        .iter()
        .find(|k| k.name == name)
        .expect("a known limit");
    Rlimit {
        resource: kind.resource,
        value,
    }
}

#[test]
fn resources_default_to_none_and_cgroup_to_true() {
    let c = parse(&program_a(""));
    let p = c.program("a").expect("program a");
    assert!(p.cgroup);
    assert_eq!(p.resources, None);
    assert!(!parse(&program_a("cgroup = false")).programs[0].cgroup);
    // An empty `limits` limits nothing.
    assert_eq!(resources_of("limits = {}"), None);
}

#[test]
fn resource_keys_of_the_spec() {
    let r = resources_of(
        "cgroup = true\nmemory_max = \"512MiB\"\ncpu_max = \"150%\"\npids_max = 256\nlimits = { nofile = 65536, core = 0, nproc = 4096 }",
    )
    .expect("resources");
    assert_eq!(r.memory_max, Some(512 << 20));
    assert_eq!(r.cpu_max, Some(150));
    assert_eq!(r.pids_max, Some(256));
    // In the order written, not alphabetical.
    assert_eq!(
        r.limits,
        vec![
            rlimit("nofile", 65536),
            rlimit("core", 0),
            rlimit("nproc", 4096)
        ]
    );
    assert_eq!(r.limits[0].resource, libc::RLIMIT_NOFILE as i32);
    assert_eq!(r.limits[1].resource, libc::RLIMIT_CORE as i32);
    assert_eq!(r.limits[2].resource, libc::RLIMIT_NPROC as i32);
    assert_eq!(
        r.limits.iter().map(Rlimit::name).collect::<Vec<_>>(),
        vec!["nofile", "core", "nproc"]
    );
    assert_eq!(r.cgroup_keys(), vec!["memory_max", "cpu_max", "pids_max"]);
}

#[test]
fn each_resource_key_alone() {
    let only = |keys: &str| resources_of(keys).expect("resources");
    assert_eq!(
        only("memory_max = 4096"),
        Resources {
            memory_max: Some(4096),
            ..Resources::default()
        }
    );
    assert_eq!(only("memory_max = \"1G\"").memory_max, Some(1 << 30));
    assert_eq!(only("memory_max = \"2GB\"").memory_max, Some(2_000_000_000));
    assert_eq!(only("memory_max = \" 64 KiB \"").memory_max, Some(65536));
    assert_eq!(only("cpu_max = \"1%\"").cpu_max, Some(1));
    assert_eq!(only("cpu_max = \"100000%\"").cpu_max, Some(100_000));
    assert_eq!(only("cpu_max = \" 50 % \"").cpu_max, Some(50));
    assert_eq!(only("pids_max = 1").pids_max, Some(1));
    assert_eq!(only("pids_max = 4194304").pids_max, Some(4_194_304));
    let l = only("limits = { cpu = 1 }");
    assert_eq!((l.memory_max, l.cpu_max, l.pids_max), (None, None, None));
    assert_eq!(l.cgroup_keys(), Vec::<&str>::new());
    // rlimits need no cgroup.
    assert_eq!(
        only("cgroup = false\nlimits = { nofile = 1 }").limits,
        vec![rlimit("nofile", 1)]
    );
}

#[test]
fn every_rlimit_is_read_in_the_order_written() {
    let r = resources_of(
        "[program.a.limits]\nstack = \"8MiB\"\nas = \"infinity\"\ncore = \"unlimited\"\ncpu = 3600\ndata = \"1GiB\"\nfsize = 0\nlocks = 100\nmemlock = \"64KiB\"\nmsgqueue = 819200\nnice = 40\nnofile = 1024\nnproc = 0\nrss = \"1G\"\nrtprio = 99\nrttime = \"Infinity\"\nsigpending = 128",
    )
    .expect("resources");
    let inf = Rlimit::INFINITY;
    assert_eq!(
        r.limits,
        vec![
            rlimit("stack", 8 << 20),
            rlimit("as", inf),
            rlimit("core", inf),
            rlimit("cpu", 3600),
            rlimit("data", 1 << 30),
            rlimit("fsize", 0),
            rlimit("locks", 100),
            rlimit("memlock", 65536),
            rlimit("msgqueue", 819_200),
            rlimit("nice", 40),
            rlimit("nofile", 1024),
            rlimit("nproc", 0),
            rlimit("rss", 1 << 30),
            rlimit("rtprio", 99),
            rlimit("rttime", inf),
            rlimit("sigpending", 128),
        ]
    );
    assert!(r.limits[1].is_unlimited() && !r.limits[0].is_unlimited());
    assert_eq!(r.limits.len(), RLIMITS.len());
    // Each key maps to its own RLIMIT_* number, and back.
    let expected = [
        ("as", libc::RLIMIT_AS),
        ("core", libc::RLIMIT_CORE),
        ("cpu", libc::RLIMIT_CPU),
        ("data", libc::RLIMIT_DATA),
        ("fsize", libc::RLIMIT_FSIZE),
        ("locks", libc::RLIMIT_LOCKS),
        ("memlock", libc::RLIMIT_MEMLOCK),
        ("msgqueue", libc::RLIMIT_MSGQUEUE),
        ("nice", libc::RLIMIT_NICE),
        ("nofile", libc::RLIMIT_NOFILE),
        ("nproc", libc::RLIMIT_NPROC),
        ("rss", libc::RLIMIT_RSS),
        ("rtprio", libc::RLIMIT_RTPRIO),
        ("rttime", libc::RLIMIT_RTTIME),
        ("sigpending", libc::RLIMIT_SIGPENDING),
        ("stack", libc::RLIMIT_STACK),
    ];
    for (name, resource) in expected {
        let l = rlimit(name, 1);
        assert_eq!(l.resource, resource as i32, "{name}");
        assert_eq!(l.name(), name);
    }
    // Dotted keys are the same table.
    assert_eq!(
        resources_of("limits.core = 0\nlimits.nofile = 8")
            .expect("resources")
            .limits,
        vec![rlimit("core", 0), rlimit("nofile", 8)]
    );
}

#[test]
fn memory_max_errors() {
    assert_error(
        &program_a("memory_max = 4095"),
        "3:14: \"memory_max\": 4095 bytes is below one page (4096 bytes); a number without a unit counts bytes (write e.g. \"512MiB\")",
    );
    assert_error(
        &program_a("memory_max = \"0\""),
        "3:14: \"memory_max\": 0 bytes is below one page (4096 bytes); a number without a unit counts bytes (write e.g. \"512MiB\")",
    );
    assert_error(
        &program_a("memory_max = \"512 parsecs\""),
        "3:14: \"memory_max\": invalid size \"512 parsecs\" (write e.g. \"50MB\", \"64KiB\", \"1GiB\" or \"0\")",
    );
    assert_error(
        &program_a("memory_max = \"max\""),
        "3:14: \"memory_max\": \"max\": leave memory_max out for no limit",
    );
    assert_error(
        &program_a("memory_max = -1"),
        "3:14: \"memory_max\": -1 is out of range (expected 0..=9223372036854775807)",
    );
    assert_error(
        &program_a("memory_max = 1.5"),
        "3:14: \"memory_max\": expected a size string like \"50MB\", found float",
    );
}

#[test]
fn cpu_max_errors() {
    assert_error(
        &program_a("cpu_max = 2"),
        "3:11: \"cpu_max\": write a percentage of one CPU as a string: \"200%\" for 2 CPUs, \"2%\" for 2% of one",
    );
    assert_error(
        &program_a("cpu_max = \"1.5\""),
        "3:11: \"cpu_max\": invalid CPU share \"1.5\" (write a whole percentage of one CPU: \"50%\", or \"150%\" for one and a half CPUs)",
    );
    assert_error(
        &program_a("cpu_max = \"12.5%\""),
        "3:11: \"cpu_max\": invalid CPU share \"12.5%\" (write a whole percentage of one CPU: \"50%\", or \"150%\" for one and a half CPUs)",
    );
    assert_error(
        &program_a("cpu_max = \"%\""),
        "3:11: \"cpu_max\": invalid CPU share \"%\" (write a whole percentage of one CPU: \"50%\", or \"150%\" for one and a half CPUs)",
    );
    assert_error(
        &program_a("cpu_max = \"-5%\""),
        "3:11: \"cpu_max\": invalid CPU share \"-5%\" (write a whole percentage of one CPU: \"50%\", or \"150%\" for one and a half CPUs)",
    );
    for out in ["0%", "100001%", "99999999999999999999%"] {
        assert_error(
            &program_a(&format!("cpu_max = \"{out}\"")),
            &format!("3:11: \"cpu_max\": \"{out}\" is out of range (expected \"1%\" to \"100000%\", a thousand CPUs)"),
        );
    }
    assert_error(
        &program_a("cpu_max = 1"),
        "3:11: \"cpu_max\": write a percentage of one CPU as a string: \"100%\" for 1 CPU, \"1%\" for 1% of one",
    );
    assert_error(
        &program_a("cpu_max = 0"),
        "3:11: \"cpu_max\": expected a percentage string like \"150%\", found integer",
    );
    assert_error(
        &program_a("cpu_max = true"),
        "3:11: \"cpu_max\": expected a percentage string like \"150%\", found boolean",
    );
}

#[test]
fn pids_max_errors() {
    assert_error(
        &program_a("pids_max = 0"),
        "3:12: \"pids_max\": 0 is out of range (expected 1..=4194304)",
    );
    assert_error(
        &program_a("pids_max = 4194305"),
        "3:12: \"pids_max\": 4194305 is out of range (expected 1..=4194304)",
    );
    assert_error(
        &program_a("pids_max = \"256\""),
        "3:12: \"pids_max\": expected an integer, found string",
    );
}

#[test]
fn cgroup_limits_need_a_cgroup() {
    let errs = errors(&program_a(
        "cgroup = false\nmemory_max = \"1GiB\"\ncpu_max = \"50%\"\npids_max = 10\nlimits = { nofile = 10 }",
    ));
    assert_eq!(
        errs,
        vec![
            format!("{MAIN}:4:14: \"memory_max\" needs cgroup = true, and this program has cgroup = false"),
            format!("{MAIN}:5:11: \"cpu_max\" needs cgroup = true, and this program has cgroup = false"),
            format!("{MAIN}:6:12: \"pids_max\" needs cgroup = true, and this program has cgroup = false"),
        ]
    );
    // Written before `cgroup`, the same.
    assert_error(
        "[program.a]\npids_max = 10\ncommand = \"x\"\ncgroup = false\n",
        "2:12: \"pids_max\" needs cgroup = true, and this program has cgroup = false",
    );
    // A bad value is reported once, for what is wrong with it.
    assert_error(
        &program_a("cgroup = false\ncpu_max = \"0%\""),
        "4:11: \"cpu_max\": \"0%\" is out of range (expected \"1%\" to \"100000%\", a thousand CPUs)",
    );
}

#[test]
fn unknown_limit_lists_the_known_ones() {
    let known = "as, core, cpu, data, fsize, locks, memlock, msgqueue, nice, nofile, nproc, rss, rtprio, rttime, sigpending, stack";
    assert_error(
        &program_a("limits = { nofiles = 10 }"),
        &format!("3:12: unknown key \"nofiles\" in [program.a.limits] (did you mean \"nofile\"?) (known limits: {known})"),
    );
    assert_error(
        &program_a("[program.a.limits]\nRLIMIT_NOFILE = 10"),
        &format!(
            "4:1: unknown key \"RLIMIT_NOFILE\" in [program.a.limits] (known limits: {known})"
        ),
    );
    assert_error(
        &program_a("limits = 5"),
        "3:10: \"limits\": expected a table, found integer",
    );
}

#[test]
fn rlimit_value_errors() {
    let t = |limit: &str| program_a(&format!("[program.a.limits]\n{limit}"));
    let cases = [
        ("nofile = 0", "4:10: \"nofile\": 0 is below 1: a process needs file descriptors, if only for stdin, stdout and stderr"),
        ("nofile = \"infinity\"", "4:10: \"nofile\": cannot be \"infinity\": Linux caps open files at fs.nr_open (1048576 unless raised); give a number"),
        ("nofile = 2147483585", "4:10: \"nofile\": 2147483585 is above 2147483584, the most any Linux kernel allows (the ceiling of fs.nr_open)"),
        ("nofile = \"64KiB\"", "4:10: \"nofile\": invalid value \"64KiB\" (expected a number or \"infinity\")"),
        ("nofile = -1", "4:10: \"nofile\": -1 is out of range (expected 0..=9223372036854775807)"),
        ("nofile = 1.0", "4:10: \"nofile\": expected a number or \"infinity\", found float"),
        ("cpu = 0", "4:7: \"cpu\": 0 is below 1 (seconds of CPU time; the kernel would take 0 as 1 and stop the process after a second)"),
        ("cpu = \"1h\"", "4:7: \"cpu\": invalid value \"1h\" (expected a number or \"infinity\")"),
        ("nice = 41", "4:8: \"nice\": 41 is out of range (expected 0..=40 or \"infinity\": the process may lower its nice value to 20 minus this, so 40 allows -20)"),
        ("rtprio = 100", "4:10: \"rtprio\": 100 is out of range (expected 0..=99 or \"infinity\": 99 is the highest real-time priority)"),
        ("as = 0", "4:6: \"as\": 0 bytes is below one page (4096 bytes): no program can be loaded with so little; a number without a unit counts bytes (write e.g. \"512MiB\")"),
        ("data = \"1KiB\"", "4:8: \"data\": 1024 bytes is below one page (4096 bytes): no program can be loaded with so little; a number without a unit counts bytes (write e.g. \"512MiB\")"),
        ("stack = 8", "4:9: \"stack\": 8 bytes is below one page (4096 bytes): no program can be loaded with so little; a number without a unit counts bytes (write e.g. \"512MiB\")"),
        ("core = \"lots\"", "4:8: \"core\": invalid value \"lots\" (expected a number of bytes, a size like \"64MiB\" or \"infinity\")"),
        ("core = true", "4:8: \"core\": expected a number of bytes, a size like \"64MiB\" or \"infinity\", found boolean"),
    ];
    for (limit, expected) in cases {
        assert_error(&t(limit), expected);
    }
    // Every bad entry is reported, not just the first.
    let errs = errors(&program_a("limits = { nofile = 0, nice = 99, core = 0 }"));
    assert_eq!(errs.len(), 2, "{errs:?}");
}

#[test]
fn a_change_of_a_resource_key_is_a_change_on_reload() {
    let base = "[program.a]\ncommand = \"x\"\nmemory_max = \"1GiB\"\ncpu_max = \"50%\"\npids_max = 10\nlimits = { nofile = 10, core = 0 }\n";
    let old = parse(base);
    assert_eq!(diff(&old, &parse(base)).unchanged, vec!["a"]);
    let edits = [
        ("memory_max = \"1GiB\"", "memory_max = \"2GiB\""),
        ("memory_max = \"1GiB\"", ""),
        ("cpu_max = \"50%\"", "cpu_max = \"51%\""),
        ("pids_max = 10", "pids_max = 11"),
        ("pids_max = 10", ""),
        ("nofile = 10", "nofile = 11"),
        ("nofile = 10, core = 0", "core = 0, nofile = 10"),
        ("core = 0", "core = \"infinity\""),
        ("core = 0", "core = 0, stack = \"8MiB\""),
    ];
    for (from, to) in edits {
        let new = parse(&base.replace(from, to));
        assert_eq!(diff(&old, &new).changed, vec!["a"], "{from} -> {to}");
    }
    let edited = |from: &str, to: &str| parse(&base.replace(from, to));
    // Same values, other spellings: nothing changes.
    let same = edited("memory_max = \"1GiB\"", "memory_max = 1073741824");
    assert_eq!(diff(&old, &same).unchanged, vec!["a"]);
    // Switching cgroups off is a change too.
    let plain = parse("[program.b]\ncommand = \"x\"\n");
    let off = parse("[program.b]\ncommand = \"x\"\ncgroup = false\n");
    assert_eq!(diff(&plain, &off).changed, vec!["b"]);
}

// ---------------------------------------------------------------- bounds on reading

#[test]
fn a_fifo_is_not_read() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let fifo = tmp.path().join("f.toml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    // Opening it for reading would wait for a writer: this returns at once.
    assert_eq!(
        load_errors(&fifo),
        vec![format!(
            "{}:1:1: not a regular file (a FIFO)",
            fifo.display()
        )]
    );
}

#[test]
fn a_device_or_directory_is_not_read() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let main = write(
        tmp.path(),
        "m.toml",
        "[supervisor]\ninclude = [\"/dev/zero\", \"d\"]\n",
    );
    std::fs::create_dir(tmp.path().join("d")).expect("mkdir");
    assert_eq!(
        load_errors(&main),
        vec![
            "/dev/zero:1:1: not a regular file (a character device)".to_string(),
            format!(
                "{}:1:1: not a regular file (a directory)",
                tmp.path().join("d").display()
            ),
        ]
    );
}

#[test]
fn a_file_above_the_size_limit_is_not_read() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let big = tmp.path().join("big.toml");
    let file = std::fs::File::create(&big).expect("create");
    file.set_len(load::MAX_FILE_SIZE + 1).expect("set_len");
    assert_eq!(
        load_errors(&big),
        vec![format!("{}:1:1: larger than 4 MiB", big.display())]
    );
    // At the limit it is read (and is not TOML: NUL bytes).
    file.set_len(load::MAX_FILE_SIZE).expect("set_len");
    let errs = load_errors(&big);
    assert!(errs.iter().all(|e| e.contains("invalid TOML")), "{errs:?}");
}

#[test]
fn double_star_is_refused_at_the_pattern() {
    assert_error(
        "[supervisor]\ninclude = [\"conf.d/**/*.toml\"]\n",
        "2:12: include \"conf.d/**/*.toml\": \"**\" is not supported: name each directory level (e.g. \"conf.d/*.toml\")",
    );
}

#[test]
fn include_globs_are_bounded_in_entries_and_matches() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for i in 0..5 {
        write(tmp.path(), &format!("d{i}/p.toml"), "");
    }
    let limits = |entries, files| load::IncludeLimits { entries, files };
    let found = load::expand_glob(tmp.path(), "*/*.toml", limits(10, 5)).expect("within bounds");
    assert_eq!(found.len(), 5);
    assert_eq!(found[0], tmp.path().join("d0/p.toml"));
    // 5 directories, then 5 entries inside them: 10 entries looked at.
    assert_eq!(
        load::expand_glob(tmp.path(), "*/*.toml", limits(9, 5)),
        Err("looks at more than 9 directory entries: name the directories more precisely".into())
    );
    assert_eq!(
        load::expand_glob(tmp.path(), "*/*.toml", limits(10, 4)),
        Err("matches more than 4 paths: name the files more precisely".into())
    );
}

#[test]
fn include_glob_semantics() {
    let tmp = tempfile::tempdir().expect("tempdir");
    write(tmp.path(), "a/x.toml", "");
    write(tmp.path(), "a/.hidden.toml", "");
    write(tmp.path(), "b/x.toml", "");
    write(tmp.path(), "b/y.txt", "");
    write(tmp.path(), "c", "a file, not a directory");
    write(tmp.path(), "[lit]/z.toml", "");
    let limits = load::IncludeLimits {
        entries: 1000,
        files: 1000,
    };
    let rel = |v: Vec<PathBuf>| -> Vec<String> {
        v.iter()
            .map(|p| {
                p.strip_prefix(tmp.path())
                    .expect("under tmp")
                    .display()
                    .to_string()
            })
            .collect()
    };
    let glob = |p: &str| rel(load::expand_glob(tmp.path(), p, limits).expect("valid"));
    assert_eq!(glob("*/x.toml"), vec!["a/x.toml", "b/x.toml"]);
    assert_eq!(glob("?/*"), vec!["a/x.toml", "b/x.toml", "b/y.txt"]);
    assert_eq!(glob("a/.*.toml"), vec!["a/.hidden.toml"]);
    assert_eq!(glob("[[]lit]/*.toml"), vec!["[lit]/z.toml"]);
    assert!(glob("nothing/*.toml").is_empty());
    let abs = tmp.path().join("b/*.txt").display().to_string();
    assert_eq!(glob(&abs), vec!["b/y.txt"]);
    assert_eq!(
        load::expand_glob(tmp.path(), "a/[x", limits),
        Err("invalid pattern: invalid range pattern".into())
    );
}

#[test]
fn reloads_during_a_load_get_a_load_of_their_own() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let main = write(tmp.path(), "m.toml", "[program.a]\ncommand = \"x\"\n");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut reloads = Reloads::default();
        reloads.request(&main, 1);
        reloads.request(&main, 2);
        reloads.request(&main, 3);
        let (first, waiters) = reloads.finished().await;
        assert_eq!(waiters, vec![1]);
        assert_eq!(first.expect("valid").programs.len(), 1);
        // Not answered by the load in flight when they came: it may have
        // read the file before they were made.
        let (second, waiters) = reloads.finished().await;
        assert_eq!(waiters, vec![2, 3]);
        assert!(second.is_ok());
        reloads.request(&main, 4);
        assert_eq!(reloads.abandon(), vec![4]);
    });
}

// ---------------------------------------------------------------- what would fail only at start

#[test]
fn unknown_user_and_group_are_reported_at_the_value() {
    assert_error(
        "[program.a]\ncommand = \"x\"\nuser = \"nosuchuser\"\n",
        "3:8: \"user\": unknown user \"nosuchuser\"",
    );
    assert_error(
        "[program.a]\ncommand = \"x\"\ngroup = \"nosuchgroup\"\n",
        "3:9: \"group\": unknown group \"nosuchgroup\"",
    );
    assert_error(
        "[program.a]\ncommand = \"x\"\nuser = 3999999\n",
        "3:8: \"user\": no user has id 3999999 (the user database has no entry for it)",
    );
    assert_error(
        "[program.a]\ncommand = \"x\"\ngroup = \"3999999\"\n",
        "3:9: \"group\": no group has id 3999999 (the group database has no entry for it)",
    );
    assert_error(
        "[supervisor]\nsocket_group = \"nosuchgroup\"\n",
        "2:16: \"socket_group\": unknown group \"nosuchgroup\"",
    );
    // Names and ids that exist everywhere.
    let c = parse("[program.a]\ncommand = \"x\"\nuser = \"root\"\ngroup = 0\n");
    let a = c.program("a").expect("a");
    assert_eq!(
        (a.user.as_deref(), a.group.as_deref()),
        (Some("root"), Some("0"))
    );
}

#[test]
fn dot_and_dot_dot_are_not_program_names() {
    for name in [".", ".."] {
        assert_error(
            &format!("[program.\"{name}\"]\ncommand = \"x\"\n"),
            &format!("1:10: invalid program name \"{name}\": \".\" and \"..\" stand for directories in paths such as log file names"),
        );
    }
    // Dots elsewhere in a name are fine.
    parse("[program.\"a.b\"]\ncommand = \"x\"\n[program.\"..a\"]\ncommand = \"x\"\n");
}

#[test]
fn a_default_log_name_too_long_for_the_kernel_is_reported_at_the_table() {
    // 243 + ".stdout.log" = 254 bytes: fits; with instances, "NAME.9.stdout.log" does not.
    let name = "n".repeat(243);
    parse(&format!("[program.{name}]\ncommand = \"x\"\n"));
    let errs = errors(&format!(
        "\n[program.{name}]\ncommand = \"x\"\ninstances = 10\n"
    ));
    assert_eq!(
        errs,
        vec![
            format!("{MAIN}:2:1: stdout log of program \"{name}\": the file name \"{name}.9.stdout.log\" is 256 bytes long, above the 255 bytes a file name may have; use a shorter program name or set logs.stdout"),
            format!("{MAIN}:2:1: stderr log of program \"{name}\": the file name \"{name}.9.stderr.log\" is 256 bytes long, above the 255 bytes a file name may have; use a shorter program name or set logs.stderr"),
        ]
    );
}

#[test]
fn an_explicit_log_name_or_path_too_long_is_reported_at_the_value() {
    let long = "x".repeat(252);
    assert_error(
        &format!("[program.a]\ncommand = \"x\"\nlogs.stdout = \"{long}{{port}}\"\nlogs.stderr = \"none\"\nport = 9000\n"),
        &format!("3:15: \"stdout\": the file name \"{long}9000\" is 256 bytes long, above the 255 bytes a file name may have"),
    );
    let deep = "d/".repeat(2100) + "x.log";
    assert_error(
        &format!("[program.a]\ncommand = \"x\"\n[program.a.logs]\nstderr = \"{deep}\"\n"),
        &format!(
            "4:10: \"stderr\": the log file path is {} bytes long, above the 4095 bytes a path may have",
            "/default/logs/".len() + deep.len()
        ),
    );
    // The limit itself is fine.
    parse(&format!(
        "[program.a]\ncommand = \"x\"\nlogs.stdout = \"{}\"\n",
        "y".repeat(255)
    ));
}

// ------------------------------------------------------- http probe options

/// `[program.web.health]` with `http = "http://a/"` and `extra` lines, as
/// the body of a config (the options start on line 5).
fn http_health(extra: &str) -> String {
    format!("[program.web]\ncommand = \"x\"\n[program.web.health]\nhttp = \"http://a/\"\n{extra}")
}

#[test]
fn http_probe_options_are_read_and_expanded_per_process() {
    let cfg = parse(
        r#"
[program.web]
command = "web"
port = 8000
instances = 2
[program.web.health]
http = "http://127.0.0.1:{port}/health"
method = "POST"
headers = { Host = "web.example", X-Instance = "{name}", Authorization = "Bearer t0k\ten" }
status = "200,204, 301-302"
body = "ok"
"#,
    );
    let probes: Vec<_> = cfg.programs[0]
        .processes()
        .into_iter()
        .map(|p| p.probe)
        .collect();
    let Some(ProbeTarget::Http(first)) = &probes[0] else {
        panic!("an http probe: {probes:?}");
    };
    assert_eq!(first.url, "http://127.0.0.1:8000/health");
    assert_eq!(first.method, HttpMethod::Post);
    assert_eq!(
        first.headers,
        vec![
            ("Host".to_string(), "web.example".to_string()),
            ("X-Instance".to_string(), "web:0".to_string()),
            ("Authorization".to_string(), "Bearer t0k\ten".to_string()),
        ]
    );
    assert_eq!(first.status.to_string(), "200,204,301-302");
    assert_eq!(first.body.as_deref(), Some("ok"));
    assert_eq!(first.tls, TlsConfig::default());
    let Some(ProbeTarget::Http(second)) = &probes[1] else {
        panic!("an http probe: {probes:?}");
    };
    assert_eq!(second.url, "http://127.0.0.1:8001/health");
    assert_eq!(second.headers[1].1, "web:1");

    // HEAD and an integer status.
    let cfg = parse(&http_health("method = \"HEAD\"\nstatus = 204\n"));
    let Some(HealthConfig {
        probe: ProbeTarget::Http(probe),
        ..
    }) = &cfg.programs[0].health
    else {
        panic!("an http probe");
    };
    assert_eq!(
        (probe.method, probe.method.as_str()),
        (HttpMethod::Head, "HEAD")
    );
    assert_eq!(probe.status.to_string(), "204");
    assert!(probe.status.contains(204) && !probe.status.contains(200));
}

#[test]
fn status_sets_parse_codes_and_ranges() {
    let default = StatusSet::default();
    assert_eq!(default.to_string(), "200-399");
    assert!(default.contains(200) && default.contains(399));
    assert!(!default.contains(199) && !default.contains(400));

    let set = StatusSet::parse("200,204,301-302").unwrap();
    for (code, inside) in [
        (200, true),
        (201, false),
        (204, true),
        (300, false),
        (301, true),
        (302, true),
        (303, false),
    ] {
        assert_eq!(set.contains(code), inside, "{code}");
    }
    assert_eq!(
        StatusSet::parse(" 200 - 299 ").unwrap().to_string(),
        "200-299"
    );
    assert_eq!(StatusSet::parse("100-599").unwrap().to_string(), "100-599");
    for (text, why) in [
        ("", "malformed status \"\": \"\" is not a code or a range like \"200-299\""),
        ("ok", "malformed status \"ok\": \"ok\" is not a code or a range like \"200-299\""),
        ("200,", "malformed status \"200,\": \"\" is not a code or a range like \"200-299\""),
        ("2xx", "malformed status \"2xx\": \"2xx\" is not a code or a range like \"200-299\""),
        ("600", "malformed status \"600\": 600 is not a status code (100..=599)"),
        ("99-200", "malformed status \"99-200\": 99 is not a status code (100..=599)"),
        ("299-200", "malformed status \"299-200\": the range 299-200 is empty"),
        ("200-300-400", "malformed status \"200-300-400\": \"300-400\" is not a code or a range like \"200-299\""),
    ] {
        assert_eq!(StatusSet::parse(text), Err(why.to_string()), "{text:?}");
    }
}

#[test]
fn http_probe_option_errors_at_their_position() {
    for (extra, expected) in [
        (
            "method = \"get\"\n",
            "5:10: \"method\": unknown value \"get\" (expected one of \"GET\", \"HEAD\", \"POST\")",
        ),
        (
            "method = \"PUT\"\n",
            "5:10: \"method\": unknown value \"PUT\" (expected one of \"GET\", \"HEAD\", \"POST\")",
        ),
        (
            "status = \"299-200\"\n",
            "5:10: \"status\": malformed status \"299-200\": the range 299-200 is empty",
        ),
        (
            "status = 600\n",
            "5:10: \"status\": malformed status \"600\": 600 is not a status code (100..=599)",
        ),
        (
            "status = [200]\n",
            "5:10: \"status\": expected a status code or a list like \"200,204,301-302\", found array",
        ),
        (
            "body = \"\"\n",
            "5:8: \"body\": must not be empty (leave \"body\" out to check the status only)",
        ),
        (
            "method = \"HEAD\"\nbody = \"ok\"\n",
            "6:8: \"body\": a HEAD request gets no body to check (use method = \"GET\")",
        ),
        (
            "headers = { \"Bad Name\" = \"x\" }\n",
            "5:13: \"headers\": \"Bad Name\" is not a valid header name (letters, digits and !#$%&'*+-.^_`|~)",
        ),
        (
            "headers = { X-A = \"1\\r\\nX-Smuggled: 2\" }\n",
            "5:19: \"X-A\": a header value must not contain a line break (CR or LF)",
        ),
        (
            "headers = { X-A = \"a\\u0007\" }\n",
            "5:19: \"X-A\": a header value must not contain control characters",
        ),
        (
            "headers = { Content-Length = \"5\" }\n",
            "5:13: \"headers\": \"Content-Length\" is set by minder and cannot be configured",
        ),
        (
            "headers = { Host = \"a\", host = \"b\" }\n",
            "5:25: \"headers\": \"host\" is given twice (header names ignore case)",
        ),
        (
            "headers = { X-A = 1 }\n",
            "5:19: \"X-A\": expected a string, found integer",
        ),
        (
            "headers = { X-A = \"{port}\" }\n",
            "5:19: \"X-A\": placeholder {port} needs the program's \"port\" key",
        ),
        ("headers = \"Host: a\"\n", "5:11: \"headers\": expected a table, found string"),
        ("server_name = \"a\"\n", "5:1: \"server_name\" needs an https:// URL"),
        ("insecure = true\n", "5:1: \"insecure\" needs an https:// URL"),
    ] {
        assert_error(&http_health(extra), expected);
    }
    // A body longer than what is searched can never match.
    let long = "x".repeat(BODY_LIMIT + 1);
    assert_error(
        &http_health(&format!("body = \"{long}\"\n")),
        "5:8: \"body\": is 65537 bytes long: only the first 65536 bytes of a reply are searched",
    );
    assert_eq!(
        parse(&http_health(&format!("body = \"{}\"\n", &long[1..])))
            .programs
            .len(),
        1
    );
    // Options of an http check on another kind of check.
    assert_error(
        "[program.web]\ncommand = \"x\"\n[program.web.health]\ntcp = \"a:1\"\nstatus = \"200\"\n",
        "5:1: \"status\" applies to an \"http\" check only",
    );
    assert_error(
        "[program.web]\ncommand = \"x\"\n[program.web.health]\nexec = \"true\"\ninsecure = true\n",
        "5:1: \"insecure\" applies to an \"http\" check only",
    );
}

#[test]
fn tls_keys_name_missing_files_and_unpaired_client_keys() {
    let dir = tempfile::tempdir().expect("temp dir");
    for name in ["ca.pem", "client.pem", "client.key"] {
        std::fs::write(dir.path().join(name), "pem").expect("writing a file");
    }
    let main = dir.path().join("minder.toml");
    let errors_of = |extra: &str| -> Vec<String> {
        let text = format!(
            "[program.web]\ncommand = \"x\"\n[program.web.health]\nhttp = \"https://a/\"\n{extra}"
        );
        match parse_str(&text, &main, &defaults()) {
            Ok(_) => Vec::new(),
            Err(diags) => diags.iter().map(|d| d.to_string()).collect(),
        }
    };
    // Every TLS key valid, relative paths found next to the config.
    assert_eq!(
        errors_of(&format!(
            "ca_file = \"ca.pem\"\nserver_name = \"web.example\"\ninsecure = false\nclient_cert = \"client.pem\"\nclient_key = \"{}\"\n",
            dir.path().join("client.key").display()
        )),
        Vec::<String>::new()
    );
    assert_eq!(
        errors_of("ca_file = \"missing.pem\"\n"),
        vec![format!(
            "{}:5:11: \"ca_file\": {} does not exist",
            main.display(),
            dir.path().join("missing.pem").display()
        )]
    );
    assert_eq!(
        errors_of("ca_file = \".\"\n"),
        vec![format!(
            "{}:5:11: \"ca_file\": {} is a directory",
            main.display(),
            dir.path().join(".").display()
        )]
    );
    assert_eq!(
        errors_of("client_cert = \"client.pem\"\n"),
        vec![format!(
            "{}:5:15: \"client_cert\" needs \"client_key\" (its private key) for mutual TLS",
            main.display()
        )]
    );
    assert_eq!(
        errors_of("client_key = \"client.key\"\n"),
        vec![format!(
            "{}:5:14: \"client_key\" needs \"client_cert\" (its certificate) for mutual TLS",
            main.display()
        )]
    );
    // On a plain URL the TLS keys are refused at the first one.
    let text = "[program.web]\ncommand = \"x\"\n[program.web.health]\nhttp = \"http://a/\"\nca_file = \"ca.pem\"\n";
    assert_eq!(
        parse_str(text, &main, &defaults())
            .err()
            .map(|d| d.iter().map(|d| d.to_string()).collect::<Vec<_>>()),
        Some(vec![format!(
            "{}:5:1: \"ca_file\" needs an https:// URL",
            main.display()
        )])
    );
}
