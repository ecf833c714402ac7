//! Configuration: the YAML schema, `${VAR}` expansion, and validation.
//! Loading runs these steps: size check, YAML parsing into a generic value,
//! `${VAR}` expansion inside its string values, typed parsing (unknown fields
//! rejected, errors carry the field path), then `validate`.

pub(crate) mod cache;
pub(crate) mod capture;
pub mod cloud;
pub(crate) mod duration;
pub(crate) mod env;
pub(crate) mod experiments;
pub(crate) mod files;
pub(crate) mod routing;
pub(crate) mod schema;
pub(crate) mod tracing;
pub(crate) mod url;
pub(crate) mod validate;
pub mod workloads;

pub use cache::{AliasCache, CacheRedis, CacheScope, CacheSection};
pub use capture::{compile_pattern, Capture, CaptureRetention};
pub use experiments::{Hedge, HedgeAfter, Shadow, ShadowSection, HEDGE_BURST};
pub use files::FilesSection;
pub use schema::*;
pub use tracing::TracingSection;
pub use workloads::{
    ByWorkload, ForwardTags, Unknown, WorkloadChoice, WorkloadLimits, WorkloadsSection,
};

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
    // A generic YAML value first: it refuses duplicate keys (typed maps
    // would keep the last), naming the key and its line.
    let mut doc = serde_yaml::from_str::<serde_yaml::Value>(text)
        .map_err(|e| ConfigError::one(yaml_error(text, &e)))?;
    let expanded = env::expand(&mut doc, &lookup).map_err(ConfigError::one)?;
    let masked = |mut e: ConfigError| {
        for p in &mut e.problems {
            *p = expanded.mask(p);
        }
        e
    };
    let mut cfg = typed(&doc, &expanded).map_err(masked)?;
    resolve_paths(&mut cfg, base);
    validate::validate(&cfg).map_err(masked)?;
    Ok(cfg)
}

/// A YAML syntax error, with a hint when its line has an unquoted `${`
/// (which YAML cannot read inside `{ }` or `[ ]`).
fn yaml_error(text: &str, e: &serde_yaml::Error) -> String {
    let line = e
        .location()
        .and_then(|l| text.lines().nth(l.line().saturating_sub(1)));
    let unquoted = line.is_some_and(|l| {
        l.match_indices("${")
            .any(|(i, _)| !matches!(l[..i].chars().last(), Some('"' | '\'' | '$')))
    });
    if unquoted {
        format!("{e} (quote `${{VAR}}` values inside `{{ }}` or `[ ]`: \"${{VAR}}\")")
    } else {
        e.to_string()
    }
}

/// Deserializes the expanded document into `Config`, errors naming their
/// field. It goes through YAML text again (`serde_yaml` writes every string
/// so that it reads back as the same string): the text deserializer reads a
/// plain scalar as a string wherever a string is wanted (`name: 42`,
/// `X-Version: 2`), which the `Value` deserializer would refuse. Line
/// numbers would point into that text, so they are left out.
fn typed(doc: &serde_yaml::Value, expanded: &env::Expanded) -> Result<Config, ConfigError> {
    let text = serde_yaml::to_string(doc).map_err(|e| ConfigError::one(e.to_string()))?;
    let de = serde_yaml::Deserializer::from_str(&text);
    serde_path_to_error::deserialize::<_, Config>(de).map_err(|err| {
        let at = env::FieldPath::of(err.path());
        let path = err.path().to_string();
        let inner = err.into_inner();
        let mut msg = without_location(&inner);
        // serde_yaml may start with its own (shorter) path: ours is enough.
        if let Some((head, rest)) = msg.split_once(": ") {
            if !head.contains(' ') && path.starts_with(head) {
                msg = rest.to_string();
            }
        }
        if let Some(name) = at.as_ref().and_then(|a| expanded.variable_at(a)) {
            msg = format!("{msg} (the value of `${{{name}}}`)");
        }
        if path == "." {
            ConfigError::one(msg)
        } else {
            ConfigError::one(format!("{path}: {msg}"))
        }
    })
}

/// A `serde_yaml` error's message without its ` at line L column C`.
fn without_location(e: &serde_yaml::Error) -> String {
    let msg = e.to_string();
    match msg
        .rfind(" at line ")
        .or_else(|| msg.rfind(" at position "))
    {
        Some(i) if e.location().is_some() => msg[..i].to_string(),
        _ => msg,
    }
}

fn resolve_paths(cfg: &mut Config, base: &Path) {
    if let Some(t) = &mut cfg.tls {
        for f in [&mut t.cert, &mut t.key] {
            if !f.is_empty() && Path::new(f.as_str()).is_relative() {
                *f = base.join(&*f).to_string_lossy().into_owned();
            }
        }
    }
    if let Some(path) = cfg.key_store.as_mut().and_then(|k| k.sqlite.as_mut()) {
        if !path.is_empty() && path != ":memory:" && Path::new(path.as_str()).is_relative() {
            *path = base.join(&*path).to_string_lossy().into_owned();
        }
    }
    if let Some(f) = cfg.tracing.as_mut().and_then(|t| t.ca_file.as_mut()) {
        if Path::new(f.as_str()).is_relative() {
            *f = base.join(&*f).to_string_lossy().into_owned();
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
                "providers.up.colour: unknown field `colour`",
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

    fn env_more(k: &str) -> Option<String> {
        match k {
            // No line break: a model may not hold control characters (the
            // property test below carries line breaks through expansion).
            "NASTY" => Some("m\"x,y}z #c: d[e] f{g}'h".into()),
            "BYTES" => Some("2048".into()),
            "OFF" => Some("false".into()),
            "NUMKEY" => Some("12345678".into()),
            "SECRET_WORD" => Some("not-a-number-secret".into()),
            _ => env(k),
        }
    }

    #[test]
    fn variables_keep_any_characters_verbatim() {
        let text = GOOD
            .replacen("model: m1,", "model: \"${NASTY}\",", 1)
            .replacen("${TEAM_KEY}", "${NUMKEY}", 1);
        let cfg = parse_str(&text, env_more, Path::new(".")).unwrap();
        assert_eq!(
            cfg.models["fast"].routes[0].model,
            "m\"x,y}z #c: d[e] f{g}'h"
        );
        assert_eq!(cfg.models.len(), 1, "no structure was injected");
        assert_eq!(
            cfg.keys[0].key.as_deref(),
            Some("12345678"),
            "a string field stays a string"
        );
    }

    proptest::proptest! {
        /// Whatever a variable holds (quotes, `#`, `: `, brackets, line
        /// breaks, leading spaces, any Unicode), the field gets exactly it.
        #[test]
        fn any_value_survives_expansion_and_typed_parsing(value in "(?s).{0,40}", pick in 0usize..8) {
            let specials = ["\"", ",", "}", " #", ": ", "[", "\n", "\r\n"];
            let value = format!("{value}{}{value}", specials[pick]);
            #[derive(serde::Deserialize)]
            struct One { v: String, n: u8 }
            let mut doc: serde_yaml::Value = serde_yaml::from_str("v: \"${X}\"\nn: 1\n").unwrap();
            let lookup = |_: &str| Some(value.clone());
            let x = env::expand(&mut doc, &lookup).unwrap();
            let text = serde_yaml::to_string(&doc).unwrap();
            let one: One = serde_yaml::from_str(&text).unwrap();
            proptest::prop_assert_eq!(one.v, value);
            proptest::prop_assert_eq!(one.n, 1);
            drop(x);
        }
    }

    #[test]
    fn an_unquoted_variable_in_a_flow_mapping_gets_a_hint() {
        let text = GOOD.replacen("\"${TEAM_KEY}\"", "${TEAM_KEY}", 1);
        let got = problems(&text);
        assert!(
            got.contains("line 14") && got.contains("quote `${VAR}`"),
            "{got}"
        );
    }

    #[test]
    fn a_whole_variable_fills_numbers_and_booleans() {
        let text = GOOD.replacen(
            "providers:",
            "max_body_bytes: ${BYTES}\ndownstream: { max_header_bytes: \"${BYTES}\" }\nproviders:",
            1,
        );
        let text = text.replacen("kind: openai", "kind: openai\n    stream_usage: ${OFF}", 1);
        let cfg = parse_str(&text, env_more, Path::new(".")).unwrap();
        assert_eq!(cfg.max_body_bytes, 2048);
        assert_eq!(cfg.downstream.max_header_bytes, 2048);
        assert!(!cfg.providers["up"].stream_usage);
        // Not a number: the error names the field and the variable, and
        // does not show the value.
        let bad = GOOD.replacen(
            "providers:",
            "max_body_bytes: ${SECRET_WORD}\nproviders:",
            1,
        );
        let got = match parse_str(&bad, env_more, Path::new(".")) {
            Ok(_) => panic!("accepted"),
            Err(e) => e.to_string(),
        };
        assert!(
            got.contains("max_body_bytes") && got.contains("${SECRET_WORD}"),
            "{got}"
        );
        assert!(!got.contains("not-a-number-secret"), "{got}");
    }

    #[test]
    fn unset_variables_name_the_field() {
        let got = problems(&GOOD.replacen("${UP_KEY}", "${NOT_SET}", 1));
        assert!(
            got.contains("providers.up.api_key") && got.contains("`NOT_SET` is not set"),
            "{got}"
        );
        // A comment is not expanded: an unset variable there is harmless.
        let commented = GOOD.replacen("models:", "# uses ${NOT_SET} later\nmodels:", 1);
        parse_str(&commented, env, Path::new(".")).unwrap();
    }

    #[test]
    fn keys_that_no_client_could_present_are_refused() {
        for (key, why) in [
            ("tg team a key", "visible ASCII"),
            ("tg-clé-équipe-a", "visible ASCII"),
            (" tg-team-a-key", "visible ASCII"),
            (&"k".repeat(513), "longer than 512"),
        ] {
            let text = GOOD.replacen("\"${TEAM_KEY}\"", &format!("{key:?}"), 1);
            let got = problems(&text);
            assert!(
                got.contains("keys[0].key: ") && got.contains(why),
                "{key:?}: {got}"
            );
        }
        let admin = |k: &str| {
            GOOD.replacen(
                "metrics_listen:",
                &format!("admin_listen: \"127.0.0.1:9092\"\nadmin_key: {k:?}\nmetrics_listen:"),
                1,
            )
        };
        let got = problems(&admin("admin key with spaces 01"));
        assert!(
            got.contains("admin_key: may contain only visible ASCII"),
            "{got}"
        );
    }

    #[test]
    fn an_admin_key_equal_to_a_hashed_gateway_key_is_refused() {
        let secret = "tg-shared-admin-and-gateway";
        let hexed = hex::encode(crate::auth::digest(secret.as_bytes()));
        let text = GOOD
            .replacen(
                "metrics_listen:",
                &format!(
                    "admin_listen: \"127.0.0.1:9092\"\nadmin_key: \"{secret}\"\nmetrics_listen:"
                ),
                1,
            )
            .replacen(
                "key: \"${TEAM_KEY}\"",
                &format!("key_sha256: \"{hexed}\""),
                1,
            );
        let got = problems(&text);
        assert!(
            got.contains("admin_key: must differ from every gateway key (it equals keys[0])"),
            "{got}"
        );
        // The same with a plain `key`.
        let text = text.replacen(
            &format!("key_sha256: \"{hexed}\""),
            &format!("key: \"{secret}\""),
            1,
        );
        assert!(
            problems(&text).contains("admin_key: must differ"),
            "{}",
            problems(&text)
        );
    }

    #[test]
    fn experiment_errors_name_their_field() {
        let yaml = GOOD.replace(
            "      - { provider: up, model: m1, timeouts: { first_byte: 500ms } }\n",
            "      - { provider: g, model: m1 }\n    shadow: { route: { provider: g, model: m2 }, sample: 1.5 }\n    hedge: { after: 1s, max_share: 2 }\n  solo:\n    routes: [ { provider: up, model: m1 } ]\n    hedge: { after: 1s }\n",
        )
        .replace(
            "models:\n",
            "  g:\n    kind: gemini\n    api_key: \"k\"\nshadow: { budget: nobody }\nmodels:\n",
        );
        let p = problems(&yaml);
        for want in [
            "shadow.budget: `nobody` is not a team under teams",
            "models.fast.shadow.sample: must be between 0 and 1",
            "models.fast.shadow.route.provider: `g` must be an OpenAI-kind provider",
            "models.fast.hedge: routes[0] uses provider `g`, which is not OpenAI-kind",
            "models.fast.hedge.max_share: must be between 0 and 1",
            "models.solo.hedge: needs at least two routes",
        ] {
            assert!(p.contains(want), "{want}\nin:\n{p}");
        }
    }

    #[test]
    fn capture_errors_name_their_field() {
        let yaml = GOOD.replace(
            "      - { provider: up, model: m1, timeouts: { first_byte: 500ms } }\n",
            "      - { provider: up, model: m1 }\n    capture: { sample: 2, max_bytes: 10, redact: [\"(unclosed\", \"\"] }\n",
        )
        .replace(
            "models:\n",
            "capture_retention: { max_rows: 0, interval: 0s }\nmodels:\n",
        );
        let p = problems(&yaml);
        for want in [
            "models.fast.capture: needs `key_store`",
            "models.fast.capture.sample: must be between 0 and 1",
            "models.fast.capture.max_bytes: must be between 64 and 1048576",
            "models.fast.capture.redact[0]: not a valid regular expression",
            "models.fast.capture.redact[1]: is empty",
            "capture_retention.max_rows: must be at least 1",
            "capture_retention.interval: must be between 1s and 1h",
        ] {
            assert!(p.contains(want), "{want}\nin:\n{p}");
        }
        let unknown = GOOD.replace(
            "      - { provider: up, model: m1, timeouts: { first_byte: 500ms } }\n",
            "      - { provider: up, model: m1 }\n    capture: { sample: 1, samples: 2 }\n",
        );
        let p = problems(&unknown);
        assert!(
            p.contains("models.fast.capture") && p.contains("samples"),
            "{p}"
        );
    }

    #[test]
    fn an_upstream_model_with_control_characters_is_refused() {
        // A CR or LF in the model would end a multipart form part's line
        // when the gateway writes it into the form (and split a header).
        let line = "      - { provider: up, model: m1, timeouts: { first_byte: 500ms } }\n";
        assert!(GOOD.contains(line));
        for model in ["\"m1\\r\\nx: y\"", "\"m\\tb\"", "\"m\\u007f\""] {
            let yaml = GOOD.replace(
                line,
                &format!("      - {{ provider: up, model: {model} }}\n"),
            );
            let p = problems(&yaml);
            let want = "models.fast.routes[0].model: must not contain control characters";
            assert!(p.contains(want), "{want}\nin:\n{p}");
        }
        // Long names and YAML syntax are the operator's to choose.
        let long = format!("\"{}: #[x]\"", "m".repeat(4096));
        let yaml = GOOD.replace(
            line,
            &format!("      - {{ provider: up, model: {long} }}\n"),
        );
        if let Err(e) = parse_str(&yaml, env, Path::new("/etc/tollgate")) {
            panic!("a long model with YAML syntax is refused: {e}");
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
