//! `/v1/configs`: apply, read, list and roll back config documents, and
//! `PUT /v1/proxies/{id}/configs`, where a proxy reports what it has
//! delivered to its app.
//!
//! A PUT body is `{"document": {...}, "message": "..."}`; the document is
//! validated with the rules `mesh-ctl apply` checks locally, every bad
//! field named. Writes need the admin token; reads any proven identity;
//! secret values (`?secrets=true`) an operator, or a workload of the
//! service the application is named after (its own sidecar); anyone else
//! asking for them gets a config without secrets whole, and a 403 for one
//! with secrets.

use super::{ApiFailure, ApiResult, AppState, Caller, BODY_LIMIT};
use crate::control::registry::Authored;
use crate::model::config::{
    ApplyConfig, ConfigApplied, ConfigDocument, ConfigMeta, ConfigVersion, DeliveredConfigs,
    Rollback,
};
use crate::model::{validate_instance_id, validate_service_name, FieldErrors};
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use bytes::Bytes;
use serde::Deserialize;

/// Largest config PUT body: a 1 MiB document, JSON-escaped, with room.
pub const CONFIG_BODY_LIMIT: usize = 4 * 1024 * 1024;
/// The longest `message` of a version.
pub const MAX_MESSAGE: usize = 1024;

#[derive(Debug, Deserialize)]
pub(super) struct GetParams {
    version: Option<u64>,
    #[serde(default)]
    secrets: bool,
}

fn names(application: &str, profile: &str) -> Result<(), FieldErrors> {
    let mut errs = FieldErrors::default();
    if let Err(why) = validate_service_name(application) {
        errs.push("application", why);
    }
    if let Err(why) = validate_service_name(profile) {
        errs.push("profile", why);
    }
    errs.into_result(())
}

/// The path's application and profile, checked.
fn config_path(path: Result<Path<(String, String)>, PathRejection>) -> ApiResult<(String, String)> {
    let Path((app, profile)) = path.map_err(ApiFailure::path)?;
    names(&app, &profile).map_err(ApiFailure::Invalid)?;
    Ok((app, profile))
}

fn author(caller: &Caller) -> String {
    match caller {
        Caller::Admin => "admin".into(),
        Caller::Open => "anonymous (identity off)".into(),
        Caller::Workload { id, .. } | Caller::Bootstrap(id) => id.to_string(),
        Caller::Anonymous => "anonymous".into(),
    }
}

fn message(m: Option<String>, errs: &mut FieldErrors) -> Option<String> {
    let m = m?;
    if m.len() > MAX_MESSAGE || m.chars().any(|c| c.is_control() && c != '\n') {
        errs.push(
            "message",
            format!("at most {MAX_MESSAGE} bytes, no control characters"),
        );
    }
    Some(m)
}

pub(super) async fn list(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Vec<ConfigMeta>>> {
    caller.reader()?;
    Ok(Json(st.registry.configs()))
}

pub(super) async fn get(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<(String, String)>, PathRejection>,
    params: Result<Query<GetParams>, QueryRejection>,
) -> ApiResult<Json<ConfigVersion>> {
    caller.reader()?;
    let (app, profile) = config_path(path)?;
    let Query(params) = params.map_err(|e| {
        ApiFailure::field(
            "(query)",
            format!("version=N and secrets=true|false ({})", e.body_text()),
        )
    })?;
    // Secret values are for operators and the application's own
    // workloads; a config without secrets is anyone's to read whole.
    let allowed = !params.secrets || caller.acts_for(&app).is_ok();
    let registry = st.registry.clone();
    let (a, p) = (app.clone(), profile.clone());
    let v = tokio::task::spawn_blocking(move || {
        registry.config(&a, &p, params.version, params.secrets && allowed)
    })
    .await??;
    if !allowed && !v.secret.is_empty() {
        return Err(ApiFailure::Forbidden(format!(
            "secret values of {app:?} are for operators and {app:?}'s own workloads"
        )));
    }
    Ok(Json(v))
}

pub(super) async fn history(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<Json<Vec<ConfigMeta>>> {
    caller.reader()?;
    let (app, profile) = config_path(path)?;
    let registry = st.registry.clone();
    let h = tokio::task::spawn_blocking(move || registry.config_history(&app, &profile)).await??;
    Ok(Json(h))
}

pub(super) async fn put(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<ConfigApplied>> {
    caller.admin()?;
    let Path((app, profile)) = path.map_err(ApiFailure::path)?;
    let body = body.map_err(|e| ApiFailure::body(e, CONFIG_BODY_LIMIT))?;
    let (doc, message) = validate(&app, &profile, &body).map_err(ApiFailure::Invalid)?;
    let by = Authored {
        author: author(&caller),
        message,
    };
    let done = tokio::task::spawn_blocking(move || st.registry.apply_config(doc, by)).await??;
    Ok(Json(done))
}

pub(super) async fn rollback(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<ConfigApplied>> {
    caller.admin()?;
    let (app, profile) = config_path(path)?;
    let body = body.map_err(|e| ApiFailure::body(e, BODY_LIMIT))?;
    let req: Rollback = serde_json::from_slice(&body).map_err(|e| {
        ApiFailure::field(
            "(body)",
            format!("expected {{\"to\": N, \"message\": \"...\"}}: {e}"),
        )
    })?;
    let mut errs = FieldErrors::default();
    let message = message(req.message, &mut errs);
    errs.into_result(()).map_err(ApiFailure::Invalid)?;
    let by = Authored {
        author: author(&caller),
        message,
    };
    let done = tokio::task::spawn_blocking(move || {
        st.registry.rollback_config(&app, &profile, req.to, by)
    })
    .await??;
    Ok(Json(done))
}

/// The body as a document for the path's application and profile; path
/// and body problems are reported together.
fn validate(
    app: &str,
    profile: &str,
    body: &[u8],
) -> Result<(ConfigDocument, Option<String>), FieldErrors> {
    let mut errs = FieldErrors::default();
    if let Err(path) = names(app, profile) {
        for e in path.0 {
            errs.push("(path)", format!("{}: {}", e.field, e.reason));
        }
    }
    let req: ApplyConfig = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            errs.push(
                "(body)",
                format!("expected {{\"document\": {{...}}, \"message\": \"...\"}}: {e}"),
            );
            return Err(errs);
        }
    };
    let message = message(req.message, &mut errs);
    match ConfigDocument::from_value(&req.document) {
        Ok(d) if errs.is_empty() && (d.application != app || d.profile != profile) => {
            errs.push(
                "application",
                format!(
                    "{}/{} does not match the URL ({app}/{profile})",
                    d.application, d.profile
                ),
            );
            Err(errs)
        }
        Ok(d) => errs.into_result((d, message)),
        Err(more) => {
            errs.0.extend(more.0);
            Err(errs)
        }
    }
}

/// `PUT /v1/proxies/{id}/configs`: what a proxy's subscriptions hold.
pub(super) async fn delivered(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<DeliveredConfigs>> {
    caller.reader()?;
    let Path(proxy) = path.map_err(ApiFailure::path)?;
    validate_instance_id(&proxy).map_err(|why| ApiFailure::field("proxy", why))?;
    let body = body.map_err(|e| ApiFailure::body(e, BODY_LIMIT))?;
    let report: DeliveredConfigs = serde_json::from_slice(&body).map_err(|e| {
        ApiFailure::field("(body)", format!("expected {{\"configs\": [...]}}: {e}"))
    })?;
    let mut errs = FieldErrors::default();
    for (i, c) in report.configs.iter().enumerate() {
        for (field, name) in [("application", &c.application), ("profile", &c.profile)] {
            if let Err(why) = validate_service_name(name) {
                errs.push(format!("configs[{i}].{field}"), why);
            }
        }
    }
    if report.configs.len() > 64 {
        errs.push("configs", "at most 64 subscriptions per proxy");
    }
    errs.into_result(()).map_err(ApiFailure::Invalid)?;
    let who = super::proxies::workload(&caller);
    st.proxies
        .delivered(&proxy, report.clone(), who.as_deref())
        .map_err(super::proxies::applied_failure)?;
    Ok(Json(report))
}
