//! Forwarding of non-mesh names to the pod's original resolver.
//!
//! The nameservers come from a resolv.conf (normally the pod's own, read
//! before interception redirected port 53 to us). Besides the standard
//! `nameserver IP` lines, `nameserver IP:PORT` and `nameserver [IPv6]:PORT`
//! are accepted, so a resolver on a non-standard port can be used; other
//! resolv.conf settings (search, ndots, options) do not apply to forwarding:
//! the app's own stub already expanded the name.
//!
//! Every socket the resolver opens goes through [`MarkedRuntime`], which sets
//! `SO_MARK`: the interception rules exempt marked packets, so the forwarded
//! query reaches the real resolver instead of looping back into the proxy.

use crate::net::apply_mark;
use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::iocompat::AsyncIoTokioAsStd;
use hickory_resolver::net::runtime::{RuntimeProvider, TokioHandle, TokioTime};
use hickory_resolver::net::{DnsError, NetError, NoRecords};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, Record, RecordType};
use hickory_resolver::Resolver;
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

/// Per-attempt upstream timeout; with [`ATTEMPTS`] this bounds a forwarded query.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Tries per upstream query before answering SERVFAIL.
const ATTEMPTS: usize = 2;
/// TCP connect timeout when hickory gives none.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The outcome of a forwarded query, ready to be put in a response.
#[derive(Debug)]
pub(super) enum Forwarded {
    /// The upstream answered with records (including any CNAME chain).
    Records {
        answers: Vec<Record>,
        authorities: Vec<Record>,
    },
    /// NXDOMAIN or NODATA from upstream, with its SOA when it sent one.
    Negative {
        code: ResponseCode,
        /// The upstream's SOA, when it sent one (zero or one record).
        soa: Vec<Record>,
    },
    /// No usable answer: no upstream configured, unreachable, or it failed.
    Failed,
}

/// Sends queries for non-mesh names upstream.
pub(super) struct Forwarder {
    /// `None` when no upstream could be configured: every forward fails.
    resolver: Option<Resolver<MarkedRuntime>>,
}

// === impl Forwarder ===

impl Forwarder {
    /// A forwarder with no upstreams: every forward fails at once, without
    /// a socket, and the name gets SERVFAIL (what a bad resolv.conf leaves,
    /// and what the fuzz target runs the handler with).
    pub(super) fn none() -> Forwarder {
        Forwarder { resolver: None }
    }

    /// Reads the nameservers of `path`. Problems are logged and leave the
    /// forwarder without upstreams rather than failing the proxy's start.
    pub(super) fn from_resolv_conf(path: &Path, mark: Option<u32>) -> Forwarder {
        let upstreams = match std::fs::read_to_string(path) {
            Ok(text) => parse_nameservers(&text),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cannot read resolv.conf; non-mesh names will get SERVFAIL");
                return Forwarder::none();
            }
        };
        if upstreams.is_empty() {
            tracing::warn!(path = %path.display(), "resolv.conf lists no nameserver; non-mesh names will get SERVFAIL");
            return Forwarder::none();
        }
        tracing::info!(path = %path.display(), ?upstreams, "dns forwarding upstreams");
        Forwarder::new(&upstreams, mark)
    }

    /// A forwarder to explicit upstream addresses.
    pub(super) fn new(upstreams: &[SocketAddr], mark: Option<u32>) -> Forwarder {
        let servers = upstreams
            .iter()
            .map(|addr| {
                let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                for conn in &mut server.connections {
                    conn.port = addr.port();
                }
                server
            })
            .collect();
        let config = ResolverConfig::from_parts(None, Vec::new(), servers);
        let mut builder = Resolver::builder_with_config(config, MarkedRuntime::new(mark));
        let opts: &mut ResolverOpts = builder.options_mut();
        opts.timeout = UPSTREAM_TIMEOUT;
        opts.attempts = ATTEMPTS;
        // A forwarder must not answer from its own /etc/hosts.
        opts.use_hosts_file = ResolveHosts::Never;
        // Keep CNAMEs in the answer, as the upstream sent them.
        opts.preserve_intermediates = true;
        match builder.build() {
            Ok(resolver) => Forwarder {
                resolver: Some(resolver),
            },
            Err(error) => {
                tracing::warn!(%error, "cannot build dns forwarder; non-mesh names will get SERVFAIL");
                Forwarder::none()
            }
        }
    }

    pub(super) async fn forward(&self, name: Name, qtype: RecordType) -> Forwarded {
        let Some(resolver) = &self.resolver else {
            tracing::debug!(%name, "no upstream nameserver configured");
            return Forwarded::Failed;
        };
        match resolver.lookup(name.clone(), qtype).await {
            Ok(lookup) => Forwarded::Records {
                answers: lookup.answers().to_vec(),
                authorities: lookup.authorities().to_vec(),
            },
            Err(error) => negative(error).unwrap_or_else(|error| {
                tracing::debug!(%name, %qtype, %error, "dns forward failed");
                Forwarded::Failed
            }),
        }
    }
}

/// Maps "no such name / no such type" to a negative answer; other errors stay errors.
fn negative(error: NetError) -> Result<Forwarded, NetError> {
    match error {
        NetError::Dns(DnsError::NoRecordsFound(NoRecords {
            response_code, soa, ..
        })) if matches!(
            response_code,
            ResponseCode::NXDomain | ResponseCode::NoError
        ) =>
        {
            Ok(Forwarded::Negative {
                code: response_code,
                soa: soa
                    .map(|soa| soa.into_record_of_rdata())
                    .into_iter()
                    .collect(),
            })
        }
        other => Err(other),
    }
}

/// Extracts upstream addresses from resolv.conf text (see the module doc).
pub(super) fn parse_nameservers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            if words.next() != Some("nameserver") {
                return None;
            }
            let value = words.next()?;
            let addr = value
                .parse::<IpAddr>()
                .map(|ip| SocketAddr::new(ip, 53))
                .or_else(|_| value.parse::<SocketAddr>());
            match addr {
                Ok(addr) => Some(addr),
                Err(_) => {
                    tracing::warn!(value, "ignoring unparsable nameserver in resolv.conf");
                    None
                }
            }
        })
        .collect()
}

/// hickory's tokio runtime, except that every socket carries `SO_MARK`.
#[derive(Clone)]
pub(super) struct MarkedRuntime {
    /// Spawns the resolver's background connection tasks.
    handle: TokioHandle,
    /// The mark for every UDP and TCP socket the resolver opens.
    mark: Option<u32>,
}

// === impl MarkedRuntime ===

impl MarkedRuntime {
    pub(super) fn new(mark: Option<u32>) -> Self {
        MarkedRuntime {
            handle: TokioHandle::default(),
            mark,
        }
    }
}

type BoxIo<T> = Pin<Box<dyn Send + Future<Output = io::Result<T>>>>;

impl RuntimeProvider for MarkedRuntime {
    type Handle = TokioHandle;
    type Timer = TokioTime;
    type Udp = UdpSocket;
    type Tcp = AsyncIoTokioAsStd<TcpStream>;

    fn create_handle(&self) -> Self::Handle {
        self.handle.clone()
    }

    fn connect_tcp(
        &self,
        server_addr: SocketAddr,
        bind_addr: Option<SocketAddr>,
        timeout: Option<Duration>,
    ) -> BoxIo<Self::Tcp> {
        let mark = self.mark;
        Box::pin(async move {
            let sock = Socket::new(
                Domain::for_address(server_addr),
                Type::STREAM,
                Some(Protocol::TCP),
            )?;
            sock.set_nonblocking(true)?;
            sock.set_tcp_nodelay(true)?;
            apply_mark(SockRef::from(&sock), mark);
            if let Some(bind_addr) = bind_addr {
                sock.bind(&bind_addr.into())?;
            }
            let sock = TcpSocket::from_std_stream(sock.into());
            let wait = timeout.unwrap_or(CONNECT_TIMEOUT);
            match tokio::time::timeout(wait, sock.connect(server_addr)).await {
                Ok(stream) => stream.map(AsyncIoTokioAsStd),
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("dns upstream {server_addr}: TCP connect timed out"),
                )),
            }
        })
    }

    fn bind_udp(&self, local_addr: SocketAddr, _server_addr: SocketAddr) -> BoxIo<Self::Udp> {
        let mark = self.mark;
        Box::pin(async move {
            let sock = Socket::new(
                Domain::for_address(local_addr),
                Type::DGRAM,
                Some(Protocol::UDP),
            )?;
            sock.set_nonblocking(true)?;
            apply_mark(SockRef::from(&sock), mark);
            sock.bind(&local_addr.into())?;
            UdpSocket::from_std(sock.into())
        })
    }
}
