//! CORS at the edge (the Fetch standard's CORS protocol), per rule.
//!
//! A preflight (`OPTIONS` with `Origin` and
//! `Access-Control-Request-Method`) is matched against the routes as the
//! request it announces (its method), and answered here: 204 with the
//! `Access-Control-Allow-*` headers when origin, method and headers are
//! allowed, else 403; it never reaches the backend nor needs a token (a
//! browser sends none with it). An actual cross-origin request from an
//! allowed origin gets `Access-Control-Allow-Origin` (and `-Credentials`,
//! `-Expose-Headers`) on its response; every answer varies by `Origin`.
//!
//! tower-http's `CorsLayer` wraps a tower service; the gateway's rules are
//! not services, so the same rules are written here, in one place.

use super::route::Cors;
use http::header::{self, HeaderMap, HeaderValue};
use http::Method;

/// The method a preflight announces, if `method`/`headers` are one.
pub fn preflight_method(method: &Method, headers: &HeaderMap) -> Option<Method> {
    if method != Method::OPTIONS || !headers.contains_key(header::ORIGIN) {
        return None;
    }
    let v = headers.get(header::ACCESS_CONTROL_REQUEST_METHOD)?;
    Method::from_bytes(v.as_bytes()).ok()
}

fn origin_allowed(cors: &Cors, origin: &str) -> bool {
    cors.allow_origins
        .iter()
        .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
}

/// What `Access-Control-Allow-Origin` says for `origin`: `*` when every
/// origin is allowed and no credentials are (the cacheable answer), else
/// the origin itself.
fn allow_origin(cors: &Cors, origin: &HeaderValue) -> HeaderValue {
    if !cors.allow_credentials && cors.allow_origins.iter().any(|o| o == "*") {
        HeaderValue::from_static("*")
    } else {
        origin.clone()
    }
}

/// The answer to a preflight: `Ok` headers for a 204, `Err` for a 403.
pub fn preflight(cors: &Cors, request: &HeaderMap, method: &Method) -> Result<HeaderMap, ()> {
    let origin = request.get(header::ORIGIN).ok_or(())?;
    let origin_text = origin.to_str().map_err(|_| ())?;
    if !origin_allowed(cors, origin_text) {
        return Err(());
    }
    let method_ok = cors.allow_methods.is_empty()
        && matches!(*method, Method::GET | Method::HEAD | Method::POST)
        || cors
            .allow_methods
            .iter()
            .any(|m| m == "*" || m == method.as_str());
    if !method_ok {
        return Err(());
    }
    let asked: Vec<String> = request
        .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty())
        .collect();
    let any_header = cors.allow_headers.iter().any(|h| h == "*");
    if !any_header && !asked.iter().all(|h| cors.allow_headers.contains(h)) {
        return Err(());
    }
    let mut out = HeaderMap::new();
    out.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        allow_origin(cors, origin),
    );
    let methods = match cors.allow_methods.is_empty() {
        true => method.as_str().to_string(),
        false if cors.allow_methods.iter().any(|m| m == "*") => method.as_str().to_string(),
        false => cors.allow_methods.join(", "),
    };
    if let Ok(v) = HeaderValue::from_str(&methods) {
        out.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v);
    }
    if !asked.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&asked.join(", ")) {
            out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
        }
    }
    if cors.allow_credentials {
        out.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    if let Some(age) = cors.max_age {
        out.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from(age.as_secs()),
        );
    }
    out.insert(header::VARY, HeaderValue::from_static("Origin"));
    Ok(out)
}

/// Adds the CORS headers of an actual request's response (nothing for a
/// request without `Origin`, or from an origin not allowed).
pub fn decorate(cors: &Cors, origin: Option<&HeaderValue>, response: &mut HeaderMap) {
    response.append(header::VARY, HeaderValue::from_static("Origin"));
    let Some(origin) = origin.filter(|o| o.to_str().is_ok_and(|o| origin_allowed(cors, o))) else {
        return;
    };
    response.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        allow_origin(cors, origin),
    );
    if cors.allow_credentials {
        response.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    if !cors.expose_headers.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&cors.expose_headers.join(", ")) {
            response.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors() -> Cors {
        Cors {
            allow_origins: vec!["https://shop.example.com".into()],
            allow_methods: vec!["GET".into(), "PUT".into()],
            allow_headers: vec!["content-type".into(), "authorization".into()],
            expose_headers: vec!["x-request-id".into()],
            allow_credentials: true,
            max_age: Some(std::time::Duration::from_secs(600)),
        }
    }

    fn request(origin: &str, method: &str, headers: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, origin.parse().unwrap());
        h.insert(
            header::ACCESS_CONTROL_REQUEST_METHOD,
            method.parse().unwrap(),
        );
        if !headers.is_empty() {
            h.insert(
                header::ACCESS_CONTROL_REQUEST_HEADERS,
                headers.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn preflights_are_answered_by_the_rules() {
        let c = cors();
        let ok = preflight(
            &c,
            &request(
                "https://shop.example.com",
                "PUT",
                "Content-Type, Authorization",
            ),
            &Method::PUT,
        )
        .unwrap();
        assert_eq!(
            ok[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://shop.example.com"
        );
        assert_eq!(ok[header::ACCESS_CONTROL_ALLOW_METHODS], "GET, PUT");
        assert_eq!(
            ok[header::ACCESS_CONTROL_ALLOW_HEADERS],
            "content-type, authorization"
        );
        assert_eq!(ok[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(ok[header::ACCESS_CONTROL_MAX_AGE], "600");
        for (origin, method, headers) in [
            ("https://evil.example", "PUT", ""),
            ("https://shop.example.com", "DELETE", ""),
            ("https://shop.example.com", "GET", "x-secret"),
        ] {
            assert!(
                preflight(
                    &c,
                    &request(origin, method, headers),
                    &Method::from_bytes(method.as_bytes()).unwrap()
                )
                .is_err(),
                "{origin} {method} {headers}"
            );
        }
        let mut resp = HeaderMap::new();
        decorate(
            &c,
            Some(&"https://shop.example.com".parse().unwrap()),
            &mut resp,
        );
        assert_eq!(resp[header::ACCESS_CONTROL_EXPOSE_HEADERS], "x-request-id");
        let mut other = HeaderMap::new();
        decorate(
            &c,
            Some(&"https://evil.example".parse().unwrap()),
            &mut other,
        );
        assert!(!other.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
        assert_eq!(
            preflight_method(&Method::OPTIONS, &request("https://a", "PUT", "")),
            Some(Method::PUT)
        );
        assert_eq!(
            preflight_method(&Method::GET, &request("https://a", "PUT", "")),
            None
        );
    }
}
