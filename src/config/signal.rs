//! Signal names and numbers as users write them in configs and on the command line.

use std::str::FromStr;

use nix::sys::signal::Signal;

/// Signal by name ("TERM", "SIGTERM", "term", "hup") or number ("15"). Error message names the bad input.
pub fn parse_signal(s: &str) -> Result<Signal, String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<i32>()
            .ok()
            .and_then(|n| Signal::try_from(n).ok())
            .ok_or_else(|| format!("unknown signal number {s}"));
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&name).map_err(|_| {
        format!(
            "unknown signal \"{s}\" (use a name like \"TERM\" or \"SIGHUP\", or a number like 15)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_every_spelling() {
        for s in ["TERM", "SIGTERM", "term", "sigterm", "15"] {
            assert_eq!(parse_signal(s), Ok(Signal::SIGTERM), "{s}");
        }
        assert_eq!(parse_signal("hup"), Ok(Signal::SIGHUP));
        assert_eq!(parse_signal("9"), Ok(Signal::SIGKILL));
        assert_eq!(parse_signal("USR1"), Ok(Signal::SIGUSR1));
    }

    #[test]
    fn errors_name_the_input() {
        assert!(parse_signal("FOO").unwrap_err().contains("\"FOO\""));
        assert!(parse_signal("").unwrap_err().contains("\"\""));
        assert!(parse_signal("0").unwrap_err().contains('0'));
        assert!(parse_signal("99999999999999")
            .unwrap_err()
            .contains("99999999999999"));
        assert!(parse_signal("-1").unwrap_err().contains("-1"));
        assert!(parse_signal(" TERM").is_err());
    }
}
