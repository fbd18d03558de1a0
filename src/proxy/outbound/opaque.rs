//! Opaque TCP to a mesh service (VIP:port): each connection is one call
//! through the service's policy (the one call path, `policy`): balanced
//! to an endpoint through the breaker and bulkhead, connect failures
//! retried on another endpoint as the policy allows, a service fallback
//! taking the connection when the service cannot. The bulkhead limits
//! concurrent connections; a connection idle past `--tcp-idle-timeout` is
//! closed. A peer proxy's inbound listener gets the mesh's opaque preamble
//! first, so it never waits on protocol detection.

use super::policy::{self, Admitted, Attempt, Caps, Target, Verdict};
use crate::discovery::{Directory, Endpoint, Service};
use crate::net::Io;
use crate::proxy::protocol::{
    fast_close, first_word, relay, FirstWord, PrefixedIo, Upstream, MESH_OPAQUE_PREAMBLE,
};
use crate::proxy::rescue::MeshError;
use crate::proxy::upstream::Dialer;
use crate::resilience::{BulkheadPermit, Tried};
use crate::telemetry::ProxyMetrics;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// How long after a silent detection the server has to speak first for
/// the port to be learned opaque.
pub const LEARN_WITHIN: Duration = Duration::from_secs(5);

pub struct OpaqueOutbound {
    pub dir: Arc<Directory>,
    pub metrics: Arc<ProxyMetrics>,
    /// The one upstream connector (mark, mTLS).
    pub dialer: Dialer,
    /// `--tcp-idle-timeout`.
    pub idle: Duration,
}

/// A connection made to one of a service's endpoints.
pub struct Opened {
    /// Plain TCP, or mTLS to a peer proxy; with what [`Upstream::peek`]
    /// had to read already, replayed first.
    pub stream: PrefixedIo<Io>,
    pub ep: Arc<Endpoint>,
    /// Held for the connection's life: the bulkhead counts connections.
    slot: Option<BulkheadPermit>,
    /// The connect's success, told to the breaker and the outlier detector
    /// only once the connection is used ([`Opened::confirm`]). A connection
    /// opened early while the protocol was sorted, then dropped because the
    /// client spoke HTTP, was never a call: it must not move the breaker's
    /// window (its permit is dropped unrecorded, as for the mesh's own
    /// rejections).
    connected: Option<Verdict>,
}

impl Opened {
    /// The connection carries the client's bytes: its connect counts.
    pub fn confirm(&mut self) {
        if let Some(v) = self.connected.take() {
            v.record(false);
        }
    }

    /// The stream, and what must be held for as long as it is used.
    pub fn into_parts(self) -> (PrefixedIo<Io>, Option<BulkheadPermit>) {
        (self.stream, self.slot)
    }
}

impl Upstream for Opened {
    fn peek<'a>(
        &'a mut self,
        buf: &'a mut [u8],
    ) -> impl std::future::Future<Output = std::io::Result<usize>> + Send + 'a {
        self.stream.peek(buf)
    }
}

/// Opaque TCP's [`Attempt`]: a connect to one endpoint.
struct Connect {
    dialer: Dialer,
}

impl Attempt for Connect {
    type Call = ();
    type Output = Opened;

    /// Only connect failures are retried, and the endpoint never saw those.
    fn idempotent(&self) -> bool {
        true
    }

    async fn send(&self, (): (), to: Target<'_>) -> Result<Opened, MeshError> {
        let ep = to.endpoint;
        let stream = dial(&self.dialer, ep, to.connect).await?;
        Ok(Opened {
            stream: PrefixedIo::new(bytes::Bytes::new(), stream),
            ep: ep.clone(),
            slot: None,
            connected: None,
        })
    }

    fn admit(&self, opened: &mut Opened, admitted: Admitted) {
        opened.slot = Some(admitted.slot);
        opened.connected = Some(admitted.verdict);
    }

    fn answered<'a>(&self, _: &'a Opened, _from_peer: bool) -> Option<Tried<'a>> {
        None
    }

    fn again(&self) -> Option<()> {
        Some(())
    }
}

// === impl OpaqueOutbound ===

impl OpaqueOutbound {
    /// Relays `client` to an endpoint of `svc` over `opened` (a connection
    /// opened early, while the protocol was sorted), or over a new one.
    /// When none can be reached, closes `client` with a reset.
    /// `on_server_first` runs if the server then speaks before the client
    /// (after a silent detection: the port is learned opaque).
    pub async fn serve(
        &self,
        client: PrefixedIo<TcpStream>,
        svc: &Arc<Service>,
        opened: Option<Result<Opened, MeshError>>,
        on_server_first: Option<impl FnOnce()>,
    ) {
        let opened = match opened {
            Some(o) => o,
            None => self.open(svc).await,
        };
        let mut opened = match opened {
            Ok(o) => o,
            Err(e) => return self.refuse(client.into_inner(), svc, &e),
        };
        opened.confirm();
        let ep = opened.ep.clone();
        let (mut stream, slot) = opened.into_parts();
        if let Some(learn) = on_server_first {
            if first_word(client.get_ref(), &mut stream, LEARN_WITHIN).await == FirstWord::Server {
                learn();
            }
        }
        match relay(client, stream, self.idle).await {
            Ok(end) => {
                tracing::debug!(service = %svc.name, endpoint = %ep.id, sent = end.sent, received = end.received, idle = end.idle, "opaque connection ended")
            }
            Err(e) => {
                tracing::debug!(service = %svc.name, endpoint = %ep.id, error = %e, "opaque connection broke")
            }
        }
        drop(slot);
    }

    /// No endpoint could take the connection: a reset, since opaque TCP
    /// has no way to say why (the reason was counted by the call path).
    pub fn refuse(&self, client: TcpStream, svc: &Service, e: &MeshError) {
        tracing::debug!(service = %svc.name, error = %e, "opaque connection refused");
        fast_close(client);
    }

    /// A connection to an endpoint of `svc`, through its policy. A success
    /// is recorded by the caller, with [`Opened::confirm`], once the
    /// connection is used.
    pub async fn open(&self, svc: &Arc<Service>) -> Result<Opened, MeshError> {
        let attempt = Connect {
            dialer: self.dialer.clone(),
        };
        let mut trail = policy::Trail::default();
        policy::call(
            &self.dir,
            &self.metrics,
            svc,
            &attempt,
            (),
            Caps::default(),
            &mut trail,
        )
        .await
    }
}

/// Connects to the endpoint (mTLS to a peer proxy with an identity),
/// announcing opaque bytes to a peer proxy.
async fn dial(dialer: &Dialer, ep: &Endpoint, timeout: Duration) -> Result<Io, MeshError> {
    let addr = ep.dial();
    let mut stream = dialer.open(addr, timeout, ep.conns.peer()).await?;
    if ep.inbound.is_some() {
        stream
            .write_all(MESH_OPAQUE_PREAMBLE)
            .await
            .map_err(|e| MeshError::ConnectFailed {
                addr,
                reason: e.to_string(),
            })?;
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Health, Instance, ServiceInfo, Snapshot};
    use std::net::Ipv4Addr;

    /// A connection opened early while a protocol was sorted, then dropped
    /// (the client spoke HTTP), is not a call: the breaker's window does
    /// not move. Used, it counts once.
    #[tokio::test]
    async fn only_a_used_connection_counts_for_the_breaker() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(ProxyMetrics::new());
        let dir = Arc::new(Directory::new(Default::default(), metrics.clone()));
        dir.replace(Snapshot {
            revision: 1,
            policies: Vec::new(),
            authorizations: Vec::new(),
            bundle: None,
            configs: Vec::new(),
            routes: Vec::new(),
            services: vec![ServiceInfo {
                name: "db".into(),
                vip: Ipv4Addr::new(127, 100, 0, 9),
                instances: vec![Instance {
                    id: "db-1".into(),
                    service: "db".into(),
                    address: addr.ip(),
                    port: addr.port(),
                    metadata: Default::default(),
                    health: Health::Up,
                    ttl_secs: None,
                    inbound_port: None,
                    identity: None,
                }],
            }],
        });
        let svc = dir.service("db").unwrap();
        let opaque = OpaqueOutbound {
            dir: dir.clone(),
            metrics,
            dialer: Dialer::plain(None),
            idle: Duration::from_secs(60),
        };
        let calls = || svc.resilience.view().breaker.calls;

        drop(opaque.open(&svc).await.unwrap());
        assert_eq!(calls(), 0, "an unused early connection was counted");
        let mut used = opaque.open(&svc).await.unwrap();
        used.confirm();
        used.confirm();
        assert_eq!(calls(), 1);
    }
}
