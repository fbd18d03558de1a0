//! Outlier ejection: an endpoint that fails `consecutiveFailures` times in
//! a row is taken out of balancing for `ejectFor × times ejected` (the
//! multiplier capped at [`MAX_EJECTION_MULTIPLIER`]), and comes back by
//! itself when that time has passed. Ejection never takes more than
//! `maxEjectedPercent` of a service's endpoints, and never the last one.
//!
//! Per-endpoint state ([`EjectionState`]) is atomics meant to live in the
//! endpoint's stats, which survive routing-table rebuilds; the per-service
//! [`OutlierDetector`] holds the policy and the end times of ejections in
//! progress, so the count of currently ejected endpoints is computed when
//! needed (expired ejections simply stop counting) rather than kept by
//! something that would have to notice an ejection ending.
//!
//! The request path pays one atomic load per call (a success on an
//! endpoint with no failures writes nothing) and one `fetch_add` per
//! failure; only the failure that reaches the threshold takes the lock.

use crate::model::policy::Outlier as OutlierConfig;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

/// The most an ejection's length grows: the 10th and later ejections of an
/// endpoint last `10 × ejectFor`. The count never decays.
pub const MAX_EJECTION_MULTIPLIER: u32 = 10;

/// One endpoint's ejection bookkeeping.
#[derive(Debug)]
pub struct EjectionState {
    /// Time zero for `ejected_until`, so the state needs no global clock
    /// and follows tokio's paused clock in tests.
    epoch: Instant,
    /// Failures since the last success (or ejection).
    consecutive_failures: AtomicU32,
    /// When the current or last ejection ends, in ns since `epoch`
    /// (0: never ejected).
    ejected_until: AtomicU64,
    times_ejected: AtomicU32,
}

/// Ejection policy for one service.
#[derive(Debug)]
pub struct OutlierDetector {
    /// `consecutiveFailures`, atomic so `record` reads it without the lock
    /// (0 turns ejection off).
    threshold: AtomicU32,
    inner: Mutex<Inner>,
    /// Ejections since the detector was made, for metrics.
    ejections: AtomicU64,
    /// When the latest ejection ends, in ns after `epoch` (0: none yet):
    /// lets the request path skip filtering with one atomic load.
    latest_until: AtomicU64,
    epoch: Instant,
}

#[derive(Debug)]
struct Inner {
    cfg: OutlierConfig,
    /// End times of ejections made here, expired ones pruned lazily: its
    /// live entries are the endpoints ejected now.
    active: Vec<Instant>,
}

// === impl EjectionState ===

impl Default for EjectionState {
    fn default() -> Self {
        EjectionState {
            epoch: Instant::now(),
            consecutive_failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            times_ejected: AtomicU32::new(0),
        }
    }
}

impl EjectionState {
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ns(now) < self.ejected_until.load(Ordering::Acquire)
    }

    /// When the current ejection ends, if there is one at `now`.
    pub fn ejected_until(&self, now: Instant) -> Option<Instant> {
        let until = self.ejected_until.load(Ordering::Acquire);
        (self.ns(now) < until).then(|| self.epoch + Duration::from_nanos(until))
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    pub fn times_ejected(&self) -> u32 {
        self.times_ejected.load(Ordering::Relaxed)
    }

    fn ns(&self, t: Instant) -> u64 {
        nanos(t.saturating_duration_since(self.epoch))
    }
}

// === impl OutlierDetector ===

impl OutlierDetector {
    pub fn new(cfg: OutlierConfig) -> Self {
        OutlierDetector {
            threshold: AtomicU32::new(cfg.consecutive_failures),
            inner: Mutex::new(Inner {
                cfg,
                active: Vec::new(),
            }),
            ejections: AtomicU64::new(0),
            latest_until: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// True if some endpoint may be ejected at `now` (lock-free; may say
    /// true for an ejection that was refused by nobody but ended early,
    /// never false while one is active).
    pub fn any_ejected(&self, now: Instant) -> bool {
        let until = self.latest_until.load(Ordering::Acquire);
        until != 0 && u128::from(until) > now.saturating_duration_since(self.epoch).as_nanos()
    }

    /// Applies a changed policy in place; ejections in progress keep their
    /// end time and still count toward the cap.
    pub fn reconfigure(&self, cfg: OutlierConfig) {
        self.threshold
            .store(cfg.consecutive_failures, Ordering::Relaxed);
        self.lock().cfg = cfg;
    }

    /// Counts one call's result on `ep`, one of `endpoints_total` endpoints
    /// of the service. Returns true if this failure ejected it.
    pub fn record(&self, ep: &EjectionState, success: bool, endpoints_total: usize) -> bool {
        if success {
            if ep.consecutive_failures.load(Ordering::Relaxed) != 0 {
                ep.consecutive_failures.store(0, Ordering::Relaxed);
            }
            return false;
        }
        let now = Instant::now();
        if ep.is_ejected(now) {
            // A call sent before the ejection: already dealt with.
            return false;
        }
        let failures = ep
            .consecutive_failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        let threshold = self.threshold.load(Ordering::Relaxed);
        if threshold == 0 || failures < threshold {
            return false;
        }
        self.try_eject(ep, now, endpoints_total)
    }

    /// Ejects `ep` unless the cap forbids it; a refused endpoint keeps its
    /// failure count, so its next failure tries again.
    fn try_eject(&self, ep: &EjectionState, now: Instant, endpoints_total: usize) -> bool {
        let mut inner = self.lock();
        if ep.is_ejected(now) {
            return false;
        }
        inner.active.retain(|until| *until > now);
        let after = inner.active.len() as u64 + 1;
        let total = endpoints_total as u64;
        let max_percent = u64::from(inner.cfg.max_ejected_percent);
        if after >= total || after * 100 > max_percent * total {
            return false;
        }
        let times = ep
            .times_ejected
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        let until = now + inner.cfg.eject_for * times.min(MAX_EJECTION_MULTIPLIER);
        ep.ejected_until.store(ep.ns(until), Ordering::Release);
        ep.consecutive_failures.store(0, Ordering::Relaxed);
        inner.active.push(until);
        let ns = u64::try_from(until.saturating_duration_since(self.epoch).as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        self.latest_until.fetch_max(ns, Ordering::AcqRel);
        self.ejections.fetch_add(1, Ordering::Relaxed);
        true
    }

    pub fn is_ejected(&self, ep: &EjectionState, now: Instant) -> bool {
        ep.is_ejected(now)
    }

    /// Endpoints ejected by this detector whose ejection has not ended.
    pub fn ejected_now(&self, now: Instant) -> usize {
        self.lock().active.iter().filter(|u| **u > now).count()
    }

    pub fn ejections_total(&self) -> u64 {
        self.ejections.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Critical sections never panic midway.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
