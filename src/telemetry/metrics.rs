//! The proxy's metrics, resolved per service ahead of time so that the
//! request path only touches atomics (no label hashing, no allocation).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    service: String,
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabel {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    service: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    service: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabels {
    service: String,
    to: &'static str,
}

/// `/state`'s request counters for one service.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct RequestCounts {
    pub total: u64,
    /// Answered 5xx, by the upstream or by the mesh.
    pub failed: u64,
    /// Rejected by the breaker or the bulkhead without reaching an upstream.
    pub fast_failed: u64,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~26 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

/// Every metric `mesh-proxy` exports on `/metrics`.
pub struct ProxyMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<ServiceLabel, Histogram, fn() -> Histogram>,
    endpoints: Family<EndpointLabels, Gauge>,
    errors: Family<ErrorLabels, Counter>,
    breaker_state: Family<ServiceLabel, Gauge>,
    breaker_transitions: Family<TransitionLabels, Counter>,
    bulkhead_inflight: Family<ServiceLabel, Gauge>,
    bulkhead_queued: Family<ServiceLabel, Gauge>,
    retries: Family<ServiceLabel, Counter>,
    budget_exhausted: Family<ServiceLabel, Counter>,
    ejections: Family<ServiceLabel, Counter>,
    fast_failed: Family<ServiceLabel, Counter>,
    /// Connections relayed untouched (redirected, not for a mesh service).
    pub tcp_relays: Counter,
    /// Registry revision the proxy routes on.
    pub revision: Gauge,
    /// 1 while the watch stream to the control plane is up.
    pub control_connected: Gauge,
    pub dns_queries: Counter,
    /// Connections, protocols, and the inbound side.
    pub traffic: super::TrafficMetrics,
}

/// Handles for one destination service; cloning shares the counters.
#[derive(Clone, Debug)]
pub struct ServiceMetrics {
    /// Responses by status class: 1xx..5xx at index 0..4.
    by_class: [Counter; 5],
    latency: Histogram,
    retries: Counter,
    budget_exhausted: Counter,
    ejections: Counter,
    fast_failed: Counter,
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ProxyMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("mesh");
        let traffic = super::TrafficMetrics::register(&mut registry);
        let requests = Family::<RequestLabels, Counter>::default();
        let latency: Family<ServiceLabel, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        let endpoints = Family::<EndpointLabels, Gauge>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let tcp_relays = Counter::default();
        let revision = Gauge::default();
        let control_connected = Gauge::default();
        let dns_queries = Counter::default();
        let breaker_state = Family::<ServiceLabel, Gauge>::default();
        let breaker_transitions = Family::<TransitionLabels, Counter>::default();
        let bulkhead_inflight = Family::<ServiceLabel, Gauge>::default();
        let bulkhead_queued = Family::<ServiceLabel, Gauge>::default();
        let retries = Family::<ServiceLabel, Counter>::default();
        let budget_exhausted = Family::<ServiceLabel, Counter>::default();
        let ejections = Family::<ServiceLabel, Counter>::default();
        let fast_failed = Family::<ServiceLabel, Counter>::default();
        registry.register(
            "breaker_state",
            "Circuit breaker state by service: 0 closed, 1 open, 2 half-open",
            breaker_state.clone(),
        );
        registry.register(
            "breaker_transitions",
            "Circuit breaker state changes by service and new state",
            breaker_transitions.clone(),
        );
        registry.register(
            "bulkhead_inflight",
            "Calls holding a bulkhead slot, by service",
            bulkhead_inflight.clone(),
        );
        registry.register(
            "bulkhead_queued",
            "Calls waiting for a bulkhead slot, by service",
            bulkhead_queued.clone(),
        );
        registry.register("retries", "Retries sent, by service", retries.clone());
        registry.register(
            "retry_budget_exhausted",
            "Retries refused because the retry budget was spent, by service",
            budget_exhausted.clone(),
        );
        registry.register(
            "outlier_ejections",
            "Endpoints ejected for consecutive failures, by service",
            ejections.clone(),
        );
        registry.register(
            "fast_failures",
            "Calls rejected by the breaker or bulkhead without reaching an upstream",
            fast_failed.clone(),
        );
        registry.register(
            "requests",
            "Outbound HTTP responses by destination service and status class",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Outbound HTTP latency to response headers, by destination service",
            latency.clone(),
        );
        registry.register(
            "endpoints",
            "Endpoints of each destination service by state",
            endpoints.clone(),
        );
        registry.register(
            "rejections",
            "Failures the mesh answered itself, by service and x-mesh-error reason",
            errors.clone(),
        );
        registry.register(
            "tcp_relays",
            "Redirected connections relayed as opaque TCP",
            tcp_relays.clone(),
        );
        registry.register(
            "registry_revision",
            "Registry revision this proxy routes on",
            revision.clone(),
        );
        registry.register(
            "control_connected",
            "1 while the watch stream to mesh-control is up",
            control_connected.clone(),
        );
        registry.register(
            "dns_queries",
            "DNS queries answered or forwarded",
            dns_queries.clone(),
        );
        ProxyMetrics {
            registry,
            requests,
            latency,
            endpoints,
            errors,
            breaker_state,
            breaker_transitions,
            bulkhead_inflight,
            bulkhead_queued,
            retries,
            budget_exhausted,
            ejections,
            fast_failed,
            tcp_relays,
            revision,
            control_connected,
            dns_queries,
            traffic,
        }
    }

    /// Resolves the per-service handles once (at routing-table build time).
    pub fn service(&self, service: &str) -> ServiceMetrics {
        const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
        let by_class = CLASSES.map(|class| {
            self.requests.get_or_create_owned(&RequestLabels {
                service: service.to_string(),
                class,
            })
        });
        let label = ServiceLabel {
            service: service.to_string(),
        };
        ServiceMetrics {
            by_class,
            latency: self.latency.get_or_create_owned(&label),
            retries: self.retries.get_or_create_owned(&label),
            budget_exhausted: self.budget_exhausted.get_or_create_owned(&label),
            ejections: self.ejections.get_or_create_owned(&label),
            fast_failed: self.fast_failed.get_or_create_owned(&label),
        }
    }

    /// A breaker hook for `service`: logs each transition and counts it.
    pub fn breaker_hook(&self, service: &str) -> crate::resilience::TransitionHook {
        let family = self.breaker_transitions.clone();
        let service = service.to_string();
        std::sync::Arc::new(move |t: crate::resilience::Transition| {
            tracing::warn!(service = %service, from = t.from.as_str(), to = t.to.as_str(), "circuit breaker");
            family
                .get_or_create(&TransitionLabels {
                    service: service.clone(),
                    to: t.to.as_str(),
                })
                .inc();
        })
    }

    /// Sets the breaker and bulkhead gauges of one service (at scrape time:
    /// the request path never touches gauges).
    pub fn set_resilience(&self, service: &str, view: &crate::resilience::ResilienceView) {
        let label = ServiceLabel {
            service: service.to_string(),
        };
        self.breaker_state
            .get_or_create(&label)
            .set(view.breaker.state.as_gauge());
        self.bulkhead_inflight
            .get_or_create(&label)
            .set(i64::from(view.bulkhead.in_flight));
        self.bulkhead_queued
            .get_or_create(&label)
            .set(i64::from(view.bulkhead.queued));
    }

    /// Sets the endpoint gauges of one service.
    pub fn set_endpoints(&self, service: &str, ready: usize, unhealthy: usize) {
        for (state, n) in [("ready", ready), ("unhealthy", unhealthy)] {
            let labels = EndpointLabels {
                service: service.to_string(),
                state,
            };
            self.endpoints
                .get_or_create(&labels)
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Counts a response the mesh made itself.
    pub fn mesh_error(&self, service: &str, reason: &'static str) {
        self.errors
            .get_or_create(&ErrorLabels {
                service: service.to_string(),
                reason,
            })
            .inc();
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl ServiceMetrics {
    /// Records one response: its status and the time to its headers.
    pub fn record(&self, status: u16, seconds: f64) {
        let idx = usize::from((status / 100).clamp(1, 5) - 1);
        self.by_class[idx].inc();
        self.latency.observe(seconds);
    }

    pub fn retried(&self) {
        self.retries.inc();
    }

    pub fn retry_budget_exhausted(&self) {
        self.budget_exhausted.inc();
    }

    pub fn ejected(&self) {
        self.ejections.inc();
    }

    pub fn fast_failed(&self) {
        self.fast_failed.inc();
    }

    pub fn request_counts(&self) -> RequestCounts {
        RequestCounts {
            total: self.by_class.iter().map(Counter::get).sum(),
            failed: self.by_class[4].get(),
            fast_failed: self.fast_failed.get(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_encodes() {
        let m = ProxyMetrics::new();
        let s = m.service("hello");
        s.record(200, 0.002);
        s.record(503, 0.001);
        m.set_endpoints("hello", 2, 1);
        m.mesh_error("hello", "no-endpoints");
        let text = m.encode();
        assert!(
            text.contains(r#"mesh_requests_total{service="hello",class="2xx"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"mesh_requests_total{service="hello",class="5xx"} 1"#));
        assert!(text.contains(r#"mesh_endpoints{service="hello",state="ready"} 2"#));
        assert!(text.contains("mesh_request_duration_seconds_count"));
        assert!(text.contains(r#"reason="no-endpoints""#));
        assert!(text.contains("mesh_rejections_total"));
        s.retried();
        s.fast_failed();
        assert_eq!(s.request_counts().total, 2);
        assert_eq!(s.request_counts().failed, 1);
        assert_eq!(s.request_counts().fast_failed, 1);
        assert!(m
            .encode()
            .contains(r#"mesh_retries_total{service="hello"} 1"#));
    }
}
