//! The policy stack every call to a mesh service runs through, outer to
//! inner (DESIGN's order): fallback → total timeout → retry (with budget) →
//! circuit breaker → bulkhead → balancer over ready, non-ejected endpoints
//! → connect timeout → pooled connection.
//!
//! A departure from STYLE, in the open: the layers are plain calls on one
//! path rather than one tower `Layer` per policy, because each layer would
//! box a future per request. The state machines live one per file in
//! `resilience/`, with their tests.

use super::http::{proto_of, HttpOutbound};
use super::replay::{prepare, RequestTemplate};
use crate::balance::InFlight;
use crate::discovery::{Endpoint, Service};
use crate::model::policy::{Fallback, RetryOn};
use crate::proxy::body::{ReqBody, RespBody, StreamEnd};
use crate::proxy::grpc;
use crate::proxy::rescue::{MeshError, MESH_ERROR};
use crate::resilience::{retry, BreakerPermit, Outcome, ServiceResilience};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

pub const MESH_FALLBACK: &str = "x-mesh-fallback";

// === impl HttpOutbound ===

impl HttpOutbound {
    /// Runs `req` through `svc`'s policy stack. Mesh failures come back as
    /// `MeshError` unless the policy's fallback answers them. The request
    /// is counted here, once, with its final status; each try is counted
    /// as an attempt where it is made.
    pub(super) async fn call_service(
        &self,
        svc: Arc<Service>,
        req: Request<Incoming>,
    ) -> Result<Response<RespBody>, MeshError> {
        let start = Instant::now();
        let result = self.policies(&svc, req).await;
        let status = match &result {
            Ok(resp) => resp.status(),
            Err(e) => e.status(),
        };
        svc.metrics
            .record(status.as_u16(), start.elapsed().as_secs_f64());
        result
    }

    /// Fallback around the total timeout, retries and attempts.
    async fn policies(
        &self,
        svc: &Arc<Service>,
        req: Request<Incoming>,
    ) -> Result<Response<RespBody>, MeshError> {
        // The policy the request starts with is the one it finishes with,
        // even if a new one lands meanwhile.
        let rt = svc.resilience.clone();
        let policy = &rt.policy;
        let alt_service = match &policy.fallback {
            Some(Fallback::Service { service }) => Some(service.as_str()),
            _ => None,
        };
        let replay = policy.retries.attempts > 0 || alt_service.is_some();
        let (first, template) = prepare(req, replay).await?;
        let err = match self.run(svc, &rt, first, template.as_ref()).await {
            Ok(resp) => return Ok(resp),
            Err(e) => e,
        };
        self.metrics.mesh_error(&svc.name, err.reason());
        if !err.falls_back() {
            return Err(err);
        }
        match &policy.fallback {
            Some(Fallback::Static {
                status,
                headers,
                body,
            }) => Ok(static_fallback(*status, headers, body, err.reason())),
            Some(Fallback::Service { service }) => {
                let alt = self.dir.table().by_name(service).cloned();
                let (Some(alt), Some(template)) = (alt, template) else {
                    return Err(err);
                };
                let Some(again) = template.build() else {
                    return Err(err);
                };
                let alt_rt = alt.resilience.clone();
                let resp = Box::pin(self.run(&alt, &alt_rt, again, Some(&template))).await?;
                Ok(with_fallback_header(resp, err.reason()))
            }
            None => Err(err),
        }
    }

    /// The total timeout around all attempts.
    async fn run(
        &self,
        svc: &Arc<Service>,
        rt: &Arc<ServiceResilience>,
        first: Request<ReqBody>,
        template: Option<&RequestTemplate>,
    ) -> Result<Response<RespBody>, MeshError> {
        let timeout = rt.policy.timeouts.request;
        let deadline = Instant::now() + timeout;
        tokio::time::timeout_at(deadline, self.attempts(svc, rt, first, template, deadline))
            .await
            .unwrap_or(Err(MeshError::Timeout(timeout)))
    }

    /// The first try, and the retries that the policy, the request's
    /// safety and the budget allow, each on a different endpoint when
    /// there is one.
    async fn attempts(
        &self,
        svc: &Arc<Service>,
        rt: &Arc<ServiceResilience>,
        first: Request<ReqBody>,
        template: Option<&RequestTemplate>,
        deadline: Instant,
    ) -> Result<Response<RespBody>, MeshError> {
        let retries = &rt.policy.retries;
        let idempotent = retry::is_idempotent(first.method());
        rt.budget.deposit();
        let mut req = first;
        let mut tried: Vec<Arc<Endpoint>> = Vec::new();
        let mut attempt: u32 = 0;
        loop {
            let (result, endpoint) = self.attempt(svc, rt, req, &tried, deadline).await;
            let from_peer = endpoint.as_ref().is_some_and(|e| e.inbound.is_some());
            // Success, or breaker-open, bulkhead-full, no-endpoints,
            // timeout: a retry would not help.
            let Some((class, unseen)) = retry_class(&result, from_peer) else {
                return result;
            };
            // Only a request the app never saw, or an idempotent one, may
            // be sent again.
            let Some(template) = template.filter(|_| unseen || idempotent) else {
                return result;
            };
            if attempt >= retries.attempts || !retries.on.contains(&class) {
                return result;
            }
            // A streamed body is known whole only now (or never).
            let Some(again) = template.build() else {
                return result;
            };
            if !rt.budget.try_withdraw() {
                svc.metrics.retry_budget_exhausted();
                return match result {
                    Ok(resp) => Ok(resp),
                    Err(e) => Err(MeshError::RetryBudgetExhausted(Box::new(e))),
                };
            }
            let delay = retry::retry_delay(attempt);
            if Instant::now() + delay >= deadline {
                return result;
            }
            attempt += 1;
            svc.metrics.retried();
            tried.extend(endpoint);
            drop(result);
            tokio::time::sleep(delay).await;
            req = again;
        }
    }

    /// One try: breaker, bulkhead, balancer, send. Returns the endpoint
    /// used, so a retry can avoid it.
    async fn attempt(
        &self,
        svc: &Arc<Service>,
        rt: &Arc<ServiceResilience>,
        mut req: Request<ReqBody>,
        tried: &[Arc<Endpoint>],
        deadline: Instant,
    ) -> (Result<Response<RespBody>, MeshError>, Option<Arc<Endpoint>>) {
        let permit = match rt.breaker.try_acquire() {
            Ok(p) => p,
            Err(_) => {
                svc.metrics.fast_failed();
                return (Err(MeshError::BreakerOpen(svc.name.clone())), None);
            }
        };
        let slot = match rt.bulkhead.acquire().await {
            Ok(s) => s,
            Err(_) => {
                svc.metrics.fast_failed();
                return (Err(MeshError::BulkheadFull(svc.name.clone())), None);
            }
        };
        let Some(ep) = pick(svc, rt, tried) else {
            return (Err(MeshError::NoEndpoints(svc.name.clone())), None);
        };
        let grpc = grpc::is_grpc(req.headers());
        if ep.inbound.is_some() {
            self.add_caller(req.headers_mut());
        }
        let proto = proto_of(&req);
        let start = Instant::now();
        let in_flight = InFlight::start(ep.stats.clone());
        let sent = self.upstreams.send(
            req,
            ep.dial(),
            ep.authority.clone(),
            rt.policy.timeouts.connect,
            proto,
        );
        let result = tokio::time::timeout_at(deadline, sent)
            .await
            .unwrap_or(Err(MeshError::Timeout(rt.policy.timeouts.request)));
        let elapsed = start.elapsed();
        let verdict = Verdict {
            permit,
            rt: rt.clone(),
            svc: svc.clone(),
            ep: ep.clone(),
            elapsed,
        };
        let result = match result {
            Ok(mut resp) => {
                in_flight.finish();
                let status = resp.status();
                svc.metrics.attempted(status.as_u16());
                let header_grpc = grpc.then(|| grpc::status(resp.headers())).flatten();
                let guard = resp.body_mut().guard_mut();
                // The bulkhead counts the call until its response ends.
                guard.bulkhead = Some(slot);
                // A half-open probe is judged at the headers: a long stream
                // must not hold the breaker's only probe for its whole life.
                let probe = verdict.permit.is_probe();
                if grpc && status == StatusCode::OK && header_grpc.is_none() && !probe {
                    // The status comes in the trailers: judge at the end.
                    guard.on_end = Some(Box::new(move |end| verdict.record(grpc_failed(end))));
                } else {
                    verdict.record(
                        status.is_server_error() || header_grpc.is_some_and(grpc::is_failure),
                    );
                }
                Ok(resp.map(Either::Left))
            }
            Err(e) => {
                drop(in_flight);
                svc.metrics.attempted(e.status().as_u16());
                verdict.record(true);
                Err(e)
            }
        };
        (result, Some(ep))
    }
}

/// The balancer's choice among ready endpoints that are not ejected and
/// not tried yet; tried ones are taken again rather than none.
pub(super) fn pick(
    svc: &Service,
    rt: &ServiceResilience,
    tried: &[Arc<Endpoint>],
) -> Option<Arc<Endpoint>> {
    let now = Instant::now();
    if tried.is_empty() && !rt.outlier.any_ejected(now) {
        // The hot path: nothing to filter, no allocation.
        return svc.balancer.pick(&svc.ready).cloned();
    }
    let live: Vec<Arc<Endpoint>> = svc
        .ready
        .iter()
        .filter(|e| !rt.outlier.is_ejected(&e.stats.ejection, now))
        .cloned()
        .collect();
    let fresh: Vec<Arc<Endpoint>> = live
        .iter()
        .filter(|e| !tried.iter().any(|t| Arc::ptr_eq(t, e)))
        .cloned()
        .collect();
    let pool = if !fresh.is_empty() {
        &fresh
    } else if !live.is_empty() {
        &live
    } else {
        &svc.ready
    };
    svc.balancer.pick(pool).cloned()
}

/// A call's outcome, to be told to the breaker and the outlier detector
/// once known: at the response headers, or for gRPC at the trailers.
pub(super) struct Verdict {
    pub permit: BreakerPermit,
    pub rt: Arc<ServiceResilience>,
    pub svc: Arc<Service>,
    pub ep: Arc<Endpoint>,
    /// Time to the response headers (slow calls are judged on it, so a
    /// long stream is not a slow call).
    pub elapsed: Duration,
}

impl Verdict {
    pub fn record(self, failed: bool) {
        self.permit.record(Outcome {
            failed,
            elapsed: self.elapsed,
        });
        let ejected =
            self.rt
                .outlier
                .record(&self.ep.stats.ejection, !failed, self.svc.ready.len());
        if ejected {
            self.svc.metrics.ejected();
            tracing::warn!(service = %self.svc.name, endpoint = %self.ep.id, "endpoint ejected after consecutive failures");
        }
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

/// Which retry class an attempt's result falls in, and whether the request
/// may be repeated whatever its method: the app certainly never saw it, or
/// (`unavailable`) the policy declares it safe.
/// A peer proxy reports its own failures in `x-mesh-error`: its connect
/// failure or load shedding means the app never saw the request.
fn retry_class(
    result: &Result<Response<RespBody>, MeshError>,
    from_peer: bool,
) -> Option<(RetryOn, bool)> {
    match result {
        Err(MeshError::ConnectFailed { .. }) => Some((RetryOn::ConnectFailure, true)),
        Err(MeshError::UpstreamReset { .. }) => Some((RetryOn::Reset, false)),
        Err(_) => None,
        Ok(resp) => {
            let peer_error = from_peer
                .then(|| resp.headers().get(MESH_ERROR))
                .flatten()
                .map(HeaderValue::as_bytes);
            match peer_error {
                Some(b"connect-failed" | b"overloaded") => {
                    return Some((RetryOn::ConnectFailure, true))
                }
                Some(b"upstream-reset") => return Some((RetryOn::Reset, false)),
                _ => {}
            }
            if matches!(resp.status().as_u16(), 502..=504) {
                return Some((RetryOn::GatewayError, false));
            }
            // gRPC UNAVAILABLE (trailers-only): repeatable when the policy
            // lists `unavailable`, whatever the method.
            (grpc::status(resp.headers()) == Some(grpc::code::UNAVAILABLE))
                .then_some((RetryOn::Unavailable, true))
        }
    }
}

fn static_fallback(
    status: u16,
    headers: &BTreeMap<String, String>,
    body: &str,
    reason: &'static str,
) -> Response<RespBody> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body.to_string()))));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    for (k, v) in headers {
        // Validated when the policy was applied; skip anything odd anyway.
        if let (Ok(k), Ok(v)) = (
            HeaderName::try_from(k.as_str()),
            HeaderValue::try_from(v.as_str()),
        ) {
            resp.headers_mut().insert(k, v);
        }
    }
    with_fallback_header(resp, reason)
}

fn with_fallback_header(mut resp: Response<RespBody>, reason: &'static str) -> Response<RespBody> {
    resp.headers_mut()
        .insert(MESH_FALLBACK, HeaderValue::from_static(reason));
    resp
}

#[cfg(test)]
mod tests;
