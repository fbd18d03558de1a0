//! Opaque TCP by logical name: redis and PostgreSQL on their well-known
//! ports (opaque by default: no detection), and a server-speaks-first
//! banner on an undeclared port, where detection must give up quickly
//! (`--detect-timeout`, 50 ms) and then remember the port as opaque.

use crate::support::postgres::Postgres;
use crate::support::protocols::ServerSpec;
use crate::support::protocols::{have_tools, json_line, metric, metrics, peer, stdout_ok};
use crate::support::resilience::Mesh;
use crate::support::{path, secs, skip, strs, wait_for};
use crate::Tool;

const REDIS_SERVER: Tool = ("redis-server", &["--version"]);
const REDIS_CLI: Tool = ("redis-cli", &["--version"]);
const PSQL: Tool = ("psql", &["--version"]);
const INITDB: Tool = ("sh", &["-c", "ls /usr/lib/postgresql/*/bin/initdb"]);
const RUNUSER: Tool = ("runuser", &["--version"]);
const SOCAT: Tool = ("socat", &["-V"]);

const BANNER_PORT: u16 = 7777;
/// The first byte of a server-speaks-first protocol may not wait longer.
const FIRST_BYTE_BUDGET_MS: f64 = 200.0;
const LEARNED: &str = "mesh_detect_learned_opaque_total";

/// redis-cli SET then GET against redis-server by logical name.
#[test]
fn redis_by_logical_name() {
    if skip() || !have_tools("redis story", &[REDIS_SERVER, REDIS_CLI]) {
        return;
    }
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
#[test]
fn postgres_by_logical_name() {
    if skip() || !have_tools("PostgreSQL story", &[PSQL, INITDB, RUNUSER]) {
        return;
    }
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
/// the banner arrives within 200 ms on the first connection (detection
/// times out) and on a later one (learned), both ways work, and the client
/// sidecar's learned-opaque counter for (banner, 7777) goes 0 → 1.
#[test]
fn server_speaks_first_on_an_undeclared_port() {
    if skip() || !have_tools("banner story", &[SOCAT]) {
        return;
    }
    let mesh = Mesh::start("pbn");
    let listen = format!("TCP-LISTEN:{BANNER_PORT},reuseaddr,fork");
    let app = ["socat", &listen, "SYSTEM:echo banner; exec cat"];
    let _banner = mesh.server(ServerSpec::argv("banner", "banner-1", BANNER_PORT, &app));
    let port = BANNER_PORT.to_string();
    let labels = [("service", "banner"), ("port", port.as_str())];
    let learned = || metric(&metrics(&mesh.client), LEARNED, &labels).unwrap_or(0.0);
    assert_eq!(learned(), 0.0, "learned before any connection");

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
    connect("first (detection times out)");
    wait_for("the learned-opaque counter to reach 1", secs(2), || {
        (learned() == 1.0).then_some(())
    });
    connect("second (learned)");
    assert_eq!(learned(), 1.0, "a learned port is not detected again");
    let (status, state) = mesh.client.curl("http://127.0.0.1:15000/state", &[]);
    assert_eq!(status, 200, "{state}");
    let state: serde_json::Value = serde_json::from_str(&state).expect("/state JSON");
    assert_eq!(
        state["learned_opaque"],
        serde_json::json!([format!("banner:{port}")])
    );
}

const OPENSSL: Tool = ("openssl", &["version"]);
const TLS_PORT: u16 = 8443;

/// TLS to a service on an undeclared port: the ClientHello is detected,
/// relayed as opaque TCP end to end (the mesh never terminates it), and
/// the client sidecar counts the connection under the SNI curl sent.
#[test]
fn tls_is_relayed_opaque_and_its_sni_counted() {
    if skip() || !have_tools("TLS story", &[OPENSSL]) {
        return;
    }
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
