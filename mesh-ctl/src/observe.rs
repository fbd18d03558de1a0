//! The operator's commands that read the whole mesh: `explain` (what each
//! proxy decided for one request) and `check` (is everything healthy: one
//! line per check, ok / warn / fail, exit 1 on a failure).

use crate::cli::Output;
use crate::error::{emit, CtlError};
use crate::output;
use mesh::control::client::{ClientError, ControlClient};
use mesh::model::stats::{DecisionTrail, TapLine, Trails};
use serde::Serialize;

/// `mesh-ctl explain REQUEST-ID`.
pub async fn explain(client: &ControlClient, format: Output, id: &str) -> Result<(), CtlError> {
    let trails = client.explain(id).await?;
    emit(&output::render(format, &trails, trails_text)?)
}

fn trails_text(t: &Trails) -> String {
    t.trails
        .iter()
        .map(trail_text)
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// One trail in words.
pub fn trail_text(t: &DecisionTrail) -> String {
    let caller = t.caller.as_deref().unwrap_or("(unnamed)");
    let mut out = format!(
        "request {} at {}\n  {caller} (proxy {}) -> {}: {} {}\n  {} over {} ready endpoint{}",
        t.request_id,
        t.at,
        t.proxy,
        t.service,
        t.method,
        t.path,
        t.balancer,
        t.candidates,
        if t.candidates == 1 { "" } else { "s" },
    );
    for (i, x) in t.tries.iter().enumerate() {
        let to = match (&x.endpoint, &x.address) {
            (Some(e), Some(a)) if e != a => format!("{e} ({a})"),
            (Some(e), _) => e.clone(),
            _ => "no endpoint picked".to_string(),
        };
        out.push_str(&format!(
            "\n  try {}: {to} -> {} in {} ms; {}",
            i + 1,
            x.outcome,
            x.ms,
            x.next
        ));
    }
    let answer = match (&t.reason, t.fallback) {
        (Some(r), true) => format!("{r}, answered by the fallback with {}", t.status),
        (Some(r), false) => format!("{} {r} (x-mesh-error)", t.status),
        (None, _) => t.status.to_string(),
    };
    out.push_str(&format!(
        "\n  answer: {answer} after {} retr{} in {} ms{}",
        t.retries,
        if t.retries == 1 { "y" } else { "ies" },
        t.ms,
        if t.budget_exhausted {
            "; the retry budget was spent"
        } else {
            ""
        }
    ));
    out
}

/// The tap's keep-alives come every 15 s; silence past this is a dead
/// stream.
const TAP_IDLE: std::time::Duration = std::time::Duration::from_secs(45);

/// `mesh-ctl tap SERVICE`: one line per call, as it comes.
pub async fn tap(client: &ControlClient, format: Output, service: &str) -> Result<(), CtlError> {
    let mut stream = client.tap(service, TAP_IDLE).await?;
    if format == Output::Table {
        emit("TIME                      PROXY               CALLER       -> DESTINATION  METHOD PATH  STATUS  MS  ATTEMPTS  ENDPOINT  ERROR  REQUEST")?;
    }
    while let Some(line) = stream.next_line().await? {
        let Ok(l) = serde_json::from_slice::<TapLine>(&line) else {
            continue; // a keep-alive
        };
        if l.destination.is_empty() {
            continue;
        }
        let text = match format {
            Output::Table => {
                let mut t = format!(
                    "{} {} {} -> {} {} {} {} {} {} {} {} {}",
                    l.time,
                    l.proxy,
                    l.caller.as_deref().unwrap_or("(unnamed)"),
                    l.destination,
                    l.method,
                    l.path,
                    l.status,
                    l.duration_ms,
                    l.attempts,
                    l.endpoint.as_deref().unwrap_or("-"),
                    l.x_mesh_error.as_deref().unwrap_or("-"),
                    l.request_id
                );
                if l.dropped > 0 {
                    t.push_str(&format!(
                        "  ({} calls not shown before this one)",
                        l.dropped
                    ));
                }
                t
            }
            // One line per call (NDJSON), for scripts; YAML as documents.
            Output::Json => serde_json::to_string(&l).unwrap_or_default(),
            Output::Yaml => output::render(format, &l, |_| String::new())?
                .trim_end()
                .to_string(),
        };
        emit(&text)?;
    }
    Ok(())
}

/// One line of `check`.
#[derive(Debug, Serialize)]
pub struct Check {
    pub check: String,
    pub status: Level,
    pub detail: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

/// Trust roots this close to expiry are a warning.
const ROOT_WARN_SECS: i64 = 30 * 24 * 3600;

/// Config drift: every proxy delivering a config is on its latest version.
async fn config_drift(client: &ControlClient, list: &mesh::model::proxies::ProxyList) -> Check {
    let line = |status, detail: String| Check {
        check: "config".to_string(),
        status,
        detail,
    };
    let latest = match client.configs().await {
        Ok(l) => l,
        Err(e) => return line(Level::Warn, e.to_string()),
    };
    let mut behind = Vec::new();
    let mut delivering = 0;
    for p in &list.proxies {
        for d in &p.configs {
            delivering += 1;
            let want = latest
                .iter()
                .find(|m| m.application == d.application && m.profile == d.profile)
                .map(|m| m.version);
            let stale = match (d.version, want) {
                (_, None) => false,
                (Some(have), Some(want)) => have < want,
                (None, Some(_)) => true,
            };
            if stale || d.error.is_some() {
                behind.push(format!(
                    "{} {}/{} at v{}{}",
                    p.watcher.proxy,
                    d.application,
                    d.profile,
                    d.version.map_or("-".to_string(), |v| v.to_string()),
                    d.error
                        .as_ref()
                        .map_or(String::new(), |e| format!(" ({e})"))
                ));
            }
        }
    }
    match (delivering, behind.is_empty()) {
        (0, _) => line(
            Level::Ok,
            format!(
                "{} configs, none delivered by a connected proxy",
                latest.len()
            ),
        ),
        (n, true) => line(
            Level::Ok,
            format!("{n} deliveries, every one on its latest version"),
        ),
        (_, false) => line(
            Level::Warn,
            format!("not on the latest version: {}", behind.join(", ")),
        ),
    }
}

/// `mesh-ctl check`: exit 1 when any line fails.
pub async fn check(client: &ControlClient, format: Output) -> Result<(), CtlError> {
    let lines = checks(client).await;
    let failed = lines.iter().any(|c| c.status == Level::Fail);
    emit(&output::render(format, &lines, |l: &Vec<Check>| {
        l.iter()
            .map(|c| {
                let tag = match c.status {
                    Level::Ok => "[ok]  ",
                    Level::Warn => "[warn]",
                    Level::Fail => "[FAIL]",
                };
                format!("{tag} {}: {}", c.check, c.detail)
            })
            .collect::<Vec<_>>()
            .join("\n")
    })?)?;
    if failed {
        return Err(CtlError::Failed("a check failed".into()));
    }
    Ok(())
}

async fn checks(client: &ControlClient) -> Vec<Check> {
    let line = |check: &str, status, detail: String| Check {
        check: check.to_string(),
        status,
        detail,
    };
    let mut out = Vec::new();
    let status = match client.status().await {
        Ok(s) => s,
        Err(e) => {
            out.push(line(
                "control plane",
                Level::Fail,
                format!("{} unreachable: {e}", client.base_url()),
            ));
            return out;
        }
    };
    out.push(line(
        "control plane",
        Level::Ok,
        format!(
            "{} at revision {} ({} services, {} instances)",
            client.base_url(),
            status.revision,
            status.services,
            status.instances
        ),
    ));
    out.push(match status.self_preservation {
        true => line(
            "self-preservation",
            Level::Warn,
            "on: too many leases expired at once, evictions are suspended".into(),
        ),
        false => line("self-preservation", Level::Ok, "off".into()),
    });
    let proxies = client.proxies(None, None).await;
    if let Ok(list) = &proxies {
        out.push(config_drift(client, list).await);
    }
    match proxies {
        Ok(list) => {
            let behind: Vec<String> = list
                .proxies
                .iter()
                .filter(|p| p.applied < list.revision)
                .map(|p| {
                    let who = p.watcher.service.as_deref().unwrap_or("-");
                    format!(
                        "{} ({who}) {} behind",
                        p.watcher.proxy,
                        list.revision - p.applied
                    )
                })
                .collect();
            out.push(match (list.watching, behind.is_empty()) {
                (0, _) => line("proxies", Level::Warn, "none connected".into()),
                (n, true) => line(
                    "proxies",
                    Level::Ok,
                    format!("{n} connected, all at revision {}", list.revision),
                ),
                (n, false) => line(
                    "proxies",
                    Level::Warn,
                    format!("{n} connected; behind: {}", behind.join(", ")),
                ),
            });
        }
        Err(e) => out.push(line("proxies", Level::Fail, e.to_string())),
    }
    match client.dashboard().await {
        Ok(d) => {
            let open: Vec<&str> = d
                .circuits
                .iter()
                .filter(|c| c.open_hosts > 0)
                .map(|c| c.service.as_str())
                .collect();
            out.push(match open.is_empty() {
                true => line(
                    "breakers",
                    Level::Ok,
                    format!("none open ({} circuits reporting)", d.circuits.len()),
                ),
                false => line(
                    "breakers",
                    Level::Warn,
                    format!("open for {}", open.join(", ")),
                ),
            });
        }
        Err(e) => out.push(line("breakers", Level::Warn, e.to_string())),
    }
    match client.trust_bundle().await {
        Ok(bundle) => {
            let soonest = bundle.roots.iter().map(|r| r.expires_in_secs).min();
            out.push(match soonest {
                None => line("certificates", Level::Ok, "identity off".into()),
                Some(s) if s <= 0 => line(
                    "certificates",
                    Level::Fail,
                    "a trust root has expired".into(),
                ),
                Some(s) if s < ROOT_WARN_SECS => line(
                    "certificates",
                    Level::Warn,
                    format!("a trust root expires in {} days", s / 86400),
                ),
                Some(s) => line(
                    "certificates",
                    Level::Ok,
                    format!(
                        "{} root(s), the first to expire in {} days",
                        bundle.roots.len(),
                        s / 86400
                    ),
                ),
            });
        }
        // Identity off: there is no bundle to check.
        Err(ClientError::Api { status: 404, .. }) => {
            out.push(line("certificates", Level::Ok, "identity off".into()))
        }
        Err(e) => out.push(line("certificates", Level::Warn, e.to_string())),
    }
    out
}
