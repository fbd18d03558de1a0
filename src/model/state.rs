//! The proxy's `/state` document: written by its admin endpoint, read by
//! `mesh-ctl top` (and anyone with curl). One definition for both sides.
//! Every field has a default and unknown fields are ignored, so a proxy
//! and a `mesh-ctl` of different versions still read each other: a field
//! the reader does not know is skipped, one the writer did not send reads
//! as its default.

use super::{Health, LoadBalancer};
use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, SocketAddr};

/// `GET /state`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProxyState {
    /// The control-plane URL the proxy follows.
    pub control: String,
    pub control_connected: bool,
    pub registry: RegistryState,
    /// The local app's registration, when the proxy has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalState>,
    /// `service:port` treated as opaque: its server spoke first.
    pub learned_opaque: Vec<String>,
    /// `service:port` known to be client-first: its client spoke first,
    /// so new connections wait for the client without an early connect.
    pub learned_client_first: Vec<String>,
    /// The inbound listener, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inbound: Option<InboundState>,
    /// This proxy's certificate (identity on).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentityState>,
    /// Each `--config` subscription: the version delivered, and what went
    /// wrong (files not writable, control plane unreachable).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config: Vec<crate::model::config::DeliveredConfig>,
    /// Gateway mode: the edge listener and the routes in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayState>,
}

/// The gateway's side of `/state`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayState {
    pub listen: SocketAddr,
    pub tls: bool,
    /// Route names, sorted.
    pub routes: Vec<String>,
}

/// The registry as the proxy routes by it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RegistryState {
    pub revision: u64,
    pub services: Vec<ServiceState>,
}

/// One service. The proxy writes every section; a reader gets `None` for
/// one an older proxy did not send (and shows it as missing).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceState {
    pub name: String,
    pub vip: Ipv4Addr,
    pub balancer: LoadBalancer,
    pub breaker: Option<BreakerView>,
    pub bulkhead: Option<BulkheadView>,
    pub retries: Option<BudgetView>,
    pub requests: Option<RequestCounts>,
    pub endpoints: Option<Vec<EndpointState>>,
}

impl Default for ServiceState {
    fn default() -> Self {
        ServiceState {
            name: String::new(),
            vip: Ipv4Addr::UNSPECIFIED,
            balancer: LoadBalancer::default(),
            breaker: None,
            bulkhead: None,
            retries: None,
            requests: None,
            endpoints: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EndpointState {
    pub id: String,
    pub addr: SocketAddr,
    /// `ready`, `ejected` or `unhealthy`.
    pub state: String,
    pub in_flight: u32,
    pub ewma_ms: f64,
    pub ejections: u32,
}

impl Default for EndpointState {
    fn default() -> Self {
        EndpointState {
            id: String::new(),
            addr: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            state: String::new(),
            in_flight: 0,
            ewma_ms: 0.0,
            ejections: 0,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BreakerState {
    #[default]
    Closed,
    Open,
    HalfOpen,
}

/// A breaker and its current window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BreakerView {
    pub state: BreakerState,
    pub calls: u64,
    pub failures: u64,
    pub slow: u64,
    /// Percent of the window's calls that failed (0 with no calls).
    pub failure_rate: f64,
    pub slow_rate: f64,
}

/// A bulkhead's occupancy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BulkheadView {
    pub in_flight: u32,
    pub queued: u32,
    pub max_concurrent: u32,
    pub max_queued: u32,
}

/// A service's retries and budget.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BudgetView {
    /// Retries granted since the budget was made.
    pub retried: u64,
    /// Retries refused for lack of budget since the budget was made.
    pub budget_exhausted: u64,
    /// Retries that would be granted now.
    pub budget_available: u64,
}

/// Request counters for one service: one per request, with its final
/// status (after retries and fallbacks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RequestCounts {
    pub total: u64,
    /// Answered 5xx, by the upstream or by the mesh.
    pub failed: u64,
    /// Rejected by the breaker or the bulkhead without reaching an upstream.
    pub fast_failed: u64,
    /// Tries sent to an endpoint: the first of each request, and retries.
    pub attempts: u64,
}

/// The local registration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LocalState {
    pub service: String,
    pub instance_id: String,
    pub registered: bool,
    pub health: Option<Health>,
    pub last_error: Option<String>,
}

/// The inbound listener and its concurrency limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InboundState {
    pub listen: SocketAddr,
    pub max_concurrent: u32,
    pub in_flight: i64,
}

impl Default for InboundState {
    fn default() -> Self {
        InboundState {
            listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            max_concurrent: 0,
            in_flight: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_skip_what_they_do_not_know_and_default_what_is_missing() {
        let json = r#"{"control":"http://c:1","registry":{"revision":7,"future":1,
            "services":[{"name":"api","breaker":{"state":"half-open","calls":3},
            "endpoints":[{"id":"a","state":"ready"}]}]},"added_later":{"x":1}}"#;
        let s: ProxyState = serde_json::from_str(json).unwrap();
        assert_eq!(s.registry.revision, 7);
        let api = &s.registry.services[0];
        let breaker = api.breaker.unwrap();
        assert_eq!(
            (breaker.state, breaker.calls, breaker.slow),
            (BreakerState::HalfOpen, 3, 0)
        );
        assert_eq!(api.bulkhead, None, "a section not sent is missing");
        assert_eq!(api.endpoints.as_ref().unwrap()[0].state, "ready");
        // What a proxy writes, a reader reads back the same.
        let again: ProxyState = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(again, s);
    }
}

/// `/state`'s identity section.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityState {
    /// This proxy's SPIFFE ID; absent until the first certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_secs: Option<i64>,
    /// Renewals that failed since the last success.
    pub renew_failures: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The root the current leaf was issued under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_under: Option<String>,
    /// The trust bundle's roots, as last pushed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roots: Vec<super::identity::RootInfo>,
}
