//! Inbound HTTP: the concurrency limit, header hygiene, and the hop to the
//! app on localhost.

use crate::discovery::Directory;
use crate::proxy::body::{InboundPermit, RespBody, StreamedBody};
use crate::proxy::grpc;
use crate::proxy::headers::{self, MESH_CALLER};
use crate::proxy::outbound::{proto_of, rescue, splice_upgrade};
use crate::proxy::rescue::MeshError;
use crate::proxy::upstream::Upstreams;
use crate::telemetry::ProxyMetrics;
use http::uri::Authority;
use http::{HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::Either;
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;

pub struct InboundHttp {
    /// Callers are labelled only by names the registry knows.
    pub dir: Arc<Directory>,
    pub upstreams: Arc<Upstreams>,
    pub metrics: Arc<ProxyMetrics>,
    /// `--inbound-max-concurrent` permits.
    pub limit: Arc<Semaphore>,
    pub max_concurrent: u32,
    /// For upgraded (WebSocket) connections.
    pub idle: Duration,
}

impl InboundHttp {
    pub async fn handle(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        app: SocketAddr,
        authority: Authority,
    ) -> Response<RespBody> {
        let start = Instant::now();
        let grpc = grpc::is_grpc(req.headers());
        // Cloning the value (a refcount) keeps `req` free to change.
        let caller_value = req.headers().get(MESH_CALLER).cloned();
        let caller = self.caller(caller_value.as_ref());
        let Ok(permit) = self.limit.clone().try_acquire_owned() else {
            let err = MeshError::Overloaded(self.max_concurrent);
            self.metrics.traffic.inbound_rejected(err.reason());
            self.metrics
                .traffic
                .inbound_request(caller, err.status().as_u16(), 0.0);
            return rescue(&err, grpc);
        };
        let permit = InboundPermit::new(permit, self.metrics.traffic.inbound_inflight.clone());
        let upgrade = (req.version() == Version::HTTP_11
            && headers::wants_tunnel_upgrade(req.headers()))
        .then(|| hyper::upgrade::on(&mut req));
        let h = req.headers_mut();
        headers::strip_mesh_headers(h);
        headers::strip_hop_by_hop(h, upgrade.is_some());
        headers::append_forwarded(h, peer.ip());
        headers::ensure_traceparent(h);
        let proto = proto_of(&req);
        let connect = self.upstreams.connect_timeout();
        let sent = self
            .upstreams
            .send(
                req.map(|b| Either::Left(StreamedBody::plain(b))),
                app,
                authority,
                connect,
                proto,
            )
            .await;
        let elapsed = start.elapsed().as_secs_f64();
        match sent {
            Ok(mut resp) => {
                // The app's own headers must not pose as the mesh's.
                headers::strip_mesh_headers(resp.headers_mut());
                resp.body_mut().guard_mut().inbound = Some(permit);
                self.metrics
                    .traffic
                    .inbound_request(caller, resp.status().as_u16(), elapsed);
                let mut resp = resp.map(Either::Left);
                if let Some(downstream) = upgrade {
                    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                        splice_upgrade(downstream, &mut resp, self.idle);
                    }
                }
                resp
            }
            Err(e) => {
                tracing::debug!(%peer, %app, error = %e, "inbound request failed");
                self.metrics.traffic.inbound_rejected(e.reason());
                self.metrics
                    .traffic
                    .inbound_request(caller, e.status().as_u16(), elapsed);
                rescue(&e, grpc)
            }
        }
    }
}

impl InboundHttp {
    /// The calling service a peer proxy named, if the registry knows it:
    /// anyone can send the header, and the metric's label set must stay
    /// bounded by the registry's services.
    fn caller<'a>(&self, value: Option<&'a HeaderValue>) -> &'a str {
        value
            .and_then(|v| v.to_str().ok())
            .filter(|name| self.dir.table().by_name(name).is_some())
            .unwrap_or("unknown")
    }
}
