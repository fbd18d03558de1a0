//! Load shedding stories: a full bulkhead rejects at once without slowing
//! other services, and a tighter bulkhead applied under load takes effect
//! within a second without breaking the calls already in flight.

use crate::support::fault::{median_ms, percentile_ms, Fault, Stats};
use crate::support::resilience::{LoadOpts, Mesh, PROPAGATION};
use crate::support::{secs, wait_for};
use crate::{outcome, FAST_MS};
use std::time::Duration;

/// A healthy service's latency may grow this much while another is full.
const NEIGHBOUR_SLACK_MS: f64 = 20.0;

/// The upstream hangs and holds maxConcurrent calls: the next one gets 503
/// `bulkhead-full` at once, and calls to `other` keep their latency.
pub fn full_bulkhead_rejects_at_once_and_spares_other_services() {
    let mesh = Mesh::start("rbh");
    let stuck = mesh.upstream("stuck", "stuck-1", &Fault::default());
    let _other = mesh.upstream("other", "other-1", &Fault::default());
    mesh.apply_ok(
        "kind: ServicePolicy
service: stuck
timeouts: { request: 30s }
retries: { attempts: 0 }
bulkhead: { maxConcurrent: 2, maxQueued: 0 }
breaker: { minRequests: 100000 }
outlier: { consecutiveFailures: 100000 }
",
    );
    mesh.wait_service("stuck's bulkhead of 2", PROPAGATION, |s| {
        s["name"] == "stuck" && s["bulkhead"]["max_concurrent"] == 2
    });
    let other_url = "http://other.mesh/ping";
    let before = mesh.load(other_url, &LoadOpts::sequential(20));
    assert!(
        before.results.iter().all(|c| c.status == 200),
        "{:?}",
        before.statuses()
    );

    stuck.set(&Fault::hang(true));
    stuck.reset_stats();
    let url = "http://stuck.mesh/work";
    let holders = LoadOpts {
        timeout: secs(30),
        ..LoadOpts::concurrent(2, 2)
    };
    let (held, rejected, during) = std::thread::scope(|s| {
        let held = s.spawn(|| mesh.load(url, &holders));
        wait_for("2 hung calls inside the app", secs(5), || {
            (stuck.stats().in_flight == 2).then_some(())
        });
        mesh.wait_service("the bulkhead to show 2 in flight", secs(2), |s| {
            s["name"] == "stuck" && s["bulkhead"]["in_flight"] == 2
        });
        let rejected = mesh.load(url, &LoadOpts::sequential(10));
        let during = mesh.load(other_url, &LoadOpts::sequential(20));
        let stats: Stats = stuck.stats();
        assert_eq!(
            stats.requests, 2,
            "a rejected call reached the app: {stats:?}"
        );
        stuck.set(&Fault::hang(false));
        (held.join().expect("holding calls"), rejected, during)
    });

    for c in &rejected.results {
        assert_eq!(outcome(c), (503, Some("bulkhead-full")), "{c:?}");
        assert!(c.ms < FAST_MS, "rejection {} took {:.1} ms", c.i, c.ms);
    }
    for c in &held.results {
        assert_eq!(
            (c.status, c.body.as_str()),
            (200, "stuck-1"),
            "held call: {c:?}"
        );
    }
    assert!(
        during.results.iter().all(|c| c.status == 200),
        "{:?}",
        during.statuses()
    );
    let (base, full) = (median_ms(&before.results), median_ms(&during.results));
    println!(
        "bulkhead-full fast fail: p50 {:.2} ms, p99 {:.2} ms; `other` p50 {base:.2} ms before, \
         {full:.2} ms while `stuck` was full",
        median_ms(&rejected.results),
        percentile_ms(&rejected.results, 99.0),
    );
    assert!(
        full <= base * 2.0 + NEIGHBOUR_SLACK_MS,
        "`other` slowed from {base:.1} to {full:.1} ms"
    );
}

/// Under a steady load, `maxConcurrent: 1` applied live: rejections start
/// within a second, and no call fails at the transport level (no reset).
pub fn a_tighter_bulkhead_applies_live_without_resets() {
    let mesh = Mesh::start("rlv");
    let steady = mesh.upstream("steady", "steady-1", &Fault::latency_ms(200));
    let policy = |max: u32| {
        format!(
            "kind: ServicePolicy
service: steady
retries: {{ attempts: 0 }}
bulkhead: {{ maxConcurrent: {max}, maxQueued: 0 }}
breaker: {{ minRequests: 100000 }}
outlier: {{ consecutiveFailures: 100000 }}
"
        )
    };
    mesh.apply_ok(&policy(100));
    let load = LoadOpts {
        requests: 1000,
        concurrency: 4,
        duration: secs(4),
        interval: Duration::from_millis(50),
        ..LoadOpts::sequential(0)
    };
    let url = "http://steady.mesh/tick";
    let (run, applied) = std::thread::scope(|s| {
        let running = s.spawn(|| mesh.load(url, &load));
        wait_for("the load to be under way", secs(5), || {
            (steady.stats().requests >= 8).then_some(())
        });
        let applied = mesh.apply_ok(&policy(1));
        mesh.wait_service("a bulkhead of 1 at the client", PROPAGATION, |s| {
            s["name"] == "steady" && s["bulkhead"]["max_concurrent"] == 1
        });
        (running.join().expect("load thread"), applied)
    });

    let broken = run.transport_errors();
    assert!(
        broken.is_empty(),
        "calls without an HTTP answer: {broken:?}"
    );
    for c in &run.results {
        let ok = outcome(c) == (200, None) || outcome(c) == (503, Some("bulkhead-full"));
        assert!(ok, "unexpected answer: {c:?}");
    }
    // 4 threads for 4 s, a call each 200 ms plus 50 ms: dozens of calls.
    assert!(run.results.len() >= 20, "only {} calls", run.results.len());
    // Admitted by the old bulkhead before the change: never rejected by
    // the new one. (That a request in flight keeps the rest of its policy,
    // its timeout say, is loopback_contract's in-flight story.)
    let old: Vec<_> = run
        .results
        .iter()
        .filter(|c| c.start < applied.started_ms)
        .collect();
    for c in &old {
        assert_eq!(
            outcome(c),
            (200, None),
            "admitted before the change, then rejected: {c:?}"
        );
    }
    let first = run
        .with_mesh_error("bulkhead-full")
        .into_iter()
        .map(|c| c.start + c.ms)
        .reduce(f64::min)
        .expect("no call was ever rejected by the tighter bulkhead");
    let took = first - applied.stored_ms;
    println!(
        "live change: {} calls ({:?}); client had it {} ms after apply returned; first \
         bulkhead-full {took:.0} ms after; {} calls started before the change all 200",
        run.results.len(),
        run.statuses(),
        applied.propagated.as_millis(),
        old.len()
    );
    assert!(
        took <= 1000.0,
        "first rejection {took:.0} ms after the change"
    );
}
