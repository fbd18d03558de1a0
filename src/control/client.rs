//! HTTP client for the control plane's `/v1` API.
//!
//! Used by mesh-proxy (registration, heartbeats, the discovery watch) and by
//! mesh-ctl. Requests go over the proxy's marked sockets so interception
//! rules let them through; every plain request has a connect deadline and
//! an overall deadline, while a watch lives as long as its keep-alives do.
//! With several replicas listed, one that gives no answer is left for the
//! next (`failover`), by every request kind and the watch alike.

mod config;
mod connect;
mod exchange;
mod failover;
#[cfg(test)]
pub(crate) mod fake;
mod fetch;
mod lines;
mod policy;
mod watch;

pub use failover::control_urls;
pub use lines::{LineSplitter, LineTooLong, MAX_LINE_BYTES};
pub use watch::WatchStream;

use crate::identity::tls::TlsIdentity;
use crate::model::identity::{
    AddRoot, Certified, CertifyRequest, RootInfo, TokenIssued, TokenRequest, TrustBundle,
};
use crate::model::proxies::{Applied, ProxyList, WatcherInfo};
use crate::model::{
    ApiError, ControlStatus, Health, Heartbeat, RegisterRequest, Registered, ServiceInfo,
    ServiceSummary, Snapshot,
};
use crate::net::{ConnectOptions, MarkedConnector};
use bytes::Bytes;
use connect::ResolvingConnector;
#[cfg(test)]
use exchange::api_error;
use exchange::{Call, Replay};
use failover::Targets;
pub use fetch::Fetcher;
use http::{Method, Uri};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prometheus_client::metrics::counter::Counter;
use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

/// Giving up on a TCP connect to the control plane after this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Giving up on a whole request (connect, send, read the body) after this long.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest non-watch response body read (a snapshot of a big registry).
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Why a control-plane call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No HTTP answer: connect refused or timed out, name did not resolve,
    /// connection broke, or the request ran past its deadline.
    #[error("cannot reach control plane at {url}: {source}")]
    Unreachable { url: String, source: io::Error },
    /// The control plane answered with an error status.
    #[error("{}", DisplayApi(*status, error))]
    Api { status: u16, error: ApiError },
    /// A heartbeat for an instance the control plane does not know (404):
    /// the caller should register again.
    #[error("instance is not registered with the control plane")]
    UnknownInstance,
    /// No policy is applied for this service (404): it runs the defaults.
    #[error("no policy is applied for service {service:?} (it runs the default policy)")]
    UnknownPolicy { service: String },
    /// A watch stream stayed silent past its idle timeout.
    #[error("watch stream idle: no event or keep-alive within the idle timeout")]
    IdleTimeout,
    /// The answer was not what the API promises.
    #[error("unexpected answer from control plane: {0}")]
    Decode(String),
    /// The base URL is not `http://host[:port]`.
    #[error("invalid control plane URL: {0}")]
    InvalidUrl(String),
}

impl ClientError {
    /// An [`ClientError::Unreachable`] whose message is short: OS errors
    /// become their kind (`connection refused`) instead of carrying the
    /// `(os error 111)` noise.
    fn unreachable(url: &str, err: io::Error) -> Self {
        use io::ErrorKind as K;
        let plain = matches!(
            err.kind(),
            K::ConnectionRefused
                | K::ConnectionReset
                | K::ConnectionAborted
                | K::NotConnected
                | K::BrokenPipe
                | K::TimedOut
                | K::NetworkUnreachable
                | K::HostUnreachable
                | K::AddrNotAvailable
                | K::PermissionDenied
        );
        let source = if plain && err.raw_os_error().is_some() {
            io::Error::new(err.kind(), err.kind().to_string())
        } else {
            err
        };
        ClientError::Unreachable {
            url: url.to_string(),
            source,
        }
    }
}

struct DisplayApi<'a>(u16, &'a ApiError);

impl fmt::Display for DisplayApi<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (HTTP {})", error_summary(self.1), self.0)?;
        for field in &self.1.fields {
            write!(f, "; {}: {}", field.field, field.reason)?;
        }
        Ok(())
    }
}

/// The headline of an API error without its field list, for callers that
/// print the fields themselves: a server that already folded the fields
/// into `error` ("invalid request: port: ...") gets them cut off there.
pub fn error_summary(error: &ApiError) -> &str {
    let Some(first) = error.fields.first() else {
        return &error.error;
    };
    let folded = format!("{}: {}", first.field, first.reason);
    match error.error.find(&folded) {
        Some(0) | None => &error.error,
        Some(at) => error.error[..at].trim_end_matches([' ', ':', ';', ',']),
    }
}

/// A cheap-to-clone handle on the control plane's API.
#[derive(Clone, Debug)]
pub struct ControlClient {
    /// The replicas' `http://host:port` as the user gave them (without a
    /// trailing slash) and the one in use, shared by every clone: request
    /// URIs are built on it and errors name it.
    targets: Arc<Targets>,
    /// Pooled HTTP/1 connections over marked, name-resolving sockets.
    http: Client<ResolvingConnector, Full<Bytes>>,
    /// `Authorization: Bearer ...` on every request (mesh-ctl's admin token).
    bearer: Option<http::HeaderValue>,
    /// Counts the moves to another replica (mesh-proxy's metric).
    failovers: Option<Counter>,
    /// How long one replica has to answer a plain request (or a watch's
    /// headers) before the next is tried: [`REQUEST_TIMEOUT`] unless set.
    request_timeout: Duration,
}

impl ControlClient {
    /// A client for `http://host[:port]` (no path), or several such URLs
    /// separated by commas (replicas, tried in turn: see `failover`).
    /// `host` may be an IP or a name; names are resolved when a connection
    /// is opened.
    pub fn new(base_url: &str, mark: Option<u32>) -> Result<Self, ClientError> {
        Self::with_tls(base_url, mark, None)
    }

    /// A client for `http://` or `https://host[:port]` (or a comma
    /// separated list of them); `https` needs `tls` (the roots that
    /// mesh-control's certificate must chain to, and this process's
    /// certificate slot).
    pub fn with_tls(
        base_url: &str,
        mark: Option<u32>,
        tls: Option<Arc<TlsIdentity>>,
    ) -> Result<Self, ClientError> {
        let targets = Targets::parse(base_url)?;
        if let Some(url) = targets.urls().iter().find(|u| u.starts_with("https://")) {
            if tls.is_none() {
                return Err(ClientError::InvalidUrl(format!(
                    "{url:?}: https:// needs the trust bundle (--trust-bundle)"
                )));
            }
        }
        let inner = MarkedConnector {
            opts: ConnectOptions {
                mark,
                timeout: CONNECT_TIMEOUT,
            },
        };
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(ResolvingConnector {
                inner,
                tls: tls.map(connect::ClientTls::Mesh),
            });
        Ok(ControlClient {
            targets: Arc::new(targets),
            http,
            bearer: None,
            failovers: None,
            request_timeout: REQUEST_TIMEOUT,
        })
    }

    /// Counts every move to another replica on `counter`.
    pub fn with_failover_counter(mut self, counter: Counter) -> Self {
        self.failovers = Some(counter);
        self
    }

    /// Gives each replica `timeout` (at least 1 s) to answer instead of
    /// [`REQUEST_TIMEOUT`]: the registration agent's heartbeats must move
    /// on from a replica cut off by a partition (which answers nothing,
    /// not even a refusal) well within the lease.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout.max(Duration::from_secs(1));
        self
    }

    /// The replica at `url` let this process down outside a request (a
    /// watch stream it served broke, went silent or ended): the next
    /// request goes to the next replica, if `url` is still the one in use.
    pub fn fail_over(&self, url: &str, why: &dyn fmt::Display) {
        if let Some(at) = self.targets.position(url) {
            self.targets.fail_over(at, why, self.failovers.as_ref());
        }
    }

    /// Sends `token` as `Authorization: Bearer` on every request.
    pub fn with_bearer(mut self, token: &str) -> Result<Self, ClientError> {
        self.bearer = Some(bearer(token)?);
        Ok(self)
    }

    /// Asks for a certificate for the key behind `csr` (PEM). `token` is a
    /// bootstrap token, for a proxy with no certificate yet; renewals send
    /// none and are authenticated by the certificate in the TLS session.
    pub async fn certify(&self, csr: &str, token: Option<&str>) -> Result<Certified, ClientError> {
        let body = json_body(&CertifyRequest {
            csr: csr.to_string(),
        })?;
        let mut headers = Vec::new();
        if let Some(token) = token {
            headers.push((http::header::AUTHORIZATION, bearer(token)?));
            // This session has no certificate; the next requests must
            // come on one that presents the certificate about to arrive.
            headers.push((
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            ));
        }
        self.exchange(Call {
            method: Method::POST,
            path: "/v1/identity/certify",
            body: Some(body),
            headers,
            replay: Replay::Safe,
        })
        .await
    }

    pub async fn create_token(&self, req: &TokenRequest) -> Result<TokenIssued, ClientError> {
        self.call(
            Method::POST,
            "/v1/identity/tokens".into(),
            Some(json_body(req)?),
        )
        .await
    }

    pub async fn trust_bundle(&self) -> Result<TrustBundle, ClientError> {
        self.call(Method::GET, "/v1/identity/bundle".into(), None)
            .await
    }

    pub async fn add_root(&self, req: &AddRoot) -> Result<RootInfo, ClientError> {
        self.call(
            Method::POST,
            "/v1/identity/roots".into(),
            Some(json_body(req)?),
        )
        .await
    }

    pub async fn activate_root(&self, id: &str) -> Result<RootInfo, ClientError> {
        let path = format!("/v1/identity/roots/{}/activate", segment(id));
        self.call(Method::POST, path, None).await
    }

    pub async fn remove_root(&self, id: &str) -> Result<(), ClientError> {
        let path = format!("/v1/identity/roots/{}", segment(id));
        self.call::<serde_json::Value>(Method::DELETE, path, None)
            .await
            .map(drop)
    }

    /// The URL of the replica in use (the first given, until one failed).
    pub fn base_url(&self) -> &str {
        self.targets.url(self.targets.current())
    }

    /// Every replica's URL, in the order given.
    pub fn urls(&self) -> &[String] {
        self.targets.urls()
    }

    pub async fn services(&self) -> Result<Vec<ServiceSummary>, ClientError> {
        self.call(Method::GET, "/v1/services".into(), None).await
    }

    pub async fn service(&self, name: &str) -> Result<ServiceInfo, ClientError> {
        let path = format!("/v1/services/{}", segment(name));
        self.call(Method::GET, path, None).await
    }

    pub async fn snapshot(&self) -> Result<Snapshot, ClientError> {
        self.call(Method::GET, "/v1/snapshot".into(), None).await
    }

    pub async fn status(&self) -> Result<ControlStatus, ClientError> {
        self.call(Method::GET, "/v1/status".into(), None).await
    }

    pub async fn register(
        &self,
        service: &str,
        req: &RegisterRequest,
    ) -> Result<Registered, ClientError> {
        // A registration is an upsert by instance id: safe to send again.
        let path = format!("/v1/services/{}/instances", segment(service));
        self.exchange(Call {
            method: Method::POST,
            path: &path,
            body: Some(json_body(req)?),
            headers: Vec::new(),
            replay: Replay::Safe,
        })
        .await
    }

    /// Renews the lease and reports health; `UnknownInstance` on 404.
    pub async fn heartbeat(
        &self,
        service: &str,
        id: &str,
        health: Health,
    ) -> Result<(), ClientError> {
        let path = format!(
            "/v1/services/{}/instances/{}/heartbeat",
            segment(service),
            segment(id)
        );
        let body = json_body(&Heartbeat { health })?;
        match self
            .call::<serde_json::Value>(Method::PUT, path, Some(body))
            .await
        {
            Ok(_) => Ok(()),
            Err(ClientError::Api { status: 404, .. }) => Err(ClientError::UnknownInstance),
            Err(e) => Err(e),
        }
    }

    /// Removes the instance; the answer is the revision that removed it.
    pub async fn deregister(&self, service: &str, id: &str) -> Result<u64, ClientError> {
        let path = format!(
            "/v1/services/{}/instances/{}",
            segment(service),
            segment(id)
        );
        self.call::<Applied>(Method::DELETE, path, None)
            .await
            .map(|r| r.revision)
    }

    /// `PUT /v1/proxies/{id}/applied`: this proxy has applied `revision`.
    pub async fn applied(&self, proxy: &str, revision: u64) -> Result<u64, ClientError> {
        let path = format!("/v1/proxies/{}/applied", segment(proxy));
        let body = json_body(&Applied { revision })?;
        self.call::<Applied>(Method::PUT, path, Some(body))
            .await
            .map(|r| r.revision)
    }

    /// `PUT /v1/proxies/{id}/stats`: this proxy's rolling window; the
    /// answer says what operators are asking the proxies about.
    pub async fn stats(
        &self,
        proxy: &str,
        report: &crate::model::stats::StatsReport,
    ) -> Result<crate::model::stats::Asked, ClientError> {
        let path = format!("/v1/proxies/{}/stats", segment(proxy));
        self.call(Method::PUT, path, Some(json_body(report)?)).await
    }

    /// `PUT /v1/proxies/{id}/trails`: the decision trails of asked ids.
    pub async fn trails(
        &self,
        proxy: &str,
        trails: &crate::model::stats::Trails,
    ) -> Result<(), ClientError> {
        let path = format!("/v1/proxies/{}/trails", segment(proxy));
        self.call::<serde_json::Value>(Method::PUT, path, Some(json_body(trails)?))
            .await
            .map(|_| ())
    }

    /// `GET /v1/explain/{request_id}`: every proxy's trail of one request
    /// (waits for the proxies' next pushes).
    pub async fn explain(
        &self,
        request_id: &str,
    ) -> Result<crate::model::stats::Trails, ClientError> {
        let path = format!("/v1/explain/{}", segment(request_id));
        self.call(Method::GET, path, None).await
    }

    /// `GET /v1/dashboard`: the sums the dashboard stream sends, once.
    pub async fn dashboard(&self) -> Result<crate::model::stats::Dashboard, ClientError> {
        self.call(Method::GET, "/v1/dashboard".into(), None).await
    }

    /// `GET /v1/proxies`: the proxies watching; with `behind`, only those
    /// that have not applied that revision, and with `wait` (under
    /// [`REQUEST_TIMEOUT`]) the answer comes once none is, or at the end
    /// of the wait.
    pub async fn proxies(
        &self,
        behind: Option<u64>,
        wait: Option<Duration>,
    ) -> Result<ProxyList, ClientError> {
        let mut path = "/v1/proxies".to_string();
        if let Some(r) = behind {
            path.push_str(&format!("?behind={r}"));
            if let Some(w) = wait {
                path.push_str(&format!("&wait={}ms", w.as_millis()));
            }
        }
        self.call(Method::GET, path, None).await
    }

    /// Opens `GET /v1/tap/{service}`: NDJSON lines of the calls to it
    /// (and keep-alives), read with [`WatchStream::next_line`].
    pub async fn tap(
        &self,
        service: &str,
        idle_timeout: Duration,
    ) -> Result<WatchStream, ClientError> {
        let path = format!("/v1/tap/{}", segment(service));
        self.stream(&path, idle_timeout).await
    }

    /// Opens `GET /v1/watch?since=N`, as the proxy `who` when given. Only
    /// the response headers have a deadline; after that the stream lives
    /// while lines keep coming.
    pub async fn watch(
        &self,
        since: u64,
        idle_timeout: Duration,
        who: Option<&WatcherInfo>,
    ) -> Result<WatchStream, ClientError> {
        let mut path = format!("/v1/watch?since={since}");
        if let Some(w) = who {
            path.push_str(&format!("&proxy={}", segment(&w.proxy)));
            let rest = [
                ("service", &w.service),
                ("instance", &w.instance),
                ("version", &w.version),
            ];
            for (key, value) in rest {
                if let Some(v) = value {
                    path.push_str(&format!("&{key}={}", segment(v)));
                }
            }
        }
        self.stream(&path, idle_timeout).await
    }
}

fn bearer(token: &str) -> Result<http::HeaderValue, ClientError> {
    let mut v = http::HeaderValue::from_str(&format!("Bearer {}", token.trim()))
        .map_err(|_| ClientError::Decode("the token is not a valid header value".into()))?;
    v.set_sensitive(true);
    Ok(v)
}

fn json_body<T: serde::Serialize>(value: &T) -> Result<Bytes, ClientError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| ClientError::Decode(format!("encoding the request: {e}")))
}

/// Percent-encodes one path segment, so an odd name reaches the server
/// (which names the bad field) instead of breaking the URI here.
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b':') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Accepts `http://host[:port][/]`; returns it without the trailing slash.
fn check_base_url(url: &str) -> Result<String, ClientError> {
    let bad = |why: &str| ClientError::InvalidUrl(format!("{url:?}: {why}"));
    let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => {
            return Err(bad(&format!(
                "scheme {other:?} is not supported; use https:// (or http:// with identity off)"
            )))
        }
        None => return Err(bad("expected https://host:port")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err(bad("expected http://host:port with no path or query"));
    }
    Ok(url.trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests;
