//! Extractors that turn every malformed request into our error shape, and the principal.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;

use crate::{ApiError, AppState, Auth, Principal};

/// `axum::Json`, but rejections become `ApiError`s (stable codes, one shape), and the body must
/// be a JSON object ([`json_body`]).
pub struct Json<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for Json<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        if !json_content_type(req.headers()) {
            return Err(crate::error::not_json());
        }
        let body = Bytes::from_request(req, state).await?;
        json_body(&body).map(Json)
    }
}

/// `application/json` or `application/*+json`, parameters allowed (what `axum::Json` accepts).
fn json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else { return false };
    let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    let Some(subtype) = essence.strip_prefix("application/") else { return false };
    subtype == "json" || subtype.ends_with("+json")
}

/// Parses a request body that must be a JSON object into `T`. serde_json would also read a
/// struct from an array of its fields in order (`[null, null]`): no client means that, and the
/// OpenAPI document does not allow it. Errors: `invalid_json` (400) for what is not JSON,
/// `invalid_request` (422) for JSON of the wrong shape.
pub fn json_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => Ok(axum::Json::<T>::from_bytes(body)?.0),
        _ => {
            let axum::Json(value) = axum::Json::<serde_json::Value>::from_bytes(body)?;
            let kind = match value {
                serde_json::Value::Array(_) => "an array",
                serde_json::Value::String(_) => "a string",
                serde_json::Value::Number(_) => "a number",
                serde_json::Value::Bool(_) => "a boolean",
                serde_json::Value::Null => "null",
                serde_json::Value::Object(_) => "an object", // begins with `{`: not here
            };
            Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
                format!("the body must be a JSON object, not {kind}"),
            ))
        }
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
