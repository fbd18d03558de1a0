//! Load balancers over a service's ready endpoints.
//!
//! Endpoints carry [`EndpointStats`] (in-flight count and a peak-EWMA of
//! latency) that outlive routing-table rebuilds, so a registry change does
//! not reset what the balancer learned. Picking is lock-free except for the
//! per-endpoint EWMA update on completion, which is uncontended.

mod ewma;

pub use ewma::{EndpointStats, InFlight};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Which algorithm a service is balanced with (from its policy).
pub use crate::model::LoadBalancer as Algorithm;

/// Anything the balancer can choose between.
pub trait HasStats {
    fn stats(&self) -> &Arc<EndpointStats>;
}

/// A balancer instance for one service.
#[derive(Debug)]
pub struct Balancer {
    algorithm: Algorithm,
    /// Round-robin cursor; unused by P2C.
    next: AtomicUsize,
}

impl Balancer {
    pub fn new(algorithm: Algorithm) -> Self {
        Balancer {
            algorithm,
            next: AtomicUsize::new(fastrand::usize(..usize::MAX / 2)),
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Picks one of `ready`; `None` only when it is empty.
    pub fn pick<'a, E: HasStats>(&self, ready: &'a [E]) -> Option<&'a E> {
        match ready.len() {
            0 => None,
            1 => ready.first(),
            n => match self.algorithm {
                Algorithm::RoundRobin => ready.get(self.next.fetch_add(1, Ordering::Relaxed) % n),
                Algorithm::Random => ready.get(fastrand::usize(..n)),
                Algorithm::P2cEwma => {
                    let now = tokio::time::Instant::now();
                    Some(p2c(ready, |e| e.stats().cost_at(now)))
                }
                Algorithm::LeastRequest => Some(p2c(ready, |e| f64::from(e.stats().pending()))),
            },
        }
    }
}

/// Power of two choices: draw two distinct endpoints, keep the cheaper.
fn p2c<E>(ready: &[E], cost: impl Fn(&E) -> f64) -> &E {
    let n = ready.len();
    let a = fastrand::usize(..n);
    let mut b = fastrand::usize(..n - 1);
    if b >= a {
        b += 1;
    }
    let (ea, eb) = (&ready[a], &ready[b]);
    if cost(ea) <= cost(eb) {
        ea
    } else {
        eb
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    struct E(Arc<EndpointStats>);
    impl HasStats for E {
        fn stats(&self) -> &Arc<EndpointStats> {
            &self.0
        }
    }

    fn endpoints(n: usize) -> Vec<E> {
        (0..n)
            .map(|_| E(Arc::new(EndpointStats::default())))
            .collect()
    }

    fn index_of(eps: &[E], e: &E) -> usize {
        eps.iter().position(|x| Arc::ptr_eq(&x.0, &e.0)).unwrap()
    }

    #[test]
    fn round_robin_is_even() {
        let eps = endpoints(3);
        let b = Balancer::new(Algorithm::RoundRobin);
        let mut counts = [0; 3];
        for _ in 0..300 {
            counts[index_of(&eps, b.pick(&eps).unwrap())] += 1;
        }
        assert_eq!(counts, [100, 100, 100]);
    }

    #[test]
    fn p2c_spreads_over_equal_endpoints() {
        let eps = endpoints(4);
        let b = Balancer::new(Algorithm::P2cEwma);
        let mut counts = [0; 4];
        for _ in 0..4000 {
            counts[index_of(&eps, b.pick(&eps).unwrap())] += 1;
        }
        for c in counts {
            assert!((700..1300).contains(&c), "uneven: {counts:?}");
        }
    }

    #[test]
    fn p2c_avoids_slow_and_busy_endpoints() {
        let eps = endpoints(3);
        // Endpoint 0 answered slowly; endpoint 1 has many requests open.
        eps[0].0.observe(Duration::from_millis(500));
        eps[1].0.observe(Duration::from_millis(1));
        eps[2].0.observe(Duration::from_millis(1));
        let _busy: Vec<_> = (0..50).map(|_| InFlight::start(eps[1].0.clone())).collect();
        let b = Balancer::new(Algorithm::P2cEwma);
        let mut counts = [0; 3];
        for _ in 0..3000 {
            counts[index_of(&eps, b.pick(&eps).unwrap())] += 1;
        }
        // P2C never picks the worse of the pair it draws: 0 loses every
        // pair, 1 wins only against 0 (a third of draws), 2 wins the rest.
        assert_eq!(counts[0], 0, "{counts:?}");
        assert!((800..1200).contains(&counts[1]), "{counts:?}");
        assert!((1800..2200).contains(&counts[2]), "{counts:?}");
    }

    #[test]
    fn empty_and_single() {
        let b = Balancer::new(Algorithm::P2cEwma);
        assert!(b.pick::<E>(&[]).is_none());
        let one = endpoints(1);
        assert!(b.pick(&one).is_some());
        assert_eq!("round-robin".parse(), Ok(Algorithm::RoundRobin));
        assert!("fastest".parse::<Algorithm>().is_err());
        assert_eq!("least-request".parse(), Ok(Algorithm::LeastRequest));
    }
}
