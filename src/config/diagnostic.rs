//! Config errors with a position, and the bookkeeping that turns byte
//! offsets from the TOML parser into 1-based line and column numbers.

use std::cell::RefCell;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// A byte range in one source file, as the TOML parser reports it.
pub(crate) type Span = Range<usize>;

/// One config error at a position: Display is `FILE:LINE:COL: message` (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}:{col}: {message}", file.display())]
pub struct Diagnostic {
    /// The file the error is in, as the user named it (or as an include pattern expanded).
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, counted in characters (not bytes) so editors agree.
    pub col: usize,
    /// What is wrong and, where it helps, what to write instead.
    pub message: String,
}

/// The text of one config file, kept so byte offsets can become line:col.
#[derive(Debug)]
pub(crate) struct SourceFile {
    /// Path used in diagnostics (as given, not made absolute: it is what the user typed).
    pub(crate) path: PathBuf,
    /// Order in which the file was read; diagnostics are sorted by it.
    pub(crate) seq: usize,
    text: String,
    /// Byte offset at which each line starts.
    line_starts: Vec<usize>,
}

impl SourceFile {
    /// Indexes `text` for position lookups.
    pub(crate) fn new(path: &Path, seq: usize, text: String) -> SourceFile {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        SourceFile {
            path: path.to_path_buf(),
            seq,
            text,
            line_starts,
        }
    }

    /// The file's text.
    pub(crate) fn text(&self) -> &str {
        &self.text
    }

    /// 1-based (line, column) of a byte offset; offsets past the end or inside
    /// a multi-byte character are clamped rather than trusted.
    pub(crate) fn position(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i.saturating_sub(1),
        };
        let start = self.line_starts.get(line).copied().unwrap_or(0);
        let col = self.text[start..offset].chars().count() + 1;
        (line + 1, col)
    }

    /// A diagnostic at the start of `span` in this file.
    pub(crate) fn diagnostic(&self, span: &Span, message: impl Into<String>) -> Diagnostic {
        let (line, col) = self.position(span.start);
        Diagnostic {
            file: self.path.clone(),
            line,
            col,
            message: message.into(),
        }
    }

    /// `FILE:LINE:COL` of a span, for messages that point at a second place.
    pub(crate) fn location(&self, span: &Span) -> String {
        let (line, col) = self.position(span.start);
        format!("{}:{line}:{col}", self.path.display())
    }
}

/// Collects every diagnostic of one load, so nothing stops at the first error.
///
/// Shared (`&Diagnostics`) rather than `&mut` so nested table readers can all
/// report into it at once.
#[derive(Debug, Default)]
pub(crate) struct Diagnostics {
    items: RefCell<Vec<(usize, Diagnostic)>>,
}

impl Diagnostics {
    /// Records an error at `span` in `src`.
    pub(crate) fn error(&self, src: &SourceFile, span: &Span, message: impl Into<String>) {
        self.push(src.seq, src.diagnostic(span, message));
    }

    /// Records a ready-made diagnostic belonging to the file read `seq`-th.
    pub(crate) fn push(&self, seq: usize, diagnostic: Diagnostic) {
        self.items.borrow_mut().push((seq, diagnostic));
    }

    /// How many errors so far; lets a caller tell whether a step added any.
    pub(crate) fn count(&self) -> usize {
        self.items.borrow().len()
    }

    /// All errors, in file order then position, so output reads top to bottom.
    pub(crate) fn into_sorted(self) -> Vec<Diagnostic> {
        let mut items = self.items.into_inner();
        items.sort_by_key(|(seq, d)| (*seq, d.line, d.col));
        items.into_iter().map(|(_, d)| d).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let src = SourceFile::new(Path::new("f.toml"), 0, "ab\nçd = 1\r\n\nx".into());
        assert_eq!(src.position(0), (1, 1));
        assert_eq!(src.position(1), (1, 2));
        assert_eq!(src.position(3), (2, 1));
        // 'ç' is two bytes; 'd' is the second character.
        assert_eq!(src.position(5), (2, 2));
        // inside 'ç' clamps to its start
        assert_eq!(src.position(4), (2, 1));
        assert_eq!(src.position(13), (4, 1));
        // past the end: clamped to the end
        assert_eq!(src.position(1000), (4, 2));
    }

    #[test]
    fn display_is_file_line_col_message() {
        let d = Diagnostic {
            file: PathBuf::from("a.toml"),
            line: 3,
            col: 7,
            message: "bad".into(),
        };
        assert_eq!(d.to_string(), "a.toml:3:7: bad");
    }
}
