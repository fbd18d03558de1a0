//! The caller's request body on its way to an upstream, kept for a retry.
//!
//! A body of unknown length (gRPC, chunked) cannot be buffered ahead: a
//! streaming call would stall. So it streams at once, and what passes is
//! copied into shared state (up to [`MAX_REPLAY_BODY`]). When an attempt
//! ends, its body hands the rest of the caller's stream back to that
//! state. A retry then replays the copy and goes on with the rest — after
//! a connect failure that is the whole body, untouched (Linkerd's replay
//! body, simplified: one attempt at a time).

use bytes::Bytes;
use http::HeaderMap;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

/// Bodies longer than this are not kept for a replay.
pub const MAX_REPLAY_BODY: usize = 64 * 1024;

/// What the attempts of one request share.
#[derive(Debug)]
pub struct Shared<B = Incoming> {
    /// Everything that passed so far, in order.
    chunks: Vec<Bytes>,
    len: usize,
    trailers: Option<HeaderMap>,
    /// The caller's stream has ended (all of it is in `chunks`/`trailers`).
    ended: bool,
    /// Too long, or broken: no replay.
    spoiled: bool,
    /// The rest of the caller's stream while no attempt holds it.
    parked: Option<B>,
}

/// One attempt's request body.
#[derive(Debug)]
pub struct StreamedBody<B = Incoming> {
    /// The caller's stream while this attempt holds it.
    inner: Option<B>,
    /// `None`: a plain stream, sent once.
    shared: Option<Arc<Mutex<Shared<B>>>>,
    /// Chunks of `shared` this attempt has sent.
    sent: usize,
    trailers_sent: bool,
}

fn lock<B>(m: &Mutex<Shared<B>>) -> MutexGuard<'_, Shared<B>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<B> StreamedBody<B> {
    /// Streams `inner` without keeping anything.
    pub fn plain(inner: B) -> Self {
        StreamedBody {
            inner: Some(inner),
            shared: None,
            sent: 0,
            trailers_sent: false,
        }
    }

    /// The first attempt: streams `inner` and keeps what passes.
    pub fn recorded(inner: B) -> (Self, Arc<Mutex<Shared<B>>>) {
        let shared = Arc::new(Mutex::new(Shared {
            chunks: Vec::new(),
            len: 0,
            trailers: None,
            ended: false,
            spoiled: false,
            parked: None,
        }));
        let body = StreamedBody {
            inner: Some(inner),
            shared: Some(shared.clone()),
            sent: 0,
            trailers_sent: false,
        };
        (body, shared)
    }

    /// A later attempt: the copy, then the rest of the caller's stream.
    /// `None` when that cannot be: the body was too long or broke, or the
    /// previous attempt still holds the rest (hyper is still writing it).
    pub fn replay(shared: &Arc<Mutex<Shared<B>>>) -> Option<Self> {
        let s = lock(shared);
        if s.spoiled || !(s.ended || s.parked.is_some()) {
            return None;
        }
        Some(StreamedBody {
            inner: None,
            shared: Some(shared.clone()),
            sent: 0,
            trailers_sent: false,
        })
    }
}

impl<B: Body<Data = Bytes> + Unpin> StreamedBody<B> {
    /// The next frame from the copy, if this attempt is behind it.
    fn next_copied(&mut self, s: &mut Shared<B>) -> Option<Frame<Bytes>> {
        if let Some(chunk) = s.chunks.get(self.sent) {
            self.sent += 1;
            return Some(Frame::data(chunk.clone()));
        }
        if s.ended && !self.trailers_sent {
            self.trailers_sent = true;
            return s.trailers.clone().map(Frame::trailers);
        }
        None
    }

    /// Copies what this attempt just read from the caller's stream.
    fn keep(&mut self, s: &mut Shared<B>, frame: &Frame<Bytes>, at_end: bool) {
        if s.spoiled {
            return;
        }
        if let Some(data) = frame.data_ref() {
            if s.len + data.len() > MAX_REPLAY_BODY {
                s.spoiled = true;
                s.chunks = Vec::new();
                return;
            }
            s.len += data.len();
            s.chunks.push(data.clone());
            self.sent += 1;
            // hyper's HTTP/2 client stops polling a body that says it has
            // ended, so `Ready(None)` may never come.
            s.ended |= at_end;
        } else if let Some(t) = frame.trailers_ref() {
            s.trailers = Some(t.clone());
            s.ended = true;
            self.trailers_sent = true;
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for StreamedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let Some(shared) = this.shared.clone() else {
            // A plain stream.
            return match this.inner.as_mut() {
                Some(inner) => Pin::new(inner).poll_frame(cx),
                None => Poll::Ready(None),
            };
        };
        {
            let mut s = lock(&shared);
            if let Some(frame) = this.next_copied(&mut s) {
                return Poll::Ready(Some(Ok(frame)));
            }
            if s.ended {
                return Poll::Ready(None);
            }
            if this.inner.is_none() {
                this.inner = s.parked.take();
            }
        }
        let Some(inner) = this.inner.as_mut() else {
            // `replay` checked the rest was parked; nothing else takes it.
            return Poll::Ready(None);
        };
        let polled = Pin::new(&mut *inner).poll_frame(cx);
        let at_end = inner.is_end_stream();
        let mut s = lock(&shared);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => this.keep(&mut s, frame, at_end),
            Poll::Ready(None) => s.ended = true,
            Poll::Ready(Some(Err(_))) => s.spoiled = true,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let Some(shared) = &self.shared else {
            return self.inner.as_ref().is_none_or(|b| b.is_end_stream());
        };
        let s = lock(shared);
        s.ended && self.sent >= s.chunks.len() && (self.trailers_sent || s.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.shared, &self.inner) {
            (None, Some(inner)) => inner.size_hint(),
            _ => SizeHint::default(),
        }
    }
}

impl<B> Drop for StreamedBody<B> {
    fn drop(&mut self) {
        // Hand the rest of the caller's stream to the next attempt.
        if let (Some(shared), Some(inner)) = (&self.shared, self.inner.take()) {
            lock(shared).parked = Some(inner);
        }
    }
}

#[cfg(test)]
mod tests;
