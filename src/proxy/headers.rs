//! Header hygiene on both sides of the proxy: hop-by-hop headers, the
//! mesh's own `x-mesh-*` headers, `x-forwarded-for`/`forwarded`, W3C
//! trace context, and the deadline a request carries.

use super::grpc::GRPC_TIMEOUT;
use crate::resilience::timeout;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::net::IpAddr;
use std::time::Duration;

const HOP_COUNT: usize = 6;
/// Headers that describe one connection, not the message (RFC 9110
/// §7.6.1). Not `Trailer`: it announces the message's trailers, and
/// hyper's HTTP/1 encoder sends only the trailers it names.
const HOP_BY_HOP: [HeaderName; HOP_COUNT] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];
/// `Connection` tokens that need no lookup: hop-by-hop headers removed
/// anyway, or options that name no header (`close`).
const USUAL_CONNECTION_TOKENS: [&str; 5] = ["keep-alive", "close", "upgrade", "te", ""];
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// The request's id: kept when sane, else made by the first proxy.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
/// Which mesh service sent a proxy-to-proxy request (for the callee's
/// inbound metrics; unauthenticated until mTLS).
pub const MESH_CALLER: HeaderName = HeaderName::from_static("x-mesh-caller");
/// The time a request's caller has left, in milliseconds: sent by a
/// proxy to its peer, and handed on by the peer to its app (which may
/// pass it along on its own calls, as it does `traceparent`).
pub const MESH_TIMEOUT: HeaderName = HeaderName::from_static("x-mesh-timeout");

/// The time the caller of this request has left, if it said: the sooner
/// of `x-mesh-timeout` and gRPC's `grpc-timeout`. `x-mesh-timeout` is
/// taken out (each hop sends its own); `grpc-timeout` stays, for the
/// server's gRPC library. A malformed value is ignored.
pub fn caller_deadline(headers: &mut HeaderMap) -> Option<Duration> {
    // Most requests carry neither: one pass over the names (compared as
    // names, no hashing) saves two lookups.
    if !headers
        .keys()
        .any(|k| *k == MESH_TIMEOUT || k.as_str() == GRPC_TIMEOUT)
    {
        return None;
    }
    let mesh = headers
        .remove(MESH_TIMEOUT)
        .and_then(|v| timeout::parse_millis(v.as_bytes()));
    let grpc = headers
        .get(GRPC_TIMEOUT)
        .and_then(|v| timeout::parse_grpc_timeout(v.as_bytes()));
    match (mesh, grpc) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Tells the app the time its caller has left: `x-mesh-timeout` always,
/// and for gRPC a `grpc-timeout` no later than it.
pub fn tell_deadline(headers: &mut HeaderMap, left: Duration, grpc: bool) {
    headers.insert(MESH_TIMEOUT, HeaderValue::from(timeout::millis_ceil(left)));
    if grpc {
        let sooner = headers
            .get(GRPC_TIMEOUT)
            .and_then(|v| timeout::parse_grpc_timeout(v.as_bytes()))
            .is_some_and(|own| own <= left);
        if !sooner {
            if let Ok(v) = HeaderValue::from_str(&timeout::format_grpc_timeout(left)) {
                headers.insert(GRPC_TIMEOUT, v);
            }
        }
    }
}

/// Removes hop-by-hop headers, including those the `Connection` header
/// names. `keep_upgrade` keeps `Connection` and `Upgrade` for a protocol
/// upgrade that is tunnelled through (WebSocket), which needs both.
/// HTTP/1's absolute form (`GET http://a.mesh/ HTTP/1.1`): the URI's
/// authority is the target, and a proxy replaces whatever `Host` came with
/// it, or adds it (HTTP/1.0 clients send none): RFC 9112 §3.2.2. So the
/// app never sees a host other than the one the request was routed by.
/// Both listeners call this first.
pub fn host_from_target<B>(req: &mut http::Request<B>) {
    if req.version() >= http::Version::HTTP_2 {
        return;
    }
    let target = req
        .uri()
        .authority()
        .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok());
    if let Some(v) = target {
        req.headers_mut().insert(http::header::HOST, v);
    }
}

pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the names (standard names compare as small integers)
    // finds which hop-by-hop headers are there; most messages carry none,
    // or only `connection: keep-alive`.
    let mut present = [false; HOP_COUNT];
    for k in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == k) {
            present[i] = true;
        }
    }
    if !keep_upgrade && !present.contains(&true) {
        return;
    }
    // `te: trailers` is end to end in practice: gRPC servers require it.
    let te_trailers = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if present[0] {
        // Headers `Connection` names, besides the usual tokens (which are
        // hop-by-hop already, or name no header): rare, so allocated only
        // when there are some.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|n| {
                !USUAL_CONNECTION_TOKENS
                    .iter()
                    .any(|u| n.eq_ignore_ascii_case(u))
            })
            .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
            .collect();
        for h in &named {
            headers.remove(h);
        }
    }
    for (h, there) in HOP_BY_HOP.iter().zip(present) {
        if !there || keep_upgrade && (h == header::CONNECTION || h == header::UPGRADE) {
            continue;
        }
        headers.remove(h);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// An HTTP/1.1 upgrade this proxy tunnels (WebSocket and the like): an
/// `Upgrade` header offering something other than `h2c`, which is instead
/// dropped so the request is served as plain HTTP/1.1 (Java's HttpClient
/// offers h2c on every cleartext request).
pub fn wants_tunnel_upgrade(headers: &HeaderMap) -> bool {
    let Some(up) = headers.get(header::UPGRADE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let connection_says_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    connection_says_upgrade
        && up
            .split(',')
            .any(|p| !p.trim().is_empty() && !p.trim().eq_ignore_ascii_case("h2c"))
}

/// Drops every `x-mesh-*` header: on inbound requests they could only be
/// forged by whoever called, and the app's own must not pose as the mesh's.
pub fn strip_mesh_headers(headers: &mut HeaderMap) {
    let mesh: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("x-mesh-"))
        .cloned()
        .collect();
    for k in mesh {
        headers.remove(k);
    }
}

/// Appends the caller's address to `x-forwarded-for` and `forwarded`
/// (with `proto`, the scheme the caller used).
pub fn append_forwarded(headers: &mut HeaderMap, client: IpAddr, proto: &str) {
    let ip = client.to_string();
    let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip}"),
        _ => ip.clone(),
    };
    let node = match client {
        IpAddr::V4(_) => ip,
        IpAddr::V6(_) => format!("\"[{ip}]\""),
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("for={node};proto={proto}")) {
        headers.append(FORWARDED, v);
    }
}

/// The bytes a kept `x-request-id` may hold: letters, digits, `-._:+/=`.
const ID_BYTE: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        t[i] = c.is_ascii_alphanumeric()
            || matches!(c, b'-' | b'.' | b'_' | b':' | b'+' | b'/' | b'=');
        i += 1;
    }
    t
};

/// A sane request id: 1 to 128 of [`ID_BYTE`]s (it is echoed into logs
/// and headers, so nothing else is kept).
fn sane_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    (1..=128).contains(&b.len()) && b.iter().all(|&c| ID_BYTE[usize::from(c)])
}

/// The client's `x-request-id` when it is sane, else a new UUIDv4.
pub fn request_id(h: &HeaderMap) -> HeaderValue {
    match h.get(&X_REQUEST_ID) {
        Some(v) if sane_id(v) => v.clone(),
        _ => new_request_id(),
    }
}

/// A new UUIDv4, written straight into the header's one buffer (this
/// runs on every request that arrives without an id).
fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    /// Where each of the 32 hex digits goes (the rest are dashes).
    const AT: [usize; 32] = [
        0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 14, 15, 16, 17, 19, 20, 21, 22, 24, 25, 26, 27, 28,
        29, 30, 31, 32, 33, 34, 35,
    ];
    let r = fastrand::u128(..);
    // RFC 9562 version 4, variant 10.
    let r = (r & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let mut buf = *b"00000000-0000-0000-0000-000000000000";
    for (nibble, &at) in AT.iter().enumerate() {
        buf[at] = HEX[((r >> (124 - 4 * nibble)) & 0xf) as usize];
    }
    // Hex digits and dashes are always a valid header value.
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// Keeps the request's sane `x-request-id` or gives it a new one; returns
/// it (mesh-made answers carry it back, `mesh-ctl explain` takes it).
pub fn ensure_request_id(h: &mut HeaderMap) -> HeaderValue {
    if let Some(v) = h.get(&X_REQUEST_ID).filter(|v| sane_id(v)) {
        return v.clone();
    }
    let id = new_request_id();
    h.insert(X_REQUEST_ID, id.clone());
    id
}

/// Keeps a valid W3C `traceparent`, or starts a new trace when it is
/// missing or malformed (then `tracestate`, which belongs to the old
/// trace, goes too). Returns whether it started one.
pub fn ensure_traceparent(headers: &mut HeaderMap) -> bool {
    // One pass over the names (each once, however many values): is there
    // a `traceparent`, a `tracestate`.
    let (mut parent, mut state) = (false, false);
    for k in headers.keys() {
        parent |= *k == TRACEPARENT;
        state |= *k == TRACESTATE;
    }
    if parent {
        let mut all = headers.get_all(&TRACEPARENT).iter();
        let first = all.next();
        if all.next().is_none() && first.is_some_and(|v| valid_traceparent(v.as_bytes())) {
            return false;
        }
    }
    if state {
        headers.remove(&TRACESTATE);
    }
    headers.insert(TRACEPARENT, new_traceparent());
    true
}

/// `00-<trace id>-<parent id>-<flags>`, ids not all zero (W3C §3.2).
fn valid_traceparent(v: &[u8]) -> bool {
    let hex = |s: &[u8]| {
        s.iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    };
    let nonzero = |s: &[u8]| s.iter().any(|&b| b != b'0');
    if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return false;
    }
    let (version, trace, parent, flags) = (&v[..2], &v[3..35], &v[36..52], &v[53..55]);
    // Version ff is invalid; later versions may append fields after a dash.
    let tail_ok = v.len() == 55 || (version != b"00" && v[55] == b'-');
    hex(version)
        && version != b"ff"
        && hex(trace)
        && nonzero(trace)
        && hex(parent)
        && nonzero(parent)
        && hex(flags)
        && tail_ok
}

/// A new trace: random ids (`| 1` keeps them from being all zero,
/// which is invalid), written straight into the header's one buffer (this
/// runs on every request that arrives without a trace).
fn new_traceparent() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let trace = fastrand::u128(..) | 1;
    let span = fastrand::u64(..) | 1;
    let mut buf = *b"00-00000000000000000000000000000000-0000000000000000-00";
    for (i, b) in buf[3..35].iter_mut().enumerate() {
        *b = HEX[((trace >> (124 - 4 * i)) & 0xf) as usize];
    }
    for (i, b) in buf[36..52].iter_mut().enumerate() {
        *b = HEX[((span >> (60 - 4 * i)) & 0xf) as usize];
    }
    // Lowercase hex and dashes: always a valid header value.
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| {
        HeaderValue::from_static("00-00000000000000000000000000000001-0000000000000001-00")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_kept_when_sane_and_made_otherwise() {
        let mut h = HeaderMap::new();
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("has space"));
        let made = request_id(&h);
        let s = made.to_str().unwrap();
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "4", "version 4: {s}");
        assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"), "variant: {s}");
        assert_ne!(new_request_id(), new_request_id());
    }

    #[test]
    fn strips_hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::ACCEPT));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h[header::TE], "trailers");
    }

    #[test]
    fn upgrades_keep_their_headers_and_h2c_is_dropped() {
        let mut ws = HeaderMap::new();
        ws.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        ws.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(wants_tunnel_upgrade(&ws));
        strip_hop_by_hop(&mut ws, true);
        assert_eq!(ws[header::UPGRADE], "websocket");
        assert_eq!(ws[header::CONNECTION], "upgrade");

        let mut java = HeaderMap::new();
        java.insert(
            header::CONNECTION,
            HeaderValue::from_static("Upgrade, HTTP2-Settings"),
        );
        java.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        java.insert(
            "http2-settings",
            HeaderValue::from_static("AAEAAEAAAAIAAAABAAMAAABkAAQBAAAAAAUAAEAA"),
        );
        assert!(!wants_tunnel_upgrade(&java));
        strip_hop_by_hop(&mut java, false);
        assert!(java.is_empty(), "{java:?}");

        let mut no_conn = HeaderMap::new();
        no_conn.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(!wants_tunnel_upgrade(&no_conn));
    }

    #[test]
    fn forwarded_headers_are_appended() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        append_forwarded(&mut h, "10.0.0.7".parse().unwrap(), "http");
        append_forwarded(&mut h, "fd00::1".parse().unwrap(), "http");
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.7, fd00::1");
        let fwd: Vec<_> = h.get_all("forwarded").iter().collect();
        assert_eq!(
            fwd,
            ["for=10.0.0.7;proto=http", "for=\"[fd00::1]\";proto=http"]
        );
    }

    #[test]
    fn mesh_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert("x-mesh-error", HeaderValue::from_static("forged"));
        h.insert("x-mesh-caller", HeaderValue::from_static("forged"));
        h.insert("x-meshy", HeaderValue::from_static("kept"));
        strip_mesh_headers(&mut h);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn traceparent_kept_when_valid_else_replaced() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static(good));
        h.insert("tracestate", HeaderValue::from_static("a=b"));
        ensure_traceparent(&mut h);
        assert_eq!(h[TRACEPARENT], good);
        assert_eq!(h["tracestate"], "a=b");

        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "garbage",
        ] {
            let mut h = HeaderMap::new();
            h.insert(TRACEPARENT, HeaderValue::from_static(bad));
            h.insert("tracestate", HeaderValue::from_static("a=b"));
            ensure_traceparent(&mut h);
            let v = h[TRACEPARENT].to_str().unwrap().to_string();
            assert_ne!(v, bad);
            assert!(valid_traceparent(v.as_bytes()), "{v}");
            assert!(!h.contains_key("tracestate"));
        }
        let mut h = HeaderMap::new();
        ensure_traceparent(&mut h);
        assert!(valid_traceparent(h[TRACEPARENT].as_bytes()));
        assert!(valid_traceparent(
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future"
        ));
    }
}

#[cfg(test)]
mod target_tests {
    use super::host_from_target;
    use http::{header::HOST, Request, Version};

    fn host_after(uri: &str, host: Option<&str>, version: Version) -> Option<String> {
        let mut b = Request::builder().uri(uri).version(version);
        if let Some(h) = host {
            b = b.header(HOST, h);
        }
        let mut req = b.body(()).unwrap();
        host_from_target(&mut req);
        req.headers()
            .get(HOST)
            .map(|v| v.to_str().unwrap().to_string())
    }

    #[test]
    fn absolute_form_replaces_or_adds_host_and_nothing_else_changes() {
        let h1 = Version::HTTP_11;
        assert_eq!(
            host_after("http://a.mesh/x", Some("b.mesh"), h1).as_deref(),
            Some("a.mesh")
        );
        assert_eq!(
            host_after("http://a.mesh:8080/", None, Version::HTTP_10).as_deref(),
            Some("a.mesh:8080")
        );
        assert_eq!(
            host_after("/x", Some("b.mesh"), h1).as_deref(),
            Some("b.mesh"),
            "origin form keeps Host"
        );
        assert_eq!(host_after("/x", None, h1), None);
        assert_eq!(
            host_after("http://a.mesh/", Some("b.mesh"), Version::HTTP_2).as_deref(),
            Some("b.mesh"),
            "HTTP/2 carries :authority; its Host is not ours to rewrite"
        );
    }
}
