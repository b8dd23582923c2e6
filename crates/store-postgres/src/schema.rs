//! Ordered migrations, tracked in the `stead_schema` table of Stead's schema.
//!
//! Migrating takes a transaction-scoped advisory lock keyed by the schema, so several nodes
//! starting at once migrate one after the other (the later ones find nothing to do).

use stead_store::{Error, Result};

use crate::rows::{Fail, Pg};

/// Ordered migrations; `stead_schema` holds one row per applied version (1-based).
const MIGRATIONS: &[&str] =
    &[include_str!("../migrations/0001_init.sql"), include_str!("../migrations/0002_vault.sql")];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Applies the migrations the schema has not seen, in one transaction. A schema from a newer
/// Stead is refused; so is one holding Stead's table names without `stead_schema`.
pub(crate) async fn migrate(client: &mut deadpool_postgres::Client) -> Result<()> {
    let tx = client.transaction().await.pg()?;
    let current: Option<String> = tx.query_one("SELECT current_schema()", &[]).await.pg()?.get(0);
    let Some(schema) = current else {
        return Err(Error::Backend(
            "the connection's search_path names no existing schema: create the schema first (CREATE SCHEMA …) \
             or correct the URL's options=-csearch_path=…"
                .into(),
        ));
    };
    tx.execute("SELECT pg_advisory_xact_lock(hashtext('stead_schema:' || current_schema()))", &[]).await.pg()?;
    let tracked: bool = tx.query_one("SELECT to_regclass('stead_schema') IS NOT NULL", &[]).await.pg()?.get(0);
    let version: i64 = if tracked {
        tx.query_one("SELECT coalesce(max(version), 0)::bigint FROM stead_schema", &[]).await.pg()?.get(0)
    } else {
        let foreign: bool = tx
            .query_one(
                "SELECT to_regclass('sessions') IS NOT NULL OR to_regclass('events') IS NOT NULL \
                 OR to_regclass('runs') IS NOT NULL",
                &[],
            )
            .await
            .pg()?
            .get(0);
        if foreign {
            return Err(Error::Corrupt(format!(
                "schema {schema} has tables named like Stead's but no stead_schema table: it is not a Stead \
                 schema; point Stead at another schema or database"
            )));
        }
        tx.batch_execute(
            "CREATE TABLE stead_schema (version bigint PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .pg()?;
        0
    };
    if version > SCHEMA_VERSION {
        return Err(Error::Backend(format!(
            "schema {schema} has Stead schema version {version}, newer than this stead knows ({SCHEMA_VERSION}); \
             upgrade stead"
        )));
    }
    for (i, script) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let v = i as i64 + 1;
        tx.batch_execute(script)
            .await
            .map_err(|e| Fail::from(Error::Backend(format!("migrating schema {schema} to version {v}: {e}"))))?;
        tx.execute("INSERT INTO stead_schema (version) VALUES ($1)", &[&v]).await.pg()?;
    }
    tx.commit().await.pg()?;
    Ok(())
}
