//! Runs the backend-independent store conformance suite against SQLite, one fresh data
//! directory per case.

use stead_store::conformance::{Config, Fixture};
use stead_store_sqlite::{Durability, SqliteOptions, SqliteStore};

async fn make_store(config: Config) -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = SqliteOptions::new(dir.path())
        .durability(Durability::Normal)
        .max_events_per_session(config.max_events_per_session)
        .max_event_bytes(config.max_event_bytes);
    let store = SqliteStore::open(options).expect("open store");
    Fixture::new(store, dir)
}

stead_store::conformance_tests!(make_store);
