//! The sidecar's half of externalized config: for each `--config
//! APP[:PROFILE]`, follow the latest version through the watch stream the
//! proxy already holds, fetch it, and deliver it to the app three ways:
//! files in `--config-dir` (the ConfigMap layout, see `files`), the local
//! endpoints (see `local`), and optionally a reload (a signal, or a POST
//! to the app). What each subscription has delivered is reported to
//! mesh-control, which `mesh-ctl config status` shows.
//!
//! Concurrency: one task per subscription, so a slow fetch or write of
//! one never holds another. Each slot publishes its current version on a
//! watch channel (long polls wait on it) once its files are written (or
//! could not be: then the endpoint still serves it, `/state` says why, and
//! the writes are retried); a reload is sent only once the files are on
//! disk.
//! The heads come from the [`Directory`], which the watch stream (or, on a
//! restart, its disk cache) fills; the last delivered version of each
//! slot is kept in `--cache-dir`, so an app starts with its config while
//! the control plane is away.

use super::{files, render};
use crate::control::client::{ClientError, ControlClient};
use crate::discovery::directory::config_key;
use crate::discovery::{Backoff, Directory};
use crate::model::config::{ConfigVersion, DeliveredConfig, DeliveredConfigs, ReloadOutcome};
use crate::model::validate_service_name;
use clap::Args;
use nix::sys::signal::Signal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How long a reload POST may take.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// The config flags of `mesh-proxy`.
#[derive(Args, Clone, Debug)]
pub struct ConfigArgs {
    /// Deliver the config of APP (profile `default` unless given) to the
    /// app: files in --config-dir, and GET /config/APP/PROFILE plus the
    /// Spring Cloud Config endpoints on the admin port. Repeatable.
    #[arg(long = "config", env = "MESH_CONFIG", value_name = "APP[:PROFILE]", value_parser = parse_subscription, value_delimiter = ',')]
    pub config: Vec<Subscription>,
    /// Where the files go (a volume the app shares): with one --config,
    /// this directory itself; with several, DIR/APP/PROFILE.
    #[arg(long, env = "MESH_CONFIG_DIR", default_value = "./mesh-config")]
    pub config_dir: PathBuf,
    /// After each new version, send this signal (HUP, USR1, ...) to the
    /// process whose pid --config-reload-pid-file holds.
    #[arg(long, env = "MESH_CONFIG_RELOAD_SIGNAL", value_parser = parse_signal, requires = "config_reload_pid_file")]
    pub config_reload_signal: Option<Signal>,
    /// The app's pid file, read before each reload.
    #[arg(
        long,
        env = "MESH_CONFIG_RELOAD_PID_FILE",
        requires = "config_reload_signal"
    )]
    pub config_reload_pid_file: Option<PathBuf>,
    /// After each new version, POST to this URL on the app
    /// (`http://127.0.0.1:8080/actuator/refresh`); a 2xx is its ack.
    #[arg(long, env = "MESH_CONFIG_RELOAD_URL", value_parser = parse_reload_url)]
    pub config_reload_url: Option<ReloadUrl>,
    /// Mode of the config files (octal; like a ConfigMap's defaultMode).
    /// They hold the secrets too: 0640 with a group shared with the app,
    /// or 0600 when the app runs as the proxy's user.
    #[arg(long, env = "MESH_CONFIG_FILE_MODE", default_value = "0644", value_parser = parse_mode)]
    pub config_file_mode: u32,
}

impl Default for ConfigArgs {
    fn default() -> Self {
        ConfigArgs {
            config: Vec::new(),
            config_dir: PathBuf::from("./mesh-config"),
            config_reload_signal: None,
            config_reload_pid_file: None,
            config_reload_url: None,
            config_file_mode: files::DEFAULT_MODE,
        }
    }
}

fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.trim().trim_start_matches("0o");
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o777 && m & 0o400 != 0 => Ok(m),
        _ => Err(format!(
            "{s:?}: an octal file mode the owner can read (0644, 0640, 0600)"
        )),
    }
}

/// One `--config APP[:PROFILE]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    pub application: String,
    pub profile: String,
}

pub fn parse_subscription(s: &str) -> Result<Subscription, String> {
    let (app, profile) = s
        .trim()
        .split_once(':')
        .unwrap_or((s.trim(), crate::model::config::DEFAULT_PROFILE));
    validate_service_name(app).map_err(|why| format!("application {app:?}: {why}"))?;
    validate_service_name(profile).map_err(|why| format!("profile {profile:?}: {why}"))?;
    Ok(Subscription {
        application: app.to_string(),
        profile: profile.to_string(),
    })
}

fn parse_signal(s: &str) -> Result<Signal, String> {
    let upper = s.trim().to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse()
        .map_err(|_| format!("{s:?} is not a signal name (HUP, USR1, USR2, ...)"))
}

/// `http://IP:PORT/path` on the app: where a reload is POSTed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReloadUrl {
    pub addr: SocketAddr,
    pub path: String,
    shown: String,
}

pub fn parse_reload_url(s: &str) -> Result<ReloadUrl, String> {
    let uri: http::Uri = s.parse().map_err(|_| format!("{s:?} is not a URL"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!(
            "{s:?}: the app's reload URL is http://IP:PORT/path"
        ));
    }
    let addr = uri
        .authority()
        .and_then(|a| {
            let host = a.host().trim_start_matches('[').trim_end_matches(']');
            let ip: std::net::IpAddr = host.parse().ok()?;
            Some(SocketAddr::new(ip, a.port_u16().unwrap_or(80)))
        })
        .ok_or_else(|| format!("{s:?}: the host must be an IP address (the app is in this pod)"))?;
    let path = uri
        .path_and_query()
        .map_or("/".to_string(), |p| p.as_str().to_string());
    Ok(ReloadUrl {
        addr,
        path,
        shown: s.to_string(),
    })
}

/// How an app is told of a new version.
#[derive(Clone, Debug)]
enum Reload {
    Signal { signal: Signal, pid_file: PathBuf },
    Post(ReloadUrl),
}

/// One subscription: where its files go, what it holds, how it went.
pub struct Slot {
    pub application: String,
    pub profile: String,
    pub dir: PathBuf,
    cache: PathBuf,
    current: watch::Sender<Option<Arc<ConfigVersion>>>,
    status: Mutex<Status>,
}

#[derive(Default, Clone)]
struct Status {
    applied_at: Option<String>,
    /// Writing the files failed (the endpoint still serves the version).
    write_error: Option<String>,
    /// Fetching the latest version failed.
    fetch_error: Option<String>,
    reload: Option<ReloadOutcome>,
    /// A version whose reload waits for its files to be written.
    reload_pending: Option<u64>,
}

impl Slot {
    fn status(&self) -> MutexGuard<'_, Status> {
        self.status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The version delivered now, if any.
    pub fn current(&self) -> Option<Arc<ConfigVersion>> {
        self.current.borrow().clone()
    }

    /// Follows the delivered version (long polls).
    pub fn follow(&self) -> watch::Receiver<Option<Arc<ConfigVersion>>> {
        self.current.subscribe()
    }

    /// The version and hash held (`None`: nothing yet).
    fn held(&self) -> Option<(u64, String)> {
        self.current
            .borrow()
            .as_ref()
            .map(|v| (v.meta.version, v.meta.hash.clone()))
    }

    /// What `/state` and mesh-control are told.
    pub fn delivered(&self) -> DeliveredConfig {
        let st = self.status().clone();
        let error = match (st.write_error, st.fetch_error) {
            (Some(w), Some(f)) => Some(format!("{w}; {f}")),
            (w, f) => w.or(f),
        };
        DeliveredConfig {
            application: self.application.clone(),
            profile: self.profile.clone(),
            version: self.current().map(|v| v.meta.version),
            applied_at: st.applied_at,
            error,
            reload: st.reload,
        }
    }
}

/// Every subscription of this proxy.
pub struct Delivery {
    slots: Vec<Arc<Slot>>,
    reload: Option<Reload>,
    mode: u32,
    /// Bumped whenever a slot's report changes.
    epoch: watch::Sender<u64>,
}

impl Delivery {
    /// The slots of `args`, each starting from its cached version (written
    /// to its directory again if the directory lacks it).
    pub fn open(args: &ConfigArgs, cache_dir: &Path) -> Arc<Delivery> {
        // One slot per config: two would share a directory and a cache.
        let mut subs: Vec<&Subscription> = Vec::new();
        for s in &args.config {
            if !subs.contains(&s) {
                subs.push(s);
            }
        }
        let several = subs.len() > 1;
        let mode = args.config_file_mode;
        let slots = subs
            .into_iter()
            .map(|s| {
                let dir = match several {
                    false => args.config_dir.clone(),
                    true => args.config_dir.join(&s.application).join(&s.profile),
                };
                let cache = cache_dir
                    .join("config")
                    .join(format!("{}.{}.json", s.application, s.profile));
                let slot = Slot {
                    application: s.application.clone(),
                    profile: s.profile.clone(),
                    dir,
                    cache,
                    current: watch::channel(None).0,
                    status: Mutex::default(),
                };
                slot.start_from_cache(mode);
                Arc::new(slot)
            })
            .collect();
        let reload = match (&args.config_reload_signal, &args.config_reload_pid_file) {
            (Some(signal), Some(pid_file)) => Some(Reload::Signal {
                signal: *signal,
                pid_file: pid_file.clone(),
            }),
            _ => args.config_reload_url.clone().map(Reload::Post),
        };
        Arc::new(Delivery {
            slots,
            reload,
            mode,
            epoch: watch::channel(0).0,
        })
    }

    pub fn slots(&self) -> &[Arc<Slot>] {
        &self.slots
    }

    pub fn slot(&self, application: &str, profile: &str) -> Option<&Arc<Slot>> {
        self.slots
            .iter()
            .find(|s| s.application == application && s.profile == profile)
    }

    /// `APP:PROFILE, ...`, for messages.
    pub fn subscriptions(&self) -> String {
        let names: Vec<String> = self
            .slots
            .iter()
            .map(|s| format!("{}:{}", s.application, s.profile))
            .collect();
        match names.is_empty() {
            true => "none (no --config)".into(),
            false => names.join(", "),
        }
    }

    pub fn report(&self) -> DeliveredConfigs {
        DeliveredConfigs {
            configs: self.slots.iter().map(|s| s.delivered()).collect(),
        }
    }

    fn changed(&self) {
        self.epoch.send_modify(|e| *e += 1);
    }

    /// Runs every subscription and the reporter until `stop`.
    pub async fn run(
        self: Arc<Self>,
        client: ControlClient,
        dir: Arc<Directory>,
        proxy: String,
        stop: CancellationToken,
    ) {
        if self.slots.is_empty() {
            return;
        }
        for slot in &self.slots {
            tokio::spawn(self.clone().follow(
                slot.clone(),
                client.clone(),
                dir.clone(),
                stop.clone(),
            ));
        }
        self.report_to(client, dir, proxy, stop).await;
    }

    /// Keeps `slot` on the latest version: fetch when the head moves past
    /// what it holds, retry with backoff while the control plane fails,
    /// and retry the files while they cannot be written.
    async fn follow(
        self: Arc<Self>,
        slot: Arc<Slot>,
        client: ControlClient,
        dir: Arc<Directory>,
        stop: CancellationToken,
    ) {
        let key = config_key(&slot.application, &slot.profile);
        let mut heads = dir.config_heads();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        loop {
            // The control plane's latest is the truth, whichever way it
            // moved: one that lost its data and is given the config again
            // starts from version 1. A config it does not know (no head)
            // leaves the app with what it has.
            let want = heads
                .borrow_and_update()
                .get(&key)
                .map(|h| (h.version, h.hash.clone()));
            let mut retry = slot.status().write_error.is_some();
            if want.is_none() || want == slot.held() {
                self.fetched(&slot);
            }
            if want.is_some() && want != slot.held() {
                let fetched = tokio::select! {
                    r = client.config(&slot.application, &slot.profile, None, true) => r,
                    () = stop.cancelled() => return,
                };
                match fetched {
                    Ok(v) if Some((v.meta.version, v.meta.hash.clone())) != slot.held() => {
                        self.fetched(&slot);
                        self.deliver(&slot, v).await;
                        backoff.reset();
                        continue;
                    }
                    // Already held (the head moved on meanwhile: the next
                    // round fetches again).
                    Ok(_) => self.fetched(&slot),
                    Err(e) => {
                        let why = fetch_failure(&e);
                        tracing::warn!(application = %slot.application, profile = %slot.profile, error = %why, "cannot fetch the config; retrying");
                        slot.status().fetch_error = Some(why);
                        self.changed();
                        retry = true;
                    }
                }
            } else if retry {
                if let Some(v) = slot.current() {
                    if self.write_files(&slot, &v).await {
                        backoff.reset();
                        retry = false;
                        self.reload_if_pending(&slot, v.meta.version).await;
                    }
                }
            }
            let again = async {
                match retry {
                    true => tokio::time::sleep(backoff.next_delay()).await,
                    false => std::future::pending().await,
                }
            };
            tokio::select! {
                r = heads.changed() => if r.is_err() { return },
                () = again => {}
                () = stop.cancelled() => return,
            }
        }
    }

    /// A fetch went through (or was not needed): no fetch error to show.
    fn fetched(&self, slot: &Slot) {
        if slot.status().fetch_error.take().is_some() {
            self.changed();
        }
    }

    /// Files, endpoint, cache, reload, in that order: an app told of a
    /// version by a reload finds its files written. The endpoint moves
    /// even when the files cannot be written (it is the app's other way
    /// to its config); the reload then waits until they are.
    async fn deliver(&self, slot: &Arc<Slot>, v: ConfigVersion) {
        let version = v.meta.version;
        let written = self.write_files(slot, &v).await;
        let applied_at = crate::identity::rfc3339(SystemTime::now());
        slot.status().applied_at = Some(applied_at.clone());
        let v = Arc::new(v);
        slot.current.send_replace(Some(v.clone()));
        tracing::info!(application = %slot.application, profile = %slot.profile, version, dir = %slot.dir.display(), files = written, "config delivered");
        let cache = slot.cache.clone();
        let cached = tokio::task::spawn_blocking(move || {
            let text = serde_json::to_string(&Cached {
                applied_at,
                version: (*v).clone(),
            })
            .unwrap_or_default();
            crate::identity::pem::write_file(&cache, &text, true)
        })
        .await;
        if let Ok(Err(e)) = cached {
            tracing::warn!(path = %slot.cache.display(), error = %e, "cannot cache the config");
        }
        if self.reload.is_some() {
            slot.status().reload_pending = Some(version);
            if written {
                self.reload_if_pending(slot, version).await;
            }
        }
        self.changed();
    }

    /// Runs the reload `version` waits for, if it still does.
    async fn reload_if_pending(&self, slot: &Slot, version: u64) {
        let Some(r) = &self.reload else { return };
        if slot.status().reload_pending != Some(version) {
            return;
        }
        let outcome = r.run(version).await;
        match outcome.ok {
            true => tracing::info!(version, detail = %outcome.detail, "app reloaded"),
            false => tracing::warn!(version, detail = %outcome.detail, "app reload failed"),
        }
        let mut st = slot.status();
        st.reload_pending = None;
        st.reload = Some(outcome);
        drop(st);
        self.changed();
    }

    /// Writes `v`'s files; whether they were written.
    async fn write_files(&self, slot: &Slot, v: &ConfigVersion) -> bool {
        let rendered = render::render(v);
        let (dir, version, mode) = (slot.dir.clone(), v.meta.version, self.mode);
        let written = tokio::task::spawn_blocking(move || {
            let files: Vec<(&str, &[u8])> = rendered
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_slice()))
                .collect();
            files::write(&dir, version, &files, mode)
        })
        .await;
        let error = match written {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("cannot write {}: {e}", slot.dir.display())),
            Err(e) => Some(format!("config writer failed: {e}")),
        };
        if let Some(e) = &error {
            tracing::warn!(application = %slot.application, profile = %slot.profile, version, error = %e, "config files not written; the local endpoint still serves this version");
        }
        let ok = error.is_none();
        let mut st = slot.status();
        let was = st.write_error.take();
        st.write_error = error;
        if was != st.write_error {
            drop(st);
            self.changed();
        }
        ok
    }

    /// Tells mesh-control what every slot holds: on every change, and
    /// again on every new watch (mesh-control forgets a proxy whose watch
    /// closed).
    async fn report_to(
        &self,
        client: ControlClient,
        dir: Arc<Directory>,
        proxy: String,
        stop: CancellationToken,
    ) {
        let mut epoch = self.epoch.subscribe();
        let mut connected = dir.connected();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            epoch.mark_unchanged();
            connected.mark_unchanged();
            let report = self.report();
            let sent = tokio::select! {
                r = client.delivered(&proxy, &report) => r,
                () = stop.cancelled() => return,
            };
            let retry = match sent {
                Ok(_) => {
                    backoff.reset();
                    None
                }
                // No watch open now: the next one brings a new report.
                Err(ClientError::Api { status: 404, .. }) => None,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot report the delivered configs; retrying");
                    Some(backoff.next_delay())
                }
            };
            let again = async {
                match retry {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = epoch.changed() => if r.is_err() { return },
                r = connected.changed() => if r.is_err() { return },
                () = again => {}
                () = stop.cancelled() => return,
            }
            // A burst of changes is one report.
            tokio::select! {
                () = tokio::time::sleep(crate::discovery::applied::REPORT_EVERY) => {}
                () = stop.cancelled() => return,
            }
        }
    }
}

impl Slot {
    /// The cached version, made current and written to the directory
    /// (always: the directory is not synced, so after a crash it may hold
    /// the right version's name over empty files): the app's config while
    /// the control plane is away.
    fn start_from_cache(&self, mode: u32) {
        let cached = match std::fs::read(&self.cache) {
            Ok(bytes) => serde_json::from_slice::<Cached>(&bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                tracing::warn!(path = %self.cache.display(), error = %e, "cannot read the cached config");
                return;
            }
        };
        let (v, applied_at) = match cached {
            Ok(c)
                if c.version.meta.application == self.application
                    && c.version.meta.profile == self.profile =>
            {
                (c.version, c.applied_at)
            }
            Ok(_) | Err(_) => {
                tracing::warn!(path = %self.cache.display(), "ignoring an unreadable cached config");
                return;
            }
        };
        let rendered = render::render(&v);
        let files: Vec<(&str, &[u8])> = rendered
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        if let Err(e) = files::write(&self.dir, v.meta.version, &files, mode) {
            let why = format!("cannot write {}: {e}", self.dir.display());
            tracing::warn!(error = %why, "config files not written from the cache");
            self.status().write_error = Some(why);
        }
        tracing::info!(application = %self.application, profile = %self.profile, version = v.meta.version, "starting from the cached config");
        self.status().applied_at = Some(applied_at);
        self.current.send_replace(Some(Arc::new(v)));
    }
}

/// A slot's cache file: the version and when it was delivered.
#[derive(serde::Serialize, serde::Deserialize)]
struct Cached {
    applied_at: String,
    #[serde(flatten)]
    version: ConfigVersion,
}

impl Reload {
    async fn run(&self, version: u64) -> ReloadOutcome {
        let (ok, detail) = match self {
            Reload::Signal { signal, pid_file } => signal_app(*signal, pid_file),
            Reload::Post(url) => {
                let sent = tokio::time::timeout(
                    RELOAD_TIMEOUT,
                    crate::net::local_request(
                        url.addr,
                        http::Method::POST,
                        &url.path,
                        "mesh-proxy/config",
                    ),
                )
                .await;
                match sent {
                    Ok(Ok(status)) if status.is_success() => {
                        (true, format!("POST {}: {}", url.shown, status.as_u16()))
                    }
                    Ok(Ok(status)) => (false, format!("POST {}: {}", url.shown, status.as_u16())),
                    Ok(Err(e)) => (false, format!("POST {}: {e}", url.shown)),
                    Err(_) => (
                        false,
                        format!(
                            "POST {}: no answer in {}s",
                            url.shown,
                            RELOAD_TIMEOUT.as_secs()
                        ),
                    ),
                }
            }
        };
        ReloadOutcome {
            version,
            at: crate::identity::rfc3339(SystemTime::now()),
            ok,
            detail,
        }
    }
}

fn signal_app(signal: Signal, pid_file: &Path) -> (bool, String) {
    let text = match std::fs::read_to_string(pid_file) {
        Ok(t) => t,
        Err(e) => return (false, format!("{}: {e}", pid_file.display())),
    };
    let pid = match text.trim().parse::<i32>() {
        Ok(p) if p > 1 => p,
        _ => {
            return (
                false,
                format!("{}: {:?} is not a pid", pid_file.display(), text.trim()),
            )
        }
    };
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal) {
        Ok(()) => (true, format!("{} to pid {pid}", signal.as_str())),
        Err(e) => (false, format!("{} to pid {pid}: {e}", signal.as_str())),
    }
}

fn fetch_failure(e: &ClientError) -> String {
    format!("cannot fetch the latest version: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_or_name_the_problem() {
        assert_eq!(
            parse_subscription("hello").unwrap(),
            Subscription {
                application: "hello".into(),
                profile: "default".into()
            }
        );
        assert_eq!(parse_subscription("hello:prod").unwrap().profile, "prod");
        assert!(parse_subscription("Hello")
            .unwrap_err()
            .contains("application"));
        assert!(parse_subscription("hello:")
            .unwrap_err()
            .contains("profile"));
        assert_eq!(parse_signal("hup"), Ok(Signal::SIGHUP));
        assert_eq!(parse_signal("SIGUSR1"), Ok(Signal::SIGUSR1));
        assert!(parse_signal("nope").is_err());
        let url = parse_reload_url("http://127.0.0.1:8080/actuator/refresh").unwrap();
        assert_eq!(url.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(url.path, "/actuator/refresh");
        assert!(parse_reload_url("http://app:8080/").is_err());
        assert!(parse_reload_url("https://127.0.0.1/").is_err());
        assert_eq!(parse_mode("0640"), Ok(0o640));
        assert!(parse_mode("0044").is_err() && parse_mode("999").is_err());
    }
}
