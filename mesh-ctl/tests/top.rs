//! `mesh-ctl top` against a tiny in-process admin server that answers a
//! canned `/state` (the real proxy's /state grows in parallel): one frame
//! with `--once`, live redraws until Ctrl-C, and the failure exit codes.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use support::{ctl_bin, refusing, stderr, stdout};

const STATE: &str = r#"{"control": "http://127.0.0.1:15010", "control_connected": true,
  "registry": {"revision": 7, "services": [
    {"name": "orders", "vip": "127.100.0.1", "balancer": "p2c-ewma",
     "breaker": {"state": "open", "calls": 20, "failures": 20, "slow": 0, "failure_rate": 100, "slow_rate": 0},
     "bulkhead": {"in_flight": 4, "queued": 0, "max_concurrent": 4, "max_queued": 0},
     "retries": {"retried": 3, "budget_exhausted": 1, "budget_available": 10},
     "requests": {"total": 50, "failed": 20, "fast_failed": 30},
     "endpoints": [{"id": "o-1", "addr": "10.0.0.1:8000", "state": "ejected", "in_flight": 0, "ewma_ms": 12.5, "ejections": 2}]}]}}"#;

/// Serves `STATE` on `/state` to up to `max` connections; returns its URL.
fn admin_server(max: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        for conn in listener.incoming().take(max) {
            let Ok(mut conn) = conn else { continue };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                match conn.read(&mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => break,
                }
            }
            let ok = head.starts_with(b"GET /state ");
            let (status, body) = if ok {
                ("200 OK", STATE)
            } else {
                ("404 Not Found", "")
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(resp.as_bytes());
        }
    });
    url
}

fn top(args: &[&str]) -> std::process::Output {
    Command::new(ctl_bin())
        .env_remove("MESH_ADMIN")
        .arg("top")
        .args(args)
        .output()
        .expect("run mesh-ctl top")
}

#[test]
fn once_prints_one_frame() {
    let url = admin_server(1);
    let out = top(&["--admin", &url, "--once"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(!text.contains('\x1b'), "--once draws no screen control");
    for want in [
        "control http://127.0.0.1:15010 (connected)  revision 7",
        "orders  127.100.0.1  p2c-ewma",
        "  breaker    OPEN       calls 20  failed 20 (100.0%)  slow 0 (0.0%)",
        "  bulkhead   in-flight 4 of 4  queued 0 of 0",
        "  requests   total 50  failed 20  fast-failed 30",
        "  retries    retried 3  budget exhausted 1  budget available 10",
        "  endpoints  0 ready  1 ejected  0 unhealthy",
        "    o-1  10.0.0.1:8000  ejected  0          12.5ms  2",
    ] {
        assert!(text.contains(want), "{want:?} missing from\n{text}");
    }
}

#[test]
fn live_mode_redraws_until_ctrl_c() {
    let url = admin_server(100);
    let mut child = Command::new(ctl_bin())
        .args(["top", "--admin", &url, "--interval", "50ms"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn top");
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Three frames, each starting with cursor-home + clear-screen.
    let mut frames = 0;
    while frames < 3 {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("top stopped redrawing");
        if line.starts_with("\x1b[H\x1b[2Jmesh top") {
            frames += 1;
        }
    }
    let pid = child.id().to_string();
    let killed = Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    assert_eq!(child.wait().expect("wait top").code(), Some(0));
}

#[test]
fn failures_exit_1_and_bad_urls_exit_2() {
    let closed = refusing();
    let refused = closed.url.clone();
    let out = top(&["--admin", &refused, "--once"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with(&format!(
            "error: cannot read proxy state at {refused}/state"
        )),
        "{}",
        stderr(&out)
    );
    let out = top(&["--admin", "https://127.0.0.1:1", "--once"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(top(&["--interval", "0s", "--once"]).status.code(), Some(2));
}
