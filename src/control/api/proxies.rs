//! `GET /v1/proxies` and `PUT /v1/proxies/{id}/applied`: which proxies
//! watch, what each has applied, and the long poll a stopping proxy waits
//! on (`?behind=R&wait=10s`: answered once no proxy is behind `R`).

use super::{ApiFailure, ApiResult, AppState, Caller, BODY_LIMIT};
use crate::control::proxies::AppliedError;
use crate::model::proxies::{Applied, ProxyList, WatcherInfo, MAX_PROXY_FIELD};
use crate::model::stats::{StatsReport, Trails, MAX_REPORTED, WINDOW_SECS};
use crate::model::{parse_duration, validate_instance_id, validate_service_name, FieldErrors};
use crate::telemetry::histogram;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use bytes::Bytes;
use serde::Deserialize;
use std::time::Duration;

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

/// Largest stats report accepted (a thousand destinations fit).
pub(super) const STATS_BODY_LIMIT: usize = 2 * 1024 * 1024;

pub(super) async fn stats(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<crate::model::stats::Asked>> {
    caller.reader()?;
    let Path(proxy) = path.map_err(ApiFailure::path)?;
    validate_instance_id(&proxy).map_err(|why| ApiFailure::field("proxy", why))?;
    let body = body.map_err(|e| ApiFailure::body(e, STATS_BODY_LIMIT))?;
    let mut report: StatsReport = serde_json::from_slice(&body)
        .map_err(|e| ApiFailure::field("(body)", format!("expected a stats report: {e}")))?;
    validate_stats(&report).map_err(ApiFailure::Invalid)?;
    let who = workload(&caller);
    let tapped = std::mem::take(&mut report.tap);
    st.proxies
        .stats(&proxy, report, who.as_deref())
        .map_err(applied_failure)?;
    st.asks.tapped(&proxy, tapped);
    Ok(Json(st.asks.asked()))
}

/// `PUT /v1/proxies/{id}/trails`: decision trails of asked request ids.
pub(super) async fn trails(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    caller.reader()?;
    let Path(proxy) = path.map_err(ApiFailure::path)?;
    validate_instance_id(&proxy).map_err(|why| ApiFailure::field("proxy", why))?;
    let body = body.map_err(|e| ApiFailure::body(e, STATS_BODY_LIMIT))?;
    let Trails { mut trails } = serde_json::from_slice(&body)
        .map_err(|e| ApiFailure::field("(body)", format!("expected {{\"trails\": [...]}}: {e}")))?;
    let who = workload(&caller);
    // Only a connected proxy, as itself, may answer; it is named by its id.
    st.proxies
        .stats_owner(&proxy, who.as_deref())
        .map_err(applied_failure)?;
    trails.truncate(crate::control::asks::MAX_TRAILS);
    for t in &mut trails {
        t.proxy.clone_from(&proxy);
    }
    st.asks.answer(trails);
    Ok(Json(serde_json::json!({})))
}

#[derive(Debug, Deserialize)]
pub(super) struct ExplainParams {
    wait: Option<String>,
}

/// The longest `wait` of an explain.
const MAX_EXPLAIN_WAIT: Duration = Duration::from_secs(10);

/// `GET /v1/explain/{request_id}[?wait=5s]`: every proxy's decision trail
/// of one request, asked through their pushes.
pub(super) async fn explain(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    Query(params): Query<ExplainParams>,
) -> ApiResult<Json<Trails>> {
    caller.reader()?;
    let Path(id) = path.map_err(ApiFailure::path)?;
    let sane = (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-._:+/=".contains(&c));
    if !sane {
        return Err(ApiFailure::field(
            "request_id",
            "1 to 128 letters, digits or -._:+/= (an x-request-id)",
        ));
    }
    let wait = match params.wait.as_deref().map(parse_duration) {
        None => Duration::from_secs(5),
        Some(Ok(d)) if d <= MAX_EXPLAIN_WAIT => d,
        Some(Ok(_)) => return Err(ApiFailure::field("wait", "at most 10s")),
        Some(Err(why)) => return Err(ApiFailure::field("wait", why)),
    };
    let trails = st
        .asks
        .explain(&id, wait)
        .await
        .map_err(|e| ApiFailure::Unavailable(e.to_string()))?;
    if trails.is_empty() {
        return Err(ApiFailure::NotFound(format!(
            "no connected proxy holds a decision trail of request {id:?} (each keeps its last {} calls)",
            crate::model::stats::TRAILS_KEPT
        )));
    }
    Ok(Json(Trails { trails }))
}

/// A report from a proxy is still input: names valid, sizes bounded.
fn validate_stats(r: &StatsReport) -> Result<(), FieldErrors> {
    let mut errs = FieldErrors::default();
    if r.window_secs > WINDOW_SECS {
        errs.push("windowSecs", format!("at most {WINDOW_SECS}"));
    }
    if r.destinations.len() > MAX_REPORTED {
        errs.push("destinations", format!("at most {MAX_REPORTED}"));
    }
    if r.tap.len() > crate::model::stats::MAX_TAP_LINES {
        errs.push(
            "tap",
            format!("at most {} lines", crate::model::stats::MAX_TAP_LINES),
        );
    }
    for (i, d) in r.destinations.iter().enumerate() {
        if let Err(why) = validate_service_name(&d.service) {
            errs.push(format!("destinations[{i}].service"), why);
        }
        if d.per_second.len() > WINDOW_SECS as usize {
            errs.push(
                format!("destinations[{i}].perSecond"),
                format!("at most {WINDOW_SECS} seconds"),
            );
        }
        if d.latency.len() > histogram::BUCKETS {
            errs.push(
                format!("destinations[{i}].latency"),
                format!("at most {} buckets", histogram::BUCKETS),
            );
        }
    }
    errs.into_result(())
}

/// `GET /v1/tap/{service}`: NDJSON, one line per call to `service` that
/// any proxy carries from now on (about a second after it ends), until
/// the client goes away.
pub(super) async fn tap(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<axum::response::Response> {
    caller.reader()?;
    let Path(service) = path.map_err(ApiFailure::path)?;
    validate_service_name(&service).map_err(|why| ApiFailure::field("service", why))?;
    // Fails early on the cap (the stream below holds its own tap).
    drop(
        st.asks
            .tap(&service)
            .map_err(|e| ApiFailure::Unavailable(e.to_string()))?,
    );
    let asks = st.asks.clone();
    let mut shutdown = st.shutdown.clone();
    let keepalive = st.keepalive;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::convert::Infallible>>(64);
    tokio::spawn(async move {
        let Ok(mut t) = asks.tap(&service) else {
            return;
        };
        let mut lost: u64 = 0;
        loop {
            let line = tokio::select! {
                l = t.lines.recv() => l,
                () = tx.closed() => return,
                _ = shutdown.changed() => return,
                () = tokio::time::sleep(keepalive) => {
                    if tx.send(Ok(bytes::Bytes::from_static(b"{\"type\":\"keepalive\"}\n"))).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let mut line = match line {
                Ok(l) => (*l).clone(),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    lost += n;
                    continue;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            line.dropped += std::mem::take(&mut lost);
            let mut text = serde_json::to_vec(&line).unwrap_or_default();
            text.push(b'\n');
            if tx.send(Ok(bytes::Bytes::from(text))).await.is_err() {
                return;
            }
        }
    });
    let body = axum::body::Body::from_stream(tokio_stream_from(rx));
    Ok(axum::response::IntoResponse::into_response((
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        body,
    )))
}

/// The receiving half as a stream of body chunks.
fn tokio_stream_from<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}
