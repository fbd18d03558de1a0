//! The proxy's view of the registry: applies watch events and snapshots,
//! and publishes an immutable [`Table`] for the request path.
//!
//! Writers (the watch task, the cache loader, a first call) are
//! serialized by a mutex; readers never lock: they load the current
//! `Arc<Table>` from an ArcSwap.
//!
//! What an event costs does not grow with the mesh. The registry's
//! records are kept for every service (they are small, and a first call
//! then needs no round trip to the control plane, and works from the disk
//! cache while it is away); the routing state built from them (balancer,
//! resilience, metrics, endpoint pools) exists only for the services this
//! proxy's app calls, built on first use by [`Directory::service`] and
//! rebuilt when an event names one of them. An event for any other
//! service updates its record and, when its VIP is new or moved, one
//! entry of the name and VIP maps; the table's persistent maps make the
//! new table share everything else with the old one.
//!
//! Removals the control plane did not mean (expired leases, endpoints a
//! snapshot misses) are checked first: a proxy does not drop most of a
//! service at once (`preserve`).

mod preserve;

pub use preserve::{Preservation, WINDOW as REMOVAL_WINDOW};

use super::table::{service_state, Endpoint, Service, Table};
use crate::authz::Policies;
use crate::balance::{Algorithm, Balancer, EndpointStats};
use crate::gateway::RouteTable;
use crate::identity::SpiffeId;
use crate::model::config::ConfigHead;
use crate::model::identity::TrustBundle;
use crate::model::state::{EndpointState, RegistryState, ServiceState};
use crate::model::{
    AuthorizationPolicy, Health, Route, ServiceInfo, ServicePolicy, Snapshot, WatchEvent,
};
use crate::proxy::upstream::H1Pool;
use crate::resilience::ServiceResilience;
use crate::telemetry::ProxyMetrics;
use arc_swap::ArcSwap;
use preserve::Guard;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// The registry as this proxy knows it.
pub struct Directory {
    /// What the request path and DNS read.
    table: ArcSwap<Table>,
    /// The raw registry state, changed only by `apply` and `replace`.
    inner: Mutex<Inner>,
    /// Per-service balancer choice from `--lb`.
    lb: HashMap<String, Algorithm>,
    metrics: Arc<ProxyMetrics>,
    /// Latest applied revision; `None` until a snapshot was loaded. The
    /// cache writer and `/ready` wait on it.
    revision_tx: watch::Sender<Option<u64>>,
    /// Authorization policies for the inbound side, rebuilt per change.
    authz: ArcSwap<Policies>,
    /// The gateway's routes, compiled, rebuilt per change of a route.
    routes: ArcSwap<RouteTable>,
    /// The trust bundle as last pushed; the identity task follows it.
    bundle_tx: watch::Sender<Option<TrustBundle>>,
    /// The latest version of every config; config delivery follows it.
    configs_tx: watch::Sender<Arc<ConfigHeads>>,
    /// Bumped each time a watch stream opens (mesh-control then lists this
    /// proxy afresh, and what it reports must be sent again).
    connected_tx: watch::Sender<u64>,
}

/// Config heads by `application/profile`.
pub type ConfigHeads = BTreeMap<String, ConfigHead>;

/// The key of a config head: `application/profile`.
pub fn config_key(application: &str, profile: &str) -> String {
    format!("{application}/{profile}")
}

/// What an endpoint keeps across table rebuilds.
struct Kept {
    stats: Arc<EndpointStats>,
    /// Its connections, while it keeps its address.
    conns: Arc<H1Pool>,
}

#[derive(Default)]
struct Inner {
    revision: u64,
    services: BTreeMap<String, ServiceInfo>,
    /// Services whose routing state is built: called since start (or
    /// since they were cached as called).
    routed: HashSet<String>,
    /// Balancer statistics and connections by (service, instance id),
    /// kept while the instance stays registered.
    stats: HashMap<(String, String), Kept>,
    /// Applied policies by service; absent means the default stack.
    policies: HashMap<String, Arc<ServicePolicy>>,
    /// Resilience state by service, kept across table rebuilds and updated
    /// in place when the policy changes.
    runtimes: HashMap<String, Arc<ServiceResilience>>,
    /// Applied authorization policies by service (`*`: mesh-wide).
    authorizations: BTreeMap<String, AuthorizationPolicy>,
    bundle: Option<TrustBundle>,
    configs: ConfigHeads,
    routes: BTreeMap<String, Route>,
    /// Client-side self-preservation: the removal windows, and the
    /// endpoints kept although the control plane dropped them (routed,
    /// but not in `services`, which is what the control plane lists).
    guard: Guard,
}

impl Directory {
    pub fn new(lb: HashMap<String, Algorithm>, metrics: Arc<ProxyMetrics>) -> Self {
        Directory {
            table: ArcSwap::from_pointee(Table::default()),
            inner: Mutex::new(Inner::default()),
            lb,
            metrics,
            revision_tx: watch::channel(None).0,
            authz: ArcSwap::from_pointee(Policies::default()),
            routes: ArcSwap::from_pointee(RouteTable::default()),
            bundle_tx: watch::channel(None).0,
            configs_tx: watch::channel(Arc::default()).0,
            connected_tx: watch::channel(0).0,
        }
    }

    /// Checks removals with `settings` instead of the defaults (50 %, 60 s).
    pub fn with_preservation(mut self, settings: Preservation) -> Self {
        let inner = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        inner.guard = Guard::new(settings);
        self
    }

    /// Follows the openings of the watch stream.
    pub fn connected(&self) -> watch::Receiver<u64> {
        self.connected_tx.subscribe()
    }

    /// A watch stream has just opened.
    pub fn mark_connected(&self) {
        self.connected_tx.send_modify(|n| *n += 1);
    }

    /// Follows the latest version of every config.
    pub fn config_heads(&self) -> watch::Receiver<Arc<ConfigHeads>> {
        self.configs_tx.subscribe()
    }

    fn set_configs(&self, inner: &Inner) {
        self.configs_tx
            .send_replace(Arc::new(inner.configs.clone()));
    }

    /// The authorization policies in force (lock-free).
    pub fn authz(&self) -> Arc<Policies> {
        self.authz.load_full()
    }

    /// The gateway's routes in force (lock-free).
    pub fn routes(&self) -> Arc<RouteTable> {
        self.routes.load_full()
    }

    /// Runs `f` on the route table without bumping its refcount.
    pub fn with_routes<T>(&self, f: impl FnOnce(&RouteTable) -> T) -> T {
        f(&self.routes.load())
    }

    fn set_routes(&self, inner: &Inner) {
        self.routes
            .store(Arc::new(RouteTable::new(inner.routes.values())));
    }

    /// Follows the trust bundle pushed by the control plane.
    pub fn bundle(&self) -> watch::Receiver<Option<TrustBundle>> {
        self.bundle_tx.subscribe()
    }

    fn set_authz(&self, inner: &Inner) {
        let docs = inner.authorizations.values().cloned();
        self.authz.store(Arc::new(Policies::new(docs)));
    }

    fn set_bundle(&self, bundle: Option<TrustBundle>) {
        if bundle.is_some() {
            self.bundle_tx.send_replace(bundle);
        }
    }

    /// The current routing table (lock-free).
    pub fn table(&self) -> Arc<Table> {
        self.table.load_full()
    }

    /// Runs `f` on the current table without bumping its refcount.
    pub fn with_table<T>(&self, f: impl FnOnce(&Table) -> T) -> T {
        f(&self.table.load())
    }

    /// Latest applied revision, `None` before the first snapshot.
    pub fn revision(&self) -> Option<u64> {
        *self.revision_tx.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<u64>> {
        self.revision_tx.subscribe()
    }

    /// The registry as currently known, for the on-disk cache.
    pub fn snapshot(&self) -> Snapshot {
        let inner = self.lock();
        let mut policies: Vec<ServicePolicy> =
            inner.policies.values().map(|p| (**p).clone()).collect();
        policies.sort_by(|a, b| a.service.cmp(&b.service));
        Snapshot {
            revision: inner.revision,
            services: inner.services.values().cloned().collect(),
            policies,
            authorizations: inner.authorizations.values().cloned().collect(),
            bundle: inner.bundle.clone(),
            configs: inner.configs.values().cloned().collect(),
            routes: inner.routes.values().cloned().collect(),
        }
    }

    /// Writes [`Directory::snapshot`] as JSON to `out`, serialized from
    /// the state in place under the lock: no copy of every record first,
    /// and no buffer of the whole document (at 10 000 services both were
    /// megabytes the allocator kept as resident memory afterwards).
    pub fn write_snapshot(&self, out: impl std::io::Write) -> serde_json::Result<()> {
        let inner = self.lock();
        let mut policies: Vec<&ServicePolicy> = inner.policies.values().map(|p| &**p).collect();
        policies.sort_by(|a, b| a.service.cmp(&b.service));
        let view = SnapshotView {
            revision: inner.revision,
            services: Every(&inner.services),
            policies,
            authorizations: Every(&inner.authorizations),
            bundle: inner.bundle.as_ref(),
            configs: Every(&inner.configs),
            routes: Every(&inner.routes),
        };
        serde_json::to_writer(out, &view)
    }

    /// Replaces everything with `snap`. Services routed before stay
    /// routed (their state is rebuilt); the rest are records only. Ready
    /// endpoints it no longer lists are removals checked by `preserve`.
    pub fn replace(&self, snap: Snapshot) {
        let mut inner = self.lock();
        inner.revision = snap.revision;
        let services = snap
            .services
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect();
        self.replace_services(&mut inner, services);
        let live: HashSet<(String, String)> = inner
            .services
            .values()
            .flat_map(|s| s.instances.iter().map(|i| (s.name.clone(), i.id.clone())))
            .chain(
                inner
                    .guard
                    .held_keys()
                    .map(|(s, id)| (s.to_string(), id.to_string())),
            )
            .collect();
        inner.stats.retain(|k, _| live.contains(k));
        inner.policies = snap
            .policies
            .into_iter()
            .map(|p| (p.service.clone(), Arc::new(p)))
            .collect();
        let Inner {
            services,
            routed,
            runtimes,
            ..
        } = &mut *inner;
        routed.retain(|k| services.contains_key(k));
        runtimes.retain(|k, _| routed.contains(k));
        inner.authorizations = snap
            .authorizations
            .into_iter()
            .map(|p| (p.service.clone(), p))
            .collect();
        self.set_authz(&inner);
        inner.configs = snap
            .configs
            .into_iter()
            .map(|c| (config_key(&c.application, &c.profile), c))
            .collect();
        self.set_configs(&inner);
        let routes: BTreeMap<String, Route> = snap
            .routes
            .into_iter()
            .map(|r| (r.name.clone(), r))
            .collect();
        if routes != inner.routes {
            inner.routes = routes;
            self.set_routes(&inner);
        }
        if snap.bundle.is_some() {
            inner.bundle = snap.bundle.clone();
            self.set_bundle(snap.bundle);
        }
        let mut table = Table::cleared(inner.revision);
        for s in inner.services.values() {
            table.set_name(&s.name, s.vip);
        }
        let routed: Vec<String> = inner.routed.iter().cloned().collect();
        for name in routed {
            if let Some(svc) = self.build_routed(&mut inner, &name) {
                table.set_route(svc);
            }
        }
        self.publish(table);
    }

    /// Applies one watch event. Events at or below the current revision
    /// (a replay after reconnect) are ignored. Every event (keep-alives
    /// too) first ends the holds that lasted their time.
    pub fn apply(&self, event: WatchEvent) {
        self.expire_held();
        let event = match event {
            WatchEvent::Snapshot { snapshot } => return self.replace(snapshot),
            WatchEvent::Keepalive { .. } => return,
            e => e,
        };
        let mut inner = self.lock();
        if self.revision().is_some() && event.revision() <= inner.revision {
            return;
        }
        // The service whose routing state the event may change.
        let (service, revision) = match event {
            WatchEvent::Snapshot { .. } | WatchEvent::Keepalive { .. } => return,
            WatchEvent::Policy { revision, policy } => {
                let name = policy.service.clone();
                inner.policies.insert(name.clone(), Arc::new(policy));
                (Some(name), revision)
            }
            WatchEvent::PolicyRemoved { revision, service } => {
                inner.policies.remove(&service);
                (Some(service), revision)
            }
            WatchEvent::Authorization { revision, policy } => {
                inner.authorizations.insert(policy.service.clone(), policy);
                self.set_authz(&inner);
                (None, revision)
            }
            WatchEvent::AuthorizationRemoved { revision, service } => {
                inner.authorizations.remove(&service);
                self.set_authz(&inner);
                (None, revision)
            }
            WatchEvent::TrustBundle { revision, bundle } => {
                inner.bundle = Some(bundle.clone());
                self.set_bundle(Some(bundle));
                (None, revision)
            }
            WatchEvent::Route { revision, route } => {
                inner.routes.insert(route.name.clone(), route);
                self.set_routes(&inner);
                (None, revision)
            }
            WatchEvent::RouteRemoved { revision, name } => {
                inner.routes.remove(&name);
                self.set_routes(&inner);
                (None, revision)
            }
            WatchEvent::Config { revision, config } => {
                let key = config_key(&config.application, &config.profile);
                inner.configs.insert(key, config);
                self.set_configs(&inner);
                (None, revision)
            }
            WatchEvent::Upsert {
                revision,
                vip,
                instance,
            } => {
                let name = instance.service.clone();
                if inner.guard.release(&name, &instance.id) {
                    tracing::info!(service = %name, instance = %instance.id, "held endpoint listed again: hold ended");
                }
                let svc = inner
                    .services
                    .entry(name.clone())
                    .or_insert_with(|| ServiceInfo {
                        name: name.clone(),
                        vip,
                        instances: Vec::new(),
                    });
                svc.vip = vip;
                match svc.instances.iter_mut().find(|i| i.id == instance.id) {
                    Some(slot) => *slot = instance,
                    None => {
                        svc.instances.push(instance);
                        svc.instances.sort_by(|a, b| a.id.cmp(&b.id));
                    }
                }
                (Some(name), revision)
            }
            WatchEvent::Remove {
                revision,
                service,
                id,
                reason,
            } => {
                self.remove(&mut inner, &service, &id, reason);
                (Some(service), revision)
            }
        };
        inner.revision = revision;
        let mut table = Table::clone(&self.table.load());
        table.revision = revision;
        if let Some(name) = service {
            if let Some(info) = inner.services.get(&name) {
                table.set_name(&name, info.vip);
            }
            if inner.routed.contains(&name) {
                if let Some(svc) = self.build_routed(&mut inner, &name) {
                    table.set_route(svc);
                }
            }
        }
        self.publish(table);
    }

    /// The routing state of the service `name`, built on its first use.
    /// `None`: no such service is registered.
    pub fn service(&self, name: &str) -> Option<Arc<Service>> {
        {
            let table = self.table.load();
            if let Some(s) = table.by_name(name) {
                return Some(s.clone());
            }
            // An unknown name (an external host, a typo, a flood of
            // random ones) never takes the lock.
            if !table.knows(name) {
                return None;
            }
        }
        self.route(name)
    }

    /// [`Directory::service`] by VIP.
    pub fn service_by_vip(&self, vip: Ipv4Addr) -> Option<Arc<Service>> {
        let name = {
            let table = self.table.load();
            if let Some(s) = table.by_vip(vip) {
                return Some(s.clone());
            }
            table.name_at(vip)?.to_string()
        };
        self.route(&name)
    }

    /// Builds `name`'s routing state and publishes it (same revision):
    /// from now on every event for it rebuilds it.
    fn route(&self, name: &str) -> Option<Arc<Service>> {
        let mut inner = self.lock();
        // Another caller may have built it meanwhile.
        if let Some(s) = self.table.load().by_name(name) {
            return Some(s.clone());
        }
        let svc = self.build_routed(&mut inner, name)?;
        inner.routed.insert(name.to_string());
        let mut table = Table::clone(&self.table.load());
        table.set_route(svc.clone());
        self.publish(table);
        tracing::debug!(service = name, "routing state built on first use");
        Some(svc)
    }

    /// The `/state` view: routed services with their live state, the
    /// others from their records and policies (endpoints by registered
    /// health, resilience as their policy starts it).
    pub fn state(&self) -> RegistryState {
        let now = tokio::time::Instant::now();
        let table = self.table.load_full();
        let inner = self.lock();
        let services = inner
            .services
            .values()
            .map(|info| match table.by_name(&info.name) {
                Some(s) => service_state(s, now),
                None => self.record_state(&inner, info),
            })
            .collect();
        RegistryState {
            revision: table.revision,
            services,
        }
    }

    fn record_state(&self, inner: &Inner, info: &ServiceInfo) -> ServiceState {
        let info = &*inner.guard.with_held(info);
        let policy = inner
            .policies
            .get(&info.name)
            .cloned()
            .unwrap_or_else(|| Arc::new(ServicePolicy::defaults(&info.name)));
        let balancer = self
            .lb
            .get(&info.name)
            .copied()
            .unwrap_or(policy.load_balancer);
        // What its policy would start with: nothing called it yet.
        let view = ServiceResilience::new(policy).view();
        ServiceState {
            name: info.name.clone(),
            vip: info.vip,
            balancer,
            breaker: Some(view.breaker),
            bulkhead: Some(view.bulkhead),
            retries: Some(view.retries),
            requests: Some(Default::default()),
            endpoints: Some(
                info.instances
                    .iter()
                    .map(|i| EndpointState {
                        id: i.id.clone(),
                        addr: SocketAddr::new(i.address, i.port),
                        state: match i.health {
                            Health::Up => "ready",
                            _ => "unhealthy",
                        }
                        .to_string(),
                        in_flight: 0,
                        ewma_ms: 0.0,
                        ejections: 0,
                    })
                    .collect(),
            ),
        }
    }

    /// `name`'s routing state from its record, reusing what it keeps
    /// across rebuilds; `None` if no such service is registered.
    fn build_routed(&self, inner: &mut Inner, name: &str) -> Option<Arc<Service>> {
        let Inner {
            services,
            stats,
            policies,
            runtimes,
            guard,
            ..
        } = inner;
        let info = guard.with_held(services.get(name)?);
        Some(Arc::new(self.build(&info, stats, policies, runtimes)))
    }

    fn build(
        &self,
        info: &ServiceInfo,
        stats: &mut HashMap<(String, String), Kept>,
        policies: &HashMap<String, Arc<ServicePolicy>>,
        runtimes: &mut HashMap<String, Arc<ServiceResilience>>,
    ) -> Service {
        let policy = policies
            .get(&info.name)
            .cloned()
            .unwrap_or_else(|| Arc::new(ServicePolicy::defaults(&info.name)));
        let resilience = match runtimes.get(&info.name) {
            Some(rt) if *rt.policy == *policy => rt.clone(),
            Some(rt) => Arc::new(rt.update(policy.clone())),
            None => Arc::new(ServiceResilience::with_breaker_hook(
                policy.clone(),
                self.metrics.breaker_hook(&info.name),
            )),
        };
        runtimes.insert(info.name.clone(), resilience.clone());
        let all: Vec<Arc<Endpoint>> = info
            .instances
            .iter()
            .filter_map(|i| {
                let addr = SocketAddr::new(i.address, i.port);
                let inbound = i.inbound_port.map(|p| SocketAddr::new(i.address, p));
                let dial = inbound.unwrap_or(addr);
                // Who must answer at `dial`: mTLS to a sidecar that has an
                // identity; plain TCP to an instance without one.
                let peer = match (inbound, &i.identity) {
                    (Some(_), Some(id)) => match id.parse::<SpiffeId>() {
                        Ok(id) => Some(Arc::new(id)),
                        Err(e) => {
                            tracing::warn!(service = %info.name, instance = %i.id, error = %e, "instance identity is not a SPIFFE ID; not routed");
                            return None;
                        }
                    },
                    _ => None,
                };
                let kept = stats
                    .entry((info.name.clone(), i.id.clone()))
                    .or_insert_with(|| Kept {
                        stats: Arc::default(),
                        conns: H1Pool::new(dial, peer.clone()),
                    });
                if kept.conns.addr() != dial || kept.conns.peer() != peer.as_deref() {
                    kept.conns = H1Pool::new(dial, peer.clone());
                }
                let (stats, conns) = (kept.stats.clone(), kept.conns.clone());
                Some(Arc::new(Endpoint {
                    id: i.id.clone(),
                    addr,
                    // A socket address always forms a valid authority.
                    authority: http::uri::Authority::try_from(dial.to_string().as_str())
                        .unwrap_or_else(|_| http::uri::Authority::from_static("invalid")),
                    inbound,
                    health: i.health,
                    stats,
                    conns,
                }))
            })
            .collect();
        let ready: Vec<Arc<Endpoint>> = all
            .iter()
            .filter(|e| e.health == Health::Up)
            .cloned()
            .collect();
        // `--lb` on the command line overrides the policy (local testing).
        let algorithm = self
            .lb
            .get(&info.name)
            .copied()
            .unwrap_or(policy.load_balancer);
        Service {
            name: info.name.clone(),
            vip: info.vip,
            ready,
            all,
            balancer: Balancer::new(algorithm),
            metrics: self.metrics.service(&info.name),
            resilience,
        }
    }

    fn publish(&self, table: Table) {
        let rev = table.revision;
        self.table.store(Arc::new(table));
        self.metrics
            .revision
            .set(i64::try_from(rev).unwrap_or(i64::MAX));
        self.revision_tx.send_replace(Some(rev));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave Inner half-updated in
        // a way that matters more than stopping routing would; keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// [`Snapshot`]'s JSON form, borrowed.
#[derive(serde::Serialize)]
struct SnapshotView<'a> {
    revision: u64,
    services: Every<'a, ServiceInfo>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    policies: Vec<&'a ServicePolicy>,
    #[serde(skip_serializing_if = "Every::is_empty")]
    authorizations: Every<'a, AuthorizationPolicy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bundle: Option<&'a TrustBundle>,
    #[serde(skip_serializing_if = "Every::is_empty")]
    configs: Every<'a, ConfigHead>,
    #[serde(skip_serializing_if = "Every::is_empty")]
    routes: Every<'a, Route>,
}

/// A map's values as a JSON array, in key order.
struct Every<'a, T>(&'a BTreeMap<String, T>);

impl<T> Every<'_, T> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<T: serde::Serialize> serde::Serialize for Every<'_, T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.values())
    }
}

impl crate::proxy::dns::VipLookup for Directory {
    fn vip(&self, service: &str) -> Option<Ipv4Addr> {
        self.table.load().vip_of(service)
    }
}

#[cfg(test)]
mod tests;
