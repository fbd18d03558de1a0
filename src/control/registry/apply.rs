//! The one way a committed change enters the view: [`Registry::apply`].
//!
//! The embedded store's writer calls it right after its commit is durable;
//! with etcd, each replica's watch task calls it for every revision, its
//! own commits included. It updates the state, logs, and publishes what
//! watchers see, one event per revision, all under the state lock, so the
//! change log and the broadcast stay in revision order.

use super::{configs, lease_end, snapshot_of, Entry, Registry, Service, State};
use crate::control::store::{Loaded, Write};
use crate::model::{RemoveReason, WatchEvent};
use std::collections::BTreeMap;
use tokio::time::Instant;

// === impl Registry ===

impl Registry {
    /// Applies the writes of one committed revision.
    pub fn apply(&self, revision: u64, writes: &[Write]) {
        let mut st = self.state();
        self.apply_locked(&mut st, revision, writes);
        st.store_revision = st.store_revision.max(revision);
        drop(st);
        self.applied.notify_all();
    }

    /// The store moved to `revision` with nothing watchers see (etcd: a
    /// heartbeat flush); writers waiting on it may go on.
    pub fn advance(&self, revision: u64) {
        let mut st = self.state();
        st.store_revision = st.store_revision.max(revision);
        drop(st);
        self.applied.notify_all();
    }

    /// Heartbeats another replica received (`service/id` keys): renew their
    /// leases here too, so whichever replica leads next knows them alive.
    pub fn renew(&self, keys: &[String]) {
        let now = Instant::now();
        let mut st = self.state();
        for key in keys {
            let Some((service, id)) = key.split_once('/') else {
                continue;
            };
            if let Some(e) = st
                .services
                .get_mut(service)
                .and_then(|s| s.instances.get_mut(id))
            {
                e.expires_at = lease_end(now, e.instance.ttl_secs);
            }
        }
    }

    /// etcd: the heartbeats taken here since the last call, as `service/id`.
    pub fn take_beats(&self) -> Vec<String> {
        std::mem::take(&mut self.state().beats)
            .into_iter()
            .collect()
    }

    /// etcd: the view replaced by the store read whole at `loaded.revision`
    /// (the watch fell behind a compaction). Watchers get one snapshot
    /// line; a `since` older than it is answered with a snapshot too.
    pub fn replace(&self, loaded: Loaded) {
        let now = Instant::now();
        let mut st = self.state();
        let st = &mut *st;
        let mut services: BTreeMap<String, Service> = BTreeMap::new();
        for (name, vip) in loaded.vips {
            st.vips.mark_used(vip);
            let instances = BTreeMap::new();
            services.insert(name, Service { vip, instances });
        }
        for (instance, written) in loaded.instances {
            let Some(svc) = services.get_mut(&instance.service) else {
                continue;
            };
            // Keep the lease a known instance had: a resync is not a renewal.
            let expires_at = st
                .services
                .get(&instance.service)
                .and_then(|s| s.instances.get(&instance.id))
                .map_or_else(|| lease_end(now, instance.ttl_secs), |e| e.expires_at);
            let entry = Entry {
                instance,
                expires_at,
                written,
            };
            svc.instances.insert(entry.instance.id.clone(), entry);
        }
        st.services = services;
        st.policies = by_key(loaded.policies, |p| p.service.clone());
        st.authorizations = by_key(loaded.authorizations, |p| p.service.clone());
        st.routes = by_key(loaded.routes, |r| r.name.clone());
        st.configs = loaded
            .configs
            .into_iter()
            .map(|c| ((c.meta.application.clone(), c.meta.profile.clone()), c))
            .collect();
        st.self_preservation = loaded.self_preservation;
        st.revision = loaded.revision;
        st.store_revision = st.store_revision.max(loaded.revision);
        st.log.reset(loaded.revision);
        let event = WatchEvent::Snapshot {
            snapshot: snapshot_of(st),
        };
        let _ = self.changes.send(super::Change {
            revision: st.revision,
            line: super::encode(&event),
        });
        tracing::warn!(revision = st.revision, "view reloaded from the store");
        self.applied.notify_all();
    }

    fn apply_locked(&self, st: &mut State, revision: u64, writes: &[Write]) {
        let now = Instant::now();
        // VIPs first: an instance committed with its service's VIP finds it.
        for w in writes {
            if let Write::PutVip { service, vip } = w {
                st.vips.take(*vip);
                st.services.entry(service.clone()).or_insert_with(|| {
                    tracing::info!(%service, %vip, "service created");
                    Service {
                        vip: *vip,
                        instances: BTreeMap::new(),
                    }
                });
            }
        }
        for w in writes {
            let event = match w {
                Write::PutVip { .. } => None,
                Write::PutInstance(instance) => {
                    let Some(svc) = st.services.get_mut(&instance.service) else {
                        tracing::warn!(service = %instance.service, id = %instance.id, revision, "instance has no VIP; ignored");
                        continue;
                    };
                    let entry = Entry {
                        instance: instance.clone(),
                        expires_at: lease_end(now, instance.ttl_secs),
                        written: revision,
                    };
                    svc.instances.insert(instance.id.clone(), entry);
                    tracing::info!(service = %instance.service, id = %instance.id, addr = %instance.address, port = instance.port, health = instance.health.as_str(), revision, "registered");
                    Some(WatchEvent::Upsert {
                        revision,
                        vip: svc.vip,
                        instance: instance.clone(),
                    })
                }
                Write::DeleteInstance {
                    service,
                    id,
                    reason,
                    ..
                } => {
                    let gone = st
                        .services
                        .get_mut(service)
                        .and_then(|s| s.instances.remove(id));
                    if gone.is_none() {
                        continue;
                    }
                    match reason {
                        RemoveReason::LeaseExpired => {
                            tracing::info!(%service, %id, revision, "lease expired; evicted")
                        }
                        RemoveReason::Deregistered => {
                            tracing::info!(%service, %id, revision, "deregistered")
                        }
                    }
                    Some(WatchEvent::Remove {
                        revision,
                        service: service.clone(),
                        id: id.clone(),
                        reason: *reason,
                    })
                }
                Write::PutPolicy(p) => {
                    tracing::info!(key = %p.service, revision, "policy applied");
                    st.policies.insert(p.service.clone(), p.clone());
                    Some(WatchEvent::Policy {
                        revision,
                        policy: p.clone(),
                    })
                }
                Write::DeletePolicy { service } => st.policies.remove(service).map(|_| {
                    tracing::info!(%service, revision, "policy deleted");
                    WatchEvent::PolicyRemoved {
                        revision,
                        service: service.clone(),
                    }
                }),
                Write::PutAuthorization(p) => {
                    tracing::info!(key = %p.service, revision, "authorization policy applied");
                    st.authorizations.insert(p.service.clone(), p.clone());
                    Some(WatchEvent::Authorization {
                        revision,
                        policy: p.clone(),
                    })
                }
                Write::DeleteAuthorization { service } => {
                    st.authorizations.remove(service).map(|_| {
                        tracing::info!(%service, revision, "authorization policy deleted");
                        WatchEvent::AuthorizationRemoved {
                            revision,
                            service: service.clone(),
                        }
                    })
                }
                Write::PutRoute(r) => {
                    tracing::info!(key = %r.name, revision, "route applied");
                    st.routes.insert(r.name.clone(), r.clone());
                    Some(WatchEvent::Route {
                        revision,
                        route: r.clone(),
                    })
                }
                Write::DeleteRoute { name } => st.routes.remove(name).map(|_| {
                    tracing::info!(%name, revision, "route deleted");
                    WatchEvent::RouteRemoved {
                        revision,
                        name: name.clone(),
                    }
                }),
                Write::PutConfig(stored) => {
                    let m = &stored.meta;
                    tracing::info!(application = %m.application, profile = %m.profile, version = m.version, revision, restores = m.restores, "config version made");
                    let key = (m.application.clone(), m.profile.clone());
                    let event = WatchEvent::Config {
                        revision,
                        config: configs::head(stored),
                    };
                    st.configs.insert(key, stored.clone());
                    Some(event)
                }
                Write::PutBundle(bundle) => {
                    st.bundle = Some(bundle.clone());
                    Some(WatchEvent::TrustBundle {
                        revision,
                        bundle: bundle.clone(),
                    })
                }
                Write::SelfPreservation(on) => {
                    st.self_preservation = *on;
                    None
                }
            };
            if let Some(event) = event {
                self.publish(st, &event);
            }
        }
    }
}

fn by_key<T>(items: Vec<T>, key: impl Fn(&T) -> String) -> BTreeMap<String, T> {
    items.into_iter().map(|t| (key(&t), t)).collect()
}
