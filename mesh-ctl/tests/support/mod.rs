//! Helpers for running the real mesh-ctl binary in tests.
#![allow(dead_code)] // each test file uses a different subset

use std::path::PathBuf;
use std::process::{Command, Output};

/// The mesh-ctl binary under test.
pub fn ctl_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mesh-ctl"))
}

/// Runs mesh-ctl against `url` with `args`, isolated from the caller's
/// MESH_* environment.
pub fn ctl(url: &str, args: &[&str]) -> Output {
    Command::new(ctl_bin())
        .env_remove("MESH_CONTROL_URL")
        .env_remove("MESH_OUTPUT")
        .arg("--control")
        .arg(url)
        .args(args)
        .output()
        .expect("run mesh-ctl")
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("local addr").port()
}
