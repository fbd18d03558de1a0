//! `mesh_gateway_*`: what gateway mode adds, per route. The `route` label
//! is a route's name (bounded by the routes applied; `(none)` for requests
//! no route matched), never anything the client chose.

use super::metrics::latency_histogram;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::Arc;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteClass {
    route: Arc<str>,
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteReason {
    route: Arc<str>,
    reason: &'static str,
}

pub struct GatewayMetrics {
    requests: Family<RouteClass, Counter>,
    latency: Family<RouteLabel, Histogram, fn() -> Histogram>,
    auth_failures: Family<RouteReason, Counter>,
    rate_limited: Family<RouteLabel, Counter>,
    /// Global rate-limit checks let through because Redis did not answer.
    pub rate_limit_fail_open: Counter,
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

impl GatewayMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = GatewayMetrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            auth_failures: Family::default(),
            rate_limited: Family::default(),
            rate_limit_fail_open: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("gateway");
        r.register(
            "requests",
            "Gateway requests by route and status class (the mesh's own answers included)",
            super::Declared(m.requests.clone()),
        );
        r.register(
            "request_duration_seconds",
            "Gateway latency to the response headers, by route",
            super::Declared(m.latency.clone()),
        );
        r.register(
            "auth_failures",
            "Requests refused by a route's JWT authentication, by route and reason",
            super::Declared(m.auth_failures.clone()),
        );
        r.register(
            "rate_limited",
            "Requests refused (429) by a route's rate limit, by route",
            super::Declared(m.rate_limited.clone()),
        );
        r.register(
            "rate_limit_fail_open",
            "Global rate-limit checks let through because Redis did not answer in time",
            m.rate_limit_fail_open.clone(),
        );
        m
    }

    /// One finished request.
    pub fn request(&self, route: &Arc<str>, status: u16, seconds: f64) {
        let class = CLASSES[usize::from((status / 100).clamp(1, 5) - 1)];
        self.requests
            .get_or_create(&RouteClass {
                route: route.clone(),
                class,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabel {
                route: route.clone(),
            })
            .observe(seconds);
    }

    pub fn auth_failed(&self, route: &Arc<str>, reason: &'static str) {
        self.auth_failures
            .get_or_create(&RouteReason {
                route: route.clone(),
                reason,
            })
            .inc();
    }

    pub fn rate_limited(&self, route: &Arc<str>) {
        self.rate_limited
            .get_or_create(&RouteLabel {
                route: route.clone(),
            })
            .inc();
    }
}
