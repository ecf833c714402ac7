//! Configuration: the YAML schema, `${VAR}` expansion, and validation.
//! Loading runs three steps: size check, `${VAR}` expansion and typed parsing
//! (unknown fields rejected, errors carry the field path), then `validate`.

pub mod duration;
pub mod env;
pub mod experiments;
pub mod routing;
pub mod schema;
pub mod url;
pub mod validate;

pub use experiments::{Hedge, HedgeAfter, Shadow, ShadowSection, HEDGE_BURST};
pub use schema::*;

use std::fmt;
use std::path::Path;

/// Config files larger than this are refused before parsing.
const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

/// Everything wrong with a config file, each problem naming its field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl ConfigError {
    pub fn one(msg: impl Into<String>) -> Self {
        Self {
            problems: vec![msg.into()],
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Reads, expands, parses and validates the file at `path`.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let shown = path.display();
    let meta = std::fs::metadata(path)
        .map_err(|e| ConfigError::one(format!("config file {shown}: {e}")))?;
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(ConfigError::one(format!(
            "config file {shown} is {} bytes; the limit is {MAX_CONFIG_BYTES}",
            meta.len()
        )));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::one(format!("config file {shown}: {e}")))?;
    let base = path.parent().unwrap_or_else(|| Path::new("."));
    parse_str(&text, |k| std::env::var(k).ok(), base).map_err(|mut e| {
        for p in &mut e.problems {
            *p = format!("{shown}: {p}");
        }
        e
    })
}

/// Parses and validates config text. Relative file paths resolve against `base`.
pub fn parse_str(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
    base: &Path,
) -> Result<Config, ConfigError> {
    let expanded = env::expand(text, lookup).map_err(ConfigError::one)?;
    // Typed maps keep the last of two equal keys; a generic YAML value
    // refuses them, naming the key and its line.
    serde_yaml::from_str::<serde_yaml::Value>(&expanded)
        .map_err(|e| ConfigError::one(e.to_string()))?;
    let de = serde_yaml::Deserializer::from_str(&expanded);
    let mut cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path == "." {
            ConfigError::one(inner)
        } else {
            ConfigError::one(format!("{path}: {inner}"))
        }
    })?;
    resolve_paths(&mut cfg, base);
    validate::validate(&cfg)?;
    Ok(cfg)
}

fn resolve_paths(cfg: &mut Config, base: &Path) {
    if let Some(t) = &mut cfg.tls {
        for f in [&mut t.cert, &mut t.key] {
            if !f.is_empty() && Path::new(f.as_str()).is_relative() {
                *f = base.join(&*f).to_string_lossy().into_owned();
            }
        }
    }
    for p in cfg.providers.values_mut() {
        if let Some(f) = &p.ca_file {
            if Path::new(f).is_relative() {
                p.ca_file = Some(base.join(f).to_string_lossy().into_owned());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
listen: "127.0.0.1:8080"
metrics_listen: "127.0.0.1:9091"
providers:
  up:
    kind: openai
    base_url: "https://api.example.com/v1"
    api_key: "${UP_KEY}"
models:
  fast:
    routes:
      - { provider: up, model: m1, timeouts: { first_byte: 500ms } }
keys:
  - { name: team-a, key: "${TEAM_KEY}", models: [fast] }
"#;

    fn env(k: &str) -> Option<String> {
        match k {
            "UP_KEY" => Some("sk-upstream-123".into()),
            "TEAM_KEY" => Some("tg-team-a-123456".into()),
            _ => None,
        }
    }

    fn problems(yaml: &str) -> String {
        match parse_str(yaml, env, Path::new("/etc/tollgate")) {
            Ok(_) => panic!("accepted:\n{yaml}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn accepts_the_documented_shape() {
        let cfg = parse_str(GOOD, env, Path::new(".")).unwrap();
        assert_eq!(
            cfg.providers["up"].api_key.as_deref(),
            Some("sk-upstream-123")
        );
        assert_eq!(cfg.models["fast"].routes[0].model, "m1");
    }

    #[test]
    fn every_error_names_its_field() {
        for (edit, want) in [
            (
                ("kind: openai", "kind: openai\n    colour: blue"),
                "providers.up: unknown field `colour`",
            ),
            (
                ("provider: up,", "provider: nope,"),
                "models.fast.routes[0].provider",
            ),
            (("models: [fast]", "models: [slow]"), "keys[0].models"),
            (("${UP_KEY}", "${NOT_SET}"), "NOT_SET"),
            (
                ("500ms", "soon"),
                "models.fast.routes[0].timeouts.first_byte",
            ),
            (
                ("https://api.example.com/v1", "ftp://x"),
                "providers.up.base_url",
            ),
            (
                ("kind: openai", "kind: openai\n    ca_file: missing.pem"),
                "providers.up.ca_file",
            ),
            (("listen:", "lisen:"), "unknown field `lisen`"),
            (
                (
                    "providers:",
                    "downstream: { read_buffer_bytes: 2000000 }\nproviders:",
                ),
                "downstream.read_buffer_bytes",
            ),
        ] {
            let text = GOOD.replacen(edit.0, edit.1, 1);
            let got = problems(&text);
            assert!(got.contains(want), "{edit:?}: {got}");
        }
    }

    #[test]
    fn tls_section_parses_and_is_checked() {
        let with =
            |tls: &str| GOOD.replacen("metrics_listen:", &format!("{tls}\nmetrics_listen:"), 1);
        let cfg = parse_str(
            &with("tls: { cert: c.pem, key: k.pem, min_version: 1.3 }\nplain_listen: \"127.0.0.1:8081\""),
            env,
            Path::new("/etc/tollgate"),
        )
        .unwrap();
        let t = cfg.tls.unwrap();
        assert_eq!(t.min_version, TlsVersion::V1_3);
        assert!(t.http2, "http2 defaults to on");
        assert_eq!(t.cert, "/etc/tollgate/c.pem", "relative to the config file");
        for (tls, want) in [
            (
                "tls: { cert: c.pem, key: k.pem, min_version: \"1.1\" }",
                "tls.min_version",
            ),
            ("tls: { cert: c.pem }", "tls: missing field `key`"),
            (
                "tls: { cert: \"\", key: k.pem }",
                "tls.cert: must name a PEM file",
            ),
            (
                "plain_listen: \"127.0.0.1:8080\"",
                "plain_listen: must differ from `listen`",
            ),
            (
                "plain_listen: localhost:1",
                "plain_listen: `localhost:1` is not an IP:port",
            ),
        ] {
            let got = problems(&with(tls));
            assert!(got.contains(want), "{tls}: {got}");
        }
    }

    #[test]
    fn governance_errors_name_their_field() {
        let with_team = GOOD.replacen(
            "models: [fast] }",
            "models: [fast], team: research, limits: { rpm: 60 }, budgets: [ { usd: 20, window: day } ] }",
            1,
        );
        let ok = format!(
            "{with_team}teams:\n  research:\n    limits: {{ tpm: 1000, concurrency: 4 }}\n    budgets:\n      - {{ usd: 500, window: month }}\n      - {{ tokens: 2000, window: 30d }}\n"
        );
        let cfg = parse_str(&ok, env, Path::new(".")).unwrap();
        assert_eq!(
            cfg.teams["research"].budgets[1].window,
            BudgetWindow::Rolling(std::time::Duration::from_secs(30 * 86_400))
        );
        assert_eq!(cfg.keys[0].limits.rpm, Some(60));
        assert!(problems(&with_team).contains("keys[0].team: team `research` is not defined"));
        for (edit, want) in [
            (
                (
                    "tokens: 2000, window: 30d",
                    "tokens: 2000, usd: 1, window: 30d",
                ),
                "teams.research.budgets[1]: set exactly one",
            ),
            (
                ("window: 30d", "window: fortnight"),
                "teams.research.budgets[1].window",
            ),
            (
                ("concurrency: 4", "concurrency: 0"),
                "teams.research.limits.concurrency",
            ),
            (
                ("usd: 500, window: month", "usd: -5, window: month"),
                "teams.research.budgets[0].usd",
            ),
            (("tpm: 1000", "tpm: 1000, rps: 3"), "unknown field `rps`"),
            (
                ("tokens: 2000, window: 30d", "usd: 3, window: month"),
                "already set",
            ),
        ] {
            let text = ok.replacen(edit.0, edit.1, 1);
            let got = problems(&text);
            assert!(got.contains(want), "{edit:?}: {got}");
        }
    }

    #[test]
    fn all_problems_are_reported_at_once() {
        let text = GOOD
            .replacen("provider: up,", "provider: nope,", 1)
            .replacen("models: [fast]", "models: [slow]", 1);
        let got = problems(&text);
        assert!(
            got.contains("models.fast.routes[0].provider") && got.contains("keys[0].models"),
            "{got}"
        );
    }

    #[test]
    fn duplicate_map_keys_are_refused() {
        let twice = GOOD.replacen(
            "models:\n",
            "models:\n  fast:\n    routes: [{ provider: up, model: other }]\n",
            1,
        );
        assert!(
            problems(&twice).contains("duplicate"),
            "{}",
            problems(&twice)
        );
        let keys = GOOD.replacen(
            "keys:\n",
            "keys:\n  - { name: team-b, key: \"${TEAM_KEY}\" }\n",
            1,
        );
        assert!(problems(&keys).contains("keys[1]"), "{}", problems(&keys));
    }
}
