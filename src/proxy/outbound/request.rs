//! HTTP's [`Attempt`]: one request to one endpoint of a mesh service,
//! over the endpoint's pooled connections, in the caller's HTTP version.
//!
//! Its outcome goes to the breaker at the response headers, or, for a gRPC
//! stream whose status comes in the trailers, when the stream ends. A
//! request for a peer proxy carries this pod's service (`x-mesh-caller`)
//! and the time its caller has left (`x-mesh-timeout`).

use super::policy::{self, Admitted, Attempt, Caps, Target};
use super::replay::{prepare, RequestTemplate};
use super::tap::Tap;
use super::trails::{Recorded, Trails};
use crate::discovery::{Directory, Service};
use crate::model::policy::Fallback;
use crate::model::stats::TapLine;
use crate::proxy::body::{ReqBody, RespBody, StreamEnd};
use crate::proxy::grpc;
use crate::proxy::headers::X_REQUEST_ID;
use crate::proxy::headers::{caller_deadline, MESH_CALLER, MESH_TIMEOUT};
use crate::proxy::rescue::{MeshError, MESH_ERROR};
use crate::proxy::upstream::{proto_of, Dest, Upstreams};
use crate::resilience::{fallback, is_idempotent, timeout, Tried};
use crate::telemetry::access_log::{self, AccessLog, Entry, OutboundLog, Seen};
use crate::telemetry::trace::{self, Attr, Kind, Tracer};
use crate::telemetry::ProxyMetrics;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Either;
use hyper::body::Incoming;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::time::Instant;

/// What a request to a mesh service needs from the outbound side.
pub struct Services<'a> {
    pub dir: &'a Directory,
    pub metrics: &'a ProxyMetrics,
    pub upstreams: &'a Upstreams,
    /// This pod's service, for peer proxies' inbound metrics.
    pub caller: Option<&'a HeaderValue>,
    /// Marks each response with the [`UpstreamEndpoint`] that answered
    /// (the gateway logs it; the sidecar spends nothing on it).
    pub tag_endpoint: bool,
    /// With an exporter: the tracer, and whether this proxy just started
    /// the request's trace (a client span is recorded when it is sampled).
    pub trace: Option<(&'a Tracer, bool)>,
    /// A sidecar's access log (the gateway writes its own lines).
    pub access_log: Option<&'a OutboundLog>,
    /// Where the call's decision trail is kept (`mesh-ctl explain`).
    pub trails: &'a Trails,
    /// Calls to tapped services (`mesh-ctl tap`).
    pub tap: &'a Tap,
}

/// The endpoint that answered a request, in its response's extensions.
#[derive(Clone, Debug)]
pub struct UpstreamEndpoint(pub http::uri::Authority);

impl Services<'_> {
    /// Runs `req` through `svc`'s policy stack, within `caps` and the time
    /// a calling proxy said it has left (`x-mesh-timeout`). The request is
    /// counted here, once, with its final status; each try is counted as
    /// an attempt where it is made.
    pub async fn call(
        &self,
        svc: Arc<Service>,
        mut req: Request<Incoming>,
        mut caps: Caps,
    ) -> Result<Response<RespBody>, MeshError> {
        let start = Instant::now();
        if let Some(left) = caller_deadline(req.headers_mut()) {
            caps.left = Some(caps.left.map_or(left, |l| l.min(left)));
        }
        let policy = &svc.resilience.policy;
        // Kept for a retry or a service fallback.
        let replay = caps.retries.unwrap_or(policy.retries.attempts) > 0
            || matches!(policy.fallback, Some(Fallback::Service { .. }));
        let grpc = grpc::is_grpc(req.headers());
        let idempotent = is_idempotent(req.method());
        let id = req.headers().get(&X_REQUEST_ID).cloned();
        let (method, path) = (req.method().clone(), req.uri().path_and_query().cloned());
        let span = self
            .trace
            .and_then(|(t, fresh)| Some((t, t.begin(req.headers_mut(), fresh, Kind::Client)?)));
        let log = self
            .access_log
            .and_then(|l| l.for_service(policy.access_log))
            .map(|log| {
                let host = req
                    .uri()
                    .authority()
                    .map(|a| a.host().to_string())
                    .or_else(|| {
                        let h = req.headers().get(http::header::HOST)?;
                        Some(h.to_str().ok()?.to_string())
                    })
                    .unwrap_or_default();
                (log, SystemTime::now(), Seen::of(&req, host))
            });
        let mut trail = policy::Trail::default();
        let result = match prepare(req, replay).await {
            Ok((first, template)) => {
                let attempt = HttpAttempt {
                    upstreams: self.upstreams,
                    caller: self.caller,
                    template,
                    grpc,
                    idempotent,
                    tag_endpoint: self.tag_endpoint,
                };
                policy::call(
                    self.dir,
                    self.metrics,
                    &svc,
                    &attempt,
                    first,
                    caps,
                    &mut trail,
                )
                .await
            }
            Err(e) => {
                trail.failed = Some(e.counted_as());
                Err(e)
            }
        };
        let status = match &result {
            Ok(resp) => resp.status(),
            Err(e) => e.status(),
        };
        let elapsed = start.elapsed();
        svc.metrics
            .record(status.as_u16(), elapsed, trail.failed, trail.fell_back);
        if let Some((tracer, started)) = span {
            client_span(tracer, started, &method, &svc, &trail, &result);
        }
        if let Some((log, arrived, seen)) = log {
            let caller = self.caller.and_then(|c| c.to_str().ok());
            log_call(log, arrived, &seen, caller, &svc, &trail, &result, start);
        }
        if self.tap.on(&svc.name) {
            self.tap.record(tap_line(
                id.as_ref(),
                &method,
                path.as_ref(),
                self.caller.and_then(|c| c.to_str().ok()),
                &svc,
                &trail,
                &result,
                start,
            ));
        }
        if let Some(id) = id {
            self.trails.record(Recorded {
                id,
                ended: SystemTime::now(),
                method,
                path,
                svc,
                trail,
                status: status.as_u16(),
                elapsed,
            });
        }
        result
    }
}

/// What a call's caller got: the status, and the `x-mesh-error` reason
/// when the mesh made the answer (here, or a peer proxy).
fn answered(result: &Result<Response<RespBody>, MeshError>) -> (u16, Option<&str>) {
    match result {
        Ok(r) => (
            r.status().as_u16(),
            r.headers().get(MESH_ERROR).and_then(|v| v.to_str().ok()),
        ),
        Err(e) => (e.status().as_u16(), Some(e.reason())),
    }
}

/// A tapped call's line (the access log's fields).
#[allow(clippy::too_many_arguments)]
fn tap_line(
    id: Option<&HeaderValue>,
    method: &http::Method,
    path: Option<&http::uri::PathAndQuery>,
    caller: Option<&str>,
    svc: &Service,
    trail: &policy::Trail,
    result: &Result<Response<RespBody>, MeshError>,
    start: Instant,
) -> TapLine {
    let (status, error) = answered(result);
    let elapsed = start.elapsed();
    TapLine {
        time: access_log::timestamp(SystemTime::now() - elapsed),
        request_id: id.and_then(|v| v.to_str().ok()).unwrap_or("").to_string(),
        trace_id: None,
        proxy: String::new(),
        caller: caller.map(str::to_string),
        destination: svc.name.clone(),
        endpoint: trail.endpoint.as_ref().map(|e| e.authority.to_string()),
        method: method.to_string(),
        path: path.map_or("/", |p| p.as_str()).to_string(),
        status,
        attempts: u32::try_from(trail.tries.iter().filter(|t| t.endpoint.is_some()).count())
            .unwrap_or(u32::MAX),
        duration_ms: (elapsed.as_secs_f64() * 1e6).round() / 1e3,
        x_mesh_error: error.map(str::to_string),
        dropped: 0,
    }
}

/// A sidecar's access-log line for a finished call.
#[allow(clippy::too_many_arguments)]
fn log_call(
    log: &AccessLog,
    arrived: SystemTime,
    seen: &Seen,
    caller: Option<&str>,
    svc: &Service,
    trail: &policy::Trail,
    result: &Result<Response<RespBody>, MeshError>,
    start: Instant,
) {
    let (status, error) = answered(result);
    let bytes = result
        .as_ref()
        .ok()
        .and_then(|r| hyper::body::Body::size_hint(r.body()).exact());
    log.write(&Entry {
        time: access_log::timestamp(arrived),
        request_id: seen.request_id.as_deref().unwrap_or(""),
        trace_id: seen.trace_id.as_deref(),
        client: None,
        caller,
        method: &seen.method,
        host: &seen.host,
        path: &seen.path,
        protocol: seen.protocol,
        route: None,
        rule: None,
        upstream_service: Some(&svc.name),
        upstream_endpoint: trail.endpoint.as_ref().map(|e| e.authority.to_string()),
        status,
        attempts: Some(trail.endpoint.as_ref().map_or(0, |_| 1 + trail.retries)),
        bytes,
        duration_ms: (start.elapsed().as_secs_f64() * 1e6).round() / 1e3,
        x_mesh_error: error,
        user_agent: seen.user_agent.as_deref(),
    });
}

/// The client span of a finished call: the service, the endpoint of its
/// last try and whom it proved to be, retries, the breaker's state, the
/// mesh error when there was one.
fn client_span(
    tracer: &Tracer,
    started: trace::Started,
    method: &http::Method,
    svc: &Service,
    trail: &policy::Trail,
    result: &Result<Response<RespBody>, MeshError>,
) {
    let mut attrs = vec![
        Attr::Str("http.request.method", method.to_string()),
        Attr::Str("mesh.service", svc.name.clone()),
        Attr::Int("mesh.retries", i64::from(trail.retries)),
        Attr::Str(
            "mesh.breaker",
            svc.resilience.breaker.view().state.as_str().to_string(),
        ),
    ];
    if let Some(ep) = &trail.endpoint {
        attrs.push(Attr::Str("server.address", ep.authority.to_string()));
        attrs.push(Attr::Str("mesh.endpoint", ep.id.clone()));
        if let Some(peer) = ep.conns.peer() {
            attrs.push(Attr::Str("mesh.peer.identity", peer.to_string()));
        }
    }
    let (status, error) = answered(result);
    if let Some(reason) = error {
        attrs.push(Attr::Str("mesh.error", reason.to_string()));
    }
    if trail.fell_back {
        attrs.push(Attr::Str("mesh.fallback", "true".into()));
    }
    tracer.finish(started, format!("{method} {}", svc.name), status, attrs);
}

struct HttpAttempt<'a> {
    upstreams: &'a Upstreams,
    caller: Option<&'a HeaderValue>,
    template: Option<RequestTemplate>,
    grpc: bool,
    idempotent: bool,
    tag_endpoint: bool,
}

impl Attempt for HttpAttempt<'_> {
    type Call = Request<ReqBody>;
    type Output = Response<RespBody>;

    fn idempotent(&self) -> bool {
        self.idempotent
    }

    async fn send(
        &self,
        mut req: Request<ReqBody>,
        to: Target<'_>,
    ) -> Result<Response<RespBody>, MeshError> {
        let ep = to.endpoint;
        if ep.inbound.is_some() {
            let h = req.headers_mut();
            match self.caller {
                Some(c) => h.insert(MESH_CALLER, c.clone()),
                None => h.remove(MESH_CALLER),
            };
            let left = to.deadline.remaining(Instant::now());
            h.insert(MESH_TIMEOUT, HeaderValue::from(timeout::millis_ceil(left)));
        }
        let proto = proto_of(&req);
        let dest = Dest {
            pool: &ep.conns,
            authority: &ep.authority,
        };
        let mut resp = self.upstreams.send(req, dest, to.connect, proto).await?;
        if self.tag_endpoint {
            resp.extensions_mut()
                .insert(UpstreamEndpoint(ep.authority.clone()));
        }
        Ok(resp.map(Either::Left))
    }

    fn admit(&self, resp: &mut Response<RespBody>, admitted: Admitted) {
        let Admitted { slot, verdict } = admitted;
        let status = resp.status();
        verdict.service().metrics.attempted(status.as_u16());
        let header_grpc = self.grpc.then(|| grpc::status(resp.headers())).flatten();
        let failed = status.is_server_error() || header_grpc.is_some_and(grpc::is_failure);
        let Either::Left(body) = resp.body_mut() else {
            return verdict.record(failed);
        };
        let guard = body.guard_mut();
        // The bulkhead counts the call until its response ends.
        guard.hold(slot);
        // A half-open probe is judged at the headers: a long stream must
        // not hold the breaker's only probe for its whole life.
        if self.grpc && status == StatusCode::OK && header_grpc.is_none() && !verdict.is_probe() {
            // The status comes in the trailers: judge at the end.
            guard.on_end(Box::new(move |end| verdict.record(grpc_failed(end))));
        } else {
            verdict.record(failed);
        }
    }

    fn failed(&self, svc: &Service, e: &MeshError) {
        svc.metrics.attempted(e.status().as_u16());
    }

    fn answered<'a>(&self, resp: &'a Response<RespBody>, from_peer: bool) -> Option<Tried<'a>> {
        let headers = resp.headers();
        Some(Tried::Answered {
            status: resp.status().as_u16(),
            peer_error: from_peer
                .then(|| headers.get(MESH_ERROR))
                .flatten()
                .map(HeaderValue::as_bytes),
            grpc_status: self.grpc.then(|| grpc::status(headers)).flatten(),
        })
    }

    fn again(&self) -> Option<Request<ReqBody>> {
        self.template.as_ref()?.build()
    }

    fn static_fallback(&self, f: &Fallback, reason: &'static str) -> Option<Response<RespBody>> {
        match f {
            Fallback::Static {
                status,
                headers,
                body,
            } => Some(fallback::static_response(*status, headers, body, reason).map(Either::Right)),
            Fallback::Service { .. } => None,
        }
    }

    fn mark_fallback(&self, resp: &mut Response<RespBody>, reason: &'static str) {
        fallback::mark(resp.headers_mut(), reason);
    }
}

/// A gRPC stream failed when it broke, ended without a status (UNKNOWN),
/// or ended with a server-side status.
fn grpc_failed(end: StreamEnd) -> bool {
    match end {
        StreamEnd::Done {
            grpc_status: Some(code),
        } => grpc::is_failure(code),
        StreamEnd::Done { grpc_status: None } | StreamEnd::Failed => true,
    }
}
