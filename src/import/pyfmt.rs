//! The two bits of Python that supervisord runs on config values: `%`
//! formatting with a mapping (`%(program_name)s`, `%(process_num)02d`, `%%`),
//! and `dict_of_key_value_pairs` (`environment=`), which splits with
//! `shlex.shlex` in its non-POSIX mode.

/// What a `%(name)…` expansion stands for.
#[derive(Debug, Clone)]
pub(crate) enum Var {
    Text(String),
    Int(i64),
    /// The number of a program's process when it has `count` of them,
    /// numbered from `start`: minder's `{instance}` (numbered from 0,
    /// unpadded), or `{port}` where digits and a zero-padded number make one
    /// number (`30%(process_num)02d`: 3000 + n).
    Instance {
        start: i64,
        count: i64,
    },
}

/// How the process number was written in minder's placeholders.
#[derive(Debug, Default)]
pub(crate) struct Instances {
    /// Each use that `{instance}` does not give exactly (a width, flags, an
    /// offset from `start`), as written.
    pub(crate) lossy: Vec<String>,
    /// The `port` that makes `{port}` give supervisord's numbers.
    pub(crate) port: Option<i64>,
}

/// What `s % vars` gives, as Python would; an `Instance` becomes a
/// placeholder, noted in `instances`.
pub(crate) fn expand(
    s: &str,
    vars: &dyn Fn(&str) -> Option<Var>,
    instances: &mut Instances,
) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pct) = rest.find('%') {
        out.push_str(&rest[..pct]);
        let spec_start = &rest[pct..];
        let after = &rest[pct + 1..];
        if let Some(r) = after.strip_prefix('%') {
            out.push('%');
            rest = r;
            continue;
        }
        let Some(named) = after.strip_prefix('(') else {
            return Err(if after.is_empty() {
                "incomplete format".to_string()
            } else {
                format!("{s:?} has a % not followed by (name): write %% for a literal %")
            });
        };
        let Some(close) = named.find(')') else {
            return Err("incomplete format key".into());
        };
        let name = &named[..close];
        let mut tail = &named[close + 1..];
        let flags_len = tail
            .find(|c: char| !"#0- +".contains(c))
            .unwrap_or(tail.len());
        let flags = &tail[..flags_len];
        tail = &tail[flags_len..];
        let width_len = tail
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(tail.len());
        let width: usize = tail[..width_len].parse().unwrap_or(0);
        tail = &tail[width_len..];
        let mut precision = None;
        if let Some(p) = tail.strip_prefix('.') {
            let n = p.find(|c: char| !c.is_ascii_digit()).unwrap_or(p.len());
            precision = Some(p[..n].parse::<usize>().unwrap_or(0));
            tail = &p[n..];
        }
        tail = tail.trim_start_matches(['h', 'l', 'L']);
        let Some(conv) = tail.chars().next() else {
            return Err("incomplete format".into());
        };
        rest = &tail[conv.len_utf8()..];
        let spec = &spec_start[..spec_start.len() - rest.len()];
        let Some(value) = vars(name) else {
            return Err(format!(
                "%({name}) cannot be expanded: supervisord knows no {name:?} here"
            ));
        };
        let text = match (value, conv) {
            (Var::Instance { start, count }, _) => {
                let digits = out.bytes().rev().take_while(u8::is_ascii_digit).count();
                let padded = flags == "0" && precision.is_none() && matches!(conv, 'd' | 'i' | 'u');
                let port = (digits > 0 && padded && width < 10)
                    .then(|| out[out.len() - digits..].parse::<i64>().ok())
                    .flatten()
                    .map(|d| d * 10_i64.pow(width as u32) + start)
                    .filter(|base| {
                        start + count <= 10_i64.pow(width as u32)
                            && (1..=65535).contains(base)
                            && base + count - 1 <= 65535
                            && instances.port.is_none_or(|p| p == *base)
                    });
                if let Some(base) = port {
                    out.truncate(out.len() - digits);
                    instances.port = Some(base);
                    out.push_str("{port}");
                    continue;
                }
                let plain = flags.is_empty() && width == 0 && precision.is_none();
                if start != 0 || !plain || !matches!(conv, 'd' | 'i' | 'u' | 's') {
                    instances.lossy.push(spec.to_string());
                }
                "{instance}".to_string()
            }
            (Var::Text(t), 's' | 'r') => {
                let t = if conv == 'r' { format!("'{t}'") } else { t };
                match precision {
                    Some(p) => t.chars().take(p).collect(),
                    None => t,
                }
            }
            (Var::Int(n), 's' | 'r') => n.to_string(),
            (Var::Int(n), 'd' | 'i' | 'u' | 'x' | 'X' | 'o') => int(n, conv, flags),
            (Var::Text(_), 'd' | 'i' | 'u' | 'x' | 'X' | 'o') => {
                return Err(format!("{spec}: a number is required, not a string"))
            }
            (_, c) => return Err(format!("unsupported format character {c:?} in {spec}")),
        };
        out.push_str(&pad(&text, width, flags));
    }
    out.push_str(rest);
    Ok(out)
}

fn int(n: i64, conv: char, flags: &str) -> String {
    let digits = match conv {
        'x' => format!("{:x}", n.unsigned_abs()),
        'X' => format!("{:X}", n.unsigned_abs()),
        'o' => format!("{:o}", n.unsigned_abs()),
        _ => n.unsigned_abs().to_string(),
    };
    let prefix = match (flags.contains('#'), conv) {
        (true, 'x') => "0x",
        (true, 'X') => "0X",
        (true, 'o') => "0o",
        _ => "",
    };
    let sign = if n < 0 {
        "-"
    } else if flags.contains('+') {
        "+"
    } else if flags.contains(' ') {
        " "
    } else {
        ""
    };
    format!("{sign}{prefix}{digits}")
}

/// Pads to `width` as `%` does: right-aligned, `-` left-aligns, `0` pads a
/// number with zeros after its sign.
fn pad(text: &str, width: usize, flags: &str) -> String {
    let len = text.chars().count();
    if len >= width {
        return text.to_string();
    }
    let fill = width - len;
    if flags.contains('-') {
        format!("{text}{}", " ".repeat(fill))
    } else if flags.contains('0')
        && text
            .trim_start_matches(['-', '+', ' '])
            .starts_with(|c: char| c.is_ascii_hexdigit())
    {
        let body = text.trim_start_matches(['-', '+', ' ']);
        let sign = &text[..text.len() - body.len()];
        format!("{sign}{}{body}", "0".repeat(fill))
    } else {
        format!("{}{text}", " ".repeat(fill))
    }
}

/// supervisord's `dict_of_key_value_pairs`: `KEY=val,KEY2="v, 2"` into
/// pairs, in order, a later KEY replacing an earlier one's value.
pub(crate) fn key_value_pairs(arg: &str) -> Result<Vec<(String, String)>, String> {
    let tokens = shlex_tokens(arg)?;
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let [k, eq, v] = match &tokens[i..] {
            [k, eq, v, ..] if eq == "=" => [k, eq, v],
            _ => {
                return Err(format!(
                    "unexpected end of key/value pairs in {arg:?} (quote values holding anything but letters, digits and _/.+-():)"
                ))
            }
        };
        let _ = eq;
        let v = v.trim_matches(['\'', '"']).to_string();
        match pairs.iter_mut().find(|(key, _)| key == k) {
            Some(pair) => pair.1 = v,
            None => pairs.push((k.clone(), v)),
        }
        i += 4;
    }
    Ok(pairs)
}

/// The tokens of Python's `shlex.shlex(arg)` (non-POSIX) with `/.+-():`
/// added to its word characters: words, quoted strings (quotes kept), and
/// every other character alone; `#` comments out the rest of the line.
fn shlex_tokens(arg: &str) -> Result<Vec<String>, String> {
    let is_word = |c: char| c.is_ascii_alphanumeric() || "_/.+-():".contains(c);
    let is_space = |c: char| " \t\r\n".contains(c);
    let mut tokens = Vec::new();
    let mut chars = arg.chars().peekable();
    let skip_line = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>| {
        for c in chars.by_ref() {
            if c == '\n' {
                break;
            }
        }
    };
    while let Some(c) = chars.next() {
        if is_space(c) {
            continue;
        }
        if c == '#' {
            skip_line(&mut chars);
            continue;
        }
        let mut token = String::from(c);
        if c == '"' || c == '\'' {
            loop {
                match chars.next() {
                    None => return Err(format!("no closing quotation in {arg:?}")),
                    Some(q) if q == c => {
                        token.push(q);
                        break;
                    }
                    Some(other) => token.push(other),
                }
            }
        } else if is_word(c) {
            while let Some(&n) = chars.peek() {
                if n == '#' {
                    // Non-POSIX shlex drops the rest of the line and goes on
                    // with the same word on the next one.
                    skip_line(&mut chars);
                } else if is_word(n) || n == '"' || n == '\'' {
                    token.push(n);
                    chars.next();
                } else {
                    break;
                }
            }
        }
        tokens.push(token);
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(name: &str) -> Option<Var> {
        match name {
            "program_name" => Some(Var::Text("worker".into())),
            "process_num" => Some(Var::Int(3)),
            "many" => Some(Var::Instance { start: 0, count: 4 }),
            _ => None,
        }
    }

    fn ex(s: &str) -> Result<String, String> {
        expand(s, &vars, &mut Instances::default())
    }

    #[test]
    fn formats_as_python_does() {
        assert_eq!(
            ex("%(program_name)s_%(process_num)02d").unwrap(),
            "worker_03"
        );
        assert_eq!(
            ex("%(process_num)d %(process_num)3d|%(process_num)-3d|").unwrap(),
            "3   3|3  |"
        );
        assert_eq!(
            ex("100%% %(program_name).3s %(process_num)x").unwrap(),
            "100% wor 3"
        );
        assert!(ex("%(nope)s").unwrap_err().contains("nope"));
        assert!(ex("50%").is_err());
        assert!(ex("%(program_name)d").is_err());
        assert!(ex("%(program_name)").is_err());
    }

    #[test]
    fn instances_become_the_placeholder() {
        let mut inst = Instances::default();
        let s = expand("%(many)d-%(many)02d-%(many)s", &vars, &mut inst).unwrap();
        assert_eq!(s, "{instance}-{instance}-{instance}");
        assert_eq!(inst.lossy, vec!["%(many)02d"]);
        assert_eq!(inst.port, None);
    }

    #[test]
    fn digits_and_a_padded_number_become_the_port() {
        let start = |start| move |n: &str| (n == "p").then_some(Var::Instance { start, count: 4 });
        let mut inst = Instances::default();
        let s = expand("--port=30%(p)02d --log=x%(p)02d", &start(1), &mut inst).unwrap();
        assert_eq!(s, "--port={port} --log=x{instance}");
        assert_eq!(inst.port, Some(3001));
        assert_eq!(inst.lossy, vec!["%(p)02d"]);
        // A second, different base cannot be the same {port}.
        let s = expand("40%(p)02d", &start(1), &mut inst).unwrap();
        assert_eq!(s, "40{instance}");
        // Too many processes for the padding, or past 65535: no port.
        let mut inst = Instances::default();
        let many = |n: &str| {
            (n == "p").then_some(Var::Instance {
                start: 0,
                count: 11,
            })
        };
        assert_eq!(expand("8%(p)01d", &many, &mut inst).unwrap(), "8{instance}");
        assert_eq!(
            expand("70%(p)03d", &start(0), &mut inst).unwrap(),
            "70{instance}"
        );
        assert_eq!(inst.port, None);
    }

    #[test]
    fn key_value_pairs_as_supervisord_reads_them() {
        let p = key_value_pairs("A=1,B=\"x, y\",C='z',PATH=/usr/bin:/bin, D = e").unwrap();
        let want = [
            ("A", "1"),
            ("B", "x, y"),
            ("C", "z"),
            ("PATH", "/usr/bin:/bin"),
            ("D", "e"),
        ];
        assert_eq!(p.len(), want.len());
        for ((k, v), (wk, wv)) in p.iter().zip(want) {
            assert_eq!((k.as_str(), v.as_str()), (wk, wv));
        }
        assert!(key_value_pairs("URL=postgres://u:p@h/db").is_err());
        assert!(key_value_pairs("A=\"open").is_err());
        assert_eq!(key_value_pairs("").unwrap(), vec![]);
        assert_eq!(
            key_value_pairs("A=1,A=2").unwrap(),
            vec![("A".to_string(), "2".to_string())]
        );
    }
}
