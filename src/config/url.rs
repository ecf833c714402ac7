//! The small URL subset `base_url` accepts: `http(s)://host[:port][/prefix]`.

/// A parsed `base_url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    pub tls: bool,
    /// Host name or IP literal, without brackets.
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing slash (`/openai/v1`), or empty.
    pub prefix: String,
}

impl BaseUrl {
    /// The `Host` header value: the port is left out when it is the scheme's default.
    pub fn host_header(&self) -> String {
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

/// Parses a base URL; the error says what to write instead.
pub fn parse_base_url(text: &str) -> Result<BaseUrl, String> {
    let (tls, rest) = if let Some(r) = text.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = text.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(format!(
            "`{text}` must start with http:// or https:// (e.g. https://api.openai.com/v1)"
        ));
    };
    if rest.contains(['?', '#', '@', ' ']) {
        return Err(format!(
            "`{text}` may not contain a query, fragment, user info or spaces"
        ));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (host, port) =
        split_host_port(authority).ok_or_else(|| format!("`{text}` has no valid host[:port]"))?;
    let port = port.unwrap_or(if tls { 443 } else { 80 });
    let prefix = path.trim_end_matches('/').to_string();
    if prefix.contains("..") || prefix.contains("//") {
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
pub fn split_host_port(authority: &str) -> Option<(String, Option<u16>)> {
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
}
