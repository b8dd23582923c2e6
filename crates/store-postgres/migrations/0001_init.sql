-- Stead's PostgreSQL schema, version 1: the same tables as the SQLite backend's, in the same
-- shape. Ids are 16-byte bytea, hashes 32-byte bytea, times bigint milliseconds since the
-- epoch. JSON (specs, metadata, run states, event data) is stored as text: it is written and
-- read whole by Stead, never queried inside, and text keeps the exact bytes that were hashed
-- (jsonb would reorder keys and cost a parse on every insert). Fixed-width columns come first
-- in each table so rows pack without alignment padding.
-- Every table carries the tenant and every query filters on it. No foreign keys: writes
-- delete children explicitly, and an enforced key would cost a lookup per event insert.

CREATE TABLE agents (
    version    bigint NOT NULL,
    created_at bigint NOT NULL,
    tenant     text   NOT NULL,
    name       text   NOT NULL,
    id         bytea  NOT NULL UNIQUE,
    spec       text   NOT NULL,
    spec_hash  text   NOT NULL,
    PRIMARY KEY (tenant, name, version)
);

CREATE TABLE sessions (
    pk            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent_version bigint NOT NULL,
    head_seq      bigint NOT NULL,
    created_at    bigint NOT NULL,
    -- Always the `at` of the head event, so appends keep time non-decreasing.
    updated_at    bigint NOT NULL,
    id            bytea  NOT NULL UNIQUE,
    tenant        text   NOT NULL,
    agent         text   NOT NULL,
    metadata      text   NOT NULL,
    head_hash     bytea  NOT NULL
);
-- Listing a tenant's sessions newest first (ids are UUIDv7: id order is creation order).
CREATE INDEX sessions_by_tenant ON sessions (tenant, id);

CREATE TABLE events (
    session_pk bigint  NOT NULL,
    seq        bigint  NOT NULL,
    at         bigint  NOT NULL,
    msg        boolean NOT NULL,
    tenant     text    NOT NULL,
    run_id     bytea,
    kind       text    NOT NULL,
    actor      text    NOT NULL,
    data       text    NOT NULL,
    hash       bytea   NOT NULL,
    PRIMARY KEY (session_pk, seq)
);
-- The model's recent window: newest message events of a session, O(limit).
CREATE INDEX events_messages ON events (session_pk, seq) WHERE msg;

CREATE TABLE runs (
    pk            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    session_pk    bigint NOT NULL,
    lease_expires bigint,
    lease_token   bigint NOT NULL DEFAULT 0,
    created_at    bigint NOT NULL,
    updated_at    bigint NOT NULL,
    id            bytea  NOT NULL UNIQUE,
    tenant        text   NOT NULL,
    status        text   NOT NULL,
    lease_owner   text,
    state         text   NOT NULL
);
CREATE INDEX runs_by_session ON runs (session_pk, pk);
-- Unfinished runs: what blocks later runs of the same session (and `active_runs`).
CREATE INDEX runs_unfinished ON runs (session_pk, pk)
    WHERE status IN ('queued', 'running', 'requires_action', 'awaiting_approval');
-- What claiming scans.
CREATE INDEX runs_claimable ON runs (pk) WHERE status IN ('queued', 'running');

-- The approvals projection: one row per `approval_requested` event, completed by its
-- `approval_decided` event in the same transaction. `decision IS NULL` means pending.
CREATE TABLE approvals (
    pk                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    session_pk        bigint NOT NULL,
    created_at        bigint NOT NULL,
    expires_at        bigint NOT NULL,
    decided_at        bigint,
    id                bytea  NOT NULL UNIQUE,
    tenant            text   NOT NULL,
    run_id            bytea  NOT NULL,
    kind              text   NOT NULL,
    call_id           text   NOT NULL,
    tool_name         text   NOT NULL,
    arguments         text   NOT NULL,
    role              text   NOT NULL,
    reason            text   NOT NULL,
    decision          text,
    decided_by        text,
    decision_reason   text,
    decided_arguments text,
    output            text
);
CREATE INDEX approvals_by_tenant ON approvals (tenant, pk);
CREATE INDEX approvals_pending ON approvals (tenant, pk) WHERE decision IS NULL;
CREATE INDEX approvals_due ON approvals (expires_at, pk) WHERE decision IS NULL;
CREATE INDEX approvals_by_session ON approvals (session_pk, pk);

-- Idempotency keys (`Idempotency-Key` on creates): claimed in the same transaction as the
-- write they came with; an expired row is replaced by the next claim; deleted with the
-- session it names.
CREATE TABLE idempotency_keys (
    session_pk  bigint NOT NULL,
    created_at  bigint NOT NULL,
    expires_at  bigint NOT NULL,
    tenant      text   NOT NULL,
    key         text   NOT NULL,
    fingerprint text   NOT NULL,
    session_id  bytea  NOT NULL,
    run_id      bytea,
    PRIMARY KEY (tenant, key)
);
CREATE INDEX idempotency_by_session ON idempotency_keys (session_pk);
