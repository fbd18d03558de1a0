//! Seeing the mesh, on loopback with real processes:
//!
//! - the dashboard's numbers: two sidecars of two services call a third;
//!   mesh-control's SSE stream (`/v1/dashboard/stream`), parsed here, must
//!   count exactly the requests sent (±0), summed across both proxies, and
//!   split them per caller edge; `mesh-ctl stat` shows the same; a sixth
//!   stream is refused; the page is served from the binary;
//! - tracing: a python OTLP receiver (`support/otlp_sink.py`, PyPI's
//!   `opentelemetry-proto`) gets one client span and one server span per
//!   call, parent and child, in the trace the app saw.
//!
//! Run: `cargo test --test observability_loopback -- --nocapture`.

// Test code: real processes on the wall clock, and unwrap() as assertion.
#![allow(clippy::disallowed_types, clippy::unwrap_used)]

#[allow(dead_code, unused_imports)] // each test binary uses a different part of the harness
mod support;

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use support::fault::Fault;
use support::loopback::{call, Loopback, Sidecar};
use support::{secs, wait_for};

/// An open `GET /v1/dashboard/stream`, read line by line. HTTP/1.0, so the
/// body comes unchunked until the server closes.
struct Stream {
    lines: BufReader<TcpStream>,
}

impl Stream {
    fn open(control: SocketAddr, delay_ms: u32) -> Result<Stream, String> {
        let mut s = TcpStream::connect(control).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(secs(5))).unwrap();
        write!(
            s,
            "GET /v1/dashboard/stream?delay={delay_ms} HTTP/1.0\r\nHost: mesh\r\n\r\n"
        )
        .unwrap();
        let mut lines = BufReader::new(s);
        let mut status = String::new();
        lines.read_line(&mut status).map_err(|e| e.to_string())?;
        if !status.contains(" 200 ") {
            let mut rest = String::new();
            let _ = std::io::Read::read_to_string(&mut lines, &mut rest);
            return Err(format!("{} {rest}", status.trim()));
        }
        loop {
            let mut h = String::new();
            lines.read_line(&mut h).unwrap();
            if h == "\r\n" || h.is_empty() {
                break;
            }
            if h.to_ascii_lowercase().starts_with("content-type:") {
                assert!(h.contains("text/event-stream"), "{h}");
            }
        }
        Ok(Stream { lines })
    }

    /// The next round of events (everything up to its `MeshMeta`).
    fn round(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            let mut line = String::new();
            let n = self.lines.read_line(&mut line).expect("stream line");
            assert!(n > 0, "the stream ended");
            let Some(data) = line.trim_end().strip_prefix("data: ") else {
                continue;
            };
            let ev: Value = serde_json::from_str(data).expect("event JSON");
            let meta = ev["type"] == "MeshMeta";
            out.push(ev);
            if meta {
                return out;
            }
        }
    }

    /// Reads rounds until `want` holds of one, or `within` passes; every
    /// round is also checked by `each` (so a count can never overshoot).
    fn until(
        &mut self,
        what: &str,
        within: Duration,
        mut each: impl FnMut(&[Value]),
        mut want: impl FnMut(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + within;
        let mut last = Vec::new();
        while Instant::now() < deadline {
            last = self.round();
            each(&last);
            if want(&last) {
                return last;
            }
        }
        panic!("{what} within {within:?}; last round: {last:#?}");
    }
}

fn event<'a>(round: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    round
        .iter()
        .find(|e| e["type"] == kind && e["name"] == name)
}

/// `n` calls to orders through `sidecar`, one curl over one connection
/// (quick: they all land in one window), each answered `want`.
fn calls(sidecar: &Sidecar, n: usize, want: u16) {
    let proxy = format!("http://{}", sidecar.outbound);
    let url = format!("http://orders/?call=[1-{n}]");
    let out = support::proc::run_with_timeout(
        support::proc::command(
            "curl",
            &["-s", "-x", &proxy, "-w", "\nSTATUS %{http_code}\n", &url],
            &[],
        ),
        secs(30),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let statuses: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("STATUS "))
        .collect();
    assert_eq!(statuses.len(), n, "{text}");
    assert!(
        statuses.iter().all(|s| *s == want.to_string()),
        "{statuses:?}"
    );
}

fn the_stream_counts_every_request_across_proxies() {
    // mesh-ctl is built on first use: before the clock matters (the
    // calls must still be in the ten-second window when `stat` reads it).
    let _ = support::bins::mesh_ctl();
    let lo = Loopback::start("dashboard");
    let orders = lo.app("orders-1", &Fault::default());
    lo.register_addr("orders", orders.addr);
    let web_app = lo.app("web-app", &Fault::default());
    let port = web_app.addr.port().to_string();
    let own = |service: &'static str| {
        [
            "--service",
            service,
            "--app-port",
            port.as_str(),
            "--advertise",
            "127.0.0.1",
        ]
    };
    let a = lo.sidecar("web-a", &own("web"));
    let b = lo.sidecar("batch", &own("batch"));
    a.wait_ready_endpoints("orders", 1);
    b.wait_ready_endpoints("orders", 1);

    let mut stream = Stream::open(lo.control, 200).expect("the stream opens");
    // Nothing called yet: no circuit.
    let first = stream.round();
    assert!(
        event(&first, "HystrixCommand", "orders").is_none(),
        "{first:?}"
    );

    // 30 + 20 requests, all 200. The windows are ten seconds long, so all
    // of them stay in it while the counts arrive.
    calls(&a, 30, 200);
    calls(&b, 20, 200);
    let started = Instant::now();
    let overshoot = |round: &[Value]| {
        if let Some(c) = event(round, "HystrixCommand", "orders") {
            assert!(
                c["requestCount"].as_u64().unwrap() <= 50,
                "more than sent: {c}"
            );
        }
    };
    let round = stream.until(
        "50 requests to orders from 2 proxies",
        secs(6),
        overshoot,
        |r| {
            event(r, "HystrixCommand", "orders")
                .is_some_and(|c| c["requestCount"] == 50 && c["reportingHosts"] == 2)
        },
    );
    println!(
        "counts complete in the stream {} ms after the last request",
        started.elapsed().as_millis()
    );
    let c = event(&round, "HystrixCommand", "orders").unwrap();
    assert_eq!(c["rollingCountSuccess"], 50, "{c}");
    assert_eq!(c["errorCount"], 0);
    assert_eq!(c["errorPercentage"], 0.0);
    assert_eq!(c["isCircuitBreakerOpen"], false);
    assert_eq!(c["state"], "closed");
    assert!(c["ratePerSecond"].as_f64().unwrap() > 0.0);
    assert!(c["latencyExecute"]["99"].is_number());
    let pool = event(&round, "HystrixThreadPool", "orders").expect("its bulkhead");
    assert_eq!(pool["reportingHosts"], 2);
    let edge = |name: &str| event(&round, "MeshEdge", name).map(|e| e["requestCount"].clone());
    assert_eq!(edge("web->orders"), Some(30.into()), "{round:#?}");
    assert_eq!(edge("batch->orders"), Some(20.into()));

    // Failures are counted as failures, exactly, by the one proxy.
    orders.set_fault(&Fault::failing(503));
    calls(&a, 8, 503);
    let round = stream.until(
        "8 failures counted",
        secs(6),
        |_| {},
        |r| event(r, "HystrixCommand", "orders").is_some_and(|c| c["rollingCountFailure"] == 8),
    );
    let c = event(&round, "HystrixCommand", "orders").unwrap();
    assert_eq!(c["requestCount"], 58, "{c}");
    assert_eq!(c["errorCount"], 8);
    assert_eq!(c["errorPercentage"], (8.0f64 * 100.0 / 58.0).round());

    // The operator's view of the same numbers.
    let out = lo.ctl(&["stat", "orders"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let row = text
        .lines()
        .find(|l| l.starts_with("orders "))
        .unwrap_or_else(|| panic!("no orders row in:\n{text}\n{out:?}"));
    assert!(row.contains("86.21%"), "50 of 58 succeeded: {row}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("web ") && l.contains("orders")),
        "{text}"
    );
    let out = lo.ctl(&["-o", "json", "stat"]);
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["circuits"][0]["requests"], 58, "{json}");
    assert_eq!(json["reporting"], 2);

    // The streams are capped: four more open, the sixth is refused.
    let more: Vec<Stream> = (0..4)
        .map(|_| Stream::open(lo.control, 1000).expect("within the cap"))
        .collect();
    let refused = Stream::open(lo.control, 1000).err().expect("past the cap");
    assert!(refused.contains("503"), "{refused}");
    drop(more);
    drop(stream);
}

fn the_page_is_served_from_the_binary() {
    let lo = Loopback::start("dashboard-page");
    let page = support::loopback::get(lo.control, "/dashboard").expect("GET /dashboard");
    assert!(page.contains("<title>mesh dashboard</title>"));
    assert!(page.contains("/v1/dashboard/stream"));
    for elsewhere in ["src=\"http", "href=\"http", "@import", "url(http"] {
        assert!(
            !page.contains(elsewhere),
            "nothing fetched from elsewhere: {elsewhere}"
        );
    }
    let bad = Stream::open(lo.control, 5)
        .err()
        .expect("delay out of bounds");
    assert!(bad.contains("400") && bad.contains("delay"), "{bad}");
}

/// `mesh-ctl -o json explain ID`: the trails.
fn explain(lo: &Loopback, id: &str) -> Vec<Value> {
    let out = lo.ctl(&["-o", "json", "explain", id]);
    assert!(out.status.success(), "explain {id}: {out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["trails"].as_array().unwrap().clone()
}

/// | request            | met                              | explain says                         |
/// |--------------------|----------------------------------|--------------------------------------|
/// | to `broken`        | its breaker open                 | no endpoint picked: breaker-open     |
/// | to `pay`           | a dead endpoint, then a live one | connect-failed, retried, then 200    |
/// | to `stingy`        | a dead endpoint, budget of 0     | not retried: the budget is spent     |
fn explain_tells_what_each_request_met() {
    let lo = Loopback::start("explain");
    let live = lo.app("live-1", &Fault::default());
    let failing = lo.app("broken-1", &Fault::failing(503));
    let dead = support::loopback::refusing();
    lo.register_addr("broken", failing.addr);
    lo.register_addr("pay", dead.addr);
    lo.register_addr("pay", live.addr);
    lo.register_addr("stingy", dead.addr);
    lo.apply(
        "kind: ServicePolicy
service: broken
retries: { attempts: 0 }
breaker: { consecutiveFailures: 3, openFor: 60s }
---
kind: ServicePolicy
service: pay
retries: { attempts: 2, on: [connect-failure] }
outlier: { consecutiveFailures: 100000 }
accessLog: true
---
kind: ServicePolicy
service: stingy
retries: { attempts: 2, on: [connect-failure], budget: { percent: 0, minPerSecond: 0 } }
",
    );
    let client = lo.sidecar("web", &["--lb", "pay=round-robin"]);
    client.wait_ready_endpoints("pay", 2);
    client.wait_ready_endpoints("broken", 1);
    client.wait_ready_endpoints("stingy", 1);

    // 1. The breaker: three failures open it; the fourth call is refused,
    // and its answer carries the id to paste.
    for _ in 0..3 {
        assert_eq!(call(&client, "http://broken/", &[]).status, 503);
    }
    let refused = call(&client, "http://broken/", &[]);
    assert_eq!(
        refused.header("x-mesh-error"),
        Some("breaker-open"),
        "{refused:?}"
    );
    let id = refused
        .header("x-request-id")
        .expect("a mesh-made error carries its id");
    let trails = explain(&lo, id);
    assert_eq!(trails.len(), 1, "{trails:#?}");
    let t = &trails[0];
    assert_eq!(t["service"], "broken");
    assert_eq!(t["status"], 503);
    assert_eq!(t["reason"], "breaker-open");
    assert_eq!(t["tries"].as_array().unwrap().len(), 1, "{t}");
    assert_eq!(t["tries"][0]["outcome"], "breaker-open");
    assert_eq!(
        t["tries"][0]["endpoint"],
        Value::Null,
        "no endpoint was picked"
    );
    let text = String::from_utf8(lo.ctl(&["explain", id]).stdout).unwrap();
    assert!(
        text.contains("no endpoint picked -> breaker-open"),
        "{text}"
    );
    println!("{text}");

    // 2. A retry on a second endpoint: round-robin takes the dead one and
    // the live one in turn, so one of two calls meets the dead one first.
    let mut retried = None;
    for id in ["pay-1", "pay-2"] {
        let r = call(
            &client,
            "http://pay/",
            &["-H", &format!("x-request-id: {id}")],
        );
        assert_eq!(r.status, 200, "{r:?}");
        let t = explain(&lo, id).remove(0);
        if t["tries"].as_array().unwrap().len() == 2 {
            retried = Some(t);
        }
    }
    let t = retried.expect("one call was retried");
    let tries = t["tries"].as_array().unwrap();
    assert_eq!(tries[0]["outcome"], "connect-failed", "{t}");
    assert!(
        tries[0]["next"].as_str().unwrap().starts_with("retried"),
        "{t}"
    );
    assert_eq!(tries[1]["outcome"], "200");
    assert_eq!(tries[1]["next"], "answered");
    assert_ne!(
        tries[0]["endpoint"], tries[1]["endpoint"],
        "a second endpoint"
    );
    assert_eq!(
        (t["retries"].as_u64(), t["status"].as_u64()),
        (Some(1), Some(200))
    );
    assert_eq!(t["balancer"], "round-robin");
    assert_eq!(t["candidates"], 2);

    // pay's policy turns the access log on for calls to it (and only it).
    let lines: Vec<Value> = wait_for("pay's access-log lines", secs(5), || {
        let log = std::fs::read_to_string(client.proc.log_path()).ok()?;
        let lines: Vec<Value> = log
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v.get("request_id").is_some())
            .collect();
        (lines.len() >= 2).then_some(lines)
    });
    assert!(
        lines.iter().all(|l| l["upstream_service"] == "pay"),
        "{lines:#?}"
    );
    let line = lines
        .iter()
        .find(|l| l["request_id"] == t["requestId"])
        .expect("the retried call's line");
    assert_eq!(line["attempts"], 2, "{line}");
    assert_eq!(line["status"], 200);
    assert_eq!(line["upstream_endpoint"], tries[1]["address"]);
    assert!(
        line["trace_id"].as_str().is_some_and(|t| t.len() == 32),
        "{line}"
    );

    // `mesh-ctl tap pay` follows the calls to pay from now on (each shows
    // about a second after it ends, with the push that carries it).
    let control = lo.control_url();
    let tap = lo.spawn(
        "tap",
        support::bins::mesh_ctl(),
        &["--control", &control, "-o", "json", "tap", "pay"],
    );
    let mut n = 0;
    let seen: Value = wait_for("a tapped call to pay", secs(10), || {
        n += 1;
        let id = format!("tapped-{n}");
        let r = call(
            &client,
            "http://pay/",
            &["-H", &format!("x-request-id: {id}")],
        );
        assert_eq!(r.status, 200, "{r:?}");
        let log = std::fs::read_to_string(tap.log_path()).ok()?;
        log.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| {
                v["requestId"]
                    .as_str()
                    .is_some_and(|i| i.starts_with("tapped-"))
            })
    });
    assert_eq!(seen["destination"], "pay", "{seen}");
    assert_eq!(seen["status"], 200);
    assert_eq!(seen["method"], "GET");
    assert!(seen["attempts"].as_u64().is_some_and(|a| a >= 1), "{seen}");
    assert!(
        seen["proxy"]
            .as_str()
            .is_some_and(|p| p.starts_with("mesh-")),
        "{seen}"
    );
    drop(tap);

    // 3. An exhausted retry budget.
    let r = call(&client, "http://stingy/", &["-H", "x-request-id: stingy-1"]);
    assert_eq!(
        r.header("x-mesh-error"),
        Some("retry-budget-exhausted"),
        "{r:?}"
    );
    assert_eq!(
        r.header("x-request-id"),
        Some("stingy-1"),
        "the caller's id is kept"
    );
    let t = explain(&lo, "stingy-1").remove(0);
    assert_eq!(t["budgetExhausted"], true, "{t}");
    assert_eq!(t["reason"], "retry-budget-exhausted");
    assert_eq!(t["tries"][0]["outcome"], "connect-failed");
    assert_eq!(
        t["tries"][0]["next"],
        "not retried: the retry budget is spent"
    );

    // Unknown ids are a clear 404, after the proxies had their chance.
    let out = lo.ctl(&["explain", "never-sent"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no connected proxy holds"),
        "{out:?}"
    );
}

/// `check`: zero when all is well, non-zero with the control plane down.
fn check_says_ok_then_fails_without_the_control_plane() {
    let mut lo = Loopback::start("check");
    let app = lo.app("hello-1", &Fault::default());
    lo.register_addr("hello", app.addr);
    lo.apply("kind: Config\napplication: hello\ndata: { greeting: hi }\n");
    let dir = lo.dir().join("web-config");
    let client = lo.sidecar(
        "web",
        &["--config", "hello", "--config-dir", dir.to_str().unwrap()],
    );
    client.wait_ready_endpoints("hello", 1);
    // The sidecar reports what it delivered: poll until check sees it.
    let text = wait_for("check to see the delivery", secs(10), || {
        let out = lo.ctl(&["check"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{text}\n{out:?}");
        text.contains("[ok]   config: 1 deliveries").then_some(text)
    });
    for line in [
        "[ok]   control plane",
        "[ok]   proxies: 1 connected",
        "[ok]   self-preservation: off",
        "[ok]   config: 1 deliveries, every one on its latest version",
    ] {
        assert!(text.contains(line), "{line} in:\n{text}");
    }
    lo.stop_control();
    let out = lo.ctl(&["check"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}\n{out:?}");
    assert!(text.contains("[FAIL] control plane"), "{text}");
}

const SINK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/otlp_sink.py");

/// The spans the sink printed so far.
fn spans(sink: &support::Proc) -> Vec<Value> {
    let log = std::fs::read_to_string(sink.log_path()).unwrap_or_default();
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .inspect(|v| assert!(v.get("error").is_none(), "the sink could not decode: {v}"))
        .collect()
}

/// Span kinds in OTLP.
const SERVER: u64 = 2;
const CLIENT: u64 = 3;

fn each_call_is_a_client_span_and_a_server_span() {
    let lo = Loopback::start("tracing");
    let sink = lo.spawn("otlp-sink", "python3", &[SINK]);
    let sink_addr: SocketAddr = support::wait_for("the sink to listen", secs(10), || {
        sink.assert_running();
        let log = std::fs::read_to_string(sink.log_path()).ok()?;
        log.lines()
            .find_map(|l| l.strip_prefix("listening "))
            .and_then(|a| a.trim().parse().ok())
    });
    let otlp = format!("http://{sink_addr}");
    let app = lo.app("orders-1", &Fault::default());
    let port = app.addr.port().to_string();
    let tracing = ["--otlp-endpoint", otlp.as_str(), "--trace-sample", "1"];
    let mut server_args = vec![
        "--service",
        "orders",
        "--app-port",
        port.as_str(),
        "--advertise",
        "127.0.0.1",
    ];
    server_args.extend(tracing);
    let _server = lo.sidecar("orders-sidecar", &server_args);
    let web_app = lo.app("web-app", &Fault::default());
    let web_port = web_app.addr.port().to_string();
    let mut client_args = vec![
        "--service",
        "web",
        "--app-port",
        web_port.as_str(),
        "--advertise",
        "127.0.0.1",
    ];
    client_args.extend(tracing);
    let client = lo.sidecar("web", &client_args);
    client.wait_ready_endpoints("orders", 1);

    // Three calls that start their trace at the client's sidecar, and one
    // that arrives in a sampled trace of its own.
    let upstream_parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut seen_by_app = Vec::new();
    for i in 0..4 {
        let extra: Vec<String> = match i {
            3 => vec!["-H".into(), format!("traceparent: {upstream_parent}")],
            _ => Vec::new(),
        };
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let r = call(&client, "http://orders/_echo", &extra);
        assert_eq!(r.status, 200, "{r:?}");
        let echo: Value = serde_json::from_str(&r.body).unwrap();
        let tp = echo["headers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h[0].as_str().unwrap().eq_ignore_ascii_case("traceparent"))
            .map(|h| h[1].as_str().unwrap().to_string())
            .expect("the app sees a traceparent");
        let parts: Vec<String> = tp.split('-').map(str::to_string).collect();
        assert_eq!(parts.len(), 4, "{tp}");
        assert_eq!(parts[3], "01", "sampled: {tp}");
        seen_by_app.push((parts[1].clone(), parts[2].clone()));
    }
    let all = support::wait_for("8 spans at the sink", secs(10), || {
        sink.assert_running();
        let s = spans(&sink);
        (s.len() >= 8).then_some(s)
    });
    assert_eq!(
        all.len(),
        8,
        "one client and one server span per call: {all:#?}"
    );
    for (i, (trace, app_parent)) in seen_by_app.iter().enumerate() {
        let in_trace: Vec<&Value> = all.iter().filter(|s| &s["trace_id"] == trace).collect();
        assert_eq!(
            in_trace.len(),
            2,
            "call {i}: two spans in trace {trace}: {all:#?}"
        );
        let server = in_trace
            .iter()
            .find(|s| s["kind"] == SERVER)
            .expect("a server span");
        let client = in_trace
            .iter()
            .find(|s| s["kind"] == CLIENT)
            .expect("a client span");
        assert_eq!(
            &server["span_id"], app_parent,
            "call {i}: the app's parent is the server span"
        );
        assert_eq!(
            server["parent_span_id"], client["span_id"],
            "call {i}: child of the client span"
        );
        match i {
            3 => assert_eq!(
                client["parent_span_id"], "00f067aa0ba902b7",
                "continues the caller's trace"
            ),
            _ => assert_eq!(client["parent_span_id"], "", "call {i}: a root span"),
        }
        assert_eq!(client["service"], "web");
        assert_eq!(server["service"], "orders");
        assert_eq!(client["name"], "GET orders");
        assert_eq!(client["attributes"]["mesh.service"], "orders");
        assert_eq!(client["attributes"]["mesh.retries"], 0);
        assert_eq!(client["attributes"]["mesh.breaker"], "closed");
        assert_eq!(client["attributes"]["http.response.status_code"], 200);
        assert!(
            client["attributes"]["server.address"].is_string(),
            "{client}"
        );
        assert_eq!(server["attributes"]["mesh.caller"], "web");
        let (start, end) = (
            client["start"].as_u64().unwrap(),
            client["end"].as_u64().unwrap(),
        );
        assert!(
            start <= end && server["start"].as_u64().unwrap() >= start,
            "{client} {server}"
        );
    }
    assert_eq!(
        support::protocols::metric(&client.metrics(), "mesh_trace_spans_exported_total", &[]),
        Some(4.0)
    );
}

fn main() -> std::process::ExitCode {
    use support::stories::{CURL, OTLP_PROTO, PYTHON3};
    support::stories::run(
        "observability_loopback",
        stories![
            [CURL, PYTHON3] => the_stream_counts_every_request_across_proxies,
            [CURL] => the_page_is_served_from_the_binary,
            [CURL, PYTHON3, OTLP_PROTO] => each_call_is_a_client_span_and_a_server_span,
            [CURL, PYTHON3] => explain_tells_what_each_request_met,
            [CURL, PYTHON3] => check_says_ok_then_fails_without_the_control_plane,
        ],
    )
}
