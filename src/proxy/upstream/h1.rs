//! Keep-alive HTTP/1.1 connections to one upstream address.
//!
//! Each endpoint owns its pool (it lives on the routing table's
//! `Endpoint`, kept across table rebuilds like the balancer's statistics),
//! so a checkout locks only that endpoint's short list: no global map, no
//! hashing, no channel hop to a pool task. Connections are hyper's
//! `client::conn::http1`, each driven by its own task. A connection goes
//! back to its pool when the response that used it is dropped (the
//! response body's guard holds it); it is taken again only once hyper says
//! it is ready for another request (the last response was read whole),
//! so a connection left mid-body is never reused. Idle connections expire
//! after [`IDLE_TIMEOUT`]; at most [`MAX_IDLE`] are kept per endpoint.
//!
//! A keep-alive connection the server closed just as it was taken (the
//! race every pooled client has) hands the request back unsent; it is
//! then sent once on a fresh connection, so the caller never sees it.

use super::dial::{call_failed, error_chain, Dialer};
use crate::identity::SpiffeId;
use crate::proxy::body::ReqBody;
use crate::proxy::rescue::MeshError;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// An idle connection unused this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept per endpoint; more are closed as they return.
pub const MAX_IDLE: usize = 256;

/// One upstream address's idle HTTP/1 connections.
pub struct H1Pool {
    addr: SocketAddr,
    /// The identity the peer at `addr` must prove (mTLS); `None`: plain.
    peer: Option<Arc<SpiffeId>>,
    /// Most recently returned last: taken from the back (warm first),
    /// expired from the front.
    idle: Mutex<Vec<Idle>>,
}

struct Idle {
    sender: SendRequest<ReqBody>,
    since: Instant,
}

/// A connection in use; back to its pool when dropped.
#[derive(Debug)]
pub struct Pooled {
    sender: Option<SendRequest<ReqBody>>,
    pool: Arc<H1Pool>,
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(sender) = self.sender.take() {
            self.pool.put(sender);
        }
    }
}

impl std::fmt::Debug for H1Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1Pool")
            .field("addr", &self.addr)
            .field("idle", &self.idle_count())
            .finish()
    }
}

// === impl H1Pool ===

impl H1Pool {
    pub fn new(addr: SocketAddr, peer: Option<Arc<SpiffeId>>) -> Arc<Self> {
        Arc::new(H1Pool {
            addr,
            peer,
            idle: Mutex::new(Vec::new()),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Who must answer at [`H1Pool::addr`] (mTLS), if anyone.
    pub fn peer(&self) -> Option<&SpiffeId> {
        self.peer.as_deref()
    }

    /// Idle connections now (for tests and `/state`).
    pub fn idle_count(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `req` over an idle connection, or a new one. The response
    /// comes with the connection it holds until it is dropped.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<ReqBody>,
        dialer: &Dialer,
        timeout: Duration,
    ) -> Result<(Response<Incoming>, Pooled), MeshError> {
        let addr = self.addr;
        let reset = |e: hyper::Error| call_failed(addr, &e);
        if let Some(mut sender) = self.checkout() {
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, self.pooled(sender))),
                Err(mut e) => match e.take_message() {
                    // Closed under us before a byte was written: the
                    // request is whole, and goes on a fresh connection.
                    Some(unsent) => req = unsent,
                    None => return Err(reset(e.into_error())),
                },
            }
        }
        let mut sender = self.connect(dialer, timeout).await?;
        let resp = sender.send_request(req).await.map_err(reset)?;
        Ok((resp, self.pooled(sender)))
    }

    fn pooled(self: &Arc<Self>, sender: SendRequest<ReqBody>) -> Pooled {
        Pooled {
            sender: Some(sender),
            pool: self.clone(),
        }
    }

    /// The most recently used idle connection that is ready; closed ones
    /// are dropped on the way, busy ones left in place. The list stays in
    /// the order connections came back (oldest first), for [`put`].
    fn checkout(&self) -> Option<SendRequest<ReqBody>> {
        let mut idle = self.lock();
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            let c = &idle[i];
            if c.sender.is_closed() {
                idle.remove(i);
            } else if c.sender.is_ready() {
                return Some(idle.remove(i).sender);
            }
        }
        None
    }

    /// Back from a response: kept at the end of the list; the oldest
    /// expire from its front (and beyond [`MAX_IDLE`]).
    fn put(&self, sender: SendRequest<ReqBody>) {
        if sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.lock();
        let expired = idle
            .iter()
            .take_while(|c| now.duration_since(c.since) >= IDLE_TIMEOUT)
            .count();
        let over = (idle.len() - expired + 1).saturating_sub(MAX_IDLE);
        idle.drain(..expired + over);
        idle.push(Idle { sender, since: now });
    }

    /// Closes idle connections past [`IDLE_TIMEOUT`] (run now and then:
    /// a pool nobody uses is otherwise only cleaned on its next use).
    pub fn expire(&self) {
        let now = Instant::now();
        self.lock()
            .retain(|c| !c.sender.is_closed() && now.duration_since(c.since) < IDLE_TIMEOUT);
    }

    async fn connect(
        &self,
        dialer: &Dialer,
        timeout: Duration,
    ) -> Result<SendRequest<ReqBody>, MeshError> {
        let addr = self.addr;
        let stream = dialer.open(addr, timeout, self.peer()).await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| MeshError::ConnectFailed {
                addr,
                reason: error_chain(&e),
            })?;
        tokio::spawn(async move {
            // Upgrades: a `101` hands the socket to the tunnel.
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%addr, error = %e, "upstream connection ended");
            }
        });
        Ok(sender)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Either, Full};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn get() -> Request<ReqBody> {
        Request::builder()
            .uri("/")
            .header("host", "t")
            .body(Either::Right(Full::new(Bytes::new())))
            .unwrap()
    }

    fn dialer() -> Dialer {
        Dialer::plain(None)
    }

    const SECOND: Duration = Duration::from_secs(1);

    /// A server that answers each connection's first request with
    /// keep-alive, then closes it: every reuse meets the stale race.
    async fn one_answer_per_connection() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let seen = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                seen.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                    // Closed without a word, as an idle-timeout would.
                });
            }
        });
        (addr, accepted)
    }

    #[tokio::test]
    async fn connections_are_reused_once_their_response_is_read() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let seen = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.unwrap();
                seen.fetch_add(1, Ordering::SeqCst);
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(
                        b"ok",
                    ))))
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc),
                );
            }
        });
        let pool = H1Pool::new(addr, None);
        for _ in 0..5 {
            let (resp, conn) = pool.send(get(), &dialer(), SECOND).await.unwrap();
            assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
            drop(conn);
            // hyper's connection task marks itself ready on its own time.
            let deadline = Instant::now() + Duration::from_secs(5);
            while !pool.lock().iter().all(|c| c.sender.is_ready()) {
                assert!(Instant::now() < deadline, "connection never ready");
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle_count(), 1);

        // Two at once need two connections; both are kept.
        let d = dialer();
        let (a, b) = tokio::join!(pool.send(get(), &d, SECOND), pool.send(get(), &d, SECOND));
        drop((a.unwrap(), b.unwrap()));
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(pool.idle_count(), 2);
    }

    #[tokio::test]
    async fn a_connection_closed_by_the_server_is_not_the_callers_problem() {
        let (addr, accepted) = one_answer_per_connection().await;
        let pool = H1Pool::new(addr, None);
        for i in 1..=3 {
            let (resp, conn) = pool.send(get(), &dialer(), SECOND).await.unwrap();
            assert_eq!(resp.status(), 200, "call {i}");
            assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
            drop(conn);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_refused_connect_is_a_connect_failure() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let pool = H1Pool::new(addr, None);
        let err = pool.send(get(), &dialer(), SECOND).await.unwrap_err();
        assert_eq!(err.reason(), "connect-failed", "{err}");
    }
}
