//! The config loader: any text as the main config file gives a `Config` or
//! diagnostics, never a panic, a hang or a huge allocation.
#![no_main]

use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use minder::config::{parse_str, Defaults};

fuzz_target!(|data: &[u8]| {
    // The daemon reads the file as UTF-8 first (bad bytes are a diagnostic
    // before any parsing), so only text reaches the parser.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // `include` reads the file system: an absolute pattern such as
    // "/**/*.toml" would walk the whole disk and make runs slow and
    // irreproducible. Relative patterns are kept: they are relative to a
    // directory that does not exist, so they match nothing.
    if includes_absolute_pattern(text) {
        return;
    }
    let defaults = Defaults {
        socket: PathBuf::from("/run/minder/minder.sock"),
        log_dir: PathBuf::from("/var/log/minder"),
    };
    let path = Path::new("/nonexistent/minder-fuzz/minder.toml");
    match parse_str(text, path, &defaults) {
        Ok(config) => {
            // What the daemon does next with a valid config.
            let _ = config.start_order();
            for program in &config.programs {
                let _ = program.processes_to_run();
            }
            let again = parse_str(text, path, &defaults).expect("parsing is deterministic");
            assert_eq!(again, config);
            let _ = minder::config::diff(&config, &again);
        }
        Err(diagnostics) => {
            assert!(!diagnostics.is_empty(), "a refused config names a cause");
            for d in &diagnostics {
                assert!(d.line >= 1 && d.col >= 1, "{d:?}");
                let _ = d.to_string();
            }
        }
    }
});

/// Whether `[supervisor] include` names an absolute path (read as the TOML
/// it is, so escapes and multi-line strings cannot hide one).
fn includes_absolute_pattern(text: &str) -> bool {
    let Ok(table) = text.parse::<toml::Table>() else {
        // The loader reads no include of a file it cannot parse; should the
        // two parsers ever disagree, stay off the disk anyway.
        return text.contains("include") && text.contains('/');
    };
    let Some(include) = table.get("supervisor").and_then(|s| s.get("include")) else {
        return false;
    };
    let absolute = |v: &toml::Value| v.as_str().is_some_and(|p| Path::new(p).is_absolute());
    match include {
        toml::Value::Array(patterns) => patterns.iter().any(absolute),
        other => absolute(other),
    }
}
