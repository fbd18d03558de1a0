//! Starting and stopping `mesh-proxy`, in two steps: [`bind`] opens every
//! socket and checks the configuration (so every error is reported
//! before anything starts), then [`Bound::serve`] runs until shutdown and
//! goes through the [`Phase`]s in order.

use super::admin::{self, AdminState};
use super::admission::{Admission, Overload};
use super::config::ProxyArgs;
use super::dns::{DnsConfig, DnsServer, VipLookup};
use super::inbound::{App, InboundHttp, InboundServer};
use super::limits::Limits;
use super::outbound::{HttpOutbound, OpaqueOutbound, OutboundServer};
use super::protocol::{DetectConfig, Learned};
use super::upstream::Upstreams;
use crate::control::client::ControlClient;
use crate::discovery::{
    self, AgentConfig, Directory, HealthCheck, RegistrationAgent, SnapshotCache,
};
use crate::identity::workload::Workload;
use crate::model::proxies::WatcherInfo;
use crate::net::ConnectOptions;
use crate::telemetry::ProxyMetrics;
use http::HeaderValue;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot listen on {flag} {addr}: {source}")]
    Bind {
        flag: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("--control: {0}")]
    Control(String),
    #[error("{0}")]
    Config(String),
}

/// The shutdown phases, in the order they run (SIGTERM, SIGINT or
/// `POST /shutdown` starts them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// The control plane drops this instance, so callers' proxies stop
    /// picking it before it stops serving.
    Deregister,
    /// The listeners stop accepting; in-flight requests finish, for up to
    /// `--drain-timeout`.
    Drain,
    /// DNS, admin, the registry watch and the cache writer end; exit 0.
    Stop,
}

/// One cancellation token per [`Phase`].
#[derive(Clone, Default)]
struct Phases([CancellationToken; 3]);

impl Phases {
    fn token(&self, phase: Phase) -> CancellationToken {
        self.0[phase as usize].clone()
    }

    fn enter(&self, phase: Phase) {
        self.0[phase as usize].cancel();
    }
}

/// How often idle upstream connections past their timeout are closed.
const EXPIRE_IDLE_EVERY: Duration = Duration::from_secs(15);

/// Runs the proxy until a shutdown signal, then drains and returns.
pub async fn run(args: ProxyArgs) -> Result<(), ProxyError> {
    bind(args).await?.serve().await
}

/// Gateway mode's own settings (`mesh-proxy gateway`): its listener, and
/// what it does there. The rest of its flags are the sidecar's.
#[derive(Clone, Debug)]
pub struct EdgeSettings {
    pub listen: SocketAddr,
    pub tls_cert: Option<std::path::PathBuf>,
    pub tls_key: Option<std::path::PathBuf>,
    pub tls_hosts: Vec<crate::gateway::tls::HostCert>,
    pub access_log: bool,
    /// `redis://...` for rate limits shared by every replica.
    pub redis: Option<String>,
}

/// The gateway's listener, bound, and its TLS configuration, loaded.
struct Edge {
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    access_log: bool,
    redis: Option<Arc<crate::gateway::limit::Redis>>,
}

/// Every socket bound and the configuration checked; nothing running yet.
pub struct Bound {
    args: ProxyArgs,
    metrics: Arc<ProxyMetrics>,
    dir: Arc<Directory>,
    cache: SnapshotCache,
    client: ControlClient,
    /// The sidecar's listeners; a gateway has none of them.
    outbound: Option<TcpListener>,
    admin: TcpListener,
    inbound: Option<(TcpListener, u16)>,
    dns: Option<DnsServer>,
    /// Gateway mode: the listener for outside clients.
    edge: Option<Edge>,
    /// Every listener of this proxy: forwarding there would loop.
    own_addrs: Vec<SocketAddr>,
    inbound_addr: Option<SocketAddr>,
    agent: Option<AgentConfig>,
    via_token: String,
    via: HeaderValue,
    caller: Option<HeaderValue>,
    /// Identity on: this proxy's key, certificate and roots.
    workload: Option<Arc<Workload>>,
    /// The bootstrap token's file, for a first certificate.
    token: Option<std::path::PathBuf>,
    /// `--config` subscriptions, started from their cache.
    config: Arc<crate::config::Delivery>,
}

/// Binds every listener and checks the flags, loading the cached registry
/// if there is one.
pub async fn bind(args: ProxyArgs) -> Result<Bound, ProxyError> {
    bind_as(args, None).await
}

/// [`bind`] in gateway mode: the edge listener instead of the sidecar's
/// outbound, inbound and DNS listeners; nothing is registered.
pub async fn bind_gateway(args: ProxyArgs, edge: EdgeSettings) -> Result<Bound, ProxyError> {
    if args.app_port.is_some() {
        return Err(ProxyError::Config(
            "gateway mode registers nothing: --app-port is for a sidecar beside its app".into(),
        ));
    }
    bind_as(args, Some(edge)).await
}

async fn bind_as(args: ProxyArgs, edge: Option<EdgeSettings>) -> Result<Bound, ProxyError> {
    let metrics = Arc::new(ProxyMetrics::new());
    let preservation =
        crate::discovery::Preservation::try_new(args.max_endpoint_removal, args.endpoint_hold)
            .map_err(ProxyError::Config)?;
    let dir = Arc::new(
        Directory::new(args.lb.iter().cloned().collect(), metrics.clone())
            .with_preservation(preservation),
    );
    let cache = SnapshotCache::new(&args.cache_dir);
    match cache.load() {
        Ok(Some(snap)) => {
            tracing::info!(revision = snap.revision, services = snap.services.len(), path = %cache.path().display(), "starting from the cached registry");
            dir.replace(snap);
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(error = %e, path = %cache.path().display(), "ignoring unreadable registry cache")
        }
    }
    let mark = (args.mark != 0).then_some(args.mark);
    if args.exit_when_app_exits == Some(super::lifecycle::AppWatch::Port) && args.app_port.is_none()
    {
        return Err(ProxyError::Config(
            "--exit-when-app-exits port watches --app-port: give it, or use `process`".into(),
        ));
    }
    if let Some(p) = args.trust_bundle.as_ref().filter(|_| args.identity) {
        await_bundle(p).await;
    }
    let (workload, token) = identity(&args)?;
    // Before anything listens: the app may read its cached config at once.
    let config = crate::config::Delivery::open(&args.config, &args.cache_dir);
    let tls = workload.as_ref().map(|w| w.tls.clone());
    let client = ControlClient::with_tls(&args.control, mark, tls)
        .map_err(|e| ProxyError::Control(e.to_string()))?
        .with_failover_counter(metrics.control_failovers.clone());

    let edge = match edge {
        Some(e) => {
            let default = e.tls_cert.as_deref().zip(e.tls_key.as_deref());
            let tls = crate::gateway::tls::server_config(default, &e.tls_hosts)
                .map_err(ProxyError::Config)?;
            let redis = match &e.redis {
                Some(url) => Some(Arc::new(
                    crate::gateway::limit::Redis::new(
                        url,
                        metrics.gateway.rate_limit_fail_open.clone(),
                    )
                    .map_err(ProxyError::Config)?,
                )),
                None => None,
            };
            Some(Edge {
                listener: bind_tcp("--listen", e.listen).await?,
                tls,
                access_log: e.access_log,
                redis,
            })
        }
        None => None,
    };
    let outbound = match edge {
        None => Some(bind_tcp("--outbound", args.outbound).await?),
        Some(_) => None,
    };
    let admin = bind_tcp("--admin", args.admin).await?;
    // The inbound side exists for an app; a client-only sidecar has none.
    let inbound = match args.app_port {
        Some(port) => Some((bind_tcp("--inbound", args.inbound).await?, port)),
        None => None,
    };
    let dns = match edge {
        Some(_) => None,
        None => Some(
            DnsServer::bind(
                DnsConfig {
                    listen: args.dns,
                    domain: args.domain.trim_matches('.').to_ascii_lowercase(),
                    resolv_conf: args.resolv_conf.clone(),
                    mark,
                    queries: metrics.dns_queries.clone(),
                },
                dir.clone() as Arc<dyn VipLookup>,
            )
            .await
            .map_err(|source| ProxyError::Bind {
                flag: "--dns",
                addr: args.dns,
                source,
            })?,
        ),
    };
    let inbound_addr = inbound
        .as_ref()
        .map(|(l, _)| l.local_addr().unwrap_or(args.inbound));
    let mut own_addrs = vec![admin.local_addr().unwrap_or(args.admin)];
    own_addrs.extend(
        outbound
            .as_ref()
            .map(|o| o.local_addr().unwrap_or(args.outbound)),
    );
    own_addrs.extend(dns.as_ref().map(DnsServer::local_addr));
    own_addrs.extend(edge.as_ref().and_then(|e| e.listener.local_addr().ok()));
    own_addrs.extend(inbound_addr);
    let agent = agent_config(&args, inbound_addr, edge.is_some())?;
    let via_token = format!("mesh-{:08x}", fastrand::u32(..));
    let via = HeaderValue::from_str(&format!("1.1 {via_token}"))
        .map_err(|e| ProxyError::Config(e.to_string()))?;
    // With identity off, peer proxies learn the caller from this header;
    // with identity on, from the certificate alone.
    let caller = match (&args.service, args.identity) {
        (Some(s), false) => {
            Some(HeaderValue::from_str(s).map_err(|e| ProxyError::Config(e.to_string()))?)
        }
        _ => None,
    };
    Ok(Bound {
        args,
        metrics,
        dir,
        cache,
        client,
        outbound,
        admin,
        inbound,
        dns,
        edge,
        own_addrs,
        inbound_addr,
        agent,
        via_token,
        via,
        caller,
        workload,
        token,
        config,
    })
}

/// How long a `--trust-bundle` with no certificate in it yet is waited for.
const BUNDLE_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// Waits (at most [`BUNDLE_WAIT`]) until `path` holds a PEM certificate:
/// a Secret volume can be mounted before its files are written (podman's
/// kube play was seen starting a pod on an empty bundle.pem). What is
/// there then is read, and refused with its reason if still no bundle.
async fn await_bundle(path: &std::path::Path) {
    let deadline = tokio::time::Instant::now() + BUNDLE_WAIT;
    let mut announced = false;
    loop {
        let text = tokio::fs::read_to_string(path).await.unwrap_or_default();
        if text.contains("-----BEGIN CERTIFICATE-----") || tokio::time::Instant::now() >= deadline {
            return;
        }
        if !announced {
            announced = true;
            tracing::info!(path = %path.display(), "--trust-bundle holds no certificate yet; waiting for it");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Identity on: the key and cached certificate from `--cache-dir`, the
/// roots from `--trust-bundle` (or the cache), the token if one is given.
/// A proxy that could never get a certificate stops here, saying why.
fn identity(
    args: &ProxyArgs,
) -> Result<(Option<Arc<Workload>>, Option<std::path::PathBuf>), ProxyError> {
    if !args.identity {
        return Ok((None, None));
    }
    let urls = crate::control::client::control_urls(&args.control)
        .map_err(|e| ProxyError::Control(e.to_string()))?;
    if let Some(plain) = urls.iter().find(|u| !u.starts_with("https://")) {
        return Err(ProxyError::Control(format!(
            "{plain:?}: with identity on, the control plane is reached over https:// (or pass --identity off)"
        )));
    }
    let read = |flag: &str, p: &std::path::Path| {
        std::fs::read_to_string(p)
            .map_err(|e| ProxyError::Config(format!("{flag} {}: {e}", p.display())))
    };
    let bundle = match &args.trust_bundle {
        Some(p) => Some(read("--trust-bundle", p)?),
        None => None,
    };
    // Read now to fail early on a missing file; read again before every
    // certify (see Workload::run). An empty one may still be being written.
    if let Some(p) = &args.token_file {
        read("--token-file", p)?;
    }
    let token = args.token_file.clone();
    let workload = Workload::open(&args.cache_dir, &args.trust_domain, bundle)
        .map_err(|e| ProxyError::Config(e.to_string()))?;
    if !workload.ready() && token.is_none() {
        return Err(ProxyError::Config(
            "identity is on, --cache-dir holds no valid certificate and no bootstrap token was given: pass --token-file (from `mesh-ctl token create --service SERVICE`), or --identity off".into(),
        ));
    }
    Ok((Some(workload), token))
}

impl Bound {
    /// Serves until a signal or `POST /shutdown`, then runs the shutdown
    /// phases and returns.
    pub async fn serve(self) -> Result<(), ProxyError> {
        let Bound {
            args,
            metrics,
            dir,
            cache,
            client,
            outbound,
            admin,
            inbound,
            dns,
            edge,
            own_addrs,
            inbound_addr,
            agent,
            via_token,
            via,
            caller,
            workload,
            token,
            config,
        } = self;
        let phases = Phases::default();
        let listening = Arc::new(AtomicBool::new(false));
        let mark = (args.mark != 0).then_some(args.mark);
        // What was bound (a flag's port 0 is the kernel's pick): logged below.
        let shown = |a: Option<SocketAddr>| a.map_or_else(|| "-".to_string(), |a| a.to_string());
        let outbound_addr = shown(outbound.as_ref().and_then(|l| l.local_addr().ok()));
        let dns_addr = shown(dns.as_ref().map(DnsServer::local_addr));
        let admin_addr = own_addrs[0];

        if let Some(w) = &workload {
            tokio::spawn(
                w.clone()
                    .run(client.clone(), token, phases.token(Phase::Stop)),
            );
            tokio::spawn(follow_bundle(
                w.clone(),
                dir.clone(),
                phases.token(Phase::Stop),
            ));
        }
        // The control plane answers only proven identities: with identity
        // on, the watch and the registration wait for the certificate.
        let identified = {
            let w = workload.clone();
            move || {
                let w = w.clone();
                async move {
                    if let Some(w) = w {
                        w.wait_ready().await;
                    }
                }
            }
        };
        let rolling = Arc::new(crate::telemetry::stats::Rolling::default());
        let trails = Arc::new(super::outbound::trails::Trails::default());
        let tap = Arc::new(super::outbound::tap::Tap::default());
        // The proxy's id in mesh-control's table of watchers: one per
        // process, 64 random bits (not the Via token, which every peer sees).
        let proxy_id = format!("mesh-{:016x}", fastrand::u64(..));
        let who = WatcherInfo {
            proxy: proxy_id.clone(),
            service: args.service.clone(),
            instance: agent.as_ref().map(|a| a.instance_id.clone()),
            version: Some(env!("CARGO_PKG_VERSION").to_string()),
        };
        let watch = discovery::run_watch(
            client.clone(),
            dir.clone(),
            metrics.clone(),
            discovery::WATCH_IDLE_TIMEOUT,
            who,
            phases.token(Phase::Stop),
        );
        let report = discovery::report_applied(
            client.clone(),
            dir.clone(),
            proxy_id.clone(),
            phases.token(Phase::Stop),
        );
        let explain = {
            let (trails, service) = (trails.clone(), args.service.clone());
            let (want, take) = (tap.clone(), tap.clone());
            discovery::Asks {
                explain: Box::new(move |id: &str, proxy: &str| {
                    trails.explain(id, proxy, service.as_deref())
                }),
                tap: Box::new(move |services| want.want(services)),
                tapped: Box::new(move || take.take()),
            }
        };
        let pushed = discovery::report_stats(
            rolling.clone(),
            dir.clone(),
            metrics.clone(),
            Some((client.clone(), proxy_id.clone())),
            explain,
            phases.token(Phase::Stop),
        );
        let delivery = config.clone().run(
            client.clone(),
            dir.clone(),
            proxy_id,
            phases.token(Phase::Stop),
        );
        let ready = identified();
        tokio::spawn(async move {
            ready.await;
            tokio::join!(watch, report, pushed, delivery);
        });
        tokio::spawn(discovery::run_cache_writer(
            dir.clone(),
            cache,
            phases.token(Phase::Stop),
        ));
        let agent = agent.map(|cfg| {
            let agent = RegistrationAgent::new(cfg, client.clone());
            let state = agent.state();
            let ready = identified();
            let stop = phases.token(Phase::Deregister);
            let run = async move {
                tokio::select! {
                    () = ready => {}
                    () = stop.cancelled() => return None,
                }
                agent.run(stop).await
            };
            (state, tokio::spawn(run))
        });
        if let Some(watched) = args.exit_when_app_exits {
            tokio::spawn(super::lifecycle::exit_when_app_exits(
                watched,
                args.app_port,
                phases.token(Phase::Deregister),
            ));
        }

        let tracer = args.otlp_endpoint.as_ref().map(|endpoint| {
            let service = args.service.as_deref().unwrap_or("mesh-proxy");
            let tracer = Arc::new(crate::telemetry::trace::Tracer::new(
                service,
                args.trace_sample,
                &metrics,
            ));
            tokio::spawn(crate::telemetry::trace::export(
                tracer.clone(),
                endpoint.clone(),
                crate::control::client::Fetcher::new(mark, args.connect_timeout),
                phases.token(Phase::Stop),
            ));
            tracer
        });
        let learned = Arc::new(Learned::default());
        let admin_state = AdminState {
            dir: dir.clone(),
            metrics: metrics.clone(),
            agent: agent.as_ref().map(|(s, _)| s.clone()),
            listening: listening.clone(),
            shutdown: phases.token(Phase::Deregister),
            control_url: args.control.clone(),
            learned: learned.clone(),
            inbound: inbound_addr.map(|a| (a, args.inbound_max_concurrent)),
            identity: workload.clone(),
            config: config.clone(),
            gateway: edge.as_ref().and_then(|e| {
                let listen = e.listener.local_addr().ok()?;
                Some((listen, e.tls.is_some()))
            }),
            stats: rolling.clone(),
            tracer: tracer.clone(),
        };
        let admin_stop = phases.token(Phase::Stop);
        tokio::spawn(async move {
            let app = admin::router(admin_state);
            let app = app.into_make_service_with_connect_info::<SocketAddr>();
            if let Err(e) = axum::serve(admin, app)
                .with_graceful_shutdown(async move { admin_stop.cancelled().await })
                .await
            {
                tracing::error!(error = %e, "admin server failed");
            }
        });
        if let Some(dns) = dns {
            let dns_stop = phases.token(Phase::Stop);
            tokio::spawn(async move {
                if let Err(e) = dns.run(async move { dns_stop.cancelled().await }).await {
                    tracing::error!(error = %e, "DNS responder failed");
                }
            });
        }

        let connect = ConnectOptions {
            mark,
            timeout: args.connect_timeout,
        };
        let tls = workload.as_ref().map(|w| w.tls.clone());
        let upstreams = Arc::new(Upstreams::new(connect, tls.clone()));
        tokio::spawn(expire_idle(
            dir.clone(),
            upstreams.clone(),
            phases.token(Phase::Stop),
        ));
        let detect = DetectConfig {
            timeout: args.detect_timeout,
            opaque_ports: args.opaque_ports.0.iter().copied().collect(),
        };
        let opaque = Arc::new(OpaqueOutbound {
            dir: dir.clone(),
            metrics: metrics.clone(),
            dialer: upstreams.dialer().clone(),
            idle: args.tcp_idle_timeout,
        });
        let limits = Arc::new(Limits::from(&args.limits));
        let overload = Overload::new(args.limits.max_memory.map(|m| m as u64), metrics.clone());
        tokio::spawn(overload.clone().run(phases.token(Phase::Stop)));
        let drain = phases.token(Phase::Drain);
        let edge_addr = edge.as_ref().and_then(|e| e.listener.local_addr().ok());
        let gateway = match edge {
            Some(edge) => {
                let access_log = match edge.access_log {
                    true => Some(
                        crate::telemetry::access_log::AccessLog::stdout(
                            metrics.access_log_dropped.clone(),
                        )
                        .map_err(|e| ProxyError::Config(format!("access log: {e}")))?,
                    ),
                    false => None,
                };
                let gw = Arc::new(crate::gateway::Gateway {
                    dir: dir.clone(),
                    upstreams: upstreams.clone(),
                    metrics: metrics.clone(),
                    caller: caller.clone(),
                    via: via.clone(),
                    via_token: via_token.clone(),
                    limits: limits.clone(),
                    admission: Admission::new(
                        "gateway",
                        limits.max_connections,
                        overload.clone(),
                        metrics.clone(),
                    ),
                    tls: edge.tls.map(tokio_rustls::TlsAcceptor::from),
                    access_log,
                    keys: crate::gateway::jwt::KeySets::new(crate::control::client::Fetcher::new(
                        mark,
                        args.connect_timeout,
                    )),
                    limiters: crate::gateway::limit::Limiters::new(edge.redis),
                    tracer: tracer.clone(),
                    trails: trails.clone(),
                    tap: tap.clone(),
                });
                Some(tokio::spawn(gw.serve(
                    edge.listener,
                    drain.clone(),
                    args.drain_timeout,
                )))
            }
            None => None,
        };
        let outbound = outbound.map(|listener| {
            let server = Arc::new(OutboundServer {
                http: Arc::new(HttpOutbound {
                    dir: dir.clone(),
                    upstreams: upstreams.clone(),
                    metrics: metrics.clone(),
                    domain_suffix: format!(
                        ".{}",
                        args.domain.trim_matches('.').to_ascii_lowercase()
                    ),
                    own_addrs,
                    via,
                    via_token,
                    caller,
                    opaque: opaque.clone(),
                    tracer: tracer.clone(),
                    access_log: crate::telemetry::access_log::OutboundLog::new(
                        args.access_log.as_deref() == Some("json"),
                        metrics.access_log_dropped.clone(),
                    ),
                    trails: trails.clone(),
                    tap: tap.clone(),
                }),
                opaque,
                metrics: metrics.clone(),
                vip_net: args.vip_cidr,
                connect,
                detect: detect.clone(),
                learned: learned.clone(),
                limits: limits.clone(),
                admission: Admission::new(
                    "outbound",
                    limits.max_connections,
                    overload.clone(),
                    metrics.clone(),
                ),
            });
            tokio::spawn(server.serve(listener, drain.clone(), args.drain_timeout))
        });
        let inbound = inbound.map(|(listener, app_port)| {
            let app = SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, app_port));
            let inbound = Arc::new(InboundServer {
                http: Arc::new(InboundHttp {
                    dir: dir.clone(),
                    service: args.service.clone(),
                    identity: args.identity,
                    upstreams: upstreams.clone(),
                    metrics: metrics.clone(),
                    limit: Arc::new(tokio::sync::Semaphore::new(
                        usize::try_from(args.inbound_max_concurrent).unwrap_or(usize::MAX),
                    )),
                    max_concurrent: args.inbound_max_concurrent,
                    idle: args.tcp_idle_timeout,
                    tracer: tracer.clone(),
                }),
                metrics: metrics.clone(),
                app_port,
                app: App::new(app, upstreams.pool(app)),
                detect,
                // One store, so /state lists both sides' ports (the
                // inbound side's under the service "(inbound)").
                learned,
                connect,
                idle: args.tcp_idle_timeout,
                tls: tls.clone(),
                limits: limits.clone(),
                admission: Admission::new(
                    "inbound",
                    limits.max_connections,
                    overload.clone(),
                    metrics.clone(),
                ),
            });
            tokio::spawn(inbound.serve(listener, drain.clone(), args.drain_timeout))
        });
        listening.store(true, Ordering::Release);
        match edge_addr {
            Some(listen) => {
                tracing::info!(%listen, admin = %admin_addr, control = %args.control, "mesh-proxy gateway running")
            }
            None => {
                let inbound_shown = shown(inbound_addr);
                tracing::info!(outbound = %outbound_addr, inbound = %inbound_shown, admin = %admin_addr, dns = %dns_addr, control = %args.control, "mesh-proxy running");
            }
        }

        let requested = phases.token(Phase::Deregister);
        tokio::select! {
            () = signals() => {}
            () = requested.cancelled() => {}
        }
        match agent {
            Some(_) => tracing::info!("shutting down: deregistering"),
            None => tracing::info!("shutting down"),
        }
        phases.enter(Phase::Deregister);
        // Still serving both ways: the app may call out while it stops,
        // and callers' proxies may still pick this instance until they
        // have applied its removal.
        if let Some((_, handle)) = agent {
            if let Ok(Some(removed)) = handle.await {
                discovery::await_removal(&client, removed, args.drain_timeout).await;
            }
        }
        tracing::info!(timeout = ?args.drain_timeout, "draining");
        phases.enter(Phase::Drain);
        if let Some(outbound) = outbound {
            let _ = outbound.await;
        }
        if let Some(gateway) = gateway {
            let _ = gateway.await;
        }
        if let Some(inbound) = inbound {
            let _ = inbound.await;
        }
        phases.enter(Phase::Stop);
        tracing::info!("stopped");
        Ok(())
    }
}

/// Hands every trust bundle the control plane pushes to the identity.
async fn follow_bundle(workload: Arc<Workload>, dir: Arc<Directory>, stop: CancellationToken) {
    let mut bundles = dir.bundle();
    loop {
        let bundle = bundles.borrow_and_update().clone();
        if let Some(bundle) = bundle {
            // It writes the bundle to the cache: off the runtime's threads.
            let w = workload.clone();
            let _ = tokio::task::spawn_blocking(move || w.bundle_changed(&bundle)).await;
        }
        tokio::select! {
            r = bundles.changed() => if r.is_err() { return },
            () = stop.cancelled() => return,
        }
    }
}

/// Now and then, closes idle upstream connections past their timeout in
/// every endpoint's pool and the others.
async fn expire_idle(dir: Arc<Directory>, upstreams: Arc<Upstreams>, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(EXPIRE_IDLE_EVERY) => {}
            () = stop.cancelled() => return,
        }
        for svc in dir.table().services() {
            for ep in &svc.all {
                ep.conns.expire();
            }
        }
        upstreams.expire_idle();
    }
}

/// Connections the kernel completes for a listener before it accepts them.
/// std's (and so tokio's) 128 overflows in a burst of new connections:
/// the overflow is not refused but left to SYN retransmits, seconds each.
/// nginx takes 511, HAProxy its maxconn; the kernel caps it at somaxconn.
const LISTEN_BACKLOG: u32 = 1024;

async fn bind_tcp(flag: &'static str, addr: SocketAddr) -> Result<TcpListener, ProxyError> {
    let listen = || {
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    };
    listen().map_err(|source| ProxyError::Bind { flag, addr, source })
}

fn agent_config(
    args: &ProxyArgs,
    inbound: Option<SocketAddr>,
    gateway: bool,
) -> Result<Option<AgentConfig>, ProxyError> {
    let (Some(service), Some(app_port)) = (&args.service, args.app_port) else {
        if let Some(service) = &args.service {
            crate::model::validate_service_name(service)
                .map_err(|why| ProxyError::Config(format!("--service {service:?}: {why}")))?;
            if !gateway {
                tracing::info!(
                    service,
                    "no --app-port: a client-only proxy, nothing is registered"
                );
            }
        }
        return Ok(None);
    };
    crate::model::validate_service_name(service)
        .map_err(|why| ProxyError::Config(format!("--service {service:?}: {why}")))?;
    let advertise = match args.advertise {
        Some(ip) => ip,
        None => first_ipv4().ok_or_else(|| {
            ProxyError::Config("no non-loopback IPv4 address found; set --advertise".into())
        })?,
    };
    let instance_id = args
        .instance_id
        .clone()
        .unwrap_or_else(|| format!("{service}-{advertise}-{app_port}").replace(':', "."));
    crate::model::validate_instance_id(&instance_id)
        .map_err(|why| ProxyError::Config(format!("--instance-id {instance_id:?}: {why}")))?;
    Ok(Some(AgentConfig {
        service: service.clone(),
        instance_id,
        advertise,
        app_port,
        inbound_port: advertised_inbound(inbound, advertise),
        metadata: args.meta.iter().cloned().collect(),
        check: match &args.health_path {
            Some(path) => HealthCheck::Http { path: path.clone() },
            None => HealthCheck::Tcp,
        },
        health_interval: args.health_interval,
        lease_ttl: args.lease_ttl,
    }))
}

/// The inbound port callers' proxies should use, if they can reach it at
/// the advertised address: a loopback-only inbound listener serves only
/// callers on this host.
fn advertised_inbound(inbound: Option<SocketAddr>, advertise: IpAddr) -> Option<u16> {
    let addr = inbound?;
    let reachable = addr.ip().is_unspecified()
        || addr.ip() == advertise
        || (addr.ip().is_loopback() && advertise.is_loopback());
    if !reachable {
        tracing::warn!(inbound = %addr, %advertise, "the inbound listener is not reachable at the advertised address; callers will connect to the app directly");
    }
    reachable.then_some(addr.port())
}

/// The first IPv4 address on an up, non-loopback interface.
fn first_ipv4() -> Option<IpAddr> {
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    addrs
        .filter(|a| {
            !a.flags
                .contains(nix::net::if_::InterfaceFlags::IFF_LOOPBACK)
        })
        .filter_map(|a| a.address?.as_sockaddr_in().map(|s| s.ip()))
        .map(IpAddr::V4)
        .next()
}

async fn signals() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with POST /shutdown");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
}
