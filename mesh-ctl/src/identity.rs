//! `token create` and `identity`: bootstrap tokens, the trust bundle and
//! its rotation, a proxy's own certificate.

use crate::cli::{IdentityArgs, IdentityCommand, Output, RootStep};
use crate::error::{emit, CtlError};
use crate::output;
use mesh::control::client::ControlClient;
use mesh::model::identity::{AddRoot, RootInfo, TokenIssued, TokenRequest};
use mesh::model::state::IdentityState;
use serde::Serialize;
use std::time::Duration;

/// Below this a root is warned about.
const WARN_DAYS: i64 = 30;

/// `token create`: the token alone on stdout in table mode, so
/// `$(mesh-ctl token create --service web)` is the token.
pub async fn create_token(
    client: &ControlClient,
    format: Output,
    service: String,
    namespace: Option<String>,
    ttl: Duration,
    secret: bool,
) -> Result<(), CtlError> {
    let req = TokenRequest {
        service: service.clone(),
        namespace: namespace.clone(),
        ttl_secs: Some(ttl.as_secs().max(1)),
    };
    let issued = client.create_token(&req).await?;
    if secret {
        let bundle = client.trust_bundle().await?;
        let yaml = token_secret(&service, namespace.as_deref(), &issued, &bundle.pem, format)?;
        eprintln!(
            "Secret {} for {} (expires {})",
            crate::inject::pod::token_secret(&service),
            issued.identity,
            issued.expires_at
        );
        return emit(yaml.trim_end());
    }
    if format == Output::Table {
        eprintln!(
            "token for {} (expires {})",
            issued.identity, issued.expires_at
        );
    }
    emit(&output::render(format, &issued, |t| t.token.clone())?)
}

/// What `identity -o json` prints.
#[derive(Serialize)]
struct Shown {
    trust_domain: String,
    roots: Vec<RootInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    proxy: Option<IdentityState>,
}

pub async fn run(
    client: &ControlClient,
    format: Output,
    args: IdentityArgs,
) -> Result<(), CtlError> {
    if let Some(IdentityCommand::Roots { step }) = args.roots {
        return rotate(client, format, step).await;
    }
    let bundle = client.trust_bundle().await?;
    let proxy = match &args.admin {
        Some(admin) => Some(
            crate::top::fetch_state(admin)
                .await?
                .identity
                .unwrap_or_default(),
        ),
        None => None,
    };
    let shown = Shown {
        trust_domain: bundle.trust_domain,
        roots: bundle.roots,
        proxy,
    };
    for r in &shown.roots {
        if r.expires_in_secs < WARN_DAYS * 86_400 {
            eprintln!(
                "warning: root {} expires {} (in {} days): add a new root and rotate",
                r.id,
                r.expires_at,
                r.expires_in_secs / 86_400
            );
        }
    }
    emit(&output::render(format, &shown, table)?)
}

fn table(s: &Shown) -> String {
    let rows: Vec<Vec<String>> = s
        .roots
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                if r.active { "yes" } else { "no" }.to_string(),
                r.expires_at.clone(),
                format!("{}d", r.expires_in_secs / 86_400),
                r.subject.clone(),
            ]
        })
        .collect();
    let mut text = format!("trust domain {}\n", s.trust_domain);
    text.push_str(&output::table(
        &["ROOT", "ACTIVE", "EXPIRES", "LEFT", "SUBJECT"],
        &rows,
    ));
    if let Some(p) = &s.proxy {
        text.push_str(&format!(
            "\n\nproxy {}\n  expires {} (in {}s)\n  renewal failures {}{}",
            p.identity.as_deref().unwrap_or("(no certificate)"),
            p.expires_at.as_deref().unwrap_or("-"),
            p.expires_in_secs.unwrap_or(0),
            p.renew_failures,
            p.last_error
                .as_deref()
                .map(|e| format!("\n  last error {e}"))
                .unwrap_or_default()
        ));
    }
    text
}

async fn rotate(client: &ControlClient, format: Output, step: RootStep) -> Result<(), CtlError> {
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).map_err(|e| CtlError::Input(format!("{}: {e}", p.display())))
    };
    let (info, what) = match step {
        RootStep::Add { cert, key } => {
            let req = AddRoot {
                cert: cert.as_deref().map(read).transpose()?,
                key: key.as_deref().map(read).transpose()?,
            };
            (client.add_root(&req).await?, "added (not active yet)")
        }
        RootStep::Activate { id } => (client.activate_root(&id).await?, "activated"),
        RootStep::Remove { id } => {
            client.remove_root(&id).await?;
            let gone = RootInfo {
                id,
                subject: String::new(),
                expires_at: String::new(),
                expires_in_secs: 0,
                active: false,
            };
            (gone, "removed")
        }
    };
    emit(&output::render(format, &info, |r| {
        format!("root {} {what}", r.id)
    })?)
}

/// The Secret `inject`ed pods mount: `token` and `bundle.pem`, in the
/// identity's namespace (`default` when none is given).
fn token_secret(
    service: &str,
    namespace: Option<&str>,
    issued: &TokenIssued,
    bundle: &str,
    format: Output,
) -> Result<String, CtlError> {
    use crate::inject::pod::map as pairs;
    let doc = pairs(vec![
        ("apiVersion", "v1".into()),
        ("kind", "Secret".into()),
        (
            "metadata",
            pairs(vec![
                ("name", crate::inject::pod::token_secret(service).into()),
                ("namespace", namespace.unwrap_or("default").into()),
                (
                    "annotations",
                    pairs(vec![
                        ("mesh.io/identity", issued.identity.clone().into()),
                        ("mesh.io/expires-at", issued.expires_at.clone().into()),
                    ]),
                ),
            ]),
        ),
        ("type", "Opaque".into()),
        (
            "stringData",
            pairs(vec![
                ("token", issued.token.clone().into()),
                ("bundle.pem", bundle.to_string().into()),
            ]),
        ),
    ]);
    // YAML for people and `-o yaml`; `-o json` gets JSON.
    match format {
        Output::Json => Ok(output::render(format, &doc, |_| String::new())?),
        _ => serde_norway::to_string(&doc)
            .map_err(|e| CtlError::Input(format!("cannot render the Secret: {e}"))),
    }
}
