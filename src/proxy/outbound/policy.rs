//! The one call path. Every call to a mesh service — an HTTP request, an
//! opaque TCP connection, a CONNECT tunnel — runs through [`call`], outer
//! to inner (DESIGN's order):
//!
//! fallback → total timeout and deadline → retries with budget → circuit
//! breaker → bulkhead → balancer pick over ready, non-ejected endpoints →
//! the protocol's attempt (its connect timeout inside).
//!
//! A protocol supplies only an [`Attempt`]: how to send one try to one
//! endpoint, what a success says to the retry rules, when its outcome is
//! told to the breaker and the outlier detector (at once, at the end of
//! the response, or once the connection is used), how to make another try
//! of the same call, and the static fallback it can give. The rules
//! themselves live beside the other policies in `resilience/` (retry
//! classes, backoff, deadline, fallback answers); this file only orders
//! them.
//!
//! A departure from STYLE, in the open: the layers are plain calls on one
//! path rather than one tower `Layer` per policy, because each layer would
//! box a future per request.

use crate::balance::InFlight;
use crate::discovery::{Directory, Endpoint, Service};
use crate::model::policy::Fallback;
use crate::proxy::rescue::MeshError;
use crate::resilience::{
    classify, may_repeat, retry_delay, BreakerPermit, BulkheadPermit, Deadline, FailureKind,
    Outcome, ServiceResilience, Tried,
};
use crate::telemetry::stats::Failed;
use crate::telemetry::ProxyMetrics;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// One protocol's way of trying a call on one endpoint.
pub trait Attempt: Sync {
    /// What one try sends (an HTTP request; nothing for a connection).
    type Call: Send;
    /// What a successful try gives back (a response; a connection).
    type Output: Send;

    /// Whether the call may be repeated after any failure (its method is
    /// idempotent). Calls that are not may still be retried when the
    /// endpoint surely never saw them.
    fn idempotent(&self) -> bool;

    /// Sends `call` to `to.endpoint`.
    fn send(
        &self,
        call: Self::Call,
        to: Target<'_>,
    ) -> impl Future<Output = Result<Self::Output, MeshError>> + Send;

    /// A success takes what it holds until it ends: the bulkhead slot, and
    /// the verdict for the breaker and outlier detector, to record when
    /// the protocol knows the outcome.
    fn admit(&self, out: &mut Self::Output, admitted: Admitted);

    /// A failed try, for the protocol's own accounting.
    fn failed(&self, _svc: &Service, _e: &MeshError) {}

    /// What a success says to the retry rules (`None`: a success that is
    /// never retried, such as a connection).
    fn answered<'a>(&self, out: &'a Self::Output, from_peer: bool) -> Option<Tried<'a>>;

    /// The same call again, for a retry or a service fallback; `None`
    /// when it cannot be sent twice (a streamed body not kept).
    fn again(&self) -> Option<Self::Call>;

    /// The policy's static fallback, where this protocol can answer one.
    fn static_fallback(&self, _fallback: &Fallback, _reason: &'static str) -> Option<Self::Output> {
        None
    }

    /// Marks a service fallback's answer for a call that failed with
    /// `reason`.
    fn mark_fallback(&self, _out: &mut Self::Output, _reason: &'static str) {}
}

/// Where one try goes.
#[derive(Clone, Copy)]
pub struct Target<'a> {
    pub svc: &'a Arc<Service>,
    pub endpoint: &'a Arc<Endpoint>,
    /// The policy's connect timeout.
    pub connect: Duration,
    pub deadline: Deadline,
}

/// What a caller may bound in the policy for one call.
#[derive(Clone, Copy, Debug, Default)]
pub struct Caps {
    /// The time the caller has left, when it said so: the deadline is the
    /// sooner of it and the policy's total timeout.
    pub left: Option<Duration>,
    /// Retries after the first try instead of the policy's count (a
    /// gateway route's `retry.attempts`); still only on the failures the
    /// policy retries, and within its budget.
    pub retries: Option<u32>,
}

/// What a successful try holds until it ends.
pub struct Admitted {
    /// The bulkhead counts the call until it ends.
    pub slot: BulkheadPermit,
    pub verdict: Verdict,
}

/// What a call went through, for the caller's accounting (statistics,
/// its span).
#[derive(Clone, Debug, Default)]
pub struct Trail {
    /// The mesh-made failure it ended with, before any fallback.
    pub failed: Option<Failed>,
    /// A fallback answered it instead.
    pub fell_back: bool,
    /// The endpoint of the last try.
    pub endpoint: Option<Arc<Endpoint>>,
    /// Retries sent after the first try.
    pub retries: u32,
    /// Each try, in order, and what was decided after it.
    pub tries: Vec<TryRecord>,
    /// A retry was refused because the budget was spent.
    pub budget_exhausted: bool,
    /// The mesh-made failure's `x-mesh-error` reason, before any fallback.
    pub error: Option<&'static str>,
}

/// One try of a call, for its decision trail.
#[derive(Clone, Debug)]
pub struct TryRecord {
    /// The endpoint the balancer picked (`None`: refused before a pick,
    /// by the breaker, the bulkhead, or for want of endpoints).
    pub endpoint: Option<Arc<Endpoint>>,
    /// The answer's status (`None` for a connection), or the reason the
    /// try failed.
    pub outcome: Result<Option<u16>, &'static str>,
    pub elapsed: Duration,
    /// What was decided after it.
    pub next: &'static str,
}

impl Trail {
    /// Notes what was decided after the last try.
    fn next(&mut self, why: &'static str) {
        if let Some(t) = self.tries.last_mut() {
            t.next = why;
        }
    }
}

/// Runs `first` (and its retries, and the fallback) through `svc`'s policy,
/// within `caps`. Mesh failures are counted here, once, after the
/// fallback's chance, and noted in `trail`.
pub async fn call<A: Attempt>(
    dir: &Directory,
    metrics: &ProxyMetrics,
    svc: &Arc<Service>,
    attempt: &A,
    first: A::Call,
    caps: Caps,
    trail: &mut Trail,
) -> Result<A::Output, MeshError> {
    // The policy the call starts with is the one it finishes with, even if
    // a new one lands meanwhile.
    let rt = svc.resilience.clone();
    let err = match run(svc, &rt, attempt, first, caps, trail).await {
        Ok(out) => return Ok(out),
        Err(e) => e,
    };
    metrics.mesh_error(&svc.name, err.reason());
    trail.failed = Some(err.counted_as());
    trail.error = Some(err.reason());
    if !err.falls_back() {
        return Err(err);
    }
    match &rt.policy.fallback {
        Some(Fallback::Service { service }) => {
            let Some(alt) = dir.service(service) else {
                return Err(err);
            };
            let Some(again) = attempt.again() else {
                return Err(err);
            };
            let alt_rt = alt.resilience.clone();
            let mut out = Box::pin(run(&alt, &alt_rt, attempt, again, caps, trail)).await?;
            attempt.mark_fallback(&mut out, err.reason());
            trail.fell_back = true;
            Ok(out)
        }
        Some(f) => {
            let out = attempt.static_fallback(f, err.reason()).ok_or(err)?;
            trail.fell_back = true;
            Ok(out)
        }
        None => Err(err),
    }
}

/// The total timeout (capped by the caller's deadline) around all tries.
async fn run<A: Attempt>(
    svc: &Arc<Service>,
    rt: &Arc<ServiceResilience>,
    attempt: &A,
    first: A::Call,
    caps: Caps,
    trail: &mut Trail,
) -> Result<A::Output, MeshError> {
    let deadline = Deadline::new(Instant::now(), rt.policy.timeouts.request, caps.left);
    let attempts = caps.retries.unwrap_or(rt.policy.retries.attempts);
    tokio::time::timeout_at(
        deadline.at,
        tries(svc, rt, attempt, first, deadline, attempts, trail),
    )
    .await
    .unwrap_or(Err(MeshError::Timeout(deadline.timeout)))
}

/// The first try, and the retries that the policy, the call's safety and
/// the budget allow, each on a different endpoint when there is one.
async fn tries<A: Attempt>(
    svc: &Arc<Service>,
    rt: &Arc<ServiceResilience>,
    attempt: &A,
    first: A::Call,
    deadline: Deadline,
    attempts: u32,
    trail: &mut Trail,
) -> Result<A::Output, MeshError> {
    let retries = &rt.policy.retries;
    rt.budget.deposit();
    let mut call = first;
    let mut tried: Vec<Arc<Endpoint>> = Vec::new();
    let mut retry: u32 = 0;
    loop {
        let started = Instant::now();
        let (result, endpoint) = try_once(svc, rt, attempt, call, &tried, deadline).await;
        if endpoint.is_some() {
            trail.endpoint.clone_from(&endpoint);
        }
        let from_peer = endpoint.as_ref().is_some_and(|e| e.inbound.is_some());
        let outcome = match &result {
            Ok(out) => attempt.answered(out, from_peer),
            Err(e) => failure_kind(e).map(Tried::Failed),
        };
        trail.tries.push(TryRecord {
            endpoint: endpoint.clone(),
            outcome: match (&result, &outcome) {
                (Ok(_), Some(Tried::Answered { status, .. })) => Ok(Some(*status)),
                (Ok(_), _) => Ok(None),
                (Err(e), _) => Err(e.reason()),
            },
            elapsed: started.elapsed(),
            next: "",
        });
        // Success, or breaker-open, bulkhead-full, no-endpoints, timeout:
        // a retry would not help.
        let Some(failure) = outcome.and_then(classify) else {
            trail.next(match &result {
                Ok(_) => "answered",
                Err(_) => "not retried: a retry would not help",
            });
            return result;
        };
        if !may_repeat(attempt.idempotent(), failure) {
            trail.next("not retried: not idempotent, and the endpoint may have seen it");
            return result;
        }
        if retry >= attempts {
            trail.next("not retried: every retry the policy allows was used");
            return result;
        }
        if !retries.on.contains(&failure.class) {
            trail.next("not retried: the policy does not retry this failure");
            return result;
        }
        // A streamed body is known whole only now (or never).
        let Some(again) = attempt.again() else {
            trail.next("not retried: the body was streamed, not kept");
            return result;
        };
        if !rt.budget.try_withdraw() {
            svc.metrics.retry_budget_exhausted();
            trail.next("not retried: the retry budget is spent");
            trail.budget_exhausted = true;
            return result.map_err(|e| MeshError::RetryBudgetExhausted(Box::new(e)));
        }
        let delay = retry_delay(retry + 1);
        if Instant::now() + delay >= deadline.at {
            trail.next("not retried: no time left before the deadline");
            return result;
        }
        retry += 1;
        trail.retries = retry;
        trail.next("retried, on another endpoint when there is one");
        svc.metrics.retried();
        tried.extend(endpoint);
        drop(result);
        tokio::time::sleep(delay).await;
        call = again;
    }
}

/// A failure before any answer, as the retry rules name it.
fn failure_kind(e: &MeshError) -> Option<FailureKind> {
    match e {
        MeshError::ConnectFailed { .. } => Some(FailureKind::ConnectFailure),
        MeshError::UpstreamReset { .. } => Some(FailureKind::Reset),
        _ => None,
    }
}

/// One try: breaker, bulkhead, balancer, send. Returns the endpoint used,
/// so a retry can avoid it.
async fn try_once<A: Attempt>(
    svc: &Arc<Service>,
    rt: &Arc<ServiceResilience>,
    attempt: &A,
    call: A::Call,
    tried: &[Arc<Endpoint>],
    deadline: Deadline,
) -> (Result<A::Output, MeshError>, Option<Arc<Endpoint>>) {
    let Ok(permit) = rt.breaker.try_acquire() else {
        svc.metrics.fast_failed();
        return (Err(MeshError::BreakerOpen(svc.name.clone())), None);
    };
    let Ok(slot) = rt.bulkhead.acquire().await else {
        svc.metrics.fast_failed();
        return (Err(MeshError::BulkheadFull(svc.name.clone())), None);
    };
    let Some(ep) = pick(svc, rt, tried) else {
        return (Err(MeshError::NoEndpoints(svc.name.clone())), None);
    };
    let to = Target {
        svc,
        endpoint: &ep,
        connect: rt.policy.timeouts.connect,
        deadline,
    };
    let start = Instant::now();
    let in_flight = InFlight::start(ep.stats.clone());
    // Inside the total timeout too, so that a try cut off by the deadline
    // is recorded against its endpoint.
    // Boxed: a protocol's send holds its upstream connection's state, and
    // every future around it would otherwise be sized (and moved) for it.
    let result = tokio::time::timeout_at(deadline.at, Box::pin(attempt.send(call, to)))
        .await
        .unwrap_or(Err(MeshError::Timeout(deadline.timeout)));
    let verdict = Verdict {
        permit,
        rt: rt.clone(),
        svc: svc.clone(),
        ep: ep.clone(),
        elapsed: start.elapsed(),
    };
    let result = match result {
        Ok(mut out) => {
            in_flight.finish();
            attempt.admit(&mut out, Admitted { slot, verdict });
            Ok(out)
        }
        Err(e) => {
            drop(in_flight);
            attempt.failed(svc, &e);
            verdict.record(true);
            Err(e)
        }
    };
    (result, Some(ep))
}

/// The balancer's choice among ready endpoints that are not ejected and
/// not tried yet; tried ones are taken again rather than none.
fn pick(svc: &Service, rt: &ServiceResilience, tried: &[Arc<Endpoint>]) -> Option<Arc<Endpoint>> {
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

/// A try's outcome, to be told to the breaker and the outlier detector
/// once known: at a response's headers or its end, or when a connection
/// is used. Dropped unrecorded, it is not counted (as for the mesh's own
/// rejections).
pub struct Verdict {
    permit: BreakerPermit,
    rt: Arc<ServiceResilience>,
    svc: Arc<Service>,
    ep: Arc<Endpoint>,
    /// Time to the answer (slow calls are judged on it, so a long stream
    /// is not a slow call).
    elapsed: Duration,
}

impl Verdict {
    /// Whether the breaker admitted this try as its half-open probe: a
    /// probe is judged at once, so that a long stream does not hold it.
    pub fn is_probe(&self) -> bool {
        self.permit.is_probe()
    }

    /// The service the try went to.
    pub fn service(&self) -> &Service {
        &self.svc
    }

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

#[cfg(test)]
mod tests;
