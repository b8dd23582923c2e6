-- Stead's first schema. Rows are kept small: ids are 16-byte BLOBs, times are integer
-- milliseconds, hashes are 32-byte BLOBs, and events are keyed by (session_pk, seq) in a
-- WITHOUT ROWID table so the log is one B-tree ordered the way it is read.
-- Every table carries the tenant and every query filters on it.
-- Foreign keys are not declared: the single writer deletes children explicitly, and an
-- enforced key would cost a lookup on every event insert.

CREATE TABLE agents (
    tenant     TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    id         BLOB    NOT NULL UNIQUE,
    spec       TEXT    NOT NULL,
    spec_hash  TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, name, version)
) WITHOUT ROWID;

CREATE TABLE sessions (
    pk            INTEGER PRIMARY KEY,
    id            BLOB    NOT NULL UNIQUE,
    tenant        TEXT    NOT NULL,
    agent         TEXT    NOT NULL,
    agent_version INTEGER NOT NULL,
    metadata      TEXT    NOT NULL,
    head_seq      INTEGER NOT NULL,
    head_hash     BLOB    NOT NULL,
    created_at    INTEGER NOT NULL,
    -- Always the `at` of the head event, so appends can keep time non-decreasing.
    updated_at    INTEGER NOT NULL
);
-- Listing a tenant's sessions newest first (ids are UUIDv7, so id order is creation order).
CREATE INDEX sessions_by_tenant ON sessions (tenant, id);

CREATE TABLE events (
    session_pk INTEGER NOT NULL,
    seq        INTEGER NOT NULL,
    tenant     TEXT    NOT NULL,
    run_id     BLOB,
    kind       TEXT    NOT NULL,
    actor      TEXT    NOT NULL,
    at         INTEGER NOT NULL,
    data       TEXT    NOT NULL,
    hash       BLOB    NOT NULL,
    msg        INTEGER NOT NULL,
    PRIMARY KEY (session_pk, seq)
) WITHOUT ROWID;
-- The model's recent window: newest message events of a session, O(limit).
CREATE INDEX events_messages ON events (session_pk, seq) WHERE msg = 1;

CREATE TABLE runs (
    pk            INTEGER PRIMARY KEY,
    id            BLOB    NOT NULL UNIQUE,
    tenant        TEXT    NOT NULL,
    session_pk    INTEGER NOT NULL,
    status        TEXT    NOT NULL,
    state         TEXT    NOT NULL,
    lease_owner   TEXT,
    lease_expires INTEGER,
    lease_token   INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);
CREATE INDEX runs_by_session ON runs (session_pk, pk);
-- Unfinished runs: what claiming scans, and what blocks later runs of the same session.
CREATE INDEX runs_unfinished ON runs (session_pk, pk) WHERE status IN ('queued', 'running', 'requires_action');
CREATE INDEX runs_claimable ON runs (pk) WHERE status IN ('queued', 'running');
