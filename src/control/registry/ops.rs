//! Registry mutations: register, heartbeat, deregister, and the lease sweep
//! with self-preservation.
//!
//! Each mutation follows plan → commit → apply (see the module above):
//! these methods may block on a disk flush or on etcd, so async callers run
//! them in `spawn_blocking`.

use super::{lease_end, Registry, RegistryError, MAX_PLANS};
use crate::control::store::Write;
use crate::model::{Health, Instance, RegisterRequest, Registered, RemoveReason};
use tokio::time::Instant;

/// What one sweep saw and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepOutcome {
    /// Leased instances at the time of the sweep.
    pub leased: usize,
    /// Of those, how many had expired.
    pub expired: usize,
    /// `(service, id)` of the instances evicted.
    pub evicted: Vec<(String, String)>,
    /// Self-preservation state after this sweep.
    pub self_preservation: bool,
}

// === impl Registry ===

impl Registry {
    /// Registers (or replaces) an instance, creating the service and its VIP
    /// on first use. An identical re-registration only renews the lease.
    ///
    /// On etcd a new VIP is claimed by compare-and-swap; losing it to
    /// another replica (the same service, or the same address for another
    /// one) means planning again once the winner's change is in the view.
    pub fn register(
        &self,
        service: &str,
        req: RegisterRequest,
    ) -> Result<Registered, RegistryError> {
        let instance = Instance {
            id: req.effective_id(),
            service: service.to_string(),
            address: req.address,
            port: req.port,
            metadata: req.metadata,
            health: req.health,
            ttl_secs: req.ttl,
            inbound_port: req.inbound_port,
            identity: req.identity,
        };
        let _w = self.writer();
        for _ in 0..MAX_PLANS {
            // Plan.
            let (vip, new_vip, next) = {
                let now = Instant::now();
                let mut st = self.state();
                let st = &mut *st;
                let shared = self.store.shared().is_some();
                match st.services.get_mut(service) {
                    Some(svc) => {
                        if let Some(e) = svc.instances.get_mut(&instance.id) {
                            if e.instance == instance {
                                e.expires_at = lease_end(now, instance.ttl_secs);
                                if shared {
                                    st.beats.insert(format!("{service}/{}", instance.id));
                                }
                                return Ok(Registered {
                                    revision: st.revision,
                                    vip: svc.vip,
                                    instance,
                                });
                            }
                        }
                        (svc.vip, false, st.revision + 1)
                    }
                    None => (st.vips.next_free()?, true, st.revision + 1),
                }
            };
            let mut writes = Vec::with_capacity(2);
            if new_vip {
                writes.push(Write::PutVip {
                    service: service.to_string(),
                    vip,
                });
            }
            writes.push(Write::PutInstance(instance.clone()));
            match self.commit(next, writes)? {
                Some(revision) => {
                    return Ok(Registered {
                        revision,
                        vip,
                        instance,
                    })
                }
                None if new_vip => {
                    // The address may be taken by a service the view has
                    // not heard of yet: never offer it again here.
                    self.state().vips.take(vip);
                }
                None => {}
            }
        }
        Err(RegistryError::Contended(MAX_PLANS))
    }

    /// Renews the lease and records the reported health. Returns the
    /// current revision. A lease renewal alone is not a change.
    pub fn heartbeat(&self, service: &str, id: &str, health: Health) -> Result<u64, RegistryError> {
        let unknown = || RegistryError::UnknownInstance {
            service: service.to_string(),
            id: id.to_string(),
        };
        let now = Instant::now();
        // Fast path: the common heartbeat changes nothing durable.
        {
            let mut st = self.state();
            let st = &mut *st;
            let e = st
                .services
                .get_mut(service)
                .and_then(|s| s.instances.get_mut(id))
                .ok_or_else(unknown)?;
            e.expires_at = lease_end(now, e.instance.ttl_secs);
            let same = e.instance.health == health;
            if self.store.shared().is_some() {
                st.beats.insert(format!("{service}/{id}"));
            }
            if same {
                return Ok(st.revision);
            }
        }

        let _w = self.writer();
        let (updated, next) = {
            let st = self.state();
            let svc = st.services.get(service).ok_or_else(unknown)?;
            let e = svc.instances.get(id).ok_or_else(unknown)?;
            if e.instance.health == health {
                return Ok(st.revision);
            }
            let mut updated = e.instance.clone();
            updated.health = health;
            (updated, st.revision + 1)
        };
        tracing::info!(%service, %id, health = health.as_str(), "health changed");
        self.commit_plain(next, vec![Write::PutInstance(updated)])
    }

    /// Removes an instance. Returns the new revision.
    pub fn deregister(&self, service: &str, id: &str) -> Result<u64, RegistryError> {
        let _w = self.writer();
        let next = {
            let st = self.state();
            let known = st
                .services
                .get(service)
                .is_some_and(|s| s.instances.contains_key(id));
            if !known {
                return Err(RegistryError::UnknownInstance {
                    service: service.to_string(),
                    id: id.to_string(),
                });
            }
            st.revision + 1
        };
        let write = Write::DeleteInstance {
            service: service.to_string(),
            id: id.to_string(),
            reason: RemoveReason::Deregistered,
            if_written_at: None,
        };
        self.commit_plain(next, vec![write])
    }

    /// Evicts the leases expired at `now`, unless so many expired at once
    /// that the fault is more likely ours (a partition) than theirs: then
    /// nothing is evicted and self-preservation is on until a sweep finds
    /// the expired share back within the threshold. On etcd only the
    /// leader sweeps ([`Registry::evicts`]); the others return at once.
    ///
    /// A heartbeat that lands while the eviction is being committed still
    /// answers 200 but the instance goes anyway; its next heartbeat gets a
    /// 404 and the sidecar re-registers, as after any eviction. (On etcd a
    /// re-registration committed first wins: the eviction is guarded by
    /// the revision the instance was written at.)
    pub fn sweep(&self, now: Instant) -> Result<SweepOutcome, RegistryError> {
        let mut out = SweepOutcome::default();
        if !self.evicts() {
            return Ok(out);
        }
        let _w = self.writer();
        let mut expired: Vec<(String, String, u64)> = Vec::new();
        let changed = {
            let mut st = self.state();
            for (name, svc) in &st.services {
                for (id, e) in &svc.instances {
                    let Some(end) = e.expires_at else { continue };
                    out.leased += 1;
                    if end <= now {
                        expired.push((name.clone(), id.clone(), e.written));
                    }
                }
            }
            out.expired = expired.len();
            let threshold = usize::from(self.settings.self_preservation_threshold);
            let engage = out.expired >= self.settings.self_preservation_min
                && out.expired * 100 > threshold * out.leased;
            let changed = engage != st.self_preservation;
            if changed {
                if engage {
                    tracing::warn!(
                        expired = out.expired,
                        leased = out.leased,
                        threshold_percent = threshold,
                        "self-preservation on: too many leases expired at once; evicting nothing"
                    );
                } else {
                    tracing::warn!(
                        expired = out.expired,
                        leased = out.leased,
                        "self-preservation off"
                    );
                }
                st.self_preservation = engage;
            }
            out.self_preservation = engage;
            changed
        };
        if changed && self.store.shared().is_some() {
            // So every replica's status (and mesh-ctl check) says it.
            let next = self.revision() + 1;
            let on = out.self_preservation;
            if let Err(e) = self.commit_plain(next, vec![Write::SelfPreservation(on)]) {
                tracing::warn!(error = %e, "cannot record self-preservation in the store");
            }
        }
        if out.self_preservation {
            return Ok(out);
        }
        for (service, id, written) in expired {
            let next = self.revision() + 1;
            let write = Write::DeleteInstance {
                service: service.clone(),
                id: id.clone(),
                reason: RemoveReason::LeaseExpired,
                if_written_at: Some(written),
            };
            // `None`: rewritten since we looked (re-registered): it stays.
            if self.commit(next, vec![write])?.is_some() {
                out.evicted.push((service, id));
            }
        }
        Ok(out)
    }
}
