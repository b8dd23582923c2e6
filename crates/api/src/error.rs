//! The one error table: every error that leaves the API is (HTTP status, stable code,
//! message) in the same JSON shape, `{"error": {"code", "message", "status"}}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable code (e.g. `session_not_found`).
    pub code: String,
    /// What went wrong and, where possible, how to fix it.
    pub message: String,
    pub status: u16,
    /// The error's class as OpenAI names them (`invalid_request_error`, `server_error`, ...),
    /// so OpenAI clients that reach a native path read it too.
    #[serde(rename = "type")]
    pub kind: String,
    /// The request parameter at fault, when one is (OpenAI's field; always present).
    pub param: Option<String>,
}

/// OpenAI's error class for an HTTP status.
pub fn error_kind(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        s if s >= 500 => "server_error",
        _ => "invalid_request_error",
    }
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
                status: self.status.as_u16(),
                kind: error_kind(self.status).to_owned(),
                param: None,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

fn not_found_code(what: &str) -> &'static str {
    match what {
        "session" => "session_not_found",
        "run" => "run_not_found",
        "agent" => "agent_not_found",
        "approval" => "approval_not_found",
        _ => "not_found",
    }
}

impl From<stead_identity::AuthError> for ApiError {
    fn from(e: stead_identity::AuthError) -> Self {
        let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::UNAUTHORIZED);
        Self::new(status, e.code, e.message)
    }
}

impl From<stead_store::Error> for ApiError {
    fn from(e: stead_store::Error) -> Self {
        use stead_store::Error as E;
        let msg = e.to_string();
        match e {
            E::NotFound { what, .. } => Self::new(StatusCode::NOT_FOUND, not_found_code(what), msg),
            E::Conflict { .. } => Self::new(StatusCode::CONFLICT, "head_conflict", msg),
            E::Fenced { .. } => Self::new(StatusCode::CONFLICT, "lease_lost", msg),
            E::InvalidTransition { .. } => Self::new(StatusCode::CONFLICT, "invalid_transition", msg),
            E::Busy(_) => Self::new(StatusCode::CONFLICT, "resource_busy", msg),
            E::LimitExceeded(_) => Self::new(StatusCode::UNPROCESSABLE_ENTITY, "limit_exceeded", msg),
            E::Corrupt(_) => Self::new(StatusCode::INTERNAL_SERVER_ERROR, "storage_corrupt", msg),
            E::Unavailable(_) => Self::new(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable", msg),
            E::Backend(_) => Self::new(StatusCode::INTERNAL_SERVER_ERROR, "storage_error", msg),
            E::IdempotencyKeyUsed(_) => Self::new(StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused", msg),
        }
    }
}

impl From<stead_core::Error> for ApiError {
    fn from(e: stead_core::Error) -> Self {
        use stead_core::Error as E;
        let msg = e.to_string();
        match e {
            E::InvalidId { .. } => Self::bad_request("invalid_id", msg),
            E::InvalidAgentSpec(_) => Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_agent_spec", msg),
            E::InvalidTenant(_) => Self::bad_request("invalid_tenant", msg),
            E::NotGranted(_) => Self::new(StatusCode::FORBIDDEN, "not_granted", msg),
        }
    }
}

impl From<stead_engine::Error> for ApiError {
    fn from(e: stead_engine::Error) -> Self {
        use stead_engine::Error as E;
        let msg = e.to_string();
        match e {
            E::Store(e) => e.into(),
            E::Domain(e) => e.into(),
            E::SessionBusy { .. } => Self::new(StatusCode::CONFLICT, "session_busy", msg),
            E::HeadMoved { .. } => Self::new(StatusCode::CONFLICT, "session_moved", msg),
            E::RunFinished { .. } => Self::new(StatusCode::CONFLICT, "run_finished", msg),
            E::RunNotWaiting { .. } => Self::new(StatusCode::CONFLICT, "run_not_waiting", msg),
            E::InvalidToolOutputs(_) => Self::bad_request("invalid_tool_outputs", msg),
            E::InvalidInput(_) => Self::bad_request("invalid_input", msg),
            E::LimitExceeded(_) => Self::new(StatusCode::PAYLOAD_TOO_LARGE, "limit_exceeded", msg),
            E::Contention(_) => Self::new(StatusCode::SERVICE_UNAVAILABLE, "contention", msg),
            E::Forbidden(_) => Self::new(StatusCode::FORBIDDEN, "forbidden", msg),
            E::InvalidDecision(_) => Self::bad_request("invalid_decision", msg),
            E::AlreadyDecided { .. } => Self::new(StatusCode::CONFLICT, "approval_already_decided", msg),
            E::InvalidIdempotencyKey(_) => Self::bad_request("invalid_idempotency_key", msg),
            E::IdempotencyKeyReused(_) => Self::new(StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused", msg),
        }
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(r: axum::extract::rejection::JsonRejection) -> Self {
        use axum::extract::rejection::JsonRejection as R;
        match &r {
            R::JsonSyntaxError(_) => {
                Self::bad_request("invalid_json", format!("the body is not valid JSON: {}", r.body_text()))
            }
            R::JsonDataError(_) => Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", r.body_text()),
            R::MissingJsonContentType(_) => not_json(),
            R::BytesRejection(b) if b.status() == StatusCode::PAYLOAD_TOO_LARGE => too_large(),
            _ => Self::bad_request("invalid_request", r.body_text()),
        }
    }
}

impl From<axum::extract::rejection::BytesRejection> for ApiError {
    fn from(r: axum::extract::rejection::BytesRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large()
        } else {
            Self::bad_request("invalid_request", r.body_text())
        }
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(r: axum::extract::rejection::QueryRejection) -> Self {
        Self::bad_request("invalid_query", r.body_text())
    }
}

/// A JSON body sent without a JSON `Content-Type`.
pub(crate) fn not_json() -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "send the body as JSON with `Content-Type: application/json`",
    )
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "the request body is larger than the server's limit (max_body_bytes)",
    )
}
