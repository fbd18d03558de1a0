//! The HTTP/JSON API of mesh-control (`/v1/...`, `/metrics`, `/healthz`).
//!
//! `router(state)` is the whole API, so tests drive it with `oneshot`
//! without sockets. Handlers validate input, then call the registry;
//! mutations run on the blocking pool because a commit may wait for a disk
//! flush.

mod configs;
mod error;
mod identity;
mod policies;
mod proxies;
#[cfg(test)]
mod tests;

pub use crate::control::auth::Caller;
pub use error::ApiFailure;

use crate::control::auth::{Auth, Peer};
use crate::control::dashboard;
use crate::control::metrics::{Metrics, RefusalLabel};
use crate::control::proxies::Proxies;
use crate::control::registry::Registry;
use crate::control::watch::watch_body;
use crate::model::{
    validate_instance_id, validate_service_name, AuthorizationPolicy, ControlStatus, FieldErrors,
    Health, Heartbeat, RegisterRequest, Registered, Route, ServiceInfo, ServicePolicy,
    ServiceSummary, Snapshot,
};
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Largest request body accepted.
pub const BODY_LIMIT: usize = 64 * 1024;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    /// Quiet time after which a watch stream sends a keep-alive line.
    pub keepalive: Duration,
    /// Ends watch streams on shutdown.
    pub shutdown: watch::Receiver<bool>,
    /// Identity on: who may do what. `None`: nothing is checked.
    pub auth: Option<Arc<Auth>>,
    /// The proxies watching, and what each has applied.
    pub proxies: Arc<Proxies>,
    /// The dashboard's open streams.
    pub dashboard: Arc<crate::control::dashboard::Hub>,
    /// Questions put to every proxy (`mesh-ctl explain`).
    pub asks: Arc<crate::control::asks::Asks>,
}

/// `{"revision": N}`: the answer to heartbeat, deregister and the policy
/// mutations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionReply {
    pub revision: u64,
}

#[derive(Debug, Deserialize)]
struct WatchParams {
    #[serde(default)]
    since: u64,
    /// A proxy names itself (see `control::proxies`); other watchers don't.
    proxy: Option<String>,
    service: Option<String>,
    instance: Option<String>,
    version: Option<String>,
}

type ApiResult<T> = Result<T, ApiFailure>;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/v1/services", get(list_services))
        .route("/v1/services/{service}", get(get_service))
        .route("/v1/services/{service}/instances", post(register))
        .route(
            "/v1/services/{service}/instances/{id}",
            axum::routing::delete(deregister),
        )
        .route(
            "/v1/services/{service}/instances/{id}/heartbeat",
            put(heartbeat),
        )
        .route("/v1/policies", get(policies::list::<ServicePolicy>))
        .route(
            "/v1/policies/{service}",
            get(policies::get::<ServicePolicy>)
                .put(policies::put::<ServicePolicy>)
                .delete(policies::delete::<ServicePolicy>),
        )
        .route(
            "/v1/authorizations",
            get(policies::list::<AuthorizationPolicy>),
        )
        .route(
            "/v1/authorizations/{service}",
            get(policies::get::<AuthorizationPolicy>)
                .put(policies::put::<AuthorizationPolicy>)
                .delete(policies::delete::<AuthorizationPolicy>),
        )
        .route("/v1/routes", get(policies::list::<Route>))
        .route(
            "/v1/routes/{name}",
            get(policies::get::<Route>)
                .put(policies::put::<Route>)
                .delete(policies::delete::<Route>),
        )
        .route("/v1/configs", get(configs::list))
        .route(
            "/v1/configs/{application}/{profile}",
            get(configs::get)
                .put(configs::put)
                .layer(DefaultBodyLimit::max(configs::CONFIG_BODY_LIMIT)),
        )
        .route(
            "/v1/configs/{application}/{profile}/history",
            get(configs::history),
        )
        .route(
            "/v1/configs/{application}/{profile}/rollback",
            post(configs::rollback),
        )
        .route("/v1/proxies/{proxy}/configs", put(configs::delivered))
        .route("/v1/identity/certify", post(identity::certify))
        .route("/v1/identity/tokens", post(identity::create_token))
        .route("/v1/identity/bundle", get(identity::bundle))
        .route("/v1/identity/roots", post(identity::add_root))
        .route(
            "/v1/identity/roots/{id}",
            axum::routing::delete(identity::remove_root),
        )
        .route(
            "/v1/identity/roots/{id}/activate",
            post(identity::activate_root),
        )
        .route("/v1/snapshot", get(snapshot))
        .route("/v1/status", get(status))
        .route("/ready", get(ready))
        .route("/live", get(|| async { "live\n" }))
        .route("/v1/watch", get(watch))
        .route("/v1/proxies", get(proxies::list))
        .route("/v1/proxies/{proxy}/applied", put(proxies::applied))
        .route(
            "/v1/proxies/{proxy}/stats",
            put(proxies::stats).layer(DefaultBodyLimit::max(proxies::STATS_BODY_LIMIT)),
        )
        .route("/v1/proxies/{proxy}/trails", put(proxies::trails))
        .route("/v1/explain/{request_id}", get(proxies::explain))
        .route("/v1/tap/{service}", get(proxies::tap))
        .route("/v1/dashboard", get(dashboard::snapshot))
        .route("/v1/dashboard/stream", get(dashboard::stream))
        .route("/dashboard", get(dashboard::page))
        .fallback(|| async { ApiFailure::NotFound("no such endpoint".into()) })
        .method_not_allowed_fallback(|| async {
            let body = crate::model::ApiError {
                error: "method not allowed on this endpoint".into(),
                fields: Vec::new(),
            };
            (StatusCode::METHOD_NOT_ALLOWED, Json(body))
        })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authenticate,
        ))
        .with_state(state)
}

/// Who is calling (see `control::auth`), put in the request for the
/// handlers; refusals counted on the way out, whoever refused.
async fn authenticate(
    State(st): State<AppState>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let caller = match &st.auth {
        None => Ok(Caller::Open),
        Some(auth) => {
            let peer = req
                .extensions()
                .get::<axum::extract::ConnectInfo<Peer>>()
                .map(|c| c.0.clone())
                .unwrap_or(Peer {
                    addr: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
                    id: None,
                });
            auth.caller(&peer, req.headers()).await
        }
    };
    let resp = match caller {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(refusal) => ApiFailure::from(refusal).into_response(),
    };
    let reason = match resp.status() {
        StatusCode::UNAUTHORIZED => Some("unauthenticated"),
        StatusCode::FORBIDDEN => Some("forbidden"),
        _ => None,
    };
    if let Some(reason) = reason {
        st.metrics
            .refusals
            .get_or_create(&RefusalLabel { reason })
            .inc();
    }
    resp
}

async fn metrics(State(st): State<AppState>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let (ctype, text) = st.metrics.render(&st.registry, accept);
    ([(header::CONTENT_TYPE, ctype)], text).into_response()
}

async fn list_services(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Vec<ServiceSummary>>> {
    caller.reader()?;
    Ok(Json(st.registry.services()))
}

async fn get_service(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<ServiceInfo>> {
    caller.reader()?;
    let Path(service) = path.map_err(ApiFailure::path)?;
    service_name(&service)?;
    st.registry
        .service(&service)
        .map(Json)
        .ok_or_else(|| ApiFailure::NotFound(format!("service {service:?} is not registered")))
}

async fn register(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<Registered>)> {
    let Path(service) = path.map_err(ApiFailure::path)?;
    let id = caller.acts_for(&service)?.map(ToString::to_string);
    let body = body.map_err(|e| ApiFailure::body(e, BODY_LIMIT))?;
    // Report the path and the body problems together.
    let mut errs = FieldErrors::default();
    if let Err(why) = validate_service_name(&service) {
        errs.push("service", why);
    }
    let req = match serde_json::from_slice::<Value>(&body) {
        Err(e) => {
            errs.push("(body)", format!("not valid JSON: {e}"));
            None
        }
        Ok(doc) => match RegisterRequest::from_json(&doc) {
            Ok(req) => Some(req),
            Err(more) => {
                errs.0.extend(more.0);
                None
            }
        },
    };
    let mut req = match req {
        Some(req) if errs.is_empty() => req,
        _ => return Err(ApiFailure::Invalid(errs)),
    };
    caller.own_address(req.address)?;
    req.identity = id;
    let registry = st.registry.clone();
    let done = tokio::task::spawn_blocking(move || registry.register(&service, req)).await??;
    Ok((StatusCode::CREATED, Json(done)))
}

async fn heartbeat(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<RevisionReply>> {
    let Path((service, id)) = path.map_err(ApiFailure::path)?;
    service_name(&service)?;
    instance_id(&id)?;
    owner(&st, &caller, &service, &id)?;
    let body = body.map_err(|e| ApiFailure::body(e, BODY_LIMIT))?;
    let health = parse_heartbeat(&body)?;
    let registry = st.registry.clone();
    let revision =
        tokio::task::spawn_blocking(move || registry.heartbeat(&service, &id, health)).await??;
    Ok(Json(RevisionReply { revision }))
}

async fn deregister(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<Json<RevisionReply>> {
    let Path((service, id)) = path.map_err(ApiFailure::path)?;
    service_name(&service)?;
    instance_id(&id)?;
    owner(&st, &caller, &service, &id)?;
    let registry = st.registry.clone();
    let revision =
        tokio::task::spawn_blocking(move || registry.deregister(&service, &id)).await??;
    Ok(Json(RevisionReply { revision }))
}

/// A workload may touch an instance only if it registered it (an
/// operator may touch any).
fn owner(st: &AppState, caller: &Caller, service: &str, id: &str) -> ApiResult<()> {
    let Some(who) = caller.acts_for(service)? else {
        return Ok(());
    };
    match st.registry.instance_identity(service, id) {
        // Unknown: the handler answers 404 as it always has.
        None => Ok(()),
        Some(Some(registrant)) if registrant == who.to_string() => Ok(()),
        Some(_) => Err(ApiFailure::Forbidden(format!(
            "instance {id:?} of {service:?} was not registered by {who}"
        ))),
    }
}

async fn snapshot(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Snapshot>> {
    caller.reader()?;
    Ok(Json(st.registry.snapshot()))
}

async fn status(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<ControlStatus>> {
    caller.reader()?;
    let mut status = st.registry.status();
    if let Some(etcd) = st.registry.store().shared() {
        status.ha = Some(etcd.ha_status().await);
    }
    Ok(Json(status))
}

/// `/ready`: 200 while this replica can serve what it is asked, 503 while
/// its store is out of reach (etcd lost: its view may be stale, and writes
/// would fail). Open to anyone, like a probe.
async fn ready(State(st): State<AppState>) -> Response {
    match st.registry.store().shared() {
        Some(etcd) if !etcd.reachable() => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: etcd is out of reach\n",
        )
            .into_response(),
        _ => "ready\n".into_response(),
    }
}

async fn watch(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    peer: Option<Extension<axum::extract::ConnectInfo<Peer>>>,
    params: Result<Query<WatchParams>, QueryRejection>,
) -> ApiResult<Response> {
    caller.reader()?;
    let Query(params) = params.map_err(ApiFailure::query)?;
    let watcher = proxies::watcher(
        params.proxy,
        params.service,
        params.instance,
        params.version,
    )?;
    let address = peer.map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), |p| p.0 .0.addr.ip());
    let connection = match watcher {
        Some(info) => {
            let who = proxies::workload(&caller);
            let current = st.registry.revision();
            let c = st
                .proxies
                .connect(info, who, address, params.since, current)
                .map_err(|e| ApiFailure::Forbidden(e.to_string()))?;
            Some(c)
        }
        None => None,
    };
    let body = watch_body(
        st.registry.clone(),
        params.since,
        st.keepalive,
        st.shutdown.clone(),
        st.metrics.watchers.clone(),
        connection,
    );
    let headers = [
        (header::CONTENT_TYPE, "application/x-ndjson"),
        (header::CACHE_CONTROL, "no-cache"),
    ];
    Ok((headers, body).into_response())
}

fn service_name(name: &str) -> ApiResult<()> {
    validate_service_name(name).map_err(|why| ApiFailure::field("service", why))
}

fn instance_id(id: &str) -> ApiResult<()> {
    validate_instance_id(id).map_err(|why| ApiFailure::field("id", why))
}

/// `{"health": "up"|"down"}`, naming the bad field like registration does.
fn parse_heartbeat(body: &[u8]) -> ApiResult<Health> {
    let doc: Value = serde_json::from_slice(body)
        .map_err(|e| ApiFailure::field("(body)", format!("not valid JSON: {e}")))?;
    let Some(obj) = doc.as_object() else {
        return Err(ApiFailure::field("(body)", "must be a JSON object"));
    };
    let mut errs = FieldErrors::default();
    for key in obj.keys().filter(|k| k.as_str() != "health") {
        errs.push(key.clone(), "unknown field");
    }
    let health = match obj.get("health") {
        None => {
            errs.push("health", "is required");
            None
        }
        Some(v) => match serde_json::from_value::<Heartbeat>(serde_json::json!({ "health": v })) {
            Ok(hb) => Some(hb.health),
            Err(_) => {
                errs.push("health", "must be \"up\" or \"down\"");
                None
            }
        },
    };
    match health {
        Some(h) if errs.is_empty() => Ok(h),
        _ => Err(ApiFailure::Invalid(errs)),
    }
}
