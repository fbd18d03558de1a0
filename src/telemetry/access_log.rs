//! The JSON access log: one line per request on stdout (where container
//! runtimes collect it; the proxy's own logs go to stderr), written by a
//! thread of its own so a slow reader never blocks a request. Lines are
//! queued up to [`QUEUE`]; past that they are dropped and counted
//! (`mesh_access_log_dropped_total`), as Envoy's buffered file sink does,
//! rather than slowing requests down.
//!
//! One format for both writers: the gateway (a line per edge request, with
//! its route) and a sidecar's outbound side (a line per call to a mesh
//! service, with `--access-log json` or the service's `accessLog: true`;
//! those lines also carry `caller` and `attempts`).

use prometheus_client::metrics::counter::Counter;
use serde::Serialize;
use std::io::Write;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::time::SystemTime;

/// Lines waiting for the writer.
const QUEUE: usize = 16 * 1024;

/// One request, as logged.
#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    /// RFC 3339, UTC, milliseconds: when the request arrived.
    pub time: String,
    pub request_id: &'a str,
    pub trace_id: Option<&'a str>,
    /// The client's address (gateway lines).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// The calling service (sidecar lines).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller: Option<&'a str>,
    pub method: &'a str,
    pub host: &'a str,
    /// As the client sent it, query included.
    pub path: &'a str,
    pub protocol: &'static str,
    pub route: Option<&'a str>,
    pub rule: Option<&'a str>,
    pub upstream_service: Option<&'a str>,
    pub upstream_endpoint: Option<String>,
    pub status: u16,
    /// Tries sent, the first and the retries (sidecar lines).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// The response's declared length (`null`: streamed without one).
    pub bytes: Option<u64>,
    /// To the response headers, in milliseconds.
    pub duration_ms: f64,
    /// The `x-mesh-error` reason when the mesh answered itself (named
    /// for the header: a `mesh_` name in the docs is a metric's).
    pub x_mesh_error: Option<&'a str>,
    pub user_agent: Option<&'a str>,
}

/// What a log line shows of a request, taken before the request is
/// changed and sent on.
pub struct Seen {
    pub method: String,
    pub host: String,
    pub path: String,
    pub protocol: &'static str,
    pub user_agent: Option<String>,
    pub trace_id: Option<String>,
    pub request_id: Option<String>,
}

impl Seen {
    /// `req` as it arrived, for `host` (how the writer names it).
    pub fn of<B>(req: &http::Request<B>, host: String) -> Seen {
        let h = req.headers();
        let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        Seen {
            method: req.method().to_string(),
            host,
            path: req
                .uri()
                .path_and_query()
                .map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
            protocol: match req.version() {
                http::Version::HTTP_2 => "HTTP/2",
                http::Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
            user_agent: text("user-agent"),
            trace_id: text("traceparent").and_then(|v| v.get(3..35).map(str::to_owned)),
            request_id: text("x-request-id"),
        }
    }
}

/// The log's sending side.
#[derive(Clone)]
pub struct AccessLog {
    tx: SyncSender<Vec<u8>>,
    dropped: Counter,
}

impl AccessLog {
    /// Starts the writer thread (it ends when every sender is dropped).
    pub fn stdout(dropped: Counter) -> std::io::Result<AccessLog> {
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(&rx, std::io::stdout().lock()))?;
        Ok(AccessLog { tx, dropped })
    }

    pub fn write(&self, entry: &Entry<'_>) {
        // Strings, numbers and options always serialise.
        let mut line = serde_json::to_vec(entry).unwrap_or_default();
        line.push(b'\n');
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.inc();
            }
        }
    }
}

/// A sidecar's access log: every call to a mesh service (`--access-log
/// json`), or only those to services whose policy says `accessLog: true`.
/// The writer thread starts on the first line.
pub struct OutboundLog {
    all: bool,
    dropped: Counter,
    log: std::sync::OnceLock<Option<AccessLog>>,
}

impl OutboundLog {
    pub fn new(all: bool, dropped: Counter) -> OutboundLog {
        OutboundLog {
            all,
            dropped,
            log: std::sync::OnceLock::new(),
        }
    }

    /// The log to write a call to a service with `policy_on` to, if any.
    pub fn for_service(&self, policy_on: bool) -> Option<&AccessLog> {
        if !(self.all || policy_on) {
            return None;
        }
        self.log
            .get_or_init(|| {
                AccessLog::stdout(self.dropped.clone())
                    .inspect_err(|e| tracing::warn!(error = %e, "cannot start the access log"))
                    .ok()
            })
            .as_ref()
    }
}

/// Writes lines as they come, flushing whenever the queue is empty (one
/// write per burst, not per line).
fn write_lines(rx: &Receiver<Vec<u8>>, out: impl Write) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    while let Ok(line) = rx.recv() {
        if out.write_all(&line).is_err() {
            return;
        }
        while let Ok(more) = rx.try_recv() {
            if out.write_all(&more).is_err() {
                return;
            }
        }
        if out.flush().is_err() {
            return;
        }
    }
}

/// `2026-12-02T05:41:07.123Z`.
pub fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = i64::try_from(d.as_secs()).unwrap_or(0);
    let dt =
        time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        dt.year(),
        u8::from(dt.month()),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second(),
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn lines_are_written_whole_and_flushed() {
        let (tx, rx) = sync_channel(4);
        tx.send(b"{\"a\":1}\n".to_vec()).unwrap();
        tx.send(b"{\"b\":2}\n".to_vec()).unwrap();
        drop(tx);
        let mut out = Vec::new();
        write_lines(&rx, &mut out);
        assert_eq!(out, b"{\"a\":1}\n{\"b\":2}\n");
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_654_067_123);
        assert_eq!(timestamp(t), "2025-12-02T05:41:07.123Z");
    }
}
