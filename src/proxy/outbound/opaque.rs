//! Opaque TCP to a mesh service (VIP:port): each connection is balanced to
//! an endpoint through the service's breaker and bulkhead. Connect
//! failures count as failures for outlier ejection and the breaker and are
//! retried on another endpoint as the policy allows; the bulkhead limits
//! concurrent connections; a connection idle past `--tcp-idle-timeout` is
//! closed. A peer proxy's inbound listener gets the mesh's opaque preamble
//! first, so it never waits on protocol detection.

use super::stack::{pick, Verdict};
use crate::discovery::{Endpoint, Service};
use crate::model::policy::RetryOn;
use crate::net::{connect, ConnectOptions};
use crate::proxy::protocol::{
    fast_close, first_word, relay, FirstWord, PrefixedIo, MESH_OPAQUE_PREAMBLE,
};
use crate::proxy::rescue::MeshError;
use crate::resilience::{retry, BulkheadPermit};
use crate::telemetry::ProxyMetrics;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How long after a silent detection the server has to speak first for
/// the port to be learned opaque.
pub const LEARN_WITHIN: Duration = Duration::from_secs(5);

pub struct OpaqueOutbound {
    pub metrics: Arc<ProxyMetrics>,
    /// SO_MARK for upstream sockets.
    pub mark: Option<u32>,
    /// `--tcp-idle-timeout`.
    pub idle: Duration,
}

/// A connection made to one of a service's endpoints.
pub struct Opened {
    pub stream: TcpStream,
    /// Held for the connection's life: the bulkhead counts connections.
    pub slot: BulkheadPermit,
    pub ep: Arc<Endpoint>,
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
}

impl crate::proxy::protocol::Upstream for Opened {
    fn stream(&self) -> &TcpStream {
        &self.stream
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
        let Opened {
            stream, slot, ep, ..
        } = opened;
        if let Some(learn) = on_server_first {
            if first_word(client.get_ref(), &stream, LEARN_WITHIN).await == FirstWord::Server {
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
    /// has no way to say why (the reason is counted and logged).
    pub fn refuse(&self, client: TcpStream, svc: &Service, e: &MeshError) {
        self.metrics.mesh_error(&svc.name, e.reason());
        tracing::debug!(service = %svc.name, error = %e, "opaque connection refused");
        fast_close(client);
    }

    /// Breaker, bulkhead, balancer, connect; connect failures retried on
    /// other endpoints within the policy's attempts and budget (and
    /// recorded as failures). A success is recorded by the caller, with
    /// [`Opened::confirm`], once the connection is used.
    pub async fn open(&self, svc: &Arc<Service>) -> Result<Opened, MeshError> {
        let rt = svc.resilience.clone();
        let retries = &rt.policy.retries;
        let opts = ConnectOptions {
            mark: self.mark,
            timeout: rt.policy.timeouts.connect,
        };
        rt.budget.deposit();
        let mut tried: Vec<Arc<Endpoint>> = Vec::new();
        let mut attempt = 0;
        loop {
            let Ok(permit) = rt.breaker.try_acquire() else {
                svc.metrics.fast_failed();
                return Err(MeshError::BreakerOpen(svc.name.clone()));
            };
            let Ok(slot) = rt.bulkhead.acquire().await else {
                svc.metrics.fast_failed();
                return Err(MeshError::BulkheadFull(svc.name.clone()));
            };
            let Some(ep) = pick(svc, &rt, &tried) else {
                return Err(MeshError::NoEndpoints(svc.name.clone()));
            };
            let start = Instant::now();
            let result = dial(&ep, opts).await;
            let verdict = Verdict {
                permit,
                rt: rt.clone(),
                svc: svc.clone(),
                ep: ep.clone(),
                elapsed: start.elapsed(),
            };
            let err = match result {
                Ok(stream) => {
                    return Ok(Opened {
                        stream,
                        slot,
                        ep,
                        connected: Some(verdict),
                    })
                }
                Err(e) => {
                    verdict.record(true);
                    MeshError::ConnectFailed {
                        addr: ep.dial(),
                        reason: e.to_string(),
                    }
                }
            };
            drop(slot);
            if attempt >= retries.attempts
                || !retries.on.contains(&RetryOn::ConnectFailure)
                || !rt.budget.try_withdraw()
            {
                return Err(err);
            }
            svc.metrics.retried();
            tokio::time::sleep(retry::retry_delay(attempt)).await;
            attempt += 1;
            tried.push(ep);
        }
    }
}

/// Connects to the endpoint, announcing opaque bytes to a peer proxy.
async fn dial(ep: &Endpoint, opts: ConnectOptions) -> std::io::Result<TcpStream> {
    let mut stream = connect(ep.dial(), opts).await?;
    if ep.inbound.is_some() {
        stream.write_all(MESH_OPAQUE_PREAMBLE).await?;
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::Directory;
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
        let dir = Directory::new(Default::default(), metrics.clone());
        dir.replace(Snapshot {
            revision: 1,
            policies: Vec::new(),
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
                }],
            }],
        });
        let svc = dir.table().by_name("db").cloned().unwrap();
        let opaque = OpaqueOutbound {
            metrics,
            mark: None,
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
