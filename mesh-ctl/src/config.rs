//! `config get|history|diff|rollback|status`: versions of a Config and
//! who has delivered which.
//!
//! `get` prints a document `apply -f` takes back (secrets redacted unless
//! `--show-secrets`), `diff` a unified diff of two versions' documents,
//! `status` one row per proxy subscribed to the config: the version it
//! delivered, when, and its app's reload acknowledgement, with drift
//! from the latest version spelled out.

use crate::cli::{ConfigCommand, Output};
use crate::error::{emit, CtlError};
use crate::output::{self, table};
use mesh::control::client::ControlClient;
use mesh::model::config::{
    ConfigApplied, ConfigMeta, ConfigVersion, DeliveredConfig, CONFIG_KIND, REDACTED,
};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::IsTerminal as _;

pub async fn run(
    client: &ControlClient,
    format: Output,
    cmd: ConfigCommand,
) -> Result<(), CtlError> {
    match cmd {
        ConfigCommand::Get {
            application,
            profile,
            version,
            show_secrets,
        } => {
            let v = client
                .config(&application, &profile, version, show_secrets)
                .await?;
            emit(&output::render(format, &v, document)?)
        }
        ConfigCommand::List => {
            let all = client.configs().await?;
            emit(&output::render(format, &all, |all| list_table(all))?)
        }
        ConfigCommand::History {
            application,
            profile,
        } => {
            let h = client.config_history(&application, &profile).await?;
            emit(&output::render(format, &h, |h| history_table(h))?)
        }
        ConfigCommand::Diff {
            application,
            profile,
            from,
            to,
            show_secrets,
        } => {
            let a = client
                .config(&application, &profile, Some(from), show_secrets)
                .await?;
            let b = client
                .config(&application, &profile, Some(to), show_secrets)
                .await?;
            let text = diff(&a, &b);
            let shown = match format {
                Output::Table => match colour() {
                    true => paint(&text),
                    false => text,
                },
                other => output::render(
                    other,
                    &Diff {
                        application,
                        profile,
                        from,
                        to,
                        diff: text,
                    },
                    |d| d.diff.clone(),
                )?,
            };
            emit(shown.trim_end_matches('\n'))
        }
        ConfigCommand::Rollback {
            application,
            profile,
            to,
            message,
        } => {
            let done = client
                .rollback_config(&application, &profile, to, message.as_deref())
                .await?;
            emit(&output::render(format, &done, |d| rolled_back(d, to))?)
        }
        ConfigCommand::Status {
            application,
            profile,
        } => {
            let latest = client.config(&application, &profile, None, false).await?;
            let proxies = client.proxies(None, None).await?;
            let status = Status {
                application: application.clone(),
                profile: profile.clone(),
                latest: latest.meta.version,
                hash: latest.meta.hash.clone(),
                proxies: proxies
                    .proxies
                    .iter()
                    .filter_map(|p| {
                        let c = p
                            .configs
                            .iter()
                            .find(|c| c.application == application && c.profile == profile)?;
                        Some(ProxyRow {
                            proxy: p.watcher.proxy.clone(),
                            service: p.watcher.service.clone(),
                            instance: p.watcher.instance.clone(),
                            current: c.version == Some(latest.meta.version),
                            delivered: c.clone(),
                        })
                    })
                    .collect(),
            };
            emit(&output::render(format, &status, status_table)?)
        }
    }
}

/// `diff -o json|yaml`.
#[derive(Serialize)]
struct Diff {
    application: String,
    profile: String,
    from: u64,
    to: u64,
    diff: String,
}

/// `status -o json|yaml`.
#[derive(Serialize)]
struct Status {
    application: String,
    profile: String,
    latest: u64,
    hash: String,
    proxies: Vec<ProxyRow>,
}

#[derive(Serialize)]
struct ProxyRow {
    proxy: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    service: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    instance: Option<String>,
    /// On the latest version.
    current: bool,
    #[serde(flatten)]
    delivered: DeliveredConfig,
}

/// A version as a document for `apply -f`, its history in comments.
#[derive(Serialize)]
struct Doc<'a> {
    kind: &'static str,
    application: &'a str,
    profile: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    data: &'a BTreeMap<String, serde_json::Value>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    files: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    secret: Vec<&'a str>,
}

fn yaml(v: &ConfigVersion) -> String {
    let doc = Doc {
        kind: CONFIG_KIND,
        application: &v.meta.application,
        profile: &v.meta.profile,
        data: &v.data,
        files: &v.files,
        secret: v.secret.iter().map(String::as_str).collect(),
    };
    serde_norway::to_string(&doc).unwrap_or_default()
}

/// `get`'s table form: the document, with who made it and when.
fn document(v: &ConfigVersion) -> String {
    let m = &v.meta;
    let mut out = format!(
        "# {}/{} version {} ({}), by {} at {}\n",
        m.application,
        m.profile,
        m.version,
        short(&m.hash),
        m.author,
        m.created_at
    );
    if let Some(msg) = &m.message {
        out.push_str(&format!("# {}\n", msg.replace('\n', "\n# ")));
    }
    if v.redacted {
        out.push_str(&format!(
            "# secrets shown as {REDACTED}: --show-secrets to see them (applying this text as is would store the placeholder)\n"
        ));
    }
    out.push_str(&yaml(v));
    out.trim_end().to_string()
}

fn short(hash: &str) -> &str {
    let hex = hash.rsplit(':').next().unwrap_or(hash);
    &hex[..hex.len().min(12)]
}

fn list_table(all: &[ConfigMeta]) -> String {
    if all.is_empty() {
        return "no config is applied".into();
    }
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|m| {
            vec![
                m.application.clone(),
                m.profile.clone(),
                format!("v{}", m.version),
                short(&m.hash).to_string(),
                m.created_at.clone(),
                m.author.clone(),
            ]
        })
        .collect();
    table(
        &[
            "APPLICATION",
            "PROFILE",
            "LATEST",
            "HASH",
            "CREATED",
            "AUTHOR",
        ],
        &rows,
    )
}

fn history_table(h: &[ConfigMeta]) -> String {
    let rows: Vec<Vec<String>> = h
        .iter()
        .map(|m| {
            let mut message = m.message.clone().unwrap_or_default().replace('\n', " ");
            if let Some(r) = m.restores {
                message = format!("(restores v{r}) {message}").trim_end().to_string();
            }
            vec![
                format!("v{}", m.version),
                m.created_at.clone(),
                m.author.clone(),
                short(&m.hash).to_string(),
                message,
            ]
        })
        .collect();
    table(&["VERSION", "CREATED", "AUTHOR", "HASH", "MESSAGE"], &rows)
}

/// A unified diff of the two versions' documents.
fn diff(a: &ConfigVersion, b: &ConfigVersion) -> String {
    let (ta, tb) = (yaml(a), yaml(b));
    let name = |v: &ConfigVersion| {
        format!(
            "{}/{} v{}",
            v.meta.application, v.meta.profile, v.meta.version
        )
    };
    similar::TextDiff::from_lines(&ta, &tb)
        .unified_diff()
        .context_radius(3)
        .header(&name(a), &name(b))
        .to_string()
}

/// Colour when stdout is a terminal and NO_COLOR is unset.
fn colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

fn paint(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let code = match line.as_bytes().first() {
            _ if line.starts_with("+++") || line.starts_with("---") => "1",
            Some(b'+') => "32",
            Some(b'-') => "31",
            Some(b'@') => "36",
            _ => "",
        };
        match code {
            "" => out.push_str(line),
            c => out.push_str(&format!("\x1b[{c}m{line}\x1b[0m")),
        }
        out.push('\n');
    }
    out
}

fn rolled_back(d: &ConfigApplied, to: u64) -> String {
    match d.changed {
        true => format!(
            "config {}/{} rolled back to v{to}: now v{} (revision {})",
            d.application, d.profile, d.version, d.revision
        ),
        false => format!(
            "config {}/{} already has v{to}'s content (v{}); nothing made",
            d.application, d.profile, d.version
        ),
    }
}

fn status_table(s: &Status) -> String {
    let current = s.proxies.iter().filter(|p| p.current).count();
    let mut head = format!(
        "{}/{}: latest v{} ({}); {} of {} proxies on it",
        s.application,
        s.profile,
        s.latest,
        short(&s.hash),
        current,
        s.proxies.len()
    );
    if s.proxies.is_empty() {
        head.push_str(" (no proxy delivers this config: --config APP[:PROFILE])");
        return head;
    }
    let rows: Vec<Vec<String>> = s
        .proxies
        .iter()
        .map(|p| {
            let d = &p.delivered;
            let version = d.version.map_or("-".into(), |v| format!("v{v}"));
            let state = match (&d.error, p.current) {
                (Some(e), _) => format!("ERROR {e}"),
                (None, true) => "current".into(),
                (None, false) => format!("BEHIND (latest v{})", s.latest),
            };
            let reload = match &d.reload {
                None => "-".into(),
                Some(r) if r.ok => format!("ack v{} ({})", r.version, r.detail),
                Some(r) => format!("FAILED v{} ({})", r.version, r.detail),
            };
            vec![
                p.proxy.clone(),
                p.service.clone().unwrap_or_else(|| "-".into()),
                p.instance.clone().unwrap_or_else(|| "-".into()),
                version,
                d.applied_at.clone().unwrap_or_else(|| "-".into()),
                reload,
                state,
            ]
        })
        .collect();
    format!(
        "{head}\n{}",
        table(
            &["PROXY", "SERVICE", "INSTANCE", "VERSION", "APPLIED", "RELOAD", "STATE"],
            &rows
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh::model::config::ConfigMeta;
    use serde_json::json;

    fn version(n: u64, text: &str) -> ConfigVersion {
        ConfigVersion {
            meta: ConfigMeta {
                application: "hello".into(),
                profile: "default".into(),
                version: n,
                revision: n,
                created_at: "2026-12-02T00:00:00Z".into(),
                author: "admin".into(),
                message: Some("why".into()),
                hash: "hmac-sha256:0123456789abcdef".into(),
                restores: None,
            },
            data: [("greeting.text".to_string(), json!(text))].into(),
            files: Default::default(),
            secret: Default::default(),
            redacted: false,
        }
    }

    #[test]
    fn diff_is_unified_and_get_reapplies() {
        let d = diff(&version(1, "hi"), &version(2, "hello"));
        assert!(
            d.starts_with("--- hello/default v1\n+++ hello/default v2\n"),
            "{d}"
        );
        assert!(
            d.contains("\n-  greeting.text: hi\n+  greeting.text: hello\n"),
            "{d}"
        );
        let painted = paint(&d);
        assert!(
            painted.contains("\x1b[31m-  greeting.text: hi\x1b[0m"),
            "{painted}"
        );
        let text = document(&version(1, "hi"));
        assert!(
            text.starts_with("# hello/default version 1 (0123456789ab), by admin"),
            "{text}"
        );
        let back = mesh::model::parse_documents(&text).unwrap();
        assert!(
            matches!(&back[0], mesh::model::Document::Config(c) if c.data["greeting.text"] == json!("hi"))
        );
    }
}
