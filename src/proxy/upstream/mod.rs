//! Connections from the proxy to upstreams (service endpoints, peer
//! proxies' inbound listeners, the local app, external hosts).
//!
//! HTTP/1.1 goes over hyper-util's pooled keep-alive client (one per
//! connect timeout in use). HTTP/2 goes over multiplexed connections per
//! address ([`H2Pool`]), made with hyper's connection API so that the
//! request keeps its own `:authority` while the socket goes to the
//! endpoint the balancer chose. Responses come back as [`ResponseBody`]
//! streams, hop-by-hop headers removed.

mod h2;

pub use h2::{H2Pool, StreamSlot, MAX_STREAMS_PER_CONN};

use super::body::{ReqBody, ResponseBody};
use super::rescue::MeshError;
use crate::net::{ConnectOptions, MarkedConnector};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

pub type H1Client = Client<MarkedConnector, ReqBody>;

/// Which HTTP version to speak to the upstream: the caller's, so h2c
/// callers (gRPC) reach h2c servers and HTTP/1 callers HTTP/1 servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Http1,
    Http2,
}

/// Every upstream connection the proxy makes.
pub struct Upstreams {
    /// Mark and default connect timeout (`--connect-timeout`).
    opts: ConnectOptions,
    default: H1Client,
    /// HTTP/1 clients for other connect timeouts, made on first use.
    others: Mutex<HashMap<Duration, H1Client>>,
    h2: H2Pool,
}

// === impl Upstreams ===

impl Upstreams {
    pub fn new(opts: ConnectOptions) -> Self {
        Upstreams {
            opts,
            default: build_h1(opts),
            others: Mutex::new(HashMap::new()),
            h2: H2Pool::new(opts.mark),
        }
    }

    /// The default connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        self.opts.timeout
    }

    fn h1(&self, connect: Duration) -> H1Client {
        if connect == self.opts.timeout {
            return self.default.clone();
        }
        let mut others = self.others.lock().unwrap_or_else(|e| e.into_inner());
        others
            .entry(connect)
            .or_insert_with(|| {
                build_h1(ConnectOptions {
                    timeout: connect,
                    ..self.opts
                })
            })
            .clone()
    }

    /// Sends `req` to `addr`. `authority` is `addr` as a URI authority
    /// (endpoints keep theirs, so the hot path formats nothing); HTTP/1
    /// requests keep their `Host` header, HTTP/2 requests their
    /// `:authority`.
    pub async fn send(
        &self,
        mut req: Request<ReqBody>,
        addr: SocketAddr,
        authority: Authority,
        connect: Duration,
        proto: Proto,
    ) -> Result<Response<ResponseBody>, MeshError> {
        match proto {
            Proto::Http1 => {
                set_uri(&mut req, authority)?;
                let resp =
                    self.h1(connect)
                        .request(req)
                        .await
                        .map_err(|e| match e.is_connect() {
                            true => MeshError::ConnectFailed {
                                addr,
                                reason: error_chain(&e),
                            },
                            false => MeshError::UpstreamReset {
                                addr,
                                reason: error_chain(&e),
                            },
                        })?;
                Ok(streamed(resp))
            }
            Proto::Http2 => {
                // Keep the caller's authority; fall back to the endpoint's.
                let keep = req.uri().authority().cloned().or_else(|| {
                    req.headers()
                        .get(http::header::HOST)
                        .and_then(|h| Authority::try_from(h.as_bytes()).ok())
                });
                set_uri(&mut req, keep.unwrap_or(authority))?;
                req.headers_mut().remove(http::header::HOST);
                // Boxed: the HTTP/2 path (with its connect and handshake)
                // would size every request's future, HTTP/1 ones included.
                let (resp, slot) = Box::pin(self.h2.send(req, addr, connect)).await?;
                let mut resp = streamed(resp);
                resp.body_mut().guard_mut().h2_stream = Some(slot);
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

fn build_h1(opts: ConnectOptions) -> H1Client {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_timer(TokioTimer::new())
        .build(MarkedConnector { opts })
}

/// `http://<authority><path>`, from the request's own parts.
fn set_uri(req: &mut Request<ReqBody>, authority: Authority) -> Result<(), MeshError> {
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

/// `a: b: c` from an error and its sources: hyper's top-level messages
/// alone ("client error (Connect)") hide the cause.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
