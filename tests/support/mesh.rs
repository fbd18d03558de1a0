//! The mesh's cast for end-to-end scenarios: a `hello` instance (python
//! app + sidecar), a client sidecar, and the calls and observations the
//! stories are told with (curl through the mesh, `mesh-ctl`, `/proc`).

use super::bins::{mesh_ctl, MESH_CONTROL, MESH_PROXY};
use super::{path, poll, secs, strs, wait_for, words, Net, Pod, Proc};
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

/// Port every app listens on inside its own pod.
pub const APP_PORT: &str = "8000";
/// Lease of the hello instances (`--lease-ttl`); eviction is measured
/// against it.
pub const LEASE_TTL: Duration = Duration::from_secs(2);
const LEASE_TTL_ARG: &str = "2s";

/// Port of mesh-control inside its pod.
pub const CONTROL_PORT: u16 = 15010;

/// The control pod and its mesh-control, reachable from every pod.
pub struct ControlPod {
    pub pod: Pod,
    pub proc: Proc,
    /// `http://POD-IP:15010`.
    pub url: String,
}

/// Starts mesh-control in a pod of its own (data in the net's
/// `control-data`, `extra` flags after) and waits for its `/healthz`.
pub fn control_pod(net: &Net, extra: &[&str]) -> ControlPod {
    let pod = net.pod("control");
    let url = format!("http://{}:{CONTROL_PORT}", pod.ip());
    let data = path(&net.subdir("control-data"));
    let listen = format!("{}:{CONTROL_PORT}", pod.ip());
    let mut args = vec!["--listen", &listen, "--data-dir", &data];
    args.extend_from_slice(extra);
    let proc = pod.spawn(MESH_CONTROL, &args, &[]);
    wait_for("mesh-control /healthz", secs(15), || {
        proc.assert_running();
        (pod.curl(&format!("{url}/healthz"), &[]).0 == 200).then_some(())
    });
    ControlPod { pod, proc, url }
}

impl ControlPod {
    /// `GET /v1/proxies`.
    pub fn proxies(&self) -> Value {
        let (status, body) = self.pod.curl(&format!("{}/v1/proxies", self.url), &[]);
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("/v1/proxies is JSON")
    }

    /// Polls until `n` proxies watch.
    pub fn wait_watching(&self, n: u64) {
        wait_for(&format!("{n} proxies watching"), secs(20), || {
            (self.proxies()["watching"].as_u64() == Some(n)).then_some(())
        });
    }

    /// `mesh-ctl --control URL ARGS` from the control pod: (exit code,
    /// stdout, stderr).
    pub fn ctl(&self, args: &[&str]) -> (i32, String, String) {
        let mut all = vec!["--control", &self.url];
        all.extend_from_slice(args);
        let out = self.pod.run_with(mesh_ctl(), &all, &[], secs(15));
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// [`ControlPod::ctl`] that must succeed; its stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.ctl(args);
        assert_eq!(code, 0, "mesh-ctl {args:?}:\n{out}{err}");
        out
    }
}

/// One instance of `hello`: its pod, the python app, and the sidecar.
pub struct Hello {
    pub pod: Pod,
    pub app: Proc,
    pub proxy: Proc,
}

impl Hello {
    /// Starts the instance and waits until its sidecar is ready.
    pub fn start(net: &Net, name: &str, ctrl_url: &str) -> Hello {
        let hello = Hello::spawn(net, name, ctrl_url);
        wait_ready(&hello.pod, &hello.proxy, secs(15));
        hello
    }

    /// Starts app, interception and sidecar without waiting for readiness.
    pub fn spawn(net: &Net, name: &str, ctrl_url: &str) -> Hello {
        Hello::spawn_with(net, name, ctrl_url, &[])
    }

    /// [`Hello::start`] with more sidecar flags.
    pub fn start_with(net: &Net, name: &str, ctrl_url: &str, extra: &[&str]) -> Hello {
        let hello = Hello::spawn_with(net, name, ctrl_url, extra);
        wait_ready(&hello.pod, &hello.proxy, secs(15));
        hello
    }

    /// [`Hello::spawn`] with more sidecar flags.
    pub fn spawn_with(net: &Net, name: &str, ctrl_url: &str, extra: &[&str]) -> Hello {
        Hello::spawn_env(net, name, ctrl_url, extra, &[])
    }

    /// [`Hello::spawn_with`] with the sidecar's environment (identity on:
    /// `MESH_IDENTITY`, see `resilience::identify`).
    pub fn spawn_env(
        net: &Net,
        name: &str,
        ctrl_url: &str,
        extra: &[&str],
        envs: &[(&str, &str)],
    ) -> Hello {
        let pod = net.pod(name);
        let app = start_app(net, &pod);
        wait_for(&format!("{name}'s app"), secs(10), || {
            app.assert_running();
            (pod.curl(&format!("http://127.0.0.1:{APP_PORT}/name"), &[])
                .0
                == 200)
                .then_some(())
        });
        intercept(&pod);
        let cache = net.subdir(&format!("{name}-cache"));
        let mut args = sidecar_args(ctrl_url, &cache);
        let ip = pod.ip().to_string();
        // `extra` may choose another lease.
        let lease = match extra.contains(&"--lease-ttl") {
            true => String::new(),
            false => format!("--lease-ttl {LEASE_TTL_ARG}"),
        };
        let own = format!(
            "--service hello --app-port {APP_PORT} --advertise {ip} --instance-id {name} \
             {lease} --health-interval 200ms"
        );
        args.extend(words(&own).into_iter().map(String::from));
        args.extend(extra.iter().map(|a| a.to_string()));
        let proxy = pod.spawn(MESH_PROXY, &strs(&args), envs);
        Hello { pod, app, proxy }
    }
}

/// python3's http.server serving one file, `name`, holding the pod's name.
pub fn start_app(net: &Net, pod: &Pod) -> Proc {
    let www = net.subdir(&format!("{}-www", pod.name()));
    std::fs::write(www.join("name"), pod.name()).expect("write app content");
    pod.spawn(
        "python3",
        &[
            "-u",
            "-m",
            "http.server",
            APP_PORT,
            "--bind",
            "0.0.0.0",
            "--directory",
            &path(&www),
        ],
        &[],
    )
}

/// `mesh-proxy init` with its defaults: transparent interception in `pod`.
pub fn intercept(pod: &Pod) {
    pod.run_ok(MESH_PROXY, &["init"]);
}

pub fn sidecar_args(ctrl_url: &str, cache: &Path) -> Vec<String> {
    ["--control", ctrl_url, "--cache-dir", &path(cache)]
        .map(String::from)
        .to_vec()
}

/// Waits for the pod's sidecar admin `/ready` to answer 200.
pub fn wait_ready(pod: &Pod, proxy: &Proc, within: Duration) -> Instant {
    wait_for(&format!("{}'s sidecar /ready", pod.name()), within, || {
        proxy.assert_running();
        (pod.curl("http://127.0.0.1:15000/ready", &[]).0 == 200).then(Instant::now)
    })
}

// === calls and observations ===

/// One call from `pod`; the trimmed body if it answered 200.
pub fn call(pod: &Pod, url: &str) -> Option<String> {
    let (status, body) = pod.curl(url, &[]);
    (status == 200).then(|| body.trim().to_string())
}

/// Calls `url` (at most 60 times, 15 s) until every name in `want` has
/// answered; returns the number of calls.
pub fn calls_until_seen(pod: &Pod, url: &str, want: &[&str]) -> usize {
    let mut seen = std::collections::BTreeSet::new();
    let mut calls = 0;
    let done = poll(secs(15), || {
        calls += 1;
        if let Some(body) = call(pod, url) {
            seen.insert(body);
        }
        (want.iter().all(|w| seen.contains(*w)) || calls >= 60).then_some(())
    });
    assert!(
        done.is_some() && want.iter().all(|w| seen.contains(*w)),
        "after {calls} calls to {url} saw only {seen:?}, wanted {want:?}"
    );
    calls
}

/// `calls` calls to hello.mesh from `pod`, every one answered by `name`.
pub fn expect_only(pod: &Pod, name: &str, calls: usize) {
    for i in 0..calls {
        let got = call(pod, "http://hello.mesh/name");
        assert_eq!(got.as_deref(), Some(name), "call {i} of {calls}");
    }
}

/// `mesh-ctl endpoints hello -o json`, run in `pod`; `None` unless it
/// succeeded with JSON.
pub fn endpoints(pod: &Pod, ctl: &str, ctrl_url: &str) -> Option<Value> {
    let out = pod.run(
        ctl,
        &["--control", ctrl_url, "-o", "json", "endpoints", "hello"],
    );
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// Whether any object in `v` has `"id": id` (the output's exact shape is
/// mesh-ctl's business; the instance id is the contract).
pub fn lists_instance(v: &Value, id: &str) -> bool {
    match v {
        Value::Object(map) => {
            map.get("id").and_then(Value::as_str) == Some(id)
                || map.values().any(|v| lists_instance(v, id))
        }
        Value::Array(items) => items.iter().any(|v| lists_instance(v, id)),
        _ => false,
    }
}

/// The `health` of the object in `v` whose `"id"` is `id`, if any.
pub fn instance_health(v: &Value, id: &str) -> Option<String> {
    match v {
        Value::Object(map) if map.get("id").and_then(Value::as_str) == Some(id) => map
            .get("health")
            .and_then(Value::as_str)
            .map(str::to_string),
        Value::Object(map) => map.values().find_map(|v| instance_health(v, id)),
        Value::Array(items) => items.iter().find_map(|v| instance_health(v, id)),
        _ => None,
    }
}

/// Resident set size of a process, in MB, from /proc/<pid>/status.
pub fn rss_mb(proc: &Proc) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", proc.pid()))
        .expect("read /proc/<pid>/status");
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/<pid>/status");
    kb / 1024.0
}
