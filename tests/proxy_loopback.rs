//! mesh-proxy on loopback, explicit mode (no root, no iptables): routing by
//! logical name, the errors the mesh answers itself, registration
//! propagation, and the SIGTERM drain. Real processes: mesh-control,
//! mesh-proxy, python3 http.server upstreams, curl as the client.
//!
//! Run: `cargo test --test proxy_loopback -- --nocapture` (prints figures).

// Test code: real processes on the wall clock, and unwrap() as assertion.
#![allow(clippy::disallowed_types, clippy::unwrap_used)]

#[allow(dead_code, unused_imports)] // each test binary uses a different part of the harness
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;
use support::fault::Fault;
use support::loopback::{call, get, refusing, Loopback, Refusing, Sidecar};
use support::proc::{command, run_with_timeout, spawn_logged};
use support::protocols::metric;
use support::{secs, wait_for};

/// `mesh_retries_total` for `service` from a sidecar's `/metrics`.
fn retries(sidecar: &Sidecar, service: &str) -> Option<f64> {
    metric(
        &sidecar.metrics(),
        "mesh_retries_total",
        &[("service", service)],
    )
}

/// `hello` at `live` and at an address that refuses connections, and a
/// client sidecar that takes them in turn (round-robin: every other call
/// meets the dead one first).
fn live_and_dead_hello(lo: &Loopback, live: SocketAddr, dead: &Refusing) -> Sidecar {
    lo.register_addr("hello", live);
    lo.register_addr("hello", dead.addr);
    let client = lo.sidecar("client", &["--lb", "hello=round-robin"]);
    client.wait_ready_endpoints("hello", 2);
    client
}

fn explicit_mode_routes_and_answers_its_own_errors() {
    let lo = Loopback::start("explicit");
    let a = lo.app("hello-a", &Fault::default());
    let b = lo.app("hello-b", &Fault::default());
    lo.register_addr("hello", a.addr);
    lo.register_addr("hello", b.addr);
    let dead = refusing();
    lo.register_addr("dead", dead.addr);
    lo.register(
        "down",
        &format!(
            r#"{{"address":"127.0.0.1","port":{},"health":"down"}}"#,
            a.addr.port()
        ),
    );
    let client = lo.sidecar("client", &[]);
    client.wait_ready_endpoints("hello", 2);

    // Both instances answer, by bare name and by name.mesh.
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..40 {
        let url = if i % 2 == 0 {
            "http://hello/name"
        } else {
            "http://hello.mesh:8080/name"
        };
        let r = call(&client, url, &[]);
        assert_eq!(r.status, 200, "{r:?}");
        seen.insert(r.body.clone());
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen.len(), 2, "only {seen:?} answered");

    // The mesh's own answers: status and x-mesh-error.
    let own = format!("http://{}/", client.outbound);
    for (url, status, reason) in [
        ("http://nosuch/", 503, "unknown-service"),
        ("http://nosuch.mesh/", 503, "unknown-service"),
        ("http://down/", 503, "no-endpoints"),
        ("http://dead/", 502, "connect-failed"),
        (own.as_str(), 508, "loop-detected"),
    ] {
        let r = call(&client, url, &[]);
        assert_eq!(
            (r.status, r.header("x-mesh-error")),
            (status, Some(reason)),
            "{url}: {r:?}"
        );
    }

    // Malformed requests get a 4xx, and the proxy keeps serving.
    for raw in [
        &b"GET / HTTP/1.0\r\n\r\n"[..], // no Host, not absolute: nowhere to go
        &b"\x16\x03\x01garbage\r\n\r\n"[..], // not HTTP at all
        &b"GET /\x01 HTTP/1.1\r\nHost: hello\r\n\r\n"[..], // invalid request target
    ] {
        let mut s = TcpStream::connect(client.outbound).unwrap();
        s.set_read_timeout(Some(secs(5))).unwrap();
        s.write_all(raw).unwrap();
        let mut resp = Vec::new();
        let _ = s.read_to_end(&mut resp);
        let resp = String::from_utf8_lossy(&resp);
        let status = resp.split_whitespace().nth(1).unwrap_or("");
        assert!(status.starts_with('4'), "{raw:?} got {resp:?}");
    }
    let r = call(&client, "http://hello/name", &[]);
    assert_eq!(r.status, 200, "proxy stopped serving after bad input");

    // Absolute form with another Host: routed by the URI, and the app sees
    // the URI's host, not the one sent (RFC 9112 §3.2.2).
    let mut s = TcpStream::connect(client.outbound).unwrap();
    s.set_read_timeout(Some(secs(5))).unwrap();
    s.write_all(
        b"GET http://hello/_echo HTTP/1.1\r\nHost: other.mesh\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let resp = String::from_utf8_lossy(&resp);
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    assert!(head.starts_with("HTTP/1.1 200"), "{resp}");
    let echo: serde_json::Value =
        serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("{e}: {body}"));
    let hosts: Vec<&str> = echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| {
            h[0].as_str()
                .is_some_and(|n| n.eq_ignore_ascii_case("host"))
        })
        .filter_map(|h| h[1].as_str())
        .collect();
    assert_eq!(hosts, ["hello"], "the app saw {echo}");
}

fn registration_reaches_a_running_proxy_fast() {
    let lo = Loopback::start("late");
    let late = lo.app("late", &Fault::default());
    let client = lo.sidecar("client", &[]);
    let r = call(&client, "http://late/name", &[]);
    assert_eq!(r.status, 503, "late must not exist yet: {r:?}");

    let start = Instant::now();
    lo.register_addr("late", late.addr);
    let registered = Instant::now();
    let listed = late.addr.to_string();
    wait_for("the proxy to list the new instance", secs(5), || {
        get(client.admin, "/state").filter(|s| s.contains(&listed))
    });
    let ms = registered.elapsed().as_millis();
    println!(
        "registration -> visible in a running proxy: {ms} ms (register call itself {} ms)",
        registered.duration_since(start).as_millis()
    );
    assert!(ms < 1000, "took {ms} ms");
    let r = call(&client, "http://late/name", &[]);
    assert_eq!((r.status, r.body.as_str()), (200, "late"));
}

fn sigterm_deregisters_drains_and_exits_zero() {
    let lo = Loopback::start("drain");
    // An upstream that takes a second to answer, so a request is in flight.
    let slow = lo.app("slow", &Fault::latency_ms(1000));
    let port = slow.addr.port().to_string();
    let args = [
        "--service",
        "slow",
        "--app-port",
        &port,
        "--advertise",
        "127.0.0.1",
        "--instance-id",
        "slow-1",
    ];
    let sidecar = lo.sidecar("sidecar", &args);
    sidecar.wait_ready_endpoints("slow", 1);

    let in_flight = std::thread::scope(|scope| {
        let request = scope.spawn(|| call(&sidecar, "http://slow/", &[]));
        wait_for("a request in flight through the proxy", secs(5), || {
            get(sidecar.admin, "/state").filter(|s| s.contains("\"in_flight\":1"))
        });
        sidecar.proc.term();
        request.join().unwrap()
    });
    assert_eq!(
        (in_flight.status, in_flight.body.as_str()),
        (200, "slow"),
        "in-flight request was cut: {in_flight:?}"
    );
    let exit = sidecar
        .proc
        .wait_exit(secs(15))
        .expect("proxy exits after draining");
    assert!(exit.success(), "exit status {exit}");
    let endpoints = get(lo.control, "/v1/services/slow").unwrap_or_default();
    assert!(
        !endpoints.contains("slow-1"),
        "still registered: {endpoints}"
    );
}

/// CONNECT in explicit mode: curl tunnels TLS to an HTTPS server outside
/// the mesh (here on loopback), `--proxytunnel` reaches a mesh service by
/// name (opaque, balanced per connection), and an unknown name is refused
/// with the mesh's error before any tunnel opens.
fn connect_tunnels_tls_and_mesh_names() {
    let lo = Loopback::start("connect");
    let dir = lo.dir().to_path_buf();
    let a = lo.app("hello-a", &Fault::default());
    // A dead endpoint beside the live one: opaque connections to the
    // service retry a refused connect on the other endpoint.
    let dead = refusing();
    let client = live_and_dead_hello(&lo, a.addr, &dead);

    let (key, cert) = (dir.join("key.pem"), dir.join("cert.pem"));
    let (key, cert) = (key.to_string_lossy(), cert.to_string_lossy());
    let made = run_with_timeout(
        command(
            "openssl",
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=localhost",
                "-keyout",
                &key,
                "-out",
                &cert,
            ],
            &[],
        ),
        secs(30),
    );
    assert!(made.status.success(), "openssl req: {made:?}");
    let args = [
        "s_server",
        "-accept",
        "127.0.0.1:0",
        "-cert",
        &cert,
        "-key",
        &key,
        "-www",
    ];
    let log = dir.join("tls-server.log");
    let tls = spawn_logged(command("openssl", &args, &[]), "tls-server".into(), log);
    // s_server says where it listens: "ACCEPT 127.0.0.1:PORT".
    let port: u16 = wait_for("the TLS server to listen", secs(10), || {
        tls.assert_running();
        let text = std::fs::read_to_string(tls.log_path()).ok()?;
        let line = text.lines().find_map(|l| l.strip_prefix("ACCEPT "))?;
        line.rsplit(':').next()?.trim().parse().ok()
    });
    let https = format!("https://localhost:{port}/");

    let r = call(&client, &https, &["-k"]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("s_server"), "TLS through CONNECT: {r:?}");

    for i in 0..4 {
        let r = call(&client, "http://hello/name", &["-p"]);
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, "hello-a"),
            "tunnel {i}: {r:?}"
        );
    }
    assert_eq!(
        retries(&client, "hello"),
        Some(2.0),
        "a retried connect per tunnel that met the dead endpoint"
    );

    let r = call(&client, "http://nosuch.mesh/", &["-p"]);
    assert_eq!(
        (r.status, r.header("x-mesh-error")),
        (503, Some("unknown-service")),
        "{r:?}"
    );
}

/// A chunked POST has no length to buffer ahead by: it streams to the
/// endpoint and is copied on the way. When the chosen endpoint refuses
/// the connection, the retry on the live one carries the whole body.
fn streamed_bodies_survive_a_connect_failure() {
    let lo = Loopback::start("streamed");
    let echo = lo.app("echo", &Fault::default());
    let dead = refusing();
    let client = live_and_dead_hello(&lo, echo.addr, &dead);

    let payload: String = (0..2000).map(|i| format!("{i:05}")).collect();
    let file = lo.dir().join("payload");
    std::fs::write(&file, &payload).unwrap();
    let data = format!("@{}", file.display());
    for i in 0..6 {
        let args = ["-H", "Transfer-Encoding: chunked", "--data-binary", &data];
        let r = call(&client, "http://hello/_echo", &args);
        assert_eq!(r.status, 200, "call {i}: {r:?}");
        let echoed: serde_json::Value = serde_json::from_str(&r.body).expect("echo JSON");
        assert_eq!(echoed["method"], "POST", "call {i}");
        assert!(
            echoed["body"] == payload.as_str(),
            "call {i}: the body arrived changed"
        );
    }
    assert_eq!(
        retries(&client, "hello"),
        Some(3.0),
        "one retry per call that met the dead endpoint"
    );
    assert_eq!(
        echo.stats().by_method.get("POST"),
        None,
        "/_echo is not counted"
    );
}

fn main() -> std::process::ExitCode {
    use support::stories::{CURL, OPENSSL, PYTHON3};
    support::stories::run(
        "proxy_loopback",
        stories![
            [CURL, PYTHON3] => explicit_mode_routes_and_answers_its_own_errors,
            [CURL, PYTHON3] => registration_reaches_a_running_proxy_fast,
            [CURL, PYTHON3] => sigterm_deregisters_drains_and_exits_zero,
            [CURL, PYTHON3, OPENSSL] => connect_tunnels_tls_and_mesh_names,
            [CURL, PYTHON3] => streamed_bodies_survive_a_connect_failure,
        ],
    )
}
