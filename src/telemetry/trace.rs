//! Spans of the requests a proxy carries, exported over OTLP/HTTP
//! (protobuf) to `--otlp-endpoint`.
//!
//! Every request already carries a W3C `traceparent` (the proxy starts
//! one when none came, `proxy::headers::ensure_traceparent`). With an
//! exporter configured, a proxy records:
//!
//! - a **client span** per call to a mesh service (`Services::call`, so
//!   the sidecar's outbound side and the gateway alike): service,
//!   endpoint, status, retries, breaker state, the peer's identity;
//! - a **server span** per request its inbound side hands to the app:
//!   caller, status.
//!
//! Each rewrites the `traceparent` it forwards so the next hop's parent is
//! its own span: the app sees the server span as its parent, and the
//! callee's server span has the caller's client span as its parent.
//!
//! Sampling follows the trace: a `traceparent` whose sampled flag is set
//! is recorded (and its flag kept), one without it is not; a trace this
//! proxy starts is sampled with probability `--trace-sample` (changeable
//! live through `PUT /trace-sample` on the admin port, loopback only).
//!
//! Export: finished spans go to a bounded queue ([`MAX_QUEUED`]; a span
//! past it is dropped and counted, never blocking a request); one task
//! sends them in batches of up to [`BATCH`] at least every
//! [`EXPORT_EVERY`]. A batch the collector does not take is dropped and
//! counted too (spans are not worth unbounded memory); the exporter backs
//! off while the collector is away.

use crate::control::client::Fetcher;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Uri};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use prometheus_client::metrics::counter::Counter;
use prost::Message;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Finished spans held for export at most.
pub const MAX_QUEUED: usize = 4096;
/// Spans per export request at most.
pub const BATCH: usize = 512;
/// A span waits for export at most about this long.
pub const EXPORT_EVERY: Duration = Duration::from_secs(1);
/// One export request's bound.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

const TRACEPARENT: &str = "traceparent";

/// Which side of a call a span is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Client,
    Server,
}

/// A span begun and not yet finished.
#[derive(Clone, Debug)]
pub struct Started {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// `None`: this proxy started the trace (a root span).
    pub parent: Option<[u8; 8]>,
    kind: Kind,
    start_nanos: u64,
}

/// What a finished span says.
pub enum Attr {
    Str(&'static str, String),
    Int(&'static str, i64),
}

/// The tracer of one proxy: sampling, the queue, the counters.
pub struct Tracer {
    /// `--trace-sample` as f64 bits.
    sample: AtomicU64,
    queue: Mutex<Vec<Span>>,
    wake: Notify,
    /// `service.name` of the resource every span is sent under.
    service: String,
    pub dropped: Counter,
    pub exported: Counter,
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn hex_byte(pair: &[u8]) -> Option<u8> {
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    Some(digit(pair[0])? << 4 | digit(pair[1])?)
}

fn unhex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = hex_byte(&s[2 * i..2 * i + 2])?;
    }
    Some(out)
}

/// `(trace id, parent id, flags)` of a valid version-00 `traceparent`.
pub fn parse_traceparent(v: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    Some((unhex(&v[3..35])?, unhex(&v[36..52])?, hex_byte(&v[53..55])?))
}

fn write_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 0xf)]);
    }
}

/// `00-<trace>-<span>-<flags>`.
pub fn format_traceparent(trace: &[u8; 16], span: &[u8; 8], flags: u8) -> HeaderValue {
    let mut out = Vec::with_capacity(55);
    out.extend_from_slice(b"00-");
    write_hex(&mut out, trace);
    out.push(b'-');
    write_hex(&mut out, span);
    out.push(b'-');
    write_hex(&mut out, &[flags]);
    // Lowercase hex and dashes: always a valid header value.
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The hex form of an id (what apps and collectors print).
pub fn hex(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len() * 2);
    write_hex(&mut out, bytes);
    String::from_utf8(out).unwrap_or_default()
}

impl Tracer {
    /// A tracer for spans of `service`, counting into `metrics`.
    pub fn new(service: &str, sample: f64, metrics: &super::ProxyMetrics) -> Tracer {
        Tracer {
            sample: AtomicU64::new(sample.clamp(0.0, 1.0).to_bits()),
            queue: Mutex::new(Vec::new()),
            wake: Notify::new(),
            service: service.to_string(),
            dropped: metrics.spans_dropped.clone(),
            exported: metrics.spans_exported.clone(),
        }
    }

    /// The ratio of traces this proxy starts that are recorded.
    pub fn sample(&self) -> f64 {
        f64::from_bits(self.sample.load(Ordering::Relaxed))
    }

    pub fn set_sample(&self, ratio: f64) {
        self.sample
            .store(ratio.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
    }

    /// Begins a span for the request whose (valid) `traceparent` is in
    /// `headers`, `fresh` when this proxy just started that trace. When
    /// the trace is recorded the header is rewritten to name this span as
    /// the parent (and to carry the sampled flag); otherwise nothing
    /// changes and `None` comes back.
    pub fn begin(&self, headers: &mut HeaderMap, fresh: bool, kind: Kind) -> Option<Started> {
        let (trace_id, parent, mut flags) =
            parse_traceparent(headers.get(TRACEPARENT)?.as_bytes())?;
        if flags & 1 == 0 {
            let ratio = self.sample();
            if !fresh || !(ratio >= 1.0 || (ratio > 0.0 && fastrand::f64() < ratio)) {
                return None;
            }
            flags |= 1;
        }
        let span_id = (fastrand::u64(..) | 1).to_be_bytes();
        headers.insert(TRACEPARENT, format_traceparent(&trace_id, &span_id, flags));
        Some(Started {
            trace_id,
            span_id,
            parent: (!fresh).then_some(parent),
            kind,
            start_nanos: unix_nanos(),
        })
    }

    /// Finishes `s` as `name` with `status` (an error span at 5xx) and
    /// queues it; dropped and counted when the queue is full.
    pub fn finish(&self, s: Started, name: String, status: u16, attrs: Vec<Attr>) {
        let mut attributes: Vec<KeyValue> = attrs
            .into_iter()
            .map(|a| {
                let (key, value) = match a {
                    Attr::Str(k, v) => (k, any_value::Value::StringValue(v)),
                    Attr::Int(k, v) => (k, any_value::Value::IntValue(v)),
                };
                KeyValue {
                    key: key.to_string(),
                    value: Some(AnyValue { value: Some(value) }),
                    ..KeyValue::default()
                }
            })
            .collect();
        attributes.push(KeyValue {
            key: "http.response.status_code".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::IntValue(i64::from(status))),
            }),
            ..KeyValue::default()
        });
        let span = Span {
            trace_id: s.trace_id.to_vec(),
            span_id: s.span_id.to_vec(),
            parent_span_id: s.parent.map(|p| p.to_vec()).unwrap_or_default(),
            name,
            kind: match s.kind {
                Kind::Client => span::SpanKind::Client,
                Kind::Server => span::SpanKind::Server,
            } as i32,
            start_time_unix_nano: s.start_nanos,
            end_time_unix_nano: unix_nanos().max(s.start_nanos),
            attributes,
            status: Some(Status {
                code: if status >= 500 {
                    status::StatusCode::Error
                } else {
                    status::StatusCode::Unset
                } as i32,
                ..Status::default()
            }),
            ..Span::default()
        };
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= MAX_QUEUED {
            drop(q);
            self.dropped.inc();
            return;
        }
        q.push(span);
        let full = q.len() >= BATCH;
        drop(q);
        if full {
            self.wake.notify_one();
        }
    }

    /// Up to [`BATCH`] queued spans, oldest first.
    fn take(&self) -> Vec<Span> {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let n = q.len().min(BATCH);
        q.drain(..n).collect()
    }

    /// One export request's body for `spans`.
    fn encode(&self, spans: Vec<Span>) -> Bytes {
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![KeyValue {
                        key: "service.name".into(),
                        value: Some(AnyValue {
                            value: Some(any_value::Value::StringValue(self.service.clone())),
                        }),
                        ..KeyValue::default()
                    }],
                    ..Resource::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "mesh-proxy".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..InstrumentationScope::default()
                    }),
                    spans,
                    ..ScopeSpans::default()
                }],
                ..ResourceSpans::default()
            }],
        };
        Bytes::from(req.encode_to_vec())
    }
}

/// Sends `tracer`'s spans to `endpoint` (the collector's base URL; spans
/// go to `/v1/traces`) until `stop`, then once more.
pub async fn export(tracer: Arc<Tracer>, endpoint: Uri, fetch: Fetcher, stop: CancellationToken) {
    let url = traces_url(&endpoint);
    // Doubles while the collector fails, up to 30 s.
    let mut failing = EXPORT_EVERY;
    let mut pause = EXPORT_EVERY;
    let mut warned = false;
    loop {
        let stopping = tokio::select! {
            () = tokio::time::sleep(pause) => false,
            () = tracer.wake.notified() => false,
            () = stop.cancelled() => true,
        };
        pause = EXPORT_EVERY;
        loop {
            let batch = tracer.take();
            if batch.is_empty() {
                break;
            }
            let n = batch.len() as u64;
            let body = tracer.encode(batch);
            let sent = fetch
                .post(
                    &url,
                    "application/x-protobuf",
                    body,
                    64 * 1024,
                    EXPORT_TIMEOUT,
                )
                .await;
            match sent {
                Ok(_) => {
                    tracer.exported.inc_by(n);
                    failing = EXPORT_EVERY;
                    warned = false;
                }
                Err(e) => {
                    tracer.dropped.inc_by(n);
                    if !warned {
                        tracing::warn!(endpoint = %url, error = %e, spans = n, "cannot export spans; dropping them while the collector is away");
                        warned = true;
                    }
                    failing = (failing * 2).min(Duration::from_secs(30));
                    pause = failing;
                    break;
                }
            }
        }
        if stopping {
            return;
        }
    }
}

/// `BASE/v1/traces` (OTLP/HTTP's path), unless the URL names a path.
fn traces_url(endpoint: &Uri) -> Uri {
    if endpoint.path() != "/" && !endpoint.path().is_empty() {
        return endpoint.clone();
    }
    let text = format!("{}/v1/traces", endpoint.to_string().trim_end_matches('/'));
    text.parse().unwrap_or_else(|_| endpoint.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn a_sampled_trace_is_continued_with_this_span_as_the_parent() {
        let t = Tracer::new("web", 0.0, &super::super::ProxyMetrics::new());
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static(PARENT));
        let s = t
            .begin(&mut h, false, Kind::Client)
            .expect("sampled upstream");
        assert_eq!(hex(&s.trace_id), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(
            s.parent.map(|p| hex(&p)).as_deref(),
            Some("b7ad6b7169203331")
        );
        let sent = h[TRACEPARENT].to_str().unwrap();
        assert_eq!(
            sent,
            format!("00-0af7651916cd43dd8448eb211c80319c-{}-01", hex(&s.span_id))
        );
        t.finish(
            s,
            "GET orders".into(),
            200,
            vec![Attr::Int("mesh.retries", 1)],
        );
        let spans = t.take();
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].kind, span::SpanKind::Client as i32);
        assert_eq!(hex(&spans[0].parent_span_id), "b7ad6b7169203331");
        let body = t.encode(spans);
        let back = ExportTraceServiceRequest::decode(body).unwrap();
        assert_eq!(
            back.resource_spans[0].scope_spans[0].spans[0].name,
            "GET orders"
        );
    }

    #[test]
    fn unsampled_traces_are_left_alone_and_fresh_ones_follow_the_ratio() {
        let t = Tracer::new("web", 1.0, &super::super::ProxyMetrics::new());
        let unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static(unsampled));
        assert!(
            t.begin(&mut h, false, Kind::Server).is_none(),
            "the caller said no"
        );
        assert_eq!(h[TRACEPARENT], unsampled, "untouched");
        let s = t
            .begin(&mut h, true, Kind::Server)
            .expect("a fresh trace at ratio 1");
        assert!(s.parent.is_none(), "a root span");
        assert!(h[TRACEPARENT].to_str().unwrap().ends_with("-01"));
        t.set_sample(0.0);
        h.insert(TRACEPARENT, HeaderValue::from_static(unsampled));
        assert!(t.begin(&mut h, true, Kind::Server).is_none());
    }

    #[test]
    fn the_queue_is_bounded_and_counts_what_it_drops() {
        let t = Tracer::new("web", 1.0, &super::super::ProxyMetrics::new());
        let mut h = HeaderMap::new();
        for _ in 0..MAX_QUEUED + 5 {
            h.insert(TRACEPARENT, HeaderValue::from_static(PARENT));
            let s = t.begin(&mut h, false, Kind::Client).unwrap();
            t.finish(s, "x".into(), 503, Vec::new());
        }
        assert_eq!(t.dropped.get(), 5);
        assert_eq!(t.take().len(), BATCH);
        assert_eq!(
            traces_url(&"http://127.0.0.1:4318".parse().unwrap()),
            "http://127.0.0.1:4318/v1/traces"
        );
    }
}
