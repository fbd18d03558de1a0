//! Logging setup, the proxy's Prometheus metrics, and the rolling
//! statistics the dashboard is drawn from.

pub mod access_log;
mod gateway;
pub mod histogram;
mod logging;
mod metrics;
mod process;
pub mod stats;
pub mod trace;
mod traffic;

pub use gateway::GatewayMetrics;
pub use logging::{init_logging, LogFormat};
pub use metrics::{ProxyMetrics, RequestCounts, RootLabel, ServiceMetrics, ENDPOINT_STATES};
pub use process::register_process_metrics;
pub use traffic::{ListenerMetrics, TrafficMetrics};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// A metric family exported with its HELP and TYPE even before its first
/// series (prometheus-client skips empty families), so every documented
/// family is on `/metrics` from startup and a dashboard or alert never
/// sees a family appear out of nowhere.
#[derive(Clone, Debug)]
pub(crate) struct Declared<M>(pub M);

impl<M: EncodeMetric> EncodeMetric for Declared<M> {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }

    fn is_empty(&self) -> bool {
        false
    }
}

/// Content type of the Prometheus text format, version 0.0.4.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Content type of OpenMetrics text, version 1.0.0.
pub const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Encodes `registry` for a scraper: OpenMetrics when its `Accept` header
/// asks for it (Prometheus itself does), else the Prometheus text format
/// that curl, promtool and older scrapers read. Returns (content type, text).
pub fn exposition(registry: &Registry, accept: Option<&str>) -> (&'static str, String) {
    let mut out = String::with_capacity(8 * 1024);
    // Writing to a String cannot fail.
    if accept.is_some_and(|a| a.contains("application/openmetrics-text")) {
        let _ = prometheus_client::encoding::text::encode(&mut out, registry);
        (OPENMETRICS_TEXT, out)
    } else {
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, registry);
        (PROMETHEUS_TEXT, out)
    }
}
