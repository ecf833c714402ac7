-- Tollgate key store, version 1 (SQLite). Applied in one transaction.
-- Every row carries `seq`: the change counter's value when it was last
-- written, so an instance catches up by reading the rows above its cursor.
CREATE TABLE change_counter (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL
);
INSERT INTO change_counter (id, seq) VALUES (1, 0);

CREATE TABLE teams (
    name       TEXT PRIMARY KEY,
    spec       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    deleted    INTEGER NOT NULL DEFAULT 0,
    seq        INTEGER NOT NULL
);
CREATE INDEX teams_seq ON teams (seq);

CREATE TABLE keys (
    name       TEXT PRIMARY KEY,
    team       TEXT,
    spec       TEXT NOT NULL,
    expires_at INTEGER,
    revoked_at INTEGER,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    seq        INTEGER NOT NULL
);
CREATE INDEX keys_seq ON keys (seq);
CREATE INDEX keys_team ON keys (team);

-- SHA-256 digests (hex) of a key's secrets; never the secrets.
CREATE TABLE key_secrets (
    digest      TEXT PRIMARY KEY,
    key_name    TEXT NOT NULL REFERENCES keys (name),
    created_at  INTEGER NOT NULL,
    valid_until INTEGER,
    seq         INTEGER NOT NULL
);
CREATE INDEX key_secrets_seq ON key_secrets (seq);
CREATE INDEX key_secrets_key ON key_secrets (key_name);

CREATE TABLE audit_log (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      INTEGER NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    target  TEXT NOT NULL,
    changes TEXT NOT NULL
);
