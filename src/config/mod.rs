//! Configuration: the YAML schema, `${VAR}` expansion, and validation.
//! Loading runs three steps: size check, `${VAR}` expansion and typed parsing
//! (unknown fields rejected, errors carry the field path), then `validate`.

pub mod duration;
pub mod env;
pub mod schema;
pub mod url;
pub mod validate;

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
    for p in cfg.providers.values_mut() {
        if let Some(f) = &p.ca_file {
            if Path::new(f).is_relative() {
                p.ca_file = Some(base.join(f).to_string_lossy().into_owned());
            }
        }
    }
}
