//! HTTP's [`Attempt`]: one request to one endpoint of a mesh service,
//! over the endpoint's pooled connections, in the caller's HTTP version.
//!
//! Its outcome goes to the breaker at the response headers, or, for a gRPC
//! stream whose status comes in the trailers, when the stream ends. A
//! request for a peer proxy carries this pod's service (`x-mesh-caller`)
//! and the time its caller has left (`x-mesh-timeout`).

use super::policy::{self, Admitted, Attempt, Caps, Target};
use super::replay::{prepare, RequestTemplate};
use crate::discovery::{Directory, Service};
use crate::model::policy::Fallback;
use crate::proxy::body::{ReqBody, RespBody, StreamEnd};
use crate::proxy::grpc;
use crate::proxy::headers::{caller_deadline, MESH_CALLER, MESH_TIMEOUT};
use crate::proxy::rescue::{MeshError, MESH_ERROR};
use crate::proxy::upstream::{proto_of, Dest, Upstreams};
use crate::resilience::{fallback, is_idempotent, timeout, Tried};
use crate::telemetry::ProxyMetrics;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Either;
use hyper::body::Incoming;
use std::sync::Arc;
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
                policy::call(self.dir, self.metrics, &svc, &attempt, first, caps).await
            }
            Err(e) => Err(e),
        };
        let status = match &result {
            Ok(resp) => resp.status(),
            Err(e) => e.status(),
        };
        svc.metrics
            .record(status.as_u16(), start.elapsed().as_secs_f64());
        result
    }
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
