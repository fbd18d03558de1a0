//! Stories about single bad instances: retries that hide a resetting
//! instance (but never repeat a POST it received, and stay within their
//! budget), and outlier ejection of an instance that answers 500.

use crate::outcome;
use crate::support::fault::{Fault, Load};
use crate::support::resilience::{endpoint_state, epoch_ms, LoadOpts, Mesh};
use crate::support::secs;

const RETRY_POLICIES: &str = "kind: ServicePolicy
service: pair
loadBalancer: round-robin
retries: { attempts: 2, on: [connect-failure, reset, gateway-error], budget: { percent: 100, minPerSecond: 100 } }
breaker: { minRequests: 100000 }
outlier: { consecutiveFailures: 100000 }
---
kind: ServicePolicy
service: solo
retries: { attempts: 2, on: [connect-failure, reset, gateway-error], budget: { percent: 100, minPerSecond: 10 } }
breaker: { minRequests: 100000 }
outlier: { consecutiveFailures: 100000 }
---
kind: ServicePolicy
service: down
retries: { attempts: 2, on: [gateway-error], budget: { percent: 20, minPerSecond: 1 } }
breaker: { minRequests: 100000 }
outlier: { consecutiveFailures: 100000 }
";

/// `pair`: one good and one resetting instance. `solo`: only a resetting
/// instance (so a POST surely lands on it). `down`: two instances that
/// always answer 503.
pub fn retries_hide_resets_spare_received_posts_and_keep_to_their_budget() {
    let mesh = Mesh::start("rrt");
    let _good = mesh.upstream("pair", "pair-ok", &Fault::default());
    let resetting = mesh.upstream("pair", "pair-reset", &Fault::resetting());
    let solo = mesh.upstream("solo", "solo-reset", &Fault::resetting());
    let down = [
        mesh.upstream("down", "down-1", &Fault::failing(503)),
        mesh.upstream("down", "down-2", &Fault::failing(503)),
    ];
    mesh.apply_ok(RETRY_POLICIES);

    // GETs: every reset is retried on the other instance.
    let gets = mesh.load("http://pair.mesh/items", &LoadOpts::concurrent(100, 4));
    assert!(
        run_ok(&gets),
        "{:?} {:?}",
        gets.statuses(),
        gets.transport_errors()
    );
    assert_eq!(
        gets.bodies().get("pair-ok"),
        Some(&100),
        "{:?}",
        gets.bodies()
    );
    let resets = resetting.stats();
    assert!(resets.requests > 0, "round-robin never tried pair-reset");
    assert_eq!(
        resets.outcomes.get("reset"),
        Some(&resets.requests),
        "{resets:?}"
    );
    let pair = mesh.service("pair").expect("pair in /state");
    println!(
        "100 GETs to pair: 0 errors; pair-reset reset {} of them; client retries {}",
        resets.requests, pair["retries"]
    );
    assert_eq!(
        pair["retries"]["retried"], resets.requests,
        "one retry per reset"
    );

    // A POST the app received is not repeated; a GET is.
    let post = LoadOpts {
        method: "POST",
        data: Some("order=1".into()),
        ..LoadOpts::sequential(1)
    };
    let c = mesh.call_with("http://solo.mesh/orders", &post);
    assert_eq!(outcome(&c), (502, Some("upstream-reset")), "{c:?}");
    let c = mesh.call("http://solo.mesh/orders");
    assert_eq!(outcome(&c), (502, Some("upstream-reset")), "{c:?}");
    let stats = solo.stats();
    println!(
        "solo-reset received {:?} (1 POST, 1 GET + 2 retries)",
        stats.by_method
    );
    assert_eq!(
        stats.by_method.get("POST"),
        Some(&1),
        "the POST was retried"
    );
    assert_eq!(
        stats.by_method.get("GET"),
        Some(&3),
        "the GET was not retried twice"
    );

    // Everything 503: the budget caps the retries.
    let n = 50;
    let run = mesh.load("http://down.mesh/items", &LoadOpts::sequential(n));
    assert!(
        run.results.iter().all(|c| c.status == 503),
        "{:?}",
        run.statuses()
    );
    let attempts: u64 = down.iter().map(|u| u.stats().requests).sum();
    // The floor is a reserve of minPerSecond retries for every second of
    // the budget's window (Linkerd's minRetriesPerSecond × TTL), so a burst
    // may spend the whole reserve at once: 1/s × 10 s.
    let floor = 1.0 * mesh::resilience::BUDGET_WINDOW.as_secs_f64();
    let bound = (1.0 + 0.20) * n as f64 + floor;
    println!(
        "down: {n} requests in {:.2} s → {attempts} upstream attempts (bound {bound:.0}); \
         {} answered retry-budget-exhausted; client retries {}",
        run.elapsed_ms / 1000.0,
        run.with_mesh_error("retry-budget-exhausted").len(),
        mesh.service("down")
            .map(|s| s["retries"].clone())
            .unwrap_or_default()
    );
    assert!(attempts as f64 <= bound, "{attempts} attempts > {bound}");
    assert!(attempts > n as u64, "no retry at all within the budget");
}

/// One of three instances answers 500: after 3 consecutive failures it is
/// ejected, the others carry the traffic, and healed it returns after
/// ejectFor.
pub fn outlier_is_ejected_and_returns_after_eject_for() {
    let mesh = Mesh::start("rol");
    let _t1 = mesh.upstream("trio", "trio-1", &Fault::default());
    let _t2 = mesh.upstream("trio", "trio-2", &Fault::default());
    let bad = mesh.upstream("trio", "trio-3", &Fault::failing(500));
    mesh.apply_ok(
        "kind: ServicePolicy
service: trio
loadBalancer: round-robin
retries: { attempts: 0 }
breaker: { minRequests: 100000 }
outlier: { consecutiveFailures: 3, ejectFor: 2s, maxEjectedPercent: 50 }
",
    );
    let url = "http://trio.mesh/who";
    let first = mesh.load(url, &LoadOpts::sequential(30));
    let failures: Vec<_> = first.results.iter().filter(|c| c.status == 500).collect();
    assert_eq!(failures.len(), 3, "{:?}", first.bodies());
    assert!(
        failures.iter().all(|c| c.body == "trio-3: injected 500"),
        "{failures:?}"
    );
    assert_eq!(
        bad.stats().requests,
        3,
        "trio-3 got calls after its 3rd failure"
    );
    let last = failures.last().expect("three failures");
    let ejected_ms = last.start + last.ms;
    let state = mesh.wait_service("trio-3 ejected in /state", secs(1), |s| {
        s["name"] == "trio" && endpoint_state(s, "trio-3").as_deref() == Some("ejected")
    });
    println!("trio-3 ejected after 3 failures: {}", state["endpoints"]);

    // Healed but still ejected: the other two carry everything.
    bad.set(&Fault::healthy());
    let meanwhile = mesh.load(url, &LoadOpts::sequential(20));
    let done_ms = meanwhile
        .results
        .iter()
        .map(|c| c.start + c.ms)
        .fold(0.0, f64::max);
    assert!(
        done_ms - ejected_ms < 2000.0,
        "too slow to observe the ejection window"
    );
    assert!(meanwhile.results.iter().all(|c| c.status == 200));
    let names = meanwhile.bodies();
    println!("while ejected: {names:?}");
    assert!(!names.contains_key("trio-3"), "{names:?}");
    assert_eq!(names.len(), 2, "both others carry the traffic: {names:?}");

    mesh.wait_service("trio-3 back in /state", secs(6), |s| {
        s["name"] == "trio" && endpoint_state(s, "trio-3").as_deref() == Some("ready")
    });
    let back_after = epoch_ms() - ejected_ms;
    let again = mesh.load(url, &LoadOpts::sequential(12));
    println!(
        "trio-3 back {back_after:.0} ms after ejection (ejectFor 2s); then {:?}",
        again.bodies()
    );
    assert!(back_after >= 1900.0, "returned after {back_after:.0} ms");
    assert!(
        again.bodies().contains_key("trio-3"),
        "{:?}",
        again.bodies()
    );
}

/// Every call answered 200, none failed at the transport level.
fn run_ok(load: &Load) -> bool {
    load.results
        .iter()
        .all(|c| c.status == 200 && c.error.is_none())
}
