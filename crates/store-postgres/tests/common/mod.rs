//! The PostgreSQL test fixture: a scratch schema per store, dropped with its guard.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use stead_store::conformance::{Config, Fixture};
use stead_store_postgres::{PostgresOptions, PostgresStore};

pub fn url() -> String {
    std::env::var("STEAD_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".into())
}

fn required() -> bool {
    std::env::var("STEAD_REQUIRE_ALL_TESTS").is_ok_and(|v| v == "1")
}

/// The URL with its password, if any, replaced by `***`.
pub fn redacted(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else { return url.to_owned() };
    let Some(at) = url[start..].find('@').map(|i| start + i) else { return url.to_owned() };
    match url[start..at].find(':') {
        Some(colon) => format!("{}***{}", &url[..start + colon + 1], &url[at..]),
        None => url.to_owned(),
    }
}

/// `Ok` when PostgreSQL answers; `Err(why)` to skip; panics when every test is required.
pub async fn postgres_ready() -> Result<(), String> {
    let url = url();
    let attempt =
        tokio::time::timeout(Duration::from_secs(5), tokio_postgres::connect(&url, tokio_postgres::NoTls)).await;
    let why = match attempt {
        Ok(Ok((client, conn))) => {
            tokio::spawn(conn);
            match client.simple_query("SELECT 1").await {
                Ok(_) => return Ok(()),
                Err(e) => e.to_string(),
            }
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => "connection timed out".into(),
    };
    let msg = format!("PostgreSQL unreachable at {} ({why})", redacted(&url));
    if required() {
        panic!("{msg}, and STEAD_REQUIRE_ALL_TESTS=1");
    }
    Err(msg)
}

/// Drops its schema when dropped. Blocks the dropping thread until the schema is gone (on a
/// thread of its own, with its own runtime, as the caller may be inside one).
pub struct Scratch {
    pub schema: String,
    url: String,
}

impl Scratch {
    pub fn new() -> Self {
        Self { schema: format!("stead_test_{}", uuid::Uuid::now_v7().simple()), url: url() }
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let (url, schema) = (self.url.clone(), self.schema.clone());
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
                tokio::spawn(conn);
                client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("could not drop test schema {}: {e}", self.schema),
            Err(_) => eprintln!("could not drop test schema {}: the dropping thread panicked", self.schema),
        }
    }
}

/// A store on a fresh schema; the schema goes when the returned guard is dropped (after the
/// store: fields drop in order).
pub async fn open(config: Config) -> (Arc<PostgresStore>, Scratch) {
    let scratch = Scratch::new();
    let options = PostgresOptions::new(url())
        .schema(scratch.schema.clone())
        .pool_size(8)
        .max_events_per_session(config.max_events_per_session)
        .max_event_bytes(config.max_event_bytes);
    let store = PostgresStore::open(options).await.expect("open the PostgreSQL store");
    (store, scratch)
}

pub async fn make_store(config: Config) -> Fixture {
    let (store, scratch) = open(config).await;
    Fixture::new(store, scratch)
}
