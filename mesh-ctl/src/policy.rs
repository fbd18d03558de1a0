//! `apply -f`, `get policy|authorization` and `delete policy|authorization`:
//! documents in and out.
//!
//! `apply` validates every document of the file before sending anything,
//! so a file is applied whole or not at all as far as validation can tell;
//! `get policy` prints a document `apply -f` takes back unchanged.

use crate::cli::Output;
use crate::error::{emit, CtlError};
use crate::output::{self, RenderError};
use mesh::authz::AUTHZ_KIND;
use mesh::control::client::ControlClient;
use mesh::gateway::ROUTE_KIND;
use mesh::model::config::CONFIG_KIND;
use mesh::model::policy::Fallback;
use mesh::model::{format_duration, parse_documents, Document, ServicePolicy, POLICY_KIND};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Read;

/// What `apply -o json` reports per document.
#[derive(Debug, Serialize)]
pub struct Applied {
    pub kind: &'static str,
    /// The service (`application/profile` for a Config).
    pub service: String,
    pub revision: u64,
    /// A Config's version, and whether this apply made it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changed: Option<bool>,
}

/// What `delete policy -o json` prints.
#[derive(Debug, Serialize)]
struct Deleted {
    service: String,
    revision: u64,
    deleted: bool,
}

/// A policy as a document: `kind` first, then the policy's own fields.
#[derive(Serialize)]
struct PolicyDoc<'a> {
    kind: &'static str,
    #[serde(flatten)]
    policy: &'a ServicePolicy,
}

/// Reads `file` (`-` = stdin) and parses every document; any problem is an
/// input error (exit 2) naming `FILE: doc N: field: reason`.
pub fn read_documents(file: &str) -> Result<Vec<Document>, CtlError> {
    let (name, text) = if file == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| CtlError::Input(format!("cannot read stdin: {e}")))?;
        ("<stdin>".to_string(), text)
    } else {
        let text = std::fs::read_to_string(file)
            .map_err(|e| CtlError::Input(format!("cannot read {file}: {e}")))?;
        (file.to_string(), text)
    };
    let name = name.as_str();
    let policies = parse_documents(&text).map_err(|failures| {
        let lines = failures
            .iter()
            .flat_map(|(doc, errs)| {
                errs.0
                    .iter()
                    .map(move |e| format!("{name}: doc {doc}: {}: {}", e.field, e.reason))
            })
            .collect();
        CtlError::Documents(lines)
    })?;
    if policies.is_empty() {
        return Err(CtlError::Input(format!(
            "{name}: no documents to apply (expected kind: {POLICY_KIND}, {AUTHZ_KIND}, {CONFIG_KIND} or {ROUTE_KIND})"
        )));
    }
    // Two documents of a kind for one service: the second would silently win.
    let mut seen = BTreeMap::new();
    let mut dupes = Vec::new();
    for (i, d) in policies.iter().enumerate() {
        let (kind, service) = identify(d);
        if let Some(first) = seen.insert((kind, service.clone()), i + 1) {
            let field = match kind {
                CONFIG_KIND => "application",
                ROUTE_KIND => "name",
                _ => "service",
            };
            dupes.push(format!(
                "{name}: doc {}: {field}: {service:?} has another {kind} in doc {first}",
                i + 1,
            ));
        }
    }
    if !dupes.is_empty() {
        return Err(CtlError::Documents(dupes));
    }
    Ok(policies)
}

/// `apply -f FILE [--message M]` (the message goes with every Config
/// version the file makes).
pub async fn apply(
    client: &ControlClient,
    format: Output,
    file: &str,
    message: Option<&str>,
) -> Result<(), CtlError> {
    let policies = read_documents(file)?;
    let mut applied = Vec::with_capacity(policies.len());
    for p in &policies {
        let (kind, service) = identify(p);
        let sent = match p {
            Document::Service(p) => client.apply_policy(p).await.map(|r| (r, None)),
            Document::Authorization(p) => client.apply_authorization(p).await.map(|r| (r, None)),
            Document::Route(r) => client.apply_route(r).await.map(|r| (r, None)),
            Document::Config(c) => client
                .apply_config(c, message)
                .await
                .map(|a| (a.revision, Some((a.version, a.changed)))),
        };
        match sent {
            Ok((revision, version)) => applied.push(Applied {
                kind,
                service: service.to_string(),
                revision,
                version: version.map(|v| v.0),
                changed: version.map(|v| v.1),
            }),
            Err(e) => {
                // Say how far it got before the error itself is reported.
                if !applied.is_empty() {
                    emit(&output::render(format, &applied, |a| applied_lines(a))?)?;
                    eprintln!(
                        "error: applied {} of {} documents; {kind} {service} and later ones were not",
                        applied.len(),
                        policies.len(),
                    );
                }
                return Err(e.into());
            }
        }
    }
    emit(&output::render(format, &applied, |a| applied_lines(a))?)
}

/// `get policy [SERVICE]`.
pub async fn get(
    client: &ControlClient,
    format: Output,
    service: Option<&str>,
) -> Result<(), CtlError> {
    let text = match service {
        Some(service) => {
            let p = client.policy(service).await?;
            render_docs(format, std::slice::from_ref(&p))?
        }
        None => {
            let all = client.policies().await?;
            match format {
                Output::Table => policies_table(&all),
                other => render_docs(other, &all)?,
            }
        }
    };
    emit(&text)
}

/// `delete policy SERVICE`.
pub async fn delete(client: &ControlClient, format: Output, service: &str) -> Result<(), CtlError> {
    let revision = client.delete_policy(service).await?;
    let done = Deleted {
        service: service.to_string(),
        revision,
        deleted: true,
    };
    let text = output::render(format, &done, |d| {
        format!(
            "policy {} deleted; it runs the defaults (revision {})",
            d.service, d.revision
        )
    })?;
    emit(&text)
}

pub fn applied_lines(applied: &[Applied]) -> String {
    let lines: Vec<String> = applied
        .iter()
        .map(|a| {
            let what = match a.kind {
                AUTHZ_KIND => "authorization policy",
                CONFIG_KIND => "config",
                ROUTE_KIND => "route",
                _ => "policy",
            };
            match (a.version, a.changed) {
                (Some(v), Some(true)) => {
                    format!(
                        "{what} {} v{v} applied (revision {})",
                        a.service, a.revision
                    )
                }
                (Some(v), _) => format!("{what} {} unchanged (still v{v})", a.service),
                _ => format!("{what} {} applied (revision {})", a.service, a.revision),
            }
        })
        .collect();
    lines.join("\n")
}

/// A document's kind and what it is for (`application/profile` for a
/// Config).
fn identify(d: &Document) -> (&'static str, String) {
    match d {
        Document::Service(p) => (POLICY_KIND, p.service.clone()),
        Document::Authorization(p) => (AUTHZ_KIND, p.service.clone()),
        Document::Config(c) => (CONFIG_KIND, format!("{}/{}", c.application, c.profile)),
        Document::Route(r) => (ROUTE_KIND, r.name.clone()),
    }
}

/// A stored document as `apply -f` takes it back: `kind` first.
#[derive(Serialize)]
struct KindDoc<'a, T> {
    kind: &'static str,
    #[serde(flatten)]
    doc: &'a T,
}

/// Documents as YAML (also for `table`: a document reads best as itself)
/// or JSON; one alone is one document, not a list of one.
fn kind_docs<T: Serialize>(
    format: Output,
    kind: &'static str,
    all: &[T],
) -> Result<String, CtlError> {
    let docs: Vec<KindDoc<'_, T>> = all.iter().map(|doc| KindDoc { kind, doc }).collect();
    Ok(match (format, docs.as_slice()) {
        (Output::Json, [one]) => output::render(Output::Json, one, |_| String::new())?,
        (Output::Json, _) => output::render(Output::Json, &docs, |_| String::new())?,
        (_, docs) => {
            let yaml: Result<Vec<String>, RenderError> = docs
                .iter()
                .map(|d| output::render(Output::Yaml, d, |_| String::new()))
                .collect();
            yaml?.join("\n---\n")
        }
    })
}

/// `get route [NAME]`.
pub async fn get_route(
    client: &ControlClient,
    format: Output,
    name: Option<&str>,
) -> Result<(), CtlError> {
    let all = match name {
        Some(n) => vec![client.route(n).await?],
        None => client.routes().await?,
    };
    emit(&kind_docs(format, ROUTE_KIND, &all)?)
}

/// `delete route NAME`.
pub async fn delete_route(
    client: &ControlClient,
    format: Output,
    name: &str,
) -> Result<(), CtlError> {
    let revision = client.delete_route(name).await?;
    let done = Deleted {
        service: name.to_string(),
        revision,
        deleted: true,
    };
    let text = output::render(format, &done, |d| {
        format!("route {} deleted (revision {})", d.service, d.revision)
    })?;
    emit(&text)
}

/// `get authorization [SERVICE]`: YAML documents `apply -f` takes back
/// (also for `table`), or JSON.
pub async fn get_authorization(
    client: &ControlClient,
    format: Output,
    service: Option<&str>,
) -> Result<(), CtlError> {
    let all = match service {
        Some(s) => vec![client.authorization(s).await?],
        None => client.authorizations().await?,
    };
    emit(&kind_docs(format, AUTHZ_KIND, &all)?)
}

/// `delete authorization SERVICE`.
pub async fn delete_authorization(
    client: &ControlClient,
    format: Output,
    service: &str,
) -> Result<(), CtlError> {
    let revision = client.delete_authorization(service).await?;
    let done = Deleted {
        service: service.to_string(),
        revision,
        deleted: true,
    };
    let text = output::render(format, &done, |d| {
        format!(
            "authorization policy {} deleted (revision {})",
            d.service, d.revision
        )
    })?;
    emit(&text)
}

/// YAML documents (also for `table`: a policy reads best as its document)
/// or JSON; one policy alone is one document, not a list of one.
pub fn render_docs(format: Output, policies: &[ServicePolicy]) -> Result<String, RenderError> {
    let docs: Vec<PolicyDoc<'_>> = policies
        .iter()
        .map(|policy| PolicyDoc {
            kind: POLICY_KIND,
            policy,
        })
        .collect();
    match (format, docs.as_slice()) {
        (Output::Json, [one]) => output::render(Output::Json, one, |_| String::new()),
        (Output::Json, _) => output::render(Output::Json, &docs, |_| String::new()),
        (_, docs) => {
            let yaml: Result<Vec<String>, RenderError> = docs
                .iter()
                .map(|d| output::render(Output::Yaml, d, |_| String::new()))
                .collect();
            Ok(yaml?.join("\n---\n"))
        }
    }
}

/// One line per applied policy, the knobs operators look at first.
pub fn policies_table(policies: &[ServicePolicy]) -> String {
    let rows: Vec<Vec<String>> = policies
        .iter()
        .map(|p| {
            let b = &p.breaker;
            let breaker = format!(
                "{}% of >={} in {}, open {}",
                b.failure_rate,
                b.min_requests,
                format_duration(b.window),
                format_duration(b.open_for)
            );
            let fallback = match &p.fallback {
                None => "-".to_string(),
                Some(Fallback::Service { service }) => format!("service {service}"),
                Some(Fallback::Static { status, .. }) => format!("static {status}"),
            };
            let opaque = if p.opaque_ports.is_empty() {
                "-".to_string()
            } else {
                let ports: Vec<String> = p.opaque_ports.iter().map(u16::to_string).collect();
                ports.join(",")
            };
            vec![
                p.service.clone(),
                p.load_balancer.as_str().to_string(),
                format_duration(p.timeouts.request),
                format!(
                    "{} (budget {}%+{}/s)",
                    p.retries.attempts, p.retries.budget.percent, p.retries.budget.min_per_second
                ),
                breaker,
                format!("{}+{}", p.bulkhead.max_concurrent, p.bulkhead.max_queued),
                fallback,
                opaque,
            ]
        })
        .collect();
    output::table(
        &[
            "SERVICE", "BALANCER", "TIMEOUT", "RETRIES", "BREAKER", "BULKHEAD", "FALLBACK",
            "OPAQUE",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh::model::{parse_policy_documents, LoadBalancer};

    fn sample() -> Vec<ServicePolicy> {
        let mut a = ServicePolicy::defaults("orders");
        a.load_balancer = LoadBalancer::Random;
        a.fallback = Some(Fallback::Service {
            service: "orders-ro".into(),
        });
        a.opaque_ports = vec![7000, 7001];
        let mut b = ServicePolicy::defaults("users");
        b.bulkhead.max_queued = 4;
        vec![a, b]
    }

    #[test]
    fn printed_documents_apply_back_unchanged() {
        let policies = sample();
        let yaml = render_docs(Output::Yaml, &policies).unwrap();
        assert!(
            yaml.starts_with("kind: ServicePolicy\nservice: orders\n"),
            "{yaml}"
        );
        assert!(yaml.contains("opaquePorts:\n- 7000\n- 7001\n"), "{yaml}");
        assert_eq!(parse_policy_documents(&yaml), Ok(policies.clone()));
        // `table` for one policy is its YAML document too.
        let one = render_docs(Output::Table, &policies[..1]).unwrap();
        assert_eq!(parse_policy_documents(&one), Ok(policies[..1].to_vec()));
        let json = render_docs(Output::Json, &policies[..1]).unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["kind"], "ServicePolicy");
        assert_eq!(ServicePolicy::from_value(&value), Ok(policies[0].clone()));
    }

    #[test]
    fn summary_table() {
        let table = policies_table(&sample());
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[0].starts_with("SERVICE  BALANCER  TIMEOUT  RETRIES"),
            "{table}"
        );
        assert_eq!(
            lines[1],
            "orders   random    15s      2 (budget 20%+10/s)  50% of >=20 in 10s, open 5s  1024+0    service orders-ro  7000,7001"
        );
        assert!(
            lines[2].starts_with("users") && lines[2].ends_with("1024+4    -                  -"),
            "{table}"
        );
    }
}
