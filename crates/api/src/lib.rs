//! The native HTTP API: routes, request validation, authentication, SSE streams and the
//! OpenAPI document. Only this crate knows HTTP; it calls `stead-engine` for everything.

pub mod error;
mod extract;
pub mod openapi;
mod routes;
pub mod secrets;
mod stream;
pub mod views;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use stead_engine::Engine;

pub use error::ApiError;
pub use extract::{authenticate, idempotency};

/// API settings. Every field is a `stead serve` option.
#[derive(Clone, Debug)]
pub struct ApiOptions {
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Longest a `wait` request may block.
    pub max_wait: std::time::Duration,
}

impl Default for ApiOptions {
    fn default() -> Self {
        Self { max_body_bytes: 1024 * 1024, max_wait: std::time::Duration::from_secs(600) }
    }
}

pub use stead_identity::{Auth, AuthError, Principal};

#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
    pub auth: Arc<Auth>,
    pub options: ApiOptions,
}

/// The whole API as a router; the binary serves it, tests call it with `oneshot`.
pub fn app(state: AppState) -> Router {
    let limit = state.options.max_body_bytes;
    routes::router().layer(DefaultBodyLimit::max(limit)).with_state(state)
}
