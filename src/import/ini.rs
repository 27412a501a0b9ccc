//! supervisord's ini syntax, read the way Python's `configparser` reads it
//! for supervisord (`RawConfigParser` with `inline_comment_prefixes=(';', '#')`
//! and `strict=False`), keeping the file and line of every value.
//!
//! - A line whose first non-blank character is `;` or `#` is a comment; so is
//!   the rest of a line from a `;` or `#` that follows a blank.
//! - `[NAME]` starts a section; a section named twice is one section (later
//!   keys replace earlier ones).
//! - `key = value` or `key: value`; the key is lower-cased, both are trimmed.
//! - A line indented deeper than its key continues the value (joined with a
//!   newline); a blank line inside a value is kept as an empty line.

use std::path::PathBuf;

/// One `key = value`, with where it was written.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) key: String,
    pub(crate) value: String,
    /// Index into [`Ini::files`].
    pub(crate) file: usize,
    pub(crate) line: usize,
}

/// One `[section]` with its entries in the order first written.
#[derive(Debug, Clone)]
pub(crate) struct Section {
    pub(crate) name: String,
    pub(crate) file: usize,
    pub(crate) line: usize,
    pub(crate) entries: Vec<Entry>,
}

impl Section {
    pub(crate) fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.key == key)
    }
}

/// Every section of a file and the files it includes.
#[derive(Debug, Default)]
pub(crate) struct Ini {
    pub(crate) files: Vec<PathBuf>,
    pub(crate) sections: Vec<Section>,
}

impl Ini {
    pub(crate) fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name)
    }

    /// Reads `text` (the file at index `file`) into the sections; on a
    /// syntax error, returns its line and what is wrong.
    pub(crate) fn read(&mut self, text: &str, file: usize) -> Result<(), (usize, String)> {
        // The section being read (index) and the entry a continuation extends.
        let mut current: Option<usize> = None;
        let mut value_lines: Option<(usize, Vec<String>)> = None;
        let mut indent_level = usize::MAX;
        let flush = |sections: &mut Vec<Section>,
                     pending: &mut Option<(usize, Vec<String>)>,
                     cur: Option<usize>| {
            if let (Some((entry, lines)), Some(s)) = (pending.take(), cur) {
                sections[s].entries[entry].value = lines.join("\n").trim_end().to_string();
            }
        };
        for (i, raw) in text.split('\n').enumerate() {
            let lineno = i + 1;
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            let comment_start = comment_start(line);
            let value = line[..comment_start.unwrap_or(line.len())].trim();
            if value.is_empty() {
                if comment_start.is_none() {
                    if let Some((_, lines)) = value_lines.as_mut() {
                        lines.push(String::new());
                    }
                }
                continue;
            }
            let indent = line.chars().take_while(|c| c.is_whitespace()).count();
            if current.is_some() && indent > indent_level {
                if let Some((_, lines)) = value_lines.as_mut() {
                    lines.push(value.to_string());
                    continue;
                }
            }
            indent_level = indent;
            if let Some(header) = value.strip_prefix('[').and_then(|v| {
                let end = v.rfind(']')?;
                (end > 0).then(|| &v[..end])
            }) {
                flush(&mut self.sections, &mut value_lines, current);
                current = Some(match self.sections.iter().position(|s| s.name == header) {
                    Some(s) => s,
                    None => {
                        self.sections.push(Section {
                            name: header.to_string(),
                            file,
                            line: lineno,
                            entries: Vec::new(),
                        });
                        self.sections.len() - 1
                    }
                });
                continue;
            }
            let Some(s) = current else {
                return Err((lineno, "a setting before any [section] header".into()));
            };
            let Some(delim) = value.find(['=', ':']) else {
                return Err((
                    lineno,
                    format!("{value:?} is neither \"key = value\" nor a [section] header"),
                ));
            };
            let key = value[..delim].trim_end().to_lowercase();
            if key.is_empty() {
                return Err((
                    lineno,
                    format!("{value:?} has no key before {:?}", &value[delim..=delim]),
                ));
            }
            let val = value[delim + 1..].trim().to_string();
            flush(&mut self.sections, &mut value_lines, current);
            let entries = &mut self.sections[s].entries;
            let entry = Entry {
                key: key.clone(),
                value: val.clone(),
                file,
                line: lineno,
            };
            let at = match entries.iter().position(|e| e.key == key) {
                Some(at) => {
                    entries[at] = entry;
                    at
                }
                None => {
                    entries.push(entry);
                    entries.len() - 1
                }
            };
            value_lines = Some((at, vec![val]));
        }
        flush(&mut self.sections, &mut value_lines, current);
        Ok(())
    }
}

/// Where a comment starts in `line`: a `;` or `#` first on the line (after
/// blanks), or one that follows a blank.
fn comment_start(line: &str) -> Option<usize> {
    let trimmed = line.trim_start();
    if trimmed.starts_with(';') || trimmed.starts_with('#') {
        return Some(0);
    }
    let mut prev_space = true;
    for (i, c) in line.char_indices() {
        if (c == ';' || c == '#') && prev_space {
            return Some(i);
        }
        prev_space = c.is_whitespace();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<Ini, (usize, String)> {
        let mut ini = Ini::default();
        ini.read(text, 0).map(|()| ini)
    }

    #[test]
    fn comments_need_a_blank_before_them() {
        let ini = read("; top\n[program:a]\ncommand=/bin/echo a;b # c ;d\nURL = http://x/#frag\n")
            .unwrap();
        let s = ini.section("program:a").unwrap();
        assert_eq!(s.get("command").unwrap().value, "/bin/echo a;b");
        assert_eq!(s.get("url").unwrap().value, "http://x/#frag");
        assert_eq!(s.get("url").unwrap().line, 4);
    }

    #[test]
    fn continuation_lines_and_blank_lines_in_values() {
        let ini = read("[x]\nenvironment = A=1,\n    B=2\n\n    C=3\nnext: y\n").unwrap();
        let s = ini.section("x").unwrap();
        assert_eq!(s.get("environment").unwrap().value, "A=1,\nB=2\n\nC=3");
        assert_eq!(s.get("next").unwrap().value, "y");
    }

    #[test]
    fn sections_named_twice_merge() {
        let ini = read("[x]\na=1\nb=2\n[y]\n[x]\na=3\n").unwrap();
        assert_eq!(ini.sections.len(), 2);
        let x = ini.section("x").unwrap();
        assert_eq!(x.entries.len(), 2);
        assert_eq!(x.get("a").unwrap().value, "3");
    }

    #[test]
    fn errors_name_the_line() {
        assert_eq!(read("a=1\n").unwrap_err().0, 1);
        assert_eq!(read("[x]\n\nnot a setting\n").unwrap_err().0, 3);
        assert_eq!(read("[x]\n= 4\n").unwrap_err().0, 2);
    }
}
