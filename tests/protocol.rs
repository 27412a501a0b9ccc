//! The control protocol spoken directly (docs/protocol.md): line-delimited JSON,
//! `{"ok": ...}` / `{"error": {"kind", "message"}}` replies, bad input never fatal.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde_json::Value;

use common::*;

/// One connection to the control socket, with a read deadline.
struct Conn {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Conn {
    fn open(d: &Daemon) -> Conn {
        let s = UnixStream::connect(&d.sock).expect("connect to control socket");
        s.set_read_timeout(Some(Duration::from_secs(15)))
            .expect("set_read_timeout");
        Conn {
            writer: s.try_clone().expect("try_clone"),
            reader: BufReader::new(s),
        }
    }

    fn send(&mut self, line: &str) {
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .expect("write request");
    }

    /// Reads one reply line as JSON; panics on EOF or timeout.
    fn reply(&mut self) -> Value {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("read reply");
        assert!(n > 0, "connection closed instead of a reply");
        serde_json::from_str(line.trim())
            .unwrap_or_else(|e| panic!("reply not JSON ({e}): {line:?}"))
    }

    fn call(&mut self, line: &str) -> Value {
        self.send(line);
        self.reply()
    }
}

fn error_kind(v: &Value) -> &str {
    v.pointer("/error/kind")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("expected an error reply, got {v}"))
}

#[test]
fn status_and_pid_over_one_connection() {
    let d = Daemon::start(&program("a", &[], ""));
    d.wait_state("a", "running");
    let mut c = Conn::open(&d);
    let st = c.call(r#"{"v":1,"cmd":"status"}"#);
    let procs = parse_status(st.get("ok").unwrap_or_else(|| panic!("not ok: {st}")))
        .expect("SPEC status document");
    assert_eq!(get(&procs, "a").state, "running");
    let pid = c.call(r#"{"cmd":"pid"}"#);
    assert_eq!(
        pid.pointer("/ok/pid").and_then(Value::as_i64),
        Some(i64::from(d.pid())),
        "{pid}"
    );
    let named = c.call(r#"{"cmd":"status","names":["a"]}"#);
    let procs = parse_status(&named["ok"]).expect("status document");
    assert_eq!(procs.len(), 1);
}

#[test]
fn malformed_lines_get_bad_request_and_the_connection_stays_usable() {
    let d = Daemon::start(&program("a", &[], ""));
    let mut c = Conn::open(&d);
    for bad in [
        "not json",
        "null",
        "[1,2]",
        r#"{"cmd":"frobnicate"}"#,
        r#"{"cmd":"status","bogus":1}"#,
        r#"{"cmd":"start"}"#,
        r#"{"cmd":"signal","signal":"NOPE","names":["a"]}"#,
        r#"{"names":["a"]}"#,
    ] {
        let r = c.call(bad);
        assert_eq!(error_kind(&r), "bad_request", "for {bad:?}: {r}");
        let msg = r
            .pointer("/error/message")
            .and_then(Value::as_str)
            .unwrap_or("");
        assert!(
            !msg.is_empty() && !msg.contains('\n'),
            "one-line message for {bad:?}: {r}"
        );
        let ok = c.call(r#"{"cmd":"pid"}"#);
        assert!(
            ok.get("ok").is_some(),
            "connection unusable after {bad:?}: {ok}"
        );
    }
}

#[test]
fn duplicate_key_request_is_refused() {
    let mut d = Daemon::start(&program("a", &[], ""));
    let a = d.wait_state("a", "running");
    let mut c = Conn::open(&d);
    for line in [
        r#"{"cmd":"pid","cmd":"shutdown"}"#,
        r#"{"cmd":"status","cmd":"stop","names":["a"]}"#,
    ] {
        let reply = c.call(line);
        assert_eq!(error_kind(&reply), "bad_request", "{line}: {reply}");
        let message = reply.pointer("/error/message").and_then(Value::as_str);
        assert!(
            message.is_some_and(|m| m.contains("duplicate key \"cmd\"")),
            "{line}: {reply}"
        );
    }
    // Nothing was done: the daemon and its process are as they were, and
    // the connection still serves.
    assert!(d.try_wait().is_none(), "the daemon exited");
    let pid = c.call(r#"{"cmd":"pid"}"#);
    assert_eq!(
        pid.pointer("/ok/pid").and_then(Value::as_i64),
        Some(i64::from(d.pid())),
        "{pid}"
    );
    let now = d.proc("a");
    assert_eq!((now.state.as_str(), now.pid), ("running", a.pid));
}

#[test]
fn unsupported_version_and_unknown_name() {
    let d = Daemon::start(&program("a", &[], ""));
    let mut c = Conn::open(&d);
    let r = c.call(r#"{"v":2,"cmd":"status"}"#);
    assert_eq!(error_kind(&r), "unsupported_version", "{r}");
    let r = c.call(r#"{"cmd":"stop","names":["nope"]}"#);
    assert_eq!(error_kind(&r), "unknown_name", "{r}");
    let p = d.proc("a");
    assert!(p.state == "running" || p.state == "starting", "{p:?}");
}

#[test]
fn oversized_line_gets_too_large_and_the_daemon_keeps_serving() {
    let mut d = Daemon::start(&program("a", &[], ""));
    d.wait_state("a", "running");
    let c = Conn::open(&d);
    let mut writer = c.writer.try_clone().expect("try_clone");
    // Written from a thread: the daemon may answer and close before reading it all.
    let w = std::thread::spawn(move || {
        let _ = writer.write_all(&vec![b'x'; 10 * 1024 * 1024]);
    });
    let mut reader = c.reader;
    let mut line = String::new();
    let n = reader.read_line(&mut line).expect("read reply");
    let _ = reader.get_ref().shutdown(std::net::Shutdown::Both);
    let _ = w.join();
    assert!(n > 0, "connection closed without the too_large reply");
    let v: Value = serde_json::from_str(line.trim()).expect("reply is JSON");
    assert_eq!(error_kind(&v), "too_large", "{v}");
    assert!(d.try_wait().is_none(), "daemon died");
    d.ctl_ok(&["status"]);
}

#[test]
fn reload_reply_lists_the_difference() {
    let mut body = program("keep", &[], "");
    body += &program("gone", &[], "");
    let d = Daemon::start(&body);
    let mut new = program("keep", &[], "");
    new += &program("fresh", &[], "");
    d.write_config(&new);
    let mut c = Conn::open(&d);
    let r = c.call(r#"{"cmd":"reload"}"#);
    let ok = r.get("ok").unwrap_or_else(|| panic!("reload failed: {r}"));
    let list = |k: &str| -> Vec<String> {
        ok.get(k)
            .and_then(Value::as_array)
            .unwrap_or_else(|| panic!("no {k:?} list in {r}"))
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| v.to_string())
            })
            .collect()
    };
    assert!(list("added").iter().any(|n| n.contains("fresh")), "{r}");
    assert!(list("removed").iter().any(|n| n.contains("gone")), "{r}");
    assert!(list("unchanged").iter().any(|n| n.contains("keep")), "{r}");
}
