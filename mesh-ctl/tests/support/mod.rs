//! Helpers for running the real mesh-ctl binary in tests.
#![allow(dead_code)] // each test file uses a different subset

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// The mesh-ctl binary under test.
pub fn ctl_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mesh-ctl"))
}

/// Runs mesh-ctl against `url` with `args`, isolated from the caller's
/// MESH_* environment.
pub fn ctl(url: &str, args: &[&str]) -> Output {
    Command::new(ctl_bin())
        .env_remove("MESH_CONTROL_URL")
        .env_remove("MESH_CONTROL")
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

/// A URL where nothing answers: a socket bound to a loopback port but not
/// listening, held for the test's life, so the port cannot be taken by
/// anyone else and every connect is refused at once.
pub struct Refusing {
    _socket: socket2::Socket,
    pub url: String,
}

pub fn refusing() -> Refusing {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    socket.bind(&any.into()).expect("bind 127.0.0.1:0");
    let addr = socket
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .expect("bound address");
    Refusing {
        _socket: socket,
        url: format!("http://{addr}"),
    }
}

/// mesh-control running in this test process, built from this very
/// source (no binary on disk that could be stale), on a port the kernel
/// picked, over `data`. Stopped when dropped.
pub struct Control {
    pub url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Control {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn start_control(data: &std::path::Path) -> Control {
    let config = mesh::control::ControlConfig {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        data_dir: data.to_path_buf(),
        ..Default::default()
    };
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let server = mesh::control::ControlServer::bind(config)
                .await
                .expect("bind mesh-control");
            addr_tx.send(server.local_addr()).expect("report address");
            let stopped = async {
                let _ = stop_rx.await;
            };
            server.serve(stopped).await.expect("serve mesh-control");
        });
    });
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(15))
        .expect("mesh-control bound within 15 s");
    Control {
        url: format!("http://{addr}"),
        stop: Some(stop_tx),
        thread: Some(thread),
    }
}

pub fn json<T: serde::de::DeserializeOwned>(out: &std::process::Output) -> T {
    assert_eq!(out.status.code(), Some(0), "{}", stderr(out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(out)))
}

/// Runs mesh-ctl like [`ctl`] with `input` on its stdin.
pub fn ctl_stdin(url: &str, args: &[&str], input: &str) -> Output {
    let mut child = Command::new(ctl_bin())
        .env_remove("MESH_CONTROL_URL")
        .env_remove("MESH_CONTROL")
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
