-- Tollgate key store, version 2 (SQLite): who owns which OpenAI file and
-- batch id (issue 19). `owner` is `team:<name>` or, for a key without a
-- team, `key:<name>`; `seq` orders the records by age (microseconds, kept
-- increasing), so the oldest go first past `files.max_objects`.
CREATE TABLE object_owners (
    id    TEXT PRIMARY KEY,
    kind  TEXT NOT NULL,
    owner TEXT NOT NULL,
    seq   INTEGER NOT NULL
);
CREATE INDEX object_owners_seq ON object_owners (seq);
