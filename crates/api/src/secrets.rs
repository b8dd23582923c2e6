//! The vault's endpoints: store, list and delete secrets. Values go in and never come out:
//! listing shows names, scopes and versions; tools and MCP servers get values at call time.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use stead_vault::{Scope, SecretMeta, Vault};
use utoipa::{IntoParams, ToSchema};

use crate::extract::{Json, Query};
use crate::{ApiError, AppState, Principal};

/// `POST /v1/secrets`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetSecret {
    /// 1 to 128 of `A-Z a-z 0-9 _ . -`; specs name it as `${secret:NAME}`.
    pub name: String,
    /// At most 16 KiB. Never shown again.
    pub value: String,
    /// `tenant` (the default: any agent of the tenant may use it) or `user` (the caller's own).
    #[serde(default)]
    pub scope: Option<String>,
}

/// A secret as it may be shown: never its value.
#[derive(Debug, Serialize, ToSchema)]
pub struct Secret {
    pub name: String,
    /// `tenant` or `user`.
    pub scope: String,
    pub version: u32,
    /// RFC 3339.
    pub created_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SecretList {
    /// `list`.
    pub object: &'static str,
    pub data: Vec<Secret>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ScopeQuery {
    /// `tenant` (default) or `user`.
    pub scope: Option<String>,
}

fn vault(state: &AppState) -> Result<&Vault, ApiError> {
    state.engine.options().vault.as_deref().ok_or_else(|| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "vault_disabled", "this server has no vault configured")
    })
}

fn scope(p: &Principal, raw: Option<&str>) -> Result<Scope, ApiError> {
    match raw.unwrap_or("tenant") {
        "tenant" => Ok(Scope::Tenant),
        "user" => Ok(Scope::User(p.id.clone())),
        other => Err(ApiError::bad_request("invalid_scope", format!("scope is `tenant` or `user`, not {other:?}"))),
    }
}

fn view(m: SecretMeta, principal: &Principal) -> Option<Secret> {
    let scope = match &m.scope {
        Scope::Tenant => "tenant",
        Scope::User(p) if p == &principal.id => "user",
        // Another user's own secret: not the caller's to see.
        Scope::User(_) => return None,
    };
    Some(Secret { name: m.name, scope: scope.into(), version: m.version, created_at: m.created_at.to_rfc3339() })
}

impl From<stead_vault::Error> for ApiError {
    fn from(e: stead_vault::Error) -> Self {
        use stead_vault::Error as E;
        let msg = e.to_string();
        match e {
            E::InvalidName(_) => ApiError::bad_request("invalid_secret_name", msg),
            E::Invalid(_) => ApiError::bad_request("invalid_secret", msg),
            E::TooLarge(..) => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "limit_exceeded", msg),
            E::TooMany => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "limit_exceeded", msg),
            E::Tampered(_) | E::BadKey(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "vault_corrupt", msg),
            E::Store(e) => e.into(),
        }
    }
}

/// Store a secret (a new version if the name exists). The answer never contains the value.
#[utoipa::path(post, path = "/v1/secrets", tag = "secrets", request_body = SetSecret,
    responses((status = 201, body = Secret),
        (status = 400, description = "Invalid name or scope", body = crate::error::ErrorBody),
        (status = 413, description = "Value over 16 KiB (or body over max_body_bytes)", body = crate::error::ErrorBody),
        (status = 415, description = "The body is not JSON (`Content-Type`)", body = crate::error::ErrorBody),
        (status = 422, description = "The JSON does not have the expected shape", body = crate::error::ErrorBody),
        (status = 503, description = "No vault configured", body = crate::error::ErrorBody)))]
pub async fn set_secret(
    State(state): State<AppState>,
    principal: Principal,
    Json(req): Json<SetSecret>,
) -> Result<(StatusCode, axum::Json<Secret>), ApiError> {
    let vault = vault(&state)?;
    let scope = scope(&principal, req.scope.as_deref())?;
    let meta = vault.set(&principal.tenant, &scope, &req.name, &req.value).await?;
    let shown = view(meta, &principal).expect("the caller's own secret");
    Ok((StatusCode::CREATED, axum::Json(shown)))
}

/// The tenant's secrets and the caller's own: names, scopes and versions, never values.
#[utoipa::path(get, path = "/v1/secrets", tag = "secrets",
    responses((status = 200, body = SecretList), (status = 503, body = crate::error::ErrorBody)))]
pub async fn list_secrets(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<axum::Json<SecretList>, ApiError> {
    let vault = vault(&state)?;
    let data = vault.list(&principal.tenant).await?.into_iter().filter_map(|m| view(m, &principal)).collect();
    Ok(axum::Json(SecretList { object: "list", data }))
}

/// Delete a secret (`?scope=user` for the caller's own).
#[utoipa::path(delete, path = "/v1/secrets/{name}", tag = "secrets",
    params(("name" = String, Path), ScopeQuery),
    responses((status = 204, description = "Deleted"), (status = 404, body = crate::error::ErrorBody),
        (status = 503, body = crate::error::ErrorBody)))]
pub async fn delete_secret(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
    Query(q): Query<ScopeQuery>,
) -> Result<StatusCode, ApiError> {
    let vault = vault(&state)?;
    let scope = scope(&principal, q.scope.as_deref())?;
    if vault.delete(&principal.tenant, &scope, &name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(StatusCode::NOT_FOUND, "secret_not_found", format!("no secret {name}")))
    }
}
