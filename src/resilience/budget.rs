//! Retry budget per destination service, as in Finagle and Linkerd: retries
//! may add only a share of the recent traffic, so a struggling upstream is
//! not buried under a retry storm.
//!
//! Over the last [`BUDGET_WINDOW`] (10 s, in 1 s buckets) with `R` original
//! requests ([`RetryBudget::deposit`]) and `W` retries already taken, one
//! more retry is allowed iff
//!
//! ```text
//! (W + 1) * 100 <= R * percent + minPerSecond * 10 * 100
//! ```
//!
//! i.e. retries stay within `percent` % of the requests plus a floor of
//! `minPerSecond` per second of the window (so low-traffic services can
//! still retry). Integer arithmetic, so the rule is exact: with 20 % and no
//! floor, 5 requests allow 1 retry, 9 still allow 1, 10 allow 2.
//! `available` in the view is the number of further retries allowed now:
//! `(R * percent + minPerSecond * 10 * 100) / 100 - W`.

use crate::model::policy::RetryBudget as BudgetConfig;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

use super::window::Window;

/// The span the budget looks back over (Linkerd's default TTL).
pub const BUDGET_WINDOW: Duration = Duration::from_secs(10);

const REQUESTS: usize = 0;
const RETRIES: usize = 1;

pub use crate::model::state::BudgetView;

#[derive(Debug)]
pub struct RetryBudget {
    inner: Mutex<Inner>,
    /// Lifetime counters for metrics; outside the lock, read without it.
    retried: AtomicU64,
    exhausted: AtomicU64,
}

#[derive(Debug)]
struct Inner {
    /// Behind the lock so a policy change applies in place.
    cfg: BudgetConfig,
    /// Requests and retries per second over [`BUDGET_WINDOW`].
    window: Window<2>,
}

// === impl RetryBudget ===

impl RetryBudget {
    pub fn new(cfg: BudgetConfig) -> Self {
        RetryBudget {
            inner: Mutex::new(Inner {
                cfg,
                window: Window::new(BUDGET_WINDOW, Instant::now()),
            }),
            retried: AtomicU64::new(0),
            exhausted: AtomicU64::new(0),
        }
    }

    /// Applies a changed policy in place; the window's history stays.
    pub fn reconfigure(&self, cfg: BudgetConfig) {
        self.lock().cfg = cfg;
    }

    /// Counts one original request (not its retries).
    pub fn deposit(&self) {
        self.lock().window.add(Instant::now(), [1, 0]);
    }

    /// Takes one retry from the budget; false (counted as exhausted) when
    /// none is left.
    pub fn try_withdraw(&self) -> bool {
        let now = Instant::now();
        let granted = {
            let mut inner = self.lock();
            let totals = inner.window.totals(now);
            let ok = allowance(&inner.cfg, &inner.window, totals)
                >= totals[RETRIES].saturating_add(1).saturating_mul(100);
            if ok {
                inner.window.add(now, [0, 1]);
            }
            ok
        };
        let counter = if granted {
            &self.retried
        } else {
            &self.exhausted
        };
        counter.fetch_add(1, Ordering::Relaxed);
        granted
    }

    pub fn view(&self) -> BudgetView {
        let available = {
            let mut inner = self.lock();
            let totals = inner.window.totals(Instant::now());
            (allowance(&inner.cfg, &inner.window, totals) / 100).saturating_sub(totals[RETRIES])
        };
        BudgetView {
            retried: self.retried.load(Ordering::Relaxed),
            budget_exhausted: self.exhausted.load(Ordering::Relaxed),
            budget_available: available,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Critical sections never panic midway.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Retries allowed in the window, times 100:
/// `R * percent + minPerSecond * seconds * 100`.
fn allowance(cfg: &BudgetConfig, window: &Window<2>, totals: [u64; 2]) -> u64 {
    let share = totals[REQUESTS].saturating_mul(u64::from(cfg.percent));
    let floor = u64::from(cfg.min_per_second)
        .saturating_mul(window.seconds())
        .saturating_mul(100);
    share.saturating_add(floor)
}

#[cfg(test)]
mod tests;
