//! What every upstream connection shares (HTTP/1 and HTTP/2 pools, opaque
//! TCP, CONNECT tunnels): the TCP connect as a mesh error, and readable
//! errors.

use crate::net::{connect, ConnectOptions};
use crate::proxy::rescue::MeshError;
use std::net::SocketAddr;
use tokio::net::TcpStream;

/// A marked TCP connection to `addr` within `opts.timeout`.
pub async fn tcp(addr: SocketAddr, opts: ConnectOptions) -> Result<TcpStream, MeshError> {
    connect(addr, opts)
        .await
        .map_err(|e| MeshError::ConnectFailed {
            addr,
            reason: e.to_string(),
        })
}

/// `a: b: c` from an error and its sources: hyper's top-level messages
/// alone ("client error (Connect)") hide the cause.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
