//! Outbound HTTP: route each request to a service endpoint (or, in
//! explicit mode, to an external host), in the caller's HTTP version.

use super::target::{is_own, ConnTarget, Names, Route};
use super::tunnel;
use crate::discovery::Directory;
use crate::proxy::body::{RespBody, StreamedBody};
use crate::proxy::grpc;
use crate::proxy::headers::{self, MESH_CALLER};
use crate::proxy::rescue::MeshError;
use crate::proxy::upstream::{Proto, Upstreams};
use crate::telemetry::ProxyMetrics;
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::Authority;
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::Either;
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::Arc;

/// Everything the outbound request path shares across connections.
pub struct HttpOutbound {
    pub dir: Arc<Directory>,
    pub upstreams: Arc<Upstreams>,
    pub metrics: Arc<ProxyMetrics>,
    /// `.mesh` (with the leading dot), for name matching.
    pub domain_suffix: String,
    /// This proxy's listeners: forwarding there would loop.
    pub own_addrs: Vec<SocketAddr>,
    /// `1.1 mesh-<id>`: appended to `via`; seeing our own id again means
    /// the request came back around.
    pub via: HeaderValue,
    pub via_token: String,
    /// This pod's service, sent as `x-mesh-caller` to peer proxies (their
    /// inbound metrics are labelled by caller).
    pub caller: Option<HeaderValue>,
    /// Opaque TCP settings, for CONNECT tunnels to mesh services.
    pub opaque: Arc<super::opaque::OpaqueOutbound>,
}

impl HttpOutbound {
    /// Serves one request; never fails (mesh errors become responses, in
    /// gRPC's form for gRPC callers).
    pub async fn handle(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        target: ConnTarget,
    ) -> Response<RespBody> {
        let grpc = grpc::is_grpc(req.headers());
        if req.method() == Method::CONNECT {
            return match target {
                // Boxed, as every rare path here: hyper keeps room for this
                // future in every connection, sized for its largest state.
                ConnTarget::FromRequest => Box::pin(tunnel::connect(&self, req)).await,
                ConnTarget::Vip(_) => MeshError::BadRequest(
                    "CONNECT is for explicit proxy mode, not to a service address".into(),
                )
                .to_response()
                .map(Either::Right),
            };
        }
        let upgrade = (req.version() == Version::HTTP_11
            && headers::wants_tunnel_upgrade(req.headers()))
        .then(|| hyper::upgrade::on(&mut req));
        match self.forward(req, target, upgrade.is_some()).await {
            Ok(mut resp) => {
                if let Some(downstream) = upgrade {
                    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                        tunnel::splice_upgrade(downstream, &mut resp, self.opaque.idle);
                    }
                }
                resp
            }
            Err(e) => {
                tracing::debug!(error = %e, "answered by the mesh");
                rescue(&e, grpc)
            }
        }
    }

    async fn forward(
        &self,
        mut req: Request<Incoming>,
        target: ConnTarget,
        upgrade: bool,
    ) -> Result<Response<RespBody>, MeshError> {
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
        let missing_host = (req.version() < Version::HTTP_2
            && !req.headers().contains_key(header::HOST))
        .then(|| HeaderValue::from_str(authority).ok())
        .flatten();
        if let Some(v) = missing_host {
            req.headers_mut().insert(header::HOST, v);
        }
        let h = req.headers_mut();
        headers::strip_hop_by_hop(h, upgrade);
        headers::ensure_traceparent(h);
        h.append(header::VIA, self.via.clone());

        match route {
            Route::Service(svc) => self.call_service(svc, req).await,
            Route::External { host, port } => {
                let addr = Box::pin(resolve(&host, port)).await?;
                if is_own(&self.own_addrs, addr) {
                    return Err(MeshError::LoopDetected);
                }
                let authority = Authority::try_from(addr.to_string().as_str())
                    .map_err(|e| MeshError::BadRequest(format!("invalid upstream address: {e}")))?;
                let proto = proto_of(&req);
                let connect = self.upstreams.connect_timeout();
                let resp = Box::pin(self.upstreams.send(
                    req.map(|b| Either::Left(StreamedBody::plain(b))),
                    addr,
                    authority,
                    connect,
                    proto,
                ))
                .await?;
                Ok(resp.map(Either::Left))
            }
        }
    }

    /// Marks a request for a peer proxy with this pod's service name.
    pub(super) fn add_caller(&self, headers: &mut HeaderMap) {
        match &self.caller {
            Some(c) => headers.insert(MESH_CALLER, c.clone()),
            None => headers.remove(MESH_CALLER),
        };
    }

    fn looped(&self, headers: &HeaderMap) -> bool {
        headers
            .get_all(header::VIA)
            .iter()
            .any(|v| v.to_str().is_ok_and(|s| s.contains(&self.via_token)))
    }
}

/// The HTTP version to speak upstream: the caller's.
pub fn proto_of<B>(req: &Request<B>) -> Proto {
    match req.version() {
        Version::HTTP_2 => Proto::Http2,
        _ => Proto::Http1,
    }
}

/// A mesh error as the caller can read it.
pub fn rescue(e: &MeshError, grpc: bool) -> Response<RespBody> {
    if grpc {
        grpc::error_response(e).map(Either::Right)
    } else {
        e.to_response().map(Either::Right)
    }
}

/// The authority a request is for: absolute-form URI first (explicit
/// proxy mode, and HTTP/2's `:authority`), else the Host header.
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

pub(super) async fn resolve(host: &str, port: u16) -> Result<SocketAddr, MeshError> {
    if let Ok(ip) = host.parse() {
        return Ok(SocketAddr::new(ip, port));
    }
    let failed = |reason: String| MeshError::DnsFailed {
        host: host.to_string(),
        reason,
    };
    let mut addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| failed(e.to_string()))?;
    addrs.next().ok_or_else(|| failed("no address".into()))
}
