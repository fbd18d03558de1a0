//! The proxy's side of identity: its key, its certificate, its renewals.
//!
//! The key is made here on first start and kept in
//! `<cache-dir>/identity/key.pem` (0600); it never leaves the pod. The
//! certificate and the trust bundle are kept beside it, so a proxy
//! restarted while mesh-control is down comes back with the identity it
//! had and routes again before the control plane returns.
//!
//! Renewal (Linkerd's rule, with the numbers): at 70 % of the
//! leaf's lifetime, ±10 % jitter so replicas do not renew in step. A
//! failed renewal keeps the current certificate and is retried with
//! backoff (1 s doubling to 30 s), counted, and shown in `/state`; an
//! expired certificate is not presented again, and a bootstrap token, if
//! one is still held, gets a new one.

use super::tls::{Presented, TlsError, TlsIdentity};
use super::{pem, rfc3339, seconds_left, SpiffeId};
use crate::control::client::ControlClient;
use crate::model::identity::TrustBundle;
use crate::model::state::IdentityState;
use rcgen::{CertificateParams, KeyPair};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const KEY_FILE: &str = "key.pem";
const CERT_FILE: &str = "cert.pem";
const BUNDLE_FILE: &str = "bundle.pem";
/// Retry backoff after a failed certify or renewal.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Never renew sooner than this after an issue (a tiny test lifetime).
const RENEW_MIN: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("identity files in {dir}: {why}")]
    Files { dir: PathBuf, why: String },
    #[error("identity is on but there is no trust bundle: give --trust-bundle (mesh-control writes <data-dir>/identity/bundle.pem), or --identity off")]
    NoBundle,
    #[error(transparent)]
    Tls(#[from] TlsError),
}

pub struct Workload {
    pub tls: Arc<TlsIdentity>,
    dir: PathBuf,
    key: KeyPair,
    state: Mutex<IdentityState>,
    /// Wakes the renewal loop early: the active root changed.
    renew_now: Notify,
    /// True once a certificate is in the slot (registration and the
    /// discovery watch wait for it: the control plane needs it).
    ready: tokio::sync::watch::Sender<bool>,
}

// === impl Workload ===

impl Workload {
    /// Opens `<cache-dir>/identity`: the key (made if absent), the cached
    /// bundle unless `bundle` (from `--trust-bundle`) is given, and the
    /// cached certificate if it is still valid.
    pub fn open(
        cache_dir: &Path,
        trust_domain: &str,
        bundle: Option<String>,
    ) -> Result<Arc<Workload>, WorkloadError> {
        let dir = cache_dir.join("identity");
        let files = |why: String| WorkloadError::Files {
            dir: dir.clone(),
            why,
        };
        std::fs::create_dir_all(&dir).map_err(|e| files(e.to_string()))?;
        let cached_bundle = std::fs::read_to_string(dir.join(BUNDLE_FILE)).ok();
        let bundle = bundle.or(cached_bundle).ok_or(WorkloadError::NoBundle)?;
        let tls = TlsIdentity::new(trust_domain, &bundle)?;
        pem::write_file(&dir.join(BUNDLE_FILE), &bundle, false)
            .map_err(|e| files(e.to_string()))?;
        let key = match std::fs::read_to_string(dir.join(KEY_FILE)) {
            Ok(text) => KeyPair::from_pem(&text).map_err(|e| files(format!("{KEY_FILE}: {e}")))?,
            Err(_) => {
                let key = KeyPair::generate().map_err(|e| files(e.to_string()))?;
                pem::write_file(&dir.join(KEY_FILE), &key.serialize_pem(), true)
                    .map_err(|e| files(e.to_string()))?;
                key
            }
        };
        let this = Workload {
            tls,
            dir,
            key,
            state: Mutex::new(IdentityState::default()),
            renew_now: Notify::new(),
            ready: tokio::sync::watch::channel(false).0,
        };
        if let Ok(text) = std::fs::read_to_string(this.dir.join(CERT_FILE)) {
            match this.install(&text) {
                Ok(p) if p.not_after > SystemTime::now() => {
                    tracing::info!(identity = %p.id, expires_at = %rfc3339(p.not_after), "identity restored from the cache");
                }
                Ok(_) => {
                    this.tls_clear();
                    tracing::info!("the cached certificate has expired; a new one is needed");
                }
                Err(e) => tracing::warn!(error = %e, "the cached certificate is not usable"),
            }
        }
        Ok(Arc::new(this))
    }

    fn tls_clear(&self) {
        let mut st = self.lock();
        st.identity = None;
        st.expires_at = None;
        st.expires_in_secs = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, IdentityState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A valid certificate is in the slot.
    pub fn ready(&self) -> bool {
        self.current().is_some()
    }

    /// Returns once a certificate is in the slot.
    pub async fn wait_ready(&self) {
        let mut rx = self.ready.subscribe();
        let _ = rx.wait_for(|ready| *ready).await;
    }

    /// The certificate in the slot, if it has not expired.
    pub fn current(&self) -> Option<Arc<Presented>> {
        self.tls
            .presented()
            .filter(|p| p.not_after > SystemTime::now())
    }

    pub fn id(&self) -> Option<SpiffeId> {
        self.current().map(|p| p.id.clone())
    }

    pub fn state(&self) -> IdentityState {
        let mut st = self.lock().clone();
        if let Some(p) = self.tls.presented() {
            st.identity = Some(p.id.to_string());
            st.expires_at = Some(rfc3339(p.not_after));
            st.expires_in_secs = Some(seconds_left(p.not_after));
        }
        st
    }

    /// A CSR for this proxy's key. It asks for no name: the CA writes the
    /// identity the credential proves.
    pub fn csr(&self) -> Result<String, String> {
        let params = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
        params
            .serialize_request(&self.key)
            .and_then(|csr| csr.pem())
            .map_err(|e| e.to_string())
    }

    /// Puts a chain (PEM) for this proxy's key in the slot.
    fn install(&self, chain_pem: &str) -> Result<Presented, String> {
        let chain = pem::certs(chain_pem)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()));
        let presented = self.tls.set_cert(chain, key).map_err(|e| e.to_string())?;
        if presented.not_after > SystemTime::now() {
            self.ready.send_replace(true);
        }
        Ok(presented)
    }

    /// One certify call: the token for the first certificate, the current
    /// certificate (in the TLS session) for renewals.
    pub async fn certify(
        &self,
        client: &ControlClient,
        token: Option<&str>,
    ) -> Result<Presented, String> {
        let csr = self.csr()?;
        let reply = client
            .certify(&csr, token)
            .await
            .map_err(|e| e.to_string())?;
        self.tls
            .set_bundle(&reply.bundle)
            .map_err(|e| e.to_string())?;
        let presented = self.install(&reply.certificate)?;
        // Kept for a restart without the control plane; written (and
        // synced) off the runtime's threads.
        let dir = self.dir.clone();
        let cached = tokio::task::spawn_blocking(move || {
            pem::write_file(&dir.join(CERT_FILE), &reply.certificate, false)?;
            pem::write_file(&dir.join(BUNDLE_FILE), &reply.bundle, false)
        })
        .await;
        match cached {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot cache the certificate"),
            Err(e) => tracing::warn!(error = %e, "certificate cache task failed"),
        }
        let mut st = self.lock();
        st.renew_failures = 0;
        st.last_error = None;
        st.issued_under = st.roots.iter().find(|r| r.active).map(|r| r.id.clone());
        Ok(presented)
    }

    /// The trust bundle changed (pushed on the watch): trust its roots
    /// from now on, and renew at once if new leaves come from another root.
    pub fn bundle_changed(&self, bundle: &TrustBundle) {
        if let Err(e) = self.tls.set_bundle(&bundle.pem) {
            tracing::warn!(error = %e, "the pushed trust bundle is not usable; keeping the current one");
            return;
        }
        if let Err(e) = pem::write_file(&self.dir.join(BUNDLE_FILE), &bundle.pem, false) {
            tracing::warn!(error = %e, "cannot cache the trust bundle");
        }
        let active = bundle.roots.iter().find(|r| r.active).map(|r| r.id.clone());
        let mut st = self.lock();
        st.roots = bundle.roots.clone();
        for r in &bundle.roots {
            if r.expires_in_secs < super::ROOT_WARN.as_secs() as i64 {
                tracing::warn!(root = %r.id, expires_at = %r.expires_at, "a trust root expires in under 30 days");
            }
        }
        let moved = st.issued_under.is_some() && st.issued_under != active;
        if st.issued_under.is_none() {
            st.issued_under = active;
        }
        drop(st);
        if moved {
            tracing::info!("the active root changed: renewing onto it");
            self.renew_now.notify_one();
        }
    }

    /// Gets the first certificate (unless the cache had one) and renews it
    /// until `stop`.
    /// `token_file` is read again before each attempt that needs it: a
    /// rotated Secret lands in the mounted file, and a file read while
    /// its volume was still being written (empty) mends itself.
    pub async fn run(
        self: Arc<Self>,
        client: ControlClient,
        token_file: Option<std::path::PathBuf>,
        stop: CancellationToken,
    ) {
        let mut backoff = BACKOFF_MIN;
        loop {
            let wait = match self.current() {
                Some(p) => renew_delay(&p, SystemTime::now(), fastrand::f64()),
                None => Duration::ZERO,
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
                () = self.renew_now.notified() => {}
            }
            // With a valid certificate, the session proves who we are;
            // without one, only the token can.
            let token = match (self.current(), &token_file) {
                (Some(_), _) => Ok(None),
                (None, Some(path)) => read_token(path).map(Some),
                (None, None) => {
                    Err("no valid certificate and no bootstrap token (--token-file)".to_string())
                }
            };
            let token = match token {
                Ok(t) => t,
                Err(e) => {
                    self.failed(e);
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            match self.certify(&client, token.as_deref()).await {
                Ok(p) => {
                    backoff = BACKOFF_MIN;
                    tracing::info!(identity = %p.id, expires_at = %rfc3339(p.not_after), "certificate issued");
                }
                Err(e) => {
                    self.failed(e);
                    let cap = self.current().map_or(BACKOFF_MAX, |p| {
                        // Never sleep past the certificate's end.
                        p.not_after
                            .duration_since(SystemTime::now())
                            .unwrap_or_default()
                            .max(BACKOFF_MIN)
                    });
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(backoff.min(cap)) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    fn failed(&self, why: String) {
        let mut st = self.lock();
        st.renew_failures += 1;
        tracing::warn!(error = %why, failures = st.renew_failures, "could not get a certificate; keeping the current one");
        st.last_error = Some(why);
    }
}

/// When to renew `p`: at 70 % of its lifetime, jittered by ±10 % of it
/// (`unit` in 0..1 picks where), never sooner than half a second.
pub fn renew_delay(p: &Presented, now: SystemTime, unit: f64) -> Duration {
    let issued = p
        .key
        .end_entity_cert()
        .ok()
        .and_then(|c| super::cert_facts(c).ok());
    let not_before = issued.map_or(now, |f| f.not_before);
    let life = p.not_after.duration_since(not_before).unwrap_or_default();
    let fraction = 0.7 + (unit.clamp(0.0, 1.0) - 0.5) * 0.2;
    let at = not_before + life.mul_f64(fraction);
    at.duration_since(now).unwrap_or_default().max(RENEW_MIN)
}

/// The bootstrap token in `path`, trimmed; an empty file is an error (a
/// Secret volume still being written), not a token.
pub fn read_token(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--token-file {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("--token-file {}: empty", path.display()));
    }
    Ok(token.to_string())
}
