//! mesh-control: the registry daemon, and the client that talks to it.
//!
//! `ControlServer::bind` opens the store, restores the registry and binds
//! the listener (port 0 works; `local_addr` tells where); `serve` runs the
//! HTTP API and the lease sweeper until the shutdown future completes, then
//! ends watch streams and drains in-flight requests.

pub mod api; //      HTTP/JSON API: `router(state)`
pub mod asks; //     questions put to every proxy through its pushes (`mesh-ctl explain`)
pub mod auth; //     who calls (admin token, certificate, bootstrap token) and what they may do
pub mod cli; //    the mesh-control program: flags, logging, signals
pub mod client; //   HTTP client for the /v1 API, used by mesh-proxy and mesh-ctl
pub mod dashboard; // the mesh-wide dashboard: proxies' windows summed, the SSE stream, the page
pub mod listener; // TCP or TLS listener, handshakes off the accept path
pub mod metrics; //  Prometheus metrics
pub mod proxies; //  the proxies watching, and the revision each has applied
pub mod registry; // services, instances, leases, revision, change fan-out
pub mod store; //    the store seam: redb (default) or etcd
pub mod vip; //      VIP allocation from --vip-cidr
pub mod watch; //    the NDJSON watch stream

use crate::control::api::AppState;
pub use crate::control::auth::IdentityConfig;
use crate::control::auth::{Auth, Peer};
use crate::control::listener::ControlListener;
use crate::control::metrics::Metrics;
use crate::control::registry::{Registry, RegistryError, RegistrySettings};
use crate::control::store::Store;
use crate::control::vip::VipCidr;
use std::future::Future;
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch as signal;

/// How long in-flight requests get to finish after shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything mesh-control needs to run (the flags of the binary).
#[derive(Clone, Debug)]
pub struct ControlConfig {
    /// Address of the HTTP API (`--listen`); port 0 picks a free port.
    pub listen: SocketAddr,
    /// Directory of the embedded store (`--data-dir`).
    pub data_dir: PathBuf,
    /// Where service VIPs come from (`--vip-cidr`).
    pub vip_cidr: VipCidr,
    /// How often expired leases are looked for (`--sweep-interval`).
    pub sweep_interval: Duration,
    /// Percent of leases expiring in one sweep that suspends evictions
    /// (`--self-preservation-threshold`).
    pub self_preservation_threshold: u8,
    /// Minimum expired leases for self-preservation (`--self-preservation-min`).
    pub self_preservation_min: usize,
    /// Quiet time before a watch stream sends a keep-alive (`--keepalive-interval`).
    pub keepalive_interval: Duration,
    /// Changes kept in memory for `since=REV` resumes (no flag).
    pub change_log_capacity: usize,
    /// `--identity on` (the binary's default): the CA, TLS and
    /// authentication. `None`: plaintext, nothing checked.
    pub identity: Option<IdentityConfig>,
    /// Where the registry rests (`--store`).
    pub store: StoreChoice,
}

/// `--store`: the embedded file, or etcd shared by replicas.
#[derive(Clone, Debug, Default)]
pub enum StoreChoice {
    #[default]
    Embedded,
    Etcd {
        /// `--etcd-endpoints`.
        endpoints: Vec<String>,
        /// `--seal-key`: the same 32-byte key file on every replica.
        seal_key: PathBuf,
        /// `--replica-id`: this replica's name among the others.
        replica: String,
        /// How this replica is reached, for `mesh-ctl status`.
        url: String,
    },
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 15010)),
            data_dir: PathBuf::from("./mesh-data"),
            vip_cidr: VipCidr::DEFAULT_VIPS,
            sweep_interval: Duration::from_secs(1),
            self_preservation_threshold: 15,
            self_preservation_min: 3,
            keepalive_interval: Duration::from_secs(5),
            change_log_capacity: 4096,
            identity: None,
            store: StoreChoice::Embedded,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
    #[error("identity: {0}")]
    Identity(String),
}

/// A bound, not yet serving, control plane.
pub struct ControlServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    auth: Option<Arc<Auth>>,
    config: ControlConfig,
}

// === impl ControlServer ===

impl ControlServer {
    /// Opens the store, restores the registry and binds the listener.
    pub async fn bind(config: ControlConfig) -> Result<Self, ControlError> {
        if config.self_preservation_threshold > 100 {
            return Err(ControlError::Config(format!(
                "--self-preservation-threshold {} is not a percentage (0..=100)",
                config.self_preservation_threshold
            )));
        }
        if config.sweep_interval.is_zero() || config.keepalive_interval.is_zero() {
            return Err(ControlError::Config(
                "--sweep-interval and --keepalive-interval must be greater than 0".into(),
            ));
        }
        let settings = RegistrySettings {
            self_preservation_threshold: config.self_preservation_threshold,
            self_preservation_min: config.self_preservation_min,
            change_log_capacity: config.change_log_capacity,
            ..RegistrySettings::default()
        };
        let (data_dir, cidr) = (config.data_dir.clone(), config.vip_cidr);
        let identity = config.identity.clone();
        let etcd = match &config.store {
            StoreChoice::Embedded => None,
            StoreChoice::Etcd {
                endpoints,
                seal_key,
                replica,
                url,
            } => {
                let store = store::etcd::EtcdStore::connect(
                    endpoints.clone(),
                    replica.clone(),
                    url.clone(),
                )
                .await?;
                Some((store, seal_key.clone()))
            }
        };
        // Opening redb reads and may repair the file, and the CA makes keys
        // on first start: keep both off the runtime threads (etcd calls
        // block on them too).
        let (registry, auth) = tokio::task::spawn_blocking(move || {
            let open_auth = |cfg: &IdentityConfig| Auth::open(cfg, &data_dir);
            let (store, auth) = match etcd {
                None => {
                    let store = Store::open(&data_dir)?;
                    let auth = match &identity {
                        Some(cfg) => Some(open_auth(cfg).map_err(ControlError::Identity)?),
                        None => None,
                    };
                    (store, auth)
                }
                Some((etcd, seal_key)) => {
                    std::fs::create_dir_all(&data_dir).map_err(|source| {
                        store::StoreError::DataDir {
                            path: data_dir.clone(),
                            source,
                        }
                    })?;
                    let sealer = crate::config::seal::Sealer::open_or_create_file(&seal_key)
                        .map_err(store::StoreError::from)?;
                    etcd.check_seal(&sealer)?;
                    // The CA's files are the cluster's: one CA for every replica.
                    let auth = match &identity {
                        Some(cfg) => Some(etcd.share_identity(
                            &data_dir.join("identity"),
                            &sealer,
                            || open_auth(cfg),
                        )?),
                        None => None,
                    };
                    (Store::etcd(etcd, sealer), auth)
                }
            };
            let registry = Registry::open(store, cidr, settings)?;
            if let Some(a) = &auth {
                registry.set_bundle(a.ca.bundle());
            }
            Ok::<_, ControlError>((registry, auth))
        })
        .await
        .map_err(|e| ControlError::Config(format!("store open task failed: {e}")))??;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ControlError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let local_addr = listener.local_addr().map_err(ControlError::Serve)?;
        Ok(ControlServer {
            listener,
            local_addr,
            registry: Arc::new(registry),
            metrics: Arc::new(Metrics::new()),
            auth: auth.map(Arc::new),
            config,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// Serves until `shutdown` completes; then ends watch streams, lets
    /// in-flight requests finish (up to a few seconds) and returns.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ControlError> {
        let (stop_tx, stop_rx) = signal::channel(false);
        let state = AppState {
            registry: self.registry.clone(),
            metrics: self.metrics.clone(),
            keepalive: self.config.keepalive_interval,
            shutdown: stop_rx.clone(),
            auth: self.auth.clone(),
            proxies: Arc::default(),
            dashboard: Arc::default(),
            asks: Arc::default(),
        };
        if let Some(auth) = &self.auth {
            tokio::spawn(refresh_own_cert(auth.clone(), stop_rx.clone()));
        }
        if let Some(etcd) = self.registry.store().shared() {
            tokio::spawn(etcd.clone().follow(self.registry.clone(), stop_rx.clone()));
            tokio::spawn(etcd.clone().lead(self.registry.clone(), stop_rx.clone()));
        }
        let sweeper = tokio::spawn(sweep_loop(
            self.registry.clone(),
            self.metrics.clone(),
            self.config.sweep_interval,
            stop_rx.clone(),
        ));
        let revision = self.registry.revision();
        let tls = self.auth.as_ref().map(|a| a.tls.clone());
        let scheme = if tls.is_some() { "https" } else { "http" };
        let store = self.registry.store().kind();
        tracing::info!(listen = %self.local_addr, scheme, revision, store, data_dir = %self.config.data_dir.display(), "mesh-control serving");
        if let Some(a) = &self.auth {
            let dir = self.config.data_dir.join("identity");
            tracing::info!(trust_domain = %a.ca.trust_domain(), bundle = %dir.join("bundle.pem").display(), admin_token = %dir.join("admin.token").display(), "identity on: proxies need the bundle and a bootstrap token (mesh-ctl token create)");
        }
        let listener = ControlListener::new(self.listener, tls).map_err(ControlError::Serve)?;
        let mut graceful_rx = stop_rx.clone();
        let app = api::router(state).into_make_service_with_connect_info::<Peer>();
        let server = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = graceful_rx.wait_for(|stop| *stop).await;
        });
        let mut server = std::pin::pin!(server.into_future());
        let result = tokio::select! {
            r = &mut server => r,
            () = shutdown => {
                tracing::info!("shutting down");
                let _ = stop_tx.send(true);
                match tokio::time::timeout(DRAIN_TIMEOUT, &mut server).await {
                    Ok(r) => r,
                    Err(_) => {
                        tracing::warn!("in-flight requests did not finish in {DRAIN_TIMEOUT:?}; closing");
                        Ok(())
                    }
                }
            }
        };
        let _ = stop_tx.send(true);
        let _ = sweeper.await;
        result.map_err(ControlError::Serve)
    }
}

/// Binds and serves until `shutdown` completes.
pub async fn run(
    config: ControlConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ControlError> {
    ControlServer::bind(config).await?.serve(shutdown).await
}

/// Issues mesh-control's own certificate again at 70 % of its life.
async fn refresh_own_cert(auth: Arc<Auth>, mut stop: signal::Receiver<bool>) {
    loop {
        let life = auth.ca.leaf_ttl().mul_f64(0.7).max(Duration::from_secs(1));
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = tokio::time::sleep(life) => {}
        }
        let auth2 = auth.clone();
        match tokio::task::spawn_blocking(move || auth2.refresh_own()).await {
            Ok(Ok(_)) => tracing::debug!("mesh-control's certificate renewed"),
            Ok(Err(e)) => tracing::error!(error = %e, "cannot renew mesh-control's certificate"),
            Err(e) => tracing::error!(error = %e, "certificate task failed"),
        }
    }
}

/// Sweeps expired leases every `interval` until shutdown.
async fn sweep_loop(
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    interval: Duration,
    mut stop: signal::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = ticks.tick() => {}
        }
        let now = tokio::time::Instant::now();
        let reg = registry.clone();
        match tokio::task::spawn_blocking(move || reg.sweep(now)).await {
            Ok(Ok(outcome)) => {
                metrics.evictions.inc_by(outcome.evicted.len() as u64);
            }
            Ok(Err(e)) => tracing::error!(error = %e, "lease sweep failed"),
            Err(e) => tracing::error!(error = %e, "lease sweep task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RegisterRequest;

    #[tokio::test]
    async fn binds_port_zero_sweeps_leases_and_stops() {
        let dir = tempfile::tempdir().unwrap();
        let config = ControlConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: dir.path().to_path_buf(),
            sweep_interval: Duration::from_millis(50),
            ..ControlConfig::default()
        };
        let server = ControlServer::bind(config).await.unwrap();
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);
        let registry = server.registry();
        let doc = serde_json::json!({"address": "127.0.0.2", "port": 1, "ttl": 1});
        registry
            .register("web", RegisterRequest::from_json(&doc).unwrap())
            .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async move {
            let _ = stopped.await;
        }));
        tokio::net::TcpStream::connect(addr).await.unwrap();

        // The sweeper evicts the 1s lease on its own.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while registry.status().instances > 0 {
            assert!(tokio::time::Instant::now() < deadline, "lease never swept");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(registry.revision(), 2);

        stop.send(()).unwrap();
        let result = tokio::time::timeout(Duration::from_secs(10), task).await;
        assert!(
            matches!(result, Ok(Ok(Ok(())))),
            "serve did not stop cleanly"
        );
    }
}
