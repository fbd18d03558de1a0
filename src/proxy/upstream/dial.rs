//! The one way to an upstream, shared by HTTP/1 and HTTP/2 pools, opaque
//! TCP and CONNECT tunnels: a marked TCP connect within the deadline, then
//! mTLS when the endpoint is a sidecar with an identity. A peer that
//! cannot prove the identity discovery gave it is a connect failure like
//! a refused port: the balancer's outlier rules and retries treat it so.

use crate::identity::tls::TlsIdentity;
use crate::identity::SpiffeId;
use crate::net::{connect, ConnectOptions, Io};
use crate::proxy::rescue::MeshError;
use rustls_pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

/// How this proxy opens upstream connections.
#[derive(Clone)]
pub struct Dialer {
    pub mark: Option<u32>,
    /// Identity on: this proxy's certificate slot and trusted roots.
    pub tls: Option<Arc<TlsIdentity>>,
}

impl Dialer {
    pub fn plain(mark: Option<u32>) -> Self {
        Dialer { mark, tls: None }
    }

    /// A connection to `addr` within `timeout` (connect and handshake
    /// together). With `peer`, the connection is mTLS and the other side
    /// must prove `peer`; without, plain TCP.
    pub async fn open(
        &self,
        addr: SocketAddr,
        timeout: Duration,
        peer: Option<&SpiffeId>,
    ) -> Result<Io, MeshError> {
        let opts = ConnectOptions {
            mark: self.mark,
            timeout,
        };
        let (Some(tls), Some(peer)) = (&self.tls, peer) else {
            return Ok(Io::Plain(tcp(addr, opts).await?));
        };
        let failed = |reason: String| MeshError::ConnectFailed { addr, reason };
        let handshake = async {
            let stream = tcp(addr, opts).await?;
            let name = ServerName::IpAddress(addr.ip().into());
            Io::tls(stream, tls.client(peer), name)
                .await
                .map_err(|e| failed(format!("mTLS with {peer}: {e}")))
        };
        match tokio::time::timeout(timeout, handshake).await {
            Ok(r) => r,
            Err(_) => Err(failed(format!(
                "connect and mTLS handshake took longer than {timeout:?}"
            ))),
        }
    }
}

/// A marked TCP connection to `addr` within `opts.timeout`.
pub async fn tcp(addr: SocketAddr, opts: ConnectOptions) -> Result<TcpStream, MeshError> {
    connect(addr, opts)
        .await
        .map_err(|e| MeshError::ConnectFailed {
            addr,
            reason: e.to_string(),
        })
}

/// What a failed upstream call means: the caller's fault when its own
/// request body broke on the way (bad chunk framing, a client gone
/// mid-body: hyper then reports the body it was given as failing), which
/// is a 400 that no breaker or outlier counts against the endpoint; the
/// upstream's otherwise.
pub fn call_failed(addr: SocketAddr, e: &hyper::Error) -> MeshError {
    let caller_body = e.is_user()
        && std::error::Error::source(e).is_some_and(|s| s.downcast_ref::<hyper::Error>().is_some());
    if caller_body {
        MeshError::BadRequest(format!("the request body is malformed: {}", error_chain(e)))
    } else {
        MeshError::UpstreamReset {
            addr,
            reason: error_chain(e),
        }
    }
}

/// `a: b: c` from an error and its sources: hyper's top-level messages
/// alone ("client error (Connect)") hide the cause.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
