//! gRPC awareness: which calls are gRPC, how their status classifies for
//! breakers and retries, and mesh errors as trailers-only gRPC responses
//! (a gRPC client reads `grpc-status`, not the HTTP status).

use super::rescue::{MeshError, MESH_ERROR};
use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use http::Response;
use http_body_util::Full;

pub const GRPC_STATUS: &str = "grpc-status";
const GRPC_MESSAGE: &str = "grpc-message";

/// gRPC status codes the mesh uses or classifies.
pub mod code {
    pub const INVALID_ARGUMENT: u32 = 3;
    pub const DEADLINE_EXCEEDED: u32 = 4;
    pub const INTERNAL: u32 = 13;
    pub const UNAVAILABLE: u32 = 14;
}

/// Whether a message is gRPC (`application/grpc`, `application/grpc+proto`,
/// ...), not gRPC-web (whose trailers travel inside the body).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(CONTENT_TYPE).is_some_and(|v| {
        v.as_bytes()
            .strip_prefix(b"application/grpc")
            .is_some_and(|rest| rest.is_empty() || rest[0] == b'+' || rest[0] == b';')
    })
}

/// The `grpc-status` in `headers` (trailers, or the headers of a
/// trailers-only response).
pub fn status(headers: &HeaderMap) -> Option<u32> {
    headers.get(GRPC_STATUS)?.to_str().ok()?.trim().parse().ok()
}

/// Codes that mean the server failed, as opposed to the caller's mistake
/// (INVALID_ARGUMENT, NOT_FOUND, ...): UNKNOWN, DEADLINE_EXCEEDED,
/// INTERNAL, UNAVAILABLE, DATA_LOSS. These count for breakers and outlier
/// ejection, like a 5xx.
pub fn is_failure(code: u32) -> bool {
    matches!(code, 2 | 4 | 13 | 14 | 15)
}

/// The status a mesh error reports to a gRPC caller.
fn code_for(err: &MeshError) -> u32 {
    match err {
        MeshError::Timeout(_) => code::DEADLINE_EXCEEDED,
        MeshError::BadRequest(_) => code::INVALID_ARGUMENT,
        MeshError::LoopDetected => code::INTERNAL,
        _ => code::UNAVAILABLE,
    }
}

/// A trailers-only gRPC response for a mesh error: HTTP 200 with
/// `grpc-status`, `grpc-message` and `x-mesh-error` in the headers.
pub fn error_response(err: &MeshError) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert(GRPC_STATUS, HeaderValue::from(code_for(err)));
    let msg = percent_encode(&format!("mesh: {}: {err}", err.reason()));
    if let Ok(v) = HeaderValue::from_str(&msg) {
        h.insert(GRPC_MESSAGE, v);
    }
    h.insert(MESH_ERROR, HeaderValue::from_static(err.reason()));
    resp
}

/// `grpc-message` is percent-encoded outside printable ASCII (and `%`).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_grpc_and_its_status() {
        let mut h = HeaderMap::new();
        assert!(!is_grpc(&h));
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        assert!(is_grpc(&h));
        h.insert(GRPC_STATUS, HeaderValue::from_static("14"));
        assert_eq!(status(&h), Some(14));
        assert!(is_failure(14) && is_failure(13) && !is_failure(0) && !is_failure(5));
    }

    #[test]
    fn mesh_errors_become_trailers_only_responses() {
        let r = error_response(&MeshError::BreakerOpen("orders".into()));
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()[GRPC_STATUS], "14");
        assert_eq!(r.headers()[MESH_ERROR], "breaker-open");
        assert!(r.headers()[GRPC_MESSAGE]
            .to_str()
            .unwrap()
            .contains("breaker-open"));
        let t = error_response(&MeshError::Timeout(std::time::Duration::from_secs(1)));
        assert_eq!(t.headers()[GRPC_STATUS], "4");
        assert_eq!(percent_encode("50% é"), "50%25 %C3%A9");
    }
}
