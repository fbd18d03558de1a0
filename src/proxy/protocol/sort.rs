//! Sorting a connection whose protocol nobody declared, without guessing
//! from a timeout.
//!
//! A client that says nothing may be slow (a JVM warming up, a script
//! that connects and then thinks), or waiting for a server that speaks
//! first (SMTP, MySQL, a banner). Waiting a fixed time for the client
//! confuses the two. So the upstream is opened at once, in parallel with
//! waiting for the client, and whichever side speaks first decides:
//!
//! - the client: its bytes are detected (HTTP/1, HTTP/2, TLS, opaque).
//!   For HTTP the early upstream connection is dropped unused (the
//!   request goes through the HTTP path and its pools); for anything else
//!   it carries the connection.
//! - the server: a server-speaks-first protocol, relayed opaque. An
//!   HTTP/2 server's SETTINGS frame, which it sends without waiting, is
//!   not taken for a greeting: the wait for the client goes on.
//! - neither, within the bound: relayed opaque as it is.
//!
//! The caller skips this once a port is known to be client-first, so
//! HTTP traffic pays the early connect only on a port's first connection.

use super::detect::{detect, Detected};
use std::future::Future;
use std::io;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Which side of a relayed pair sent bytes first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirstWord {
    /// The client sent bytes, closed, or failed first.
    Client,
    /// The server sent bytes (a greeting) before the client did.
    Server,
    /// Neither, within the bound.
    Neither,
}

/// Waits until one side is readable; peeks, so nothing is consumed.
/// A closed or failed side counts as having spoken (there is nothing more
/// to wait for from it).
pub async fn first_word<U: Upstream>(
    client: &TcpStream,
    server: &mut U,
    within: Duration,
) -> FirstWord {
    let (mut c, mut s) = ([0u8; 1], [0u8; 1]);
    tokio::select! {
        // Client first when both are ready: its bytes are the ones to read.
        biased;
        _ = client.peek(&mut c) => FirstWord::Client,
        _ = server.peek(&mut s) => FirstWord::Server,
        () = tokio::time::sleep(within) => FirstWord::Neither,
    }
}

/// Waits for the client alone: `Client` once it is readable (or closed),
/// `Neither` after `within`.
async fn client_within(client: &TcpStream, within: Duration) -> FirstWord {
    let mut c = [0u8; 1];
    match tokio::time::timeout(within, client.peek(&mut c)).await {
        Ok(_) => FirstWord::Client,
        Err(_) => FirstWord::Neither,
    }
}

/// Whether the server's first bytes (peeked) are an HTTP/2 server
/// connection preface: a SETTINGS frame on stream 0 (RFC 9113 §3.4),
/// which HTTP/2 servers send without waiting for the client.
async fn sends_h2_preface<U: Upstream>(server: &mut U) -> bool {
    let mut head = [0u8; 9];
    match server.peek(&mut head).await {
        Ok(n) if n > 0 => looks_like_h2_settings(&head[..n]),
        _ => false,
    }
}

/// A frame header (length 3 bytes, type, flags, stream id 4 bytes) that
/// is, or may still become, an initial SETTINGS frame: type 0x4, no flags,
/// stream 0, a length of whole 6-byte settings within the default frame
/// size. Judged on the bytes there are, so a header split across segments
/// still counts (a greeting that begins with zero bytes in so short a
/// segment is not worth telling apart).
pub fn looks_like_h2_settings(b: &[u8]) -> bool {
    const SETTINGS: u8 = 0x4;
    const MAX_FRAME: usize = 16_384;
    let expected_at = |i: usize, v: u8| b.get(i).is_none_or(|&x| x == v);
    let length_ok = match b {
        [l0, l1, l2, ..] => {
            let len = usize::from(*l0) << 16 | usize::from(*l1) << 8 | usize::from(*l2);
            len % 6 == 0 && len <= MAX_FRAME
        }
        _ => b.first().is_none_or(|&x| x == 0),
    };
    length_ok && expected_at(3, SETTINGS) && (4..9).all(|i| expected_at(i, 0))
}

/// The outcome of [`sort`].
#[derive(Debug)]
pub enum Sorted<U, E> {
    /// The client spoke first. `upstream` is the early connection, kept
    /// for protocols that are relayed; it is `None` for HTTP (dropped
    /// unused) and `Some(Err)` when it could not be opened.
    Client {
        detected: Detected,
        upstream: Option<Result<U, E>>,
    },
    /// The server spoke first: relay opaque over `upstream`.
    Server { upstream: U },
    /// Both sides stayed silent for the whole bound.
    Silent { upstream: U },
}

impl<U, E> Sorted<U, E> {
    /// Who spoke first, as a metric label: `client`, `server`, `neither`.
    pub fn first(&self) -> &'static str {
        match self {
            Sorted::Client { .. } => "client",
            Sorted::Server { .. } => "server",
            Sorted::Silent { .. } => "neither",
        }
    }
}

/// A connection to the upstream, as [`sort`] needs to see it: the first
/// bytes the server sent, shown without being lost to the relay. A TCP
/// socket peeks; an mTLS connection must decrypt, so it keeps what it
/// read for the relay (peeking its socket would see TLS records, not the
/// server's words).
pub trait Upstream {
    fn peek<'a>(
        &'a mut self,
        buf: &'a mut [u8],
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a;
}

/// An mTLS (or any) stream: the server's first bytes are read into the
/// prefix, so the relay still sends them on.
impl<T: tokio::io::AsyncRead + Unpin + Send> Upstream for super::io::PrefixedIo<T> {
    fn peek<'a>(
        &'a mut self,
        buf: &'a mut [u8],
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a {
        super::io::PrefixedIo::peek(self, buf)
    }
}

impl Upstream for TcpStream {
    fn peek<'a>(
        &'a mut self,
        buf: &'a mut [u8],
    ) -> impl Future<Output = io::Result<usize>> + Send + 'a {
        TcpStream::peek(self, buf)
    }
}

/// Sorts `client` by who speaks first, opening the upstream with `open`
/// meanwhile. `bound` limits the whole wait. See the module docs.
pub async fn sort<U, E>(
    client: &mut TcpStream,
    open: impl Future<Output = Result<U, E>>,
    bound: Duration,
) -> io::Result<Sorted<U, E>>
where
    U: Upstream,
{
    let deadline = Instant::now() + bound;
    let remaining = || deadline.saturating_duration_since(Instant::now());
    tokio::pin!(open);
    let mut byte = [0u8; 1];
    let opened = tokio::select! {
        r = &mut open => Some(r),
        _ = client.peek(&mut byte) => None,
        () = tokio::time::sleep_until(deadline) => None,
    };
    let upstream = match opened {
        // The client spoke (or closed) while the upstream was opening.
        None => {
            let detected = detect(client, remaining()).await?;
            let upstream = match detected.protocol.is_http() {
                true => None, // `open` is dropped here: its connect is cancelled
                false => Some(open.await),
            };
            return Ok(Sorted::Client { detected, upstream });
        }
        Some(Err(e)) => {
            // Nothing to race with: the client's bytes decide alone.
            let detected = detect(client, remaining()).await?;
            return Ok(Sorted::Client {
                detected,
                upstream: Some(Err(e)),
            });
        }
        Some(Ok(u)) => u,
    };
    let mut upstream = upstream;
    let mut first = first_word(client, &mut upstream, remaining()).await;
    if first == FirstWord::Server && sends_h2_preface(&mut upstream).await {
        // An HTTP/2 server (gRPC, h2c) sends its SETTINGS at once, then
        // waits for the client's preface: not a greeting.
        first = client_within(client, remaining()).await;
    }
    match first {
        FirstWord::Server => Ok(Sorted::Server { upstream }),
        FirstWord::Neither => Ok(Sorted::Silent { upstream }),
        FirstWord::Client => {
            let detected = detect(client, remaining()).await?;
            let upstream = (!detected.protocol.is_http()).then_some(Ok(upstream));
            Ok(Sorted::Client { detected, upstream })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::protocol::Protocol;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// A connected pair on loopback: (the proxy's side, the far side).
    async fn pair(l: &TcpListener) -> (TcpStream, TcpStream) {
        let near = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (far, _) = l.accept().await.unwrap();
        (near, far)
    }

    /// `far` sends `bytes` after `wait` (on the paused clock in the tests
    /// that use it: the slow side's wait, while real sockets carry bytes).
    fn speaks_after(
        wait: Duration,
        mut far: TcpStream,
        bytes: &'static [u8],
    ) -> tokio::task::JoinHandle<TcpStream> {
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            far.write_all(bytes).await.unwrap();
            far
        })
    }

    /// Sorts `client` with `upstream` already connected (10 s bound).
    async fn sort_open(client: &mut TcpStream, upstream: TcpStream) -> Sorted<TcpStream, ()> {
        let open = async { Ok::<_, ()>(upstream) };
        sort(client, open, Duration::from_secs(10)).await.unwrap()
    }

    // The paused clock plays the slow side's wait; real sockets carry the bytes.
    #[tokio::test(start_paused = true)]
    async fn a_slow_http_client_is_still_http() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (mut client, app) = pair(&l).await;
        let (upstream, _server) = pair(&l).await;
        let request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let writer = speaks_after(Duration::from_millis(300), app, request);
        match sort_open(&mut client, upstream).await {
            Sorted::Client { detected, upstream } => {
                assert_eq!(detected.protocol, Protocol::Http1);
                assert!(upstream.is_none(), "the early connection is dropped");
            }
            other => panic!("{other:?}"),
        }
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn a_server_greeting_decides_at_once() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (mut client, _quiet_app) = pair(&l).await;
        let (upstream, mut server) = pair(&l).await;
        server.write_all(b"220 ready\r\n").await.unwrap();
        let start = tokio::time::Instant::now();
        let sorted = sort_open(&mut client, upstream).await;
        assert!(matches!(sorted, Sorted::Server { .. }), "{sorted:?}");
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    // The paused clock plays the slow side's wait; real sockets carry the bytes.
    #[tokio::test(start_paused = true)]
    async fn client_bytes_before_the_connect_keep_the_upstream_for_opaque() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (mut client, mut app) = pair(&l).await;
        let (upstream, _server) = pair(&l).await;
        app.write_all(b"*1\r\n$4\r\nPING\r\n").await.unwrap();
        // The connect finishes only after the client has spoken.
        let open = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok::<_, ()>(upstream)
        };
        let sorted = sort(&mut client, open, Duration::from_secs(10))
            .await
            .unwrap();
        match sorted {
            Sorted::Client { detected, upstream } => {
                assert_eq!(detected.protocol, Protocol::Opaque);
                assert_eq!(&detected.prefix[..], b"*1\r\n$4\r\nPING\r\n");
                assert!(matches!(upstream, Some(Ok(_))));
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_failed_open_leaves_detection_to_the_client() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (mut client, mut app) = pair(&l).await;
        app.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let open = async { Err::<TcpStream, _>("no endpoints") };
        let sorted = sort(&mut client, open, Duration::from_secs(10))
            .await
            .unwrap();
        match sorted {
            Sorted::Client { detected, upstream } => {
                assert_eq!(detected.protocol, Protocol::Http1);
                assert!(matches!(upstream, Some(Err("no endpoints"))));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tells_an_h2_server_preface_from_a_greeting() {
        let settings = [0, 0, 18, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100];
        assert!(looks_like_h2_settings(&settings));
        assert!(looks_like_h2_settings(&[0, 0, 0, 4, 0, 0, 0, 0, 0]));
        assert!(looks_like_h2_settings(&settings[..2]), "split header");
        for greeting in [
            &b"220 smtp.example ESMTP\r\n"[..],
            &[0x4a, 0, 0, 0, 0x0a, b'8'][..], // MySQL handshake
            b"+OK POP3 ready\r\n",
            &[0, 0, 18, 1, 4, 0, 0, 0, 1][..], // HEADERS on stream 1
            &[0, 0, 7, 4, 0, 0, 0, 0, 0][..],  // not whole settings
        ] {
            assert!(!looks_like_h2_settings(greeting), "{greeting:?}");
        }
    }

    // The paused clock plays the slow side's wait; real sockets carry the bytes.
    #[tokio::test(start_paused = true)]
    async fn an_h2_servers_settings_do_not_make_it_opaque() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (mut client, app) = pair(&l).await;
        let (upstream, mut server) = pair(&l).await;
        server
            .write_all(&[0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100])
            .await
            .unwrap();
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        let writer = speaks_after(Duration::from_millis(100), app, preface);
        match sort_open(&mut client, upstream).await {
            Sorted::Client { detected, upstream } => {
                assert_eq!(detected.protocol, Protocol::Http2);
                assert!(upstream.is_none());
            }
            other => panic!("{other:?}"),
        }
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn tells_who_speaks_first() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let wait = Duration::from_secs(5);

        let (client, _app) = pair(&l).await;
        let (mut server, mut banner) = pair(&l).await;
        banner.write_all(b"220 ready").await.unwrap();
        assert_eq!(
            first_word(&client, &mut server, wait).await,
            FirstWord::Server
        );

        let (client, mut slow_app) = pair(&l).await;
        let (mut server, _quiet) = pair(&l).await;
        slow_app.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert_eq!(
            first_word(&client, &mut server, wait).await,
            FirstWord::Client
        );

        let (client, _a) = pair(&l).await;
        let (mut server, _s) = pair(&l).await;
        let short = Duration::from_millis(20);
        assert_eq!(
            first_word(&client, &mut server, short).await,
            FirstWord::Neither
        );
    }

    #[tokio::test(start_paused = true)]
    async fn silence_on_both_sides_ends_at_the_bound() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (mut client, _app) = pair(&l).await;
        let (upstream, _server) = pair(&l).await;
        let sorted = sort_open(&mut client, upstream).await;
        assert!(matches!(sorted, Sorted::Silent { .. }), "{sorted:?}");
    }
}
