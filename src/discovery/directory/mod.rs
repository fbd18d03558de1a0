//! The proxy's view of the registry: applies watch events and snapshots,
//! and publishes an immutable [`Table`] for the request path.
//!
//! Writers (the watch task, the cache loader) are serialized by a mutex;
//! readers never lock: they load the current `Arc<Table>` from an ArcSwap.

use super::table::{Endpoint, Service, Table};
use crate::authz::Policies;
use crate::balance::{Algorithm, Balancer, EndpointStats};
use crate::identity::SpiffeId;
use crate::model::identity::TrustBundle;
use crate::model::{AuthorizationPolicy, Health, ServiceInfo, ServicePolicy, Snapshot, WatchEvent};
use crate::proxy::upstream::H1Pool;
use crate::resilience::ServiceResilience;
use crate::telemetry::ProxyMetrics;
use arc_swap::ArcSwap;
use std::collections::{BTreeMap, HashMap};
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
    /// The trust bundle as last pushed; the identity task follows it.
    bundle_tx: watch::Sender<Option<TrustBundle>>,
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
            bundle_tx: watch::channel(None).0,
        }
    }

    /// The authorization policies in force (lock-free).
    pub fn authz(&self) -> Arc<Policies> {
        self.authz.load_full()
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
        }
    }

    /// Replaces everything with `snap`.
    pub fn replace(&self, snap: Snapshot) {
        let mut inner = self.lock();
        inner.revision = snap.revision;
        inner.services = snap
            .services
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect();
        let live: std::collections::HashSet<(String, String)> = inner
            .services
            .values()
            .flat_map(|s| s.instances.iter().map(|i| (s.name.clone(), i.id.clone())))
            .collect();
        inner.stats.retain(|k, _| live.contains(k));
        inner.policies = snap
            .policies
            .into_iter()
            .map(|p| (p.service.clone(), Arc::new(p)))
            .collect();
        let names: std::collections::HashSet<String> = inner.services.keys().cloned().collect();
        inner.runtimes.retain(|k, _| names.contains(k));
        inner.authorizations = snap
            .authorizations
            .into_iter()
            .map(|p| (p.service.clone(), p))
            .collect();
        self.set_authz(&inner);
        if snap.bundle.is_some() {
            inner.bundle = snap.bundle.clone();
            self.set_bundle(snap.bundle);
        }
        let Inner {
            revision,
            services,
            stats,
            policies,
            runtimes,
            ..
        } = &mut *inner;
        let services: Vec<Arc<Service>> = services
            .values()
            .map(|s| Arc::new(self.build(s, stats, policies, runtimes)))
            .collect();
        self.publish(Table::new(*revision, services));
    }

    /// Applies one watch event. Events at or below the current revision
    /// (a replay after reconnect) are ignored.
    pub fn apply(&self, event: WatchEvent) {
        let (service, revision) = match event {
            WatchEvent::Snapshot { snapshot } => return self.replace(snapshot),
            WatchEvent::Keepalive { .. } => return,
            WatchEvent::Policy { revision, policy } => {
                let mut inner = self.lock();
                if self.revision().is_some() && revision <= inner.revision {
                    return;
                }
                let name = policy.service.clone();
                inner.policies.insert(name.clone(), Arc::new(policy));
                (name, revision)
            }
            WatchEvent::PolicyRemoved { revision, service } => {
                let mut inner = self.lock();
                if self.revision().is_some() && revision <= inner.revision {
                    return;
                }
                inner.policies.remove(&service);
                (service, revision)
            }
            WatchEvent::Authorization { revision, policy } => {
                let mut inner = self.lock();
                if self.revision().is_some() && revision <= inner.revision {
                    return;
                }
                inner.authorizations.insert(policy.service.clone(), policy);
                self.set_authz(&inner);
                return self.bump(&mut inner, revision);
            }
            WatchEvent::AuthorizationRemoved { revision, service } => {
                let mut inner = self.lock();
                if self.revision().is_some() && revision <= inner.revision {
                    return;
                }
                inner.authorizations.remove(&service);
                self.set_authz(&inner);
                return self.bump(&mut inner, revision);
            }
            WatchEvent::TrustBundle { revision, bundle } => {
                let mut inner = self.lock();
                if self.revision().is_some() && revision <= inner.revision {
                    return;
                }
                inner.bundle = Some(bundle.clone());
                self.set_bundle(Some(bundle));
                return self.bump(&mut inner, revision);
            }
            WatchEvent::Upsert {
                revision,
                vip,
                instance,
            } => {
                let mut inner = self.lock();
                if self.revision().is_some() && revision <= inner.revision {
                    return;
                }
                let name = instance.service.clone();
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
                (name, revision)
            }
            WatchEvent::Remove {
                revision,
                service,
                id,
                ..
            } => {
                let mut inner = self.lock();
                if self.revision().is_some() && revision <= inner.revision {
                    return;
                }
                if let Some(svc) = inner.services.get_mut(&service) {
                    svc.instances.retain(|i| i.id != id);
                }
                inner.stats.remove(&(service.clone(), id));
                (service, revision)
            }
        };
        self.rebuild_one(&service, revision);
    }

    /// A change that touches no service's routing: the same table at the
    /// new revision.
    fn bump(&self, inner: &mut Inner, revision: u64) {
        inner.revision = revision;
        let old = self.table.load();
        self.publish(Table::new(revision, old.services().cloned()));
    }

    fn rebuild_one(&self, name: &str, revision: u64) {
        let mut inner = self.lock();
        inner.revision = revision;
        let Some(info) = inner.services.get(name).cloned() else {
            // A policy for a service nobody registered yet: kept in
            // `inner`, used once the service appears.
            let old = self.table.load();
            self.publish(Table::new(revision, old.services().cloned()));
            return;
        };
        let Inner {
            stats,
            policies,
            runtimes,
            ..
        } = &mut *inner;
        let rebuilt = Arc::new(self.build(&info, stats, policies, runtimes));
        let old = self.table.load();
        let services = old
            .services()
            .filter(|s| s.name != name)
            .cloned()
            .chain(std::iter::once(rebuilt));
        self.publish(Table::new(revision, services));
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

impl crate::proxy::dns::VipLookup for Directory {
    fn vip(&self, service: &str) -> Option<Ipv4Addr> {
        self.table.load().by_name(service).map(|s| s.vip)
    }
}

#[cfg(test)]
mod tests;
