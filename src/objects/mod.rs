//! Who owns which OpenAI file and batch id (issue 19). The Files and
//! Batches endpoints go to one provider account shared by every caller of
//! a `files_provider`, so the gateway records which owner (a team, or a key
//! without a team) created each id, and answers 404 to everyone else.
//!
//! The record lives in memory, bounded by `files.max_objects` (all owners)
//! and `files.max_objects_per_owner`: past either bound the oldest record
//! (the owner's own, for the per-owner bound) is dropped, and its object
//! then answers 404 like an unknown one. With a `key_store` the record is
//! also written to its database (`object_owners`, migration 2) and read
//! back at start, newest first up to the bound, so it survives a restart;
//! without one it lasts as long as the process.
//!
//! Writes reach memory at once (the answer that names a new id is not
//! released before its record is in) and the database just after, in the
//! request's logging phase ([`persist`]), off the async runtime.

mod db;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

/// What an id names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Batch,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Batch => "batch",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        match s {
            "file" => Some(Kind::File),
            "batch" => Some(Kind::Batch),
            _ => None,
        }
    }
}

/// One change to write to the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        id: Arc<str>,
        kind: Kind,
        owner: Arc<str>,
        seq: i64,
    },
    Delete(Arc<str>),
}

struct Entry {
    owner: Arc<str>,
    kind: Kind,
    seq: i64,
}

#[derive(Default)]
struct Inner {
    by_id: HashMap<Arc<str>, Entry>,
    /// Every record by age (`seq`), oldest first.
    by_age: BTreeMap<i64, Arc<str>>,
    /// Each owner's records by age.
    by_owner: HashMap<Arc<str>, BTreeMap<i64, Arc<str>>>,
    last_seq: i64,
    max: usize,
    per_owner: usize,
}

impl Inner {
    fn remove(&mut self, id: &str) -> bool {
        let Some(e) = self.by_id.remove(id) else {
            return false;
        };
        self.by_age.remove(&e.seq);
        if let Some(m) = self.by_owner.get_mut(&e.owner) {
            m.remove(&e.seq);
            if m.is_empty() {
                self.by_owner.remove(&e.owner);
            }
        }
        true
    }

    /// Inserts a record (unless the id is already recorded) and drops the
    /// oldest past the bounds; the changes, for the database.
    fn insert(&mut self, id: Arc<str>, kind: Kind, owner: Arc<str>, seq: i64, ops: &mut Vec<Op>) {
        if self.by_id.contains_key(&id) || self.by_age.contains_key(&seq) {
            return;
        }
        self.last_seq = self.last_seq.max(seq);
        self.by_age.insert(seq, id.clone());
        self.by_owner
            .entry(owner.clone())
            .or_default()
            .insert(seq, id.clone());
        self.by_id.insert(
            id.clone(),
            Entry {
                owner: owner.clone(),
                kind,
                seq,
            },
        );
        ops.push(Op::Put {
            id,
            kind,
            owner: owner.clone(),
            seq,
        });
        while self
            .by_owner
            .get(&owner)
            .is_some_and(|m| m.len() > self.per_owner)
        {
            let Some(old) = self
                .by_owner
                .get(&owner)
                .and_then(|m| m.values().next().cloned())
            else {
                break;
            };
            self.remove(&old);
            ops.push(Op::Delete(old));
        }
        while self.by_id.len() > self.max {
            let Some(old) = self.by_age.values().next().cloned() else {
                break;
            };
            self.remove(&old);
            ops.push(Op::Delete(old));
        }
    }

    fn next_seq(&mut self) -> i64 {
        // Microseconds of the wall clock, kept strictly increasing: the
        // order survives a restart (the database keeps it).
        let now = crate::base::clock::unix_ms().saturating_mul(1000);
        let seq = now.max(self.last_seq.saturating_add(1));
        self.last_seq = seq;
        seq
    }
}

/// The record: memory, and the key store's database when there is one.
pub struct Owners {
    inner: Mutex<Inner>,
    db: OnceLock<db::Db>,
}

impl Owners {
    fn new(max: usize, per_owner: usize) -> Self {
        Owners {
            inner: Mutex::new(Inner {
                max: max.max(1),
                per_owner: per_owner.max(1),
                ..Inner::default()
            }),
            db: OnceLock::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the bounds (start-up and each reload). Lowering them drops the
    /// oldest records at the next insert.
    pub fn set_bounds(&self, max: u64, per_owner: u64) {
        let mut i = self.lock();
        i.max = usize::try_from(max).unwrap_or(usize::MAX).max(1);
        i.per_owner = usize::try_from(per_owner).unwrap_or(usize::MAX).max(1);
    }

    /// Whether `id` is recorded as a `kind` of `owner`.
    pub fn owns(&self, owner: &str, kind: Kind, id: &str) -> bool {
        self.lock()
            .by_id
            .get(id)
            .is_some_and(|e| e.kind == kind && &*e.owner == owner)
    }

    /// Records `id` as `owner`'s, unless it is recorded already (an id is
    /// never taken from its first owner). Returns the database changes.
    pub fn record(&self, owner: &Arc<str>, kind: Kind, id: &str) -> Vec<Op> {
        let mut ops = Vec::new();
        let mut i = self.lock();
        if i.by_id.contains_key(id) {
            return ops;
        }
        let seq = i.next_seq();
        i.insert(Arc::from(id), kind, owner.clone(), seq, &mut ops);
        ops
    }

    /// Forgets `id` (deleted upstream).
    pub fn forget(&self, id: &str) -> Vec<Op> {
        if self.lock().remove(id) {
            vec![Op::Delete(Arc::from(id))]
        } else {
            Vec::new()
        }
    }

    /// How many ids are recorded.
    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

static OWNERS: OnceLock<Owners> = OnceLock::new();

/// The process's record (in memory with the default bounds until
/// [`open`] runs).
pub fn global() -> &'static Owners {
    OWNERS.get_or_init(|| {
        Owners::new(
            crate::config::files::DEFAULT_MAX_OBJECTS as usize,
            crate::config::files::DEFAULT_MAX_OBJECTS_PER_OWNER as usize,
        )
    })
}

/// At start-up, after the key store opened: sets the bounds and, with a
/// key store, reads the record back from its database (newest first, up
/// to the bound; older rows are deleted). Blocking.
pub fn open(cfg: &crate::config::Config) -> Result<(), String> {
    let o = global();
    o.set_bounds(cfg.files.max_objects, cfg.files.max_objects_per_owner);
    let Some(ks) = crate::keystore::global() else {
        return Ok(());
    };
    let db = db::Db::new(ks.clone());
    let rows = db
        .load(cfg.files.max_objects)
        .map_err(|e| format!("file and batch owners: {e}"))?;
    let n = rows.len();
    {
        let mut i = o.lock();
        let mut ignored = Vec::new();
        // Oldest first, so the bounds keep the newest.
        for (id, kind, owner, seq) in rows.into_iter().rev() {
            if let Some(kind) = Kind::parse(&kind) {
                i.insert(Arc::from(id), kind, Arc::from(owner), seq, &mut ignored);
            }
        }
    }
    log::info!("file and batch owners: {n} records loaded from the key store");
    let _ = o.db.set(db);
    Ok(())
}

/// Writes `ops` to the database, when there is one, off the async
/// runtime. A failure is logged: memory stays right for this process.
pub async fn persist(ops: Vec<Op>) {
    if ops.is_empty() {
        return;
    }
    let Some(db) = global().db.get() else {
        return;
    };
    let db = db.clone();
    let done = tokio::task::spawn_blocking(move || db.write(&ops)).await;
    match done {
        Ok(Ok(())) => {}
        Ok(Err(e)) => log::error!("file and batch owners: writing to the key store: {e}"),
        Err(_) => log::error!("file and batch owners: the write task panicked"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn an_id_belongs_to_its_first_owner_and_kind() {
        let o = Owners::new(10, 10);
        let a = owner("team:a");
        let ops = o.record(&a, Kind::File, "file-1");
        assert!(matches!(&ops[..], [Op::Put { id, .. }] if &**id == "file-1"));
        assert!(o.owns("team:a", Kind::File, "file-1"));
        assert!(!o.owns("team:b", Kind::File, "file-1"));
        assert!(!o.owns("team:a", Kind::Batch, "file-1"));
        // Never taken over by a second owner.
        assert!(o.record(&owner("team:b"), Kind::File, "file-1").is_empty());
        assert!(o.owns("team:a", Kind::File, "file-1"));
        assert_eq!(o.forget("file-1"), vec![Op::Delete(Arc::from("file-1"))]);
        assert!(!o.owns("team:a", Kind::File, "file-1"));
        assert!(o.forget("file-1").is_empty());
    }

    #[test]
    fn past_the_per_owner_bound_that_owners_oldest_goes() {
        let o = Owners::new(100, 3);
        let (a, b) = (owner("team:a"), owner("team:b"));
        o.record(&b, Kind::File, "b-1");
        for i in 1..=3 {
            o.record(&a, Kind::File, &format!("a-{i}"));
        }
        let ops = o.record(&a, Kind::File, "a-4");
        assert_eq!(ops.len(), 2, "{ops:?}");
        assert_eq!(ops[1], Op::Delete(Arc::from("a-1")));
        assert!(!o.owns("team:a", Kind::File, "a-1"));
        assert!(o.owns("team:a", Kind::File, "a-4"));
        assert!(o.owns("team:b", Kind::File, "b-1"), "another owner's stays");
        assert_eq!(o.len(), 4);
    }

    #[test]
    fn past_the_global_bound_the_oldest_goes() {
        let o = Owners::new(3, 3);
        for (i, t) in ["a", "b", "c", "d"].iter().enumerate() {
            o.record(&owner(t), Kind::Batch, &format!("batch_{i}"));
        }
        assert_eq!(o.len(), 3);
        assert!(!o.owns("a", Kind::Batch, "batch_0"));
        assert!(o.owns("d", Kind::Batch, "batch_3"));
        o.set_bounds(2, 1);
        o.record(&owner("e"), Kind::Batch, "batch_4");
        assert_eq!(o.len(), 2);
        assert!(o.owns("d", Kind::Batch, "batch_3") && o.owns("e", Kind::Batch, "batch_4"));
    }
}
