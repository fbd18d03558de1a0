//! The identity API and authentication, through `oneshot` (no sockets): a
//! workload caller is a `ConnectInfo<Peer>` carrying the identity its
//! certificate would have proved.

use super::super::*;
use crate::control::auth::{IdentityConfig, Peer};
use crate::control::store::Store;
use crate::identity::SpiffeId;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request};
use http_body_util::BodyExt;
use serde_json::json;
use tower::ServiceExt;

struct Secure {
    app: Router,
    metrics: Arc<Metrics>,
    admin: String,
    auth: Arc<Auth>,
    _stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

fn secure() -> Secure {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let registry = Arc::new(
        Registry::open(store, "127.100.0.0/16".parse().unwrap(), Default::default()).unwrap(),
    );
    let config = IdentityConfig {
        trust_domain: "mesh.local".into(),
        cert_ttl: Duration::from_secs(3600),
        ca: None,
        admin_token_file: None,
        server_names: vec!["127.0.0.1".into()],
    };
    let auth = Arc::new(Auth::open(&config, dir.path()).unwrap());
    let admin = std::fs::read_to_string(dir.path().join("identity/admin.token")).unwrap();
    let metrics = Arc::new(Metrics::new());
    let (stop, shutdown) = watch::channel(false);
    let state = AppState {
        registry,
        metrics: metrics.clone(),
        keepalive: Duration::from_secs(5),
        shutdown,
        auth: Some(auth.clone()),
        proxies: Default::default(),
        dashboard: Default::default(),
        asks: Default::default(),
    };
    Secure {
        app: router(state),
        metrics,
        admin: admin.trim().to_string(),
        auth,
        _stop: stop,
        _dir: dir,
    }
}

/// Who a request comes from.
enum As<'a> {
    Nobody,
    Bearer(&'a str),
    /// A workload certificate for the service, from 10.0.0.5.
    Workload(&'a str),
}

impl Secure {
    async fn call(
        &self,
        who: As<'_>,
        method: Method,
        uri: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json");
        if let As::Bearer(t) = who {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let mut req = req.body(Body::from(body.to_string())).unwrap();
        let id = match who {
            As::Workload(svc) => Some(SpiffeId::new("mesh.local", "default", svc).unwrap()),
            _ => None,
        };
        let addr = std::net::SocketAddr::from(([10, 0, 0, 5], 40000));
        req.extensions_mut().insert(ConnectInfo(Peer { addr, id }));
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn token(&self, service: &str) -> String {
        let (s, v) = self
            .call(
                As::Bearer(&self.admin),
                Method::POST,
                "/v1/identity/tokens",
                json!({"service": service}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["token"].as_str().unwrap().to_string()
    }

    fn issued(&self) -> u64 {
        self.metrics.certificates_issued.get()
    }
}

fn csr() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    rcgen::CertificateParams::new(vec!["spiffe://mesh.local/ns/default/sa/admin".to_string()])
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap()
}

#[tokio::test]
async fn a_bootstrap_token_gets_its_own_identity_and_nothing_else() {
    let api = secure();
    let token = api.token("hello").await;
    let (s, v) = api
        .call(
            As::Bearer(&token),
            Method::POST,
            "/v1/identity/certify",
            json!({"csr": csr()}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // The CSR asked for the admin: the token proves hello.
    assert_eq!(v["identity"], "spiffe://mesh.local/ns/default/sa/hello");
    let leaf = crate::identity::pem::certs(v["certificate"].as_str().unwrap()).unwrap();
    let facts = crate::identity::cert_facts(&leaf[0]).unwrap();
    assert_eq!(facts.id.service(), "hello");
    // A bootstrap token reads nothing and registers nothing.
    let (s, _) = api
        .call(As::Bearer(&token), Method::GET, "/v1/services", json!(null))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let reg = json!({"address": "10.0.0.5", "port": 80});
    let (s, _) = api
        .call(
            As::Bearer(&token),
            Method::POST,
            "/v1/services/hello/instances",
            reg,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(api.issued(), 1);
}

#[tokio::test]
async fn bad_input_is_a_clear_4xx_and_nothing_is_issued() {
    let api = secure();
    let token = api.token("hello").await;
    let big = format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        "A".repeat(9000)
    );
    #[rustfmt::skip]
    let cases: &[(&str, As, Value, StatusCode, &str)] = &[
        ("garbage CSR",       As::Bearer(&token), json!({"csr": "not a csr"}), StatusCode::BAD_REQUEST, "csr"),
        ("PEM of garbage",    As::Bearer(&token), json!({"csr": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"}), StatusCode::BAD_REQUEST, "csr"),
        ("oversized CSR",     As::Bearer(&token), json!({"csr": big}), StatusCode::BAD_REQUEST, "csr"),
        ("no csr field",      As::Bearer(&token), json!({"pem": "x"}), StatusCode::BAD_REQUEST, "csr"),
        ("no credential",     As::Nobody, json!({"csr": csr()}), StatusCode::UNAUTHORIZED, ""),
        ("a forged token",    As::Bearer("eyJhbGciOiJIUzI1NiJ9.e30.x"), json!({"csr": csr()}), StatusCode::UNAUTHORIZED, ""),
        ("the admin token",   As::Bearer(&api.admin), json!({"csr": csr()}), StatusCode::FORBIDDEN, ""),
    ];
    for (name, who, body, want, field) in cases {
        let who = match who {
            As::Nobody => As::Nobody,
            As::Bearer(t) => As::Bearer(t),
            As::Workload(s) => As::Workload(s),
        };
        let (s, v) = api
            .call(who, Method::POST, "/v1/identity/certify", body.clone())
            .await;
        assert_eq!(s, *want, "{name}: {v}");
        assert!(
            v["error"]
                .as_str()
                .is_some_and(|e| !e.is_empty() && !e.contains('\n')),
            "{name}: {v}"
        );
        if !field.is_empty() {
            assert_eq!(v["fields"][0]["field"], *field, "{name}: {v}");
        }
    }
    assert_eq!(api.issued(), 0, "nothing was issued");
    let refused = api
        .metrics
        .refusals
        .get_or_create(&crate::control::metrics::RefusalLabel {
            reason: "unauthenticated",
        })
        .get();
    assert_eq!(refused, 2);
    // Tokens: the reserved namespace, a bad service name, a silly lifetime.
    for body in [
        json!({"service": "mesh-control", "namespace": "mesh-system"}),
        json!({"service": "Bad_Name"}),
        json!({"service": "hello", "ttl_secs": 0}),
    ] {
        let (s, v) = api
            .call(
                As::Bearer(&api.admin),
                Method::POST,
                "/v1/identity/tokens",
                body.clone(),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
    }
    let (s, _) = api
        .call(
            As::Workload("web"),
            Method::POST,
            "/v1/identity/tokens",
            json!({"service": "web"}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a workload mints no tokens");
}

/// | caller | request | status |
/// |---|---|---|
/// | hello's certificate, from its address | register hello at that address | 201 |
/// | hello's certificate | register hello at another address | 403 |
/// | evil's certificate | register hello | 403 |
/// | evil's certificate | heartbeat or deregister hello's instance | 403 |
/// | hello's certificate | read the registry | 200 |
/// | no credential | read the registry | 401 |
/// | hello's certificate | apply a policy | 403 |
#[tokio::test]
async fn workloads_act_only_for_their_own_service_and_address() {
    let api = secure();
    let here =
        json!({"id": "h1", "address": "10.0.0.5", "port": 80, "inbound_port": 15006, "ttl": 10});
    let there = json!({"id": "h2", "address": "10.0.0.9", "port": 80});
    let (s, v) = api
        .call(
            As::Workload("hello"),
            Method::POST,
            "/v1/services/hello/instances",
            here.clone(),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(
        v["instance"]["identity"],
        "spiffe://mesh.local/ns/default/sa/hello"
    );
    let (s, v) = api
        .call(
            As::Workload("hello"),
            Method::POST,
            "/v1/services/hello/instances",
            there,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (s, v) = api
        .call(
            As::Workload("evil"),
            Method::POST,
            "/v1/services/hello/instances",
            here,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("may act only for service \"evil\""),
        "{v}"
    );
    let hb = "/v1/services/hello/instances/h1/heartbeat";
    let (s, _) = api
        .call(
            As::Workload("evil"),
            Method::PUT,
            hb,
            json!({"health": "up"}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = api
        .call(
            As::Workload("evil"),
            Method::DELETE,
            "/v1/services/hello/instances/h1",
            json!(null),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = api
        .call(
            As::Workload("hello"),
            Method::PUT,
            hb,
            json!({"health": "up"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = api
        .call(
            As::Workload("hello"),
            Method::GET,
            "/v1/services",
            json!(null),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = api
        .call(As::Nobody, Method::GET, "/v1/services", json!(null))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    let policy = json!({"service": "hello"});
    let (s, _) = api
        .call(
            As::Workload("hello"),
            Method::PUT,
            "/v1/policies/hello",
            policy.clone(),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = api
        .call(
            As::Bearer(&api.admin),
            Method::PUT,
            "/v1/policies/hello",
            policy,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    // The bundle is public.
    let (s, v) = api
        .call(As::Nobody, Method::GET, "/v1/identity/bundle", json!(null))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["roots"][0]["active"], true);
    let _ = &api.auth;
}

#[tokio::test]
async fn authorization_policies_are_validated_and_stored() {
    let api = secure();
    let admin = As::Bearer;
    let bad = json!({"kind": "AuthorizationPolicy", "service": "hello", "rules": [{"from": ["spiffe:/x"], "paht": "/"}]});
    let (s, v) = api
        .call(
            admin(&api.admin),
            Method::PUT,
            "/v1/authorizations/hello",
            bad,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let fields: Vec<&str> = v["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert!(
        fields.contains(&"rules[0].paht") && fields.contains(&"rules[0].from[0]"),
        "{fields:?}"
    );
    let good = json!({"service": "*", "default": "deny"});
    let (s, v) = api
        .call(admin(&api.admin), Method::PUT, "/v1/authorizations/*", good)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = api
        .call(
            As::Workload("web"),
            Method::GET,
            "/v1/authorizations",
            json!(null),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v[0]["default"], "deny");
}
