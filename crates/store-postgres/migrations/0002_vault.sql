-- The vault (stead-vault): secrets sealed with a per-tenant data key, and those data keys
-- wrapped by the key-encryption key, which is never in the database. Latest version only.
CREATE TABLE secrets (
    tenant      text   NOT NULL,
    scope       text   NOT NULL,
    name        text   NOT NULL,
    version     bigint NOT NULL,
    key_version bigint NOT NULL,
    nonce       bytea  NOT NULL,
    ciphertext  bytea  NOT NULL,
    created_at  bigint NOT NULL,
    PRIMARY KEY (tenant, scope, name)
);

CREATE TABLE tenant_keys (
    tenant     text   NOT NULL,
    version    bigint NOT NULL,
    nonce      bytea  NOT NULL,
    wrapped    bytea  NOT NULL,
    created_at bigint NOT NULL,
    PRIMARY KEY (tenant, version)
);
