//! `/v1/policies` through `oneshot`: apply, read, delete, 400s naming every
//! field, snapshots, the watch stream, and persistence across a restart.

use super::*;
use crate::model::ServicePolicy;

impl Api {
    async fn put_policy(&self, service: &str, body: Value) -> (StatusCode, Value) {
        let uri = format!("/v1/policies/{service}");
        self.call(Method::PUT, &uri, body.to_string()).await
    }

    async fn get_policy(&self, service: &str) -> (StatusCode, Value) {
        let uri = format!("/v1/policies/{service}");
        self.call(Method::GET, &uri, Body::empty()).await
    }
}

fn orders() -> Value {
    json!({
        "kind": "ServicePolicy", "service": "orders", "loadBalancer": "round-robin",
        "bulkhead": {"maxConcurrent": 8}, "fallback": {"body": "[]", "status": 200}
    })
}

#[tokio::test]
async fn apply_get_list_delete() {
    let dir = tempfile::tempdir().unwrap();
    let api = api(dir.path(), Duration::from_secs(5));
    let (status, reply) = api.put_policy("orders", orders()).await;
    assert_eq!((status, reply), (StatusCode::OK, json!({"revision": 1})));
    let (status, reply) = api.put_policy("orders", orders()).await;
    assert_eq!(
        (status, reply),
        (StatusCode::OK, json!({"revision": 1})),
        "identical re-apply is a no-op"
    );

    let (status, got) = api.get_policy("orders").await;
    assert_eq!(status, StatusCode::OK);
    let got: ServicePolicy = serde_json::from_value(got).unwrap();
    assert_eq!(got, ServicePolicy::from_value(&orders()).unwrap());
    assert_eq!(got.bulkhead.max_concurrent, 8);

    let (_, list) = api.call(Method::GET, "/v1/policies", Body::empty()).await;
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    let (_, snap) = api.call(Method::GET, "/v1/snapshot", Body::empty()).await;
    assert_eq!(snap["policies"][0]["service"], "orders", "{snap}");
    let (_, st) = api.call(Method::GET, "/v1/status", Body::empty()).await;
    assert_eq!(st["policies"], 1);

    let (status, err) = api.get_policy("nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(err["error"].as_str().unwrap().contains("nope"), "{err}");

    let (status, reply) = api
        .call(Method::DELETE, "/v1/policies/orders", Body::empty())
        .await;
    assert_eq!((status, reply), (StatusCode::OK, json!({"revision": 2})));
    let (status, _) = api
        .call(Method::DELETE, "/v1/policies/orders", Body::empty())
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(api.get_policy("orders").await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn invalid_policies_are_400_naming_every_field_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let api = api(dir.path(), Duration::from_secs(5));
    assert_eq!(api.put_policy("orders", orders()).await.0, StatusCode::OK);

    let bad = json!({
        "service": "orders", "loadBalancer": "fastest", "extra": true,
        "timeouts": {"request": "-1s"}, "breaker": {"failureRate": 150},
        "retries": {"on": ["reset", "sometimes"]}, "fallback": {}
    });
    let (status, err) = api.put_policy("orders", bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(
        fields(&err),
        [
            "extra",
            "loadBalancer",
            "timeouts.request",
            "retries.on[1]",
            "breaker.failureRate",
            "fallback"
        ]
    );

    let cases = [
        ("orders", json!({"service": "payments"}), "service"),
        ("Bad_Name", json!({"service": "orders"}), "(path)"),
        (
            "orders",
            json!({"kind": "Service", "service": "orders"}),
            "kind",
        ),
        ("orders", json!({}), "service"),
        ("orders", json!("orders"), "(document)"),
    ];
    for (path, body, field) in cases {
        let (status, err) = api.put_policy(path, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {err}");
        assert_eq!(fields(&err), [field], "{body}: {err}");
    }
    let (status, err) = api.call(Method::PUT, "/v1/policies/orders", "{").await;
    assert_eq!(
        (status, fields(&err)),
        (StatusCode::BAD_REQUEST, vec!["(body)".to_string()])
    );

    // Nothing above reached the store.
    assert_eq!(api.registry.revision(), 1);
    let (_, got) = api.get_policy("orders").await;
    assert_eq!(got["bulkhead"]["maxConcurrent"], 8);
}

#[tokio::test]
async fn watch_delivers_policy_events_after_since() {
    let dir = tempfile::tempdir().unwrap();
    let api = api(dir.path(), Duration::from_secs(60));
    api.register("orders", json!({"address": "127.0.0.2", "port": 80}))
        .await;
    let mut stream = api.watch(1).await;
    assert_eq!(api.put_policy("orders", orders()).await.0, StatusCode::OK);
    match next_event(&mut stream).await {
        WatchEvent::Policy { revision, policy } => {
            assert_eq!(revision, 2);
            assert_eq!(policy.bulkhead.max_concurrent, 8);
        }
        other => panic!("expected a Policy event, got {other:?}"),
    }
    let (status, _) = api
        .call(Method::DELETE, "/v1/policies/orders", Body::empty())
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        next_event(&mut stream).await,
        WatchEvent::PolicyRemoved {
            revision: 3,
            service: "orders".into()
        }
    );

    // A late watcher resuming at 1 gets both from the change log.
    let mut late = api.watch(1).await;
    assert!(matches!(
        next_event(&mut late).await,
        WatchEvent::Policy { revision: 2, .. }
    ));
    assert!(matches!(
        next_event(&mut late).await,
        WatchEvent::PolicyRemoved { revision: 3, .. }
    ));
    // since=0: the snapshot carries the (now empty) policy list.
    api.put_policy("orders", orders()).await;
    let mut fresh = api.watch(0).await;
    match next_event(&mut fresh).await {
        WatchEvent::Snapshot { snapshot } => {
            assert_eq!(snapshot.revision, 4);
            assert_eq!(snapshot.policies.len(), 1);
        }
        other => panic!("expected a snapshot, got {other:?}"),
    }
}

#[tokio::test]
async fn policies_survive_a_restart_and_revisions_keep_rising() {
    let dir = tempfile::tempdir().unwrap();
    let rev = {
        let api = api(dir.path(), Duration::from_secs(5));
        api.put_policy("orders", orders()).await;
        api.put_policy("api", json!({"service": "api"})).await;
        let (_, r) = api
            .call(Method::DELETE, "/v1/policies/api", Body::empty())
            .await;
        r["revision"].as_u64().unwrap()
    };
    assert_eq!(rev, 3);
    let api = api(dir.path(), Duration::from_secs(5));
    let (status, got) = api.get_policy("orders").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["loadBalancer"], "round-robin");
    assert_eq!(api.get_policy("api").await.0, StatusCode::NOT_FOUND);
    let (_, snap) = api.call(Method::GET, "/v1/snapshot", Body::empty()).await;
    assert_eq!(snap["revision"].as_u64(), Some(rev));
    let (_, r) = api.put_policy("api", json!({"service": "api"})).await;
    assert_eq!(r["revision"].as_u64(), Some(rev + 1));
}
