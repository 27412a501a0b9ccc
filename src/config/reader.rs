//! Typed access to one TOML table that records errors instead of stopping.
//!
//! A table is read by asking for keys by name with a converter
//! (`reader.get("stop_timeout", conv::duration)`); each key asked for becomes
//! known, wrong types and bad values are recorded at the value's span, and
//! [`TableReader::finish`] reports every key nobody asked for as unknown. So
//! adding a config key is one `get` line, and an unknown key can never be
//! silently ignored.

use std::time::Duration;

use nix::sys::signal::Signal;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::diagnostic::{Diagnostics, SourceFile, Span};

/// A TOML value with its byte span, as `toml::de::DeTable` yields it.
pub(crate) type Value<'i> = Spanned<DeValue<'i>>;

/// Why a value was rejected; the reader prefixes the key name.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum ValueError {
    /// The value has the wrong TOML type.
    #[error("expected {expected}, found {found}")]
    Type {
        /// What the key wants, phrased for a user ("a duration string like \"5s\"").
        expected: &'static str,
        /// The TOML type found ("integer", "array", ...).
        found: &'static str,
        /// Where: the value itself, or the offending array element.
        span: Span,
    },
    /// The type is right but the value is not acceptable.
    #[error("{message}")]
    Invalid {
        /// The reason, naming the bad input.
        message: String,
        /// Where: the value itself, or the offending array element.
        span: Span,
    },
}

impl ValueError {
    /// A type mismatch at `value`.
    pub(crate) fn wrong_type(expected: &'static str, value: &Value<'_>) -> ValueError {
        ValueError::Type {
            expected,
            found: value.get_ref().type_str(),
            span: value.span(),
        }
    }

    /// A bad value at `value`.
    pub(crate) fn invalid(message: impl Into<String>, value: &Value<'_>) -> ValueError {
        ValueError::Invalid {
            message: message.into(),
            span: value.span(),
        }
    }

    fn span(&self) -> &Span {
        match self {
            ValueError::Type { span, .. } | ValueError::Invalid { span, .. } => span,
        }
    }
}

/// Reads one table; see the module comment.
pub(crate) struct TableReader<'a, 'i> {
    src: &'a SourceFile,
    diags: &'a Diagnostics,
    table: &'a DeTable<'i>,
    /// How the table is named in messages: `[program.web]`.
    name: String,
    /// Which entries (by position) some getter consumed.
    taken: Vec<bool>,
    /// Every key asked for, taken or not: the vocabulary for "did you mean".
    known: Vec<&'static str>,
}

impl<'a, 'i> TableReader<'a, 'i> {
    /// A reader over `table`, named `name` (e.g. `[program.web]`) in messages.
    pub(crate) fn new(
        src: &'a SourceFile,
        diags: &'a Diagnostics,
        table: &'a DeTable<'i>,
        name: impl Into<String>,
    ) -> Self {
        TableReader {
            src,
            diags,
            table,
            name: name.into(),
            taken: vec![false; table.len()],
            known: Vec::new(),
        }
    }

    /// The file being read.
    pub(crate) fn src(&self) -> &'a SourceFile {
        self.src
    }

    /// The diagnostics sink.
    pub(crate) fn diags(&self) -> &'a Diagnostics {
        self.diags
    }

    /// Records an error at `span` in this table's file.
    pub(crate) fn error(&self, span: &Span, message: impl Into<String>) {
        self.diags.error(self.src, span, message);
    }

    /// Whether `key` is present, without taking it.
    pub(crate) fn contains(&self, key: &str) -> bool {
        self.table.iter().any(|(k, _)| k.get_ref().as_ref() == key)
    }

    /// The raw value of `key` with the span of its key, marking it as taken.
    pub(crate) fn raw(&mut self, key: &'static str) -> Option<(Span, &'a Value<'i>)> {
        self.known.push(key);
        let table: &'a DeTable<'i> = self.table;
        let (i, (k, v)) = table
            .iter()
            .enumerate()
            .find(|(_, (k, _))| k.get_ref().as_ref() == key)?;
        if let Some(t) = self.taken.get_mut(i) {
            *t = true;
        }
        Some((k.span(), v))
    }

    /// The value of `key` converted by `conv`, with the value's span; `None`
    /// when absent or invalid (the error is recorded).
    pub(crate) fn get_spanned<T>(
        &mut self,
        key: &'static str,
        conv: impl FnOnce(&'a Value<'i>) -> Result<T, ValueError>,
    ) -> Option<(T, Span)> {
        let (_, value) = self.raw(key)?;
        self.convert(key, value, conv)
    }

    /// Converts a value already fetched with [`TableReader::raw`], recording
    /// a failure as an error prefixed with the key.
    pub(crate) fn convert<T>(
        &self,
        key: &str,
        value: &'a Value<'i>,
        conv: impl FnOnce(&'a Value<'i>) -> Result<T, ValueError>,
    ) -> Option<(T, Span)> {
        match conv(value) {
            Ok(v) => Some((v, value.span())),
            Err(e) => {
                self.error(e.span(), format!("\"{key}\": {e}"));
                None
            }
        }
    }

    /// The value of `key` converted by `conv`; `None` when absent or invalid.
    pub(crate) fn get<T>(
        &mut self,
        key: &'static str,
        conv: impl FnOnce(&'a Value<'i>) -> Result<T, ValueError>,
    ) -> Option<T> {
        self.get_spanned(key, conv).map(|(v, _)| v)
    }

    /// A reader for the sub-table `key` (`[program.web.backoff]`), with the
    /// span where it is defined; a non-table value is a recorded type error.
    pub(crate) fn table(&mut self, key: &'static str) -> Option<(TableReader<'a, 'i>, Span)> {
        let (_, value) = self.raw(key)?;
        match value.get_ref() {
            DeValue::Table(t) => {
                let name = if self.name.is_empty() {
                    format!("[{key}]")
                } else {
                    format!("{}.{key}]", self.name.trim_end_matches(']'))
                };
                Some((
                    TableReader::new(self.src, self.diags, t, name),
                    value.span(),
                ))
            }
            other => {
                self.error(
                    &value.span(),
                    format!("\"{key}\": expected a table, found {}", other.type_str()),
                );
                None
            }
        }
    }

    /// Every entry not yet taken, in file order: for tables keyed by user
    /// names such as `[program]` and `environment`.
    pub(crate) fn take_rest(&mut self) -> Vec<(Spanned<&'a str>, &'a Value<'i>)> {
        let table: &'a DeTable<'i> = self.table;
        let mut rest = Vec::new();
        for (i, (k, v)) in table.iter().enumerate() {
            if let Some(t) = self.taken.get_mut(i) {
                if !*t {
                    *t = true;
                    rest.push((Spanned::new(k.span(), k.get_ref().as_ref()), v));
                }
            }
        }
        rest
    }

    /// Reports every key never asked for as unknown, at the key.
    pub(crate) fn finish(self) {
        self.finish_with_hint("");
    }

    /// Like [`TableReader::finish`], appending `hint` to each message.
    pub(crate) fn finish_with_hint(self, hint: &str) {
        for (i, (k, _)) in self.table.iter().enumerate() {
            if self.taken.get(i).copied().unwrap_or(false) {
                continue;
            }
            let key = k.get_ref().as_ref();
            let mut message = format!("unknown key \"{key}\"");
            if self.name.is_empty() {
                message.push_str(" at the top level");
            } else {
                message.push_str(&format!(" in {}", self.name));
            }
            if let Some(best) = suggest(key, &self.known) {
                message.push_str(&format!(" (did you mean \"{best}\"?)"));
            }
            message.push_str(hint);
            self.error(&k.span(), message);
        }
    }
}

/// The known key closest to a misspelt one, if it is close enough to be a
/// likely typo rather than a different idea.
fn suggest(key: &str, known: &[&'static str]) -> Option<&'static str> {
    let limit = if key.chars().count() >= 4 { 2 } else { 1 };
    known
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let subst = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = subst.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev.last().copied().unwrap_or(0)
}

/// Converters for [`TableReader::get`]: one per kind of config value.
pub(crate) mod conv {
    use super::*;

    /// A string.
    pub(crate) fn string(v: &Value<'_>) -> Result<String, ValueError> {
        v.get_ref()
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| ValueError::wrong_type("a string", v))
    }

    /// A string that is not empty and holds no NUL byte (it will reach a
    /// C API: exec, a path, a user name).
    pub(crate) fn text(v: &Value<'_>) -> Result<String, ValueError> {
        let s = string(v)?;
        check_text(&s, v)?;
        Ok(s)
    }

    fn check_text(s: &str, v: &Value<'_>) -> Result<(), ValueError> {
        if s.is_empty() {
            Err(ValueError::invalid("must not be empty", v))
        } else if s.contains('\0') {
            Err(ValueError::invalid("must not contain a NUL character", v))
        } else {
            Ok(())
        }
    }

    /// A boolean.
    pub(crate) fn boolean(v: &Value<'_>) -> Result<bool, ValueError> {
        v.get_ref()
            .as_bool()
            .ok_or_else(|| ValueError::wrong_type("true or false", v))
    }

    /// An integer (any TOML radix) as i64.
    pub(crate) fn integer(v: &Value<'_>) -> Result<i64, ValueError> {
        let Some(i) = v.get_ref().as_integer() else {
            return Err(ValueError::wrong_type("an integer", v));
        };
        i64::from_str_radix(i.as_str(), i.radix())
            .map_err(|_| ValueError::invalid(format!("integer {i} is out of range"), v))
    }

    /// An integer within `min..=max`; returns a converter.
    pub(crate) fn int_in<T: TryFrom<i64>>(
        min: i64,
        max: i64,
    ) -> impl Fn(&Value<'_>) -> Result<T, ValueError> {
        move |v| {
            let n = integer(v)?;
            if n < min || n > max {
                return Err(ValueError::invalid(
                    format!("{n} is out of range (expected {min}..={max})"),
                    v,
                ));
            }
            T::try_from(n).map_err(|_| ValueError::invalid(format!("{n} is out of range"), v))
        }
    }

    /// A number, float or integer, as f64 (`multiplier = 2` is as good as `2.0`).
    pub(crate) fn number(v: &Value<'_>) -> Result<f64, ValueError> {
        match v.get_ref() {
            DeValue::Float(f) => f
                .as_str()
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| ValueError::invalid(format!("{f} is not a finite number"), v)),
            DeValue::Integer(_) => integer(v).map(|n| n as f64),
            _ => Err(ValueError::wrong_type("a number", v)),
        }
    }

    /// A duration string ("250ms", "5s", "2m", "0").
    pub(crate) fn duration(v: &Value<'_>) -> Result<Duration, ValueError> {
        let Some(s) = v.get_ref().as_str() else {
            return Err(ValueError::wrong_type("a duration string like \"5s\"", v));
        };
        humantime::parse_duration(s).map_err(|e| {
            ValueError::invalid(
                format!("invalid duration \"{s}\": {e} (write e.g. \"250ms\", \"5s\", \"2m\")"),
                v,
            )
        })
    }

    /// A signal name or number, as a string ("TERM") or an integer (15).
    pub(crate) fn signal(v: &Value<'_>) -> Result<Signal, ValueError> {
        let parsed = match v.get_ref() {
            DeValue::String(s) => crate::config::parse_signal(s),
            DeValue::Integer(_) => crate::config::parse_signal(&integer(v)?.to_string()),
            _ => return Err(ValueError::wrong_type("a signal name like \"TERM\"", v)),
        };
        parsed.map_err(|e| ValueError::invalid(e, v))
    }

    /// One of a fixed set of strings; returns a converter yielding the index.
    pub(crate) fn one_of(
        choices: &'static [&'static str],
    ) -> impl Fn(&Value<'_>) -> Result<usize, ValueError> {
        move |v| {
            let s = string(v)?;
            choices.iter().position(|c| *c == s).ok_or_else(|| {
                let list: Vec<String> = choices.iter().map(|c| format!("\"{c}\"")).collect();
                ValueError::invalid(
                    format!(
                        "unknown value \"{s}\" (expected one of {})",
                        list.join(", ")
                    ),
                    v,
                )
            })
        }
    }

    /// A user or group: a name, or a numeric id kept as its decimal string.
    pub(crate) fn user_or_id(v: &Value<'_>) -> Result<String, ValueError> {
        match v.get_ref() {
            DeValue::String(_) => text(v),
            DeValue::Integer(_) => {
                int_in::<u32>(0, i64::from(u32::MAX) - 1)(v).map(|n| n.to_string())
            }
            _ => Err(ValueError::wrong_type("a name or a numeric id", v)),
        }
    }

    /// The elements of an array, each with its span.
    pub(crate) fn array<'a, 'i>(v: &'a Value<'i>) -> Result<&'a [Value<'i>], ValueError> {
        match v.get_ref() {
            DeValue::Array(a) => Ok(a),
            _ => Err(ValueError::wrong_type("an array", v)),
        }
    }

    /// An array of non-empty strings, each with its span.
    pub(crate) fn text_list(v: &Value<'_>) -> Result<Vec<(String, Span)>, ValueError> {
        let items = match v.get_ref() {
            DeValue::Array(a) => a,
            _ => return Err(ValueError::wrong_type("an array of strings", v)),
        };
        items
            .iter()
            .map(|item| text(item).map(|s| (s, item.span())))
            .collect()
    }

    /// `command`: an argv array, or one string split like a shell would (no
    /// shell is run). Each argument comes with the span to blame for it.
    pub(crate) fn command(v: &Value<'_>) -> Result<Vec<(String, Span)>, ValueError> {
        let argv: Vec<(String, Span)> = match v.get_ref() {
            DeValue::String(s) => match shlex::split(s) {
                Some(words) => words.into_iter().map(|w| (w, v.span())).collect(),
                None => {
                    return Err(ValueError::invalid(
                        format!("cannot split \"{s}\" into arguments: unbalanced quotes or a trailing backslash"),
                        v,
                    ))
                }
            },
            DeValue::Array(items) => items
                .iter()
                .map(|item| string(item).map(|s| (s, item.span())))
                .collect::<Result<_, _>>()?,
            _ => {
                return Err(ValueError::wrong_type(
                    "an array of strings or a command line string",
                    v,
                ))
            }
        };
        match argv.first() {
            None => Err(ValueError::invalid("is empty: name the program to run", v)),
            Some((first, span)) if first.is_empty() => Err(ValueError::Invalid {
                message: "the program to run is an empty string".into(),
                span: span.clone(),
            }),
            _ => match argv.iter().find(|(a, _)| a.contains('\0')) {
                Some((_, span)) => Err(ValueError::Invalid {
                    message: "arguments must not contain a NUL character".into(),
                    span: span.clone(),
                }),
                None => Ok(argv),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_only_for_near_misses() {
        let known = ["command", "restart", "port"];
        assert_eq!(suggest("comand", &known), Some("command"));
        assert_eq!(suggest("restrat", &known), Some("restart"));
        assert_eq!(suggest("listen", &known), None);
        assert_eq!(suggest("pot", &known), Some("port"));
        assert_eq!(suggest("x", &known), None);
    }

    #[test]
    fn edit_distance_basics() {
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }
}
