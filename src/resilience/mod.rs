//! Resilience building blocks for the outbound request path: pure state
//! machines, no I/O, thread-safe, no allocation per call, time from
//! `tokio::time::Instant` (so tests run under the paused clock).
//!
//! | file          | what                         | call path API |
//! |---------------|------------------------------|---------------|
//! | `breaker.rs`  | circuit breaker per service  | `breaker.try_acquire()? -> BreakerPermit`; `permit.record(Outcome { failed, elapsed })`; drop = not counted |
//! | `bulkhead.rs` | concurrency limit per service| `bulkhead.acquire().await? -> BulkheadPermit` (slot freed on drop) |
//! | `budget.rs`   | retry budget per service     | `budget.deposit()` per original request; `budget.try_withdraw()` per retry |
//! | `outlier.rs`  | ejection per endpoint        | `outlier.record(&ep_state, success, endpoints_total)`; `ep_state.is_ejected(now)` |
//! | `retry.rs`    | retry rules                  | `classify(tried) -> Option<Retryable>`, `may_repeat`, `retry_delay(attempt)` |
//! | `timeout.rs`  | total timeout and deadline   | `Deadline::new(now, policy, caller_left)`; `grpc-timeout` and `x-mesh-timeout` values |
//! | `fallback.rs` | static fallback answers      | `static_response(..)`, `mark(headers, reason)` |
//! | `window.rs`   | 1 s-bucket sliding window    | internal |
//!
//! [`ServiceResilience`] bundles one service's breaker, bulkhead, budget and
//! detector with the policy they were built from. Hold one per service
//! across routing-table rebuilds; on a policy change call
//! [`ServiceResilience::update`], which reconfigures the shared parts in
//! place (breaker state, window counts, bulkhead occupancy and ejections
//! carry over) and returns a new bundle holding the new policy. A request
//! keeps the `Arc<ServiceResilience>` it started with, so its timeouts and
//! retry settings do not change under it.
//!
//! Failures the mesh creates itself (breaker open, bulkhead full, budget
//! exhausted, no endpoints) must not be recorded as outcomes: drop the
//! breaker permit instead.

mod breaker;
mod budget;
mod bulkhead;
pub mod fallback;
mod outlier;
pub mod retry;
pub mod timeout;
mod window;

pub use breaker::{
    BreakerOpen, BreakerPermit, BreakerState, BreakerView, CircuitBreaker, Outcome, Transition,
    TransitionCounts, TransitionHook,
};
pub use budget::{BudgetView, RetryBudget, BUDGET_WINDOW};
pub use bulkhead::{Bulkhead, BulkheadFull, BulkheadPermit, BulkheadView};
pub use outlier::{EjectionState, OutlierDetector, MAX_EJECTION_MULTIPLIER};
pub use retry::{
    classify, is_idempotent, may_repeat, retry_delay, should_retry, FailureKind, Retryable, Tried,
};
pub use timeout::Deadline;

use crate::model::ServicePolicy;
use serde::Serialize;
use std::sync::Arc;

/// One destination service's resilience state.
#[derive(Clone, Debug)]
pub struct ServiceResilience {
    /// The policy this bundle applies (timeouts, retries and fallback are
    /// read from it directly).
    pub policy: Arc<ServicePolicy>,
    pub breaker: Arc<CircuitBreaker>,
    pub bulkhead: Arc<Bulkhead>,
    pub budget: Arc<RetryBudget>,
    pub outlier: Arc<OutlierDetector>,
}

/// The resilience part of a service's `/state` entry.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct ResilienceView {
    pub breaker: BreakerView,
    pub bulkhead: BulkheadView,
    pub retries: BudgetView,
}

// === impl ServiceResilience ===

impl ServiceResilience {
    pub fn new(policy: Arc<ServicePolicy>) -> Self {
        Self::build(policy, None)
    }

    /// Like [`new`](Self::new), calling `hook` after each breaker
    /// transition (to log it and count `mesh_breaker_transitions_total`).
    pub fn with_breaker_hook(policy: Arc<ServicePolicy>, hook: TransitionHook) -> Self {
        Self::build(policy, Some(hook))
    }

    fn build(policy: Arc<ServicePolicy>, hook: Option<TransitionHook>) -> Self {
        let breaker = match hook {
            Some(h) => CircuitBreaker::with_hook(policy.breaker, h),
            None => CircuitBreaker::new(policy.breaker),
        };
        ServiceResilience {
            breaker: Arc::new(breaker),
            bulkhead: Arc::new(Bulkhead::new(policy.bulkhead)),
            budget: Arc::new(RetryBudget::new(policy.retries.budget)),
            outlier: Arc::new(OutlierDetector::new(policy.outlier)),
            policy,
        }
    }

    /// The bundle for a changed policy: same breaker, bulkhead, budget and
    /// detector (reconfigured in place where their settings changed), new
    /// policy. Requests holding `self` keep the old policy's timeouts and
    /// retries.
    pub fn update(&self, policy: Arc<ServicePolicy>) -> Self {
        let old = &self.policy;
        if old.breaker != policy.breaker {
            self.breaker.reconfigure(policy.breaker);
        }
        if old.bulkhead != policy.bulkhead {
            self.bulkhead.reconfigure(policy.bulkhead);
        }
        if old.retries.budget != policy.retries.budget {
            self.budget.reconfigure(policy.retries.budget);
        }
        if old.outlier != policy.outlier {
            self.outlier.reconfigure(policy.outlier);
        }
        ServiceResilience {
            policy,
            ..self.clone()
        }
    }

    pub fn view(&self) -> ResilienceView {
        ResilienceView {
            breaker: self.breaker.view(),
            bulkhead: self.bulkhead.view(),
            retries: self.budget.view(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn update_keeps_state_and_swaps_policy() {
        let mut p = ServicePolicy::defaults("orders");
        p.breaker.min_requests = 2;
        p.bulkhead.max_concurrent = 2;
        let r1 = ServiceResilience::new(Arc::new(p.clone()));
        let held = r1.bulkhead.acquire().await.unwrap();
        let fail = Outcome {
            failed: true,
            elapsed: Duration::from_millis(1),
        };
        r1.breaker.try_acquire().unwrap().record(fail);

        p.bulkhead.max_concurrent = 1;
        p.breaker.min_requests = 1;
        p.timeouts.request = Duration::from_secs(1);
        let r2 = r1.update(Arc::new(p));
        assert_eq!(r1.policy.timeouts.request, Duration::from_secs(15));
        assert_eq!(r2.policy.timeouts.request, Duration::from_secs(1));
        // The running call fills the tighter bulkhead at once.
        assert!(r2.bulkhead.acquire().await.is_err());
        drop(held);
        assert!(r2.bulkhead.acquire().await.is_ok());
        // The window kept its failure; with minRequests 1 the next trips.
        r2.breaker.try_acquire().unwrap().record(fail);
        assert_eq!(r1.breaker.state(), BreakerState::Open);

        let json = serde_json::to_value(r2.view()).unwrap();
        assert_eq!(json["breaker"]["state"], "open");
        assert_eq!(json["breaker"]["calls"], 2);
        assert_eq!(json["bulkhead"]["max_concurrent"], 1);
        assert_eq!(json["retries"]["budget_available"], 100);
    }
}
