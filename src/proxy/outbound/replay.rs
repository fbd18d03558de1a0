//! Request bodies on the way out: streamed when they cannot be retried,
//! buffered (small, known length) when a retry or a fallback may need to
//! send them again.

use crate::proxy::body::ReqBody;
use crate::proxy::rescue::MeshError;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Uri, Version};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body as _, Incoming};

/// Largest body kept in memory so that a request can be replayed.
pub const MAX_REPLAY_BODY: u64 = 64 * 1024;

/// Everything needed to send the same request again.
#[derive(Clone, Debug)]
pub struct RequestTemplate {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
}

impl RequestTemplate {
    /// A fresh copy of the request.
    pub fn build(&self) -> Request<ReqBody> {
        let mut req = Request::new(Either::Right(Full::new(self.body.clone())));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// Splits off a template when `replay` is wanted and the body is small
/// enough (known length ≤ [`MAX_REPLAY_BODY`]); otherwise the body streams
/// and the request can be sent once only.
pub async fn prepare(
    req: Request<Incoming>,
    replay: bool,
) -> Result<(Request<ReqBody>, Option<RequestTemplate>), MeshError> {
    let small = req
        .body()
        .size_hint()
        .exact()
        .is_some_and(|n| n <= MAX_REPLAY_BODY);
    if !replay || !small {
        return Ok((req.map(Either::Left), None));
    }
    let (parts, body) = req.into_parts();
    let bytes = body
        .collect()
        .await
        .map_err(|e| MeshError::BadRequest(format!("reading the request body: {e}")))?
        .to_bytes();
    let template = RequestTemplate {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        version: parts.version,
        headers: parts.headers.clone(),
        body: bytes.clone(),
    };
    Ok((
        Request::from_parts(parts, Either::Right(Full::new(bytes))),
        Some(template),
    ))
}
