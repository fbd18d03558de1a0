//! The policy stack every call to a mesh service runs through, outer to
//! inner (DESIGN's order): fallback → total timeout → retry (with budget) →
//! circuit breaker → bulkhead → balancer over ready, non-ejected endpoints
//! → connect timeout → pooled connection.
//!
//! A departure from STYLE, in the open: the layers are plain calls on one
//! path rather than one tower `Layer` per policy, because each layer would
//! box a future per request. The state machines live one per file in
//! `resilience/`, with their tests.

use super::body::{prepare, ReqBody, RequestTemplate};
use super::http::{Body, HttpOutbound};
use crate::balance::InFlight;
use crate::discovery::{Endpoint, Service};
use crate::model::policy::{Fallback, RetryOn};
use crate::proxy::rescue::MeshError;
use crate::resilience::{retry, Outcome, ServiceResilience};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::time::Instant;

pub const MESH_FALLBACK: &str = "x-mesh-fallback";

// === impl HttpOutbound ===

impl HttpOutbound {
    /// Runs `req` through `svc`'s policy stack. Mesh failures come back as
    /// `MeshError` unless the policy's fallback answers them.
    pub(super) async fn call_service(
        &self,
        svc: Arc<Service>,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, MeshError> {
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
        let err = match self.run(&svc, &rt, first, template.as_ref()).await {
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
                let alt_rt = alt.resilience.clone();
                let resp = self
                    .run(&alt, &alt_rt, template.build(), Some(&template))
                    .await?;
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
    ) -> Result<Response<Body>, MeshError> {
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
    ) -> Result<Response<Body>, MeshError> {
        let retries = &rt.policy.retries;
        let idempotent = retry::is_idempotent(first.method());
        rt.budget.deposit();
        let mut req = first;
        let mut tried: Vec<Arc<Endpoint>> = Vec::new();
        let mut attempt: u32 = 0;
        loop {
            let (result, endpoint) = self.attempt(svc, rt, req, &tried, deadline).await;
            let class = match &result {
                Ok(resp) if matches!(resp.status().as_u16(), 502..=504) => RetryOn::GatewayError,
                Err(MeshError::ConnectFailed { .. }) => RetryOn::ConnectFailure,
                Err(MeshError::UpstreamReset { .. }) => RetryOn::Reset,
                // Success, or breaker-open, bulkhead-full, no-endpoints,
                // timeout: a retry would not help.
                _ => return result,
            };
            // The upstream saw the request unless the connect failed; only
            // idempotent requests may be repeated then.
            let safe = class == RetryOn::ConnectFailure || idempotent;
            let Some(template) = template.filter(|_| safe) else {
                return result;
            };
            if attempt >= retries.attempts || !retries.on.contains(&class) {
                return result;
            }
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
            req = template.build();
        }
    }

    /// One try: breaker, bulkhead, balancer, send. Returns the endpoint
    /// used, so a retry can avoid it.
    async fn attempt(
        &self,
        svc: &Arc<Service>,
        rt: &Arc<ServiceResilience>,
        req: Request<ReqBody>,
        tried: &[Arc<Endpoint>],
        deadline: Instant,
    ) -> (Result<Response<Body>, MeshError>, Option<Arc<Endpoint>>) {
        let permit = match rt.breaker.try_acquire() {
            Ok(p) => p,
            Err(_) => {
                svc.metrics.fast_failed();
                svc.metrics.record(503, 0.0);
                return (Err(MeshError::BreakerOpen(svc.name.clone())), None);
            }
        };
        let _slot = match rt.bulkhead.acquire().await {
            Ok(s) => s,
            Err(_) => {
                svc.metrics.fast_failed();
                svc.metrics.record(503, 0.0);
                return (Err(MeshError::BulkheadFull(svc.name.clone())), None);
            }
        };
        let Some(ep) = self.pick(svc, rt, tried) else {
            svc.metrics.record(503, 0.0);
            return (Err(MeshError::NoEndpoints(svc.name.clone())), None);
        };
        let start = Instant::now();
        let in_flight = InFlight::start(ep.stats.clone());
        let client = self.client_for(rt.policy.timeouts.connect);
        let result = tokio::time::timeout_at(
            deadline,
            self.send_to(client, req, ep.addr, ep.authority.clone()),
        )
        .await
        .unwrap_or(Err(MeshError::Timeout(rt.policy.timeouts.request)));
        let elapsed = start.elapsed();
        let failed = match &result {
            Ok(resp) => resp.status().is_server_error(),
            Err(_) => true,
        };
        permit.record(Outcome { failed, elapsed });
        if rt
            .outlier
            .record(&ep.stats.ejection, !failed, svc.ready.len())
        {
            svc.metrics.ejected();
            tracing::warn!(service = %svc.name, endpoint = %ep.id, "endpoint ejected after consecutive failures");
        }
        match &result {
            Ok(resp) => {
                in_flight.finish();
                svc.metrics
                    .record(resp.status().as_u16(), elapsed.as_secs_f64());
            }
            Err(e) => {
                drop(in_flight);
                svc.metrics
                    .record(e.status().as_u16(), elapsed.as_secs_f64());
            }
        }
        (result, Some(ep))
    }

    /// The balancer's choice among ready endpoints that are not ejected and
    /// not tried yet; tried ones are taken again rather than none.
    fn pick(
        &self,
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
}

fn static_fallback(
    status: u16,
    headers: &BTreeMap<String, String>,
    body: &str,
    reason: &'static str,
) -> Response<Body> {
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

fn with_fallback_header(mut resp: Response<Body>, reason: &'static str) -> Response<Body> {
    resp.headers_mut()
        .insert(MESH_FALLBACK, HeaderValue::from_static(reason));
    resp
}
