//! `/v1/policies` and `/v1/authorizations`: apply, read and delete
//! `ServicePolicy` and `AuthorizationPolicy` documents, one per service.
//!
//! A PUT body is validated with the document's `from_value`, the same
//! rules `mesh-ctl apply` checks locally, so a client that skips them
//! (curl) gets the same 400 naming every bad field. Reads need any proven
//! identity; writes need the admin token.

use super::{ApiFailure, ApiResult, AppState, Caller, RevisionReply, BODY_LIMIT};
use crate::authz::MESH_WIDE;
use crate::model::{validate_service_name, AuthorizationPolicy, FieldErrors, ServicePolicy};
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::{Extension, Json};
use bytes::Bytes;
use serde_json::Value;

/// What the two document kinds share here.
pub(super) trait Doc: Clone + serde::Serialize + Send + 'static {
    /// "policy", "authorization policy".
    const WHAT: &'static str;
    /// Names the path segment may take beyond service names (`*`).
    const WILDCARD: Option<&'static str>;
    fn from_value(doc: &Value) -> Result<Self, FieldErrors>;
    fn service(&self) -> &str;
    fn get(st: &AppState, service: &str) -> Option<Self>;
    fn list(st: &AppState) -> Vec<Self>;
    fn apply(st: &AppState, doc: Self) -> Result<u64, crate::control::registry::RegistryError>;
    fn delete(st: &AppState, service: &str)
        -> Result<u64, crate::control::registry::RegistryError>;
}

impl Doc for ServicePolicy {
    const WHAT: &'static str = "policy";
    const WILDCARD: Option<&'static str> = None;
    fn from_value(doc: &Value) -> Result<Self, FieldErrors> {
        ServicePolicy::from_value(doc)
    }
    fn service(&self) -> &str {
        &self.service
    }
    fn get(st: &AppState, service: &str) -> Option<Self> {
        st.registry.policy(service)
    }
    fn list(st: &AppState) -> Vec<Self> {
        st.registry.policies()
    }
    fn apply(st: &AppState, doc: Self) -> Result<u64, crate::control::registry::RegistryError> {
        st.registry.apply_policy(doc)
    }
    fn delete(
        st: &AppState,
        service: &str,
    ) -> Result<u64, crate::control::registry::RegistryError> {
        st.registry.delete_policy(service)
    }
}

impl Doc for AuthorizationPolicy {
    const WHAT: &'static str = "authorization policy";
    const WILDCARD: Option<&'static str> = Some(MESH_WIDE);
    fn from_value(doc: &Value) -> Result<Self, FieldErrors> {
        AuthorizationPolicy::from_value(doc)
    }
    fn service(&self) -> &str {
        &self.service
    }
    fn get(st: &AppState, service: &str) -> Option<Self> {
        st.registry.authorization(service)
    }
    fn list(st: &AppState) -> Vec<Self> {
        st.registry.authorizations()
    }
    fn apply(st: &AppState, doc: Self) -> Result<u64, crate::control::registry::RegistryError> {
        st.registry.apply_authorization(doc)
    }
    fn delete(
        st: &AppState,
        service: &str,
    ) -> Result<u64, crate::control::registry::RegistryError> {
        st.registry.delete_authorization(service)
    }
}

fn path_service<D: Doc>(service: &str) -> ApiResult<()> {
    if D::WILDCARD == Some(service) {
        return Ok(());
    }
    validate_service_name(service).map_err(|why| ApiFailure::field("service", why))
}

pub(super) async fn list<D: Doc>(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Vec<D>>> {
    caller.reader()?;
    Ok(Json(D::list(&st)))
}

pub(super) async fn get<D: Doc>(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<D>> {
    caller.reader()?;
    let Path(service) = path.map_err(ApiFailure::path)?;
    path_service::<D>(&service)?;
    D::get(&st, &service).map(Json).ok_or_else(|| {
        ApiFailure::NotFound(format!(
            "no {} is applied for service {service:?} (it runs the defaults)",
            D::WHAT
        ))
    })
}

pub(super) async fn put<D: Doc>(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<RevisionReply>> {
    caller.admin()?;
    let Path(service) = path.map_err(ApiFailure::path)?;
    let body = body.map_err(|e| ApiFailure::body(e, BODY_LIMIT))?;
    let doc = validate::<D>(&service, &body).map_err(ApiFailure::Invalid)?;
    let revision = tokio::task::spawn_blocking(move || D::apply(&st, doc)).await??;
    Ok(Json(RevisionReply { revision }))
}

pub(super) async fn delete<D: Doc>(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<RevisionReply>> {
    caller.admin()?;
    let Path(service) = path.map_err(ApiFailure::path)?;
    path_service::<D>(&service)?;
    let revision = tokio::task::spawn_blocking(move || D::delete(&st, &service)).await??;
    Ok(Json(RevisionReply { revision }))
}

/// The body as a document for the path's service; path and body problems
/// are reported together.
fn validate<D: Doc>(service: &str, body: &[u8]) -> Result<D, FieldErrors> {
    let mut errs = FieldErrors::default();
    let path_ok = match path_service::<D>(service) {
        Ok(()) => true,
        Err(_) => {
            let why = validate_service_name(service).err().unwrap_or_default();
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
    match D::from_value(&doc) {
        Ok(d) if path_ok && d.service() != service => {
            errs.push(
                "service",
                format!(
                    "{:?} does not match the service in the URL ({service:?})",
                    d.service()
                ),
            );
            Err(errs)
        }
        Ok(d) => errs.into_result(d),
        Err(more) => {
            errs.0.extend(more.0);
            Err(errs)
        }
    }
}
