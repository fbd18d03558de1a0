//! The decision trails of recent calls, for `mesh-ctl explain`.
//!
//! Every call through the policy stack (`Services::call`) leaves its
//! [`Trail`]: each try, the endpoint picked, the breaker's or bulkhead's
//! refusal, what was decided after each try and why (retried, or which
//! rule stopped the retries), the final status and reason. The last
//! [`KEPT`] are kept, keyed by the request's `x-request-id` (which every
//! request carries from the proxy's first listener on, and every
//! mesh-made error answer shows).
//!
//! A departure from DESIGN's map (trails under `telemetry/`): a kept trail
//! holds the data plane's own values (the endpoints, the service) and is
//! turned into words only when asked, so recording costs a move into a
//! ring, not a string per field; the ring lives beside the call path.
//!
//! Concurrency: one mutex over the ring, held to push one entry or to scan
//! it for an explain.

use super::policy::Trail;
use crate::discovery::Service;
use crate::model::stats::{DecisionTrail, TrailTry};
use http::{HeaderValue, Method};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

pub use crate::model::stats::TRAILS_KEPT as KEPT;

/// One finished call.
pub struct Recorded {
    pub id: HeaderValue,
    /// When it ended (its start is `ended - elapsed`, worked out only
    /// when asked).
    pub ended: SystemTime,
    pub method: Method,
    pub path: Option<http::uri::PathAndQuery>,
    pub svc: Arc<Service>,
    pub trail: Trail,
    pub status: u16,
    pub elapsed: Duration,
}

/// The ring of recent trails.
#[derive(Default)]
pub struct Trails {
    ring: Mutex<VecDeque<Recorded>>,
}

impl Trails {
    pub fn record(&self, r: Recorded) {
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        if ring.len() >= KEPT {
            ring.pop_front();
        }
        ring.push_back(r);
    }

    /// The trails of `id` (a call retried by its app is several), in
    /// words; `proxy` and `caller` name who decided.
    pub fn explain(&self, id: &str, proxy: &str, caller: Option<&str>) -> Vec<DecisionTrail> {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.iter()
            .filter(|r| r.id.as_bytes() == id.as_bytes())
            .map(|r| words(r, proxy, caller))
            .collect()
    }
}

fn words(r: &Recorded, proxy: &str, caller: Option<&str>) -> DecisionTrail {
    let t = &r.trail;
    DecisionTrail {
        request_id: r.id.to_str().unwrap_or_default().to_string(),
        at: crate::telemetry::access_log::timestamp(r.ended - r.elapsed),
        proxy: proxy.to_string(),
        caller: caller.map(str::to_string),
        service: r.svc.name.clone(),
        method: r.method.to_string(),
        path: r.path.as_ref().map_or("/", |p| p.as_str()).to_string(),
        balancer: r.svc.balancer.algorithm().as_str().to_string(),
        candidates: r.svc.ready.len(),
        tries: t
            .tries
            .iter()
            .map(|x| TrailTry {
                endpoint: x.endpoint.as_ref().map(|e| e.id.clone()),
                address: x.endpoint.as_ref().map(|e| e.authority.to_string()),
                outcome: match x.outcome {
                    Ok(Some(status)) => status.to_string(),
                    Ok(None) => "connected".to_string(),
                    Err(reason) => reason.to_string(),
                },
                ms: (x.elapsed.as_secs_f64() * 1e6).round() / 1e3,
                next: x.next.to_string(),
            })
            .collect(),
        retries: t.retries,
        budget_exhausted: t.budget_exhausted,
        status: r.status,
        reason: t.error.map(str::to_string),
        fallback: t.fell_back,
        ms: (r.elapsed.as_secs_f64() * 1e6).round() / 1e3,
    }
}
