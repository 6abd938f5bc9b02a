//! Stage: every stage. The one error a request can end in: an HTTP status, a stable machine-readable
//! `code`, and a message for humans. Internals never reach the body: a store or I/O failure is logged
//! with the request id and answered with a generic message.

use hyper::StatusCode;
use serde_json::json;

/// An error answered to a client. `code` values are a public, stable contract (see the README's
/// "Errors" table); never rename one.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// HTTP status to answer with.
    pub status: StatusCode,
    /// Stable machine-readable code, e.g. `forbidden_field`.
    pub code: &'static str,
    /// Human-readable explanation; never contains citizen data beyond what the caller sent.
    pub message: String,
    /// Seconds to wait before retrying (429 and 503), sent as `Retry-After`.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with the given status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400 with the given code.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 403 with the given code.
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }

    /// 404 with the given code.
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    /// 409 with the given code.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    /// 422 with the given code.
    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    /// 500 `internal_error`; the cause is logged, not answered.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(%cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "internal error; see the broker log",
        )
    }

    /// 503 with the given code.
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            retry_after: Some(1),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
        }
    }

    /// 404 `not_found` for an unknown route.
    pub fn no_route(method: &hyper::Method, path: &str) -> Self {
        Self::not_found("not_found", format!("no route for {method} {path}"))
    }

    /// 405 `method_not_allowed`.
    pub fn method_not_allowed(method: &hyper::Method, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{method} is not allowed on {path}"),
        )
    }

    /// The JSON body `{ "error": { "code", "message", "request_id" } }`.
    pub fn to_json(&self, request_id: &str) -> serde_json::Value {
        json!({ "error": { "code": self.code, "message": self.message, "request_id": request_id } })
    }
}
