//! The cast of the resilience scenarios: a mesh (control pod + a client pod
//! whose traffic is intercepted), upstream pods running the fault server
//! beside their sidecar, policies applied with `mesh-ctl apply -f`, the
//! client proxy's `/state`, and bounded load from the client pod.
//!
//! The layout is the one of `e2e_netns.rs`; every wait has a deadline.

use super::bins::{mesh_ctl, MESH_CONTROL, MESH_PROXY};
use super::fault::{server_args, Call, Fault, Load, Stats, LOAD};
use super::mesh::{intercept, sidecar_args, wait_ready, APP_PORT};
use super::{path, secs, strs, wait_for, words, Net, Pod, Proc};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Output;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Port of mesh-control inside the control pod.
pub const CONTROL_PORT: u16 = 15010;
/// The client sidecar's state, read from inside the client pod.
pub const STATE_URL: &str = "http://127.0.0.1:15000/state";
/// Deadline for a policy or registration to show in the client's /state.
pub const PROPAGATION: Duration = Duration::from_secs(5);

/// One scenario's mesh: the control plane and the calling pod.
pub struct Mesh {
    pub ctrl_url: String,
    pub control_pod: Pod,
    pub control: Proc,
    pub client: Pod,
    pub client_proxy: Proc,
    /// Numbers the policy files written under the net's directory.
    files: AtomicU32,
    /// Identity on: the trust bundle and the admin token's files.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// Owns every pod and process; declared last so it is dropped last.
    pub net: Net,
}

/// One instance of an upstream service: the fault server and its sidecar.
pub struct Upstream {
    /// The instance id (also the body the fault server answers).
    pub name: String,
    pub pod: Pod,
    pub app: Proc,
    pub proxy: Proc,
}

/// mesh-ctl in `control_pod` as the operator (with identity on: the trust
/// bundle and the admin token).
fn ctl(
    control_pod: &Pod,
    ctrl_url: &str,
    identity: &Option<(PathBuf, PathBuf)>,
    args: &[&str],
) -> Output {
    let mut all = vec!["--control", ctrl_url];
    all.extend_from_slice(args);
    let env: Vec<(&str, String)> = match identity {
        Some((bundle, admin)) => vec![
            ("MESH_TRUST_BUNDLE", path(bundle)),
            ("MESH_TOKEN_FILE", path(admin)),
        ],
        None => Vec::new(),
    };
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    control_pod.run_with(mesh_ctl(), &all, &env, secs(10))
}

/// curl flags that reach mesh-control as the operator: with identity on
/// (bundle, admin token), the bundle to trust and the admin token.
pub fn operator_curl_args(identity: &Option<(PathBuf, PathBuf)>) -> Vec<String> {
    match identity {
        Some((bundle, admin)) => {
            let token = std::fs::read_to_string(admin).expect("admin token");
            vec![
                "--cacert".into(),
                path(bundle),
                "-H".into(),
                format!("authorization: Bearer {}", token.trim()),
            ]
        }
        None => Vec::new(),
    }
}

/// See [`Mesh::identify`]; `identity` is (bundle, admin token).
pub fn identify(
    control_pod: &Pod,
    ctrl_url: &str,
    identity: &Option<(PathBuf, PathBuf)>,
    net: &Net,
    service: &str,
    args: &mut Vec<String>,
) -> Vec<(&'static str, &'static str)> {
    let Some((bundle, _)) = identity else {
        return Vec::new();
    };
    let out = ctl(
        control_pod,
        ctrl_url,
        identity,
        &["token", "create", "--service", service],
    );
    assert!(out.status.success(), "mesh-ctl token create: {out:?}");
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let file = net.dir().join(format!("{service}-{n}.token"));
    std::fs::write(&file, &out.stdout).expect("write token");
    args.extend(["--trust-bundle".to_string(), path(bundle)]);
    args.extend(["--token-file".to_string(), path(&file)]);
    vec![("MESH_IDENTITY", "on")]
}

/// When a policy was applied, as wall-clock ms comparable with `Call::start`.
#[derive(Clone, Copy, Debug)]
pub struct Applied {
    /// Just before `mesh-ctl apply` ran: calls started earlier run under the
    /// previous policy.
    pub started_ms: f64,
    /// When `mesh-ctl apply` returned: the control plane had stored it.
    pub stored_ms: f64,
    /// From `stored_ms` until the client's /state reached that revision.
    pub propagated: Duration,
}

/// How `load.py` should run (see its header).
#[derive(Clone, Debug)]
pub struct LoadOpts {
    pub method: &'static str,
    pub data: Option<String>,
    pub requests: u32,
    pub concurrency: u32,
    /// Stop issuing new requests after this long.
    pub duration: Duration,
    /// Per-request socket timeout.
    pub timeout: Duration,
    /// Pause of each thread between its requests.
    pub interval: Duration,
}

// === impl Mesh ===

impl Mesh {
    /// Control pod with mesh-control, and a client pod with interception
    /// and a ready sidecar.
    pub fn start(prefix: &str) -> Mesh {
        Mesh::open(prefix, false)
    }

    /// The same with workload identity on: mesh-control serves HTTPS and
    /// signs certificates; each sidecar gets a bootstrap token for its
    /// service (the client pod's: `client`) and the trust bundle.
    pub fn start_secure(prefix: &str) -> Mesh {
        Mesh::open(prefix, true)
    }

    fn open(prefix: &str, secure: bool) -> Mesh {
        let net = Net::new(prefix);
        let control_pod = net.pod("control");
        let scheme = if secure { "https" } else { "http" };
        let ctrl_url = format!("{scheme}://{}:{CONTROL_PORT}", control_pod.ip());
        let data_dir = net.subdir("control-data");
        let listen = format!("{}:{CONTROL_PORT}", control_pod.ip());
        let on = [("MESH_IDENTITY", "on")];
        let control = control_pod.spawn(
            MESH_CONTROL,
            &["--listen", &listen, "--data-dir", &path(&data_dir)],
            if secure { &on } else { &[] },
        );
        let identity = secure.then(|| {
            let dir = data_dir.join("identity");
            (dir.join("bundle.pem"), dir.join("admin.token"))
        });
        let client = net.pod("client");
        let cacert = identity.as_ref().map(|(b, _)| path(b));
        wait_for("mesh-control /healthz", secs(15), || {
            control.assert_running();
            let args: Vec<&str> = match &cacert {
                Some(b) => vec!["--cacert", b.as_str()],
                None => Vec::new(),
            };
            (client.curl(&format!("{ctrl_url}/healthz"), &args).0 == 200).then_some(())
        });
        intercept(&client);
        let cache = net.subdir("client-cache");
        let mut args = sidecar_args(&ctrl_url, &cache);
        let envs = identify(
            &control_pod,
            &ctrl_url,
            &identity,
            &net,
            "client",
            &mut args,
        );
        let client_proxy = client.spawn(MESH_PROXY, &strs(&args), &envs);
        wait_ready(&client, &client_proxy, secs(15));
        Mesh {
            ctrl_url,
            control_pod,
            control,
            client_proxy,
            client,
            files: AtomicU32::new(0),
            identity,
            net,
        }
    }

    /// Identity on: adds the trust bundle and a fresh bootstrap token for
    /// `service` to a sidecar's flags; the environment it needs.
    pub fn identify(
        &self,
        service: &str,
        args: &mut Vec<String>,
    ) -> Vec<(&'static str, &'static str)> {
        identify(
            &self.control_pod,
            &self.ctrl_url,
            &self.identity,
            &self.net,
            service,
            args,
        )
    }

    /// mesh-ctl in the control pod, as the operator.
    pub fn ctl(&self, args: &[&str]) -> Output {
        ctl(&self.control_pod, &self.ctrl_url, &self.identity, args)
    }

    /// curl flags that reach mesh-control as the operator.
    pub fn control_curl_args(&self) -> Vec<String> {
        operator_curl_args(&self.identity)
    }

    /// Starts one instance of `service` (fault server with `initial` knobs,
    /// interception, sidecar) and waits until the client proxy routes to it.
    pub fn upstream(&self, service: &str, name: &str, initial: &Fault) -> Upstream {
        let pod = self.net.pod(name);
        let port: u16 = APP_PORT.parse().expect("APP_PORT is a port");
        let app = pod.spawn(
            "python3",
            &strs(&server_args("0.0.0.0", port, name, initial)),
            &[],
        );
        wait_for(&format!("{name}'s fault server"), secs(10), || {
            app.assert_running();
            (pod.curl(&format!("http://127.0.0.1:{APP_PORT}/_stats"), &[])
                .0
                == 200)
                .then_some(())
        });
        intercept(&pod);
        let cache = self.net.subdir(&format!("{name}-cache"));
        let mut args = sidecar_args(&self.ctrl_url, &cache);
        let own = format!(
            "--service {service} --app-port {APP_PORT} --advertise {} --instance-id {name} \
             --lease-ttl 5s --health-interval 200ms",
            pod.ip()
        );
        args.extend(words(&own).into_iter().map(String::from));
        let envs = self.identify(service, &mut args);
        let proxy = pod.spawn(MESH_PROXY, &strs(&args), &envs);
        wait_ready(&pod, &proxy, secs(15));
        let what = format!("client /state to list {name} ready");
        self.wait_service(&what, PROPAGATION, |s| {
            s["name"] == service && endpoint_state(s, name).as_deref() == Some("ready")
        });
        Upstream {
            name: name.to_string(),
            pod,
            app,
            proxy,
        }
    }

    /// `mesh-ctl apply -f FILE` in the control pod, FILE holding `yaml`.
    pub fn apply(&self, yaml: &str) -> Output {
        let n = self.files.fetch_add(1, Ordering::Relaxed);
        let file = self.net.dir().join(format!("policy-{n}.yaml"));
        std::fs::write(&file, yaml).expect("write policy file");
        self.ctl(&["apply", "-f", &path(&file)])
    }

    /// Applies `yaml`, which must succeed, and waits until the client proxy
    /// has caught up with the control plane's revision.
    pub fn apply_ok(&self, yaml: &str) -> Applied {
        let started_ms = epoch_ms();
        let out = self.apply(yaml);
        let stored = Instant::now();
        let stored_ms = epoch_ms();
        assert!(
            out.status.success(),
            "mesh-ctl apply failed ({}):\n{}{}\n--- document ---\n{yaml}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let want = self.control_revision();
        wait_for(
            &format!("the client proxy to reach revision {want}"),
            PROPAGATION,
            || {
                self.client_proxy.assert_running();
                let state = self.state()?;
                (state["registry"]["revision"].as_u64()? >= want).then_some(())
            },
        );
        Applied {
            started_ms,
            stored_ms,
            propagated: stored.elapsed(),
        }
    }

    /// The control plane's current revision (`GET /v1/status`).
    pub fn control_revision(&self) -> u64 {
        let auth = self.control_curl_args();
        let auth: Vec<&str> = auth.iter().map(String::as_str).collect();
        let (status, body) = self
            .control_pod
            .curl(&format!("{}/v1/status", self.ctrl_url), &auth);
        assert_eq!(status, 200, "GET /v1/status: {body}");
        let v: Value = serde_json::from_str(&body).expect("/v1/status is JSON");
        v["revision"].as_u64().expect("/v1/status has a revision")
    }

    /// The client proxy's `/state`, if it answered JSON.
    pub fn state(&self) -> Option<Value> {
        let (status, body) = self.client.curl(STATE_URL, &[]);
        if status != 200 {
            return None;
        }
        serde_json::from_str(&body).ok()
    }

    /// The `/state` entry of `service`.
    pub fn service(&self, service: &str) -> Option<Value> {
        let state = self.state()?;
        state["registry"]["services"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == service)
            .cloned()
    }

    /// Polls `/state` (until `within`) for a service entry satisfying `pred`.
    pub fn wait_service(
        &self,
        what: &str,
        within: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        wait_for(what, within, || {
            self.client_proxy.assert_running();
            let state = self.state()?;
            state["registry"]["services"]
                .as_array()?
                .iter()
                .find(|s| pred(s))
                .cloned()
        })
    }

    /// Polls `/state` until `service`'s breaker is in `want`.
    pub fn wait_breaker(&self, service: &str, want: &str, within: Duration) -> Value {
        wait_for(&format!("{service}'s breaker to be {want}"), within, || {
            let s = self.service(service)?;
            (s["breaker"]["state"] == want).then_some(s)
        })
    }

    /// Runs `load.py` in the client pod against `url`.
    pub fn load(&self, url: &str, opts: &LoadOpts) -> Load {
        self.load_from(&self.client, url, opts)
    }

    /// Runs `load.py` in `pod` against `url`.
    pub fn load_from(&self, pod: &Pod, url: &str, opts: &LoadOpts) -> Load {
        let mut args: Vec<String> = vec!["-u".into(), LOAD.into(), "--url".into(), url.into()];
        let mut flag = |k: &str, v: String| {
            args.push(format!("--{k}"));
            args.push(v);
        };
        flag("method", opts.method.to_string());
        if let Some(data) = &opts.data {
            flag("data", data.clone());
        }
        flag("requests", opts.requests.to_string());
        flag("concurrency", opts.concurrency.to_string());
        flag("duration", opts.duration.as_secs_f64().to_string());
        flag("timeout", opts.timeout.as_secs_f64().to_string());
        flag("interval-ms", opts.interval.as_millis().to_string());
        // The run's own bounds, plus one request timeout, plus slack.
        let limit = opts.duration + opts.timeout + secs(10);
        let out = pod.run_with("python3", &strs(&args), &[], limit);
        assert!(
            out.status.success(),
            "load.py {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let load = Load::parse(&out.stdout);
        // Every request issued came back (answered or failed), and fewer
        // than asked only because the run's duration ended it.
        let n = load.results.len();
        let cut_short = load.elapsed_ms + 500.0 >= opts.duration.as_secs_f64() * 1000.0;
        assert!(
            n == opts.requests as usize || (n < opts.requests as usize && cut_short),
            "load.py: {n} of {} results after {:.0} ms (duration {:?})",
            opts.requests,
            load.elapsed_ms,
            opts.duration
        );
        let mut seen: Vec<u64> = load.results.iter().map(|c| c.i).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), n, "load.py reported a request twice");
        load
    }

    /// One call from the client pod.
    pub fn call(&self, url: &str) -> Call {
        self.call_with(url, &LoadOpts::sequential(1))
    }

    /// One call with the method and body of `opts`.
    pub fn call_with(&self, url: &str, opts: &LoadOpts) -> Call {
        let opts = LoadOpts {
            requests: 1,
            concurrency: 1,
            ..opts.clone()
        };
        let mut load = self.load(url, &opts);
        assert_eq!(load.results.len(), 1, "one call, one result");
        load.results.remove(0)
    }
}

// === impl Upstream ===

impl Upstream {
    /// Changes the fault server's knobs (only those set in `fault`).
    pub fn set(&self, fault: &Fault) {
        let url = format!("http://127.0.0.1:{APP_PORT}/_fault");
        let json = fault.json();
        let (status, body) = self.pod.curl(&url, &["-X", "POST", "-d", &json]);
        assert_eq!(status, 200, "{}: POST /_fault {json}: {body}", self.name);
    }

    /// What the app itself has received.
    pub fn stats(&self) -> Stats {
        let url = format!("http://127.0.0.1:{APP_PORT}/_stats");
        let (status, body) = self.pod.curl(&url, &[]);
        assert_eq!(status, 200, "{}: GET /_stats: {body}", self.name);
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{}: /_stats {body:?}: {e}", self.name))
    }

    pub fn reset_stats(&self) {
        let url = format!("http://127.0.0.1:{APP_PORT}/_reset_stats");
        let (status, body) = self.pod.curl(&url, &["-X", "POST"]);
        assert_eq!(status, 200, "{}: POST /_reset_stats: {body}", self.name);
    }
}

// === impl LoadOpts ===

impl LoadOpts {
    /// `n` GETs one after the other.
    pub fn sequential(n: u32) -> LoadOpts {
        LoadOpts {
            method: "GET",
            data: None,
            requests: n,
            concurrency: 1,
            duration: secs(30),
            timeout: secs(10),
            interval: Duration::ZERO,
        }
    }

    /// `n` GETs from `c` threads at once.
    pub fn concurrent(n: u32, c: u32) -> LoadOpts {
        LoadOpts {
            concurrency: c,
            ..LoadOpts::sequential(n)
        }
    }
}

/// The `state` of endpoint `id` in a `/state` service entry.
pub fn endpoint_state(service: &Value, id: &str) -> Option<String> {
    service["endpoints"]
        .as_array()?
        .iter()
        .find(|e| e["id"] == id)
        .and_then(|e| e["state"].as_str().map(str::to_string))
}

/// Wall clock in ms since the epoch (load.py stamps calls the same way).
pub fn epoch_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}
