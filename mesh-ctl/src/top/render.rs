//! One `top` frame as text: a header naming the proxy and its control
//! plane, then a block per service, Hystrix-dashboard style (breaker state
//! and window, bulkhead occupancy, requests, retries and budget, endpoints).
//! Pure: the caller fetches, clears the screen and prints.

use super::state::{EndpointState, ProxyState, ServiceState};
use crate::output;

/// Width of the label column of a service block.
const LABEL: usize = 10;

pub fn frame(admin: &str, state: &ProxyState) -> String {
    let mut out = header(admin, state);
    out.push('\n');
    let services = state
        .registry
        .as_ref()
        .map(|r| r.services.as_slice())
        .unwrap_or_default();
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
    let control = match (&state.control, state.control_connected) {
        (Some(url), Some(true)) => format!("{url} (connected)"),
        (Some(url), Some(false)) => format!("{url} (DISCONNECTED)"),
        (Some(url), None) => url.clone(),
        (None, _) => "-".into(),
    };
    let revision = num(state.registry.as_ref().and_then(|r| r.revision));
    format!("mesh top  proxy {admin}  control {control}  revision {revision}")
}

fn service_block(s: &ServiceState) -> String {
    let mut lines = vec![format!(
        "{}  {}  {}",
        s.name,
        s.vip.as_deref().unwrap_or("-"),
        s.balancer.as_deref().unwrap_or("-")
    )];
    let mut row = |label: &str, text: String| lines.push(format!("  {label:<LABEL$} {text}"));

    row(
        "breaker",
        s.breaker.as_ref().map_or("-".into(), |b| {
            format!(
                "{:<9}  calls {}  failed {} ({})  slow {} ({})",
                breaker_state(b.state.as_deref()),
                num(b.calls),
                num(b.failures),
                pct(b.failure_rate),
                num(b.slow),
                pct(b.slow_rate)
            )
        }),
    );
    row(
        "bulkhead",
        s.bulkhead.as_ref().map_or("-".into(), |b| {
            format!(
                "in-flight {} of {}  queued {} of {}",
                num(b.in_flight),
                num(b.max_concurrent),
                num(b.queued),
                num(b.max_queued)
            )
        }),
    );
    row(
        "requests",
        s.requests.as_ref().map_or("-".into(), |r| {
            format!(
                "total {}  failed {}  fast-failed {}",
                num(r.total),
                num(r.failed),
                num(r.fast_failed)
            )
        }),
    );
    row(
        "retries",
        s.retries.as_ref().map_or("-".into(), |r| {
            format!(
                "retried {}  budget exhausted {}  budget available {}",
                num(r.retried),
                num(r.budget_exhausted),
                num(r.budget_available)
            )
        }),
    );
    match &s.endpoints {
        None => row("endpoints", "-".into()),
        Some(eps) if eps.is_empty() => row("endpoints", "none".into()),
        Some(eps) => {
            let count = |want: &str| {
                eps.iter()
                    .filter(|e| e.state.as_deref() == Some(want))
                    .count()
            };
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
                e.id.clone().unwrap_or_else(|| "-".into()),
                e.addr.clone().unwrap_or_else(|| "-".into()),
                e.state.clone().unwrap_or_else(|| "-".into()),
                num(e.in_flight),
                e.ewma_ms.map_or("-".into(), |ms| format!("{ms:.1}ms")),
                num(e.ejections),
            ]
        })
        .collect();
    output::table(
        &["ID", "ADDRESS", "STATE", "IN-FLIGHT", "EWMA", "EJECTIONS"],
        &rows,
    )
}

/// Open and half-open shout, as on a Hystrix dashboard.
fn breaker_state(state: Option<&str>) -> String {
    match state {
        None => "-".into(),
        Some("closed") => "closed".into(),
        Some(other) => other.to_uppercase(),
    }
}

/// A count: whole numbers without decimals, `-` when missing.
fn num(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(x) if x.fract() == 0.0 && x.abs() < 1e15 => format!("{x:.0}"),
        Some(x) => format!("{x:.1}"),
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |p| format!("{p:.1}%"))
}
