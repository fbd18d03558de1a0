//! Protocol detection from a connection's first bytes.
//!
//! The client's first bytes decide: the HTTP/2 connection preface, an
//! HTTP/1.x request line, a TLS record header (0x16 0x03), or the preamble
//! a mesh proxy sends before opaque bytes. Anything else is opaque. How
//! long to wait for a client that says nothing is not decided here: see
//! `sort`, which lets a server greeting end the wait.

use bytes::{Bytes, BytesMut};
use std::io;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Sent by a mesh proxy to a peer's inbound listener before the bytes of
/// an opaque connection, so the peer never waits on detection.
pub const MESH_OPAQUE_PREAMBLE: &[u8] = b"MESH-OPAQUE/1\r\n";

/// How intercepted connections are told apart.
#[derive(Clone, Debug)]
pub struct DetectConfig {
    /// `--detect-timeout`: how long a new connection may stay silent on
    /// both sides before it is relayed opaque as it is.
    pub timeout: Duration,
    /// `--opaque-ports`: never detected.
    pub opaque_ports: std::collections::HashSet<u16>,
}
/// An HTTP/1 request line longer than this is not worth waiting for.
const MAX_REQUEST_LINE: usize = 8 * 1024;
/// A TLS record carries at most 16 KiB; the ClientHello is in the first.
const MAX_TLS_RECORD: usize = 5 + 16 * 1024;

/// What the client speaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// HTTP/2 with prior knowledge (h2c): the preface came first.
    Http2,
    /// A TLS ClientHello; relayed opaque, the server name kept for logs.
    /// `mesh`: it offers the mesh's ALPN (a peer proxy's mTLS).
    Tls {
        sni: Option<String>,
        mesh: bool,
    },
    /// A mesh proxy's opaque preamble (already consumed from the prefix).
    MeshOpaque,
    Opaque,
}

impl Protocol {
    /// HTTP/1 or HTTP/2: served per request, not relayed.
    pub fn is_http(&self) -> bool {
        matches!(self, Protocol::Http1 | Protocol::Http2)
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
            Protocol::Tls { .. } => "tls",
            Protocol::MeshOpaque | Protocol::Opaque => "opaque",
        }
    }
}

/// The outcome of [`detect`].
#[derive(Debug)]
pub struct Detected {
    pub protocol: Protocol,
    /// Bytes read during detection, to be replayed to the server side.
    pub prefix: Bytes,
    /// The client sent nothing before the timeout.
    pub silent: bool,
}

/// Classifies a buffer's first bytes; `None` means more bytes are needed.
pub fn classify(buf: &[u8]) -> Option<Protocol> {
    if buf.is_empty() {
        return None;
    }
    for (magic, proto) in [
        (H2_PREFACE, Protocol::Http2),
        (MESH_OPAQUE_PREAMBLE, Protocol::MeshOpaque),
    ] {
        let n = buf.len().min(magic.len());
        if buf[..n] == magic[..n] {
            return (buf.len() >= magic.len()).then_some(proto);
        }
    }
    if buf[0] == 0x16 {
        return match buf.get(1) {
            None => None,
            Some(0x03) => Some(Protocol::Tls {
                sni: None,
                mesh: false,
            }),
            Some(_) => Some(Protocol::Opaque),
        };
    }
    http1_request_line(buf)
}

/// `METHOD SP target SP HTTP/1.x CRLF`, judged as soon as it can be.
fn http1_request_line(buf: &[u8]) -> Option<Protocol> {
    let line_end = buf.iter().position(|&b| b == b'\n');
    let line = &buf[..line_end.unwrap_or(buf.len())];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    // Only visible ASCII and spaces may appear in a request line.
    if line.iter().any(|&b| !(0x20..0x7f).contains(&b)) {
        return Some(Protocol::Opaque);
    }
    let method_len = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
    let method_ok = line[..method_len]
        .iter()
        .all(|b| b.is_ascii_uppercase() || *b == b'-' || *b == b'_');
    if !method_ok || method_len > 32 || (method_len == 0 && !line.is_empty()) {
        return Some(Protocol::Opaque);
    }
    if line_end.is_none() {
        // Plausible so far: wait for the rest of the line, within reason.
        // Past it, this is HTTP with a long request line, and the HTTP
        // listener's limits answer it (414 or 431): relayed opaque, it
        // would pass the HTTP layer's checks by being long.
        return (buf.len() >= MAX_REQUEST_LINE).then_some(Protocol::Http1);
    }
    let mut parts = line.split(|&b| b == b' ');
    let (Some(_method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Some(Protocol::Opaque);
    };
    // Any `HTTP/` version is HTTP: the listener answers the ones it does
    // not speak (400) rather than relaying them past its checks.
    if !target.is_empty() && version.starts_with(b"HTTP/") {
        Some(Protocol::Http1)
    } else {
        Some(Protocol::Opaque)
    }
}

/// Reads a connection's first bytes until their protocol is known, the
/// client goes quiet past `timeout`, or it closes.
pub async fn detect<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> io::Result<Detected> {
    let deadline = Instant::now() + timeout;
    let mut buf = BytesMut::with_capacity(1024);
    let done = |buf: BytesMut, protocol, silent| Detected {
        protocol,
        prefix: buf.freeze(),
        silent,
    };
    loop {
        let read = tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await;
        let n = match read {
            Ok(r) => r?,
            Err(_) => {
                let silent = buf.is_empty();
                // A request line still arriving when the wait ends is a
                // slow HTTP client (slowloris), not an opaque protocol:
                // the HTTP listener's header timeout ends it.
                let protocol = match !silent && http1_request_line(&buf).is_none() {
                    true => Protocol::Http1,
                    false => Protocol::Opaque,
                };
                return Ok(done(buf, protocol, silent));
            }
        };
        if n == 0 {
            // Closed (or half-closed) before deciding: nothing to parse.
            return Ok(done(buf, Protocol::Opaque, false));
        }
        match classify(&buf) {
            None => continue,
            Some(Protocol::Tls { .. }) => {
                let (sni, mesh) = read_client_hello(stream, &mut buf, deadline).await?;
                return Ok(done(buf, Protocol::Tls { sni, mesh }, false));
            }
            Some(Protocol::MeshOpaque) => {
                let _ = buf.split_to(MESH_OPAQUE_PREAMBLE.len());
                return Ok(done(buf, Protocol::MeshOpaque, false));
            }
            Some(p) => return Ok(done(buf, p, false)),
        }
    }
}

/// Explicit proxy mode, where every client speaks HTTP: only tells HTTP/2
/// prior knowledge (the preface) from HTTP/1, whose server answers
/// anything else with a 400. `None`: the client closed or stayed silent
/// past `timeout` before its first byte.
pub async fn detect_http_version(
    stream: &mut TcpStream,
    timeout: Duration,
) -> io::Result<Option<Detected>> {
    let deadline = Instant::now() + timeout;
    let mut buf = BytesMut::with_capacity(H2_PREFACE.len());
    loop {
        let read = tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await;
        let n = match read {
            Ok(r) => r?,
            Err(_) => 0,
        };
        let n_cmp = buf.len().min(H2_PREFACE.len());
        let maybe_h2 = buf[..n_cmp] == H2_PREFACE[..n_cmp];
        if n == 0 || !maybe_h2 || buf.len() >= H2_PREFACE.len() {
            if buf.is_empty() {
                return Ok(None);
            }
            let protocol = match maybe_h2 && buf.len() >= H2_PREFACE.len() {
                true => Protocol::Http2,
                false => Protocol::Http1,
            };
            return Ok(Some(Detected {
                protocol,
                prefix: buf.freeze(),
                silent: false,
            }));
        }
    }
}

/// Reads the rest of the first TLS record and returns the ClientHello's
/// server name (if it arrives before `deadline` and has one), and whether
/// it offers the mesh's ALPN.
async fn read_client_hello<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    deadline: Instant,
) -> io::Result<(Option<String>, bool)> {
    while buf.len() < 5 || buf.len() < record_len(buf) {
        if buf.len() >= MAX_TLS_RECORD {
            return Ok((None, false));
        }
        match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
            Ok(Ok(0)) | Err(_) => return Ok((None, false)),
            Ok(r) => r?,
        };
    }
    Ok(client_hello(buf))
}

fn record_len(buf: &[u8]) -> usize {
    5 + usize::from(u16::from_be_bytes([buf[3], buf[4]]))
}

/// The SNI of a ClientHello, and whether it offers the mesh ALPN; parsed
/// by rustls.
pub fn client_hello(record: &[u8]) -> (Option<String>, bool) {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut rd = record;
    if acceptor.read_tls(&mut rd).is_err() {
        return (None, false);
    }
    let Ok(Some(accepted)) = acceptor.accept() else {
        return (None, false);
    };
    let hello = accepted.client_hello();
    let mesh = hello
        .alpn()
        .is_some_and(|mut protos| protos.any(|p| p == crate::identity::MESH_ALPN));
    (hello.server_name().map(str::to_string), mesh)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_first_bytes() {
        let cases: &[(&[u8], Option<Protocol>)] = &[
            (b"", None),
            (b"GE", None),
            (b"GET / HTTP/1.1\r\n", Some(Protocol::Http1)),
            (
                b"POST /x?y=1 HTTP/1.0\r\nHost: a\r\n",
                Some(Protocol::Http1),
            ),
            (b"CONNECT a:443 HTTP/1.1\r\n", Some(Protocol::Http1)),
            (b"GET /very/long/pa", None),
            (b"PRI * HTTP/2.0\r\n", None),
            (H2_PREFACE, Some(Protocol::Http2)),
            (b"MESH-OPA", None),
            (b"MESH-OPAQUE/1\r\nabc", Some(Protocol::MeshOpaque)),
            (&[0x16], None),
            (
                &[0x16, 0x03, 0x01],
                Some(Protocol::Tls {
                    sni: None,
                    mesh: false,
                }),
            ),
            (&[0x16, 0x42], Some(Protocol::Opaque)),
            // redis RESP, postgres startup, garbage
            (b"*1\r\n$4\r\nPING\r\n", Some(Protocol::Opaque)),
            (&[0, 0, 0, 8, 4, 210, 22, 47], Some(Protocol::Opaque)),
            (b"get / http/1.1\r\n", Some(Protocol::Opaque)),
            // Any HTTP/ version is HTTP: the listener refuses what it does not speak.
            (b"GET / HTTP/2\r\n", Some(Protocol::Http1)),
            (b"GET /\r\n", Some(Protocol::Opaque)),
            (b"HELLO\r\n", Some(Protocol::Opaque)),
        ];
        for (input, want) in cases {
            assert_eq!(
                &classify(input),
                want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn endless_request_lines_are_http_for_the_limits_to_answer() {
        let mut line = b"GET /".to_vec();
        line.resize(MAX_REQUEST_LINE + 1, b'a');
        assert_eq!(classify(&line), Some(Protocol::Http1));
    }

    #[tokio::test]
    async fn silent_client_times_out_as_opaque() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (mut server, _) = l.accept().await.unwrap();
        let start = tokio::time::Instant::now();
        let d = detect(&mut server, Duration::from_millis(30))
            .await
            .unwrap();
        assert_eq!(d.protocol, Protocol::Opaque);
        assert!(d.silent && d.prefix.is_empty());
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn explicit_mode_tells_h2_from_anything_else_at_once() {
        use tokio::io::AsyncWriteExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        for (sent, want) in [
            (H2_PREFACE, Protocol::Http2),
            (&b"GET / HTTP/1.1\r\n"[..], Protocol::Http1),
            // A TLS record header claiming 26 KB: not waited for.
            (&b"\x16\x03\x01garbage"[..], Protocol::Http1),
        ] {
            let mut client = TcpStream::connect(addr).await.unwrap();
            let (mut server, _) = l.accept().await.unwrap();
            client.write_all(sent).await.unwrap();
            let d = detect_http_version(&mut server, Duration::from_secs(30))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(d.protocol, want, "{sent:?}");
            assert!(sent.starts_with(&d.prefix));
        }
        let _silent = TcpStream::connect(addr).await.unwrap();
        let (mut server, _) = l.accept().await.unwrap();
        let d = detect_http_version(&mut server, Duration::from_millis(20)).await;
        assert!(d.unwrap().is_none());
    }

    #[tokio::test]
    async fn http_bytes_are_kept_for_the_server() {
        use tokio::io::AsyncWriteExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (mut server, _) = l.accept().await.unwrap();
        client.write_all(b"GET /a HT").await.unwrap();
        let writer = tokio::spawn(async move {
            client
                .write_all(b"TP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            client
        });
        let d = detect(&mut server, Duration::from_secs(5)).await.unwrap();
        assert_eq!(d.protocol, Protocol::Http1);
        assert!(d.prefix.starts_with(b"GET /a HTTP/1.1\r\n"));
        drop(writer.await.unwrap());
    }
}
