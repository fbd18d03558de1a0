//! The outbound listener: every connection the app makes to the mesh.
//!
//! One port serves both modes. A connection redirected by iptables carries
//! its original destination (SO_ORIGINAL_DST): a VIP means HTTP to that
//! service; anything else is relayed untouched as TCP. A connection made to
//! the port directly (explicit `http_proxy` mode) is HTTP whose requests
//! name their targets in absolute-form URIs or Host headers.

mod body;
mod http;
mod orig_dst;
mod stack;
mod target;

pub use self::http::{HttpOutbound, UpstreamClient, UpstreamClients};
pub use stack::MESH_FALLBACK;
pub use target::{split_host_port, ConnTarget};

use crate::net::ConnectOptions;
use crate::telemetry::ProxyMetrics;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Accepts outbound connections until `shutdown`, then lets in-flight
/// requests finish for up to `drain` before returning.
pub struct OutboundServer {
    pub http: Arc<HttpOutbound>,
    pub metrics: Arc<ProxyMetrics>,
    pub vip_net: crate::model::Ipv4Cidr,
    pub connect: ConnectOptions,
}

impl OutboundServer {
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: CancellationToken,
        drain: Duration,
    ) {
        let graceful = GracefulShutdown::new();
        let relays = TaskTracker::new();
        loop {
            let (stream, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(conn) => conn,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "outbound accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = shutdown.cancelled() => break,
            };
            let _ = stream.set_nodelay(true);
            let local = stream.local_addr().ok();
            let orig = orig_dst::original_dst(&stream).filter(|d| Some(*d) != local);
            match orig {
                Some(SocketAddr::V4(d)) if self.vip_net.contains(*d.ip()) => {
                    self.spawn_http(&graceful, stream, peer, ConnTarget::Vip(*d.ip()));
                }
                Some(dst) => {
                    let this = self.clone();
                    relays.spawn(async move { this.relay(stream, dst).await });
                }
                None => self.spawn_http(&graceful, stream, peer, ConnTarget::FromRequest),
            }
        }
        drop(listener);
        relays.close();
        let drained = async {
            graceful.shutdown().await;
            relays.wait().await;
        };
        if tokio::time::timeout(drain, drained).await.is_err() {
            tracing::warn!(?drain, "drain period over; closing remaining connections");
        }
    }

    fn spawn_http(
        &self,
        graceful: &GracefulShutdown,
        stream: TcpStream,
        peer: SocketAddr,
        target: ConnTarget,
    ) {
        let h = self.http.clone();
        let svc = service_fn(move |req| {
            let h = h.clone();
            async move { Ok::<_, std::convert::Infallible>(h.handle(req, target).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(30))
            .serve_connection(TokioIo::new(stream), svc);
        let fut = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = fut.await {
                tracing::debug!(%peer, error = %e, "outbound connection ended with error");
            }
        });
    }

    /// Relays a redirected, non-mesh connection to where it was going.
    async fn relay(&self, mut inbound: TcpStream, dst: SocketAddr) {
        if crate::proxy::outbound::target::is_own(&self.http.own_addrs, dst) || is_loop_risk(dst) {
            tracing::warn!(%dst, "refusing a redirected connection back into the proxy (loop-detected)");
            return;
        }
        self.metrics.tcp_relays.inc();
        match crate::net::connect(dst, self.connect).await {
            Ok(mut upstream) => {
                if let Err(e) = tokio::io::copy_bidirectional(&mut inbound, &mut upstream).await {
                    tracing::debug!(%dst, error = %e, "tcp relay ended");
                }
            }
            Err(e) => tracing::debug!(%dst, error = %e, "tcp relay connect failed"),
        }
    }
}

/// Redirected loopback traffic should never reach us (the rules exempt
/// it); if it does, relaying it could recurse.
fn is_loop_risk(dst: SocketAddr) -> bool {
    matches!(dst.ip(), IpAddr::V4(ip) if ip.is_unspecified())
}
