//! The renderer on canned `/state` documents, full and sparse, and the
//! `--admin` URL forms.

use super::*;

const FULL: &str = r#"{
  "control": "http://127.0.0.1:15010", "control_connected": true,
  "registry": {"revision": 42, "services": [
    {"name": "orders", "vip": "127.100.0.1", "balancer": "p2c-ewma",
     "breaker": {"state": "open", "calls": 40, "failures": 22, "slow": 1,
                 "failure_rate": 55.0, "slow_rate": 2.5},
     "bulkhead": {"in_flight": 3, "queued": 1, "max_concurrent": 10, "max_queued": 5},
     "retries": {"retried": 7, "budget_exhausted": 2, "budget_available": 12},
     "requests": {"total": 1234, "failed": 30, "fast_failed": 9},
     "endpoints": [
       {"id": "o-1", "addr": "10.0.0.1:8000", "state": "ready", "in_flight": 2, "ewma_ms": 3.25, "ejections": 0},
       {"id": "o-2", "addr": "10.0.0.2:8000", "state": "ejected", "in_flight": 0, "ewma_ms": 812.0, "ejections": 3},
       {"id": "o-3", "addr": "10.0.0.3:8000", "state": "unhealthy", "in_flight": 0, "ewma_ms": 0, "ejections": 0}
     ]},
    {"name": "users", "vip": "127.100.0.2", "balancer": "round-robin",
     "breaker": {"state": "half-open", "calls": 1, "failures": 0, "slow": 0,
                 "failure_rate": 0, "slow_rate": 0},
     "endpoints": []}
  ]},
  "local": {"something": "new"}
}"#;

fn parse(json: &str) -> ProxyState {
    serde_json::from_str(json).unwrap()
}

#[test]
fn full_state_renders_every_section() {
    let text = frame("http://127.0.0.1:15000", &parse(FULL));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "mesh top  proxy http://127.0.0.1:15000  control http://127.0.0.1:15010 (connected)  revision 42"
    );
    let want = [
        "orders  127.100.0.1  p2c-ewma",
        "  breaker    OPEN       calls 40  failed 22 (55.0%)  slow 1 (2.5%)",
        "  bulkhead   in-flight 3 of 10  queued 1 of 5",
        "  requests   total 1234  failed 30  fast-failed 9",
        "  retries    retried 7  budget exhausted 2  budget available 12",
        "  endpoints  1 ready  1 ejected  1 unhealthy",
        "    ID   ADDRESS        STATE      IN-FLIGHT  EWMA     EJECTIONS",
        "    o-1  10.0.0.1:8000  ready      2          3.2ms    0",
        "    o-2  10.0.0.2:8000  ejected    0          812.0ms  3",
        "    o-3  10.0.0.3:8000  unhealthy  0          0.0ms    0",
    ];
    let at = lines.iter().position(|l| *l == want[0]).expect(&text);
    assert_eq!(&lines[at..at + want.len()], want, "\n{text}");

    let users = lines
        .iter()
        .position(|l| l.starts_with("users"))
        .expect(&text);
    assert!(lines[users + 1].contains("HALF-OPEN"), "{text}");
    assert_eq!(
        lines[users + 2],
        "  bulkhead   -",
        "missing section: {text}"
    );
    assert_eq!(lines[users + 5], "  endpoints  none");
}

#[test]
fn sparse_or_empty_states_render_dashes() {
    let text = frame("a:1", &parse("{}"));
    assert_eq!(
        text.lines().next(),
        Some("mesh top  proxy a:1  control -  revision -")
    );
    assert!(text.contains("no services known"), "{text}");

    // Today's proxy: endpoints only, no resilience sections yet.
    let text = frame(
        "a:1",
        &parse(
            r#"{"control": "http://c:1", "control_connected": false, "registry": {"revision": 3,
                "services": [{"name": "web", "vip": "127.100.0.9", "balancer": "p2c-ewma",
                  "endpoints": [{"id": "w", "addr": "1.2.3.4:80", "state": "ready"}]}]}}"#,
        ),
    );
    for want in [
        "control http://c:1 (DISCONNECTED)",
        "  breaker    -",
        "  retries    -",
        "  endpoints  1 ready  0 ejected  0 unhealthy",
        "    w   1.2.3.4:80  ready  0          0.0ms  0",
    ] {
        assert!(text.contains(want), "{want:?} missing from\n{text}");
    }
}

#[test]
fn admin_urls() {
    for (given, want) in [
        ("http://127.0.0.1:15000", "http://127.0.0.1:15000/state"),
        ("http://127.0.0.1:15000/", "http://127.0.0.1:15000/state"),
        ("127.0.0.1:15000", "http://127.0.0.1:15000/state"),
        ("http://proxy:15000/state", "http://proxy:15000/state"),
    ] {
        assert_eq!(state_url(given).unwrap().to_string(), want, "{given}");
    }
    for bad in ["https://x:1", "http://x:1/other", "http://", "a b"] {
        assert!(state_url(bad).is_err(), "{bad:?} accepted");
    }
}
