//! Keeps the directory current: one long-lived watch stream, resumed by
//! revision after any failure (on the next replica, when `--control`
//! lists several), and a writer that mirrors it to disk.

use super::{Backoff, Directory, SnapshotCache};
use crate::control::client::ControlClient;
use crate::model::proxies::WatcherInfo;
use crate::telemetry::ProxyMetrics;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long a silent stream is trusted: three missed 5 s keep-alives.
pub const WATCH_IDLE_TIMEOUT: Duration = Duration::from_secs(15);

/// Follows the control plane's watch stream until `shutdown`. Never gives
/// up: while the control plane is away the directory keeps what it had.
/// A stream that worked and was lost is reopened after a jittered
/// 100-200 ms on the next replica, with `since` the directory's revision,
/// so a replica's death costs a fraction of a second and no snapshot
/// (unless that revision was compacted away).
/// `who` names this proxy to the control plane, which then lists it and
/// waits for its acknowledgements (see `discovery::applied`).
pub async fn run_watch(
    client: ControlClient,
    dir: Arc<Directory>,
    metrics: Arc<ProxyMetrics>,
    idle_timeout: Duration,
    who: WatcherInfo,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut was_up = true;
    loop {
        let since = dir.revision().unwrap_or(0);
        let attempt = tokio::select! {
            r = client.watch(since, idle_timeout, Some(&who)) => r,
            () = shutdown.cancelled() => return,
        };
        match attempt {
            Ok(mut stream) => {
                tracing::info!(url = stream.url(), since, "watching the registry");
                metrics.control_connected.set(1);
                dir.mark_connected();
                was_up = true;
                let mut saw_event = false;
                let lost = loop {
                    let next = tokio::select! {
                        n = stream.next() => n,
                        () = shutdown.cancelled() => {
                            metrics.control_connected.set(0);
                            return;
                        }
                    };
                    match next {
                        Ok(Some(event)) => {
                            if !saw_event {
                                saw_event = true;
                                backoff.reset();
                            }
                            dir.apply(event);
                        }
                        Ok(None) => break "the stream ended".to_string(),
                        Err(e) => break e.to_string(),
                    }
                };
                metrics.control_connected.set(0);
                tracing::warn!(url = stream.url(), why = %lost, "watch stream lost; reconnecting");
                // The replica that served it is suspect (killed, cut off,
                // shutting down): with several listed, the reconnect goes
                // to the next one, from the same revision.
                client.fail_over(stream.url(), &lost);
            }
            Err(e) => {
                // Log the first failure loudly, the repeats quietly.
                if was_up {
                    tracing::warn!(error = %e, "control plane unreachable; routing on the last known registry");
                    was_up = false;
                } else {
                    tracing::debug!(error = %e, "control plane still unreachable");
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff.next_delay()) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// A change is written this long after it, so a burst is written once.
const CACHE_SETTLE: Duration = Duration::from_millis(50);
/// At most one write per this long: a write serializes the whole registry
/// (about 10 ms at 10 000 services), so under a steady stream of changes
/// its cost per change must not grow with the mesh. What a crash can lose
/// is at most this much of the latest changes, which the watch replays.
pub const CACHE_WRITE_EVERY: Duration = Duration::from_secs(1);

/// Mirrors applied revisions to the on-disk cache: 50 ms after a change,
/// then at most once per [`CACHE_WRITE_EVERY`].
pub async fn run_cache_writer(
    dir: Arc<Directory>,
    cache: SnapshotCache,
    shutdown: CancellationToken,
) {
    let mut rx = dir.subscribe();
    let mut written: Option<u64> = None;
    let mut last_write: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            () = shutdown.cancelled() => return,
        }
        let next = match last_write {
            Some(t) => (t + CACHE_WRITE_EVERY).max(tokio::time::Instant::now() + CACHE_SETTLE),
            None => tokio::time::Instant::now() + CACHE_SETTLE,
        };
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = shutdown.cancelled() => return,
        }
        let rev = *rx.borrow_and_update();
        if rev.is_none() || rev == written {
            continue;
        }
        let (dir, cache) = (dir.clone(), cache.clone());
        let write = move || cache.store_with(|w| dir.write_snapshot(w));
        last_write = Some(tokio::time::Instant::now());
        match tokio::task::spawn_blocking(write).await {
            Ok(Ok(())) => written = rev,
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot write the snapshot cache"),
            Err(e) => tracing::warn!(error = %e, "snapshot cache writer failed"),
        }
    }
}
