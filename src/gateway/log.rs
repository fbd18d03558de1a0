//! The JSON access log: one line per request on stdout (where container
//! runtimes collect it; the proxy's own logs go to stderr), written by a
//! thread of its own so a slow reader never blocks a request. Lines are
//! queued up to [`QUEUE`]; past that they are dropped and counted
//! (`mesh_gateway_access_log_dropped_total`), as Envoy's buffered file
//! sink does, rather than slowing the edge down.

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
    pub client: String,
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
    /// The response's declared length (`null`: streamed without one).
    pub bytes: Option<u64>,
    /// To the response headers, in milliseconds.
    pub duration_ms: f64,
    /// The `x-mesh-error` reason when the mesh answered itself (named
    /// for the header: a `mesh_` name in the docs is a metric's).
    pub x_mesh_error: Option<&'a str>,
    pub user_agent: Option<&'a str>,
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
