//! The request path's view of the key store: an immutable map from a
//! secret's SHA-256 digest to the compiled key, rebuilt (incrementally) on
//! every change and swapped in whole. Expiry and rotation grace are checked
//! against the clock at lookup, so nothing is rebuilt when a key expires.

use super::model::{KeyRec, Records};
use crate::config::Config;
use crate::error::KeyRefusal;
use crate::runtime::KeyRt;
use bytes::Bytes;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// What one digest opens.
#[derive(Clone)]
struct Entry {
    /// `None` for a revoked key (nothing is compiled for it).
    key: Option<Arc<KeyRt>>,
    /// Unix ms; `i64::MAX` for never.
    expires_at: i64,
    /// Unix ms after which this secret is rotated out; `i64::MAX` for never.
    valid_until: i64,
}

/// The result of a lookup.
pub enum Lookup {
    Found(Arc<KeyRt>),
    /// A known secret that no longer opens its key.
    Refused(KeyRefusal),
    Unknown,
}

/// Digest → compiled key, for one state of the store and one config.
#[derive(Default, Clone)]
pub struct Snapshot {
    by_digest: HashMap<[u8; 32], Entry>,
    /// The change counter value it reflects.
    pub seq: i64,
}

impl Snapshot {
    /// The key that digest `d` opens at `now_ms`, or why it does not.
    pub fn lookup(&self, d: &[u8; 32], now_ms: i64) -> Lookup {
        let Some((known, e)) = self.by_digest.get_key_value(d) else {
            return Lookup::Unknown;
        };
        if !bool::from(known.ct_eq(d)) {
            return Lookup::Unknown;
        }
        match &e.key {
            None => Lookup::Refused(KeyRefusal::Revoked),
            Some(_) if now_ms >= e.valid_until => Lookup::Refused(KeyRefusal::RotatedOut),
            Some(_) if now_ms >= e.expires_at => Lookup::Refused(KeyRefusal::Expired),
            Some(k) => Lookup::Found(k.clone()),
        }
    }

    /// How many secrets it knows.
    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    /// Compiles every key of `records` against `cfg`.
    pub fn build(records: &Records, cfg: &Config) -> Snapshot {
        let mut s = Snapshot {
            by_digest: HashMap::with_capacity(records.keys.len()),
            seq: records.seq,
        };
        let c = Compiler::new(cfg);
        for k in records.keys.values() {
            s.insert(k, c.compile(k, records));
        }
        s
    }

    /// This snapshot with the keys named in `dirty` compiled again.
    /// A secret is never removed from the store, so every digest of the
    /// old snapshot is still there and only entries change or are added.
    pub fn update(&self, records: &Records, cfg: &Config, dirty: &BTreeSet<Arc<str>>) -> Snapshot {
        let mut s = self.clone();
        s.seq = records.seq;
        let c = Compiler::new(cfg);
        for name in dirty {
            if let Some(k) = records.keys.get(name) {
                s.insert(k, c.compile(k, records));
            }
        }
        s
    }

    fn insert(&mut self, k: &KeyRec, compiled: Option<Arc<KeyRt>>) {
        for sec in &k.secrets {
            self.by_digest.insert(
                sec.digest,
                Entry {
                    key: compiled.clone(),
                    expires_at: k.expires_at.unwrap_or(i64::MAX),
                    valid_until: sec.valid_until.unwrap_or(i64::MAX),
                },
            );
        }
    }
}

/// Compiles store keys with the config's own compile step.
struct Compiler<'a> {
    cfg: &'a Config,
    all_models: Bytes,
}

impl<'a> Compiler<'a> {
    fn new(cfg: &'a Config) -> Self {
        Compiler {
            cfg,
            all_models: KeyRt::all_models_body(&cfg.models),
        }
    }

    /// `None` for a revoked key. The team is the store's or the config's.
    fn compile(&self, k: &KeyRec, records: &Records) -> Option<Arc<KeyRt>> {
        if k.revoked_at.is_some() {
            return None;
        }
        let store_team = k
            .team
            .as_ref()
            .and_then(|t| records.teams.get(t))
            .map(|t| t.as_config_team());
        let team = match (&k.team, &store_team) {
            (Some(name), Some(t)) => Some((&**name, t)),
            (Some(name), None) => self
                .cfg
                .teams
                .get_key_value(&**name)
                .map(|(n, t)| (n.as_str(), t)),
            (None, _) => None,
        };
        let key = k.as_config_key();
        Some(Arc::new(KeyRt::compile(
            &key,
            team,
            &self.cfg.models,
            &self.all_models,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keystore::model::{KeySpec, SecretRec};

    fn cfg() -> Config {
        let yaml = r#"
listen: "127.0.0.1:8080"
providers: { m: { kind: mock } }
models: { a: { routes: [ { provider: m, model: x } ] }, b: { routes: [ { provider: m, model: y } ] } }
"#;
        crate::config::parse_str(yaml, |_| None, std::path::Path::new(".")).unwrap()
    }

    fn key(name: &str, secrets: Vec<SecretRec>) -> KeyRec {
        KeyRec {
            name: Arc::from(name),
            team: None,
            spec: KeySpec {
                models: Some(vec!["a".into()]),
                ..KeySpec::default()
            },
            expires_at: None,
            revoked_at: None,
            created_at: 0,
            updated_at: 0,
            secrets,
        }
    }

    fn secret(s: &str, valid_until: Option<i64>) -> SecretRec {
        SecretRec {
            digest: crate::auth::digest(s.as_bytes()),
            created_at: 0,
            valid_until,
        }
    }

    fn found(l: Lookup) -> Option<Arc<KeyRt>> {
        match l {
            Lookup::Found(k) => Some(k),
            _ => None,
        }
    }

    fn refused(l: Lookup) -> Option<KeyRefusal> {
        match l {
            Lookup::Refused(r) => Some(r),
            _ => None,
        }
    }

    #[test]
    fn expiry_rotation_and_revocation_are_told_apart() {
        let cfg = cfg();
        let mut r = Records::default();
        let mut k = key("k1", vec![secret("old", Some(1_000)), secret("new", None)]);
        k.expires_at = Some(5_000);
        r.keys.insert(k.name.clone(), k);
        let s = Snapshot::build(&r, &cfg);
        let d = |x: &str| crate::auth::digest(x.as_bytes());
        let k = found(s.lookup(&d("old"), 999)).unwrap();
        assert_eq!(&*k.name, "k1");
        assert!(k.allows("a") && !k.allows("b"));
        assert_eq!(refused(s.lookup(&d("old"), 1_000)), Some(KeyRefusal::RotatedOut));
        assert!(found(s.lookup(&d("new"), 4_999)).is_some());
        assert_eq!(refused(s.lookup(&d("new"), 5_000)), Some(KeyRefusal::Expired));
        assert!(matches!(s.lookup(&d("other"), 0), Lookup::Unknown));

        let mut r2 = r.clone();
        if let Some(k) = r2.keys.get_mut("k1") {
            k.revoked_at = Some(10);
        }
        let dirty: BTreeSet<Arc<str>> = [Arc::from("k1")].into_iter().collect();
        let s2 = s.update(&r2, &cfg, &dirty);
        assert_eq!(refused(s2.lookup(&d("new"), 0)), Some(KeyRefusal::Revoked));
        // The old snapshot is unchanged (requests holding it finish on it).
        assert!(found(s.lookup(&d("new"), 0)).is_some());
    }
}
