//! The proxy's half of the acknowledgements (see `control::proxies`):
//! every revision this proxy applies is reported back, and a stopping
//! proxy waits until every watching proxy has applied the revision that
//! removed its instance, so no caller can still pick it when it stops
//! accepting.

use super::{Backoff, Directory, Service};
use crate::control::client::{ClientError, ControlClient};
use crate::telemetry::stats::{Rolling, Sample};
use crate::telemetry::ProxyMetrics;
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

/// Ticks `rolling` every second (the dashboard's window, see
/// `telemetry::stats`) and pushes each window to mesh-control while the
/// watch is up: a push while it is down would only fail, and the watch's
/// own backoff decides when mesh-control is back. A failed push is not
/// retried; the next second's window supersedes it.
pub async fn report_stats(
    rolling: Arc<Rolling>,
    dir: Arc<Directory>,
    metrics: Arc<ProxyMetrics>,
    to: Option<(ControlClient, String)>,
    asks: Asks,
    stop: CancellationToken,
) {
    let mut every = tokio::time::interval(STATS_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = stop.cancelled() => return,
        }
        let table = dir.table();
        let report = rolling.tick(table.services().map(|svc| sample(svc)));
        drop(table);
        let Some((client, proxy)) = &to else {
            continue;
        };
        if metrics.control_connected.get() != 1 {
            // Nobody can be tapping: drop what was kept.
            (asks.tapped)();
            continue;
        }
        let tapped = (asks.tapped)();
        let body;
        let report = if tapped.is_empty() {
            &*report
        } else {
            body = crate::model::stats::StatsReport {
                tap: tapped,
                ..(*report).clone()
            };
            &body
        };
        let sent = tokio::select! {
            r = client.stats(proxy, report) => r,
            () = stop.cancelled() => return,
        };
        let asked = match sent {
            Ok(asked) => asked,
            // 404: the watch is between connections.
            Err(ClientError::Api { status: 404, .. }) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "cannot push statistics to mesh-control");
                continue;
            }
        };
        (asks.tap)(asked.tap);
        // Sent again each second while asked (mesh-control keeps one copy
        // of each): a question asked twice is answered twice.
        let mut found = Vec::new();
        for id in asked.explain.iter().take(MAX_ASKED) {
            found.extend((asks.explain)(id, proxy));
        }
        if !found.is_empty() {
            let trails = crate::model::stats::Trails { trails: found };
            if let Err(e) = client.trails(proxy, &trails).await {
                tracing::debug!(error = %e, "cannot send decision trails to mesh-control");
            }
        }
    }
}

/// Ids one push answers at most.
const MAX_ASKED: usize = 64;

/// How the stats task answers what operators ask (the trails and the tap
/// live with the call path: `proxy::outbound::{trails, tap}`).
pub struct Asks {
    /// `(request id, this proxy's id)` → its trails.
    pub explain: Box<FindTrails>,
    /// The services tapped now.
    pub tap: Box<dyn Fn(Vec<String>) + Send + Sync>,
    /// The tapped calls since the last push.
    pub tapped: Box<dyn Fn() -> Vec<crate::model::stats::TapLine> + Send + Sync>,
}

pub type FindTrails = dyn Fn(&str, &str) -> Vec<crate::model::stats::DecisionTrail> + Send + Sync;

/// How often the rolling window moves and is pushed.
pub const STATS_EVERY: Duration = Duration::from_secs(1);

/// One destination's counters and live state, for the rolling window.
fn sample(svc: &Service) -> Sample<'_> {
    let view = svc.resilience.view();
    Sample {
        service: &svc.name,
        tally: svc.metrics.tally(),
        latency: svc.metrics.latency_counts(),
        breaker: view.breaker.state,
        in_flight: view.bulkhead.in_flight,
        queued: view.bulkhead.queued,
        max_concurrent: view.bulkhead.max_concurrent,
        mtls: svc.ready.iter().any(|e| e.conns.peer().is_some()),
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
