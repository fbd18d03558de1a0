//! Route documents and the route table, without sockets.

use super::*;
use http::{HeaderMap, HeaderValue, Method};
use serde_json::{json, Value};

fn route(doc: Value) -> Route {
    Route::from_value(&doc).unwrap_or_else(|e| panic!("{doc}: {e}"))
}

fn errors(doc: Value) -> Vec<(String, String)> {
    match Route::from_value(&doc) {
        Ok(r) => panic!("accepted: {r:?}"),
        Err(e) => e.0.into_iter().map(|f| (f.field, f.reason)).collect(),
    }
}

fn to(service: &str) -> Value {
    json!([{ "service": service }])
}

/// Which `route/rule` a request selects, or "404".
fn pick(t: &RouteTable, host: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> String {
    let (path, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    let m = Method::from_bytes(method.as_bytes()).unwrap();
    match t.find(host, &m, path, query, &h) {
        Some(found) => format!("{}/{}", found.rule.route, found.rule.rule),
        None => "404".into(),
    }
}

#[test]
fn a_full_route_parses_and_round_trips() {
    let r = route(json!({
        "kind": "Route",
        "name": "shop",
        "hostnames": ["Shop.Example.com", "*.shop.example.com"],
        "rules": [{
            "name": "api",
            "matches": [
                { "path": { "type": "PathPrefix", "value": "/api" }, "method": "GET",
                  "headers": [{ "name": "X-Canary", "value": "1" }],
                  "queryParams": [{ "name": "v", "value": "2[0-9]", "type": "RegularExpression" }] }
            ],
            "filters": [
                { "type": "RequestHeaderModifier",
                  "requestHeaderModifier": { "set": [{ "name": "X-Env", "value": "prod" }], "remove": ["cookie"] } },
                { "type": "URLRewrite",
                  "urlRewrite": { "path": { "type": "ReplacePrefixMatch", "replacePrefixMatch": "/" } } },
                { "type": "ResponseHeaderModifier",
                  "responseHeaderModifier": { "add": [{ "name": "x-served-by", "value": "gw" }] } }
            ],
            "backends": [{ "service": "orders", "port": 8080, "weight": 90 }, { "service": "orders-v2", "weight": 10 }],
            "timeouts": { "request": "2s" },
            "retry": { "attempts": 2 }
        }]
    }));
    assert_eq!(r.hostnames, ["shop.example.com", "*.shop.example.com"]);
    let rule = &r.rules[0];
    assert_eq!(rule.matches[0].headers[0].name, "x-canary");
    assert_eq!(
        rule.timeouts.request,
        Some(std::time::Duration::from_secs(2))
    );
    assert_eq!(rule.retry, Some(Retry { attempts: 2 }));
    // The wire form is the document's shape: it parses back to itself.
    let wire = serde_json::to_value(&r).unwrap();
    assert_eq!(
        wire["rules"][0]["filters"][1]["urlRewrite"]["path"]["replacePrefixMatch"],
        "/"
    );
    assert_eq!(route(wire.clone()), r);
    let back: Route = serde_json::from_value(wire).unwrap();
    assert_eq!(back, r);
}

#[test]
fn every_bad_field_is_named() {
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "bad regex",
            json!({"name": "r", "rules": [{"matches": [{"path": {"type": "RegularExpression", "value": "/(a"}}], "backends": to("a")}]}),
            "rules[0].matches[0].path.value",
        ),
        (
            "negative weight",
            json!({"name": "r", "rules": [{"backends": [{"service": "a", "weight": -1}]}]}),
            "rules[0].backends[0].weight",
        ),
        (
            "unknown filter",
            json!({"name": "r", "rules": [{"filters": [{"type": "Mirror"}], "backends": to("a")}]}),
            "rules[0].filters[0].type",
        ),
        (
            "backend not a name",
            json!({"name": "r", "rules": [{"backends": [{"service": "Not A Name"}]}]}),
            "rules[0].backends[0].service",
        ),
        (
            "no backends",
            json!({"name": "r", "rules": [{}]}),
            "rules[0].backends",
        ),
        (
            "all weights 0",
            json!({"name": "r", "rules": [{"backends": [{"service": "a", "weight": 0}]}]}),
            "rules[0].backends",
        ),
        (
            "relative path",
            json!({"name": "r", "rules": [{"matches": [{"path": {"value": "api"}}], "backends": to("a")}]}),
            "rules[0].matches[0].path.value",
        ),
        (
            "dot segments",
            json!({"name": "r", "rules": [{"matches": [{"path": {"value": "/a/../b"}}], "backends": to("a")}]}),
            "rules[0].matches[0].path.value",
        ),
        (
            "unknown method",
            json!({"name": "r", "rules": [{"matches": [{"method": "FETCH"}], "backends": to("a")}]}),
            "rules[0].matches[0].method",
        ),
        (
            "hostname with port",
            json!({"name": "r", "hostnames": ["a.example.com:80"], "rules": [{"backends": to("a")}]}),
            "hostnames[0]",
        ),
        (
            "hostname IP",
            json!({"name": "r", "hostnames": ["10.0.0.1"], "rules": [{"backends": to("a")}]}),
            "hostnames[0]",
        ),
        (
            "prefix rewrite without prefix match",
            json!({"name": "r", "rules": [{"matches": [{"path": {"type": "Exact", "value": "/a"}}], "filters": [{"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}}}], "backends": to("a")}]}),
            "rules[0].filters",
        ),
        (
            "redirect and backends",
            json!({"name": "r", "rules": [{"filters": [{"type": "RequestRedirect", "requestRedirect": {"scheme": "https"}}], "backends": to("a")}]}),
            "rules[0].backends",
        ),
        (
            "redirect status",
            json!({"name": "r", "rules": [{"filters": [{"type": "RequestRedirect", "requestRedirect": {"statusCode": 304}}]}]}),
            "rules[0].filters[0].requestRedirect.statusCode",
        ),
        (
            "settings under the wrong key",
            json!({"name": "r", "rules": [{"filters": [{"type": "URLRewrite", "requestRedirect": {}}], "backends": to("a")}]}),
            "rules[0].filters[0].requestRedirect",
        ),
        (
            "bad header name",
            json!({"name": "r", "rules": [{"filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "bad header", "value": "x"}]}}], "backends": to("a")}]}),
            "rules[0].filters[0].requestHeaderModifier.set[0].name",
        ),
        (
            "unknown field",
            json!({"name": "r", "rules": [{"backendRefs": to("a"), "backends": to("a")}]}),
            "rules[0].backendRefs",
        ),
        ("no name", json!({"rules": [{"backends": to("a")}]}), "name"),
        ("no rules", json!({"name": "r", "rules": []}), "rules"),
        (
            "zero timeout",
            json!({"name": "r", "rules": [{"backends": to("a"), "timeouts": {"request": "0s"}}]}),
            "rules[0].timeouts.request",
        ),
        (
            "too many retries",
            json!({"name": "r", "rules": [{"backends": to("a"), "retry": {"attempts": 99}}]}),
            "rules[0].retry.attempts",
        ),
        (
            "wrong kind",
            json!({"kind": "HTTPRoute", "name": "r", "rules": [{"backends": to("a")}]}),
            "kind",
        ),
    ];
    for (what, doc, field) in cases {
        let errs = errors(doc);
        assert!(
            errs.iter().any(|(f, _)| f == field),
            "{what}: expected an error at {field}, got {errs:?}"
        );
    }
    // Several problems at once, each named.
    let errs =
        errors(json!({"name": "r", "rules": [{"backends": [{"service": "A", "weight": -2}]}]}));
    assert_eq!(errs.len(), 2, "{errs:?}");
}

#[test]
fn precedence_follows_gateway_api() {
    let routes = [
        route(json!({"name": "catch-all", "rules": [{"backends": to("web")}]})),
        route(
            json!({"name": "shop", "hostnames": ["shop.example.com"], "rules": [
                {"name": "prefix-api", "matches": [{"path": {"value": "/api"}}], "backends": to("api")},
                {"name": "prefix-api-v1", "matches": [{"path": {"value": "/api/v1"}}], "backends": to("api")},
                {"name": "exact-api", "matches": [{"path": {"type": "Exact", "value": "/api"}}], "backends": to("api")},
                {"name": "regex-items", "matches": [{"path": {"type": "RegularExpression", "value": "/api/items/[0-9]+"}}], "backends": to("api")},
                {"name": "post", "matches": [{"path": {"value": "/api"}, "method": "POST"}], "backends": to("api")},
                {"name": "canary", "matches": [{"path": {"value": "/api"}, "headers": [{"name": "x-canary", "value": "1"}]}], "backends": to("api")},
                {"name": "query", "matches": [{"path": {"value": "/api"}, "queryParams": [{"name": "beta", "value": "yes"}]}], "backends": to("api")}
            ]}),
        ),
        route(
            json!({"name": "wild", "hostnames": ["*.example.com"], "rules": [{"backends": to("wild")}]}),
        ),
        route(
            json!({"name": "deep-wild", "hostnames": ["*.eu.example.com"], "rules": [{"matches": [{"path": {"value": "/only"}}], "backends": to("wild")}]}),
        ),
        // Two routes with one match: the name that sorts first wins.
        route(
            json!({"name": "b-tie", "hostnames": ["tie.test"], "rules": [{"backends": to("b")}]}),
        ),
        route(
            json!({"name": "a-tie", "hostnames": ["tie.test"], "rules": [{"backends": to("a")}]}),
        ),
    ];
    let t = RouteTable::new(&routes);
    assert_eq!(t.len(), routes.len());
    let shop = "shop.example.com";
    let cases = [
        (shop, "GET", "/api", vec![], "shop/exact-api"),
        (shop, "GET", "/api/v1/x", vec![], "shop/prefix-api-v1"),
        (shop, "GET", "/api/items/42", vec![], "shop/regex-items"),
        (shop, "GET", "/api/items/x", vec![], "shop/prefix-api"),
        (shop, "POST", "/api/x", vec![], "shop/post"),
        (
            shop,
            "GET",
            "/api/x",
            vec![("x-canary", "1")],
            "shop/canary",
        ),
        (
            shop,
            "GET",
            "/api/x",
            vec![("x-canary", "0")],
            "shop/prefix-api",
        ),
        (shop, "GET", "/api/x?beta=yes", vec![], "shop/query"),
        // Element-wise prefix: /apix is not under /api.
        (shop, "GET", "/apix", vec![], "404"),
        // The host's group has no rule for `/`: no fall-through.
        (shop, "GET", "/", vec![], "404"),
        ("a.example.com", "GET", "/", vec![], "wild/rules[0]"),
        ("x.y.example.com", "GET", "/", vec![], "wild/rules[0]"),
        (
            "a.eu.example.com",
            "GET",
            "/only",
            vec![],
            "deep-wild/rules[0]",
        ),
        ("a.eu.example.com", "GET", "/", vec![], "404"),
        ("example.com", "GET", "/", vec![], "catch-all/rules[0]"),
        (
            "other.test",
            "DELETE",
            "/anything",
            vec![],
            "catch-all/rules[0]",
        ),
        ("tie.test", "GET", "/", vec![], "a-tie/rules[0]"),
    ];
    for (host, method, path, headers, want) in cases {
        assert_eq!(
            pick(&t, host, method, path, &headers),
            want,
            "{method} {host}{path} {headers:?}"
        );
    }
    assert_eq!(pick(&RouteTable::default(), "a", "GET", "/", &[]), "404");
}

#[test]
fn header_regex_and_repeated_lines() {
    let r = route(json!({"name": "h", "rules": [{"matches": [{"headers": [
        {"name": "x-tenant", "value": "acme|globex", "type": "RegularExpression"}
    ]}], "backends": to("a")}]}));
    let t = RouteTable::new([&r]);
    assert_eq!(
        pick(&t, "h", "GET", "/", &[("x-tenant", "acme")]),
        "h/rules[0]"
    );
    assert_eq!(
        pick(&t, "h", "GET", "/", &[("x-tenant", "acmex")]),
        "404",
        "anchored"
    );
    assert_eq!(
        pick(
            &t,
            "h",
            "GET",
            "/",
            &[("x-tenant", "acme"), ("x-tenant", "globex")]
        ),
        "404",
        "joined as acme,globex"
    );
}
