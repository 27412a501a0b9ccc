//! The sd_notify datagram format: what a child says on `NOTIFY_SOCKET`.

use nix::unistd::Pid;

/// One datagram from a child on `NOTIFY_SOCKET` (sd_notify protocol), parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NotifyMessage {
    /// `READY=1`.
    pub ready: bool,
    /// `STATUS=...`.
    pub status: Option<String>,
    /// `MAINPID=...`: the program forked and this is now its main process.
    pub main_pid: Option<Pid>,
    /// `WATCHDOG=1`.
    pub watchdog: bool,
    /// `WATCHDOG=trigger`: the program asks to be treated as hung.
    pub watchdog_trigger: bool,
}

impl NotifyMessage {
    /// Parses `KEY=VALUE` lines; unknown keys are ignored, as systemd does.
    pub fn parse(datagram: &str) -> NotifyMessage {
        let mut m = NotifyMessage::default();
        for line in datagram.lines() {
            match line.split_once('=') {
                Some(("READY", "1")) => m.ready = true,
                Some(("STATUS", text)) => m.status = Some(text.to_string()),
                Some(("MAINPID", pid)) => {
                    m.main_pid = pid
                        .trim()
                        .parse::<i32>()
                        .ok()
                        .filter(|p| *p > 0)
                        .map(Pid::from_raw)
                }
                Some(("WATCHDOG", "1")) => m.watchdog = true,
                Some(("WATCHDOG", "trigger")) => m.watchdog_trigger = true,
                _ => {}
            }
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_messages_parse_like_sd_notify() {
        let m = NotifyMessage::parse("READY=1\nSTATUS=a=b\nMAINPID=42\nWATCHDOG=1\nX=1");
        assert!(m.ready && m.watchdog && !m.watchdog_trigger);
        assert_eq!(m.status.as_deref(), Some("a=b"));
        assert_eq!(m.main_pid, Some(Pid::from_raw(42)));
        assert_eq!(NotifyMessage::parse("MAINPID=0").main_pid, None);
        assert!(NotifyMessage::parse("WATCHDOG=trigger").watchdog_trigger);
    }
}
