//! How one request reaches the control plane: built on the replica in
//! use, sent, read within the deadlines, and sent again to the next
//! replica when that one gave no answer (see `failover`).

use super::watch::{self, WatchStream};
use super::{ClientError, ControlClient, MAX_BODY_BYTES};
use crate::model::ApiError;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use serde::de::DeserializeOwned;
use std::future::Future;
use std::io;
use std::time::Duration;

/// Whether a request that may have reached a replica before it failed
/// (the connection broke, or no answer came in time) is sent again to the
/// next one. One that never left (the connect failed) or was answered 503
/// is always sent again: no replica acted on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Replay {
    /// Idempotent here: GET, PUT, DELETE, a registration (an upsert by
    /// instance id), a certificate request.
    Safe,
    /// Not idempotent (a new token, a rollback): only if it never left.
    IfUnsent,
}

/// One attempt at one replica that did not succeed.
struct Failed {
    error: ClientError,
    /// The request may have reached the replica.
    sent: bool,
    /// Another replica may do better: no HTTP answer, or a 503.
    moves: bool,
}

impl Failed {
    /// An HTTP answer: final unless it is a 503.
    fn answer(error: ClientError, status: StatusCode) -> Failed {
        Failed {
            error,
            sent: false,
            moves: status == StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// No HTTP answer after the request may have left.
    fn lost(error: ClientError) -> Failed {
        let moves = matches!(error, ClientError::Unreachable { .. });
        Failed {
            error,
            sent: true,
            moves,
        }
    }
}

/// One plain request, as sent to whichever replica is tried.
pub(super) struct Call<'a> {
    pub(super) method: Method,
    pub(super) path: &'a str,
    pub(super) body: Option<Bytes>,
    /// Headers beyond the usual ones (a bootstrap token, `Connection`).
    pub(super) headers: Vec<(HeaderName, HeaderValue)>,
    pub(super) replay: Replay,
}

// === impl ControlClient ===

impl ControlClient {
    /// An NDJSON stream at `path`: only the response headers have a
    /// deadline. Opening it is a GET: each replica is tried once.
    pub(super) async fn stream(
        &self,
        path: &str,
        idle_timeout: Duration,
    ) -> Result<WatchStream, ClientError> {
        self.over_replicas(Replay::Safe, |at| self.open(at, path, idle_timeout))
            .await
    }

    /// Opens the stream at `path` on the replica `at`.
    async fn open(
        &self,
        at: usize,
        path: &str,
        idle_timeout: Duration,
    ) -> Result<WatchStream, Failed> {
        let base = self.targets.url(at);
        let req = self
            .request(base, Method::GET, path, None)
            .map_err(|e| Failed::answer(e, StatusCode::OK))?;
        let resp = match tokio::time::timeout(self.request_timeout, self.http.request(req)).await {
            Err(_) => return Err(Failed::lost(timed_out(base, self.request_timeout))),
            Ok(res) => res.map_err(|e| transport(base, e))?,
        };
        let (parts, body) = resp.into_parts();
        if !parts.status.is_success() {
            let bytes = read_body(body, base).await.map_err(Failed::lost)?;
            return Err(Failed::answer(
                api_error(parts.status, &bytes),
                parts.status,
            ));
        }
        let body = body
            .map_err(|e| Box::new(e) as watch::BodyError)
            .boxed_unsync();
        Ok(WatchStream::new(body, idle_timeout, base.to_string()))
    }

    /// A plain request: GET, PUT and DELETE are idempotent, so sent again
    /// to the next replica after any failure without an answer; a POST
    /// only when it never left (see [`Replay`]).
    pub(super) async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: String,
        body: Option<Bytes>,
    ) -> Result<T, ClientError> {
        let replay = match method {
            Method::POST | Method::PATCH => Replay::IfUnsent,
            _ => Replay::Safe,
        };
        self.exchange(Call {
            method,
            path: &path,
            body,
            headers: Vec::new(),
            replay,
        })
        .await
    }

    pub(super) async fn exchange<T: DeserializeOwned>(
        &self,
        call: Call<'_>,
    ) -> Result<T, ClientError> {
        let (status, bytes) = self
            .over_replicas(call.replay, |at| self.attempt(at, &call))
            .await?;
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| ClientError::Decode(format!("{}: {e}", call.path)))
    }

    /// Sends `call` to the replica `at`: its status and body, or why not.
    async fn attempt(&self, at: usize, call: &Call<'_>) -> Result<(StatusCode, Bytes), Failed> {
        let base = self.targets.url(at);
        let mut req = self
            .request(base, call.method.clone(), call.path, call.body.clone())
            .map_err(|e| Failed::answer(e, StatusCode::OK))?;
        for (name, value) in &call.headers {
            req.headers_mut().insert(name.clone(), value.clone());
        }
        let exchange = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| transport(base, e))?;
            let (parts, body) = resp.into_parts();
            let bytes = read_body(body, base).await.map_err(Failed::lost)?;
            Ok::<_, Failed>((parts.status, bytes))
        };
        let (status, bytes) = match tokio::time::timeout(self.request_timeout, exchange).await {
            Err(_) => return Err(Failed::lost(timed_out(base, self.request_timeout))),
            Ok(res) => res?,
        };
        if status == StatusCode::SERVICE_UNAVAILABLE {
            return Err(Failed::answer(api_error(status, &bytes), status));
        }
        Ok((status, bytes))
    }

    /// Runs `attempt` on the replica in use, then, while it fails without
    /// an answer (or with a 503) and `replay` allows, on each other one
    /// once, in order from it. Every such failure moves the whole process
    /// on ([`Targets::fail_over`]); the last failure is the answer.
    async fn over_replicas<T, F, Fut>(
        &self,
        replay: Replay,
        mut attempt: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(usize) -> Fut,
        Fut: Future<Output = Result<T, Failed>>,
    {
        let n = self.targets.len();
        let start = self.targets.current();
        let mut tried = 0;
        loop {
            let at = (start + tried) % n;
            let failed = match attempt(at).await {
                Ok(v) => return Ok(v),
                Err(f) => f,
            };
            if !failed.moves {
                return Err(failed.error);
            }
            self.targets
                .fail_over(at, &failed.error, self.failovers.as_ref());
            tried += 1;
            if tried == n || (failed.sent && replay == Replay::IfUnsent) {
                return Err(failed.error);
            }
        }
    }

    fn request(
        &self,
        base: &str,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Request<Full<Bytes>>, ClientError> {
        let uri: Uri = format!("{base}{path}")
            .parse()
            .map_err(|e| ClientError::InvalidUrl(format!("{base}{path}: {e}")))?;
        let mut builder = Request::builder().method(method).uri(uri);
        if body.is_some() {
            builder = builder.header(http::header::CONTENT_TYPE, "application/json");
        }
        if let Some(token) = &self.bearer {
            builder = builder.header(http::header::AUTHORIZATION, token.clone());
        }
        builder
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| ClientError::InvalidUrl(e.to_string()))
    }
}

/// A failed exchange with `base`, before any answer: whether the request
/// left is what hyper can tell (a failed connect sent nothing).
fn transport(base: &str, err: hyper_util::client::legacy::Error) -> Failed {
    let sent = !err.is_connect();
    // The useful part (refused, timed out, reset) is the io::Error at
    // the bottom of the chain; hyper's own layers only say "connect".
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    let mut error = None;
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            let copy = match io.raw_os_error() {
                Some(code) => io::Error::from_raw_os_error(code),
                None => io::Error::new(io.kind(), io.to_string()),
            };
            error = Some(ClientError::unreachable(base, copy));
            break;
        }
        cur = e.source();
    }
    let error = error.unwrap_or_else(|| {
        let msg = match std::error::Error::source(&err) {
            Some(src) => format!("{err}: {src}"),
            None => err.to_string(),
        };
        ClientError::unreachable(base, io::Error::other(msg))
    });
    Failed {
        error,
        sent,
        moves: true,
    }
}

fn timed_out(base: &str, within: Duration) -> ClientError {
    let msg = format!("no answer within {}s", within.as_secs_f64());
    ClientError::unreachable(base, io::Error::new(io::ErrorKind::TimedOut, msg))
}

pub(super) async fn read_body(
    body: hyper::body::Incoming,
    url: &str,
) -> Result<Bytes, ClientError> {
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ClientError::Decode(format!(
            "response body larger than {MAX_BODY_BYTES} bytes"
        ))),
        Err(e) => Err(ClientError::unreachable(
            url,
            io::Error::other(format!("reading the response: {e}")),
        )),
    }
}

/// Non-2xx: the body should be an [`ApiError`]; anything else (a proxy's
/// HTML page, say) is kept readable in the message.
pub(super) fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    let error = serde_json::from_slice::<ApiError>(body).unwrap_or_else(|_| {
        let text = String::from_utf8_lossy(&body[..body.len().min(200)])
            .trim()
            .to_string();
        ApiError {
            error: if text.is_empty() {
                status.canonical_reason().unwrap_or("error").to_lowercase()
            } else {
                text
            },
            fields: Vec::new(),
        }
    });
    ClientError::Api {
        status: status.as_u16(),
        error,
    }
}
