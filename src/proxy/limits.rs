//! Every bound a listener puts on what one client may send or hold, in
//! one place: the outbound and inbound listeners (and the gateway after
//! them) read these values and nothing else.
//!
//! Most bounds are enforced by hyper once configured here (header size and
//! count → 431, malformed framing → 400, the HTTP/2 settings). What hyper
//! accepts but a strict proxy must not forward is checked by
//! [`check_request`] before a request reaches any handler; what hyper
//! cannot see (a slow or idle client, too many connections) is the
//! connection watchdog's and the admission's, in `server` and `admission`.
//!
//! Defaults follow the field: Envoy and nginx stop request headers at
//! 60–64 KiB and 100 fields; nginx answers a request line past its buffer
//! with 414; Go's http2 server allows 250 concurrent streams.

use crate::proxy::rescue::MeshError;
use clap::builder::TypedValueParser;
use clap::Args;
use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{Request, Version};
use std::time::Duration;

/// `mesh-proxy` flags for [`Limits`]; defaults are the constants below.
#[derive(Args, Clone, Debug)]
pub struct LimitArgs {
    /// Largest HTTP/1 request head (request line and headers) and HTTP/2
    /// header list a client may send; beyond it, 431 and the connection
    /// closes. Bytes, or with a KiB/MiB suffix.
    #[arg(long, env = "MESH_MAX_HEADER_BYTES", default_value = "64KiB", value_parser = parse_bytes)]
    pub max_header_bytes: usize,
    /// Most header fields in one HTTP/1 request; beyond it, 431.
    #[arg(long, env = "MESH_MAX_HEADERS", default_value_t = DEFAULT_MAX_HEADERS, value_parser = clap::value_parser!(u16).range(1..).map(usize::from))]
    pub max_headers: usize,
    /// Longest request target (the URI of the request line, or `:path`);
    /// beyond it, 414. Bytes, or with a KiB suffix.
    #[arg(long, env = "MESH_MAX_REQUEST_LINE", default_value = "16KiB", value_parser = parse_bytes)]
    pub max_request_line: usize,
    /// How long a client may take to send a request's headers, from its
    /// first byte (or from its connection, for the first request); past
    /// it, the connection closes. Slow-header (slowloris) clients end here.
    #[arg(long, env = "MESH_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = crate::model::parse_duration)]
    pub header_read_timeout: Duration,
    /// How long a client connection may sit idle between requests (HTTP/1
    /// keep-alive, HTTP/2 without streams) before it is closed (HTTP/2:
    /// GOAWAY first).
    #[arg(long, env = "MESH_IDLE_TIMEOUT", default_value = "5m", value_parser = crate::model::parse_duration)]
    pub idle_timeout: Duration,
    /// Connections each listener (outbound, inbound) holds at once; one
    /// more is closed at accept (a reset) and counted in
    /// `mesh_listener_refused_total{reason="connection-limit"}`.
    #[arg(long, env = "MESH_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS, value_parser = clap::value_parser!(u32).range(1..).map(|v| v as usize))]
    pub max_connections: usize,
    /// Concurrent streams one HTTP/2 client connection may open
    /// (SETTINGS_MAX_CONCURRENT_STREAMS).
    #[arg(long, env = "MESH_H2_MAX_CONCURRENT_STREAMS", default_value_t = DEFAULT_H2_MAX_STREAMS, value_parser = clap::value_parser!(u32).range(1..))]
    pub h2_max_concurrent_streams: u32,
    /// Resident memory at which new connections are refused (established
    /// ones keep working) until it falls below 95 % of it; e.g. 90 % of
    /// the container's limit. Unset: no memory bound. New connections are
    /// also refused at 95 % of the descriptor limit (`ulimit -n`).
    #[arg(long, env = "MESH_MAX_MEMORY", value_parser = parse_bytes)]
    pub max_memory: Option<usize>,
}

pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
pub const DEFAULT_MAX_HEADERS: usize = 100;
pub const DEFAULT_MAX_REQUEST_LINE: usize = 16 * 1024;
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
pub const DEFAULT_H2_MAX_STREAMS: u32 = 250;

/// The bounds in force on a listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_request_line: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub h2: H2Limits,
}

/// HTTP/2 settings written down rather than left to library defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct H2Limits {
    /// SETTINGS_MAX_CONCURRENT_STREAMS.
    pub max_concurrent_streams: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE; also what bounds a HEADERS frame
    /// and its CONTINUATION frames together (h2 counts the decoded list
    /// as the frames arrive, and gives up past it: the CONTINUATION flood
    /// of CVE-2024-27316 ends there).
    pub max_header_list_size: u32,
    /// Streams a client may open and reset before they are accepted
    /// (rapid reset, CVE-2023-44487): past it, GOAWAY.
    pub max_pending_accept_reset_streams: usize,
    /// Streams the proxy may have to reset for a client's protocol errors
    /// before it ends the connection.
    pub max_local_error_reset_streams: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            max_request_line: DEFAULT_MAX_REQUEST_LINE,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            h2: H2Limits::for_headers(DEFAULT_MAX_HEADER_BYTES, DEFAULT_H2_MAX_STREAMS),
        }
    }
}

impl H2Limits {
    fn for_headers(max_header_bytes: usize, max_concurrent_streams: u32) -> Self {
        H2Limits {
            max_concurrent_streams,
            max_header_list_size: u32::try_from(max_header_bytes).unwrap_or(u32::MAX),
            // h2's own defaults, made explicit.
            max_pending_accept_reset_streams: 20,
            max_local_error_reset_streams: 1024,
        }
    }
}

impl From<&LimitArgs> for Limits {
    fn from(a: &LimitArgs) -> Self {
        // hyper needs room for at least its minimum read buffer.
        let max_header_bytes = a.max_header_bytes.max(MIN_HEADER_BYTES);
        Limits {
            max_header_bytes,
            max_headers: a.max_headers,
            max_request_line: a.max_request_line,
            header_read_timeout: a.header_read_timeout,
            idle_timeout: a.idle_timeout,
            max_connections: a.max_connections,
            h2: H2Limits::for_headers(max_header_bytes, a.h2_max_concurrent_streams),
        }
    }
}

/// hyper's smallest HTTP/1 read buffer.
pub const MIN_HEADER_BYTES: usize = 8192;

impl Limits {
    /// hyper's HTTP/1 read buffer: a head up to the limit must fit in it,
    /// with room for the body bytes that arrive alongside.
    pub fn h1_buffer(&self) -> usize {
        (self.max_header_bytes + 16 * 1024).max(MIN_HEADER_BYTES)
    }
}

/// What hyper parses but a strict proxy refuses before any handler runs:
/// each answer is the caller's fault, names what was wrong, and closes
/// the connection (the listener sets `connection: close` on it).
///
/// hyper itself already refuses (400, nothing forwarded): obs-fold, NUL
/// and other bytes outside a field value, whitespace before a colon,
/// conflicting `Content-Length` values, `Transfer-Encoding` on HTTP/1.0 or
/// not ending in `chunked`, bad chunk framing (while the body streams; see
/// `upstream::caller_body_failed`). It merges identical repeated
/// `Content-Length` lines and drops `Content-Length` beside
/// `Transfer-Encoding` (both as RFC 9112 §6.3 allows), so those forward
/// with one unambiguous framing.
pub fn check_request<B>(req: &Request<B>, limits: &Limits) -> Result<(), MeshError> {
    let uri = req.uri();
    let target = uri.path_and_query().map_or(0, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.scheme_str().map_or(0, |s| s.len() + 3);
    if target > limits.max_request_line {
        return Err(MeshError::UriTooLong {
            limit: limits.max_request_line,
        });
    }
    let headers = req.headers();
    let hosts = headers.get_all(HOST).iter().count();
    // RFC 9112 §3.2: one Host, and an HTTP/1.1 request must have it.
    if hosts > 1 {
        return Err(bad("more than one Host header"));
    }
    if hosts == 0 && req.version() == Version::HTTP_11 {
        return Err(bad("an HTTP/1.1 request needs a Host header"));
    }
    // RFC 9113 §8.3.1: a Host beside :authority must name the same.
    if let (Version::HTTP_2, Some(authority), Some(host)) =
        (req.version(), uri.authority(), headers.get(HOST))
    {
        if !host
            .as_bytes()
            .eq_ignore_ascii_case(authority.as_str().as_bytes())
        {
            return Err(bad("Host differs from :authority"));
        }
    }
    let mut te = headers.get_all(TRANSFER_ENCODING).iter();
    if let Some(v) = te.next() {
        // Only `chunked` is a transfer coding this proxy takes: any other
        // (or a list) is one a next hop might read differently.
        if te.next().is_some() || !v.as_bytes().eq_ignore_ascii_case(b"chunked") {
            return Err(bad("Transfer-Encoding other than a single chunked"));
        }
    }
    for v in headers.get_all(CONTENT_LENGTH) {
        if !v.as_bytes().iter().all(u8::is_ascii_digit) || v.is_empty() {
            return Err(bad("Content-Length is not one decimal number"));
        }
    }
    Ok(())
}

fn bad(what: &str) -> MeshError {
    MeshError::BadRequest(what.to_string())
}

/// `64KiB`, `1MiB`, `512`: a size in bytes.
pub fn parse_bytes(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 65536, 64KiB, 1MiB)"))?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "k" => 1024,
        "MiB" | "M" => 1024 * 1024,
        "GiB" | "G" => 1024 * 1024 * 1024,
        other => return Err(format!("unknown size unit {other:?} (B, KiB, MiB, GiB)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(lines: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().uri("/x").version(Version::HTTP_11);
        for (k, v) in lines {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn strict_framing_and_host() {
        let l = Limits::default();
        let ok = req(&[("host", "a"), ("transfer-encoding", "chunked")]);
        assert!(check_request(&ok, &l).is_ok());
        for (lines, why) in [
            (vec![], "needs a Host"),
            (vec![("host", "a"), ("host", "b")], "more than one Host"),
            (
                vec![("host", "a"), ("transfer-encoding", "gzip, chunked")],
                "Transfer-Encoding",
            ),
            (
                vec![
                    ("host", "a"),
                    ("transfer-encoding", "chunked"),
                    ("transfer-encoding", "chunked"),
                ],
                "Transfer-Encoding",
            ),
            (
                vec![("host", "a"), ("content-length", "5, 5")],
                "Content-Length",
            ),
            (
                vec![("host", "a"), ("content-length", "+5")],
                "Content-Length",
            ),
        ] {
            let e = check_request(&req(&lines), &l).unwrap_err();
            assert!(e.to_string().contains(why), "{lines:?}: {e}");
            assert_eq!(e.status(), http::StatusCode::BAD_REQUEST);
        }
        let h2 = Request::builder()
            .uri("/x")
            .version(Version::HTTP_2)
            .body(())
            .unwrap();
        assert!(
            check_request(&h2, &l).is_ok(),
            "HTTP/2 carries :authority instead"
        );
    }

    #[test]
    fn long_target_is_414() {
        let l = Limits {
            max_request_line: 100,
            ..Limits::default()
        };
        let long = format!("/{}", "a".repeat(100));
        let r = Request::builder()
            .uri(long.as_str())
            .header("host", "a")
            .body(())
            .unwrap();
        let e = check_request(&r, &l).unwrap_err();
        assert_eq!(e.status(), http::StatusCode::URI_TOO_LONG);
        let fits = Request::builder()
            .uri(&long[..100])
            .header("host", "a")
            .body(())
            .unwrap();
        assert!(check_request(&fits, &l).is_ok());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("64KiB"), Ok(65536));
        assert_eq!(parse_bytes("512"), Ok(512));
        assert_eq!(parse_bytes("1MiB"), Ok(1 << 20));
        assert!(parse_bytes("1TB").unwrap_err().contains("unit"));
        assert!(parse_bytes("x").is_err());
    }
}
