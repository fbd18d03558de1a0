//! The inbound listener (`--inbound`): what reaches the app from outside
//! its pod. Callers' proxies connect here directly (the registration
//! advertises this port); other clients' connections to the app port are
//! redirected here by `mesh-proxy init --app-port`.
//!
//! HTTP requests pass a concurrency limit that protects the app (beyond
//! it: 503 `x-mesh-error: overloaded`, at once), are cleaned (forged
//! `x-mesh-*` dropped, hop-by-hop removed, `x-forwarded-for`/`forwarded`
//! appended, `traceparent` kept or started) and sent to the app on
//! localhost in the caller's HTTP version. Opaque connections (a peer's
//! preamble, TLS, anything not HTTP) are relayed to the app as bytes.

mod http;

pub use self::http::{App, InboundHttp};

use super::protocol::{
    detect, fast_close, original_dst, relay, sort, DetectConfig, Detected, Learned, PrefixedIo,
    Protocol, Sorted,
};
use super::server;
use crate::net::{connect, ConnectOptions};
use crate::proxy::upstream::Proto;
use crate::telemetry::ProxyMetrics;
use bytes::Bytes;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The service name under which the inbound side's learned app ports are
/// kept (and shown in `/state`, and in the learned-opaque metric).
const APP: &str = "(inbound)";

/// Detection from the client's bytes alone, as a sorting outcome.
fn client_spoke(detected: Detected) -> Sorted<TcpStream, std::io::Error> {
    Sorted::Client {
        detected,
        upstream: None,
    }
}

pub struct InboundServer {
    pub http: Arc<InboundHttp>,
    pub metrics: Arc<ProxyMetrics>,
    /// `--app-port`: where direct (proxy-to-proxy) connections go.
    pub app_port: u16,
    /// The app at `--app-port` (its connections); other ports redirected
    /// here get theirs from the upstreams' pools.
    pub app: App,
    pub detect: DetectConfig,
    /// Shared with the outbound side and `/state`; this side's ports are
    /// kept under the service name [`APP`].
    pub learned: Arc<Learned>,
    pub connect: ConnectOptions,
    /// `--tcp-idle-timeout`.
    pub idle: Duration,
}

impl InboundServer {
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: CancellationToken,
        drain: Duration,
    ) {
        let this = self;
        server::accept_until(listener, &shutdown, drain, "inbound", |stream, peer| {
            let this = this.clone();
            let stop = shutdown.clone();
            async move { this.serve_conn(stream, peer, &stop).await }
        })
        .await;
    }

    async fn serve_conn(
        &self,
        mut stream: TcpStream,
        peer: SocketAddr,
        shutdown: &CancellationToken,
    ) {
        // Redirected by `init --app-port`: the app port the client dialled.
        // Connected directly (a peer proxy): the registered app port.
        let local = stream.local_addr().ok();
        let redirected = original_dst(&stream).filter(|d| Some(*d) != local);
        let port = redirected.map_or(self.app_port, |d| d.port());
        let app = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let timeout = self.detect.timeout;
        // A peer proxy always speaks first (HTTP, or the opaque preamble),
        // so its connections are detected from their bytes; only clients
        // outside the mesh, redirected here, may be server-speaks-first.
        let sorted = match redirected {
            None => detect(&mut stream, timeout).await.map(client_spoke),
            Some(_)
                if self.detect.opaque_ports.contains(&port) || self.learned.contains(APP, port) =>
            {
                return Box::pin(self.relay(
                    PrefixedIo::new(Bytes::new(), stream),
                    peer,
                    app,
                    None,
                ))
                .await;
            }
            Some(_) if self.learned.is_client_first(APP, port) => {
                detect(&mut stream, timeout).await.map(client_spoke)
            }
            Some(_) => {
                let sorted = Box::pin(sort(&mut stream, connect(app, self.connect), timeout)).await;
                if let Ok(s) = &sorted {
                    self.metrics.traffic.early_connect(APP, port, s.first());
                }
                sorted
            }
        };
        let (detected, upstream) = match sorted {
            Ok(Sorted::Client { detected, upstream }) => (detected, upstream),
            Ok(Sorted::Server { upstream }) => {
                if self.learned.learn(APP, port) {
                    self.metrics.traffic.learned_opaque(APP, port);
                    tracing::warn!(port, "the app spoke first on a redirected connection: treating app port {port} as opaque TCP from now on; list it in --opaque-ports to skip detection");
                }
                let io = PrefixedIo::new(Bytes::new(), stream);
                return Box::pin(self.relay(io, peer, app, Some(Ok(upstream)))).await;
            }
            Ok(Sorted::Silent { upstream }) => {
                let io = PrefixedIo::new(Bytes::new(), stream);
                return Box::pin(self.relay(io, peer, app, Some(Ok(upstream)))).await;
            }
            Err(e) => {
                tracing::debug!(%peer, error = %e, "inbound connection failed during detection");
                return;
            }
        };
        if redirected.is_some() && !detected.silent && !detected.prefix.is_empty() {
            self.learned.learn_client_first(APP, port);
        }
        let io = PrefixedIo::new(detected.prefix, stream);
        match detected.protocol {
            Protocol::Http1 | Protocol::Http2 => {
                let proto = match detected.protocol {
                    Protocol::Http2 => Proto::Http2,
                    _ => Proto::Http1,
                };
                let h = self.http.clone();
                let app = match app == self.app.addr {
                    true => self.app.clone(),
                    false => App::new(app, self.http.upstreams.pool(app)),
                };
                let handler = move |req| Box::pin(h.clone().handle(req, peer, app.clone()));
                if let Err(e) = server::serve_http(io, handler, proto, shutdown).await {
                    tracing::debug!(%peer, error = %e, "inbound connection ended with error");
                }
            }
            Protocol::Tls { .. } | Protocol::MeshOpaque | Protocol::Opaque => {
                Box::pin(self.relay(io, peer, app, upstream)).await;
            }
        }
    }

    /// Relays an opaque connection to the app, over `upstream` when the
    /// app was connected to early, else over a new connection.
    async fn relay(
        &self,
        client: PrefixedIo<TcpStream>,
        peer: SocketAddr,
        app: SocketAddr,
        upstream: Option<std::io::Result<TcpStream>>,
    ) {
        self.metrics.traffic.inbound_tcp.inc();
        let upstream = match upstream {
            Some(u) => u,
            None => connect(app, self.connect).await,
        };
        match upstream {
            Ok(upstream) => self.relay_to_app(client, upstream, peer, app).await,
            Err(e) => {
                tracing::debug!(%peer, %app, error = %e, "cannot reach the app");
                fast_close(client.into_inner());
            }
        }
    }

    async fn relay_to_app(
        &self,
        client: PrefixedIo<TcpStream>,
        upstream: TcpStream,
        peer: SocketAddr,
        app: SocketAddr,
    ) {
        match relay(client, upstream, self.idle).await {
            Ok(end) => {
                tracing::debug!(%peer, %app, sent = end.sent, received = end.received, idle = end.idle, "inbound opaque connection ended")
            }
            Err(e) => {
                tracing::debug!(%peer, %app, error = %e, "inbound opaque connection broke")
            }
        }
    }
}
