//! `[[supervisor.hooks]]`: a command or a webhook run when a process reaches
//! one of the hook's states.
//!
//! Hooks never hold up supervision: actors publish events on a broadcast
//! channel without waiting, one dispatcher task hands each event to the hooks
//! it matches, and each hook runs its events one at a time, in order, from a
//! bounded queue of its own. A hook that is too slow loses events (logged and
//! counted), a failed run is logged and counted, and neither is ever fatal.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::{HookAction, HookConfig, Secret, Webhook};
use crate::control::protocol::StateEvent;
use crate::metrics::Counters;
use crate::process::{self, Capture, ProcessEnd, Reaper, RunError, SpawnRequest};
use crate::supervisor::{Phase, Transition};

/// Events queued per hook while it is busy; more are dropped and counted.
const HOOK_QUEUE: usize = 64;

/// Webhook attempts per event (the first and its retries).
const WEBHOOK_ATTEMPTS: u32 = 4;

/// Pause before the first webhook retry; doubled before each next one.
const WEBHOOK_BACKOFF: Duration = Duration::from_millis(500);

/// What hooks need from the daemon.
#[derive(Clone)]
pub struct HookContext {
    /// Reaps hook commands.
    pub reaper: Arc<Reaper>,
    /// Counts failures for `/metrics`.
    pub counters: Arc<Counters>,
}

/// The running hooks of one config; replaced as a whole on reload.
pub struct Hooks {
    dispatcher: Option<JoinHandle<()>>,
}

impl Hooks {
    /// No hooks.
    pub fn none() -> Hooks {
        Hooks { dispatcher: None }
    }

    /// Starts the hooks of `configs`, seeing every event sent on `events` from now on.
    pub fn start(
        configs: &[HookConfig],
        transitions: &broadcast::Sender<Arc<Transition>>,
        context: HookContext,
    ) -> Hooks {
        if configs.is_empty() {
            return Hooks::none();
        }
        let workers: Vec<(HookConfig, mpsc::Sender<Arc<StateEvent>>)> = configs
            .iter()
            .enumerate()
            .map(|(index, hook)| {
                let (tx, rx) = mpsc::channel(HOOK_QUEUE);
                tokio::spawn(worker(index, hook.clone(), rx, context.clone()));
                (hook.clone(), tx)
            })
            .collect();
        // Subscribed here, not in the task: no event sent after `start`
        // returns can be missed.
        let rx = transitions.subscribe();
        Hooks {
            dispatcher: Some(tokio::spawn(dispatch(rx, workers, context.counters))),
        }
    }
}

impl Drop for Hooks {
    /// Stops dispatching; runs in progress finish, queued events are dropped.
    fn drop(&mut self) {
        if let Some(task) = self.dispatcher.take() {
            task.abort();
        }
    }
}

/// Whether `hook` wants `event`.
fn matches(hook: &HookConfig, event: &StateEvent) -> bool {
    hook.on.contains(&event.to)
        && (hook.programs.is_empty() || hook.programs.contains(&event.program))
}

/// Runs the hooks of the config in force until the supervisor is gone,
/// starting them afresh when a reload changes them. The first ones are
/// subscribed before this returns, so no transition after it is missed.
pub fn follow(
    mut phase: watch::Receiver<Phase>,
    transitions: broadcast::Sender<Arc<Transition>>,
    context: HookContext,
) -> JoinHandle<()> {
    let mut configs = phase.borrow_and_update().config.supervisor.hooks.clone();
    let mut hooks = Hooks::start(&configs, &transitions, context.clone());
    tokio::spawn(async move {
        while phase.changed().await.is_ok() {
            let now = phase.borrow_and_update().config.supervisor.hooks.clone();
            if now != configs {
                configs = now;
                hooks = Hooks::start(&configs, &transitions, context.clone());
            }
        }
        drop(hooks);
    })
}

async fn dispatch(
    mut events: broadcast::Receiver<Arc<Transition>>,
    workers: Vec<(HookConfig, mpsc::Sender<Arc<StateEvent>>)>,
    counters: Arc<Counters>,
) {
    loop {
        let event = match events.recv().await {
            Ok(transition) => Arc::new(StateEvent::of(&transition)),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!("hooks missed {n} state changes: too many at once");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        for (index, (hook, queue)) in workers.iter().enumerate() {
            if !matches(hook, &event) {
                continue;
            }
            if queue.try_send(Arc::clone(&event)).is_err() {
                match hook.action {
                    HookAction::Webhook(_) => counters.webhook_dropped(index),
                    HookAction::Command(_) => counters.hook_failed(index),
                }
                tracing::warn!(
                    "hook {index} ({}): busy, dropping the event {} {} -> {}",
                    describe(&hook.action),
                    event.name,
                    event.from,
                    event.to
                );
            }
        }
    }
}

async fn worker(
    index: usize,
    hook: HookConfig,
    mut queue: mpsc::Receiver<Arc<StateEvent>>,
    context: HookContext,
) {
    // A webhook's client, kept (with its connection) for the hook's life:
    // one per set of hooks, made again on a reload.
    let client = crate::http::Client::new(match &hook.action {
        HookAction::Webhook(webhook) => webhook.tls.settings(),
        HookAction::Command(_) => Default::default(),
    });
    while let Some(event) = queue.recv().await {
        let result = match &hook.action {
            HookAction::Command(argv) => run_command(&hook, argv, &event, &context.reaper).await,
            HookAction::Webhook(webhook) => post(webhook, &client, &event, hook.timeout).await,
        };
        let action = describe(&hook.action);
        match result {
            Ok(()) => tracing::debug!(
                "hook {index} ({action}) ran for {} {} -> {}",
                event.name,
                event.from,
                event.to
            ),
            Err(why) => {
                context.counters.hook_failed(index);
                tracing::warn!(
                    "hook {index} ({action}) failed for {} {} -> {}: {why}",
                    event.name,
                    event.from,
                    event.to
                );
            }
        }
    }
}

/// How a hook is named in minder's log.
fn describe(action: &HookAction) -> String {
    match action {
        HookAction::Command(argv) => argv.first().cloned().unwrap_or_default(),
        HookAction::Webhook(webhook) => webhook.url.clone(),
    }
}

/// The `MINDER_EVENT_*` variables of a command hook.
fn variables(event: &StateEvent) -> Vec<(String, String)> {
    let mut vars = vec![
        ("MINDER_EVENT_TIME", event.time.clone()),
        ("MINDER_EVENT_NAME", event.name.clone()),
        ("MINDER_EVENT_PROGRAM", event.program.clone()),
        ("MINDER_EVENT_FROM", event.from.clone()),
        ("MINDER_EVENT_TO", event.to.clone()),
        ("MINDER_EVENT_REASON", event.reason.clone()),
    ];
    if let Some(pid) = event.pid {
        vars.push(("MINDER_EVENT_PID", pid.to_string()));
    }
    vars.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// Runs a command hook: the event as JSON on stdin, `MINDER_EVENT_*` in the
/// environment, its output logged, its group killed at `timeout`.
async fn run_command(
    hook: &HookConfig,
    argv: &[String],
    event: &StateEvent,
    reaper: &Reaper,
) -> Result<(), String> {
    let timeout = hook.timeout;
    let stdin = event_on_a_pipe(event)?;
    let request = SpawnRequest {
        directory: hook.directory.clone(),
        environment: variables(event),
        stdin: Some(std::os::fd::AsRawFd::as_raw_fd(&stdin)),
        ..SpawnRequest::command(argv.to_vec())
    };
    let (end, output) = match process::run_captured(request, Capture::Both, timeout, reaper).await {
        Ok(done) => done,
        Err(RunError::TimedOut) => {
            return Err(format!(
                "killed after {}",
                crate::text::short_duration(timeout)
            ))
        }
        Err(e) => return Err(e.to_string()),
    };
    drop(stdin);
    let program = argv.first().map(String::as_str).unwrap_or_default();
    for line in output.lines().filter(|l| !l.trim().is_empty()) {
        tracing::info!("hook {program}: {line}");
    }
    match end {
        ProcessEnd::Exited(0) => Ok(()),
        other => Err(other.to_string()),
    }
}

/// A pipe's read end holding the event as one JSON line (written whole:
/// an event is far smaller than a pipe's buffer).
fn event_on_a_pipe(event: &StateEvent) -> Result<std::os::fd::OwnedFd, String> {
    use nix::fcntl::OFlag;
    let mut json = serde_json::to_vec(event).map_err(|e| e.to_string())?;
    json.push(b'\n');
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
        .map_err(|e| format!("pipe: {}", e.desc()))?;
    let mut rest = json.as_slice();
    while !rest.is_empty() {
        match nix::unistd::write(&write, rest) {
            Ok(n) => rest = &rest[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                return Err(format!(
                    "writing the event to the hook's stdin: {}",
                    e.desc()
                ))
            }
        }
    }
    Ok(read)
}

/// The header a signed webhook request carries.
const SIGNATURE_HEADER: &str = "X-Minder-Signature";

/// `X-Minder-Signature`'s value for `body`: `sha256=` and the lower-case hex
/// of HMAC-SHA256 (RFC 2104) of the body's exact bytes, keyed with `secret`.
fn signature(secret: &Secret, body: &[u8]) -> String {
    use hmac::Mac;
    use std::fmt::Write;
    // HMAC takes a key of any length (a longer one is hashed first).
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut text = String::with_capacity("sha256=".len() + 2 * digest.len());
    text.push_str("sha256=");
    for byte in digest {
        let _ = write!(text, "{byte:02x}");
    }
    text
}

/// POSTs the event (signed when the hook has a secret) through the hook's
/// `client` (its connection kept between events), retrying a failed attempt
/// with a growing pause. Every attempt sends the same bytes.
async fn post(
    webhook: &Webhook,
    client: &crate::http::Client,
    event: &StateEvent,
    timeout: Duration,
) -> Result<(), String> {
    let url = webhook.url.as_str();
    let body = serde_json::to_vec(event).map_err(|e| e.to_string())?;
    let signed = webhook
        .secret
        .as_ref()
        .map(|secret| signature(secret, &body));
    let headers: Vec<(&str, &str)> = signed
        .iter()
        .map(|value| (SIGNATURE_HEADER, value.as_str()))
        .collect();
    let mut pause = WEBHOOK_BACKOFF;
    let mut last = String::new();
    for attempt in 1..=WEBHOOK_ATTEMPTS {
        let body = Some(("application/json", body.as_slice()));
        let once = client.request("POST", url, &headers, body, 0);
        let sent = tokio::time::timeout(timeout, once).await;
        last = match sent {
            Ok(Ok(response)) if (200..300).contains(&response.status) => return Ok(()),
            Ok(Ok(response)) => format!("POST {url}: {}", response.status),
            Ok(Err(why)) => format!("POST {url}: {why}"),
            Err(_) => format!(
                "POST {url}: timed out after {}",
                crate::text::short_duration(timeout)
            ),
        };
        if attempt < WEBHOOK_ATTEMPTS {
            tracing::debug!("webhook attempt {attempt} failed: {last}; retrying");
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
    }
    Err(format!("{last} (after {WEBHOOK_ATTEMPTS} attempts)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(program: &str, to: &str) -> StateEvent {
        StateEvent {
            time: "2026-01-01T00:00:00.000Z".into(),
            name: format!("{program}:0"),
            program: program.into(),
            from: "running".into(),
            to: to.into(),
            reason: "exited with status 1".into(),
            pid: None,
            skipped_events: 0,
        }
    }

    #[test]
    fn hooks_match_by_target_state_and_program() {
        let hook = HookConfig {
            on: vec!["fatal".into(), "unhealthy".into()],
            programs: vec!["web".into()],
            action: HookAction::Command(vec!["x".into()]),
            timeout: Duration::from_secs(1),
            directory: "/".into(),
        };
        assert!(matches(&hook, &event("web", "fatal")));
        assert!(matches(&hook, &event("web", "unhealthy")));
        assert!(!matches(&hook, &event("web", "backoff")));
        assert!(!matches(&hook, &event("db", "fatal")));
        let any = HookConfig {
            programs: vec![],
            ..hook
        };
        assert!(matches(&any, &event("db", "fatal")));
    }

    /// A secret holding `key`, as `secret_file` would give.
    fn secret(key: &[u8]) -> Secret {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(file.path(), key).expect("write");
        let text = format!(
            "[[supervisor.hooks]]\non = [\"fatal\"]\nwebhook = \"http://127.0.0.1:9/\"\nsecret_file = {:?}\n",
            file.path().display().to_string()
        );
        let config = crate::config::parse_str(
            &text,
            std::path::Path::new("/cfg/minder.toml"),
            &crate::config::Defaults {
                socket: "/s".into(),
                log_dir: "/l".into(),
            },
        )
        .expect("config");
        match &config.supervisor.hooks[0].action {
            HookAction::Webhook(webhook) => webhook.secret.clone().expect("a secret"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_signature_is_hmac_sha256_in_lower_case_hex() {
        // RFC 4231, test case 2: pins the primitive.
        assert_eq!(
            signature(&secret(b"Jefe"), b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // The key as read from a file: its trailing newline is not part of it.
        assert_eq!(
            signature(&secret(b"Jefe\n"), b"what do ya want for nothing?"),
            signature(&secret(b"Jefe"), b"what do ya want for nothing?"),
        );
    }

    /// A server taking `replies.len()` requests, answering each with its
    /// status; returns the URL and the requests as received.
    async fn recording_server(
        replies: Vec<u16>,
    ) -> (String, tokio::task::JoinHandle<Vec<Vec<u8>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let mut requests = Vec::new();
            for status in replies {
                let (mut conn, _) = listener.accept().await.unwrap();
                let mut request = Vec::new();
                let mut chunk = [0u8; 4096];
                // The head, then the body up to its Content-Length.
                loop {
                    let n = conn.read(&mut chunk).await.unwrap();
                    assert!(n > 0, "request cut: {request:?}");
                    request.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&request).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length: usize = text
                            .lines()
                            .find_map(|l| l.strip_prefix("Content-Length: "))
                            .unwrap()
                            .parse()
                            .unwrap();
                        if request.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                let reply = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
                conn.write_all(reply.as_bytes()).await.unwrap();
                requests.push(request);
            }
            requests
        });
        (url, server)
    }

    #[tokio::test]
    async fn every_attempt_sends_the_same_signed_bytes() {
        let (url, server) = recording_server(vec![503, 200]).await;
        let key = secret(b"hook key");
        let webhook = Webhook {
            url,
            secret: Some(key.clone()),
            tls: Default::default(),
        };
        post(
            &webhook,
            &crate::http::Client::new(Default::default()),
            &event("web", "fatal"),
            Duration::from_secs(5),
        )
        .await
        .expect("delivered on the retry");
        let requests = server.await.unwrap();
        assert_eq!(requests[0], requests[1], "a retry sends the same bytes");
        let text = String::from_utf8(requests[0].clone()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert_eq!(
            body.as_bytes(),
            serde_json::to_vec(&event("web", "fatal")).unwrap()
        );
        let header = head
            .lines()
            .find_map(|l| l.strip_prefix("X-Minder-Signature: "))
            .expect("signature header");
        assert_eq!(header, signature(&key, body.as_bytes()));
    }

    #[tokio::test]
    async fn without_a_secret_nothing_is_signed() {
        let (url, server) = recording_server(vec![200]).await;
        let webhook = Webhook {
            url,
            secret: None,
            tls: Default::default(),
        };
        post(
            &webhook,
            &crate::http::Client::new(Default::default()),
            &event("web", "fatal"),
            Duration::from_secs(5),
        )
        .await
        .expect("delivered");
        let text = String::from_utf8(server.await.unwrap().remove(0)).unwrap();
        assert!(!text.contains("X-Minder-Signature"), "{text}");
    }

    #[test]
    fn variables_carry_the_event() {
        let mut e = event("web", "fatal");
        e.pid = Some(42);
        let vars = variables(&e);
        let get = |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("MINDER_EVENT_NAME"), Some("web:0"));
        assert_eq!(get("MINDER_EVENT_PROGRAM"), Some("web"));
        assert_eq!(get("MINDER_EVENT_FROM"), Some("running"));
        assert_eq!(get("MINDER_EVENT_TO"), Some("fatal"));
        assert_eq!(get("MINDER_EVENT_REASON"), Some("exited with status 1"));
        assert_eq!(get("MINDER_EVENT_PID"), Some("42"));
        assert_eq!(get("MINDER_EVENT_TIME"), Some("2026-01-01T00:00:00.000Z"));
    }
}
