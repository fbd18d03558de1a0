//! Tunnels through HTTP: protocol upgrades (WebSocket) after a `101`, and
//! `CONNECT` in explicit proxy mode (TLS to external hosts, or opaque TCP
//! to a mesh service by name).

use super::http::{resolve, HttpOutbound};
use super::target::{is_own, Names, Route};
use crate::net::connect as dial;
use crate::proxy::body::{RespBody, StreamGuard};
use crate::proxy::protocol::relay;
use crate::proxy::rescue::MeshError;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// After a `101 Switching Protocols`, joins the caller's connection and
/// the upstream's and relays bytes until both end. The response's guard
/// (bulkhead slot, inbound permit) moves into the tunnel: an upgraded
/// connection counts as a call for as long as it lives.
pub fn splice_upgrade(downstream: OnUpgrade, resp: &mut Response<RespBody>, idle: Duration) {
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
    });
}

/// `CONNECT host:port`: connects (a mesh name goes to one of the
/// service's endpoints, through its breaker and bulkhead), answers 200,
/// then relays the caller's bytes.
pub async fn connect(h: &HttpOutbound, mut req: Request<Incoming>) -> Response<RespBody> {
    let target = match open(h, &req).await {
        Ok(t) => t,
        Err(e) => {
            tracing::debug!(error = %e, "CONNECT refused");
            return e.to_response().map(Either::Right);
        }
    };
    let downstream = hyper::upgrade::on(&mut req);
    let idle = h.opaque.idle;
    tokio::spawn(async move {
        match downstream.await {
            Ok(d) => finish(TokioIo::new(d), target.0, idle, Some(target.1)).await,
            Err(e) => tracing::debug!(error = %e, "CONNECT upgrade did not complete"),
        }
    });
    Response::new(Either::Right(Full::new(Bytes::new())))
}

async fn open(
    h: &HttpOutbound,
    req: &Request<Incoming>,
) -> Result<(tokio::net::TcpStream, StreamGuard), MeshError> {
    let authority = req
        .uri()
        .authority()
        .ok_or_else(|| MeshError::BadRequest("CONNECT needs host:port".into()))?;
    let route = Names {
        domain_suffix: &h.domain_suffix,
    }
    .route(&h.dir.table(), authority.as_str())?;
    match route {
        Route::Service(svc) => {
            h.metrics.traffic.connection(&svc.name, "connect");
            let mut opened = h.opaque.open(&svc).await.inspect_err(|e| {
                h.metrics.mesh_error(&svc.name, e.reason());
            })?;
            opened.confirm();
            let guard = StreamGuard {
                bulkhead: Some(opened.slot),
                ..StreamGuard::default()
            };
            Ok((opened.stream, guard))
        }
        Route::External { host, port } => {
            let addr = resolve(&host, port).await?;
            if is_own(&h.own_addrs, addr) {
                return Err(MeshError::LoopDetected);
            }
            let opts = crate::net::ConnectOptions {
                mark: h.opaque.mark,
                timeout: h.upstreams.connect_timeout(),
            };
            let stream = dial(addr, opts)
                .await
                .map_err(|e| MeshError::ConnectFailed {
                    addr,
                    reason: e.to_string(),
                })?;
            Ok((stream, StreamGuard::default()))
        }
    }
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
