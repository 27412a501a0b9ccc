//! `status` as the wire shows it: made here, from the statuses the
//! supervisor publishes, at the moment of the request.

use std::collections::BTreeMap;
use std::time::Instant;

use super::protocol::{DrainingProcess, LastProbe, ProcessInfo, StatusReply};
use crate::register::{Board, ProcessBoard};
use crate::supervisor::state::{Retiring, State};
use crate::supervisor::ProcessStatus;
use crate::text::short_duration;

/// The `status` reply for these processes, with what their load balancers
/// show of them and what they use now.
pub fn reply(statuses: &[ProcessStatus], board: &Board) -> StatusReply {
    let now = tokio::time::Instant::now().into_std();
    let usage = ProcessStatus::usage(statuses);
    StatusReply {
        processes: statuses
            .iter()
            .zip(usage)
            .map(|(s, usage)| ProcessInfo {
                register: board.process(&s.name).map(|p| register_field(&p)),
                cpu_secs: usage.cpu_secs,
                memory_bytes: usage.memory_bytes,
                ..process_info(s, now)
            })
            .collect(),
    }
}

/// `register`: each backend's `"ok"` or last error.
fn register_field(process: &ProcessBoard) -> BTreeMap<String, String> {
    process
        .backends
        .iter()
        .map(|(backend, result)| {
            let shown = match result {
                Ok(()) => "ok".to_string(),
                Err(e) => e.clone(),
            };
            (backend.name().to_string(), shown)
        })
        .collect()
}

/// The old process of a rolling restart, as its successor's entry lists it.
fn draining_info(old: &Retiring, now: Instant) -> DrainingProcess {
    let description = match old.stop_sent {
        None => "serving until its replacement is ready".to_string(),
        Some(_) if old.killed => "SIGKILL sent; its replacement is ready".to_string(),
        Some(sent) => format!(
            "stop signal sent {} ago; its replacement is ready",
            short_duration(now.saturating_duration_since(sent))
        ),
    };
    DrainingProcess {
        pid: old.pid.as_raw(),
        uptime_secs: now.saturating_duration_since(old.started).as_secs_f64(),
        description,
    }
}

/// The `status` entry of one process (with its draining predecessor, if any).
pub fn process_info(status: &ProcessStatus, now: Instant) -> ProcessInfo {
    let next_start = status.state.next_start_in(now);
    let description = match status.state {
        State::Backoff { .. } => {
            let mut text = status.description.to_string();
            if !text.is_empty() {
                text.push_str(&format!(
                    " {} ago; ",
                    short_duration(now.saturating_duration_since(status.changed))
                ));
            }
            text.push_str("next try in ");
            text.push_str(&short_duration(next_start.unwrap_or_default()));
            text
        }
        State::Exited | State::Fatal | State::Stopped if !status.description.is_none() => format!(
            "{} {} ago",
            status.description,
            short_duration(now.saturating_duration_since(status.changed))
        ),
        State::Stopping { draining: true, .. } => {
            "out of the load balancers, draining before the stop signal".to_string()
        }
        State::Starting { .. } | State::Running { .. } if status.description.is_none() => {
            status.notify_status.clone().unwrap_or_default()
        }
        _ => status.description.to_string(),
    };
    ProcessInfo {
        name: status.name.clone(),
        program: status.program.clone(),
        instance: status.instance,
        state: status.state.name().to_string(),
        pid: status.state.pid().map(|p| p.as_raw()),
        uptime_secs: status
            .state
            .started()
            .map(|s| now.saturating_duration_since(s).as_secs_f64()),
        health: status.health.name().to_string(),
        restarts: status.restarts,
        last_exit_code: status.last_end.and_then(|e| e.code()),
        last_exit_signal: status.last_end.and_then(|e| e.signal_name()),
        description,
        next_start_secs: next_start.map(|d| d.as_secs_f64()),
        draining: status
            .retiring
            .iter()
            .map(|old| draining_info(old, now))
            .collect(),
        dropped_bytes: status.logs.dropped_bytes(),
        // Measured by `reply`, for every process at once.
        cpu_secs: 0.0,
        memory_bytes: None,
        last_probe: status.last_probe.as_ref().map(|p| LastProbe {
            time: humantime::format_rfc3339_millis(p.at).to_string(),
            ok: p.ok,
            message: p.message.clone(),
            duration_ms: p.duration.as_secs_f64() * 1000.0,
        }),
        register: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::LogStats;
    use crate::process::ProcessEnd;
    use crate::supervisor::state::{Health, Why};
    use nix::unistd::Pid;
    use std::sync::Arc;
    use std::time::Duration;

    fn status(state: State, t0: Instant) -> ProcessStatus {
        ProcessStatus {
            name: "web".into(),
            program: "web".into(),
            instance: 0,
            state,
            restarts: 0,
            oom_kills: 0,
            last_end: None,
            description: Why::None,
            changed: t0,
            stop_epoch: 0,
            logs: Arc::new(LogStats::default()),
            health: Health::None,
            last_probe: None,
            notify_status: None,
            retiring: None,
            probes: None,
            failures: 0,
            backoff_step: 0,
            cgroup: None,
        }
    }

    #[test]
    fn backoff_shows_the_time_to_the_next_attempt() {
        let t0 = Instant::now();
        let now = t0 + Duration::from_secs(2);
        let mut s = status(
            State::Backoff {
                until: t0 + Duration::from_millis(5200),
            },
            t0,
        );
        s.description = Why::Ended(ProcessEnd::Exited(1));
        s.last_end = Some(ProcessEnd::Exited(1));
        let info = process_info(&s, now);
        assert_eq!(info.next_start_secs, Some(3.2));
        assert_eq!(
            info.description,
            "exited with code 1 2s ago; next try in 3.2s"
        );
        let json = serde_json::to_value(&info).unwrap();
        assert_eq!(json["next_start_secs"], serde_json::json!(3.2));
        assert_eq!(json["draining"], serde_json::json!([]));

        // Due but not yet made: zero, never negative.
        let late = process_info(&s, t0 + Duration::from_secs(9));
        assert_eq!(late.next_start_secs, Some(0.0));

        let running = State::Running {
            pid: Pid::from_raw(4242),
            started: t0,
        };
        let info = process_info(&status(running, t0), now);
        assert_eq!(info.next_start_secs, None);
        let json = serde_json::to_value(&info).unwrap();
        assert!(json["next_start_secs"].is_null(), "present, null: {json}");
    }

    #[test]
    fn a_live_process_has_its_usage_and_a_stopped_one_none() {
        let t0 = Instant::now();
        // This test process stands for a running one: it holds memory, and
        // spins until it has used a clock tick of CPU.
        let me = Some(nix::unistd::getpid());
        let deadline = Instant::now() + Duration::from_secs(60);
        while crate::process::usage::measure(me, None).cpu_secs == 0.0 {
            assert!(Instant::now() < deadline, "no CPU time counted");
            std::hint::black_box((0..100_000u64).sum::<u64>());
        }
        let running = State::Running {
            pid: nix::unistd::getpid(),
            started: t0,
        };
        let mut stopped = status(State::Stopped, t0);
        stopped.name = "db".into();
        let reply = reply(&[status(running, t0), stopped], &Board::default());
        let [live, stopped] = &reply.processes[..] else {
            panic!("two entries: {reply:?}");
        };
        assert!(live.cpu_secs > 0.0, "{live:?}");
        assert!(live.memory_bytes.is_some_and(|m| m > 0), "{live:?}");
        assert_eq!((stopped.cpu_secs, stopped.memory_bytes), (0.0, None));
        let json = serde_json::to_value(stopped).unwrap();
        assert_eq!(json["cpu_secs"], serde_json::json!(0.0));
        assert!(json["memory_bytes"].is_null(), "present, null: {json}");
    }

    #[test]
    fn a_retiring_process_is_listed_inside_its_successor() {
        let t0 = Instant::now();
        let mut s = status(
            State::Running {
                pid: Pid::from_raw(4242),
                started: t0 + Duration::from_secs(88),
            },
            t0,
        );
        s.retiring = Some(Retiring {
            pid: Pid::from_raw(4241),
            started: t0,
            stop_sent: None,
            killed: false,
        });
        let now = t0 + Duration::from_millis(90_100);
        let serving = process_info(&s, now);
        assert_eq!(serving.pid, Some(4242));
        assert_eq!(
            serving.draining,
            vec![DrainingProcess {
                pid: 4241,
                uptime_secs: 90.1,
                description: "serving until its replacement is ready".into(),
            }]
        );
        s.retiring = Some(Retiring {
            stop_sent: Some(t0 + Duration::from_millis(87_100)),
            ..s.retiring.unwrap()
        });
        assert_eq!(
            process_info(&s, now).draining[0].description,
            "stop signal sent 3s ago; its replacement is ready"
        );
        s.retiring = Some(Retiring {
            killed: true,
            ..s.retiring.unwrap()
        });
        assert_eq!(
            process_info(&s, now).draining[0].description,
            "SIGKILL sent; its replacement is ready"
        );
    }
}
