//! A rule's filters as pure functions of the request's parts: header
//! modifiers, the path and host rewrite, the redirect's `Location`. In the
//! order Gateway API gives them: a redirect answers at once; otherwise the
//! request header modifiers and the rewrite change what goes upstream,
//! and the response header modifiers change what comes back.

use super::route::{Filter, HeaderModifier, PathModifier, Redirect, RouteRule};
use http::header::{HeaderMap, HeaderName, HeaderValue};

/// The rule's redirect, if it has one.
pub fn redirect(rule: &RouteRule) -> Option<&Redirect> {
    rule.filters.iter().find_map(|f| match f {
        Filter::RequestRedirect(r) => Some(r),
        _ => None,
    })
}

/// Applies every `RequestHeaderModifier` (or, `response`, every
/// `ResponseHeaderModifier`) in order.
pub fn modify_headers(rule: &RouteRule, headers: &mut HeaderMap, response: bool) {
    for f in &rule.filters {
        match (f, response) {
            (Filter::RequestHeaderModifier(m), false)
            | (Filter::ResponseHeaderModifier(m), true) => apply(m, headers),
            _ => {}
        }
    }
}

/// `set` replaces every value, `add` appends one, `remove` drops all.
/// Names and values were checked at apply time.
fn apply(m: &HeaderModifier, headers: &mut HeaderMap) {
    let parse = |name: &str, value: &str| {
        Some((
            HeaderName::from_bytes(name.as_bytes()).ok()?,
            HeaderValue::from_str(value).ok()?,
        ))
    };
    for p in &m.set {
        if let Some((n, v)) = parse(&p.name, &p.value) {
            headers.insert(n, v);
        }
    }
    for p in &m.add {
        if let Some((n, v)) = parse(&p.name, &p.value) {
            headers.append(n, v);
        }
    }
    for name in &m.remove {
        if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
            headers.remove(n);
        }
    }
}

/// The rule's `URLRewrite`: the new host, if any, and the new path
/// (`path` is the normalized request path, `prefix` the `PathPrefix`
/// that matched).
pub fn rewrite(
    rule: &RouteRule,
    path: &str,
    prefix: Option<&str>,
) -> (Option<String>, Option<String>) {
    for f in &rule.filters {
        if let Filter::UrlRewrite(r) = f {
            let new_path = r.path.as_ref().map(|m| replace(m, path, prefix));
            return (r.hostname.clone(), new_path);
        }
    }
    (None, None)
}

/// A path modifier applied to `path`. `ReplacePrefixMatch` swaps the
/// matched prefix for the replacement, element-wise: prefix `/api`,
/// replacement `/`: `/api/x` → `/x`, `/api` → `/`; replacement `/v2`:
/// `/api/x` → `/v2/x`.
pub fn replace(m: &PathModifier, path: &str, prefix: Option<&str>) -> String {
    match m {
        PathModifier::ReplaceFullPath(p) => p.clone(),
        PathModifier::ReplacePrefixMatch(with) => {
            let bare = prefix.unwrap_or("/").trim_end_matches('/');
            let rest = path.strip_prefix(bare).unwrap_or(path);
            let with = with.trim_end_matches('/');
            let joined = format!("{with}{rest}");
            if joined.is_empty() {
                "/".into()
            } else if joined.starts_with('/') {
                joined
            } else {
                format!("/{joined}")
            }
        }
    }
}

/// The `Location` of a redirect: each part the filter does not set is the
/// request's own. A port is written only when it is not the scheme's
/// default; a new scheme without a port drops the request's port
/// (Gateway API: the well-known port of the new scheme).
pub fn location(
    r: &Redirect,
    req_scheme: &str,
    req_host: &str,
    req_port: Option<u16>,
    path: &str,
    prefix: Option<&str>,
    query: Option<&str>,
) -> String {
    let scheme = r.scheme.as_deref().unwrap_or(req_scheme);
    let host = r.hostname.as_deref().unwrap_or(req_host);
    let port = match (r.port, &r.scheme) {
        (Some(p), _) => Some(p),
        (None, Some(s)) if s != req_scheme => None,
        (None, _) => req_port,
    };
    let default = if scheme == "https" { 443 } else { 80 };
    let path = match &r.path {
        Some(m) => replace(m, path, prefix),
        None => path.to_string(),
    };
    let mut out = format!("{scheme}://{host}");
    if let Some(p) = port.filter(|p| *p != default) {
        out.push_str(&format!(":{p}"));
    }
    out.push_str(&path);
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        out.push('?');
        out.push_str(q);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_prefix_is_element_wise() {
        let strip = PathModifier::ReplacePrefixMatch("/".into());
        let v2 = PathModifier::ReplacePrefixMatch("/v2/".into());
        let cases = [
            (&strip, "/api/x", "/api", "/x"),
            (&strip, "/api", "/api", "/"),
            (&strip, "/api/", "/api/", "/"),
            (&v2, "/api/x/y", "/api", "/v2/x/y"),
            (&v2, "/api", "/api", "/v2"),
            (&strip, "/anything", "/", "/anything"),
        ];
        for (m, path, prefix, want) in cases {
            assert_eq!(
                replace(m, path, Some(prefix)),
                want,
                "{path} under {prefix}"
            );
        }
        let full = PathModifier::ReplaceFullPath("/fixed".into());
        assert_eq!(replace(&full, "/api/x", Some("/api")), "/fixed");
    }

    #[test]
    fn redirect_locations() {
        let to_https = Redirect {
            scheme: Some("https".into()),
            status_code: 301,
            ..Redirect::default()
        };
        assert_eq!(
            location(
                &to_https,
                "http",
                "shop.example.com",
                Some(8080),
                "/a",
                None,
                Some("q=1")
            ),
            "https://shop.example.com/a?q=1"
        );
        let moved = Redirect {
            hostname: Some("new.example.com".into()),
            port: Some(8443),
            path: Some(PathModifier::ReplacePrefixMatch("/v2".into())),
            ..Redirect::default()
        };
        assert_eq!(
            location(
                &moved,
                "https",
                "old.example.com",
                None,
                "/v1/x",
                Some("/v1"),
                None
            ),
            "https://new.example.com:8443/v2/x"
        );
    }
}
