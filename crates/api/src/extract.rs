//! Extractors that turn every malformed request into our error shape, and the principal.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::{ApiError, AppState, Auth, Principal};

/// `axum::Json`, but rejections become `ApiError`s (stable codes, one shape).
pub struct Json<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for Json<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let axum::Json(v) = axum::Json::<T>::from_request(req, state).await?;
        Ok(Json(v))
    }
}

/// Query parameters with our error shape.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned> FromRequestParts<AppState> for Query<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let axum::extract::Query(v) = axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(Query(v))
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        authenticate(&state.auth, &parts.headers).await
    }
}

/// The caller a request's `Authorization: Bearer` credential names (an API key or an OIDC
/// token; without any configured, the local principal of the default tenant, holding every
/// role).
pub async fn authenticate(auth: &Auth, headers: &axum::http::HeaderMap) -> Result<Principal, ApiError> {
    Ok(auth.authenticate(headers).await?)
}

/// Parses a typed id from a path segment, with a clear error.
pub fn parse_id<T: std::str::FromStr<Err = stead_core::Error>>(raw: &str) -> Result<T, ApiError> {
    raw.parse::<T>().map_err(ApiError::from)
}

/// The request's `Idempotency-Key` header (as the OpenAI SDKs send on every POST and its
/// retries), bound to a fingerprint of what the request asks for: `what` names the operation
/// and target, `request` is the part that must be the same for a retry (its body or input).
/// More than one such header, or a value that is not 1..=255 visible ASCII, is refused.
pub fn idempotency(
    headers: &axum::http::HeaderMap,
    what: &str,
    request: &[u8],
) -> Result<Option<stead_engine::Idempotency>, ApiError> {
    let mut values = headers.get_all("idempotency-key").iter();
    let Some(value) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(ApiError::bad_request("invalid_idempotency_key", "send one `Idempotency-Key` header, not several"));
    }
    let key = value.to_str().map_err(|_| {
        ApiError::bad_request("invalid_idempotency_key", "an idempotency key is visible ASCII characters")
    })?;
    Ok(Some(stead_engine::Idempotency::new(key, &[what.as_bytes(), request])?))
}
