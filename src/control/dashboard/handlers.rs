//! `GET /v1/dashboard`, `GET /v1/dashboard/stream` and `GET /dashboard`.

use super::{aggregate, events, Hub, DEFAULT_DELAY, MAX_DELAY, MAX_STREAMS, MIN_DELAY, STALE};
use crate::control::api::{ApiFailure, AppState, Caller};
use crate::model::stats::Dashboard;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures_util::stream;
use serde::Deserialize;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The page: plain HTML, CSS and JavaScript, no build step, no CDN.
const PAGE: &str = include_str!("page.html");

pub async fn page(Extension(caller): Extension<Caller>) -> Result<Response, ApiFailure> {
    caller.reader()?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
        .into_response())
}

fn now(st: &AppState) -> Dashboard {
    aggregate(&st.proxies.reports(STALE))
}

pub async fn snapshot(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Dashboard>, ApiFailure> {
    caller.reader()?;
    Ok(Json(now(&st)))
}

#[derive(Debug, Deserialize)]
pub struct StreamParams {
    /// Milliseconds between rounds of events.
    delay: Option<String>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub async fn stream(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(params): Query<StreamParams>,
) -> Result<Response, ApiFailure> {
    caller.reader()?;
    let delay = match params.delay.as_deref() {
        None => DEFAULT_DELAY,
        Some(text) => match text.parse::<u64>() {
            Ok(ms) if (MIN_DELAY..=MAX_DELAY).contains(&Duration::from_millis(ms)) => {
                Duration::from_millis(ms)
            }
            _ => {
                return Err(ApiFailure::field(
                    "delay",
                    format!(
                        "milliseconds, {} to {}",
                        MIN_DELAY.as_millis(),
                        MAX_DELAY.as_millis()
                    ),
                ))
            }
        },
    };
    let hub: &Arc<Hub> = &st.dashboard;
    let Some(slot) = hub.open() else {
        return Err(ApiFailure::Unavailable(format!(
            "{MAX_STREAMS} dashboard streams are open already; close one"
        )));
    };
    let mut ticks = tokio::time::interval(delay);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let shutdown = st.shutdown.clone();
    // Each round is one batch of events; the slot lives as long as the
    // stream (dropped when the client goes away).
    let rounds = stream::unfold(
        (st, ticks, slot, shutdown, Vec::<Event>::new()),
        |(st, mut ticks, slot, mut shutdown, mut pending)| async move {
            loop {
                if let Some(e) = pending.pop() {
                    return Some((
                        Ok::<Event, Infallible>(e),
                        (st, ticks, slot, shutdown, pending),
                    ));
                }
                if *shutdown.borrow() {
                    return None;
                }
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = shutdown.changed() => return None,
                }
                let at = unix_ms();
                pending = events(&now(&st), at)
                    .into_iter()
                    .rev()
                    .map(|v| Event::default().data(v.to_string()))
                    .collect();
            }
        },
    );
    Ok(Sse::new(rounds)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(10)))
        .into_response())
}
