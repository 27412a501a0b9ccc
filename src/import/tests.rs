//! The converter on small files: supervisord's rules one at a time.

use std::path::Path;

use super::{supervisord, Context, Converted, ImportError};

fn ctx() -> Context {
    Context {
        env: vec![("HOME_DIR".into(), "/home/app".into())],
        host: "node1".into(),
    }
}

fn convert_in(dir: &Path, text: &str) -> Result<Converted, ImportError> {
    let path = dir.join("supervisord.conf");
    std::fs::write(&path, text).unwrap();
    supervisord(&path, &ctx())
}

fn convert(text: &str) -> Converted {
    let dir = tempfile::tempdir().unwrap();
    convert_in(dir.path(), text).unwrap_or_else(|e| panic!("{e}"))
}

fn error(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let e = convert_in(dir.path(), text).expect_err("an error");
    format!("{}:{}", e.line.unwrap_or(0), e.message)
}

fn table(c: &Converted) -> toml::Table {
    c.toml.parse().unwrap_or_else(|e| panic!("{e}\n{}", c.toml))
}

fn program<'a>(t: &'a toml::Table, name: &str) -> &'a toml::Value {
    &t["program"][name]
}

#[test]
fn values_survive_toml_escaping() {
    let c = convert(
        "[supervisord]\n[program:x]\ncommand=/bin/echo \"a \\\"quoted\\\" word\" 'back\\slash' tab\\\tend\nenvironment=NOTE=\"it's \\\\ fine\"\n",
    );
    let t = table(&c);
    let argv: Vec<&str> = program(&t, "x")["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        argv,
        ["/bin/echo", "a \"quoted\" word", "back\\slash", "tab\tend"]
    );
    assert_eq!(
        program(&t, "x")["environment"]["NOTE"].as_str(),
        Some("it's \\\\ fine")
    );
}

#[test]
fn environment_expansions_follow_supervisords_order() {
    let c = convert(
        "[supervisord]\nenvironment=BASE=\"/srv\"\n[program:x]\nenvironment=APP=\"%(ENV_BASE)s/app\"\ncommand=%(ENV_APP)s/bin/run --home %(ENV_HOME_DIR)s --on %(host_node_name)s\n",
    );
    let t = table(&c);
    let x = program(&t, "x");
    assert_eq!(x["command"][0].as_str(), Some("/srv/app/bin/run"));
    assert_eq!(x["command"][2].as_str(), Some("/home/app"));
    assert_eq!(x["command"][4].as_str(), Some("node1"));
    assert_eq!(x["environment"]["BASE"].as_str(), Some("/srv"));
    assert_eq!(x["environment"]["APP"].as_str(), Some("/srv/app"));
}

#[test]
fn users_this_host_lacks_are_commented_out() {
    let c = convert("[supervisord]\n[program:x]\ncommand=/bin/true\nuser=no-such-user-here\n");
    assert!(
        c.toml.contains("# user = \"no-such-user-here\""),
        "{}",
        c.toml
    );
    assert!(table(&c)["program"]["x"].get("user").is_none());
    assert!(
        c.warnings
            .iter()
            .any(|w| w.contains(":4: [program:x] user = no-such-user-here")),
        "{:?}",
        c.warnings
    );
}

#[test]
fn settings_without_an_equivalent_warn_once_each() {
    let c = convert(
        "[supervisord]\numask=022\n[program:x]\ncommand=/bin/true\numask=002\npriority=5\nmade_up_key=1\nstartretries=0\n",
    );
    for key in [
        "umask = 022",
        "umask = 002",
        "priority = 5",
        "made_up_key = 1",
        "startretries = 0",
    ] {
        assert!(
            c.toml.contains(&format!("# not converted: {key} (")),
            "{key}: {}",
            c.toml
        );
        assert_eq!(
            c.warnings.iter().filter(|w| w.contains(key)).count(),
            1,
            "{key}: {:?}",
            c.warnings
        );
    }
    assert_eq!(
        table(&c)["program"]["x"]["backoff"]["max_retries"].as_integer(),
        Some(1)
    );
}

#[test]
fn what_supervisord_refuses_is_an_error_at_its_line() {
    assert!(error(
        "[supervisord]\n[program:x]\ncommand=/bin/true\nstopasgroup=true\nkillasgroup=false\n"
    )
    .starts_with("5:"));
    assert!(
        error("[supervisord]\n[program:x]\ncommand=/bin/true\nstopsignal=NOPE\n").starts_with("4:")
    );
    assert!(
        error("[supervisord]\n[program:x]\ncommand=/bin/true\nexitcodes=0,256\n").starts_with("4:")
    );
    assert!(
        error("[supervisord]\n[program:x]\ncommand=/bin/true\nautorestart=sometimes\n")
            .starts_with("4:")
    );
    assert!(
        error("[supervisord]\n[program:x]\ncommand=/bin/true\nstartsecs=ten\n").starts_with("4:")
    );
    assert!(error("[supervisord]\n[program:x y]\ncommand=/bin/true\n").starts_with("2:"));
    assert!(error("[supervisord]\n[include]\n").starts_with("2:"));
    assert!(
        error("[supervisord]\n[program:x]\ncommand=/bin/echo %(ENV_NOT_SET_ANYWHERE)s\n")
            .contains("ENV_NOT_SET_ANYWHERE")
    );
}

#[test]
fn includes_are_read_in_order_with_their_own_here() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("more");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(sub.join("b.conf"), "[program:b]\ncommand=%(here)s/b\n").unwrap();
    std::fs::write(sub.join("a.conf"), "[program:a]\ncommand=%(here)s/a\n").unwrap();
    std::fs::write(sub.join(".hidden.conf"), "[program:h]\ncommand=/h\n").unwrap();
    let c = convert_in(
        dir.path(),
        "[supervisord]\n[include]\nfiles = more/*.conf none/*.conf\n",
    )
    .unwrap();
    let t = table(&c);
    let programs: Vec<&String> = t["program"].as_table().unwrap().keys().collect();
    assert_eq!(programs, ["a", "b"]);
    assert_eq!(
        t["program"]["a"]["command"][0].as_str(),
        Some(format!("{}/a", sub.display()).as_str())
    );
    assert!(
        c.warnings.iter().any(|w| w.contains("none/*.conf")),
        "{:?}",
        c.warnings
    );
}

#[test]
fn reserved_variables_are_left_out() {
    let c = convert(
        "[supervisord]\n[program:x]\ncommand=/bin/true\nenvironment=MINDER_PROCESS=x,OK=1\n",
    );
    let t = table(&c);
    assert!(t["program"]["x"]["environment"]
        .get("MINDER_PROCESS")
        .is_none());
    assert_eq!(t["program"]["x"]["environment"]["OK"].as_str(), Some("1"));
}

#[test]
fn names_minder_cannot_take_are_rewritten() {
    let c = convert("[supervisord]\n[program:web@2]\ncommand=/bin/true\n");
    let t = table(&c);
    assert!(t["program"].get("web_2").is_some(), "{}", c.toml);
    assert!(
        c.toml.contains("supervisord's name \"web@2\""),
        "{}",
        c.toml
    );
}

#[test]
fn process_numbers_in_environment_values() {
    let c = convert(
        "[supervisord]\n[program:n]\ncommand=node s.js\nnumprocs=3\nprocess_name=%(program_name)s_%(process_num)d\nenvironment=PORT=80%(process_num)02d,I=%(process_num)d\n",
    );
    let t = table(&c);
    let n = program(&t, "n");
    assert_eq!(n["port"].as_integer(), Some(8000));
    assert_eq!(n["environment"]["PORT"].as_str(), Some("{port}"));
    assert_eq!(n["environment"]["I"].as_str(), Some("{instance}"));
    assert!(c.warnings.is_empty(), "exact: {:?}", c.warnings);
}
