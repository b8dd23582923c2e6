//! Runs the backend-independent store conformance suite against the real PostgreSQL, one fresh
//! schema per case (`stead_test_<random>`), dropped when the case ends.
//!
//! URL from `STEAD_TEST_POSTGRES_URL` (default `postgres://root@127.0.0.1:5432/test`). If the
//! server cannot be reached, each case prints `SKIPPED: …` and passes — unless
//! `STEAD_REQUIRE_ALL_TESTS=1`, when it fails.

mod common;

stead_store::conformance_tests!(common::make_store, skip_unless = common::postgres_ready);
