//! The one place where failures the mesh creates itself become responses
//! (linkerd's `ServerRescue`). Handlers return `Result<_, MeshError>`;
//! each listener calls [`render`] once, which answers in HTTP's form or,
//! for a gRPC caller, as a trailers-only gRPC response (a gRPC client
//! reads `grpc-status`, not the HTTP status). Nothing else writes an
//! `x-mesh-error` header.

use super::body::RespBody;
use super::grpc::{code, GRPC_MESSAGE, GRPC_STATUS};
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{Either, Full};
use std::net::SocketAddr;

pub const MESH_ERROR: &str = "x-mesh-error";
pub const RATELIMIT_LIMIT: http::HeaderName = http::HeaderName::from_static("ratelimit-limit");
pub const RATELIMIT_REMAINING: http::HeaderName =
    http::HeaderName::from_static("ratelimit-remaining");
pub const RATELIMIT_RESET: http::HeaderName = http::HeaderName::from_static("ratelimit-reset");

/// A request the mesh answers itself instead of an upstream.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("no service named {0:?} is registered")]
    UnknownService(String),
    /// A host outside the mesh (explicit mode, CONNECT) whose name does
    /// not resolve: the caller asked for the network, not for a service.
    #[error("cannot resolve {host:?}: {reason}")]
    DnsFailed { host: String, reason: String },
    #[error("service {0:?} has no ready endpoints")]
    NoEndpoints(String),
    #[error("cannot connect to {addr}: {reason}")]
    ConnectFailed { addr: SocketAddr, reason: String },
    #[error("upstream {addr} failed before answering: {reason}")]
    UpstreamReset { addr: SocketAddr, reason: String },
    #[error("no response within the {}ms request timeout", .0.as_millis())]
    Timeout(std::time::Duration),
    #[error("circuit breaker for {0:?} is open")]
    BreakerOpen(String),
    #[error("bulkhead for {0:?} is full")]
    BulkheadFull(String),
    #[error("retry budget exhausted after: {0}")]
    RetryBudgetExhausted(Box<MeshError>),
    #[error("the request would loop back into this proxy")]
    LoopDetected,
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The request target is longer than `--max-request-line`.
    #[error("the request target is longer than {limit} bytes")]
    UriTooLong { limit: usize },
    /// The inbound side's concurrency limit (`--inbound-max-concurrent`)
    /// is reached: the app is protected, the caller may retry elsewhere.
    #[error("the app's concurrency limit ({0}) is reached")]
    Overloaded(u32),
    /// Gateway mode: no route matches the request.
    #[error("no route matches {host}{path}")]
    NoRoute { host: String, path: String },
    /// Gateway mode: the route requires a valid bearer token (`reason`
    /// names what was wrong with it, `description` says so to the client).
    #[error("unauthenticated: {description} ({reason})")]
    Unauthenticated {
        reason: &'static str,
        description: &'static str,
        /// No token was sent at all (RFC 6750: then no `error` code).
        missing: bool,
    },
    /// Gateway mode: a valid token lacks a claim the route requires.
    #[error("the token does not grant this route ({reason})")]
    ClaimRefused { reason: &'static str },
    /// Gateway mode: the route's rate limit for this client is spent.
    #[error("rate limit of {limit} reached; retry in {}ms", retry_after.as_millis())]
    RateLimited {
        limit: u32,
        retry_after: std::time::Duration,
        reset: std::time::Duration,
    },
    /// Gateway mode: a CORS preflight from an origin, or for a method or
    /// headers, the route does not allow.
    #[error("CORS preflight refused: {0}")]
    CorsRefused(String),
    /// An AuthorizationPolicy refused the caller (the rule is named).
    #[error("{caller} may not call {service} (rule {rule})")]
    Forbidden {
        caller: String,
        service: String,
        rule: String,
    },
}

impl MeshError {
    /// How the dashboard counts this failure.
    pub fn counted_as(&self) -> crate::telemetry::stats::Failed {
        use crate::telemetry::stats::Failed;
        match self {
            MeshError::Timeout(_) => Failed::Timeout,
            MeshError::BreakerOpen(_) => Failed::ShortCircuited,
            MeshError::BulkheadFull(_) => Failed::Rejected,
            e if e.status().is_client_error() => Failed::BadRequest,
            _ => Failed::Failure,
        }
    }

    /// The `x-mesh-error` value (DESIGN's list).
    pub fn reason(&self) -> &'static str {
        match self {
            MeshError::UnknownService(_) => "unknown-service",
            MeshError::DnsFailed { .. } => "dns-failed",
            MeshError::NoEndpoints(_) => "no-endpoints",
            MeshError::ConnectFailed { .. } => "connect-failed",
            MeshError::UpstreamReset { .. } => "upstream-reset",
            MeshError::Timeout(_) => "timeout",
            MeshError::BreakerOpen(_) => "breaker-open",
            MeshError::BulkheadFull(_) => "bulkhead-full",
            MeshError::RetryBudgetExhausted(_) => "retry-budget-exhausted",
            MeshError::LoopDetected => "loop-detected",
            MeshError::BadRequest(_) | MeshError::UriTooLong { .. } => "bad-request",
            MeshError::Overloaded(_) => "overloaded",
            MeshError::Forbidden { .. } => "forbidden",
            MeshError::NoRoute { .. } => "no-route",
            MeshError::Unauthenticated { .. } => "unauthenticated",
            MeshError::ClaimRefused { .. } => "forbidden",
            MeshError::RateLimited { .. } => "rate-limited",
            MeshError::CorsRefused(_) => "cors-refused",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            MeshError::UnknownService(_)
            | MeshError::NoEndpoints(_)
            | MeshError::BreakerOpen(_)
            | MeshError::BulkheadFull(_)
            | MeshError::RetryBudgetExhausted(_)
            | MeshError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            MeshError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            MeshError::ConnectFailed { .. }
            | MeshError::UpstreamReset { .. }
            | MeshError::DnsFailed { .. } => StatusCode::BAD_GATEWAY,
            MeshError::LoopDetected => StatusCode::LOOP_DETECTED,
            MeshError::BadRequest(_) => StatusCode::BAD_REQUEST,
            MeshError::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            MeshError::Forbidden { .. } => StatusCode::FORBIDDEN,
            MeshError::NoRoute { .. } => StatusCode::NOT_FOUND,
            MeshError::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
            MeshError::ClaimRefused { .. } | MeshError::CorsRefused(_) => StatusCode::FORBIDDEN,
            MeshError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// Whether a policy's fallback may answer instead: the breaker is
    /// open, the bulkhead full, no endpoint is left, or the call failed
    /// (after its retries). Not for bad requests or loops.
    pub fn falls_back(&self) -> bool {
        !matches!(
            self,
            MeshError::UnknownService(_)
                | MeshError::DnsFailed { .. }
                | MeshError::LoopDetected
                | MeshError::BadRequest(_)
                | MeshError::UriTooLong { .. }
                | MeshError::Forbidden { .. }
                | MeshError::NoRoute { .. }
                | MeshError::Unauthenticated { .. }
                | MeshError::ClaimRefused { .. }
                | MeshError::RateLimited { .. }
                | MeshError::CorsRefused(_)
        )
    }

    /// Rejected without reaching any upstream.
    pub fn is_fast_failure(&self) -> bool {
        matches!(self, MeshError::BreakerOpen(_) | MeshError::BulkheadFull(_))
    }

    /// The status a gRPC caller sees.
    pub fn grpc_code(&self) -> u32 {
        match self {
            MeshError::Timeout(_) => code::DEADLINE_EXCEEDED,
            MeshError::BadRequest(_) | MeshError::UriTooLong { .. } => code::INVALID_ARGUMENT,
            MeshError::LoopDetected => code::INTERNAL,
            MeshError::Forbidden { .. } => code::PERMISSION_DENIED,
            MeshError::NoRoute { .. } => code::UNIMPLEMENTED,
            MeshError::Unauthenticated { .. } => code::UNAUTHENTICATED,
            MeshError::ClaimRefused { .. } | MeshError::CorsRefused(_) => code::PERMISSION_DENIED,
            MeshError::RateLimited { .. } => code::RESOURCE_EXHAUSTED,
            _ => code::UNAVAILABLE,
        }
    }

    /// The response an HTTP caller sees: status, `x-mesh-error`, and the
    /// message as a one-line plain-text body.
    fn to_response(&self) -> Response<Full<Bytes>> {
        let mut resp = Response::new(Full::new(Bytes::from(format!("{self}\n"))));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(MESH_ERROR, HeaderValue::from_static(self.reason()));
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        self.add_headers(h);
        resp
    }

    /// What the caller needs beside the status: how to authenticate
    /// (RFC 6750's `WWW-Authenticate`), when to come back (`Retry-After`
    /// and the `RateLimit-*` fields of draft-ietf-httpapi-ratelimit-headers).
    fn add_headers(&self, h: &mut http::HeaderMap) {
        match self {
            MeshError::Unauthenticated {
                description,
                missing,
                ..
            } => {
                let v = match missing {
                    true => "Bearer realm=\"mesh\"".to_string(),
                    false => format!(
                        "Bearer realm=\"mesh\", error=\"invalid_token\", error_description=\"{description}\""
                    ),
                };
                if let Ok(v) = HeaderValue::from_str(&v) {
                    h.insert(http::header::WWW_AUTHENTICATE, v);
                }
            }
            MeshError::ClaimRefused { .. } => {
                h.insert(
                    http::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"mesh\", error=\"insufficient_scope\""),
                );
            }
            MeshError::RateLimited {
                limit,
                retry_after,
                reset,
            } => {
                let secs = |d: &std::time::Duration| d.as_secs() + u64::from(d.subsec_nanos() > 0);
                h.insert(
                    http::header::RETRY_AFTER,
                    HeaderValue::from(secs(retry_after).max(1)),
                );
                h.insert(RATELIMIT_LIMIT, HeaderValue::from(*limit));
                h.insert(RATELIMIT_REMAINING, HeaderValue::from(0));
                h.insert(RATELIMIT_RESET, HeaderValue::from(secs(reset).max(1)));
            }
            _ => {}
        }
    }

    /// A trailers-only gRPC response: HTTP 200 with `grpc-status`,
    /// `grpc-message` and `x-mesh-error` in the headers.
    fn to_grpc_response(&self) -> Response<Full<Bytes>> {
        let mut resp = Response::new(Full::new(Bytes::new()));
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert(GRPC_STATUS, HeaderValue::from(self.grpc_code()));
        let msg = percent_encode(&format!("mesh: {}: {self}", self.reason()));
        if let Ok(v) = HeaderValue::from_str(&msg) {
            h.insert(GRPC_MESSAGE, v);
        }
        h.insert(MESH_ERROR, HeaderValue::from_static(self.reason()));
        self.add_headers(h);
        resp
    }
}

/// A mesh error as its caller can read it: gRPC's form for a gRPC
/// request (`grpc`: [`super::grpc::is_grpc`] of the request), else HTTP's.
pub fn render(e: &MeshError, grpc: bool) -> Response<RespBody> {
    let resp = match grpc {
        true => e.to_grpc_response(),
        false => e.to_response(),
    };
    resp.map(Either::Right)
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
    fn maps_status_and_reason() {
        let cases = [
            (
                MeshError::UnknownService("x".into()),
                503,
                "unknown-service",
            ),
            (MeshError::NoEndpoints("x".into()), 503, "no-endpoints"),
            (
                MeshError::DnsFailed {
                    host: "no-such-host.example".into(),
                    reason: "not found".into(),
                },
                502,
                "dns-failed",
            ),
            (
                MeshError::ConnectFailed {
                    addr: "10.0.0.1:80".parse().unwrap(),
                    reason: "refused".into(),
                },
                502,
                "connect-failed",
            ),
            (MeshError::LoopDetected, 508, "loop-detected"),
            (
                MeshError::Timeout(std::time::Duration::from_secs(1)),
                504,
                "timeout",
            ),
            (MeshError::BreakerOpen("x".into()), 503, "breaker-open"),
            (MeshError::BulkheadFull("x".into()), 503, "bulkhead-full"),
            (
                MeshError::RetryBudgetExhausted(Box::new(MeshError::NoEndpoints("x".into()))),
                503,
                "retry-budget-exhausted",
            ),
            (MeshError::BadRequest("no host".into()), 400, "bad-request"),
            (MeshError::Overloaded(2), 503, "overloaded"),
        ];
        for (err, status, reason) in cases {
            let r = render(&err, false);
            assert_eq!(r.status().as_u16(), status);
            assert_eq!(r.headers()[MESH_ERROR], reason);
        }
    }

    #[test]
    fn mesh_errors_become_trailers_only_grpc_responses() {
        let r = render(&MeshError::BreakerOpen("orders".into()), true);
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()[GRPC_STATUS], "14");
        assert_eq!(r.headers()[MESH_ERROR], "breaker-open");
        assert!(r.headers()[GRPC_MESSAGE]
            .to_str()
            .unwrap()
            .contains("breaker-open"));
        let t = render(&MeshError::Timeout(std::time::Duration::from_secs(1)), true);
        assert_eq!(t.headers()[GRPC_STATUS], "4");
        assert_eq!(percent_encode("50% é"), "50%25 %C3%A9");
    }
}
