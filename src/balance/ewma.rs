//! Per-endpoint load statistics for peak-EWMA balancing.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// How fast old latency samples fade: a sample's weight halves roughly every
/// `DECAY * ln 2`. Linkerd uses 10 s.
const DECAY: Duration = Duration::from_secs(10);
/// Cost assumed for an endpoint with no samples yet: optimistic, so a new
/// endpoint receives traffic and gets measured.
const DEFAULT_RTT_NS: f64 = 1_000_000.0;

/// Load seen on one endpoint; shared across routing-table rebuilds.
#[derive(Debug)]
pub struct EndpointStats {
    /// Requests sent and not yet answered.
    pending: AtomicU32,
    /// (EWMA latency in ns, when it was last updated: `None` before the
    /// first sample). A mutex, not atomics: the two values change
    /// together, and it is uncontended.
    rtt: Mutex<(f64, Option<Instant>)>,
    /// Outlier-ejection state: lives here so it survives table rebuilds.
    pub ejection: crate::resilience::EjectionState,
}

impl Default for EndpointStats {
    fn default() -> Self {
        EndpointStats {
            pending: AtomicU32::new(0),
            rtt: Mutex::new((DEFAULT_RTT_NS, None)),
            ejection: Default::default(),
        }
    }
}

impl EndpointStats {
    pub fn pending(&self) -> u32 {
        self.pending.load(Ordering::Relaxed)
    }

    /// The current latency estimate.
    pub fn ewma(&self) -> Duration {
        let rtt = self.rtt.lock().map(|g| g.0).unwrap_or(DEFAULT_RTT_NS);
        Duration::from_nanos(rtt as u64)
    }

    /// Lower is better: expected latency scaled by queue depth.
    pub fn cost(&self) -> f64 {
        self.cost_at(Instant::now())
    }

    /// [`cost`](Self::cost) as of `now`. The latency estimate decays
    /// toward zero with the time since its last sample (as tower's and
    /// Linkerd's peak-EWMA do): without that, an endpoint whose last answer
    /// was slow would keep its high cost for as long as it is not picked,
    /// which is forever when the other one is always cheaper, and it would
    /// never be measured again.
    pub fn cost_at(&self, now: Instant) -> f64 {
        let (rtt, last) = self
            .rtt
            .lock()
            .map(|g| *g)
            .unwrap_or((DEFAULT_RTT_NS, None));
        // Never measured: the optimistic default, undecayed, so new
        // endpoints tie and are spread over evenly.
        let decayed = match last {
            Some(last) => {
                let idle = now.saturating_duration_since(last).as_secs_f64();
                rtt * (-idle / DECAY.as_secs_f64()).exp()
            }
            None => rtt,
        };
        decayed * f64::from(self.pending() + 1)
    }

    /// Folds in one response time. Peaks are taken at once; improvements
    /// decay in, so one lucky response does not hide a struggling endpoint.
    pub fn observe(&self, sample: Duration) {
        let sample = sample.as_nanos() as f64;
        let Ok(mut g) = self.rtt.lock() else { return };
        let now = Instant::now();
        let (ewma, last) = *g;
        let next = match last {
            // The first sample replaces the optimistic default.
            None => sample,
            Some(_) if sample > ewma => sample,
            Some(last) => {
                let elapsed = now.saturating_duration_since(last).as_secs_f64();
                let w = (-elapsed / DECAY.as_secs_f64()).exp();
                ewma * w + sample * (1.0 - w)
            }
        };
        *g = (next, Some(now));
    }
}

/// Counts one request as pending until dropped; records its latency when
/// [`InFlight::finish`] is called (a dropped, unfinished request still
/// releases its slot but teaches nothing about latency).
#[derive(Debug)]
pub struct InFlight {
    stats: Arc<EndpointStats>,
    start: Instant,
}

impl InFlight {
    pub fn start(stats: Arc<EndpointStats>) -> Self {
        stats.pending.fetch_add(1, Ordering::Relaxed);
        InFlight {
            stats,
            start: Instant::now(),
        }
    }

    /// Records the response time (headers received) and releases the slot.
    pub fn finish(self) {
        self.stats.observe(self.start.elapsed());
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.stats.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_then_decay() {
        let s = EndpointStats::default();
        s.observe(Duration::from_millis(100));
        assert_eq!(s.ewma(), Duration::from_millis(100));
        // A fast sample right after barely moves it (little time elapsed).
        s.observe(Duration::from_millis(1));
        assert!(s.ewma() > Duration::from_millis(90));
    }

    #[test]
    fn an_endpoint_left_alone_becomes_worth_measuring_again() {
        let slow = EndpointStats::default();
        let fast = EndpointStats::default();
        slow.observe(Duration::from_millis(20));
        fast.observe(Duration::from_millis(2));
        let now = Instant::now();
        assert!(slow.cost_at(now) > fast.cost_at(now));
        // Thirty seconds without a sample: 20 ms × e^-3 ≈ 1 ms, below the
        // fast one's fresh 2 ms, so the next pick measures it again.
        let later = now + Duration::from_secs(30);
        let fresh_fast = 2_000_000.0;
        assert!(slow.cost_at(later) < fresh_fast, "{}", slow.cost_at(later));
        assert!(slow.cost_at(later) > 0.0);
    }

    #[test]
    fn pending_counts() {
        let s = Arc::new(EndpointStats::default());
        let a = InFlight::start(s.clone());
        let b = InFlight::start(s.clone());
        assert_eq!(s.pending(), 2);
        a.finish();
        drop(b);
        assert_eq!(s.pending(), 0);
        assert!(s.cost() > 0.0);
    }
}
