//! The one place where control-plane failures become HTTP responses: every
//! 4xx/5xx carries a `model::ApiError` JSON body.

use crate::control::auth::Refusal;
use crate::control::registry::RegistryError;
use crate::model::{ApiError, FieldErrors};
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Debug, thiserror::Error)]
pub enum ApiFailure {
    /// The request named bad fields; every one is reported.
    #[error("invalid request: {0}")]
    Invalid(FieldErrors),
    #[error("{0}")]
    NotFound(String),
    #[error("request body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    /// No VIP left: the operator must widen `--vip-cidr`.
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// No credential, or one that proves nothing (401).
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// A valid credential asking for more than it grants (403).
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
}

impl From<Refusal> for ApiFailure {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Unauthenticated(why) => ApiFailure::Unauthenticated(why),
            Refusal::Forbidden(why) => ApiFailure::Forbidden(why),
        }
    }
}

// === impl ApiFailure ===

impl ApiFailure {
    pub fn field(field: &str, reason: impl Into<String>) -> Self {
        let mut errs = FieldErrors::default();
        errs.push(field, reason);
        ApiFailure::Invalid(errs)
    }

    pub fn body(e: BytesRejection, limit: usize) -> Self {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiFailure::TooLarge { limit }
        } else {
            ApiFailure::field("(body)", e.body_text())
        }
    }

    pub fn path(e: PathRejection) -> Self {
        ApiFailure::field("(path)", e.body_text())
    }

    pub fn query(e: QueryRejection) -> Self {
        ApiFailure::field(
            "since",
            format!("must be a revision number ({})", e.body_text()),
        )
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiFailure::Invalid(_) => StatusCode::BAD_REQUEST,
            ApiFailure::NotFound(_) => StatusCode::NOT_FOUND,
            ApiFailure::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiFailure::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiFailure::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiFailure::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiFailure::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiFailure::Conflict(_) => StatusCode::CONFLICT,
        }
    }
}

use crate::control::store::StoreError;

impl From<RegistryError> for ApiFailure {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::UnknownInstance { .. }
            | RegistryError::UnknownPolicy { .. }
            | RegistryError::UnknownRoute(_)
            | RegistryError::UnknownConfig(_) => ApiFailure::NotFound(e.to_string()),
            RegistryError::VipExhausted(_) => ApiFailure::Unavailable(e.to_string()),
            // A replica cut off from etcd (or behind it) answers 503, so
            // clients try another replica.
            RegistryError::Store(StoreError::Etcd { .. } | StoreError::Lagging { .. })
            | RegistryError::Contended(_) => ApiFailure::Unavailable(e.to_string()),
            RegistryError::Store(_) => ApiFailure::Internal(e.to_string()),
        }
    }
}

impl From<tokio::task::JoinError> for ApiFailure {
    fn from(e: tokio::task::JoinError) -> Self {
        ApiFailure::Internal(format!("registry task failed: {e}"))
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let body = match self {
            ApiFailure::Invalid(errs) => ApiError {
                error: format!("invalid request: {errs}"),
                fields: errs.0,
            },
            other => ApiError {
                error: other.to_string(),
                fields: Vec::new(),
            },
        };
        (status, Json(body)).into_response()
    }
}
