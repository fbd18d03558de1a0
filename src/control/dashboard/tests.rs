use super::*;
use crate::model::stats::DestStats;
use crate::telemetry::histogram::LatencyHistogram;

fn dest(service: &str, success: u64, failure: u64, ms: u64) -> DestStats {
    let h = LatencyHistogram::default();
    for _ in 0..success + failure {
        h.observe(Duration::from_millis(ms));
    }
    let c = h.snapshot();
    DestStats {
        service: service.into(),
        tally: Tally {
            requests: success + failure,
            success,
            failure,
            ..Tally::default()
        },
        latency: c.sparse(),
        latency_sum_nanos: c.sum_nanos,
        per_second: vec![success + failure],
        mtls: true,
        max_concurrent: 100,
        ..DestStats::default()
    }
}

fn reported(caller: &str, window_secs: u32, destinations: Vec<DestStats>) -> Reported {
    Reported {
        caller: Some(caller.into()),
        report: Arc::new(StatsReport {
            window_secs,
            destinations,
            tap: Vec::new(),
        }),
    }
}

#[test]
fn circuits_sum_every_caller_and_edges_keep_them_apart() {
    let mut broken = dest("orders", 2, 2, 40);
    broken.breaker = BreakerState::Open;
    broken.mtls = false;
    let d = aggregate(&[
        reported(
            "web",
            10,
            vec![dest("orders", 30, 0, 5), dest("users", 10, 0, 1)],
        ),
        reported("batch", 2, vec![broken]),
    ]);
    assert_eq!(d.reporting, 2);
    let names: Vec<&str> = d.circuits.iter().map(|c| c.service.as_str()).collect();
    assert_eq!(names, ["orders", "users"], "errors first");
    let orders = &d.circuits[0];
    assert_eq!(orders.tally.requests, 34);
    assert_eq!(orders.tally.errors(), 2);
    assert!((orders.error_percentage - 2.0 * 100.0 / 34.0).abs() < 1e-9);
    // 30 over 10 s plus 4 over a young proxy's 2 s.
    assert!((orders.rate - 5.0).abs() < 1e-9, "{}", orders.rate);
    assert_eq!(orders.breaker, BreakerState::Open, "the worst state");
    assert_eq!((orders.open_hosts, orders.hosts), (1, 2));
    assert_eq!(orders.max_concurrent, 200);
    assert_eq!(orders.per_second, [34]);
    // Merged histograms: 30 at 5 ms and 4 at 40 ms.
    // Within a bucket (19 %) of the truth.
    assert!(
        (orders.latency.p50 - 5.0).abs() / 5.0 < 0.19,
        "{:?}",
        orders.latency
    );
    assert!(
        (orders.latency.p99 - 40.0).abs() / 40.0 < 0.19,
        "{:?}",
        orders.latency
    );
    let edges: Vec<(&str, &str, u64, bool)> = d
        .edges
        .iter()
        .map(|e| {
            (
                e.caller.as_str(),
                e.destination.as_str(),
                e.tally.requests,
                e.mtls,
            )
        })
        .collect();
    assert_eq!(
        edges,
        [
            ("batch", "orders", 4, false),
            ("web", "orders", 30, true),
            ("web", "users", 10, true)
        ]
    );
    assert_eq!(d.edges[0].success_rate, 50.0);
}

#[test]
fn windows_of_different_lengths_align_on_the_newest_second() {
    let mut a = dest("s", 6, 0, 1);
    a.per_second = vec![1, 2, 3];
    let mut b = dest("s", 5, 0, 1);
    b.per_second = vec![5];
    let d = aggregate(&[reported("x", 3, vec![a]), reported("y", 1, vec![b])]);
    assert_eq!(d.circuits[0].per_second, [1, 2, 8]);
}

#[test]
fn the_events_carry_hystrix_names_and_ours() {
    let d = aggregate(&[reported("web", 10, vec![dest("orders", 9, 1, 5)])]);
    let ev = events(&d, 1234);
    let kinds: Vec<&str> = ev.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "HystrixCommand",
            "HystrixThreadPool",
            "MeshEdge",
            "MeshMeta"
        ]
    );
    let c = &ev[0];
    assert_eq!(c["name"], "orders");
    assert_eq!(c["requestCount"], 10);
    assert_eq!(c["errorCount"], 1);
    assert_eq!(c["errorPercentage"], 10.0);
    assert_eq!(c["rollingCountSuccess"], 9);
    assert_eq!(c["rollingCountFailure"], 1);
    assert_eq!(c["isCircuitBreakerOpen"], false);
    assert_eq!(c["state"], "closed");
    assert_eq!(c["reportingHosts"], 1);
    assert_eq!(c["currentTime"], 1234);
    let keys = ["0", "25", "50", "75", "90", "95", "99", "99.5", "100"];
    let values: Vec<f64> = keys
        .iter()
        .map(|k| c["latencyExecute"][k].as_f64().expect(k))
        .collect();
    assert!(
        values.windows(2).all(|w| w[0] <= w[1]),
        "in order: {values:?}"
    );
    assert!(values[8] > 0.0, "{values:?}");
    assert_eq!(ev[1]["currentPoolSize"], 100);
    assert_eq!(ev[2]["caller"], "web");
    assert_eq!(ev[2]["mtls"], true);
    assert_eq!(ev[3]["reportingProxies"], 1);
}

#[test]
fn the_caps_hold() {
    let many: Vec<DestStats> = (0..MAX_CIRCUITS + 3)
        .map(|i| dest(&format!("s{i}"), 1, 0, 1))
        .collect();
    let d = aggregate(&[reported("web", 10, many)]);
    assert_eq!(d.circuits.len(), MAX_CIRCUITS);
    assert_eq!(d.dropped, 3);
    let hub = Arc::new(Hub::default());
    let slots: Vec<StreamSlot> = (0..MAX_STREAMS).map(|_| hub.open().unwrap()).collect();
    assert!(hub.open().is_none(), "one past the cap");
    drop(slots);
    assert_eq!(hub.open_streams(), 0);
    assert!(hub.open().is_some());
}
