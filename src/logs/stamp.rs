//! `timestamps = true`: an RFC 3339 time in front of every line.
//!
//! The only per-line work in log capture, done only when asked for. A line
//! gets the time at which minder read its first byte. A partial line at the
//! end of a chunk is held back until its end arrives, so a line is written
//! (and rotated) whole; held back for at most [`PARTIAL_WAIT`] or
//! [`PARTIAL_MAX`] bytes, then written as it is (a prompt without a newline
//! still shows up) and its continuation gets no second prefix.

use std::time::{Duration, Instant, SystemTime};

/// Longest a partial line waits for its end.
pub const PARTIAL_WAIT: Duration = Duration::from_millis(500);

/// Largest partial line held back.
pub const PARTIAL_MAX: usize = 16 * 1024;

/// Adds time prefixes to a byte stream (see the module doc).
#[derive(Debug)]
pub struct Stamper {
    /// The next byte starts a line (needs a prefix).
    at_line_start: bool,
    /// A started line without its newline yet, prefix included.
    pending: Vec<u8>,
    /// When `pending` got its first byte.
    pending_since: Option<Instant>,
}

impl Default for Stamper {
    fn default() -> Self {
        Stamper {
            at_line_start: true,
            pending: Vec::new(),
            pending_since: None,
        }
    }
}

impl Stamper {
    /// Appends `data` to `out` with a prefix at each line start; a trailing
    /// partial line is kept back. `now` is the time of the prefixes.
    pub fn stamp(&mut self, data: &[u8], now: SystemTime, out: &mut Vec<u8>) {
        let prefix = format!("{} ", humantime::format_rfc3339_micros(now));
        // 28 bytes of prefix per line; guess from typical line lengths.
        out.reserve(data.len() + data.len() / 4);
        let mut rest = data;
        if !self.pending.is_empty() {
            match memchr::memchr(b'\n', rest) {
                Some(i) => {
                    out.append(&mut self.pending);
                    out.extend_from_slice(&rest[..=i]);
                    self.pending_since = None;
                    self.at_line_start = true;
                    rest = &rest[i + 1..];
                }
                None => {
                    self.pending.extend_from_slice(rest);
                    if self.pending.len() >= PARTIAL_MAX {
                        self.flush_partial(out);
                    }
                    return;
                }
            }
        }
        // Whole lines go out at once; what follows the last newline waits.
        let whole = memchr::memrchr(b'\n', rest).map_or(0, |i| i + 1);
        let mut line_start = 0;
        for newline in memchr::memchr_iter(b'\n', &rest[..whole]) {
            if self.at_line_start {
                out.extend_from_slice(prefix.as_bytes());
            }
            out.extend_from_slice(&rest[line_start..=newline]);
            self.at_line_start = true;
            line_start = newline + 1;
        }
        let tail = &rest[whole..];
        if !tail.is_empty() {
            if self.at_line_start {
                self.pending.extend_from_slice(prefix.as_bytes());
            }
            self.pending.extend_from_slice(tail);
            self.pending_since = Some(Instant::now());
            self.at_line_start = false;
            if self.pending.len() >= PARTIAL_MAX {
                self.flush_partial(out);
            }
        }
    }

    /// Writes the held-back partial line to `out` as it is.
    pub fn flush_partial(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.pending);
        self.pending = Vec::new();
        self.pending_since = None;
    }

    /// When the partial line must be written even without its end, if there is one.
    pub fn partial_deadline(&self) -> Option<Instant> {
        self.pending_since.map(|t| t + PARTIAL_WAIT)
    }

    /// The held-back partial line (for `tail`: it is not in the file yet).
    pub fn pending(&self) -> &[u8] {
        &self.pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "2024-05-06T07:08:09.123456Z ";

    fn now() -> SystemTime {
        humantime::parse_rfc3339("2024-05-06T07:08:09.123456Z").unwrap()
    }

    fn stamp(s: &mut Stamper, data: &str) -> String {
        let mut out = Vec::new();
        s.stamp(data.as_bytes(), now(), &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn every_line_gets_a_prefix() {
        let mut s = Stamper::default();
        assert_eq!(stamp(&mut s, "a\nbb\n\n"), format!("{T}a\n{T}bb\n{T}\n"));
        assert!(s.pending().is_empty());
        assert_eq!(s.partial_deadline(), None);
    }

    #[test]
    fn a_partial_line_waits_for_its_end() {
        let mut s = Stamper::default();
        assert_eq!(stamp(&mut s, "a\nhal"), format!("{T}a\n"));
        assert_eq!(s.pending(), format!("{T}hal").as_bytes());
        assert!(s.partial_deadline().is_some());
        assert_eq!(stamp(&mut s, "f"), "");
        assert_eq!(stamp(&mut s, "-line\nnext"), format!("{T}half-line\n"));
        assert_eq!(stamp(&mut s, "\n"), format!("{T}next\n"));
        assert_eq!(s.partial_deadline(), None);
    }

    #[test]
    fn a_flushed_partial_line_is_not_prefixed_twice() {
        let mut s = Stamper::default();
        assert_eq!(stamp(&mut s, "Password: "), "");
        let mut out = Vec::new();
        s.flush_partial(&mut out);
        assert_eq!(String::from_utf8(out).unwrap(), format!("{T}Password: "));
        assert_eq!(stamp(&mut s, "typed\nnew\n"), format!("typed\n{T}new\n"));
    }

    #[test]
    fn long_partial_lines_are_bounded() {
        let mut s = Stamper::default();
        let long = "x".repeat(PARTIAL_MAX);
        let out = stamp(&mut s, &long);
        assert_eq!(out, format!("{T}{long}"));
        assert!(s.pending().is_empty());
        assert_eq!(stamp(&mut s, "y\n"), "y\n");
    }
}
