//! The proxy's metrics, resolved per service ahead of time so that the
//! request path only touches atomics (no label hashing, no allocation).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Duration;

use super::histogram::{Counts, LatencyHistogram};
use super::stats::{Failed, Outcomes};

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

pub use crate::model::state::RequestCounts;

/// Status classes, the `class` label of request counters.
pub(super) const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Index into [`CLASSES`] of an HTTP status.
pub(super) fn class_index(status: u16) -> usize {
    usize::from((status / 100).clamp(1, 5) - 1)
}

/// Endpoint states, the `state` label of `mesh_endpoints` (and `/state`).
pub const ENDPOINT_STATES: [&str; 3] = ["ready", "ejected", "unhealthy"];

pub(super) fn latency_histogram() -> Histogram {
    // 100 µs .. ~13 s (18 buckets, doubling), then +Inf
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

/// Every metric `mesh-proxy` exports on `/metrics`.
pub struct ProxyMetrics {
    /// The root: `process_*` here, everything else under `mesh_`.
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    attempts: Family<RequestLabels, Counter>,
    latency: Family<ServiceLabel, LatencyHistogram>,
    /// Not exported: the dashboard's outcome counts, shared per service.
    outcomes: Family<ServiceLabel, Arc<Outcomes>>,
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
    /// Moves to another mesh-control replica (`--control` lists several).
    pub control_failovers: Counter,
    /// Endpoint removals refused by client-side self-preservation.
    removals_refused: Family<ServiceLabel, Counter>,
    pub dns_queries: Counter,
    /// Connections, protocols, and the inbound side.
    pub traffic: super::TrafficMetrics,
    /// Listener admission: open connections, refusals, overload.
    pub listeners: super::ListenerMetrics,
    /// Gateway mode, per route.
    pub gateway: super::GatewayMetrics,
    /// Spans the exporter sent, and those it dropped (queue full, or the
    /// collector away).
    pub spans_exported: Counter,
    pub spans_dropped: Counter,
    /// Access log lines dropped because stdout fell behind.
    pub access_log_dropped: Counter,
    /// This proxy's certificate and trust roots (set at scrape time).
    pub identity: IdentityMetrics,
    /// Held by a scrape while it resets and sets the gauges it reads, so
    /// two scrapes at once cannot see each other's half-set gauges.
    scrape: std::sync::Mutex<()>,
}

/// `mesh_identity_*`: what an operator alerts on before a certificate or
/// a root runs out (the outages of linkerd2#9612 and istio#14516 gave no
/// warning).
pub struct IdentityMetrics {
    /// Seconds until this proxy's certificate expires (negative: expired).
    pub cert_expiry: Gauge,
    /// Renewals failed since the last success.
    pub renew_failures: Gauge,
    /// Seconds until each trust root expires.
    pub root_expiry: Family<RootLabel, Gauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RootLabel {
    pub root: String,
}

/// Handles for one destination service; cloning shares the counters.
#[derive(Clone, Debug)]
pub struct ServiceMetrics {
    /// Requests by final status class: 1xx..5xx at index 0..4.
    by_class: [Counter; 5],
    /// Tries sent to an endpoint, by the class of what came back.
    attempts_by_class: [Counter; 5],
    latency: LatencyHistogram,
    outcomes: Arc<Outcomes>,
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
        let mut root = Registry::default();
        super::register_process_metrics(&mut root);
        let registry = root.sub_registry_with_prefix("mesh");
        let traffic = super::TrafficMetrics::register(registry);
        let listeners = super::ListenerMetrics::register(registry);
        let gateway = super::GatewayMetrics::register(registry);
        let requests = Family::<RequestLabels, Counter>::default();
        let attempts = Family::<RequestLabels, Counter>::default();
        let latency = Family::<ServiceLabel, LatencyHistogram>::default();
        let endpoints = Family::<EndpointLabels, Gauge>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let tcp_relays = Counter::default();
        let revision = Gauge::default();
        let control_connected = Gauge::default();
        let control_failovers = Counter::default();
        let removals_refused = Family::<ServiceLabel, Counter>::default();
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
            super::Declared(breaker_state.clone()),
        );
        registry.register(
            "breaker_transitions",
            "Circuit breaker state changes by service and new state",
            super::Declared(breaker_transitions.clone()),
        );
        registry.register(
            "bulkhead_inflight",
            "Calls holding a bulkhead slot, by service",
            super::Declared(bulkhead_inflight.clone()),
        );
        registry.register(
            "bulkhead_queued",
            "Calls waiting for a bulkhead slot, by service",
            super::Declared(bulkhead_queued.clone()),
        );
        registry.register(
            "retries",
            "Retries sent, by service",
            super::Declared(retries.clone()),
        );
        registry.register(
            "retry_budget_exhausted",
            "Retries refused because the retry budget was spent, by service",
            super::Declared(budget_exhausted.clone()),
        );
        registry.register(
            "outlier_ejections",
            "Endpoints ejected for consecutive failures, by service",
            super::Declared(ejections.clone()),
        );
        registry.register(
            "fast_failures",
            "Calls rejected by the breaker or bulkhead without reaching an upstream",
            super::Declared(fast_failed.clone()),
        );
        registry.register(
            "requests",
            "Outbound HTTP requests to mesh services, once each with its final status class \
             (after retries and fallbacks; a mesh error counts as the status it maps to)",
            super::Declared(requests.clone()),
        );
        registry.register(
            "request_attempts",
            "Tries sent to an endpoint of a mesh service (first tries and retries), \
             by the status class of what came back",
            super::Declared(attempts.clone()),
        );
        registry.register(
            "request_duration_seconds",
            "Outbound HTTP latency to the final response's headers (retries included), \
             by destination service",
            super::Declared(latency.clone()),
        );
        registry.register(
            "endpoints",
            "Endpoints of each destination service by state (ready, ejected, unhealthy), \
             as /state shows them",
            super::Declared(endpoints.clone()),
        );
        registry.register(
            "rejections",
            "Failures the mesh answered itself, by service and x-mesh-error reason",
            super::Declared(errors.clone()),
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
            "control_failovers",
            "Moves from one mesh-control replica to the next after it gave no answer (or a 503)",
            control_failovers.clone(),
        );
        registry.register(
            "endpoint_removals_refused",
            "Endpoint removals refused by client-side self-preservation (too many of a \
             service's ready endpoints at once), by service",
            super::Declared(removals_refused.clone()),
        );
        registry.register(
            "dns_queries",
            "DNS queries answered or forwarded",
            dns_queries.clone(),
        );
        let spans_exported = Counter::default();
        let spans_dropped = Counter::default();
        registry.register(
            "trace_spans_exported",
            "Spans sent to the OTLP collector (--otlp-endpoint)",
            spans_exported.clone(),
        );
        registry.register(
            "trace_spans_dropped",
            "Spans dropped: the export queue was full, or the collector did not take them",
            spans_dropped.clone(),
        );
        let access_log_dropped = Counter::default();
        registry.register(
            "access_log_dropped",
            "Access log lines dropped because stdout fell behind (gateway and sidecar lines)",
            access_log_dropped.clone(),
        );
        let identity = IdentityMetrics {
            cert_expiry: Gauge::default(),
            renew_failures: Gauge::default(),
            root_expiry: Family::default(),
        };
        registry.register(
            "identity_cert_expiry_seconds",
            "Seconds until this proxy's certificate expires (negative once expired; absent with identity off)",
            identity.cert_expiry.clone(),
        );
        registry.register(
            "identity_renew_failures",
            "Certificate renewals that failed since the last success",
            identity.renew_failures.clone(),
        );
        registry.register(
            "identity_root_expiry_seconds",
            "Seconds until each root of the trust bundle expires (warned under 30 days)",
            super::Declared(identity.root_expiry.clone()),
        );
        ProxyMetrics {
            identity,
            registry: root,
            requests,
            attempts,
            latency,
            outcomes: Family::default(),
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
            control_failovers,
            removals_refused,
            dns_queries,
            traffic,
            listeners,
            gateway,
            spans_exported,
            spans_dropped,
            access_log_dropped,
            scrape: std::sync::Mutex::new(()),
        }
    }

    /// Resolves the per-service handles once (at routing-table build time).
    pub fn service(&self, service: &str) -> ServiceMetrics {
        let classes = |family: &Family<RequestLabels, Counter>| {
            CLASSES.map(|class| {
                family.get_or_create_owned(&RequestLabels {
                    service: service.to_string(),
                    class,
                })
            })
        };
        let by_class = classes(&self.requests);
        let attempts_by_class = classes(&self.attempts);
        let label = ServiceLabel {
            service: service.to_string(),
        };
        ServiceMetrics {
            by_class,
            attempts_by_class,
            latency: self.latency.get_or_create_owned(&label),
            outcomes: self.outcomes.get_or_create_owned(&label),
            retries: self.retries.get_or_create_owned(&label),
            budget_exhausted: self.budget_exhausted.get_or_create_owned(&label),
            ejections: self.ejections.get_or_create_owned(&label),
            fast_failed: self.fast_failed.get_or_create_owned(&label),
        }
    }

    /// `n` removals of `service`'s endpoints were refused (and held).
    pub fn endpoint_removals_refused(&self, service: &str, n: u64) {
        self.removals_refused
            .get_or_create(&ServiceLabel {
                service: service.to_string(),
            })
            .inc_by(n);
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

    /// Sets the endpoint gauges of one service: how many endpoints are in
    /// each of [`ENDPOINT_STATES`], in that order.
    pub fn set_endpoints(&self, service: &str, counts: [usize; 3]) {
        for (state, n) in ENDPOINT_STATES.into_iter().zip(counts) {
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

    /// One scrape: `set_gauges` sets the gauges from the current state
    /// (endpoint gauges start empty, so a removed service leaves none),
    /// then the exposition for a scraper that sent `accept` is encoded.
    /// Returns (content type, text).
    pub fn scrape(
        &self,
        set_gauges: impl FnOnce(),
        accept: Option<&str>,
    ) -> (&'static str, String) {
        let _one_at_a_time = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        self.endpoints.clear();
        set_gauges();
        super::exposition(&self.registry, accept)
    }

    /// The exposition as it stands (tests, and readers that set nothing).
    pub fn encode(&self, accept: Option<&str>) -> (&'static str, String) {
        super::exposition(&self.registry, accept)
    }
}

impl ServiceMetrics {
    /// Records one request's outcome: its final status, the time to the
    /// final response's headers, and how it failed (`None`: it did not
    /// fail in the mesh), and whether a fallback answered it then.
    pub fn record(&self, status: u16, elapsed: Duration, failed: Option<Failed>, fell_back: bool) {
        self.by_class[class_index(status)].inc();
        self.latency.observe(elapsed);
        match failed {
            Some(how) => self.outcomes.failed(how, fell_back),
            None if status >= 500 => self.outcomes.failed(Failed::Failure, false),
            None => self.outcomes.success(),
        }
    }

    /// Every call's outcome so far (cumulative), for the rolling window.
    pub fn tally(&self) -> crate::model::stats::Tally {
        self.outcomes
            .tally(self.retries.get(), self.budget_exhausted.get())
    }

    /// The latency histogram so far (cumulative).
    pub fn latency_counts(&self) -> Counts {
        self.latency.snapshot()
    }

    /// Records one try sent to an endpoint.
    pub fn attempted(&self, status: u16) {
        self.attempts_by_class[class_index(status)].inc();
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
            attempts: self.attempts_by_class.iter().map(Counter::get).sum(),
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
        // One request, retried once: two attempts, one request.
        s.attempted(503);
        s.attempted(200);
        s.record(200, Duration::from_millis(2), None, false);
        s.record(503, Duration::from_millis(1), None, false);
        m.set_endpoints("hello", [2, 1, 0]);
        m.mesh_error("hello", "no-endpoints");
        let (content_type, text) = m.encode(None);
        assert_eq!(content_type, crate::telemetry::PROMETHEUS_TEXT);
        for line in [
            r#"mesh_requests_total{service="hello",class="2xx"} 1"#,
            r#"mesh_requests_total{service="hello",class="5xx"} 1"#,
            r#"mesh_request_attempts_total{service="hello",class="2xx"} 1"#,
            r#"mesh_request_attempts_total{service="hello",class="5xx"} 1"#,
            r#"mesh_endpoints{service="hello",state="ready"} 2"#,
            r#"mesh_endpoints{service="hello",state="ejected"} 1"#,
            r#"mesh_endpoints{service="hello",state="unhealthy"} 0"#,
            r#"mesh_rejections_total{service="hello",reason="no-endpoints"} 1"#,
            "# TYPE mesh_requests_total counter",
            "# TYPE process_cpu_seconds_total counter",
        ] {
            assert!(text.contains(line), "{line} in:\n{text}");
        }
        assert!(text.contains("mesh_request_duration_seconds_count"));
        s.retried();
        s.fast_failed();
        let counts = s.request_counts();
        assert_eq!((counts.total, counts.failed), (2, 1));
        assert_eq!((counts.fast_failed, counts.attempts), (1, 2));
        m.control_failovers.inc();
        m.endpoint_removals_refused("hello", 2);
        let (_, text) = m.encode(None);
        assert!(text.contains(r#"mesh_retries_total{service="hello"} 1"#));
        assert!(text.contains("mesh_control_failovers_total 1"), "{text}");
        assert!(text.contains(r#"mesh_endpoint_removals_refused_total{service="hello"} 2"#));
        let (_, text) = m.scrape(|| {}, None);
        assert!(!text.contains(r#"mesh_endpoints{"#), "{text}");
        let (content_type, open) = m.encode(Some("application/openmetrics-text;version=1.0.0"));
        assert_eq!(content_type, crate::telemetry::OPENMETRICS_TEXT);
        assert!(open.ends_with("# EOF\n"), "{open}");
    }
}
