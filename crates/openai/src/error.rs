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

    /// OpenAI's `type` for a status.
    fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            403 => "permission_error",
            404 | 400 | 409 | 413 | 422 => "invalid_request_error",
            429 => "rate_limit_error",
            _ => "server_error",
        }
    }
}

impl IntoResponse for OaiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {
            "message": self.message,
            "type": self.kind(),
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

/// A JSON body parse error, naming the parameter where serde says which one.
pub fn body_error(e: &serde_json::Error) -> OaiError {
    let text = e.to_string();
    if let Some(rest) = text.strip_prefix("unknown field `")
        && let Some(end) = rest.find('`')
    {
        let param = &rest[..end];
        return OaiError::invalid(param, "unknown_parameter", format!("Unknown parameter: '{param}'."));
    }
    OaiError::new(StatusCode::BAD_REQUEST, "invalid_request_body", format!("Invalid request body: {text}"))
}

/// Runs a handler body and turns its error into OpenAI's error response.
pub async fn respond(f: impl std::future::Future<Output = OaiResult<Response>>) -> Response {
    f.await.unwrap_or_else(IntoResponse::into_response)
}
