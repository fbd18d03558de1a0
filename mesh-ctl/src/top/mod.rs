//! `mesh-ctl top`: polls a proxy's admin `/state` and redraws a dashboard
//! of its breakers, bulkheads, retries and endpoints in place until Ctrl-C
//! (`--once`: one frame, no screen control, for scripts and tests).

mod render;
mod state;
#[cfg(test)]
mod tests;

pub use render::frame;
pub use state::ProxyState;

use crate::cli::{Output, TopArgs};
use crate::error::{emit, CtlError};
use crate::output;
use bytes::Bytes;
use http::{StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use std::time::Duration;

/// ANSI: cursor home, then clear the screen.
const CLEAR: &str = "\x1b[H\x1b[2J";
/// One `/state` fetch gives up after this long.
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest `/state` body read.
const MAX_STATE_BYTES: usize = 16 * 1024 * 1024;

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

pub async fn run(args: &TopArgs, format: Output) -> Result<(), CtlError> {
    let url = state_url(&args.admin)?;
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    if args.once {
        let state = fetch(&client, &url).await?;
        if format == Output::Table {
            let parsed = ProxyState::deserialize(&state).map_err(|e| {
                CtlError::Admin(format!(
                    "cannot read proxy state at {url}: not the /state JSON: {e}"
                ))
            })?;
            return emit(frame(&args.admin, &parsed).trim_end());
        }
        return emit(&output::render(format, &state, |_| String::new())?);
    }
    tokio::select! {
        res = redraw(&client, &url, args, format) => res,
        // Ctrl-C is how `top` is meant to end: success.
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

/// One proxy's `/state`, parsed (for commands other than `top`).
pub async fn fetch_state(admin: &str) -> Result<ProxyState, CtlError> {
    let url = state_url(admin)?;
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let state = fetch(&client, &url).await?;
    ProxyState::deserialize(&state)
        .map_err(|e| CtlError::Admin(format!("cannot read proxy state at {url}: {e}")))
}

/// Fetches and redraws every interval; runs until the caller stops it
/// (Ctrl-C). An unreachable proxy is shown, not fatal: it may be restarting.
/// With `-o json|yaml`, each fetch prints the proxy's state as one
/// document of a stream instead (failures go to stderr).
async fn redraw(
    client: &HttpClient,
    url: &Uri,
    args: &TopArgs,
    format: Output,
) -> Result<(), CtlError> {
    let mut ticks = tokio::time::interval(args.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let fetched = fetch(client, url).await;
        if format != Output::Table {
            match fetched {
                Ok(state) => emit(&output::stream_doc(format, &state, |_| String::new())?)?,
                Err(e) => eprintln!("{e} (retrying every {:?})", args.interval),
            }
            continue;
        }
        let text = match fetched {
            Ok(state) => frame_of(&args.admin, &state),
            Err(e) => format!(
                "mesh top  proxy {}\n\n{e}\n(retrying every {:?})\n",
                args.admin, args.interval
            ),
        };
        emit(&format!("{CLEAR}{}", text.trim_end()))?;
    }
}

/// The dashboard frame of a `/state` document, or why it cannot be drawn.
fn frame_of(admin: &str, state: &serde_json::Value) -> String {
    match ProxyState::deserialize(state) {
        Ok(state) => frame(admin, &state),
        Err(e) => format!("mesh top  proxy {admin}\n\nnot the /state JSON: {e}\n"),
    }
}

/// The proxy's `/state`, as it sent it (`-o json` prints every field, not
/// only those the dashboard draws).
async fn fetch(client: &HttpClient, url: &Uri) -> Result<serde_json::Value, CtlError> {
    let fail = |why: String| CtlError::Admin(format!("cannot read proxy state at {url}: {why}"));
    let exchange = async {
        let resp = client
            .get(url.clone())
            .await
            .map_err(|e| fail(transport_reason(&e)))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_STATE_BYTES)
            .collect()
            .await
            .map_err(|e| fail(format!("reading the answer: {e}")))?
            .to_bytes();
        Ok::<_, CtlError>((status, body))
    };
    let (status, body) = tokio::time::timeout(FETCH_TIMEOUT, exchange)
        .await
        .map_err(|_| fail(format!("no answer within {}s", FETCH_TIMEOUT.as_secs())))??;
    if status != StatusCode::OK {
        return Err(fail(format!("HTTP {status}")));
    }
    serde_json::from_slice(&body).map_err(|e| fail(format!("not the /state JSON: {e}")))
}

/// The innermost cause (refused, reset): hyper's own layers only say "connect".
fn transport_reason(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = Some(err);
    let mut last = err.to_string();
    while let Some(e) = cur {
        last = e.to_string();
        cur = e.source();
    }
    last
}

/// `http://host:port`, `host:port` or either with `/state`: the `/state` URI.
pub fn state_url(admin: &str) -> Result<Uri, CtlError> {
    let bad = |why: &str| CtlError::Input(format!("--admin {admin:?}: {why}"));
    let with_scheme = if admin.contains("://") {
        admin.to_string()
    } else {
        format!("http://{admin}")
    };
    let base = with_scheme.trim_end_matches('/');
    let base = base.strip_suffix("/state").unwrap_or(base);
    let uri: Uri = format!("{base}/state")
        .parse()
        .map_err(|_| bad("not a URL"))?;
    if uri.scheme_str() != Some("http") {
        return Err(bad("only http:// is supported"));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if uri.path() != "/state" || uri.query().is_some() {
        return Err(bad("expected http://host:port"));
    }
    Ok(uri)
}
