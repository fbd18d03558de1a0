//! Fallbacks: what answers when a call fails after its retries, or is
//! refused at once (breaker open, bulkhead full, no endpoints).
//!
//! A `service` fallback sends the same call to another service, through
//! that service's own policy (the call path does it, for every protocol).
//! A `static` fallback is a fixed HTTP response, made here. Either way the
//! answer carries `x-mesh-fallback: <reason>`, so the caller can tell.

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use std::collections::BTreeMap;

pub const MESH_FALLBACK: &str = "x-mesh-fallback";

/// A policy's static fallback, answering for a call that failed with
/// `reason`.
pub fn static_response(
    status: u16,
    headers: &BTreeMap<String, String>,
    body: &str,
    reason: &'static str,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    for (k, v) in headers {
        // Validated when the policy was applied; skip anything odd anyway.
        if let (Ok(k), Ok(v)) = (
            HeaderName::try_from(k.as_str()),
            HeaderValue::try_from(v.as_str()),
        ) {
            resp.headers_mut().insert(k, v);
        }
    }
    mark(resp.headers_mut(), reason);
    resp
}

/// Marks an answer as a fallback's, for a call that failed with `reason`.
pub fn mark(headers: &mut http::HeaderMap, reason: &'static str) {
    headers.insert(MESH_FALLBACK, HeaderValue::from_static(reason));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_static_fallback_says_why_it_answered() {
        let headers = BTreeMap::from([
            ("content-type".to_string(), "application/json".to_string()),
            ("bad name".to_string(), "x".to_string()),
        ]);
        let r = static_response(299, &headers, "{}", "breaker-open");
        assert_eq!(r.status(), 299);
        assert_eq!(r.headers()["content-type"], "application/json");
        assert_eq!(r.headers()[MESH_FALLBACK], "breaker-open");
        assert_eq!(r.headers().len(), 2);
        assert_eq!(static_response(1000, &headers, "", "timeout").status(), 200);
    }
}
