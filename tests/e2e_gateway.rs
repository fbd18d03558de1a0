//! End-to-end: the gateway as the mesh's front door, in network namespaces,
//! identity on (the gateway calls services over mTLS with its own
//! certificate). Clients outside the mesh (a pod with no sidecar) use curl
//! and python's http.client (`load.py`).
//!
//! | story | pods | documents | calls (from `outside`) | expected |
//! |---|---|---|---|---|
//! | the_front_door | control; gateway; orders-1, users-1, orders-v2-1 (fault servers + sidecars); outside | Route `shop` (host shop.test: prefix + strip, header match, exact), `canary` (90/10), `live` | curl per row; 2000 python calls to /canary; 200 rps on /live while the route changes | each row's app and path exactly as the app saw it; 90/10 ±3 points; 0 failed requests across the change, the new backend serving after it; the services see the caller `gateway` from its certificate |
//!
//! Needs root, `ip`, `iptables`, curl and python3; `.ci/run` installs them.
//! Run: `cargo test --test e2e_gateway -- --nocapture`.

// Test code: real processes on the wall clock, and unwrap() as assertion.
#![allow(clippy::disallowed_types, clippy::unwrap_used)]

#[allow(dead_code, unused_imports)] // each test binary uses a different part of the harness
mod support;

use serde_json::Value;
use std::time::Duration;
use support::bins::MESH_PROXY;
use support::fault::Fault;
use support::mesh::{sidecar_args, wait_ready};
use support::protocols::metric;
use support::resilience::{LoadOpts, Mesh};
use support::{secs, strs, wait_for, Pod};

/// Where the gateway listens in its pod.
const GATEWAY_PORT: u16 = 8080;

fn main() -> std::process::ExitCode {
    use support::stories::Need::Pods;
    use support::stories::{CURL, PYTHON3};
    support::stories::run(
        "e2e_gateway",
        stories![
            [Pods, CURL, PYTHON3] => the_front_door,
        ],
    )
}

/// `curl` from `pod` to the gateway: (status, body).
fn call(pod: &Pod, base: &str, host: &str, path: &str, extra: &[&str]) -> (u16, String) {
    let host = format!("host: {host}");
    let mut args = vec!["-H", host.as_str()];
    args.extend_from_slice(extra);
    pod.curl(&format!("{base}{path}"), &args)
}

/// The path the fault server's `/_echo` saw.
fn echoed_path(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["path"].as_str().unwrap().to_string()
}

fn the_front_door() {
    let mesh = Mesh::start_secure("gw");
    let orders = mesh.upstream("orders", "orders-1", &Fault::default());
    let _users = mesh.upstream("users", "users-1", &Fault::default());
    let _v2 = mesh.upstream("orders-v2", "orders-v2-1", &Fault::default());
    let routes = r#"
kind: Route
name: shop
hostnames: [shop.test]
rules:
  - name: orders
    matches: [{ path: { type: PathPrefix, value: /orders } }]
    filters:
      - type: URLRewrite
        urlRewrite: { path: { type: ReplacePrefixMatch, replacePrefixMatch: / } }
    backends: [{ service: orders }]
  - name: beta
    matches: [{ path: { value: /orders }, headers: [{ name: x-beta, value: "yes" }] }]
    backends: [{ service: orders-v2 }]
  - name: users
    matches: [{ path: { type: Exact, value: /users } }]
    backends: [{ service: users }]
---
kind: Route
name: canary
rules:
  - matches: [{ path: { value: /canary } }]
    backends: [{ service: orders, weight: 90 }, { service: orders-v2, weight: 10 }]
  - matches: [{ path: { value: /live } }]
    backends: [{ service: orders }]
"#;
    let applied = mesh.apply(routes);
    assert!(applied.status.success(), "{applied:?}");

    // The gateway: its own pod and identity, no app, no interception.
    let gw_pod = mesh.net.pod("gateway");
    let cache = mesh.net.subdir("gateway-cache");
    let mut args = vec!["gateway".to_string()];
    args.extend(sidecar_args(&mesh.ctrl_url, &cache));
    let listen = format!("0.0.0.0:{GATEWAY_PORT}");
    args.extend(["--listen", &listen, "--service", "gateway"].map(String::from));
    let envs = mesh.identify("gateway", &mut args);
    let gateway = gw_pod.spawn(MESH_PROXY, &strs(&args), &envs);
    wait_ready(&gw_pod, &gateway, secs(20));
    wait_for("the gateway to hold both routes", secs(10), || {
        let (_, body) = gw_pod.curl("http://127.0.0.1:15000/state", &[]);
        let state: Value = serde_json::from_str(&body).ok()?;
        (state["gateway"]["routes"].as_array()?.len() == 2).then_some(())
    });

    let outside = mesh.net.pod("outside");
    let base = format!("http://{}:{GATEWAY_PORT}", gw_pod.ip());
    // host, path, curl flags, status, body (or, for /_echo, the path the app saw)
    let rows: [(&str, &str, &[&str], u16, &str); 8] = [
        ("shop.test", "/orders/_echo?id=7", &[], 200, "/_echo?id=7"),
        ("shop.test", "/orders/", &[], 200, "orders-1"),
        (
            "shop.test",
            "/orders/list",
            &["-H", "x-beta: yes"],
            200,
            "orders-v2-1",
        ),
        ("shop.test", "/users", &[], 200, "users-1"),
        ("shop.test", "/users/x", &[], 404, ""),
        ("other.test", "/orders/", &[], 404, ""),
        ("other.test", "/canary/_echo", &[], 200, ""),
        ("other.test", "/live", &[], 200, "orders-1"),
    ];
    for (host, path, extra, status, want) in rows {
        let (got, body) = call(&outside, &base, host, path, extra);
        assert_eq!(got, status, "{host}{path}: {body}");
        match want {
            w if w.starts_with('/') => assert_eq!(echoed_path(&body), w, "{host}{path}"),
            "" => {}
            w => assert_eq!(body.trim(), w, "{host}{path}"),
        }
    }
    let (_, head) = outside.curl(
        &format!("{base}/nowhere"),
        &["-H", "host: shop.test", "-o", "/dev/null", "-D", "-"],
    );
    assert!(
        head.to_ascii_lowercase().contains("x-mesh-error: no-route"),
        "{head}"
    );

    // 90/10 over 2000 calls from python, each on a connection of its own.
    let canary = format!("http://{}:{GATEWAY_PORT}/canary/", gw_pod.ip());
    let load = mesh.load_from(&outside, &canary, &LoadOpts::concurrent(2000, 8));
    let by = |name: &str| {
        load.results
            .iter()
            .filter(|c| c.status == 200 && c.body.trim() == name)
            .count()
    };
    let (v1, v2) = (by("orders-1"), by("orders-v2-1"));
    assert_eq!(v1 + v2, 2000, "every call answered by one of the two");
    let share = v2 as f64 * 100.0 / 2000.0;
    println!("canary: {v1} to orders, {v2} to orders-v2 ({share:.1}% for a weight of 10%)");
    assert!(
        (7.0..=13.0).contains(&share),
        "orders-v2 got {share:.1}%, not 10 ± 3"
    );

    // A live route change under 200 requests a second: /live moves from
    // orders to orders-v2 with no request failing.
    let live = format!("http://{}:{GATEWAY_PORT}/live", gw_pod.ip());
    // Six threads, each pausing 20 ms after a call: ~200 a second here
    // alone; beside the other stories on two cores, ~110-215. What the story
    // needs is calls meeting the change, asserted below, not a speed.
    let opts = LoadOpts {
        requests: 2000,
        concurrency: 6,
        duration: secs(8),
        interval: Duration::from_millis(20),
        ..LoadOpts::sequential(1)
    };
    let moved = routes.replace(
        "  - matches: [{ path: { value: /live } }]\n    backends: [{ service: orders }]",
        "  - matches: [{ path: { value: /live } }]\n    backends: [{ service: orders-v2 }]",
    );
    assert_ne!(moved, routes);
    let change = std::thread::scope(|s| {
        let running = s.spawn(|| mesh.load_from(&outside, &live, &opts));
        std::thread::sleep(Duration::from_secs(3));
        let out = mesh.apply(&moved);
        assert!(out.status.success(), "{out:?}");
        let changed_ms = support::resilience::epoch_ms();
        (running.join().unwrap(), changed_ms)
    });
    let (load, changed_ms) = change;
    let failed: Vec<_> = load.results.iter().filter(|c| c.status != 200).collect();
    let secs_run = load.elapsed_ms / 1000.0;
    println!(
        "live change: {} requests in {secs_run:.1} s ({:.0}/s), {} failed",
        load.results.len(),
        load.results.len() as f64 / secs_run,
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "failed across the change: {:?}",
        &failed[..failed.len().min(5)]
    );
    let met = load.started_within(changed_ms, 1000.0);
    assert!(
        met >= 50,
        "only {met} calls started in the second after the change: it met no load"
    );
    let after: Vec<&str> = load
        .results
        .iter()
        .filter(|c| c.start > changed_ms + 1000.0)
        .map(|c| c.body.trim())
        .collect();
    assert!(
        !after.is_empty() && after.iter().all(|b| *b == "orders-v2-1"),
        "after the change: {:?}",
        &after[..after.len().min(5)]
    );
    assert!(
        load.results.iter().any(|c| c.body.trim() == "orders-1"),
        "before it, orders served"
    );

    // The services saw the gateway's identity, proven by mTLS.
    let (_, text) = orders.pod.curl("http://127.0.0.1:15000/metrics", &[]);
    let from_gateway = metric(
        &text,
        "mesh_inbound_requests_total",
        &[("caller", "gateway")],
    )
    .unwrap_or(0.0);
    assert!(
        from_gateway > 0.0,
        "orders' sidecar counts calls from `gateway`:\n{text}"
    );
    let (_, gm) = gw_pod.curl("http://127.0.0.1:15000/metrics", &[]);
    let canary_ok = metric(
        &gm,
        "mesh_gateway_requests_total",
        &[("route", "canary"), ("class", "2xx")],
    )
    .unwrap_or(0.0);
    assert!(canary_ok >= 2000.0, "per-route metrics: {canary_ok}");
}
