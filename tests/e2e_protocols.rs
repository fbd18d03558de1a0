//! End-to-end protocols (issue 4): real, unmodified clients and servers of
//! every protocol an app speaks, by logical name through both sidecars, in
//! network namespaces.
//!
//! Each test is one story: a mesh (`support::resilience::Mesh`: control pod
//! and an intercepted client pod), server pods started with
//! `support::protocols::Mesh::server` (app, `mesh-proxy init --app-port`,
//! sidecar), and a real client run in the client pod. The peers live in
//! `tests/support/peers/`. Here: HTTP/2 (h2c) and gRPC; Java, node and
//! WebSocket clients in `e2e_protocols/clients.rs`; redis, PostgreSQL and
//! a server-speaks-first banner (opaque TCP, detection) in
//! `e2e_protocols/opaque.rs`; the inbound limit and header hygiene in
//! `e2e_protocols/inbound.rs`.
//!
//! Needs root, `ip` and `iptables` (skips otherwise). A story whose
//! external tool is missing (node, h2load, java, grpcio, websockets,
//! redis, postgresql, socat) is skipped with a message, except in CI (`CI`
//! set), where it fails: `.ci/run` installs them all.
//!
//! Run: `cargo test --test e2e_protocols -- --nocapture --test-threads 2`
//! Time: ~2 s of pods per story; h2load's 2000 requests and the JVM's
//! start are the longest steps (a few seconds each).

// Test code: real processes on the wall clock, and unwrap() as assertion.
#![allow(clippy::disallowed_types, clippy::unwrap_used)]

#[allow(dead_code, unused_imports)] // each test binary uses a different part of the harness
mod support;

#[path = "e2e_protocols/clients.rs"]
mod clients;
#[path = "e2e_protocols/inbound.rs"]
mod inbound;
#[path = "e2e_protocols/opaque.rs"]
mod opaque;

use serde_json::Value;
use support::protocols::{json_line, metric, metrics, peer, stdout_ok, ServerSpec};
use support::resilience::Mesh;
use support::stories::{tool, Need};
use support::{secs, words, Pod};

const NODE: Need = tool("node", &["--version"], "apt-get install nodejs");
const H2LOAD: Need = tool("h2load", &["--version"], "apt-get install nghttp2-client");
const GRPCIO: Need = tool("python3", &["-c", "import grpc"], "pip install grpcio");

const H2_PORT: u16 = 8080;
const GRPC_PORT: u16 = 50051;

/// curl over h2c prior knowledge answers from the node HTTP/2 server by
/// logical name, as HTTP/2; h2load's 2000 multiplexed requests all succeed.
fn h2c_prior_knowledge_with_curl_and_h2load() {
    let mesh = Mesh::start("ph2");
    let port = H2_PORT.to_string();
    let app = [
        "node",
        &peer("h2_server.js"),
        "--port",
        &port,
        "--name",
        "h2-1",
    ];
    let _h2 = mesh.server(ServerSpec::argv("h2", "h2-1", H2_PORT, &app));

    // The port's first connection: node sends its SETTINGS at once, the
    // client its preface only after 500 ms. That is an HTTP/2 server
    // waiting for its client, not a server-speaks-first protocol.
    let slow = [
        peer("slow_http_client.py"),
        "--h2 --host h2.mesh --wait 0.5 --port".into(),
        port.clone(),
    ]
    .join(" ");
    let out = mesh
        .client
        .run_with("python3", &words(&slow), &[], secs(10));
    let r = json_line("slow_http_client.py --h2", &out);
    assert_eq!(r["ok"], true, "{r}");
    let h2 = [("service", "h2"), ("protocol", "http2")];
    let text = metrics(&mesh.client);
    assert_eq!(
        metric(&text, "mesh_connections_total", &h2),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "mesh_detect_learned_opaque_total",
            &[("service", "h2")]
        ),
        None,
        "an HTTP/2 server's SETTINGS taken for a greeting"
    );

    let url = format!("http://h2.mesh:{H2_PORT}/hello?x=1");
    let args = [
        "-s",
        "-m",
        "5",
        "--http2-prior-knowledge",
        "-w",
        "\n%{http_code} %{http_version}",
        &url,
    ];
    let out = mesh.client.run_with("curl", &args, &[], secs(8));
    let text = stdout_ok("curl --http2-prior-knowledge", &out);
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
    assert_eq!(
        (body.trim(), tail.trim()),
        ("h2-1 GET /hello?x=1", "200 2"),
        "curl's body and `%{{http_code}} %{{http_version}}`"
    );

    let load_url = format!("http://h2.mesh:{H2_PORT}/load");
    let args = ["-n", "2000", "-c", "4", "-m", "8", &load_url];
    let out = mesh.client.run_with("h2load", &args, &[], secs(60));
    let text = stdout_ok("h2load", &out);
    for line in text.lines() {
        if line.starts_with("finished in") || line.starts_with("requests:") {
            eprintln!("h2load through the mesh: {line}");
        }
    }
    assert_eq!(
        h2load_counts(&text),
        Some((2000, 0)),
        "h2load's (succeeded, failed):\n{text}"
    );
}

/// (succeeded, failed) from h2load's "requests: N total, N started, N done,
/// N succeeded, N failed, N errored, N timeout" line.
fn h2load_counts(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("requests:"))?;
    let count = |what: &str| -> Option<u64> {
        line.split(',')
            .find_map(|part| part.trim().strip_suffix(what)?.trim().parse().ok())
    };
    Some((count(" succeeded")?, count(" failed")?))
}

/// grpcio client → grpcio server by logical name: unary and server
/// streaming pass through both sidecars. Then a small breaker: INTERNAL
/// (from the trailers) counts as a failure, the breaker opens, and the
/// client gets UNAVAILABLE with `x-mesh-error: breaker-open` while the
/// server receives nothing more.
fn grpc_unary_streaming_and_the_breaker() {
    let mesh = Mesh::start("pgr");
    let port = GRPC_PORT.to_string();
    let app = [
        "python3",
        "-u",
        &peer("grpc_echo.py"),
        "--port",
        &port,
        "--name",
        "grpc-1",
    ];
    let server = mesh.server(ServerSpec::argv("grpc", "grpc-1", GRPC_PORT, &app));
    let target = format!("grpc.mesh:{GRPC_PORT}");
    let direct = format!("127.0.0.1:{GRPC_PORT}");

    let unary = grpc(&mesh.client, &target, "Unary", "hello through the mesh");
    assert_eq!(unary["code"], "OK", "{unary}");
    assert_eq!(unary["responses"][0], "hello through the mesh", "{unary}");
    assert_eq!(
        unary["initial_metadata"]["x-served-by"], "grpc-1",
        "{unary}"
    );

    let stream = grpc(&mesh.client, &target, "Stream", "5");
    assert_eq!(stream["code"], "OK", "{stream}");
    let want: Vec<String> = (0..5).map(|i| format!("grpc-1 {i}")).collect();
    assert_eq!(stream["responses"], serde_json::json!(want), "{stream}");
    // Client streaming and bidirectional streaming: Chat sends each
    // message only after the previous echo, so a held-back request stream
    // would stall it until its timeout.
    let sum = grpc(&mesh.client, &target, "Sum", "1,2,3,4");
    assert_eq!(sum["code"], "OK", "{sum}");
    assert_eq!(sum["responses"][0], "10", "{sum}");
    let chat = grpc(&mesh.client, &target, "Chat", "ping,pong,done");
    assert_eq!(chat["code"], "OK", "{chat}");
    let want = ["grpc-1: ping", "grpc-1: pong", "grpc-1: done"];
    assert_eq!(chat["responses"], serde_json::json!(want), "{chat}");
    // Each call reached the server exactly once.
    assert_eq!(counts(&server.pod, &direct), (1, 1, 0));

    // UNAVAILABLE (trailers-only) is not retried by default: gRPC calls are
    // POSTs, and the app may have done the work.
    let flaky = grpc(&mesh.client, &target, "Flaky", "first try fails");
    assert_eq!(flaky["code"], "UNAVAILABLE", "{flaky}");
    assert_eq!(flaky_calls(&server.pod, &direct), 1);
    // With `unavailable` listed, it is, though the body has no length: it
    // was copied while it streamed.
    mesh.apply_ok(
        "kind: ServicePolicy
service: grpc
retries: { attempts: 2, on: [connect-failure, gateway-error, unavailable] }
",
    );
    // Flaky fails every odd-numbered call: the 2nd passes at once, the 3rd
    // fails and its retry (the 4th) passes.
    let even = grpc(&mesh.client, &target, "Flaky", "even call");
    assert_eq!(even["code"], "OK", "{even}");
    let flaky = grpc(&mesh.client, &target, "Flaky", "second time lucky");
    assert_eq!(flaky["code"], "OK", "{flaky}");
    assert_eq!(flaky["responses"][0], "second time lucky", "{flaky}");
    assert_eq!(flaky_calls(&server.pod, &direct), 4, "one try, one retry");
    let retries = metric(
        &metrics(&mesh.client),
        "mesh_retries_total",
        &[("service", "grpc")],
    );
    assert_eq!(retries, Some(1.0));

    // The request timeout reaches a gRPC caller as DEADLINE_EXCEEDED.
    mesh.apply_ok(
        "kind: ServicePolicy
service: grpc
timeouts: { request: 300ms }
retries: { attempts: 0 }
",
    );
    let slow = grpc(&mesh.client, &target, "Slow", "3000");
    assert_eq!(slow["code"], "DEADLINE_EXCEEDED", "{slow}");
    assert_eq!(mesh_error(&slow), Some("timeout"), "{slow}");
    let ms = slow["ms"].as_f64().unwrap_or(f64::INFINITY);
    assert!(ms < 2000.0, "answered after {ms:.0} ms: {slow}");
    // A success after it, so the breaker's run of failures starts at 0.
    let ok = grpc(&mesh.client, &target, "Unary", "after the timeout");
    assert_eq!(ok["code"], "OK", "{ok}");

    mesh.apply_ok(
        "kind: ServicePolicy
service: grpc
retries: { attempts: 0 }
breaker: { window: 10s, minRequests: 1000, failureRate: 100, consecutiveFailures: 4, openFor: 30s }
outlier: { consecutiveFailures: 100000 }
",
    );
    let mut failed = 0;
    let open = (0..20).find_map(|_| {
        let r = grpc(&mesh.client, &target, "Fail", "x");
        if r["code"] == "UNAVAILABLE" {
            return Some(r);
        }
        assert_eq!(
            (r["code"].as_str(), r["details"].as_str()),
            (Some("INTERNAL"), Some("grpc-1: failing")),
            "before the breaker opens, the app's own status: {r}"
        );
        failed += 1;
        None
    });
    let open = open.unwrap_or_else(|| panic!("no UNAVAILABLE after 20 failing calls"));
    eprintln!("breaker open after {failed} INTERNAL calls: {open}");
    // Four INTERNAL in a row open it, whatever the window still holds of
    // the calls above (the last of them succeeded). An
    // HTTP-only breaker (INTERNAL arrives with HTTP 200) would never open.
    assert_eq!(failed, 4, "opened after {failed} failures");
    assert_eq!(mesh_error(&open), Some("breaker-open"), "{open}");
    let reached = counts(&server.pod, &direct).2;
    assert_eq!(reached, failed, "every failing call reached the app once");

    for i in 0..5 {
        let r = grpc(&mesh.client, &target, "Fail", "x");
        assert_eq!(r["code"], "UNAVAILABLE", "call {i} while open: {r}");
        assert_eq!(mesh_error(&r), Some("breaker-open"), "call {i}: {r}");
    }
    assert_eq!(
        counts(&server.pod, &direct).2,
        reached,
        "calls reached the app while the breaker was open"
    );
}

/// One `grpc_client.py` call from `pod`; its JSON result.
fn grpc(pod: &Pod, target: &str, method: &str, data: &str) -> Value {
    let client = peer("grpc_client.py");
    let args = [
        client.as_str(),
        "--target",
        target,
        "--method",
        method,
        "--data",
        data,
        "--timeout",
        "5",
    ];
    let out = pod.run_with("python3", &args, &[], secs(15));
    json_line(&format!("grpc_client.py {method}"), &out)
}

/// (Unary, Stream, Fail) calls the server has received, asked directly in
/// its own pod (not through the mesh, whose breaker may be open).
fn counts(pod: &Pod, direct: &str) -> (u64, u64, u64) {
    let v = count_json(pod, direct);
    let n = |k: &str| {
        v[k].as_u64()
            .unwrap_or_else(|| panic!("Count lacks {k}: {v}"))
    };
    (n("Unary"), n("Stream"), n("Fail"))
}

/// Calls `Flaky` has received.
fn flaky_calls(pod: &Pod, direct: &str) -> u64 {
    let v = count_json(pod, direct);
    v["Flaky"]
        .as_u64()
        .unwrap_or_else(|| panic!("Count lacks Flaky: {v}"))
}

fn count_json(pod: &Pod, direct: &str) -> Value {
    let r = grpc(pod, direct, "Count", "");
    assert_eq!(r["code"], "OK", "Count: {r}");
    let text = r["responses"][0].as_str().unwrap_or_default();
    serde_json::from_str(text).unwrap_or_else(|e| panic!("Count {text:?}: {e}"))
}

/// `x-mesh-error` of a gRPC result: in the trailers of a trailers-only
/// answer, or in the initial metadata.
fn mesh_error(r: &Value) -> Option<&str> {
    ["trailing_metadata", "initial_metadata"]
        .iter()
        .find_map(|md| r[md]["x-mesh-error"].as_str())
}

fn main() -> std::process::ExitCode {
    use clients::{JAVA, WEBSOCKETS};
    use opaque::{INITDB, PSQL, REDIS_CLI, REDIS_SERVER, RUNUSER, SOCAT};
    use support::stories::{Need::Pods, OPENSSL};
    support::stories::run(
        "e2e_protocols",
        stories![
            [Pods, NODE, H2LOAD] => h2c_prior_knowledge_with_curl_and_h2load,
            [Pods, GRPCIO] => grpc_unary_streaming_and_the_breaker,
            [Pods, JAVA] => clients::java_httpclient_with_default_settings,
            [Pods, NODE] => clients::node_http_client,
            [Pods, WEBSOCKETS] => clients::websocket_echo,
            [Pods] => inbound::inbound_limit_rejects_the_third_concurrent_call,
            [Pods] => inbound::inbound_header_hygiene_and_traceparent,
            [Pods, REDIS_SERVER, REDIS_CLI] => opaque::redis_by_logical_name,
            [Pods, PSQL, INITDB, RUNUSER] => opaque::postgres_by_logical_name,
            [Pods, SOCAT] => opaque::server_speaks_first_on_an_undeclared_port,
            [Pods] => opaque::a_slow_client_still_gets_http,
            [Pods] => opaque::an_unresolvable_external_name_is_dns_failed,
            [Pods, OPENSSL] => opaque::tls_is_relayed_opaque_and_its_sni_counted,
        ],
    )
}
