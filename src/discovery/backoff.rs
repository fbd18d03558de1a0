//! Exponential backoff with full jitter, so a fleet of proxies that lost the
//! control plane together does not reconnect in lockstep.

use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            attempt: 0,
        }
    }

    /// The next delay: uniform in [min, min·2^attempt], capped at max.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .min
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let span = ceiling.saturating_sub(self.min).as_millis() as u64;
        self.min + Duration::from_millis(fastrand::u64(..=span))
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_within_bounds_and_resets() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(5));
        let mut b = Backoff::new(min, max);
        for _ in 0..50 {
            let d = b.next_delay();
            assert!(d >= min && d <= max, "{d:?}");
        }
        // After many attempts the ceiling is max; the spread is real.
        let ds: Vec<_> = (0..20).map(|_| b.next_delay()).collect();
        assert!(ds.iter().any(|d| *d > Duration::from_secs(1)), "{ds:?}");
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
