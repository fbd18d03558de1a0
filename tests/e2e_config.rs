//! End-to-end: externalized config delivered by the sidecar to unmodified
//! apps, in network namespaces (the pods) and on loopback (the rest).
//!
//! | story | where | pods / processes | action | expected |
//! |---|---|---|---|---|
//! | a_live_change_reaches_four_unmodified_apps | pods | control; `py` (reads application.json on SIGHUP), `node` (long-polls /config), `cc` (PyPI config-client) and `ncc` (npm cloud-config-client), both refreshed by POST | apply v1, start apps; apply v2; `config status`; `rollback --to 1` | every app serves v1, then v2 within 1 s; status: 4 proxies current, reloads acknowledged (SIGHUP, POST 200 ×2); after the rollback all serve v1's value (v3) |
//! | an_app_restarted_with_the_control_plane_down_starts_from_the_cache | pods | control; `py` | v1, v2; stop mesh-control; restart proxy and app with an empty config dir | the app serves v2; /config answers v2 |
//! | secrets_rest_sealed_stay_out_of_logs_and_show_only_when_asked | loopback, identity on | control; sidecars of `hello` and `other`, both `--config hello` | apply a config with a secret | hello's app files hold it; not in control.redb, not in any log, `<redacted>` in get/history/diff; `--show-secrets` shows it; `other` gets 403 for the secrets and says so in /state |
//! | bad_config_documents_are_refused_by_field_and_change_nothing | loopback | control | invalid YAML, unknown field, file names with `/` and `..`, over 1 MiB, a secret not in data, ... | exit 2, the field named; still one version |
//! | an_unwritable_config_dir_is_reported_and_traffic_flows | loopback | control; a sidecar whose --config-dir cannot be created | apply | /state and the log name the error; /config serves the version; a call through the sidecar answers 200 |
//!
//! Run: `cargo test --test e2e_config -- --nocapture`.

// Test code: real processes on the wall clock, and unwrap() as assertion.
#![allow(clippy::disallowed_types, clippy::unwrap_used)]

#[allow(dead_code, unused_imports)] // each test binary uses a different part of the harness
mod support;

use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};
use support::bins::MESH_PROXY;
use support::fault::Fault;
use support::loopback::{call, get, Loopback};
use support::mesh::{control_pod, sidecar_args, wait_ready, ControlPod};
use support::stories::{tool, Need};
use support::{path, secs, strs, wait_for, Net, Pod, Proc};

const PEERS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/peers");
const NODE: Need = tool("node", &["--version"], "apt-get install nodejs");
const CONFIG_CLIENT: Need = tool(
    "python3",
    &["-c", "import config; config.ConfigClient"],
    "pip install config-client==1.5.0",
);
const CLOUD_CONFIG_CLIENT: Need = tool(
    "sh",
    &[
        "-c",
        "NODE_PATH=$(npm root -g) node -e \"require('cloud-config-client')\"",
    ],
    "npm install -g cloud-config-client@1.6.2",
);

/// Where `npm install -g` put the node peers' libraries.
fn node_path() -> String {
    let out = support::proc::run_with_timeout(
        support::proc::command("npm", &["root", "-g"], &[]),
        secs(30),
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
/// The issue's bound for a change to reach an app.
const LIVE_WITHIN: Duration = Duration::from_secs(1);

fn config_doc(greeting: &str, password: &str) -> String {
    format!(
        "kind: Config
application: hello
data:
  greeting:
    text: {greeting}
  db:
    password: {password}
    port: 5432
files:
  app.yaml: |
    greeting: {greeting}
secret: [db.password]
"
    )
}

// === pods ===

/// Applies `yaml` with a message from the control pod; the version it made.
fn apply(ctrl: &ControlPod, net: &Net, yaml: &str, message: &str) -> u64 {
    let file = net.dir().join(format!("config-{}.yaml", fastrand_suffix()));
    std::fs::write(&file, yaml).unwrap();
    let out = ctrl.ctl_ok(&["apply", "-f", &path(&file), "-m", message, "-o", "json"]);
    let applied: Value = serde_json::from_str(&out).unwrap();
    applied[0]["version"].as_u64().unwrap()
}

fn fastrand_suffix() -> String {
    format!(
        "{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// One app pod: a sidecar delivering `hello`'s config with `extra` flags.
fn sidecar(net: &Net, ctrl: &ControlPod, pod: &Pod, extra: &[String]) -> Proc {
    let cache = net.subdir(&format!("{}-cache", pod.name()));
    let mut args = sidecar_args(&ctrl.url, &cache);
    args.extend(["--config".to_string(), "hello".to_string()]);
    args.extend(extra.iter().cloned());
    let proxy = pod.spawn(MESH_PROXY, &strs(&args), &[]);
    wait_ready(pod, &proxy, secs(15));
    proxy
}

/// `GET /config/hello/default` in the pod answers `version`.
fn wait_delivered(pod: &Pod, version: u64) {
    wait_for(
        &format!("{} to deliver v{version}", pod.name()),
        secs(10),
        || {
            let (status, body) = pod.curl("http://127.0.0.1:15000/config/hello/default", &[]);
            let v: Value = serde_json::from_str(&body).ok()?;
            (status == 200 && v["version"] == version).then_some(())
        },
    );
}

/// What the pod's app answers at `path`.
fn app_says(pod: &Pod, path: &str) -> Option<String> {
    let (status, body) = pod.curl(&format!("http://127.0.0.1:8000{path}"), &[]);
    (status == 200).then(|| body.trim().to_string())
}

fn wait_app_says(pod: &Pod, app: &Proc, path: &str, want: &str) {
    wait_for(
        &format!("{}'s app to say {want:?} at {path}", pod.name()),
        secs(15),
        || {
            app.assert_running();
            (app_says(pod, path).as_deref() == Some(want)).then_some(())
        },
    );
}

fn start_py_app(net: &Net, pod: &Pod, dir: &Path) -> Proc {
    let pid = net.dir().join(format!("{}-app.pid", pod.name()));
    let _ = std::fs::remove_file(&pid);
    pod.spawn(
        "python3",
        &[
            "-u",
            &format!("{PEERS}/config_sighup_app.py"),
            "8000",
            &path(dir),
            &path(&pid),
        ],
        &[],
    )
}

/// Waits until the pid file the SIGHUP app writes exists.
fn wait_pid_file(net: &Net, pod: &Pod) -> std::path::PathBuf {
    let pid = net.dir().join(format!("{}-app.pid", pod.name()));
    wait_for("the app's pid file", secs(10), || {
        pid.exists().then_some(())
    });
    pid
}

fn a_live_change_reaches_four_unmodified_apps() {
    let net = Net::new("cfg");
    let ctrl = control_pod(&net, &[]);
    assert_eq!(
        apply(&ctrl, &net, &config_doc("hello v1", "pw-one"), "first"),
        1
    );

    // py: files and SIGHUP. Its pid file names the process to signal.
    let py = net.pod("py");
    let py_dir = net.subdir("py-config");
    let py_pid = net.dir().join("py-app.pid");
    let py_proxy = sidecar(
        &net,
        &ctrl,
        &py,
        &[
            "--config-dir".into(),
            path(&py_dir),
            "--config-reload-signal".into(),
            "HUP".into(),
            "--config-reload-pid-file".into(),
            path(&py_pid),
        ],
    );
    wait_delivered(&py, 1);
    let py_app = start_py_app(&net, &py, &py_dir);
    wait_pid_file(&net, &py);

    // node: the long poll, no library.
    let node = net.pod("node");
    let node_dir = net.subdir("node-config");
    let node_proxy = sidecar(
        &net,
        &ctrl,
        &node,
        &["--config-dir".into(), path(&node_dir)],
    );
    wait_delivered(&node, 1);
    let node_app = node.spawn(
        "node",
        &[
            &format!("{PEERS}/config_longpoll_app.js"),
            "8000",
            "http://127.0.0.1:15000",
            "hello",
            "default",
        ],
        &[],
    );

    // cc: a third-party Spring Cloud Config client, refreshed by POST.
    let cc = net.pod("cc");
    let cc_dir = net.subdir("cc-config");
    let cc_proxy = sidecar(
        &net,
        &ctrl,
        &cc,
        &[
            "--config-dir".into(),
            path(&cc_dir),
            "--config-reload-url".into(),
            "http://127.0.0.1:8000/refresh".into(),
        ],
    );
    wait_delivered(&cc, 1);
    let cc_app = cc.spawn(
        "python3",
        &[
            "-u",
            &format!("{PEERS}/config_client_app.py"),
            "8000",
            "http://127.0.0.1:15000",
            "hello",
            "default",
        ],
        &[],
    );
    // ncc: another third-party client (npm), refreshed by POST too.
    let ncc = net.pod("ncc");
    let ncc_dir = net.subdir("ncc-config");
    let ncc_proxy = sidecar(
        &net,
        &ctrl,
        &ncc,
        &[
            "--config-dir".into(),
            path(&ncc_dir),
            "--config-reload-url".into(),
            "http://127.0.0.1:8000/refresh".into(),
        ],
    );
    wait_delivered(&ncc, 1);
    let node_path = node_path();
    let ncc_app = ncc.spawn(
        "node",
        &[
            &format!("{PEERS}/config_cloud_client_app.js"),
            "8000",
            "http://127.0.0.1:15000",
            "hello",
            "default",
        ],
        &[("NODE_PATH", &node_path)],
    );
    let apps = [
        (&py, &py_app),
        (&node, &node_app),
        (&cc, &cc_app),
        (&ncc, &ncc_app),
    ];
    for (pod, app) in apps {
        wait_app_says(pod, app, "/greeting", "hello v1");
    }
    assert_eq!(app_says(&py, "/password").as_deref(), Some("pw-one"));
    assert_eq!(app_says(&cc, "/password").as_deref(), Some("pw-one"));
    assert_eq!(app_says(&ncc, "/password").as_deref(), Some("pw-one"));

    // v2: every app serves it within a second of the apply.
    assert_eq!(
        apply(&ctrl, &net, &config_doc("hello v2", "pw-two"), "second"),
        2
    );
    let applied = Instant::now();
    let mut took = Vec::new();
    let mut pending: Vec<_> = apps.iter().collect();
    while !pending.is_empty() && applied.elapsed() < secs(10) {
        pending.retain(|(pod, _)| {
            let done = app_says(pod, "/greeting").as_deref() == Some("hello v2");
            if done {
                took.push((pod.name().to_string(), applied.elapsed()));
            }
            !done
        });
    }
    println!("v2 reached the apps after {took:?}");
    assert!(pending.is_empty(), "still on v1 after 10 s: {took:?}");
    for (name, t) in &took {
        assert!(*t <= LIVE_WITHIN, "{name} served v2 after {t:?}");
    }
    let py_app_files = std::fs::read_to_string(py_dir.join("app.yaml")).unwrap();
    assert_eq!(py_app_files, "greeting: hello v2\n");

    // Who has what: every proxy on v2, the reloads acknowledged.
    let status = wait_for("config status: 4 proxies on v2", secs(10), || {
        let out = ctrl.ctl_ok(&["config", "status", "hello", "-o", "json"]);
        let s: Value = serde_json::from_str(&out).unwrap();
        let rows = s["proxies"].as_array()?.clone();
        let reloads_in = rows.iter().filter(|r| r["reload"]["version"] == 2).count();
        (rows.len() == 4 && rows.iter().all(|r| r["current"] == true) && reloads_in == 3)
            .then_some(s)
    });
    let reloads: Vec<String> = status["proxies"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| !r["reload"].is_null())
        .map(|r| {
            assert_eq!(r["reload"]["ok"], true, "{r}");
            r["reload"]["detail"].as_str().unwrap().to_string()
        })
        .collect();
    assert!(
        reloads.iter().any(|d| d.starts_with("SIGHUP to pid")),
        "{reloads:?}"
    );
    assert_eq!(
        reloads
            .iter()
            .filter(|d| d.ends_with("/refresh: 200"))
            .count(),
        2,
        "{reloads:?}"
    );
    let table = ctrl.ctl_ok(&["config", "status", "hello"]);
    println!("{table}");
    assert!(table.contains("4 of 4 proxies on it"), "{table}");

    // History and diff, as an operator reads them.
    let history = ctrl.ctl_ok(&["config", "history", "hello"]);
    assert!(
        history.contains("first") && history.contains("second"),
        "{history}"
    );
    let diff = ctrl.ctl_ok(&["config", "diff", "hello", "1", "2"]);
    assert!(
        diff.contains("-    text: hello v1") || diff.contains("-  greeting.text: hello v1"),
        "{diff}"
    );
    assert!(
        !diff.contains("pw-"),
        "the diff shows secrets only when asked:\n{diff}"
    );

    // Roll back: a new version with v1's content, everywhere.
    let back = ctrl.ctl_ok(&["config", "rollback", "hello", "--to", "1", "-o", "json"]);
    let back: Value = serde_json::from_str(&back).unwrap();
    assert_eq!(
        (back["version"].as_u64(), back["changed"].as_bool()),
        (Some(3), Some(true))
    );
    for (pod, app) in apps {
        wait_app_says(pod, app, "/greeting", "hello v1");
    }
    assert_eq!(app_says(&py, "/password").as_deref(), Some("pw-one"));
    wait_for("config status: 4 proxies on v3", secs(10), || {
        let out = ctrl.ctl_ok(&["config", "status", "hello", "-o", "json"]);
        let s: Value = serde_json::from_str(&out).unwrap();
        let rows = s["proxies"].as_array()?.clone();
        (s["latest"] == 3 && rows.iter().all(|r| r["version"] == 3)).then_some(())
    });
    for p in [&py_proxy, &node_proxy, &cc_proxy, &ncc_proxy] {
        p.assert_running();
    }
}

fn an_app_restarted_with_the_control_plane_down_starts_from_the_cache() {
    let net = Net::new("cfgc");
    let ctrl = control_pod(&net, &[]);
    apply(&ctrl, &net, &config_doc("cached v1", "pw-one"), "first");
    apply(&ctrl, &net, &config_doc("cached v2", "pw-two"), "second");
    let pod = net.pod("py");
    let dir = net.subdir("py-config");
    let proxy = sidecar(&net, &ctrl, &pod, &["--config-dir".into(), path(&dir)]);
    wait_delivered(&pod, 2);
    let app = start_py_app(&net, &pod, &dir);
    wait_app_says(&pod, &app, "/greeting", "cached v2");

    // The control plane goes away; then the whole pod restarts, its
    // config volume empty (a new emptyDir), its cache kept.
    ctrl.proc.kill();
    ctrl.proc.wait_exit(secs(10)).unwrap();
    app.kill();
    proxy.kill();
    proxy.wait_exit(secs(10)).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let fresh = net.subdir("py-config-2");
    let cache = net.subdir("py-cache");
    let mut args = sidecar_args(&ctrl.url, &cache);
    args.extend(["--config", "hello", "--config-dir", &path(&fresh)].map(String::from));
    let proxy = pod.spawn(MESH_PROXY, &strs(&args), &[]);
    wait_ready(&pod, &proxy, secs(15));
    wait_delivered(&pod, 2);
    let app = start_py_app(&net, &pod, &fresh);
    wait_app_says(&pod, &app, "/greeting", "cached v2");
    assert_eq!(app_says(&pod, "/password").as_deref(), Some("pw-two"));
    let (_, state) = pod.curl("http://127.0.0.1:15000/state", &[]);
    let state: Value = serde_json::from_str(&state).unwrap();
    assert_eq!(state["control_connected"], false, "{state}");
    assert_eq!(state["config"][0]["version"], 2, "{state}");
}

// === loopback ===

fn write(lo: &Loopback, name: &str, text: &str) -> String {
    let file = lo.dir().join(name);
    std::fs::write(&file, text).unwrap();
    path(&file)
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn secrets_rest_sealed_stay_out_of_logs_and_show_only_when_asked() {
    const SECRET: &str = "pw-Zq8-never-in-clear";
    let lo = Loopback::secure("cfg-secrets");
    let file = write(&lo, "v1.yaml", &config_doc("hi", SECRET));
    let out = lo.ctl(&["apply", "-f", &file, "-m", "with a secret"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = lo.ctl(&[
        "apply",
        "-f",
        &write(&lo, "v2.yaml", &config_doc("hey", SECRET)),
    ]);
    assert!(out.status.success(), "{}", text(&out));

    // hello's own sidecar gets the secret, and so do its app's files.
    let files = lo.dir().join("hello-config");
    let hello = lo.sidecar(
        "hello",
        &[
            "--service",
            "hello",
            "--config",
            "hello",
            "--config-dir",
            &path(&files),
        ],
    );
    let got = wait_for("hello's sidecar to deliver v2", secs(10), || {
        let body = get(hello.admin, "/config/hello/default")?;
        let v: Value = serde_json::from_str(&body).ok()?;
        (v["version"] == 2).then_some(v)
    });
    assert_eq!(got["data"]["db.password"], SECRET);
    let props = std::fs::read_to_string(files.join("application.properties")).unwrap();
    assert!(props.contains(&format!("db.password={SECRET}")), "{props}");
    let env = std::fs::read_to_string(files.join(".env")).unwrap();
    assert!(env.contains(&format!("DB_PASSWORD='{SECRET}'")), "{env}");

    // Another service's sidecar may not read hello's secrets.
    let other = lo.sidecar(
        "other",
        &[
            "--service",
            "other",
            "--config",
            "hello",
            "--config-dir",
            &path(&lo.dir().join("other-config")),
        ],
    );
    let refused = wait_for("other's sidecar to report the refusal", secs(10), || {
        let s = other.state();
        let e = s["config"][0]["error"].as_str()?.to_string();
        e.contains("403").then_some(e)
    });
    assert!(refused.contains("secret"), "{refused}");

    // Shown redacted unless asked for.
    for args in [
        vec!["config", "get", "hello"],
        vec!["config", "get", "hello", "-o", "json"],
        vec!["config", "history", "hello", "-o", "json"],
        vec!["config", "diff", "hello", "1", "2"],
        vec!["config", "list"],
    ] {
        let out = lo.ctl(&args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        assert!(!text(&out).contains(SECRET), "{args:?} shows the secret");
    }
    let get = text(&lo.ctl(&["config", "get", "hello"]));
    assert!(get.contains("<redacted>"), "{get}");
    let shown = text(&lo.ctl(&["config", "get", "hello", "--show-secrets"]));
    assert!(shown.contains(SECRET), "{shown}");

    // At rest and in the logs: never in the clear.
    let store = std::fs::read(lo.dir().join("control-data/control.redb")).unwrap();
    assert!(
        !store.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
        "the secret is in control.redb in plaintext"
    );
    let hello_key = lo.dir().join("control-data/config.key");
    let mode = std::fs::metadata(&hello_key).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
    for entry in std::fs::read_dir(lo.dir()).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "log") {
            let log = std::fs::read_to_string(&p).unwrap();
            assert!(!log.contains(SECRET), "{} logs the secret", p.display());
        }
    }
}

/// (case, document, field its error must name). Each is for `hello`,
/// whose v1 must stay the only version.
const BAD: &[(&str, &str, &str)] = &[
    (
        "invalid YAML",
        "kind: Config\napplication: hello\ndata: [unclosed\n",
        "(yaml)",
    ),
    (
        "unknown field",
        "kind: Config\napplication: hello\ncolour: blue\n",
        "colour",
    ),
    (
        "a file name with /",
        "kind: Config\napplication: hello\nfiles:\n  conf/app.yaml: x\n",
        "files.conf/app.yaml",
    ),
    (
        "a file name with ..",
        "kind: Config\napplication: hello\nfiles:\n  ../escape: x\n",
        "files.../escape",
    ),
    (
        "the swap's own name",
        "kind: Config\napplication: hello\nfiles:\n  ..data: x\n",
        "files...data",
    ),
    (
        "a rendered file's name",
        "kind: Config\napplication: hello\nfiles:\n  application.json: x\n",
        "files.application.json",
    ),
    (
        "a secret not in data",
        "kind: Config\napplication: hello\ndata: {a: 1}\nsecret: [db.password]\n",
        "secret[0]",
    ),
    (
        "a null value",
        "kind: Config\napplication: hello\ndata: {a: null}\n",
        "data.a",
    ),
    (
        "a key both a value and a parent",
        "kind: Config\napplication: hello\ndata: {a: 1, a.b: 2}\n",
        "data.a.b",
    ),
    (
        "a bad profile",
        "kind: Config\napplication: hello\nprofile: Prod\n",
        "profile",
    ),
    (
        "no application",
        "kind: Config\ndata: {a: 1}\n",
        "application",
    ),
];

fn bad_config_documents_are_refused_by_field_and_change_nothing() {
    let lo = Loopback::start("cfg-bad");
    let good = write(
        &lo,
        "good.yaml",
        "kind: Config\napplication: hello\ndata: {a: 1}\n",
    );
    assert!(lo.ctl(&["apply", "-f", &good]).status.success());
    let mut cases: Vec<(String, String, String)> = BAD
        .iter()
        .map(|(c, d, f)| (c.to_string(), d.to_string(), f.to_string()))
        .collect();
    let big = format!(
        "kind: Config\napplication: hello\nfiles:\n  big.txt: {}\n",
        "x".repeat(mesh::config::MAX_CONFIG_BYTES + 1)
    );
    cases.push(("over 1 MiB".into(), big, "(document)".into()));
    let mut rows = Vec::new();
    for (i, (case, doc, field)) in cases.iter().enumerate() {
        let file = write(&lo, &format!("bad-{i}.yaml"), doc);
        let out = lo.ctl(&["apply", "-f", &file]);
        let said = text(&out);
        let named = said.contains(&format!(": {field}: "));
        rows.push(format!(
            "{case:<32} exit {:?} {}",
            out.status.code(),
            if named {
                "field named"
            } else {
                "FIELD NOT NAMED"
            }
        ));
        assert_eq!(out.status.code(), Some(2), "{case}: {said}");
        assert!(named, "{case}: {field} not named in:\n{said}");
    }
    println!("{}", rows.join("\n"));
    // The same documents straight at the API (curl skips mesh-ctl's checks).
    let url = format!("{}/v1/configs/hello/default", lo.control_url());
    let out = support::proc::run_with_timeout(
        support::proc::command(
            "curl",
            &[
                "-s",
                "-X",
                "PUT",
                "-d",
                r#"{"document":{"application":"hello","files":{"../x":"y"}}}"#,
                &url,
            ],
            &[],
        ),
        secs(10),
    );
    assert!(text(&out).contains("files.../x"), "{}", text(&out));
    let history = text(&lo.ctl(&["config", "history", "hello", "-o", "json"]));
    let history: Value = serde_json::from_str(&history).unwrap();
    assert_eq!(history.as_array().unwrap().len(), 1, "{history}");
}

fn an_unwritable_config_dir_is_reported_and_traffic_flows() {
    let lo = Loopback::start("cfg-unwritable");
    let file = write(&lo, "v1.yaml", &config_doc("hi", "pw"));
    assert!(lo.ctl(&["apply", "-f", &file]).status.success());
    let app = lo.app("web", &Fault::default());
    lo.register_addr("web", app.addr);
    // Under a regular file: no directory can ever be made there.
    let blocker = lo.dir().join("not-a-dir");
    std::fs::write(&blocker, "x").unwrap();
    let dir = blocker.join("config");
    let sidecar = lo.sidecar(
        "client",
        &["--config", "hello", "--config-dir", &path(&dir)],
    );
    let error = wait_for("/state to name the config error", secs(10), || {
        let s = sidecar.state();
        s["config"][0]["error"].as_str().map(str::to_string)
    });
    assert!(
        error.contains("cannot write") && error.contains("not-a-dir"),
        "{error}"
    );
    let served: Value =
        serde_json::from_str(&get(sidecar.admin, "/config/hello/default").unwrap()).unwrap();
    assert_eq!(served["version"], 1, "the local endpoint still serves it");
    let log = std::fs::read_to_string(sidecar.proc.log_path()).unwrap();
    assert!(log.contains("config files not written"), "{log}");
    sidecar.wait_ready_endpoints("web", 1);
    let answer = call(&sidecar, "http://web.mesh/", &[]);
    assert_eq!(answer.status, 200, "{answer:?}");
}

fn main() -> std::process::ExitCode {
    use support::stories::Need::Pods;
    use support::stories::{CURL, PYTHON3};
    support::stories::run(
        "e2e_config",
        stories![
            [Pods, PYTHON3, NODE, CONFIG_CLIENT, CLOUD_CONFIG_CLIENT] => a_live_change_reaches_four_unmodified_apps,
            [Pods, PYTHON3] => an_app_restarted_with_the_control_plane_down_starts_from_the_cache,
            [CURL, PYTHON3] => secrets_rest_sealed_stay_out_of_logs_and_show_only_when_asked,
            [CURL] => bad_config_documents_are_refused_by_field_and_change_nothing,
            [CURL, PYTHON3] => an_unwritable_config_dir_is_reported_and_traffic_flows,
        ],
    )
}
