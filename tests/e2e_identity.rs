//! Workload identity end to end in network namespaces (issue 11), with
//! identity on as by default: unmodified apps and clients (curl, python's
//! grpcio, redis-cli), real interception, mTLS between sidecars.
//!
//! | story | pods | calls | expected |
//! |---|---|---|---|
//! | nothing_in_clear_on_the_wire | client, hello-1 (fault server) | 20 × `curl http://hello.mesh/<marker>` while tcpdump records every port of the bridge | every call 200; TLS seen on the wire, no request line, no body, no marker |
//! | policy_refusals_speak_each_protocol | client, grpc-1 (grpcio echo), cache-1 (redis) | gRPC Unary, redis PING; then an AuthorizationPolicy denying the client | OK and PONG; then PERMISSION_DENIED with `x-mesh-error: forbidden`, and a reset for redis |
//!
//! Needs root, `ip`, `iptables` (pods), tcpdump, grpcio and redis; `.ci/run`
//! installs them. Run: `cargo test --test e2e_identity -- --nocapture`

// Test code: real processes on the wall clock, and unwrap() as assertion.
#![allow(clippy::disallowed_types, clippy::unwrap_used)]

#[allow(dead_code, unused_imports)] // each test binary uses a different part of the harness
mod support;

use serde_json::Value;
use support::fault::Fault;
use support::proc::{command, spawn_logged};
use support::protocols::{json_line, peer, stdout_ok, ServerSpec};
use support::resilience::Mesh;
use support::stories::{tool, Need};
use support::{secs, wait_for, Pod};

const TCPDUMP: Need = tool("tcpdump", &["--version"], "apt-get install tcpdump");
const GRPCIO: Need = tool("python3", &["-c", "import grpc"], "pip install grpcio");
const REDIS: Need = tool(
    "redis-server",
    &["--version"],
    "apt-get install redis-server",
);
const REDIS_CLI: Need = tool("redis-cli", &["--version"], "apt-get install redis-tools");

fn main() -> std::process::ExitCode {
    use support::stories::Need::Pods;
    support::stories::run(
        "e2e_identity",
        stories![
            [Pods, TCPDUMP] => nothing_in_clear_on_the_wire,
            [Pods, GRPCIO, REDIS, REDIS_CLI] => policy_refusals_speak_each_protocol,
        ],
    )
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn nothing_in_clear_on_the_wire() {
    let mesh = Mesh::start_secure("idw");
    let _hello = mesh.upstream("hello", "hello-1", &Fault::default());
    let pcap = mesh.net.dir().join("bridge.pcap");
    let pcap_path = pcap.display().to_string();
    let ns = mesh.net.bridge_ns().to_string();
    let args = [
        "netns",
        "exec",
        &ns,
        "tcpdump",
        "-i",
        "any",
        "--immediate-mode",
        "-U",
        "-s",
        "0",
        "-w",
        &pcap_path,
        "tcp",
    ];
    let capture = spawn_logged(
        command("ip", &args, &[]),
        "tcpdump".into(),
        mesh.net.dir().join("tcpdump.log"),
    );
    wait_for("tcpdump to listen", secs(10), || {
        capture.assert_running();
        capture.log_tail(5).contains("listening on").then_some(())
    });
    let marker = "secret-marker-7f3a";
    for i in 0..20 {
        let (status, body) = mesh
            .client
            .curl(&format!("http://hello.mesh/{marker}/{i}"), &[]);
        assert_eq!(status, 200, "call {i}: {body}");
        assert!(body.contains("hello-1"), "call {i}: {body}");
    }
    // Every call is at least a request and a response record, each sent
    // by a sidecar: wait until the file holds them all, then stop.
    let records = |b: &[u8]| b.windows(3).filter(|w| *w == [0x17, 0x03, 0x03]).count();
    wait_for(
        "the capture to hold every call's TLS records",
        secs(10),
        || {
            let bytes = std::fs::read(&pcap).unwrap_or_default();
            (records(&bytes) >= 2 * 20).then_some(())
        },
    );
    capture.term();
    capture.wait_exit(secs(10));
    let bytes = std::fs::read(&pcap).unwrap();
    println!("captured {} bytes on the bridge", bytes.len());
    // TLS application data records (0x17 0x03 0x03): the calls are there.
    assert!(
        contains(&bytes, &[0x17, 0x03, 0x03]),
        "no TLS records captured"
    );
    assert!(
        bytes.len() > 20 * 200,
        "too little captured: {} bytes",
        bytes.len()
    );
    for plain in [marker.as_bytes(), b"HTTP/1.1", b"GET /", b"hello-1"] {
        assert!(
            !contains(&bytes, plain),
            "{:?} crossed the bridge in clear",
            String::from_utf8_lossy(plain)
        );
    }
}

/// One `grpc_client.py` Unary call from the client pod; its JSON result.
fn grpc_unary(pod: &Pod) -> Value {
    let client = peer("grpc_client.py");
    let args = [
        client.as_str(),
        "--target",
        "grpc.mesh:50051",
        "--method",
        "Unary",
        "--data",
        "hi",
        "--timeout",
        "5",
    ];
    let out = pod.run_with("python3", &args, &[], secs(15));
    json_line("grpc_client.py Unary", &out)
}

/// | caller | document | call | expected |
/// |---|---|---|---|
/// | client | none | gRPC Unary to grpc.mesh, redis PING to cache.mesh | OK, PONG |
/// | client | grpc and cache: default deny (only `web` allowed) | the same | PERMISSION_DENIED + `x-mesh-error: forbidden`; the redis connection reset |
fn policy_refusals_speak_each_protocol() {
    let mesh = Mesh::start_secure("idp");
    let echo = peer("grpc_echo.py");
    let app = [
        "python3",
        "-u",
        echo.as_str(),
        "--port",
        "50051",
        "--name",
        "grpc-1",
    ];
    let _grpc = mesh.server(ServerSpec::argv("grpc", "grpc-1", 50051, &app));
    let redis = [
        "redis-server",
        "--port",
        "6379",
        "--bind",
        "0.0.0.0",
        "--protected-mode",
        "no",
        "--save",
        "",
        "--appendonly",
        "no",
    ];
    let _cache = mesh.server(ServerSpec::argv("cache", "cache-1", 6379, &redis));
    let ping = || {
        mesh.client.run_with(
            "redis-cli",
            &["-h", "cache.mesh", "-p", "6379", "PING"],
            &[],
            secs(10),
        )
    };
    let r = grpc_unary(&mesh.client);
    assert_eq!(r["code"], "OK", "{r}");
    assert_eq!(stdout_ok("redis-cli PING", &ping()).trim(), "PONG");

    let only_web = |svc: &str| {
        format!(
            "kind: AuthorizationPolicy\nservice: {svc}\ndefault: deny\nrules:\n  - name: only-web\n    from: [\"spiffe://mesh.local/ns/default/sa/web\"]\n"
        )
    };
    mesh.apply_ok(&format!("{}---\n{}", only_web("grpc"), only_web("cache")));
    let r = wait_for("gRPC to be refused", secs(5), || {
        let r = grpc_unary(&mesh.client);
        (r["code"] != "OK").then_some(r)
    });
    assert_eq!(r["code"], "PERMISSION_DENIED", "{r}");
    assert_eq!(r["trailing_metadata"]["x-mesh-error"], "forbidden", "{r}");
    let out = ping();
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !said.contains("PONG"),
        "redis answered through a denying policy: {said}"
    );
    println!("redis-cli after the policy: {}", said.trim());
}
