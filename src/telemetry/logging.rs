//! Logging for `mesh-proxy` and `mesh-control`: one setup for both.
//!
//! Lines go to stderr, filtered by `MESH_LOG` (then `RUST_LOG`; default
//! `info`, with hickory's per-query noise at `warn`), in the `--log-format` of the program: `text` (colour only
//! when stderr is a terminal, so a log file or a container log has no
//! escape codes) or `json` (one object per line, for log shippers).

use std::io::IsTerminal;

/// `--log-format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines; coloured only on a terminal.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, fields, message).
    Json,
}

/// The filter when neither `MESH_LOG` nor `RUST_LOG` is set. hickory logs
/// every forwarded query's failure at info; those are the app's business.
const DEFAULT_FILTER: &str = "info,hickory_server=warn,hickory_proto=warn";

/// Installs the global subscriber. Safe to call more than once (later
/// calls do nothing), so tests and `init` may call it freely.
pub fn init_logging(format: LogFormat) {
    let filter = std::env::var("MESH_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| DEFAULT_FILTER.into());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|e| {
        eprintln!("MESH_LOG={filter:?} is not a log filter ({e}); using {DEFAULT_FILTER:?}");
        tracing_subscriber::EnvFilter::new(DEFAULT_FILTER)
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}
