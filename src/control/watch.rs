//! The watch stream (`GET /v1/watch?since=REV`): NDJSON `WatchEvent` lines.
//!
//! A snapshot or the missed changes come first, then every change as it is
//! committed, and a keep-alive line whenever the stream has been quiet for
//! the keep-alive interval, so a client notices a dead stream by silence.
//! A watcher too slow for the broadcast buffer is caught up from its last
//! revision: from the change log if it still reaches back, else by a
//! snapshot. The stream ends when the server shuts down.

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
