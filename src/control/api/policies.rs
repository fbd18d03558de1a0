//! `/v1/policies`: apply, read and delete `ServicePolicy` documents.
//!
//! A PUT body is validated with `ServicePolicy::from_value`, the same rules
//! `mesh-ctl apply` checks locally, so a client that skips them (curl) gets
//! the same 400 naming every bad field.

use super::{service_name, ApiFailure, ApiResult, AppState, RevisionReply, BODY_LIMIT};
use crate::model::{validate_service_name, FieldErrors, ServicePolicy};
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::Json;
use bytes::Bytes;
use serde_json::Value;

pub(super) async fn list(State(st): State<AppState>) -> Json<Vec<ServicePolicy>> {
    Json(st.registry.policies())
}

pub(super) async fn get(
    State(st): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<ServicePolicy>> {
    let Path(service) = path.map_err(ApiFailure::path)?;
    service_name(&service)?;
    st.registry.policy(&service).map(Json).ok_or_else(|| {
        ApiFailure::NotFound(format!(
            "no policy is applied for service {service:?} (it runs the defaults)"
        ))
    })
}

pub(super) async fn put(
    State(st): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<RevisionReply>> {
    let Path(service) = path.map_err(ApiFailure::path)?;
    let body = body.map_err(|e| ApiFailure::body(e, BODY_LIMIT))?;
    let policy = validate(&service, &body).map_err(ApiFailure::Invalid)?;
    let registry = st.registry.clone();
    let revision = tokio::task::spawn_blocking(move || registry.apply_policy(policy)).await??;
    Ok(Json(RevisionReply { revision }))
}

pub(super) async fn delete(
    State(st): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<RevisionReply>> {
    let Path(service) = path.map_err(ApiFailure::path)?;
    service_name(&service)?;
    let registry = st.registry.clone();
    let revision = tokio::task::spawn_blocking(move || registry.delete_policy(&service)).await??;
    Ok(Json(RevisionReply { revision }))
}

/// The body as a policy for the path's service; path and body problems
/// are reported together.
fn validate(service: &str, body: &[u8]) -> Result<ServicePolicy, FieldErrors> {
    let mut errs = FieldErrors::default();
    let path_ok = match validate_service_name(service) {
        Ok(()) => true,
        Err(why) => {
            errs.push("(path)", format!("service {service:?}: {why}"));
            false
        }
    };
    let doc: Value = match serde_json::from_slice(body) {
        Ok(doc) => doc,
        Err(e) => {
            errs.push("(body)", format!("not valid JSON: {e}"));
            return Err(errs);
        }
    };
    match ServicePolicy::from_value(&doc) {
        Ok(policy) if path_ok && policy.service != service => {
            errs.push(
                "service",
                format!(
                    "{:?} does not match the service in the URL ({service:?})",
                    policy.service
                ),
            );
            Err(errs)
        }
        Ok(policy) => errs.into_result(policy),
        Err(more) => {
            errs.0.extend(more.0);
            Err(errs)
        }
    }
}
