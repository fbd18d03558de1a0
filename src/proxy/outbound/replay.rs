//! Request bodies on the way out, and how a request is sent again.
//!
//! A small body of known length is read whole first (a retry or a
//! fallback sends the same bytes). A body of unknown length (gRPC,
//! chunked) streams at once and is copied on the way, up to
//! [`MAX_REPLAY_BODY`]; a retry replays the copy and continues with the
//! rest (see `proxy::body`). Anything longer streams and is sent once.

use crate::proxy::body::{ReqBody, Shared, StreamedBody, MAX_REPLAY_BODY};
use crate::proxy::rescue::MeshError;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Uri, Version};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body as _, Incoming};
use std::sync::{Arc, Mutex};

/// Everything needed to send the same request again.
#[derive(Clone, Debug)]
pub struct RequestTemplate {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    body: Replay,
}

#[derive(Clone, Debug)]
enum Replay {
    Buffered(Bytes),
    Streamed(Arc<Mutex<Shared>>),
}

impl RequestTemplate {
    /// A fresh copy of the request; `None` when its streamed body cannot
    /// be sent again (too long, broken, or still being sent).
    pub fn build(&self) -> Option<Request<ReqBody>> {
        let body = match &self.body {
            Replay::Buffered(b) => Either::Right(Full::new(b.clone())),
            Replay::Streamed(shared) => Either::Left(StreamedBody::replay(shared)?),
        };
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        Some(req)
    }
}

/// Splits off a template when `replay` is wanted and the body may be kept
/// (see the module doc); otherwise the body streams and the request can be
/// sent once only.
pub async fn prepare(
    req: Request<Incoming>,
    replay: bool,
) -> Result<(Request<ReqBody>, Option<RequestTemplate>), MeshError> {
    let limit = MAX_REPLAY_BODY as u64;
    let size = req.body().size_hint().exact();
    if !replay || size.is_some_and(|n| n > limit) {
        return Ok((req.map(|b| Either::Left(StreamedBody::plain(b))), None));
    }
    let (parts, body) = req.into_parts();
    let (body, kept) = if size.is_some() {
        let bytes = body
            .collect()
            .await
            .map_err(|e| MeshError::BadRequest(format!("reading the request body: {e}")))?
            .to_bytes();
        (
            Either::Right(Full::new(bytes.clone())),
            Replay::Buffered(bytes),
        )
    } else {
        let (streamed, shared) = StreamedBody::recorded(body);
        (Either::Left(streamed), Replay::Streamed(shared))
    };
    let template = RequestTemplate {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        version: parts.version,
        headers: parts.headers.clone(),
        body: kept,
    };
    Ok((Request::from_parts(parts, body), Some(template)))
}
