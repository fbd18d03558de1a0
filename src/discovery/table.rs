//! The routing table the request path reads: immutable, swapped whole.

use crate::balance::{Balancer, EndpointStats, HasStats};
use crate::model::Health;
use crate::proxy::upstream::H1Pool;
use crate::resilience::ServiceResilience;
use crate::telemetry::{ServiceMetrics, ENDPOINT_STATES};
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

/// Services at one registry revision: the name and VIP of every one, and
/// the routing state of those this proxy's app calls.
///
/// The maps are persistent (imbl's HAMT): a new table shares all but the
/// changed path with the one before, so publishing a change costs the
/// same with 10 services or 10 000.
#[derive(Debug, Default, Clone)]
pub struct Table {
    pub revision: u64,
    /// Every registered service's VIP: what DNS answers, and what a first
    /// call resolves.
    names: imbl::HashMap<String, Ipv4Addr>,
    vips: imbl::HashMap<Ipv4Addr, String>,
    /// Routing state, built on a service's first use (see
    /// `Directory::service`).
    by_name: imbl::HashMap<String, Arc<Service>>,
    by_vip: imbl::HashMap<Ipv4Addr, Arc<Service>>,
}

impl Table {
    /// The routing state of `name`, if it was built (called before).
    pub fn by_name(&self, name: &str) -> Option<&Arc<Service>> {
        self.by_name.get(name)
    }

    /// The routing state of the service at `vip`, if it was built.
    pub fn by_vip(&self, vip: Ipv4Addr) -> Option<&Arc<Service>> {
        self.by_vip.get(&vip)
    }

    /// The VIP of any registered service.
    pub fn vip_of(&self, name: &str) -> Option<Ipv4Addr> {
        self.names.get(name).copied()
    }

    /// The registered service at `vip`.
    pub fn name_at(&self, vip: Ipv4Addr) -> Option<&str> {
        self.vips.get(&vip).map(String::as_str)
    }

    /// Whether `name` is a registered service.
    pub fn knows(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }

    /// The services whose routing state was built.
    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.by_name.values()
    }

    /// Registered services.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Routed services (built).
    pub fn routed(&self) -> usize {
        self.by_name.len()
    }

    /// Registers `name` at `vip` (moving it if its VIP changed).
    pub(super) fn set_name(&mut self, name: &str, vip: Ipv4Addr) {
        match self.names.get(name) {
            Some(old) if *old == vip => return,
            Some(old) => {
                let old = *old;
                self.vips.remove(&old);
                if let Some(s) = self.by_vip.remove(&old) {
                    self.by_vip.insert(vip, s);
                }
            }
            None => {}
        }
        self.names.insert(name.to_string(), vip);
        self.vips.insert(vip, name.to_string());
    }

    /// Puts `svc`'s routing state in (replacing its previous one).
    pub(super) fn set_route(&mut self, svc: Arc<Service>) {
        if let Some(old) = self.by_name.get(&svc.name) {
            if old.vip != svc.vip {
                self.by_vip.remove(&old.vip);
            }
        }
        self.set_name(&svc.name, svc.vip);
        self.by_vip.insert(svc.vip, svc.clone());
        self.by_name.insert(svc.name.clone(), svc);
    }

    /// Every service and route removed (a snapshot replaces them).
    pub(super) fn cleared(revision: u64) -> Table {
        Table {
            revision,
            ..Default::default()
        }
    }
}

/// The `/state` view of a routed service.
pub fn service_state(s: &Service, now: tokio::time::Instant) -> ServiceState {
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
}

pub use crate::model::state::{EndpointState, RegistryState as TableState, ServiceState};
