//! The sd_notify datagram parser: any bytes a child sends give a message,
//! never a panic; what it says is only what the datagram said.
#![no_main]

use libfuzzer_sys::fuzz_target;
use minder::notify::parse_datagram;

fuzz_target!(|datagram: &[u8]| {
    let message = parse_datagram(datagram);
    let text = String::from_utf8_lossy(datagram);
    if let Some(pid) = message.main_pid {
        // MAINPID=0 or a negative number would make minder signal a process
        // group or every process.
        assert!(pid.as_raw() > 0, "{pid}");
        assert!(text.contains("MAINPID="));
    }
    if let Some(status) = &message.status {
        assert!(!status.contains('\n'), "one line: {status:?}");
        assert!(text.contains("STATUS="));
    }
    if message.ready {
        assert!(text.contains("READY=1"));
    }
    if message.watchdog {
        assert!(text.contains("WATCHDOG=1"));
    }
    if message.watchdog_trigger {
        assert!(text.contains("WATCHDOG=trigger"));
    }
});
