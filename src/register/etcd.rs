//! etcd v3 through its JSON gateway (SPEC §5.2): one lease per program, kept
//! alive while minder runs, and one key per process that is in, attached to
//! it. If minder dies, the lease expires and the keys go with it.
//!
//! The gateway (`/v3/...`, see docs/registration-groundwork.md §4) takes and
//! gives keys and values in base64, int64 fields as JSON strings, and leaves
//! out fields whose value is zero: a keep-alive reply without `TTL` is how a
//! lost lease shows.
//!
//! Spoken with minder's own [`Client`] (HTTP/1.1, `http://` or `https://`
//! with the `[register.etcd]` TLS keys), which keeps the connection to the
//! member between the few small calls made every `ttl`/3. An HTTP client
//! crate (reqwest with rustls) did the same first, and grew the binary from
//! 3.6 to 6.2 MB and minder's memory with 1000 programs by 1.5 MiB, etcd
//! configured or not (docs/benchmarks.md, "Load balancers").

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use super::{Applied, Member, Standing};
use crate::config::EtcdConfig;
use crate::http::{Client, TlsSettings};

/// Bound of every request, connect included (the backend contract's 1 s).
const TIMEOUT: Duration = Duration::from_secs(1);

/// A process registered with etcd's v3 JSON gateway.
pub struct Etcd {
    config: EtcdConfig,
    gateway: Gateway,
    lease: Option<Lease>,
    /// Keys that may be in etcd on our lease, by process name.
    put: BTreeMap<String, Put>,
    /// The last `members` given to apply, for a re-put after a lost lease.
    members: Vec<Member>,
}

struct Lease {
    id: String,
    renew_at: Instant,
    /// Time between keep-alives.
    every: Duration,
}

struct Put {
    key: String,
    /// What was stored; `None` when unknown (a request failed half-way or
    /// etcd was out of reach since), so the next apply sends it again.
    value: Option<String>,
}

/// Why a request did not do its work.
enum Failure {
    /// No endpoint answered usefully (connection, timeout, 5xx); the text
    /// names the last one tried.
    Unreachable(String),
    /// 404 with gRPC code 5: the lease is gone (expired or revoked).
    LeaseLost(String),
    /// etcd refused the request.
    Rejected(String),
}

impl Failure {
    fn text(self) -> String {
        match self {
            Failure::Unreachable(t) | Failure::LeaseLost(t) | Failure::Rejected(t) => t,
        }
    }
}

impl Etcd {
    /// A backend for one program; nothing is sent before the first apply.
    pub fn new(config: EtcdConfig) -> Etcd {
        let gateway = Gateway::new(config.endpoints.clone(), config.tls.settings());
        Etcd {
            config,
            gateway,
            lease: None,
            put: BTreeMap::new(),
            members: Vec::new(),
        }
    }

    /// Puts the key of every member that is in and deletes the others' (see
    /// the contract in `register`); one result per process concerned.
    pub async fn apply(&mut self, members: &[Member]) -> Applied {
        let gone: BTreeSet<String> = self
            .members
            .iter()
            .map(|m| m.registration.name.clone())
            .filter(|n| !members.iter().any(|m| &m.registration.name == n))
            .collect();
        self.members = members.to_vec();
        self.converge(&gone).await
    }

    /// When the lease's next keep-alive is due, while there is a lease.
    pub fn next_timer(&self) -> Option<Instant> {
        self.lease.as_ref().map(|l| l.renew_at)
    }

    /// Renews the lease when due. Nothing to report when it was renewed; on a
    /// lost lease, a new one and every member again; on a failure, an error
    /// for each member that is in.
    pub async fn on_timer(&mut self) -> Applied {
        let Some(lease) = &self.lease else {
            return Vec::new();
        };
        if Instant::now() < lease.renew_at {
            return Vec::new();
        }
        let id = lease.id.clone();
        let reply = self
            .gateway
            .call("/v3/lease/keepalive", &json!({ "ID": id }))
            .await;
        let failure = match reply {
            Ok(reply) => {
                // One message per line; `result` holds it. No TTL: the lease is gone.
                let ttl = int(reply.get("result").and_then(|r| r.get("TTL")));
                if ttl > 0 {
                    if let Some(lease) = &mut self.lease {
                        lease.renew_at = Instant::now() + lease.every;
                    }
                    return Vec::new();
                }
                None
            }
            Err(Failure::LeaseLost(_)) => None,
            Err(e) => Some(e.text()),
        };
        match failure {
            None => {
                tracing::warn!("etcd lease {id} was lost: granting a new one");
                self.forget_lease();
                self.converge(&BTreeSet::new()).await
            }
            Some(error) => {
                // etcd may come back without our keys (restarted, or the
                // lease expired meanwhile): the next apply sends them again.
                self.forget_values();
                if let Some(lease) = &mut self.lease {
                    lease.renew_at = Instant::now() + lease.every.min(TIMEOUT);
                }
                self.members
                    .iter()
                    .filter(|m| m.standing == Standing::In)
                    .map(|m| (m.registration.name.clone(), Err(error.clone())))
                    .collect()
            }
        }
    }

    /// Revokes the lease, which deletes every key on it at once. Bounded by
    /// 1 s; a failure is only logged (the lease then expires by itself).
    pub async fn close(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        self.put.clear();
        let body = json!({ "ID": lease.id });
        let revoke = self.gateway.call("/v3/lease/revoke", &body);
        match tokio::time::timeout(TIMEOUT, revoke).await {
            Ok(Ok(_)) | Ok(Err(Failure::LeaseLost(_))) => {}
            Ok(Err(e)) => tracing::warn!("etcd: revoking lease {}: {}", lease.id, e.text()),
            Err(_) => tracing::warn!(
                "etcd: revoking lease {}: no answer within {TIMEOUT:?}",
                lease.id
            ),
        }
    }

    fn forget_lease(&mut self) {
        // The keys on a lost lease are gone with it.
        self.lease = None;
        self.put.clear();
    }

    fn forget_values(&mut self) {
        for put in self.put.values_mut() {
            put.value = None;
        }
    }

    /// `gone`: processes of the previous members missing from the current ones.
    async fn converge(&mut self, gone: &BTreeSet<String>) -> Applied {
        if let Some(applied) = self.converge_once(gone).await {
            return applied;
        }
        self.forget_lease();
        if let Some(applied) = self.converge_once(gone).await {
            return applied;
        }
        // A lease lost twice in a row: leave it to the caller's retry.
        self.forget_lease();
        let error = format!("etcd: lease of {:?} lost twice in a row", self.config.key);
        self.members
            .iter()
            .map(|m| {
                let result = match m.standing {
                    Standing::In => Err(error.clone()),
                    Standing::Draining | Standing::Out => Ok(()),
                };
                (m.registration.name.clone(), result)
            })
            .chain(gone.iter().map(|n| (n.clone(), Ok(()))))
            .collect()
    }

    /// None when a put found the lease gone: everything must start over.
    async fn converge_once(&mut self, gone: &BTreeSet<String>) -> Option<Applied> {
        let members = self.members.clone();
        let mut applied = Vec::new();
        // Once no endpoint answers, the rest fails at once instead of
        // waiting for each request's timeout again.
        let mut down: Option<String> = None;
        for m in &members {
            let name = &m.registration.name;
            let result = match m.standing {
                Standing::In => self.put_member(m, &down).await,
                Standing::Draining | Standing::Out => self.delete(name, &down).await,
            };
            match result {
                Ok(()) => applied.push((name.clone(), Ok(()))),
                Err(Failure::LeaseLost(_)) => return None,
                Err(Failure::Unreachable(e)) => {
                    self.forget_values();
                    down = Some(e.clone());
                    applied.push((name.clone(), Err(e)));
                }
                Err(Failure::Rejected(e)) => applied.push((name.clone(), Err(e))),
            }
        }
        let mut removed = gone.clone();
        removed.extend(
            self.put
                .keys()
                .filter(|n| !members.iter().any(|m| &m.registration.name == *n))
                .cloned(),
        );
        for name in removed {
            let result = self.delete(&name, &down).await.map_err(|e| {
                if let Failure::Unreachable(e) = &e {
                    down = Some(e.clone());
                }
                e.text()
            });
            applied.push((name, result));
        }
        Some(applied)
    }

    async fn put_member(&mut self, m: &Member, down: &Option<String>) -> Result<(), Failure> {
        let name = &m.registration.name;
        let Some(key) = m.registration.key.clone() else {
            return Err(Failure::Rejected(format!(
                "etcd: no key for {name} (no [register.etcd] in its config)"
            )));
        };
        let value = record(m);
        if let Some(put) = self.put.get(name) {
            if put.key == key && put.value.as_deref() == Some(value.as_str()) {
                return Ok(());
            }
        }
        if let Some(e) = down {
            return Err(Failure::Unreachable(e.clone()));
        }
        if let Some(old) = self.put.get(name).map(|p| p.key.clone()) {
            if old != key {
                self.delete(name, down).await?;
            }
        }
        let lease = self.lease_id().await?;
        // From here the key may be in etcd whatever the answer.
        self.put.insert(
            name.clone(),
            Put {
                key: key.clone(),
                value: None,
            },
        );
        let body = json!({
            "key": base64_encode(key.as_bytes()),
            "value": base64_encode(value.as_bytes()),
            "lease": lease,
        });
        self.gateway.call("/v3/kv/put", &body).await?;
        self.put.insert(
            name.clone(),
            Put {
                key,
                value: Some(value),
            },
        );
        Ok(())
    }

    /// Deletes the key of `name` if it may have been put.
    async fn delete(&mut self, name: &str, down: &Option<String>) -> Result<(), Failure> {
        let Some(key) = self.put.get(name).map(|p| p.key.clone()) else {
            return Ok(());
        };
        if let Some(e) = down {
            return Err(Failure::Unreachable(e.clone()));
        }
        let body = json!({ "key": base64_encode(key.as_bytes()) });
        self.gateway.call("/v3/kv/deleterange", &body).await?;
        self.put.remove(name);
        Ok(())
    }

    /// The lease, granted now if there is none.
    async fn lease_id(&mut self) -> Result<String, Failure> {
        if let Some(lease) = &self.lease {
            return Ok(lease.id.clone());
        }
        let ttl = self.config.ttl.as_secs().max(1);
        let reply = self
            .gateway
            .call("/v3/lease/grant", &json!({ "TTL": ttl }))
            .await?;
        let id = match reply.get("ID") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => {
                let error = reply.get("error").and_then(Value::as_str).unwrap_or("");
                return Err(Failure::Rejected(format!(
                    "etcd {}: /v3/lease/grant: no lease ID in the reply {error}",
                    self.gateway.endpoint()
                )));
            }
        };
        // etcd may raise the TTL (its minimum is 2 s): renew by what it granted.
        let granted = match int(reply.get("TTL")) {
            n if n > 0 => Duration::from_secs(n.unsigned_abs()),
            _ => self.config.ttl,
        };
        let every = granted / 3;
        self.lease = Some(Lease {
            id: id.clone(),
            renew_at: Instant::now() + every,
            every,
        });
        Ok(id)
    }
}

/// The stored objects under `prefix` (`minder ctl fleet`), trying
/// `endpoints` in order (`https://` ones trusted as `tls` says).
pub async fn list(
    endpoints: &[String],
    tls: TlsSettings,
    prefix: &str,
) -> Result<Vec<Value>, String> {
    let mut gateway = Gateway::new(endpoints.to_vec(), tls);
    let (key, end) = prefix_range(prefix.as_bytes());
    let body = json!({ "key": base64_encode(&key), "range_end": base64_encode(&end) });
    let reply = gateway
        .call("/v3/kv/range", &body)
        .await
        .map_err(Failure::text)?;
    let kvs = match reply.get("kvs") {
        Some(Value::Array(kvs)) => kvs.as_slice(),
        _ => &[],
    };
    let mut out = Vec::with_capacity(kvs.len());
    for kv in kvs {
        let key = kv
            .get("key")
            .and_then(Value::as_str)
            .and_then(base64_decode)
            .map(|k| String::from_utf8_lossy(&k).into_owned())
            .unwrap_or_default();
        let value = kv.get("value").and_then(Value::as_str).unwrap_or("");
        // Something else stored under the prefix must not hide the rest.
        match base64_decode(value).and_then(|v| serde_json::from_slice(&v).ok()) {
            Some(object) => out.push(object),
            None => tracing::warn!("etcd: {key:?} does not hold a JSON object: skipped"),
        }
    }
    Ok(out)
}

/// The stored object of a process that is in.
fn record(m: &Member) -> String {
    m.record().to_string()
}

/// An int64 of a reply: a string in the gateway's JSON, absent when zero.
fn int(v: Option<&Value>) -> i64 {
    match v {
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

/// `key` and `range_end` of every key starting with `prefix`: the prefix
/// with its last byte below 0xff raised by one (etcd's own rule; `\0` for
/// "no end").
fn prefix_range(prefix: &[u8]) -> (Vec<u8>, Vec<u8>) {
    if prefix.is_empty() {
        return (vec![0], vec![0]);
    }
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return (prefix.to_vec(), end);
        }
    }
    (prefix.to_vec(), vec![0])
}

/// HTTP to the endpoints, the one that answered last tried first.
struct Gateway {
    endpoints: Vec<String>,
    current: usize,
    client: Client,
}

/// One endpoint's outcome: an answer ends the failover, `Next` moves on.
enum Attempt {
    Answer(Result<Value, Failure>),
    Next(String),
}

impl Gateway {
    fn new(endpoints: Vec<String>, tls: TlsSettings) -> Gateway {
        Gateway {
            endpoints,
            current: 0,
            client: Client::new(tls),
        }
    }

    fn endpoint(&self) -> &str {
        self.endpoints
            .get(self.current)
            .map_or("", |e| e.trim_end_matches('/'))
    }

    /// POSTs `body` to `path`, endpoint after endpoint until one answers.
    async fn call(&mut self, path: &str, body: &Value) -> Result<Value, Failure> {
        if self.endpoints.is_empty() {
            return Err(Failure::Unreachable("etcd: no endpoints".to_string()));
        }
        let body = body.to_string();
        let n = self.endpoints.len();
        let mut last = String::new();
        for i in 0..n {
            let at = (self.current + i) % n;
            let base = self.endpoints[at].trim_end_matches('/').to_string();
            match attempt(&self.client, &base, path, &body).await {
                Attempt::Answer(result) => {
                    self.current = at;
                    return result;
                }
                Attempt::Next(error) => last = format!("etcd {base}: {error}"),
            }
        }
        Err(Failure::Unreachable(last))
    }
}

/// Longest reply taken: a `range` of every process of a large fleet fits.
const REPLY_BOUND: usize = 16 << 20;

async fn attempt(client: &Client, base: &str, path: &str, body: &str) -> Attempt {
    let url = format!("{base}{path}");
    let body = Some(("application/json", body.as_bytes()));
    // One byte past the bound tells a reply that is too long.
    let sent = client.request("POST", &url, &[], body, REPLY_BOUND + 1);
    let (status, bytes) = match tokio::time::timeout(TIMEOUT, sent).await {
        Ok(Ok(reply)) if reply.body.len() > REPLY_BOUND => {
            return Attempt::Next(format!("reply longer than {REPLY_BOUND} bytes"))
        }
        Ok(Ok(reply)) => (reply.status, reply.body),
        Ok(Err(e)) => return Attempt::Next(e),
        Err(_) => return Attempt::Next(format!("no answer within {TIMEOUT:?}")),
    };
    let reply = parse_reply(&bytes);
    if (200..300).contains(&status) {
        return Attempt::Answer(reply.ok_or_else(|| {
            Failure::Rejected(format!(
                "etcd {base}: {path}: not a JSON reply: {}",
                excerpt(&bytes)
            ))
        }));
    }
    let code = reply.as_ref().map_or(0, |r| int(r.get("code")));
    let message = reply
        .as_ref()
        .and_then(|r| r.get("message").or_else(|| r.get("error")))
        .and_then(Value::as_str)
        .map_or_else(|| excerpt(&bytes), str::to_string);
    let text = format!("{path}: {status} {message}");
    if status >= 500 {
        return Attempt::Next(text);
    }
    let text = format!("etcd {base}: {text}");
    Attempt::Answer(Err(if status == 404 && code == 5 {
        Failure::LeaseLost(text)
    } else {
        Failure::Rejected(text)
    }))
}

/// A unary reply is one JSON object; the keep-alive stream is one per line,
/// wrapped in `result` (one request object, one line).
fn parse_reply(bytes: &[u8]) -> Option<Value> {
    if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
        return Some(v);
    }
    let line = bytes
        .split(|&b| b == b'\n')
        .find(|l| !l.iter().all(u8::is_ascii_whitespace))?;
    serde_json::from_slice(line).ok()
}

fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_string(),
    }
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding, as the gateway takes keys and values.
fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(BASE64[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The reverse of [`base64_encode`]; `None` on anything else.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes() {
        let v = BASE64.iter().position(|&b| b == c)? as u32;
        acc = acc << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Registration;
    use std::time::UNIX_EPOCH;

    #[test]
    fn base64_matches_the_gateway() {
        // Pairs seen in docs/registration-groundwork.md.
        assert_eq!(
            base64_encode(b"/minder/services/"),
            "L21pbmRlci9zZXJ2aWNlcy8="
        );
        assert_eq!(base64_encode(b"/d/a"), "L2QvYQ==");
        assert_eq!(base64_encode(b""), "");
        for n in 0..8 {
            let data: Vec<u8> = (0..n).map(|i| (i * 77 + 255) as u8).collect();
            assert_eq!(base64_decode(&base64_encode(&data)), Some(data));
        }
        assert_eq!(base64_decode("not base64!"), None);
    }

    #[test]
    fn prefix_range_raises_the_last_byte() {
        assert_eq!(
            prefix_range(b"/minder/services/"),
            (b"/minder/services/".to_vec(), b"/minder/services0".to_vec())
        );
        assert_eq!(prefix_range(b"a\xff"), (b"a\xff".to_vec(), b"b".to_vec()));
        assert_eq!(prefix_range(b"\xff"), (b"\xff".to_vec(), vec![0]));
        assert_eq!(prefix_range(b""), (vec![0], vec![0]));
    }

    #[test]
    fn int64_fields_are_strings_or_absent() {
        let reply: Value =
            serde_json::from_str(r#"{"ID":"9041999063492117254","TTL":"10"}"#).expect("valid JSON");
        assert_eq!(int(reply.get("TTL")), 10);
        assert_eq!(int(reply.get("ID")), 9041999063492117254);
        assert_eq!(int(reply.get("missing")), 0);
        assert_eq!(int(Some(&json!(7))), 7);
        assert_eq!(int(Some(&json!("x"))), 0);
    }

    #[test]
    fn keepalive_reply_is_read_from_its_first_line() {
        let body = b"{\"result\":{\"ID\":\"1\",\"TTL\":\"10\"}}\n";
        let reply = parse_reply(body).expect("parsed");
        assert_eq!(int(reply["result"].get("TTL")), 10);
        let two = b"{\"result\":{\"ID\":\"1\"}}\n{\"result\":{\"ID\":\"2\"}}\n";
        assert_eq!(parse_reply(two).expect("parsed")["result"]["ID"], "1");
        assert!(parse_reply(b"garbage").is_none());
    }

    #[test]
    fn record_holds_the_spec_fields() {
        let m = Member {
            registration: Registration {
                name: "web:1".into(),
                program: "web".into(),
                instance: 1,
                host: "h1".into(),
                address: "127.0.0.1:8081".into(),
                server: None,
                key: Some("/minder/services/web/h1/web:1".into()),
            },
            standing: Standing::In,
            pid: Some(42),
            since: Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
        };
        let v: Value = serde_json::from_str(&record(&m)).expect("JSON");
        assert_eq!(
            v,
            json!({"name": "web:1", "program": "web", "instance": 1, "host": "h1",
                   "address": "127.0.0.1:8081", "pid": 42, "since": "2023-11-14T22:13:20Z"})
        );
        let none = Member {
            pid: None,
            since: None,
            ..m
        };
        let v: Value = serde_json::from_str(&record(&none)).expect("JSON");
        assert_eq!(v["pid"], Value::Null);
        assert_eq!(v["since"], Value::Null);
    }
}
