//! End-to-end resilience (issue 3): the policy stack in network namespaces,
//! against a fault-injecting upstream (`tests/support/fault_server.py`) and
//! an unmodified client (python's `http.client`, `tests/support/load.py`).
//!
//! Each test is one story: pods, a `kind: ServicePolicy` applied with
//! `mesh-ctl apply -f` (then waited for in the client proxy's /state),
//! faults switched at run time over HTTP, calls, and what both the client
//! and the upstream's own counters saw. Measured figures are printed.
//! Breaker and fallback stories are here; bulkheads and live changes in
//! `e2e_resilience/shedding.rs`; retries and outlier ejection in
//! `e2e_resilience/endpoints.rs`. Needs root, `ip` and `iptables`; skips
//! otherwise.
//!
//! Run: `cargo test --test e2e_resilience -- --nocapture --test-threads 1`
//! Time: pod setup is ~1 s per story (all seven setups: 6 s measured); the
//! stories' own waits add ~15 s (openFor 2 s, ejectFor 2 s, 2 s slow calls,
//! a 4 s load): ~25-30 s expected for the file, well under 90 s.

// Test code: real processes on the wall clock, and unwrap() as assertion.
#![allow(clippy::disallowed_types, clippy::unwrap_used)]

#[allow(dead_code, unused_imports)] // each test binary uses a different part of the harness
mod support;

#[path = "e2e_resilience/endpoints.rs"]
mod endpoints;
#[path = "e2e_resilience/shedding.rs"]
mod shedding;

use std::time::{Duration, Instant};
use support::fault::{median_ms, percentile_ms, Call, Fault};
use support::resilience::{LoadOpts, Mesh};
use support::{secs, wait_for};

/// Fast failures must be fast: no upstream, no waiting.
const FAST_MS: f64 = 100.0;

/// (status, x-mesh-error) of a call, for compact assertions.
fn outcome(c: &Call) -> (u16, Option<&str>) {
    (c.status, c.mesh_error.as_deref())
}

/// At 100 % failures the breaker opens after minRequests calls; then calls
/// fail fast without reaching the upstream; after openFor one probe goes
/// through and, the upstream healed, the breaker closes.
fn breaker_opens_fails_fast_then_half_opens_and_closes() {
    let mesh = Mesh::start("rbk");
    let flaky = mesh.upstream("flaky", "flaky-1", &Fault::default());
    mesh.apply_ok(
        "kind: ServicePolicy
service: flaky
retries: { attempts: 0 }
breaker: { window: 10s, minRequests: 10, failureRate: 50, openFor: 2s, halfOpenProbes: 1 }
outlier: { consecutiveFailures: 100000 }
",
    );
    let url = "http://flaky.mesh/items";
    // No call before the fault: it would count in the breaker's window.
    flaky.set(&Fault::failing(500));

    // Ten upstream failures: the 500s come from the app itself.
    let tripping = mesh.load(url, &LoadOpts::sequential(10));
    let opened = Instant::now();
    for c in &tripping.results {
        assert_eq!(outcome(c), (500, None), "call {}: {c:?}", c.i);
    }
    let state = mesh.wait_breaker("flaky", "open", secs(2));
    println!("breaker open after 10 failed calls: {}", state["breaker"]);

    // Open: 503 breaker-open at once, and the app sees nothing.
    let fast = mesh.load(url, &LoadOpts::sequential(50));
    for c in &fast.results {
        assert_eq!(
            outcome(c),
            (503, Some("breaker-open")),
            "call {}: {c:?}",
            c.i
        );
    }
    assert_eq!(flaky.stats().requests, 10, "open breaker let calls through");
    let (p50, p99) = (median_ms(&fast.results), percentile_ms(&fast.results, 99.0));
    println!("breaker-open fast fail over 50 calls: p50 {p50:.2} ms, p99 {p99:.2} ms");
    assert!(p50 < FAST_MS, "fast-fail median {p50:.1} ms");
    assert!(
        opened.elapsed() < secs(2),
        "the fast calls took longer than openFor: the story no longer holds"
    );

    // Healed: after openFor a probe goes through and closes the breaker.
    flaky.set(&Fault::healthy());
    let mut meanwhile = 0;
    let through = wait_for("a probe to pass after openFor", secs(6), || {
        let c = mesh.call(url);
        if c.status == 200 {
            return Some(Instant::now());
        }
        assert_eq!(outcome(&c), (503, Some("breaker-open")), "{c:?}");
        meanwhile += 1;
        None
    });
    let waited = through - opened;
    println!(
        "first call through {} ms after opening (openFor 2s); {meanwhile} fast fails meanwhile",
        waited.as_millis()
    );
    assert!(
        waited >= Duration::from_millis(1900),
        "half-open after {waited:?}"
    );
    mesh.wait_breaker("flaky", "closed", secs(2));
    let after = mesh.load(url, &LoadOpts::sequential(20));
    for c in &after.results {
        assert_eq!((c.status, c.body.as_str()), (200, "flaky-1"), "{c:?}");
    }
    assert_eq!(
        flaky.stats().requests,
        10 + 1 + 20,
        "10 failures, 1 probe, 20 calls"
    );
}

/// Calls slower than slowCall.duration count as slow; at slowCall.rate
/// over minRequests calls the breaker opens although every call succeeded.
fn slow_calls_open_the_breaker() {
    let mesh = Mesh::start("rsl");
    let sluggish = mesh.upstream("sluggish", "sluggish-1", &Fault::default());
    mesh.apply_ok(
        "kind: ServicePolicy
service: sluggish
timeouts: { request: 5s }
retries: { attempts: 0 }
breaker: { window: 10s, minRequests: 4, failureRate: 100, slowCall: { duration: 1s, rate: 50 }, openFor: 30s }
outlier: { consecutiveFailures: 100000 }
",
    );
    sluggish.set(&Fault::latency_ms(2000));
    sluggish.reset_stats();
    let url = "http://sluggish.mesh/report";
    let slow = mesh.load(url, &LoadOpts::concurrent(4, 4));
    for c in &slow.results {
        assert_eq!(outcome(c), (200, None), "a slow call still succeeds: {c:?}");
        assert!(c.ms >= 2000.0, "call {} took {:.0} ms", c.i, c.ms);
    }
    let state = mesh.wait_breaker("sluggish", "open", secs(2));
    println!(
        "4 calls of {:.0} ms (slowCall 1s) opened the breaker: {}",
        median_ms(&slow.results),
        state["breaker"]
    );
    let c = mesh.call(url);
    assert_eq!(outcome(&c), (503, Some("breaker-open")), "{c:?}");
    assert!(c.ms < FAST_MS, "fast fail took {:.1} ms", c.ms);
    assert_eq!(
        sluggish.stats().requests,
        4,
        "only the slow calls reached it"
    );
}

/// With the breaker open, the static fallback answers instead of a 503.
fn open_breaker_answers_with_the_static_fallback() {
    let mesh = Mesh::start("rfb");
    let catalog = mesh.upstream("catalog", "catalog-1", &Fault::failing(500));
    mesh.apply_ok(
        r#"kind: ServicePolicy
service: catalog
retries: { attempts: 0 }
breaker: { window: 10s, minRequests: 5, failureRate: 50, openFor: 30s }
outlier: { consecutiveFailures: 100000 }
fallback: { status: 200, headers: { content-type: application/json }, body: '{"items":[]}' }
"#,
    );
    let url = "http://catalog.mesh/items";
    // The failures that trip it (answered by the app's 500 or by a fallback
    // for a failed call: either is fine here).
    let tripping = mesh.load(url, &LoadOpts::sequential(5));
    println!(
        "tripping calls: statuses {:?}, fallbacks {:?}",
        tripping.statuses(),
        tripping
            .results
            .iter()
            .map(|c| c.fallback.clone())
            .collect::<Vec<_>>()
    );
    mesh.wait_breaker("catalog", "open", secs(2));
    let reached = catalog.stats().requests;
    assert_eq!(reached, 5, "each tripping call reached the app once");

    let answered = mesh.load(url, &LoadOpts::sequential(20));
    for c in &answered.results {
        assert_eq!(
            (c.status, c.body.as_str(), c.fallback.as_deref()),
            (200, r#"{"items":[]}"#, Some("breaker-open")),
            "{c:?}"
        );
        assert_eq!(c.mesh_error, None, "a fallback is not an error: {c:?}");
    }
    assert_eq!(
        catalog.stats().requests,
        reached,
        "fallbacks never reach the app"
    );
    println!(
        "fallback while open: p50 {:.2} ms over 20 calls",
        median_ms(&answered.results)
    );
}

fn main() -> std::process::ExitCode {
    use support::stories::Need::Pods;
    support::stories::run(
        "e2e_resilience",
        stories![
            [Pods] => breaker_opens_fails_fast_then_half_opens_and_closes,
            [Pods] => slow_calls_open_the_breaker,
            [Pods] => open_breaker_answers_with_the_static_fallback,
            [Pods] => endpoints::retries_hide_resets_spare_received_posts_and_keep_to_their_budget,
            [Pods] => endpoints::outlier_is_ejected_and_returns_after_eject_for,
            [Pods] => shedding::full_bulkhead_rejects_at_once_and_spares_other_services,
            [Pods] => shedding::a_tighter_bulkhead_applies_live_without_resets,
        ],
    )
}
