//! The watch stream (`GET /v1/watch?since=REV`): NDJSON `WatchEvent` lines.
//!
//! A snapshot or the missed changes come first, then every change as it is
//! committed, and a keep-alive line whenever the stream has been quiet for
//! the keep-alive interval, so a client notices a dead stream by silence.
//! A watcher too slow for the broadcast buffer is caught up from its last
//! revision: from the change log if it still reaches back, else by a
//! snapshot. The stream ends when the server shuts down.

use crate::control::proxies::Connection;
use crate::control::registry::{encode, Change, Registry};
use crate::model::WatchEvent;
use axum::body::Body;
use bytes::Bytes;
use futures_util::stream;
use prometheus_client::metrics::gauge::Gauge;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, watch};
use tokio::time::{sleep_until, Instant};

/// One open watch stream.
struct Watcher {
    registry: Arc<Registry>,
    /// Lines ready to go out before anything new is received.
    pending: VecDeque<Bytes>,
    /// Committed changes, in revision order.
    rx: broadcast::Receiver<Change>,
    /// The last revision this watcher has been given (keep-alives carry it).
    revision: u64,
    keepalive: Duration,
    /// When the last line went out; the keep-alive timer counts from here.
    last_sent: Instant,
    /// Flips to true on server shutdown, ending the stream so a graceful
    /// shutdown does not wait forever on it.
    shutdown: watch::Receiver<bool>,
    /// Decrements the watchers gauge when the stream is dropped.
    _guard: WatcherGuard,
    /// A proxy's entry in the proxies table, for as long as it watches.
    _connection: Option<Connection>,
}

struct WatcherGuard(Gauge);

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The response body of one watch request.
pub fn watch_body(
    registry: Arc<Registry>,
    since: u64,
    keepalive: Duration,
    shutdown: watch::Receiver<bool>,
    watchers: Gauge,
    connection: Option<Connection>,
) -> Body {
    let sub = registry.subscribe(since);
    watchers.inc();
    let watcher = Watcher {
        registry,
        pending: sub.backlog.into(),
        rx: sub.rx,
        revision: sub.revision,
        keepalive,
        last_sent: Instant::now(),
        shutdown,
        _guard: WatcherGuard(watchers),
        _connection: connection,
    };
    let lines = stream::unfold(watcher, |mut w| async move {
        let line = w.next_line().await?;
        Some((Ok::<_, Infallible>(line), w))
    });
    Body::from_stream(lines)
}

// === impl Watcher ===

impl Watcher {
    /// The next line to send, or `None` to end the stream.
    async fn next_line(&mut self) -> Option<Bytes> {
        // Each turn either returns or consumes a stale/lag notice from the
        // broadcast, which is finite; the bound is a backstop.
        for _ in 0..1_000_000 {
            if *self.shutdown.borrow() {
                return None;
            }
            if let Some(line) = self.pending.pop_front() {
                self.last_sent = Instant::now();
                return Some(line);
            }
            let deadline = self.last_sent + self.keepalive;
            tokio::select! {
                biased;
                _ = self.shutdown.changed() => {
                    // Sender gone means the server is gone too.
                    return None;
                }
                recv = self.rx.recv() => match recv {
                    Ok(change) if change.revision <= self.revision => continue,
                    Ok(change) => {
                        self.revision = change.revision;
                        self.last_sent = Instant::now();
                        return Some(change.line);
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::debug!(missed, revision = self.revision, "watcher lagged; catching up");
                        let sub = self.registry.subscribe(self.revision);
                        self.rx = sub.rx;
                        self.pending.extend(sub.backlog);
                        self.revision = sub.revision;
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                _ = sleep_until(deadline) => {
                    self.last_sent = Instant::now();
                    return Some(encode(&WatchEvent::Keepalive { revision: self.revision }));
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::registry::RegistrySettings;
    use crate::control::store::Store;
    use crate::model::RegisterRequest;
    use futures_util::StreamExt;

    fn registry(dir: &std::path::Path, change_log_capacity: usize) -> Arc<Registry> {
        let settings = RegistrySettings {
            change_log_capacity,
            broadcast_capacity: 2,
            ..RegistrySettings::default()
        };
        let store = Store::open(dir).unwrap();
        Arc::new(Registry::open(store, "127.100.0.0/16".parse().unwrap(), settings).unwrap())
    }

    fn register(reg: &Registry, port: u16) {
        let doc = serde_json::json!({"address": "127.0.0.2", "port": port});
        reg.register("web", RegisterRequest::from_json(&doc).unwrap())
            .unwrap();
    }

    /// Opens a stream at the current revision, then commits 10 changes
    /// before reading anything: the broadcast (capacity 2) overflows.
    async fn lagged_lines(change_log_capacity: usize) -> Vec<WatchEvent> {
        let dir = tempfile::tempdir().unwrap();
        let reg = registry(dir.path(), change_log_capacity);
        register(&reg, 1);
        let (_stop, shutdown) = watch::channel(false);
        let body = watch_body(
            reg.clone(),
            1,
            Duration::from_secs(60),
            shutdown,
            Gauge::default(),
            None,
        );
        let mut stream = body.into_data_stream();
        for port in 2..=11 {
            register(&reg, port);
        }
        let mut out = Vec::new();
        while out.last().map(WatchEvent::revision) != Some(11) {
            let frame = stream.next().await.unwrap().unwrap();
            out.push(serde_json::from_slice(&frame).unwrap());
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn lagging_watcher_gets_a_snapshot_when_the_log_is_short() {
        match lagged_lines(2).await.as_slice() {
            [WatchEvent::Snapshot { snapshot }] => {
                assert_eq!(snapshot.revision, 11);
                assert_eq!(snapshot.services[0].instances.len(), 11);
            }
            other => panic!("expected one snapshot, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn lagging_watcher_catches_up_from_the_log() {
        let revs: Vec<u64> = lagged_lines(100)
            .await
            .iter()
            .map(WatchEvent::revision)
            .collect();
        assert_eq!(
            revs,
            (2..=11).collect::<Vec<_>>(),
            "every change once, in order"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_the_stream_and_the_gauge_follows() {
        let dir = tempfile::tempdir().unwrap();
        let reg = registry(dir.path(), 10);
        let (stop, shutdown) = watch::channel(false);
        let gauge = Gauge::default();
        let mut stream = watch_body(
            reg,
            0,
            Duration::from_secs(60),
            shutdown,
            gauge.clone(),
            None,
        )
        .into_data_stream();
        assert_eq!(gauge.get(), 1);
        assert!(stream.next().await.is_some(), "snapshot first");
        stop.send(true).unwrap();
        assert!(stream.next().await.is_none());
        drop(stream);
        assert_eq!(gauge.get(), 0);
    }
}
