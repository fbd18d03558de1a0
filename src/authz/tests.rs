//! Authorization: decisions over a few documents (one case a line), path
//! normalization, and malformed documents each rejected under the right
//! field paths.

use super::*;
use serde::Deserialize;
use serde_json::json;

const WEB: &str = "spiffe://mesh.local/ns/default/sa/web";
const BATCH: &str = "spiffe://mesh.local/ns/jobs/sa/batch";
const STRANGER: &str = "spiffe://mesh.local/ns/other/sa/x";

/// A default-deny service: `web` may do anything, the `jobs` namespace may
/// only read under `/api/`.
const HELLO: &str = r#"
kind: AuthorizationPolicy
service: hello
default: deny
rules:
  - name: web
    from: ["spiffe://mesh.local/ns/default/sa/web"]
  - name: jobs
    from: ["spiffe://mesh.local/ns/jobs/sa/*"]
    methods: [GET, HEAD]
    paths: ["/api/"]
"#;

/// Mesh-wide deny and strict; `legacy` opts back into permissive for its
/// public pages.
const MESH: &str = r#"
kind: AuthorizationPolicy
service: "*"
default: deny
mode: strict
---
kind: AuthorizationPolicy
service: hello
rules:
  - name: web
    from: ["spiffe://mesh.local/ns/default/sa/web"]
---
kind: AuthorizationPolicy
service: legacy
mode: permissive
rules:
  - name: outside
    from: [unauthenticated]
    paths: ["/public/"]
  - name: anyone-in-mesh
    from: ["*"]
"#;

/// An exception before the rule it carves out of; `vault` is strict on its
/// own, with no mesh-wide document.
const PAY: &str = r#"
kind: AuthorizationPolicy
service: pay
default: deny
rules:
  - name: no-batch-writes
    action: deny
    from: ["spiffe://mesh.local/ns/jobs/sa/batch"]
    methods: [POST, PUT, DELETE]
  - name: mesh
    from: ["*"]
---
kind: AuthorizationPolicy
service: vault
mode: strict
"#;

fn values(yaml: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

fn parsed(yaml: &str) -> Vec<AuthorizationPolicy> {
    values(yaml)
        .iter()
        .map(|v| AuthorizationPolicy::from_value(v).unwrap_or_else(|e| panic!("{e}\n{yaml}")))
        .collect()
}

fn one(yaml: &str) -> AuthorizationPolicy {
    let mut docs = parsed(yaml);
    assert_eq!(docs.len(), 1, "{yaml}");
    docs.remove(0)
}

/// The field paths rejected in a one-document YAML text.
fn rejected(yaml: &str) -> Vec<String> {
    let doc: Value = serde_norway::from_str(yaml).expect("valid YAML");
    let errs = AuthorizationPolicy::from_value(&doc).expect_err("document accepted");
    errs.0.into_iter().map(|e| e.field).collect()
}

fn get(caller: Option<&'static str>, path: &'static str) -> Request<'static> {
    Request::http(caller, "GET", path)
}

#[test]
fn decisions() {
    let none = Policies::new(parsed(""));
    let hello = Policies::new(parsed(HELLO));
    let mesh = Policies::new(parsed(MESH));
    let pay = Policies::new(parsed(PAY));
    #[rustfmt::skip]
    let cases = [
        // (what, documents, service, request, allowed, rule)
        ("no documents: allow", &none, "hello", get(Some(WEB), "/"), true, "mesh-default"),
        ("no documents: plaintext too", &none, "hello", Request::tcp(None), true, "mesh-default"),
        ("listed caller", &hello, "hello", Request::http(Some(WEB), "DELETE", "/x"), true, "web"),
        ("listed caller, TCP", &hello, "hello", Request::tcp(Some(WEB)), true, "web"),
        ("other caller: default deny", &hello, "hello", get(Some(STRANGER), "/api/x"), false, "default"),
        ("namespace wildcard", &hello, "hello", get(Some(BATCH), "/api/items"), true, "jobs"),
        ("namespace is not a prefix of another", &hello, "hello", get(Some("spiffe://mesh.local/ns/jobsx/sa/b"), "/api/"), false, "default"),
        ("namespace of another trust domain", &hello, "hello", get(Some("spiffe://other.td/ns/jobs/sa/batch"), "/api/"), false, "default"),
        ("method narrows", &hello, "hello", Request::http(Some(BATCH), "POST", "/api/items"), false, "default"),
        ("path narrows", &hello, "hello", get(Some(BATCH), "/admin"), false, "default"),
        ("query ignored", &hello, "hello", get(Some(BATCH), "/api/items?page=2"), true, "jobs"),
        ("query is not path", &hello, "hello", get(Some(BATCH), "/admin?/../api/"), false, "default"),
        ("dot segments resolved", &hello, "hello", get(Some(BATCH), "/api/../admin"), false, "default"),
        ("escaped dots resolved", &hello, "hello", get(Some(BATCH), "/api/%2e%2E/admin"), false, "default"),
        ("resolved into the prefix", &hello, "hello", get(Some(BATCH), "/static/..//api/items"), true, "jobs"),
        ("L7 rule on opaque TCP", &hello, "hello", Request::tcp(Some(BATCH)), false, "default"),
        ("permissive: plaintext reaches the rules", &hello, "hello", Request::tcp(None), false, "default"),
        ("service without a document", &hello, "orders", get(Some(STRANGER), "/"), true, "mesh-default"),
        ("mesh deny, service rule allows", &mesh, "hello", get(Some(WEB), "/"), true, "web"),
        ("mesh deny, no rule matches", &mesh, "hello", get(Some(BATCH), "/"), false, "mesh-default"),
        ("mesh strict: plaintext refused", &mesh, "hello", get(None, "/"), false, "mode:strict"),
        ("mesh deny, no document", &mesh, "orders", Request::tcp(Some(WEB)), false, "mesh-default"),
        ("mesh strict, no document", &mesh, "orders", Request::tcp(None), false, "mode:strict"),
        ("service permissive over mesh strict", &mesh, "legacy", get(None, "/public/x"), true, "outside"),
        ("unauthenticated rule still narrows", &mesh, "legacy", get(None, "/private"), false, "mesh-default"),
        ("unauthenticated L7 rule on TCP", &mesh, "legacy", Request::tcp(None), false, "mesh-default"),
        ("\"*\" is any mesh caller", &mesh, "legacy", Request::tcp(Some(STRANGER)), true, "anyone-in-mesh"),
        ("first match: deny before allow", &pay, "pay", Request::http(Some(BATCH), "POST", "/charge"), false, "no-batch-writes"),
        ("first match: the allow after it", &pay, "pay", get(Some(BATCH), "/charge"), true, "mesh"),
        ("L7 deny does not block TCP", &pay, "pay", Request::tcp(Some(BATCH)), true, "mesh"),
        ("\"*\" is not plaintext", &pay, "pay", Request::tcp(None), false, "default"),
        ("service strict: plaintext refused", &pay, "vault", Request::tcp(None), false, "mode:strict"),
        ("service strict: mesh caller", &pay, "vault", Request::tcp(Some(WEB)), true, "mesh-default"),
    ];
    for (what, policies, service, req, allowed, rule) in cases {
        let d = policies.decide(service, &req);
        assert_eq!(
            (d.allowed, d.rule.as_str()),
            (allowed, rule),
            "{what}: {req:?}"
        );
    }
    assert!(none.is_empty());
    assert!(!hello.is_empty());
    assert!(!Policies::new(parsed("kind: AuthorizationPolicy\nservice: \"*\"")).is_empty());
}

#[test]
fn a_later_document_for_a_service_replaces_the_earlier() {
    let p = Policies::new(parsed(
        "kind: AuthorizationPolicy\nservice: a\ndefault: deny\n---\n\
         kind: AuthorizationPolicy\nservice: a\ndefault: allow\n",
    ));
    let d = p.decide("a", &Request::tcp(Some(WEB)));
    assert_eq!((d.allowed, d.rule.as_str()), (true, "default"));
}

#[test]
fn principals_match_callers() {
    let ns = Principal::Namespace {
        prefix: "spiffe://mesh.local/ns/jobs/sa/".into(),
    };
    let cases = [
        (Principal::Exact(WEB.into()), Some(WEB), true),
        (Principal::Exact(WEB.into()), Some(BATCH), false),
        (Principal::Exact(WEB.into()), None, false),
        (ns.clone(), Some(BATCH), true),
        (ns.clone(), Some("spiffe://mesh.local/ns/jobs/sa/"), false),
        (
            ns.clone(),
            Some("spiffe://mesh.local/ns/jobs/sa/a/b"),
            false,
        ),
        (ns, None, false),
        (Principal::AnyAuthenticated, Some(STRANGER), true),
        (Principal::AnyAuthenticated, None, false),
        (Principal::Unauthenticated, None, true),
        (Principal::Unauthenticated, Some(WEB), false),
    ];
    for (principal, caller, want) in cases {
        assert_eq!(principal.matches(caller), want, "{principal} / {caller:?}");
    }
}

#[test]
fn paths_are_normalized_before_matching() {
    let cases = [
        ("/", "/"),
        ("/api/items", "/api/items"),
        ("/a/", "/a/"),
        ("/api/items?x=/../admin", "/api/items"),
        ("/a#frag", "/a"),
        ("/a/./b", "/a/b"),
        ("/a/../b", "/b"),
        ("/a/b/..", "/a/"),
        ("/a/.", "/a/"),
        ("/..", "/"),
        ("/../../etc", "/etc"),
        ("//a///b", "/a/b"),
        ("/a/%2e%2e/b", "/b"),
        ("/%41%62c%7e", "/Abc~"),
        ("/a%2fb", "/a%2Fb"),
        ("/a%2Fb", "/a%2Fb"),
        ("/%zz", "/%zz"),
        ("/%4", "/%4"),
        ("/caf%C3%A9", "/caf%C3%A9"),
        ("*", "*"),
    ];
    for (raw, want) in cases {
        assert_eq!(normalize_path(raw), want, "{raw}");
    }
}

#[test]
fn documents_read_into_their_values() {
    let hello = one(HELLO);
    assert_eq!(
        hello,
        AuthorizationPolicy {
            service: "hello".into(),
            default: Some(Action::Deny),
            mode: None,
            rules: vec![
                Rule {
                    name: "web".into(),
                    action: Action::Allow,
                    from: vec![Principal::Exact(WEB.into())],
                    methods: vec![],
                    paths: vec![],
                },
                Rule {
                    name: "jobs".into(),
                    action: Action::Allow,
                    from: vec![Principal::Namespace {
                        prefix: "spiffe://mesh.local/ns/jobs/sa/".into()
                    }],
                    methods: vec!["GET".into(), "HEAD".into()],
                    paths: vec!["/api/".into()],
                },
            ],
        }
    );

    // Unnamed rules are named by position; action defaults to allow.
    let p = one(r#"
kind: AuthorizationPolicy
service: hello
rules:
  - from: ["*", unauthenticated]
    methods: [GET]
  - action: deny
    from: ["spiffe://mesh.local/ns/default/sa/web"]
"#);
    let names: Vec<&str> = p.rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["rules[0]", "rules[1]"]);
    assert_eq!(
        p.rules[0].from,
        [Principal::AnyAuthenticated, Principal::Unauthenticated]
    );
    assert_eq!(
        (p.rules[0].action, p.rules[1].action),
        (Action::Allow, Action::Deny)
    );

    let mesh = one("kind: AuthorizationPolicy\nservice: \"*\"\ndefault: deny\nmode: strict");
    assert!(mesh.is_mesh_wide());
    assert_eq!(
        (mesh.default, mesh.mode),
        (Some(Action::Deny), Some(Mode::Strict))
    );

    // API bodies may leave the kind out; nulls count as absent.
    let bare = AuthorizationPolicy::from_value(&json!({"service": "a", "mode": null}));
    assert_eq!(
        bare,
        Ok(AuthorizationPolicy {
            service: "a".into(),
            default: None,
            mode: None,
            rules: vec![],
        })
    );
}

#[test]
fn valid_documents_round_trip_through_json() {
    for yaml in [HELLO, MESH, PAY] {
        for p in parsed(yaml) {
            let wire = serde_json::to_value(&p).unwrap();
            let back: AuthorizationPolicy = serde_json::from_value(wire.clone()).unwrap();
            assert_eq!(back, p);
            // What travels validates again, so the control plane can check it.
            assert_eq!(AuthorizationPolicy::from_value(&wire), Ok(p));
        }
    }
    let wire = serde_json::to_value(one(HELLO)).unwrap();
    assert_eq!(
        wire,
        json!({
            "service": "hello",
            "default": "deny",
            "rules": [
                {"name": "web", "action": "allow", "from": [WEB]},
                {"name": "jobs", "action": "allow",
                 "from": ["spiffe://mesh.local/ns/jobs/sa/*"],
                 "methods": ["GET", "HEAD"], "paths": ["/api/"]},
            ],
        })
    );
    // Default names travel too, and parse again.
    let unnamed = one("kind: AuthorizationPolicy\nservice: a\nrules: [{from: [\"*\"]}]");
    let wire = serde_json::to_value(&unnamed).unwrap();
    assert_eq!(wire["rules"][0]["name"], "rules[0]");
    assert_eq!(AuthorizationPolicy::from_value(&wire), Ok(unnamed));
    // Principals deserialize through the same validation.
    assert!(serde_json::from_value::<Principal>(json!("spiffe://x")).is_err());
    assert_eq!(
        serde_json::from_value::<Principal>(json!("unauthenticated")).unwrap(),
        Principal::Unauthenticated
    );
}

#[test]
fn malformed_rules_name_their_fields() {
    let head = "kind: AuthorizationPolicy\nservice: hello\n";
    let cases: &[(&str, &[&str])] = &[
        ("rule: []", &["rule"]),
        (r#"rules: [{from: ["*"], paht: ["/x"]}]"#, &["rules[0].paht"]),
        (r#"rules: [{from: ["*"], action: permit}]"#, &["rules[0].action"]),
        (r#"rules: [{from: ["*"], action: [deny]}]"#, &["rules[0].action"]),
        ("default: block", &["default"]),
        ("mode: STRICT", &["mode"]),
        ("rules: {from: [x]}", &["rules"]),
        ("rules: [web]", &["rules[0]"]),
        (r#"rules: [{from: ["spiffe://mesh.local/default/web"]}]"#, &["rules[0].from[0]"]),
        (
            r#"rules: [{from: ["*"], methods: [GET]}, {from: ["*", "spiffe://x"]}]"#,
            &["rules[1].from[1]"],
        ),
        (r#"rules: [{from: ["spiffe:///ns/a/sa/b"]}]"#, &["rules[0].from[0]"]),
        (r#"rules: [{from: ["spiffe://Mesh.Local/ns/a/sa/b"]}]"#, &["rules[0].from[0]"]),
        (r#"rules: [{from: ["spiffe://mesh.local/ns/*/sa/*"]}]"#, &["rules[0].from[0]"]),
        (r#"rules: [{from: ["spiffe://mesh.local/ns/a/sa/b/c"]}]"#, &["rules[0].from[0]"]),
        (r#"rules: [{from: ["spiffe://mesh.local/ns/a/sa/b*"]}]"#, &["rules[0].from[0]"]),
        (r#"rules: [{from: ["spiffe://mesh.local/ns/../sa/b"]}]"#, &["rules[0].from[0]"]),
        ("rules: [{from: [web]}]", &["rules[0].from[0]"]),
        ("rules: [{from: [7]}]", &["rules[0].from[0]"]),
        (r#"rules: [{from: ["*", "*"]}]"#, &["rules[0].from[1]"]),
        ("rules: [{from: []}]", &["rules[0].from"]),
        ("rules: [{action: deny}]", &["rules[0].from"]),
        (r#"rules: [{from: "*"}]"#, &["rules[0].from"]),
        (r#"rules: [{from: ["*"], paths: ["api/"]}]"#, &["rules[0].paths[0]"]),
        (r#"rules: [{from: ["*"], paths: ["/api?x=1"]}]"#, &["rules[0].paths[0]"]),
        (r#"rules: [{from: ["*"], paths: ["/api/../admin"]}]"#, &["rules[0].paths[0]"]),
        (r#"rules: [{from: ["*"], paths: ["/a b"]}]"#, &["rules[0].paths[0]"]),
        (r#"rules: [{from: ["*"], paths: ["/%7e"]}]"#, &["rules[0].paths[0]"]),
        (r#"rules: [{from: ["*"], paths: ["/a", "/a"]}]"#, &["rules[0].paths[1]"]),
        (r#"rules: [{from: ["*"], paths: "/a"}]"#, &["rules[0].paths"]),
        (r#"rules: [{from: ["*"], methods: [GET, HEAD, get]}]"#, &["rules[0].methods[2]"]),
        (r#"rules: [{from: ["*"], methods: [GET, GET]}]"#, &["rules[0].methods[1]"]),
        (r#"rules: [{from: ["*"], methods: ["M-SEARCH"]}]"#, &["rules[0].methods[0]"]),
        (
            r#"rules: [{name: web, from: ["*"], methods: [GET]}, {name: web, from: ["*"], methods: [POST]}]"#,
            &["rules[1].name"],
        ),
        (r#"rules: [{name: default, from: ["*"]}]"#, &["rules[0].name"]),
        (r#"rules: [{name: "web reads", from: ["*"]}]"#, &["rules[0].name"]),
        (r#"rules: [{name: "rules[1]", from: ["*"]}]"#, &["rules[0].name"]),
        (r#"rules: [{name: "", from: ["*"]}]"#, &["rules[0].name"]),
        // Shadowed: the earlier rule matches everything the later would.
        (
            r#"rules: [{from: ["*"]}, {action: deny, from: ["spiffe://mesh.local/ns/jobs/sa/batch"]}]"#,
            &["rules[1]"],
        ),
        (
            r#"rules: [{from: ["spiffe://mesh.local/ns/jobs/sa/*"], paths: ["/api/"]},
                       {from: ["spiffe://mesh.local/ns/jobs/sa/batch"], methods: [GET], paths: ["/api/v1/"]}]"#,
            &["rules[1]"],
        ),
        ("mode: strict\nrules: [{from: [unauthenticated]}]", &["rules[0].from[0]"]),
        (
            "default: maybe\nmode: loose\nrules: [{from: [], methods: [get], paths: [x], extra: 1}]",
            &[
                "default",
                "mode",
                "rules[0].extra",
                "rules[0].from",
                "rules[0].methods[0]",
                "rules[0].paths[0]",
            ],
        ),
    ];
    for (rest, want) in cases {
        let yaml = format!("{head}{rest}");
        assert_eq!(rejected(&yaml), *want, "document:\n{yaml}");
    }
}

#[test]
fn malformed_documents_name_their_fields() {
    let cases: &[(&str, &[&str])] = &[
        ("kind: ServicePolicy\nservice: hello", &["kind"]),
        ("kind: AuthorizationPolicy", &["service"]),
        ("kind: AuthorizationPolicy\nservice: Hello", &["service"]),
        ("kind: AuthorizationPolicy\nservice: 7", &["service"]),
        (
            "kind: AuthorizationPolicy\nservice: \"*\"\nrules: []",
            &["rules"],
        ),
        (
            "kind: AuthorizationPolicy\nservice: \"*\"\nrules: [{from: [\"*\"]}]",
            &["rules"],
        ),
        ("[1]", &["(document)"]),
        ("just text", &["(document)"]),
    ];
    for (yaml, want) in cases {
        assert_eq!(rejected(yaml), *want, "document:\n{yaml}");
    }
}

#[test]
fn reasons_say_what_is_wrong() {
    let reason = |yaml: &str| {
        let doc: Value = serde_norway::from_str(yaml).unwrap();
        AuthorizationPolicy::from_value(&doc).unwrap_err().0[0]
            .reason
            .clone()
    };
    let head = "kind: AuthorizationPolicy\nservice: hello\n";
    let r = reason(&format!("{head}rules: [{{from: [\"*\"], methods: [get]}}]"));
    assert!(r.contains("\"GET\""), "{r}");
    let r = reason(&format!(
        "{head}rules: [{{from: [\"*\"], paths: [\"//a\"]}}]"
    ));
    assert!(r.contains("\"/a\""), "{r}");
    let r = reason(&format!(
        "{head}rules: [{{from: [\"*\"]}}, {{from: [\"*\"]}}]"
    ));
    assert!(r.contains("\"rules[0]\""), "{r}");
    let r = reason(&format!("{head}paht: x"));
    assert!(r.contains("unknown field"), "{r}");
}
