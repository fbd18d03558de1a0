//! Bodies on both sides of the proxy.
//!
//! Requests to upstreams stream the caller's body, or replay buffered
//! bytes. Responses from upstreams stream through [`ResponseBody`], which
//! holds what must live as long as the response does — the bulkhead slot,
//! the inbound concurrency permit — and, for gRPC, reads the status from
//! the trailers when the stream ends.

use crate::resilience::BulkheadPermit;
use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use prometheus_client::metrics::gauge::Gauge;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::OwnedSemaphorePermit;

/// What the upstream client sends: the caller's stream, or replayable bytes.
pub type ReqBody = Either<Incoming, Full<Bytes>>;
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

/// A slot of the inbound concurrency limit, reflected in a gauge.
#[derive(Debug)]
pub struct InboundPermit {
    _permit: OwnedSemaphorePermit,
    gauge: Gauge,
}

impl InboundPermit {
    pub fn new(permit: OwnedSemaphorePermit, gauge: Gauge) -> Self {
        gauge.inc();
        InboundPermit {
            _permit: permit,
            gauge,
        }
    }
}

impl Drop for InboundPermit {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Everything a response holds until its stream ends.
#[derive(Default)]
pub struct StreamGuard {
    pub bulkhead: Option<BulkheadPermit>,
    pub inbound: Option<InboundPermit>,
    pub on_end: Option<OnEnd>,
}

impl std::fmt::Debug for StreamGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamGuard")
            .field("bulkhead", &self.bulkhead.is_some())
            .field("inbound", &self.inbound.is_some())
            .field("on_end", &self.on_end.is_some())
            .finish()
    }
}

/// An upstream response body, streamed frame by frame.
#[derive(Debug)]
pub struct ResponseBody {
    inner: Incoming,
    guard: Option<StreamGuard>,
}

impl ResponseBody {
    pub fn new(inner: Incoming) -> Self {
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

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let grpc_status = crate::proxy::grpc::status(trailers);
                    self.finish(StreamEnd::Done { grpc_status });
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
