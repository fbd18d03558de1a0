//! Helpers for the end-to-end tests: pods as network namespaces
//! (`netns`), processes with logs and timeouts (`proc`), the binaries under
//! test (`bins`), the fault-injecting upstream and load generator
//! (`fault`), the resilience scenarios' cast (`resilience`), the protocol
//! scenarios' servers and peers (`protocols`, `postgres`, `peers/`), the
//! story harness that skips what a machine cannot run (`stories`), and
//! bounded polling.
//!
//! Tests wait for state by polling with a deadline, never by sleeping.

pub mod bins;
pub mod fault;
pub mod loopback;
pub mod mesh;
pub mod netns;
pub mod postgres;
pub mod proc;
pub mod protocols;
pub mod resilience;
pub mod stories;

pub use netns::{Net, Pod};
pub use proc::Proc;

use std::path::Path;
use std::time::{Duration, Instant};

/// How long `poll` rests between attempts.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Calls `f` until it returns `Some` or `within` has passed.
pub fn poll<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// `poll` that panics naming `what` when the deadline passes.
pub fn wait_for<T>(what: &str, within: Duration, f: impl FnMut() -> Option<T>) -> T {
    poll(within, f).unwrap_or_else(|| panic!("timed out after {within:?} waiting for {what}"))
}

/// Checks `invariant` (it panics when broken) every poll interval for
/// `window`: for what must stay true while time passes (no instance
/// evicted over three lease terms), where no state marks the end.
pub fn holds_for(window: Duration, mut invariant: impl FnMut()) {
    let _never = poll(window, || {
        invariant();
        None::<()>
    });
}

/// Milliseconds from `from` to `to`, for figures printed about events
/// known to be in that order (saturates at zero).
pub fn ms_between(from: Instant, to: Instant) -> u128 {
    to.saturating_duration_since(from).as_millis()
}

/// Milliseconds from `from` to `to`, negative when `to` came first: for
/// observations whose order a test must check rather than assume.
pub fn ms_signed(from: Instant, to: Instant) -> i128 {
    match to.checked_duration_since(from) {
        Some(d) => d.as_millis() as i128,
        None => -(from.duration_since(to).as_millis() as i128),
    }
}

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A path as a command-line argument.
pub fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

pub fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Splits a command line on whitespace, so argument lists read as they
/// would be typed (no quoting: use a slice for arguments with spaces).
pub fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}
