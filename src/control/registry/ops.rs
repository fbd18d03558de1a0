//! Registry mutations: register, heartbeat, deregister, and the lease sweep
//! with self-preservation.
//!
//! Each mutation follows plan → commit → apply (see the module above):
//! these methods may block on a disk flush, so async callers run them in
//! `spawn_blocking`.

use super::{lease_end, Entry, Registry, RegistryError, Service};
use crate::control::store::Write;
use crate::model::{Health, Instance, RegisterRequest, Registered, RemoveReason, WatchEvent};
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
    pub fn register(
        &self,
        service: &str,
        req: RegisterRequest,
    ) -> Result<Registered, RegistryError> {
        let now = Instant::now();
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
        let expires_at = lease_end(now, instance.ttl_secs);
        let _w = self.writer();

        // Plan.
        let (vip, new_vip, revision) = {
            let mut st = self.state();
            let st = &mut *st;
            match st.services.get_mut(service) {
                Some(svc) => {
                    if let Some(e) = svc.instances.get_mut(&instance.id) {
                        if e.instance == instance {
                            e.expires_at = expires_at;
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

        // Commit, with no state lock held.
        let mut writes = vec![Write::PutInstance(&instance)];
        if new_vip {
            writes.push(Write::PutVip { service, vip });
        }
        self.commit(revision, &writes)?;

        // Apply and publish.
        let mut st = self.state();
        let st = &mut *st;
        if new_vip {
            st.vips.take(vip);
            tracing::info!(%service, %vip, "service created");
        }
        let svc = st.services.entry(service.to_string()).or_insert(Service {
            vip,
            instances: Default::default(),
        });
        let entry = Entry {
            instance: instance.clone(),
            expires_at,
        };
        svc.instances.insert(instance.id.clone(), entry);
        tracing::info!(%service, id = %instance.id, addr = %instance.address, port = instance.port, revision, "registered");
        self.publish(
            st,
            &WatchEvent::Upsert {
                revision,
                vip,
                instance: instance.clone(),
            },
        );
        Ok(Registered {
            revision,
            vip,
            instance,
        })
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
            if e.instance.health == health {
                return Ok(st.revision);
            }
        }

        let _w = self.writer();
        let (updated, vip, revision) = {
            let st = self.state();
            let svc = st.services.get(service).ok_or_else(unknown)?;
            let e = svc.instances.get(id).ok_or_else(unknown)?;
            if e.instance.health == health {
                return Ok(st.revision);
            }
            let mut updated = e.instance.clone();
            updated.health = health;
            (updated, svc.vip, st.revision + 1)
        };
        self.commit(revision, &[Write::PutInstance(&updated)])?;
        let mut st = self.state();
        let st = &mut *st;
        // Still there: only writers remove instances, and we are the writer.
        if let Some(e) = st
            .services
            .get_mut(service)
            .and_then(|s| s.instances.get_mut(id))
        {
            e.instance = updated.clone();
        }
        tracing::info!(%service, %id, health = health.as_str(), revision, "health changed");
        self.publish(
            st,
            &WatchEvent::Upsert {
                revision,
                vip,
                instance: updated,
            },
        );
        Ok(revision)
    }

    /// Removes an instance. Returns the new revision.
    pub fn deregister(&self, service: &str, id: &str) -> Result<u64, RegistryError> {
        let _w = self.writer();
        let revision = {
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
        self.commit(revision, &[Write::DeleteInstance { service, id }])?;
        let mut st = self.state();
        if let Some(svc) = st.services.get_mut(service) {
            svc.instances.remove(id);
        }
        tracing::info!(%service, %id, revision, "deregistered");
        self.publish(
            &mut st,
            &WatchEvent::Remove {
                revision,
                service: service.to_string(),
                id: id.to_string(),
                reason: RemoveReason::Deregistered,
            },
        );
        Ok(revision)
    }

    /// Evicts the leases expired at `now`, unless so many expired at once
    /// that the fault is more likely ours (a partition) than theirs: then
    /// nothing is evicted and self-preservation is on until a sweep finds
    /// the expired share back within the threshold.
    ///
    /// A heartbeat that lands while the eviction is being committed still
    /// answers 200 but the instance goes anyway; its next heartbeat gets a
    /// 404 and the sidecar re-registers, as after any eviction.
    pub fn sweep(&self, now: Instant) -> Result<SweepOutcome, RegistryError> {
        let _w = self.writer();
        let mut out = SweepOutcome::default();
        let mut expired: Vec<(String, String)> = Vec::new();
        let first_revision = {
            let mut st = self.state();
            for (name, svc) in &st.services {
                for (id, e) in &svc.instances {
                    let Some(end) = e.expires_at else { continue };
                    out.leased += 1;
                    if end <= now {
                        expired.push((name.clone(), id.clone()));
                    }
                }
            }
            out.expired = expired.len();
            let threshold = usize::from(self.settings.self_preservation_threshold);
            let engage = out.expired >= self.settings.self_preservation_min
                && out.expired * 100 > threshold * out.leased;
            if engage != st.self_preservation {
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
            if engage || expired.is_empty() {
                return Ok(out);
            }
            st.revision + 1
        };

        let last_revision = first_revision + expired.len() as u64 - 1;
        let writes: Vec<Write<'_>> = expired
            .iter()
            .map(|(service, id)| Write::DeleteInstance { service, id })
            .collect();
        self.commit(last_revision, &writes)?;

        let mut st = self.state();
        for (revision, (service, id)) in (first_revision..).zip(&expired) {
            if let Some(svc) = st.services.get_mut(service) {
                svc.instances.remove(id);
            }
            tracing::info!(%service, %id, revision, "lease expired; evicted");
            self.publish(
                &mut st,
                &WatchEvent::Remove {
                    revision,
                    service: service.clone(),
                    id: id.clone(),
                    reason: RemoveReason::LeaseExpired,
                },
            );
        }
        out.evicted = expired;
        Ok(out)
    }
}
