//! gRPC awareness: which calls are gRPC, and how their status classifies
//! for breakers and retries. (Mesh errors in gRPC's form are made where
//! every mesh error becomes a response: `rescue`.)

use http::header::{HeaderMap, CONTENT_TYPE};

pub const GRPC_STATUS: &str = "grpc-status";
pub const GRPC_MESSAGE: &str = "grpc-message";
pub const GRPC_TIMEOUT: &str = "grpc-timeout";

/// gRPC status codes the mesh uses or classifies.
pub mod code {
    pub const INVALID_ARGUMENT: u32 = 3;
    pub const DEADLINE_EXCEEDED: u32 = 4;
    pub const PERMISSION_DENIED: u32 = 7;
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    pub const UNIMPLEMENTED: u32 = 12;
    pub const INTERNAL: u32 = 13;
    pub const UNAVAILABLE: u32 = 14;
    pub const UNAUTHENTICATED: u32 = 16;
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

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

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
}
