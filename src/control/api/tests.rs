//! API tests through `router(state).oneshot(request)`: no sockets.

use super::*;
use crate::control::store::Store;
use crate::model::{ApiError, WatchEvent};
use axum::body::Body;
use axum::http::{Method, Request};
use futures_util::StreamExt;
use http_body_util::BodyExt;
use serde_json::json;
use std::path::Path;
use tower::ServiceExt;

struct Api {
    app: Router,
    registry: Arc<Registry>,
    /// Keeps watch streams open for the test's lifetime.
    _stop: watch::Sender<bool>,
}

fn api(dir: &Path, keepalive: Duration) -> Api {
    let store = Store::open(dir).unwrap();
    let cidr = "127.100.0.0/16".parse().unwrap();
    let registry = Arc::new(Registry::open(store, cidr, Default::default()).unwrap());
    let (stop, shutdown) = watch::channel(false);
    let state = AppState {
        registry: registry.clone(),
        metrics: Arc::new(Metrics::new()),
        keepalive,
        shutdown,
        auth: None,
        proxies: Default::default(),
        dashboard: Default::default(),
        asks: Default::default(),
    };
    Api {
        app: router(state),
        registry,
        _stop: stop,
    }
}

impl Api {
    async fn call(&self, method: Method, uri: &str, body: impl Into<Body>) -> (StatusCode, Value) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .body(body.into())
            .unwrap();
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, value)
    }

    async fn register(&self, service: &str, body: Value) -> (StatusCode, Value) {
        let uri = format!("/v1/services/{service}/instances");
        self.call(Method::POST, &uri, body.to_string()).await
    }

    async fn watch(&self, since: u64) -> axum::body::BodyDataStream {
        let req = Request::get(format!("/v1/watch?since={since}"))
            .body(Body::empty())
            .unwrap();
        let resp = self.app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
        resp.into_body().into_data_stream()
    }
}

/// The next NDJSON event; every frame the server sends is whole lines.
async fn next_event(stream: &mut axum::body::BodyDataStream) -> WatchEvent {
    let frame = tokio::time::timeout(Duration::from_secs(30), stream.next())
        .await
        .expect("no watch line in time")
        .expect("stream ended")
        .unwrap();
    assert!(frame.ends_with(b"\n"), "partial line {frame:?}");
    serde_json::from_slice(&frame).unwrap()
}

fn fields(v: &Value) -> Vec<String> {
    let err: ApiError = serde_json::from_value(v.clone()).unwrap();
    err.fields.into_iter().map(|f| f.field).collect()
}

#[tokio::test]
async fn register_then_visible() {
    let dir = tempfile::tempdir().unwrap();
    let api = api(dir.path(), Duration::from_secs(5));
    let body = json!({"id": "w1", "address": "127.0.0.2", "port": 8080, "ttl": 10, "metadata": {"zone": "a"}});
    let (status, reg) = api.register("web", body).await;
    assert_eq!(status, StatusCode::CREATED, "{reg}");
    let reg: Registered = serde_json::from_value(reg).unwrap();
    assert_eq!((reg.revision, reg.instance.id.as_str()), (1, "w1"));

    let (status, list) = api.call(Method::GET, "/v1/services", Body::empty()).await;
    assert_eq!(status, StatusCode::OK);
    let list: Vec<ServiceSummary> = serde_json::from_value(list).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(
        (list[0].name.as_str(), list[0].vip, list[0].healthy),
        ("web", reg.vip, 1)
    );

    let (status, info) = api
        .call(Method::GET, "/v1/services/web", Body::empty())
        .await;
    assert_eq!(status, StatusCode::OK);
    let info: ServiceInfo = serde_json::from_value(info).unwrap();
    assert_eq!(info.instances, vec![reg.instance]);

    let (status, err) = api
        .call(Method::GET, "/v1/services/nope", Body::empty())
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(err["error"].as_str().unwrap().contains("nope"), "{err}");

    let (_, st) = api.call(Method::GET, "/v1/status", Body::empty()).await;
    assert_eq!(
        st,
        json!({"revision": 1, "services": 1, "instances": 1, "policies": 0, "self_preservation": false, "store": "embedded", "store_revision": 1})
    );
}

#[tokio::test]
async fn bad_input_is_400_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let api = api(dir.path(), Duration::from_secs(5));
    let ok = |extra: Value| {
        let mut v = json!({"address": "127.0.0.1", "port": 80});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        v
    };
    let big: serde_json::Map<String, Value> =
        (0..40).map(|i| (format!("k{i}"), json!("v"))).collect();
    let cases = [
        ("web", ok(json!({"port": 0})), "port"),
        ("web", ok(json!({"port": 70000})), "port"),
        ("web", ok(json!({"port": "80"})), "port"),
        ("Bad_Name", ok(json!({})), "service"),
        ("web", ok(json!({"metadata": big})), "metadata"),
        (
            "web",
            ok(json!({"metadata": {"k": "v".repeat(5000)}})),
            "metadata",
        ),
        ("web", ok(json!({"address": 7})), "address"),
        ("web", ok(json!({"ttl": "10s"})), "ttl"),
        ("web", ok(json!({"nope": 1})), "nope"),
        ("web", json!([1, 2]), "(body)"),
    ];
    for (service, body, field) in cases {
        let (status, err) = api.register(service, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{service} {body}");
        assert_eq!(fields(&err), [field], "{service} {body} -> {err}");
    }
    let (status, err) = api
        .call(Method::POST, "/v1/services/web/instances", "address=1")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(fields(&err), ["(body)"]);

    let huge = format!(
        "{{\"address\":\"127.0.0.1\",\"port\":1,\"x\":\"{}\"}}",
        "a".repeat(70_000)
    );
    let (status, err) = api
        .call(Method::POST, "/v1/services/web/instances", huge)
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(err["error"].as_str().unwrap().contains("65536"), "{err}");

    // An empty service segment is not a route at all.
    let (status, _) = api.register("", ok(json!({}))).await;
    assert!(status.is_client_error());
    assert!(api.registry.services().is_empty(), "nothing was registered");
}

#[tokio::test]
async fn heartbeat_and_deregister() {
    let dir = tempfile::tempdir().unwrap();
    let api = api(dir.path(), Duration::from_secs(5));
    let hb = "/v1/services/web/instances/w1/heartbeat";
    let (status, err) = api.call(Method::PUT, hb, r#"{"health":"up"}"#).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{err}");

    let body = json!({"id": "w1", "address": "127.0.0.2", "port": 8080, "ttl": 10});
    assert_eq!(api.register("web", body).await.0, StatusCode::CREATED);
    let (status, rev) = api.call(Method::PUT, hb, r#"{"health":"up"}"#).await;
    assert_eq!((status, rev), (StatusCode::OK, json!({"revision": 1})));
    let (status, rev) = api.call(Method::PUT, hb, r#"{"health":"down"}"#).await;
    assert_eq!((status, rev), (StatusCode::OK, json!({"revision": 2})));
    let (status, err) = api.call(Method::PUT, hb, r#"{"health":"sideways"}"#).await;
    assert_eq!(
        (status, fields(&err)),
        (StatusCode::BAD_REQUEST, vec!["health".to_string()])
    );

    let del = "/v1/services/web/instances/w1";
    let (status, rev) = api.call(Method::DELETE, del, Body::empty()).await;
    assert_eq!((status, rev), (StatusCode::OK, json!({"revision": 3})));
    let (_, info) = api
        .call(Method::GET, "/v1/services/web", Body::empty())
        .await;
    assert_eq!(
        info["instances"],
        json!([]),
        "gone; the service and VIP stay"
    );
    let (status, _) = api.call(Method::DELETE, del, Body::empty()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api.call(Method::PUT, hb, r#"{"health":"up"}"#).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "the proxy re-registers on this"
    );
}

#[tokio::test]
async fn restart_keeps_vips_static_instances_and_revision() {
    let dir = tempfile::tempdir().unwrap();
    let (vip, rev) = {
        let api = api(dir.path(), Duration::from_secs(5));
        let (_, r) = api
            .register(
                "db",
                json!({"id": "s", "address": "127.0.0.3", "port": 5432}),
            )
            .await;
        let (_, r2) = api
            .register("web", json!({"address": "127.0.0.4", "port": 80, "ttl": 5}))
            .await;
        (r["vip"].clone(), r2["revision"].as_u64().unwrap())
    };
    let api = api(dir.path(), Duration::from_secs(5));
    let (_, info) = api
        .call(Method::GET, "/v1/services/db", Body::empty())
        .await;
    assert_eq!(info["vip"], vip);
    assert_eq!(info["instances"][0]["id"], "s");
    let (_, snap) = api.call(Method::GET, "/v1/snapshot", Body::empty()).await;
    assert_eq!(snap["revision"].as_u64(), Some(rev));
    let (_, r) = api
        .register("api", json!({"address": "127.0.0.5", "port": 1}))
        .await;
    assert!(
        r["revision"].as_u64().unwrap() > rev,
        "revision never goes backwards"
    );
}

#[tokio::test]
async fn watch_resumes_by_revision() {
    let dir = tempfile::tempdir().unwrap();
    let api = api(dir.path(), Duration::from_secs(60));
    for i in 1..=3 {
        let body = json!({"id": format!("w{i}"), "address": "127.0.0.2", "port": 8000 + i});
        api.register("web", body).await;
    }
    // since=1: exactly revisions 2 and 3, then live changes.
    let mut w = api.watch(1).await;
    assert_eq!(next_event(&mut w).await.revision(), 2);
    assert_eq!(next_event(&mut w).await.revision(), 3);
    api.call(
        Method::DELETE,
        "/v1/services/web/instances/w1",
        Body::empty(),
    )
    .await;
    match next_event(&mut w).await {
        WatchEvent::Remove {
            revision: 4, id, ..
        } => assert_eq!(id, "w1"),
        other => panic!("expected Remove at 4, got {other:?}"),
    }

    // since=0: a snapshot at the current revision, then live changes.
    let mut w = api.watch(0).await;
    match next_event(&mut w).await {
        WatchEvent::Snapshot { snapshot } => {
            assert_eq!(snapshot.revision, 4);
            assert_eq!(snapshot.services[0].instances.len(), 2);
        }
        other => panic!("expected a snapshot, got {other:?}"),
    }
    api.register(
        "web",
        json!({"id": "w9", "address": "127.0.0.2", "port": 9}),
    )
    .await;
    match next_event(&mut w).await {
        WatchEvent::Upsert {
            revision: 5,
            instance,
            ..
        } => assert_eq!(instance.id, "w9"),
        other => panic!("expected Upsert at 5, got {other:?}"),
    }
}

#[tokio::test]
async fn watch_older_than_the_log_gets_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    {
        let api = api(dir.path(), Duration::from_secs(60));
        api.register("web", json!({"address": "127.0.0.2", "port": 1}))
            .await;
        api.register("web", json!({"address": "127.0.0.2", "port": 2}))
            .await;
    }
    // After a restart the log is empty: since=1 predates it.
    let api = api(dir.path(), Duration::from_secs(60));
    let mut w = api.watch(1).await;
    assert!(
        matches!(next_event(&mut w).await, WatchEvent::Snapshot { snapshot } if snapshot.revision == 2)
    );
}

#[tokio::test(start_paused = true)]
async fn watch_sends_keepalive_when_idle() {
    let dir = tempfile::tempdir().unwrap();
    let api = api(dir.path(), Duration::from_secs(5));
    api.registry
        .register(
            "web",
            crate::model::RegisterRequest::from_json(&json!({"address": "127.0.0.2", "port": 1}))
                .unwrap(),
        )
        .unwrap();
    let mut w = api.watch(1).await;
    let start = tokio::time::Instant::now();
    assert_eq!(
        next_event(&mut w).await,
        WatchEvent::Keepalive { revision: 1 }
    );
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(5),
        "not before the interval"
    );
    assert_eq!(
        next_event(&mut w).await,
        WatchEvent::Keepalive { revision: 1 }
    );
    assert_eq!(start.elapsed(), Duration::from_secs(10));
}

#[tokio::test]
async fn metrics_and_health() {
    let dir = tempfile::tempdir().unwrap();
    let api = api(dir.path(), Duration::from_secs(60));
    api.register("web", json!({"address": "127.0.0.2", "port": 1}))
        .await;
    let _w = api.watch(0).await;
    let req = Request::get("/metrics").body(Body::empty()).unwrap();
    let resp = api.app.clone().oneshot(req).await.unwrap();
    let text = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    for line in [
        "mesh_control_instances 1",
        "mesh_control_policies 0",
        "mesh_control_revision 1",
        "mesh_control_watchers 1",
        "mesh_control_self_preservation 0",
        "mesh_control_evictions_total 0",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line:?} missing from\n{text}"
        );
    }
    let (status, _) = api.call(Method::GET, "/healthz", Body::empty()).await;
    assert_eq!(status, StatusCode::OK);
    let (status, err) = api.call(Method::PATCH, "/v1/services", Body::empty()).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(err["error"].is_string());
}

mod identity;
mod policies;

impl Api {
    /// A watch opened by a proxy naming itself.
    async fn watch_as(&self, query: &str) -> (StatusCode, Option<axum::body::BodyDataStream>) {
        let req = Request::get(format!("/v1/watch?{query}"))
            .body(Body::empty())
            .unwrap();
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let ok = status == StatusCode::OK;
        (status, ok.then(|| resp.into_body().into_data_stream()))
    }
}

#[tokio::test]
async fn proxies_are_listed_while_they_watch_and_report_what_they_applied() {
    let dir = tempfile::tempdir().unwrap();
    let api = api(dir.path(), Duration::from_secs(60));
    for i in 1..=2 {
        api.register(
            "web",
            json!({"id": format!("w{i}"), "address": "127.0.0.2", "port": 8000 + i}),
        )
        .await;
    }
    let (_, a) = api
        .watch_as("since=2&proxy=mesh-a&service=web&instance=w1&version=0.1.0")
        .await;
    let (_, b) = api.watch_as("since=0&proxy=mesh-b").await;
    let _plain = api.watch(0).await; // mesh-ctl watch: not a proxy
    let (status, list) = api.call(Method::GET, "/v1/proxies", Body::empty()).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["revision"], 2);
    assert_eq!(list["watching"], 2);
    let rows = list["proxies"].as_array().unwrap();
    assert_eq!(
        (
            rows[0]["proxy"].as_str(),
            rows[0]["service"].as_str(),
            rows[0]["applied"].as_u64()
        ),
        (Some("mesh-a"), Some("web"), Some(2))
    );
    assert_eq!(rows[1]["applied"], 0, "since=0: nothing applied yet");

    let (_, rev) = api
        .call(
            Method::DELETE,
            "/v1/services/web/instances/w2",
            Body::empty(),
        )
        .await;
    assert_eq!(rev["revision"], 3);
    let (_, behind) = api
        .call(Method::GET, "/v1/proxies?behind=3", Body::empty())
        .await;
    assert_eq!(behind["proxies"].as_array().unwrap().len(), 2);
    let (status, _) = api
        .call(
            Method::PUT,
            "/v1/proxies/mesh-a/applied",
            json!({"revision": 3}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, behind) = api
        .call(Method::GET, "/v1/proxies?behind=3", Body::empty())
        .await;
    let names: Vec<&str> = behind["proxies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["proxy"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["mesh-b"]);
    // The long poll answers as soon as the last one leaves.
    let waiting = {
        let app = api.app.clone();
        tokio::spawn(async move {
            let req = Request::get("/v1/proxies?behind=3&wait=20s")
                .body(Body::empty())
                .unwrap();
            let resp = app.oneshot(req).await.unwrap();
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            serde_json::from_slice::<Value>(&bytes).unwrap()
        })
    };
    drop(b);
    let done = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the long poll answers once nobody is behind")
        .unwrap();
    assert_eq!(
        (
            done["watching"].as_u64(),
            done["proxies"].as_array().map(Vec::len)
        ),
        (Some(1), Some(0))
    );
    drop(a);
    let (status, err) = api
        .call(
            Method::PUT,
            "/v1/proxies/mesh-a/applied",
            json!({"revision": 4}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{err}");
}

#[tokio::test]
async fn bad_proxy_parameters_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let api = api(dir.path(), Duration::from_secs(60));
    let (status, _) = api.watch_as("proxy=a%2Fb&service=Bad_Name").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = api.watch_as("service=web").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "service without proxy");
    for (uri, field) in [
        ("/v1/proxies?behind=x", "behind"),
        ("/v1/proxies?behind=3&wait=soon", "wait"),
        ("/v1/proxies?wait=1s", "wait"),
    ] {
        let (status, err) = api.call(Method::GET, uri, Body::empty()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {err}");
        assert_eq!(fields(&err), [field], "{uri}");
    }
    let (_, _a) = api.watch_as("proxy=mesh-a").await;
    let (status, err) = api
        .call(
            Method::PUT,
            "/v1/proxies/mesh-a/applied",
            "{\"revision\": \"3\"}",
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(fields(&err), ["(body)"]);
}

#[tokio::test]
async fn configs_are_versioned_redacted_rolled_back_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let api = api(dir.path(), Duration::from_secs(60));
    let mut stream = api.watch(0).await;
    assert!(matches!(
        next_event(&mut stream).await,
        WatchEvent::Snapshot { .. }
    ));
    let doc = |text: &str| {
        json!({"document": {
            "application": "hello",
            "data": {"greeting": {"text": text}, "db.password": "s3cret"},
            "files": {"big.txt": "x".repeat(200 * 1024)},
            "secret": ["db.password"]
        }, "message": "why"})
        .to_string()
    };
    let put = |body: String| api.call(Method::PUT, "/v1/configs/hello/default", body);
    // 200 KiB: over the API's usual 64 KiB, under a config's limit.
    let (status, v1) = put(doc("hi")).await;
    assert_eq!(status, StatusCode::OK, "{v1}");
    assert_eq!(
        (v1["version"].as_u64(), v1["changed"].as_bool()),
        (Some(1), Some(true))
    );
    match next_event(&mut stream).await {
        WatchEvent::Config { revision, config } => {
            assert_eq!((revision, config.version), (1, 1));
            assert_eq!(config.hash, v1["hash"].as_str().unwrap());
        }
        other => panic!("expected a config event, got {other:?}"),
    }
    let (_, same) = put(doc("hi")).await;
    assert_eq!(
        (same["version"].as_u64(), same["changed"].as_bool()),
        (Some(1), Some(false))
    );
    let (_, v2) = put(doc("hello")).await;
    assert_eq!(v2["version"], 2);

    let (status, got) = api
        .call(Method::GET, "/v1/configs/hello/default", Body::empty())
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (
            got["data"]["db.password"].as_str(),
            got["redacted"].as_bool()
        ),
        (Some("<redacted>"), Some(true))
    );
    assert_eq!(
        (got["author"].as_str(), got["message"].as_str()),
        (Some("anonymous (identity off)"), Some("why"))
    );
    let uri = "/v1/configs/hello/default?version=1&secrets=true";
    let (_, old) = api.call(Method::GET, uri, Body::empty()).await;
    assert_eq!(
        (old["version"].as_u64(), old["data"]["db.password"].as_str()),
        (Some(1), Some("s3cret"))
    );
    assert_eq!(old["data"]["greeting.text"], "hi");

    let rollback = json!({"to": 1, "message": "back"}).to_string();
    let (status, back) = api
        .call(Method::POST, "/v1/configs/hello/default/rollback", rollback)
        .await;
    assert_eq!(status, StatusCode::OK, "{back}");
    assert_eq!(
        (back["version"].as_u64(), back["hash"].as_str()),
        (Some(3), v1["hash"].as_str())
    );
    let (_, history) = api
        .call(
            Method::GET,
            "/v1/configs/hello/default/history",
            Body::empty(),
        )
        .await;
    let restores: Vec<Value> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["restores"].clone())
        .collect();
    assert_eq!(restores, [Value::Null, Value::Null, json!(1)]);
    let (_, list) = api.call(Method::GET, "/v1/configs", Body::empty()).await;
    assert_eq!(list[0]["version"], 3);

    // Refusals, each naming the field; nothing stored.
    let cases = [
        ("/v1/configs/hello/prod", doc("x"), "application"),
        ("/v1/configs/Hello/default", doc("x"), "(path)"),
        (
            "/v1/configs/hello/default",
            "{\"document\": 3}".to_string(),
            "(document)",
        ),
        (
            "/v1/configs/hello/default",
            "not json".to_string(),
            "(body)",
        ),
    ];
    for (uri, body, field) in cases {
        let (status, err) = api.call(Method::PUT, uri, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {err}");
        assert!(fields(&err).contains(&field.to_string()), "{uri}: {err}");
    }
    let huge = json!({"document": {"application": "hello", "files": {"a": "x".repeat(5 << 20)}}});
    let (status, _) = put(huge.to_string()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let (status, _) = api
        .call(
            Method::GET,
            "/v1/configs/hello/default?version=9",
            Body::empty(),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(api.registry.configs()[0].version, 3);

    // A proxy reports what it delivered; the list shows it.
    let req = Request::get("/v1/watch?since=0&proxy=p1&service=hello")
        .body(Body::empty())
        .unwrap();
    let _watch = api.app.clone().oneshot(req).await.unwrap();
    let report = json!({"configs": [{"application": "hello", "profile": "default", "version": 3,
        "reload": {"version": 3, "at": "2026-12-02T00:00:00Z", "ok": true, "detail": "SIGHUP to pid 7"}}]});
    let (status, _) = api
        .call(Method::PUT, "/v1/proxies/p1/configs", report.to_string())
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, proxies) = api.call(Method::GET, "/v1/proxies", Body::empty()).await;
    assert_eq!(
        proxies["proxies"][0]["configs"][0]["reload"]["detail"],
        "SIGHUP to pid 7"
    );
    let (status, _) = api
        .call(
            Method::PUT,
            "/v1/proxies/nobody/configs",
            report.to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
