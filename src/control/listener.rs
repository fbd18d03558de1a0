//! mesh-control's listener: TCP, then TLS when identity is on.
//!
//! Handshakes run in their own tasks, so a client that opens a connection
//! and says nothing holds no one else up; finished connections queue for
//! axum with who they are ([`Peer`]: the address, and the identity its
//! client certificate proved, if any).

use super::auth::Peer;
use crate::identity::tls::{peer_identity, TlsIdentity};
use crate::net::{Flat, Io};
use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for axum to take them.
const BACKLOG: usize = 256;

pub struct ControlListener {
    local: SocketAddr,
    rx: mpsc::Receiver<(Io, Peer)>,
    _accept: tokio_util::task::AbortOnDropHandle<()>,
}

impl ControlListener {
    /// Starts accepting on `tcp`; with `tls`, every connection is TLS.
    pub fn new(tcp: TcpListener, tls: Option<Arc<TlsIdentity>>) -> io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, rx) = mpsc::channel(BACKLOG);
        let accept = tokio::spawn(accept_loop(tcp, tls, tx));
        Ok(ControlListener {
            local,
            rx,
            _accept: tokio_util::task::AbortOnDropHandle::new(accept),
        })
    }
}

async fn accept_loop(
    tcp: TcpListener,
    tls: Option<Arc<TlsIdentity>>,
    tx: mpsc::Sender<(Io, Peer)>,
) {
    loop {
        let (stream, addr) = match tcp.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors, mostly: wait rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Watch lines are small writes that must leave at once.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        dead_peer_timeout(&stream);
        let Some(tls) = &tls else {
            let peer = Peer { addr, id: None };
            if tx.send((Io::Plain(stream), peer)).await.is_err() {
                return;
            }
            continue;
        };
        let (tls, tx) = (tls.clone(), tx.clone());
        tokio::spawn(async move {
            let config = match tls.control_server() {
                Ok(c) => Arc::new(c),
                Err(e) => return tracing::error!(error = %e, "no TLS configuration"),
            };
            let accept = tokio_rustls::TlsAcceptor::from(config).accept(stream);
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
                Ok(Ok(s)) => {
                    let id = peer_identity(s.get_ref().1);
                    let _ = tx
                        .send((Io::Tls(Box::new(Flat(s.into()))), Peer { addr, id }))
                        .await;
                }
                Ok(Err(e)) => {
                    tracing::info!(client = %addr, error = %e, "TLS handshake refused")
                }
                Err(_) => tracing::debug!(client = %addr, "TLS handshake timed out"),
            }
        });
    }
}

impl axum::serve::Listener for ControlListener {
    type Io = Io;
    type Addr = Peer;

    async fn accept(&mut self) -> (Io, Peer) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept task ended: only when the listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Peer> {
        Ok(Peer {
            addr: self.local,
            id: None,
        })
    }
}

impl Connected<IncomingStream<'_, ControlListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, ControlListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// How long a peer may leave sent data unacknowledged (or, idle, keep-alive
/// probes unanswered) before the kernel drops the connection. A proxy
/// whose pod vanished without a FIN would otherwise stay listed as
/// watching for the ~15 min of TCP retransmissions, and every drain would
/// wait for it: the watch's keep-alive lines (every `--keepalive-interval`)
/// always leave data in flight, so a dead peer is found within this bound.
pub const DEAD_PEER_TIMEOUT: Duration = Duration::from_secs(10);

fn dead_peer_timeout(stream: &tokio::net::TcpStream) {
    let sock = socket2::SockRef::from(stream);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(5))
        .with_interval(Duration::from_secs(1))
        .with_retries(5);
    if let Err(e) = sock
        .set_tcp_keepalive(&keepalive)
        .and_then(|()| sock.set_tcp_user_timeout(Some(DEAD_PEER_TIMEOUT)))
    {
        tracing::debug!(error = %e, "cannot set TCP keep-alive or TCP_USER_TIMEOUT");
    }
}
