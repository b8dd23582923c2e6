-- The vault (stead-vault): secrets sealed with a per-tenant data key, and those data keys
-- wrapped by the key-encryption key. Nothing here is readable without that key, which is
-- never in the database. Latest version only: a replaced value is gone.
CREATE TABLE secrets (
    tenant      TEXT    NOT NULL,
    scope       TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    key_version INTEGER NOT NULL,
    nonce       BLOB    NOT NULL,
    ciphertext  BLOB    NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant, scope, name)
) WITHOUT ROWID;

CREATE TABLE tenant_keys (
    tenant     TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    nonce      BLOB    NOT NULL,
    wrapped    BLOB    NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, version)
) WITHOUT ROWID;
