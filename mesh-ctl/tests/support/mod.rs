//! Helpers for running the real mesh-ctl binary in tests.
#![allow(dead_code)] // each test file uses a different subset

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

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

/// Kills the daemon when the test ends, however it ends.
pub struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn control_bin() -> Option<PathBuf> {
    let bin = ctl_bin().parent()?.join("mesh-control");
    bin.exists().then_some(bin)
}

fn healthz(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = "GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n";
    let mut answer = String::new();
    s.write_all(req.as_bytes()).is_ok()
        && s.read_to_string(&mut answer).is_ok()
        && answer.starts_with("HTTP/1.1 200")
}

/// Starts mesh-control on a free port and waits for /healthz.
pub fn start_control(bin: &PathBuf, data: &std::path::Path) -> (Daemon, String) {
    let port = free_port();
    let child = Command::new(bin)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(data)
        .env("MESH_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn mesh-control");
    let mut daemon = Daemon(child);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !healthz(port) {
        if let Ok(Some(status)) = daemon.0.try_wait() {
            panic!("mesh-control exited ({status}) before serving /healthz; is it still the skeleton stub?");
        }
        assert!(
            Instant::now() < deadline,
            "mesh-control not healthy within 15s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (daemon, format!("http://127.0.0.1:{port}"))
}

pub fn json<T: serde::de::DeserializeOwned>(out: &std::process::Output) -> T {
    assert_eq!(out.status.code(), Some(0), "{}", stderr(out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(out)))
}

/// Runs mesh-ctl like [`ctl`] with `input` on its stdin.
pub fn ctl_stdin(url: &str, args: &[&str], input: &str) -> Output {
    let mut child = Command::new(ctl_bin())
        .env_remove("MESH_CONTROL_URL")
        .env_remove("MESH_OUTPUT")
        .arg("--control")
        .arg(url)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mesh-ctl");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input.as_bytes()).expect("write stdin");
    drop(stdin);
    child.wait_with_output().expect("wait mesh-ctl")
}
