//! The proxy's half of the acknowledgements (see `control::proxies`):
//! every revision this proxy applies is reported back, and a stopping
//! proxy waits until every watching proxy has applied the revision that
//! removed its instance, so no caller can still pick it when it stops
//! accepting.

use super::{Backoff, Directory};
use crate::control::client::{ClientError, ControlClient};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The longest single long poll of [`await_removal`] (under the client's
/// request timeout).
const POLL: Duration = Duration::from_secs(5);
/// Reports go out at most this often: a burst of changes is reported as
/// its latest revision, not one request per change (which cost each proxy
/// a request per event, and mesh-control one per event per proxy). A
/// stopping peer's drain sees this proxy catch up at most this late.
pub const REPORT_EVERY: Duration = Duration::from_millis(100);

/// Reports each revision the directory applies, the latest only when they
/// come faster than the reports (one in flight at a time, over the
/// client's pooled connection, at most one per [`REPORT_EVERY`]). A 404 means the watch is not open at the
/// moment: the next one starts from the directory's revision, so nothing
/// is lost by skipping it.
pub async fn report_applied(
    client: ControlClient,
    dir: Arc<Directory>,
    proxy: String,
    stop: CancellationToken,
) {
    let mut revisions = dir.subscribe();
    let mut reported: Option<u64> = None;
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let latest = *revisions.borrow_and_update();
        let mut retry = None;
        if let Some(rev) = latest.filter(|r| Some(*r) != reported) {
            let sent = tokio::select! {
                r = client.applied(&proxy, rev) => r,
                () = stop.cancelled() => return,
            };
            match sent {
                Ok(_) | Err(ClientError::Api { status: 404, .. }) => {
                    reported = Some(rev);
                    backoff.reset();
                    tokio::select! {
                        () = tokio::time::sleep(REPORT_EVERY) => {}
                        () = stop.cancelled() => return,
                    }
                    continue;
                }
                // Another identity holds this id: retrying cannot help.
                Err(e @ ClientError::Api { status: 403, .. }) => {
                    tracing::warn!(error = %e, revision = rev, "mesh-control refused this proxy's report");
                    reported = Some(rev);
                }
                Err(e) => {
                    tracing::debug!(error = %e, revision = rev, "cannot report the applied revision; retrying");
                    retry = Some(backoff.next_delay());
                }
            }
        }
        let again = async {
            match retry {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = revisions.changed() => if r.is_err() { return },
            () = again => {}
            () = stop.cancelled() => return,
        }
    }
}

/// What [`await_removal`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    /// Every proxy watching had applied the removal.
    Applied { watching: usize, waited: Duration },
    /// `timeout` passed first; these proxies were still behind.
    TimedOut { behind: Vec<String> },
}

/// Waits (at most `timeout`) until no proxy watching the control plane is
/// behind `revision`, the one that removed this instance. Logs whom it
/// waited for and the outcome.
pub async fn await_removal(client: &ControlClient, revision: u64, timeout: Duration) -> Removal {
    let started = Instant::now();
    let deadline = started + timeout;
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
    let mut behind: Vec<String> = Vec::new();
    let mut announced = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            tracing::warn!(revision, behind = %behind.join(","), timeout = ?timeout, "drain timeout: proxies still had not applied this instance's removal");
            return Removal::TimedOut { behind };
        }
        // Each ask is bounded by what is left (the client's own request
        // timeout is longer).
        let asked = tokio::time::timeout(
            left + Duration::from_millis(500),
            client.proxies(Some(revision), Some(left.min(POLL))),
        );
        let answer = match asked.await {
            Ok(a) => a,
            Err(_) => continue,
        };
        match answer {
            Ok(list) if list.proxies.is_empty() => {
                let waited = started.elapsed();
                tracing::info!(
                    revision,
                    proxies = list.watching,
                    waited_ms = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
                    "removal applied by every watching proxy"
                );
                return Removal::Applied {
                    watching: list.watching,
                    waited,
                };
            }
            Ok(list) => {
                behind = list.proxies.iter().map(shown).collect();
                if !announced {
                    announced = true;
                    tracing::info!(revision, watching = list.watching, behind = %behind.join(","), "waiting for the proxies still behind this instance's removal");
                }
            }
            // A mesh-control from before acknowledgements: nothing to wait for.
            Err(ClientError::Api { status: 404, .. }) => {
                tracing::info!(
                    revision,
                    "mesh-control does not track watching proxies; not waiting"
                );
                return Removal::Applied {
                    watching: 0,
                    waited: started.elapsed(),
                };
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot ask which proxies are behind; retrying");
                let pause = backoff.next_delay().min(left);
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// `proxy(service)`, how a log line names a proxy.
fn shown(p: &crate::model::proxies::ProxyInfo) -> String {
    let w = &p.watcher;
    match &w.service {
        Some(s) => format!("{}({s})", w.proxy),
        None => w.proxy.clone(),
    }
}
