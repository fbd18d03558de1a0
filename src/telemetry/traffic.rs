//! Connection-level and inbound metrics: detected protocols, learned
//! opaque destinations, and requests the inbound side let through to the
//! app, by caller.

use super::metrics::latency_histogram;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnLabels {
    service: String,
    protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SniLabels {
    service: String,
    sni: String,
}

/// Distinct SNI label values kept before new ones are counted as `other`:
/// the name comes from the client, and must not grow the registry without
/// bound.
const MAX_SNI_LABELS: usize = 256;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PortLabels {
    service: String,
    port: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EarlyLabels {
    service: String,
    port: u16,
    first: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InboundLabels {
    caller: String,
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallerLabel {
    caller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeniedLabels {
    caller: String,
    rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// Per connection and per inbound request; none of these is on the
/// outbound per-request path.
pub struct TrafficMetrics {
    connections: Family<ConnLabels, Counter>,
    tls: Family<SniLabels, Counter>,
    sni_seen: std::sync::Mutex<std::collections::HashSet<String>>,
    learned_opaque: Family<PortLabels, Counter>,
    early_connects: Family<EarlyLabels, Counter>,
    inbound_requests: Family<InboundLabels, Counter>,
    inbound_latency: Family<CallerLabel, Histogram, fn() -> Histogram>,
    inbound_rejections: Family<ReasonLabel, Counter>,
    inbound_denied: Family<DeniedLabels, Counter>,
    /// Inbound HTTP requests currently let through to the app.
    pub inbound_inflight: Gauge,
    /// Inbound opaque TCP connections accepted.
    pub inbound_tcp: Counter,
}

impl TrafficMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = TrafficMetrics {
            connections: Family::default(),
            tls: Family::default(),
            sni_seen: Default::default(),
            learned_opaque: Family::default(),
            early_connects: Family::default(),
            inbound_requests: Family::default(),
            inbound_latency: Family::new_with_constructor(latency_histogram),
            inbound_rejections: Family::default(),
            inbound_denied: Family::default(),
            inbound_inflight: Gauge::default(),
            inbound_tcp: Counter::default(),
        };
        registry.register(
            "connections",
            "Outbound connections to mesh services, by service and detected protocol (http1, http2, tls, opaque)",
            super::Declared(m.connections.clone()),
        );
        registry.register(
            "tls_connections",
            "TLS connections to mesh services (relayed opaque), by service and the ClientHello's server name (none: no SNI; other: past 256 distinct names)",
            super::Declared(m.tls.clone()),
        );
        registry.register(
            "detect_learned_opaque",
            "Service ports learned opaque because the server spoke first (a server-speaks-first protocol); declare them in the policy's opaquePorts",
            super::Declared(m.learned_opaque.clone()),
        );
        registry.register(
            "detect_early_connects",
            "Connections to an undeclared port whose endpoint was connected before the client spoke, by who then spoke first (client, server, neither); ports known client-first or opaque skip this. service=\"(inbound)\" for the inbound side",
            super::Declared(m.early_connects.clone()),
        );
        registry.register(
            "inbound_requests",
            "Inbound HTTP requests by calling service (from its verified certificate; unknown outside the mesh) and status class",
            super::Declared(m.inbound_requests.clone()),
        );
        registry.register(
            "inbound_request_duration_seconds",
            "Inbound HTTP latency to the app's response headers, by calling service",
            super::Declared(m.inbound_latency.clone()),
        );
        registry.register(
            "inbound_rejections",
            "Inbound requests the proxy answered itself, by x-mesh-error reason",
            super::Declared(m.inbound_rejections.clone()),
        );
        registry.register(
            "inbound_denied",
            "Inbound requests and connections an AuthorizationPolicy refused, by calling service and rule",
            super::Declared(m.inbound_denied.clone()),
        );
        registry.register(
            "inbound_inflight",
            "Inbound HTTP requests in progress at the app",
            m.inbound_inflight.clone(),
        );
        registry.register(
            "inbound_tcp_connections",
            "Inbound opaque TCP connections relayed to the app",
            m.inbound_tcp.clone(),
        );
        m
    }

    pub fn connection(&self, service: &str, protocol: &'static str) {
        self.connections
            .get_or_create(&ConnLabels {
                service: service.to_string(),
                protocol,
            })
            .inc();
    }

    pub fn tls_connection(&self, service: &str, sni: Option<&str>) {
        let sni = match sni {
            None => "none".to_string(),
            Some(name) => {
                let mut seen = self.sni_seen.lock().unwrap_or_else(|e| e.into_inner());
                if seen.contains(name) || seen.len() < MAX_SNI_LABELS {
                    seen.insert(name.to_string());
                    name.to_string()
                } else {
                    "other".to_string()
                }
            }
        };
        self.tls
            .get_or_create(&SniLabels {
                service: service.to_string(),
                sni,
            })
            .inc();
    }

    pub fn learned_opaque(&self, service: &str, port: u16) {
        self.learned_opaque
            .get_or_create(&PortLabels {
                service: service.to_string(),
                port,
            })
            .inc();
    }

    /// A connection sorted by who spoke first (`first`: client, server or
    /// neither), with the upstream opened early.
    pub fn early_connect(&self, service: &str, port: u16, first: &'static str) {
        self.early_connects
            .get_or_create(&EarlyLabels {
                service: service.to_string(),
                port,
                first,
            })
            .inc();
    }

    pub fn inbound_request(&self, caller: &str, status: u16, seconds: f64) {
        let class = super::metrics::CLASSES[super::metrics::class_index(status)];
        self.inbound_requests
            .get_or_create(&InboundLabels {
                caller: caller.to_string(),
                class,
            })
            .inc();
        self.inbound_latency
            .get_or_create(&CallerLabel {
                caller: caller.to_string(),
            })
            .observe(seconds);
    }

    pub fn inbound_rejected(&self, reason: &'static str) {
        self.inbound_rejections
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn inbound_denied(&self, caller: &str, rule: &str) {
        self.inbound_denied
            .get_or_create(&DeniedLabels {
                caller: caller.to_string(),
                rule: rule.to_string(),
            })
            .inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    listener: &'static str,
    reason: &'static str,
}

/// What the listeners' admission reports (`proxy::admission`).
pub struct ListenerMetrics {
    open: Family<ListenerLabel, Gauge>,
    refused: Family<RefusedLabels, Counter>,
    /// 1 while new connections are refused for want of descriptors or
    /// memory.
    pub overloaded: Gauge,
}

impl ListenerMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = ListenerMetrics {
            open: Family::default(),
            refused: Family::default(),
            overloaded: Gauge::default(),
        };
        registry.register(
            "listener_connections",
            "Client connections each listener (outbound, inbound) holds now",
            super::Declared(m.open.clone()),
        );
        registry.register(
            "listener_refused",
            "Connections closed at accept, by listener and reason (connection-limit, overload-fds, overload-memory, accept-error)",
            super::Declared(m.refused.clone()),
        );
        registry.register(
            "overloaded",
            "1 while the proxy refuses new connections because open descriptors or memory are near their bound",
            m.overloaded.clone(),
        );
        m
    }

    /// The open-connections gauge of `listener` (a handle: cheap to keep).
    pub fn open(&self, listener: &'static str) -> Gauge {
        self.open.get_or_create(&ListenerLabel { listener }).clone()
    }

    pub fn refused(&self, listener: &'static str, reason: &'static str) {
        self.refused
            .get_or_create(&RefusedLabels { listener, reason })
            .inc();
    }
}
