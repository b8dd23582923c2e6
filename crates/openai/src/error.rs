//! Errors in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with the status
//! codes the official SDKs map to their exception classes (400 BadRequestError, 401
//! AuthenticationError, 403 PermissionDeniedError, 404 NotFoundError, 409 ConflictError, 422
//! UnprocessableEntityError, 429 RateLimitError, 5xx InternalServerError).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use stead_api::ApiError;

#[derive(Debug, Clone)]
pub struct OaiError {
    pub status: StatusCode,
    pub message: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

pub type OaiResult<T> = Result<T, OaiError>;

impl OaiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), param: None, code: Some(code.to_owned()) }
    }

    /// A 400 about one request parameter.
    pub fn invalid(param: &str, code: &str, message: impl Into<String>) -> Self {
        Self { param: Some(param.to_owned()), ..Self::new(StatusCode::BAD_REQUEST, code, message) }
    }

    pub fn not_found(what: &str, id: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", format!("{what} with id '{id}' not found."))
    }

    pub fn unsupported(param: &str, message: impl Into<String>) -> Self {
        Self::invalid(param, "unsupported_parameter", message)
    }

    pub fn with_param(mut self, param: &str) -> Self {
        self.param = Some(param.to_owned());
        self
    }
}

impl IntoResponse for OaiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {
            "message": self.message,
            "type": stead_api::error::error_kind(self.status),
            "param": self.param,
            "code": self.code,
        }});
        (self.status, Json(body)).into_response()
    }
}

impl From<ApiError> for OaiError {
    fn from(e: ApiError) -> Self {
        let code = match e.code {
            "unauthorized" => "invalid_api_key",
            other => other,
        };
        Self::new(e.status, code, e.message)
    }
}

impl From<stead_engine::Error> for OaiError {
    fn from(e: stead_engine::Error) -> Self {
        ApiError::from(e).into()
    }
}

impl From<stead_store::Error> for OaiError {
    fn from(e: stead_store::Error) -> Self {
        ApiError::from(e).into()
    }
}

/// Parses a JSON object body into `T`, naming the parameter at fault: an unknown one, or one whose
/// value has the wrong type (found by trying each top-level key on its own; every field of
/// the bodies parsed here is optional or defaulted, so a key alone fails only on its type).
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> OaiResult<T> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        OaiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("We could not parse the JSON body of your request: {e}"),
        )
    })?;
    // serde would also read a struct from an array of its fields in order (`[null, null]`).
    if !value.is_object() {
        return Err(OaiError::new(StatusCode::BAD_REQUEST, "invalid_request_body", "The body must be a JSON object."));
    }
    serde_json::from_value::<T>(value.clone()).map_err(|e| {
        let text = e.to_string();
        if let Some(rest) = text.strip_prefix("unknown field `")
            && let Some(end) = rest.find('`')
        {
            let param = &rest[..end];
            return OaiError::invalid(param, "unknown_parameter", format!("Unknown parameter: '{param}'."));
        }
        if let Some(obj) = value.as_object() {
            for (k, v) in obj {
                let alone = serde_json::Value::Object([(k.clone(), v.clone())].into_iter().collect());
                if let Err(e) = serde_json::from_value::<T>(alone)
                    && !e.to_string().starts_with("missing field")
                {
                    return OaiError::invalid(k, "invalid_type", format!("Invalid type for '{k}': {e}."));
                }
            }
        }
        OaiError::new(StatusCode::BAD_REQUEST, "invalid_request_body", format!("Invalid request body: {text}"))
    })
}

/// Runs a handler body and turns its error into OpenAI's error response.
pub async fn respond(f: impl std::future::Future<Output = OaiResult<Response>>) -> Response {
    f.await.unwrap_or_else(IntoResponse::into_response)
}
