//! `GET /v1/proxies` and `PUT /v1/proxies/{id}/applied`: which proxies
//! watch, what each has applied, and the long poll a stopping proxy waits
//! on (`?behind=R&wait=10s`: answered once no proxy is behind `R`).

use super::{ApiFailure, ApiResult, AppState, Caller, BODY_LIMIT};
use crate::control::proxies::AppliedError;
use crate::model::proxies::{Applied, ProxyList, WatcherInfo, MAX_PROXY_FIELD};
use crate::model::{parse_duration, validate_instance_id, validate_service_name, FieldErrors};
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use bytes::Bytes;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub(super) struct ListParams {
    behind: Option<String>,
    wait: Option<String>,
}

pub(super) async fn list(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(params): Query<ListParams>,
) -> ApiResult<Json<ProxyList>> {
    caller.reader()?;
    let mut errs = FieldErrors::default();
    let behind = match params.behind.as_deref().map(str::parse::<u64>) {
        None => None,
        Some(Ok(r)) => Some(r),
        Some(Err(_)) => {
            errs.push("behind", "must be a revision number");
            None
        }
    };
    let wait = match params.wait.as_deref().map(parse_duration) {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(why)) => {
            errs.push("wait", why);
            None
        }
    };
    if wait.is_some() && behind.is_none() && errs.is_empty() {
        errs.push("wait", "only with behind=REVISION (what to wait for)");
    }
    errs.into_result(()).map_err(ApiFailure::Invalid)?;
    let registry = st.registry.clone();
    let current = move || registry.revision();
    let list = match (behind, wait) {
        (Some(r), Some(wait)) => st.proxies.wait_caught_up(r, wait, current).await,
        _ => st.proxies.list(current(), behind),
    };
    Ok(Json(list))
}

pub(super) async fn applied(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Applied>> {
    caller.reader()?;
    let Path(proxy) = path.map_err(ApiFailure::path)?;
    validate_instance_id(&proxy).map_err(|why| ApiFailure::field("proxy", why))?;
    let body = body.map_err(|e| ApiFailure::body(e, BODY_LIMIT))?;
    let Applied { revision } = serde_json::from_slice(&body)
        .map_err(|e| ApiFailure::field("(body)", format!("expected {{\"revision\": N}}: {e}")))?;
    let who = workload(&caller);
    let current = st.registry.revision();
    st.proxies
        .applied(&proxy, revision, current, who.as_deref())
        .map(|revision| Json(Applied { revision }))
        .map_err(applied_failure)
}

pub(super) fn applied_failure(e: AppliedError) -> ApiFailure {
    match e {
        AppliedError::Unknown(_) => ApiFailure::NotFound(e.to_string()),
        AppliedError::NotOwner { .. } => ApiFailure::Forbidden(e.to_string()),
    }
}

/// The SPIFFE ID of a workload caller; operators and `--identity off`
/// act for any proxy.
pub(super) fn workload(caller: &Caller) -> Option<String> {
    match caller {
        Caller::Workload { id, .. } => Some(id.to_string()),
        _ => None,
    }
}

/// The watch's `proxy`, `service`, `instance` and `version` parameters,
/// every bad one named; `None` when the watcher did not name itself
/// (`mesh-ctl watch`).
pub(super) fn watcher(
    proxy: Option<String>,
    service: Option<String>,
    instance: Option<String>,
    version: Option<String>,
) -> ApiResult<Option<WatcherInfo>> {
    let mut errs = FieldErrors::default();
    if let Some(why) = proxy.as_deref().and_then(|p| validate_instance_id(p).err()) {
        errs.push("proxy", why);
    }
    if let Some(why) = service
        .as_deref()
        .and_then(|s| validate_service_name(s).err())
    {
        errs.push("service", why);
    }
    if let Some(why) = instance
        .as_deref()
        .and_then(|i| validate_instance_id(i).err())
    {
        errs.push("instance", why);
    }
    if let Some(v) = &version {
        let ok =
            v.len() <= MAX_PROXY_FIELD && !v.is_empty() && v.bytes().all(|b| b.is_ascii_graphic());
        if !ok {
            errs.push("version", "1 to 128 printable ASCII characters");
        }
    }
    if proxy.is_none() && (service.is_some() || instance.is_some() || version.is_some()) {
        errs.push(
            "proxy",
            "service, instance and version describe a proxy: name it",
        );
    }
    errs.into_result(()).map_err(ApiFailure::Invalid)?;
    Ok(proxy.map(|proxy| WatcherInfo {
        proxy,
        service,
        instance,
        version,
    }))
}
