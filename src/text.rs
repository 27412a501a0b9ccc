//! Text that a supervised program supplies (its `STATUS=`, a probe's output)
//! made safe to show on a terminal.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::time::Duration;

/// Renders `text` for a terminal: every control character becomes a visible
/// escape, everything else is kept.
///
/// A program could otherwise move the cursor, recolour or clear the screen
/// (ESC sequences, the 8-bit CSI U+009B), overwrite what is already on the
/// line (CR, backspace), forge extra lines in a table or a log (LF), or
/// reverse the order in which the rest of a line is displayed (bidirectional
/// overrides). The escapes are the C ones, as systemd's `cescape` writes them
/// for `systemctl status`: `\n`, `\r`, `\t`, `\\`, and `\xNN` for any other
/// ASCII control (ESC is `\x1b`, BEL `\x07`); characters beyond ASCII are
/// written `\u{NNNN}`. An escape is unambiguous (a backslash in the text
/// itself is doubled), stays on one line, and shows what the program sent,
/// where U+FFFD would hide which character it was.
///
/// Only what minder displays goes through here; `--json` output carries the
/// exact text (JSON escapes it), and captured log files are left as written.
pub fn sanitize(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\\' => out.push_str("\\\\"),
            c if needs_escape(c) && c.is_ascii() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:04x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Control characters (C0, DEL, C1), the backslash (so escapes stay
/// unambiguous) and the bidirectional formatting characters.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || c == '\\'
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// `250ms`, `1.5s`, `2m`: short enough for a status line.
pub fn short_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        let s = d.as_secs_f64();
        if (s - s.round()).abs() < 0.05 {
            format!("{}s", s.round())
        } else {
            format!("{s:.1}s")
        }
    } else if ms < 3_600_000 {
        format!("{}m", d.as_secs() / 60)
    } else if ms < 86_400_000 {
        format!("{}h", d.as_secs() / 3600)
    } else {
        format!("{}d", d.as_secs() / 86_400)
    }
}

/// A size as a config file would write it: `512MiB`, `1GiB`, or bytes
/// (`1000000B`) when it is no whole number of a binary unit.
pub fn bytes(n: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "TiB"),
        (1 << 30, "GiB"),
        (1 << 20, "MiB"),
        (1 << 10, "KiB"),
    ];
    UNITS
        .iter()
        .find(|(size, _)| n >= *size && n % size == 0)
        .map(|(size, unit)| format!("{}{unit}", n / size))
        .unwrap_or_else(|| format!("{n}B"))
}

/// CPU time for a table column: `0.4s` (one decimal under 10 seconds),
/// `12s`, `3m05s`, `2h10m`, `4d02h`. Rounded down, so it never shows more
/// than was used.
pub fn cpu_time(secs: f64) -> String {
    let secs = if secs.is_finite() { secs.max(0.0) } else { 0.0 };
    if secs < 10.0 {
        // Rounded down to a tenth: 9.99 is 9.9s, never 10.0s.
        return format!("{:.1}s", (secs * 10.0).floor() / 10.0);
    }
    let whole = secs as u64;
    match whole {
        0..60 => format!("{whole}s"),
        60..3600 => format!("{}m{:02}s", whole / 60, whole % 60),
        3600..86_400 => format!("{}h{:02}m", whole / 3600, whole % 3600 / 60),
        _ => format!("{}d{:02}h", whole / 86_400, whole % 86_400 / 3600),
    }
}

/// A size for a table column, in binary units: `512B`, `980K`, `12.3M`,
/// `1.1G` (one decimal under 100 of a unit; 1M = 1 MiB).
pub fn short_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["K", "M", "G", "T", "P", "E"];
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if value < 100.0 {
        // Rounded down to a tenth, as `cpu_time`: 99.97 is 99.9, not 100.0.
        format!("{:.1}{}", (value * 10.0).floor() / 10.0, UNITS[unit])
    } else {
        format!("{}{}", value as u64, UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::{bytes, cpu_time, sanitize, short_bytes, short_duration};

    #[test]
    fn sizes_read_as_written_in_a_config() {
        assert_eq!(bytes(512 << 20), "512MiB");
        assert_eq!(bytes(1 << 30), "1GiB");
        assert_eq!(bytes(1_000_000), "1000000B");
        assert_eq!(bytes(0), "0B");
    }
    use std::borrow::Cow;
    use std::time::Duration;

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        let text = "serving 12 clients: ok (über-fast, 速い)";
        assert!(matches!(sanitize(text), Cow::Borrowed(t) if t == text));
    }

    #[test]
    fn terminal_controls_become_visible_escapes() {
        assert_eq!(
            sanitize("a\x1b[2J\x1b]0;owned\x07b\rc\nd\te\x08f\x7fg\0"),
            "a\\x1b[2J\\x1b]0;owned\\x07b\\rc\\nd\\te\\x08f\\x7fg\\x00"
        );
    }

    #[test]
    fn eight_bit_controls_and_bidi_overrides_are_escaped() {
        assert_eq!(sanitize("x\u{9b}31my"), "x\\u{009b}31my");
        assert_eq!(sanitize("\u{85}"), "\\u{0085}");
        assert_eq!(sanitize("abc\u{202e}fed"), "abc\\u{202e}fed");
        assert_eq!(sanitize("\u{2066}i\u{2069}"), "\\u{2066}i\\u{2069}");
    }

    #[test]
    fn a_backslash_is_doubled_so_an_escape_cannot_be_forged() {
        // A literal `\x1b` in the text must not read the same as a real ESC.
        assert_eq!(sanitize("\\x1b"), "\\\\x1b");
        assert_ne!(sanitize("\\x1b"), sanitize("\x1b"));
    }

    #[test]
    fn the_result_has_no_control_character_left() {
        let all: String = (0u32..0x250).filter_map(char::from_u32).collect();
        let shown = sanitize(&all);
        assert!(!shown.chars().any(|c| c.is_control()), "{shown:?}");
        assert!(!shown.contains('\u{202e}'));
    }

    #[test]
    fn short_durations_read_well() {
        assert_eq!(short_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(short_duration(Duration::from_secs(5)), "5s");
        assert_eq!(short_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(short_duration(Duration::from_secs(150)), "2m");
    }

    #[test]
    fn cpu_times_are_short() {
        assert_eq!(cpu_time(0.0), "0.0s");
        assert_eq!(cpu_time(0.44), "0.4s");
        assert_eq!(cpu_time(9.99), "9.9s");
        assert_eq!(cpu_time(12.7), "12s");
        assert_eq!(cpu_time(185.0), "3m05s");
        assert_eq!(cpu_time(2.0 * 3600.0 + 10.0 * 60.0 + 59.0), "2h10m");
        assert_eq!(cpu_time(4.0 * 86_400.0 + 2.0 * 3600.0), "4d02h");
        assert_eq!(cpu_time(f64::NAN), "0.0s");
    }

    #[test]
    fn sizes_are_short() {
        assert_eq!(short_bytes(0), "0B");
        assert_eq!(short_bytes(1023), "1023B");
        assert_eq!(short_bytes(1024), "1.0K");
        assert_eq!(short_bytes(12_900_000), "12.3M");
        assert_eq!(short_bytes(1_181_116_006), "1.0G");
        assert_eq!(short_bytes(1_200_000_000), "1.1G");
        assert_eq!(short_bytes(512 * 1024 * 1024), "512M");
        assert_eq!(short_bytes(1024 * 1024 * 1024 - 1), "1023M");
        assert_eq!(short_bytes(u64::MAX), "16.0E");
    }
}
