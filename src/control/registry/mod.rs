//! The registry: services, instances and their leases, the global revision,
//! and the fan-out of changes to watchers.
//!
//! Concurrency: the live state sits behind a short-held `std::sync::Mutex`
//! (never held across an await or a disk write). Mutations are serialised
//! end to end by a second lock, `writer`: plan under the state lock, commit
//! to redb with no state lock held, then apply and publish under the state
//! lock. Readers therefore never wait for a disk flush, and changes reach
//! the store, the change log and the broadcast in revision order.
//!
//! With `--store etcd` several replicas write one store, so "apply" is not
//! done by the writer: every replica applies every commit (its own and the
//! others') when its etcd watch delivers it (`apply.rs`), and a writer
//! waits on `applied` until its own revision is in the view before it
//! answers. Both stores reach the view through the same `apply`.

mod apply;
mod changelog;
mod configs;
mod ops;
mod policies;
#[cfg(test)]
mod tests;

pub use changelog::Change;
pub use configs::Authored;
pub use ops::SweepOutcome;

use crate::control::store::{Committed, Store, StoreError, StoredConfig, Write};
use crate::control::vip::{VipAllocator, VipCidr, VipExhausted};
use crate::model::identity::TrustBundle;
use crate::model::{
    AuthorizationPolicy, ControlStatus, Health, Instance, Route, ServiceInfo, ServicePolicy,
    ServiceSummary, Snapshot, WatchEvent,
};
use bytes::Bytes;
use changelog::ChangeLog;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::time::Instant;

/// Knobs of the registry that come from the command line.
#[derive(Clone, Debug)]
pub struct RegistrySettings {
    /// Percent of leased instances that may expire in one sweep before
    /// evictions are suspended (self-preservation).
    pub self_preservation_threshold: u8,
    /// ...and at least this many must expire for it to engage, so a lone
    /// instance dying in a tiny registry is still evicted.
    pub self_preservation_min: usize,
    /// Changes kept for `since=REV` resumes.
    pub change_log_capacity: usize,
    /// Changes buffered per watcher before it is considered lagging.
    pub broadcast_capacity: usize,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        RegistrySettings {
            self_preservation_threshold: 15,
            self_preservation_min: 3,
            change_log_capacity: 4096,
            broadcast_capacity: 1024,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("instance {id:?} of service {service:?} is not registered")]
    UnknownInstance { service: String, id: String },
    #[error("no {what} is applied for service {service:?} (it runs the defaults)")]
    UnknownPolicy { what: &'static str, service: String },
    #[error("no route named {0:?} is applied")]
    UnknownRoute(String),
    #[error("{0}")]
    UnknownConfig(String),
    #[error(transparent)]
    VipExhausted(#[from] VipExhausted),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Another replica changed the same rows first, again and again.
    #[error("the change lost to concurrent changes on other replicas {0} times; retry")]
    Contended(usize),
}

/// How often a guarded change (a new VIP, a config version) is planned
/// again after losing to another replica.
const MAX_PLANS: usize = 8;
/// How long a writer waits for its own etcd commit to reach this
/// replica's view.
const APPLIED_TIMEOUT: Duration = Duration::from_secs(5);

/// What a new watcher starts from.
pub struct Subscription {
    /// Lines to send before anything from `rx`: a snapshot, or the changes
    /// since the watcher's revision.
    pub backlog: Vec<Bytes>,
    /// The revision the watcher is at once `backlog` is sent.
    pub revision: u64,
    /// Every later change. Subscribed under the state lock together with
    /// `backlog`, so nothing is missed or repeated.
    pub rx: broadcast::Receiver<Change>,
}

pub struct Registry {
    /// Live state; held only for short sections that neither block nor await.
    state: Mutex<State>,
    /// Serialises mutations end to end (plan, disk commit, apply) so commits
    /// land in revision order while readers keep using `state`.
    writer: Mutex<()>,
    /// Durable copy of VIPs, instances, policies and the revision.
    store: Store,
    /// Signalled (with `state`) whenever a revision is applied: writers on
    /// etcd wait here for their own commit.
    applied: Condvar,
    /// May this replica evict? Always with the embedded store; with etcd
    /// only while it holds the leadership (`store::etcd::lead`).
    evicts: AtomicBool,
    /// Fan-out of committed changes to watch streams.
    changes: broadcast::Sender<Change>,
    settings: RegistrySettings,
}

struct State {
    /// Bumped by every change; persisted with it.
    revision: u64,
    /// Services are never deleted, so a VIP stays with its service.
    services: BTreeMap<String, Service>,
    vips: VipAllocator,
    log: ChangeLog,
    /// Set while the last sweep found too many leases expired at once.
    self_preservation: bool,
    /// Applied policies by service. Independent of `services`: a policy may
    /// be applied before its service registers, and outlives its instances.
    policies: BTreeMap<String, ServicePolicy>,
    /// Applied authorization policies by service (`*`: mesh-wide).
    authorizations: BTreeMap<String, AuthorizationPolicy>,
    /// The trust bundle, when identity is on.
    bundle: Option<TrustBundle>,
    /// The latest version of each config, by (application, profile); older
    /// versions stay in the store only.
    configs: BTreeMap<(String, String), StoredConfig>,
    /// Gateway routes by name.
    routes: BTreeMap<String, Route>,
    /// etcd only: instances heartbeated here since the last flush, for the
    /// other replicas (`store::etcd` writes them out every second).
    beats: BTreeSet<String>,
    /// The store's own latest revision (etcd counts heartbeat flushes too,
    /// which watchers never see, so it runs ahead of `revision`).
    store_revision: u64,
}

struct Service {
    vip: Ipv4Addr,
    instances: BTreeMap<String, Entry>,
}

struct Entry {
    instance: Instance,
    /// `None` for static registrations, which never expire.
    expires_at: Option<Instant>,
    /// The revision this instance was last written at: an eviction on etcd
    /// is guarded by it.
    written: u64,
}

// === impl Registry ===

impl Registry {
    /// Loads the store. Leased instances come back with a fresh full lease:
    /// a control-plane restart must not blank the registry.
    pub fn open(
        store: Store,
        cidr: VipCidr,
        settings: RegistrySettings,
    ) -> Result<Self, RegistryError> {
        let loaded = store.load()?;
        let now = Instant::now();
        let mut vips = VipAllocator::new(cidr);
        let mut services = BTreeMap::new();
        for (name, vip) in loaded.vips {
            if !cidr.contains(vip) {
                tracing::warn!(service = %name, %vip, %cidr, "VIP outside --vip-cidr; keeping it");
            }
            vips.mark_used(vip);
            let instances = BTreeMap::new();
            services.insert(name, Service { vip, instances });
        }
        let mut orphans = Vec::new();
        for (instance, written) in loaded.instances {
            let Some(svc) = services.get_mut(&instance.service) else {
                orphans.push(instance);
                continue;
            };
            let expires_at = lease_end(now, instance.ttl_secs);
            svc.instances.insert(
                instance.id.clone(),
                Entry {
                    instance,
                    expires_at,
                    written,
                },
            );
        }
        // A row without its service's VIP cannot be routed; report and skip.
        for o in &orphans {
            tracing::warn!(service = %o.service, id = %o.id, "stored instance has no VIP; ignored");
        }
        let policies = loaded
            .policies
            .into_iter()
            .map(|p| (p.service.clone(), p))
            .collect();
        let (changes, _) = broadcast::channel(settings.broadcast_capacity.max(1));
        let authorizations = loaded
            .authorizations
            .into_iter()
            .map(|p| (p.service.clone(), p))
            .collect();
        let configs = loaded
            .configs
            .into_iter()
            .map(|c| ((c.meta.application.clone(), c.meta.profile.clone()), c))
            .collect();
        let routes = loaded
            .routes
            .into_iter()
            .map(|r| (r.name.clone(), r))
            .collect();
        let state = State {
            configs,
            routes,
            policies,
            authorizations,
            bundle: None,
            revision: loaded.revision,
            store_revision: loaded.revision,
            services,
            vips,
            log: ChangeLog::new(settings.change_log_capacity, loaded.revision),
            self_preservation: loaded.self_preservation,
            beats: BTreeSet::new(),
        };
        let evicts = AtomicBool::new(store.shared().is_none());
        Ok(Registry {
            state: Mutex::new(state),
            writer: Mutex::new(()),
            applied: Condvar::new(),
            evicts,
            store,
            changes,
            settings,
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere must not wedge the registry: the state is only
        // changed after a successful commit, so it is consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn writer(&self) -> MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn revision(&self) -> u64 {
        self.state().revision
    }

    /// The store revision the view has reached (etcd: resume the watch
    /// after it).
    pub fn store_revision(&self) -> u64 {
        self.state().store_revision
    }

    /// `GET /v1/services`, sorted by name.
    pub fn services(&self) -> Vec<ServiceSummary> {
        let st = self.state();
        st.services
            .iter()
            .map(|(name, svc)| ServiceSummary {
                name: name.clone(),
                vip: svc.vip,
                instances: svc.instances.len(),
                healthy: svc
                    .instances
                    .values()
                    .filter(|e| e.instance.health == Health::Up)
                    .count(),
            })
            .collect()
    }

    /// Who registered an instance: `None` if there is no such instance,
    /// `Some(None)` if an operator (or an identity-off proxy) did.
    pub fn instance_identity(&self, service: &str, id: &str) -> Option<Option<String>> {
        let st = self.state();
        let entry = st.services.get(service)?.instances.get(id)?;
        Some(entry.instance.identity.clone())
    }

    pub fn service(&self, name: &str) -> Option<ServiceInfo> {
        let st = self.state();
        st.services.get(name).map(|svc| service_info(name, svc))
    }

    pub fn snapshot(&self) -> Snapshot {
        snapshot_of(&self.state())
    }

    pub fn status(&self) -> ControlStatus {
        let st = self.state();
        ControlStatus {
            revision: st.revision,
            services: st.services.len(),
            instances: st.services.values().map(|s| s.instances.len()).sum(),
            policies: st.policies.len(),
            self_preservation: st.self_preservation,
            store: self.store.kind().to_string(),
            store_revision: st.store_revision,
            ha: None,
        }
    }

    /// The store under this registry (etcd: its replica, leader, health).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Starts a watcher at `since`: the changes after it if the change log
    /// still holds them, otherwise (or for 0) a snapshot.
    pub fn subscribe(&self, since: u64) -> Subscription {
        let st = self.state();
        let rx = self.changes.subscribe();
        let backlog = match st.log.since(since, st.revision) {
            Some(lines) if since != 0 => lines,
            _ => vec![encode(&WatchEvent::Snapshot {
                snapshot: snapshot_of(&st),
            })],
        };
        Subscription {
            backlog,
            revision: st.revision,
            rx,
        }
    }

    /// Records a committed change: bumps the revision, logs and broadcasts
    /// it. Called under the state lock so order is revision order.
    fn publish(&self, st: &mut State, event: &WatchEvent) {
        st.revision = event.revision();
        let change = Change {
            revision: st.revision,
            line: encode(event),
        };
        st.log.push(change.clone());
        // No receivers is fine: nobody is watching right now.
        let _ = self.changes.send(change);
    }

    /// Commits `writes` (at `next` on the embedded store) and returns once
    /// they are in the view, at the revision they took. `Ok(None)`: a
    /// guard failed and the view has caught up with whoever won; plan
    /// again.
    fn commit(&self, next: u64, writes: Vec<Write>) -> Result<Option<u64>, RegistryError> {
        match self.store.commit(next, &writes)? {
            Committed::Done(rev) if self.store.shared().is_none() => {
                self.apply(rev, &writes);
                Ok(Some(rev))
            }
            Committed::Done(rev) => {
                self.wait_applied(rev)?;
                Ok(Some(rev))
            }
            Committed::Conflict(rev) => {
                self.wait_applied(rev)?;
                Ok(None)
            }
        }
    }

    /// A commit that no guard can refuse (no VIP, no new config version,
    /// no conditional delete).
    fn commit_plain(&self, next: u64, writes: Vec<Write>) -> Result<u64, RegistryError> {
        self.commit(next, writes)?
            .ok_or(RegistryError::Contended(1))
    }

    /// Blocks (a blocking thread, never the runtime) until the view holds
    /// the store's revision `rev`.
    fn wait_applied(&self, rev: u64) -> Result<(), RegistryError> {
        let st = self.state();
        let (_st, timeout) = self
            .applied
            .wait_timeout_while(st, APPLIED_TIMEOUT, |st| st.store_revision < rev)
            .unwrap_or_else(PoisonError::into_inner);
        match timeout.timed_out() {
            true => Err(StoreError::Lagging { revision: rev }.into()),
            false => Ok(()),
        }
    }

    /// etcd: may this replica run the eviction sweep (is it the leader)?
    pub fn set_evicts(&self, on: bool) {
        if on && !self.evicts.swap(true, Ordering::SeqCst) {
            // A new leader gives every lease a full term: it knows of the
            // heartbeats other replicas flushed, but not how recent each
            // is, and a leader change must never evict the healthy.
            let now = Instant::now();
            let mut st = self.state();
            for svc in st.services.values_mut() {
                for e in svc.instances.values_mut() {
                    e.expires_at = lease_end(now, e.instance.ttl_secs);
                }
            }
        } else if !on {
            self.evicts.store(false, Ordering::SeqCst);
        }
    }

    pub fn evicts(&self) -> bool {
        self.evicts.load(Ordering::SeqCst)
    }
}

fn lease_end(now: Instant, ttl_secs: Option<u64>) -> Option<Instant> {
    ttl_secs.map(|t| now + Duration::from_secs(t))
}

fn service_info(name: &str, svc: &Service) -> ServiceInfo {
    ServiceInfo {
        name: name.to_string(),
        vip: svc.vip,
        instances: svc.instances.values().map(|e| e.instance.clone()).collect(),
    }
}

fn snapshot_of(st: &State) -> Snapshot {
    Snapshot {
        revision: st.revision,
        services: st
            .services
            .iter()
            .map(|(name, svc)| service_info(name, svc))
            .collect(),
        // BTreeMap order: sorted by service, as `Snapshot` promises.
        policies: st.policies.values().cloned().collect(),
        authorizations: st.authorizations.values().cloned().collect(),
        bundle: st.bundle.clone(),
        configs: st.configs.values().map(configs::head).collect(),
        routes: st.routes.values().cloned().collect(),
    }
}

/// One NDJSON line. The wire types hold only strings, numbers and maps
/// with string keys, which always serialise.
pub fn encode(event: &WatchEvent) -> Bytes {
    let mut line = serde_json::to_vec(event).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}
