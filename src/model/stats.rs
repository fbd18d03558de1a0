//! Rolling per-destination statistics: what a proxy pushes to mesh-control
//! every second (`PUT /v1/proxies/{id}/stats`), and what the dashboard
//! stream is summed from.
//!
//! A proxy keeps ten one-second buckets per destination service; a report
//! carries the sum of the completed ones (the window) and the live gauges
//! of that destination's breaker and bulkhead. mesh-control keeps each
//! connected proxy's latest report and adds them up, per service and per
//! caller → destination edge, as Hystrix's Turbine added up its hosts.

use super::state::BreakerState;
use serde::{Deserialize, Serialize};

/// Seconds in the rolling window (Hystrix's default, ten 1 s buckets).
pub const WINDOW_SECS: u32 = 10;
/// Destinations one report may carry (a proxy calling more sends the
/// busiest).
pub const MAX_REPORTED: usize = 1000;

/// How the calls of a window ended. Every call is in exactly one of
/// `success`, `failure`, `timeout`, `short_circuited`, `rejected` and
/// `bad_request`; `retries` and `fallbacks` count alongside.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Tally {
    pub requests: u64,
    /// Answered below 500 by an endpoint.
    pub success: u64,
    /// Answered 5xx by an endpoint, or failed on the way (connect
    /// failure, reset, no endpoints, retry budget spent).
    pub failure: u64,
    pub timeout: u64,
    /// Refused by an open breaker.
    pub short_circuited: u64,
    /// Refused by a full bulkhead.
    pub rejected: u64,
    /// Refused as the caller's fault (a malformed request).
    pub bad_request: u64,
    pub retries: u64,
    /// Failed calls a fallback answered.
    pub fallbacks: u64,
    /// Retries refused because the budget was spent.
    pub budget_exhausted: u64,
}

impl Tally {
    /// Calls that count against the destination's health.
    pub fn errors(&self) -> u64 {
        self.failure + self.timeout + self.short_circuited + self.rejected
    }

    pub fn add(&mut self, o: &Tally) {
        self.requests += o.requests;
        self.success += o.success;
        self.failure += o.failure;
        self.timeout += o.timeout;
        self.short_circuited += o.short_circuited;
        self.rejected += o.rejected;
        self.bad_request += o.bad_request;
        self.retries += o.retries;
        self.fallbacks += o.fallbacks;
        self.budget_exhausted += o.budget_exhausted;
    }

    /// What happened between `earlier` and `self` (counters only grow).
    pub fn minus(&self, e: &Tally) -> Tally {
        Tally {
            requests: self.requests.saturating_sub(e.requests),
            success: self.success.saturating_sub(e.success),
            failure: self.failure.saturating_sub(e.failure),
            timeout: self.timeout.saturating_sub(e.timeout),
            short_circuited: self.short_circuited.saturating_sub(e.short_circuited),
            rejected: self.rejected.saturating_sub(e.rejected),
            bad_request: self.bad_request.saturating_sub(e.bad_request),
            retries: self.retries.saturating_sub(e.retries),
            fallbacks: self.fallbacks.saturating_sub(e.fallbacks),
            budget_exhausted: self.budget_exhausted.saturating_sub(e.budget_exhausted),
        }
    }
}

/// One destination as one proxy saw it over its window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct DestStats {
    pub service: String,
    #[serde(flatten)]
    pub tally: Tally,
    /// Latency to the response headers: `[bucket, count]` pairs of the
    /// log-linear histogram (`telemetry::histogram`), non-empty only.
    pub latency: Vec<[u64; 2]>,
    pub latency_sum_nanos: u64,
    /// Requests in each second of the window, oldest first.
    pub per_second: Vec<u64>,
    pub breaker: BreakerState,
    /// Calls holding a bulkhead slot now, waiting for one, and the limit.
    pub in_flight: u32,
    pub queued: u32,
    pub max_concurrent: u32,
    /// The destination's endpoints are reached over mTLS.
    pub mtls: bool,
}

/// `PUT /v1/proxies/{id}/stats`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct StatsReport {
    /// Seconds the window covers (fewer while the proxy is young).
    pub window_secs: u32,
    pub destinations: Vec<DestStats>,
    /// Calls to tapped services since the last report (`mesh-ctl tap`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tap: Vec<TapLine>,
}

/// Tapped calls one report carries at most (the rest are counted in the
/// next line's `dropped`).
pub const MAX_TAP_LINES: usize = 1000;

/// One call to a tapped service: the access log's fields.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct TapLine {
    /// RFC 3339, when the call started.
    pub time: String,
    pub request_id: String,
    pub trace_id: Option<String>,
    /// The proxy that carried it (set by mesh-control), and its service.
    pub proxy: String,
    pub caller: Option<String>,
    pub destination: String,
    pub endpoint: Option<String>,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub attempts: u32,
    pub duration_ms: f64,
    pub x_mesh_error: Option<String>,
    /// Calls this proxy did not send before this one (past the bound).
    #[serde(skip_serializing_if = "is_zero")]
    pub dropped: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Latency percentiles of a window, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Percentiles {
    pub min: f64,
    pub p25: f64,
    pub p50: f64,
    pub p75: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub p995: f64,
    pub max: f64,
    pub mean: f64,
}

/// One destination service, summed over every proxy that calls it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Circuit {
    pub service: String,
    #[serde(flatten)]
    pub tally: Tally,
    /// Requests per second over the window.
    pub rate: f64,
    /// Percent of the window's requests that were errors.
    pub error_percentage: f64,
    pub latency: Percentiles,
    /// The worst breaker state among the callers' (open, then half-open).
    pub breaker: BreakerState,
    /// Callers whose breaker for it is open.
    pub open_hosts: u32,
    /// Proxies reporting calls to it.
    pub hosts: u32,
    pub in_flight: u32,
    pub queued: u32,
    pub max_concurrent: u32,
    /// Requests in each second of the window, oldest first.
    pub per_second: Vec<u64>,
}

/// Calls from one service to another.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Edge {
    pub caller: String,
    pub destination: String,
    #[serde(flatten)]
    pub tally: Tally,
    pub rate: f64,
    /// Percent of requests that succeeded (100 with none).
    pub success_rate: f64,
    pub latency: Percentiles,
    /// Every caller proxy on this edge reaches the destination over mTLS.
    pub mtls: bool,
}

/// `GET /v1/dashboard`: the whole mesh's window, as the stream sends it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Dashboard {
    /// Proxies whose report went into the sums.
    pub reporting: usize,
    /// Sorted by error percentage, then by volume.
    pub circuits: Vec<Circuit>,
    /// Sorted by caller, then destination.
    pub edges: Vec<Edge>,
    /// Circuits and edges left out past the caps.
    pub dropped: usize,
}

/// Decision trails each proxy keeps (its most recent calls).
pub const TRAILS_KEPT: usize = 2048;

/// One try of a call, as its decision trail shows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct TrailTry {
    /// The endpoint the balancer picked (`None`: the try was refused
    /// before a pick: breaker open, bulkhead full, no endpoint).
    pub endpoint: Option<String>,
    pub address: Option<String>,
    /// `503`, or a mesh reason (`connect-failed`, `breaker-open`, ...).
    pub outcome: String,
    pub ms: f64,
    /// What was decided after it (`retried, ...`, `not retried: ...`).
    pub next: String,
}

/// What one proxy decided for one request (`mesh-ctl explain`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct DecisionTrail {
    pub request_id: String,
    /// RFC 3339, when the call started.
    pub at: String,
    /// The proxy that made these decisions, and its service.
    pub proxy: String,
    pub caller: Option<String>,
    pub service: String,
    pub method: String,
    pub path: String,
    /// The balancer and the ready endpoints it chose among.
    pub balancer: String,
    pub candidates: usize,
    pub tries: Vec<TrailTry>,
    pub retries: u32,
    pub budget_exhausted: bool,
    /// What the caller got: the status, the mesh's reason when it made
    /// the answer, whether a fallback did.
    pub status: u16,
    pub reason: Option<String>,
    pub fallback: bool,
    pub ms: f64,
}

/// `mesh-control`'s answer to a proxy's push: what operators are asking
/// the proxies about now.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Asked {
    /// Request ids `mesh-ctl explain` is waiting for.
    pub explain: Vec<String>,
    /// Services `mesh-ctl tap` follows.
    pub tap: Vec<String>,
}

/// `PUT /v1/proxies/{id}/trails`: the trails a proxy holds of asked ids.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Trails {
    pub trails: Vec<DecisionTrail>,
}
