//! The control protocol: one JSON object per line each way (docs/protocol.md).

use crate::supervisor::Transition;
use serde::{Deserialize, Serialize};

/// Protocol version spoken by this build; requests may omit `v`.
pub const VERSION: u64 = 1;

/// Longest request line accepted; longer ones get `too_large` and a closed connection.
pub const MAX_REQUEST: usize = 64 * 1024;

/// A request from `minder ctl` (or any client), tagged by `cmd`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// Status of the named processes (all when empty).
    Status {
        #[serde(default)]
        names: Vec<String>,
    },
    /// Start, waiting for `running` (or failure) unless `wait` is false.
    Start {
        names: Vec<String>,
        #[serde(default = "yes")]
        wait: bool,
    },
    /// Stop, waiting for `stopped` unless `wait` is false.
    Stop {
        names: Vec<String>,
        #[serde(default = "yes")]
        wait: bool,
    },
    /// Restart, waiting for `running` (or failure) unless `wait` is false.
    Restart {
        names: Vec<String>,
        #[serde(default = "yes")]
        wait: bool,
    },
    /// Send a signal (`HUP`, `SIGHUP`, `1`) to each named process group.
    Signal { signal: String, names: Vec<String> },
    /// The daemon's PID, or a process's.
    Pid {
        #[serde(default)]
        name: Option<String>,
    },
    /// Re-read the config and apply the difference.
    Reload,
    /// The last `lines` lines of one process's captured output; with
    /// `follow`, then its new output as it comes (a streaming reply).
    Tail {
        name: String,
        #[serde(default = "ten")]
        lines: usize,
        /// The stderr log instead of stdout.
        #[serde(default)]
        stderr: bool,
        #[serde(default)]
        follow: bool,
    },
    /// Reopen every captured log file (after an external logrotate).
    ReopenLogs,
    /// Stream state changes of the named processes or programs (all when
    /// empty) until the connection closes: an acknowledgement, then one
    /// [`StateEvent`] per change.
    Events {
        #[serde(default)]
        names: Vec<String>,
    },
    /// Stop everything and exit.
    Shutdown,
    /// Re-execute the daemon's binary (or `binary`), keeping every child.
    /// On success no reply comes: the connection closes with the old image.
    Reexec {
        #[serde(default)]
        binary: Option<String>,
    },
}

fn yes() -> bool {
    true
}

fn ten() -> usize {
    10
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The kinds of error a reply can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Not JSON, unknown `cmd`, missing or unknown fields.
    BadRequest,
    /// Request line over [`MAX_REQUEST`] bytes.
    TooLarge,
    /// A `v` this daemon does not speak.
    UnsupportedVersion,
    /// A name that is neither a process, a program nor `all`.
    UnknownName,
    /// The request was valid but did not succeed (start failed, reload rejected, ...).
    Failed,
    /// Peer credentials not allowed.
    PermissionDenied,
    /// The daemon is shutting down.
    ShuttingDown,
}

/// The error half of a reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Machine-readable kind.
    pub kind: ErrorKind,
    /// One line for a human.
    pub message: String,
}

/// A reply: `{"ok": ...}` or `{"error": {"kind": ..., "message": ...}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// Success, with a command-specific document, serialized once: a status
    /// of 1000 processes never exists as a tree of JSON values.
    Ok(Box<serde_json::value::RawValue>),
    /// Failure.
    Error(ErrorBody),
}

impl Reply {
    /// A success carrying `payload`.
    pub fn ok(payload: impl Serialize) -> Reply {
        let raw = serde_json::value::to_raw_value(&payload).unwrap_or_else(|_| {
            serde_json::value::RawValue::from_string("null".to_string())
                .expect("null is valid JSON")
        });
        Reply::Ok(raw)
    }

    /// A failure.
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Reply {
        Reply::Error(ErrorBody {
            kind,
            message: message.into(),
        })
    }
}

/// One row of `status` (SPEC §1: fields may be added, never removed or renamed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub name: String,
    pub program: String,
    pub instance: u32,
    pub state: String,
    pub pid: Option<i32>,
    pub uptime_secs: Option<f64>,
    pub health: String,
    pub restarts: u32,
    pub last_exit_code: Option<i32>,
    pub last_exit_signal: Option<String>,
    pub description: String,
    /// In `backoff`: seconds until the next attempt; else `null` (SPEC §5.1).
    #[serde(default)]
    pub next_start_secs: Option<f64>,
    /// Predecessors still serving or stopping after a rolling restart: part
    /// of this process, never entries of their own (SPEC §5.1). Empty when none.
    #[serde(default)]
    pub draining: Vec<DrainingProcess>,
    /// Captured output lost because its log file could not be written.
    #[serde(default)]
    pub dropped_bytes: u64,
    /// User + system CPU time of the process and all its descendants, in
    /// seconds (SPEC §5.1); 0 without a live process.
    #[serde(default)]
    pub cpu_secs: f64,
    /// Resident memory of the process and all its descendants, in bytes;
    /// `null` when unknown or without a live process.
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    /// The latest health probe (absent without a health check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe: Option<LastProbe>,
    /// Per load balancer backend (`haproxy`, `etcd`, `file`): `"ok"` or
    /// its last error (SPEC §5.2); `null` for a program without `[register]`.
    #[serde(default)]
    pub register: Option<std::collections::BTreeMap<String, String>>,
}

#[cfg(test)]
impl ProcessInfo {
    /// A row for tests: `name` of its own program, instance 0, no health
    /// check, nothing measured; the test sets what it looks at.
    pub(crate) fn example(name: &str, state: &str, pid: Option<i32>) -> ProcessInfo {
        ProcessInfo {
            name: name.into(),
            program: name.split(':').next().unwrap_or(name).into(),
            instance: 0,
            state: state.into(),
            pid,
            uptime_secs: None,
            health: "none".into(),
            restarts: 0,
            last_exit_code: None,
            last_exit_signal: None,
            description: String::new(),
            next_start_secs: None,
            draining: Vec::new(),
            dropped_bytes: 0,
            cpu_secs: 0.0,
            memory_bytes: None,
            last_probe: None,
            register: None,
        }
    }
}

/// The previous process of a rolling restart, listed inside its successor's
/// `status` entry until it has exited.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrainingProcess {
    pub pid: i32,
    pub uptime_secs: f64,
    /// Where it is in its retirement (`serving until its replacement is ready`, ...).
    pub description: String,
}

/// The latest health probe of a process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastProbe {
    /// When it finished, RFC 3339.
    pub time: String,
    /// Healthy.
    pub ok: bool,
    /// What was seen (`GET http://127.0.0.1:8080/health: 503`).
    pub message: String,
    /// How long it took.
    pub duration_ms: f64,
}

/// The `status` document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    pub processes: Vec<ProcessInfo>,
}

/// The outcome for one process of `start`/`stop`/`restart`/`signal`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionResult {
    pub name: String,
    pub ok: bool,
    /// Why it failed (or empty).
    #[serde(default)]
    pub message: String,
}

/// The `start`/`stop`/`restart`/`signal` document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionReply {
    pub results: Vec<ActionResult>,
}

/// The `pid` document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PidReply {
    pub pid: Option<i32>,
}

/// The `reload` document: program names by what happened to them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReloadReply {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub unchanged: Vec<String>,
    /// Settings that need a daemon restart to apply (e.g. `socket`).
    #[serde(default)]
    pub not_applied: Vec<String>,
}

/// One object of a `tail` reply: the history first, then (with `follow`)
/// one per piece of new output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TailChunk {
    /// The process.
    pub name: String,
    /// `stdout` or `stderr` (`stdout` when stderr is merged into it).
    pub stream: String,
    /// Output as in the log file (invalid UTF-8 replaced).
    pub text: String,
    /// Output left out before this chunk because the reader was too slow.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub skipped_bytes: u64,
}

/// A change of a process's state or health, as `ctl events` and hooks see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateEvent {
    /// When it happened, RFC 3339 (UTC, milliseconds).
    pub time: String,
    /// The process (`web` or `web:0`).
    pub name: String,
    /// Its program.
    pub program: String,
    /// The state before (or the health before, for a health change).
    pub from: String,
    /// The state after (`running`, `fatal`, ...), or `healthy`/`unhealthy`.
    pub to: String,
    /// Why, in words: an exit status or signal, a probe's message, the
    /// request that caused it (`ctl stop`, `reload`, `autostart`, `shutdown`).
    pub reason: String,
    /// The process's PID when it has a live one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// Events left out before this one because the reader was too slow.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub skipped_events: u64,
}

impl StateEvent {
    /// The wire form of a transition (what `ctl events` and hooks are given).
    pub fn of(transition: &Transition) -> StateEvent {
        let (from, to) = transition.change.names();
        StateEvent {
            time: humantime::format_rfc3339_millis(transition.at).to_string(),
            name: transition.process.clone(),
            program: transition.program.clone(),
            from: from.to_string(),
            to: to.to_string(),
            reason: transition.cause.to_string(),
            pid: transition.pid.map(|p| p.as_raw()),
            skipped_events: 0,
        }
    }
}

impl StateEvent {
    /// The wire form of a change of standing with the load balancers:
    /// `in`, `draining` or `out` on both sides, and the supervisor's reason
    /// after `registration: `.
    pub fn of_standing(change: &crate::register::StandingChange) -> StateEvent {
        StateEvent {
            time: humantime::format_rfc3339_millis(change.at).to_string(),
            name: change.process.clone(),
            program: change.program.clone(),
            from: change.from.name().to_string(),
            to: change.to.name().to_string(),
            reason: format!("registration: {}", change.reason),
            pid: change.pid.map(|p| p as i32),
            skipped_events: 0,
        }
    }
}

impl std::fmt::Display for StateEvent {
    /// One line of `ctl events`: `TIME NAME FROM -> TO (REASON)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {} -> {}",
            self.time, self.name, self.from, self.to
        )?;
        if !self.reason.is_empty() {
            write!(f, " ({})", self.reason)?;
        }
        Ok(())
    }
}

/// The first line of an `events` stream: the names being followed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventsStart {
    /// The processes selected now (programs added later by a reload are
    /// followed too when their program was named, or when nothing was).
    pub following: Vec<String>,
}

/// Parses one request line, checking the version.
pub fn parse_request(line: &[u8]) -> Result<Request, Reply> {
    let mut value: serde_json::Value = serde_json::from_slice(line)
        .map_err(|e| Reply::error(ErrorKind::BadRequest, format!("not a JSON object: {e}")))?;
    // serde_json keeps the last of two equal keys: `{"cmd":"pid","cmd":"shutdown"}`
    // would shut down a daemon that a log of the request says was asked its pid.
    serde::de::DeserializeSeed::deserialize(
        NoDuplicateKeys,
        &mut serde_json::Deserializer::from_slice(line),
    )
    .map_err(|e| Reply::error(ErrorKind::BadRequest, format!("invalid request: {e}")))?;
    let object = value
        .as_object_mut()
        .ok_or_else(|| Reply::error(ErrorKind::BadRequest, "request must be a JSON object"))?;
    if let Some(v) = object.remove("v") {
        if v.as_u64() != Some(VERSION) {
            return Err(Reply::error(
                ErrorKind::UnsupportedVersion,
                format!("protocol version {v} is not supported (this daemon speaks {VERSION})"),
            ));
        }
    }
    serde_json::from_value(value)
        .map_err(|e| Reply::error(ErrorKind::BadRequest, format!("invalid request: {e}")))
}

/// Walks a JSON document and fails on the first object that has a key twice
/// (compared after unescaping), at any depth. serde_json bounds the depth;
/// the document, the size of a request line.
struct NoDuplicateKeys;

impl<'de> serde::de::DeserializeSeed<'de> for NoDuplicateKeys {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for NoDuplicateKeys {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(NoDuplicateKeys)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            map.next_value_seed(NoDuplicateKeys)?;
            if let Some(key) = seen.replace(key) {
                return Err(serde::de::Error::custom(format!("duplicate key {key:?}")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_requests_with_defaults() {
        assert_eq!(
            parse_request(br#"{"v":1,"cmd":"start","names":["web"]}"#).unwrap(),
            Request::Start {
                names: vec!["web".into()],
                wait: true
            }
        );
        assert_eq!(
            parse_request(br#"{"cmd":"status"}"#).unwrap(),
            Request::Status { names: vec![] }
        );
        assert_eq!(
            parse_request(br#"{"cmd":"pid"}"#).unwrap(),
            Request::Pid { name: None }
        );
    }

    #[test]
    fn rejects_bad_requests_with_a_kind() {
        let kind = |line: &[u8]| match parse_request(line) {
            Err(Reply::Error(body)) => body.kind,
            other => panic!("expected an error, got {other:?}"),
        };
        assert_eq!(kind(b"garbage"), ErrorKind::BadRequest);
        assert_eq!(kind(b"[1,2]"), ErrorKind::BadRequest);
        assert_eq!(kind(br#"{"cmd":"explode"}"#), ErrorKind::BadRequest);
        assert_eq!(kind(br#"{"cmd":"start"}"#), ErrorKind::BadRequest);
        assert_eq!(
            kind(br#"{"cmd":"status","bogus":1}"#),
            ErrorKind::BadRequest
        );
        assert_eq!(
            kind(br#"{"v":2,"cmd":"status"}"#),
            ErrorKind::UnsupportedVersion
        );
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        for line in [
            &br#"{"cmd":"pid","cmd":"shutdown"}"#[..],
            br#"{"v":1,"cmd":"status","v":1}"#,
            // Equal once unescaped.
            br#"{"cmd":"pid","c\u006dd":"shutdown"}"#,
            br#"{"cmd":"start","names":["a"],"names":["b"]}"#,
            br#"{"cmd":"status","names":[{"x":1,"x":2}]}"#,
            br#"{"cmd":"tail","name":"a","extra":{"deep":{"k":1,"k":1}}}"#,
        ] {
            match parse_request(line) {
                Err(Reply::Error(body)) => {
                    assert_eq!(body.kind, ErrorKind::BadRequest, "{body:?}");
                    assert!(body.message.contains("duplicate key"), "{body:?}");
                }
                other => panic!(
                    "{}: expected a duplicate key error, got {other:?}",
                    String::from_utf8_lossy(line)
                ),
            }
        }
        // The same key in different objects is no duplicate.
        let mut siblings =
            serde_json::Deserializer::from_slice(br#"{"a":{"k":1},"b":[{"k":1},{"k":2}]}"#);
        serde::de::DeserializeSeed::deserialize(NoDuplicateKeys, &mut siblings)
            .expect("keys repeated only across objects");
    }

    #[test]
    fn replies_have_the_documented_shape() {
        let ok = serde_json::to_string(&Reply::ok(PidReply { pid: Some(7) })).unwrap();
        assert_eq!(ok, r#"{"ok":{"pid":7}}"#);
        let err = serde_json::to_string(&Reply::error(ErrorKind::UnknownName, "x")).unwrap();
        assert_eq!(err, r#"{"error":{"kind":"unknown_name","message":"x"}}"#);
    }
}
