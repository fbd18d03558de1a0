//! The proxy's `/state` JSON as `top` reads it: every field optional and
//! every number a float, so a proxy older or newer than this CLI still
//! renders, with `-` where a section is missing.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ProxyState {
    /// The control-plane URL the proxy follows.
    pub control: Option<String>,
    pub control_connected: Option<bool>,
    pub registry: Option<RegistryState>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RegistryState {
    pub revision: Option<f64>,
    pub services: Vec<ServiceState>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ServiceState {
    pub name: String,
    pub vip: Option<String>,
    pub balancer: Option<String>,
    pub breaker: Option<BreakerState>,
    pub bulkhead: Option<BulkheadState>,
    pub retries: Option<RetriesState>,
    pub requests: Option<RequestsState>,
    pub endpoints: Option<Vec<EndpointState>>,
}

/// The service's circuit breaker and its current window.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct BreakerState {
    /// `closed`, `open` or `half-open`.
    pub state: Option<String>,
    pub calls: Option<f64>,
    pub failures: Option<f64>,
    pub slow: Option<f64>,
    pub failure_rate: Option<f64>,
    pub slow_rate: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct BulkheadState {
    pub in_flight: Option<f64>,
    pub queued: Option<f64>,
    pub max_concurrent: Option<f64>,
    pub max_queued: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RetriesState {
    pub retried: Option<f64>,
    pub budget_exhausted: Option<f64>,
    /// Retries the budget would allow right now.
    pub budget_available: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RequestsState {
    pub total: Option<f64>,
    pub failed: Option<f64>,
    /// Answered by the mesh without reaching an upstream (breaker open,
    /// bulkhead full).
    pub fast_failed: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct EndpointState {
    pub id: Option<String>,
    pub addr: Option<String>,
    /// `ready`, `unhealthy` or `ejected`.
    pub state: Option<String>,
    pub in_flight: Option<f64>,
    pub ewma_ms: Option<f64>,
    pub ejections: Option<f64>,
}
