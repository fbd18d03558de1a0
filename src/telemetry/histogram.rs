//! The latency histogram of each destination: one recording serves both
//! Prometheus (`mesh_request_duration_seconds`) and the dashboard's
//! percentiles.
//!
//! Buckets are log-linear: four per doubling from 100 µs, so any
//! percentile read from them is within 19 % of the true value (Hystrix
//! reports exact percentiles of a sample; HdrHistogram, which Linkerd
//! uses, keeps more buckets per doubling). Every fourth bound is a
//! doubling, and those 18 bounds (100 µs .. 13.1 s) are what `/metrics`
//! exposes, exactly as the classic histogram did before: the finer
//! buckets only add up into them.
//!
//! Concurrency: one relaxed `fetch_add` on the bucket and one on the sum
//! per observation; no lock (prometheus-client's histogram takes a mutex
//! per observation). A reader may see a bucket and a sum a few
//! observations apart, which no reader of a rolling window can tell.

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Sub-buckets per doubling.
const PER_DOUBLING: usize = 4;
/// Doublings covered: 100 µs · 2^17 ≈ 13.1 s, as the classic bounds.
const DOUBLINGS: usize = 17;
/// The smallest bound, in seconds.
const FIRST_BOUND: f64 = 0.0001;
/// Finite buckets (bounds `FIRST_BOUND · 2^(i/4)`, i = 0..=68), then one
/// for everything slower.
pub const BUCKETS: usize = PER_DOUBLING * DOUBLINGS + 2;

/// The upper bound of bucket `i`, in seconds (`+Inf` for the last).
pub fn bound(i: usize) -> f64 {
    if i + 1 >= BUCKETS {
        return f64::INFINITY;
    }
    // Exact at the doublings (powi), so the exposed bounds print as before.
    let (whole, part) = (i / PER_DOUBLING, i % PER_DOUBLING);
    FIRST_BOUND
        * 2f64.powi(i32::try_from(whole).unwrap_or(i32::MAX))
        * 2f64.powf(part as f64 / PER_DOUBLING as f64)
}

/// The bucket of an observation of `seconds` (upper bounds are inclusive).
fn index(seconds: f64) -> usize {
    if seconds.is_nan() || seconds <= FIRST_BOUND {
        return 0;
    }
    let steps = ((seconds / FIRST_BOUND).log2() * PER_DOUBLING as f64).ceil();
    // A float just over a bound may land one bucket late; never early.
    let i = if steps >= (BUCKETS - 1) as f64 {
        BUCKETS - 1
    } else {
        steps as usize
    };
    if i > 0 && seconds <= bound(i - 1) {
        i - 1
    } else {
        i
    }
}

/// A latency histogram shared by its clones.
#[derive(Clone, Debug)]
pub struct LatencyHistogram(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    buckets: [AtomicU64; BUCKETS],
    sum_nanos: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram(Arc::new(Inner {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_nanos: AtomicU64::new(0),
        }))
    }
}

impl LatencyHistogram {
    pub fn observe(&self, elapsed: Duration) {
        let i = index(elapsed.as_secs_f64());
        self.0.buckets[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.0.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The counts so far (cumulative since start).
    pub fn snapshot(&self) -> Counts {
        Counts {
            buckets: std::array::from_fn(|i| self.0.buckets[i].load(Ordering::Relaxed)),
            sum_nanos: self.0.sum_nanos.load(Ordering::Relaxed),
        }
    }
}

/// Bucket counts and the sum of what was observed: a histogram's state
/// at one moment, or (by [`Counts::minus`]) over an interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counts {
    pub buckets: [u64; BUCKETS],
    pub sum_nanos: u64,
}

impl Default for Counts {
    fn default() -> Self {
        Counts {
            buckets: [0; BUCKETS],
            sum_nanos: 0,
        }
    }
}

impl Counts {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// What was observed between `earlier` and `self`.
    pub fn minus(&self, earlier: &Counts) -> Counts {
        Counts {
            buckets: std::array::from_fn(|i| self.buckets[i].saturating_sub(earlier.buckets[i])),
            sum_nanos: self.sum_nanos.saturating_sub(earlier.sum_nanos),
        }
    }

    pub fn add(&mut self, other: &Counts) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            *a += b;
        }
        self.sum_nanos += other.sum_nanos;
    }

    /// The `q`-quantile (0..=1) in milliseconds, interpolated linearly
    /// inside its bucket; 0 with nothing observed. Past the last finite
    /// bound it answers that bound (the histogram knows no more).
    pub fn quantile_ms(&self, q: f64) -> f64 {
        let total = self.count();
        if total == 0 {
            return 0.0;
        }
        let rank = (q.clamp(0.0, 1.0) * total as f64).max(1.0);
        let mut seen = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            if n == 0 {
                continue;
            }
            if (seen + n) as f64 >= rank {
                let upper = bound(i).min(bound(BUCKETS - 2));
                let lower = if i == 0 { 0.0 } else { bound(i - 1).min(upper) };
                let within = (rank - seen as f64) / n as f64;
                return (lower + (upper - lower) * within) * 1000.0;
            }
            seen += n;
        }
        bound(BUCKETS - 2) * 1000.0
    }

    pub fn mean_ms(&self) -> f64 {
        match self.count() {
            0 => 0.0,
            n => self.sum_nanos as f64 / n as f64 / 1e6,
        }
    }

    /// Sparse form for the wire: `[index, count]` of non-empty buckets.
    pub fn sparse(&self) -> Vec<[u64; 2]> {
        self.buckets
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(i, &n)| [i as u64, n])
            .collect()
    }

    /// The inverse of [`sparse`](Self::sparse); out-of-range indexes
    /// (from a proxy with other buckets) go to the last bucket.
    pub fn from_sparse(pairs: &[[u64; 2]], sum_nanos: u64) -> Counts {
        let mut c = Counts {
            sum_nanos,
            ..Counts::default()
        };
        for &[i, n] in pairs {
            let i = usize::try_from(i).unwrap_or(usize::MAX).min(BUCKETS - 1);
            c.buckets[i] = c.buckets[i].saturating_add(n);
        }
        c
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let c = self.snapshot();
        // The doublings only: each exposed bucket holds its four.
        let mut exposed: Vec<(f64, u64)> = Vec::with_capacity(DOUBLINGS + 2);
        let mut acc = 0u64;
        for (i, n) in c.buckets.iter().enumerate() {
            acc += n;
            if i % PER_DOUBLING == 0 || i + 1 == BUCKETS {
                exposed.push((bound(i), acc));
                acc = 0;
            }
        }
        encoder.encode_histogram::<NoLabelSet>(c.sum_nanos as f64 / 1e9, c.count(), &exposed, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_the_classic_doublings_every_fourth() {
        for k in 0..=DOUBLINGS {
            let want = FIRST_BOUND * 2f64.powi(k as i32);
            assert_eq!(bound(k * PER_DOUBLING), want, "doubling {k}");
        }
        assert_eq!(bound(BUCKETS - 1), f64::INFINITY);
        for i in 1..BUCKETS {
            assert!(bound(i) > bound(i - 1), "bounds increase at {i}");
        }
    }

    #[test]
    fn every_observation_lands_in_the_bucket_whose_bound_holds_it() {
        for i in 0..BUCKETS - 1 {
            let b = bound(i);
            assert_eq!(index(b), i, "exactly at bound {i} ({b})");
            assert_eq!(index(b * 1.0001), i + 1, "just past bound {i}");
        }
        assert_eq!(index(0.0), 0);
        assert_eq!(index(1e9), BUCKETS - 1);
        assert_eq!(index(f64::NAN), 0);
    }

    #[test]
    fn quantiles_fall_within_a_bucket_of_the_truth() {
        let h = LatencyHistogram::default();
        // 1..=1000 ms, one each.
        for ms in 1..=1000u64 {
            h.observe(Duration::from_millis(ms));
        }
        let c = h.snapshot();
        assert_eq!(c.count(), 1000);
        for (q, truth) in [(0.5, 500.0), (0.9, 900.0), (0.99, 990.0)] {
            let got = c.quantile_ms(q);
            assert!(
                (got - truth).abs() / truth < 0.19,
                "p{q}: {got} ms against {truth}"
            );
        }
        assert!((c.mean_ms() - 500.5).abs() < 0.01, "{}", c.mean_ms());
        assert_eq!(Counts::default().quantile_ms(0.99), 0.0);
    }

    #[test]
    fn differences_sums_and_the_wire_form_round_trip() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_millis(2));
        let before = h.snapshot();
        h.observe(Duration::from_millis(40));
        h.observe(Duration::from_secs(60));
        let d = h.snapshot().minus(&before);
        assert_eq!(d.count(), 2);
        assert_eq!(d.sum_nanos, 60_040_000_000);
        let back = Counts::from_sparse(&d.sparse(), d.sum_nanos);
        assert_eq!(back, d);
        let mut twice = back;
        twice.add(&d);
        assert_eq!(twice.count(), 4);
        // Too slow for the buckets: answered as the last bound.
        assert_eq!(d.quantile_ms(1.0), bound(BUCKETS - 2) * 1000.0);
    }

    #[test]
    fn prometheus_sees_the_doubling_buckets() {
        let mut reg = prometheus_client::registry::Registry::default();
        let h = LatencyHistogram::default();
        reg.register("lat", "latency", h.clone());
        h.observe(Duration::from_micros(150)); // (100 µs, 200 µs]
        h.observe(Duration::from_micros(200));
        h.observe(Duration::from_secs(20)); // past 13.1 s
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        for line in [
            "# TYPE lat histogram",
            "lat_bucket{le=\"0.0001\"} 0",
            "lat_bucket{le=\"0.0002\"} 2",
            "lat_bucket{le=\"13.1072\"} 2",
            "lat_bucket{le=\"+Inf\"} 3",
            "lat_count 3",
        ] {
            assert!(out.contains(line), "{line} in:\n{out}");
        }
        assert_eq!(out.matches("lat_bucket").count(), DOUBLINGS + 2);
    }
}
