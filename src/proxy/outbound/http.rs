//! Outbound HTTP: route each request to a service endpoint (or, in
//! explicit mode, to an external host), in the caller's HTTP version.

use super::opaque::OpaqueOutbound;
use super::policy::Caps;
use super::request::Services;
use super::target::{is_own, resolve, ConnTarget, Names, Route};
use crate::discovery::Directory;
use crate::net::Io;
use crate::proxy::admission::ConnSlot;
use crate::proxy::body::{RespBody, StreamGuard, StreamedBody};
use crate::proxy::headers;
use crate::proxy::protocol::{tunnel, PrefixedIo};
use crate::proxy::rescue::MeshError;
use crate::proxy::upstream::{proto_of, Dest, Upstreams};
use crate::telemetry::ProxyMetrics;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::Authority;
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};
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
    pub opaque: Arc<OpaqueOutbound>,
    /// With `--otlp-endpoint`: client spans.
    pub tracer: Option<Arc<crate::telemetry::trace::Tracer>>,
    /// `--access-log` and the policies' `accessLog`.
    pub access_log: crate::telemetry::access_log::OutboundLog,
    /// Recent decision trails (`mesh-ctl explain`).
    pub trails: Arc<super::trails::Trails>,
    /// Calls to tapped services (`mesh-ctl tap`).
    pub tap: Arc<super::tap::Tap>,
}

impl HttpOutbound {
    /// Serves one request. Mesh failures come back as [`MeshError`], for
    /// the listener to render.
    pub async fn handle(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        target: ConnTarget,
    ) -> Result<Response<RespBody>, MeshError> {
        if req.method() == Method::CONNECT {
            return match target {
                // Boxed, as every rare path here: hyper keeps room for this
                // future in every connection, sized for its largest state.
                ConnTarget::FromRequest => Box::pin(self.connect(req)).await,
                ConnTarget::Vip(_) => Err(MeshError::BadRequest(
                    "CONNECT is for explicit proxy mode, not to a service address".into(),
                )),
            };
        }
        let upgrade = (req.version() == Version::HTTP_11
            && headers::wants_tunnel_upgrade(req.headers()))
        .then(|| hyper::upgrade::on(&mut req));
        let slot = req.extensions_mut().remove::<ConnSlot>();
        let mut resp = self.forward(req, target, upgrade.is_some()).await?;
        if let Some(downstream) = upgrade {
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                tunnel::splice_upgrade(downstream, &mut resp, self.opaque.idle, slot);
            }
        }
        Ok(resp)
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
        let route = match target {
            ConnTarget::Vip(vip) => match self.dir.service_by_vip(vip) {
                Some(s) => Route::Service(s),
                None => return Err(MeshError::UnknownService(vip.to_string())),
            },
            ConnTarget::FromRequest => Names {
                domain_suffix: &self.domain_suffix,
            }
            .route(&self.dir, authority)?,
        };
        headers::host_from_target(&mut req);
        let h = req.headers_mut();
        headers::strip_hop_by_hop(h, upgrade);
        let fresh_trace = headers::ensure_traceparent(h);
        h.append(header::VIA, self.via.clone());

        match route {
            Route::Service(svc) => {
                self.services(fresh_trace)
                    .call(svc, req, Caps::default())
                    .await
            }
            Route::External { host, port } => Box::pin(self.external(req, &host, port)).await,
        }
    }

    fn services(&self, fresh_trace: bool) -> Services<'_> {
        Services {
            dir: &self.dir,
            metrics: &self.metrics,
            upstreams: &self.upstreams,
            caller: self.caller.as_ref(),
            tag_endpoint: false,
            trace: self.tracer.as_deref().map(|t| (t, fresh_trace)),
            access_log: Some(&self.access_log),
            trails: &self.trails,
            tap: &self.tap,
        }
    }

    /// Explicit mode to a host outside the mesh: no policy, one try.
    async fn external(
        &self,
        req: Request<Incoming>,
        host: &str,
        port: u16,
    ) -> Result<Response<RespBody>, MeshError> {
        let addr = self.outside(host, port).await?;
        let authority = Authority::try_from(addr.to_string().as_str())
            .map_err(|e| MeshError::BadRequest(format!("invalid upstream address: {e}")))?;
        let proto = proto_of(&req);
        let pool = self.upstreams.pool(addr);
        let dest = Dest {
            pool: &pool,
            authority: &authority,
        };
        let connect = self.upstreams.connect_timeout();
        let req = req.map(|b| Either::Left(StreamedBody::plain(b)));
        let resp = self.upstreams.send(req, dest, connect, proto).await?;
        Ok(resp.map(Either::Left))
    }

    /// A host outside the mesh, resolved; never this proxy itself.
    async fn outside(&self, host: &str, port: u16) -> Result<SocketAddr, MeshError> {
        let addr = resolve(host, port).await?;
        if is_own(&self.own_addrs, addr) {
            return Err(MeshError::LoopDetected);
        }
        Ok(addr)
    }

    /// `CONNECT host:port`: connects (a mesh name goes to one of the
    /// service's endpoints, through its policy), answers 200, then relays
    /// the caller's bytes.
    async fn connect(&self, mut req: Request<Incoming>) -> Result<Response<RespBody>, MeshError> {
        let (stream, guard) = self.open_tunnel(&req).await.inspect_err(|e| {
            tracing::debug!(error = %e, "CONNECT refused");
        })?;
        let downstream = hyper::upgrade::on(&mut req);
        let slot = req.extensions_mut().remove::<ConnSlot>();
        tunnel::splice_connect(downstream, stream, self.opaque.idle, guard, slot);
        Ok(Response::new(Either::Right(Full::new(Bytes::new()))))
    }

    async fn open_tunnel(
        &self,
        req: &Request<Incoming>,
    ) -> Result<(PrefixedIo<Io>, StreamGuard), MeshError> {
        let authority = req
            .uri()
            .authority()
            .ok_or_else(|| MeshError::BadRequest("CONNECT needs host:port".into()))?;
        let route = Names {
            domain_suffix: &self.domain_suffix,
        }
        .route(&self.dir, authority.as_str())?;
        let mut guard = StreamGuard::default();
        match route {
            Route::Service(svc) => {
                self.metrics.traffic.connection(&svc.name, "connect");
                let mut opened = self.opaque.open(&svc).await?;
                opened.confirm();
                let (stream, slot) = opened.into_parts();
                guard.hold(slot);
                Ok((stream, guard))
            }
            Route::External { host, port } => {
                let addr = self.outside(&host, port).await?;
                let timeout = self.upstreams.connect_timeout();
                let stream = self.upstreams.dialer().open(addr, timeout, None).await?;
                Ok((PrefixedIo::new(Bytes::new(), stream), guard))
            }
        }
    }

    fn looped(&self, headers: &HeaderMap) -> bool {
        headers
            .get_all(header::VIA)
            .iter()
            .any(|v| v.to_str().is_ok_and(|s| s.contains(&self.via_token)))
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
