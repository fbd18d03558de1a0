//! Runs one command against the control plane and turns the outcome into
//! an exit code: 0 done, 1 the request failed, 2 bad usage or input (the
//! server's 400 with one line per rejected field).

use crate::cli::{Cli, Command, DeleteCommand, GetCommand, Output};
use crate::output::{self, RenderError};
use crate::{policy, top, watch};
use mesh::control::client::{error_summary, ClientError, ControlClient};
use serde::Serialize;
use std::io::{self, Write};
use std::process::ExitCode;

/// Everything that can end a command early.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Render(#[from] RenderError),
    /// Writing to stdout failed; a closed pipe (`| head`) is not an error.
    #[error("cannot write output: {0}")]
    Stdout(io::Error),
    /// Input that cannot be used (unreadable file, no documents): exit 2.
    #[error("{0}")]
    Input(String),
    /// Invalid documents, one `FILE: doc N: field: reason` line each: exit 2.
    #[error("{}", .0.join("\n"))]
    Documents(Vec<String>),
    /// The proxy's admin endpoint could not be read (`top`).
    #[error("{0}")]
    Admin(String),
}

impl CtlError {
    fn exit_code(&self) -> u8 {
        match self {
            CtlError::Client(ClientError::Api {
                status: 400 | 422, ..
            }) => 2,
            CtlError::Client(ClientError::InvalidUrl(_)) => 2,
            CtlError::Input(_) | CtlError::Documents(_) => 2,
            CtlError::Stdout(e) if e.kind() == io::ErrorKind::BrokenPipe => 0,
            _ => 1,
        }
    }

    /// The message for stderr: one line, plus one line per rejected field.
    fn report(&self) -> Option<String> {
        match self {
            CtlError::Stdout(e) if e.kind() == io::ErrorKind::BrokenPipe => None,
            CtlError::Client(ClientError::Api { status, error }) => {
                let mut msg = format!("error: {} (HTTP {status})", error_summary(error));
                for f in &error.fields {
                    msg.push_str(&format!("\n  {}: {}", f.field, f.reason));
                }
                Some(msg)
            }
            CtlError::Documents(lines) => Some(lines.join("\n")),
            other => Some(format!("error: {other}")),
        }
    }
}

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
    // mesh-ctl runs in the operator's shell, not behind interception: no mark.
    let client = ControlClient::new(&cli.control, None)?;
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
        Command::Apply { file } => policy::apply(&client, format, &file).await,
        Command::Get {
            what: GetCommand::Policy { service },
        } => policy::get(&client, format, service.as_deref()).await,
        Command::Delete {
            what: DeleteCommand::Policy { service },
        } => policy::delete(&client, format, &service).await,
        Command::Top(_) => Ok(()), // handled above
    }
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

/// Writes one block to stdout and flushes, so `watch` lines show at once.
pub fn emit(text: &str) -> Result<(), CtlError> {
    let mut out = io::stdout().lock();
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(CtlError::Stdout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh::model::{ApiError, FieldError};

    #[test]
    fn exit_codes_and_messages() {
        let bad = CtlError::Client(ClientError::Api {
            status: 400,
            error: ApiError {
                error: "invalid registration".into(),
                fields: vec![FieldError {
                    field: "port".into(),
                    reason: "70000 is outside 1..=65535".into(),
                }],
            },
        });
        assert_eq!(bad.exit_code(), 2);
        // The server may fold the fields into its message; they print once.
        let folded = CtlError::Client(ClientError::Api {
            status: 400,
            error: ApiError {
                error: "invalid request: port: 70000 is outside 1..=65535".into(),
                fields: vec![FieldError {
                    field: "port".into(),
                    reason: "70000 is outside 1..=65535".into(),
                }],
            },
        });
        assert_eq!(
            folded.report().unwrap(),
            "error: invalid request (HTTP 400)\n  port: 70000 is outside 1..=65535"
        );
        assert_eq!(
            bad.report().unwrap(),
            "error: invalid registration (HTTP 400)\n  port: 70000 is outside 1..=65535"
        );
        let missing = CtlError::Client(ClientError::Api {
            status: 404,
            error: ApiError {
                error: "unknown service \"x\"".into(),
                fields: vec![],
            },
        });
        assert_eq!(missing.exit_code(), 1);
        assert_eq!(
            missing.report().unwrap(),
            "error: unknown service \"x\" (HTTP 404)"
        );
        let url = CtlError::Client(ClientError::InvalidUrl("x".into()));
        assert_eq!(url.exit_code(), 2);
        let pipe = CtlError::Stdout(io::Error::from(io::ErrorKind::BrokenPipe));
        assert_eq!((pipe.exit_code(), pipe.report()), (0, None));
        assert_eq!(CtlError::Client(ClientError::IdleTimeout).exit_code(), 1);
    }
}
