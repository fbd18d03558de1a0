//! A time-based sliding window of 1 s buckets, shared by the breaker and
//! the retry budget.
//!
//! The ring holds one bucket per second of the window; the bucket for second
//! `s` (counted from `epoch`) sits at `s % len`. Moving to a later second
//! clears the buckets that fall out, subtracting them from a running total,
//! so adding and reading are O(1) and advancing is O(min(gap, len)). Nothing
//! allocates after construction.
//!
//! The window covers the current (partial) second plus the `len - 1` whole
//! seconds before it: an event is forgotten between `len - 1` and `len`
//! seconds after it happened, as in Resilience4j's time-based window.

use std::time::Duration;
use tokio::time::Instant;

/// `K` counters per bucket (e.g. calls, failures, slow calls).
#[derive(Debug)]
pub(crate) struct Window<const K: usize> {
    /// Second 0 of the ring; bucket times are whole seconds since it.
    epoch: Instant,
    /// One bucket per second, allocated once.
    buckets: Box<[[u64; K]]>,
    /// The newest second the ring has been advanced to.
    head: u64,
    /// Sum over all buckets, kept incrementally so reads need no scan.
    total: [u64; K],
}

// === impl Window ===

impl<const K: usize> Window<K> {
    /// A window of `span` rounded up to whole seconds (at least one).
    pub(crate) fn new(span: Duration, epoch: Instant) -> Self {
        let secs = span.as_secs() + u64::from(span.subsec_nanos() > 0);
        let len = usize::try_from(secs.max(1)).unwrap_or(usize::MAX).min(3600);
        Window {
            epoch,
            buckets: vec![[0; K]; len].into_boxed_slice(),
            head: 0,
            total: [0; K],
        }
    }

    /// The window's length in whole seconds.
    pub(crate) fn seconds(&self) -> u64 {
        self.buckets.len() as u64
    }

    /// Adds `counts` at `now`.
    pub(crate) fn add(&mut self, now: Instant, counts: [u64; K]) {
        self.advance(now);
        let len = self.buckets.len() as u64;
        let i = (self.head % len) as usize;
        if let Some(bucket) = self.buckets.get_mut(i) {
            for ((b, t), c) in bucket.iter_mut().zip(self.total.iter_mut()).zip(counts) {
                *b += c;
                *t += c;
            }
        }
    }

    /// The sums over the window as of `now`.
    pub(crate) fn totals(&mut self, now: Instant) -> [u64; K] {
        self.advance(now);
        self.total
    }

    /// Forgets everything.
    pub(crate) fn clear(&mut self) {
        for b in self.buckets.iter_mut() {
            *b = [0; K];
        }
        self.total = [0; K];
    }

    /// Drops the buckets of seconds that have left the window by `now`.
    fn advance(&mut self, now: Instant) {
        let sec = now.saturating_duration_since(self.epoch).as_secs();
        if sec <= self.head {
            return;
        }
        let len = self.buckets.len() as u64;
        if sec - self.head >= len {
            self.clear();
        } else {
            for s in self.head + 1..=sec {
                if let Some(bucket) = self.buckets.get_mut((s % len) as usize) {
                    for (t, b) in self.total.iter_mut().zip(bucket.iter()) {
                        *t -= *b;
                    }
                    *bucket = [0; K];
                }
            }
        }
        self.head = sec;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn slides_by_whole_seconds() {
        let t0 = Instant::now();
        let mut w = Window::<2>::new(Duration::from_secs(3), t0);
        assert_eq!(w.seconds(), 3);
        w.add(t0, [1, 0]);
        w.add(t0 + Duration::from_millis(1500), [1, 1]);
        w.add(t0 + Duration::from_millis(2999), [1, 0]);
        assert_eq!(w.totals(t0 + Duration::from_millis(2999)), [3, 1]);
        // Second 0 leaves at 3 s; second 1 at 4 s; everything after a long gap.
        assert_eq!(w.totals(t0 + Duration::from_secs(3)), [2, 1]);
        assert_eq!(w.totals(t0 + Duration::from_secs(4)), [1, 0]);
        assert_eq!(w.totals(t0 + Duration::from_secs(60)), [0, 0]);
        w.add(t0 + Duration::from_secs(60), [5, 5]);
        assert_eq!(w.totals(t0 + Duration::from_secs(61)), [5, 5]);
        w.clear();
        assert_eq!(w.totals(t0 + Duration::from_secs(61)), [0, 0]);
    }

    #[test]
    fn rounds_span_up() {
        let t0 = Instant::now();
        assert_eq!(Window::<1>::new(Duration::ZERO, t0).seconds(), 1);
        assert_eq!(
            Window::<1>::new(Duration::from_millis(1500), t0).seconds(),
            2
        );
    }
}
