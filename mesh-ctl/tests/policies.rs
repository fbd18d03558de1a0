//! `apply -f`, `get policy`, `delete policy` against the real mesh-control
//! daemon (skipped, with a message, when no mesh-control binary sits next
//! to mesh-ctl: `cargo build --bins`).

mod support;

use mesh::model::{parse_policy_documents, ControlStatus, ServicePolicy};
use support::{ctl, ctl_stdin, json, start_control, stderr, stdout};

const GOOD: &str = "\
kind: ServicePolicy
service: orders
loadBalancer: round-robin
bulkhead: { maxConcurrent: 8 }
fallback: { status: 200, headers: { content-type: application/json }, body: '[]' }
---
kind: ServicePolicy
service: users
retries: { attempts: 0 }
";

/// Doc 1 is valid (and would change orders), doc 2 has two bad fields, doc
/// 3 one: nothing may be applied.
const BAD: &str = "\
kind: ServicePolicy
service: orders
bulkhead: { maxConcurrent: 1 }
---
kind: ServicePolicy
service: users
breaker: { failureRate: 150, window: soon }
---
kind: ServicePolicy
service: payments
fallback: { status: 200 }
";

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write policy file");
    path.display().to_string()
}

fn get(url: &str, service: &str) -> ServicePolicy {
    let out = ctl(url, &["get", "policy", service]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let mut docs = parse_policy_documents(&stdout(&out)).expect("get prints a valid document");
    assert_eq!(docs.len(), 1);
    docs.remove(0)
}

#[test]
fn apply_get_delete_and_exit_codes() {
    let data = tempfile::tempdir().expect("tempdir");
    let files = tempfile::tempdir().expect("tempdir");
    let control = start_control(data.path());
    let url = control.url.clone();

    let good = write(files.path(), "good.yaml", GOOD);
    let out = ctl(&url, &["apply", "-f", &good]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "policy orders applied (revision 1)\npolicy users applied (revision 2)\n"
    );
    let orders = get(&url, "orders");
    assert_eq!(orders.bulkhead.max_concurrent, 8);
    assert_eq!(orders, parse_policy_documents(GOOD).unwrap()[0]);
    // `get` output applies back as a no-op.
    let printed = stdout(&ctl(&url, &["get", "policy", "orders"]));
    let out = ctl_stdin(&url, &["apply", "-f", "-"], &printed);
    assert_eq!(
        stdout(&out),
        "policy orders applied (revision 2)\n",
        "{}",
        stderr(&out)
    );

    // Invalid file: every error, exit 2, nothing applied (not even doc 1).
    let bad = write(files.path(), "bad.yaml", BAD);
    let out = ctl(&url, &["apply", "-f", &bad]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(
        lines[0].starts_with(&format!("{bad}: doc 2: breaker.window: ")),
        "{err}"
    );
    assert!(
        lines[1].starts_with(&format!("{bad}: doc 2: breaker.failureRate: ")),
        "{err}"
    );
    assert!(
        lines[2].starts_with(&format!("{bad}: doc 3: fallback: ")),
        "{err}"
    );
    assert!(stdout(&out).is_empty());
    assert_eq!(get(&url, "orders").bulkhead.max_concurrent, 8);
    assert_eq!(
        ctl(&url, &["get", "policy", "payments"]).status.code(),
        Some(1)
    );
    let status: ControlStatus = json(&ctl(&url, &["status", "-o", "json"]));
    assert_eq!((status.revision, status.policies), (2, 2));

    let out = ctl_stdin(
        &url,
        &["apply", "-f", "-"],
        "kind: ServicePolicy\nservice: x\nextra: 1\n",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).starts_with("<stdin>: doc 1: extra: unknown field"),
        "{}",
        stderr(&out)
    );
    for (args, want) in [
        (
            vec!["apply", "-f", "/nonexistent/p.yaml"],
            "cannot read /nonexistent/p.yaml",
        ),
        (vec!["apply"], "--filename"),
    ] {
        let out = ctl(&url, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(stderr(&out).contains(want), "{args:?}: {}", stderr(&out));
    }
    let out = ctl_stdin(&url, &["apply", "-f", "-"], "# nothing\n");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no documents"), "{}", stderr(&out));

    // The list, as a table and as re-appliable YAML.
    let out = ctl(&url, &["get", "policies"]);
    let table = stdout(&out);
    assert!(
        table.starts_with("SERVICE") && table.lines().count() == 3,
        "{table}"
    );
    let all = stdout(&ctl(&url, &["get", "policy", "-o", "yaml"]));
    assert_eq!(
        parse_policy_documents(&all).map(|v| v.len()),
        Ok(2),
        "{all}"
    );
    let one: serde_json::Value = json(&ctl(&url, &["get", "policy", "users", "-o", "json"]));
    assert_eq!(one["retries"]["attempts"], 0);

    // Delete: 0, then the policy is gone (exit 1 with a clear message).
    let out = ctl(&url, &["delete", "policy", "users"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("policy users deleted"),
        "{}",
        stdout(&out)
    );
    let out = ctl(&url, &["get", "policy", "users"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no policy is applied for service \"users\""),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        ctl(&url, &["delete", "policy", "users"]).status.code(),
        Some(1)
    );
    // A name the server rejects is bad input.
    assert_eq!(
        ctl(&url, &["delete", "policy", "Bad_Name"]).status.code(),
        Some(2)
    );
}
