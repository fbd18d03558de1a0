//! The inbound side: the concurrency limit that protects the app (503 +
//! `x-mesh-error: overloaded`, no queue) and header hygiene (spoofed
//! `x-mesh-*` and hop-by-hop headers removed, `x-forwarded-for` /
//! `forwarded` appended, W3C `traceparent` kept or generated).

use crate::support::fault::{foreign_mesh_headers, server_args, Fault};
use crate::support::protocols::{metric, metrics, ServerSpec};
use crate::support::resilience::{LoadOpts, Mesh};
use crate::support::strs;
use serde_json::Value;

const APP_PORT: u16 = 8000;
/// A rejection is immediate: far below the app's latency.
const REJECT_MS: f64 = 500.0;

/// The fault server as the app of `service`, started with `initial` knobs.
fn fault_app(name: &str, initial: &Fault) -> Vec<String> {
    [
        &["python3".to_string()][..],
        &server_args("0.0.0.0", APP_PORT, name, initial),
    ]
    .concat()
}

/// `--inbound-max-concurrent 2`, an app taking 1 s per call, 3 concurrent
/// POSTs: two reach the app, the third is rejected at once with 503
/// `overloaded`, and the app never has more than 2 in flight.
pub fn inbound_limit_rejects_the_third_concurrent_call() {
    let mesh = Mesh::start("pil");
    let app = fault_app("busy-1", &Fault::latency_ms(1000));
    let spec = ServerSpec::argv("busy", "busy-1", APP_PORT, &strs(&app))
        .sidecar("--inbound-max-concurrent 2");
    let busy = mesh.server(spec);
    // The client side must pass the 503 on, not retry it.
    mesh.apply_ok("kind: ServicePolicy\nservice: busy\nretries: { attempts: 0 }\n");

    let posts = LoadOpts {
        method: "POST",
        data: Some("work".into()),
        ..LoadOpts::concurrent(3, 3)
    };
    let run = mesh.load(&format!("http://busy.mesh:{APP_PORT}/work"), &posts);
    eprintln!("3 concurrent POSTs, limit 2: {:?}", run.statuses());
    let rejected = run.with_mesh_error("overloaded");
    assert_eq!(rejected.len(), 1, "{:?}", run.results);
    assert_eq!(rejected[0].status, 503, "{:?}", rejected[0]);
    assert!(
        rejected[0].ms < REJECT_MS,
        "rejected after {:.0} ms",
        rejected[0].ms
    );
    let ok: Vec<_> = run.results.iter().filter(|c| c.status == 200).collect();
    assert_eq!(ok.len(), 2, "{:?}", run.results);

    let stats = busy_stats(&busy);
    assert_eq!(stats["requests"], 2, "{stats}");
    assert!(stats["max_in_flight"].as_u64() <= Some(2), "{stats}");
    let text = metrics(&busy.pod);
    let overloaded = metric(
        &text,
        "mesh_inbound_rejections_total",
        &[("reason", "overloaded")],
    );
    assert_eq!(overloaded, Some(1.0), "server sidecar metrics:\n{text}");
    let passed = metric(
        &text,
        "mesh_inbound_requests_total",
        &[("caller", "unknown"), ("class", "2xx")],
    );
    assert_eq!(passed, Some(2.0), "server sidecar metrics:\n{text}");
}

fn busy_stats(server: &crate::support::protocols::Server) -> Value {
    let (status, body) = server
        .pod
        .curl(&format!("http://127.0.0.1:{APP_PORT}/_stats"), &[]);
    assert_eq!(status, 200, "/_stats: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/_stats {body:?}: {e}"))
}

/// A request carrying a spoofed `x-mesh-spoof`, a `Connection: x-hop` +
/// `x-hop` pair and no traceparent reaches the app without them, with the
/// caller's IP in `x-forwarded-for` and `forwarded`, and a valid generated
/// traceparent; a given traceparent keeps its trace id; an invalid one is
/// replaced.
pub fn inbound_header_hygiene_and_traceparent() {
    let mesh = Mesh::start("phh");
    let app = fault_app("echo-1", &Fault::default());
    let _echo = mesh.server(ServerSpec::argv("echo", "echo-1", APP_PORT, &strs(&app)));
    let url = format!("http://echo.mesh:{APP_PORT}/_echo");
    let client_ip = mesh.client.ip().to_string();
    let request = |headers: &[&str]| -> Vec<(String, String)> {
        let mut args = Vec::new();
        for h in headers {
            args.extend(["-H", *h]);
        }
        let (status, body) = mesh.client.curl(&url, &args);
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{body:?}: {e}"));
        let pairs = v["headers"].as_array().cloned().unwrap_or_default();
        pairs
            .iter()
            .map(|h| {
                let s = |i: usize| h[i].as_str().unwrap_or_default().to_string();
                (s(0).to_ascii_lowercase(), s(1))
            })
            .collect()
    };
    let get = |hs: &[(String, String)], name: &str| -> Vec<String> {
        hs.iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    };

    // The client app passes on a deadline it was given (700 ms left).
    let seen = request(&[
        "x-mesh-spoof: 1",
        "Connection: x-hop",
        "x-hop: 1",
        "x-mesh-timeout: 700",
    ]);
    eprintln!("the app saw: {seen:?}");
    let names: Vec<&str> = seen.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(foreign_mesh_headers(&names), [""; 0], "{names:?}");
    // The deadline travelled through both sidecars, less the time spent.
    let left: Vec<u64> = get(&seen, "x-mesh-timeout")
        .iter()
        .map(|v| v.parse().unwrap_or(u64::MAX))
        .collect();
    assert!(
        matches!(left[..], [ms] if ms > 0 && ms <= 700),
        "x-mesh-timeout {left:?}"
    );
    assert!(
        !names.contains(&"x-hop"),
        "hop-by-hop header passed: {names:?}"
    );
    let xff = get(&seen, "x-forwarded-for").join(",");
    assert!(
        xff.contains(&client_ip),
        "x-forwarded-for {xff:?} lacks {client_ip}"
    );
    let fwd = get(&seen, "forwarded").join(",");
    assert!(
        fwd.contains(&client_ip),
        "forwarded {fwd:?} lacks {client_ip}"
    );
    let generated = get(&seen, "traceparent");
    assert_eq!(generated.len(), 1, "{seen:?}");
    assert!(
        trace_id(&generated[0]).is_some(),
        "bad traceparent {:?}",
        generated[0]
    );

    let given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let seen = request(&[&format!("traceparent: {given}")]);
    let kept = get(&seen, "traceparent");
    assert_eq!(kept.len(), 1, "{seen:?}");
    assert_eq!(trace_id(&kept[0]), trace_id(given), "{kept:?}");

    let seen = request(&["traceparent: not-a-traceparent"]);
    let replaced = get(&seen, "traceparent");
    assert_eq!(replaced.len(), 1, "{seen:?}");
    assert!(
        trace_id(&replaced[0]).is_some(),
        "invalid one kept: {replaced:?}"
    );
}

/// The trace id of a valid W3C traceparent
/// (`00-<32 hex>-<16 hex>-<2 hex>`, ids not all zero), else `None`.
fn trace_id(tp: &str) -> Option<&str> {
    let parts: Vec<&str> = tp.trim().split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let ok = parts.len() == 4
        && parts[0] == "00"
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
        && parts[1].bytes().any(|b| b != b'0')
        && parts[2].bytes().any(|b| b != b'0');
    ok.then_some(parts[1])
}
