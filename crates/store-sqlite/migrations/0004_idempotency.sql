-- Idempotency keys (`Idempotency-Key` on run and response creates). A key is claimed in the
-- same transaction as the write it came with and names what that write created, so a retry
-- finds the first result. One row per (tenant, key); an expired row is replaced by the next
-- claim. Deleted with the session it names.
CREATE TABLE idempotency_keys (
    tenant      TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    fingerprint TEXT    NOT NULL,
    session_pk  INTEGER NOT NULL,
    session_id  BLOB    NOT NULL,
    run_id      BLOB,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant, key)
) WITHOUT ROWID;
CREATE INDEX idempotency_by_session ON idempotency_keys (session_pk);
