//! Circuit breaker per destination service, Resilience4j style.
//!
//! Closed: every call goes through and its outcome lands in a time-based
//! sliding window (1 s buckets). The breaker opens when the window holds at
//! least `minRequests` calls and the failure or slow-call percentage reaches
//! its threshold, or at once after `consecutiveFailures` failures in a row.
//! Open: calls are rejected until `openFor` has passed, then the next call
//! half-opens it. HalfOpen: at most `halfOpenProbes` probe calls run at a
//! time; once that many succeed it closes (with a fresh window), and any
//! failed or slow probe opens it again.
//!
//! The hot path is cheap: admitting a call while closed, and rejecting one
//! while open, read atomics only; recording an outcome takes a short,
//! uncontended-in-practice lock. Only outcomes passed to
//! [`BreakerPermit::record`] count, so the mesh's own rejections (which
//! never record) never trip the breaker. Every transition bumps a
//! generation; an outcome from a call admitted under an older generation is
//! ignored, since it was admitted under different rules.

use crate::model::policy::Breaker as BreakerConfig;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

use super::window::Window;

mod state;

pub use state::{BreakerOpen, BreakerState, BreakerView, Outcome, Transition, TransitionCounts};

/// Called after every state change (outside the breaker's lock), e.g. to
/// log and count it.
pub type TransitionHook = Arc<dyn Fn(Transition) + Send + Sync>;

pub struct CircuitBreaker {
    /// `(generation << 2) | state`, read lock-free on every call. Written
    /// only under `inner`, so the lock holder's view is authoritative.
    word: AtomicU64,
    /// While open: when it may half-open, in ns since `epoch`. Atomic so
    /// rejecting a call never takes the lock. Stored before `word`.
    open_until: AtomicU64,
    /// Time zero for `open_until` and the window.
    epoch: Instant,
    inner: Mutex<Inner>,
    /// Counters for metrics: to open, to half-open, to closed.
    transitions: [AtomicU64; 3],
    /// Optional observer of transitions (logging, metrics by service).
    hook: Option<TransitionHook>,
}

/// What changes together, under the lock.
struct Inner {
    /// Behind the lock so a policy change applies in place.
    cfg: BreakerConfig,
    /// Per second: [calls, failures, slow calls].
    window: Window<3>,
    consecutive_failures: u32,
    /// Probes admitted while half-open and not yet finished.
    probes_in_flight: u32,
    /// Probes that succeeded in this half-open period.
    probes_succeeded: u32,
}

/// Admission of one call. Pass its outcome to [`record`](Self::record);
/// dropping it unrecorded counts nothing (and frees a half-open probe slot).
#[must_use = "record the call's outcome, or drop the permit to not count it"]
pub struct BreakerPermit {
    breaker: Arc<CircuitBreaker>,
    /// The generation it was admitted under.
    generation: u64,
    /// Admitted as a half-open probe.
    probe: bool,
    recorded: bool,
}

// === impl CircuitBreaker ===

impl CircuitBreaker {
    pub fn new(cfg: BreakerConfig) -> Self {
        Self::build(cfg, None)
    }

    /// A breaker that calls `hook` after each transition.
    pub fn with_hook(cfg: BreakerConfig, hook: TransitionHook) -> Self {
        Self::build(cfg, Some(hook))
    }

    fn build(cfg: BreakerConfig, hook: Option<TransitionHook>) -> Self {
        let epoch = Instant::now();
        CircuitBreaker {
            word: AtomicU64::new(BreakerState::Closed.bits()),
            open_until: AtomicU64::new(0),
            epoch,
            inner: Mutex::new(Inner {
                window: Window::new(cfg.window, epoch),
                cfg,
                consecutive_failures: 0,
                probes_in_flight: 0,
                probes_succeeded: 0,
            }),
            transitions: Default::default(),
            hook,
        }
    }

    /// Applies a changed policy in place, keeping the state. A different
    /// window length starts a fresh window.
    pub fn reconfigure(&self, cfg: BreakerConfig) {
        let mut inner = self.lock();
        if inner.cfg.window != cfg.window {
            inner.window = Window::new(cfg.window, self.epoch);
        }
        inner.cfg = cfg;
    }

    /// Admits a call, or says why not.
    pub fn try_acquire(self: &Arc<Self>) -> Result<BreakerPermit, BreakerOpen> {
        let word = self.word.load(Ordering::Acquire);
        match BreakerState::from_word(word) {
            BreakerState::Closed => return Ok(self.permit(word >> 2, false)),
            BreakerState::Open
                if self.ns(Instant::now()) < self.open_until.load(Ordering::Acquire) =>
            {
                return Err(BreakerOpen {
                    state: BreakerState::Open,
                })
            }
            _ => {}
        }
        let mut fired = None;
        let result = {
            let mut inner = self.lock();
            let mut word = self.word.load(Ordering::Acquire);
            if BreakerState::from_word(word) == BreakerState::Open {
                if self.ns(Instant::now()) < self.open_until.load(Ordering::Acquire) {
                    return Err(BreakerOpen {
                        state: BreakerState::Open,
                    });
                }
                fired = Some(self.set_state(&mut inner, BreakerState::HalfOpen));
                word = self.word.load(Ordering::Acquire);
            }
            match BreakerState::from_word(word) {
                BreakerState::Closed => Ok(self.permit(word >> 2, false)),
                _ if inner.probes_in_flight + inner.probes_succeeded < probes(&inner.cfg) => {
                    inner.probes_in_flight += 1;
                    Ok(self.permit(word >> 2, true))
                }
                state => Err(BreakerOpen { state }),
            }
        };
        self.fire(fired);
        result
    }

    pub fn state(&self) -> BreakerState {
        BreakerState::from_word(self.word.load(Ordering::Acquire))
    }

    /// State and window counts as of now.
    pub fn view(&self) -> BreakerView {
        let mut inner = self.lock();
        let [calls, failures, slow] = inner.window.totals(Instant::now());
        let pct = |n: u64| {
            if calls == 0 {
                0.0
            } else {
                n as f64 * 100.0 / calls as f64
            }
        };
        BreakerView {
            state: self.state(),
            calls,
            failures,
            slow,
            failure_rate: pct(failures),
            slow_rate: pct(slow),
        }
    }

    pub fn transitions(&self) -> TransitionCounts {
        let get = |i: usize| self.transitions[i].load(Ordering::Relaxed);
        TransitionCounts {
            to_open: get(0),
            to_half_open: get(1),
            to_closed: get(2),
        }
    }

    fn permit(self: &Arc<Self>, generation: u64, probe: bool) -> BreakerPermit {
        BreakerPermit {
            breaker: self.clone(),
            generation,
            probe,
            recorded: false,
        }
    }

    fn on_outcome(&self, generation: u64, outcome: Outcome) {
        let now = Instant::now();
        let fired = {
            let mut inner = self.lock();
            let word = self.word.load(Ordering::Acquire);
            if word >> 2 != generation {
                return;
            }
            let slow = outcome.elapsed >= inner.cfg.slow_call.duration;
            match BreakerState::from_word(word) {
                BreakerState::Closed => {
                    inner
                        .window
                        .add(now, [1, u64::from(outcome.failed), u64::from(slow)]);
                    inner.consecutive_failures = if outcome.failed {
                        inner.consecutive_failures.saturating_add(1)
                    } else {
                        0
                    };
                    if should_trip(&mut inner, now) {
                        Some(self.set_state(&mut inner, BreakerState::Open))
                    } else {
                        None
                    }
                }
                BreakerState::HalfOpen => {
                    inner.probes_in_flight = inner.probes_in_flight.saturating_sub(1);
                    if outcome.failed || slow {
                        Some(self.set_state(&mut inner, BreakerState::Open))
                    } else {
                        inner.probes_succeeded += 1;
                        if inner.probes_succeeded >= probes(&inner.cfg) {
                            Some(self.set_state(&mut inner, BreakerState::Closed))
                        } else {
                            None
                        }
                    }
                }
                // Nothing is admitted under an open generation.
                BreakerState::Open => None,
            }
        };
        self.fire(fired);
    }

    /// A probe ended without an outcome: its slot is free again.
    fn release_probe(&self, generation: u64) {
        let mut inner = self.lock();
        if self.word.load(Ordering::Acquire) >> 2 == generation {
            inner.probes_in_flight = inner.probes_in_flight.saturating_sub(1);
        }
    }

    /// Moves to `to` under the lock; returns the transition to report once
    /// the lock is released.
    fn set_state(&self, inner: &mut Inner, to: BreakerState) -> Transition {
        let word = self.word.load(Ordering::Acquire);
        let from = BreakerState::from_word(word);
        inner.probes_in_flight = 0;
        inner.probes_succeeded = 0;
        inner.consecutive_failures = 0;
        match to {
            BreakerState::Open => {
                let until = self
                    .ns(Instant::now())
                    .saturating_add(nanos(inner.cfg.open_for));
                self.open_until.store(until, Ordering::Release);
            }
            BreakerState::Closed => inner.window.clear(),
            BreakerState::HalfOpen => {}
        }
        let generation = (word >> 2).wrapping_add(1);
        self.word
            .store(generation << 2 | to.bits(), Ordering::Release);
        let slot = match to {
            BreakerState::Open => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Closed => 2,
        };
        self.transitions[slot].fetch_add(1, Ordering::Relaxed);
        Transition { from, to }
    }

    fn fire(&self, transition: Option<Transition>) {
        if let (Some(t), Some(hook)) = (transition, &self.hook) {
            hook(t);
        }
    }

    fn ns(&self, now: Instant) -> u64 {
        nanos(now.saturating_duration_since(self.epoch))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Critical sections never panic midway; a poisoned lock still
        // holds consistent counts.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl std::fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("state", &self.state())
            .field("transitions", &self.transitions())
            .finish()
    }
}

/// The trip rule, judged after each closed-state outcome.
fn should_trip(inner: &mut Inner, now: Instant) -> bool {
    let cfg = inner.cfg;
    if cfg.consecutive_failures > 0 && inner.consecutive_failures >= cfg.consecutive_failures {
        return true;
    }
    let [calls, failures, slow] = inner.window.totals(now);
    if calls == 0 || calls < u64::from(cfg.min_requests) {
        return false;
    }
    // Integer percentages: `failures / calls >= rate / 100`, exactly. A
    // rate of 0 turns that rule off.
    let reached = |n: u64, rate: u32| rate > 0 && n * 100 >= u64::from(rate) * calls;
    reached(failures, cfg.failure_rate) || reached(slow, cfg.slow_call.rate)
}

/// Half-open probe slots; a policy of 0 still lets one probe through, or
/// the breaker could never close.
fn probes(cfg: &BreakerConfig) -> u32 {
    cfg.half_open_probes.max(1)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

// === impl BreakerPermit ===

impl BreakerPermit {
    /// Counts the call's outcome.
    pub fn record(mut self, outcome: Outcome) {
        self.recorded = true;
        self.breaker.on_outcome(self.generation, outcome);
    }

    /// Admitted as a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

impl Drop for BreakerPermit {
    fn drop(&mut self) {
        if self.probe && !self.recorded {
            self.breaker.release_probe(self.generation);
        }
    }
}

impl std::fmt::Debug for BreakerPermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BreakerPermit")
            .field("generation", &self.generation)
            .field("probe", &self.probe)
            .finish()
    }
}

#[cfg(test)]
mod tests;
