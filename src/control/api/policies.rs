//! `/v1/policies`, `/v1/authorizations` and `/v1/routes`: apply, read and
//! delete `ServicePolicy` and `AuthorizationPolicy` documents (one per
//! service) and the gateway's `Route`s (one per name).
//!
//! A PUT body is validated with the document's `from_value`, the same
//! rules `mesh-ctl apply` checks locally, so a client that skips them
//! (curl) gets the same 400 naming every bad field. Reads need any proven
//! identity; writes need the admin token.

use super::{ApiFailure, ApiResult, AppState, Caller, RevisionReply, BODY_LIMIT};
use crate::authz::MESH_WIDE;
use crate::model::{validate_service_name, AuthorizationPolicy, FieldErrors, Route, ServicePolicy};
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::{Extension, Json};
use bytes::Bytes;
use serde_json::Value;

/// What the document kinds share here.
pub(super) trait Doc: Clone + serde::Serialize + Send + 'static {
    /// "policy", "authorization policy", "route".
    const WHAT: &'static str;
    /// The field the URL's last segment names: "service", "name".
    const KEY: &'static str = "service";
    /// Names the path segment may take beyond service names (`*`).
    const WILDCARD: Option<&'static str>;
    fn from_value(doc: &Value) -> Result<Self, FieldErrors>;
    fn key(&self) -> &str;
    fn not_found(key: &str) -> String {
        format!(
            "no {} is applied for service {key:?} (it runs the defaults)",
            Self::WHAT
        )
    }
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
    fn key(&self) -> &str {
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
    fn key(&self) -> &str {
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

impl Doc for Route {
    const WHAT: &'static str = "route";
    const KEY: &'static str = "name";
    const WILDCARD: Option<&'static str> = None;
    fn from_value(doc: &Value) -> Result<Self, FieldErrors> {
        Route::from_value(doc)
    }
    fn key(&self) -> &str {
        &self.name
    }
    fn not_found(name: &str) -> String {
        format!("no route named {name:?} is applied")
    }
    fn get(st: &AppState, name: &str) -> Option<Self> {
        st.registry.route(name)
    }
    fn list(st: &AppState) -> Vec<Self> {
        st.registry.routes()
    }
    fn apply(st: &AppState, doc: Self) -> Result<u64, crate::control::registry::RegistryError> {
        st.registry.apply_route(doc)
    }
    fn delete(st: &AppState, name: &str) -> Result<u64, crate::control::registry::RegistryError> {
        st.registry.delete_route(name)
    }
}

fn path_service<D: Doc>(service: &str) -> ApiResult<()> {
    if D::WILDCARD == Some(service) {
        return Ok(());
    }
    validate_service_name(service).map_err(|why| ApiFailure::field(D::KEY, why))
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
    D::get(&st, &service)
        .map(Json)
        .ok_or_else(|| ApiFailure::NotFound(D::not_found(&service)))
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
            errs.push("(path)", format!("{} {service:?}: {why}", D::KEY));
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
        Ok(d) if path_ok && d.key() != service => {
            errs.push(
                D::KEY,
                format!(
                    "{:?} does not match the {} in the URL ({service:?})",
                    d.key(),
                    D::KEY
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
