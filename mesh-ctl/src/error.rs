//! Everything that can end a command early, the exit code and message
//! each gives, and writing to stdout (a closed pipe is not an error).

use crate::output::RenderError;
use mesh::control::client::{error_summary, ClientError};
use std::io::{self, Write};

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
    /// The command ran and found a failure (`check`): exit 1, its output
    /// already printed.
    #[error("{0}")]
    Failed(String),
}

impl CtlError {
    pub fn exit_code(&self) -> u8 {
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
    pub fn report(&self) -> Option<String> {
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
            CtlError::Failed(_) => None,
            other => Some(format!("error: {other}")),
        }
    }
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
