//! Dials the control plane by name or by IP over marked sockets.
//!
//! [`MarkedConnector`] only takes IP literals (the data plane never dials
//! names), but operators write `--control http://localhost:15010` or a
//! DNS name in a cluster. This wrapper resolves the name on each new
//! connection and tries the addresses in order, so the pool still keys
//! connections by the name and the Host header stays what the user wrote.
//!
//! For `https://` it then runs the TLS handshake. To mesh-control
//! ([`ClientTls::Mesh`]) it checks that the server proves mesh-control's
//! SPIFFE identity (whatever name or address it was reached by) and
//! presents this process's certificate if it has one. To a server outside
//! the mesh ([`ClientTls::Public`]: the gateway fetching a JWKS) it checks
//! the host name against the system's roots, as any HTTPS client does.

use crate::identity::tls::TlsIdentity;
use crate::net::{Io, MarkedConnector, MarkedStream};
use http::Uri;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::Service;

/// At most this many resolved addresses are tried per connection.
const MAX_ADDRESSES: usize = 8;

#[derive(Clone)]
pub(super) struct ResolvingConnector {
    /// Dials one IP address with the mark and the connect timeout.
    pub(super) inner: MarkedConnector,
    /// For `https://`: how the server is checked.
    pub(super) tls: Option<ClientTls>,
}

/// How an `https://` server is checked.
#[derive(Clone)]
pub(super) enum ClientTls {
    /// mesh-control: the roots and this process's certificate slot, read
    /// at each new connection (so rotations apply without a new client).
    Mesh(Arc<TlsIdentity>),
    /// Any other server: its name, against the system's roots.
    Public(Arc<rustls::ClientConfig>),
}

impl std::fmt::Debug for ResolvingConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolvingConnector")
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Service<Uri> for ResolvingConnector {
    type Response = MarkedStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<MarkedStream>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let dial = self.clone();
        Box::pin(async move {
            let https = uri.scheme_str() == Some("https");
            let stream = dial.dial(&uri).await?;
            if !https {
                return Ok(stream);
            }
            let Some(tls) = &dial.tls else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "https:// needs the trust bundle (--trust-bundle)",
                ));
            };
            let config = match tls {
                ClientTls::Mesh(identity) => Arc::new(
                    identity
                        .control_client()
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?,
                ),
                ClientTls::Public(config) => config.clone(),
            };
            let name = server_name(&uri)?;
            let tcp = match stream.0.into_inner() {
                Io::Plain(tcp) => tcp,
                Io::Tls(_) => return Err(io::Error::other("TLS twice")),
            };
            let handshake = Io::tls(tcp, config, name);
            let io = tokio::time::timeout(dial.inner.opts.timeout, handshake)
                .await
                .map_err(|_| {
                    io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")
                })??;
            Ok(MarkedStream(TokioIo::new(io)))
        })
    }
}

/// The name a TLS session is opened for (not checked: see the module docs).
fn server_name(uri: &Uri) -> io::Result<rustls_pki_types::ServerName<'static>> {
    let host = uri.host().unwrap_or("mesh-control");
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    rustls_pki_types::ServerName::try_from(bare.to_string())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))
}

impl ResolvingConnector {
    async fn dial(&self, uri: &Uri) -> io::Result<MarkedStream> {
        let mut inner = self.inner;
        let host = uri
            .host()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "URI has no host"))?;
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let default = match uri.scheme_str() {
            Some("https") => 443,
            _ => 80,
        };
        let port = uri.port_u16().unwrap_or(default);
        let addrs: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((bare, port))
                .await?
                .take(MAX_ADDRESSES)
                .collect(),
        };
        let mut last = io::Error::new(
            io::ErrorKind::NotFound,
            format!("{bare} resolved to no address"),
        );
        for addr in addrs {
            let ip_uri: Uri = format!("http://{addr}/")
                .parse()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            match inner.call(ip_uri).await {
                Ok(stream) => return Ok(stream),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}
