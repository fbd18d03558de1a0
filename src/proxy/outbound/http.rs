//! Outbound HTTP/1.1: route each request to a service endpoint (or, in
//! explicit mode, to an external host) over pooled keep-alive connections.

use super::body::ReqBody;
use super::target::{is_own, ConnTarget, Names, Route};
use crate::discovery::Directory;
use crate::net::ConnectOptions;
use crate::net::MarkedConnector;
use crate::proxy::rescue::MeshError;
use crate::telemetry::ProxyMetrics;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub type Body = Either<Incoming, Full<Bytes>>;
pub type UpstreamClient = Client<MarkedConnector, ReqBody>;

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Everything the outbound request path shares across connections.
pub struct HttpOutbound {
    pub dir: Arc<Directory>,
    pub clients: UpstreamClients,
    pub metrics: Arc<ProxyMetrics>,
    /// `.mesh` (with the leading dot), for name matching.
    pub domain_suffix: String,
    /// This proxy's listeners: forwarding there would loop.
    pub own_addrs: Vec<SocketAddr>,
    /// `1.1 mesh-<id>`: appended to `via`; seeing our own id again means
    /// the request came back around.
    pub via: HeaderValue,
    pub via_token: String,
}

impl HttpOutbound {
    /// Serves one request; never fails (mesh errors become responses).
    pub async fn handle(&self, req: Request<Incoming>, target: ConnTarget) -> Response<Body> {
        match self.forward(req, target).await {
            Ok(resp) => resp,
            Err(e) => {
                tracing::debug!(error = %e, "answered by the mesh");
                e.to_response().map(Either::Right)
            }
        }
    }

    async fn forward(
        &self,
        mut req: Request<Incoming>,
        target: ConnTarget,
    ) -> Result<Response<Body>, MeshError> {
        if self.looped(req.headers()) {
            return Err(MeshError::LoopDetected);
        }
        let authority = request_authority(&req)?;
        let route = {
            let table = self.dir.table();
            match target {
                ConnTarget::Vip(vip) => match table.by_vip(vip) {
                    Some(s) => Route::Service(s.clone()),
                    None => return Err(MeshError::UnknownService(vip.to_string())),
                },
                ConnTarget::FromRequest => Names {
                    domain_suffix: &self.domain_suffix,
                }
                .route(&table, authority)?,
            }
        };
        // Absolute-form without Host (HTTP/1.0 clients): the upstream still
        // needs to know which host was meant.
        let missing_host = (!req.headers().contains_key(header::HOST))
            .then(|| HeaderValue::from_str(authority).ok())
            .flatten();
        if let Some(v) = missing_host {
            req.headers_mut().insert(header::HOST, v);
        }
        strip_hop_by_hop(req.headers_mut());
        req.headers_mut().append(header::VIA, self.via.clone());

        match route {
            Route::Service(svc) => self.call_service(svc, req).await,
            Route::External { host, port } => {
                let addr = resolve(&host, port).await?;
                if is_own(&self.own_addrs, addr) {
                    return Err(MeshError::LoopDetected);
                }
                let client = self.clients.default_client();
                self.send(client, req.map(Either::Left), addr).await
            }
        }
    }

    /// The client whose connects give up after `connect`.
    pub(super) fn client_for(&self, connect: Duration) -> UpstreamClient {
        self.clients.get(connect)
    }

    pub(super) async fn send(
        &self,
        client: UpstreamClient,
        req: Request<ReqBody>,
        addr: SocketAddr,
    ) -> Result<Response<Body>, MeshError> {
        let authority = Authority::try_from(addr.to_string().as_str())
            .map_err(|e| MeshError::BadRequest(format!("invalid upstream address: {e}")))?;
        self.send_to(client, req, addr, authority).await
    }

    /// Sends to `addr`, whose authority the caller already has (endpoints
    /// keep theirs, so the request path formats and parses nothing).
    pub(super) async fn send_to(
        &self,
        client: UpstreamClient,
        mut req: Request<ReqBody>,
        addr: SocketAddr,
        authority: Authority,
    ) -> Result<Response<Body>, MeshError> {
        let mut parts = std::mem::take(req.uri_mut()).into_parts();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(authority);
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(PathAndQuery::from_static("/"));
        }
        *req.uri_mut() = Uri::from_parts(parts)
            .map_err(|e| MeshError::BadRequest(format!("invalid request target: {e}")))?;
        match client.request(req).await {
            Ok(mut resp) => {
                strip_hop_by_hop(resp.headers_mut());
                Ok(resp.map(Either::Left))
            }
            Err(e) if e.is_connect() => Err(MeshError::ConnectFailed {
                addr,
                reason: error_chain(&e),
            }),
            Err(e) => Err(MeshError::UpstreamReset {
                addr,
                reason: error_chain(&e),
            }),
        }
    }

    fn looped(&self, headers: &HeaderMap) -> bool {
        headers
            .get_all(header::VIA)
            .iter()
            .any(|v| v.to_str().is_ok_and(|s| s.contains(&self.via_token)))
    }
}

/// Pooled upstream clients, one per connect timeout in use (policies set
/// it per service; most share the default, which needs no lock).
pub struct UpstreamClients {
    /// Mark and default connect timeout (`--connect-timeout`).
    opts: ConnectOptions,
    default: UpstreamClient,
    /// Clients for other connect timeouts, made on first use.
    others: Mutex<HashMap<Duration, UpstreamClient>>,
}

// === impl UpstreamClients ===

impl UpstreamClients {
    pub fn new(opts: ConnectOptions) -> Self {
        UpstreamClients {
            opts,
            default: build_client(opts),
            others: Mutex::new(HashMap::new()),
        }
    }

    pub fn default_client(&self) -> UpstreamClient {
        self.default.clone()
    }

    pub fn get(&self, connect: Duration) -> UpstreamClient {
        if connect == self.opts.timeout {
            return self.default.clone();
        }
        let mut others = self.others.lock().unwrap_or_else(|e| e.into_inner());
        others
            .entry(connect)
            .or_insert_with(|| {
                build_client(ConnectOptions {
                    timeout: connect,
                    ..self.opts
                })
            })
            .clone()
    }
}

fn build_client(opts: ConnectOptions) -> UpstreamClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_timer(TokioTimer::new())
        .build(MarkedConnector { opts })
}

/// The authority a request is for: absolute-form URI first (explicit
/// proxy mode), else the Host header.
fn request_authority(req: &Request<Incoming>) -> Result<&str, MeshError> {
    if let Some(a) = req.uri().authority() {
        if req.uri().scheme_str().is_some_and(|s| s != "http") {
            return Err(MeshError::BadRequest(format!(
                "only http:// targets can be proxied, not {}",
                req.uri()
            )));
        }
        return Ok(a.as_str());
    }
    match req.headers().get(header::HOST).map(|h| h.to_str()) {
        Some(Ok(h)) if !h.is_empty() => Ok(h),
        Some(_) => Err(MeshError::BadRequest("invalid Host header".into())),
        None => Err(MeshError::BadRequest(
            "no Host header and no absolute URI: cannot tell where the request goes".into(),
        )),
    }
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named in `Connection` are hop-by-hop too; most requests
    // carry no `Connection` header, so skip the scan (and its allocation).
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for h in &named {
            headers.remove(h);
        }
    }
    for h in &HOP_BY_HOP {
        if headers.contains_key(h) {
            headers.remove(h);
        }
    }
}

async fn resolve(host: &str, port: u16) -> Result<SocketAddr, MeshError> {
    if let Ok(ip) = host.parse() {
        return Ok(SocketAddr::new(ip, port));
    }
    let mut addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|_| MeshError::UnknownService(host.to_string()))?;
    addrs
        .next()
        .ok_or_else(|| MeshError::UnknownService(host.to_string()))
}

/// `a: b: c` from an error and its sources: hyper's top-level messages
/// alone ("client error (Connect)") hide the cause.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::ACCEPT));
    }
}
