//! Requests to servers outside the mesh (the gateway's JWKS URLs, the
//! OTLP collector spans are exported to), over the same name-resolving,
//! marked connector as the control plane's client; `https://` is checked
//! against the system's roots (rustls-native-certs), loaded once per
//! process.

use super::connect::{ClientTls, ResolvingConnector};
use crate::net::{ConnectOptions, MarkedConnector};
use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// A cheap-to-clone client for outside documents.
#[derive(Clone)]
pub struct Fetcher {
    http: Client<ResolvingConnector, Full<Bytes>>,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fetcher")
    }
}

/// The system's roots as a rustls client configuration (TLS 1.3 and 1.2,
/// as outside servers need); `None` when the system has none.
fn public_roots() -> Option<Arc<rustls::ClientConfig>> {
    static CONFIG: OnceLock<Option<Arc<rustls::ClientConfig>>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "reading the system's CA certificates");
            }
            let mut roots = rustls::RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return None;
            }
            let config =
                rustls::ClientConfig::builder_with_provider(crate::identity::tls::provider())
                    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                    .ok()?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
            Some(Arc::new(config))
        })
        .clone()
}

impl Fetcher {
    /// `mark`: the proxy's socket mark, so its own connections are never
    /// redirected back into it.
    pub fn new(mark: Option<u32>, connect_timeout: Duration) -> Fetcher {
        let inner = MarkedConnector {
            opts: ConnectOptions {
                mark,
                timeout: connect_timeout,
            },
        };
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(ResolvingConnector {
                inner,
                tls: public_roots().map(ClientTls::Public),
            });
        Fetcher { http }
    }

    /// The body of `GET url`, at most `limit` bytes, within `timeout`;
    /// anything but a 200 is an error naming the status.
    pub async fn get(&self, url: &Uri, limit: usize, timeout: Duration) -> Result<Bytes, String> {
        let req = Request::get(url.clone()).header(http::header::ACCEPT, "application/json");
        self.send(req, Full::default(), limit, timeout).await
    }

    /// `POST url` with `body` of `content_type`; the answer's body (at
    /// most `limit` bytes) when it is a 200.
    pub async fn post(
        &self,
        url: &Uri,
        content_type: &'static str,
        body: Bytes,
        limit: usize,
        timeout: Duration,
    ) -> Result<Bytes, String> {
        let req = Request::post(url.clone()).header(http::header::CONTENT_TYPE, content_type);
        self.send(req, Full::new(body), limit, timeout).await
    }

    async fn send(
        &self,
        req: http::request::Builder,
        body: Full<Bytes>,
        limit: usize,
        timeout: Duration,
    ) -> Result<Bytes, String> {
        let req = req
            .header(
                http::header::USER_AGENT,
                concat!("mesh/", env!("CARGO_PKG_VERSION")),
            )
            .body(body)
            .map_err(|e| e.to_string())?;
        let fetch = async {
            let resp = self.http.request(req).await.map_err(|e| {
                let mut msg = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    msg = format!("{msg}: {s}");
                    src = s.source();
                }
                msg
            })?;
            if resp.status() != http::StatusCode::OK {
                return Err(format!("answered {}", resp.status()));
            }
            let body = Limited::new(resp.into_body(), limit)
                .collect()
                .await
                .map_err(|e| format!("reading the body: {e}"))?;
            Ok(body.to_bytes())
        };
        tokio::time::timeout(timeout, fetch)
            .await
            .map_err(|_| format!("no answer within {}ms", timeout.as_millis()))?
    }
}
