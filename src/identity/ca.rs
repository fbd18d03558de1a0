//! mesh-control's certificate authority.
//!
//! A trust bundle of roots, one of them active; the active root signs an
//! intermediate (the issuer), and the issuer signs every leaf. Keeping the
//! root's key out of the signing path day to day is what lets an operator
//! hand mesh-control a root from their own PKI (`--ca-cert`/`--ca-key`,
//! like a Linkerd trust anchor from cert-manager) and rotate it later.
//!
//! Rotation without a failed request is three steps, each pushed to every
//! proxy before the next: add a root (proxies now trust old and new),
//! activate it (a new issuer; proxies renew onto it), remove the old one.
//! The outages other meshes had (linkerd2#3676, istio#30947) came from
//! doing two of those at once.
//!
//! Files under `<data-dir>/identity/`: `roots/<id>.crt` (+ `.key` when
//! mesh-control holds it), `active-root`, `issuer.crt`/`issuer.key`,
//! `bundle.pem` (all roots, for operators to hand to proxies and mesh-ctl).
//! Keys are 0600.
//!
//! Concurrency: one `RwLock` over the whole state; issuing takes the read
//! side (signing is ~50 µs), rotations the write side and rewrite files
//! before they return.

use super::{pem, rfc3339, seconds_left, SpiffeId};
use crate::model::identity::{RootInfo, TrustBundle};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, SystemTime};

/// Roots made by mesh-control live ten years (Istio's self-signed root).
const ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Issuers live a year, and are remade when under a month is left.
const ISSUER_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
const ISSUER_RENEW: Duration = Duration::from_secs(30 * 24 * 3600);
/// Clock skew between machines: leaves are valid from a minute ago.
const BACKDATE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("identity files in {dir}: {why}")]
    Files { dir: PathBuf, why: String },
    #[error("the CSR is not valid: {0}")]
    BadCsr(String),
    #[error("{0}")]
    BadRoot(String),
    #[error("no root {0:?} in the trust bundle")]
    UnknownRoot(String),
    #[error("root {0} is the active one; activate another root before removing it")]
    ActiveRoot(String),
    #[error("root {0} has no private key here, so it cannot sign an issuer")]
    NoKey(String),
    #[error("signing failed: {0}")]
    Sign(String),
}

/// How the CA is set up (mesh-control's flags).
#[derive(Clone, Debug)]
pub struct CaConfig {
    /// `<data-dir>/identity`.
    pub dir: PathBuf,
    pub trust_domain: String,
    /// `--cert-ttl`: lifetime of workload leaves.
    pub leaf_ttl: Duration,
    /// `--ca-cert`, `--ca-key`: the operator's root, made active at start.
    pub operator_root: Option<(PathBuf, PathBuf)>,
}

pub struct Authority {
    config: CaConfig,
    state: RwLock<State>,
}

struct State {
    roots: Vec<Root>,
    issuer: Signer,
}

struct Root {
    id: String,
    subject: String,
    der: CertificateDer<'static>,
    key: Option<KeyPair>,
    not_after: SystemTime,
    active: bool,
}

struct Signer {
    root: String,
    der: CertificateDer<'static>,
    not_after: SystemTime,
    issuer: Issuer<'static, KeyPair>,
}

/// A signed leaf.
#[derive(Clone, Debug)]
pub struct Issued {
    /// Leaf, then the issuer: what the workload presents.
    pub chain: Vec<CertificateDer<'static>>,
    pub not_after: SystemTime,
}

// === impl Authority ===

impl Authority {
    /// Loads the CA from `config.dir`, making a root and an issuer on
    /// first start, importing the operator's root when one is given, and
    /// remaking the issuer when it is near its end or under another root.
    pub fn open(config: CaConfig) -> Result<Authority, CaError> {
        let files = |why: String| CaError::Files {
            dir: config.dir.clone(),
            why,
        };
        std::fs::create_dir_all(config.dir.join("roots")).map_err(|e| files(e.to_string()))?;
        let mut roots = load_roots(&config.dir).map_err(files)?;
        if let Some((cert, key)) = &config.operator_root {
            let read = |p: &Path| {
                std::fs::read_to_string(p)
                    .map_err(|e| CaError::BadRoot(format!("{}: {e}", p.display())))
            };
            let root = Root::from_pem(&read(cert)?, Some(&read(key)?))?;
            let id = root.id.clone();
            if !roots.iter().any(|r| r.id == id) {
                root.save(&config.dir).map_err(files)?;
                roots.push(root);
            }
            set_active(&mut roots, &id);
        }
        if roots.is_empty() {
            let root = Root::generate(&config.trust_domain)?;
            root.save(&config.dir).map_err(files)?;
            roots.push(root);
        }
        let active = std::fs::read_to_string(config.dir.join("active-root")).unwrap_or_default();
        if !roots.iter().any(|r| r.active) {
            let id = match roots.iter().any(|r| r.id == active.trim()) {
                true => active.trim().to_string(),
                false => roots[0].id.clone(),
            };
            set_active(&mut roots, &id);
        }
        let active = roots
            .iter()
            .find(|r| r.active)
            .ok_or_else(|| files("no active root".into()))?;
        let issuer = match Signer::load(&config.dir) {
            Some(s)
                if s.root == active.id
                    && s.not_after
                        .duration_since(SystemTime::now())
                        .unwrap_or_default()
                        > ISSUER_RENEW =>
            {
                s
            }
            _ => {
                let s = Signer::generate(active, &config.trust_domain)?;
                s.save(&config.dir).map_err(files)?;
                s
            }
        };
        let state = State { roots, issuer };
        state.save_bundle(&config.dir).map_err(files)?;
        for r in &state.roots {
            if seconds_left(r.not_after) < super::ROOT_WARN.as_secs() as i64 {
                tracing::warn!(root = %r.id, expires_at = %rfc3339(r.not_after), "a trust root expires in under 30 days: add a new root and rotate (mesh-ctl identity roots add)");
            }
        }
        Ok(Authority {
            config,
            state: RwLock::new(state),
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.config.trust_domain
    }

    pub fn leaf_ttl(&self) -> Duration {
        self.config.leaf_ttl
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Signs the public key of `csr` (DER) as `id`. The CSR proves only
    /// that its sender holds the key: every name it asks for is ignored.
    pub fn issue(&self, csr: &[u8], id: &SpiffeId) -> Result<Issued, CaError> {
        let der = CertificateSigningRequestDer::from(csr);
        let parsed = CertificateSigningRequestParams::from_der(&der)
            .map_err(|e| CaError::BadCsr(e.to_string()))?;
        let state = self.read();
        let now = SystemTime::now();
        let not_after = (now + self.config.leaf_ttl).min(state.issuer.not_after);
        let params = leaf_params(id, now, not_after)?;
        let request = CertificateSigningRequestParams {
            params,
            public_key: parsed.public_key,
        };
        let leaf = request
            .signed_by(&state.issuer.issuer)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        Ok(Issued {
            chain: vec![leaf.der().clone(), state.issuer.der.clone()],
            not_after,
        })
    }

    /// A leaf and its key made here, for mesh-control's own TLS listener:
    /// `id` in a URI SAN (what proxies check), plus `names` as DNS or IP
    /// SANs for clients that check host names.
    pub fn issue_local(
        &self,
        id: &SpiffeId,
        names: &[String],
    ) -> Result<(Issued, KeyPair), CaError> {
        let key = KeyPair::generate().map_err(|e| CaError::Sign(e.to_string()))?;
        let state = self.read();
        let now = SystemTime::now();
        let not_after = (now + self.config.leaf_ttl).min(state.issuer.not_after);
        let mut params = leaf_params(id, now, not_after)?;
        for name in names {
            let san = match name.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    name.as_str()
                        .try_into()
                        .map_err(|e| CaError::Sign(format!("{name:?}: {e}")))?,
                ),
            };
            params.subject_alt_names.push(san);
        }
        let leaf = params
            .signed_by(&key, &state.issuer.issuer)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        let issued = Issued {
            chain: vec![leaf.der().clone(), state.issuer.der.clone()],
            not_after,
        };
        Ok((issued, key))
    }

    /// Every root, for proxies and `mesh-ctl identity`.
    pub fn bundle(&self) -> TrustBundle {
        self.read().bundle(&self.config.trust_domain)
    }

    /// The id of the root new leaves chain to.
    pub fn active_root(&self) -> String {
        self.read().issuer.root.clone()
    }

    /// Adds a root to the bundle, not active: proxies first learn to trust
    /// it. Made here unless the operator supplies certificate and key.
    pub fn add_root(&self, supplied: Option<(&str, &str)>) -> Result<RootInfo, CaError> {
        let root = match supplied {
            Some((cert, key)) => Root::from_pem(cert, Some(key))?,
            None => Root::generate(&self.config.trust_domain)?,
        };
        let mut state = self.write();
        if state.roots.iter().any(|r| r.id == root.id) {
            return Err(CaError::BadRoot(format!(
                "root {} is already in the trust bundle",
                root.id
            )));
        }
        root.save(&self.config.dir).map_err(|why| self.files(why))?;
        let info = root.info();
        state.roots.push(root);
        state
            .save_bundle(&self.config.dir)
            .map_err(|why| self.files(why))?;
        Ok(info)
    }

    /// Makes `id` the active root: a new issuer under it signs every leaf
    /// from now on (proxies renew onto it when they see the change).
    pub fn activate(&self, id: &str) -> Result<RootInfo, CaError> {
        let mut state = self.write();
        let root = state
            .roots
            .iter()
            .find(|r| r.id == id)
            .ok_or_else(|| CaError::UnknownRoot(id.to_string()))?;
        if root.key.is_none() {
            return Err(CaError::NoKey(id.to_string()));
        }
        let signer = Signer::generate(root, &self.config.trust_domain)?;
        signer
            .save(&self.config.dir)
            .map_err(|why| self.files(why))?;
        state.issuer = signer;
        set_active(&mut state.roots, id);
        std::fs::write(self.config.dir.join("active-root"), id)
            .map_err(|e| self.files(e.to_string()))?;
        state
            .save_bundle(&self.config.dir)
            .map_err(|why| self.files(why))?;
        state
            .roots
            .iter()
            .find(|r| r.id == id)
            .map(Root::info)
            .ok_or_else(|| CaError::UnknownRoot(id.to_string()))
    }

    /// Drops a root that is not active from the bundle.
    pub fn remove_root(&self, id: &str) -> Result<(), CaError> {
        let mut state = self.write();
        let at = state
            .roots
            .iter()
            .position(|r| r.id == id)
            .ok_or_else(|| CaError::UnknownRoot(id.to_string()))?;
        if state.roots[at].active {
            return Err(CaError::ActiveRoot(id.to_string()));
        }
        state.roots.remove(at);
        let base = self.config.dir.join("roots").join(id);
        for ext in ["crt", "key"] {
            let _ = std::fs::remove_file(base.with_extension(ext));
        }
        state
            .save_bundle(&self.config.dir)
            .map_err(|why| self.files(why))?;
        Ok(())
    }

    fn files(&self, why: String) -> CaError {
        CaError::Files {
            dir: self.config.dir.clone(),
            why,
        }
    }
}

fn set_active(roots: &mut [Root], id: &str) {
    for r in roots {
        r.active = r.id == id;
    }
}

/// What every workload leaf says: its identity in the one URI SAN, the
/// service as the common name (for people), usable as client and server.
fn leaf_params(
    id: &SpiffeId,
    now: SystemTime,
    not_after: SystemTime,
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, id.service());
    params.distinguished_name = dn;
    let uri = id
        .to_string()
        .try_into()
        .map_err(|e| CaError::Sign(format!("{id}: {e}")))?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    // Backdated for clock skew, but by a tenth of the lifetime at most, so
    // a short test lifetime still renews at 70 % of what it was given.
    let life = not_after.duration_since(now).unwrap_or_default();
    params.not_before = (now - BACKDATE.min(life / 10)).into();
    params.not_after = not_after.into();
    params.serial_number = Some(serial()?);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// 16 random bytes, the top bit clear (serials are positive).
fn serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| CaError::Sign("no randomness".into()))?;
    bytes[0] &= 0x7f;
    Ok(SerialNumber::from_slice(&bytes))
}

fn ca_params(
    cn: String,
    not_after: SystemTime,
    path_len: u8,
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "mesh");
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.not_before = (SystemTime::now() - BACKDATE).into();
    params.not_after = not_after.into();
    params.serial_number = Some(serial()?);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// The first 16 hex digits of a certificate's SHA-256: short enough to
/// type, long enough never to collide in one bundle.
pub fn root_id(der: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// === impl State ===

impl State {
    fn bundle(&self, trust_domain: &str) -> TrustBundle {
        TrustBundle {
            trust_domain: trust_domain.to_string(),
            roots: self.roots.iter().map(Root::info).collect(),
            pem: pem::encode_certs(self.roots.iter().map(|r| &r.der)),
        }
    }

    fn save_bundle(&self, dir: &Path) -> Result<(), String> {
        let text = pem::encode_certs(self.roots.iter().map(|r| &r.der));
        pem::write_file(&dir.join("bundle.pem"), &text, false).map_err(|e| e.to_string())
    }
}

// === impl Root ===

impl Root {
    fn generate(trust_domain: &str) -> Result<Root, CaError> {
        let key = KeyPair::generate().map_err(|e| CaError::Sign(e.to_string()))?;
        let now = SystemTime::now();
        let stamp = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let params = ca_params(
            format!("mesh root {trust_domain} {stamp}"),
            now + ROOT_TTL,
            1,
        )?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        Root::from_parts(cert.der().clone(), Some(key))
    }

    fn from_pem(cert: &str, key: Option<&str>) -> Result<Root, CaError> {
        let der = pem::certs(cert)
            .map_err(|e| CaError::BadRoot(format!("root certificate: {e}")))?
            .remove(0);
        let key = match key {
            Some(k) => {
                Some(KeyPair::from_pem(k).map_err(|e| CaError::BadRoot(format!("root key: {e}")))?)
            }
            None => None,
        };
        Root::from_parts(der, key)
    }

    fn from_parts(der: CertificateDer<'static>, key: Option<KeyPair>) -> Result<Root, CaError> {
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| CaError::BadRoot(format!("root certificate: {e}")))?;
        if !cert.is_ca() {
            return Err(CaError::BadRoot(
                "the root certificate is not a CA (basicConstraints CA:TRUE)".into(),
            ));
        }
        if let Some(key) = &key {
            if cert.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
                return Err(CaError::BadRoot(
                    "the root key does not match the root certificate".into(),
                ));
            }
        }
        let secs = u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0);
        let subject = cert.subject().to_string();
        Ok(Root {
            id: root_id(&der),
            subject,
            not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
            der,
            key,
            active: false,
        })
    }

    fn info(&self) -> RootInfo {
        RootInfo {
            id: self.id.clone(),
            subject: self.subject.clone(),
            expires_at: rfc3339(self.not_after),
            expires_in_secs: seconds_left(self.not_after),
            active: self.active,
        }
    }

    fn save(&self, dir: &Path) -> Result<(), String> {
        let base = dir.join("roots").join(&self.id);
        let cert = pem::encode_certs([&self.der]);
        pem::write_file(&base.with_extension("crt"), &cert, false).map_err(|e| e.to_string())?;
        if let Some(key) = &self.key {
            pem::write_file(&base.with_extension("key"), &key.serialize_pem(), true)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

fn load_roots(dir: &Path) -> Result<Vec<Root>, String> {
    let mut roots = Vec::new();
    let entries = std::fs::read_dir(dir.join("roots")).map_err(|e| e.to_string())?;
    let mut paths: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "crt"))
        .collect();
    paths.sort();
    for path in paths {
        let cert =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let key = std::fs::read_to_string(path.with_extension("key")).ok();
        let root = Root::from_pem(&cert, key.as_deref())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        roots.push(root);
    }
    Ok(roots)
}

// === impl Signer ===

impl Signer {
    fn generate(root: &Root, trust_domain: &str) -> Result<Signer, CaError> {
        let root_key = root
            .key
            .as_ref()
            .ok_or_else(|| CaError::NoKey(root.id.clone()))?;
        let root_issuer = Issuer::from_ca_cert_der(&root.der, root_key)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        let key = KeyPair::generate().map_err(|e| CaError::Sign(e.to_string()))?;
        let not_after = (SystemTime::now() + ISSUER_TTL).min(root.not_after);
        let params = ca_params(format!("mesh issuer {trust_domain}"), not_after, 0)?;
        let cert = params
            .signed_by(&key, &root_issuer)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        Signer::from_parts(root.id.clone(), cert.der().clone(), key)
    }

    fn from_parts(
        root: String,
        der: CertificateDer<'static>,
        key: KeyPair,
    ) -> Result<Signer, CaError> {
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| CaError::Sign(format!("issuer certificate: {e}")))?;
        let secs = u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0);
        let issuer =
            Issuer::from_ca_cert_der(&der, key).map_err(|e| CaError::Sign(e.to_string()))?;
        Ok(Signer {
            root,
            not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
            der,
            issuer,
        })
    }

    fn load(dir: &Path) -> Option<Signer> {
        let cert = std::fs::read_to_string(dir.join("issuer.crt")).ok()?;
        let key = std::fs::read_to_string(dir.join("issuer.key")).ok()?;
        let root = std::fs::read_to_string(dir.join("issuer.root")).ok()?;
        let der = pem::certs(&cert).ok()?.remove(0);
        let key = KeyPair::from_pem(&key).ok()?;
        Signer::from_parts(root.trim().to_string(), der, key).ok()
    }

    fn save(&self, dir: &Path) -> Result<(), String> {
        let io = |e: std::io::Error| e.to_string();
        pem::write_file(
            &dir.join("issuer.crt"),
            &pem::encode_certs([&self.der]),
            false,
        )
        .map_err(io)?;
        pem::write_file(
            &dir.join("issuer.key"),
            &self.issuer.key().serialize_pem(),
            true,
        )
        .map_err(io)?;
        pem::write_file(&dir.join("issuer.root"), &self.root, false).map_err(io)
    }
}
