//! The vault's rows on PostgreSQL: sealed secrets and wrapped tenant keys, opaque here. Each
//! write is one statement, so it is atomic without a transaction: a secret's next version
//! replaces the stored one only if that is still the version before it.

use deadpool_postgres::GenericClient;
use stead_core::ids::TenantId;
use stead_store::stored::time;
use stead_store::{Error, Result, SealedSecret, WrappedKey};

use crate::query;
use crate::rows::{Attempt, get};

const SECRET_COLUMNS: &str = "tenant, scope, name, version, key_version, nonce, ciphertext, created_at";

fn version(v: i64, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::Corrupt(format!("stored {what} {v} is out of range")))
}

fn secret_from_row(row: &tokio_postgres::Row) -> Result<SealedSecret> {
    let tenant: String = get(row, 0, "secret tenant")?;
    Ok(SealedSecret {
        tenant_id: TenantId::new(&tenant).map_err(|e| Error::Corrupt(format!("a secret's tenant: {e}")))?,
        scope: get(row, 1, "secret scope")?,
        name: get(row, 2, "secret name")?,
        version: version(get(row, 3, "secret version")?, "secret version")?,
        key_version: version(get(row, 4, "secret key version")?, "secret key version")?,
        nonce: get(row, 5, "secret nonce")?,
        ciphertext: get(row, 6, "secret ciphertext")?,
        created_at: time(get(row, 7, "secret created_at")?, "secret created_at")?,
    })
}

pub(crate) async fn put_secret(c: &impl GenericClient, s: &SealedSecret) -> Attempt<()> {
    let (v, kv) = (i64::from(s.version), i64::from(s.key_version));
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 8] =
        [&s.tenant_id.as_str(), &s.scope, &s.name, &v, &kv, &s.nonce, &s.ciphertext, &s.created_at.millis()];
    let sql = if s.version == 1 {
        format!(
            "INSERT INTO secrets ({SECRET_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (tenant, scope, name) DO NOTHING RETURNING version"
        )
    } else {
        "UPDATE secrets SET version = $4::bigint, key_version = $5::bigint, nonce = $6, ciphertext = $7, created_at = $8 \
         WHERE tenant = $1 AND scope = $2 AND name = $3 AND version = $4::bigint - 1 RETURNING version"
            .to_owned()
    };
    if query(c, &sql, &params).await?.is_empty() {
        let rows = query(
            c,
            "SELECT version FROM secrets WHERE tenant = $1 AND scope = $2 AND name = $3",
            &[&s.tenant_id.as_str(), &s.scope, &s.name],
        )
        .await?;
        let actual = match rows.first() {
            Some(r) => version(get(r, 0, "secret version")?, "secret version")?,
            None => 0,
        };
        return Err(Error::Conflict { expected: u64::from(s.version), actual: u64::from(actual) }.into());
    }
    Ok(())
}

pub(crate) async fn get_secret(
    c: &impl GenericClient,
    tenant: &TenantId,
    scope: &str,
    name: &str,
) -> Result<Option<SealedSecret>> {
    let sql = format!("SELECT {SECRET_COLUMNS} FROM secrets WHERE tenant = $1 AND scope = $2 AND name = $3");
    let rows = query(c, &sql, &[&tenant.as_str(), &scope, &name]).await?;
    rows.first().map(secret_from_row).transpose()
}

pub(crate) async fn list_secrets(c: &impl GenericClient, tenant: &TenantId) -> Result<Vec<SealedSecret>> {
    let sql = format!("SELECT {SECRET_COLUMNS} FROM secrets WHERE tenant = $1 ORDER BY scope, name");
    query(c, &sql, &[&tenant.as_str()]).await?.iter().map(secret_from_row).collect()
}

pub(crate) async fn delete_secret(c: &impl GenericClient, tenant: &TenantId, scope: &str, name: &str) -> Attempt<bool> {
    let rows = query(
        c,
        "DELETE FROM secrets WHERE tenant = $1 AND scope = $2 AND name = $3 RETURNING version",
        &[&tenant.as_str(), &scope, &name],
    )
    .await?;
    Ok(!rows.is_empty())
}

fn key_from_row(row: &tokio_postgres::Row) -> Result<WrappedKey> {
    let tenant: String = get(row, 0, "tenant key tenant")?;
    Ok(WrappedKey {
        tenant_id: TenantId::new(&tenant).map_err(|e| Error::Corrupt(format!("a tenant key's tenant: {e}")))?,
        version: version(get(row, 1, "tenant key version")?, "tenant key version")?,
        nonce: get(row, 2, "tenant key nonce")?,
        wrapped: get(row, 3, "tenant key")?,
        created_at: time(get(row, 4, "tenant key created_at")?, "tenant key created_at")?,
    })
}

const KEY_COLUMNS: &str = "tenant, version, nonce, wrapped, created_at";

pub(crate) async fn get_tenant_key(c: &impl GenericClient, tenant: &TenantId) -> Result<Option<WrappedKey>> {
    let sql = format!("SELECT {KEY_COLUMNS} FROM tenant_keys WHERE tenant = $1 ORDER BY version DESC LIMIT 1");
    query(c, &sql, &[&tenant.as_str()]).await?.first().map(key_from_row).transpose()
}

pub(crate) async fn put_tenant_key(c: &impl GenericClient, k: &WrappedKey) -> Attempt<WrappedKey> {
    let v = i64::from(k.version);
    query(
        c,
        &format!("INSERT INTO tenant_keys ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING"),
        &[&k.tenant_id.as_str(), &v, &k.nonce, &k.wrapped, &k.created_at.millis()],
    )
    .await?;
    let rows = query(
        c,
        &format!("SELECT {KEY_COLUMNS} FROM tenant_keys WHERE tenant = $1 AND version = $2"),
        &[&k.tenant_id.as_str(), &v],
    )
    .await?;
    let row = rows.first().ok_or_else(|| Error::Backend("a tenant key vanished right after it was stored".into()))?;
    Ok(key_from_row(row)?)
}
