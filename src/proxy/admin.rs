//! The admin server: readiness, liveness, metrics, state, shutdown.

use crate::discovery::{AgentState, Directory};
use crate::identity::workload::Workload;
use crate::model::state::{InboundState, ProxyState};
use crate::telemetry::ProxyMetrics;
use crate::telemetry::RootLabel;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// What the admin handlers read.
#[derive(Clone)]
pub struct AdminState {
    pub dir: Arc<Directory>,
    pub metrics: Arc<ProxyMetrics>,
    /// The local app's registration, when `--service` is set.
    pub agent: Option<Arc<Mutex<AgentState>>>,
    /// Set once every listener is bound.
    pub listening: Arc<AtomicBool>,
    /// Cancelled by `POST /shutdown` (and by signals elsewhere).
    pub shutdown: CancellationToken,
    pub control_url: String,
    /// What connections taught about undeclared service ports.
    pub learned: Arc<crate::proxy::protocol::Learned>,
    /// The inbound listener and its limit, when there is one.
    pub inbound: Option<(std::net::SocketAddr, u32)>,
    /// Identity on: the certificate `/ready` waits for and `/state` shows.
    pub identity: Option<Arc<Workload>>,
    /// The `--config` subscriptions (none: no config endpoints answer).
    pub config: Arc<crate::config::Delivery>,
    /// Gateway mode: its listener, and whether it serves TLS.
    pub gateway: Option<(std::net::SocketAddr, bool)>,
    /// The rolling per-destination window (`/stats`).
    pub stats: Arc<crate::telemetry::stats::Rolling>,
    /// With `--otlp-endpoint`: the sampling ratio `/trace-sample` sets.
    pub tracer: Option<Arc<crate::telemetry::trace::Tracer>>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/ready", get(ready))
        .route("/live", get(|| async { "live\n" }))
        .route("/metrics", get(metrics))
        .route("/state", get(proxy_state))
        .route("/stats", get(stats))
        .route("/shutdown", post(shutdown))
        .route("/trace-sample", get(trace_sample).put(set_trace_sample))
        .with_state(state.clone())
        .merge(crate::config::local::routes(state.config))
}

async fn ready(State(s): State<AdminState>) -> Response {
    let listening = s.listening.load(Ordering::Acquire);
    if s.identity.as_ref().is_some_and(|w| !w.ready()) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "no valid certificate yet (see /state identity.last_error)\n",
        )
            .into_response();
    }
    match (listening, s.dir.revision()) {
        (true, Some(rev)) => format!("ready (revision {rev})\n").into_response(),
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "listeners not up yet\n").into_response(),
        (true, None) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no registry snapshot yet (control plane unreachable and no cache)\n",
        )
            .into_response(),
    }
}

/// Gauges are set from the routing table at scrape time (the request
/// path never touches them), so they agree with `/state`.
async fn metrics(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    let now = tokio::time::Instant::now();
    let set_gauges = || {
        s.dir.with_table(|t| {
            for svc in t.services() {
                s.metrics.set_resilience(&svc.name, &svc.resilience.view());
                s.metrics.set_endpoints(&svc.name, svc.endpoint_counts(now));
            }
        });
        if let Some(w) = &s.identity {
            let st = w.state();
            let m = &s.metrics.identity;
            m.cert_expiry.set(st.expires_in_secs.unwrap_or(0));
            m.renew_failures
                .set(i64::try_from(st.renew_failures).unwrap_or(i64::MAX));
            m.root_expiry.clear();
            for r in &st.roots {
                let root = RootLabel { root: r.id.clone() };
                m.root_expiry.get_or_create(&root).set(r.expires_in_secs);
            }
        }
    };
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let (content_type, text) = s.metrics.scrape(set_gauges, accept);
    ([(header::CONTENT_TYPE, content_type)], text).into_response()
}

async fn proxy_state(State(s): State<AdminState>) -> Json<ProxyState> {
    let local = s
        .agent
        .as_ref()
        .and_then(|a| a.lock().ok().map(|g| g.clone()));
    Json(ProxyState {
        control: s.control_url.clone(),
        control_connected: s.metrics.control_connected.get() == 1,
        registry: s.dir.state(),
        local,
        learned_opaque: s.learned.list(),
        learned_client_first: s.learned.list_client_first(),
        inbound: s.inbound.map(|(listen, max_concurrent)| InboundState {
            listen,
            max_concurrent,
            in_flight: s.metrics.traffic.inbound_inflight.get(),
        }),
        identity: s.identity.as_ref().map(|w| w.state()),
        config: s.config.report().configs,
        gateway: s
            .gateway
            .map(|(listen, tls)| crate::model::state::GatewayState {
                listen,
                tls,
                routes: s
                    .dir
                    .with_routes(|t| t.names().map(str::to_string).collect()),
            }),
    })
}

/// Only from the pod itself: the admin port listens on the pod's address
/// for the kubelet's probes, and nobody else may stop the proxy.
async fn shutdown(
    State(s): State<AdminState>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
) -> Response {
    if !crate::config::local::from_this_pod(&peer) {
        return (
            StatusCode::FORBIDDEN,
            "POST /shutdown is accepted only from loopback (the app in this pod)\n",
        )
            .into_response();
    }
    tracing::info!("shutdown requested over the admin API");
    s.shutdown.cancel();
    (StatusCode::ACCEPTED, "shutting down\n").into_response()
}

/// `GET /stats`: this proxy's rolling window per destination (what it
/// pushes to mesh-control each second).
async fn stats(State(s): State<AdminState>) -> Json<crate::model::stats::StatsReport> {
    Json((*s.stats.latest()).clone())
}

/// `GET /trace-sample`: the ratio of traces this proxy starts that are
/// recorded.
async fn trace_sample(State(s): State<AdminState>) -> Response {
    match &s.tracer {
        Some(t) => format!("{}\n", t.sample()).into_response(),
        None => (StatusCode::NOT_FOUND, "no --otlp-endpoint: spans are off\n").into_response(),
    }
}

/// `PUT /trace-sample` with a ratio (0 to 1) as the body: changes it live.
/// Loopback only, as `/shutdown`.
async fn set_trace_sample(
    State(s): State<AdminState>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    body: String,
) -> Response {
    if !crate::config::local::from_this_pod(&peer) {
        return (
            StatusCode::FORBIDDEN,
            "PUT /trace-sample is accepted only from loopback\n",
        )
            .into_response();
    }
    let Some(t) = &s.tracer else {
        return (StatusCode::NOT_FOUND, "no --otlp-endpoint: spans are off\n").into_response();
    };
    match crate::proxy::config::parse_ratio(&body) {
        Ok(r) => {
            t.set_sample(r);
            tracing::info!(ratio = r, "trace sampling changed over the admin API");
            format!("{r}\n").into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Snapshot;
    use axum::body::Body;
    use http::Request;
    use tower::ServiceExt;

    fn state() -> AdminState {
        let metrics = Arc::new(ProxyMetrics::new());
        AdminState {
            dir: Arc::new(Directory::new(Default::default(), metrics.clone())),
            metrics,
            agent: None,
            listening: Arc::new(AtomicBool::new(true)),
            shutdown: CancellationToken::new(),
            control_url: "http://127.0.0.1:15010".into(),
            learned: Default::default(),
            inbound: None,
            identity: None,
            config: crate::config::Delivery::open(&Default::default(), std::path::Path::new(".")),
            gateway: None,
            stats: Default::default(),
            tracer: None,
        }
    }

    async fn status(s: &AdminState, method: &str, path: &str) -> u16 {
        status_from(s, method, path, [127, 0, 0, 1]).await
    }

    async fn status_from(s: &AdminState, method: &str, path: &str, ip: [u8; 4]) -> u16 {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .unwrap();
        let peer = std::net::SocketAddr::from((ip, 40000));
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        router(s.clone())
            .oneshot(req)
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    #[tokio::test]
    async fn ready_needs_a_snapshot() {
        let s = state();
        assert_eq!(status(&s, "GET", "/ready").await, 503);
        s.dir.replace(Snapshot::default());
        assert_eq!(status(&s, "GET", "/ready").await, 200);
        assert_eq!(status(&s, "GET", "/live").await, 200);
        assert_eq!(status(&s, "GET", "/metrics").await, 200);
        assert_eq!(status(&s, "GET", "/state").await, 200);
        assert!(!s.shutdown.is_cancelled());
        assert_eq!(
            status_from(&s, "POST", "/shutdown", [10, 0, 0, 7]).await,
            403,
            "another pod cannot stop this proxy"
        );
        assert!(!s.shutdown.is_cancelled());
        assert_eq!(status(&s, "POST", "/shutdown").await, 202);
        assert!(s.shutdown.is_cancelled());
    }
}
