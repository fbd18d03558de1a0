//! Policy documents: the DESIGN example, defaults, and a table of malformed
//! documents each rejected under the right field paths.

use super::*;
use serde_json::json;

/// The example from DESIGN.md, verbatim.
const DESIGN_EXAMPLE: &str = r#"
kind: ServicePolicy
service: orders
loadBalancer: p2c-ewma          # round-robin | least-request | random
timeouts: { request: 15s, connect: 1s }
retries: { attempts: 2, on: [connect-failure, gateway-error], budget: { percent: 20, minPerSecond: 10 } }
breaker: { window: 10s, minRequests: 20, failureRate: 50, consecutiveFailures: 0,
           slowCall: { duration: 1s, rate: 100 }, openFor: 5s, halfOpenProbes: 1 }
bulkhead: { maxConcurrent: 1024, maxQueued: 0, queueTimeout: 0s }
outlier: { consecutiveFailures: 5, ejectFor: 30s, maxEjectedPercent: 50 }
fallback: { status: 200, headers: { content-type: application/json }, body: '{"items":[]}' }
#   or    { service: orders-readonly }
"#;

fn one(yaml: &str) -> Result<ServicePolicy, FieldErrors> {
    match parse_policy_documents(yaml) {
        Ok(mut v) if v.len() == 1 => Ok(v.remove(0)),
        Ok(v) => panic!("expected one policy, got {v:?}"),
        Err(mut e) if e.len() == 1 => Err(e.remove(0).1),
        Err(e) => panic!("expected one failing document, got {e:?}"),
    }
}

/// The field paths rejected in a one-document file.
fn rejected(yaml: &str) -> Vec<String> {
    let errs = one(yaml).expect_err("document accepted");
    errs.0.into_iter().map(|e| e.field).collect()
}

#[test]
fn design_example_parses_to_the_documented_values() {
    let p = one(DESIGN_EXAMPLE).unwrap();
    let mut want = ServicePolicy::defaults("orders");
    want.fallback = Some(Fallback::Static {
        status: 200,
        headers: BTreeMap::from([("content-type".into(), "application/json".into())]),
        body: r#"{"items":[]}"#.into(),
    });
    // The example spells out the defaults, so only the fallback differs.
    assert_eq!(p, want);
    assert_eq!(p.timeouts.request, Duration::from_secs(15));
    assert_eq!(
        p.retries.on,
        [RetryOn::ConnectFailure, RetryOn::GatewayError]
    );
    assert_eq!(p.breaker.slow_call.duration, Duration::from_secs(1));
    assert_eq!(p.outlier.eject_for, Duration::from_secs(30));

    let alt = DESIGN_EXAMPLE.replace(
        r#"fallback: { status: 200, headers: { content-type: application/json }, body: '{"items":[]}' }"#,
        "fallback: { service: orders-readonly }",
    );
    assert_eq!(
        one(&alt).unwrap().fallback,
        Some(Fallback::Service {
            service: "orders-readonly".into()
        })
    );
}

#[test]
fn non_default_values_are_read() {
    let p = one(
        "kind: ServicePolicy\nservice: pay\nloadBalancer: least-request\n\
         timeouts: {request: 1m30s, connect: 250ms}\nretries: {attempts: 0, on: [reset]}\n\
         breaker: {window: 1s, openFor: 1500ms, halfOpenProbes: 3, slowCall: {rate: 0}}\n\
         bulkhead: {maxConcurrent: 1, maxQueued: 5, queueTimeout: 0}\n",
    )
    .unwrap();
    assert_eq!(p.load_balancer, LoadBalancer::LeastRequest);
    assert_eq!(p.timeouts.request, Duration::from_secs(90));
    assert_eq!(p.timeouts.connect, Duration::from_millis(250));
    assert_eq!(
        (p.retries.attempts, p.retries.on.as_slice()),
        (0, &[RetryOn::Reset][..])
    );
    assert_eq!(p.breaker.open_for, Duration::from_millis(1500));
    assert_eq!(
        (p.breaker.half_open_probes, p.breaker.slow_call.rate),
        (3, 0)
    );
    assert_eq!((p.bulkhead.max_concurrent, p.bulkhead.max_queued), (1, 5));
    assert_eq!(p.bulkhead.queue_timeout, Duration::ZERO);
    assert_eq!(p.fallback, None);
}

#[test]
fn json_bodies_round_trip_and_kind_is_optional_there() {
    let mut p = ServicePolicy::defaults("orders");
    p.fallback = Some(Fallback::Static {
        status: 503,
        headers: BTreeMap::from([("x-why".into(), "degraded".into())]),
        body: "[]".into(),
    });
    let wire = serde_json::to_value(&p).unwrap();
    assert_eq!(ServicePolicy::from_value(&wire), Ok(p.clone()));
    let mut with_kind = wire.clone();
    with_kind["kind"] = json!("ServicePolicy");
    assert_eq!(ServicePolicy::from_value(&with_kind), Ok(p));
    with_kind["kind"] = json!("Service");
    let errs = ServicePolicy::from_value(&with_kind).unwrap_err();
    assert_eq!(errs.0[0].field, "kind");
    // A bare service is the default stack.
    assert_eq!(
        ServicePolicy::from_value(&json!({"service": "a"})),
        Ok(ServicePolicy::defaults("a"))
    );
    let errs = ServicePolicy::from_value(&json!([1])).unwrap_err();
    assert_eq!(errs.0[0].field, "(document)");
}

#[test]
fn malformed_documents_name_their_fields() {
    let cases: &[(&str, &[&str])] = &[
        ("service: orders", &["kind"]),
        ("kind: Deployment\nservice: orders", &["kind"]),
        ("kind: ServicePolicy", &["service"]),
        ("kind: ServicePolicy\nservice: Orders_1", &["service"]),
        ("kind: ServicePolicy\nservice: 7", &["service"]),
        (
            "kind: ServicePolicy\nservice: a\nretry: {attempts: 1}",
            &["retry"],
        ),
        (
            "kind: ServicePolicy\nservice: a\nbreaker: {failureRates: 5}",
            &["breaker.failureRates"],
        ),
        (
            "kind: ServicePolicy\nservice: a\nloadBalancer: fastest",
            &["loadBalancer"],
        ),
        (
            "kind: ServicePolicy\nservice: a\ntimeouts: {request: -5s}",
            &["timeouts.request"],
        ),
        (
            "kind: ServicePolicy\nservice: a\ntimeouts: {request: soon}",
            &["timeouts.request"],
        ),
        (
            "kind: ServicePolicy\nservice: a\ntimeouts: {request: 0s}",
            &["timeouts.request"],
        ),
        (
            "kind: ServicePolicy\nservice: a\ntimeouts: {connect: 5}",
            &["timeouts.connect"],
        ),
        (
            "kind: ServicePolicy\nservice: a\ntimeouts: {connect: 0.5ms}",
            &["timeouts.connect"],
        ),
        (
            "kind: ServicePolicy\nservice: a\ntimeouts: 5s",
            &["timeouts"],
        ),
        (
            "kind: ServicePolicy\nservice: a\nbreaker: {failureRate: 150}",
            &["breaker.failureRate"],
        ),
        (
            "kind: ServicePolicy\nservice: a\nbreaker: {slowCall: {rate: 101}}",
            &["breaker.slowCall.rate"],
        ),
        (
            "kind: ServicePolicy\nservice: a\nbreaker: {window: 500ms}",
            &["breaker.window"],
        ),
        (
            "kind: ServicePolicy\nservice: a\nbreaker: {openFor: 0}",
            &["breaker.openFor"],
        ),
        (
            "kind: ServicePolicy\nservice: a\nbreaker: {halfOpenProbes: 0}",
            &["breaker.halfOpenProbes"],
        ),
        (
            "kind: ServicePolicy\nservice: a\nbreaker: {minRequests: -1}",
            &["breaker.minRequests"],
        ),
        (
            "kind: ServicePolicy\nservice: a\nbreaker: {minRequests: 2.5}",
            &["breaker.minRequests"],
        ),
        (
            "kind: ServicePolicy\nservice: a\nretries: {attempts: 11}",
            &["retries.attempts"],
        ),
        (
            "kind: ServicePolicy\nservice: a\nretries: {attempts: two}",
            &["retries.attempts"],
        ),
        (
            "kind: ServicePolicy\nservice: a\nretries: {on: [reset, timeout]}",
            &["retries.on[1]"],
        ),
        (
            "kind: ServicePolicy\nservice: a\nretries: {on: reset}",
            &["retries.on"],
        ),
        (
            "kind: ServicePolicy\nservice: a\nretries: {budget: {percent: 200}}",
            &["retries.budget.percent"],
        ),
        (
            "kind: ServicePolicy\nservice: a\nbulkhead: {maxConcurrent: 0}",
            &["bulkhead.maxConcurrent"],
        ),
        (
            "kind: ServicePolicy\nservice: a\noutlier: {maxEjectedPercent: 101}",
            &["outlier.maxEjectedPercent"],
        ),
        (
            "kind: ServicePolicy\nservice: a\nfallback: {status: 200}",
            &["fallback"],
        ),
        (
            "kind: ServicePolicy\nservice: a\nfallback: {}",
            &["fallback"],
        ),
        (
            "kind: ServicePolicy\nservice: a\nfallback: {body: x, service: b}",
            &["fallback"],
        ),
        (
            "kind: ServicePolicy\nservice: a\nfallback: {service: a}",
            &["fallback.service"],
        ),
        (
            "kind: ServicePolicy\nservice: a\nfallback: {service: b, status: 500}",
            &["fallback.status"],
        ),
        (
            "kind: ServicePolicy\nservice: a\nfallback: {body: x, status: 99}",
            &["fallback.status"],
        ),
        (
            "kind: ServicePolicy\nservice: a\nfallback: {body: x, headers: {\"bad header\": v}}",
            &["fallback.headers.bad header"],
        ),
        (
            "kind: ServicePolicy\nservice: a\nfallback: {body: 5}",
            &["fallback.body"],
        ),
        (
            "kind: ServicePolicy\nservice: a\nfallback: [x]",
            &["fallback"],
        ),
    ];
    for (yaml, want) in cases {
        assert_eq!(rejected(yaml), *want, "document:\n{yaml}");
    }
}

#[test]
fn every_bad_field_is_reported_at_once() {
    let yaml = "kind: ServicePolicy\nservice: a\nextra: 1\nloadBalancer: nope\n\
                timeouts: {request: -1s, connect: x}\nretries: {attempts: 99, on: [reset, bogus]}\n\
                breaker: {failureRate: 101, unknown: 1}\nbulkhead: {maxConcurrent: 0}\n\
                fallback: {status: 200}\n";
    let errs = one(yaml).unwrap_err();
    let fields: Vec<&str> = errs.0.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "extra",
            "loadBalancer",
            "timeouts.request",
            "timeouts.connect",
            "retries.attempts",
            "retries.on[1]",
            "breaker.unknown",
            "breaker.failureRate",
            "bulkhead.maxConcurrent",
            "fallback",
        ]
    );
    // Reasons say what is wrong, not only where.
    let reason = |f: &str| &errs.0.iter().find(|e| e.field == f).unwrap().reason;
    assert!(reason("timeouts.request").contains("negative"), "{errs}");
    assert!(reason("retries.attempts").contains("0..=10"), "{errs}");
    assert!(reason("loadBalancer").contains("round-robin"), "{errs}");
    assert!(reason("extra").contains("unknown field"), "{errs}");
}

#[test]
fn multi_document_files_report_each_bad_document_by_position() {
    let yaml = "---\nkind: ServicePolicy\nservice: a\n---\n# only a comment\n---\n\
                kind: ServicePolicy\nservice: b\nbreaker: {failureRate: 500}\n---\n\
                kind: ServicePolicy\nservice: c\n";
    let failures = parse_policy_documents(yaml).unwrap_err();
    assert_eq!(failures.len(), 1, "{failures:?}");
    let (doc, errs) = &failures[0];
    assert_eq!(
        *doc, 3,
        "the empty second document still counts as a position"
    );
    assert_eq!(errs.0[0].field, "breaker.failureRate");

    let good = yaml.replace("failureRate: 500", "failureRate: 50");
    let names: Vec<String> = parse_policy_documents(&good)
        .unwrap()
        .into_iter()
        .map(|p| p.service)
        .collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert_eq!(parse_policy_documents(""), Ok(vec![]));
}

#[test]
fn yaml_syntax_errors_name_their_line() {
    let yaml = "kind: ServicePolicy\nservice: a\ntimeouts: {request: 1s\n";
    let failures = parse_policy_documents(yaml).unwrap_err();
    assert_eq!(failures.len(), 1, "{failures:?}");
    let (doc, errs) = &failures[0];
    assert_eq!(*doc, 1);
    assert_eq!(errs.0[0].field, "(yaml)");
    assert!(errs.0[0].reason.contains("line 4"), "{errs}");

    let later = "kind: ServicePolicy\nservice: a\n---\nkind: ServicePolicy\n  service: [\n";
    let failures = parse_policy_documents(later).unwrap_err();
    assert_eq!(failures.iter().map(|f| f.0).collect::<Vec<_>>(), [2]);
}
