//! Rendering answers for people (aligned tables, one-line summaries) and
//! for programs (JSON, YAML). Pure functions: commands print what they get.

use crate::cli::Output;
use mesh::model::proxies::ProxyList;
use mesh::model::{
    format_duration, ControlStatus, Instance, Registered, ServiceInfo, ServiceSummary, WatchEvent,
};
use serde::Serialize;
use std::net::IpAddr;
use std::time::Duration;

/// A value could not be serialized (not expected for the API's types).
#[derive(Debug, thiserror::Error)]
#[error("cannot render output: {0}")]
pub struct RenderError(String);

/// `value` as pretty JSON or YAML; `table` renders it for people.
pub fn render<T: Serialize>(
    format: Output,
    value: &T,
    table: impl FnOnce(&T) -> String,
) -> Result<String, RenderError> {
    match format {
        Output::Table => Ok(table(value)),
        Output::Json => serde_json::to_string_pretty(value).map_err(|e| RenderError(e.to_string())),
        Output::Yaml => serde_norway::to_string(value)
            .map(|s| s.trim_end().to_string())
            .map_err(|e| RenderError(e.to_string())),
    }
}

/// A table with a header line; see [`align`].
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut all = vec![headers.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
    all.extend_from_slice(rows);
    align(&all)
}

/// Columns padded to their widest cell, two spaces apart, no trailing blanks.
fn align(rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = Vec::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            let w = cell.chars().count();
            match widths.get_mut(i) {
                Some(max) => *max = (*max).max(w),
                None => widths.push(w),
            }
        }
    }
    let lines: Vec<String> = rows
        .iter()
        .map(|row| {
            let mut line = String::new();
            for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', w - cell.chars().count()));
            }
            line.trim_end().to_string()
        })
        .collect();
    lines.join("\n")
}

pub fn services_table(services: &[ServiceSummary]) -> String {
    let rows: Vec<Vec<String>> = services
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.vip.to_string(),
                s.instances.to_string(),
                s.healthy.to_string(),
            ]
        })
        .collect();
    table(&["NAME", "VIP", "INSTANCES", "HEALTHY"], &rows)
}

pub fn endpoints_table(info: &ServiceInfo) -> String {
    let rows: Vec<Vec<String>> = info
        .instances
        .iter()
        .map(|i| {
            vec![
                i.id.clone(),
                i.address.to_string(),
                i.port.to_string(),
                i.inbound_port.map_or_else(|| "-".into(), |p| p.to_string()),
                i.health.as_str().to_string(),
                ttl(i),
                metadata(i),
            ]
        })
        .collect();
    table(
        &[
            "ID", "ADDRESS", "PORT", "INBOUND", "HEALTH", "TTL", "METADATA",
        ],
        &rows,
    )
}

/// `proxies`: one row per connected proxy; BEHIND counts the revisions it
/// has not applied yet.
pub fn proxies_table(list: &ProxyList) -> String {
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let rows: Vec<Vec<String>> = list
        .proxies
        .iter()
        .map(|p| {
            let w = &p.watcher;
            vec![
                w.proxy.clone(),
                dash(&w.service),
                dash(&w.instance),
                dash(&w.version),
                p.applied.to_string(),
                list.revision.saturating_sub(p.applied).to_string(),
                p.address.to_string(),
                p.connected_at.clone(),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "PROXY",
            "SERVICE",
            "INSTANCE",
            "VERSION",
            "APPLIED",
            "BEHIND",
            "ADDRESS",
            "CONNECTED",
        ],
        &rows,
    );
    out.push_str(&format!(
        "\n{} proxies watching, registry at revision {}",
        list.watching, list.revision
    ));
    out
}

/// `mesh-ctl stat`: one row per destination service, then (when any)
/// one per caller → destination edge.
pub fn stat_table(d: &mesh::model::stats::Dashboard) -> String {
    let pct = |part: u64, whole: u64| match whole {
        0 => "-".to_string(),
        n => format!("{:.2}%", part as f64 * 100.0 / n as f64),
    };
    let ms = |v: f64| format!("{v:.1}ms");
    let rows: Vec<Vec<String>> = d
        .circuits
        .iter()
        .map(|c| {
            vec![
                c.service.clone(),
                c.hosts.to_string(),
                pct(c.tally.success, c.tally.requests),
                format!("{:.1}", c.rate),
                ms(c.latency.p50),
                ms(c.latency.p95),
                ms(c.latency.p99),
                c.breaker.as_str().to_string(),
                format!("{}/{}", c.in_flight, c.max_concurrent),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "SERVICE", "CALLERS", "SUCCESS", "RPS", "P50", "P95", "P99", "BREAKER", "BULKHEAD",
        ],
        &rows,
    );
    if !d.edges.is_empty() {
        let rows: Vec<Vec<String>> = d
            .edges
            .iter()
            .map(|e| {
                vec![
                    e.caller.clone(),
                    e.destination.clone(),
                    pct(e.tally.success, e.tally.requests),
                    format!("{:.1}", e.rate),
                    ms(e.latency.p50),
                    ms(e.latency.p99),
                    if e.mtls { "yes" } else { "no" }.to_string(),
                ]
            })
            .collect();
        out.push_str("\n\n");
        out.push_str(&table(
            &[
                "CALLER",
                "DESTINATION",
                "SUCCESS",
                "RPS",
                "P50",
                "P99",
                "MTLS",
            ],
            &rows,
        ));
    }
    out.push_str(&format!(
        "\n{} proxies reporting, last {} s",
        d.reporting,
        mesh::model::stats::WINDOW_SECS
    ));
    out
}

pub fn registered_line(r: &Registered) -> String {
    let i = &r.instance;
    let lease = match i.ttl_secs {
        Some(_) => format!("ttl {}", ttl(i)),
        None => "static".into(),
    };
    format!(
        "registered {}/{} at {} {lease} (vip {}, revision {})",
        i.service,
        i.id,
        host_port(i.address, i.port),
        r.vip,
        r.revision
    )
}

/// Key-value lines for `status`; the URL says which control plane answered.
pub fn status_table(url: &str, s: &ControlStatus) -> String {
    let preservation = if s.self_preservation {
        "ON (evictions suspended)"
    } else {
        "off"
    };
    let mut rows = vec![
        ("control", url.to_string()),
        ("revision", s.revision.to_string()),
        ("services", s.services.to_string()),
        ("instances", s.instances.to_string()),
        ("policies", s.policies.to_string()),
        ("self-preservation", preservation.to_string()),
    ];
    if !s.store.is_empty() {
        rows.push(("store", s.store.clone()));
    }
    if let Some(ha) = &s.ha {
        let reach = if ha.store_reachable {
            "reachable"
        } else {
            "UNREACHABLE"
        };
        rows.push(("store revision", s.store_revision.to_string()));
        rows.push(("etcd", format!("{} ({reach})", ha.endpoints.join(","))));
        rows.push(("replica", ha.replica.clone()));
        rows.push((
            "leader",
            ha.leader.clone().unwrap_or_else(|| "none elected".into()),
        ));
        for r in &ha.replicas {
            let lead = if ha.leader.as_deref() == Some(r.id.as_str()) {
                "  (leader)"
            } else {
                ""
            };
            rows.push(("replicas", format!("{}  {}{lead}", r.id, r.url)));
        }
    }
    let rows: Vec<Vec<String>> = rows.into_iter().map(|(k, v)| vec![k.into(), v]).collect();
    align(&rows)
}

/// One watch event for people: `REV  upsert hello/ID ADDR:PORT up`.
/// Keep-alives carry no change and print nothing.
pub fn event_line(ev: &WatchEvent) -> Option<String> {
    let rev = ev.revision();
    Some(match ev {
        WatchEvent::Keepalive { .. } => return None,
        WatchEvent::Snapshot { snapshot } => {
            let instances: usize = snapshot.services.iter().map(|s| s.instances.len()).sum();
            format!(
                "{rev}  snapshot {} services, {instances} instances",
                snapshot.services.len()
            )
        }
        WatchEvent::Upsert { instance: i, .. } => format!(
            "{rev}  upsert {}/{} {} {}",
            i.service,
            i.id,
            host_port(i.address, i.port),
            i.health.as_str()
        ),
        WatchEvent::Remove {
            service,
            id,
            reason,
            ..
        } => {
            let reason = serde_json::to_value(reason)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            format!("{rev}  remove {service}/{id} {reason}")
        }
        WatchEvent::Policy { policy, .. } => format!("{rev}  policy {} applied", policy.service),
        WatchEvent::PolicyRemoved { service, .. } => format!("{rev}  policy {service} deleted"),
        WatchEvent::Authorization { policy, .. } => {
            format!("{rev}  authorization {} applied", policy.service)
        }
        WatchEvent::AuthorizationRemoved { service, .. } => {
            format!("{rev}  authorization {service} deleted")
        }
        WatchEvent::TrustBundle { bundle, .. } => {
            let active = bundle
                .roots
                .iter()
                .find(|r| r.active)
                .map_or("-", |r| r.id.as_str());
            format!(
                "{rev}  trust bundle: {} roots, active {active}",
                bundle.roots.len()
            )
        }
        WatchEvent::Config { config: c, .. } => format!(
            "{rev}  config {}/{} v{} applied",
            c.application, c.profile, c.version
        ),
        WatchEvent::Route { route, .. } => format!("{rev}  route {} applied", route.name),
        WatchEvent::RouteRemoved { name, .. } => format!("{rev}  route {name} deleted"),
    })
}

/// One watch event for programs: a JSON line, or a YAML document.
pub fn event_doc(format: Output, ev: &WatchEvent) -> Result<Option<String>, RenderError> {
    if matches!(ev, WatchEvent::Keepalive { .. }) {
        return Ok(None);
    }
    match format {
        Output::Table => Ok(event_line(ev)),
        _ => stream_doc(format, ev, |_| String::new()).map(Some),
    }
}

/// One document of a stream (`watch`, live `top`): JSON as one compact
/// line (NDJSON), YAML as a `---`-led document, a table as `table` draws it.
pub fn stream_doc<T: Serialize>(
    format: Output,
    value: &T,
    table: impl FnOnce(&T) -> String,
) -> Result<String, RenderError> {
    match format {
        Output::Table => Ok(table(value)),
        Output::Json => serde_json::to_string(value).map_err(|e| RenderError(e.to_string())),
        Output::Yaml => render(Output::Yaml, value, table).map(|y| format!("---\n{y}")),
    }
}

fn host_port(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

fn ttl(i: &Instance) -> String {
    i.ttl_secs
        .map_or("-".into(), |s| format_duration(Duration::from_secs(s)))
}

fn metadata(i: &Instance) -> String {
    if i.metadata.is_empty() {
        return "-".into();
    }
    let pairs: Vec<String> = i.metadata.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.join(",")
}

#[cfg(test)]
mod tests;
