//! The client side of `GET /v1/watch`: NDJSON events, one per line.
//!
//! A watch has no overall deadline (it is meant to stay open), so the only
//! clock is the idle timeout: the server sends a keep-alive line every few
//! seconds, and a stream that stays silent longer than the caller's
//! `idle_timeout` is declared dead so the caller can reconnect.

use super::lines::LineSplitter;
use super::ClientError;
use crate::model::WatchEvent;
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use std::time::Duration;

/// Errors the body of a watch response can produce.
pub(super) type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// An open watch stream; read it with [`WatchStream::next`].
pub struct WatchStream {
    /// The response body, frame by frame.
    body: UnsyncBoxBody<Bytes, BodyError>,
    /// Reassembles lines that frames cut apart.
    lines: LineSplitter,
    /// Longest silence tolerated between two lines.
    idle_timeout: Duration,
    /// The replica's URL, for error messages and failover.
    url: String,
    /// Set once the body ended, so later calls keep answering `Ok(None)`.
    done: bool,
}

impl WatchStream {
    pub(super) fn new(
        body: UnsyncBoxBody<Bytes, BodyError>,
        idle_timeout: Duration,
        url: String,
    ) -> Self {
        WatchStream {
            body,
            lines: LineSplitter::default(),
            idle_timeout,
            url,
            done: false,
        }
    }

    /// The replica this stream came from (for
    /// [`ControlClient::fail_over`](super::ControlClient::fail_over) when
    /// it is lost).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The next event; `Ok(None)` once the server ended the stream cleanly,
    /// `Err(IdleTimeout)` if no line arrived within the idle timeout.
    pub async fn next(&mut self) -> Result<Option<WatchEvent>, ClientError> {
        match self.next_line().await? {
            Some(line) => parse(&line).map(Some),
            None => Ok(None),
        }
    }

    /// The next line as it came (the same stream shape serves `GET
    /// /v1/tap/{service}`), with [`next`](Self::next)'s endings.
    pub async fn next_line(&mut self) -> Result<Option<Bytes>, ClientError> {
        let deadline = tokio::time::Instant::now() + self.idle_timeout;
        loop {
            let line = self
                .lines
                .next_line()
                .map_err(|e| ClientError::Decode(format!("watch stream: {e}")))?;
            if let Some(line) = line {
                return Ok(Some(line));
            }
            if self.done {
                return Ok(None);
            }
            let frame = match tokio::time::timeout_at(deadline, self.body.frame()).await {
                Err(_) => return Err(ClientError::IdleTimeout),
                Ok(frame) => frame,
            };
            match frame {
                Some(Ok(frame)) => {
                    // Trailers carry no events; only data frames matter.
                    if let Ok(data) = frame.into_data() {
                        self.lines.push(&data);
                    }
                }
                Some(Err(e)) => {
                    return Err(ClientError::unreachable(
                        &self.url,
                        std::io::Error::other(format!("watch stream broke: {e}")),
                    ))
                }
                None => {
                    self.done = true;
                    return Ok(self.lines.finish());
                }
            }
        }
    }
}

/// How mesh-control starts a snapshot line (the tag first, as serde
/// writes an internally tagged enum).
const SNAPSHOT_LINE: &[u8] = br#"{"type":"snapshot","#;

/// A snapshot line read as a plain struct.
#[derive(serde::Deserialize)]
struct SnapshotLine {
    snapshot: crate::model::Snapshot,
}

fn parse(line: &[u8]) -> Result<WatchEvent, ClientError> {
    // serde reads an internally tagged enum through a buffered copy of the
    // whole value; for a snapshot of 10 000 services that copy is tens of
    // megabytes of small allocations, which the allocator keeps as
    // resident memory long after. Read as a struct, it streams.
    if line.starts_with(SNAPSHOT_LINE) {
        if let Ok(l) = serde_json::from_slice::<SnapshotLine>(line) {
            return Ok(WatchEvent::Snapshot {
                snapshot: l.snapshot,
            });
        }
    }
    serde_json::from_slice(line).map_err(|e| {
        let shown = String::from_utf8_lossy(&line[..line.len().min(120)]).into_owned();
        ClientError::Decode(format!("watch event {shown:?}: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    use tokio::sync::mpsc;

    fn stream(idle: Duration) -> (mpsc::Sender<Result<Frame<Bytes>, BodyError>>, WatchStream) {
        let (tx, rx) = mpsc::channel(16);
        let rx = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let body = UnsyncBoxBody::new(StreamBody::new(rx));
        (
            tx,
            WatchStream::new(body, idle, "http://127.0.0.1:1".into()),
        )
    }

    async fn send(tx: &mpsc::Sender<Result<Frame<Bytes>, BodyError>>, s: &str) {
        tx.send(Ok(Frame::data(Bytes::copy_from_slice(s.as_bytes()))))
            .await
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn events_across_frames_then_eof() {
        let (tx, mut w) = stream(Duration::from_secs(15));
        send(
            &tx,
            "{\"type\":\"keepalive\",\"revision\":1}\n{\"type\":\"keep",
        )
        .await;
        send(
            &tx,
            "alive\",\"revision\":2}\n\n{\"type\":\"remove\",\"revision\":3,",
        )
        .await;
        send(
            &tx,
            "\"service\":\"a\",\"id\":\"x\",\"reason\":\"lease-expired\"}",
        )
        .await;
        drop(tx);
        let revs: Vec<u64> = [
            w.next().await.unwrap().unwrap(),
            w.next().await.unwrap().unwrap(),
            w.next().await.unwrap().unwrap(),
        ]
        .iter()
        .map(WatchEvent::revision)
        .collect();
        assert_eq!(revs, [1, 2, 3]);
        assert_eq!(w.next().await.unwrap(), None);
        assert_eq!(w.next().await.unwrap(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn silence_is_an_idle_timeout() {
        let (tx, mut w) = stream(Duration::from_secs(15));
        send(&tx, "{\"type\":\"keepalive\",\"revision\":7}\n{\"type\"").await;
        assert_eq!(w.next().await.unwrap().map(|e| e.revision()), Some(7));
        let started = tokio::time::Instant::now();
        assert!(matches!(w.next().await, Err(ClientError::IdleTimeout)));
        assert_eq!(started.elapsed(), Duration::from_secs(15));
    }

    #[tokio::test(start_paused = true)]
    async fn garbage_and_errors_are_reported() {
        let (tx, mut w) = stream(Duration::from_secs(15));
        send(&tx, "not json\n").await;
        assert!(matches!(w.next().await, Err(ClientError::Decode(_))));
        tx.send(Err("reset".into())).await.unwrap();
        let err = w.next().await.unwrap_err();
        assert!(err.to_string().contains("reset"), "{err}");
    }
}

#[cfg(test)]
mod snapshot_line_tests {
    use super::*;
    use crate::model::{ServiceInfo, Snapshot};

    #[test]
    fn a_snapshot_line_streams_and_equals_the_enum_reading() {
        let ev = WatchEvent::Snapshot {
            snapshot: Snapshot {
                revision: 7,
                services: vec![ServiceInfo {
                    name: "hello".into(),
                    vip: "127.100.0.1".parse().unwrap(),
                    instances: vec![],
                }],
                ..Default::default()
            },
        };
        let line = serde_json::to_vec(&ev).unwrap();
        assert!(line.starts_with(SNAPSHOT_LINE), "the tag is written first");
        assert_eq!(parse(&line).unwrap(), ev);
        let generic: WatchEvent = serde_json::from_slice(&line).unwrap();
        assert_eq!(generic, ev);
    }
}
