//! Serving accepted connections with hyper, shared by the outbound and
//! inbound listeners: builders with the proxy's settings, and a graceful
//! stop that works for every connection type (including HTTP/1 with
//! upgrades, which hyper-util's `GracefulShutdown` does not cover).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

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

pub fn http1() -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    b
}

pub fn http2() -> hyper::server::conn::http2::Builder<hyper_util::rt::TokioExecutor> {
    let mut b = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    b.timer(hyper_util::rt::TokioTimer::new());
    b
}
