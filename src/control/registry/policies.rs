//! Policy mutations and reads: apply (create or replace) and delete a
//! service's `ServicePolicy`.
//!
//! Same discipline as the instance mutations (plan → commit → apply and
//! publish, under the writer lock): the policy is durable before any
//! watcher sees its revision. Callers pass policies already validated by
//! `ServicePolicy::from_value`.

use super::{Registry, RegistryError};
use crate::control::store::Write;
use crate::model::{ServicePolicy, WatchEvent};

// === impl Registry ===

impl Registry {
    /// Stores `policy` for its service and publishes it; returns the
    /// revision it took effect at. Re-applying the identical policy changes
    /// nothing and returns the current revision, so `apply` is idempotent.
    pub fn apply_policy(&self, policy: ServicePolicy) -> Result<u64, RegistryError> {
        let _w = self.writer();
        let revision = {
            let st = self.state();
            if st.policies.get(&policy.service) == Some(&policy) {
                return Ok(st.revision);
            }
            st.revision + 1
        };
        self.commit(revision, &[Write::PutPolicy(&policy)])?;
        let mut st = self.state();
        tracing::info!(service = %policy.service, revision, "policy applied");
        st.policies.insert(policy.service.clone(), policy.clone());
        self.publish(&mut st, &WatchEvent::Policy { revision, policy });
        Ok(revision)
    }

    /// Deletes a service's policy (it runs the defaults again); returns the
    /// revision, or `UnknownPolicy` when none was applied.
    pub fn delete_policy(&self, service: &str) -> Result<u64, RegistryError> {
        let _w = self.writer();
        let revision = {
            let st = self.state();
            if !st.policies.contains_key(service) {
                return Err(RegistryError::UnknownPolicy {
                    service: service.to_string(),
                });
            }
            st.revision + 1
        };
        self.commit(revision, &[Write::DeletePolicy { service }])?;
        let mut st = self.state();
        st.policies.remove(service);
        tracing::info!(%service, revision, "policy deleted");
        self.publish(
            &mut st,
            &WatchEvent::PolicyRemoved {
                revision,
                service: service.to_string(),
            },
        );
        Ok(revision)
    }

    pub fn policy(&self, service: &str) -> Option<ServicePolicy> {
        self.state().policies.get(service).cloned()
    }

    /// Every applied policy, sorted by service.
    pub fn policies(&self) -> Vec<ServicePolicy> {
        self.state().policies.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::registry::RegistrySettings;
    use crate::control::store::Store;
    use std::path::Path;

    fn open(dir: &Path) -> Registry {
        let store = Store::open(dir).unwrap();
        let cidr = "127.100.0.0/16".parse().unwrap();
        Registry::open(store, cidr, RegistrySettings::default()).unwrap()
    }

    fn event(line: &[u8]) -> WatchEvent {
        serde_json::from_slice(line).unwrap()
    }

    #[tokio::test]
    async fn apply_replace_delete_publish_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let reg = open(dir.path());
        let mut rx = reg.subscribe(0).rx;
        let mut orders = ServicePolicy::defaults("orders");
        orders.bulkhead.max_concurrent = 4;

        assert_eq!(reg.apply_policy(orders.clone()).unwrap(), 1);
        assert_eq!(
            reg.apply_policy(orders.clone()).unwrap(),
            1,
            "identical: no change"
        );
        match event(&rx.try_recv().unwrap().line) {
            WatchEvent::Policy { revision, policy } => {
                assert_eq!((revision, policy), (1, orders.clone()))
            }
            other => panic!("expected a Policy event, got {other:?}"),
        }
        assert!(rx.try_recv().is_err(), "the no-op apply published nothing");

        orders.bulkhead.max_concurrent = 2;
        assert_eq!(reg.apply_policy(orders.clone()).unwrap(), 2);
        assert_eq!(reg.apply_policy(ServicePolicy::defaults("api")).unwrap(), 3);
        assert_eq!(reg.policy("orders"), Some(orders.clone()));
        let snap = reg.snapshot();
        let names: Vec<&str> = snap.policies.iter().map(|p| p.service.as_str()).collect();
        assert_eq!((snap.revision, names), (3, vec!["api", "orders"]));

        assert_eq!(reg.delete_policy("api").unwrap(), 4);
        assert!(matches!(
            reg.delete_policy("api"),
            Err(RegistryError::UnknownPolicy { .. })
        ));
        let lines: Vec<WatchEvent> = reg.subscribe(3).backlog.iter().map(|l| event(l)).collect();
        assert_eq!(
            lines,
            [WatchEvent::PolicyRemoved {
                revision: 4,
                service: "api".into()
            }]
        );
        drop(reg);

        let reg = open(dir.path());
        assert_eq!(reg.revision(), 4);
        assert_eq!(reg.policies(), vec![orders]);
        assert_eq!(reg.status().policies, 1);
        assert_eq!(reg.apply_policy(ServicePolicy::defaults("api")).unwrap(), 5);
    }
}
