//! The outbound listener: every connection the app makes to the mesh.
//!
//! One port serves both modes. A connection redirected by iptables carries
//! its original destination (SO_ORIGINAL_DST). To a VIP, its protocol is
//! detected: HTTP/1 and HTTP/2 go through the per-request policy stack,
//! anything else (TLS, server-speaks-first, binary protocols) is opaque TCP
//! balanced per connection. Redirected connections elsewhere are relayed
//! untouched. A connection made to the port directly (explicit
//! `http_proxy` mode) is HTTP whose requests name their targets, CONNECT
//! included.

mod http;
mod opaque;
pub mod policy;
mod replay;
pub mod request;
pub mod tap;
mod target;
pub mod trails;

pub use self::http::HttpOutbound;
pub use crate::resilience::fallback::MESH_FALLBACK;
pub use opaque::{OpaqueOutbound, Opened, LEARN_WITHIN};
pub use target::{is_own, split_host_port, ConnTarget};

use crate::discovery::Service;
use crate::net::ConnectOptions;
use crate::proxy::admission::Admission;
use crate::proxy::limits::Limits;
use crate::proxy::protocol::{
    detect, fast_close, original_dst, relay, sort, DetectConfig, Learned, PrefixedIo, Protocol,
    Sorted,
};
use crate::proxy::server::{self, Accepted};
use crate::proxy::upstream::Proto;
use crate::telemetry::ProxyMetrics;
use bytes::Bytes;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Accepts outbound connections until `shutdown`, then lets in-flight
/// requests finish for up to `drain` before returning.
pub struct OutboundServer {
    pub http: Arc<HttpOutbound>,
    pub opaque: Arc<OpaqueOutbound>,
    pub metrics: Arc<ProxyMetrics>,
    pub vip_net: crate::model::Ipv4Cidr,
    pub connect: ConnectOptions,
    pub detect: DetectConfig,
    /// Shared with `/state`.
    pub learned: Arc<Learned>,
    pub limits: Arc<Limits>,
    pub admission: Admission,
}

impl OutboundServer {
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: CancellationToken,
        drain: Duration,
    ) {
        let this = self;
        server::accept_until(
            listener,
            &shutdown,
            drain,
            &this.admission,
            |stream, peer, accepted| {
                let local = stream.local_addr().ok();
                let orig = original_dst(&stream).filter(|d| Some(*d) != local);
                let this = this.clone();
                let stop = shutdown.clone();
                async move {
                    match orig {
                        Some(SocketAddr::V4(d)) if this.vip_net.contains(*d.ip()) => {
                            this.serve_vip(stream, peer, d, &stop, accepted).await;
                        }
                        Some(dst) => Box::pin(this.relay(stream, dst)).await,
                        None => this.serve_explicit(stream, peer, &stop, accepted).await,
                    }
                }
            },
        )
        .await;
    }

    /// A connection to a service's VIP. A port declared or learned opaque
    /// is relayed at once; a port known to be client-first is detected
    /// from the client's bytes; any other port is sorted by who speaks
    /// first, with an endpoint connection opened meanwhile (see
    /// `protocol::sort`).
    async fn serve_vip(
        &self,
        mut stream: TcpStream,
        peer: SocketAddr,
        dst: SocketAddrV4,
        shutdown: &CancellationToken,
        accepted: Accepted,
    ) {
        let Some(svc) = self.http.dir.service_by_vip(*dst.ip()) else {
            tracing::debug!(%dst, "connection to a VIP no service holds");
            self.metrics
                .mesh_error(&dst.ip().to_string(), "unknown-service");
            fast_close(stream);
            return;
        };
        let port = dst.port();
        if self.skips_detection(&svc, port) {
            self.metrics.traffic.connection(&svc.name, "opaque");
            let io = PrefixedIo::new(Bytes::new(), stream);
            return Box::pin(self.opaque.serve(io, &svc, None, None::<fn()>)).await;
        }
        let timeout = self.detect.timeout;
        let sorted = if self.learned.is_client_first(&svc.name, port) {
            detect(&mut stream, timeout)
                .await
                .map(|detected| Sorted::Client {
                    detected,
                    upstream: None,
                })
        } else {
            let sorted = Box::pin(sort(&mut stream, self.opaque.open(&svc), timeout)).await;
            if let Ok(s) = &sorted {
                self.metrics
                    .traffic
                    .early_connect(&svc.name, port, s.first());
            }
            sorted
        };
        let (detected, upstream) = match sorted {
            Ok(Sorted::Client { detected, upstream }) => (detected, upstream),
            Ok(Sorted::Server { upstream }) => {
                self.learn(&svc.name, port);
                return self.relay_sorted(stream, &svc, upstream).await;
            }
            Ok(Sorted::Silent { upstream }) => {
                return self.relay_sorted(stream, &svc, upstream).await;
            }
            Err(e) => {
                tracing::debug!(%peer, error = %e, "connection failed during detection");
                return;
            }
        };
        let protocol = detected.protocol.as_str();
        self.metrics.traffic.connection(&svc.name, protocol);
        if !detected.silent && !detected.prefix.is_empty() {
            self.learned.learn_client_first(&svc.name, port);
        }
        let io = PrefixedIo::new(detected.prefix, stream);
        match detected.protocol {
            Protocol::Http1 | Protocol::Http2 => {
                let proto = match detected.protocol {
                    Protocol::Http2 => Proto::Http2,
                    _ => Proto::Http1,
                };
                let h = self.http.clone();
                let target = ConnTarget::Vip(*dst.ip());
                let handler = move |req| Box::pin(h.clone().handle(req, target));
                let served =
                    server::serve_http(io, handler, proto, shutdown, &self.limits, accepted);
                if let Err(e) = served.await {
                    tracing::debug!(%peer, error = %e, "outbound connection ended with error");
                }
            }
            Protocol::Tls { sni, .. } => {
                tracing::debug!(service = %svc.name, sni = sni.as_deref().unwrap_or("-"), "TLS connection relayed opaque");
                self.metrics
                    .traffic
                    .tls_connection(&svc.name, sni.as_deref());
                Box::pin(self.opaque.serve(io, &svc, upstream, None::<fn()>)).await;
            }
            Protocol::Opaque | Protocol::MeshOpaque => {
                // A client that stayed silent on a client-first port: the
                // port may have changed hands, and is learned opaque again
                // only once the server is seen to speak first.
                let learn = detected.silent.then(|| {
                    let name = svc.name.clone();
                    move || self.learn(&name, port)
                });
                // Boxed, like every rare arm: connection tasks are sized for
                // their largest state.
                Box::pin(self.opaque.serve(io, &svc, upstream, learn)).await;
            }
        }
    }

    /// Relays, opaque, a connection sorted before the client said anything.
    async fn relay_sorted(&self, stream: TcpStream, svc: &Arc<Service>, upstream: Opened) {
        self.metrics.traffic.connection(&svc.name, "opaque");
        let io = PrefixedIo::new(Bytes::new(), stream);
        Box::pin(self.opaque.serve(io, svc, Some(Ok(upstream)), None::<fn()>)).await;
    }

    fn learn(&self, service: &str, port: u16) {
        if !self.learned.learn(service, port) {
            return;
        }
        self.metrics.traffic.learned_opaque(service, port);
        tracing::warn!(
            service,
            port,
            "the server spoke first: treating {service}:{port} as opaque TCP from now on. \
             Declare it in the service's policy (opaquePorts: [{port}]) to skip detection",
        );
    }

    /// Declared opaque (flag or policy) or learned so.
    fn skips_detection(&self, svc: &Service, port: u16) -> bool {
        self.detect.opaque_ports.contains(&port)
            || svc.resilience.policy.opaque_ports.contains(&port)
            || self.learned.contains(&svc.name, port)
    }

    /// Explicit mode: HTTP/1 (with CONNECT and upgrades) or h2c. Every
    /// client speaks HTTP here, so only the preface is looked for; anything
    /// else is left to HTTP/1, which answers 400.
    async fn serve_explicit(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        shutdown: &CancellationToken,
        accepted: Accepted,
    ) {
        let (io, proto) = match server::client_http(stream, self.limits.header_read_timeout).await {
            Ok(Some(http)) => http,
            Ok(None) => return, // closed, or silent past the header timeout
            Err(e) => {
                tracing::debug!(%peer, error = %e, "explicit connection failed before its request");
                return;
            }
        };
        let h = self.http.clone();
        let handler = move |req| Box::pin(h.clone().handle(req, ConnTarget::FromRequest));
        let served = server::serve_http(io, handler, proto, shutdown, &self.limits, accepted);
        if let Err(e) = served.await {
            tracing::debug!(%peer, error = %e, "outbound connection ended with error");
        }
    }

    /// Relays a redirected, non-mesh connection to where it was going.
    async fn relay(&self, inbound: TcpStream, dst: SocketAddr) {
        if is_own(&self.http.own_addrs, dst) || is_loop_risk(dst) {
            tracing::warn!(%dst, "refusing a redirected connection back into the proxy (loop-detected)");
            return;
        }
        self.metrics.tcp_relays.inc();
        match crate::net::connect(dst, self.connect).await {
            Ok(upstream) => {
                if let Err(e) = relay(inbound, upstream, self.opaque.idle).await {
                    tracing::debug!(%dst, error = %e, "tcp relay ended");
                }
            }
            Err(e) => {
                tracing::debug!(%dst, error = %e, "tcp relay connect failed");
                fast_close(inbound);
            }
        }
    }
}

/// Redirected loopback traffic should never reach us (the rules exempt
/// it); if it does, relaying it could recurse.
fn is_loop_risk(dst: SocketAddr) -> bool {
    matches!(dst.ip(), IpAddr::V4(ip) if ip.is_unspecified())
}
