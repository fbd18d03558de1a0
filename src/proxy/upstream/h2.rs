//! Multiplexed HTTP/2 (h2c prior knowledge) connections per upstream
//! address: made on first use, shared by concurrent requests up to
//! [`MAX_STREAMS_PER_CONN`] open streams each (servers commonly allow 100
//! or 200), another one opened beyond that, closed ones dropped.

use super::dial::{call_failed, error_chain, Dialer};
use crate::identity::SpiffeId;
use crate::proxy::body::ReqBody;
use crate::proxy::rescue::MeshError;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Pings an idle connection this often, and drops it when a ping goes
/// unanswered for [`KEEPALIVE_TIMEOUT`]: a dead peer is noticed without
/// waiting for a request to fail.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Open streams one connection carries before the pool opens another: at
/// or under what servers allow, so requests never queue behind a peer's
/// stream limit while another connection could carry them.
pub const MAX_STREAMS_PER_CONN: usize = 100;

pub struct H2Pool {
    dialer: Dialer,
    conns: Mutex<HashMap<SocketAddr, Entry>>,
}

#[derive(Default)]
struct Entry {
    conns: Vec<Conn>,
    /// Held while a connection to the address is being made, so a burst
    /// of first requests shares one new connection instead of each
    /// opening its own.
    connecting: Arc<tokio::sync::Mutex<()>>,
}

struct Conn {
    sender: SendRequest<ReqBody>,
    /// Streams open on it (requests whose response has not ended).
    streams: Arc<AtomicUsize>,
}

/// One open stream of a pooled connection; released when its response
/// ends (it lives in the response body's guard).
#[derive(Debug)]
pub struct StreamSlot(Arc<AtomicUsize>);

impl StreamSlot {
    fn take(streams: &Arc<AtomicUsize>) -> Self {
        streams.fetch_add(1, Ordering::Relaxed);
        StreamSlot(streams.clone())
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

// === impl H2Pool ===

impl H2Pool {
    pub fn new(dialer: Dialer) -> Self {
        H2Pool {
            dialer,
            conns: Mutex::new(HashMap::new()),
        }
    }

    pub async fn send(
        &self,
        req: Request<ReqBody>,
        addr: SocketAddr,
        peer: Option<&SpiffeId>,
        connect_timeout: Duration,
    ) -> Result<(Response<Incoming>, StreamSlot), MeshError> {
        let (mut sender, slot) = match self.checkout(addr) {
            Some(c) => c,
            None => {
                let connecting = self.connecting(addr);
                let _one_at_a_time = connecting.lock().await;
                // Whoever held the lock may have made room meanwhile.
                match self.checkout(addr) {
                    Some(c) => c,
                    None => self.connect(addr, peer, connect_timeout).await?,
                }
            }
        };
        let reset = |e: hyper::Error| call_failed(addr, &e);
        sender.ready().await.map_err(reset)?;
        let resp = sender.send_request(req).await.map_err(reset)?;
        Ok((resp, slot))
    }

    /// An open connection to `addr` with room for one more stream.
    fn checkout(&self, addr: SocketAddr) -> Option<(SendRequest<ReqBody>, StreamSlot)> {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        let entry = conns.get_mut(&addr)?;
        entry.conns.retain(|c| !c.sender.is_closed());
        let found = entry
            .conns
            .iter()
            .find(|c| c.streams.load(Ordering::Relaxed) < MAX_STREAMS_PER_CONN)
            .map(|c| (c.sender.clone(), StreamSlot::take(&c.streams)));
        // Forget an address with no connections that no one is connecting to.
        if entry.conns.is_empty() && Arc::strong_count(&entry.connecting) == 1 {
            conns.remove(&addr);
        }
        found
    }

    fn connecting(&self, addr: SocketAddr) -> Arc<tokio::sync::Mutex<()>> {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns.entry(addr).or_default().connecting.clone()
    }

    async fn connect(
        &self,
        addr: SocketAddr,
        peer: Option<&SpiffeId>,
        timeout: Duration,
    ) -> Result<(SendRequest<ReqBody>, StreamSlot), MeshError> {
        let failed = |reason: String| MeshError::ConnectFailed { addr, reason };
        let stream = self.dialer.open(addr, timeout, peer).await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| failed(error_chain(&e)))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "h2 upstream connection ended");
            }
        });
        let streams = Arc::new(AtomicUsize::new(0));
        let slot = StreamSlot::take(&streams);
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        let entry = conns.entry(addr).or_default();
        entry.conns.retain(|c| !c.sender.is_closed());
        entry.conns.push(Conn {
            sender: sender.clone(),
            streams,
        });
        Ok((sender, slot))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Either, Full};
    use std::sync::atomic::AtomicUsize;
    use tokio::sync::Notify;

    /// A server allowing 100 streams per connection that answers nobody
    /// until `want` requests are in: with one connection per address, the
    /// 101st request would never reach it.
    #[tokio::test]
    async fn more_streams_than_one_connection_allows_open_another() {
        let want = 150;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let arrived = Arc::new(AtomicUsize::new(0));
        let all_in = Arc::new(Notify::new());
        let (a, n) = (arrived.clone(), all_in.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (a, n) = (a.clone(), n.clone());
                let svc = hyper::service::service_fn(move |_req| {
                    let (a, n) = (a.clone(), n.clone());
                    async move {
                        if a.fetch_add(1, Ordering::SeqCst) + 1 >= want {
                            n.notify_waiters();
                        } else {
                            n.notified().await;
                        }
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .max_concurrent_streams(100)
                        .serve_connection(TokioIo::new(stream), svc),
                );
            }
        });

        let pool = Arc::new(H2Pool::new(Dialer::plain(None)));
        let calls = (0..want).map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let req = Request::builder()
                    .uri(format!("http://{addr}/"))
                    .body(Either::Right(Full::new(Bytes::new())))
                    .unwrap();
                let (resp, slot) = pool
                    .send(req, addr, None, Duration::from_secs(1))
                    .await
                    .unwrap();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                drop(slot);
                body
            })
        });
        let all = futures_util::future::join_all(calls);
        let done = tokio::time::timeout(Duration::from_secs(10), all).await;
        let bodies = done.expect("requests stuck behind one connection's stream limit");
        assert!(bodies.into_iter().all(|b| b.unwrap() == "ok"));
        let conns = pool.conns.lock().unwrap();
        let list = &conns[&addr].conns;
        assert_eq!(list.len(), 2, "150 streams at 100 per connection");
        assert!(list.iter().all(|c| c.streams.load(Ordering::Relaxed) == 0));
    }
}
