//! Opening the database file: header and schema checks, pragmas and ordered migrations.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags};
use stead_store::{Error, Result};

use crate::options::Durability;

/// Ordered migrations; `PRAGMA user_version` records how many have been applied.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_init.sql"),
    include_str!("../migrations/0002_unfinished_index.sql"),
    include_str!("../migrations/0003_approvals.sql"),
    include_str!("../migrations/0004_idempotency.sql"),
    include_str!("../migrations/0005_vault.sql"),
];

/// How long a connection waits on a lock held by another connection (WAL recovery,
/// checkpoints) before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Describes an error met while opening `path`, naming the file.
fn open_error(path: &Path, e: rusqlite::Error) -> Error {
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) => Error::Corrupt(format!(
            "{} is not a SQLite database ({e}); move it away or point stead at another data directory",
            path.display()
        )),
        Some(ErrorCode::DatabaseCorrupt) => {
            Error::Corrupt(format!("{} is damaged ({e}); restore it from a backup or move it away", path.display()))
        }
        _ => Error::Backend(format!("cannot open {}: {e}", path.display())),
    }
}

/// Opens the write connection: checks the file, sets WAL and durability, migrates.
pub(crate) fn open_writer(path: &Path, durability: Durability) -> Result<Connection> {
    // No SQLITE_OPEN_URI: a data directory named `file:…` must stay a plain path.
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| open_error(path, e))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| open_error(path, e))?;
    conn.set_prepared_statement_cache_capacity(crate::rows::STATEMENT_CACHE);
    // Reading the schema parses the header and every schema entry: a file that is not a
    // database, or whose schema is damaged, fails here rather than on first use.
    let tables: i64 =
        conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0)).map_err(|e| open_error(path, e))?;
    let mode: String =
        conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).map_err(|e| open_error(path, e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::Backend(format!(
            "{} cannot use write-ahead logging (journal mode is {mode})",
            path.display()
        )));
    }
    conn.execute_batch(&format!("PRAGMA synchronous = {}", durability.pragma())).map_err(|e| open_error(path, e))?;
    migrate(&conn, path, tables)?;
    Ok(conn)
}

/// Applies the migrations this file has not seen, all in one transaction.
fn migrate(conn: &Connection, path: &Path, tables: i64) -> Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(|e| open_error(path, e))?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(Error::Backend(format!(
            "{} has schema version {version}, newer than this stead knows ({known}); upgrade stead",
            path.display()
        )));
    }
    if version < 0 {
        return Err(Error::Corrupt(format!("{} has an invalid schema version {version}", path.display())));
    }
    if version == 0 && tables > 0 {
        // Someone else's database: never add tables to it.
        return Err(Error::Corrupt(format!(
            "{} is a SQLite database but not a stead one (it has tables and no stead schema version)",
            path.display()
        )));
    }
    if version == known {
        return Ok(());
    }
    let apply = || -> rusqlite::Result<()> {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        for script in &MIGRATIONS[version as usize..] {
            conn.execute_batch(script)?;
        }
        // Inside the transaction: the schema and its version change together.
        conn.execute_batch(&format!("PRAGMA user_version = {known}"))?;
        conn.execute_batch("COMMIT")
    };
    apply().map_err(|e| {
        if !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        let err = open_error(path, e);
        match err {
            Error::Backend(m) => Error::Backend(format!("migrating {}: {m}", path.display())),
            other => other,
        }
    })
}

/// A read-only connection to an already opened (and migrated) database.
pub(crate) fn open_reader(path: &Path) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| open_error(path, e))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| open_error(path, e))?;
    conn.set_prepared_statement_cache_capacity(crate::rows::STATEMENT_CACHE);
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database written by the first schema is migrated on open, its data kept.
    #[test]
    fn a_first_schema_database_is_upgraded() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("x.db");
        {
            let conn = Connection::open(&path).expect("open");
            conn.execute_batch(MIGRATIONS[0]).expect("schema 1");
            conn.execute_batch(
                "PRAGMA user_version = 1; \
                 INSERT INTO runs (id, tenant, session_pk, status, state, created_at, updated_at) \
                 VALUES (x'00', 'default', 1, 'requires_action', '{}', 0, 0);",
            )
            .expect("a run");
        }
        let conn = open_writer(&path, Durability::Off).expect("upgrade");
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).expect("version");
        assert_eq!(version, MIGRATIONS.len() as i64);
        let index: String = conn
            .query_row("SELECT sql FROM sqlite_master WHERE name = 'runs_unfinished'", [], |r| r.get(0))
            .expect("index");
        assert!(index.contains("OR status IN ('requires_action', 'awaiting_approval')"), "{index}");
        let waiting: i64 = conn
            .query_row(
                "SELECT count(*) FROM runs INDEXED BY runs_unfinished WHERE session_pk = 1 \
                 AND (status IN ('queued', 'running') OR status IN ('requires_action', 'awaiting_approval'))",
                [],
                |r| r.get(0),
            )
            .expect("count");
        assert_eq!(waiting, 1, "the rebuilt index holds the existing unfinished run");
    }
}
