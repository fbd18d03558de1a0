//! What the outbound and inbound listeners share: the accept loop with
//! its admission and drain, hyper builders with the proxy's [`Limits`], a
//! watchdog that ends slow and idle client connections, and a graceful
//! stop that works for every connection type (including HTTP/1 with
//! upgrades, which hyper-util's `GracefulShutdown` does not cover).
//!
//! The watchdog exists because hyper has one HTTP/1 timer, started when
//! it waits for a request head: between keep-alive requests too, so one
//! value cannot both end a slowloris in seconds and keep an idle pooled
//! connection for minutes. Here the connection's bytes and its requests
//! tell the two apart: bytes while no request is in flight start a head
//! (`--header-read-timeout` from then, or from the accept for the first
//! request); a finished response starts idleness (`--idle-timeout`). The
//! request path only stores a few atomics; the watchdog wakes at most
//! once per header timeout per connection.

use super::admission::{Admission, ConnSlot};
use super::body::RespBody;
use super::grpc;
use super::limits::{self, Limits};
use super::rescue::{self, MeshError};
use super::upstream::Proto;
use futures_util::FutureExt;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The one error edge: a handler's failure becomes the caller's response,
/// carrying the request's id (what `mesh-ctl explain` takes).
fn answer_or_rescue(
    answer: Result<Response<RespBody>, MeshError>,
    grpc: bool,
    id: Option<http::HeaderValue>,
) -> Response<RespBody> {
    answer.unwrap_or_else(|e| {
        tracing::debug!(error = %e, "answered by the mesh");
        let mut resp = rescue::render(&e, grpc);
        if let Some(id) = id {
            resp.headers_mut().insert(super::headers::X_REQUEST_ID, id);
        }
        resp
    })
}

fn http1(limits: &Limits) -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    // The watchdog times heads and idleness; hyper's own timer would also
    // run between keep-alive requests (see the module comment).
    b.header_read_timeout(None)
        .max_buf_size(limits.h1_buffer())
        .max_header_size(limits.max_header_bytes);
    // hyper keeps 100 header slots on the stack, and allocates per
    // request for any other count.
    if limits.max_headers != limits::DEFAULT_MAX_HEADERS {
        b.max_headers(limits.max_headers);
    }
    b
}

/// An HTTP/2 peer that stops answering pings is dropped, so a caller that
/// vanished does not hold its streams (and their permits) forever.
const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

fn http2(limits: &Limits) -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let h2 = &limits.h2;
    let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .keep_alive_interval(H2_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEPALIVE_TIMEOUT)
        .max_concurrent_streams(h2.max_concurrent_streams)
        .max_header_list_size(h2.max_header_list_size)
        .max_pending_accept_reset_streams(h2.max_pending_accept_reset_streams)
        .max_local_error_reset_streams(h2.max_local_error_reset_streams);
    b
}

/// An admitted connection as the accept loop hands it on.
#[derive(Clone)]
pub struct Accepted {
    /// When: the first request's header timeout starts here.
    pub at: Instant,
    /// Its slot under the listener's connection limit.
    pub slot: ConnSlot,
}

/// Accepts connections until `shutdown`, handing each admitted one to
/// `on_conn` in its own task; then stops accepting and waits up to
/// `drain` for those tasks.
pub async fn accept_until<F, Fut>(
    listener: TcpListener,
    shutdown: &CancellationToken,
    drain: Duration,
    admission: &Admission,
    mut on_conn: F,
) where
    F: FnMut(TcpStream, SocketAddr, Accepted) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let what = admission.listener();
    let conns = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    admission.accept_failed(&e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let Some(permit) = admission.admit() else {
            super::protocol::fast_close(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let accepted = Accepted {
            at: Instant::now(),
            slot: ConnSlot::new(permit),
        };
        conns.spawn(on_conn(stream, peer, accepted));
    }
    drop(listener);
    conns.close();
    if tokio::time::timeout(drain, conns.wait()).await.is_err() {
        tracing::warn!(
            listener = what,
            ?drain,
            "drain period over; closing remaining connections"
        );
    }
}

/// A connection on which every client speaks HTTP (explicit proxy mode,
/// the gateway's plaintext listener): HTTP/2 when it opens with the h2c
/// preface, else HTTP/1 (which answers 400 to anything else). `None`:
/// closed, or silent past `silent_for`.
pub async fn client_http(
    mut stream: TcpStream,
    silent_for: Duration,
) -> std::io::Result<Option<(super::protocol::PrefixedIo<TcpStream>, Proto)>> {
    let Some(detected) = super::protocol::detect_http_version(&mut stream, silent_for).await?
    else {
        return Ok(None);
    };
    let proto = match detected.protocol {
        super::protocol::Protocol::Http2 => Proto::Http2,
        _ => Proto::Http1,
    };
    Ok(Some((
        super::protocol::PrefixedIo::new(detected.prefix, stream),
        proto,
    )))
}

/// Serves HTTP/1 (with upgrades) or HTTP/2 on `io` until it ends, or
/// gracefully once `shutdown` fires. `handler` answers every request or
/// fails with a [`MeshError`], which is rendered here, once, in the form
/// the caller reads (gRPC's for gRPC requests). Requests that break
/// [`limits::check_request`] are answered here and never reach it.
/// `accepted`: the first request's header timeout starts at its time; a
/// request that may become a tunnel (an upgrade, CONNECT) carries its
/// slot in its extensions, for the tunnel to hold.
pub async fn serve_http<I, F, Fut>(
    io: I,
    handler: F,
    proto: Proto,
    shutdown: &CancellationToken,
    limits: &Arc<Limits>,
    accepted: Accepted,
) -> Result<(), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Response<RespBody>, MeshError>> + Send + 'static,
{
    let h1 = proto == Proto::Http1;
    let activity = Arc::new(Activity::new(accepted.at, h1));
    let slot = accepted.slot;
    let act = activity.clone();
    let lim = limits.clone();
    // hyper keeps room for one request's future in every connection, sized
    // for it: callers pass a boxed future (allocated per request, not held
    // by idle connections), and `map` adds nothing around it (an async
    // block would keep its captured future and the awaited one apart).
    let svc = service_fn(move |mut req: Request<Incoming>| {
        let grpc = grpc::is_grpc(req.headers());
        if req.method() == http::Method::CONNECT
            || req.headers().contains_key(http::header::UPGRADE)
        {
            req.extensions_mut().insert(slot.clone());
        }
        let busy = act.request_started();
        let checked = limits::check_request(&req, &lim);
        let refused = checked.is_err();
        // Every request that passes has an id from here on (a refused
        // one's headers are not to be trusted with one).
        let id = (!refused).then(|| super::headers::ensure_request_id(req.headers_mut()));
        let answer = match checked {
            Ok(()) => futures_util::future::Either::Left(handler(req)),
            Err(e) => futures_util::future::Either::Right(std::future::ready(Err(e))),
        };
        answer.map(move |answer| {
            let mut resp = answer_or_rescue(answer, grpc, id);
            if refused && h1 {
                // Framing the proxy refused: nothing after it on this
                // connection can be trusted either.
                resp.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            Ok::<_, Infallible>(resp.map(|body| Tracked { body, _busy: busy }))
        })
    });
    match proto {
        Proto::Http2 => {
            let conn = http2(limits).serve_connection(TokioIo::new(io), svc);
            // Boxed: the HTTP/2 connection state is large, and every
            // connection task would otherwise be sized for it.
            Box::pin(watched(conn, shutdown, &activity, limits, |c| {
                c.graceful_shutdown()
            }))
            .await
        }
        Proto::Http1 => {
            let io = Watched {
                inner: io,
                activity: activity.clone(),
            };
            let conn = http1(limits)
                .serve_connection(TokioIo::new(io), svc)
                .with_upgrades();
            watched(conn, shutdown, &activity, limits, |c| c.graceful_shutdown()).await
        }
    }
}

/// Drives `conn` to its end. When `shutdown` fires first, `stop` asks it
/// to finish gracefully (in-flight requests complete, idle connections
/// close), and it is driven to that end. Meanwhile the connection's
/// watchdog runs: a head past the header timeout drops the connection
/// (hyper would answer nothing either); an idle connection past the idle
/// timeout is stopped gracefully (HTTP/2 says GOAWAY).
async fn watched<C, F>(
    conn: C,
    shutdown: &CancellationToken,
    activity: &Activity,
    limits: &Limits,
    stop: F,
) -> Result<(), hyper::Error>
where
    C: Future<Output = Result<(), hyper::Error>>,
    F: FnOnce(Pin<&mut C>),
{
    let mut conn = std::pin::pin!(conn);
    // The connection first: bytes already read (a whole request that came
    // with the detection prefix) are parsed before the timeout is judged.
    let expired = tokio::select! {
        biased;
        out = conn.as_mut() => return out,
        () = shutdown.cancelled() => None,
        e = activity.watch(limits) => Some(e),
    };
    match expired {
        Some(Expiry::Header) => {
            tracing::debug!(timeout = ?limits.header_read_timeout, "request headers not received in time; closing");
            return Ok(());
        }
        Some(Expiry::Idle) => {
            tracing::debug!(timeout = ?limits.idle_timeout, "idle client connection closed");
        }
        None => {}
    }
    stop(conn.as_mut());
    // Stopping gracefully waits for a request in flight; a head still
    // arriving is not one, and its timeout still ends it.
    tokio::select! {
        biased;
        out = conn.as_mut() => out,
        _ = activity.watch(limits) => Ok(()),
    }
}

/// Why the watchdog ended a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    Header,
    Idle,
}

/// One connection's state as its watchdog reads it (see the module
/// comment). Written from the connection's own task; atomics only because
/// the service and its bodies must be `Send`.
struct Activity {
    start: Instant,
    in_flight: AtomicU32,
    /// A request head is arriving: bytes came while nothing was in flight.
    head: AtomicBool,
    /// When the head began or the connection went idle, in ms since
    /// `start`.
    since_ms: AtomicU64,
}

impl Activity {
    /// HTTP/1 starts in a head (the first request's); HTTP/2 idle.
    fn new(accepted: Instant, h1: bool) -> Self {
        Activity {
            start: accepted,
            in_flight: AtomicU32::new(0),
            head: AtomicBool::new(h1),
            since_ms: AtomicU64::new(0),
        }
    }

    fn mark_now(&self) {
        let ms = Instant::now()
            .saturating_duration_since(self.start)
            .as_millis();
        self.since_ms
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Bytes arrived from the client.
    fn bytes_arrived(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0 && !self.head.load(Ordering::Relaxed) {
            self.mark_now();
            self.head.store(true, Ordering::Relaxed);
        }
    }

    /// A request's head is complete; the guard ends it with its response.
    fn request_started(self: &Arc<Self>) -> Busy {
        self.head.store(false, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }

    fn check(&self, now: Instant, limits: &Limits) -> Result<Instant, Expiry> {
        let recheck = now + limits.header_read_timeout.min(limits.idle_timeout);
        // Acquire: an HTTP/2 stream ends on another worker; its idle mark
        // is seen with its end.
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Ok(recheck);
        }
        let since = self.start + Duration::from_millis(self.since_ms.load(Ordering::Relaxed));
        if self.head.load(Ordering::Relaxed) {
            let deadline = since + limits.header_read_timeout;
            return if now >= deadline {
                Err(Expiry::Header)
            } else {
                Ok(deadline)
            };
        }
        let deadline = since + limits.idle_timeout;
        if now >= deadline {
            return Err(Expiry::Idle);
        }
        // A head may begin before the idle deadline: look again within a
        // header timeout, which catches it before its own deadline.
        Ok(deadline.min(recheck))
    }

    async fn watch(&self, limits: &Limits) -> Expiry {
        loop {
            match self.check(Instant::now(), limits) {
                Ok(next) => tokio::time::sleep_until(next).await,
                Err(e) => return e,
            }
        }
    }
}

/// Held while a request is in flight: from its head to its response's end.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let a = &self.0;
        a.mark_now();
        a.in_flight.fetch_sub(1, Ordering::Release);
    }
}

/// A response body that ends its request's [`Busy`] when hyper is done
/// with it (written, or the connection gone).
struct Tracked<B> {
    body: B,
    _busy: Busy,
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The client's side of an HTTP/1 connection, telling its [`Activity`]
/// when bytes arrive.
struct Watched<I> {
    inner: I,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.bytes_arrived();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            ..Limits::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn head_then_busy_then_idle() {
        let l = limits();
        let t0 = Instant::now();
        let a = Arc::new(Activity::new(t0, true));
        // The first head runs from the accept.
        assert_eq!(a.check(t0, &l), Ok(t0 + Duration::from_secs(10)));
        assert_eq!(
            a.check(t0 + Duration::from_secs(10), &l),
            Err(Expiry::Header)
        );
        // A request in flight is never timed here.
        let busy = a.request_started();
        let later = t0 + Duration::from_secs(1000);
        assert_eq!(a.check(later, &l), Ok(later + Duration::from_secs(10)));
        tokio::time::advance(Duration::from_secs(20)).await;
        drop(busy);
        let idle_at = Instant::now();
        // Idle: the idle deadline, but looked at again within a header
        // timeout, in case a head begins.
        assert_eq!(a.check(idle_at, &l), Ok(idle_at + Duration::from_secs(10)));
        assert_eq!(
            a.check(idle_at + Duration::from_secs(300), &l),
            Err(Expiry::Idle)
        );
        // Bytes while idle begin a head, timed from then.
        tokio::time::advance(Duration::from_secs(30)).await;
        a.bytes_arrived();
        let head_at = Instant::now();
        assert_eq!(a.check(head_at, &l), Ok(head_at + Duration::from_secs(10)));
        // More bytes of the same head do not move its deadline.
        tokio::time::advance(Duration::from_secs(5)).await;
        a.bytes_arrived();
        assert_eq!(
            a.check(Instant::now(), &l),
            Ok(head_at + Duration::from_secs(10))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn http2_starts_idle() {
        let l = limits();
        let t0 = Instant::now();
        let a = Activity::new(t0, false);
        assert!(a.check(t0 + Duration::from_secs(299), &l).is_ok());
        assert_eq!(
            a.check(t0 + Duration::from_secs(300), &l),
            Err(Expiry::Idle)
        );
    }
}
