//! End-to-end in real pods: `deploy/podman/up.sh` runs the output of the
//! real `mesh-ctl inject --legacy-sidecar` with `podman kube play`, on an
//! internal podman network (no packet can leave the machine), with
//! workload identity on (token Secrets from `mesh-ctl token create --secret`).
//!
//! | step | pods | expected |
//! |---|---|---|
//! | up.sh | mesh-control, hello-1, hello-2, client | the init containers install the rules (NET_ADMIN), `http://hello.mesh/` from the client is answered by both hello pods |
//! | stop hello-2 under the client's 100 rps | | 0 failed requests; hello-2's proxy logs deregistered → removal applied by all 3 watching proxies → draining |
//! | a Job-shaped pod calls hello.mesh, then `POST /shutdown` | job | app and proxy exit 0 |
//! | config hello v1 (applied by up.sh), then v2 with mesh-ctl | hello-1 (`mesh.io/config: hello`) | the app container (uid 1000) reads v1, then v2, from /etc/mesh/config; `config status` lists hello-1's proxy current |
//!
//! podman 4.3 takes a pod's network away within half a second of `podman
//! pod stop` (Kubernetes keeps it until every container has exited), so the
//! story stops the proxy container first, as a kubelet's SIGTERM would
//! reach it with the network up, then the pod (see docs/design-notes.md).
//!
//! Run: `cargo test --test e2e_podman -- --nocapture` (as root).

// Test code: real processes on the wall clock, and unwrap() as assertion.
#![allow(clippy::disallowed_types, clippy::unwrap_used)]

#[allow(dead_code)] // each test binary uses a different part of the harness
mod support;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};
use support::bins::{mesh_ctl, MESH_PROXY};
use support::proc::{command, run_with_timeout};
use support::stories::tool;
use support::{poll, secs, wait_for};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn sh(program: &str, args: &[&str], envs: &[(&str, &str)], within: Duration) -> Output {
    let mut cmd = command(program, args, envs);
    cmd.current_dir(ROOT);
    run_with_timeout(cmd, within)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn podman(args: &[&str]) -> Output {
    sh("podman", args, &[], secs(60))
}

/// `podman logs CONTAINER`, stdout and stderr together.
fn logs(container: &str) -> String {
    text(&podman(&["logs", container]))
}

/// The demo's pods, torn down by `down.sh` whatever happens.
struct Demo {
    dir: PathBuf,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let dir = self.dir.to_string_lossy().into_owned();
        let out = sh(
            &format!("{ROOT}/deploy/podman/down.sh"),
            &[],
            &[("MESH_DEMO_DIR", &dir)],
            secs(120),
        );
        if !out.status.success() {
            eprintln!("down.sh failed:\n{}", text(&out));
        }
    }
}

/// `podman inspect` of one field of a container.
fn state(container: &str, field: &str) -> String {
    let out = podman(&[
        "inspect",
        "--format",
        &format!("{{{{.State.{field}}}}}"),
        container,
    ]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The JSON log line of `container` whose message is `message`.
fn log_line(log: &str, message: &str) -> Option<(usize, Value)> {
    log.lines().enumerate().find_map(|(i, l)| {
        let v: Value = serde_json::from_str(l).ok()?;
        (v["message"] == message).then_some((i, v))
    })
}

/// The client's failed requests after its first answer.
fn failures(client_log: &str) -> Vec<String> {
    let Some(first) = client_log.find("client: first answer") else {
        return vec!["no first answer".into()];
    };
    client_log[first..]
        .lines()
        .filter(|l| l.contains("client: FAIL"))
        .map(str::to_string)
        .collect()
}

/// How many once-a-second reports the client has printed.
fn reports(client_log: &str) -> usize {
    client_log.lines().filter(|l| l.contains(" ok=")).count()
}

fn pods_from_injected_manifests() {
    let bin_dir = Path::new(MESH_PROXY)
        .parent()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let ctl = mesh_ctl().to_string();
    let dir = tempfile::tempdir().unwrap().keep();
    let demo = Demo { dir: dir.clone() };
    let dir_s = dir.to_string_lossy().into_owned();
    let envs = [
        ("MESH_BIN_DIR", bin_dir.as_str()),
        ("MESH_CTL", ctl.as_str()),
        ("MESH_DEMO_DIR", dir_s.as_str()),
    ];

    // --- up: image, network, mesh-control, secrets, inject, play. ---
    let started = Instant::now();
    let up = sh(
        &format!("{ROOT}/deploy/podman/up.sh"),
        &[],
        &envs,
        secs(300),
    );
    let up_text = text(&up);
    assert!(up.status.success(), "up.sh failed:\n{up_text}");
    let first = up_text
        .lines()
        .find(|l| l.contains("first answer") && l.contains("after it began"))
        .unwrap_or_else(|| panic!("no first-answer line:\n{up_text}"));
    println!("up.sh in {} ms; {first}", started.elapsed().as_millis());
    let injected = std::fs::read_to_string(dir.join("hello.injected.yaml")).unwrap();
    assert!(injected.contains("- name: mesh-init"), "{injected}");

    // The init container installed the rules with NET_ADMIN: the client's
    // curl to a mesh name goes through its proxy, to both hello pods.
    let mut seen = std::collections::BTreeSet::new();
    let mut last = String::new();
    let both = poll(secs(30), || {
        let out = podman(&[
            "exec",
            "client-app",
            "curl",
            "-sS",
            "--max-time",
            "3",
            "http://hello.mesh/",
        ]);
        last = text(&out);
        if out.status.success() {
            seen.insert(last.trim().to_string());
        }
        (seen.contains("hello-1") && seen.contains("hello-2")).then_some(())
    });
    if both.is_none() {
        let state = podman(&[
            "exec",
            "client-app",
            "curl",
            "-sS",
            "http://127.0.0.1:15000/state",
        ]);
        panic!(
            "the client reached only {seen:?} (last: {last})\nclient /state: {}\nhello-1 proxy:\n{}\nhello-2 proxy:\n{}\nclient proxy:\n{}\nclient app:\n{}",
            text(&state),
            logs("hello-1-mesh-proxy"),
            logs("hello-2-mesh-proxy"),
            logs("client-mesh-proxy"),
            logs("client-app"),
        );
    }
    let metrics = podman(&[
        "exec",
        "client-app",
        "curl",
        "-sS",
        "http://127.0.0.1:15000/metrics",
    ]);
    assert!(
        text(&metrics).contains("mesh_requests_total{service=\"hello\""),
        "the client's calls went through its proxy:\n{}",
        text(&metrics)
    );

    // --- config: hello-1's app reads its sidecar's files, live. ---
    let props = || {
        let out = podman(&[
            "exec",
            "hello-1-app",
            "cat",
            "/etc/mesh/config/application.properties",
        ]);
        text(&out)
    };
    wait_for("hello-1's app to read config v1", secs(30), || {
        props()
            .contains("greeting.text=hello from config v1")
            .then_some(())
    });
    let env = std::fs::read_to_string(dir.join("ctl.env")).unwrap();
    let var = |k: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap()
            .to_string()
    };
    let (url, token, bundle) = (var("CONTROL_URL"), var("ADMIN_TOKEN"), var("BUNDLE"));
    let ctl_run = |args: &[&str]| {
        let mut all = vec![
            "--control",
            &url,
            "--token-file",
            &token,
            "--trust-bundle",
            &bundle,
        ];
        all.extend_from_slice(args);
        sh(&ctl, &all, &[], secs(30))
    };
    let v2 = dir.join("config-v2.yaml");
    std::fs::write(
        &v2,
        "kind: Config\napplication: hello\ndata:\n  greeting:\n    text: hello from config v2\n",
    )
    .unwrap();
    let applied = ctl_run(&["apply", "-f", v2.to_str().unwrap()]);
    assert!(applied.status.success(), "{}", text(&applied));
    let changed = Instant::now();
    wait_for("hello-1's app to read config v2", secs(30), || {
        props()
            .contains("greeting.text=hello from config v2")
            .then_some(())
    });
    println!(
        "config v2 in hello-1's app container {} ms after the apply",
        changed.elapsed().as_millis()
    );
    let status = wait_for("config status: hello-1's proxy current", secs(30), || {
        let out = ctl_run(&["config", "status", "hello", "-o", "json"]);
        let s: Value = serde_json::from_slice(&out.stdout).ok()?;
        let rows = s["proxies"].as_array()?.clone();
        (rows.len() == 1 && rows[0]["current"] == true).then_some(s)
    });
    assert_eq!(status["latest"], 2, "{status}");

    // --- stop hello-2 under load: nothing fails, the drain waited. ---
    wait_for("the client's load to run", secs(30), || {
        (reports(&logs("client-app")) >= 3).then_some(())
    });
    let before = reports(&logs("client-app"));
    let stop = podman(&["stop", "-t", "30", "hello-2-mesh-proxy"]);
    assert!(stop.status.success(), "{}", text(&stop));
    let pod_stop = podman(&["pod", "stop", "-t", "10", "hello-2"]);
    assert!(pod_stop.status.success(), "{}", text(&pod_stop));
    wait_for("three more seconds of load", secs(20), || {
        (reports(&logs("client-app")) >= before + 3).then_some(())
    });
    let client_log = logs("client-app");
    let failed = failures(&client_log);
    assert!(
        failed.is_empty(),
        "failed requests while hello-2 stopped:\n{}",
        failed.join("\n")
    );
    assert_eq!(state("hello-2-mesh-proxy", "ExitCode"), "0");
    let proxy_log = logs("hello-2-mesh-proxy");
    let (dereg, _) = log_line(&proxy_log, "deregistered").unwrap_or_else(|| panic!("{proxy_log}"));
    let (applied, line) = log_line(&proxy_log, "removal applied by every watching proxy")
        .unwrap_or_else(|| panic!("the drain did not wait for the watchers:\n{proxy_log}"));
    let (drain, _) = log_line(&proxy_log, "draining").unwrap_or_else(|| panic!("{proxy_log}"));
    assert!(dereg < applied && applied < drain, "{proxy_log}");
    assert_eq!(
        line["proxies"], 3,
        "hello-1, hello-2 and the client: {line}"
    );
    println!(
        "hello-2 stopped under the client's load: 0 failed; removal applied by {} proxies in {} ms ({} reports before, {} after)",
        line["proxies"],
        line["waited_ms"],
        before,
        reports(&client_log) - before
    );

    // --- a Job-shaped pod: calls, POST /shutdown, everything exits 0. ---
    let job = dir.join("job.injected.yaml").to_string_lossy().into_owned();
    let play = podman(&["kube", "play", "--network", "mesh-demo", &job]);
    assert!(play.status.success(), "{}", text(&play));
    let exited = poll(secs(60), || {
        let done = ["job-app", "job-mesh-proxy"]
            .iter()
            .all(|c| state(c, "Status") == "exited");
        done.then_some(())
    });
    assert!(
        exited.is_some(),
        "the job did not finish: {}\n{}",
        logs("job-app"),
        logs("job-mesh-proxy")
    );
    for c in ["job-app", "job-mesh-proxy"] {
        assert_eq!(state(c, "ExitCode"), "0", "{c}: {}", logs(c));
    }
    let app = logs("job-app");
    assert!(app.contains("hello.mesh answered 'hello-1'"), "{app}");
    println!("the job called hello.mesh, POSTed /shutdown, and every container exited 0");
    drop(demo);
}

fn main() -> std::process::ExitCode {
    use support::stories::Need::Pods;
    const PODMAN: support::stories::Need = tool(
        "podman",
        &["info"],
        "apt-get install podman runc, and /etc/containers/containers.conf as .ci/run writes it",
    );
    support::stories::run(
        "e2e_podman",
        stories![[Pods, PODMAN] => pods_from_injected_manifests],
    )
}
