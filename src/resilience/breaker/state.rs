//! The breaker's states and the values it hands out: outcomes, errors,
//! views and transition counts.

use serde::Serialize;
use std::time::Duration;

pub use crate::model::state::{BreakerState, BreakerView};

/// One state change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: BreakerState,
    pub to: BreakerState,
}

/// How one admitted call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// An upstream failure (connect failure, reset, 5xx as classified by
    /// the caller).
    pub failed: bool,
    /// How long the call took; at least `slowCall.duration` is slow.
    pub elapsed: Duration,
}

/// The call was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker is {state}")]
pub struct BreakerOpen {
    /// Open, or half-open with every probe slot taken.
    pub state: BreakerState,
}

/// Transitions since the breaker was made, by target state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TransitionCounts {
    pub to_open: u64,
    pub to_half_open: u64,
    pub to_closed: u64,
}

// === impl BreakerState ===

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }

    /// The `mesh_breaker_state` gauge value: 0 closed, 1 open, 2 half-open.
    pub fn as_gauge(self) -> i64 {
        self.bits() as i64
    }

    pub(super) fn bits(self) -> u64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }

    pub(super) fn from_word(word: u64) -> Self {
        match word & 3 {
            1 => BreakerState::Open,
            2 => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }
}

impl std::fmt::Display for BreakerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
