//! Bulkhead per destination service: at most `maxConcurrent` calls at once,
//! at most `maxQueued` more waiting up to `queueTimeout` for a slot; the
//! rest are rejected at once, so one saturated service cannot tie up the
//! proxy's capacity for the others.
//!
//! Slots are a tokio [`Semaphore`] (fair: waiters are admitted in arrival
//! order, and a newcomer cannot jump the queue). Permits are taken out of
//! the semaphore and handed back by [`BulkheadPermit`]'s drop, so a policy
//! change can resize the bulkhead in place: shrinking removes free slots at
//! once and records the rest as `debt`, which returning permits pay off
//! instead of going back. Calls already running are never interrupted.

use crate::model::policy::Bulkhead as BulkheadConfig;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Semaphore, TryAcquireError};

/// The call was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bulkhead full")]
pub struct BulkheadFull {
    /// It waited in the queue for `queueTimeout` (rather than finding the
    /// queue full or absent).
    pub timed_out: bool,
}

pub use crate::model::state::BulkheadView;

#[derive(Debug)]
pub struct Bulkhead {
    /// Free slots.
    sem: Semaphore,
    /// Slots taken and not yet given back.
    in_flight: AtomicU32,
    /// Callers waiting for a slot now.
    queued: AtomicU32,
    /// Limits, atomics so a policy change applies in place.
    max_concurrent: AtomicU32,
    max_queued: AtomicU32,
    queue_timeout_ns: AtomicU64,
    /// Slots still to remove after a shrink: a returning permit pays one
    /// unit instead of going back to the semaphore. Invariant (between
    /// operations): free + in_flight - debt == max_concurrent.
    debt: AtomicU32,
    /// Serializes reconfigurations (rare); never taken on the call path.
    resizing: Mutex<()>,
}

/// One slot, given back on drop.
#[derive(Debug)]
#[must_use = "the slot is given back when the permit is dropped"]
pub struct BulkheadPermit {
    bulkhead: Arc<Bulkhead>,
}

/// Counts a caller as queued until dropped (also when its wait is
/// cancelled).
struct Queued<'a>(&'a AtomicU32);

// === impl Bulkhead ===

impl Bulkhead {
    pub fn new(cfg: BulkheadConfig) -> Self {
        Bulkhead {
            sem: Semaphore::new(slots(cfg.max_concurrent)),
            in_flight: AtomicU32::new(0),
            queued: AtomicU32::new(0),
            max_concurrent: AtomicU32::new(cfg.max_concurrent),
            max_queued: AtomicU32::new(cfg.max_queued),
            queue_timeout_ns: AtomicU64::new(nanos(cfg.queue_timeout)),
            debt: AtomicU32::new(0),
            resizing: Mutex::new(()),
        }
    }

    /// A free slot at once; else a place in the queue and a wait of up to
    /// `queueTimeout`; else [`BulkheadFull`] at once.
    pub async fn acquire(self: &Arc<Self>) -> Result<BulkheadPermit, BulkheadFull> {
        match self.sem.try_acquire() {
            Ok(p) => {
                p.forget();
                return Ok(self.admit());
            }
            Err(TryAcquireError::NoPermits) => {}
            Err(TryAcquireError::Closed) => return Err(BulkheadFull { timed_out: false }),
        }
        let max_queued = self.max_queued.load(Ordering::Relaxed);
        let entered = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |q| {
                (q < max_queued).then_some(q + 1)
            });
        if entered.is_err() {
            return Err(BulkheadFull { timed_out: false });
        }
        let _queued = Queued(&self.queued);
        let wait = Duration::from_nanos(self.queue_timeout_ns.load(Ordering::Relaxed));
        match tokio::time::timeout(wait, self.sem.acquire()).await {
            Ok(Ok(p)) => {
                p.forget();
                Ok(self.admit())
            }
            Ok(Err(_closed)) => Err(BulkheadFull { timed_out: false }),
            Err(_elapsed) => Err(BulkheadFull { timed_out: true }),
        }
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn queued(&self) -> u32 {
        self.queued.load(Ordering::Relaxed)
    }

    pub fn view(&self) -> BulkheadView {
        BulkheadView {
            in_flight: self.in_flight(),
            queued: self.queued(),
            max_concurrent: self.max_concurrent.load(Ordering::Relaxed),
            max_queued: self.max_queued.load(Ordering::Relaxed),
        }
    }

    /// Applies a changed policy in place. Growing frees slots at once;
    /// shrinking takes free slots at once and the rest as calls finish.
    /// Waiters already queued keep waiting under their original timeout.
    pub fn reconfigure(&self, cfg: BulkheadConfig) {
        let _one_at_a_time = self.resizing.lock().unwrap_or_else(|e| e.into_inner());
        self.max_queued.store(cfg.max_queued, Ordering::Relaxed);
        self.queue_timeout_ns
            .store(nanos(cfg.queue_timeout), Ordering::Relaxed);
        let old = self
            .max_concurrent
            .swap(cfg.max_concurrent, Ordering::AcqRel);
        let new = cfg.max_concurrent;
        if new > old {
            let grow = new - old;
            let owed = self.pay_debt(grow);
            self.sem.add_permits(slots(grow - owed));
        } else if new < old {
            let shrink = old - new;
            let taken = u32::try_from(self.sem.forget_permits(slots(shrink))).unwrap_or(shrink);
            self.debt.fetch_add(shrink - taken, Ordering::AcqRel);
            // A permit returned between the two steps went to the
            // semaphore while debt was owed: take it back now.
            let owed = self.debt.load(Ordering::Acquire);
            if owed > 0 {
                let taken = u32::try_from(self.sem.forget_permits(slots(owed))).unwrap_or(0);
                let paid = self.pay_debt(taken);
                self.sem.add_permits(slots(taken - paid));
            }
        }
    }

    /// Lowers the debt by up to `n`; returns how much it went down.
    fn pay_debt(&self, n: u32) -> u32 {
        let before = self
            .debt
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
                Some(d.saturating_sub(n))
            })
            .unwrap_or(0);
        before.min(n)
    }

    fn admit(self: &Arc<Self>) -> BulkheadPermit {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        BulkheadPermit {
            bulkhead: self.clone(),
        }
    }
}

/// Semaphore permits for `n` slots (tokio caps a semaphore's size).
fn slots(n: u32) -> usize {
    usize::try_from(n)
        .unwrap_or(usize::MAX)
        .min(Semaphore::MAX_PERMITS)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

// === impl BulkheadPermit ===

impl Drop for BulkheadPermit {
    fn drop(&mut self) {
        let b = &self.bulkhead;
        b.in_flight.fetch_sub(1, Ordering::Relaxed);
        // Checked with a plain load first: debt is almost always zero.
        if b.debt.load(Ordering::Acquire) == 0 || b.pay_debt(1) == 0 {
            b.sem.add_permits(1);
        }
    }
}

// === impl Queued ===

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests;
