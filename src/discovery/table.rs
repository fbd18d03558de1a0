//! The routing table the request path reads: immutable, swapped whole.

use crate::balance::{Balancer, EndpointStats, HasStats};
use crate::model::Health;
use crate::proxy::upstream::H1Pool;
use crate::resilience::ServiceResilience;
use crate::telemetry::{ServiceMetrics, ENDPOINT_STATES};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

/// One instance as the proxy routes to it.
#[derive(Debug)]
pub struct Endpoint {
    pub id: String,
    pub addr: SocketAddr,
    /// [`Endpoint::dial`] as a URI authority, made once per table build.
    pub authority: http::uri::Authority,
    /// The instance's sidecar inbound listener (`address:inbound_port`),
    /// when it registered one: the data plane connects proxy to proxy
    /// there, while `addr` stays the app's own address.
    pub inbound: Option<SocketAddr>,
    pub health: Health,
    /// Load statistics, shared with every later table that holds this
    /// endpoint so the balancer's knowledge survives registry changes.
    pub stats: Arc<EndpointStats>,
    /// Idle HTTP/1 connections to [`Endpoint::dial`], kept like `stats`
    /// (while the instance stays registered at the same address).
    pub conns: Arc<H1Pool>,
}

impl Endpoint {
    /// Where connections to this endpoint go: its sidecar's inbound
    /// listener when it has one, else the app itself.
    pub fn dial(&self) -> SocketAddr {
        self.inbound.unwrap_or(self.addr)
    }
}

impl HasStats for Arc<Endpoint> {
    fn stats(&self) -> &Arc<EndpointStats> {
        &self.stats
    }
}

/// A destination service with everything the request path needs.
#[derive(Debug)]
pub struct Service {
    pub name: String,
    pub vip: Ipv4Addr,
    /// Endpoints that may receive traffic (healthy).
    pub ready: Vec<Arc<Endpoint>>,
    /// Every registered endpoint, for `/state`.
    pub all: Vec<Arc<Endpoint>>,
    pub balancer: Balancer,
    /// Metric handles resolved once, so requests only bump atomics.
    pub metrics: ServiceMetrics,
    /// Policy and resilience state (breaker, bulkhead, budget, ejections);
    /// shared with later tables until the policy changes.
    pub resilience: Arc<ServiceResilience>,
}

impl Service {
    /// Index into [`ENDPOINT_STATES`] (ready, ejected, unhealthy) of one
    /// of this service's endpoints: what `/state` and `mesh_endpoints` say.
    pub fn endpoint_state(&self, e: &Endpoint, now: tokio::time::Instant) -> usize {
        if e.health != Health::Up {
            2
        } else if self.resilience.outlier.is_ejected(&e.stats.ejection, now) {
            1
        } else {
            0
        }
    }

    /// How many endpoints are in each of [`ENDPOINT_STATES`].
    pub fn endpoint_counts(&self, now: tokio::time::Instant) -> [usize; 3] {
        let mut counts = [0; 3];
        for e in &self.all {
            counts[self.endpoint_state(e, now)] += 1;
        }
        counts
    }
}

/// Services by name and by VIP, at one registry revision.
#[derive(Debug, Default)]
pub struct Table {
    pub revision: u64,
    by_name: HashMap<String, Arc<Service>>,
    by_vip: HashMap<Ipv4Addr, Arc<Service>>,
}

impl Table {
    pub fn new(revision: u64, services: impl IntoIterator<Item = Arc<Service>>) -> Self {
        let mut t = Table {
            revision,
            ..Default::default()
        };
        for s in services {
            t.by_vip.insert(s.vip, s.clone());
            t.by_name.insert(s.name.clone(), s);
        }
        t
    }

    pub fn by_name(&self, name: &str) -> Option<&Arc<Service>> {
        self.by_name.get(name)
    }

    pub fn by_vip(&self, vip: Ipv4Addr) -> Option<&Arc<Service>> {
        self.by_vip.get(&vip)
    }

    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.by_name.values()
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The `/state` view.
    pub fn state(&self) -> TableState {
        let mut services: Vec<ServiceState> = self
            .by_name
            .values()
            .map(|s| {
                let now = tokio::time::Instant::now();
                let view = s.resilience.view();
                ServiceState {
                    name: s.name.clone(),
                    vip: s.vip,
                    balancer: s.balancer.algorithm(),
                    breaker: Some(view.breaker),
                    bulkhead: Some(view.bulkhead),
                    retries: Some(view.retries),
                    requests: Some(s.metrics.request_counts()),
                    endpoints: Some(
                        s.all
                            .iter()
                            .map(|e| EndpointState {
                                id: e.id.clone(),
                                addr: e.addr,
                                state: ENDPOINT_STATES[s.endpoint_state(e, now)].to_string(),
                                in_flight: e.stats.pending(),
                                ewma_ms: e.stats.ewma().as_secs_f64() * 1000.0,
                                ejections: e.stats.ejection.times_ejected(),
                            })
                            .collect(),
                    ),
                }
            })
            .collect();
        services.sort_by(|a, b| a.name.cmp(&b.name));
        TableState {
            revision: self.revision,
            services,
        }
    }
}

pub use crate::model::state::{EndpointState, RegistryState as TableState, ServiceState};
