//! Opaque TCP by logical name, and detection on undeclared ports: redis
//! and PostgreSQL on their well-known ports (opaque by default: no
//! detection); a server-speaks-first banner on an undeclared port, which
//! the early endpoint connection reveals at once (and the port is then
//! remembered opaque); a client that waits before its HTTP request, which
//! still gets HTTP (and the port is then remembered client-first).

use crate::support::fault::{echoed_header_names, foreign_mesh_headers, server_args, Fault};
use crate::support::postgres::Postgres;
use crate::support::protocols::ServerSpec;
use crate::support::protocols::{json_line, metric, metrics, peer, stdout_ok};
use crate::support::resilience::Mesh;
use crate::support::stories::{tool, Need};
use crate::support::{path, secs, strs, wait_for};
use serde_json::Value;

pub const REDIS_SERVER: Need = tool(
    "redis-server",
    &["--version"],
    "apt-get install redis-server",
);
pub const REDIS_CLI: Need = tool("redis-cli", &["--version"], "apt-get install redis-tools");
pub const PSQL: Need = tool("psql", &["--version"], "apt-get install postgresql-client");
pub const INITDB: Need = tool(
    "sh",
    &["-c", "ls /usr/lib/postgresql/*/bin/initdb"],
    "apt-get install postgresql",
);
pub const RUNUSER: Need = tool("runuser", &["--version"], "apt-get install util-linux");
pub const SOCAT: Need = tool("socat", &["-V"], "apt-get install socat");

const BANNER_PORT: u16 = 7777;
/// The first byte of a server-speaks-first protocol may not wait longer.
const FIRST_BYTE_BUDGET_MS: f64 = 100.0;
const LEARNED: &str = "mesh_detect_learned_opaque_total";
const EARLY: &str = "mesh_detect_early_connects_total";

/// redis-cli SET then GET against redis-server by logical name.
pub fn redis_by_logical_name() {
    let mesh = Mesh::start("prd");
    let app = [
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
    let _cache = mesh.server(ServerSpec::argv("cache", "cache-1", 6379, &app));
    let cli = |args: &[&str]| {
        let full = [&["-h", "cache.mesh", "-p", "6379"][..], args].concat();
        let out = mesh.client.run_with("redis-cli", &full, &[], secs(10));
        stdout_ok(&format!("redis-cli {args:?}"), &out)
            .trim()
            .to_string()
    };
    assert_eq!(cli(&["SET", "story", "opaque-by-default"]), "OK");
    assert_eq!(cli(&["GET", "story"]), "opaque-by-default");
    assert_eq!(cli(&["INCR", "calls"]), "1");
    assert_eq!(cli(&["INCR", "calls"]), "2");
}

/// psql `select 42` against PostgreSQL by logical name.
pub fn postgres_by_logical_name() {
    let mesh = Mesh::start("ppg");
    let pg = Postgres::init(&mesh.net, "db-1").unwrap_or_else(|e| panic!("initdb: {e}"));
    let app = pg.server_argv(5432);
    let server = mesh.server(ServerSpec::argv("db", "db-1", 5432, &strs(&app)));
    // Dropped in order: the cluster shuts down before its process is killed.
    let _db = (pg, server);
    let args = ["-h", "db.mesh", "-U", "postgres", "-Atc", "select 40 + 2"];
    let out = mesh
        .client
        .run_with("psql", &args, &[("PGCONNECT_TIMEOUT", "5")], secs(15));
    assert_eq!(stdout_ok("psql", &out).trim(), "42");
}

/// socat's `echo banner; cat` on port 7777, which no one declared opaque:
/// the banner arrives within 100 ms on the first connection (the endpoint
/// was connected at once, and its greeting decided) and on a later one
/// (learned: no early connect, no detection), both ways work, and the
/// client sidecar's learned-opaque counter for (banner, 7777) goes 0 → 1.
pub fn server_speaks_first_on_an_undeclared_port() {
    let mesh = Mesh::start("pbn");
    let listen = format!("TCP-LISTEN:{BANNER_PORT},reuseaddr,fork");
    let app = ["socat", &listen, "SYSTEM:echo banner; exec cat"];
    let _banner = mesh.server(ServerSpec::argv("banner", "banner-1", BANNER_PORT, &app));
    let port = BANNER_PORT.to_string();
    let labels = [("service", "banner"), ("port", port.as_str())];
    let count = |name: &str, extra: &[(&str, &str)]| {
        let all: Vec<(&str, &str)> = labels.iter().chain(extra).copied().collect();
        metric(&metrics(&mesh.client), name, &all).unwrap_or(0.0)
    };
    assert_eq!(count(LEARNED, &[]), 0.0, "learned before any connection");

    let connect = |which: &str| {
        let args = [
            &peer("banner_client.py"),
            "--host",
            "banner.mesh",
            "--port",
            &port,
        ];
        let out = mesh.client.run_with("python3", &args, &[], secs(10));
        let r = json_line("banner_client.py", &out);
        assert_eq!(r["ok"].as_bool(), Some(true), "{which} connection: {r}");
        let ms = r["first_byte_ms"].as_f64().unwrap_or(f64::INFINITY);
        eprintln!("banner first byte, {which} connection: {ms:.1} ms ({r})");
        assert!(
            ms < FIRST_BYTE_BUDGET_MS,
            "{which} connection: first byte after {ms:.1} ms"
        );
        ms
    };
    connect("first (sorted: the server spoke first)");
    wait_for("the learned-opaque counter to reach 1", secs(2), || {
        (count(LEARNED, &[]) == 1.0).then_some(())
    });
    assert_eq!(count(EARLY, &[("first", "server")]), 1.0);
    connect("second (learned)");
    assert_eq!(count(LEARNED, &[]), 1.0);
    assert_eq!(
        count(EARLY, &[]),
        1.0,
        "a port learned opaque is relayed without sorting again"
    );
    let state = state(&mesh.client);
    assert_eq!(
        state["learned_opaque"],
        serde_json::json!([format!("banner:{port}")])
    );
}

/// A client that connects and waits 500 ms before its HTTP request (ten
/// times the old 50 ms detection timeout) to an undeclared port: the
/// request gets the HTTP path (the mesh's headers reach the app, a forged
/// `x-mesh-*` does not, it is counted as a request), the port is then known
/// client-first, and the next connection opens no endpoint early.
pub fn a_slow_client_still_gets_http() {
    let mesh = Mesh::start("psl");
    let app = [
        &["python3".to_string()][..],
        &server_args("0.0.0.0", ECHO_PORT, "echo-1", &Fault::default()),
    ]
    .concat();
    let _echo = mesh.server(ServerSpec::argv("echo", "echo-1", ECHO_PORT, &strs(&app)));
    let port = ECHO_PORT.to_string();
    let args = [
        &peer("slow_http_client.py"),
        "--host",
        "echo.mesh",
        "--port",
        &port,
        "--path",
        "/_echo",
        "--wait",
        "0.5",
    ];
    let out = mesh.client.run_with("python3", &args, &[], secs(10));
    let r = json_line("slow_http_client.py", &out);
    assert_eq!(r["status"], 200, "{r}");
    assert!(r["waited_ms"].as_f64() >= Some(500.0), "{r}");
    let names = echoed_header_names(r["body"].as_str().unwrap_or_default());
    for added in ["traceparent", "via", "x-forwarded-for"] {
        assert!(names.iter().any(|n| n == added), "{added} in {names:?}");
    }
    assert_eq!(
        foreign_mesh_headers(&names),
        [""; 0],
        "a forged x-mesh-* header reached the app: {names:?}"
    );
    let text = metrics(&mesh.client);
    let svc = [("service", "echo")];
    assert_eq!(
        metric(&text, "mesh_requests_total", &svc),
        Some(1.0),
        "{text}"
    );
    let early = [("service", "echo"), ("port", port.as_str())];
    assert_eq!(
        metric(&text, EARLY, &[early[0], early[1], ("first", "client")]),
        Some(1.0)
    );

    // Known client-first now: curl's connection is detected at once.
    let (status, _) = mesh.client.curl(&format!("http://echo.mesh:{port}/"), &[]);
    assert_eq!(status, 200);
    let text = metrics(&mesh.client);
    assert_eq!(metric(&text, "mesh_requests_total", &svc), Some(2.0));
    assert_eq!(
        metric(&text, EARLY, &early),
        Some(1.0),
        "no second early connect"
    );
    assert_eq!(
        state(&mesh.client)["learned_client_first"],
        serde_json::json!([format!("echo:{port}")])
    );

    // Declared opaque in the policy: the same request is relayed as bytes,
    // untouched (no `via`, no traceparent), and counted as a connection.
    mesh.apply_ok(&format!(
        "kind: ServicePolicy\nservice: echo\nopaquePorts: [{port}]\n"
    ));
    let (status, body) = mesh
        .client
        .curl(&format!("http://echo.mesh:{port}/_echo"), &[]);
    assert_eq!(status, 200, "{body}");
    let names = echoed_header_names(&body);
    for untouched in ["via", "traceparent", "x-forwarded-for"] {
        assert!(
            !names.iter().any(|n| n == untouched),
            "{untouched} added: {names:?}"
        );
    }
    let text = metrics(&mesh.client);
    let opaque = [("service", "echo"), ("protocol", "opaque")];
    assert_eq!(
        metric(&text, "mesh_connections_total", &opaque),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "mesh_requests_total", &svc),
        Some(2.0),
        "not an HTTP request"
    );
}

/// Explicit mode to a host outside the mesh whose name does not resolve
/// (the pod's DNS has no upstream): 502 `dns-failed`, not `unknown-service`.
pub fn an_unresolvable_external_name_is_dns_failed() {
    let mesh = Mesh::start("pdn");
    let start = std::time::Instant::now();
    let args = [
        "-s",
        "-D",
        "-",
        "-m",
        "20",
        "-x",
        "http://127.0.0.1:15001",
        "http://no-such-host.example/",
    ];
    let out = mesh.client.run_with("curl", &args, &[], secs(25));
    let ms = start.elapsed().as_millis();
    eprintln!("dns-failed answered after {ms} ms");
    let body = String::from_utf8_lossy(&out.stdout).into_owned();
    let status: u16 = body
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    assert_eq!(status, 502, "{body}");
    assert!(
        body.to_ascii_lowercase()
            .contains("x-mesh-error: dns-failed"),
        "{body}"
    );
    assert!(
        body.contains("cannot resolve \"no-such-host.example\""),
        "{body}"
    );
}

const ECHO_PORT: u16 = 8000;
const TLS_PORT: u16 = 8443;

/// The client sidecar's `/state`.
fn state(pod: &crate::support::Pod) -> Value {
    let (status, state) = pod.curl("http://127.0.0.1:15000/state", &[]);
    assert_eq!(status, 200, "{state}");
    serde_json::from_str(&state).expect("/state JSON")
}

/// TLS to a service on an undeclared port: the ClientHello is detected,
/// relayed as opaque TCP end to end (the mesh never terminates it), and
/// the client sidecar counts the connection under the SNI curl sent.
pub fn tls_is_relayed_opaque_and_its_sni_counted() {
    let mesh = Mesh::start("ptl");
    let dir = mesh.net.subdir("tls");
    let (key, cert) = (dir.join("key.pem"), dir.join("cert.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=secure.mesh", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl req");
    assert!(made.status.success(), "openssl req: {made:?}");
    let accept = TLS_PORT.to_string();
    let (key, cert) = (path(&key), path(&cert));
    let app = [
        "openssl", "s_server", "-accept", &accept, "-cert", &cert, "-key", &key, "-www", "-quiet",
    ];
    let _tls = mesh.server(ServerSpec::argv("secure", "secure-1", TLS_PORT, &app));
    let url = format!("https://secure.mesh:{TLS_PORT}/");
    let (status, body) = mesh.client.curl(&url, &["-k"]);
    assert_eq!(status, 200, "curl {url}: {body}");
    assert!(body.contains("s_server"), "not s_server's page: {body}");
    let labels = [("service", "secure"), ("sni", "secure.mesh")];
    let tls = metric(
        &metrics(&mesh.client),
        "mesh_tls_connections_total",
        &labels,
    );
    assert_eq!(tls, Some(1.0));
}
