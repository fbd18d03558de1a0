//! The gateway's listener (`--listen`): outside clients, over plaintext
//! HTTP/1.1 and h2c, or TLS with HTTP/2 by ALPN when certificates are
//! given. Each request goes through the steps of the module comment in
//! `gateway/mod.rs`; the upstream call is the sidecar's own
//! (`Services::call`), and every mesh-made answer is rendered by the one
//! renderer (`rescue::render`).
//!
//! To the backend, a request goes as HTTP/1.1 (its path rewritten, its
//! `Host` the client's or the rewrite's), except gRPC, which needs HTTP/2:
//! what a browser speaks to the edge says nothing of what an app speaks,
//! and HTTP/1.1 is what every app serves (Envoy's default for a cluster).

use super::jwt::{self, Failure, KeySets};
use super::limit::{Decision, Limiters};
use super::table::CompiledRule;
use super::{cors, filters};
use crate::discovery::Directory;
use crate::proxy::admission::Admission;
use crate::proxy::body::RespBody;
use crate::proxy::headers::X_REQUEST_ID;
use crate::proxy::limits::Limits;
use crate::proxy::outbound::policy::Caps;
use crate::proxy::outbound::request::{Services, UpstreamEndpoint};
use crate::proxy::rescue::{
    self, MeshError, MESH_ERROR, RATELIMIT_LIMIT, RATELIMIT_REMAINING, RATELIMIT_RESET,
};
use crate::proxy::server::{self, Accepted};
use crate::proxy::upstream::{Proto, Upstreams};
use crate::proxy::{grpc, headers};
use crate::telemetry::access_log::{self as log, AccessLog, Entry, Seen};
use crate::telemetry::ProxyMetrics;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::{Body, Incoming};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Everything the gateway's requests share.
pub struct Gateway {
    pub dir: Arc<Directory>,
    pub upstreams: Arc<Upstreams>,
    pub metrics: Arc<ProxyMetrics>,
    /// The gateway's service (`--service`), sent as `x-mesh-caller` to
    /// peer proxies when identity is off (with it on, the certificate
    /// says who calls).
    pub caller: Option<HeaderValue>,
    /// `1.1 mesh-<id>`, appended to `via`; seeing it again is a loop.
    pub via: HeaderValue,
    pub via_token: String,
    pub limits: Arc<Limits>,
    pub admission: Admission,
    /// `None`: plaintext.
    pub tls: Option<TlsAcceptor>,
    pub access_log: Option<AccessLog>,
    /// With `--otlp-endpoint`: client spans of the calls to backends.
    pub tracer: Option<Arc<crate::telemetry::trace::Tracer>>,
    /// Recent decision trails (`mesh-ctl explain`).
    pub trails: Arc<crate::proxy::outbound::trails::Trails>,
    /// Calls to tapped services (`mesh-ctl tap`).
    pub tap: Arc<crate::proxy::outbound::tap::Tap>,
    /// JWKS caches, by source, across route changes.
    pub keys: KeySets,
    /// Rate-limit buckets, by rule, across route changes.
    pub limiters: Limiters,
}

/// How often unused key sets and limiters are dropped, and full buckets
/// forgotten.
const TIDY_EVERY: Duration = Duration::from_secs(30);

/// The `route` label of requests no route matched.
const NO_ROUTE: &str = "(none)";

/// What one request came to, for the log and the metrics.
#[derive(Default)]
struct Outcome {
    rule: Option<Arc<CompiledRule>>,
    service: Option<String>,
    /// The gateway started the request's trace (none came).
    fresh_trace: bool,
}

impl Gateway {
    /// Accepts outside clients until `shutdown`, then drains for `drain`.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: CancellationToken,
        drain: Duration,
    ) {
        let this = self;
        let tidy = this.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(TIDY_EVERY) => {}
                    () = stop.cancelled() => return,
                }
                tidy.limiters.tidy();
                tidy.keys.retain_used();
            }
        });
        server::accept_until(
            listener,
            &shutdown,
            drain,
            &this.admission,
            |stream, peer, accepted| {
                let this = this.clone();
                let stop = shutdown.clone();
                async move { this.serve_conn(stream, peer, &stop, accepted).await }
            },
        )
        .await;
    }

    async fn serve_conn(
        self: &Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        shutdown: &CancellationToken,
        accepted: Accepted,
    ) {
        let timeout = self.limits.header_read_timeout;
        let Some(acceptor) = &self.tls else {
            let (io, proto) = match server::client_http(stream, timeout).await {
                Ok(Some(http)) => http,
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "gateway connection failed before its request");
                    return;
                }
            };
            return self
                .serve_io(io, peer, false, proto, shutdown, accepted)
                .await;
        };
        // The handshake counts against the first request's header timeout.
        let tls = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake not finished within the header timeout");
                return;
            }
        };
        let proto = match tls.get_ref().1.alpn_protocol() {
            Some(b"h2") => Proto::Http2,
            _ => Proto::Http1,
        };
        Box::pin(self.serve_io(tls, peer, true, proto, shutdown, accepted)).await;
    }

    async fn serve_io<I>(
        self: &Arc<Self>,
        io: I,
        peer: SocketAddr,
        https: bool,
        proto: Proto,
        shutdown: &CancellationToken,
        accepted: Accepted,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let this = self.clone();
        let handler = move |req| Box::pin(this.clone().handle(req, peer, https));
        if let Err(e) =
            server::serve_http(io, handler, proto, shutdown, &self.limits, accepted).await
        {
            tracing::debug!(%peer, error = %e, "gateway connection ended with error");
        }
    }

    /// One request: always answered (mesh errors rendered here, so that
    /// they too carry the request id and are logged).
    async fn handle(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        https: bool,
    ) -> Result<Response<RespBody>, MeshError> {
        let arrived = SystemTime::now();
        let start = Instant::now();
        let grpc = grpc::is_grpc(req.headers());
        let id = headers::request_id(req.headers());
        let fresh_trace = headers::ensure_traceparent(req.headers_mut());
        // What the log shows of the request, before it is changed.
        let logged = self.access_log.as_ref().map(|_| {
            let host = request_host(&req).map(|(h, _)| h).unwrap_or_default();
            Seen::of(&req, host)
        });
        let mut outcome = Outcome {
            fresh_trace,
            ..Outcome::default()
        };
        let answer = self.dispatch(req, peer, https, &id, &mut outcome).await;
        let mut resp = answer.unwrap_or_else(|e| {
            tracing::debug!(error = %e, request_id = %id.to_str().unwrap_or(""), "answered by the gateway");
            rescue::render(&e, grpc)
        });
        resp.headers_mut().insert(X_REQUEST_ID, id.clone());
        let elapsed = start.elapsed();
        let route: &str = outcome.rule.as_ref().map_or(NO_ROUTE, |r| &r.route);
        match &outcome.rule {
            Some(r) => self.metrics.gateway.request(
                &r.route,
                resp.status().as_u16(),
                elapsed.as_secs_f64(),
            ),
            None => self.metrics.gateway.request(
                &Arc::from(NO_ROUTE),
                resp.status().as_u16(),
                elapsed.as_secs_f64(),
            ),
        }
        if let (Some(log), Some(seen)) = (&self.access_log, logged) {
            log.write(&Entry {
                time: log::timestamp(arrived),
                request_id: id.to_str().unwrap_or(""),
                trace_id: seen.trace_id.as_deref(),
                client: Some(peer.to_string()),
                caller: None,
                method: &seen.method,
                host: &seen.host,
                path: &seen.path,
                protocol: seen.protocol,
                route: outcome.rule.as_ref().map(|_| route),
                rule: outcome.rule.as_ref().map(|r| &*r.rule),
                upstream_service: outcome.service.as_deref(),
                upstream_endpoint: resp
                    .extensions()
                    .get::<UpstreamEndpoint>()
                    .map(|e| e.0.to_string()),
                status: resp.status().as_u16(),
                attempts: None,
                bytes: resp.body().size_hint().exact(),
                duration_ms: (elapsed.as_secs_f64() * 1e6).round() / 1e3,
                x_mesh_error: resp.headers().get(MESH_ERROR).and_then(|v| v.to_str().ok()),
                user_agent: seen.user_agent.as_deref(),
            });
        }
        Ok(resp)
    }

    async fn dispatch(
        &self,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        https: bool,
        id: &HeaderValue,
        outcome: &mut Outcome,
    ) -> Result<Response<RespBody>, MeshError> {
        if req
            .headers()
            .get_all(header::VIA)
            .iter()
            .any(|v| v.to_str().is_ok_and(|s| s.contains(&self.via_token)))
        {
            return Err(MeshError::LoopDetected);
        }
        let (host, authority) = request_host(&req)?;
        let path = crate::authz::normalize_path(req.uri().path()).into_owned();
        let query = req.uri().query().map(str::to_owned);
        // A preflight is routed as the request it announces.
        let preflight = cors::preflight_method(req.method(), req.headers());
        let method = preflight.as_ref().unwrap_or(req.method());
        let (rule, prefix) = {
            let table = self.dir.routes();
            let found = table.find(&host, method, &path, query.as_deref(), req.headers());
            match found {
                Some(m) => (m.rule.clone(), m.prefix.map(str::to_owned)),
                None => return Err(MeshError::NoRoute { host, path }),
            }
        };
        outcome.rule = Some(rule.clone());
        if let (Some(c), Some(m)) = (&rule.cors, &preflight) {
            return match cors::preflight(c, req.headers(), m) {
                Ok(headers) => {
                    let mut resp = Response::new(Either::Right(Full::new(Bytes::new())));
                    *resp.status_mut() = StatusCode::NO_CONTENT;
                    *resp.headers_mut() = headers;
                    Ok(resp)
                }
                Err(()) => Err(MeshError::CorsRefused(format!(
                    "origin, method or headers not allowed by route {}",
                    rule.route
                ))),
            };
        }
        let origin = rule
            .cors
            .as_ref()
            .and_then(|_| req.headers().get(header::ORIGIN).cloned());
        let attached = rule.attached(&self.keys, &self.limiters);
        let claims = match &attached.verifier {
            Some(v) => match v.verify(req.headers()).await {
                Ok(claims) => Some(claims),
                Err(f) => {
                    self.metrics.gateway.auth_failed(&rule.route, f.reason());
                    return Err(match f {
                        Failure::ClaimMismatch => MeshError::ClaimRefused { reason: f.reason() },
                        _ => MeshError::Unauthenticated {
                            reason: f.reason(),
                            description: f.description(),
                            missing: f == Failure::Missing,
                        },
                    });
                }
            },
            None => None,
        };
        let limited = match &attached.limiter {
            Some(l) => {
                let key = limit_key(&l.spec().key, peer, req.headers(), claims.as_ref());
                match l.check(&key).await {
                    Decision::Limited {
                        limit,
                        retry_after,
                        reset,
                    } => {
                        self.metrics.gateway.rate_limited(&rule.route);
                        return Err(MeshError::RateLimited {
                            limit,
                            retry_after,
                            reset,
                        });
                    }
                    Decision::Allowed {
                        limit,
                        remaining,
                        reset,
                    } => Some((limit, remaining, reset)),
                    Decision::FailedOpen => None,
                }
            }
            None => None,
        };
        let spec = &rule.spec;
        let scheme = scheme_value(https);
        if let Some(r) = filters::redirect(spec) {
            let port = authority.port_u16();
            let to = filters::location(
                r,
                scheme,
                &host,
                port,
                &path,
                prefix.as_deref(),
                query.as_deref(),
            );
            return redirect(r.status_code, &to);
        }
        let (new_host, new_path) = filters::rewrite(spec, &path, prefix.as_deref());
        let target = new_path.as_deref().unwrap_or(&path);
        let pq = match &query {
            Some(q) => format!("{target}?{q}"),
            None => target.to_string(),
        };
        let pq = PathAndQuery::try_from(pq)
            .map_err(|e| MeshError::BadRequest(format!("invalid request target: {e}")))?;
        *req.uri_mut() = Uri::from(pq);
        let host_value = match &new_host {
            Some(h) => HeaderValue::from_str(h),
            None => HeaderValue::from_str(authority.as_str()),
        }
        .map_err(|e| MeshError::BadRequest(format!("invalid host: {e}")))?;
        *req.version_mut() = match grpc::is_grpc(req.headers()) {
            true => Version::HTTP_2,
            false => Version::HTTP_11,
        };
        let h = req.headers_mut();
        headers::strip_hop_by_hop(h, false);
        // Forged by whoever called: only the mesh says these.
        headers::strip_mesh_headers(h);
        h.insert(header::HOST, host_value);
        headers::append_forwarded(h, peer.ip(), scheme);
        h.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(scheme));
        h.insert(X_REQUEST_ID, id.clone());
        h.append(header::VIA, self.via.clone());
        if let (Some(v), Some(claims)) = (&attached.verifier, &claims) {
            forward_claims(v.spec(), claims, h);
        }
        filters::modify_headers(spec, h, false);

        let backend = rule
            .pick_backend()
            .ok_or_else(|| MeshError::NoEndpoints(rule.route.to_string()))?;
        outcome.service = Some(backend.service.clone());
        let svc = self
            .dir
            .service(&backend.service)
            .ok_or_else(|| MeshError::UnknownService(backend.service.clone()))?;
        let caps = Caps {
            left: spec.timeouts.request,
            retries: spec.retry.map(|r| r.attempts),
        };
        let services = Services {
            dir: &self.dir,
            metrics: &self.metrics,
            upstreams: &self.upstreams,
            caller: self.caller.as_ref(),
            tag_endpoint: self.access_log.is_some(),
            trace: self.tracer.as_deref().map(|t| (t, outcome.fresh_trace)),
            access_log: None,
            trails: &self.trails,
            tap: &self.tap,
        };
        let mut resp = services.call(svc, req, caps).await?;
        let h = resp.headers_mut();
        if let Some((limit, remaining, reset)) = limited {
            h.insert(RATELIMIT_LIMIT, HeaderValue::from(limit));
            h.insert(RATELIMIT_REMAINING, HeaderValue::from(remaining));
            let secs = reset.as_secs() + u64::from(reset.subsec_nanos() > 0);
            h.insert(RATELIMIT_RESET, HeaderValue::from(secs));
        }
        if let Some(c) = &rule.cors {
            cors::decorate(c, origin.as_ref(), h);
        }
        filters::modify_headers(spec, h, true);
        Ok(resp)
    }
}

fn scheme_value(https: bool) -> &'static str {
    if https {
        "https"
    } else {
        "http"
    }
}

/// The bucket a request draws from: its client's address, a header's
/// value, or a claim's; requests without the header or claim share one.
fn limit_key(
    key: &str,
    peer: SocketAddr,
    headers: &HeaderMap,
    claims: Option<&serde_json::Map<String, serde_json::Value>>,
) -> String {
    match key.split_once(':') {
        Some(("header", name)) => headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string(),
        Some(("claim", name)) => claims
            .and_then(|c| c.get(name))
            .and_then(jwt::claim_text)
            .unwrap_or_else(|| "-".into()),
        _ => peer.ip().to_string(),
    }
}

/// The chosen claims as headers (a header named for a claim the token
/// lacks is removed, so a client cannot supply it), and `Authorization`
/// removed unless the route forwards it.
fn forward_claims(
    spec: &super::route::JwtAuth,
    claims: &serde_json::Map<String, serde_json::Value>,
    h: &mut HeaderMap,
) {
    for ch in &spec.claims_to_headers {
        let Ok(name) = HeaderName::from_bytes(ch.header.as_bytes()) else {
            continue;
        };
        let value = claims
            .get(&ch.claim)
            .and_then(jwt::claim_text)
            .and_then(|t| HeaderValue::from_str(&t).ok());
        match value {
            Some(v) => {
                h.insert(name, v);
            }
            None => {
                h.remove(name);
            }
        }
    }
    if !spec.forward_authorization {
        h.remove(header::AUTHORIZATION);
    }
}

/// The host a request is for (lowercase, without port) and its authority
/// as sent: `:authority` (HTTP/2, or HTTP/1's absolute form), else `Host`.
fn request_host<B>(req: &Request<B>) -> Result<(String, Authority), MeshError> {
    let authority = match req.uri().authority() {
        Some(a) => a.clone(),
        None => {
            let h = req
                .headers()
                .get(header::HOST)
                .ok_or_else(|| MeshError::BadRequest("no Host header".into()))?;
            Authority::try_from(h.as_bytes())
                .map_err(|_| MeshError::BadRequest("invalid Host header".into()))?
        }
    };
    let host = authority.host().trim_end_matches('.').to_ascii_lowercase();
    Ok((host, authority))
}

fn redirect(status: u16, location: &str) -> Result<Response<RespBody>, MeshError> {
    let loc = HeaderValue::from_str(location)
        .map_err(|e| MeshError::BadRequest(format!("redirect location: {e}")))?;
    let mut resp = Response::new(Either::Right(Full::new(Bytes::new())));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::FOUND);
    resp.headers_mut().insert(header::LOCATION, loc);
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_lose_port_and_case() {
        let req = Request::builder()
            .uri("/x")
            .header("host", "Shop.Example.COM:8443")
            .body(())
            .unwrap();
        let (host, authority) = request_host(&req).unwrap();
        assert_eq!(
            (host.as_str(), authority.port_u16()),
            ("shop.example.com", Some(8443))
        );
        let v6 = Request::builder().uri("http://[::1]:80/").body(()).unwrap();
        assert_eq!(request_host(&v6).unwrap().0, "[::1]");
        let none = Request::builder().uri("/").body(()).unwrap();
        assert!(request_host(&none).is_err());
    }
}
