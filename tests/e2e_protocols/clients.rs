//! Unmodified HTTP and WebSocket clients by logical name: the JDK's
//! HttpClient with its default settings (it sends `Upgrade: h2c` on every
//! cleartext request), node's `http` module, and a python `websockets`
//! echo that exchanges messages in both directions after the upgrade.

use crate::support::fault::server_args;
use crate::support::fault::Fault;
use crate::support::protocols::{json_line, peer, stdout_ok, ServerSpec};
use crate::support::resilience::Mesh;
use crate::support::stories::{tool, Need};
use crate::support::{secs, strs};

use serde_json::Value;

pub const JAVA: Need = tool(
    "java",
    &["-version"],
    "apt-get install openjdk-17-jdk-headless",
);
pub const WEBSOCKETS: Need = tool(
    "python3",
    &["-c", "import websockets.sync.client"],
    "pip install 'websockets>=15'",
);

const WEB_PORT: u16 = 8000;
const WS_PORT: u16 = 8765;

/// A mesh with `web` (the fault server, healthy, answering `/_echo`).
fn web_mesh(prefix: &str) -> (Mesh, crate::support::protocols::Server) {
    let mesh = Mesh::start(prefix);
    let app = [
        &["python3".to_string()][..],
        &server_args("0.0.0.0", WEB_PORT, "web-1", &Fault::default()),
    ]
    .concat();
    let web = mesh.server(ServerSpec::argv("web", "web-1", WEB_PORT, &strs(&app)));
    (mesh, web)
}

/// What the app saw (the fault server's `/_echo` answer): method, body,
/// and the header names it received, lowercased.
fn seen(echo: &str) -> (String, String, Vec<String>) {
    let v: Value = serde_json::from_str(echo).unwrap_or_else(|e| panic!("/_echo {echo:?}: {e}"));
    let names = v["headers"]
        .as_array()
        .map(|hs| {
            hs.iter()
                .filter_map(|h| h[0].as_str().map(str::to_ascii_lowercase))
                .collect()
        })
        .unwrap_or_default();
    let text = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    (text("method"), text("body"), names)
}

/// `java HttpCheck.java URL`: GET and POST answered 200 over HTTP/1.1;
/// the POST body arrives; the upgrade request never reaches the app (its
/// `Upgrade`/`HTTP2-Settings` are hop-by-hop).
pub fn java_httpclient_with_default_settings() {
    let (mesh, _web) = web_mesh("pjv");
    let url = format!("http://web.mesh:{WEB_PORT}/_echo");
    // The source launcher compiles in memory first: seconds, not millis.
    let out = mesh
        .client
        .run_with("java", &[&peer("HttpCheck.java"), &url], &[], secs(60));
    let text = stdout_ok("java HttpCheck.java", &out);
    eprintln!("java HttpClient through the mesh:\n{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "one line per request:\n{text}");
    for (line, (method, body)) in lines.iter().zip([("GET", ""), ("POST", "posted by java")]) {
        let mut parts = line.splitn(4, ' ');
        let head: Vec<&str> = parts.by_ref().take(3).collect();
        assert_eq!(head, [method, "200", "HTTP_1_1"], "{line}");
        let (seen_method, seen_body, names) = seen(parts.next().unwrap_or_default());
        assert_eq!((seen_method.as_str(), seen_body.as_str()), (method, body));
        for hop in ["upgrade", "http2-settings"] {
            assert!(
                !names.contains(&hop.to_string()),
                "app saw {hop}: {names:?}"
            );
        }
    }
}

/// `node node_client.js URL`: GET and POST with node's `http` module.
pub fn node_http_client() {
    let (mesh, _web) = web_mesh("pnd");
    let url = format!("http://web.mesh:{WEB_PORT}/_echo");
    let out = mesh
        .client
        .run_with("node", &[&peer("node_client.js"), &url], &[], secs(20));
    let text = stdout_ok("node node_client.js", &out);
    let results: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    assert_eq!(results.len(), 2, "one line per request:\n{text}");
    for (r, (method, body)) in results
        .iter()
        .zip([("GET", ""), ("POST", "posted by node")])
    {
        assert_eq!(
            (r["method"].as_str(), r["status"].as_u64()),
            (Some(method), Some(200))
        );
        let (seen_method, seen_body, _) = seen(r["body"].as_str().unwrap_or_default());
        assert_eq!(
            (seen_method.as_str(), seen_body.as_str()),
            (method, body),
            "{r}"
        );
    }
}

/// A WebSocket through the mesh: the server's greeting after the 101, then
/// 20 echoes (the last one 100 kB).
pub fn websocket_echo() {
    let mesh = Mesh::start("pws");
    let port = WS_PORT.to_string();
    let app = [
        "python3",
        "-u",
        &peer("ws_peer.py"),
        "serve",
        "--port",
        &port,
        "--name",
        "ws-1",
    ];
    let _ws = mesh.server(ServerSpec::argv("ws", "ws-1", WS_PORT, &app));
    let url = format!("ws://ws.mesh:{WS_PORT}/echo");
    let args = [
        &peer("ws_peer.py"),
        "client",
        "--url",
        &url,
        "--count",
        "20",
    ];
    let out = mesh.client.run_with("python3", &args, &[], secs(20));
    let r = json_line("ws_peer.py client", &out);
    eprintln!("websocket through the mesh: {r}");
    assert_eq!(r["greeting"], "hello from ws-1", "{r}");
    assert_eq!(
        (r["ok"].as_bool(), r["echoed"].as_u64()),
        (Some(true), Some(20)),
        "{r}"
    );
}
