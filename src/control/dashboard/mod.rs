//! The mesh-wide dashboard: Turbine's job, built in.
//!
//! Every connected proxy pushes its rolling ten-second window each second
//! (`PUT /v1/proxies/{id}/stats`, see `telemetry::stats`); mesh-control
//! keeps the latest report of each (in the proxies table, so a proxy that
//! disconnects drops out with it) and sums them on demand:
//!
//! - per destination service (a *circuit*): counts, rate, error
//!   percentage, latency percentiles from the merged histograms (exact
//!   merging, not Turbine's average of per-host percentiles), the worst
//!   breaker state, bulkhead occupancy;
//! - per caller → destination *edge*: rate, success rate, latency, mTLS.
//!
//! Served three ways: `GET /v1/dashboard` (JSON, one answer), `GET
//! /v1/dashboard/stream` (server-sent events in Hystrix's field names,
//! every `delay`), and `GET /dashboard` (the page, embedded in the
//! binary, which draws the stream).
//!
//! Bounds: at most [`MAX_STREAMS`] streams at once (a sixth gets 503),
//! [`MAX_CIRCUITS`] circuits and [`MAX_EDGES`] edges per answer (the
//! quietest healthy ones are left out and counted in `dropped`), reports
//! older than [`STALE`] ignored, `delay` within 100 ms .. 10 s.

use crate::model::state::BreakerState;
use crate::model::stats::{
    Circuit, Dashboard, DestStats, Edge, Percentiles, StatsReport, Tally, WINDOW_SECS,
};
use crate::telemetry::histogram::Counts;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod handlers;
pub use handlers::{page, snapshot, stream};

/// Streams served at once.
pub const MAX_STREAMS: usize = 5;
/// Circuits per answer.
pub const MAX_CIRCUITS: usize = 500;
/// Edges per answer.
pub const MAX_EDGES: usize = 2000;
/// A report this old no longer counts (its proxy stopped pushing).
pub const STALE: Duration = Duration::from_secs(5);
/// The stream's default and bounds of `delay`.
pub const DEFAULT_DELAY: Duration = Duration::from_millis(500);
pub const MIN_DELAY: Duration = Duration::from_millis(100);
pub const MAX_DELAY: Duration = Duration::from_secs(10);

/// What the dashboard endpoints share.
#[derive(Default)]
pub struct Hub {
    streams: AtomicUsize,
}

/// One open stream; dropping it frees its place.
pub struct StreamSlot(Arc<Hub>);

impl Hub {
    /// A place for one more stream, unless [`MAX_STREAMS`] are open.
    pub fn open(self: &Arc<Self>) -> Option<StreamSlot> {
        let mut n = self.streams.load(Ordering::Acquire);
        loop {
            if n >= MAX_STREAMS {
                return None;
            }
            match self
                .streams
                .compare_exchange(n, n + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(StreamSlot(self.clone())),
                Err(now) => n = now,
            }
        }
    }

    pub fn open_streams(&self) -> usize {
        self.streams.load(Ordering::Acquire)
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One proxy's latest report and the service it calls from.
pub struct Reported {
    /// The caller's service (`None`: a proxy without one, shown as
    /// `(unnamed)`).
    pub caller: Option<String>,
    pub report: Arc<StatsReport>,
}

/// The caller name of a proxy that serves no service.
pub const UNNAMED: &str = "(unnamed)";

#[derive(Default)]
struct Sum {
    tally: Tally,
    latency: Counts,
    /// Requests per second over each proxy's window, summed.
    rate: f64,
    breaker: BreakerState,
    open_hosts: u32,
    hosts: u32,
    in_flight: u32,
    queued: u32,
    max_concurrent: u32,
    per_second: Vec<u64>,
    all_mtls: bool,
}

impl Sum {
    fn add(&mut self, d: &DestStats, window_secs: u32) {
        self.tally.add(&d.tally);
        self.latency
            .add(&Counts::from_sparse(&d.latency, d.latency_sum_nanos));
        self.rate += d.tally.requests as f64 / f64::from(window_secs.max(1));
        self.breaker = worse(self.breaker, d.breaker);
        if d.breaker == BreakerState::Open {
            self.open_hosts += 1;
        }
        self.all_mtls = if self.hosts == 0 {
            d.mtls
        } else {
            self.all_mtls && d.mtls
        };
        self.hosts += 1;
        self.in_flight = self.in_flight.saturating_add(d.in_flight);
        self.queued = self.queued.saturating_add(d.queued);
        self.max_concurrent = self.max_concurrent.saturating_add(d.max_concurrent);
        // Aligned on the newest second: windows end together.
        let n = d.per_second.len().min(WINDOW_SECS as usize);
        if self.per_second.len() < n {
            let pad = n - self.per_second.len();
            self.per_second.splice(0..0, std::iter::repeat_n(0, pad));
        }
        let offset = self.per_second.len() - n;
        for (slot, v) in self.per_second[offset..]
            .iter_mut()
            .zip(&d.per_second[d.per_second.len() - n..])
        {
            *slot += v;
        }
    }
}

/// Open is worse than half-open, which is worse than closed.
fn worse(a: BreakerState, b: BreakerState) -> BreakerState {
    let rank = |s| match s {
        BreakerState::Closed => 0,
        BreakerState::HalfOpen => 1,
        BreakerState::Open => 2,
    };
    if rank(b) > rank(a) {
        b
    } else {
        a
    }
}

fn percentiles(c: &Counts) -> Percentiles {
    Percentiles {
        min: c.quantile_ms(0.0),
        p25: c.quantile_ms(0.25),
        p50: c.quantile_ms(0.5),
        p75: c.quantile_ms(0.75),
        p90: c.quantile_ms(0.9),
        p95: c.quantile_ms(0.95),
        p99: c.quantile_ms(0.99),
        p995: c.quantile_ms(0.995),
        max: c.quantile_ms(1.0),
        mean: c.mean_ms(),
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// The sums over `reports`: circuits sorted by error percentage then
/// volume, edges by caller then destination, each list capped.
pub fn aggregate(reports: &[Reported]) -> Dashboard {
    let mut circuits: BTreeMap<&str, Sum> = BTreeMap::new();
    let mut edges: BTreeMap<(&str, &str), Sum> = BTreeMap::new();
    for r in reports {
        let caller = r.caller.as_deref().unwrap_or(UNNAMED);
        for d in &r.report.destinations {
            circuits
                .entry(d.service.as_str())
                .or_default()
                .add(d, r.report.window_secs);
            edges
                .entry((caller, d.service.as_str()))
                .or_default()
                .add(d, r.report.window_secs);
        }
    }
    let mut circuits: Vec<Circuit> = circuits
        .into_iter()
        .map(|(service, s)| Circuit {
            service: service.to_string(),
            rate: s.rate,
            error_percentage: percent(s.tally.errors(), s.tally.requests),
            latency: percentiles(&s.latency),
            breaker: s.breaker,
            open_hosts: s.open_hosts,
            hosts: s.hosts,
            in_flight: s.in_flight,
            queued: s.queued,
            max_concurrent: s.max_concurrent,
            per_second: s.per_second,
            tally: s.tally,
        })
        .collect();
    circuits.sort_by(|a, b| {
        b.error_percentage
            .total_cmp(&a.error_percentage)
            .then(b.tally.requests.cmp(&a.tally.requests))
            .then(a.service.cmp(&b.service))
    });
    let mut dropped = circuits.len().saturating_sub(MAX_CIRCUITS);
    circuits.truncate(MAX_CIRCUITS);
    let mut edges: Vec<Edge> = edges
        .into_iter()
        .map(|((caller, destination), s)| Edge {
            caller: caller.to_string(),
            destination: destination.to_string(),
            rate: s.rate,
            success_rate: match s.tally.requests {
                0 => 100.0,
                n => percent(s.tally.success, n),
            },
            latency: percentiles(&s.latency),
            mtls: s.all_mtls,
            tally: s.tally,
        })
        .collect();
    dropped += edges.len().saturating_sub(MAX_EDGES);
    edges.truncate(MAX_EDGES);
    Dashboard {
        reporting: reports.len(),
        circuits,
        edges,
        dropped,
    }
}

/// The stream's events for one moment: per circuit a `HystrixCommand`
/// and a `HystrixThreadPool` (its bulkhead), in the field names the
/// Hystrix dashboard reads, plus ours (`state`, `retries`,
/// `bulkheadRejected`, …); per edge a `MeshEdge`; then one `MeshMeta`.
pub fn events(d: &Dashboard, now_ms: u64) -> Vec<Value> {
    let mut out = Vec::with_capacity(d.circuits.len() * 2 + d.edges.len() + 1);
    for c in &d.circuits {
        out.push(command(c, now_ms));
        out.push(thread_pool(c, now_ms));
    }
    for e in &d.edges {
        out.push(json!({
            "type": "MeshEdge",
            "name": format!("{}->{}", e.caller, e.destination),
            "caller": e.caller,
            "destination": e.destination,
            "currentTime": now_ms,
            "requestCount": e.tally.requests,
            "errorCount": e.tally.errors(),
            "ratePerSecond": e.rate,
            "successRate": e.success_rate,
            "latencyP50": e.latency.p50,
            "latencyP99": e.latency.p99,
            "mtls": e.mtls,
        }));
    }
    out.push(json!({
        "type": "MeshMeta",
        "currentTime": now_ms,
        "reportingProxies": d.reporting,
        "dropped": d.dropped,
        "windowSeconds": WINDOW_SECS,
    }));
    out
}

fn latency_map(p: &Percentiles) -> Value {
    // Hystrix's keys, in whole milliseconds as Hystrix sends them.
    json!({
        "0": p.min.round(), "25": p.p25.round(), "50": p.p50.round(),
        "75": p.p75.round(), "90": p.p90.round(), "95": p.p95.round(),
        "99": p.p99.round(), "99.5": p.p995.round(), "100": p.max.round(),
    })
}

/// `b`'s fields added to `a` (both objects).
fn merged(mut a: Value, b: Value) -> Value {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

fn command(c: &Circuit, now_ms: u64) -> Value {
    let t = &c.tally;
    let hystrix = json!({
        "type": "HystrixCommand",
        "name": c.service,
        "group": c.service,
        "currentTime": now_ms,
        "isCircuitBreakerOpen": c.breaker == BreakerState::Open,
        "errorPercentage": c.error_percentage.round(),
        "errorCount": t.errors(),
        "requestCount": t.requests,
        "rollingCountSuccess": t.success,
        "rollingCountFailure": t.failure,
        "rollingCountTimeout": t.timeout,
        "rollingCountShortCircuited": t.short_circuited,
        "rollingCountSemaphoreRejected": t.rejected,
        "rollingCountThreadPoolRejected": 0,
        "rollingCountBadRequests": t.bad_request,
        "rollingCountFallbackSuccess": t.fallbacks,
        "rollingCountFallbackFailure": 0,
        "rollingCountFallbackRejection": 0,
        "rollingCountExceptionsThrown": 0,
        "rollingCountCollapsedRequests": 0,
        "rollingCountResponsesFromCache": 0,
        "rollingCountEmit": 0,
        "rollingCountFallbackEmit": 0,
        "rollingCountFallbackMissing": 0,
    });
    let more = json!({
        "currentConcurrentExecutionCount": c.in_flight,
        "rollingMaxConcurrentExecutionCount": c.in_flight,
        "latencyExecute_mean": c.latency.mean.round(),
        "latencyExecute": latency_map(&c.latency),
        "latencyTotal_mean": c.latency.mean.round(),
        "latencyTotal": latency_map(&c.latency),
        "propertyValue_metricsRollingStatisticalWindowInMilliseconds": WINDOW_SECS * 1000,
        "propertyValue_executionIsolationStrategy": "SEMAPHORE",
        "reportingHosts": c.hosts,
        // Ours.
        "state": c.breaker.as_str(),
        "openHosts": c.open_hosts,
        "ratePerSecond": c.rate,
        "retries": t.retries,
        "retryBudgetExhausted": t.budget_exhausted,
        "bulkheadRejected": t.rejected,
        "bulkheadInUse": c.in_flight,
        "bulkheadQueued": c.queued,
        "bulkheadLimit": c.max_concurrent,
        "perSecond": c.per_second,
        "latencyMs": c.latency,
    });
    merged(hystrix, more)
}

fn thread_pool(c: &Circuit, now_ms: u64) -> Value {
    json!({
        "type": "HystrixThreadPool",
        "name": c.service,
        "currentTime": now_ms,
        "currentActiveCount": c.in_flight,
        "currentQueueSize": c.queued,
        "currentPoolSize": c.max_concurrent,
        "currentMaximumPoolSize": c.max_concurrent,
        "rollingCountCommandRejections": c.tally.rejected,
        "rollingCountThreadsExecuted": c.tally.requests,
        "rollingMaxActiveThreads": c.in_flight,
        "propertyValue_metricsRollingStatisticalWindowInMilliseconds": WINDOW_SECS * 1000,
        "reportingHosts": c.hosts,
    })
}

#[cfg(test)]
mod tests;
