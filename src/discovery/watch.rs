//! Keeps the directory current: one long-lived watch stream, resumed by
//! revision after any failure, and a writer that mirrors it to disk.

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
                tracing::info!(url = client.base_url(), since, "watching the registry");
                metrics.control_connected.set(1);
                was_up = true;
                let mut saw_event = false;
                loop {
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
                        Ok(None) => {
                            tracing::warn!("watch stream ended; reconnecting");
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "watch stream failed; reconnecting");
                            break;
                        }
                    }
                }
                metrics.control_connected.set(0);
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

/// Mirrors every applied revision to the on-disk cache, coalescing bursts.
pub async fn run_cache_writer(
    dir: Arc<Directory>,
    cache: SnapshotCache,
    shutdown: CancellationToken,
) {
    let mut rx = dir.subscribe();
    let mut written: Option<u64> = None;
    loop {
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            () = shutdown.cancelled() => return,
        }
        // Let a burst of changes settle before writing once.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let rev = *rx.borrow_and_update();
        if rev.is_none() || rev == written {
            continue;
        }
        let snap = dir.snapshot();
        let cache = cache.clone();
        match tokio::task::spawn_blocking(move || cache.store(&snap)).await {
            Ok(Ok(())) => written = rev,
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot write the snapshot cache"),
            Err(e) => tracing::warn!(error = %e, "snapshot cache writer failed"),
        }
    }
}
