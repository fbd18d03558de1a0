//! DNS responder: answers mesh names with their virtual IPs and forwards
//! everything else to the pod's original resolver.
//!
//! The app's resolver is pointed here by the `udp/tcp dport 53` redirect that
//! `mesh-proxy init` installs (or explicitly, with `--dns`). So this server
//! sees *every* lookup the app makes and must answer all of them:
//!
//! - `<service>.<domain>.` and the bare `<service>.` → `A <vip>` (TTL 5 s)
//!   when discovery knows the service; any other type for such a name →
//!   NOERROR with no answer (NODATA), so an app asking AAAA first falls back
//!   to A instead of giving up. Names are matched case-insensitively.
//! - an unknown name under `<domain>.` → NXDOMAIN with the zone's SOA, whose
//!   short negative TTL lets a newly registered service resolve within seconds.
//! - anything else, including unknown bare names → forwarded with
//!   hickory-resolver to the nameservers of `resolv_conf` (see [`forward`]).
//!   The forwarder's sockets carry `SO_MARK`, otherwise the port-53 redirect
//!   would send its queries straight back into this responder.
//!
//! The network side (UDP and TCP framing, malformed-packet handling) is
//! hickory-server's `Server`; [`handler`] decides the answers.

mod forward;
mod handler;
#[cfg(test)]
mod tests;

// For `crate::fuzz`, with `offline`: not part of the API.
#[doc(hidden)]
pub use handler::MeshHandler;
pub use handler::VipLookup;
use hickory_server::proto::rr::Name;
use hickory_server::Server;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, UdpSocket};

/// A TCP client that sends nothing for this long is disconnected.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Responses queued per TCP connection before the writer applies back-pressure.
const TCP_RESPONSE_BUFFER: usize = 32;
/// With port 0 the TCP bind can lose a race for the port UDP picked; retry this often.
const BIND_ATTEMPTS: usize = 16;

/// How the responder is set up (from `mesh-proxy` flags).
#[derive(Clone, Debug)]
pub struct DnsConfig {
    /// UDP and TCP listen address (`--dns`); port 0 picks a free port.
    pub listen: SocketAddr,
    /// The mesh domain (`--domain`, e.g. `mesh`), without dots around it.
    pub domain: String,
    /// Resolver configuration whose nameservers receive forwarded queries
    /// (`--resolv-conf`). `nameserver IP:PORT` is accepted besides plain `IP`.
    pub resolv_conf: PathBuf,
    /// `SO_MARK` for the forwarder's sockets (`--mark`; `None` = unmarked).
    pub mark: Option<u32>,
    /// Counts every query received (`mesh_dns_queries_total`).
    pub queries: prometheus_client::metrics::counter::Counter,
}

/// A bound, not yet running DNS responder (UDP and TCP on the same port).
pub struct DnsServer {
    /// The bound address, kept for logs and for callers that bound port 0.
    addr: SocketAddr,
    /// Datagram listener; its port is also the TCP port.
    udp: UdpSocket,
    /// Stream listener for clients that retry over TCP after truncation.
    tcp: TcpListener,
    /// Decides every answer.
    handler: MeshHandler,
}

// === impl DnsServer ===

impl DnsServer {
    /// Binds UDP and TCP on `cfg.listen` and reads `cfg.resolv_conf`.
    ///
    /// A resolv.conf that is missing or lists no nameserver is not fatal (mesh
    /// names still resolve); it is logged, and forwarded queries get SERVFAIL.
    pub async fn bind(cfg: DnsConfig, names: Arc<dyn VipLookup>) -> io::Result<DnsServer> {
        let zone = zone_name(&cfg.domain)?;
        let (udp, tcp) = bind_pair(cfg.listen).await?;
        let addr = udp.local_addr()?;
        let forwarder = forward::Forwarder::from_resolv_conf(&cfg.resolv_conf, cfg.mark);
        let handler = MeshHandler::new(zone, names, forwarder, cfg.queries);
        Ok(DnsServer {
            addr,
            udp,
            tcp,
            handler,
        })
    }

    /// The bound address (the same port serves UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` completes, then stops accepting and returns
    /// once the in-flight connections are done.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> io::Result<()> {
        let addr = self.addr;
        let mut server = Server::new(self.handler);
        server.register_socket(self.udp);
        server.register_listener(self.tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
        tracing::info!(%addr, "dns responder listening (udp+tcp)");

        let token = server.shutdown_token().clone();
        tokio::pin!(shutdown);
        let result = tokio::select! {
            // The listeners only end on their own after a fatal socket error.
            done = server.block_until_done() => done,
            () = &mut shutdown => {
                token.cancel();
                server.block_until_done().await
            }
        };
        result.map_err(|e| io::Error::other(format!("dns responder on {addr}: {e}")))
    }
}

/// The responder's handler without sockets or upstreams, for the fuzz
/// target: mesh names are answered from `names` as [`DnsServer`] answers
/// them, and every other name gets SERVFAIL at once, so a request is
/// handled to the end without the network.
#[doc(hidden)]
pub fn offline(domain: &str, names: Arc<dyn VipLookup>) -> io::Result<MeshHandler> {
    let zone = zone_name(domain)?;
    let forwarder = forward::Forwarder::none();
    Ok(MeshHandler::new(zone, names, forwarder, Default::default()))
}

/// Parses `--domain` into the FQDN of the mesh zone.
fn zone_name(domain: &str) -> io::Result<Name> {
    let trimmed = domain.trim_matches('.');
    let invalid = |reason: String| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid dns domain {domain:?}: {reason}"),
        )
    };
    if trimmed.is_empty() {
        return Err(invalid("empty".into()));
    }
    let mut name = Name::from_ascii(trimmed).map_err(|e| invalid(e.to_string()))?;
    name.set_fqdn(true);
    Ok(name.to_lowercase())
}

/// Binds UDP first (it may pick the port), then TCP on the same port.
async fn bind_pair(listen: SocketAddr) -> io::Result<(UdpSocket, TcpListener)> {
    let attempts = if listen.port() == 0 { BIND_ATTEMPTS } else { 1 };
    let mut last_err = None;
    for _ in 0..attempts {
        let udp = UdpSocket::bind(listen).await?;
        let addr = udp.local_addr()?;
        match TcpListener::bind(addr).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.unwrap_or_else(|| io::Error::other("dns bind failed")))
}
