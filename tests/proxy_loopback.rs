//! mesh-proxy on loopback, explicit mode (no root, no iptables): routing by
//! logical name, the errors the mesh answers itself, registration
//! propagation, and the SIGTERM drain. Real processes: mesh-control,
//! mesh-proxy, python3 http.server upstreams, curl as the client.
//!
//! Run: `cargo test --test proxy_loopback -- --nocapture` (prints figures).

#[allow(dead_code, unused_imports)] // each test binary uses a different part of the harness
mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::Instant;
use support::bins::{MESH_CONTROL, MESH_PROXY};
use support::proc::{command, run_with_timeout, spawn_logged};
use support::{secs, wait_for, Proc};

/// A port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn spawn(dir: &Path, label: &str, program: &str, args: &[&str]) -> Proc {
    spawn_logged(
        command(program, args, &[]),
        label.to_string(),
        dir.join(format!("{label}.log")),
    )
}

/// `curl` with the proxy set; returns (status, headers+body text).
fn curl(proxy: u16, url: &str, extra: &[&str]) -> (u16, String) {
    let proxy = format!("http://127.0.0.1:{proxy}");
    let mut args = vec!["-s", "-i", "--max-time", "10", "-x", &proxy];
    args.extend_from_slice(extra);
    args.push(url);
    let out = run_with_timeout(command("curl", &args, &[]), secs(15));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

fn body(text: &str) -> &str {
    text.split("\r\n\r\n").nth(1).unwrap_or("").trim()
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let out = run_with_timeout(
        command(
            "curl",
            &[
                "-sf",
                "--max-time",
                "2",
                &format!("http://127.0.0.1:{port}{path}"),
            ],
            &[],
        ),
        secs(5),
    );
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `mesh_retries_total` for `service` from a proxy's `/metrics`.
fn retries(admin: u16, service: &str) -> Option<f64> {
    let metrics = http_get(admin, "/metrics")?;
    let prefix = format!("mesh_retries_total{{service=\"{service}\"}}");
    metrics
        .lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
}

fn register(control: u16, service: &str, json: &str) {
    let url = format!("http://127.0.0.1:{control}/v1/services/{service}/instances");
    let out = run_with_timeout(
        command(
            "curl",
            &[
                "-sf",
                "-X",
                "POST",
                "-H",
                "content-type: application/json",
                "-d",
                json,
                &url,
            ],
            &[],
        ),
        secs(5),
    );
    assert!(out.status.success(), "register {service} {json}: {out:?}");
}

/// An upstream app: python's http.server serving a file named `name`.
fn app(dir: &Path, name: &str) -> (Proc, u16) {
    let root = dir.join(name);
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("name"), name).unwrap();
    let port = free_port();
    let p = spawn(
        dir,
        name,
        "python3",
        &[
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--directory",
            &root.to_string_lossy(),
        ],
    );
    wait_for(&format!("{name} to serve"), secs(10), || {
        p.assert_running();
        http_get(port, "/name")
    });
    (p, port)
}

struct Mesh {
    dir: tempfile::TempDir,
    control: u16,
    _control: Proc,
}

impl Mesh {
    fn start() -> Mesh {
        let dir = tempfile::tempdir().unwrap();
        let control = free_port();
        let data = dir.path().join("data");
        let p = spawn(
            dir.path(),
            "control",
            MESH_CONTROL,
            &[
                "--listen",
                &format!("127.0.0.1:{control}"),
                "--data-dir",
                &data.to_string_lossy(),
            ],
        );
        wait_for("mesh-control", secs(10), || {
            p.assert_running();
            http_get(control, "/healthz")
        });
        Mesh {
            dir,
            control,
            _control: p,
        }
    }

    /// `hello` at `live` and at a port nobody listens on, and a client
    /// sidecar that takes them in turn (round-robin: every other call
    /// meets the dead one first); returns (proc, outbound, admin).
    fn live_and_dead_hello(&self, live: u16) -> (Proc, u16, u16) {
        for p in [live, free_port()] {
            register(
                self.control,
                "hello",
                &format!(r#"{{"address":"127.0.0.1","port":{p}}}"#),
            );
        }
        let (proxy, out, admin) = self.proxy("client", &["--lb", "hello=round-robin"]);
        wait_for("both hello endpoints ready", secs(10), || {
            http_get(admin, "/state").filter(|s| s.matches("\"state\":\"ready\"").count() == 2)
        });
        (proxy, out, admin)
    }

    /// A sidecar on free ports; returns (proc, outbound, admin).
    fn proxy(&self, label: &str, extra: &[&str]) -> (Proc, u16, u16) {
        let (outbound, admin, dns) = (free_port(), free_port(), free_port());
        let cache = self.dir.path().join(format!("{label}-cache"));
        let mut args = vec![
            "--control".to_string(),
            format!("http://127.0.0.1:{}", self.control),
            "--outbound".into(),
            format!("127.0.0.1:{outbound}"),
            "--admin".into(),
            format!("127.0.0.1:{admin}"),
            "--dns".into(),
            format!("127.0.0.1:{dns}"),
            "--cache-dir".into(),
            cache.to_string_lossy().into_owned(),
            "--mark".into(),
            "0".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let p = spawn(self.dir.path(), label, MESH_PROXY, &args);
        wait_for(&format!("{label} /ready"), secs(10), || {
            p.assert_running();
            http_get(admin, "/ready")
        });
        (p, outbound, admin)
    }
}

fn explicit_mode_routes_and_answers_its_own_errors() {
    let mesh = Mesh::start();
    let (_a, pa) = app(mesh.dir.path(), "hello-a");
    let (_b, pb) = app(mesh.dir.path(), "hello-b");
    register(
        mesh.control,
        "hello",
        &format!(r#"{{"address":"127.0.0.1","port":{pa}}}"#),
    );
    register(
        mesh.control,
        "hello",
        &format!(r#"{{"address":"127.0.0.1","port":{pb}}}"#),
    );
    let dead = free_port();
    register(
        mesh.control,
        "dead",
        &format!(r#"{{"address":"127.0.0.1","port":{dead}}}"#),
    );
    register(
        mesh.control,
        "down",
        &format!(r#"{{"address":"127.0.0.1","port":{pa},"health":"down"}}"#),
    );
    let (_proxy, out, _admin) = mesh.proxy("client", &[]);

    // Both instances answer, by bare name and by name.mesh.
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..40 {
        let url = if i % 2 == 0 {
            "http://hello/name"
        } else {
            "http://hello.mesh:8080/name"
        };
        let (status, text) = curl(out, url, &[]);
        assert_eq!(status, 200, "{text}");
        seen.insert(body(&text).to_string());
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen.len(), 2, "only {seen:?} answered");

    // The mesh's own answers: status and x-mesh-error.
    for (url, status, reason) in [
        ("http://nosuch/", 503, "unknown-service"),
        ("http://nosuch.mesh/", 503, "unknown-service"),
        ("http://down/", 503, "no-endpoints"),
        ("http://dead/", 502, "connect-failed"),
    ] {
        let (got, text) = curl(out, url, &[]);
        assert_eq!(got, status, "{url}: {text}");
        assert!(
            text.contains(&format!("x-mesh-error: {reason}")),
            "{url}: {text}"
        );
    }
    let own = format!("http://127.0.0.1:{out}/");
    let (got, text) = curl(out, &own, &[]);
    assert_eq!(got, 508, "{text}");
    assert!(text.contains("x-mesh-error: loop-detected"), "{text}");

    // Malformed requests get a 4xx, and the proxy keeps serving.
    for raw in [
        &b"GET / HTTP/1.0\r\n\r\n"[..], // no Host, not absolute: nowhere to go
        &b"\x16\x03\x01garbage\r\n\r\n"[..], // not HTTP at all
        &b"GET /\x01 HTTP/1.1\r\nHost: hello\r\n\r\n"[..], // invalid request target
    ] {
        let mut s = TcpStream::connect(("127.0.0.1", out)).unwrap();
        s.set_read_timeout(Some(secs(5))).unwrap();
        s.write_all(raw).unwrap();
        let mut resp = Vec::new();
        let _ = s.read_to_end(&mut resp);
        let resp = String::from_utf8_lossy(&resp);
        let status = resp.split_whitespace().nth(1).unwrap_or("");
        assert!(status.starts_with('4'), "{raw:?} got {resp:?}");
    }
    let (status, _) = curl(out, "http://hello/name", &[]);
    assert_eq!(status, 200, "proxy stopped serving after bad input");
}

fn registration_reaches_a_running_proxy_fast() {
    let mesh = Mesh::start();
    let (_a, pa) = app(mesh.dir.path(), "late");
    let (_proxy, out, admin) = mesh.proxy("client", &[]);
    let (status, _) = curl(out, "http://late/name", &[]);
    assert_eq!(status, 503, "late must not exist yet");

    let start = Instant::now();
    register(
        mesh.control,
        "late",
        &format!(r#"{{"address":"127.0.0.1","port":{pa}}}"#),
    );
    let registered = Instant::now();
    wait_for("the proxy to list the new instance", secs(5), || {
        http_get(admin, "/state").filter(|s| s.contains(&format!("127.0.0.1:{pa}")))
    });
    let visible = Instant::now();
    let ms = visible.duration_since(registered).as_millis();
    println!(
        "registration -> visible in a running proxy: {ms} ms (register call itself {} ms)",
        registered.duration_since(start).as_millis()
    );
    assert!(ms < 1000, "took {ms} ms");
    let (status, text) = curl(out, "http://late/name", &[]);
    assert_eq!((status, body(&text)), (200, "late"));
}

fn sigterm_deregisters_drains_and_exits_zero() {
    let mesh = Mesh::start();
    // An upstream that takes a second to answer, so a request is in flight.
    let slow = free_port();
    let script = format!(
        "import http.server,time\n\
         class H(http.server.BaseHTTPRequestHandler):\n\
         \x20def do_GET(self):\n\
         \x20 time.sleep(1); b=b'slow'\n\
         \x20 self.send_response(200); self.send_header('content-length',str(len(b))); self.end_headers(); self.wfile.write(b)\n\
         \x20def log_message(self,*a): pass\n\
         http.server.ThreadingHTTPServer(('127.0.0.1',{slow}),H).serve_forever()\n"
    );
    let _app = spawn(mesh.dir.path(), "slow-app", "python3", &["-c", &script]);
    let (proxy, out, admin) = mesh.proxy(
        "sidecar",
        &[
            "--service",
            "slow",
            "--app-port",
            &slow.to_string(),
            "--advertise",
            "127.0.0.1",
            "--inbound",
            "127.0.0.1:0",
            "--instance-id",
            "slow-1",
        ],
    );
    wait_for("slow-1 registered and routable", secs(10), || {
        http_get(admin, "/state").filter(|s| s.contains("\"state\":\"ready\""))
    });

    let in_flight = std::thread::spawn(move || curl(out, "http://slow/", &[]));
    wait_for("a request in flight through the proxy", secs(5), || {
        http_get(admin, "/state").filter(|s| s.contains("\"in_flight\":1"))
    });
    proxy.term();
    let (status, text) = in_flight.join().unwrap();
    assert_eq!(
        (status, body(&text)),
        (200, "slow"),
        "in-flight request was cut: {text}"
    );
    let exit = proxy
        .wait_exit(secs(15))
        .expect("proxy exits after draining");
    assert!(exit.success(), "exit status {exit}");
    let endpoints = http_get(mesh.control, "/v1/services/slow").unwrap_or_default();
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
    let mesh = Mesh::start();
    let dir = mesh.dir.path();
    let (_a, pa) = app(dir, "hello-a");
    // A dead endpoint beside the live one: opaque connections to the
    // service retry a refused connect on the other endpoint.
    let (_proxy, out, admin) = mesh.live_and_dead_hello(pa);

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
    let port = free_port();
    let accept = format!("127.0.0.1:{port}");
    let tls = spawn(
        dir,
        "tls-server",
        "openssl",
        &[
            "s_server", "-accept", &accept, "-cert", &cert, "-key", &key, "-www", "-quiet",
        ],
    );
    let https = format!("https://localhost:{port}/");
    wait_for("the TLS server", secs(10), || {
        tls.assert_running();
        let direct = run_with_timeout(
            command("curl", &["-skf", "--max-time", "2", &https], &[]),
            secs(5),
        );
        direct.status.success().then_some(())
    });

    let (status, text) = curl(out, &https, &["-k"]);
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("s_server"), "TLS through CONNECT: {text}");

    for i in 0..4 {
        let (status, text) = curl(out, "http://hello/name", &["-p"]);
        assert_eq!(status, 200, "tunnel {i}: {text}");
        assert!(
            text.trim_end().ends_with("hello-a"),
            "mesh name via CONNECT: {text}"
        );
    }
    let retries = retries(admin, "hello");
    assert_eq!(
        retries,
        Some(2.0),
        "a retried connect per tunnel that met the dead endpoint"
    );

    let (status, text) = curl(out, "http://nosuch.mesh/", &["-p"]);
    assert!(status == 503 && text.contains("unknown-service"), "{text}");
}

/// A chunked POST has no length to buffer ahead by: it streams to the
/// endpoint and is copied on the way. When the chosen endpoint refuses
/// the connection, the retry on the live one carries the whole body.
fn streamed_bodies_survive_a_connect_failure() {
    let mesh = Mesh::start();
    let dir = mesh.dir.path();
    let port = free_port();
    let server = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/fault_server.py");
    let args = [
        "-u",
        server,
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--name",
        "echo",
    ];
    let echo = spawn(dir, "echo", "python3", &args);
    wait_for("the echo app", secs(10), || {
        echo.assert_running();
        http_get(port, "/_stats")
    });
    let (_proxy, out, admin) = mesh.live_and_dead_hello(port);

    let payload: String = (0..2000).map(|i| format!("{i:05}")).collect();
    let file = dir.join("payload");
    std::fs::write(&file, &payload).unwrap();
    let data = format!("@{}", file.display());
    for i in 0..6 {
        let args = ["-H", "Transfer-Encoding: chunked", "--data-binary", &data];
        let (status, text) = curl(out, "http://hello/_echo", &args);
        assert_eq!(status, 200, "call {i}: {text}");
        let echoed: serde_json::Value = serde_json::from_str(body(&text)).expect("echo JSON");
        assert_eq!(echoed["method"], "POST", "call {i}");
        assert!(
            echoed["body"] == payload.as_str(),
            "call {i}: the body arrived changed"
        );
    }
    let retries = retries(admin, "hello");
    assert_eq!(
        retries,
        Some(3.0),
        "one retry per call that met the dead endpoint"
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
