//! Bodies on both sides of the proxy.
//!
//! Requests to upstreams stream the caller's body (copying it on the way
//! when a retry may need it: `request`), or replay buffered bytes.
//! Responses from upstreams stream through [`ResponseBody`], which
//! holds what must live as long as the response does (a [`StreamGuard`]:
//! the bulkhead slot, the inbound concurrency permit, the upstream
//! connection) and, for gRPC, reads the status from the trailers when the
//! stream ends.

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};

mod request;

pub use request::{Shared, StreamedBody, MAX_REPLAY_BODY};

/// What the upstream client sends: the caller's stream, or replayable bytes.
pub type ReqBody = Either<StreamedBody, Full<Bytes>>;

/// What the proxy answers with: an upstream's stream, or its own bytes.
pub type RespBody = Either<ResponseBody, Full<Bytes>>;

/// How a response stream ended, for whoever watches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// Ended normally; `grpc_status` from the trailers, if any.
    Done { grpc_status: Option<u32> },
    /// The upstream broke the stream.
    Failed,
}

/// Called once when a watched response stream ends (not when the caller
/// drops it early: a cancelled call is no one's failure).
pub type OnEnd = Box<dyn FnOnce(StreamEnd) + Send>;

/// Everything a response holds until its stream ends: whatever the layers
/// it passed through hand it (a bulkhead slot, the inbound permit, the
/// pooled connection or HTTP/2 stream it occupies), released when the
/// body is dropped, and one completion hook. It names no layer.
#[derive(Default)]
pub struct StreamGuard {
    held: Vec<Box<dyn Send>>,
    on_end: Option<OnEnd>,
}

impl StreamGuard {
    /// Keeps `value` alive until the response ends (or is dropped).
    pub fn hold<T: Send + 'static>(&mut self, value: T) {
        self.held.push(Box::new(value));
    }

    /// Runs `hook` once, when the stream ends (not when it is dropped
    /// early: a cancelled call is no one's failure).
    pub fn on_end(&mut self, hook: OnEnd) {
        self.on_end = Some(hook);
    }
}

impl std::fmt::Debug for StreamGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamGuard")
            .field("held", &self.held.len())
            .field("on_end", &self.on_end.is_some())
            .finish()
    }
}

/// An upstream response body, streamed frame by frame.
#[derive(Debug)]
pub struct ResponseBody<B = Incoming> {
    inner: B,
    guard: Option<StreamGuard>,
}

impl<B> ResponseBody<B> {
    pub fn new(inner: B) -> Self {
        ResponseBody { inner, guard: None }
    }

    /// Mutable access to the guard, made on first use.
    pub fn guard_mut(&mut self) -> &mut StreamGuard {
        self.guard.get_or_insert_with(StreamGuard::default)
    }

    /// Takes the guard out, e.g. into a tunnel that outlives this body.
    pub fn take_guard(&mut self) -> Option<StreamGuard> {
        self.guard.take()
    }

    fn finish(&mut self, end: StreamEnd) {
        if let Some(on_end) = self.guard.take().and_then(|mut g| g.on_end.take()) {
            on_end(end);
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for ResponseBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let grpc_status = crate::proxy::grpc::status(trailers);
                    self.finish(StreamEnd::Done { grpc_status });
                } else if self.inner.is_end_stream() {
                    // hyper stops polling a body that says it has ended:
                    // `Ready(None)` would never come.
                    self.finish(StreamEnd::Done { grpc_status: None });
                }
            }
            Poll::Ready(Some(Err(_))) => self.finish(StreamEnd::Failed),
            Poll::Ready(None) => self.finish(StreamEnd::Done { grpc_status: None }),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};

    type Frames = futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>;

    fn frames(parts: Vec<Frame<Bytes>>) -> StreamBody<Frames> {
        StreamBody::new(futures_util::stream::iter(
            parts.into_iter().map(Ok).collect::<Vec<_>>(),
        ))
    }

    fn watched<B>(body: B) -> (ResponseBody<B>, Arc<Mutex<Vec<StreamEnd>>>) {
        let ends = Arc::new(Mutex::new(Vec::new()));
        let seen = ends.clone();
        let mut body = ResponseBody::new(body);
        body.guard_mut()
            .on_end(Box::new(move |end| seen.lock().unwrap().push(end)));
        (body, ends)
    }

    #[tokio::test]
    async fn the_end_of_a_response_is_seen_once_however_it_ends() {
        // Trailers carry the gRPC status.
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("13"));
        let parts = vec![
            Frame::data(Bytes::from_static(b"x")),
            Frame::trailers(trailers),
        ];
        let (body, ends) = watched(frames(parts));
        body.collect().await.unwrap();
        assert_eq!(
            *ends.lock().unwrap(),
            [StreamEnd::Done {
                grpc_status: Some(13)
            }]
        );

        // A body that says it has ended after its data, never polled to
        // `None` (hyper stops there).
        let (mut body, ends) = watched(Full::new(Bytes::from_static(b"all")));
        body.frame().await.unwrap().unwrap();
        assert_eq!(
            *ends.lock().unwrap(),
            [StreamEnd::Done { grpc_status: None }]
        );

        // Dropped before its end (the caller went away): nobody's failure.
        let (mut body, ends) = watched(frames(vec![
            Frame::data(Bytes::from_static(b"a")),
            Frame::data(Bytes::from_static(b"b")),
        ]));
        body.frame().await.unwrap().unwrap();
        drop(body);
        assert!(ends.lock().unwrap().is_empty());
    }
}
