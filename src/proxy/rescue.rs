//! The one place where failures the mesh creates itself become HTTP
//! responses (linkerd's `ServerRescue`). Everything else returns
//! [`MeshError`]; nothing else writes an `x-mesh-error` header.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;
use std::net::SocketAddr;

pub const MESH_ERROR: &str = "x-mesh-error";

/// A request the mesh answers itself instead of an upstream.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("no service named {0:?} is registered")]
    UnknownService(String),
    #[error("service {0:?} has no ready endpoints")]
    NoEndpoints(String),
    #[error("cannot connect to {addr}: {reason}")]
    ConnectFailed { addr: SocketAddr, reason: String },
    #[error("upstream {addr} failed before answering: {reason}")]
    UpstreamReset { addr: SocketAddr, reason: String },
    #[error("the request would loop back into this proxy")]
    LoopDetected,
    #[error("bad request: {0}")]
    BadRequest(String),
}

impl MeshError {
    /// The `x-mesh-error` value (DESIGN's list).
    pub fn reason(&self) -> &'static str {
        match self {
            MeshError::UnknownService(_) => "unknown-service",
            MeshError::NoEndpoints(_) => "no-endpoints",
            MeshError::ConnectFailed { .. } => "connect-failed",
            MeshError::UpstreamReset { .. } => "upstream-reset",
            MeshError::LoopDetected => "loop-detected",
            MeshError::BadRequest(_) => "bad-request",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            MeshError::UnknownService(_) | MeshError::NoEndpoints(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            MeshError::ConnectFailed { .. } | MeshError::UpstreamReset { .. } => {
                StatusCode::BAD_GATEWAY
            }
            MeshError::LoopDetected => StatusCode::LOOP_DETECTED,
            MeshError::BadRequest(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// The response the caller sees: status, `x-mesh-error`, and the
    /// message as a one-line plain-text body.
    pub fn to_response(&self) -> Response<Full<Bytes>> {
        let mut resp = Response::new(Full::new(Bytes::from(format!("{self}\n"))));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(MESH_ERROR, HeaderValue::from_static(self.reason()));
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_status_and_reason() {
        let cases = [
            (
                MeshError::UnknownService("x".into()),
                503,
                "unknown-service",
            ),
            (MeshError::NoEndpoints("x".into()), 503, "no-endpoints"),
            (
                MeshError::ConnectFailed {
                    addr: "10.0.0.1:80".parse().unwrap(),
                    reason: "refused".into(),
                },
                502,
                "connect-failed",
            ),
            (MeshError::LoopDetected, 508, "loop-detected"),
            (MeshError::BadRequest("no host".into()), 400, "bad-request"),
        ];
        for (err, status, reason) in cases {
            let r = err.to_response();
            assert_eq!(r.status().as_u16(), status);
            assert_eq!(r.headers()[MESH_ERROR], reason);
        }
    }
}
