//! Prometheus metrics of the control plane (`GET /metrics`).
//!
//! Registry-wide numbers (size, revision, self-preservation) are read from
//! the registry at scrape time, so they can never drift; evictions and
//! watchers are counted where they happen.

use crate::control::registry::Registry;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry as PromRegistry;

pub struct Metrics {
    /// Owns the metric families (`process_*` at the root, the rest under
    /// `mesh_control_`); encoded on every scrape.
    prom: PromRegistry,
    services: Gauge,
    instances: Gauge,
    policies: Gauge,
    revision: Gauge,
    self_preservation: Gauge,
    /// Instances removed because their lease expired.
    pub evictions: Counter,
    /// Open watch streams; a clone lives in each stream's drop guard.
    pub watchers: Gauge,
    /// Workload certificates signed.
    pub certificates_issued: Counter,
    /// Requests refused 401 or 403, by reason.
    pub refusals: Family<RefusalLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct RefusalLabel {
    pub reason: &'static str,
}

// === impl Metrics ===

impl Metrics {
    pub fn new() -> Self {
        let mut root = PromRegistry::default();
        crate::telemetry::register_process_metrics(&mut root);
        let prom = root.sub_registry_with_prefix("mesh_control");
        let m = Metrics {
            services: Gauge::default(),
            instances: Gauge::default(),
            policies: Gauge::default(),
            revision: Gauge::default(),
            self_preservation: Gauge::default(),
            evictions: Counter::default(),
            watchers: Gauge::default(),
            certificates_issued: Counter::default(),
            refusals: Family::default(),
            prom: PromRegistry::default(),
        };
        prom.register("services", "Registered services", m.services.clone());
        prom.register("instances", "Registered instances", m.instances.clone());
        prom.register("policies", "Applied service policies", m.policies.clone());
        prom.register("revision", "Current global revision", m.revision.clone());
        prom.register(
            "self_preservation",
            "1 while lease evictions are suspended",
            m.self_preservation.clone(),
        );
        prom.register(
            "evictions",
            "Instances evicted because their lease expired",
            m.evictions.clone(),
        );
        prom.register("watchers", "Open watch streams", m.watchers.clone());
        prom.register(
            "certificates_issued",
            "Workload certificates signed by the CA",
            m.certificates_issued.clone(),
        );
        prom.register(
            "auth_refusals",
            "Requests refused: unauthenticated (401: no or bad credential) or forbidden (403: not allowed)",
            crate::telemetry::Declared(m.refusals.clone()),
        );
        Metrics { prom: root, ..m }
    }

    /// The exposition for a scraper that sent `accept`, with the registry
    /// gauges refreshed first: (content type, text).
    pub fn render(&self, registry: &Registry, accept: Option<&str>) -> (&'static str, String) {
        let status = registry.status();
        self.services.set(gauge_value(status.services as u64));
        self.instances.set(gauge_value(status.instances as u64));
        self.policies.set(gauge_value(status.policies as u64));
        self.revision.set(gauge_value(status.revision));
        self.self_preservation
            .set(i64::from(status.self_preservation));
        crate::telemetry::exposition(&self.prom, accept)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
