//! The real mesh-ctl binary without a control plane: exit codes and the
//! one-line error an operator sees.

mod support;

use support::{ctl, refusing, stderr};

#[test]
fn unreachable_control_plane_is_one_line_and_exit_1() {
    let closed = refusing();
    let url = closed.url.clone();
    for args in [
        &["services"][..],
        &["status"],
        &["endpoints", "hello"],
        &["register", "hello", "127.0.0.1:8000"],
        &["deregister", "hello", "x"],
        &["watch"],
        &["services", "-o", "json"],
        &["get", "policy", "orders"],
        &["get", "policies"],
        &["delete", "policy", "orders"],
    ] {
        let out = ctl(&url, args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(
            err,
            format!("error: cannot reach control plane at {url}: connection refused\n"),
            "{args:?}"
        );
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn bad_usage_and_bad_input_exit_2() {
    // Never contacted: every case fails before a request is sent.
    let closed = refusing();
    let url = closed.url.clone();
    let cases: &[(&[&str], &str)] = &[
        (&[], "Usage"),
        (&["frobnicate"], "unrecognized subcommand"),
        (&["services", "--nope"], "unexpected argument"),
        (&["register", "hello"], "HOST:PORT"),
        (
            &["register", "hello", "127.0.0.1:70000"],
            "port: 70000 is outside 1..=65535",
        ),
        (&["register", "hello", "localhost:80"], "not an IP address"),
        (&["register", "hello", "::1:80"], "brackets"),
        (
            &["register", "hello", "127.0.0.1:80", "--meta", "zone"],
            "KEY=VALUE",
        ),
        (
            &["register", "hello", "127.0.0.1:80", "--ttl", "soon"],
            "--ttl",
        ),
        (&["services", "-o", "xml"], "possible values"),
    ];
    for (args, want) in cases {
        let out = ctl(&url, args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {want:?} not in {err}");
    }
    let out = ctl("https://127.0.0.1:1", &["services"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("invalid control plane URL"));
}

#[test]
fn control_url_comes_from_the_environment() {
    let closed = refusing();
    // MESH_CONTROL, as for mesh-proxy; MESH_CONTROL_URL is its old name,
    // still read (with a warning) when MESH_CONTROL is not set.
    for (var, warns) in [("MESH_CONTROL", false), ("MESH_CONTROL_URL", true)] {
        let out = std::process::Command::new(support::ctl_bin())
            .env_remove("MESH_CONTROL")
            .env_remove("MESH_CONTROL_URL")
            .env(var, &closed.url)
            .arg("status")
            .output()
            .expect("run mesh-ctl");
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{var}: {err}");
        assert!(err.contains(&closed.url), "{var}: {err}");
        assert_eq!(
            err.contains("MESH_CONTROL_URL is deprecated"),
            warns,
            "{var}: {err}"
        );
    }
}
