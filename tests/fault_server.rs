//! The fault-injecting upstream (`tests/support/fault_server.py`) on its
//! own, over loopback with raw TCP: every knob does what the resilience
//! scenarios rely on. No root needed; a few hundred milliseconds.

// Test code: real processes on the wall clock, and unwrap() as assertion.
#![allow(clippy::disallowed_types, clippy::unwrap_used)]

#[allow(dead_code, unused_imports)] // each test binary uses a different part of the harness
mod support;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::fault::{server_args, Fault, Stats};
use support::proc::{command, spawn_logged, Proc};
use support::{secs, wait_for};

/// A fault server on 127.0.0.1, killed when dropped.
struct Server {
    proc: Proc,
    port: u16,
    _dir: tempfile::TempDir,
}

/// One keep-alive client connection.
struct Conn {
    reader: BufReader<TcpStream>,
}

fn start(name: &str, initial: &Fault) -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("fault_server.log");
    let args = server_args("127.0.0.1", 0, name, initial);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let proc = spawn_logged(command("python3", &args, &[]), name.into(), log.clone());
    // The server prints "listening 127.0.0.1:PORT" once bound.
    let port = wait_for("the fault server to listen", secs(10), || {
        proc.assert_running();
        let text = std::fs::read_to_string(&log).ok()?;
        let line = text.lines().find(|l| l.starts_with("listening "))?;
        line.rsplit(':').next()?.trim().parse().ok()
    });
    Server {
        proc,
        port,
        _dir: dir,
    }
}

impl Server {
    fn connect(&self) -> Conn {
        let stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        stream
            .set_read_timeout(Some(secs(10)))
            .expect("set read timeout");
        Conn {
            reader: BufReader::new(stream),
        }
    }

    /// One request on a fresh connection; panics on a transport error.
    fn call(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        self.connect()
            .exchange(method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", self.proc.log_tail(20)))
    }

    fn set(&self, fault: &Fault) -> serde_json::Value {
        let (status, body) = self.call("POST", "/_fault", &fault.json());
        assert_eq!(status, 200, "POST /_fault: {body}");
        serde_json::from_str(&body).expect("/_fault answers JSON")
    }

    fn stats(&self) -> Stats {
        let (status, body) = self.call("GET", "/_stats", "");
        assert_eq!(status, 200, "GET /_stats: {body}");
        serde_json::from_str(&body).expect("/_stats answers Stats")
    }
}

impl Conn {
    /// Sends one HTTP/1.1 request and reads the response (Content-Length).
    fn exchange(&mut self, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nhost: fault\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        self.reader.get_mut().write_all(req.as_bytes())?;
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        let status = line.split_whitespace().nth(1).and_then(|s| s.parse().ok());
        let status =
            status.ok_or_else(|| std::io::Error::other(format!("status line {line:?}")))?;
        let mut length = 0;
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            if line.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut buf = vec![0; length];
        self.reader.read_exact(&mut buf)?;
        Ok((status, String::from_utf8_lossy(&buf).into_owned()))
    }
}

fn serves_its_name_over_keep_alive_and_counts_only_app_requests() {
    let server = start("fs", &Fault::default());
    let mut conn = server.connect();
    assert_eq!(conn.exchange("GET", "/a", "").unwrap(), (200, "fs".into()));
    // Same connection: HTTP/1.1 keep-alive with Content-Length.
    assert_eq!(
        conn.exchange("GET", "/b/c?d=1", "").unwrap(),
        (200, "fs".into())
    );
    assert_eq!(
        conn.exchange("POST", "/orders", "{}").unwrap(),
        (200, "fs".into())
    );

    let stats = server.stats();
    assert_eq!(stats.requests, 3, "{stats:?}");
    assert_eq!(stats.by_method.get("GET"), Some(&2), "{stats:?}");
    assert_eq!(stats.by_method.get("POST"), Some(&1), "{stats:?}");
    assert_eq!((stats.in_flight, stats.max_in_flight), (0, 1), "{stats:?}");
    // Control requests are neither faulted nor counted.
    server.set(&Fault::failing(500));
    assert_eq!(server.stats().requests, 3);
    let (status, body) = server.call("POST", "/_reset_stats", "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.stats(), Stats::default());
}

fn each_knob_acts_and_unspecified_knobs_keep_their_values() {
    let server = start("fs", &Fault::default());

    // failure_rate + status
    let fault = server.set(&Fault::failing(503));
    assert_eq!(
        server.call("GET", "/x", ""),
        (503, "fs: injected 503".into())
    );
    // A partial update keeps the rest.
    let after = server.set(&Fault::latency_ms(300));
    assert_eq!(after["failure_rate"], fault["failure_rate"], "{after}");
    assert_eq!(after["status"], 503, "{after}");

    // latency_ms
    server.set(&Fault {
        failure_rate: Some(0.0),
        ..Fault::default()
    });
    let t0 = Instant::now();
    assert_eq!(server.call("GET", "/slow", ""), (200, "fs".into()));
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < secs(3),
        "{took:?}"
    );

    // reset_rate: RST before any response byte; still counted as received.
    server.set(&Fault {
        latency_ms: Some(0),
        ..Fault::resetting()
    });
    server.call("POST", "/_reset_stats", "");
    let err = server
        .connect()
        .exchange("POST", "/pay", "x=1")
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    let stats = server.stats();
    assert_eq!(stats.by_method.get("POST"), Some(&1), "{stats:?}");
    assert_eq!(stats.outcomes.get("reset"), Some(&1), "{stats:?}");

    // hang: held until cleared.
    server.set(&Fault {
        reset_rate: Some(0.0),
        ..Fault::hang(true)
    });
    let (tx, rx) = mpsc::channel();
    let mut conn = server.connect();
    let held = std::thread::spawn(move || {
        let _ = tx.send(conn.exchange("GET", "/held", ""));
    });
    wait_for("the hung request to be in flight", secs(5), || {
        (server.stats().in_flight == 1).then_some(())
    });
    assert!(
        rx.try_recv().is_err(),
        "a hung request must not be answered"
    );
    let cleared = Instant::now();
    server.set(&Fault::hang(false));
    let answer = rx.recv_timeout(secs(5)).expect("answered once cleared");
    assert_eq!(answer.unwrap(), (200, "fs".into()));
    let released = cleared.elapsed();
    assert!(released < secs(1), "released after {released:?}");
    held.join().expect("client thread");
    let stats = server.stats();
    assert_eq!((stats.in_flight, stats.max_in_flight), (0, 1), "{stats:?}");

    // A bad knob is refused, naming it.
    let (status, body) = server.call("POST", "/_fault", r#"{"failure_rate": 2}"#);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("failure_rate"), "{body}");
}

fn start_flags_set_the_initial_knobs() {
    let server = start(
        "fs",
        &Fault {
            latency_ms: Some(10),
            ..Fault::failing(502)
        },
    );
    assert_eq!(
        server.call("GET", "/", ""),
        (502, "fs: injected 502".into())
    );
    let (status, body) = server.call("GET", "/_fault", "");
    assert_eq!(status, 200);
    let fault: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(fault["failure_rate"], 1.0, "{fault}");
    assert_eq!(fault["latency_ms"], 10, "{fault}");
    assert_eq!(fault["hang"], false, "{fault}");
    server.proc.assert_running();
}

fn main() -> std::process::ExitCode {
    use support::stories::PYTHON3;
    support::stories::run(
        "fault_server",
        stories![
            [PYTHON3] => serves_its_name_over_keep_alive_and_counts_only_app_requests,
            [PYTHON3] => each_knob_acts_and_unspecified_knobs_keep_their_values,
            [PYTHON3] => start_flags_set_the_initial_knobs,
        ],
    )
}
