//! mesh-ctl against the real mesh-control daemon.
//!
//! NOTE: this test needs the control-plane server (src/control/, written in
//! parallel) and passes only once it has landed. It is skipped, with a
//! message, when no `mesh-control` binary sits next to mesh-ctl in the
//! target directory (build it with `cargo build --bins`). A mesh-control
//! that exits without serving /healthz (the skeleton stub) fails the test.

mod support;

use mesh::model::{ControlStatus, Registered, ServiceInfo, ServiceSummary};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use support::{ctl, ctl_bin, json, start_control, stderr, stdout};

#[test]
fn register_list_deregister_through_the_cli() {
    let data = tempfile::tempdir().expect("tempdir");
    let control = start_control(data.path());
    let url = control.url.clone();

    let out = ctl(
        &url,
        &[
            "register",
            "hello",
            "127.0.0.1:8000",
            "--ttl",
            "30s",
            "--meta",
            "zone=a",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("registered hello/127.0.0.1:8000 at 127.0.0.1:8000 ttl 30s"),
        "{}",
        stdout(&out)
    );

    let reg: Registered = json(&ctl(
        &url,
        &[
            "register",
            "hello",
            "127.0.0.1:8001",
            "--id",
            "h-2",
            "-o",
            "json",
        ],
    ));
    assert_eq!(
        (reg.instance.id.as_str(), reg.instance.ttl_secs),
        ("h-2", None)
    );

    let services: Vec<ServiceSummary> = json(&ctl(&url, &["services", "-o", "json"]));
    assert_eq!(services.len(), 1, "{services:?}");
    assert_eq!(
        (
            services[0].name.as_str(),
            services[0].instances,
            services[0].healthy
        ),
        ("hello", 2, 2)
    );
    assert_eq!(services[0].vip, reg.vip);

    let table = ctl(&url, &["endpoints", "hello"]);
    assert_eq!(table.status.code(), Some(0), "{}", stderr(&table));
    let lines: Vec<String> = stdout(&table).lines().map(str::to_string).collect();
    assert!(lines[0].starts_with("ID") && lines.len() == 3, "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("127.0.0.1:8000") && l.contains("zone=a") && l.contains("30s")),
        "{lines:?}"
    );

    let out = ctl(&url, &["deregister", "hello", "h-2"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = ctl(&url, &["endpoints", "hello", "-o", "yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let info: ServiceInfo = serde_norway::from_slice(&out.stdout).expect("yaml");
    assert_eq!(info.instances.len(), 1);
    let status: ControlStatus = json(&ctl(&url, &["status", "-o", "json"]));
    assert_eq!((status.services, status.instances), (1, 1));

    // Failures: 404s exit 1; invalid input (here or at the server) exits 2.
    assert_eq!(
        ctl(&url, &["deregister", "hello", "h-2"]).status.code(),
        Some(1)
    );
    assert_eq!(ctl(&url, &["endpoints", "nosuch"]).status.code(), Some(1));
    for (args, field) in [
        (&["register", "hello", "127.0.0.1:70000"][..], "port"),
        (&["register", "Bad_Name", "127.0.0.1:80"], "service"),
        (&["register", "hello", "127.0.0.1:80", "--ttl", "2h"], "ttl"),
        (&["register", "hello", "127.0.0.1:80", "--id", "a/b"], "id"),
    ] {
        let out = ctl(&url, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(field), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn watch_prints_changes_and_exits_0_on_ctrl_c() {
    let data = tempfile::tempdir().expect("tempdir");
    let control = start_control(data.path());
    let url = control.url.clone();

    let mut watch = Command::new(ctl_bin())
        .env_remove("MESH_OUTPUT")
        .args(["--control", &url, "watch"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn watch");
    let (tx, rx) = mpsc::channel();
    let out = watch.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = |what: &str| {
        rx.recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("no {what} line within 10s"))
    };
    assert!(next("snapshot").contains("  snapshot 0 services"));
    let out = ctl(&url, &["register", "hello", "127.0.0.1:9000"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let line = next("upsert");
    assert!(
        line.ends_with("  upsert hello/127.0.0.1:9000 127.0.0.1:9000 up"),
        "{line}"
    );
    assert_eq!(
        ctl(&url, &["deregister", "hello", "127.0.0.1:9000"])
            .status
            .code(),
        Some(0)
    );
    let line = next("remove");
    assert!(
        line.ends_with("  remove hello/127.0.0.1:9000 deregistered"),
        "{line}"
    );

    // Ctrl-C: SIGINT to the process we started, by its pid.
    let pid = watch.id().to_string();
    let killed = Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = watch.wait().expect("wait watch");
    assert_eq!(status.code(), Some(0));
}
