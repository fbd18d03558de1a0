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

pub use self::http::{App, InboundHttp, Verified};

use super::admission::Admission;
use super::limits::Limits;
use super::protocol::{
    detect, fast_close, original_dst, relay, sort, DetectConfig, Detected, Learned, PrefixedIo,
    Protocol, Sorted,
};
use super::server::{self, Accepted};
use crate::authz;
use crate::identity::tls::{peer_identity, TlsIdentity};
use crate::net::{connect, ConnectOptions, Flat};
use crate::proxy::upstream::Proto;
use crate::telemetry::ProxyMetrics;
use bytes::Bytes;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
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
    /// Identity on: meshed callers (ALPN `mesh/1`) are served over mTLS.
    pub tls: Option<Arc<TlsIdentity>>,
    pub limits: Arc<Limits>,
    pub admission: Admission,
}

impl InboundServer {
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
                let this = this.clone();
                let stop = shutdown.clone();
                async move { this.serve_conn(stream, peer, &stop, accepted).await }
            },
        )
        .await;
    }

    async fn serve_conn(
        &self,
        mut stream: TcpStream,
        peer: SocketAddr,
        shutdown: &CancellationToken,
        accepted: Accepted,
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
        if let (Protocol::Tls { mesh: true, .. }, Some(tls), None) =
            (&detected.protocol, &self.tls, redirected)
        {
            let io = PrefixedIo::new(detected.prefix, stream);
            return Box::pin(self.serve_mesh(io, tls.clone(), peer, app, shutdown, accepted)).await;
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
                let handler = move |req| Box::pin(h.clone().handle(req, peer, app.clone(), None));
                let served =
                    server::serve_http(io, handler, proto, shutdown, &self.limits, accepted);
                if let Err(e) = served.await {
                    tracing::debug!(%peer, error = %e, "inbound connection ended with error");
                }
            }
            Protocol::Tls { .. } | Protocol::MeshOpaque | Protocol::Opaque => {
                if !self.allow_tcp(None) {
                    return fast_close(io.into_inner());
                }
                Box::pin(self.relay(io, peer, app, upstream)).await;
            }
        }
    }

    /// A peer proxy's mTLS connection: the handshake proves who calls
    /// (see `identity::tls`), then the bytes inside are detected and
    /// served as on a plain connection, with the verified caller.
    async fn serve_mesh(
        &self,
        io: PrefixedIo<TcpStream>,
        tls: Arc<TlsIdentity>,
        peer: SocketAddr,
        app: SocketAddr,
        shutdown: &CancellationToken,
        accepted: Accepted,
    ) {
        let timeout = self.detect.timeout;
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.mesh_server());
        let mut stream = match tokio::time::timeout(timeout, acceptor.accept(io)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                self.metrics.traffic.inbound_rejected("mtls-refused");
                tracing::info!(%peer, error = %e, "mTLS handshake refused");
                return;
            }
            Err(_) => return,
        };
        // Client certificates are mandatory on this config: a session
        // without one never gets here.
        let Some(verified) = peer_identity(stream.get_ref().1).and_then(Verified::new) else {
            return;
        };
        let detected = match detect(&mut stream, timeout).await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "mTLS connection failed during detection");
                return;
            }
        };
        let io = PrefixedIo::new(detected.prefix, Flat(stream));
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
                let handler = move |req| {
                    Box::pin(
                        h.clone()
                            .handle(req, peer, app.clone(), Some(verified.clone())),
                    )
                };
                let served =
                    server::serve_http(io, handler, proto, shutdown, &self.limits, accepted);
                if let Err(e) = served.await {
                    tracing::debug!(%peer, error = %e, "inbound mTLS connection ended with error");
                }
            }
            Protocol::Tls { .. } | Protocol::MeshOpaque | Protocol::Opaque => {
                if !self.allow_tcp(Some(&verified)) {
                    // A reset, as for any refused opaque connection.
                    let tcp = io.into_inner().0.into_inner().0.into_inner();
                    return fast_close(tcp);
                }
                self.metrics.traffic.inbound_tcp.inc();
                match connect(app, self.connect).await {
                    Ok(upstream) => self.relay_to_app(io, upstream, peer, app).await,
                    Err(e) => tracing::debug!(%peer, %app, error = %e, "cannot reach the app"),
                }
            }
        }
    }

    /// Whether this service's AuthorizationPolicy lets `caller` open an
    /// opaque connection (rules naming methods or paths never match TCP).
    fn allow_tcp(&self, caller: Option<&Verified>) -> bool {
        let Some(service) = &self.http.service else {
            return true;
        };
        let policies = self.http.dir.authz();
        if policies.is_empty() {
            return true;
        }
        let decision = policies.decide(
            service,
            &authz::Request::tcp(caller.map(|v| v.uri.as_str())),
        );
        if !decision.allowed {
            let label = caller.map_or("unknown", |v| v.id.service());
            self.metrics.traffic.inbound_denied(label, &decision.rule);
            self.metrics.traffic.inbound_rejected("forbidden");
            tracing::debug!(caller = label, rule = %decision.rule, "opaque connection refused by policy");
        }
        decision.allowed
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

    async fn relay_to_app<C: AsyncRead + AsyncWrite + Unpin + Send>(
        &self,
        client: C,
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
