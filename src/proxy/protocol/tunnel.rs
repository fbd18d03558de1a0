//! Tunnels through HTTP, on both sides of the proxy: a protocol upgrade
//! (WebSocket) after a `101`, and a `CONNECT` once it is answered 200.
//! Either way the two connections are joined and relayed as bytes, and
//! what the call held (bulkhead slot, inbound permit) moves into the
//! tunnel: an upgraded connection counts as a call for as long as it
//! lives.

use super::relay::relay;
use super::PrefixedIo;
use crate::net::Io;
use crate::proxy::admission::ConnSlot;
use crate::proxy::body::{RespBody, StreamGuard};
use http::Response;
use http_body_util::Either;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// After a `101 Switching Protocols`, joins the caller's connection and
/// the upstream's and relays bytes until both end.
/// `slot`: the caller's connection slot, held for the tunnel's life.
pub fn splice_upgrade(
    downstream: OnUpgrade,
    resp: &mut Response<RespBody>,
    idle: Duration,
    slot: Option<ConnSlot>,
) {
    let upstream = hyper::upgrade::on(&mut *resp);
    let guard = match resp.body_mut() {
        Either::Left(body) => body.take_guard(),
        Either::Right(_) => None,
    };
    tokio::spawn(async move {
        match tokio::try_join!(downstream, upstream) {
            Ok((d, u)) => finish(TokioIo::new(d), TokioIo::new(u), idle, guard).await,
            Err(e) => tracing::debug!(error = %e, "upgrade did not complete"),
        }
        drop(slot);
    });
}

/// After a `CONNECT` is answered, relays the caller's connection to
/// `upstream` (already connected).
pub fn splice_connect(
    downstream: OnUpgrade,
    upstream: PrefixedIo<Io>,
    idle: Duration,
    guard: StreamGuard,
    slot: Option<ConnSlot>,
) {
    tokio::spawn(async move {
        match downstream.await {
            Ok(d) => finish(TokioIo::new(d), upstream, idle, Some(guard)).await,
            Err(e) => tracing::debug!(error = %e, "CONNECT upgrade did not complete"),
        }
        drop(slot);
    });
}

async fn finish<A, B>(a: A, b: B, idle: Duration, guard: Option<StreamGuard>)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    match relay(a, b, idle).await {
        Ok(end) => tracing::debug!(
            sent = end.sent,
            received = end.received,
            idle = end.idle,
            "tunnel ended"
        ),
        Err(e) => tracing::debug!(error = %e, "tunnel broke"),
    }
    drop(guard);
}
