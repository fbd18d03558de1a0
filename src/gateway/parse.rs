//! Reading untrusted `kind: Route` documents, every bad field named at
//! once under its camelCase path (`rules[0].matches[1].path.value`), with
//! the typed reads `model::policy_parse` uses. What Gateway API's CRD
//! validation refuses is refused here too: a path that is not absolute or
//! not normalized, `ReplacePrefixMatch` without a `PathPrefix` match, two
//! rewrites, a rewrite beside a redirect; and what only a mesh can check:
//! a backend that is not a service name, a pattern that does not compile.

use super::route::*;
use crate::model::policy_parse_reader::{join, type_name, AtLeast, Section};
use crate::model::{validate_service_name, FieldErrors, MAX_RETRY_ATTEMPTS};
use serde_json::Value;
use std::time::Duration;

const TOP: &[&str] = &[
    "kind",
    "name",
    "hostnames",
    "jwt",
    "rateLimit",
    "cors",
    "rules",
];
const RULE: &[&str] = &[
    "name",
    "matches",
    "filters",
    "backends",
    "timeouts",
    "retry",
    "jwt",
    "rateLimit",
    "cors",
];
const JWT: &[&str] = &[
    "issuer",
    "audiences",
    "jwksUri",
    "jwksFile",
    "algorithms",
    "leeway",
    "claimsToHeaders",
    "forwardAuthorization",
    "requiredClaims",
];
const RATE: &[&str] = &["requests", "per", "burst", "key", "global"];
const CORS: &[&str] = &[
    "allowOrigins",
    "allowMethods",
    "allowHeaders",
    "exposeHeaders",
    "allowCredentials",
    "maxAge",
];
/// What `algorithms` may name: the asymmetric ones. HMAC (`HS*`) is
/// refused outright, so a public key can never serve as an HMAC secret
/// (the RS256 → HS256 confusion), and `none` is not an algorithm.
pub const JWT_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];
/// The default `algorithms`: what IdPs sign with.
const DEFAULT_ALGORITHMS: &[&str] = &["RS256", "ES256", "EdDSA"];
/// The most clock skew a route may allow (Envoy's default is 60 s).
const MAX_LEEWAY: Duration = Duration::from_secs(300);
const MATCH: &[&str] = &["path", "method", "headers", "queryParams"];
const PATH: &[&str] = &["type", "value"];
const VALUE_MATCH: &[&str] = &["name", "value", "type"];
const BACKEND: &[&str] = &["service", "port", "weight"];
const HEADER_MOD: &[&str] = &["set", "add", "remove"];
const PAIR: &[&str] = &["name", "value"];
const REWRITE: &[&str] = &["hostname", "path"];
const REDIRECT: &[&str] = &["scheme", "hostname", "port", "path", "statusCode"];
const PATH_MOD: &[&str] = &["type", "replaceFullPath", "replacePrefixMatch"];
const FILTER_TYPES: &[(&str, &str)] = &[
    ("RequestHeaderModifier", "requestHeaderModifier"),
    ("ResponseHeaderModifier", "responseHeaderModifier"),
    ("URLRewrite", "urlRewrite"),
    ("RequestRedirect", "requestRedirect"),
];
/// Gateway API's `HTTPMethod` enum.
const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];
/// Gateway API's bound on a backend's weight.
const MAX_WEIGHT: u32 = 1_000_000;

pub(super) fn parse(doc: &Value) -> Result<Route, FieldErrors> {
    let mut errs = FieldErrors::default();
    let Some(top) = Section::document(doc, TOP, &mut errs) else {
        return Err(errs);
    };
    match top.get("kind") {
        None => {}
        Some(Value::String(k)) if k == ROUTE_KIND => {}
        Some(other) => errs.push(
            "kind",
            format!("{other} is not a known kind; expected {ROUTE_KIND}"),
        ),
    }
    let name = match top.str("name", &mut errs) {
        Some(n) => {
            if let Err(why) = validate_service_name(n) {
                errs.push("name", why);
            }
            n.to_string()
        }
        None => {
            if !top.has("name") {
                errs.push("name", "is required: the route's name, unique among routes");
            }
            String::new()
        }
    };
    let hostnames = list(&top, "hostnames", MAX_HOSTNAMES, &mut errs)
        .iter()
        .enumerate()
        .filter_map(|(i, v)| hostname(v, &format!("hostnames[{i}]"), &mut errs))
        .collect();
    let jwt = top.has("jwt").then(|| jwt(&top, &mut errs));
    let rate_limit = top.has("rateLimit").then(|| rate_limit(&top, &mut errs));
    let cors = top.has("cors").then(|| cors(&top, &mut errs));
    let rules = match top.get("rules") {
        None => {
            errs.push("rules", "is required: at least one rule");
            Vec::new()
        }
        Some(_) => {
            let items = list(&top, "rules", MAX_RULES, &mut errs);
            if items.is_empty() && top.get("rules").is_some_and(Value::is_array) {
                errs.push("rules", "is empty: at least one rule");
            }
            let mut rules = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                rules.extend(rule(item, &format!("rules[{i}]"), &mut errs));
            }
            rules
        }
    };
    for (i, r) in rules.iter().enumerate() {
        let limit = r.rate_limit.as_ref().or(rate_limit.as_ref());
        let keyed_by_claim = limit.is_some_and(|l| l.key.starts_with("claim:"));
        if keyed_by_claim && r.jwt.is_none() && jwt.is_none() {
            let at = match r.rate_limit {
                Some(_) => format!("rules[{i}].rateLimit.key"),
                None => "rateLimit.key".into(),
            };
            errs.push(
                at,
                "keyed by a claim, but the rule has no jwt to read claims from",
            );
        }
    }
    errs.into_result(Route {
        name,
        hostnames,
        jwt,
        rate_limit,
        cors,
        rules,
    })
}

fn rule(item: &Value, path: &str, errs: &mut FieldErrors) -> Option<RouteRule> {
    let s = Section::open(Some(item), path.to_string(), RULE, errs);
    if !item.is_object() {
        return None;
    }
    let name = s.str("name", errs).map(str::to_string);
    let matches: Vec<RouteMatch> = list(&s, "matches", MAX_MATCHES, errs)
        .iter()
        .enumerate()
        .map(|(i, m)| route_match(m, &format!("{path}.matches[{i}]"), errs))
        .collect();
    let filters: Vec<Filter> = list(&s, "filters", 16, errs)
        .iter()
        .enumerate()
        .filter_map(|(i, f)| filter(f, &format!("{path}.filters[{i}]"), errs))
        .collect();
    let backends: Vec<Backend> = list(&s, "backends", MAX_BACKENDS, errs)
        .iter()
        .enumerate()
        .filter_map(|(i, b)| backend(b, &format!("{path}.backends[{i}]"), errs))
        .collect();
    let timeouts = {
        let t = s.section("timeouts", &["request"], errs);
        Timeouts {
            request: t
                .has("request")
                .then(|| t.duration("request", AtLeast::Positive, Duration::ZERO, errs)),
        }
    };
    let retry = s.has("retry").then(|| {
        let r = s.section("retry", &["attempts"], errs);
        Retry {
            attempts: r.u32("attempts", 0..=MAX_RETRY_ATTEMPTS, 0, errs),
        }
    });
    rule_checks(path, &matches, &filters, &backends, errs);
    Some(RouteRule {
        name,
        matches,
        filters,
        backends,
        timeouts,
        retry,
        jwt: s.has("jwt").then(|| jwt(&s, errs)),
        rate_limit: s.has("rateLimit").then(|| rate_limit(&s, errs)),
        cors: s.has("cors").then(|| cors(&s, errs)),
    })
}

/// What only the whole rule shows.
fn rule_checks(
    path: &str,
    matches: &[RouteMatch],
    filters: &[Filter],
    backends: &[Backend],
    errs: &mut FieldErrors,
) {
    let count = |f: fn(&Filter) -> bool| filters.iter().filter(|x| f(x)).count();
    let rewrites = count(|f| matches!(f, Filter::UrlRewrite(_)));
    let redirects = count(|f| matches!(f, Filter::RequestRedirect(_)));
    let filters_at = join(path, "filters");
    if rewrites > 1 || redirects > 1 {
        errs.push(
            &filters_at,
            "at most one URLRewrite and one RequestRedirect",
        );
    }
    if rewrites > 0 && redirects > 0 {
        errs.push(
            &filters_at,
            "URLRewrite and RequestRedirect cannot be combined (the redirect answers at the edge)",
        );
    }
    let prefix_mod = filters.iter().any(|f| {
        let p = match f {
            Filter::UrlRewrite(r) => r.path.as_ref(),
            Filter::RequestRedirect(r) => r.path.as_ref(),
            _ => None,
        };
        matches!(p, Some(PathModifier::ReplacePrefixMatch(_)))
    });
    let all_prefix = !matches.is_empty()
        && matches
            .iter()
            .all(|m| matches!(m.path, None | Some(PathMatch::PathPrefix(_))));
    if prefix_mod && !all_prefix {
        errs.push(
            &filters_at,
            "ReplacePrefixMatch needs every match of the rule to be a PathPrefix match (the prefix it replaces)",
        );
    }
    let at = join(path, "backends");
    match (redirects > 0, backends.is_empty()) {
        (false, true) => errs.push(&at, "is required: at least one backend (or a RequestRedirect filter)"),
        (true, false) => errs.push(&at, "not allowed beside a RequestRedirect: the redirect answers at the edge and no backend would be called"),
        _ => {}
    }
    if !backends.is_empty() && backends.iter().all(|b| b.weight == 0) {
        errs.push(&at, "every weight is 0: no request could be served");
    }
}

fn route_match(v: &Value, path: &str, errs: &mut FieldErrors) -> RouteMatch {
    let s = Section::open(Some(v), path.to_string(), MATCH, errs);
    let path_match = s.has("path").then(|| {
        let p = s.section("path", PATH, errs);
        let kind = p.str("type", errs).unwrap_or("PathPrefix");
        let value = p.str("value", errs).unwrap_or("/").to_string();
        let at = p.path("value");
        match kind {
            "Exact" | "PathPrefix" => {
                if let Err(why) = plain_path(&value) {
                    errs.push(&at, why);
                }
                if kind == "Exact" {
                    PathMatch::Exact(value)
                } else {
                    PathMatch::PathPrefix(value)
                }
            }
            "RegularExpression" => {
                if let Err(why) = compile(&value) {
                    errs.push(&at, why);
                }
                PathMatch::RegularExpression(value)
            }
            other => {
                errs.push(
                    p.path("type"),
                    format!("{other:?} is not a path match type; expected Exact, PathPrefix or RegularExpression"),
                );
                PathMatch::PathPrefix(value)
            }
        }
    });
    let method = s.str("method", errs).and_then(|m| {
        if METHODS.contains(&m) {
            Some(m.to_string())
        } else {
            errs.push(
                s.path("method"),
                format!(
                    "{m:?} is not a method; expected one of {}",
                    METHODS.join(", ")
                ),
            );
            None
        }
    });
    let headers = value_matches(&s, "headers", true, errs);
    let query_params = value_matches(&s, "queryParams", false, errs);
    RouteMatch {
        path: path_match,
        method,
        headers,
        query_params,
    }
}

fn value_matches(
    s: &Section<'_>,
    key: &str,
    header: bool,
    errs: &mut FieldErrors,
) -> Vec<ValueMatch> {
    let mut out: Vec<ValueMatch> = Vec::new();
    for (i, v) in list(s, key, 16, errs).iter().enumerate() {
        let path = format!("{}[{i}]", s.path(key));
        let m = Section::open(Some(v), path.clone(), VALUE_MATCH, errs);
        let name = required_str(&m, "name", errs);
        let value = required_str(&m, "value", errs);
        let kind = match m.str("type", errs) {
            None | Some("Exact") => ValueMatchKind::Exact,
            Some("RegularExpression") => ValueMatchKind::RegularExpression,
            Some(other) => {
                errs.push(
                    m.path("type"),
                    format!("{other:?} is not a match type; expected Exact or RegularExpression"),
                );
                ValueMatchKind::Exact
            }
        };
        let name = if header {
            let lower = name.to_ascii_lowercase();
            if http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
                errs.push(m.path("name"), format!("{name:?} is not a header name"));
            }
            lower
        } else {
            name
        };
        if kind == ValueMatchKind::RegularExpression {
            if let Err(why) = compile(&value) {
                errs.push(m.path("value"), why);
            }
        }
        // Gateway API: one match per name (a second could never differ).
        let same = |a: &str, b: &str| {
            if header {
                a.eq_ignore_ascii_case(b)
            } else {
                a == b
            }
        };
        if out.iter().any(|o| same(&o.name, &name)) {
            errs.push(m.path("name"), format!("{name:?} is matched twice"));
        }
        out.push(ValueMatch { name, value, kind });
    }
    out
}

fn filter(v: &Value, path: &str, errs: &mut FieldErrors) -> Option<Filter> {
    let keys: Vec<&str> = std::iter::once("type")
        .chain(FILTER_TYPES.iter().map(|(_, k)| *k))
        .collect();
    let s = Section::open(Some(v), path.to_string(), &keys, errs);
    if !v.is_object() {
        return None;
    }
    let Some(kind) = s.str("type", errs) else {
        if !s.has("type") {
            errs.push(s.path("type"), "is required: the filter's type");
        }
        return None;
    };
    let Some((_, key)) = FILTER_TYPES.iter().find(|(t, _)| *t == kind) else {
        let known: Vec<&str> = FILTER_TYPES.iter().map(|(t, _)| *t).collect();
        errs.push(
            s.path("type"),
            format!(
                "{kind:?} is not a filter type; expected one of {}",
                known.join(", ")
            ),
        );
        return None;
    };
    for (_, other) in FILTER_TYPES.iter().filter(|(_, k)| k != key) {
        if s.has(other) {
            errs.push(s.path(other), format!("does not belong to a {kind} filter"));
        }
    }
    if !s.has(key) {
        errs.push(s.path(key), format!("is required for a {kind} filter"));
        return None;
    }
    Some(match kind {
        "RequestHeaderModifier" => Filter::RequestHeaderModifier(header_mod(&s, key, errs)),
        "ResponseHeaderModifier" => Filter::ResponseHeaderModifier(header_mod(&s, key, errs)),
        "URLRewrite" => {
            let r = s.section(key, REWRITE, errs);
            Filter::UrlRewrite(UrlRewrite {
                hostname: r.str("hostname", errs).and_then(|h| {
                    plain_hostname(h, &r.path("hostname"), errs).then(|| h.to_ascii_lowercase())
                }),
                path: r.has("path").then(|| path_mod(&r, errs)).flatten(),
            })
        }
        _ => {
            let r = s.section(key, REDIRECT, errs);
            let scheme = r.str("scheme", errs).and_then(|sc| match sc {
                "http" | "https" => Some(sc.to_string()),
                other => {
                    errs.push(
                        r.path("scheme"),
                        format!("{other:?}: expected http or https"),
                    );
                    None
                }
            });
            let port = r
                .has("port")
                .then(|| r.u32("port", 1..=65535, 0, errs))
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p != 0);
            let status_code = r.u32("statusCode", 301..=308, 302, errs);
            if !matches!(status_code, 301 | 302 | 303 | 307 | 308) {
                errs.push(
                    r.path("statusCode"),
                    format!("{status_code} is not a redirect; expected 301, 302, 303, 307 or 308"),
                );
            }
            Filter::RequestRedirect(Redirect {
                scheme,
                hostname: r.str("hostname", errs).and_then(|h| {
                    plain_hostname(h, &r.path("hostname"), errs).then(|| h.to_ascii_lowercase())
                }),
                port,
                path: r.has("path").then(|| path_mod(&r, errs)).flatten(),
                status_code: u16::try_from(status_code).unwrap_or(302),
            })
        }
    })
}

fn header_mod(s: &Section<'_>, key: &str, errs: &mut FieldErrors) -> HeaderModifier {
    let m = s.section(key, HEADER_MOD, errs);
    let pairs = |field: &str, errs: &mut FieldErrors| -> Vec<HeaderValuePair> {
        let mut out: Vec<HeaderValuePair> = Vec::new();
        for (i, v) in list(&m, field, 32, errs).iter().enumerate() {
            let p = Section::open(Some(v), format!("{}[{i}]", m.path(field)), PAIR, errs);
            let name = required_str(&p, "name", errs).to_ascii_lowercase();
            let value = required_str(&p, "value", errs);
            header_name(&name, &p.path("name"), errs);
            if http::HeaderValue::from_str(&value).is_err() {
                errs.push(
                    p.path("value"),
                    "not a valid header value (control characters?)",
                );
            }
            if field == "set" && out.iter().any(|o| o.name == name) {
                errs.push(p.path("name"), format!("{name:?} is set twice"));
            }
            out.push(HeaderValuePair { name, value });
        }
        out
    };
    let set = pairs("set", errs);
    let add = pairs("add", errs);
    let mut remove = Vec::new();
    for (i, v) in list(&m, "remove", 32, errs).iter().enumerate() {
        let at = format!("{}[{i}]", m.path("remove"));
        match v {
            Value::String(n) => {
                header_name(n, &at, errs);
                remove.push(n.to_ascii_lowercase());
            }
            other => errs.push(
                at,
                format!("must be a header name, not {}", type_name(other)),
            ),
        }
    }
    HeaderModifier { set, add, remove }
}

fn path_mod(parent: &Section<'_>, errs: &mut FieldErrors) -> Option<PathModifier> {
    let p = parent.section("path", PATH_MOD, errs);
    let kind = p.str("type", errs);
    let read = |key: &str, errs: &mut FieldErrors| {
        let v = required_str(&p, key, errs);
        if let Err(why) = plain_path(&v) {
            errs.push(p.path(key), why);
        }
        v
    };
    match kind {
        Some("ReplaceFullPath") => {
            Some(PathModifier::ReplaceFullPath(read("replaceFullPath", errs)))
        }
        Some("ReplacePrefixMatch") => Some(PathModifier::ReplacePrefixMatch(read(
            "replacePrefixMatch",
            errs,
        ))),
        Some(other) => {
            errs.push(
                p.path("type"),
                format!("{other:?}: expected ReplaceFullPath or ReplacePrefixMatch"),
            );
            None
        }
        None => {
            errs.push(
                p.path("type"),
                "is required: ReplaceFullPath or ReplacePrefixMatch",
            );
            None
        }
    }
}

fn backend(v: &Value, path: &str, errs: &mut FieldErrors) -> Option<Backend> {
    let s = Section::open(Some(v), path.to_string(), BACKEND, errs);
    if !v.is_object() {
        return None;
    }
    let service = required_str(&s, "service", errs);
    if !service.is_empty() {
        if let Err(why) = validate_service_name(&service) {
            errs.push(s.path("service"), why);
        }
    }
    let port = s
        .has("port")
        .then(|| s.u32("port", 1..=65535, 1, errs))
        .and_then(|p| u16::try_from(p).ok());
    let weight = s.u32("weight", 0..=MAX_WEIGHT, 1, errs);
    Some(Backend {
        service,
        port,
        weight,
    })
}

fn jwt(parent: &Section<'_>, errs: &mut FieldErrors) -> JwtAuth {
    let s = parent.section("jwt", JWT, errs);
    let issuer = required_str(&s, "issuer", errs);
    let audiences = strings(&s, "audiences", 16, errs);
    let jwks_uri = s.str("jwksUri", errs).map(str::to_string);
    let jwks_file = s.str("jwksFile", errs).map(str::to_string);
    match (&jwks_uri, &jwks_file) {
        (None, None) => errs.push(s.path("jwksUri"), "is required: a JWKS URL (or jwksFile)"),
        (Some(_), Some(_)) => errs.push(s.path("jwksFile"), "give jwksUri or jwksFile, not both"),
        (Some(u), None) => {
            let ok = u.parse::<http::Uri>().ok().filter(|uri| {
                matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some()
            });
            if ok.is_none() {
                errs.push(
                    s.path("jwksUri"),
                    format!("{u:?} is not an http:// or https:// URL"),
                );
            }
        }
        (None, Some(f)) => {
            if !f.starts_with('/') {
                errs.push(
                    s.path("jwksFile"),
                    format!("{f:?} must be an absolute path"),
                );
            }
        }
    }
    let mut algorithms = strings(&s, "algorithms", 9, errs);
    for (i, a) in algorithms.iter().enumerate() {
        if !JWT_ALGORITHMS.contains(&a.as_str()) {
            let why = match a.as_str() {
                "none" => "unsigned tokens are never accepted".to_string(),
                x if x.starts_with("HS") => "HMAC is refused: a JWKS holds public keys, and a public key must never verify as a shared secret".into(),
                _ => format!("expected one of {}", JWT_ALGORITHMS.join(", ")),
            };
            errs.push(
                format!("{}[{i}]", s.path("algorithms")),
                format!("{a:?}: {why}"),
            );
        }
    }
    if algorithms.is_empty() {
        algorithms = DEFAULT_ALGORITHMS.iter().map(|a| a.to_string()).collect();
    }
    let leeway = s.duration("leeway", AtLeast::Zero, Duration::from_secs(30), errs);
    if leeway > MAX_LEEWAY {
        errs.push(
            s.path("leeway"),
            "at most 5m: a longer skew accepts expired tokens",
        );
    }
    let mut claims_to_headers = Vec::new();
    for (i, v) in list(&s, "claimsToHeaders", 16, errs).iter().enumerate() {
        let c = Section::open(
            Some(v),
            format!("{}[{i}]", s.path("claimsToHeaders")),
            &["claim", "header"],
            errs,
        );
        let claim = required_str(&c, "claim", errs);
        let header = required_str(&c, "header", errs).to_ascii_lowercase();
        header_name(&header, &c.path("header"), errs);
        claims_to_headers.push(ClaimHeader { claim, header });
    }
    let mut required_claims = Vec::new();
    for (i, v) in list(&s, "requiredClaims", 16, errs).iter().enumerate() {
        let c = Section::open(
            Some(v),
            format!("{}[{i}]", s.path("requiredClaims")),
            &["claim", "values"],
            errs,
        );
        let claim = required_str(&c, "claim", errs);
        let values = strings(&c, "values", 64, errs);
        if values.is_empty() {
            errs.push(
                c.path("values"),
                "is required: the values the claim may hold",
            );
        }
        required_claims.push(RequiredClaim { claim, values });
    }
    let forward_authorization = s.bool("forwardAuthorization", false, errs);
    JwtAuth {
        issuer,
        audiences,
        jwks_uri,
        jwks_file,
        algorithms,
        leeway,
        claims_to_headers,
        forward_authorization,
        required_claims,
    }
}

fn rate_limit(parent: &Section<'_>, errs: &mut FieldErrors) -> RateLimit {
    let s = parent.section("rateLimit", RATE, errs);
    if !s.has("requests") {
        errs.push(
            s.path("requests"),
            "is required: how many requests per `per`",
        );
    }
    let requests = s.u32("requests", 1..=u32::MAX, 1, errs);
    let per = s.duration(
        "per",
        AtLeast::Min(Duration::from_millis(1)),
        Duration::from_secs(1),
        errs,
    );
    if per > Duration::from_secs(86_400) {
        errs.push(s.path("per"), "at most 24h");
    }
    let burst = s.u32("burst", 1..=u32::MAX, requests, errs);
    let key = s.str("key", errs).unwrap_or("client").to_string();
    let key_ok = match key.split_once(':') {
        None => key == "client",
        Some(("header", h)) => {
            http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).is_ok()
        }
        Some(("claim", c)) => !c.is_empty(),
        Some(_) => false,
    };
    if !key_ok {
        errs.push(
            s.path("key"),
            format!("{key:?}: expected client, header:NAME or claim:NAME"),
        );
    }
    let global = s.bool("global", false, errs);
    RateLimit {
        requests,
        per,
        burst,
        // Header names are compared without case; claim names with it.
        key: match key.split_once(':') {
            Some(("header", h)) => format!("header:{}", h.to_ascii_lowercase()),
            _ => key,
        },
        global,
    }
}

fn cors(parent: &Section<'_>, errs: &mut FieldErrors) -> Cors {
    let s = parent.section("cors", CORS, errs);
    let allow_origins = strings(&s, "allowOrigins", 64, errs);
    if allow_origins.is_empty() {
        errs.push(
            s.path("allowOrigins"),
            "is required: the origins allowed, or \"*\"",
        );
    }
    for (i, o) in allow_origins.iter().enumerate() {
        let ok = o == "*"
            || o.parse::<http::Uri>().is_ok_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https"))
                    && u.host().is_some()
                    && u.path_and_query()
                        .is_none_or(|p| p.as_str() == "/" || p.as_str().is_empty())
                    && !o.ends_with('/')
            });
        if !ok {
            errs.push(
                format!("{}[{i}]", s.path("allowOrigins")),
                format!("{o:?}: an origin is scheme://host[:port], or *"),
            );
        }
    }
    let allow_methods = strings(&s, "allowMethods", 16, errs);
    for (i, m) in allow_methods.iter().enumerate() {
        if !METHODS.contains(&m.as_str()) && m != "*" {
            errs.push(
                format!("{}[{i}]", s.path("allowMethods")),
                format!("{m:?} is not a method"),
            );
        }
    }
    let names = |key: &str, errs: &mut FieldErrors| -> Vec<String> {
        let v = strings(&s, key, 64, errs);
        for (i, n) in v.iter().enumerate() {
            if n != "*" {
                header_name(
                    &n.to_ascii_lowercase(),
                    &format!("{}[{i}]", s.path(key)),
                    errs,
                );
            }
        }
        v.into_iter().map(|n| n.to_ascii_lowercase()).collect()
    };
    let allow_headers = names("allowHeaders", errs);
    let expose_headers = names("exposeHeaders", errs);
    let allow_credentials = s.bool("allowCredentials", false, errs);
    if allow_credentials && allow_origins.iter().any(|o| o == "*") {
        errs.push(
            s.path("allowCredentials"),
            "cannot be true with allowOrigins \"*\" (browsers refuse credentials for a wildcard origin); list the origins",
        );
    }
    let max_age = s
        .has("maxAge")
        .then(|| s.duration("maxAge", AtLeast::Zero, Duration::ZERO, errs));
    Cors {
        allow_origins,
        allow_methods,
        allow_headers,
        expose_headers,
        allow_credentials,
        max_age,
    }
}

/// A list of strings under `key`.
fn strings(s: &Section<'_>, key: &str, max: usize, errs: &mut FieldErrors) -> Vec<String> {
    let mut out = Vec::new();
    for (i, v) in list(s, key, max, errs).iter().enumerate() {
        match v {
            Value::String(x) => out.push(x.clone()),
            other => errs.push(
                format!("{}[{i}]", s.path(key)),
                format!("must be a string, not {}", type_name(other)),
            ),
        }
    }
    out
}

// === small readers ===

/// A list under `key` (absent: empty), at most `max` long.
fn list<'a>(s: &Section<'a>, key: &str, max: usize, errs: &mut FieldErrors) -> &'a [Value] {
    match s.get(key) {
        None => &[],
        Some(Value::Array(items)) if items.len() > max => {
            errs.push(
                s.path(key),
                format!("{} entries; at most {max}", items.len()),
            );
            &[]
        }
        Some(Value::Array(items)) => items,
        Some(other) => {
            errs.push(
                s.path(key),
                format!("must be a list, not {}", type_name(other)),
            );
            &[]
        }
    }
}

fn required_str(s: &Section<'_>, key: &str, errs: &mut FieldErrors) -> String {
    match s.str(key, errs) {
        Some(v) => v.to_string(),
        None => {
            if !s.has(key) {
                errs.push(s.path(key), "is required");
            }
            String::new()
        }
    }
}

fn header_name(name: &str, at: &str, errs: &mut FieldErrors) {
    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        errs.push(at, format!("{name:?} is not a header name"));
    }
}

/// A route hostname: a DNS name, or `*.` and one.
fn hostname(v: &Value, at: &str, errs: &mut FieldErrors) -> Option<String> {
    let Value::String(h) = v else {
        errs.push(at, format!("must be a hostname, not {}", type_name(v)));
        return None;
    };
    let bare = h.strip_prefix("*.").unwrap_or(h);
    plain_hostname(bare, at, errs).then(|| h.to_ascii_lowercase())
}

/// A DNS name without port or wildcard (Gateway API refuses IP addresses).
fn plain_hostname(h: &str, at: &str, errs: &mut FieldErrors) -> bool {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    let why = if h.len() > 253 {
        Some("longer than 253 characters".to_string())
    } else if h.parse::<std::net::IpAddr>().is_ok() {
        Some("an IP address; a route names hosts (Gateway API refuses addresses)".into())
    } else if !h.split('.').all(label_ok) {
        Some("not a DNS name (letters, digits and `-` between dots; no port, `*` only as a leading `*.`)".into())
    } else {
        None
    };
    if let Some(why) = why {
        errs.push(at, format!("{h:?}: {why}"));
        return false;
    }
    true
}

/// An absolute, normalized path without query: what `Exact` and
/// `PathPrefix` compare with the request's normalized path.
fn plain_path(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("{p:?} must start with /"));
    }
    if p.contains(['?', '#']) {
        return Err(format!("{p:?}: no query or fragment in a path"));
    }
    if p.contains("//") || p.split('/').any(|s| s == "." || s == "..") {
        return Err(format!("{p:?} is not normalized (no //, . or .. segments)"));
    }
    if p.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!("{p:?} holds spaces or control characters"));
    }
    Ok(())
}

/// Compiles a pattern as the table will (anchored, size-bounded).
pub(super) fn compile(pattern: &str) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(MAX_REGEX_BYTES)
        .build()
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(_) => {
                format!("{pattern:?} compiles too large (over {MAX_REGEX_BYTES} bytes)")
            }
            e => format!(
                "not a valid regular expression: {}",
                one_line(&e.to_string())
            ),
        })
}

fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}
