//! `minder import supervisord FILE` (SPEC §5.6) on a corpus of supervisord
//! configs (tests/import/corpus/*.conf): real supervisord accepts each one,
//! the conversion passes `minder check`, each key lands where it should, and
//! a converted config runs under the daemon.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{run_with_timeout, Daemon, Out, MINDER, WAIT};

/// Set for the corpus files that read `%(ENV_APP_ROOT)s`.
const APP_ROOT: &str = "/srv/site";

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/import/corpus")
}

fn corpus() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(corpus_dir())
        .expect("reading tests/import/corpus")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "conf"))
        .collect();
    files.sort();
    files
}

fn import(path: &Path) -> Out {
    run_with_timeout(
        Command::new(MINDER)
            .args(["import", "supervisord"])
            .arg(path)
            .env("APP_ROOT", APP_ROOT),
        Duration::from_secs(30),
    )
}

/// The converted config of a corpus file, parsed.
fn converted(name: &str) -> toml::Table {
    let out = import(&corpus_dir().join(name));
    assert_eq!(out.code, 0, "{name}: {out:?}");
    out.stdout
        .parse()
        .unwrap_or_else(|e| panic!("{name}: output is not TOML: {e}\n{}", out.stdout))
}

fn program<'a>(t: &'a toml::Table, name: &str) -> &'a toml::Table {
    t["program"][name]
        .as_table()
        .unwrap_or_else(|| panic!("no [program.{name}] in {t:#?}"))
}

fn text<'a>(t: &'a toml::Table, path: &str) -> &'a str {
    value(t, path)
        .as_str()
        .unwrap_or_else(|| panic!("{path} is not a string in {t:#?}"))
}

fn value<'a>(t: &'a toml::Table, path: &str) -> &'a toml::Value {
    let mut parts = path.split('.');
    let first = parts.next().expect("a key");
    let mut v = t
        .get(first)
        .unwrap_or_else(|| panic!("no {path} in {t:#?}"));
    for p in parts {
        v = v.get(p).unwrap_or_else(|| panic!("no {path} in {t:#?}"));
    }
    v
}

fn strings(v: &toml::Value) -> Vec<&str> {
    v.as_array()
        .expect("an array")
        .iter()
        .map(|s| s.as_str().expect("a string"))
        .collect()
}

#[test]
fn the_corpus_is_large_enough() {
    assert!(corpus().len() >= 15, "{:?}", corpus());
}

/// A venv with supervisor installed, under target/ so it is built once;
/// `None` (with the reason printed) when it cannot be built outside CI.
/// The tests of this file run at once, on threads: the first builds it,
/// the others wait for it.
fn supervisor_python() -> Option<PathBuf> {
    static PYTHON: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    PYTHON.get_or_init(build_supervisor_python).clone()
}

fn build_supervisor_python() -> Option<PathBuf> {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("supervisor-venv");
    let python = venv.join("bin/python");
    let works = |py: &Path| {
        Command::new(py)
            .args(["-c", "import supervisor.options"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if works(&python) {
        return Some(python);
    }
    let building = venv.with_extension("building");
    let _ = fs::remove_dir_all(&building);
    let pip = building.join("bin/pip");
    let steps: [(&str, Vec<&str>); 2] = [
        ("python3", vec!["-m", "venv", building.to_str()?]),
        (pip.to_str()?, vec!["install", "--quiet", "supervisor"]),
    ];
    for (program, args) in steps {
        let out = run_with_timeout(Command::new(program).args(&args), Duration::from_secs(300));
        if out.code != 0 {
            let why = format!("{program} {args:?} failed: {}{}", out.stdout, out.stderr);
            assert!(std::env::var_os("CI").is_none(), "{why}");
            println!("skipping the check by supervisord itself: {why}");
            return None;
        }
    }
    let _ = fs::remove_dir_all(&venv);
    fs::rename(&building, &venv).expect("moving the venv in place");
    works(&python).then_some(python)
}

/// supervisord's own reading of a config (what `supervisord -c FILE` does
/// before it starts anything); prints "FILE: ok" per file.
const VALIDATE: &str = r#"
import sys
from supervisor.options import ServerOptions
for path in sys.argv[1:]:
    o = ServerOptions()
    o.realize(args=['-c', path])
    n = sum(len(g.process_configs) for g in o.process_group_configs)
    print("%s: ok (%d processes)" % (path, n))
"#;

#[test]
fn supervisord_accepts_every_corpus_file() {
    let Some(python) = supervisor_python() else {
        return;
    };
    let files = corpus();
    let out = run_with_timeout(
        Command::new(python)
            .args(["-c", VALIDATE])
            .args(&files)
            .env("APP_ROOT", APP_ROOT),
        Duration::from_secs(120),
    );
    assert_eq!(out.code, 0, "supervisord refuses a corpus file: {out:?}");
    for f in &files {
        assert!(
            out.stdout.contains(&format!("{}: ok", f.display())),
            "{}: {out:?}",
            f.display()
        );
    }
}

/// What supervisord makes of each process of a config: the argv it would
/// run, its environment and the settings minder has keys for.
const DUMP: &str = r#"
import sys, json, shlex, signal
from supervisor.options import ServerOptions
from supervisor.datatypes import RestartUnconditionally, RestartWhenExitUnexpected
out = {}
for path in sys.argv[1:]:
    o = ServerOptions()
    o.realize(args=['-c', path])
    groups = []
    for g in o.process_group_configs:
        if type(g).__name__ == 'EventListenerPoolConfig':
            continue
        procs = []
        for p in g.process_configs:
            ar = p.autorestart
            procs.append({
                'name': p.name,
                'argv': shlex.split(p.command),
                'environment': p.environment or {},
                'directory': p.directory,
                'autostart': p.autostart,
                'restart': 'always' if ar is RestartUnconditionally else ('on-failure' if ar is RestartWhenExitUnexpected else 'never'),
                'exitcodes': list(p.exitcodes),
                'startsecs': p.startsecs,
                'startretries': p.startretries,
                'stopsignal': signal.Signals(p.stopsignal).name[3:],
                'stopwaitsecs': p.stopwaitsecs,
                'killasgroup': p.killasgroup,
            })
        groups.append({'group': g.name, 'processes': procs})
    out[path] = groups
print(json.dumps(out))
"#;

/// `{instance}` and `{port}` for one instance.
fn placeholders(s: &str, instance: i64, port: Option<i64>) -> String {
    let s = s.replace("{instance}", &instance.to_string());
    match port {
        Some(p) => s.replace("{port}", &(p + instance).to_string()),
        None => s,
    }
}

/// Every process supervisord would run is a process of the converted
/// config with the same argv, environment, directory and settings, except
/// where the conversion warned that it differs.
#[test]
fn converted_programs_match_what_supervisord_runs() {
    let Some(python) = supervisor_python() else {
        return;
    };
    let files = corpus();
    let out = run_with_timeout(
        Command::new(python)
            .args(["-c", DUMP])
            .args(&files)
            .env("APP_ROOT", APP_ROOT),
        Duration::from_secs(120),
    );
    assert_eq!(out.code, 0, "{out:?}");
    let dump: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON from the dump");
    let mut compared = 0;
    for file in &files {
        let name = file.file_name().unwrap().to_str().unwrap();
        let imported = import(file);
        let t: toml::Table = imported.stdout.parse().expect("TOML");
        for group in dump[file.to_str().unwrap()].as_array().expect("groups") {
            let procs = group["processes"].as_array().expect("processes");
            let group_name = group["group"].as_str().unwrap();
            for (i, proc) in procs.iter().enumerate() {
                // A program's processes in order; in a [group:x], one program each.
                let (program_name, instance) = if t["program"].get(group_name).is_some() {
                    (group_name, i as i64)
                } else {
                    (proc["name"].as_str().unwrap(), 0)
                };
                let what = format!("{name}: {group_name}:{}", proc["name"]);
                let p = program(&t, program_name);
                let get = |k: &str| p.get(k);
                let port = get("port").and_then(toml::Value::as_integer);
                let argv: Vec<String> = strings(&p["command"])
                    .iter()
                    .map(|a| placeholders(a, instance, port))
                    .collect();
                let sv_argv: Vec<String> = serde_json::from_value(proc["argv"].clone()).unwrap();
                let wrapped =
                    argv.starts_with(&["sh".to_string(), "-c".to_string()]) && sv_argv[0] != "sh";
                let inexact = imported
                    .stderr
                    .contains(&format!("[program:{program_name}] %("));
                if !wrapped && !inexact {
                    assert_eq!(argv, sv_argv, "{what}: argv");
                }
                if !inexact {
                    let env: std::collections::BTreeMap<String, String> = p
                        .get("environment")
                        .and_then(toml::Value::as_table)
                        .map(|e| {
                            e.iter()
                                .map(|(k, v)| {
                                    (k.clone(), placeholders(v.as_str().unwrap(), instance, port))
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    let sv_env: std::collections::BTreeMap<String, String> =
                        serde_json::from_value(proc["environment"].clone()).unwrap();
                    assert_eq!(env, sv_env, "{what}: environment");
                }
                assert_eq!(
                    get("directory").and_then(toml::Value::as_str),
                    proc["directory"].as_str(),
                    "{what}: directory"
                );
                let minder_str = |k: &str, default: &str| {
                    get(k)
                        .and_then(toml::Value::as_str)
                        .unwrap_or(default)
                        .to_string()
                };
                assert_eq!(
                    get("autostart")
                        .and_then(toml::Value::as_bool)
                        .unwrap_or(true),
                    proc["autostart"].as_bool().unwrap(),
                    "{what}: autostart"
                );
                let restart = minder_str("restart", "always");
                assert_eq!(
                    restart,
                    proc["restart"].as_str().unwrap(),
                    "{what}: restart"
                );
                if restart == "on-failure" {
                    let codes: Vec<i64> = get("exit_codes")
                        .and_then(toml::Value::as_array)
                        .map(|a| a.iter().map(|c| c.as_integer().unwrap()).collect())
                        .unwrap_or_else(|| vec![0]);
                    let sv: Vec<i64> = serde_json::from_value(proc["exitcodes"].clone()).unwrap();
                    assert_eq!(codes, sv, "{what}: exit codes");
                }
                assert_eq!(
                    minder_str("start_secs", "1s"),
                    format!("{}s", proc["startsecs"]),
                    "{what}: start_secs"
                );
                let retries = p
                    .get("backoff")
                    .and_then(|b| b.get("max_retries"))
                    .and_then(toml::Value::as_integer)
                    .unwrap_or(0);
                let sv_retries = proc["startretries"].as_i64().unwrap();
                assert_eq!(retries, sv_retries.max(1), "{what}: max_retries");
                assert_eq!(
                    minder_str("stop_signal", "TERM"),
                    proc["stopsignal"].as_str().unwrap(),
                    "{what}: stop_signal"
                );
                assert_eq!(
                    minder_str("stop_timeout", "10s"),
                    format!("{}s", proc["stopwaitsecs"]),
                    "{what}: stop_timeout"
                );
                if !wrapped {
                    assert_eq!(
                        get("kill_group")
                            .and_then(toml::Value::as_bool)
                            .unwrap_or(true),
                        proc["killasgroup"].as_bool().unwrap(),
                        "{what}: kill_group"
                    );
                }
                compared += 1;
            }
        }
    }
    assert!(compared >= 40, "{compared} processes compared");
}

#[test]
fn every_corpus_file_converts_and_passes_check() {
    let tmp = tempfile::tempdir().expect("a temp dir");
    for file in corpus() {
        let out = import(&file);
        assert_eq!(out.code, 0, "{}: {out:?}", file.display());
        let comments = out.stdout.matches("# not converted:").count();
        let warnings: Vec<&str> = out.stderr.lines().collect();
        assert!(
            warnings.len() >= comments,
            "{}: one warning per setting not converted: {out:?}",
            file.display()
        );
        for w in &warnings {
            assert!(w.starts_with("minder: warning: /"), "{w}");
        }
        let converted = tmp.path().join(file.file_name().expect("a file name"));
        fs::write(&converted, &out.stdout).expect("writing the converted config");
        let check = common::run_minder(&["check", "-c", converted.to_str().expect("utf-8")]);
        assert_eq!(
            check.code,
            0,
            "{}: minder check refuses the conversion: {check:?}\n{}",
            file.display(),
            out.stdout
        );
    }
}

#[test]
fn numprocs_becomes_instances_with_a_file_each() {
    let t = converted("laravel-queue.conf");
    let p = program(&t, "laravel-worker");
    assert_eq!(p["instances"].as_integer(), Some(8));
    assert_eq!(p["user"].as_str(), Some("www-data"));
    assert_eq!(p["restart"].as_str(), Some("always"));
    assert_eq!(p["kill_group"].as_bool(), Some(true));
    assert_eq!(p["stop_timeout"].as_str(), Some("3600s"));
    assert_eq!(
        strings(&p["command"]),
        [
            "php",
            "/var/www/app/artisan",
            "queue:work",
            "sqs",
            "--sleep=3",
            "--tries=3",
            "--max-time=3600"
        ]
    );
    assert_eq!(text(p, "logs.stderr"), "stdout");
    assert_eq!(text(p, "logs.stdout"), "/var/log/worker.{instance}.log");
    let out = import(&corpus_dir().join("laravel-queue.conf"));
    assert!(
        out.stdout
            .contains("laravel-worker:laravel-worker_00 .. laravel-worker:laravel-worker_07")
            && out.stdout.contains("laravel-worker:0 .. laravel-worker:7"),
        "the comment says how names changed: {}",
        out.stdout
    );
    assert!(out.stderr.contains("nodaemon = false"), "{}", out.stderr);
}

#[test]
fn container_logs_inherit_and_fatal_listener_shuts_down() {
    let t = converted("container-django-nginx-phpfpm.conf");
    for name in ["php-fpm", "nginx"] {
        let p = program(&t, name);
        assert_eq!(text(p, "logs.stdout"), "inherit", "{name}");
        assert_eq!(text(p, "logs.stderr"), "inherit", "{name}");
        assert!(value(p, "logs").get("max_size").is_none(), "{name}");
        assert_eq!(p["restart"].as_str(), Some("never"));
        assert_eq!(value(p, "backoff.max_retries").as_integer(), Some(1));
        assert_eq!(p["on_fatal"].as_str(), Some("shutdown"));
    }
    let django = program(&t, "django");
    assert_eq!(text(django, "logs.stdout"), "inherit");
    assert_eq!(text(django, "logs.stderr"), "stdout");
    assert_eq!(text(django, "environment.PYTHONUNBUFFERED"), "1");
    assert_eq!(django["restart"].as_str(), Some("on-failure"));
    assert_eq!(django["kill_group"].as_bool(), Some(false));
    assert!(
        import(&corpus_dir().join("container-django-nginx-phpfpm.conf"))
            .stdout
            .contains("# not converted: priority = 10 (supervisord started php-fpm first, without waiting; minder starts programs together, and depends_on = [\"php-fpm\"] would wait until it is running)"),
        "priority suggests depends_on"
    );
    let supervisor = t["supervisor"].as_table().expect("[supervisor]");
    assert!(
        supervisor.get("log_file").is_none(),
        "/dev/null is no log file"
    );
    let out = import(&corpus_dir().join("container-django-nginx-phpfpm.conf"));
    assert!(
        out.stdout.contains("#   [[supervisor.hooks]]"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("#   on = [\"stopped\", \"exited\", \"fatal\"]"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains("[eventlistener:processes]"),
        "{}",
        out.stderr
    );
}

#[test]
fn timings_signals_users_and_directories() {
    let t = converted("celery.conf");
    let p = program(&t, "celery");
    assert_eq!(p["directory"].as_str(), Some("/srv/app"));
    assert_eq!(p["user"].as_str(), Some("nobody"));
    assert_eq!(p["start_secs"].as_str(), Some("10s"));
    assert_eq!(p["stop_timeout"].as_str(), Some("600s"));
    assert_eq!(p["kill_group"].as_bool(), Some(true));
    assert_eq!(value(p, "backoff.max_retries").as_integer(), Some(3));
    assert_eq!(text(p, "logs.stderr"), "/var/log/celery-worker.err.log");
    assert_eq!(text(&t, "supervisor.log_level"), "warn");
    assert_eq!(text(&t, "supervisor.log_dir"), "/var/log");
    assert_eq!(text(&t, "supervisor.log_file"), "/var/log/supervisord.log");

    let t = converted("dev-stack.conf");
    assert_eq!(text(&t, "supervisor.log_level"), "trace");
    let mysql = program(&t, "mysql");
    assert_eq!(mysql["restart"].as_str(), Some("on-failure"));
    assert_eq!(mysql["exit_codes"].as_array().map(Vec::len), Some(1));
    assert_eq!(value(mysql, "backoff.max_retries").as_integer(), Some(10));
    assert_eq!(
        program(&t, "memcached")["stop_signal"].as_str(),
        Some("KILL")
    );
    assert_eq!(program(&t, "mailhog")["stop_signal"].as_str(), Some("KILL"));
}

#[test]
fn expansions_from_the_environment_and_the_program() {
    let t = converted("gunicorn.conf");
    let p = program(&t, "gunicorn");
    assert_eq!(strings(&p["command"])[0], "/srv/site/venv/bin/gunicorn");
    assert_eq!(p["directory"].as_str(), Some(APP_ROOT));
    assert_eq!(p["stop_signal"].as_str(), Some("QUIT"));
    assert_eq!(text(p, "logs.max_size"), "20MiB");
    assert_eq!(value(p, "logs.backups").as_integer(), Some(5));
    assert_eq!(
        text(p, "environment.DJANGO_SETTINGS_MODULE"),
        "mysite.settings.production"
    );

    let t = converted("groups.conf");
    let web = program(&t, "shop-web");
    assert_eq!(
        strings(&web["command"]),
        ["/srv/shop/bin/web", "--name", "shop-shop-web"]
    );
    let host = nix::unistd::gethostname().expect("a host name");
    let worker = program(&t, "shop-worker");
    assert_eq!(
        strings(&worker["command"])[2],
        host.to_str().expect("utf-8")
    );
    assert_eq!(worker["stop_signal"].as_str(), Some("USR2"));

    let out = Command::new(MINDER)
        .args(["import", "supervisord"])
        .arg(corpus_dir().join("gunicorn.conf"))
        .env_remove("APP_ROOT")
        .output()
        .expect("running minder import");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("gunicorn.conf:7: [program:gunicorn] command:")
            && stderr.contains("ENV_APP_ROOT"),
        "{stderr}"
    );
}

#[test]
fn environment_values_quoted_as_supervisord_reads_them() {
    let t = converted("environment-quoting.conf");
    let p = program(&t, "api");
    for (k, v) in [
        ("DEPLOY_ENV", "staging"),
        ("DATABASE_URL", "postgres://api:s3cret@127.0.0.1:5432/api"),
        ("ALLOWED_HOSTS", "api.example.com,www.example.com"),
        ("GREETING", "hello world"),
        ("PATH", "/srv/api/bin:/usr/bin:/bin"),
        ("WORKERS", "4"),
        ("HOME", "/home/api"),
    ] {
        assert_eq!(text(p, &format!("environment.{k}")), v);
    }
}

#[test]
fn includes_here_and_the_control_socket() {
    let t = converted("includes.conf");
    assert_eq!(text(&t, "supervisor.socket"), "/var/run/supervisor.sock");
    assert_eq!(text(&t, "supervisor.socket_mode"), "0700");
    let redis = program(&t, "redis");
    let conf_d = corpus_dir().join("conf.d");
    assert_eq!(redis["directory"].as_str(), conf_d.to_str());
    assert_eq!(redis["restart"].as_str(), Some("always"));
    assert_eq!(text(redis, "logs.max_size"), "1MiB");
    assert!(
        value(redis, "logs").get("stdout").is_none(),
        "AUTO is minder's default"
    );
    let web = program(&t, "web");
    assert_eq!(
        strings(&web["command"])[2],
        format!("{}/web.toml", conf_d.display())
    );
    assert_eq!(web["restart"].as_str(), Some("on-failure"));
    assert_eq!(web["exit_codes"].as_array().map(Vec::len), Some(2));
    assert_eq!(web["stop_signal"].as_str(), Some("HUP"));

    let t = converted("stock-debian.conf");
    assert_eq!(text(&t, "supervisor.socket_mode"), "0770");
    assert_eq!(text(&t, "supervisor.socket_group"), "root");
    assert_eq!(text(&t, "supervisor.log_level"), "debug");
    let out = import(&corpus_dir().join("stock-debian.conf"));
    for key in [
        "port = 127.0.0.1:9001",
        "minfds = 4096",
        "umask = 022",
        "identifier = supervisor",
    ] {
        assert!(
            out.stdout.contains(&format!("# not converted: {key} (")),
            "{key}: {}",
            out.stdout
        );
        assert!(out.stderr.contains(key), "{key}: {}", out.stderr);
    }
    assert!(
        !out.stderr.contains("rpcinterface"),
        "the standard rpcinterface needs no warning"
    );
}

#[test]
fn shell_syntax_runs_through_sh() {
    let t = converted("shell-syntax.conf");
    for (name, cmd) in [
        (
            "tailer",
            "tail -F /var/log/app.log | grep --line-buffered ERROR",
        ),
        (
            "envy",
            "/usr/bin/server --home $HOME --port 8080 > /dev/null 2>&1",
        ),
        ("chained", "/usr/bin/migrate && /usr/bin/server"),
    ] {
        let p = program(&t, name);
        assert_eq!(strings(&p["command"]), ["sh", "-c", cmd], "{name}");
        assert_eq!(p["kill_group"].as_bool(), Some(true), "{name}");
    }
    let quoted = program(&t, "quoted");
    assert_eq!(
        strings(&quoted["command"]),
        ["/usr/bin/printf", "%s costs $5\\n", "apples"]
    );

    let t = converted("cron-loop.conf");
    let cleanup = program(&t, "cleanup");
    assert_eq!(strings(&cleanup["command"])[..2], ["/bin/bash", "-c"]);
    assert_eq!(text(cleanup, "logs.stdout"), "none");
    assert_eq!(text(cleanup, "logs.stderr"), "/var/log/cleanup.err");
    let backup = program(&t, "backup");
    assert_eq!(backup["start_secs"].as_str(), Some("0s"));
    assert_eq!(text(backup, "logs.stderr"), "none");
}

#[test]
fn process_numbers_become_the_instance_placeholder() {
    let t = converted("node-cluster.conf");
    let p = program(&t, "node");
    assert_eq!(p["instances"].as_integer(), Some(4));
    assert_eq!(text(p, "environment.INSTANCE"), "{instance}");
    assert_eq!(text(p, "logs.stdout"), "/var/log/node-{instance}.log");
    let out = import(&corpus_dir().join("node-cluster.conf"));
    // 30%(process_num)02d from 1: ports 3001 .. 3004, as minder's {port}.
    assert_eq!(strings(&p["command"])[3], "{port}");
    assert_eq!(p["port"].as_integer(), Some(3001));
    // INSTANCE=%(process_num)d from 1 cannot be said exactly.
    assert!(
        out.stderr
            .contains("[program:node] %(process_num)d: written as {instance}"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);

    let t = converted("sidekiq.conf");
    let p = program(&t, "sidekiq");
    assert_eq!(text(p, "logs.stdout"), "/var/log/sidekiq-{instance}.log");
    assert_eq!(text(p, "environment.RAILS_ENV"), "production");

    let t = converted("laravel-horizon.conf");
    let scheduler = program(&t, "scheduler");
    assert!(scheduler.get("instances").is_none());
    assert_eq!(strings(&scheduler["command"])[..2], ["/bin/sh", "-c"]);
}

#[test]
fn rotation_uses_the_first_file() {
    let t = converted("log-rotation.conf");
    let app = program(&t, "app");
    assert_eq!(text(app, "logs.max_size"), "10MiB");
    assert_eq!(value(app, "logs.backups").as_integer(), Some(3));
    let bytes = program(&t, "bytes");
    assert_eq!(text(bytes, "logs.max_size"), "1500");
    assert_eq!(value(bytes, "logs.backups").as_integer(), Some(0));
    let out = import(&corpus_dir().join("log-rotation.conf"));
    for key in [
        "stdout_logfile = syslog",
        "stderr_syslog = true",
        "stdout_capture_maxbytes = 1MB",
    ] {
        assert!(out.stderr.contains(key), "{key}: {}", out.stderr);
    }

    let t = converted("uwsgi.conf");
    let p = program(&t, "uwsgi");
    assert_eq!(
        text(p, "logs.stderr"),
        "stdout",
        "one file for both streams"
    );
    assert_eq!(text(p, "logs.max_size"), "100MiB");
}

#[test]
fn fastcgi_programs_keep_their_socket_as_a_comment() {
    let out = import(&corpus_dir().join("fcgi-php.conf"));
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout
            .contains("# not converted: socket = tcp://127.0.0.1:9000"),
        "{}",
        out.stdout
    );
    let t = converted("fcgi-php.conf");
    assert_eq!(program(&t, "php")["instances"].as_integer(), Some(2));
}

#[test]
fn a_converted_config_runs_every_program_and_instance() {
    let mut d = Daemon::prepare("", "");
    let source = d.path("supervisord.conf");
    fs::copy(corpus_dir().join("runnable.conf"), &source).expect("copying runnable.conf");
    let out = import(&source);
    assert_eq!(out.code, 0, "{out:?}");
    // The converted config names the harness's socket: %(here)s/minder.sock.
    assert!(
        out.stdout.contains(&d.sock.display().to_string()),
        "{}",
        out.stdout
    );
    fs::write(&d.config_path, &out.stdout).expect("writing minder.toml");
    d.spawn();
    d.wait_ready();
    let names = ["sleeper", "ticker:0", "ticker:1", "ticker:2", "looper"];
    d.wait_for("every program and instance running", WAIT, |ps| {
        ps.len() == names.len()
            && names
                .iter()
                .all(|n| common::find(ps, n).is_some_and(|p| p.state == "running"))
    });
    let log = common::wait_file_until(
        &d.path("ticker-1.log"),
        "a tick with the supervisord environment",
        |s| s.contains("tick hello, world"),
    );
    assert!(log.contains("tick hello, world"), "{log}");
    d.ctl_ok(&["stop", "all"]);
}

#[test]
fn unreadable_or_malformed_files_exit_1_with_file_and_line() {
    let tmp = tempfile::tempdir().expect("a temp dir");
    let cases = [
        (
            "syntax.conf",
            "[supervisord]\n\nthis line is no setting\n",
            3,
        ),
        ("before.conf", "command=/bin/true\n[supervisord]\n", 1),
        (
            "boolean.conf",
            "[supervisord]\n[program:x]\ncommand=/bin/true\nautostart=maybe\n",
            4,
        ),
        (
            "nocommand.conf",
            "[supervisord]\n[program:x]\nautostart=true\n",
            2,
        ),
        (
            "format.conf",
            "[supervisord]\n[program:x]\ncommand=/bin/echo 100%\n",
            3,
        ),
        (
            "pairs.conf",
            "[supervisord]\n[program:x]\ncommand=/bin/true\nenvironment=URL=http://u@h\n",
            4,
        ),
        (
            "numprocs.conf",
            "[supervisord]\n[program:x]\ncommand=/bin/true\nnumprocs=2\n",
            2,
        ),
    ];
    for (name, body, line) in cases {
        let path = tmp.path().join(name);
        fs::write(&path, body).expect("writing a config");
        let out = import(&path);
        assert_eq!(out.code, 1, "{name}: {out:?}");
        assert!(out.stdout.is_empty(), "{name}: nothing on stdout: {out:?}");
        let prefix = format!("{}:{line}: ", path.display());
        assert!(
            out.stderr.starts_with(&prefix),
            "{name}: want {prefix}...: {out:?}"
        );
    }
    let missing = tmp.path().join("missing.conf");
    let out = import(&missing);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .starts_with(&format!("{}: cannot read it", missing.display())),
        "{out:?}"
    );
}
