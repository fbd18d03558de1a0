//! One `top` frame as text: a header naming the proxy and its control
//! plane, then a block per service, Hystrix-dashboard style (breaker state
//! and window, bulkhead occupancy, requests, retries and budget, endpoints).
//! Pure: the caller fetches, clears the screen and prints.

use super::state::{EndpointState, ProxyState, ServiceState};
use crate::output;
use mesh::model::state::BreakerState;

/// Width of the label column of a service block.
const LABEL: usize = 10;

pub fn frame(admin: &str, state: &ProxyState) -> String {
    let mut out = header(admin, state);
    out.push('\n');
    let services = &state.registry.services;
    if services.is_empty() {
        out.push_str("\nno services known to this proxy yet\n");
    }
    for svc in services {
        out.push('\n');
        out.push_str(&service_block(svc));
    }
    out
}

fn header(admin: &str, state: &ProxyState) -> String {
    let control = match (state.control.as_str(), state.control_connected) {
        ("", _) => "-".into(),
        (url, true) => format!("{url} (connected)"),
        (url, false) => format!("{url} (DISCONNECTED)"),
    };
    // Revision 0: no registry snapshot yet.
    let revision = match state.registry.revision {
        0 => "-".to_string(),
        r => r.to_string(),
    };
    format!("mesh top  proxy {admin}  control {control}  revision {revision}")
}

fn service_block(s: &ServiceState) -> String {
    let mut lines = vec![format!("{}  {}  {}", s.name, s.vip, s.balancer.as_str())];
    let mut row = |label: &str, text: String| lines.push(format!("  {label:<LABEL$} {text}"));

    row(
        "breaker",
        s.breaker.as_ref().map_or("-".into(), |b| {
            format!(
                "{:<9}  calls {}  failed {} ({})  slow {} ({})",
                breaker_state(b.state),
                b.calls,
                b.failures,
                pct(b.failure_rate),
                b.slow,
                pct(b.slow_rate)
            )
        }),
    );
    row(
        "bulkhead",
        s.bulkhead.as_ref().map_or("-".into(), |b| {
            format!(
                "in-flight {} of {}  queued {} of {}",
                b.in_flight, b.max_concurrent, b.queued, b.max_queued
            )
        }),
    );
    row(
        "requests",
        s.requests.as_ref().map_or("-".into(), |r| {
            format!(
                "total {}  failed {}  fast-failed {}",
                r.total, r.failed, r.fast_failed
            )
        }),
    );
    row(
        "retries",
        s.retries.as_ref().map_or("-".into(), |r| {
            format!(
                "retried {}  budget exhausted {}  budget available {}",
                r.retried, r.budget_exhausted, r.budget_available
            )
        }),
    );
    match &s.endpoints {
        None => row("endpoints", "-".into()),
        Some(eps) if eps.is_empty() => row("endpoints", "none".into()),
        Some(eps) => {
            let count = |want: &str| eps.iter().filter(|e| e.state == want).count();
            row(
                "endpoints",
                format!(
                    "{} ready  {} ejected  {} unhealthy",
                    count("ready"),
                    count("ejected"),
                    count("unhealthy")
                ),
            );
            let table = endpoints_table(eps);
            lines.extend(table.lines().map(|l| format!("    {l}")));
        }
    }
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

fn endpoints_table(eps: &[EndpointState]) -> String {
    let rows: Vec<Vec<String>> = eps
        .iter()
        .map(|e| {
            vec![
                e.id.clone(),
                e.addr.to_string(),
                e.state.clone(),
                e.in_flight.to_string(),
                format!("{:.1}ms", e.ewma_ms),
                e.ejections.to_string(),
            ]
        })
        .collect();
    output::table(
        &["ID", "ADDRESS", "STATE", "IN-FLIGHT", "EWMA", "EJECTIONS"],
        &rows,
    )
}

/// Open and half-open shout, as on a Hystrix dashboard.
fn breaker_state(state: BreakerState) -> &'static str {
    match state {
        BreakerState::Closed => "closed",
        BreakerState::Open => "OPEN",
        BreakerState::HalfOpen => "HALF-OPEN",
    }
}

fn pct(p: f64) -> String {
    format!("{p:.1}%")
}
