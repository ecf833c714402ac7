//! The record's rows in the key store's database (`object_owners`).

use super::Op;
use crate::keystore::sql::{in_tx, Conn, SqlError, Val};
use crate::keystore::KeyStore;
use std::sync::{Arc, Mutex};

/// The key store's database, through a connection of the record's own
/// (opened on the first write: the process may fork after start-up).
#[derive(Clone)]
pub(super) struct Db {
    ks: Arc<KeyStore>,
    conn: Arc<Mutex<Option<Box<dyn Conn>>>>,
}

impl Db {
    pub(super) fn new(ks: Arc<KeyStore>) -> Self {
        Db {
            ks,
            conn: Arc::new(Mutex::new(None)),
        }
    }

    /// The newest `max` rows, newest first, as `(id, kind, owner, seq)`;
    /// older rows are deleted. Blocking, on a connection of its own.
    pub(super) fn load(&self, max: u64) -> Result<Vec<(String, String, String, i64)>, SqlError> {
        let mut c = self.ks.connect()?;
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let rows = c.query(
            "SELECT id, kind, owner, seq FROM object_owners ORDER BY seq DESC LIMIT $1",
            &[Val::Int(limit)],
        )?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let text = |i: usize| r.get(i).and_then(Val::text).map(str::to_string);
            if let (Some(id), Some(kind), Some(owner), Some(seq)) =
                (text(0), text(1), text(2), r.get(3).and_then(Val::int))
            {
                out.push((id, kind, owner, seq));
            }
        }
        if out.len() as u64 >= max {
            if let Some(oldest) = out.last().map(|r| r.3) {
                c.exec(
                    "DELETE FROM object_owners WHERE seq < $1",
                    &[Val::Int(oldest)],
                )?;
            }
        }
        Ok(out)
    }

    /// Applies `ops` in one transaction. Blocking.
    pub(super) fn write(&self, ops: &[Op]) -> Result<(), SqlError> {
        let mut slot = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(self.ks.connect()?);
        }
        let Some(c) = slot.as_mut() else {
            return Err(SqlError::Unavailable("no connection".into()));
        };
        let out = in_tx(&mut **c, |c| {
            for op in ops {
                match op {
                    Op::Put {
                        id,
                        kind,
                        owner,
                        seq,
                    } => {
                        c.exec(
                            "INSERT INTO object_owners (id, kind, owner, seq) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
                            &[
                                Val::from(&**id),
                                Val::from(kind.as_str()),
                                Val::from(&**owner),
                                Val::Int(*seq),
                            ],
                        )?;
                    }
                    Op::Delete(id) => {
                        c.exec(
                            "DELETE FROM object_owners WHERE id = $1",
                            &[Val::from(&**id)],
                        )?;
                    }
                }
            }
            Ok::<(), SqlError>(())
        });
        if matches!(out, Err(SqlError::Unavailable(_))) {
            // Reconnect on the next write.
            *slot = None;
        }
        out
    }
}
