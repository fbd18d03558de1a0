//! Connections from the proxy to upstreams (service endpoints, peer
//! proxies' inbound listeners, the local app, external hosts).
//!
//! HTTP/1.1 goes over keep-alive connections pooled per upstream address
//! ([`H1Pool`], owned by the endpoint it serves). HTTP/2 goes over
//! multiplexed connections per address ([`H2Pool`]). Both are made with
//! hyper's connection API, so the request keeps its own `Host` or
//! `:authority` while the socket goes to the address the balancer chose.
//! Responses come back as [`ResponseBody`] streams, hop-by-hop headers
//! removed, holding the connection (or stream) they use until dropped.

mod dial;
mod h1;
mod h2;

pub use dial::{error_chain, tcp as connect_tcp, Dialer};
pub use h1::{H1Pool, Pooled, IDLE_TIMEOUT, MAX_IDLE};
pub use h2::{H2Pool, StreamSlot, MAX_STREAMS_PER_CONN};

use super::body::{ReqBody, ResponseBody};
use super::rescue::MeshError;
use crate::identity::tls::TlsIdentity;
use crate::net::ConnectOptions;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Which HTTP version to speak to the upstream: the caller's, so h2c
/// callers (gRPC) reach h2c servers and HTTP/1 callers HTTP/1 servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Http1,
    Http2,
}

/// The HTTP version to speak upstream: the caller's.
pub fn proto_of<B>(req: &Request<B>) -> Proto {
    match req.version() {
        Version::HTTP_2 => Proto::Http2,
        _ => Proto::Http1,
    }
}

/// Where a request goes: the address, its pool, and the address as an
/// authority (made once per endpoint, so the hot path formats nothing).
#[derive(Clone, Copy)]
pub struct Dest<'a> {
    pub pool: &'a Arc<H1Pool>,
    pub authority: &'a Authority,
}

/// Every upstream connection the proxy makes.
pub struct Upstreams {
    /// Mark and default connect timeout (`--connect-timeout`).
    opts: ConnectOptions,
    /// TCP, then mTLS to sidecars with an identity.
    dialer: Dialer,
    /// Pools for addresses that are not endpoints (the app's ports, hosts
    /// outside the mesh), made on first use; endpoints carry their own.
    others: Mutex<HashMap<SocketAddr, Arc<H1Pool>>>,
    h2: H2Pool,
}

// === impl Upstreams ===

impl Upstreams {
    pub fn new(opts: ConnectOptions, tls: Option<Arc<TlsIdentity>>) -> Self {
        let dialer = Dialer {
            mark: opts.mark,
            tls,
        };
        Upstreams {
            opts,
            others: Mutex::new(HashMap::new()),
            h2: H2Pool::new(dialer.clone()),
            dialer,
        }
    }

    /// The connector every upstream connection is made with.
    pub fn dialer(&self) -> &Dialer {
        &self.dialer
    }

    /// The default connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        self.opts.timeout
    }

    /// The pool for `addr` when it is not an endpoint's.
    pub fn pool(&self, addr: SocketAddr) -> Arc<H1Pool> {
        let mut others = self.others.lock().unwrap_or_else(|e| e.into_inner());
        others
            .entry(addr)
            .or_insert_with(|| H1Pool::new(addr, None))
            .clone()
    }

    /// Closes idle connections past [`IDLE_TIMEOUT`] in the pools kept
    /// here (endpoints' pools are expired by whoever walks the table), and
    /// forgets pools with nothing left that nobody else holds.
    pub fn expire_idle(&self) {
        let mut others = self.others.lock().unwrap_or_else(|e| e.into_inner());
        others.retain(|_, pool| {
            pool.expire();
            pool.idle_count() > 0 || Arc::strong_count(pool) > 1
        });
    }

    /// Sends `req` to `dest`. HTTP/1 requests keep their `Host` header,
    /// HTTP/2 requests their `:authority`.
    pub async fn send(
        &self,
        mut req: Request<ReqBody>,
        dest: Dest<'_>,
        connect: Duration,
        proto: Proto,
    ) -> Result<Response<ResponseBody>, MeshError> {
        match proto {
            Proto::Http1 => {
                origin_form(&mut req, dest.authority)?;
                let (resp, conn) = dest.pool.send(req, &self.dialer, connect).await?;
                let mut resp = streamed(resp);
                resp.body_mut().guard_mut().hold(conn);
                Ok(resp)
            }
            Proto::Http2 => {
                // Keep the caller's authority; fall back to the endpoint's.
                let keep = req.uri().authority().cloned().or_else(|| {
                    req.headers()
                        .get(http::header::HOST)
                        .and_then(|h| Authority::try_from(h.as_bytes()).ok())
                });
                absolute_form(&mut req, keep.unwrap_or_else(|| dest.authority.clone()))?;
                req.headers_mut().remove(http::header::HOST);
                // Boxed: the HTTP/2 path (with its connect and handshake)
                // would size every request's future, HTTP/1 ones included.
                let addr = dest.pool.addr();
                let peer = dest.pool.peer();
                let (resp, slot) = Box::pin(self.h2.send(req, addr, peer, connect)).await?;
                let mut resp = streamed(resp);
                resp.body_mut().guard_mut().hold(slot);
                Ok(resp)
            }
        }
    }
}

/// The upstream's response, hop-by-hop headers removed (except those a
/// protocol switch needs), its body streamed through a [`ResponseBody`].
fn streamed(mut resp: Response<Incoming>) -> Response<ResponseBody> {
    let switching = resp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
    crate::proxy::headers::strip_hop_by_hop(resp.headers_mut(), switching);
    resp.map(ResponseBody::new)
}

/// HTTP/1 to an origin server: `/path?query`, and a `Host` header (from
/// the absolute URI of explicit proxy mode, else the upstream's address).
fn origin_form(req: &mut Request<ReqBody>, authority: &Authority) -> Result<(), MeshError> {
    if req.uri().scheme().is_some() || req.uri().authority().is_some() {
        let host = req.uri().authority().cloned();
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(path);
        if let Some(host) = host {
            let v = http::HeaderValue::from_str(host.as_str())
                .map_err(|e| MeshError::BadRequest(format!("invalid host: {e}")))?;
            req.headers_mut().entry(http::header::HOST).or_insert(v);
        }
    }
    if !req.headers().contains_key(http::header::HOST) {
        let v = http::HeaderValue::from_str(authority.as_str())
            .map_err(|e| MeshError::BadRequest(format!("invalid host: {e}")))?;
        req.headers_mut().insert(http::header::HOST, v);
    }
    Ok(())
}

/// `http://<authority><path>`, from the request's own parts (HTTP/2's
/// `:scheme` and `:authority`).
fn absolute_form(req: &mut Request<ReqBody>, authority: Authority) -> Result<(), MeshError> {
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    *req.uri_mut() = Uri::from_parts(parts)
        .map_err(|e| MeshError::BadRequest(format!("invalid request target: {e}")))?;
    Ok(())
}
