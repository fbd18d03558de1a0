//! Inbound HTTP: the concurrency limit, header hygiene, the caller's
//! deadline, and the hop to the app on localhost.

use crate::authz;
use crate::discovery::Directory;
use crate::identity::SpiffeId;
use crate::proxy::admission::ConnSlot;
use crate::proxy::body::{RespBody, StreamedBody};
use crate::proxy::grpc;
use crate::proxy::headers::{self, MESH_CALLER};
use crate::proxy::protocol::tunnel::splice_upgrade;
use crate::proxy::rescue::MeshError;
use crate::proxy::upstream::{proto_of, Dest, H1Pool, Upstreams};
use crate::telemetry::trace::{Attr, Kind};
use crate::telemetry::ProxyMetrics;
use http::uri::Authority;
use http::{HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::Either;
use hyper::body::Incoming;
use prometheus_client::metrics::gauge::Gauge;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// A slot of the inbound concurrency limit, reflected in a gauge; held by
/// the response until it ends.
#[derive(Debug)]
struct InboundPermit {
    _permit: OwnedSemaphorePermit,
    gauge: Gauge,
}

impl InboundPermit {
    fn new(permit: OwnedSemaphorePermit, gauge: Gauge) -> Self {
        gauge.inc();
        InboundPermit {
            _permit: permit,
            gauge,
        }
    }
}

impl Drop for InboundPermit {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// The app at one address: where requests go, and its connections.
#[derive(Clone)]
pub struct App {
    pub addr: SocketAddr,
    pub authority: Authority,
    pub conns: Arc<H1Pool>,
}

impl App {
    pub fn new(addr: SocketAddr, conns: Arc<H1Pool>) -> Self {
        App {
            addr,
            // A socket address always forms a valid authority.
            authority: Authority::try_from(addr.to_string().as_str())
                .unwrap_or_else(|_| Authority::from_static("127.0.0.1")),
            conns,
        }
    }
}

/// A caller proven by its certificate on this connection (mTLS), made
/// once per connection: what policies match and the app is told.
#[derive(Debug)]
pub struct Verified {
    pub id: SpiffeId,
    /// `spiffe://...`, as AuthorizationPolicy rules name it.
    pub uri: String,
    /// `x-mesh-caller` for the app: the same URI.
    pub header: HeaderValue,
}

impl Verified {
    pub fn new(id: SpiffeId) -> Option<Arc<Verified>> {
        let uri = id.to_string();
        let header = HeaderValue::from_str(&uri).ok()?;
        Some(Arc::new(Verified { id, uri, header }))
    }
}

pub struct InboundHttp {
    /// Callers are labelled only by names the registry knows.
    pub dir: Arc<Directory>,
    /// This pod's service (`--service`): whose AuthorizationPolicy applies.
    pub service: Option<String>,
    /// Identity on: callers are known only by their certificates; a
    /// plaintext caller is unauthenticated whatever its headers say.
    pub identity: bool,
    pub upstreams: Arc<Upstreams>,
    pub metrics: Arc<ProxyMetrics>,
    /// `--inbound-max-concurrent` permits.
    pub limit: Arc<Semaphore>,
    pub max_concurrent: u32,
    /// For upgraded (WebSocket) connections.
    pub idle: Duration,
    /// With `--otlp-endpoint`: server spans.
    pub tracer: Option<Arc<crate::telemetry::trace::Tracer>>,
}

impl InboundHttp {
    /// One request to the app. A deadline the caller's proxy sent
    /// (`x-mesh-timeout`) or a `grpc-timeout` bounds the time to the app's
    /// answer (504 `timeout` past it), and is handed on to the app.
    pub async fn handle(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        app: App,
        verified: Option<Arc<Verified>>,
    ) -> Result<Response<RespBody>, MeshError> {
        let start = Instant::now();
        let grpc = grpc::is_grpc(req.headers());
        // Cloning the value (a refcount) keeps `req` free to change.
        let caller_value = match (&verified, self.identity) {
            // Identity off: the peer proxy's word, as before identity.
            (None, false) => req.headers().get(MESH_CALLER).cloned(),
            _ => None,
        };
        let caller = match &verified {
            // Proven, and only the CA's operator mints identities: bounded.
            Some(v) => v.id.service(),
            None => self.caller(caller_value.as_ref()),
        };
        self.authorize(&req, verified.as_deref(), caller)?;
        let Ok(permit) = self.limit.clone().try_acquire_owned() else {
            let err = MeshError::Overloaded(self.max_concurrent);
            self.metrics.traffic.inbound_rejected(err.reason());
            self.metrics
                .traffic
                .inbound_request(caller, err.status().as_u16(), 0.0);
            return Err(err);
        };
        let permit = InboundPermit::new(permit, self.metrics.traffic.inbound_inflight.clone());
        let upgrade = (req.version() == Version::HTTP_11
            && headers::wants_tunnel_upgrade(req.headers()))
        .then(|| hyper::upgrade::on(&mut req));
        let slot = req.extensions_mut().remove::<ConnSlot>();
        headers::host_from_target(&mut req);
        let method = self.tracer.as_ref().map(|_| req.method().clone());
        let h = req.headers_mut();
        let left = headers::caller_deadline(h);
        headers::strip_mesh_headers(h);
        if let Some(v) = &verified {
            h.insert(MESH_CALLER, v.header.clone());
        }
        headers::strip_hop_by_hop(h, upgrade.is_some());
        headers::append_forwarded(h, peer.ip(), "http");
        let fresh_trace = headers::ensure_traceparent(h);
        let span = match (&self.tracer, method) {
            (Some(t), Some(method)) => t
                .begin(h, fresh_trace, Kind::Server)
                .map(|s| (t.clone(), s, method)),
            _ => None,
        };
        if let Some(left) = left {
            headers::tell_deadline(h, left, grpc);
        }
        let proto = proto_of(&req);
        let connect = self.upstreams.connect_timeout();
        let dest = Dest {
            pool: &app.conns,
            authority: &app.authority,
        };
        let sent = self.upstreams.send(
            req.map(|b| Either::Left(StreamedBody::plain(b))),
            dest,
            connect,
            proto,
        );
        let sent = match left {
            Some(left) => tokio::time::timeout(left, sent)
                .await
                .unwrap_or(Err(MeshError::Timeout(left))),
            None => sent.await,
        };
        let elapsed = start.elapsed().as_secs_f64();
        if let Some((tracer, started, method)) = span {
            let status = match &sent {
                Ok(r) => r.status(),
                Err(e) => e.status(),
            };
            let service = self.service.as_deref().unwrap_or("app");
            let mut attrs = vec![
                Attr::Str("http.request.method", method.to_string()),
                Attr::Str("mesh.service", service.to_string()),
                Attr::Str("mesh.caller", caller.to_string()),
            ];
            if let Some(v) = &verified {
                attrs.push(Attr::Str("mesh.peer.identity", v.uri.clone()));
            }
            if let Err(e) = &sent {
                attrs.push(Attr::Str("mesh.error", e.reason().to_string()));
            }
            tracer.finish(
                started,
                format!("{method} {service}"),
                status.as_u16(),
                attrs,
            );
        }
        match sent {
            Ok(mut resp) => {
                // The app's own headers must not pose as the mesh's.
                headers::strip_mesh_headers(resp.headers_mut());
                resp.body_mut().guard_mut().hold(permit);
                self.metrics
                    .traffic
                    .inbound_request(caller, resp.status().as_u16(), elapsed);
                let mut resp = resp.map(Either::Left);
                if let Some(downstream) = upgrade {
                    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                        splice_upgrade(downstream, &mut resp, self.idle, slot);
                    }
                }
                Ok(resp)
            }
            Err(e) => {
                tracing::debug!(%peer, app = %app.addr, error = %e, "inbound request failed");
                self.metrics.traffic.inbound_rejected(e.reason());
                self.metrics
                    .traffic
                    .inbound_request(caller, e.status().as_u16(), elapsed);
                Err(e)
            }
        }
    }
}

impl InboundHttp {
    /// This service's AuthorizationPolicy, for this caller, method and
    /// path: a refusal is `403 forbidden`, counted by caller and rule.
    fn authorize(
        &self,
        req: &Request<Incoming>,
        verified: Option<&Verified>,
        label: &str,
    ) -> Result<(), MeshError> {
        let Some(service) = &self.service else {
            return Ok(());
        };
        let policies = self.dir.authz();
        if policies.is_empty() {
            return Ok(());
        }
        let caller = verified.map(|v| v.uri.as_str());
        let ask = authz::Request::http(caller, req.method().as_str(), req.uri().path());
        let decision = policies.decide(service, &ask);
        if decision.allowed {
            return Ok(());
        }
        self.metrics.traffic.inbound_denied(label, &decision.rule);
        let err = MeshError::Forbidden {
            caller: caller.unwrap_or("an unauthenticated client").to_string(),
            service: service.clone(),
            rule: decision.rule,
        };
        self.metrics.traffic.inbound_rejected(err.reason());
        self.metrics.traffic.inbound_request(label, 403, 0.0);
        Err(err)
    }

    /// The calling service a peer proxy named, if the registry knows it:
    /// anyone can send the header, and the metric's label set must stay
    /// bounded by the registry's services.
    fn caller<'a>(&self, value: Option<&'a HeaderValue>) -> &'a str {
        value
            .and_then(|v| v.to_str().ok())
            .filter(|name| self.dir.table().knows(name))
            .unwrap_or("unknown")
    }
}
