//! The vault's rows: sealed secrets and wrapped tenant keys, opaque to this crate.

use rusqlite::{Connection, OptionalExtension, Row, params};
use stead_core::ids::TenantId;
use stead_store::{Committed, Error, Result, SealedSecret, WrappedKey};

use crate::rows::{Cached, SqlResult, time};

type Written<T> = Result<(T, Vec<Committed>)>;

const SECRET_COLUMNS: &str = "tenant, scope, name, version, key_version, nonce, ciphertext, created_at";

fn secret_from_row(r: &Row<'_>) -> Result<SealedSecret> {
    let tenant: String = r.get(0).sql()?;
    Ok(SealedSecret {
        tenant_id: TenantId::new(&tenant).map_err(|e| Error::Corrupt(format!("a secret's tenant: {e}")))?,
        scope: r.get(1).sql()?,
        name: r.get(2).sql()?,
        version: r.get(3).sql()?,
        key_version: r.get(4).sql()?,
        nonce: r.get(5).sql()?,
        ciphertext: r.get(6).sql()?,
        created_at: time(r.get(7).sql()?, "secret created_at")?,
    })
}

pub(crate) fn put_secret(conn: &Connection, s: SealedSecret) -> Written<()> {
    let current: Option<u32> = conn
        .row(
            "SELECT version FROM secrets WHERE tenant = ?1 AND scope = ?2 AND name = ?3",
            params![s.tenant_id.as_str(), s.scope, s.name],
            |r| r.get(0),
        )
        .optional()
        .sql()?;
    let expected = current.map_or(1, |v| v.saturating_add(1));
    if s.version != expected {
        return Err(Error::Conflict { expected: u64::from(s.version), actual: u64::from(current.unwrap_or(0)) });
    }
    conn.exec(
        &format!("INSERT OR REPLACE INTO secrets ({SECRET_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"),
        params![
            s.tenant_id.as_str(),
            s.scope,
            s.name,
            s.version,
            s.key_version,
            s.nonce,
            s.ciphertext,
            s.created_at.millis()
        ],
    )
    .sql()?;
    Ok(((), Vec::new()))
}

pub(crate) fn get_secret(
    conn: &Connection,
    tenant: &TenantId,
    scope: &str,
    name: &str,
) -> Result<Option<SealedSecret>> {
    let sql = format!("SELECT {SECRET_COLUMNS} FROM secrets WHERE tenant = ?1 AND scope = ?2 AND name = ?3");
    let mut stmt = conn.prepare_cached(&sql).sql()?;
    let mut rows = stmt.query(params![tenant.as_str(), scope, name]).sql()?;
    match rows.next().sql()? {
        Some(r) => Ok(Some(secret_from_row(r)?)),
        None => Ok(None),
    }
}

pub(crate) fn list_secrets(conn: &Connection, tenant: &TenantId) -> Result<Vec<SealedSecret>> {
    let sql = format!("SELECT {SECRET_COLUMNS} FROM secrets WHERE tenant = ?1 ORDER BY scope, name");
    let mut stmt = conn.prepare_cached(&sql).sql()?;
    let mut rows = stmt.query(params![tenant.as_str()]).sql()?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().sql()? {
        out.push(secret_from_row(r)?);
    }
    Ok(out)
}

pub(crate) fn delete_secret(conn: &Connection, tenant: &TenantId, scope: &str, name: &str) -> Written<bool> {
    let n = conn
        .exec(
            "DELETE FROM secrets WHERE tenant = ?1 AND scope = ?2 AND name = ?3",
            params![tenant.as_str(), scope, name],
        )
        .sql()?;
    Ok((n > 0, Vec::new()))
}

fn key_from_row(r: &Row<'_>) -> Result<WrappedKey> {
    let tenant: String = r.get(0).sql()?;
    Ok(WrappedKey {
        tenant_id: TenantId::new(&tenant).map_err(|e| Error::Corrupt(format!("a tenant key's tenant: {e}")))?,
        version: r.get(1).sql()?,
        nonce: r.get(2).sql()?,
        wrapped: r.get(3).sql()?,
        created_at: time(r.get(4).sql()?, "tenant key created_at")?,
    })
}

pub(crate) fn get_tenant_key(conn: &Connection, tenant: &TenantId) -> Result<Option<WrappedKey>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT tenant, version, nonce, wrapped, created_at FROM tenant_keys WHERE tenant = ?1 \
             ORDER BY version DESC LIMIT 1",
        )
        .sql()?;
    let mut rows = stmt.query(params![tenant.as_str()]).sql()?;
    match rows.next().sql()? {
        Some(r) => Ok(Some(key_from_row(r)?)),
        None => Ok(None),
    }
}

pub(crate) fn put_tenant_key(conn: &Connection, k: WrappedKey) -> Written<WrappedKey> {
    conn.exec(
        "INSERT OR IGNORE INTO tenant_keys (tenant, version, nonce, wrapped, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![k.tenant_id.as_str(), k.version, k.nonce, k.wrapped, k.created_at.millis()],
    )
    .sql()?;
    let mut stmt = conn
        .prepare_cached(
            "SELECT tenant, version, nonce, wrapped, created_at FROM tenant_keys WHERE tenant = ?1 AND version = ?2",
        )
        .sql()?;
    let mut rows = stmt.query(params![k.tenant_id.as_str(), k.version]).sql()?;
    let stored = match rows.next().sql()? {
        Some(r) => key_from_row(r)?,
        None => return Err(Error::Backend("a tenant key vanished right after it was stored".into())),
    };
    Ok((stored, Vec::new()))
}
