//! `[program.NAME.register]` and its backend tables (SPEC §5.2).
//!
//! Everything a balancer would accept silently and then misroute (HAProxy
//! takes a server address without a port, or a port of 0) is rejected here,
//! with the place in the file.

use std::path::Path;
use std::time::Duration;

use super::diagnostic::Span;
use super::placeholder;
use super::reader::{conv, TableReader, Value, ValueError};
use super::{EtcdConfig, HaproxyConfig, RegisterConfig, UpstreamFileConfig, UpstreamFormat};

/// Default `address`.
pub(crate) const DEFAULT_ADDRESS: &str = "127.0.0.1:{port}";
/// Default HAProxy `server` name template.
pub(crate) const DEFAULT_SERVER: &str = "{program}_{instance}";
/// Default etcd `key` template.
pub const DEFAULT_KEY: &str = "/minder/services/{program}/{host}/{name}";
/// Default etcd lease TTL.
const DEFAULT_TTL: Duration = Duration::from_secs(10);
/// etcd grants no lease shorter than this (its `minTTL`).
const MIN_TTL: Duration = Duration::from_secs(2);

/// Placeholders of register templates besides the program's own.
const EXTRA: &[&str] = &["host"];

/// `[program.NAME.register]`; `dir` resolves relative paths.
pub(crate) fn read_register(
    mut r: TableReader<'_, '_>,
    header: Span,
    has_port: bool,
    dir: &Path,
) -> Option<RegisterConfig> {
    let address = match r.get_spanned("address", conv::text) {
        Some((address, span)) => {
            check_template(&r, &span, "address", &address, has_port);
            if let Err(why) = check_address(&address) {
                r.error(&span, format!("\"address\": {why}"));
            }
            address
        }
        None => {
            if !has_port {
                r.error(
                    &header,
                    "[register] needs \"address\" (HOST:PORT) or the program's \"port\" for the default \"127.0.0.1:{port}\"",
                );
            }
            DEFAULT_ADDRESS.to_string()
        }
    };
    let drain = r.get("drain", conv::duration).unwrap_or(Duration::ZERO);
    let haproxy = r
        .table("haproxy")
        .and_then(|(t, span)| read_haproxy(t, span, has_port, dir));
    let etcd = r
        .table("etcd")
        .and_then(|(t, span)| read_etcd(t, span, has_port, dir));
    let file = r
        .table("file")
        .and_then(|(t, span)| read_file(t, span, has_port, dir));
    let any_backend = r.contains("haproxy") || r.contains("etcd") || r.contains("file");
    if !any_backend {
        r.error(
            &header,
            "[register] needs at least one backend: [register.haproxy], [register.etcd] or [register.file]",
        );
    }
    r.finish();
    Some(RegisterConfig {
        address,
        drain,
        haproxy,
        etcd,
        file,
    })
}

fn read_haproxy(
    mut r: TableReader<'_, '_>,
    header: Span,
    has_port: bool,
    dir: &Path,
) -> Option<HaproxyConfig> {
    let socket = r.get("socket", conv::text).map(|s| dir.join(s));
    if socket.is_none() {
        r.error(
            &header,
            "[register.haproxy] needs \"socket\": the path of HAProxy's admin socket (stats socket PATH level admin)",
        );
    }
    let backend = r.get("backend", |v| haproxy_name(v, "backend"));
    if backend.is_none() && !r.contains("backend") {
        r.error(
            &header,
            "[register.haproxy] needs \"backend\": the HAProxy backend the servers belong to",
        );
    }
    let server = match r.get_spanned("server", conv::text) {
        Some((server, span)) => {
            check_template(&r, &span, "server", &server, has_port);
            if let Some(bad) = server
                .chars()
                .find(|c| !haproxy_name_char(*c) && !"{}".contains(*c))
            {
                r.error(
                    &span,
                    format!("\"server\": {bad:?} cannot be in an HAProxy server name (letters, digits, '-', '_', '.', ':')"),
                );
            }
            server
        }
        None => DEFAULT_SERVER.to_string(),
    };
    r.finish();
    Some(HaproxyConfig {
        socket: socket?,
        backend: backend?,
        server,
    })
}

fn haproxy_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')
}

/// An HAProxy proxy name: what its config parser accepts.
fn haproxy_name(v: &Value<'_>, what: &str) -> Result<String, ValueError> {
    let name = conv::text(v)?;
    match name.chars().find(|c| !haproxy_name_char(*c)) {
        Some(bad) => Err(ValueError::invalid(
            format!(
                "{bad:?} cannot be in an HAProxy {what} name (letters, digits, '-', '_', '.', ':')"
            ),
            v,
        )),
        None if name.is_empty() => Err(ValueError::invalid("is empty", v)),
        None => Ok(name),
    }
}

fn read_etcd(
    mut r: TableReader<'_, '_>,
    header: Span,
    has_port: bool,
    dir: &Path,
) -> Option<EtcdConfig> {
    let endpoints: Option<Vec<String>> = r.get("endpoints", |v| {
        let list = conv::text_list(v)?;
        if list.is_empty() {
            return Err(ValueError::invalid(
                "is empty: name at least one etcd member (e.g. [\"http://127.0.0.1:2379\"])",
                v,
            ));
        }
        let mut out = Vec::with_capacity(list.len());
        for (url, span) in list {
            if let Err(why) = check_endpoint(&url) {
                return Err(ValueError::Invalid { message: why, span });
            }
            out.push(url.trim_end_matches('/').to_string());
        }
        Ok(out)
    });
    if endpoints.is_none() && !r.contains("endpoints") {
        r.error(
            &header,
            "[register.etcd] needs \"endpoints\" (e.g. endpoints = [\"http://127.0.0.1:2379\"])",
        );
    }
    let key = match r.get_spanned("key", conv::text) {
        Some((key, span)) => {
            check_template(&r, &span, "key", &key, has_port);
            key
        }
        None => DEFAULT_KEY.to_string(),
    };
    let ttl = r
        .get("ttl", |v| {
            let ttl = conv::duration(v)?;
            if ttl < MIN_TTL {
                return Err(ValueError::invalid(
                    format!(
                        "{} is below etcd's minimum lease TTL of 2s",
                        humantime::format_duration(ttl)
                    ),
                    v,
                ));
            }
            if ttl.subsec_nanos() != 0 {
                return Err(ValueError::invalid(
                    "must be whole seconds: etcd leases count in seconds",
                    v,
                ));
            }
            Ok(ttl)
        })
        .unwrap_or(DEFAULT_TTL);
    let (tls, tls_keys) = super::schema::read_tls(&mut r, dir);
    let any_https = endpoints
        .iter()
        .flatten()
        .any(|url| url.starts_with("https://"));
    if let (Some((key, span)), Some(_), false) = (tls_keys.first(), &endpoints, any_https) {
        // TLS keys with only http:// endpoints would be silently ignored.
        r.error(span, format!("\"{key}\" needs an https:// endpoint"));
    }
    r.finish();
    Some(EtcdConfig {
        endpoints: endpoints?,
        key,
        ttl,
        tls,
    })
}

/// An etcd client URL: `http://HOST:PORT` or `https://HOST:PORT`, nothing
/// after the port.
fn check_endpoint(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| {
            format!("{url:?} is not an http:// or https:// URL (e.g. \"http://127.0.0.1:2379\")")
        })?;
    let authority = rest.trim_end_matches('/');
    if authority.contains('/') {
        return Err(format!(
            "{url:?}: give the member's address only, without a path (the gateway's /v3/... paths are added)"
        ));
    }
    check_address(authority).map_err(|why| format!("{url:?}: {why}"))
}

fn read_file(
    mut r: TableReader<'_, '_>,
    header: Span,
    has_port: bool,
    dir: &Path,
) -> Option<UpstreamFileConfig> {
    let path = r.get_spanned("path", conv::text).map(|(path, span)| {
        check_template(&r, &span, "path", &path, has_port);
        dir.join(path)
    });
    if path.is_none() && !r.contains("path") {
        r.error(
            &header,
            "[register.file] needs \"path\": where to write the upstream file",
        );
    }
    let format = match r.get("format", conv::one_of(&["nginx", "json"])) {
        Some(1) => UpstreamFormat::Json,
        _ => UpstreamFormat::Nginx,
    };
    let reload = r
        .get("reload", conv::command)
        .map(|argv| argv.into_iter().map(|(a, _)| a).collect())
        .unwrap_or_default();
    r.finish();
    Some(UpstreamFileConfig {
        path: path?,
        format,
        reload,
        directory: dir.to_path_buf(),
    })
}

/// Reports unknown placeholders in a template (`{host}` is known here).
fn check_template(r: &TableReader<'_, '_>, span: &Span, key: &str, text: &str, has_port: bool) {
    for problem in placeholder::check_with(text, has_port, EXTRA) {
        r.error(span, format!("\"{key}\": {problem}"));
    }
}

/// `HOST:PORT` or `[V6]:PORT`, the port a number in 1..=65535 or `{port}`.
fn check_address(address: &str) -> Result<(), String> {
    let example = "(e.g. \"127.0.0.1:{port}\" or \"10.0.0.5:8080\")";
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(format!("{address:?} has no port {example}"));
    };
    if host.is_empty() || host == "[" {
        return Err(format!("{address:?} has no host {example}"));
    }
    if host.starts_with('[') != host.ends_with(']') {
        return Err(format!(
            "{address:?}: an IPv6 host goes in brackets, [::1]:PORT"
        ));
    }
    if let Some(bad) = host
        .chars()
        .find(|c| c.is_whitespace() || matches!(c, '/' | '#' | ';' | '@'))
    {
        return Err(format!("{address:?}: {bad:?} cannot be in a host name"));
    }
    if port == "{port}" {
        return Ok(());
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!(
            "{address:?}: the port {port:?} is not a number in 1..=65535 {example}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        for good in [
            "127.0.0.1:{port}",
            "10.0.0.5:8080",
            "[::1]:80",
            "web.local:{port}",
            "{host}:{port}",
        ] {
            assert_eq!(check_address(good), Ok(()), "{good}");
        }
        for (bad, says) in [
            ("127.0.0.1", "no port"),
            (":8080", "no host"),
            ("10.0.0.5:0", "not a number"),
            ("10.0.0.5:70000", "not a number"),
            ("10.0.0.5:http", "not a number"),
            ("[::1:80", "brackets"),
            ("a b:80", "cannot be in a host"),
        ] {
            let err = check_address(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn endpoints() {
        assert_eq!(check_endpoint("http://127.0.0.1:2379"), Ok(()));
        assert_eq!(check_endpoint("http://etcd.example:2379/"), Ok(()));
        assert_eq!(check_endpoint("https://etcd.example:2379"), Ok(()));
        assert!(check_endpoint("127.0.0.1:2379")
            .unwrap_err()
            .contains("not an http://"));
        assert!(check_endpoint("http://127.0.0.1:2379/v3")
            .unwrap_err()
            .contains("without a path"));
        assert!(check_endpoint("http://127.0.0.1")
            .unwrap_err()
            .contains("no port"));
    }
}
