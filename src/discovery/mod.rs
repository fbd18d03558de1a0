//! The proxy side of discovery: what the proxy knows of the registry and
//! how it stays current.

mod agent; //     registers the local app, heartbeats, checks its health
pub mod applied; //   reports applied revisions; waits for the removal to be applied everywhere
mod backoff; //   jittered exponential backoff for reconnects
mod cache; //     last snapshot on disk
pub mod directory; // registry state → routing table
mod table; //     immutable routing table read by the request path
mod watch; //     watch stream client loop

pub use agent::{AgentConfig, AgentState, HealthCheck, RegistrationAgent};
pub use applied::{await_removal, report_applied, report_stats, Asks, STATS_EVERY};
pub use backoff::Backoff;
pub use cache::SnapshotCache;
pub use directory::{Directory, Preservation};
pub use table::{Endpoint, Service, Table, TableState};
pub use watch::{run_cache_writer, run_watch, WATCH_IDLE_TIMEOUT};
