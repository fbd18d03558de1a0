//! Mutations and reads of the documents kept whole and pushed live: a
//! service's `ServicePolicy` and `AuthorizationPolicy`, and the gateway's
//! `Route`s (kept by name).
//!
//! Same discipline as the instance mutations (plan → commit → apply and
//! publish, under the writer lock): the policy is durable before any
//! watcher sees its revision. Callers pass policies already validated by
//! `ServicePolicy::from_value`.

use super::{Registry, RegistryError, State};
use crate::control::store::Write;
use crate::model::identity::TrustBundle;
use crate::model::{AuthorizationPolicy, Route, ServicePolicy};
use std::collections::BTreeMap;

/// A document kept whole under one key and pushed live: the one mechanism
/// behind `ServicePolicy`, `AuthorizationPolicy` (keyed by service) and
/// `Route` (keyed by name).
trait Document: Clone + PartialEq {
    /// For messages: "policy", "authorization policy", "route".
    const WHAT: &'static str;
    fn key(&self) -> &str;
    fn held(st: &mut State) -> &mut BTreeMap<String, Self>;
    fn put(self) -> Write;
    fn delete(key: &str) -> Write;
    fn unknown(key: &str) -> RegistryError {
        RegistryError::UnknownPolicy {
            what: Self::WHAT,
            service: key.to_string(),
        }
    }
}

impl Document for ServicePolicy {
    const WHAT: &'static str = "policy";
    fn key(&self) -> &str {
        &self.service
    }
    fn held(st: &mut State) -> &mut BTreeMap<String, Self> {
        &mut st.policies
    }
    fn put(self) -> Write {
        Write::PutPolicy(self)
    }
    fn delete(service: &str) -> Write {
        Write::DeletePolicy {
            service: service.to_string(),
        }
    }
}

impl Document for AuthorizationPolicy {
    const WHAT: &'static str = "authorization policy";
    fn key(&self) -> &str {
        &self.service
    }
    fn held(st: &mut State) -> &mut BTreeMap<String, Self> {
        &mut st.authorizations
    }
    fn put(self) -> Write {
        Write::PutAuthorization(self)
    }
    fn delete(service: &str) -> Write {
        Write::DeleteAuthorization {
            service: service.to_string(),
        }
    }
}

impl Document for Route {
    const WHAT: &'static str = "route";
    fn key(&self) -> &str {
        &self.name
    }
    fn held(st: &mut State) -> &mut BTreeMap<String, Self> {
        &mut st.routes
    }
    fn put(self) -> Write {
        Write::PutRoute(self)
    }
    fn delete(name: &str) -> Write {
        Write::DeleteRoute {
            name: name.to_string(),
        }
    }
    fn unknown(name: &str) -> RegistryError {
        RegistryError::UnknownRoute(name.to_string())
    }
}

// === impl Registry ===

impl Registry {
    /// Stores `policy` for its service and publishes it; returns the
    /// revision it took effect at. Re-applying the identical policy changes
    /// nothing and returns the current revision, so `apply` is idempotent.
    pub fn apply_policy(&self, policy: ServicePolicy) -> Result<u64, RegistryError> {
        self.apply_doc(policy)
    }

    /// Deletes a service's policy (it runs the defaults again); returns the
    /// revision, or `UnknownPolicy` when none was applied.
    pub fn delete_policy(&self, service: &str) -> Result<u64, RegistryError> {
        self.delete_doc::<ServicePolicy>(service)
    }

    pub fn policy(&self, service: &str) -> Option<ServicePolicy> {
        self.state().policies.get(service).cloned()
    }

    /// Every applied policy, sorted by service.
    pub fn policies(&self) -> Vec<ServicePolicy> {
        self.state().policies.values().cloned().collect()
    }

    pub fn apply_authorization(&self, policy: AuthorizationPolicy) -> Result<u64, RegistryError> {
        self.apply_doc(policy)
    }

    pub fn delete_authorization(&self, service: &str) -> Result<u64, RegistryError> {
        self.delete_doc::<AuthorizationPolicy>(service)
    }

    pub fn authorization(&self, service: &str) -> Option<AuthorizationPolicy> {
        self.state().authorizations.get(service).cloned()
    }

    pub fn authorizations(&self) -> Vec<AuthorizationPolicy> {
        self.state().authorizations.values().cloned().collect()
    }

    /// Stores a gateway route (created or replaced) and publishes it.
    pub fn apply_route(&self, route: Route) -> Result<u64, RegistryError> {
        self.apply_doc(route)
    }

    pub fn delete_route(&self, name: &str) -> Result<u64, RegistryError> {
        self.delete_doc::<Route>(name)
    }

    pub fn route(&self, name: &str) -> Option<Route> {
        self.state().routes.get(name).cloned()
    }

    /// Every route, sorted by name.
    pub fn routes(&self) -> Vec<Route> {
        self.state().routes.values().cloned().collect()
    }

    /// Publishes a new trust bundle (the CA's files hold it durably; the
    /// revision makes watchers see it in order with everything else).
    pub fn publish_bundle(&self, bundle: TrustBundle) -> Result<u64, RegistryError> {
        let _w = self.writer();
        let next = self.state().revision + 1;
        self.commit_plain(next, vec![Write::PutBundle(bundle)])
    }

    /// The bundle at startup, before anyone watches: no revision of its own.
    pub fn set_bundle(&self, bundle: TrustBundle) {
        self.state().bundle = Some(bundle);
    }

    fn apply_doc<D: Document>(&self, doc: D) -> Result<u64, RegistryError> {
        let _w = self.writer();
        let next = {
            let mut st = self.state();
            if D::held(&mut st).get(doc.key()) == Some(&doc) {
                return Ok(st.revision);
            }
            st.revision + 1
        };
        self.commit_plain(next, vec![doc.put()])
    }

    fn delete_doc<D: Document>(&self, service: &str) -> Result<u64, RegistryError> {
        let _w = self.writer();
        let next = {
            let mut st = self.state();
            if !D::held(&mut st).contains_key(service) {
                return Err(D::unknown(service));
            }
            st.revision + 1
        };
        self.commit_plain(next, vec![D::delete(service)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::registry::RegistrySettings;
    use crate::control::store::Store;
    use crate::model::WatchEvent;
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
