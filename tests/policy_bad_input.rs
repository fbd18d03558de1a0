//! Bad policy documents through the real `mesh-ctl apply -f` against a real
//! `mesh-control` on loopback: each is refused with exit 2 and its field
//! named, nothing from a bad file is applied, and the stored policy stays
//! as it was. No root needed.

// Test code: real processes on the wall clock, and unwrap() as assertion.
#![allow(clippy::disallowed_types, clippy::unwrap_used)]

#[allow(dead_code, unused_imports)] // each test binary uses a different part of the harness
mod support;

use std::process::Output;
use support::bins::{mesh_ctl, MESH_CONTROL};
use support::proc::{command, run_with_timeout, spawn_logged, Proc};
use support::{path, secs, wait_for};

const GOOD: &str = "kind: ServicePolicy
service: orders
loadBalancer: round-robin
opaquePorts: [7000, 7001]
timeouts: { request: 3s, connect: 500ms }
breaker: { minRequests: 7, failureRate: 40, openFor: 4s }
";

/// (document, field paths its error output must name). Each document has
/// `service: orders`, so applying it would replace GOOD.
const BAD: &[(&str, &[&str])] = &[
    ("breaker: { minRequest: 5 }", &["breaker.minRequest"]),
    ("retry: { attempts: 1 }", &["retry"]),
    ("timeouts: { request: -1s }", &["timeouts.request"]),
    ("breaker: { openFor: soon }", &["breaker.openFor"]),
    ("breaker: { failureRate: 150 }", &["breaker.failureRate"]),
    (
        "breaker: { slowCall: { rate: 120 } }",
        &["breaker.slowCall.rate"],
    ),
    (
        "outlier: { maxEjectedPercent: 101 }",
        &["outlier.maxEjectedPercent"],
    ),
    ("loadBalancer: fastest", &["loadBalancer"]),
    ("opaquePorts: 7000", &["opaquePorts"]),
    (
        "opaquePorts: [7000, 0, 70000]",
        &["opaquePorts[1]", "opaquePorts[2]"],
    ),
    ("opaquePorts: [7000, 7001, 7000]", &["opaquePorts[2]"]),
    ("opaquePorts: [\"7000\"]", &["opaquePorts[0]"]),
    ("fallback: { status: 200 }", &["fallback"]),
    ("fallback: { status: 999, body: x }", &["fallback.status"]),
    ("retries: { on: [sometimes] }", &["retries.on"]),
    ("retries: { attempts: -1 }", &["retries.attempts"]),
    (
        "bulkhead: { maxConcurrent: lots }",
        &["bulkhead.maxConcurrent"],
    ),
    (
        "bulkhead: { queueTimeout: 5 parsecs }",
        &["bulkhead.queueTimeout"],
    ),
    (
        // Several bad fields in one document: all named at once.
        "loadBalancer: fastest\nbreaker: { failureRate: 150, openFor: soon }",
        &["loadBalancer", "breaker.failureRate", "breaker.openFor"],
    ),
];

/// mesh-control on a free loopback port, killed with the test.
struct Control {
    _proc: Proc,
    url: String,
    _dir: tempfile::TempDir,
}

fn start_control() -> Control {
    let dir = tempfile::tempdir().expect("temp dir");
    // mesh-control cannot report an ephemeral port: take a free one and
    // give it back just before the daemon binds it.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port");
    let data = dir.path().join("data");
    let args = ["--listen", &addr.to_string(), "--data-dir", &path(&data)];
    let log = dir.path().join("mesh-control.log");
    let proc = spawn_logged(
        command(MESH_CONTROL, &args, &[]),
        "mesh-control".into(),
        log,
    );
    let url = format!("http://{addr}");
    let health = format!("{url}/healthz");
    wait_for("mesh-control /healthz", secs(15), || {
        proc.assert_running();
        let out = run_with_timeout(command("curl", &["-sf", "-m", "2", &health], &[]), secs(5));
        out.status.success().then_some(())
    });
    Control {
        _proc: proc,
        url,
        _dir: dir,
    }
}

impl Control {
    fn ctl(&self, args: &[&str]) -> Output {
        let mut all = vec!["--control", self.url.as_str()];
        all.extend_from_slice(args);
        run_with_timeout(command(mesh_ctl(), &all, &[]), secs(10))
    }

    fn apply(&self, file: &std::path::Path) -> Output {
        self.ctl(&["apply", "-f", &path(file)])
    }

    fn stored(&self, service: &str) -> Option<serde_json::Value> {
        let out = self.ctl(&["-o", "json", "get", "policy", service]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).expect("get policy -o json prints JSON"))
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn malformed_policies_are_refused_by_field_and_change_nothing() {
    let control = start_control();
    let dir = tempfile::tempdir().expect("temp dir");
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, GOOD).expect("write good.yaml");
    let out = control.apply(&good);
    assert!(out.status.success(), "good policy refused: {}", text(&out));
    let before = control.stored("orders").expect("orders policy stored");
    assert_eq!(before["breaker"]["minRequests"], 7, "{before}");
    assert_eq!(
        before["opaquePorts"],
        serde_json::json!([7000, 7001]),
        "{before}"
    );
    // `get policy` prints a document that applies back unchanged.
    let shown = control.ctl(&["get", "policy", "orders"]);
    let yaml = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert!(shown.status.success(), "{}", text(&shown));
    assert!(yaml.contains("opaquePorts:"), "{yaml}");
    let printed = dir.path().join("printed.yaml");
    std::fs::write(&printed, &yaml).expect("write printed.yaml");
    let out = control.apply(&printed);
    assert!(
        out.status.success(),
        "printed policy refused: {}",
        text(&out)
    );
    assert_eq!(control.stored("orders").as_ref(), Some(&before));

    for (i, (body, fields)) in BAD.iter().enumerate() {
        let file = dir.path().join(format!("bad-{i}.yaml"));
        let doc = format!("kind: ServicePolicy\nservice: orders\n{body}\n");
        std::fs::write(&file, &doc).expect("write bad doc");
        let out = control.apply(&file);
        let said = text(&out);
        assert_eq!(out.status.code(), Some(2), "{doc}\n→ {said}");
        for field in *fields {
            assert!(
                said.contains(field),
                "{doc}\n→ does not name {field}: {said}"
            );
        }
        assert!(said.contains("doc 1"), "{doc}\n→ names no document: {said}");
        println!("refused {body:?}: {}", said.trim());
    }

    // More than 64 opaque ports.
    let many: Vec<String> = (1000..1065).map(|p| p.to_string()).collect();
    let file = dir.path().join("many-ports.yaml");
    let doc = format!(
        "kind: ServicePolicy\nservice: orders\nopaquePorts: [{}]\n",
        many.join(", ")
    );
    std::fs::write(&file, &doc).expect("write many-ports.yaml");
    let out = control.apply(&file);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("opaquePorts") && text(&out).contains("at most 64"),
        "{}",
        text(&out)
    );

    // Documents that are not ServicePolicies at all.
    for (name, doc, field) in [
        ("kind", "kind: ServicePolcy\nservice: orders\n", "kind"),
        (
            "no-service",
            "kind: ServicePolicy\nbreaker: { minRequests: 3 }\n",
            "service",
        ),
        (
            "bad-name",
            "kind: ServicePolicy\nservice: Not_A_Label!\n",
            "service",
        ),
    ] {
        let file = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&file, doc).expect("write doc");
        let out = control.apply(&file);
        assert_eq!(out.status.code(), Some(2), "{doc}\n→ {}", text(&out));
        assert!(text(&out).contains(field), "{doc}\n→ {}", text(&out));
    }

    // One bad document spoils the whole file: the good one is not applied.
    let mixed = dir.path().join("mixed.yaml");
    let payments = "kind: ServicePolicy\nservice: payments\nretries: { attempts: 1 }\n";
    let broken = "kind: ServicePolicy\nservice: orders\nbreaker: { failureRate: 150 }\n";
    std::fs::write(&mixed, format!("{payments}---\n{broken}")).expect("write mixed.yaml");
    let out = control.apply(&mixed);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(
        said.contains("doc 2") && said.contains("breaker.failureRate"),
        "{said}"
    );
    assert_eq!(
        control.stored("payments"),
        None,
        "a document of a bad file was applied"
    );

    assert_eq!(
        control.stored("orders"),
        Some(before),
        "the stored policy changed"
    );
}

fn main() -> std::process::ExitCode {
    use support::stories::CURL;
    support::stories::run(
        "policy_bad_input",
        stories![[CURL] => malformed_policies_are_refused_by_field_and_change_nothing],
    )
}
