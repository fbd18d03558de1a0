//! Registers the local app with the control plane and keeps it there.
//!
//! The agent owns three clocks: health checks every `health_interval`
//! (every [`FIRST_UP_CHECK`] until the app first answers, for up to
//! [`FIRST_UP_WINDOW`], so a new instance is routable within ~100 ms of
//! its app listening rather than a whole interval later),
//! heartbeats every third of the lease (so two may be lost before the lease
//! runs out), and reconnect backoff. A health change is reported at once
//! rather than at the next heartbeat, so callers stop routing to a failing
//! app within one check interval. On shutdown it deregisters, so callers
//! stop routing here before the proxy starts draining.

use super::Backoff;
use crate::control::client::{ClientError, ControlClient};
use crate::model::{Health, RegisterRequest};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Consecutive failed checks before the app is reported down.
const FALL: u32 = 2;
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub enum HealthCheck {
    /// GET this path on the app; any status below 400 is healthy.
    Http { path: String },
    /// A TCP connect to the app port succeeds.
    Tcp,
}

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub service: String,
    pub instance_id: String,
    pub advertise: IpAddr,
    pub app_port: u16,
    /// Port of this sidecar's inbound listener on `advertise`, registered
    /// so callers' proxies connect proxy to proxy; `None` when the inbound
    /// listener is not running.
    pub inbound_port: Option<u16>,
    pub metadata: BTreeMap<String, String>,
    pub check: HealthCheck,
    pub health_interval: Duration,
    pub lease_ttl: Duration,
}

/// What `/state` shows about the local registration.
pub use crate::model::state::LocalState as AgentState;

pub struct RegistrationAgent {
    cfg: AgentConfig,
    client: ControlClient,
    /// Shared with the admin server.
    state: Arc<Mutex<AgentState>>,
}

impl RegistrationAgent {
    pub fn new(cfg: AgentConfig, client: ControlClient) -> Self {
        let state = AgentState {
            service: cfg.service.clone(),
            instance_id: cfg.instance_id.clone(),
            ..Default::default()
        };
        // A heartbeat that hangs on a partitioned replica must leave it
        // for the next one in time for the lease: a third of the lease
        // per replica, as often as heartbeats go.
        let client = client.with_request_timeout(cfg.lease_ttl / 3);
        RegistrationAgent {
            cfg,
            client,
            state: Arc::new(Mutex::new(state)),
        }
    }

    pub fn state(&self) -> Arc<Mutex<AgentState>> {
        self.state.clone()
    }

    /// Runs until `shutdown`, then deregisters (bounded) and returns the
    /// revision that removed the instance (`None`: it was not registered,
    /// or the control plane did not answer, and the lease will expire).
    pub async fn run(self, shutdown: CancellationToken) -> Option<u64> {
        let heartbeat_every = (self.cfg.lease_ttl / 3).max(Duration::from_millis(100));
        // The first check decides the initial health outright, so an app
        // that is not up yet is registered down, not routed to.
        let mut health: Option<Health> = None;
        let mut failures = 0u32;
        let mut registered = false;
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut next_heartbeat = Instant::now();
        let mut next_check = Instant::now();
        let started = Instant::now();
        let mut ever_up = false;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(next_check.min(next_heartbeat)) => {}
                () = shutdown.cancelled() => break,
            }
            let now = Instant::now();
            if now >= next_check {
                let ok = self.check().await;
                ever_up |= ok;
                next_check = now + check_delay(ever_up, now - started, self.cfg.health_interval);
                failures = if ok { 0 } else { failures + 1 };
                let observed = match (ok, health) {
                    (true, _) => Health::Up,
                    (false, Some(h)) if failures < FALL => h,
                    (false, _) => Health::Down,
                };
                if health != Some(observed) {
                    tracing::info!(health = observed.as_str(), "app health");
                    health = Some(observed);
                    next_heartbeat = now; // report it now
                }
                self.update(|s| s.health = health);
            }
            let Some(health) = health else { continue };
            if Instant::now() < next_heartbeat {
                continue;
            }
            let result = if registered {
                self.client
                    .heartbeat(&self.cfg.service, &self.cfg.instance_id, health)
                    .await
            } else {
                self.register(health).await
            };
            match result {
                Ok(()) => {
                    if !registered {
                        tracing::info!(service = %self.cfg.service, id = %self.cfg.instance_id, "registered");
                    }
                    registered = true;
                    backoff.reset();
                    next_heartbeat = Instant::now() + heartbeat_every;
                    self.update(|s| {
                        s.registered = true;
                        s.last_error = None;
                    });
                }
                Err(ClientError::UnknownInstance) => {
                    // The control plane forgot us (restart, eviction): register again at once.
                    tracing::warn!("control plane does not know this instance; registering again");
                    registered = false;
                    next_heartbeat = Instant::now();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "registration/heartbeat failed; retrying");
                    next_heartbeat = Instant::now() + backoff.next_delay();
                    self.update(|s| s.last_error = Some(e.to_string()));
                }
            }
        }
        if !registered {
            return None;
        }
        let dereg = self
            .client
            .deregister(&self.cfg.service, &self.cfg.instance_id);
        let removed = match tokio::time::timeout(Duration::from_secs(2), dereg).await {
            Ok(Ok(revision)) => {
                tracing::info!(revision, "deregistered");
                Some(revision)
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "deregistration failed; the lease will expire");
                None
            }
            Err(_) => {
                tracing::warn!("deregistration timed out; the lease will expire");
                None
            }
        };
        self.update(|s| s.registered = false);
        removed
    }

    async fn register(&self, health: Health) -> Result<(), ClientError> {
        let req = RegisterRequest {
            identity: None,
            id: Some(self.cfg.instance_id.clone()),
            address: self.cfg.advertise,
            port: self.cfg.app_port,
            metadata: self.cfg.metadata.clone(),
            ttl: Some(self.cfg.lease_ttl.as_secs().max(1)),
            health,
            inbound_port: self.cfg.inbound_port,
        };
        self.client
            .register(&self.cfg.service, &req)
            .await
            .map(|_| ())
    }

    async fn check(&self) -> bool {
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), self.cfg.app_port);
        let probe = async {
            match &self.cfg.check {
                HealthCheck::Tcp => crate::net::connect(addr, crate::net::LOOPBACK)
                    .await
                    .is_ok(),
                HealthCheck::Http { path } => {
                    crate::net::local_get(addr, path, "mesh-proxy-health")
                        .await
                        .is_ok_and(|s| s.as_u16() < 400)
                }
            }
        };
        tokio::time::timeout(CHECK_TIMEOUT, probe)
            .await
            .unwrap_or(false)
    }

    fn update(&self, f: impl FnOnce(&mut AgentState)) {
        if let Ok(mut s) = self.state.lock() {
            f(&mut s);
        }
    }
}

/// How often an app that has never answered is checked.
pub const FIRST_UP_CHECK: Duration = Duration::from_millis(100);
/// How long after start the fast checks go on for an app that never
/// answers (then: every `health_interval`, as for any app).
pub const FIRST_UP_WINDOW: Duration = Duration::from_secs(60);

/// The wait before the next health check.
fn check_delay(ever_up: bool, since_start: Duration, interval: Duration) -> Duration {
    if ever_up || since_start >= FIRST_UP_WINDOW {
        interval
    } else {
        FIRST_UP_CHECK.min(interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_app_that_never_answered_is_checked_often_for_a_while() {
        let interval = Duration::from_secs(1);
        let s = Duration::from_secs;
        assert_eq!(check_delay(false, s(0), interval), FIRST_UP_CHECK);
        assert_eq!(check_delay(false, s(59), interval), FIRST_UP_CHECK);
        assert_eq!(check_delay(false, s(60), interval), interval);
        assert_eq!(check_delay(true, s(0), interval), interval);
        // Never slower than the configured interval.
        let fast = Duration::from_millis(50);
        assert_eq!(check_delay(false, s(0), fast), fast);
    }
}
