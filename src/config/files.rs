//! Config of the Files and Batches endpoints: `files_provider` on keys and
//! teams (which provider serves them) and the top-level `files:` section
//! (the bound on the record of who owns which file and batch id).

use serde::{Deserialize, Serialize};

/// Default `files.max_objects`.
pub(crate) const DEFAULT_MAX_OBJECTS: u64 = 100_000;
/// Default `files.max_objects_per_owner`.
pub(crate) const DEFAULT_MAX_OBJECTS_PER_OWNER: u64 = 10_000;

/// The top-level `files:` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilesSection {
    /// File and batch ids recorded, all owners together, at most. Past
    /// it the oldest record is dropped (its object then answers 404).
    pub max_objects: u64,
    /// Ids recorded per owner (a team, or a key without a team), at most.
    /// Past it that owner's oldest record is dropped, never another's.
    pub max_objects_per_owner: u64,
}

impl Default for FilesSection {
    fn default() -> Self {
        Self {
            max_objects: DEFAULT_MAX_OBJECTS,
            max_objects_per_owner: DEFAULT_MAX_OBJECTS_PER_OWNER,
        }
    }
}

/// The provider kinds that serve `/v1/files` and `/v1/batches`: the
/// OpenAI wire on OpenAI's paths or Azure's. Translated kinds have no
/// such API.
pub(crate) fn serves_files(kind: super::ProviderKind) -> bool {
    matches!(
        kind,
        super::ProviderKind::Openai | super::ProviderKind::Azure
    )
}

/// What is wrong with `files:` and every `files_provider`, by field.
pub(crate) fn problems(cfg: &super::Config) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let f = &cfg.files;
    if f.max_objects == 0 {
        out.push(("files.max_objects".into(), "must be greater than 0".into()));
    }
    if f.max_objects_per_owner == 0 {
        out.push((
            "files.max_objects_per_owner".into(),
            "must be greater than 0".into(),
        ));
    } else if f.max_objects_per_owner > f.max_objects {
        out.push((
            "files.max_objects_per_owner".into(),
            format!(
                "{} is more than files.max_objects ({})",
                f.max_objects_per_owner, f.max_objects
            ),
        ));
    }
    let named = cfg
        .keys
        .iter()
        .enumerate()
        .map(|(i, k)| (format!("keys[{i}].files_provider"), &k.files_provider))
        .chain(
            cfg.teams
                .iter()
                .map(|(n, t)| (format!("teams.{n}.files_provider"), &t.files_provider)),
        );
    for (field, name) in named {
        let Some(name) = name else { continue };
        match cfg.providers.get(name) {
            None => {
                let defined: Vec<&str> = cfg.providers.keys().map(String::as_str).collect();
                out.push((
                    field,
                    format!(
                        "provider `{name}` is not defined; defined providers: {}",
                        if defined.is_empty() {
                            "(none)".into()
                        } else {
                            defined.join(", ")
                        }
                    ),
                ));
            }
            Some(p) if !serves_files(p.kind) => out.push((
                field,
                format!(
                    "provider `{name}` is of kind `{}`, which has no /v1/files or /v1/batches API; name an `openai` or `azure` provider",
                    p.kind.name()
                ),
            )),
            Some(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    fn parse(extra: &str) -> Result<crate::config::Config, crate::config::ConfigError> {
        let text = format!(
            "listen: \"127.0.0.1:8080\"\nproviders:\n  m: {{ kind: mock }}\n  oa: {{ kind: openai, base_url: \"http://127.0.0.1:9/v1\" }}\n  claude: {{ kind: anthropic, base_url: \"http://127.0.0.1:9/v1\", api_key: k }}\nmodels:\n  a: {{ routes: [ {{ provider: m, model: x }} ] }}\n{extra}"
        );
        crate::config::parse_str(&text, |_| None, std::path::Path::new("/etc/tollgate"))
    }

    fn problems(extra: &str) -> String {
        parse(extra).unwrap_err().problems.join("\n")
    }

    #[test]
    fn defaults_and_a_valid_files_provider() {
        let cfg = parse(
            "teams:\n  t: { files_provider: oa }\nkeys:\n  - { name: k, key: \"tg-key-000001\", team: t, files_provider: oa }\n",
        )
        .unwrap();
        assert_eq!(cfg.files.max_objects, super::DEFAULT_MAX_OBJECTS);
        assert_eq!(
            cfg.files.max_objects_per_owner,
            super::DEFAULT_MAX_OBJECTS_PER_OWNER
        );
        assert_eq!(cfg.teams["t"].files_provider.as_deref(), Some("oa"));
        assert_eq!(cfg.keys[0].files_provider.as_deref(), Some("oa"));
    }

    #[test]
    fn an_unknown_files_provider_names_the_field() {
        let p = problems("keys:\n  - { name: k, key: \"tg-key-000001\", files_provider: nope }\n");
        assert!(
            p.contains("keys[0].files_provider: provider `nope` is not defined; defined providers: claude, m, oa"),
            "{p}"
        );
        let p = problems("teams:\n  t: { files_provider: nope }\n");
        assert!(
            p.contains("teams.t.files_provider: provider `nope` is not defined"),
            "{p}"
        );
    }

    #[test]
    fn a_translated_or_local_kind_is_refused_naming_the_field() {
        let p = problems("teams:\n  t: { files_provider: claude }\n");
        assert!(
            p.contains("teams.t.files_provider: provider `claude` is of kind `anthropic`, which has no /v1/files"),
            "{p}"
        );
        let p = problems("keys:\n  - { name: k, key: \"tg-key-000001\", files_provider: m }\n");
        assert!(
            p.contains("keys[0].files_provider: provider `m` is of kind `mock`"),
            "{p}"
        );
    }

    #[test]
    fn bounds_must_be_positive_and_consistent() {
        let p = problems("files: { max_objects: 0 }\n");
        assert!(
            p.contains("files.max_objects: must be greater than 0"),
            "{p}"
        );
        let p = problems("files: { max_objects: 10, max_objects_per_owner: 11 }\n");
        assert!(
            p.contains("files.max_objects_per_owner: 11 is more than files.max_objects (10)"),
            "{p}"
        );
        let p = problems("files: { max_object: 10 }\n");
        assert!(p.contains("max_object"), "{p}");
    }
}
