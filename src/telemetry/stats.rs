//! Rolling per-destination statistics (the dashboard's data), kept by
//! every proxy.
//!
//! The request path spends nothing here beyond the counters it already
//! bumps ([`Outcomes`] and the latency histogram, both plain atomics):
//! once a second [`Rolling::tick`] reads every called destination's
//! cumulative counters and keeps the last eleven readings, so the
//! difference between the newest and the oldest is the ten-second window,
//! and neighbouring readings give each second's bucket. The proxy pushes
//! that window to mesh-control every second (`discovery::report_stats`)
//! over the connection its watch already uses, and serves it on its admin
//! `/stats`.
//!
//! Why push rather than let mesh-control pull: the admin port listens on
//! the pod's loopback, which mesh-control cannot reach, and a proxy
//! already holds a connection to mesh-control; a push every second costs
//! one small request per proxy, and a proxy that stops pushing is simply
//! dropped from the sums (its report goes stale, or its watch closes).

use super::histogram::Counts;
use crate::model::state::BreakerState;
use crate::model::stats::{DestStats, StatsReport, Tally, MAX_REPORTED, WINDOW_SECS};
use arc_swap::ArcSwap;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// How a failed call is counted (every call is one of these or a success).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failed {
    /// An endpoint's 5xx, or a failure on the way to one.
    Failure,
    Timeout,
    /// Refused by an open breaker.
    ShortCircuited,
    /// Refused by a full bulkhead.
    Rejected,
    /// The caller's own fault (a malformed request).
    BadRequest,
}

/// Cumulative outcome counters of one destination, shared by every
/// routing table's copy of its [`ServiceMetrics`](super::ServiceMetrics).
#[derive(Debug, Default)]
pub struct Outcomes {
    success: AtomicU64,
    failure: AtomicU64,
    timeout: AtomicU64,
    short_circuited: AtomicU64,
    rejected: AtomicU64,
    bad_request: AtomicU64,
    fallbacks: AtomicU64,
}

impl Outcomes {
    pub fn success(&self) {
        self.success.fetch_add(1, Ordering::Relaxed);
    }

    pub fn failed(&self, how: Failed, fell_back: bool) {
        let c = match how {
            Failed::Failure => &self.failure,
            Failed::Timeout => &self.timeout,
            Failed::ShortCircuited => &self.short_circuited,
            Failed::Rejected => &self.rejected,
            Failed::BadRequest => &self.bad_request,
        };
        c.fetch_add(1, Ordering::Relaxed);
        if fell_back {
            self.fallbacks.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counts so far; `retries` and `budget_exhausted` come from the
    /// Prometheus counters that already hold them.
    pub fn tally(&self, retries: u64, budget_exhausted: u64) -> Tally {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut t = Tally {
            success: get(&self.success),
            failure: get(&self.failure),
            timeout: get(&self.timeout),
            short_circuited: get(&self.short_circuited),
            rejected: get(&self.rejected),
            bad_request: get(&self.bad_request),
            retries,
            fallbacks: get(&self.fallbacks),
            budget_exhausted,
            requests: 0,
        };
        t.requests =
            t.success + t.failure + t.timeout + t.short_circuited + t.rejected + t.bad_request;
        t
    }
}

/// One reading of a destination's cumulative counters.
#[derive(Clone, Copy, Debug, Default)]
struct Reading {
    tally: Tally,
    latency: Counts,
}

/// One destination's state at a tick: its cumulative counters and its
/// live breaker and bulkhead.
pub struct Sample<'a> {
    pub service: &'a str,
    pub tally: Tally,
    pub latency: Counts,
    pub breaker: BreakerState,
    pub in_flight: u32,
    pub queued: u32,
    pub max_concurrent: u32,
    pub mtls: bool,
}

/// The last [`WINDOW_SECS`] + 1 readings of every called destination.
#[derive(Default)]
pub struct Rolling {
    rings: Mutex<HashMap<String, VecDeque<Reading>>>,
    latest: ArcSwap<StatsReport>,
}

impl Rolling {
    /// Takes this second's reading of every destination in `samples` and
    /// publishes the window (for `/stats` and the push). A destination not
    /// sampled (gone from the routing table) keeps its ring, as its
    /// counters are kept: it takes no calls meanwhile, and its window
    /// resumes from where it was when it comes back.
    pub fn tick<'a>(&self, samples: impl IntoIterator<Item = Sample<'a>>) -> Arc<StatsReport> {
        let mut rings = self.rings.lock().unwrap_or_else(|e| e.into_inner());
        let mut dests = Vec::new();
        let mut window_secs = 0u32;
        for s in samples {
            // A new ring starts from zero: the counters were made with the
            // destination's first call, so nothing before it is lost.
            let ring = rings
                .entry(s.service.to_string())
                .or_insert_with(|| VecDeque::from([Reading::default()]));
            ring.push_back(Reading {
                tally: s.tally,
                latency: s.latency,
            });
            while ring.len() > WINDOW_SECS as usize + 1 {
                ring.pop_front();
            }
            let secs = u32::try_from(ring.len() - 1).unwrap_or(WINDOW_SECS);
            window_secs = window_secs.max(secs);
            if let Some(d) = window(&s, ring) {
                dests.push(d);
            }
        }
        drop(rings);
        // The busiest first, so a cut keeps what matters.
        dests.sort_by_key(|d| std::cmp::Reverse(d.tally.requests));
        dests.truncate(MAX_REPORTED);
        let report = Arc::new(StatsReport {
            window_secs,
            destinations: dests,
            tap: Vec::new(),
        });
        self.latest.store(report.clone());
        report
    }

    /// The window published by the last tick.
    pub fn latest(&self) -> Arc<StatsReport> {
        self.latest.load_full()
    }
}

/// A destination's window from its readings, or `None` when nothing
/// happened in it and nothing is happening now (an idle destination is
/// not sent).
fn window(s: &Sample<'_>, ring: &VecDeque<Reading>) -> Option<DestStats> {
    let (first, last) = (ring.front()?, ring.back()?);
    let tally = last.tally.minus(&first.tally);
    let busy = s.in_flight > 0 || s.queued > 0;
    if tally == Tally::default() && s.breaker == BreakerState::Closed && !busy {
        return None;
    }
    let latency = last.latency.minus(&first.latency);
    let per_second = ring
        .iter()
        .zip(ring.iter().skip(1))
        .map(|(a, b)| b.tally.requests.saturating_sub(a.tally.requests))
        .collect();
    Some(DestStats {
        service: s.service.to_string(),
        tally,
        latency: latency.sparse(),
        latency_sum_nanos: latency.sum_nanos,
        per_second,
        breaker: s.breaker,
        in_flight: s.in_flight,
        queued: s.queued,
        max_concurrent: s.max_concurrent,
        mtls: s.mtls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(service: &str, requests: u64) -> Sample<'_> {
        let o = Outcomes::default();
        for _ in 0..requests {
            o.success();
        }
        Sample {
            service,
            tally: o.tally(0, 0),
            latency: Counts::default(),
            breaker: BreakerState::Closed,
            in_flight: 0,
            queued: 0,
            max_concurrent: 10,
            mtls: false,
        }
    }

    #[test]
    fn the_window_is_the_last_ten_seconds_of_readings() {
        let r = Rolling::default();
        // Cumulative counts 0, 5, 10, ... one reading a second.
        let mut last = None;
        for second in 0..15u64 {
            last = Some(r.tick([sample("a", second * 5), sample("idle", 0)]));
        }
        let report = last.unwrap();
        assert_eq!(report.window_secs, WINDOW_SECS);
        assert_eq!(
            report.destinations.len(),
            1,
            "idle destinations are not sent"
        );
        let a = &report.destinations[0];
        assert_eq!(a.tally.requests, 50, "ten seconds of five");
        assert_eq!(a.tally.success, 50);
        assert_eq!(a.per_second, vec![5; 10]);
        assert_eq!(r.latest(), report);
    }

    #[test]
    fn a_young_proxy_reports_from_the_first_call_on() {
        let r = Rolling::default();
        // Two calls before the first tick are in the first window.
        let first = r.tick([sample("a", 2)]);
        assert_eq!(first.window_secs, 1);
        assert_eq!(first.destinations[0].tally.requests, 2);
        let report = r.tick([sample("a", 5)]);
        assert_eq!(report.window_secs, 2);
        assert_eq!(report.destinations[0].tally.requests, 5);
        assert_eq!(report.destinations[0].per_second, [2, 3]);
        // "a" left the table and came back: nothing is counted twice.
        r.tick([]);
        let back = r.tick([sample("a", 5)]);
        assert_eq!(
            back.destinations[0].tally.requests, 5,
            "the same calls, still in the window"
        );
    }

    #[test]
    fn every_call_is_counted_once_by_how_it_ended() {
        let o = Outcomes::default();
        o.success();
        o.failed(Failed::ShortCircuited, true);
        o.failed(Failed::Rejected, false);
        o.failed(Failed::Timeout, false);
        o.failed(Failed::Failure, false);
        o.failed(Failed::BadRequest, false);
        let t = o.tally(4, 1);
        assert_eq!(t.requests, 6);
        assert_eq!(t.errors(), 4);
        assert_eq!((t.fallbacks, t.retries, t.budget_exhausted), (1, 4, 1));
    }
}
