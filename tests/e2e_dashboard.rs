//! The dashboard in a real browser, during a netns scenario: headless
//! Debian Chromium (driven by playwright-core from npm) opens mesh-control's
//! `/dashboard` from the control pod while the client pod calls two
//! services through its intercepted sidecar.
//!
//! | step | action                          | the page must show, within            |
//! |------|---------------------------------|---------------------------------------|
//! | 1    | steady calls to orders, users   | both circuits, rate > 0, closed (15 s) |
//! | 2    | orders' app answers 503         | orders' breaker open (3 s)            |
//! | 3    | orders' app healthy again       | orders closed (openFor 3 s + 3 s)     |
//!
//! The screenshot taken at step 2 is written to
//! `target/tmp/e2e_dashboard/dashboard.png` (path printed).
//!
//! Run: `sudo -E cargo test --test e2e_dashboard -- --nocapture`.

// Test code: real processes on the wall clock, and unwrap() as assertion.
#![allow(clippy::disallowed_types, clippy::unwrap_used)]

#[allow(dead_code, unused_imports)] // each test binary uses a different part of the harness
mod support;

use serde_json::Value;
use std::time::{Duration, Instant};
use support::fault::Fault;
use support::proc::Proc;
use support::resilience::{LoadOpts, Mesh};
use support::{path, secs, wait_for};

const PROBE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/support/dashboard_probe.js"
);
/// The breaker's `openFor`.
const OPEN_FOR: Duration = Duration::from_secs(3);

/// The last DOM reading the probe printed, and any page error.
fn dom(probe: &Proc) -> Option<Value> {
    probe.assert_running();
    let log = std::fs::read_to_string(probe.log_path()).ok()?;
    let mut last = None;
    for line in log.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        assert!(v.get("pageerror").is_none(), "the page threw: {v}");
        assert!(v.get("error").is_none(), "the probe failed: {v}");
        if v.get("dom").is_some() {
            last = Some(v["dom"].clone());
        }
    }
    last
}

fn circuit<'a>(dom: &'a Value, service: &str) -> Option<&'a Value> {
    dom["circuits"]
        .as_array()?
        .iter()
        .find(|c| c["service"] == service)
}

/// Waits until the page shows what `want` asks of it; returns the time it
/// took and the circuit.
fn until_page(
    probe: &Proc,
    what: &str,
    within: Duration,
    want: impl Fn(&Value) -> bool,
) -> (Duration, Value) {
    let start = Instant::now();
    let dom = wait_for(what, within, || dom(probe).filter(|d| want(d)));
    (start.elapsed(), dom)
}

fn the_browser_shows_each_circuit_its_breaker_open_and_healed() {
    let mesh = Mesh::start("dash");
    let orders = mesh.upstream("orders", "orders-1", &Fault::default());
    let _users = mesh.upstream("users", "users-1", &Fault::default());
    mesh.apply_ok(&format!(
        "kind: ServicePolicy
service: orders
retries: {{ attempts: 0 }}
breaker: {{ window: 5s, minRequests: 5, failureRate: 50, consecutiveFailures: 5, openFor: {}s, halfOpenProbes: 1 }}
outlier: {{ consecutiveFailures: 100000 }}
",
        OPEN_FOR.as_secs()
    ));

    let out = mesh.net.subdir("browser");
    let url = format!("{}/dashboard", mesh.ctrl_url);
    let node_path = String::from_utf8(
        std::process::Command::new("npm")
            .args(["root", "-g"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let probe = mesh.control_pod.spawn(
        "node",
        &[PROBE, &url, &path(&out)],
        &[("NODE_PATH", node_path.trim())],
    );

    // Steady, bounded load on both services for the whole story.
    let load = LoadOpts {
        requests: 4000,
        concurrency: 1,
        duration: secs(30),
        interval: Duration::from_millis(40),
        ..LoadOpts::sequential(1)
    };
    std::thread::scope(|s| {
        s.spawn(|| mesh.load("http://orders.mesh/items", &load));
        s.spawn(|| mesh.load("http://users.mesh/list", &load));

        // 1. Both circuits, live.
        let (took, dom) = until_page(&probe, "both circuits with a rate", secs(15), |d| {
            ["orders", "users"].iter().all(|s| {
                circuit(d, s)
                    .is_some_and(|c| c["rate"].as_f64() > Some(0.0) && c["state"] == "closed")
            })
        });
        println!(
            "step 1: both circuits on the page after {took:?}: {}",
            dom["circuits"]
        );
        assert_eq!(dom["status"], "live");
        let edges = dom["edges"].as_array().unwrap();
        // The client pod serves no service of its own.
        assert!(
            edges
                .iter()
                .any(|e| e["caller"] == "(unnamed)" && e["destination"] == "orders"),
            "the client -> orders edge: {edges:?}"
        );

        // 2. Failures: the breaker opens, and the page says so in 3 s.
        orders.set(&Fault::failing(503));
        let (took, dom) = until_page(&probe, "orders' breaker open on the page", secs(3), |d| {
            circuit(d, "orders").is_some_and(|c| c["state"] == "open")
        });
        let c = circuit(&dom, "orders").unwrap();
        println!("step 2: open on the page {took:?} after the fault: {c}");
        assert!(c["words"].as_str().unwrap().starts_with("Open"), "{c}");
        assert!(c["errorPercentage"].as_f64() > Some(0.0), "{c}");
        // Failing circuits sort first.
        assert_eq!(dom["circuits"][0]["service"], "orders");
        let users = circuit(&dom, "users").unwrap();
        assert_eq!(users["state"], "closed", "the other circuit is untouched");
        std::fs::write(out.join("shoot"), "").unwrap();
        let shot = wait_for("the screenshot", secs(10), || {
            let log = std::fs::read_to_string(probe.log_path()).ok()?;
            log.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find_map(|v| v["shot"].as_str().map(str::to_string))
        });
        let png = std::fs::read(&shot).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG at {shot}");
        // Kept past the test (its pods' folder goes when it passes).
        let kept = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e_dashboard");
        std::fs::create_dir_all(&kept).unwrap();
        let kept = kept.join("dashboard.png");
        std::fs::write(&kept, &png).unwrap();
        println!(
            "step 2: screenshot {} ({} bytes)",
            kept.display(),
            png.len()
        );

        // 3. Healed: closed again within openFor + 3 s.
        orders.set(&Fault::healthy());
        let (took, dom) = until_page(
            &probe,
            "orders' breaker closed again on the page",
            OPEN_FOR + secs(3),
            |d| circuit(d, "orders").is_some_and(|c| c["state"] == "closed"),
        );
        println!(
            "step 3: closed on the page {took:?} after healing: {}",
            circuit(&dom, "orders").unwrap()
        );
        assert!(circuit(&dom, "orders").unwrap()["sparkline"] == true);

        std::fs::write(out.join("quit"), "").unwrap();
        probe.wait_exit(secs(10)).expect("the probe exits");
        // The loads end at their own duration bound.
    });
}

fn main() -> std::process::ExitCode {
    use support::stories::{Need::Pods, CHROMIUM, PLAYWRIGHT};
    support::stories::run(
        "e2e_dashboard",
        stories![
            [Pods, CHROMIUM, PLAYWRIGHT] => the_browser_shows_each_circuit_its_breaker_open_and_healed,
        ],
    )
}
