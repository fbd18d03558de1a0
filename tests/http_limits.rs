//! Hostile HTTP/1 input on both listeners, with raw sockets: every
//! malformed or ambiguous request gets its exact status (or a close) and
//! never reaches the app; slow clients are closed by the header timeout;
//! past the connection limit, new connections are refused at once while
//! established ones keep working, and so near the descriptor limit; HTTP/2
//! rapid-reset and CONTINUATION floods end in GOAWAY, sparing the rest.
//! Real processes: mesh-control, two
//! mesh-proxy sidecars (the client's outbound in explicit mode, the
//! server's inbound in front of the app), the python fault server as the
//! app, whose `/_stats` counts every request head it receives.
//!
//! Run: `cargo test --test http_limits -- --nocapture`.

// Test code: real processes on the wall clock, and unwrap() as assertion.
#![allow(clippy::disallowed_types, clippy::unwrap_used)]

#[allow(dead_code, unused_imports)] // each test binary uses a different part of the harness
mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use support::fault::Fault;
use support::loopback::{call, App, Loopback, Sidecar};
use support::proc::{command, run_with_timeout};
use support::protocols::metric;
use support::secs;

/// What the proxy must do with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Answer this status itself and close; the app sees nothing.
    Refused(u16),
    /// Forward it, normalised (the app answers this status).
    Forwarded(u16),
    /// Bad framing found after body bytes went on (a streamed body is
    /// not held back): this status to the caller, its connection closed,
    /// and the app's request cut off (it saw the head, never the end).
    Cut(u16),
}
use Expect::{Cut, Forwarded, Refused};

/// The conformance table: (case, raw request with `{host}` for the Host
/// value, what must happen). hyper refuses most of these itself; the rest
/// are `proxy::limits::check_request`'s and the body path's.
fn cases() -> Vec<(&'static str, String, Expect)> {
    let big = "a".repeat(70 * 1024);
    let many: String = (0..101).map(|i| format!("X-H{i}: v\r\n")).collect();
    let long_target = format!("/{}", "a".repeat(17 * 1024));
    let post = |headers: &str, body: &str| {
        format!("POST /c HTTP/1.1\r\nHost: {{host}}\r\n{headers}\r\n{body}")
    };
    let get = |headers: &str| format!("GET /c HTTP/1.1\r\nHost: {{host}}\r\n{headers}\r\n");
    vec![
        ("a plain GET", get(""), Forwarded(200)),
        (
            "a header past 64 KiB",
            get(&format!("X-Big: {big}\r\n")),
            Refused(431),
        ),
        ("101 header fields", get(&many), Refused(431)),
        (
            "a request target past 16 KiB",
            format!("GET {long_target} HTTP/1.1\r\nHost: {{host}}\r\n\r\n"),
            Refused(414),
        ),
        (
            "a chunk size that is not hex",
            post("Transfer-Encoding: chunked\r\n", "zz\r\nhello\r\n0\r\n\r\n"),
            Refused(400),
        ),
        (
            "a chunk size past 64 bits",
            post(
                "Transfer-Encoding: chunked\r\n",
                "fffffffffffffffffff\r\nx\r\n0\r\n\r\n",
            ),
            Refused(400),
        ),
        (
            "chunk data longer than its size",
            post("Transfer-Encoding: chunked\r\n", "2\r\nhello\r\n0\r\n\r\n"),
            Cut(400),
        ),
        (
            "a chunk size with a bare LF inside",
            post("Transfer-Encoding: chunked\r\n", "5\nhello\r\n0\r\n\r\n"),
            Refused(400),
        ),
        (
            "an obs-fold line",
            get("X-A: a\r\n  folded\r\n"),
            Refused(400),
        ),
        ("NUL in a field value", get("X-A: a\0b\r\n"), Refused(400)),
        (
            "a bare CR in a field value",
            get("X-A: a\rb\r\n"),
            Refused(400),
        ),
        (
            "whitespace before the colon",
            get("X-A : b\r\n"),
            Refused(400),
        ),
        (
            "Transfer-Encoding with whitespace before the colon",
            post("Transfer-Encoding : chunked\r\n", "0\r\n\r\n"),
            Refused(400),
        ),
        ("a field name with @", get("X@A: b\r\n"), Refused(400)),
        (
            "conflicting Content-Length lines",
            post("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"),
            Refused(400),
        ),
        (
            "a Content-Length list",
            post("Content-Length: 5, 5\r\n", "hello"),
            Refused(400),
        ),
        (
            "a signed Content-Length",
            post("Content-Length: +5\r\n", "hello"),
            Refused(400),
        ),
        (
            "a Content-Length that is not a number",
            post("Content-Length: 5a\r\n", "hello"),
            Refused(400),
        ),
        (
            "Transfer-Encoding gzip",
            post("Transfer-Encoding: gzip\r\n", "hello"),
            Refused(400),
        ),
        (
            "Transfer-Encoding chunked, then gzip",
            post("Transfer-Encoding: chunked, gzip\r\n", "0\r\n\r\n"),
            Refused(400),
        ),
        (
            "Transfer-Encoding gzip, chunked",
            post("Transfer-Encoding: gzip, chunked\r\n", "0\r\n\r\n"),
            Refused(400),
        ),
        (
            "two Transfer-Encoding lines",
            post(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                "0\r\n\r\n",
            ),
            Refused(400),
        ),
        (
            "Transfer-Encoding xchunked",
            post("Transfer-Encoding: xchunked\r\n", "0\r\n\r\n"),
            Refused(400),
        ),
        (
            "Transfer-Encoding on HTTP/1.0",
            "POST /c HTTP/1.0\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                .into(),
            Refused(400),
        ),
        (
            "HTTP/1.1 without Host",
            "GET /c HTTP/1.1\r\n\r\n".into(),
            Refused(400),
        ),
        ("two Host lines", get("Host: other\r\n"), Refused(400)),
        (
            "a space inside the request target",
            "GET /a b HTTP/1.1\r\nHost: {host}\r\n\r\n".into(),
            Refused(400),
        ),
        (
            "HTTP/1.2",
            "GET /c HTTP/1.2\r\nHost: {host}\r\n\r\n".into(),
            Refused(400),
        ),
        // Normalised, as RFC 9112 §6.3 allows: one unambiguous framing
        // goes on (identical lengths merged; chunked wins over a length).
        (
            "identical Content-Length lines",
            post("Content-Length: 5\r\nContent-Length: 5\r\n", "hello"),
            Forwarded(200),
        ),
        (
            "Content-Length beside chunked",
            post(
                "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
                "5\r\nhello\r\n0\r\n\r\n",
            ),
            Forwarded(200),
        ),
    ]
}

/// Sends `raw` on a fresh connection to `addr`; the status answered (if
/// any) and whether the proxy then closed the connection.
fn exchange(addr: SocketAddr, raw: &[u8]) -> (Option<u16>, bool) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(secs(5))).unwrap();
    // The proxy may answer and close before a long request is all sent.
    let _ = s.write_all(raw);
    let mut resp = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => {
                resp.extend_from_slice(&buf[..n]);
                // One response is enough to judge a keep-alive answer.
                if !resp.starts_with(b"HTTP/1.1 4") && complete(&resp) {
                    break false;
                }
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break true,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break false
            }
            Err(e) => panic!("reading from {addr}: {e}"),
        }
    };
    let text = String::from_utf8_lossy(&resp);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| text.strip_prefix("HTTP/1.0 "))
        .and_then(|t| t.get(..3))
        .and_then(|c| c.parse().ok());
    (status, closed)
}

/// A whole response with a Content-Length body.
fn complete(resp: &[u8]) -> bool {
    let text = String::from_utf8_lossy(resp);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    body.len() >= len
}

/// The app behind a server sidecar (inbound) and a client sidecar whose
/// outbound reaches it by name.
struct Mesh {
    _lo: Loopback,
    app: App,
    server: Sidecar,
    client: Sidecar,
}

fn mesh(name: &str, extra: &[&str]) -> Mesh {
    mesh_with(name, extra, extra)
}

/// [`mesh`] with flags for the server's sidecar and the client's apart.
fn mesh_with(name: &str, server_extra: &[&str], client_extra: &[&str]) -> Mesh {
    let lo = Loopback::start(name);
    let app = lo.app("hello", &Fault::default());
    let port = app.addr.port().to_string();
    let mut args = vec![
        "--service",
        "hello",
        "--app-port",
        &port,
        "--advertise",
        "127.0.0.1",
        "--instance-id",
        "hello-1",
    ];
    args.extend_from_slice(server_extra);
    let server = lo.sidecar("server", &args);
    let client = lo.sidecar("client", client_extra);
    client.wait_ready_endpoints("hello", 1);
    Mesh {
        _lo: lo,
        app,
        server,
        client,
    }
}

fn malformed_requests_get_their_status_and_reach_no_app() {
    let m = mesh("limits", &[]);
    let inbound = m.server.inbound.unwrap();
    let mut rows = Vec::new();
    let mut wrong = Vec::new();
    for (listener, addr) in [("outbound", m.client.outbound), ("inbound", inbound)] {
        for (case, raw, want) in cases() {
            let before = m.app.stats().requests;
            let raw = raw.replace("{host}", "hello");
            let (status, closed) = exchange(addr, raw.as_bytes());
            let reached = m.app.stats().requests - before;
            let got = match (status, closed, reached) {
                (Some(s), true, 0) => Refused(s),
                (Some(s), true, 1) if s >= 400 => Cut(s),
                (Some(s), _, 1) => Forwarded(s),
                _ => {
                    wrong.push(format!(
                        "{listener}: {case}: status {status:?}, closed {closed}, reached the app {reached} times"
                    ));
                    continue;
                }
            };
            rows.push(format!("{listener:9} {case:52} {got:?}"));
            if got != want {
                wrong.push(format!("{listener}: {case}: {got:?}, want {want:?}"));
            }
        }
    }
    println!("{}", rows.join("\n"));
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
    // The proxies kept serving.
    let r = call(&m.client, "http://hello/after", &[]);
    assert_eq!(r.status, 200, "{r:?}");
}

/// `n` connections to `addr`, each sending `GET / HTTP/1.1\r\n...` one
/// byte a second; returns how long each lived (None: still open at
/// `give_up`).
fn trickle(addr: SocketAddr, n: usize, give_up: Duration) -> Vec<Option<Duration>> {
    let request = b"GET /slow HTTP/1.1\r\nHost: hello\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let start = Instant::now();
    let mut conns: Vec<(TcpStream, Instant, Option<Duration>)> = (0..n)
        .map(|_| {
            let s = TcpStream::connect(addr).unwrap();
            s.set_nonblocking(true).unwrap();
            (s, Instant::now(), None)
        })
        .collect();
    let mut buf = [0u8; 1024];
    // Notes every connection the proxy has closed; true once all are.
    let mut reap = |conns: &mut Vec<(TcpStream, Instant, Option<Duration>)>| {
        for (s, opened, lived) in conns.iter_mut().filter(|c| c.2.is_none()) {
            match s.read(&mut buf) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                _ => *lived = Some(opened.elapsed()),
            }
        }
        conns.iter().all(|c| c.2.is_some())
    };
    for sent in 0.. {
        for (s, opened, lived) in conns.iter_mut().filter(|c| c.2.is_none()) {
            if s.write(&request[sent % request.len()..][..1]).is_err() {
                *lived = Some(opened.elapsed());
            }
        }
        // Until the next byte is due (one a second), watch for closes.
        let next = start + Duration::from_secs(sent as u64 + 1);
        let left = next.saturating_duration_since(Instant::now());
        let all_closed = support::poll(left, || reap(&mut conns).then_some(())).is_some();
        if all_closed || start.elapsed() >= give_up {
            break;
        }
    }
    conns.into_iter().map(|c| c.2).collect()
}

/// Stops a background caller; its wait between calls ends at once when
/// asked to stop.
struct Stop {
    _tx: std::sync::mpsc::Sender<()>,
}

/// Runs `call` every `every` until the [`Stop`] is dropped; what it
/// returned, counted.
fn meanwhile(
    every: Duration,
    call: impl Fn() -> u16 + Send + 'static,
) -> (
    Stop,
    std::thread::JoinHandle<std::collections::BTreeMap<u16, usize>>,
) {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let calls = std::thread::spawn(move || {
        let mut statuses = std::collections::BTreeMap::new();
        loop {
            *statuses.entry(call()).or_default() += 1;
            if rx.recv_timeout(every) != Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
                return statuses;
            }
        }
    });
    (Stop { _tx: tx }, calls)
}

fn slow_headers_are_closed_by_the_header_timeout() {
    let m = mesh(
        "slowloris",
        &["--header-read-timeout", "3s", "--detect-timeout", "3s"],
    );
    let inbound = m.server.inbound.unwrap();
    let client_out = m.client.outbound;
    // Normal calls go on meanwhile, through both listeners.
    let (stop, calls) = meanwhile(Duration::from_millis(100), move || ok_call(client_out));
    for (listener, addr) in [("outbound", client_out), ("inbound", inbound)] {
        let lived = trickle(addr, 500, secs(15));
        let open = lived.iter().filter(|l| l.is_none()).count();
        let secs: Vec<f64> = lived.iter().flatten().map(Duration::as_secs_f64).collect();
        let min = secs.iter().copied().fold(f64::MAX, f64::min);
        let max = secs.iter().copied().fold(0.0, f64::max);
        println!(
            "{listener}: 500 slow connections closed after {min:.1}..{max:.1} s, {open} still open"
        );
        assert_eq!(
            open, 0,
            "{listener}: slow connections outlived the header timeout"
        );
        assert!(
            min >= 2.5,
            "{listener}: closed before the header timeout ({min:.1} s)"
        );
        assert!(
            max <= 7.0,
            "{listener}: closed {max:.1} s after connecting (timeout 3 s)"
        );
    }
    drop(stop);
    let statuses = calls.join().unwrap();
    println!("normal calls meanwhile: {statuses:?}");
    assert_eq!(
        statuses.keys().copied().collect::<Vec<_>>(),
        [200],
        "{statuses:?}"
    );
}

fn past_the_connection_limit_new_connections_are_refused_at_once() {
    // One side limited at a time: the client's pooled connections to the
    // server's inbound would otherwise count against the inbound's limit.
    let limit = ["--max-connections", "20"];
    let out_limited = mesh_with("connlimit-out", &[], &limit);
    let in_limited = mesh_with("connlimit-in", &limit, &[]);
    for (listener, addr) in [
        ("outbound", out_limited.client.outbound),
        ("inbound", in_limited.server.inbound.unwrap()),
    ] {
        // Twenty keep-alive clients fill the listener.
        let mut held: Vec<TcpStream> = (0..20)
            .map(|_| {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(secs(5))).unwrap();
                keep_alive_get(&mut s);
                s
            })
            .collect();
        let mut refused_ms = Vec::new();
        for _ in 0..10 {
            let started = Instant::now();
            let (status, closed) = exchange(addr, b"GET /x HTTP/1.1\r\nHost: hello\r\n\r\n");
            refused_ms.push(started.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(
                (status, closed),
                (None, true),
                "{listener}: the 21st connection was served"
            );
        }
        let worst = refused_ms.iter().copied().fold(0.0, f64::max);
        println!("{listener}: 10 connections past the limit refused in ≤ {worst:.2} ms");
        assert!(worst < 10.0, "{listener}: a refusal took {worst:.1} ms");
        // The established clients are unaffected.
        for s in &mut held {
            keep_alive_get(s);
        }
        // A slot that frees is taken again.
        held.pop();
        support::wait_for("a freed slot", secs(5), || {
            let (status, _) = exchange(
                addr,
                b"GET /x HTTP/1.1\r\nHost: hello\r\nConnection: close\r\n\r\n",
            );
            (status == Some(200)).then_some(())
        });
    }
    let refused = |s: &Sidecar, listener: &str| {
        metric(
            &s.metrics(),
            "mesh_listener_refused_total",
            &[("listener", listener), ("reason", "connection-limit")],
        )
    };
    assert!(refused(&out_limited.client, "outbound") >= Some(10.0));
    assert!(refused(&in_limited.server, "inbound") >= Some(10.0));
}

fn near_the_descriptor_limit_new_connections_are_refused() {
    let m = mesh("overload", &[]);
    let addr = m.client.outbound;
    // A client that holds a connection before the squeeze.
    let mut established = TcpStream::connect(addr).unwrap();
    established.set_read_timeout(Some(secs(5))).unwrap();
    keep_alive_get(&mut established);
    // Lower the running proxy's descriptor limit to just above what it
    // holds, as a container's `ulimit -n` would be reached.
    let pid = m.client.proc.pid().to_string();
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let limit = open + 100;
    let nofile = format!("--nofile={limit}:{limit}");
    let out = run_with_timeout(command("prlimit", &["--pid", &pid, &nofile], &[]), secs(5));
    assert!(out.status.success(), "prlimit: {out:?}");
    // Idle connections take the proxy past 95 % of it, short of the limit
    // itself (where accept would fail).
    let past = (limit * 95).div_ceil(100) + 1 - open;
    let held: Vec<TcpStream> = (0..past)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    // The proxy samples once a second; from then on, new connections are
    // refused at once.
    support::wait_for("a refusal for want of descriptors", secs(10), || {
        let (status, closed) = exchange(addr, b"GET /x HTTP/1.1\r\nHost: hello\r\n\r\n");
        ((status, closed) == (None, true)).then_some(())
    });
    let metrics = m.client.metrics();
    assert!(
        metric(
            &metrics,
            "mesh_listener_refused_total",
            &[("listener", "outbound"), ("reason", "overload-fds")]
        ) >= Some(1.0),
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "mesh_overloaded", &[]), Some(1.0));
    // The established client keeps working meanwhile.
    keep_alive_get(&mut established);
    println!("overloaded with {} connections held (descriptor limit {limit}); the established client was served", held.len());
    // Room again: new connections are served.
    drop(held);
    support::wait_for("new connections accepted again", secs(10), || {
        let raw = b"GET /x HTTP/1.1\r\nHost: hello\r\nConnection: close\r\n\r\n";
        (exchange(addr, raw).0 == Some(200)).then_some(())
    });
    assert_eq!(
        metric(&m.client.metrics(), "mesh_overloaded", &[]),
        Some(0.0)
    );
}

fn tunnels_hold_their_connection_slot() {
    let m = mesh_with("tunnelslot", &[], &["--max-connections", "2"]);
    let addr = m.client.outbound;
    let target = m.app.addr;
    // Two CONNECT tunnels (explicit mode) to a host outside the mesh.
    let open_tunnel = || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(secs(5))).unwrap();
        write!(s, "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").unwrap();
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).unwrap();
        let head = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        s
    };
    let first = open_tunnel();
    let _second = open_tunnel();
    // The limit counts them while they last, though their HTTP connection
    // is over.
    let (status, closed) = exchange(addr, b"GET /x HTTP/1.1\r\nHost: hello\r\n\r\n");
    assert_eq!(
        (status, closed),
        (None, true),
        "a third connection was served"
    );
    drop(first);
    support::wait_for("the closed tunnel's slot back", secs(5), || {
        let raw = b"GET /x HTTP/1.1\r\nHost: hello\r\nConnection: close\r\n\r\n";
        (exchange(addr, raw).0 == Some(200)).then_some(())
    });
}

/// One keep-alive request on `s`, which must answer 200.
fn keep_alive_get(s: &mut TcpStream) {
    s.write_all(b"GET /k HTTP/1.1\r\nHost: hello\r\n\r\n")
        .unwrap();
    let mut resp = Vec::new();
    let mut buf = [0u8; 4096];
    while !complete(&resp) {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&resp));
        resp.extend_from_slice(&buf[..n]);
    }
    assert!(
        resp.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&resp)
    );
}

fn http2_settings_are_the_documented_ones() {
    let m = mesh("h2settings", &[]);
    let inbound = m.server.inbound.unwrap();
    for addr in [m.client.outbound, inbound] {
        let url = format!("http://{addr}/h2");
        let args = ["-nv", "-H", "host: hello", &url];
        let out = run_with_timeout(command("nghttp", &args, &[]), secs(10));
        let text = String::from_utf8_lossy(&out.stdout);
        for want in [
            "SETTINGS_MAX_CONCURRENT_STREAMS(0x03):250",
            "SETTINGS_MAX_HEADER_LIST_SIZE(0x06):65536",
        ] {
            assert!(text.contains(want), "{addr}: no {want} in\n{text}");
        }
    }
}

/// An HTTP/2 frame: 9-byte header and payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const GOAWAY: u8 = 7;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;

/// A request head in HPACK: GET, http, /, `:authority: hello` (static
/// table indexes and one literal without indexing).
fn hpack_get() -> Vec<u8> {
    let mut b = vec![0x82, 0x86, 0x84, 0x01, 5];
    b.extend_from_slice(b"hello");
    b
}

/// Reads frames from `s` until a GOAWAY or the end of the connection;
/// whether a GOAWAY came.
fn saw_goaway(s: &mut TcpStream) -> bool {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        while buf.len() >= 9 {
            let len = usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            if buf[3] == GOAWAY {
                return true;
            }
            buf.drain(..9 + len);
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// One `GET /ok` through `addr` on its own connection; its status (0:
/// none).
fn ok_call(addr: SocketAddr) -> u16 {
    let raw = b"GET /ok HTTP/1.1\r\nHost: hello\r\nConnection: close\r\n\r\n";
    exchange(addr, raw).0.unwrap_or(0)
}

fn http2_floods_end_in_goaway_and_spare_everyone_else() {
    let m = mesh("h2floods", &[]);
    let addr = m.client.outbound;
    let rss = || support::mesh::rss_mb(&m.client.proc);
    let before = rss();
    let (stop, calls) = meanwhile(Duration::from_millis(50), move || ok_call(addr));

    // Rapid reset (CVE-2023-44487): 10 000 streams opened and cancelled
    // at once, never waiting for an answer.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(secs(10))).unwrap();
    let mut flood = H2_PREFACE.to_vec();
    flood.extend(h2_frame(SETTINGS, 0, 0, &[]));
    for i in 0..10_000u32 {
        let stream = 1 + 2 * i;
        flood.extend(h2_frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            stream,
            &hpack_get(),
        ));
        flood.extend(h2_frame(RST_STREAM, 0, stream, &8u32.to_be_bytes()));
    }
    let _ = s.write_all(&flood);
    let reset_goaway = saw_goaway(&mut s);

    // CONTINUATION flood (CVE-2024-27316): one header block that never
    // ends, 16 KiB at a time, up to 16 MiB.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(secs(10))).unwrap();
    s.write_all(H2_PREFACE).unwrap();
    s.write_all(&h2_frame(SETTINGS, 0, 0, &[])).unwrap();
    let mut block = hpack_get();
    s.write_all(&h2_frame(HEADERS, 0, 1, &block)).unwrap();
    // Literal header fields without indexing, new names: x-f: 16 000 a's.
    block.clear();
    block.extend([0x00, 3]);
    block.extend_from_slice(b"x-f");
    block.extend([0x7f, 0x81, 0x7c]); // value length 127 + 16000 - 127 (HPACK integer)
    block.resize(block.len() + 16000, b'a');
    let mut sent = 0usize;
    while sent < 16 << 20 {
        if s.write_all(&h2_frame(CONTINUATION, 0, 1, &block)).is_err() {
            break;
        }
        sent += block.len();
    }
    let continuation_goaway = saw_goaway(&mut s);
    drop(stop);
    let statuses = calls.join().unwrap();
    let after = rss();
    println!(
        "rapid reset: goaway {reset_goaway}; CONTINUATION: goaway {continuation_goaway} after {} KiB sent; \
         RSS {before:.1} -> {after:.1} MB; bystanders {statuses:?}",
        sent / 1024
    );
    assert!(
        continuation_goaway,
        "the endless header block was not refused"
    );
    assert!(sent < 16 << 20, "16 MiB of one header block were taken");
    assert!(
        after - before < 20.0,
        "RSS grew {before:.1} -> {after:.1} MB"
    );
    assert_eq!(
        statuses.keys().copied().collect::<Vec<_>>(),
        [200],
        "{statuses:?}"
    );
    m.client.proc.assert_running();
    let r = call(&m.client, "http://hello/after", &[]);
    assert_eq!(r.status, 200, "{r:?}");
}

fn main() -> std::process::ExitCode {
    use support::stories::{tool, CURL, PYTHON3};
    const NGHTTP: support::stories::Need =
        tool("nghttp", &["--version"], "apt-get install nghttp2-client");
    const PRLIMIT: support::stories::Need =
        tool("prlimit", &["--version"], "apt-get install util-linux");
    support::stories::run(
        "http_limits",
        stories![
            [CURL, PYTHON3] => malformed_requests_get_their_status_and_reach_no_app,
            [CURL, PYTHON3] => slow_headers_are_closed_by_the_header_timeout,
            [CURL, PYTHON3] => past_the_connection_limit_new_connections_are_refused_at_once,
            [CURL, PYTHON3] => tunnels_hold_their_connection_slot,
            [CURL, PYTHON3, NGHTTP] => http2_settings_are_the_documented_ones,
            [CURL, PYTHON3] => http2_floods_end_in_goaway_and_spare_everyone_else,
            [CURL, PYTHON3, PRLIMIT] => near_the_descriptor_limit_new_connections_are_refused,
        ],
    )
}
