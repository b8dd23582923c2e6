//! `stead serve --store postgres://…`: the real binary on the machine's PostgreSQL, in a scratch
//! schema. Two nodes on one store share one log (a run created through either completes, and
//! both verify the same chain); an unreachable database at start-up is a clear error naming
//! host and port, never the password. Skipped with a message when PostgreSQL is unreachable,
//! unless `STEAD_REQUIRE_ALL_TESTS=1` (URL from `STEAD_TEST_POSTGRES_URL`).

mod support;

use support::{Options, cli, scripted_agent};

fn base_url() -> String {
    std::env::var("STEAD_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".into())
}

/// A connection to the test database, or `None` (after saying so) to skip.
async fn admin() -> Option<tokio_postgres::Client> {
    match tokio_postgres::connect(&base_url(), tokio_postgres::NoTls).await {
        Ok((client, conn)) => {
            tokio::spawn(conn);
            Some(client)
        }
        Err(e) => {
            let msg = format!("PostgreSQL unreachable at {} ({e})", base_url().split('@').next_back().unwrap_or(""));
            assert!(std::env::var("STEAD_REQUIRE_ALL_TESTS").as_deref() != Ok("1"), "{msg}");
            println!("SKIPPED: {msg}");
            None
        }
    }
}

/// A scratch schema, dropped (blocking, on its own thread and runtime) with the guard.
struct Schema(String);

impl Drop for Schema {
    fn drop(&mut self) {
        let schema = self.0.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let (client, conn) = tokio_postgres::connect(&base_url(), tokio_postgres::NoTls).await?;
                tokio::spawn(conn);
                client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await
            })
        })
        .join();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_one_postgres_share_one_log() {
    let Some(db) = admin().await else { return };
    let schema = Schema(format!("stead_e2e_{}", uuid::Uuid::now_v7().simple()));
    db.batch_execute(&format!("CREATE SCHEMA {}", schema.0)).await.expect("schema");
    let sep = if base_url().contains('?') { '&' } else { '?' };
    let store = format!("{}{sep}options=-csearch_path%3D{}", base_url(), schema.0);

    let a = Options::new().env("STEAD_STORE", &store).start().await;
    assert!(
        a.stderr().contains("(data: postgres 127.0.0.1:5432)") || a.stderr().contains("data: postgres"),
        "{}",
        a.stderr()
    );
    a.apply_agent(&scripted_agent("helper", "")).await;
    let session = a.create_session("helper").await;
    let first = a.create_run(&session, "call echo {\"text\": \"hi\"}").await;
    a.wait_run(&first, "completed").await;

    let b = Options::new().env("STEAD_STORE", &store).start().await;
    let second = b.create_run(&session, "hello from the second node").await;
    b.wait_run(&second, "completed").await;
    a.wait_run(&second, "completed").await;

    let (audit_a, audit_b) = (
        a.get_ok(&format!("/v1/sessions/{session}/audit")).await,
        b.get_ok(&format!("/v1/sessions/{session}/audit")).await,
    );
    assert_eq!(audit_a["ok"].as_bool(), Some(true), "{audit_a}");
    assert_eq!(audit_a, audit_b, "both nodes verify the same chain");
    let events: i64 =
        db.query_one(&format!("SELECT count(*) FROM {}.events", schema.0), &[]).await.expect("count").get(0);
    assert!(events >= 8, "the log is in PostgreSQL ({events} events)");
    assert!(!a.data_dir.join("stead.db").exists() && !b.data_dir.join("stead.db").exists(), "no SQLite file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_at_start_up_is_a_clear_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    let store = format!("postgres://root:s3cret-pw@127.0.0.1:{port}/test");
    let out = cli(&["serve", "--listen", "127.0.0.1:0"], &[("STEAD_STORE", store.as_str())]).await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stderr.contains(&format!("cannot reach PostgreSQL at 127.0.0.1:{port}")), "{}", out.stderr);
    assert!(!out.stderr.contains("s3cret-pw") && !out.stderr.contains("panicked"), "{}", out.stderr);
}
