//! The real `mesh-control` binary over loopback: register over HTTP, see the
//! change on a watch stream, stop it with SIGTERM (exit 0), start it again on
//! the same data dir and find the registry intact.

// Test code: real processes on the wall clock, and unwrap() as assertion.
#![allow(clippy::disallowed_types, clippy::unwrap_used)]

#[allow(dead_code, unused_imports)] // each test binary uses a different part of the harness
mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use mesh::model::{ControlStatus, Registered, ServiceInfo, WatchEvent};
use std::net::SocketAddr;
use std::process::ExitStatus;
use std::time::{Duration, Instant};
use support::proc::{command, spawn_logged, Proc};
use tokio::net::TcpStream;

/// A running mesh-control, killed by PID if the test ends early (`Proc`
/// does that on drop).
struct Control {
    proc: Proc,
    addr: SocketAddr,
}

impl Control {
    async fn start(data_dir: &std::path::Path) -> Control {
        // The binary has no way to report an ephemeral port, so take a free
        // one and give it back just before the daemon binds it.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let listen = addr.to_string();
        let data = data_dir.to_string_lossy();
        let cmd = command(
            env!("CARGO_BIN_EXE_mesh-control"),
            &[
                "--listen",
                &listen,
                "--keepalive-interval",
                "1s",
                "--data-dir",
                &data,
            ],
            &[("MESH_LOG", "warn")],
        );
        let log = data_dir.join("mesh-control.log");
        let control = Control {
            proc: spawn_logged(cmd, "mesh-control".into(), log),
            addr,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((status, _)) = control.call("GET", "/healthz", "").await {
                assert_eq!(status, 200);
                return control;
            }
            control.proc.assert_running();
            assert!(
                Instant::now() < deadline,
                "mesh-control did not come up on {addr}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        body: &str,
    ) -> std::io::Result<Response<Incoming>> {
        let tcp = TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(std::io::Error::other)?;
        sender
            .send_request(req)
            .await
            .map_err(std::io::Error::other)
    }

    async fn call(&self, method: &str, path: &str, body: &str) -> std::io::Result<(u16, Bytes)> {
        let resp = self.send(method, path, body).await?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(std::io::Error::other)?;
        Ok((status, body.to_bytes()))
    }

    /// SIGTERM by PID, then wait (bounded) for the exit status.
    fn stop(self) -> ExitStatus {
        self.proc.term();
        self.proc
            .wait_exit(Duration::from_secs(15))
            .expect("mesh-control ignored SIGTERM")
    }
}

/// Reads NDJSON events off a watch response.
struct Watch {
    body: Incoming,
    buf: Vec<u8>,
}

impl Watch {
    async fn next(&mut self) -> WatchEvent {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=nl).collect();
                return serde_json::from_slice(&line).unwrap();
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame())
                .await
                .expect("no watch line within 10s")
                .expect("watch stream ended")
                .unwrap();
            if let Ok(data) = frame.into_data() {
                self.buf.extend_from_slice(&data);
            }
        }
    }
}

#[tokio::test]
async fn register_reaches_a_watcher_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let control = Control::start(dir.path()).await;

    let resp = control.send("GET", "/v1/watch?since=0", "").await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let mut watch = Watch {
        body: resp.into_body(),
        buf: Vec::new(),
    };
    assert!(
        matches!(watch.next().await, WatchEvent::Snapshot { snapshot } if snapshot.revision == 0)
    );

    // Time register -> Upsert on the watcher, several times.
    let mut latencies = Vec::new();
    let mut vip = None;
    for port in 1..=20u16 {
        let inbound = 15000 + port;
        let body = format!(
            r#"{{"id":"web-{port}","address":"127.0.0.2","port":{port},"ttl":30,"inbound_port":{inbound}}}"#
        );
        let start = Instant::now();
        let (status, reply) = control
            .call("POST", "/v1/services/web/instances", &body)
            .await
            .unwrap();
        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&reply));
        let reply: Registered = serde_json::from_slice(&reply).unwrap();
        match watch.next().await {
            WatchEvent::Upsert {
                revision,
                vip: v,
                instance,
            } => {
                latencies.push(start.elapsed());
                assert_eq!(
                    (revision, instance.id, instance.inbound_port),
                    (u64::from(port), format!("web-{port}"), Some(inbound))
                );
                assert_eq!(v, reply.vip);
                vip = Some(v);
            }
            other => panic!("expected an Upsert, got {other:?}"),
        }
    }
    latencies.sort();
    eprintln!(
        "register -> watcher over loopback: median {:?}, max {:?}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
    assert!(
        latencies[latencies.len() / 2] < Duration::from_millis(100),
        "{latencies:?}"
    );

    // Quiet stream: a keep-alive (interval 1s) carrying the revision.
    assert_eq!(watch.next().await, WatchEvent::Keepalive { revision: 20 });

    let (status, _) = control
        .call("POST", "/v1/services/Bad_Name/instances", "{}")
        .await
        .unwrap();
    assert_eq!(status, 400);

    let status = control.stop();
    assert!(
        status.success(),
        "SIGTERM should be a clean exit, got {status}"
    );

    // Same data dir: VIP, instances and revision are back.
    let control = Control::start(dir.path()).await;
    let (_, st) = control.call("GET", "/v1/status", "").await.unwrap();
    let st: ControlStatus = serde_json::from_slice(&st).unwrap();
    assert_eq!((st.revision, st.instances), (20, 20));
    let (_, info) = control.call("GET", "/v1/services/web", "").await.unwrap();
    let info: ServiceInfo = serde_json::from_slice(&info).unwrap();
    assert_eq!(Some(info.vip), vip);
    // The sidecar inbound port survives register -> store -> list.
    for i in &info.instances {
        assert_eq!(i.inbound_port, Some(15000 + i.port), "{i:?}");
    }
    // ... and a fresh watcher's snapshot.
    let resp = control.send("GET", "/v1/watch?since=0", "").await.unwrap();
    let mut watch = Watch {
        body: resp.into_body(),
        buf: Vec::new(),
    };
    match watch.next().await {
        WatchEvent::Snapshot { snapshot } => {
            let web = snapshot.services.iter().find(|s| s.name == "web").unwrap();
            assert_eq!(web.instances.len(), 20);
            for i in &web.instances {
                assert_eq!(i.inbound_port, Some(15000 + i.port), "{i:?}");
            }
        }
        other => panic!("expected a Snapshot, got {other:?}"),
    }
    drop(watch);
    assert!(control.stop().success());
}
