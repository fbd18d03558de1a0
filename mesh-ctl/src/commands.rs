//! Runs one command against the control plane and turns the outcome into
//! an exit code: 0 done, 1 the request failed, 2 bad usage or input (the
//! server's 400 with one line per rejected field).

use crate::cli::{Cli, Command, DeleteCommand, GetCommand, Output, TokenCommand};
use crate::error::{emit, CtlError};
use crate::output;
use crate::{config, identity, inject, observe, policy, top, watch};
use mesh::control::client::ControlClient;
use mesh::identity::tls::TlsIdentity;
use serde::Serialize;
use std::process::ExitCode;

pub async fn run(cli: Cli) -> ExitCode {
    match execute(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(msg) = e.report() {
                eprintln!("{msg}");
            }
            ExitCode::from(e.exit_code())
        }
    }
}

async fn execute(cli: Cli) -> Result<(), CtlError> {
    let format = cli.output;
    // `top` talks to a proxy, not to the control plane.
    if let Command::Top(args) = &cli.command {
        return top::run(args, format).await;
    }
    // inject and uninject are YAML to YAML: no control plane.
    match &cli.command {
        Command::Inject(args) => return rewrite(&args.file, |y| inject::inject(y, &args.flags())),
        Command::Uninject { file } => return rewrite(file, inject::uninject),
        _ => {}
    }
    // mesh-ctl runs in the operator's shell, not behind interception: no mark.
    let client = connect(&cli)?;
    match cli.command {
        Command::Services => {
            let services = client.services().await?;
            print(format, &services, |s| output::services_table(s))
        }
        Command::Endpoints { service } => {
            let info = client.service(&service).await?;
            print(format, &info, output::endpoints_table)
        }
        Command::Register(args) => {
            let registered = client.register(&args.service, &args.request()).await?;
            print(format, &registered, output::registered_line)
        }
        Command::Deregister { service, id } => {
            client.deregister(&service, &id).await?;
            let done = Deregistered {
                service,
                id,
                deregistered: true,
            };
            print(format, &done, |d| {
                format!("deregistered {}/{}", d.service, d.id)
            })
        }
        Command::Watch {
            since,
            idle_timeout,
        } => {
            tokio::select! {
                res = watch::follow(&client, format, since, idle_timeout) => res,
                // Ctrl-C is how a watch is meant to end: success.
                _ = tokio::signal::ctrl_c() => Ok(()),
            }
        }
        Command::Status => {
            let status = client.status().await?;
            let url = client.base_url().to_string();
            print(format, &status, |s| output::status_table(&url, s))
        }
        Command::Apply { file, message } => {
            policy::apply(&client, format, &file, message.as_deref()).await
        }
        Command::Config { what } => config::run(&client, format, what).await,
        Command::Get {
            what: GetCommand::Policy { service },
        } => policy::get(&client, format, service.as_deref()).await,
        Command::Delete {
            what: DeleteCommand::Policy { service },
        } => policy::delete(&client, format, &service).await,
        Command::Get {
            what: GetCommand::Authorization { service },
        } => policy::get_authorization(&client, format, service.as_deref()).await,
        Command::Delete {
            what: DeleteCommand::Authorization { service },
        } => policy::delete_authorization(&client, format, &service).await,
        Command::Get {
            what: GetCommand::Route { name },
        } => policy::get_route(&client, format, name.as_deref()).await,
        Command::Delete {
            what: DeleteCommand::Route { name },
        } => policy::delete_route(&client, format, &name).await,
        Command::Token {
            what:
                TokenCommand::Create {
                    service,
                    namespace,
                    ttl,
                    secret,
                },
        } => identity::create_token(&client, format, service, namespace, ttl, secret).await,
        Command::Identity(args) => identity::run(&client, format, args).await,
        Command::Proxies => {
            let list = client.proxies(None, None).await?;
            print(format, &list, output::proxies_table)
        }
        Command::Explain { request_id } => observe::explain(&client, format, &request_id).await,
        Command::Check => observe::check(&client, format).await,
        Command::Tap { service } => {
            tokio::select! {
                res = observe::tap(&client, format, &service) => res,
                // Ctrl-C is how a tap is meant to end: success.
                _ = tokio::signal::ctrl_c() => Ok(()),
            }
        }
        Command::Stat { service } => {
            let mut d = client.dashboard().await?;
            if let Some(s) = service {
                d.circuits.retain(|c| c.service == s);
                d.edges.retain(|e| e.destination == s);
            }
            print(format, &d, output::stat_table)
        }
        // Handled above.
        Command::Top(_) | Command::Inject(_) | Command::Uninject { .. } => Ok(()),
    }
}

/// Reads `file` (`-`: stdin), rewrites it, prints the result and the
/// notes (on stderr).
fn rewrite(
    file: &str,
    f: impl FnOnce(&str) -> Result<inject::Rewritten, inject::InjectError>,
) -> Result<(), CtlError> {
    let input = if file == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| CtlError::Input(format!("stdin: {e}")))?;
        s
    } else {
        std::fs::read_to_string(file).map_err(|e| CtlError::Input(format!("{file}: {e}")))?
    };
    let out = f(&input).map_err(|e| CtlError::Input(format!("{file}: {e}")))?;
    for note in &out.notes {
        eprintln!("note: {file}: {note}");
    }
    emit(out.yaml.trim_end_matches('\n'))
}

/// The client for `--control`: TLS checked against `--trust-bundle`, the
/// admin token from `MESH_TOKEN` or `--token-file` if there is one.
fn connect(cli: &Cli) -> Result<ControlClient, CtlError> {
    let tls = match &cli.trust_bundle {
        Some(path) => {
            let pem = std::fs::read_to_string(path)
                .map_err(|e| CtlError::Input(format!("--trust-bundle {}: {e}", path.display())))?;
            let tls = TlsIdentity::new(&cli.trust_domain, &pem)
                .map_err(|e| CtlError::Input(format!("--trust-bundle {}: {e}", path.display())))?;
            Some(tls)
        }
        None => None,
    };
    let mut client = ControlClient::with_tls(&cli.control, None, tls)?;
    let token = match (std::env::var("MESH_TOKEN").ok(), &cli.token_file) {
        (_, Some(path)) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| CtlError::Input(format!("--token-file {}: {e}", path.display())))?,
        ),
        (Some(t), None) if !t.trim().is_empty() => Some(t),
        _ => None,
    };
    if let Some(token) = token {
        client = client.with_bearer(token.trim())?;
    }
    Ok(client)
}

/// What `deregister -o json` prints (the API answers only a revision).
#[derive(Serialize)]
struct Deregistered {
    service: String,
    id: String,
    deregistered: bool,
}

fn print<T: Serialize>(
    format: Output,
    value: &T,
    table: impl FnOnce(&T) -> String,
) -> Result<(), CtlError> {
    let text = output::render(format, value, table)?;
    emit(&text)
}
