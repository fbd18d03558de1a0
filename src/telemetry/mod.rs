//! Logging setup and the proxy's Prometheus metrics.

mod metrics;
mod traffic;

pub use metrics::{ProxyMetrics, RequestCounts, ServiceMetrics};
pub use traffic::TrafficMetrics;

/// Logs to stderr, filtered by `MESH_LOG` (then `RUST_LOG`), default `info`.
/// Safe to call more than once (later calls do nothing).
pub fn init_logging() {
    let filter = std::env::var("MESH_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info,hickory_server=warn,hickory_proto=warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
