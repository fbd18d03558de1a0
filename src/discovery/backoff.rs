//! Exponential backoff with jitter, so a fleet of proxies that lost the
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

    /// The next delay: uniform in [min, min·2^(attempt+1)], capped at max.
    /// Even the first is spread (over [min, 2·min]): that is the one a
    /// whole fleet takes at once when a control-plane replica dies.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .min
            .saturating_mul(2u32 << self.attempt.min(16))
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
        for attempt in 0..50u32 {
            let d = b.next_delay();
            let ceiling = (min * 2u32.pow(attempt.min(10) + 1)).min(max);
            assert!(d >= min && d <= ceiling, "attempt {attempt}: {d:?}");
        }
        // After many attempts the ceiling is max; the spread is real.
        let ds: Vec<_> = (0..20).map(|_| b.next_delay()).collect();
        assert!(ds.iter().any(|d| *d > Duration::from_secs(1)), "{ds:?}");
        b.reset();
        assert!(b.next_delay() <= 2 * min);
    }

    #[test]
    fn the_first_delay_is_quick_but_spread() {
        // The watch's settings: a killed replica costs one of these.
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(5));
        let firsts: Vec<Duration> = (0..200)
            .map(|_| Backoff::new(min, max).next_delay())
            .collect();
        assert!(firsts
            .iter()
            .all(|d| *d >= min && *d <= Duration::from_millis(200)));
        let distinct: std::collections::HashSet<_> = firsts.iter().collect();
        assert!(distinct.len() > 10, "not spread: {firsts:?}");
    }
}
