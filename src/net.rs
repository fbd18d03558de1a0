//! Outbound sockets the proxy opens for itself.
//!
//! Every connection the proxy makes (to upstream endpoints, to the control
//! plane, to DNS servers) carries `SO_MARK`, so the interception rules that
//! `mesh-proxy init` installs let it through instead of redirecting it back
//! into the proxy. Setting a mark needs CAP_NET_ADMIN; without it (explicit
//! mode, no privileges) nothing is intercepted and the mark is not needed,
//! so a refused mark is logged once and ignored.

use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};

/// The default firewall mark on the proxy's own sockets ("ME").
pub const DEFAULT_MARK: u32 = 0x4d45;

static MARK_REFUSED: AtomicBool = AtomicBool::new(false);

/// How the proxy's own outbound sockets are set up.
#[derive(Clone, Copy, Debug)]
pub struct ConnectOptions {
    /// `SO_MARK` to set, if any.
    pub mark: Option<u32>,
    /// Give up on a connect after this long.
    pub timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            mark: Some(DEFAULT_MARK),
            timeout: Duration::from_secs(1),
        }
    }
}

/// To this pod's own app or proxy on loopback: never intercepted, so no
/// mark (a sidecar without NET_ADMIN has none to set).
pub const LOOPBACK: ConnectOptions = ConnectOptions {
    mark: None,
    timeout: Duration::from_secs(1),
};

/// `GET path` on one fresh HTTP/1 connection to a local listener (the
/// app's health path, the proxy's `/ready`): the status that came back.
pub async fn local_get(
    addr: SocketAddr,
    path: &str,
    user_agent: &'static str,
) -> Result<http::StatusCode, Box<dyn std::error::Error + Send + Sync>> {
    local_request(addr, http::Method::GET, path, user_agent).await
}

/// `METHOD path` with an empty body on one fresh HTTP/1 connection to a
/// local listener (the app's health path, its reload URL, the proxy's
/// `/ready`): the status that came back.
pub async fn local_request(
    addr: SocketAddr,
    method: http::Method,
    path: &str,
    user_agent: &'static str,
) -> Result<http::StatusCode, Box<dyn std::error::Error + Send + Sync>> {
    let stream = connect(addr, LOOPBACK).await?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, format!("localhost:{}", addr.port()))
        .header(http::header::USER_AGENT, user_agent)
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    Ok(send.send_request(req).await?.status())
}

/// Applies the mark to any socket (TCP or UDP), tolerating EPERM.
pub fn apply_mark(sock: SockRef<'_>, mark: Option<u32>) {
    let Some(mark) = mark else { return };
    if MARK_REFUSED.load(Ordering::Relaxed) {
        return;
    }
    if let Err(e) = sock.set_mark(mark) {
        if !MARK_REFUSED.swap(true, Ordering::Relaxed) {
            tracing::info!(error = %e, "cannot set SO_MARK (not privileged?); fine in explicit mode");
        }
    }
}

/// Connects a marked TCP socket with a deadline, TCP_NODELAY on.
pub async fn connect(addr: SocketAddr, opts: ConnectOptions) -> io::Result<TcpStream> {
    let domain = Domain::for_address(addr);
    let sock = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    sock.set_nonblocking(true)?;
    sock.set_tcp_nodelay(true)?;
    apply_mark(SockRef::from(&sock), opts.mark);
    let sock = TcpSocket::from_std_stream(sock.into());
    match tokio::time::timeout(opts.timeout, sock.connect(addr)).await {
        Ok(res) => res,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connect to {addr} timed out after {:?}", opts.timeout),
        )),
    }
}

/// A hyper-util connector that dials `http://IP:PORT` URIs with [`connect`].
/// Only IP literals are accepted: names were resolved by discovery already.
#[derive(Clone, Copy, Debug, Default)]
pub struct MarkedConnector {
    pub opts: ConnectOptions,
}

/// The connected stream, wrapped for hyper.
pub struct MarkedStream(pub TokioIo<Io>);

/// A connection: plain TCP, or TLS over it (the proxy's mTLS to a peer's
/// inbound and TLS to mesh-control; mesh-control's accepted sessions).
/// One type, so pools, relays and both HTTP stacks carry either without
/// knowing which.
pub enum Io {
    Plain(TcpStream),
    Tls(Box<Flat<tokio_rustls::TlsStream<TcpStream>>>),
}

impl Io {
    /// The socket under it.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Io::Plain(s) => s,
            Io::Tls(s) => s.0.get_ref().0,
        }
    }

    /// Wraps `tcp` in a TLS client session (the handshake runs here).
    pub async fn tls(
        tcp: TcpStream,
        config: std::sync::Arc<rustls::ClientConfig>,
        name: rustls_pki_types::ServerName<'static>,
    ) -> io::Result<Io> {
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await?;
        Ok(Io::Tls(Box::new(Flat(stream.into()))))
    }
}

/// A TLS session that says it takes no vectored writes. rustls seals each
/// buffer of a vectored write as a record of its own (headers, then body:
/// two records and two seals per message); told "not vectored", hyper
/// flattens a message into one buffer, so one record goes out per write.
/// Every TLS session the proxy carries HTTP over is wrapped in it: the
/// ones it opens ([`Io::Tls`]) and the inbound's.
pub struct Flat<T>(pub T);

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Flat<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Flat<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

impl tokio::io::AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl tower::Service<http::Uri> for MarkedConnector {
    type Response = MarkedStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<MarkedStream>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let opts = self.opts;
        Box::pin(async move {
            let addr = uri_addr(&uri)?;
            Ok(MarkedStream(TokioIo::new(Io::Plain(
                connect(addr, opts).await?,
            ))))
        })
    }
}

fn uri_addr(uri: &http::Uri) -> io::Result<SocketAddr> {
    let host = uri
        .host()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "URI has no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip = host.parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{host:?} is not an IP address"),
        )
    })?;
    Ok(SocketAddr::new(ip, uri.port_u16().unwrap_or(80)))
}

impl Connection for MarkedStream {
    fn connected(&self) -> Connected {
        self.0.inner().tcp().connected()
    }
}

impl hyper::rt::Read for MarkedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for MarkedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connects_and_refuses() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let opts = ConnectOptions::default();
        assert!(connect(addr, opts).await.is_ok());
        drop(l);
        assert!(connect(addr, opts).await.is_err());
    }

    #[test]
    fn uri_needs_ip() {
        assert!(uri_addr(&"http://10.0.0.1:81/x".parse().unwrap()).is_ok());
        assert!(uri_addr(&"http://[::1]/".parse().unwrap()).is_ok());
        assert!(uri_addr(&"http://hello/".parse().unwrap()).is_err());
    }
}
