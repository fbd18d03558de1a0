//! Dials the control plane by name or by IP over marked sockets.
//!
//! [`MarkedConnector`] only takes IP literals (the data plane never dials
//! names), but operators write `--control http://localhost:15010` or a
//! DNS name in a cluster. This wrapper resolves the name on each new
//! connection and tries the addresses in order, so the pool still keys
//! connections by the name and the Host header stays what the user wrote.

use crate::net::{MarkedConnector, MarkedStream};
use http::Uri;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use tower::Service;

/// At most this many resolved addresses are tried per connection.
const MAX_ADDRESSES: usize = 8;

#[derive(Clone, Copy, Debug)]
pub(super) struct ResolvingConnector {
    /// Dials one IP address with the mark and the connect timeout.
    pub(super) inner: MarkedConnector,
}

impl Service<Uri> for ResolvingConnector {
    type Response = MarkedStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<MarkedStream>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let mut inner = self.inner;
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "URI has no host"))?;
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            if bare.parse::<IpAddr>().is_ok() {
                return inner.call(uri).await;
            }
            let port = uri.port_u16().unwrap_or(80);
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((bare, port))
                .await?
                .take(MAX_ADDRESSES)
                .collect();
            let mut last = io::Error::new(
                io::ErrorKind::NotFound,
                format!("{bare} resolved to no address"),
            );
            for addr in addrs {
                let ip_uri: Uri = format!("http://{addr}/")
                    .parse()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                match inner.call(ip_uri).await {
                    Ok(stream) => return Ok(stream),
                    Err(e) => last = e,
                }
            }
            Err(last)
        })
    }
}
