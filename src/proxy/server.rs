//! What the outbound and inbound listeners share: the accept loop with
//! its drain, hyper builders with the proxy's settings, and a graceful
//! stop that works for every connection type (including HTTP/1 with
//! upgrades, which hyper-util's `GracefulShutdown` does not cover).

use hyper::body::Incoming;
use hyper::service::HttpService;
use hyper_util::rt::TokioIo;
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

fn http1() -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    b
}

fn http2() -> hyper::server::conn::http2::Builder<hyper_util::rt::TokioExecutor> {
    let mut b = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    b.timer(hyper_util::rt::TokioTimer::new());
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
/// gracefully once `shutdown` fires.
pub async fn serve_http<I, S, B>(
    io: I,
    svc: S,
    http2: bool,
    shutdown: &CancellationToken,
) -> Result<(), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService<Incoming, ResBody = B> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let io = TokioIo::new(io);
    if http2 {
        let conn = self::http2().serve_connection(io, svc);
        drive(conn, shutdown, |c| c.graceful_shutdown()).await
    } else {
        let conn = http1().serve_connection(io, svc).with_upgrades();
        drive(conn, shutdown, |c| c.graceful_shutdown()).await
    }
}
