//! Gateway mode on loopback (no root): real `mesh-control`, `mesh-proxy
//! gateway`, fault-server apps, curl as the outside client, a python JWKS
//! server, redis-server.
//!
//! | test | documents | calls | expected |
//! |---|---|---|---|
//! | routes_filters_and_mesh_errors | Route `shop` (hosts, prefix + strip, full-path rewrite, header match, header modifiers), `old` (redirect), `ghost` (unregistered backend) | curl with Host headers | each rule's app answers, sees the rewritten path, the set/removed headers, forwarded-for, a request id and trace context, never a client's `x-mesh-*`; 301 + Location; 404 `no-route`; 503 `unknown-service`; one access-log line per request with its id; per-route metrics |
//! | jwt_cases_by_name | Route with `jwt` (JWKS URL), `claimsToHeaders`, a rule with `requiredClaims` | RS256, ES256 and EdDSA tokens; expired, not yet valid, wrong aud, wrong iss, bad signature, alg none, HS256 signed with the public key, unknown kid, malformed, missing; wrong scope; JWKS server stopped | 200 with `x-user` at the app and no Authorization; 401 `WWW-Authenticate` per case, counted by reason; 403 `insufficient_scope`; the cached keys still validate |
//! | rate_limits_local_and_shared_through_redis | `rateLimit` burst 5 local; `global` burst 6 on two replicas | 20 calls; 12 alternating; Redis stopped | exactly 5 pass then 429 `Retry-After` `RateLimit-*`; exactly 6 across both replicas; then all pass and the fail-open counter grows |
//! | tls_certificate_by_sni_and_h2_by_alpn | certificates for shop.test and api.test | curl https with SNI, each CA | each host gets its own certificate (the other CA fails); HTTP/2 by ALPN; HTTP/1.1 when asked |
//! | cors_preflight_at_the_edge | `cors` on a rule that needs a JWT | OPTIONS preflight, allowed and refused origin; actual GET | 204 with Allow-* and no token needed, 403 `cors-refused`; the GET's response carries Allow-Origin |
//! | bad_routes_and_hostile_requests | invalid Routes | mesh-ctl apply; 64 KiB header; garbage request line | exit 2 naming each field, nothing stored; 431; 400; the gateway still serves |
//!
//! Run: `cargo test --test gateway_loopback -- --nocapture`.

// Test code: real processes on the wall clock, and unwrap() as assertion.
#![allow(clippy::disallowed_types, clippy::unwrap_used)]

#[allow(dead_code, unused_imports)] // each test binary uses a different part of the harness
mod support;

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};
use support::fault::Fault;
use support::loopback::{parse_answer, Answer, Gateway, Loopback};
use support::proc::{command, run_with_timeout, Proc};
use support::protocols::metric;
use support::{secs, wait_for};

/// `curl` to the gateway for `host`; `extra` before the URL.
fn gw(gw: &Gateway, host: &str, path: &str, extra: &[&str]) -> Answer {
    let url = format!("http://{}{path}", gw.listen);
    let host = format!("host: {host}");
    let mut args = vec!["-s", "-i", "--max-time", "10", "-H", &host];
    args.extend_from_slice(extra);
    args.push(&url);
    let out = run_with_timeout(command("curl", &args, &[]), secs(15));
    parse_answer(&String::from_utf8_lossy(&out.stdout))
}

/// What the fault server's `/_echo` saw: (path, headers lower-cased).
fn echoed(a: &Answer) -> (String, Vec<(String, String)>) {
    let v: Value = serde_json::from_str(&a.body).unwrap_or_else(|e| panic!("{e}: {a:?}"));
    let headers = v["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap().to_ascii_lowercase(),
                p[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    (v["path"].as_str().unwrap().to_string(), headers)
}

fn has<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// One call of a table: host, path, curl flags, status, a piece of the
/// body, `x-mesh-error`.
type Case<'a> = (
    &'a str,
    &'a str,
    &'a [&'a str],
    u16,
    &'a str,
    Option<&'a str>,
);

fn apply(lo: &Loopback, yaml: &str) {
    let out = lo.apply_output(yaml);
    assert!(out.status.success(), "mesh-ctl apply:\n{yaml}\n{out:?}");
}

fn gauge(gw: &Gateway, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric(&gw.metrics(), name, labels).unwrap_or(0.0)
}

#[test]
fn routes_filters_and_mesh_errors() {
    let lo = Loopback::start("gw-routes");
    let orders = lo.app("orders", &Fault::default());
    let users = lo.app("users", &Fault::default());
    lo.register_addr("orders", orders.addr);
    lo.register_addr("users", users.addr);
    apply(
        &lo,
        r#"
kind: Route
name: shop
hostnames: [shop.test, api.test]
rules:
  - name: orders
    matches: [{ path: { type: PathPrefix, value: /orders } }]
    filters:
      - type: URLRewrite
        urlRewrite: { path: { type: ReplacePrefixMatch, replacePrefixMatch: / } }
      - type: RequestHeaderModifier
        requestHeaderModifier:
          set: [{ name: x-env, value: prod }]
          remove: [cookie]
      - type: ResponseHeaderModifier
        responseHeaderModifier:
          add: [{ name: x-served-by, value: gateway }]
    backends: [{ service: orders }]
  - name: canary
    matches: [{ path: { value: /orders }, headers: [{ name: x-canary, value: "1" }] }]
    filters:
      - type: URLRewrite
        urlRewrite: { path: { type: ReplaceFullPath, replaceFullPath: /_echo } }
    backends: [{ service: users }]
  - name: users
    matches: [{ path: { type: Exact, value: /whoami } }]
    backends: [{ service: users }]
---
kind: Route
name: old
hostnames: [old.test]
rules:
  - filters:
      - type: RequestRedirect
        requestRedirect: { scheme: https, hostname: shop.test, statusCode: 301 }
---
kind: Route
name: ghost
hostnames: [ghost.test]
rules:
  - backends: [{ service: nobody-registered-this }]
"#,
    );
    let g = lo.gateway("gateway", &[]);
    g.wait_routes(3);

    // The strip-prefix rule: the app sees `/_echo?q=1`, the set header, no
    // cookie, no client-made x-mesh-*; forwarded-for, the request id and
    // trace context are there.
    let a = gw(
        &g,
        "shop.test",
        "/orders/_echo?q=1",
        &[
            "-H",
            "cookie: secret",
            "-H",
            "x-mesh-timeout: 1",
            "-H",
            "x-request-id: rid-42",
        ],
    );
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.header("x-served-by"), Some("gateway"));
    assert_eq!(a.header("x-request-id"), Some("rid-42"));
    let (path, seen) = echoed(&a);
    assert_eq!(path, "/_echo?q=1");
    assert_eq!(has(&seen, "x-env"), Some("prod"));
    assert_eq!(has(&seen, "cookie"), None);
    assert_eq!(has(&seen, "x-mesh-timeout"), None);
    assert_eq!(has(&seen, "x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(has(&seen, "x-forwarded-proto"), Some("http"));
    assert_eq!(has(&seen, "x-request-id"), Some("rid-42"));
    assert_eq!(has(&seen, "host"), Some("shop.test"));
    let trace = has(&seen, "traceparent").expect("a trace context is started");
    assert_eq!(trace.len(), 55, "{trace}");

    // The rest of the table: host, header and exact matches; the rewrite
    // to a full path; the mesh's own answers.
    // host, path, curl flags, status, in the body, x-mesh-error
    let cases: [Case; 7] = [
        ("api.test", "/orders/x", &[], 200, "orders", None),
        (
            "shop.test",
            "/orders/x",
            &["-H", "x-canary: 1"],
            200,
            "/_echo",
            None,
        ),
        ("shop.test", "/whoami", &[], 200, "users", None),
        (
            "shop.test",
            "/whoami/x",
            &[],
            404,
            "no route",
            Some("no-route"),
        ),
        ("nowhere.test", "/", &[], 404, "no route", Some("no-route")),
        (
            "ghost.test",
            "/",
            &[],
            503,
            "nobody-registered-this",
            Some("unknown-service"),
        ),
        ("old.test", "/a?b=1", &[], 301, "", None),
    ];
    for (host, path, extra, status, body, mesh_error) in cases {
        let a = gw(&g, host, path, extra);
        assert_eq!(a.status, status, "{host}{path}: {a:?}");
        assert!(a.body.contains(body), "{host}{path}: {a:?}");
        assert_eq!(a.header("x-mesh-error"), mesh_error, "{host}{path}: {a:?}");
        assert!(
            a.header("x-request-id").is_some(),
            "{host}{path}: every answer has an id"
        );
    }
    let moved = gw(&g, "old.test", "/a?b=1", &[]);
    assert_eq!(moved.header("location"), Some("https://shop.test/a?b=1"));

    // One access-log line per request, with its id, route and upstream.
    let id_line = wait_for("the access log line of rid-42", secs(5), || {
        let log = std::fs::read_to_string(g.proc.log_path()).ok()?;
        log.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["request_id"] == "rid-42")
    });
    assert_eq!(id_line["route"], "shop");
    assert_eq!(id_line["rule"], "orders");
    assert_eq!(id_line["upstream_service"], "orders");
    assert_eq!(id_line["upstream_endpoint"], orders.addr.to_string());
    assert_eq!(id_line["status"], 200);
    assert_eq!(id_line["path"], "/orders/_echo?q=1");
    assert!(id_line["trace_id"].as_str().is_some_and(|t| t.len() == 32));
    let no_route = std::fs::read_to_string(g.proc.log_path())
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["x_mesh_error"] == "no-route")
        .count();
    assert!(no_route >= 2, "no-route answers are logged too");

    assert!(
        gauge(
            &g,
            "mesh_gateway_requests_total",
            &[("route", "shop"), ("class", "2xx")]
        ) >= 4.0
    );
    assert_eq!(
        gauge(
            &g,
            "mesh_gateway_requests_total",
            &[("route", "(none)"), ("class", "4xx")]
        ),
        2.0
    );
    assert_eq!(
        gauge(
            &g,
            "mesh_gateway_requests_total",
            &[("route", "ghost"), ("class", "5xx")]
        ),
        1.0
    );
    assert!(
        gauge(
            &g,
            "mesh_gateway_request_duration_seconds_count",
            &[("route", "shop")]
        ) >= 4.0
    );
}

// === JWT ===

struct Signer {
    key: EncodingKey,
    alg: Algorithm,
    kid: &'static str,
}

impl Signer {
    fn sign(&self, claims: &Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(self.kid.into());
        jsonwebtoken::encode(&h, claims, &self.key).unwrap()
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(iss: &str, aud: &str, exp: u64, nbf: u64, scope: &str) -> Value {
    json!({"iss": iss, "aud": aud, "sub": "alice", "exp": exp, "nbf": nbf, "scope": scope})
}

/// A key pair of `alg` made here, and its public JWK.
fn keypair(
    alg: &'static rcgen::SignatureAlgorithm,
    jwt_alg: Algorithm,
    kid: &'static str,
) -> (Signer, Value, String) {
    let kp = rcgen::KeyPair::generate_for(alg).unwrap();
    let pem = kp.serialize_pem();
    let key = match jwt_alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
        _ => EncodingKey::from_ed_pem(pem.as_bytes()).unwrap(),
    };
    let mut jwk = match jwt_alg {
        // jsonwebtoken derives an OKP JWK only from a PKCS#8 v1 key; rcgen
        // writes v2 (with the public key), whose raw bytes are the JWK's x.
        Algorithm::EdDSA => json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "alg": "EdDSA",
            "x": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(kp.public_key_raw()),
        }),
        _ => {
            serde_json::to_value(jsonwebtoken::jwk::Jwk::from_encoding_key(&key, jwt_alg).unwrap())
                .unwrap()
        }
    };
    jwk["kid"] = json!(kid);
    (
        Signer {
            key,
            alg: jwt_alg,
            kid,
        },
        jwk,
        kp.public_key_pem(),
    )
}

/// python's http.server over `dir`, on a port it picks.
fn file_server(lo: &Loopback, dir: &Path) -> (Proc, SocketAddr) {
    let log = lo.dir().join("jwks-server.log");
    let proc = support::proc::spawn_logged(
        command(
            "python3",
            &[
                "-u",
                "-m",
                "http.server",
                "0",
                "--bind",
                "127.0.0.1",
                "--directory",
                dir.to_str().unwrap(),
            ],
            &[],
        ),
        "jwks".into(),
        log.clone(),
    );
    let addr = wait_for("the JWKS server to listen", secs(10), || {
        proc.assert_running();
        let text = std::fs::read_to_string(&log).ok()?;
        let port: u16 = text
            .split(" port ")
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        Some(SocketAddr::from(([127, 0, 0, 1], port)))
    });
    (proc, addr)
}

#[test]
fn jwt_cases_by_name() {
    let lo = Loopback::start("gw-jwt");
    let app = lo.app("orders", &Fault::default());
    lo.register_addr("orders", app.addr);
    let (rsa, rsa_jwk, rsa_public_pem) =
        keypair(&rcgen::PKCS_RSA_SHA256, Algorithm::RS256, "rsa-1");
    let (ec, ec_jwk, _) = keypair(&rcgen::PKCS_ECDSA_P256_SHA256, Algorithm::ES256, "ec-1");
    let (ed, ed_jwk, _) = keypair(&rcgen::PKCS_ED25519, Algorithm::EdDSA, "ed-1");
    // Another RSA key posing under the first one's kid: a bad signature.
    let (mut forger, _, _) = keypair(&rcgen::PKCS_RSA_SHA256, Algorithm::RS256, "rsa-1");
    let www = lo.dir().join("jwks");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(
        www.join("jwks.json"),
        json!({"keys": [rsa_jwk, ec_jwk, ed_jwk]}).to_string(),
    )
    .unwrap();
    let (jwks, jwks_addr) = file_server(&lo, &www);
    apply(
        &lo,
        &format!(
            r#"
kind: Route
name: api
jwt:
  issuer: https://id.example
  audiences: [shop]
  jwksUri: http://{jwks_addr}/jwks.json
  leeway: 5s
  claimsToHeaders: [{{ claim: sub, header: x-user }}]
rules:
  - name: admin
    matches: [{{ path: {{ value: /admin }} }}]
    jwt:
      issuer: https://id.example
      audiences: [shop]
      jwksUri: http://{jwks_addr}/jwks.json
      requiredClaims: [{{ claim: scope, values: [admin] }}]
    filters:
      - type: URLRewrite
        urlRewrite: {{ path: {{ type: ReplaceFullPath, replaceFullPath: /_echo }} }}
    backends: [{{ service: orders }}]
  - name: echo
    filters:
      - type: URLRewrite
        urlRewrite: {{ path: {{ type: ReplaceFullPath, replaceFullPath: /_echo }} }}
    backends: [{{ service: orders }}]
"#
        ),
    );
    let g = lo.gateway("gateway", &[]);
    g.wait_routes(1);
    let t = now();
    let good = claims("https://id.example", "shop", t + 600, t - 10, "orders:read");
    let bearer = |token: &str| format!("authorization: Bearer {token}");
    let call = |token: Option<&str>, path: &str| match token {
        Some(tok) => gw(&g, "shop.test", path, &["-H", &bearer(tok)]),
        None => gw(&g, "shop.test", path, &[]),
    };

    for (name, signer) in [("RS256", &rsa), ("ES256", &ec), ("EdDSA", &ed)] {
        let a = call(Some(&signer.sign(&good)), "/x");
        assert_eq!(a.status, 200, "{name}: {a:?}");
        let (_, seen) = echoed(&a);
        assert_eq!(
            has(&seen, "x-user"),
            Some("alice"),
            "{name}: the claim header"
        );
        assert_eq!(
            has(&seen, "authorization"),
            None,
            "{name}: the token is not forwarded"
        );
    }
    // A client cannot supply the claim header itself: it is the token's.
    let a = gw(
        &g,
        "shop.test",
        "/x",
        &["-H", &bearer(&rsa.sign(&good)), "-H", "x-user: mallory"],
    );
    assert_eq!(has(&echoed(&a).1, "x-user"), Some("alice"));

    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let none = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","kid":"rsa-1"}"#),
        b64(&good.to_string())
    );
    forger.kid = "rsa-1";
    let hmac = Signer {
        key: EncodingKey::from_secret(rsa_public_pem.as_bytes()).unwrap(),
        alg: Algorithm::HS256,
        kid: "rsa-1",
    };
    let unknown = Signer {
        key: EncodingKey::from_rsa_pem(
            rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)
                .unwrap()
                .serialize_pem()
                .as_bytes(),
        )
        .unwrap(),
        alg: Algorithm::RS256,
        kid: "rotated-out",
    };
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        (
            "expired",
            Some(rsa.sign(&claims("https://id.example", "shop", t - 60, t - 120, ""))),
            "expired",
        ),
        (
            "not yet valid",
            Some(rsa.sign(&claims("https://id.example", "shop", t + 600, t + 300, ""))),
            "not-yet-valid",
        ),
        (
            "wrong aud",
            Some(rsa.sign(&claims("https://id.example", "other", t + 600, t - 10, ""))),
            "bad-audience",
        ),
        (
            "wrong iss",
            Some(rsa.sign(&claims("https://evil.example", "shop", t + 600, t - 10, ""))),
            "bad-issuer",
        ),
        ("bad signature", Some(forger.sign(&good)), "bad-signature"),
        ("alg none", Some(none), "bad-algorithm"),
        (
            "HS256 with the public key",
            Some(hmac.sign(&good)),
            "bad-algorithm",
        ),
        ("unknown kid", Some(unknown.sign(&good)), "unknown-kid"),
        ("malformed", Some("not.a.jwt".into()), "malformed"),
        ("missing", None, "missing"),
    ];
    for (name, token, reason) in &cases {
        let a = call(token.as_deref(), "/x");
        assert_eq!(a.status, 401, "{name}: {a:?}");
        assert_eq!(a.header("x-mesh-error"), Some("unauthenticated"), "{name}");
        let www = a
            .header("www-authenticate")
            .unwrap_or_else(|| panic!("{name}: no WWW-Authenticate"));
        assert!(www.starts_with("Bearer realm=\"mesh\""), "{name}: {www}");
        assert_eq!(
            www.contains("invalid_token"),
            *reason != "missing",
            "{name}: {www}"
        );
        let counted = gauge(
            &g,
            "mesh_gateway_auth_failures_total",
            &[("route", "api"), ("reason", reason)],
        );
        assert!(counted >= 1.0, "{name}: counted as {reason}");
    }
    // Valid, without the scope the admin rule requires; then with it.
    let a = call(Some(&rsa.sign(&good)), "/admin");
    assert_eq!(a.status, 403, "{a:?}");
    assert!(a
        .header("www-authenticate")
        .unwrap()
        .contains("insufficient_scope"));
    let admin = claims(
        "https://id.example",
        "shop",
        t + 600,
        t - 10,
        "orders:read admin",
    );
    assert_eq!(call(Some(&rsa.sign(&admin)), "/admin").status, 200);

    // The JWKS server goes away: the cached keys still validate.
    jwks.kill();
    for signer in [&rsa, &ec, &ed] {
        assert_eq!(call(Some(&signer.sign(&good)), "/x").status, 200);
    }
    // An unknown kid now finds no server: still a 401, and the known keys
    // stay good after the failed refetch.
    assert_eq!(call(Some(&unknown.sign(&good)), "/x").status, 401);
    assert_eq!(call(Some(&rsa.sign(&good)), "/x").status, 200);
}

// === rate limits ===

#[test]
fn rate_limits_local_and_shared_through_redis() {
    let lo = Loopback::start("gw-limits");
    let app = lo.app("orders", &Fault::default());
    lo.register_addr("orders", app.addr);
    apply(
        &lo,
        r#"
kind: Route
name: limited
hostnames: [local.test]
rules:
  - rateLimit: { requests: 1, per: 1m, burst: 5 }
    backends: [{ service: orders }]
---
kind: Route
name: shared
hostnames: [shared.test]
rules:
  - rateLimit: { requests: 1, per: 1m, burst: 6, key: "header:x-api-key", global: true }
    backends: [{ service: orders }]
"#,
    );
    let sock = lo.dir().join("redis.sock");
    let redis = support::proc::spawn_logged(
        command(
            "redis-server",
            &[
                "--port",
                "0",
                "--unixsocket",
                sock.to_str().unwrap(),
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            &[],
        ),
        "redis".into(),
        lo.dir().join("redis.log"),
    );
    wait_for("redis-server's socket", secs(10), || {
        redis.assert_running();
        sock.exists().then_some(())
    });
    let url = format!("unix://{}", sock.display());
    let a = lo.gateway("gw-a", &["--redis", &url]);
    let b = lo.gateway("gw-b", &["--redis", &url]);
    a.wait_routes(2);
    b.wait_routes(2);

    // Local: exactly the burst, then 429 with when to come back.
    let statuses: Vec<u16> = (0..20)
        .map(|_| gw(&a, "local.test", "/", &[]).status)
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        5,
        "{statuses:?}"
    );
    assert!(statuses[..5].iter().all(|s| *s == 200), "{statuses:?}");
    let r = gw(&a, "local.test", "/", &[]);
    assert_eq!(r.status, 429);
    assert_eq!(r.header("x-mesh-error"), Some("rate-limited"));
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((50..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(r.header("ratelimit-limit"), Some("5"));
    assert_eq!(r.header("ratelimit-remaining"), Some("0"));
    assert_eq!(
        gauge(
            &a,
            "mesh_gateway_rate_limited_total",
            &[("route", "limited")]
        ),
        16.0
    );
    // Another gateway replica's local bucket is its own.
    assert_eq!(gw(&b, "local.test", "/", &[]).status, 200);

    // Global: one bucket in Redis for both replicas.
    let key = ["-H", "x-api-key: team-1"];
    let shared: Vec<u16> = (0..12)
        .map(|i| gw(if i % 2 == 0 { &a } else { &b }, "shared.test", "/", &key).status)
        .collect();
    assert_eq!(
        shared.iter().filter(|s| **s == 200).count(),
        6,
        "{shared:?}"
    );
    assert_eq!(&shared[..6], &[200; 6], "{shared:?}");
    let ok = gw(&a, "shared.test", "/", &["-H", "x-api-key: team-2"]);
    assert_eq!(ok.status, 200, "another key, another bucket");
    assert_eq!(ok.header("ratelimit-remaining"), Some("5"));
    assert_eq!(
        gauge(&a, "mesh_gateway_rate_limit_fail_open_total", &[]),
        0.0
    );

    // Redis stops: requests pass, and each pass is counted.
    redis.kill();
    wait_for("redis-server to exit", secs(10), || {
        (!redis.is_running()).then_some(())
    });
    for _ in 0..5 {
        assert_eq!(gw(&a, "shared.test", "/", &key).status, 200);
    }
    assert!(gauge(&a, "mesh_gateway_rate_limit_fail_open_total", &[]) >= 5.0);
}

// === TLS ===

fn self_signed(dir: &Path, host: &str) -> (String, String) {
    let ck = rcgen::generate_simple_self_signed(vec![host.to_string()]).unwrap();
    let cert = dir.join(format!("{host}.pem"));
    let key = dir.join(format!("{host}.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    (cert.display().to_string(), key.display().to_string())
}

/// curl over TLS to `host` at the gateway, trusting only `ca`: (exit
/// code, HTTP version, body).
fn https(g: &Gateway, host: &str, ca: &str, extra: &[&str]) -> (i32, String, String) {
    let port = g.listen.port();
    let resolve = format!("{host}:{port}:127.0.0.1");
    let url = format!("https://{host}:{port}/");
    let mut args = vec![
        "-s",
        "--max-time",
        "10",
        "--resolve",
        &resolve,
        "--cacert",
        ca,
        "-w",
        "\n%{http_version}",
    ];
    args.extend_from_slice(extra);
    args.push(&url);
    let out = run_with_timeout(command("curl", &args, &[]), secs(15));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, version) = text.rsplit_once('\n').unwrap_or(("", ""));
    (
        out.status.code().unwrap_or(-1),
        version.to_string(),
        body.to_string(),
    )
}

#[test]
fn tls_certificate_by_sni_and_h2_by_alpn() {
    let lo = Loopback::start("gw-tls");
    let shop_app = lo.app("shop", &Fault::default());
    let api_app = lo.app("api", &Fault::default());
    lo.register_addr("shop", shop_app.addr);
    lo.register_addr("api", api_app.addr);
    apply(
        &lo,
        "kind: Route\nname: shop\nhostnames: [shop.test]\nrules: [{ backends: [{ service: shop }] }]\n---\nkind: Route\nname: api\nhostnames: [api.test]\nrules: [{ backends: [{ service: api }] }]\n",
    );
    let (shop_cert, shop_key) = self_signed(lo.dir(), "shop.test");
    let (api_cert, api_key) = self_signed(lo.dir(), "api.test");
    let shop = format!("shop.test={shop_cert},{shop_key}");
    let api = format!("api.test={api_cert},{api_key}");
    let g = lo.gateway("gateway", &["--tls-host", &shop, "--tls-host", &api]);
    g.wait_routes(2);
    let (code, version, body) = https(&g, "shop.test", &shop_cert, &[]);
    assert_eq!((code, version.as_str(), body.as_str()), (0, "2", "shop"));
    let (code, version, body) = https(&g, "api.test", &api_cert, &[]);
    assert_eq!((code, version.as_str(), body.as_str()), (0, "2", "api"));
    // Each host's certificate is its own: the other's CA does not verify it.
    let (code, _, _) = https(&g, "shop.test", &api_cert, &[]);
    assert_eq!(code, 60, "curl: peer certificate cannot be authenticated");
    let (code, version, body) = https(&g, "api.test", &api_cert, &["--http1.1"]);
    assert_eq!((code, version.as_str(), body.as_str()), (0, "1.1", "api"));
    // A name no certificate covers, with no default: the handshake fails.
    let (code, _, _) = https(&g, "other.test", &api_cert, &[]);
    assert_ne!(code, 0);
}

// === CORS ===

#[test]
fn cors_preflight_at_the_edge() {
    let lo = Loopback::start("gw-cors");
    let app = lo.app("orders", &Fault::default());
    lo.register_addr("orders", app.addr);
    apply(
        &lo,
        r#"
kind: Route
name: web
rules:
  - matches: [{ path: { value: /api }, method: PUT }]
    cors:
      allowOrigins: [https://shop.example.com]
      allowMethods: [GET, PUT]
      allowHeaders: [content-type, authorization]
      exposeHeaders: [x-request-id]
      allowCredentials: true
      maxAge: 10m
    jwt:
      issuer: https://id.example
      jwksFile: /nonexistent/jwks.json
    backends: [{ service: orders }]
  - matches: [{ path: { value: /api }, method: GET }]
    cors: { allowOrigins: ["*"] }
    backends: [{ service: orders }]
"#,
    );
    let g = lo.gateway("gateway", &[]);
    g.wait_routes(1);
    let before = app.stats().requests;
    let pre = |origin: &str| {
        gw(
            &g,
            "shop.test",
            "/api/items",
            &[
                "-X",
                "OPTIONS",
                "-H",
                &format!("origin: {origin}"),
                "-H",
                "access-control-request-method: PUT",
                "-H",
                "access-control-request-headers: Content-Type",
            ],
        )
    };
    let ok = pre("https://shop.example.com");
    assert_eq!(ok.status, 204, "{ok:?}");
    assert_eq!(
        ok.header("access-control-allow-origin"),
        Some("https://shop.example.com")
    );
    assert_eq!(ok.header("access-control-allow-methods"), Some("GET, PUT"));
    assert_eq!(
        ok.header("access-control-allow-headers"),
        Some("content-type")
    );
    assert_eq!(ok.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(ok.header("access-control-max-age"), Some("600"));
    let refused = pre("https://evil.example");
    assert_eq!(refused.status, 403, "{refused:?}");
    assert_eq!(refused.header("x-mesh-error"), Some("cors-refused"));
    assert_eq!(refused.header("access-control-allow-origin"), None);
    // The actual request (no token needed on the GET rule).
    let get = gw(
        &g,
        "shop.test",
        "/api/items",
        &["-H", "origin: https://anyone.example"],
    );
    assert_eq!(get.status, 200, "{get:?}");
    assert_eq!(get.header("access-control-allow-origin"), Some("*"));
    assert_eq!(
        app.stats().requests,
        before + 1,
        "preflights never reach the app"
    );
}

// === bad input ===

#[test]
fn bad_routes_and_hostile_requests() {
    let lo = Loopback::start("gw-bad");
    let app = lo.app("orders", &Fault::default());
    lo.register_addr("orders", app.addr);
    let cases = [
        ("bad regex", "rules: [{ matches: [{ path: { type: RegularExpression, value: \"/(unclosed\" } }], backends: [{ service: orders }] }]", "rules[0].matches[0].path.value"),
        ("negative weight", "rules: [{ backends: [{ service: orders, weight: -5 }] }]", "rules[0].backends[0].weight"),
        ("unknown filter", "rules: [{ filters: [{ type: Mirror }], backends: [{ service: orders }] }]", "rules[0].filters[0].type"),
        ("backend not a name", "rules: [{ backends: [{ service: \"orders/v1\" }] }]", "rules[0].backends[0].service"),
        ("hmac algorithm", "jwt: { issuer: x, jwksFile: /k.json, algorithms: [HS256] }\nrules: [{ backends: [{ service: orders }] }]", "jwt.algorithms[0]"),
        ("rate key", "rules: [{ rateLimit: { requests: 5, key: cookie }, backends: [{ service: orders }] }]", "rules[0].rateLimit.key"),
    ];
    for (what, body, field) in cases {
        let yaml = format!("kind: Route\nname: bad\n{body}\n");
        let out = lo.apply_output(&yaml);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: {out:?}");
        assert!(err.contains(field), "{what}: {field} not named in {err}");
    }
    let listed = lo.ctl(&["get", "routes", "-o", "json"]);
    assert!(listed.status.success(), "{listed:?}");
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed, json!([]), "nothing was stored");
    // The API refuses the same without mesh-ctl.
    let url = format!("{}/v1/routes/bad", lo.control_url());
    let body = r#"{"name":"bad","rules":[{"backends":[{"service":"orders","weight":-1}]}]}"#;
    let out = run_with_timeout(
        command("curl", &["-s", "-X", "PUT", "-d", body, &url], &[]),
        secs(5),
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        answer["fields"][0]["field"], "rules[0].backends[0].weight",
        "{answer}"
    );

    apply(
        &lo,
        "kind: Route\nname: ok\nrules: [{ backends: [{ service: orders }] }]\n",
    );
    let g = lo.gateway("gateway", &[]);
    g.wait_routes(1);
    let big = format!("x-big: {}", "a".repeat(64 * 1024));
    let a = gw(&g, "shop.test", "/", &["-H", &big]);
    assert_eq!(a.status, 431, "{:?}", a.status);
    for garbage in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /\x00 HTTP/1.1\r\nhost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: a\r\ncontent-length: -1\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(g.listen).unwrap();
        s.set_read_timeout(Some(secs(5))).unwrap();
        s.write_all(garbage).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 400"), "{garbage:?}: {text}");
    }
    g.proc.assert_running();
    assert_eq!(gw(&g, "shop.test", "/", &[]).status, 200, "still serving");
    assert_eq!(app.stats().requests, 1, "nothing hostile reached the app");
}
