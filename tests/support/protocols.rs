//! The cast of the protocol scenarios (issue 4): real, unmodified servers
//! in their own pods behind a sidecar with inbound interception, the peers
//! under `tests/support/peers/`, the external tools each story needs, and
//! the observations the stories make (sidecar metrics, JSON a peer prints).
//!
//! A server pod runs its app, `mesh-proxy init --app-port P` and a sidecar
//! registering it; callers reach it by logical name from the `Mesh`'s
//! client pod, whose sidecar talks proxy-to-proxy to the server's inbound.

use super::bins::MESH_PROXY;
use super::mesh::{sidecar_args, wait_ready};
use super::resilience::{endpoint_state, Mesh, PROPAGATION};
use super::{secs, strs, wait_for, words, Pod, Proc};
use serde_json::Value;
use std::process::Output;
use std::time::Duration;

/// Directory of the peer programs (python, node, java sources).
pub const PEERS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/peers");
/// A sidecar's admin metrics, read from inside its own pod.
pub const METRICS_URL: &str = "http://127.0.0.1:15000/metrics";

/// One server instance: its pod, the app, and the sidecar.
pub struct Server {
    pub name: String,
    pub pod: Pod,
    pub app: Proc,
    pub proxy: Proc,
}

/// What `Mesh::server` starts.
pub struct ServerSpec<'a> {
    /// Logical name callers use (`<service>.mesh`).
    pub service: &'a str,
    /// Pod name and instance id.
    pub name: &'a str,
    /// The port the app listens on (and the sidecar's `--app-port`).
    pub port: u16,
    /// The app's command line, started inside the pod.
    pub app: Vec<String>,
    /// Extra sidecar flags, e.g. `--inbound-max-concurrent 2`.
    pub sidecar: Vec<String>,
}

/// Path of a peer program under `tests/support/peers/`.
pub fn peer(file: &str) -> String {
    format!("{PEERS}/{file}")
}

/// Stdout of a finished command as text; panics with its output unless it
/// succeeded.
pub fn stdout_ok(what: &str, out: &Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The last line of a peer's stdout, parsed as JSON (peers print one JSON
/// line whatever the outcome).
pub fn json_line(what: &str, out: &Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or("");
    serde_json::from_str(line).unwrap_or_else(|e| {
        panic!(
            "{what} printed no JSON line ({e}, {}):\n{text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The value of the sample of `name` whose labels include all of `labels`
/// (summed if several match); `None` when no sample matches.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_text, value) = match rest.strip_prefix('{') {
            Some(r) => match r.split_once('}') {
                Some((l, v)) => (l, v),
                None => continue,
            },
            None if rest.starts_with(' ') => ("", rest),
            None => continue, // a longer metric name
        };
        let all = labels
            .iter()
            .all(|(k, v)| label_text.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
        if !all {
            continue;
        }
        if let Some(v) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// A sidecar's `/metrics` text, read from inside its pod.
pub fn metrics(pod: &Pod) -> String {
    let (status, body) = pod.curl(METRICS_URL, &[]);
    assert_eq!(status, 200, "{}: GET /metrics: {body}", pod.name());
    body
}

/// Waits until something in `pod` listens on TCP `port` (`ss`, so the app
/// itself sees no probe connection).
pub fn wait_listening(pod: &Pod, app: &Proc, port: u16, within: Duration) {
    let filter = format!("sport = :{port}");
    wait_for(
        &format!("{} to listen on {port}", app.label()),
        within,
        || {
            app.assert_running();
            let out = pod.run("ss", &["-Hltn", &filter]);
            (out.status.success() && !out.stdout.is_empty()).then_some(())
        },
    );
}

// === impl Mesh ===

impl Mesh {
    /// Starts a server pod (app, inbound interception, sidecar) and waits
    /// until the client proxy lists the instance ready.
    pub fn server(&self, spec: ServerSpec<'_>) -> Server {
        let pod = self.net.pod(spec.name);
        let (program, args) = spec.app.split_first().expect("an app command line");
        let app = pod.spawn(program, &strs(args), &[]);
        wait_listening(&pod, &app, spec.port, secs(15));
        let port = spec.port.to_string();
        pod.run_ok(MESH_PROXY, &["init", "--app-port", &port]);
        let cache = self.net.subdir(&format!("{}-cache", spec.name));
        let mut args = sidecar_args(&self.ctrl_url, &cache);
        let own = format!(
            "--service {} --app-port {port} --advertise {} --instance-id {} \
             --lease-ttl 5s --health-interval 200ms",
            spec.service,
            pod.ip(),
            spec.name
        );
        args.extend(words(&own).into_iter().map(String::from));
        args.extend(spec.sidecar);
        let envs = self.identify(spec.service, &mut args);
        let proxy = pod.spawn(MESH_PROXY, &strs(&args), &envs);
        wait_ready(&pod, &proxy, secs(15));
        let what = format!("client /state to list {} ready", spec.name);
        self.wait_service(&what, PROPAGATION, |s| {
            s["name"] == spec.service && endpoint_state(s, spec.name).as_deref() == Some("ready")
        });
        Server {
            name: spec.name.to_string(),
            pod,
            app,
            proxy,
        }
    }
}

// === impl ServerSpec ===

impl<'a> ServerSpec<'a> {
    /// A server whose app is `app` (a command line, split on whitespace).
    pub fn new(service: &'a str, name: &'a str, port: u16, app: &str) -> ServerSpec<'a> {
        ServerSpec {
            service,
            name,
            port,
            app: words(app).into_iter().map(String::from).collect(),
            sidecar: Vec::new(),
        }
    }

    /// The same, with the app's command line given argument by argument.
    pub fn argv(service: &'a str, name: &'a str, port: u16, app: &[&str]) -> ServerSpec<'a> {
        ServerSpec {
            app: app.iter().map(|s| s.to_string()).collect(),
            ..ServerSpec::new(service, name, port, "")
        }
    }

    /// Extra sidecar flags (whitespace separated).
    pub fn sidecar(mut self, flags: &str) -> ServerSpec<'a> {
        self.sidecar
            .extend(words(flags).into_iter().map(String::from));
        self
    }
}
