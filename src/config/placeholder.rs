//! `{name}`, `{program}`, `{instance}` and `{port}` in config strings.
//!
//! A placeholder is `{` + letters, digits or `_` + `}`. Anything else with
//! braces (`{print $1}`, `${VAR:-x}`) is literal text. `${IDENT}` is literal
//! too: it is shell syntax for a variable (`sh -c 'echo ${HOME}'`), and
//! reading it as a placeholder would reject perfectly good commands.

/// Placeholders every program may use.
pub(crate) const KNOWN: &[&str] = &["name", "program", "instance", "port"];

/// A piece of a string: literal text or a placeholder name.
#[derive(Debug, PartialEq, Eq)]
enum Piece<'s> {
    Text(&'s str),
    Placeholder(&'s str),
}

/// Splits `s` into literal text and placeholders.
fn pieces(s: &str) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    let mut text_start = 0;
    let mut i = 0;
    let bytes = s.as_bytes();
    while i < bytes.len() {
        if bytes[i] == b'{' && (i == 0 || bytes[i - 1] != b'$') {
            let ident_len = bytes[i + 1..]
                .iter()
                .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
                .count();
            let close = i + 1 + ident_len;
            if ident_len > 0 && bytes.get(close) == Some(&b'}') {
                if text_start < i {
                    out.push(Piece::Text(&s[text_start..i]));
                }
                out.push(Piece::Placeholder(&s[i + 1..close]));
                i = close + 1;
                text_start = i;
                continue;
            }
        }
        i += 1;
    }
    if text_start < s.len() {
        out.push(Piece::Text(&s[text_start..]));
    }
    out
}

/// Checks that every placeholder in `s` is known (and `{port}` only with a
/// port); returns one message per problem.
pub(crate) fn check(s: &str, has_port: bool) -> Vec<String> {
    check_with(s, has_port, &[])
}

/// Like [`check`], with `extra` placeholders known as well (`{host}` in
/// registration templates).
pub(crate) fn check_with(s: &str, has_port: bool, extra: &[&str]) -> Vec<String> {
    let mut problems = Vec::new();
    for piece in pieces(s) {
        if let Piece::Placeholder(p) = piece {
            if !KNOWN.contains(&p) && !extra.contains(&p) {
                let known: Vec<String> = KNOWN
                    .iter()
                    .chain(extra)
                    .map(|k| format!("{{{k}}}"))
                    .collect();
                problems.push(format!(
                    "unknown placeholder {{{p}}} (known: {})",
                    known.join(", ")
                ));
            } else if p == "port" && !has_port {
                problems.push("placeholder {port} needs the program's \"port\" key".to_string());
            }
        }
    }
    problems
}

/// Values of the placeholders for one process.
#[derive(Debug, Clone)]
pub(crate) struct Vars<'a> {
    /// Process name (`web:1`).
    pub(crate) name: &'a str,
    /// Program name (`web`).
    pub(crate) program: &'a str,
    /// Instance number.
    pub(crate) instance: u32,
    /// This instance's port, if the program has one.
    pub(crate) port: Option<u32>,
    /// This host's name, in registration templates only.
    pub(crate) host: Option<&'a str>,
}

/// `s` with placeholders replaced; placeholders without a value are left as
/// they are (validation has already rejected them in loaded configs).
pub(crate) fn expand(s: &str, vars: &Vars<'_>) -> String {
    let mut out = String::with_capacity(s.len());
    for piece in pieces(s) {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Placeholder(p) => {
                let value = match p {
                    "name" => Some(vars.name.to_string()),
                    "program" => Some(vars.program.to_string()),
                    "instance" => Some(vars.instance.to_string()),
                    "port" => vars.port.map(|port| port.to_string()),
                    "host" => vars.host.map(str::to_string),
                    _ => None,
                };
                match value {
                    Some(value) => out.push_str(&value),
                    None => {
                        out.push('{');
                        out.push_str(p);
                        out.push('}');
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars<'static> {
        Vars {
            name: "web:1",
            program: "web",
            instance: 1,
            port: Some(8081),
            host: None,
        }
    }

    #[test]
    fn expands_known_placeholders() {
        assert_eq!(
            expand("{name} {program} {instance} {port}", &vars()),
            "web:1 web 1 8081"
        );
        assert_eq!(expand("--port={port}x", &vars()), "--port=8081x");
    }

    #[test]
    fn leaves_other_braces_alone() {
        assert_eq!(
            expand("awk '{print $1}' ${HOME} {} {a-b} {", &vars()),
            "awk '{print $1}' ${HOME} {} {a-b} {"
        );
        assert_eq!(expand("${name}", &vars()), "${name}");
        assert_eq!(expand("{{name}}", &vars()), "{web:1}");
    }

    #[test]
    fn check_reports_unknown_and_portless() {
        assert!(check("{name} {program} {instance} {port}", true).is_empty());
        assert_eq!(check("{foo}", true).len(), 1);
        assert!(check("{foo}", true)[0].contains("unknown placeholder {foo}"));
        assert!(check("{port}", false)[0].contains("\"port\""));
        assert!(check("${HOME} {print $1}", false).is_empty());
        assert!(check("ünïcode {", false).is_empty());
        assert!(check("{host}", true)[0].contains("unknown placeholder {host}"));
        assert!(check_with("{host}:{port}", true, &["host"]).is_empty());
    }

    #[test]
    fn host_is_expanded_where_given() {
        let v = Vars {
            host: Some("h1"),
            ..vars()
        };
        assert_eq!(expand("/s/{program}/{host}/{name}", &v), "/s/web/h1/web:1");
        assert_eq!(expand("{host}", &vars()), "{host}");
    }

    #[test]
    fn missing_values_stay_literal() {
        let v = Vars {
            port: None,
            ..vars()
        };
        assert_eq!(expand("{port} {zzz}", &v), "{port} {zzz}");
    }
}
