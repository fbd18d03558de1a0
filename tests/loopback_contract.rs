//! The contract, proven on loopback with real processes and no root: one
//! story per claim of the README that needs no interception. Each story is
//! a table of processes, documents, calls, and what must come back
//! (status, `x-mesh-error`, the app's own counters, the metrics).
//!
//! Run: `cargo test --test loopback_contract` (about 10 s; figures printed).

// Test code: real processes on the wall clock, and unwrap() as assertion.
#![allow(clippy::disallowed_types, clippy::unwrap_used)]

#[allow(dead_code, unused_imports)] // each test binary uses a different part of the harness
mod support;

use std::time::Instant;
use support::bins::mesh_ctl;
use support::fault::{echoed_header_names, foreign_mesh_headers, Fault};
use support::loopback::{call, get, refusing, Loopback};
use support::proc::{command, run_with_timeout};
use support::protocols::metric;
use support::stories::{tool, CURL, PYTHON3};
use support::{secs, wait_for};

const PROMTOOL: support::stories::Need =
    tool("promtool", &["--version"], "apt-get install prometheus");

/// One request is one count, whatever its retries; tries are attempts.
/// The endpoint gauges say what `/state` says, ejected included.
///
/// | hello endpoints | live app, refusing address (round-robin) |
/// | policy          | retries on connect-failure; eject after 2 failures |
/// | 6 GETs          | 6 × 200; requests{2xx} = 6; attempts = 6 + retries |
/// | then            | the refusing one is ejected: mesh_endpoints{ejected} = 1 |
fn counts_once_per_request_and_endpoints_as_state_shows() {
    let lo = Loopback::start("counts");
    let app = lo.app("hello-1", &Fault::default());
    let dead = refusing();
    lo.register_addr("hello", app.addr);
    lo.register_addr("hello", dead.addr);
    lo.apply(
        "kind: ServicePolicy
service: hello
loadBalancer: round-robin
outlier: { consecutiveFailures: 2, ejectFor: 30s, maxEjectedPercent: 50 }
",
    );
    let client = lo.sidecar("client", &[]);
    client.wait_ready_endpoints("hello", 2);
    for i in 0..6 {
        let r = call(&client, "http://hello/", &[]);
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, "hello-1"),
            "call {i}: {r:?}"
        );
    }
    let text = client.metrics();
    fn svc(class: &str) -> [(&str, &str); 2] {
        [("service", "hello"), ("class", class)]
    }
    let requests = metric(&text, "mesh_requests_total", &[("service", "hello")]);
    assert_eq!(requests, Some(6.0), "{text}");
    assert_eq!(metric(&text, "mesh_requests_total", &svc("5xx")), Some(0.0));
    let retries = metric(&text, "mesh_retries_total", &[("service", "hello")]).unwrap_or(0.0);
    assert!(
        retries >= 1.0,
        "round-robin met the refusing endpoint: {text}"
    );
    let attempts = metric(
        &text,
        "mesh_request_attempts_total",
        &[("service", "hello")],
    );
    assert_eq!(attempts, Some(6.0 + retries), "{text}");
    let failed_tries = metric(&text, "mesh_request_attempts_total", &svc("5xx"));
    assert_eq!(
        failed_tries,
        Some(retries),
        "each retry followed a failed try"
    );

    let state = client.state();
    let endpoints = state["registry"]["services"][0]["endpoints"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for want in ["ready", "ejected", "unhealthy"] {
        let in_state = endpoints.iter().filter(|e| e["state"] == want).count() as f64;
        let gauge = metric(
            &text,
            "mesh_endpoints",
            &[("service", "hello"), ("state", want)],
        );
        assert_eq!(
            gauge,
            Some(in_state),
            "{want}: /state {endpoints:?}\n{text}"
        );
    }
    assert_eq!(
        metric(&text, "mesh_endpoints", &[("state", "ejected")]),
        Some(1.0),
        "the refusing endpoint is ejected: {endpoints:?}"
    );
}

/// | app      | answers after 3 s |
/// | policy   | timeouts.request 300ms, no retries |
/// | GET      | 504 `timeout` within 2 s |
/// | gRPC GET | 200, grpc-status 4 (DEADLINE_EXCEEDED), `timeout` |
fn request_timeout_answers_504_and_deadline_exceeded() {
    let lo = Loopback::start("timeout");
    let slow = lo.app("slow-1", &Fault::latency_ms(3000));
    lo.register_addr("slow", slow.addr);
    lo.apply(
        "kind: ServicePolicy
service: slow
timeouts: { request: 300ms }
retries: { attempts: 0 }
",
    );
    let client = lo.sidecar("client", &[]);
    client.wait_ready_endpoints("slow", 1);
    let start = Instant::now();
    let r = call(&client, "http://slow/", &[]);
    let ms = start.elapsed().as_millis();
    eprintln!("request timeout of 300 ms answered after {ms} ms");
    assert_eq!(
        (r.status, r.header("x-mesh-error")),
        (504, Some("timeout")),
        "{r:?}"
    );
    assert!(ms < 2000, "answered after {ms} ms");
    let grpc = ["-H", "content-type: application/grpc", "-H", "te: trailers"];
    let r = call(&client, "http://slow/mesh.test.Echo/Unary", &grpc);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("grpc-status"), Some("4"), "{r:?}");
    assert_eq!(r.header("x-mesh-error"), Some("timeout"), "{r:?}");
}

/// A policy change reaches the sidecar live; a request already in flight
/// finishes under the policy it started with.
///
/// | app      | answers after 1.5 s |
/// | policy   | timeouts.request 5s |
/// | GET #1   | started, in flight |
/// | policy   | timeouts.request 300ms, applied while #1 is in flight |
/// | GET #1   | 200 after ~1.5 s (its 5 s timeout) |
/// | GET #2   | 504 `timeout` (the new one) |
fn in_flight_requests_keep_the_policy_they_started_with() {
    let lo = Loopback::start("inflight");
    let slow = lo.app("slow-1", &Fault::latency_ms(1500));
    lo.register_addr("slow", slow.addr);
    let policy = |timeout: &str| {
        format!(
            "kind: ServicePolicy\nservice: slow\ntimeouts: {{ request: {timeout} }}\nretries: {{ attempts: 0 }}\n"
        )
    };
    lo.apply(&policy("5s"));
    let client = lo.sidecar("client", &[]);
    client.wait_ready_endpoints("slow", 1);
    let first = std::thread::scope(|scope| {
        let first = scope.spawn(|| call(&client, "http://slow/first", &[]));
        wait_for("the first call in flight at the app", secs(5), || {
            (slow.stats().in_flight == 1).then_some(())
        });
        let before = client.state()["registry"]["revision"].as_u64();
        lo.apply(&policy("300ms"));
        wait_for("the sidecar to take the new policy", secs(5), || {
            (client.state()["registry"]["revision"].as_u64() > before).then_some(())
        });
        first.join().expect("first call")
    });
    assert_eq!(
        (first.status, first.body.as_str()),
        (200, "slow-1"),
        "{first:?}"
    );
    let second = call(&client, "http://slow/second", &[]);
    assert_eq!(
        (second.status, second.header("x-mesh-error")),
        (504, Some("timeout")),
        "{second:?}"
    );
}

/// | orders          | one endpoint, refusing |
/// | orders-readonly | an app |
/// | policy          | orders: fallback to service orders-readonly |
/// | GET orders      | 200 from orders-readonly, `x-mesh-fallback: connect-failed` |
fn service_fallback_answers_from_the_other_service() {
    let lo = Loopback::start("fallback");
    let dead = refusing();
    let readonly = lo.app("readonly-1", &Fault::default());
    lo.register_addr("orders", dead.addr);
    lo.register_addr("orders-readonly", readonly.addr);
    lo.apply(
        "kind: ServicePolicy
service: orders
retries: { attempts: 0 }
fallback: { service: orders-readonly }
",
    );
    let client = lo.sidecar("client", &[]);
    client.wait_ready_endpoints("orders-readonly", 1);
    client.wait_ready_endpoints("orders", 1);
    let r = call(&client, "http://orders/items", &[]);
    assert_eq!((r.status, r.body.as_str()), (200, "readonly-1"), "{r:?}");
    assert_eq!(r.header("x-mesh-fallback"), Some("connect-failed"), "{r:?}");
    assert_eq!(readonly.stats().requests, 1);
    let text = client.metrics();
    // Counted once, as what the caller got.
    let labels = [("service", "orders"), ("class", "2xx")];
    assert_eq!(
        metric(&text, "mesh_requests_total", &labels),
        Some(1.0),
        "{text}"
    );
}

/// | flaky  | one endpoint, refusing |
/// | policy | 2 retries on connect-failure, a budget of 0 % and no reserve |
/// | GET    | 503 `retry-budget-exhausted`, no retry sent |
fn retry_budget_exhausted_when_no_retry_is_left() {
    let lo = Loopback::start("budget");
    let dead = refusing();
    lo.register_addr("flaky", dead.addr);
    lo.apply(
        "kind: ServicePolicy
service: flaky
retries: { attempts: 2, on: [connect-failure], budget: { percent: 0, minPerSecond: 0 } }
",
    );
    let client = lo.sidecar("client", &[]);
    client.wait_ready_endpoints("flaky", 1);
    let r = call(&client, "http://flaky/", &[]);
    assert_eq!(
        (r.status, r.header("x-mesh-error")),
        (503, Some("retry-budget-exhausted")),
        "{r:?}"
    );
    assert!(
        r.body.contains("cannot connect"),
        "names the failure: {r:?}"
    );
    let text = client.metrics();
    let svc = [("service", "flaky")];
    assert_eq!(
        metric(&text, "mesh_retry_budget_exhausted_total", &svc),
        Some(1.0)
    );
    assert_eq!(metric(&text, "mesh_retries_total", &svc), Some(0.0));
}

/// Proxy to proxy on loopback:
///
/// | web (client)  | sidecar registered as `web`, calls through its outbound |
/// | echo          | an app behind its own sidecar (inbound) |
/// | ring          | a sidecar whose "app" is web's own outbound listener |
/// | GET echo/_echo | the app sees no `x-mesh-caller`; echo's sidecar counts caller="web" |
/// | GET echo/_respond with x-mesh-* | the caller gets the app's x-app, no x-mesh-* |
/// | GET ring/     | back into web's outbound with web's `via` token: 508 |
fn proxy_to_proxy_caller_header_stripping_and_via_loops() {
    let lo = Loopback::start("peers");
    let web_app = lo.app("web-1", &Fault::default());
    let echo_app = lo.app("echo-1", &Fault::default());
    let sidecar_of = |label: &str, service: &str, port: u16| {
        let port = port.to_string();
        let args = [
            "--service",
            service,
            "--app-port",
            &port,
            "--advertise",
            "127.0.0.1",
            "--instance-id",
            label,
        ];
        lo.sidecar(label, &args)
    };
    let web = sidecar_of("web-1", "web", web_app.addr.port());
    let echo = sidecar_of("echo-1", "echo", echo_app.addr.port());
    let ring = sidecar_of("ring-1", "ring", web.outbound.port());
    for service in ["echo", "ring"] {
        web.wait_ready_endpoints(service, 1);
    }

    let r = call(&web, "http://echo/_echo", &["-H", "x-mesh-caller: forged"]);
    assert_eq!(r.status, 200, "{r:?}");
    let names = echoed_header_names(&r.body);
    assert_eq!(
        foreign_mesh_headers(&names),
        [""; 0],
        "the app saw {names:?}"
    );
    let labels = [("caller", "web"), ("class", "2xx")];
    let by_caller = metric(&echo.metrics(), "mesh_inbound_requests_total", &labels);
    assert_eq!(by_caller, Some(1.0), "echo's sidecar names its caller");

    let forged = "http://echo/_respond?h=x-mesh-error:forged&h=x-mesh-fallback:forged&h=x-app:kept";
    let r = call(&web, forged, &[]);
    assert_eq!((r.status, r.header("x-app")), (200, Some("kept")), "{r:?}");
    assert!(
        !r.headers.iter().any(|(k, _)| k.starts_with("x-mesh-")),
        "the app's x-mesh-* reached the caller: {r:?}"
    );

    // web → ring's inbound → web's outbound again, carrying web's `via`.
    // web's own-listener check cannot see it (ring's inbound is not web's),
    // so only the token can: 508. ring's sidecar strips the x-mesh-error
    // of its "app" (web) on the way back, as it does for any app.
    let r = call(&web, "http://ring/", &[]);
    assert_eq!(r.status, 508, "{r:?}");
    let labels = [("caller", "web"), ("class", "5xx")];
    let looped = metric(&ring.metrics(), "mesh_inbound_requests_total", &labels);
    assert_eq!(looped, Some(1.0), "the loop went through ring once");
}

/// | control plane | stopped, then started again over the same data dir |
/// | meanwhile     | the sidecar keeps routing on what it knows |
/// | after         | it resumes the watch from its revision; a new instance reaches it |
fn watch_resumes_by_revision_across_a_control_plane_restart() {
    let mut lo = Loopback::start("resume");
    let a = lo.app("hello-a", &Fault::default());
    lo.register_addr("hello", a.addr);
    let client = lo.sidecar("client", &[]);
    client.wait_ready_endpoints("hello", 1);
    let revision = client.state()["registry"]["revision"]
        .as_u64()
        .expect("a revision");
    assert!(revision > 0);

    lo.stop_control();
    wait_for("the sidecar to notice", secs(20), || {
        let text = client.metrics();
        (metric(&text, "mesh_control_connected", &[]) == Some(0.0)).then_some(())
    });
    let r = call(&client, "http://hello/", &[]);
    assert_eq!((r.status, r.body.as_str()), (200, "hello-a"), "{r:?}");

    lo.start_control(&[]);
    let b = lo.app("hello-b", &Fault::default());
    lo.register_addr("hello", b.addr);
    client.wait_ready_endpoints("hello", 2);
    let resumed = wait_for("a watch resumed by revision", secs(10), || {
        let log = std::fs::read_to_string(client.proc.log_path()).ok()?;
        log.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["message"] == "watching the registry")
            .find(|v| v["since"].as_u64() == Some(revision))
    });
    eprintln!("resumed: {resumed}");
    assert_eq!(
        metric(&client.metrics(), "mesh_control_connected", &[]),
        Some(1.0)
    );
}

/// | control plane | sweeps every 200 ms; self-preservation at 15 % and 3 leases |
/// | 1 lease of 1 s, not renewed | evicted: one dead pod is not an outage |
/// | 4 leases of 1 s, not renewed | kept: `mesh-ctl status` says self-preservation ON |
fn self_preservation_through_the_binary_and_mesh_ctl() {
    let mut lo = Loopback::start("preserve");
    lo.stop_control();
    lo.start_control(&[
        "--sweep-interval",
        "200ms",
        "--self-preservation-threshold",
        "15",
        "--self-preservation-min",
        "3",
    ]);
    let control = lo.control_url();
    let ctl = |args: &[&str]| {
        let mut all = vec!["--control", &control];
        all.extend_from_slice(args);
        let out = run_with_timeout(command(mesh_ctl(), &all, &[]), secs(10));
        assert!(out.status.success(), "mesh-ctl {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let instances = |service: &str| -> usize {
        let text = ctl(&["endpoints", service, "-o", "json"]);
        let v: serde_json::Value = serde_json::from_str(&text).expect("endpoints JSON");
        v["instances"].as_array().map_or(0, Vec::len)
    };
    let status = || -> serde_json::Value {
        serde_json::from_str(&ctl(&["status", "-o", "json"])).expect("status JSON")
    };

    ctl(&["register", "lone", "127.0.0.1:9001", "--ttl", "1s"]);
    assert_eq!(instances("lone"), 1);
    wait_for("the lone expired lease to be evicted", secs(5), || {
        (instances("lone") == 0).then_some(())
    });
    assert_eq!(status()["self_preservation"], false);

    for port in 9101..9105 {
        ctl(&[
            "register",
            "herd",
            &format!("127.0.0.1:{port}"),
            "--ttl",
            "1s",
        ]);
    }
    wait_for("self-preservation to engage", secs(5), || {
        (status()["self_preservation"] == true).then_some(())
    });
    assert_eq!(instances("herd"), 4, "evictions are suspended");
    let table = ctl(&["status"]);
    assert!(table.contains("ON (evictions suspended)"), "{table}");
    let metrics = get(lo.control, "/metrics").expect("control /metrics");
    assert_eq!(
        metric(&metrics, "mesh_control_self_preservation", &[]),
        Some(1.0)
    );
    assert_eq!(
        metric(&metrics, "mesh_control_evictions_total", &[]),
        Some(1.0)
    );
}

/// `mesh-ctl top` against a live sidecar: the frame names the service and
/// its counts; `-o json` is the proxy's own `/state`.
fn top_draws_a_live_proxy_and_honours_output() {
    let lo = Loopback::start("top");
    let app = lo.app("hello-1", &Fault::default());
    lo.register_addr("hello", app.addr);
    let client = lo.sidecar("client", &[]);
    client.wait_ready_endpoints("hello", 1);
    for _ in 0..3 {
        assert_eq!(call(&client, "http://hello/", &[]).status, 200);
    }
    let admin = format!("http://{}", client.admin);
    let top = |extra: &[&str]| {
        let mut args = vec!["top", "--once", "--admin", &admin];
        args.extend_from_slice(extra);
        let out = run_with_timeout(command(mesh_ctl(), &args, &[]), secs(10));
        assert!(out.status.success(), "mesh-ctl top {extra:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let frame = top(&[]);
    eprintln!("{frame}");
    assert!(frame.contains("hello"), "{frame}");
    assert!(frame.contains(&app.addr.to_string()), "{frame}");
    let json: serde_json::Value = serde_json::from_str(&top(&["-o", "json"])).expect("top -o json");
    let svc = &json["registry"]["services"][0];
    assert_eq!(svc["name"], "hello", "{json}");
    assert_eq!(svc["requests"]["total"], 3, "{json}");
    assert!(
        json["learned_client_first"].is_array(),
        "every /state field: {json}"
    );
    let yaml = top(&["-o", "yaml"]);
    assert!(yaml.contains("name: hello"), "{yaml}");
}

/// Both programs' `/metrics` pass `promtool check metrics` (format and
/// naming lint) at startup and after traffic, every family is in
/// docs/reference.md, and every `mesh_*` name there exists.
fn metrics_pass_promtool_and_match_the_reference() {
    let lo = Loopback::start("promtool");
    let client = lo.sidecar("client", &[]);
    let reference =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/reference.md"))
            .expect("docs/reference.md");
    let check = |what: &str, text: &str| {
        let file = lo.dir().join(format!("{what}.prom"));
        std::fs::write(&file, text).expect("write metrics");
        let script = format!("promtool check metrics < '{}'", file.display());
        let out = run_with_timeout(command("sh", &["-c", &script], &[]), secs(20));
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && said.trim().is_empty(),
            "promtool on {what}:\n{said}"
        );
    };
    let families = |text: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect()
    };
    let mut exported = Vec::new();
    let at_start = [
        ("proxy", client.metrics()),
        ("control", get(lo.control, "/metrics").unwrap()),
    ];
    for (what, text) in &at_start {
        check(&format!("{what}-startup"), text);
        exported.extend(families(text));
    }
    let app = lo.app("hello-1", &Fault::default());
    lo.register_addr("hello", app.addr);
    client.wait_ready_endpoints("hello", 1);
    assert_eq!(call(&client, "http://hello/", &[]).status, 200);
    assert_eq!(call(&client, "http://nosuch/", &[]).status, 503);
    check("proxy-traffic", &client.metrics());
    check("control-traffic", &get(lo.control, "/metrics").unwrap());

    for family in &exported {
        let documented = reference.contains(&format!("`{family}`"));
        assert!(
            documented,
            "{family} is exported but not in docs/reference.md"
        );
    }
    let named: Vec<&str> = reference
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|w| w.starts_with("mesh_") && w.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .collect();
    for name in named {
        assert!(
            exported.iter().any(|f| f == name),
            "docs/reference.md names {name}, which /metrics does not export (at startup)"
        );
    }
}

fn main() -> std::process::ExitCode {
    support::stories::run(
        "loopback_contract",
        stories![
            [CURL, PYTHON3] => counts_once_per_request_and_endpoints_as_state_shows,
            [CURL, PYTHON3] => request_timeout_answers_504_and_deadline_exceeded,
            [CURL, PYTHON3] => in_flight_requests_keep_the_policy_they_started_with,
            [CURL, PYTHON3] => service_fallback_answers_from_the_other_service,
            [CURL, PYTHON3] => retry_budget_exhausted_when_no_retry_is_left,
            [CURL, PYTHON3] => proxy_to_proxy_caller_header_stripping_and_via_loops,
            [CURL, PYTHON3] => watch_resumes_by_revision_across_a_control_plane_restart,
            [CURL] => self_preservation_through_the_binary_and_mesh_ctl,
            [CURL, PYTHON3] => top_draws_a_live_proxy_and_honours_output,
            [CURL, PYTHON3, PROMTOOL] => metrics_pass_promtool_and_match_the_reference,
        ],
    )
}
