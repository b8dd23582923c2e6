-- Approvals. A run can now wait for people (`awaiting_approval`): like `requires_action` it
-- is unfinished, holds no worker and blocks the later runs of its session, so it joins the
-- unfinished-runs index. The predicate stays two short `IN` lists joined by OR (see 0002:
-- three or more values would make every run write build a temporary B-tree), and queries
-- spell it exactly the same way so the planner can match it.
DROP INDEX runs_unfinished;
CREATE INDEX runs_unfinished ON runs (session_pk, pk)
    WHERE status IN ('queued', 'running') OR status IN ('requires_action', 'awaiting_approval');

-- The approvals projection: one row per `approval_requested` event, completed by its
-- `approval_decided` event in the same transaction as the append. `decision IS NULL` means
-- pending. The run is named by id rather than pk because a run created in the same append
-- has no row yet when its events are folded.
CREATE TABLE approvals (
    pk                INTEGER PRIMARY KEY,
    id                BLOB    NOT NULL UNIQUE,
    tenant            TEXT    NOT NULL,
    session_pk        INTEGER NOT NULL,
    run_id            BLOB    NOT NULL,
    kind              TEXT    NOT NULL,
    call_id           TEXT    NOT NULL,
    tool_name         TEXT    NOT NULL,
    arguments         TEXT    NOT NULL,
    role              TEXT    NOT NULL,
    reason            TEXT    NOT NULL,
    created_at        INTEGER NOT NULL,
    expires_at        INTEGER NOT NULL,
    decision          TEXT,
    decided_by        TEXT,
    decided_at        INTEGER,
    decision_reason   TEXT,
    decided_arguments TEXT,
    output            TEXT
);
-- Listing a tenant's approvals oldest first (pk is insertion order, i.e. creation order).
CREATE INDEX approvals_by_tenant ON approvals (tenant, pk);
-- The same for pending ones only: the approvers' inbox.
CREATE INDEX approvals_pending ON approvals (tenant, pk) WHERE decision IS NULL;
-- The expiry sweeper: pending approvals by deadline, across tenants.
CREATE INDEX approvals_due ON approvals (expires_at, pk) WHERE decision IS NULL;
-- A session's approvals (listing, and deleting with the session).
CREATE INDEX approvals_by_session ON approvals (session_pk, pk);
