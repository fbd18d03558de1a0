//! One multiplexed HTTP/2 (h2c prior knowledge) connection per upstream
//! address, made on first use and replaced when it closes.

use super::error_chain;
use crate::net::{connect, ConnectOptions};
use crate::proxy::body::ReqBody;
use crate::proxy::rescue::MeshError;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

/// Pings an idle connection this often, and drops it when a ping goes
/// unanswered for [`KEEPALIVE_TIMEOUT`]: a dead peer is noticed without
/// waiting for a request to fail.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct H2Pool {
    mark: Option<u32>,
    conns: Mutex<HashMap<SocketAddr, SendRequest<ReqBody>>>,
}

// === impl H2Pool ===

impl H2Pool {
    pub fn new(mark: Option<u32>) -> Self {
        H2Pool {
            mark,
            conns: Mutex::new(HashMap::new()),
        }
    }

    pub async fn send(
        &self,
        req: Request<ReqBody>,
        addr: SocketAddr,
        connect_timeout: Duration,
    ) -> Result<Response<Incoming>, MeshError> {
        let mut sender = match self.cached(addr) {
            Some(s) => s,
            None => self.connect(addr, connect_timeout).await?,
        };
        let reset = |e: hyper::Error| MeshError::UpstreamReset {
            addr,
            reason: error_chain(&e),
        };
        // Waits for stream capacity (the server's max concurrent streams).
        sender.ready().await.map_err(reset)?;
        sender.send_request(req).await.map_err(reset)
    }

    fn cached(&self, addr: SocketAddr) -> Option<SendRequest<ReqBody>> {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        match conns.get(&addr) {
            Some(s) if !s.is_closed() => Some(s.clone()),
            Some(_) => {
                conns.remove(&addr);
                None
            }
            None => None,
        }
    }

    async fn connect(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<SendRequest<ReqBody>, MeshError> {
        let failed = |reason: String| MeshError::ConnectFailed { addr, reason };
        let opts = ConnectOptions {
            mark: self.mark,
            timeout,
        };
        let stream = connect(addr, opts)
            .await
            .map_err(|e| failed(e.to_string()))?;
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
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        // Two first requests may race to connect: keep the first that won.
        match conns.get(&addr) {
            Some(s) if !s.is_closed() => Ok(s.clone()),
            _ => {
                conns.insert(addr, sender.clone());
                Ok(sender)
            }
        }
    }
}
