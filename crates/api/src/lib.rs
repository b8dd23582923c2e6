//! The native HTTP API: routes, request validation, authentication, SSE streams and the
//! OpenAPI document. Only this crate knows HTTP; it calls `stead-engine` for everything.

pub mod error;
mod extract;
pub mod openapi;
mod routes;
mod stream;
pub mod views;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use stead_core::ids::TenantId;
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

/// Who may call the API. With no keys configured every request acts for the default tenant
/// (the server then refuses to listen beyond loopback).
#[derive(Clone, Debug, Default)]
pub struct Auth {
    keys: HashMap<String, Principal>,
}

impl Auth {
    /// No authentication: every caller is `local` in the default tenant.
    pub fn none() -> Self {
        Self::default()
    }

    /// Adds an API key that acts as `principal` in `tenant`, holding `roles` (e.g. `approver`).
    pub fn with_key(mut self, key: &str, tenant: TenantId, principal: &str, roles: &[String]) -> Self {
        self.keys.insert(key.to_owned(), Principal { tenant, id: principal.to_owned(), roles: roles.to_vec() });
        self
    }

    pub fn is_enabled(&self) -> bool {
        !self.keys.is_empty()
    }
}

/// The authenticated caller: every handler that touches data takes one.
#[derive(Clone, Debug)]
pub struct Principal {
    pub tenant: TenantId,
    pub id: String,
    /// Roles for approvals; `*` holds them all (the local principal without authentication).
    pub roles: Vec<String>,
}

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
