//! The small URL subset `base_url` accepts: `http(s)://host[:port][/prefix]`,
//! and [`redact`], which blanks the credentials in any URL shown to people.

use std::borrow::Cow;

/// What replaces a credential in a shown URL.
pub(crate) const REDACTED: &str = "[redacted]";

/// Query parameters whose values are credentials (`unix:///tmp/r.sock?pass=…`).
const SECRET_PARAMS: &[&str] = &[
    "pass",
    "password",
    "pwd",
    "token",
    "access_token",
    "auth",
    "key",
    "api_key",
    "apikey",
    "secret",
];

/// `text` with its credentials blanked, for admin views, logs and errors:
/// the password of a `scheme://user:password@host` URL (or the whole user
/// info when it has no `:`, which is then usually a token), and the values
/// of query parameters such as `pass` or `token`. Works on malformed URLs
/// too; text without credentials is returned as it is.
pub(crate) fn redact(text: &str) -> Cow<'_, str> {
    let mut out = String::new();
    let mut rest = text;
    if let Some(i) = text.find("://") {
        let start = i + 3;
        let end = text[start..]
            .find(['/', '?', '#'])
            .map_or(text.len(), |j| start + j);
        if let Some(at) = text[start..end].rfind('@') {
            let userinfo = &text[start..start + at];
            out.push_str(&text[..start]);
            if let Some((user, _)) = userinfo.split_once(':') {
                out.push_str(user);
                out.push(':');
            }
            out.push_str(REDACTED);
            rest = &text[start + at..];
        }
    }
    let Some(q) = rest.find('?') else {
        return if out.is_empty() {
            Cow::Borrowed(text)
        } else {
            out.push_str(rest);
            Cow::Owned(out)
        };
    };
    out.push_str(&rest[..=q]);
    let query = &rest[q + 1..];
    let (query, fragment) = match query.find('#') {
        Some(h) => (&query[..h], &query[h..]),
        None => (query, ""),
    };
    for (n, pair) in query.split('&').enumerate() {
        if n > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((k, _)) if SECRET_PARAMS.iter().any(|s| k.eq_ignore_ascii_case(s)) => {
                out.push_str(k);
                out.push('=');
                out.push_str(REDACTED);
            }
            _ => out.push_str(pair),
        }
    }
    out.push_str(fragment);
    if out == text {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(out)
    }
}

/// A parsed `base_url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BaseUrl {
    pub(crate) tls: bool,
    /// Host name or IP literal, without brackets.
    pub(crate) host: String,
    pub(crate) port: u16,
    /// Path prefix without a trailing slash (`/openai/v1`), or empty.
    pub(crate) prefix: String,
}

impl BaseUrl {
    /// The `Host` header value: the port is left out when it is the scheme's default.
    pub(crate) fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default = if self.tls { 443 } else { 80 };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// Parses a base URL; the error says what to write instead. The `url`
/// crate parses it (WHATWG rules: IPv6 literals, IDNA host names, the
/// scheme's default port); the checks around it are the gateway's policy:
/// no query, fragment, user info or spaces, and no `..` or empty segment
/// in the path prefix (the parser would resolve or keep them silently).
pub(crate) fn parse_base_url(text: &str) -> Result<BaseUrl, String> {
    let tls = if text.starts_with("https://") {
        true
    } else if text.starts_with("http://") {
        false
    } else {
        return Err(format!(
            "`{text}` must start with http:// or https:// (e.g. https://api.openai.com/v1)"
        ));
    };
    if text.contains(['?', '#', '@', ' ']) {
        return Err(format!(
            "`{}` may not contain a query, fragment, user info or spaces",
            redact(text)
        ));
    }
    let no_host = || format!("`{text}` has no valid host[:port]");
    let url = url::Url::parse(text).map_err(|_| no_host())?;
    let host = match url.host() {
        Some(url::Host::Domain(d)) => d.to_string(),
        Some(url::Host::Ipv4(a)) => a.to_string(),
        Some(url::Host::Ipv6(a)) => a.to_string(),
        None => return Err(no_host()),
    };
    let port = match url.port_or_known_default() {
        Some(0) | None => return Err(no_host()),
        Some(p) => p,
    };
    let raw_path = text
        .splitn(4, '/')
        .nth(3)
        .map_or(String::new(), |p| format!("/{p}"));
    let prefix = url.path().trim_end_matches('/').to_string();
    if raw_path.split('/').any(|seg| seg == "..") || prefix.contains("//") {
        return Err(format!("`{text}` has a malformed path"));
    }
    Ok(BaseUrl {
        tls,
        host,
        port,
        prefix,
    })
}

/// Splits `host`, `host:port`, `[v6]` or `[v6]:port`. `None` when malformed.
pub(crate) fn split_host_port(authority: &str) -> Option<(String, Option<u16>)> {
    if authority.is_empty() {
        return None;
    }
    if let Some(rest) = authority.strip_prefix('[') {
        let end = rest.find(']')?;
        let host = &rest[..end];
        host.parse::<std::net::Ipv6Addr>().ok()?;
        let after = &rest[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        return Some((host.to_string(), port));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, Some(p.parse::<u16>().ok()?)),
        None => (authority, None),
    };
    let valid = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_');
    if !valid || port == Some(0) {
        return None;
    }
    Some((host.to_ascii_lowercase(), port))
}

/// Checks a `key_store.postgres` URL's syntax without connecting. The
/// message never repeats the URL (it holds the password).
pub(crate) fn check_postgres_url(url: &str) -> Result<(), String> {
    let shape = "must be a URL such as postgres://user:${PGPASSWORD}@host:5432/tollgate";
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(format!("{shape} (it must start with postgres://)"));
    }
    let cfg: postgres::Config = url.parse().map_err(|_| shape.to_string())?;
    if cfg.get_hosts().is_empty() {
        return Err(format!("{shape} (no host)"));
    }
    if cfg.get_dbname().is_none() {
        return Err(format!("{shape} (no database name)"));
    }
    Ok(())
}

/// Whether a route's model can go in a Gemini path as it is: no character
/// that would need escaping, no empty or dot segment.
pub(crate) fn gemini_model_ok(model: &str) -> bool {
    !model.is_empty()
        && model
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._/".contains(&b))
        && model
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prefix_and_default_port() {
        let u = parse_base_url("https://h.example/openai/v1/").unwrap();
        assert_eq!(
            u,
            BaseUrl {
                tls: true,
                host: "h.example".into(),
                port: 443,
                prefix: "/openai/v1".into()
            }
        );
        assert_eq!(u.host_header(), "h.example");
        let u = parse_base_url("http://10.0.0.5:8000/v1").unwrap();
        assert_eq!((u.port, u.host_header().as_str()), (8000, "10.0.0.5:8000"));
        let u = parse_base_url("http://[::1]:9000").unwrap();
        assert_eq!((u.host.as_str(), u.prefix.as_str()), ("::1", ""));
        assert_eq!(u.host_header(), "[::1]:9000");
    }

    #[test]
    fn redacts_credentials_in_any_url() {
        for (url, want) in [
            (
                "redis://:s3cret@127.0.0.1:6379/0",
                "redis://:[redacted]@127.0.0.1:6379/0",
            ),
            (
                "rediss://user:s3cret@h:6380",
                "rediss://user:[redacted]@h:6380",
            ),
            ("https://tok3n@h/v1", "https://[redacted]@h/v1"),
            ("redis://:p@ss:w@rd@h", "redis://:[redacted]@h"),
            (
                "unix:///tmp/r.sock?db=1&pass=s3cret",
                "unix:///tmp/r.sock?db=1&pass=[redacted]",
            ),
            (
                "redis://h/?PASSWORD=x#frag",
                "redis://h/?PASSWORD=[redacted]#frag",
            ),
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            ("not a url at all", "not a url at all"),
            ("https://h/v1?model=x", "https://h/v1?model=x"),
        ] {
            assert_eq!(redact(url), want, "{url}");
        }
        assert!(matches!(redact("redis://h:1"), Cow::Borrowed(_)));
    }

    #[test]
    fn a_base_url_error_does_not_echo_a_password() {
        let e = parse_base_url("https://u:s3cret@h/v1").unwrap_err();
        assert!(!e.contains("s3cret") && e.contains("user info"), "{e}");
    }

    #[test]
    fn rejects_bad_urls() {
        for bad in [
            "ftp://x",
            "api.openai.com",
            "https://",
            "https://u:p@h/v1",
            "https://h/v1?x=1",
            "https://h:99999",
            "https://h/../v1",
        ] {
            assert!(parse_base_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn gemini_models_fit_a_path() {
        assert!(gemini_model_ok("tunedModels/my-model-1"));
        for bad in ["", "a b", "models/../x", "x?key=1", "a//b", "ü"] {
            assert!(!gemini_model_ok(bad), "{bad}");
        }
    }

    #[test]
    fn postgres_urls_are_checked_without_echoing_them() {
        assert!(check_postgres_url("postgres://u:pw@127.0.0.1:5432/db").is_ok());
        for bad in [
            "host=x password=hunter2",
            "postgres://u:hunter2@/db",
            "mysql://u:hunter2@h/db",
            "postgres://u:hunter2@h:notaport/db",
        ] {
            let e = check_postgres_url(bad).unwrap_err();
            assert!(!e.contains("hunter2"), "{e}");
        }
    }
}
