//! What the outbound and inbound listeners share: the accept loop with
//! its drain, hyper builders with the proxy's settings, and a graceful
//! stop that works for every connection type (including HTTP/1 with
//! upgrades, which hyper-util's `GracefulShutdown` does not cover).

use super::body::RespBody;
use super::grpc;
use super::rescue::{self, MeshError};
use super::upstream::Proto;
use futures_util::FutureExt;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A slow client gets this long to send its request headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Drives `conn` to its end. When `shutdown` fires first, `stop` asks it
/// to finish gracefully (in-flight requests complete, idle connections
/// close), and it is driven to that end.
pub async fn drive<C, F>(conn: C, shutdown: &CancellationToken, stop: F) -> C::Output
where
    C: Future,
    F: FnOnce(Pin<&mut C>),
{
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        out = conn.as_mut() => return out,
        () = shutdown.cancelled() => {}
    }
    stop(conn.as_mut());
    conn.await
}

/// The one error edge: a handler's failure becomes the caller's response.
fn answer_or_rescue(
    answer: Result<Response<RespBody>, MeshError>,
    grpc: bool,
) -> Response<RespBody> {
    answer.unwrap_or_else(|e| {
        tracing::debug!(error = %e, "answered by the mesh");
        rescue::render(&e, grpc)
    })
}

fn http1() -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    b
}

/// An HTTP/2 peer that stops answering pings is dropped, so a caller that
/// vanished does not hold its streams (and their permits) forever.
const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

fn http2() -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .keep_alive_interval(H2_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEPALIVE_TIMEOUT);
    b
}

/// Accepts connections until `shutdown`, handing each to `on_conn` in its
/// own task; then stops accepting and waits up to `drain` for those tasks.
pub async fn accept_until<F, Fut>(
    listener: TcpListener,
    shutdown: &CancellationToken,
    drain: Duration,
    what: &'static str,
    mut on_conn: F,
) where
    F: FnMut(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let conns = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(listener = what, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        conns.spawn(on_conn(stream, peer));
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

/// Serves HTTP/1 (with upgrades) or HTTP/2 on `io` until it ends, or
/// gracefully once `shutdown` fires. `handler` answers every request or
/// fails with a [`MeshError`], which is rendered here, once, in the form
/// the caller reads (gRPC's for gRPC requests).
pub async fn serve_http<I, F, Fut>(
    io: I,
    handler: F,
    proto: Proto,
    shutdown: &CancellationToken,
) -> Result<(), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Response<RespBody>, MeshError>> + Send + 'static,
{
    // hyper keeps room for one request's future in every connection, sized
    // for it: callers pass a boxed future (allocated per request, not held
    // by idle connections), and `map` adds nothing around it (an async
    // block would keep its captured future and the awaited one apart).
    let svc = service_fn(move |req: Request<Incoming>| {
        let grpc = grpc::is_grpc(req.headers());
        handler(req).map(move |answer| Ok::<_, Infallible>(answer_or_rescue(answer, grpc)))
    });
    let io = TokioIo::new(io);
    match proto {
        Proto::Http2 => {
            let conn = http2().serve_connection(io, svc);
            // Boxed: the HTTP/2 connection state is large, and every
            // connection task would otherwise be sized for it.
            Box::pin(drive(conn, shutdown, |c| c.graceful_shutdown())).await
        }
        Proto::Http1 => {
            let conn = http1().serve_connection(io, svc).with_upgrades();
            drive(conn, shutdown, |c| c.graceful_shutdown()).await
        }
    }
}
