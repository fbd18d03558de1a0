//! `mesh-ctl watch`: print registry changes as they happen.
//!
//! The first connection must succeed (an unreachable control plane is an
//! ordinary failure, exit 1). After that a dropped or silent stream is
//! resumed from the last revision seen (on the next replica, when
//! `--control` lists several), with a growing pause between attempts,
//! until the operator presses Ctrl-C.

use crate::cli::Output;
use crate::error::{emit, CtlError};
use crate::output;
use mesh::control::client::{ClientError, ControlClient, WatchStream};
use std::time::Duration;

/// First pause before reconnecting; doubled per failure up to the max.
const BACKOFF_START: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Follows the stream until Ctrl-C (handled by the caller) or a hard error.
pub async fn follow(
    client: &ControlClient,
    format: Output,
    since: u64,
    idle_timeout: Duration,
) -> Result<(), CtlError> {
    let mut since = since;
    let mut stream = client.watch(since, idle_timeout, None).await?;
    let mut backoff = BACKOFF_START;
    loop {
        let lost = match stream.next().await {
            Ok(Some(ev)) => {
                since = since.max(ev.revision());
                backoff = BACKOFF_START;
                if let Some(text) = output::event_doc(format, &ev)? {
                    emit(&text)?;
                }
                continue;
            }
            Ok(None) => "the control plane closed the stream".to_string(),
            Err(e) => fatal(e)?,
        };
        // With several replicas, the reconnect tries the next one first.
        client.fail_over(stream.url(), &lost);
        stream = reconnect(client, since, idle_timeout, lost, &mut backoff).await?;
    }
}

/// Retries until a stream opens; only answers that retrying cannot fix
/// (an HTTP error status) end the watch.
async fn reconnect(
    client: &ControlClient,
    since: u64,
    idle_timeout: Duration,
    mut why: String,
    backoff: &mut Duration,
) -> Result<WatchStream, CtlError> {
    loop {
        eprintln!(
            "watch: {why}; reconnecting from revision {since} in {}ms",
            backoff.as_millis()
        );
        tokio::time::sleep(*backoff).await;
        *backoff = (*backoff * 2).min(BACKOFF_MAX);
        match client.watch(since, idle_timeout, None).await {
            Ok(stream) => return Ok(stream),
            Err(e) => why = fatal(e)?,
        }
    }
}

/// Transport trouble is worth a retry (returned as the reason); an API
/// error is final.
fn fatal(e: ClientError) -> Result<String, CtlError> {
    match e {
        ClientError::Api { .. } | ClientError::InvalidUrl(_) => Err(e.into()),
        other => Ok(other.to_string()),
    }
}
