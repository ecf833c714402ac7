//! The request path's view of the key store: an immutable map from a
//! secret's SHA-256 digest to its key, swapped in whole on every change.
//!
//! - Expiry and rotation grace are checked against the clock at lookup, so
//!   nothing is rebuilt when a key expires.
//! - A key is compiled (its rules, `/v1/models` body and routing access,
//!   by the same `KeyRt::compile` as config keys) on its first lookup in a
//!   snapshot and kept: 100,000 stored keys cost their rows, not 100,000
//!   compiled rule sets, and a first request pays about 10 µs once.
//!   A change to a key, its team or the config gives the affected keys a
//!   fresh entry, compiled again on their next request.

use super::model::{KeySpec, TeamRec};
use crate::base::error::KeyRefusal;
use crate::config::Config;
use crate::governance::Level;
use crate::keys::KeyRt;
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use subtle::ConstantTimeEq;

/// One stored key, shared by the entries of its secrets.
struct KeyEntry {
    name: Arc<str>,
    team: Option<Arc<str>>,
    /// The stored spec (JSON), parsed when the key is compiled.
    spec: Arc<str>,
    /// Unix ms; `i64::MAX` for never.
    expires_at: i64,
    revoked: bool,
    compiled: OnceLock<Arc<KeyRt>>,
}

impl KeyEntry {
    /// The same key, not yet compiled (after its team or the config changed).
    fn fresh(&self) -> KeyEntry {
        KeyEntry {
            name: self.name.clone(),
            team: self.team.clone(),
            spec: self.spec.clone(),
            expires_at: self.expires_at,
            revoked: self.revoked,
            compiled: OnceLock::new(),
        }
    }
}

/// What one digest opens.
#[derive(Clone)]
struct Entry {
    key: Arc<KeyEntry>,
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

/// What compiling needs besides the key: the config, the store's teams,
/// and the `/v1/models` bodies already built (most keys share a few).
struct Context {
    cfg: Arc<Config>,
    teams: BTreeMap<Arc<str>, TeamRec>,
    /// Team names (config and store), so keys share them.
    team_names: HashMap<String, Arc<str>>,
    all_models: Bytes,
    bodies: Mutex<HashMap<Vec<String>, Bytes>>,
}

/// Hashes a SHA-256 digest by its first 8 bytes, which are already
/// uniformly distributed: SipHash on the request path would only cost
/// time. Safe against flooding: the map is built from stored digests only
/// (a client adds nothing to it), and a lookup of a presented key's digest
/// probes no further than the stored entries' own layout.
#[derive(Default, Clone, Copy)]
struct DigestHasher(u64);

impl std::hash::Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut word = [0u8; 8];
        let n = bytes.len().min(8);
        word[..n].copy_from_slice(&bytes[..n]);
        self.0 = self.0.rotate_left(29) ^ u64::from_le_bytes(word);
    }
}

/// Digest → what it opens.
type DigestMap = HashMap<[u8; 32], Entry, std::hash::BuildHasherDefault<DigestHasher>>;

/// Digest → key, for one state of the store and one config.
#[derive(Clone)]
pub struct Snapshot {
    by_digest: DigestMap,
    ctx: Arc<Context>,
    /// The change counter value it reflects.
    pub(crate) seq: i64,
}

impl Snapshot {
    /// An empty snapshot for `cfg`.
    pub fn empty(cfg: Arc<Config>) -> Snapshot {
        Snapshot {
            by_digest: DigestMap::default(),
            ctx: Arc::new(Context::new(cfg, BTreeMap::new())),
            seq: 0,
        }
    }

    /// The key that digest `d` opens at `now_ms`, or why it does not.
    pub fn lookup(&self, d: &[u8; 32], now_ms: i64) -> Lookup {
        self.lookup_at(d, || now_ms)
    }

    /// [`lookup`](Self::lookup), reading the clock (`now`, Unix ms) only
    /// for a secret with an end (an expiry or a rotation's grace period).
    pub fn lookup_at(&self, d: &[u8; 32], now: impl FnOnce() -> i64) -> Lookup {
        let Some((known, e)) = self.by_digest.get_key_value(d) else {
            return Lookup::Unknown;
        };
        if !bool::from(known.ct_eq(d)) {
            return Lookup::Unknown;
        }
        let k = &e.key;
        if k.revoked {
            return Lookup::Refused(KeyRefusal::Revoked);
        }
        let ends = e.valid_until.min(k.expires_at);
        if ends != i64::MAX {
            let now_ms = now();
            if now_ms >= e.valid_until {
                return Lookup::Refused(KeyRefusal::RotatedOut);
            }
            if now_ms >= k.expires_at {
                return Lookup::Refused(KeyRefusal::Expired);
            }
        }
        Lookup::Found(k.compiled.get_or_init(|| self.compile(k)).clone())
    }

    /// How many secrets it knows.
    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    /// The store's teams.
    pub fn teams(&self) -> &BTreeMap<Arc<str>, TeamRec> {
        &self.ctx.teams
    }

    /// The config the keys are compiled against.
    pub fn config(&self) -> &Arc<Config> {
        &self.ctx.cfg
    }

    /// Every stored key's name and team.
    pub fn keys(&self) -> BTreeMap<Arc<str>, (Option<Arc<str>>, bool)> {
        self.by_digest
            .values()
            .map(|e| (e.key.name.clone(), (e.key.team.clone(), e.key.revoked)))
            .collect()
    }

    /// Compiles a key with the config's own compile step, its team being
    /// the store's or the config's. Strings shared with the entry are
    /// reused rather than copied.
    fn compile(&self, k: &KeyEntry) -> Arc<KeyRt> {
        let ctx = &self.ctx;
        let spec: KeySpec = serde_json::from_str(&k.spec).unwrap_or_default();
        let store_team = k
            .team
            .as_ref()
            .and_then(|t| ctx.teams.get(t))
            .map(TeamRec::as_config_team);
        let team = match (&k.team, &store_team) {
            (Some(name), Some(t)) => Some((&**name, t)),
            (Some(name), None) => ctx
                .cfg
                .teams
                .get_key_value(&**name)
                .map(|(n, t)| (n.as_str(), t)),
            (None, _) => None,
        };
        let key = crate::config::Key {
            name: k.name.to_string(),
            key: None,
            key_sha256: None,
            models: spec.models,
            team: k.team.as_deref().map(String::from),
            limits: spec.limits,
            budgets: spec.budgets,
            tier: spec.tier,
            regions: spec.regions,
            // A runtime key takes its team's (`KeyRt::compile`).
            files_provider: None,
            tags: Default::default(),
            allowed_tags: Default::default(),
            workload_limits: Default::default(),
        };
        let declared = crate::workload::Declared::compile(&ctx.cfg.workloads);
        let mut rt = KeyRt::compile(&key, team, &ctx.cfg.models, &ctx.all_models, &declared);
        rt.name = k.name.clone();
        rt.team = k.team.clone();
        for r in &mut rt.rules {
            match (r.id.level, &k.team) {
                (Level::Key, _) => r.id.name = k.name.clone(),
                (Level::Team, Some(t)) => r.id.name = t.clone(),
                _ => {}
            }
        }
        crate::governance::export_remaining_local(&rt.rules);
        if let Some(models) = &key.models {
            let mut bodies = ctx.bodies.lock().unwrap_or_else(|p| p.into_inner());
            match bodies.get(models) {
                Some(b) => rt.models_body = b.clone(),
                None => {
                    bodies.insert(models.clone(), rt.models_body.clone());
                }
            }
        }
        Arc::new(rt)
    }

    /// The start of the next snapshot: this one's entries, the teams
    /// changed as given, at change `head`. Changed keys are then added with
    /// [`insert`](Self::insert).
    pub fn begin(&self, head: i64, teams: Vec<(TeamRec, bool)>) -> Snapshot {
        let ctx = if teams.is_empty() {
            self.ctx.clone()
        } else {
            let mut map = self.ctx.teams.clone();
            for (t, deleted) in teams {
                if deleted {
                    map.remove(&t.name);
                } else {
                    map.insert(t.name.clone(), t);
                }
            }
            Arc::new(Context::new(self.ctx.cfg.clone(), map))
        };
        Snapshot {
            by_digest: self.by_digest.clone(),
            ctx,
            seq: head,
        }
    }

    /// This snapshot for another config: every key compiled again on its
    /// next request.
    pub fn with_config(&self, cfg: Arc<Config>) -> Snapshot {
        let mut fresh: HashMap<*const KeyEntry, Arc<KeyEntry>> = HashMap::new();
        let by_digest = self
            .by_digest
            .iter()
            .map(|(d, e)| {
                let k = fresh
                    .entry(Arc::as_ptr(&e.key))
                    .or_insert_with(|| Arc::new(e.key.fresh()))
                    .clone();
                (
                    *d,
                    Entry {
                        key: k,
                        valid_until: e.valid_until,
                    },
                )
            })
            .collect();
        Snapshot {
            by_digest,
            ctx: Arc::new(Context::new(cfg, self.ctx.teams.clone())),
            seq: self.seq,
        }
    }

    /// Adds a key (as a fresh entry for each of its secrets), replacing
    /// what its digests opened before. A secret is never removed from the
    /// store, so digests are only added or changed.
    pub fn insert(&mut self, k: StoredKey) {
        let team = k.team.map(|t| {
            self.ctx
                .team_names
                .get(&*t)
                .cloned()
                .unwrap_or_else(|| Arc::from(t))
        });
        let entry = Arc::new(KeyEntry {
            name: Arc::from(k.name),
            team,
            spec: Arc::from(k.spec),
            expires_at: k.expires_at.unwrap_or(i64::MAX),
            revoked: k.revoked,
            compiled: OnceLock::new(),
        });
        for (digest, valid_until) in k.secrets {
            self.by_digest.insert(
                digest,
                Entry {
                    key: entry.clone(),
                    valid_until: valid_until.unwrap_or(i64::MAX),
                },
            );
        }
    }

    /// What the snapshot knows of key `name` (the admin API's answer while
    /// the database is unreachable): its fields, not its timestamps.
    pub fn key_view(&self, name: &str, now_ms: i64) -> Option<serde_json::Value> {
        let e = self.by_digest.values().find(|e| &*e.key.name == name)?;
        let k = &e.key;
        let spec: KeySpec = serde_json::from_str(&k.spec).unwrap_or_default();
        let status = if k.revoked {
            "revoked"
        } else if k.expires_at <= now_ms {
            "expired"
        } else {
            "active"
        };
        Some(serde_json::json!({
            "name": &*k.name, "source": "store", "team": k.team.as_deref(),
            "models": spec.models, "limits": spec.limits, "budgets": spec.budgets,
            "tier": spec.tier, "regions": spec.regions,
            "metadata": super::model::metadata_json(&spec.metadata),
            "status": status,
            "expires_at": (k.expires_at != i64::MAX).then(|| super::model::rfc3339(k.expires_at)),
            "from_snapshot": true,
        }))
    }

    /// The names of the store's keys that are not revoked and belong to
    /// one of `teams`.
    pub fn keys_of(&self, teams: &BTreeSet<&str>) -> BTreeSet<Arc<str>> {
        self.by_digest
            .values()
            .filter(|e| !e.key.revoked && e.key.team.as_deref().is_some_and(|t| teams.contains(t)))
            .map(|e| e.key.name.clone())
            .collect()
    }
}

/// A key as the change feed reads it: its spec still as stored (JSON).
#[derive(Debug, Default)]
pub struct StoredKey {
    pub(crate) name: String,
    pub(crate) team: Option<String>,
    pub(crate) spec: String,
    pub(crate) expires_at: Option<i64>,
    pub(crate) revoked: bool,
    /// Every secret: digest and the end of its rotation grace, if any.
    pub(crate) secrets: Vec<([u8; 32], Option<i64>)>,
}

impl Context {
    fn new(cfg: Arc<Config>, teams: BTreeMap<Arc<str>, TeamRec>) -> Context {
        let mut team_names: HashMap<String, Arc<str>> = cfg
            .teams
            .keys()
            .map(|n| (n.clone(), Arc::from(n.as_str())))
            .collect();
        for n in teams.keys() {
            team_names.insert(n.to_string(), n.clone());
        }
        Context {
            all_models: KeyRt::all_models_body(&cfg.models),
            cfg,
            teams,
            team_names,
            bodies: Mutex::new(HashMap::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Arc<Config> {
        let yaml = r#"
listen: "127.0.0.1:8080"
providers: { m: { kind: mock } }
models: { a: { routes: [ { provider: m, model: x } ] }, b: { routes: [ { provider: m, model: y } ] } }
teams: { cfg-team: { limits: { rpm: 7 } } }
"#;
        Arc::new(crate::config::parse_str(yaml, |_| None, std::path::Path::new(".")).unwrap())
    }

    fn d(x: &str) -> [u8; 32] {
        crate::auth::digest(x.as_bytes())
    }

    fn key(name: &str, secrets: Vec<(&str, Option<i64>)>) -> StoredKey {
        StoredKey {
            name: name.into(),
            team: Some("cfg-team".into()),
            spec: r#"{"models":["a"],"limits":{"rpm":5}}"#.into(),
            expires_at: None,
            revoked: false,
            secrets: secrets.into_iter().map(|(s, v)| (d(s), v)).collect(),
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
        let mut s = Snapshot::empty(cfg()).begin(1, vec![]);
        let mut k = key("k1", vec![("old", Some(1_000)), ("new", None)]);
        k.expires_at = Some(5_000);
        s.insert(k);
        let got = found(s.lookup(&d("old"), 999)).unwrap();
        assert_eq!(&*got.name, "k1");
        assert!(got.allows("a") && !got.allows("b"));
        // Its key rule and its config team's rule, compiled as for config keys.
        let rules: Vec<(Level, &str, i64)> = got
            .rules
            .iter()
            .map(|r| (r.id.level, &*r.id.name, r.limit))
            .collect();
        assert_eq!(rules, [(Level::Key, "k1", 5), (Level::Team, "cfg-team", 7)]);
        assert_eq!(
            refused(s.lookup(&d("old"), 1_000)),
            Some(KeyRefusal::RotatedOut)
        );
        assert!(found(s.lookup(&d("new"), 4_999)).is_some());
        assert_eq!(
            refused(s.lookup(&d("new"), 5_000)),
            Some(KeyRefusal::Expired)
        );
        assert!(matches!(s.lookup(&d("other"), 0), Lookup::Unknown));

        let mut s2 = s.begin(2, vec![]);
        let mut k = key("k1", vec![("old", Some(1_000)), ("new", None)]);
        k.revoked = true;
        s2.insert(k);
        assert_eq!(refused(s2.lookup(&d("new"), 0)), Some(KeyRefusal::Revoked));
        assert_eq!(refused(s2.lookup(&d("old"), 0)), Some(KeyRefusal::Revoked));
        // The old snapshot is unchanged (requests holding it finish on it).
        assert!(found(s.lookup(&d("new"), 0)).is_some());
    }

    #[test]
    fn a_key_is_compiled_once_per_snapshot_and_again_after_a_team_change() {
        let mut s = Snapshot::empty(cfg()).begin(1, vec![]);
        s.insert(key("k1", vec![("s", None)]));
        let a = found(s.lookup(&d("s"), 0)).unwrap();
        let b = found(s.lookup(&d("s"), 0)).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let unrelated = s.begin(2, vec![]);
        assert!(Arc::ptr_eq(
            &a,
            &found(unrelated.lookup(&d("s"), 0)).unwrap()
        ));
        let again = s.with_config(cfg());
        assert!(!Arc::ptr_eq(&a, &found(again.lookup(&d("s"), 0)).unwrap()));
    }
}

#[cfg(test)]
mod mem_probe {
    use super::*;

    fn rss() -> i64 {
        let s = std::fs::read_to_string("/proc/self/status").unwrap();
        s.lines()
            .find(|l| l.starts_with("VmRSS:"))
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap()
    }

    /// `cargo test --release --lib mem_probe -- --ignored --nocapture`:
    /// memory of 100,000 keys before and after each was compiled once.
    #[test]
    #[ignore]
    fn probe() {
        let yaml = r#"
listen: "127.0.0.1:8080"
providers: { m: { kind: mock } }
models: { fast: { routes: [ { provider: m, model: x } ] } }
"#;
        let cfg =
            Arc::new(crate::config::parse_str(yaml, |_| None, std::path::Path::new(".")).unwrap());
        let teams: Vec<(TeamRec, bool)> = (0..100)
            .map(|t| {
                let name: Arc<str> = Arc::from(format!("team-{t}"));
                let spec = serde_json::from_str(r#"{"limits":{"rpm":100000}}"#).unwrap();
                (
                    TeamRec {
                        name,
                        spec,
                        created_at: 0,
                        updated_at: 0,
                    },
                    false,
                )
            })
            .collect();
        let r0 = rss();
        let t = std::time::Instant::now();
        let mut s = Snapshot::empty(cfg).begin(1, teams);
        for i in 0..100_000 {
            s.insert(StoredKey {
                name: format!("key-{i:06}"),
                team: Some(format!("team-{}", i % 100)),
                spec: if i % 10 == 0 {
                    r#"{"models":["fast"],"limits":{"rpm":600},"budgets":[{"tokens":1000000,"window":"month"}]}"#.into()
                } else {
                    r#"{"models":["fast"],"limits":{"rpm":600}}"#.into()
                },
                expires_at: None,
                revoked: false,
                secrets: vec![(crate::auth::digest(format!("s{i}").as_bytes()), None)],
            });
        }
        let (r1, t1) = (rss(), t.elapsed());
        for i in 0..100_000 {
            let _ = s.lookup(&crate::auth::digest(format!("s{i}").as_bytes()), 0);
        }
        let r2 = rss();
        println!(
            "100k keys: +{} KiB loaded in {t1:?}; +{} KiB more once all are compiled ({:?} total)",
            r1 - r0,
            r2 - r1,
            t.elapsed()
        );
    }
}
