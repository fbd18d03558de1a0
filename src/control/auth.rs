//! Who is calling mesh-control, and what they may do.
//!
//! Three credentials, checked in this order:
//! - an **admin token** (`Authorization: Bearer`, the operator's secret):
//!   everything;
//! - a **client certificate** (verified in the TLS handshake, see
//!   `identity::tls`): a workload, which may read and watch, and register,
//!   heartbeat, deregister and renew only as its own service;
//! - a **bootstrap token** (`Authorization: Bearer`, from `mesh-ctl token
//!   create`): only its first certificate.
//!
//! A request with none is `401`; a valid credential asking for more than
//! it grants is `403`. Both carry one line saying why, and are counted by
//! reason. With `--identity off` nothing is checked (and nothing is
//! encrypted): for a trusted network or a demo of what it protects.

use crate::identity::ca::Authority;
use crate::identity::tls::TlsIdentity;
use crate::identity::token::{AdminToken, AuthError, BootstrapTokens, CredentialCheck};
use crate::identity::SpiffeId;
use axum::http::{header, HeaderMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// Everything the control plane checks credentials with.
pub struct Auth {
    pub ca: Arc<Authority>,
    /// Mints bootstrap tokens (`POST /v1/identity/tokens`).
    pub tokens: Arc<BootstrapTokens>,
    /// Checks bearer credentials that are not the admin token: the seam a
    /// Kubernetes TokenReview would plug into.
    pub credentials: Arc<dyn CredentialCheck>,
    pub admin: AdminToken,
    /// mesh-control's own certificate slot and roots.
    pub tls: Arc<TlsIdentity>,
    /// Names in mesh-control's own certificate.
    names: Vec<String>,
}

/// The connection a request came on.
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    /// From the client certificate verified in the handshake.
    pub id: Option<SpiffeId>,
}

/// Who the request is from, once authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// `--identity off`: no checks.
    Open,
    Admin,
    /// A workload proven by its certificate, connected from `ip`.
    Workload {
        id: SpiffeId,
        ip: IpAddr,
    },
    /// A bootstrap token's identity: good for a first certificate only.
    Bootstrap(SpiffeId),
    Anonymous,
}

/// A refused request: 401 (no or bad credential) or 403 (not allowed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Forbidden(String),
}

impl Refusal {
    /// The metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Unauthenticated(_) => "unauthenticated",
            Refusal::Forbidden(_) => "forbidden",
        }
    }
}

/// How mesh-control's identity is set up (its flags).
#[derive(Clone, Debug)]
pub struct IdentityConfig {
    /// `--trust-domain`.
    pub trust_domain: String,
    /// `--cert-ttl`: workload leaf lifetime.
    pub cert_ttl: std::time::Duration,
    /// `--ca-cert` and `--ca-key`: the operator's root.
    pub ca: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// `--admin-token-file`; default `<data-dir>/identity/admin.token`.
    pub admin_token_file: Option<std::path::PathBuf>,
    /// DNS names and IPs in mesh-control's own certificate, beside its
    /// SPIFFE ID (for clients that check host names, like curl).
    pub server_names: Vec<String>,
}

// === impl Auth ===

impl Auth {
    /// Opens the CA, the token key and the admin token under `data_dir`,
    /// and issues mesh-control's own certificate.
    pub fn open(config: &IdentityConfig, data_dir: &std::path::Path) -> Result<Auth, String> {
        use crate::identity::ca::CaConfig;
        let dir = data_dir.join("identity");
        let ca = Authority::open(CaConfig {
            dir: dir.clone(),
            trust_domain: config.trust_domain.clone(),
            leaf_ttl: config.cert_ttl,
            operator_root: config.ca.clone(),
        })
        .map_err(|e| e.to_string())?;
        let tokens = Arc::new(BootstrapTokens::open(&dir.join("token.key"))?);
        let admin = AdminToken::open(config.admin_token_file.as_deref(), &dir.join("admin.token"))?;
        let tls =
            TlsIdentity::new(&config.trust_domain, &ca.bundle().pem).map_err(|e| e.to_string())?;
        let auth = Auth {
            ca: Arc::new(ca),
            credentials: tokens.clone(),
            tokens,
            admin,
            tls,
            names: config.server_names.clone(),
        };
        auth.refresh_own().map_err(|e| e.to_string())?;
        Ok(auth)
    }

    /// Issues mesh-control's own certificate again (on a schedule, and
    /// when the active root changes) and trusts the current bundle.
    /// Returns when it expires.
    pub fn refresh_own(&self) -> Result<std::time::SystemTime, String> {
        let id = SpiffeId::control(self.ca.trust_domain()).map_err(|e| e.0)?;
        let (issued, key) = self
            .ca
            .issue_local(&id, &self.names)
            .map_err(|e| e.to_string())?;
        self.tls
            .set_bundle(&self.ca.bundle().pem)
            .map_err(|e| e.to_string())?;
        let der = rustls_pki_types::PrivateKeyDer::Pkcs8(
            rustls_pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()),
        );
        let presented = self
            .tls
            .set_cert(issued.chain, der)
            .map_err(|e| e.to_string())?;
        Ok(presented.not_after)
    }

    /// Authenticates a request: an invalid bearer credential is refused at
    /// once (a typo must not fall back to anonymous and confuse).
    pub async fn caller(&self, peer: &Peer, headers: &HeaderMap) -> Result<Caller, Refusal> {
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim)
                .ok_or_else(|| {
                    Refusal::Unauthenticated(
                        "the Authorization header must be \"Bearer <token>\"".into(),
                    )
                })?;
            if self.admin.matches(token) {
                return Ok(Caller::Admin);
            }
            return match self.credentials.identity(token).await {
                Ok(id) => Ok(Caller::Bootstrap(id)),
                Err(AuthError::Expired) => Err(Refusal::Unauthenticated(
                    "the token has expired: create a new one (mesh-ctl token create)".into(),
                )),
                Err(e) => Err(Refusal::Unauthenticated(format!(
                    "the token is neither the admin token nor a bootstrap token this control plane signed ({e})"
                ))),
            };
        }
        Ok(match &peer.id {
            Some(id) => Caller::Workload {
                id: id.clone(),
                ip: peer.addr.ip(),
            },
            None => Caller::Anonymous,
        })
    }
}

// === impl Caller ===

impl Caller {
    fn anonymous() -> Refusal {
        Refusal::Unauthenticated(
            "no credential: present a mesh certificate, or an admin token (MESH_TOKEN / --token-file)"
                .into(),
        )
    }

    /// Operators only: policies, tokens, roots, registrations by hand.
    pub fn admin(&self) -> Result<(), Refusal> {
        match self {
            Caller::Open | Caller::Admin => Ok(()),
            Caller::Anonymous => Err(Caller::anonymous()),
            Caller::Workload { id, .. } | Caller::Bootstrap(id) => Err(Refusal::Forbidden(
                format!("{id} is a workload; this needs the admin token"),
            )),
        }
    }

    /// Reads and watches: any proven identity.
    pub fn reader(&self) -> Result<(), Refusal> {
        match self {
            Caller::Open | Caller::Admin | Caller::Workload { .. } => Ok(()),
            Caller::Anonymous => Err(Caller::anonymous()),
            Caller::Bootstrap(_) => Err(Refusal::Forbidden(
                "a bootstrap token only gets a first certificate (POST /v1/identity/certify)"
                    .into(),
            )),
        }
    }

    /// Acting on instances of `service`: operators, or that service's own
    /// workloads. `Some(id)` when a workload acts (so the instance records
    /// who registered it).
    pub fn acts_for(&self, service: &str) -> Result<Option<&SpiffeId>, Refusal> {
        match self {
            Caller::Open | Caller::Admin => Ok(None),
            Caller::Workload { id, .. } if id.service() == service => Ok(Some(id)),
            Caller::Workload { id, .. } => Err(Refusal::Forbidden(format!(
                "{id} may act only for service {:?}, not {service:?}",
                id.service()
            ))),
            Caller::Bootstrap(_) => self.reader().map(|()| None),
            Caller::Anonymous => Err(Caller::anonymous()),
        }
    }

    /// A workload registers only its own address: a certificate for
    /// `hello` stolen elsewhere cannot point `hello`'s traffic at another host.
    pub fn own_address(&self, address: IpAddr) -> Result<(), Refusal> {
        match self {
            Caller::Workload { id, ip } if canonical(*ip) != canonical(address) => {
                Err(Refusal::Forbidden(format!(
                    "{id} connected from {ip} and may register only that address, not {address}"
                )))
            }
            _ => Ok(()),
        }
    }

    /// Who a certificate may be issued for: the identity the credential
    /// proves (a renewal: the current certificate's; a first certificate:
    /// the bootstrap token's).
    pub fn certifiable(&self) -> Result<&SpiffeId, Refusal> {
        match self {
            Caller::Workload { id, .. } | Caller::Bootstrap(id) => Ok(id),
            Caller::Open => Err(Refusal::Forbidden("identity is off on this control plane".into())),
            Caller::Admin => Err(Refusal::Forbidden(
                "the admin token is not a workload identity: use a bootstrap token (mesh-ctl token create)"
                    .into(),
            )),
            Caller::Anonymous => Err(Refusal::Unauthenticated(
                "no credential: a first certificate needs a bootstrap token (--token-file); a renewal, the current certificate"
                    .into(),
            )),
        }
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(svc: &str) -> SpiffeId {
        SpiffeId::new("mesh.local", "default", svc).unwrap()
    }

    #[test]
    fn who_may_do_what() {
        let ip: IpAddr = "10.0.0.5".parse().unwrap();
        let hello = Caller::Workload {
            id: id("hello"),
            ip,
        };
        let boot = Caller::Bootstrap(id("hello"));
        let status = |r: Result<(), Refusal>| match r {
            Ok(()) => 200,
            Err(Refusal::Unauthenticated(_)) => 401,
            Err(Refusal::Forbidden(_)) => 403,
        };
        #[rustfmt::skip]
        let table: &[(&str, &Caller, u16, u16, u16, u16)] = &[
            // caller              admin reader acts-for-hello acts-for-evil
            ("open",       &Caller::Open,      200, 200, 200, 200),
            ("admin",      &Caller::Admin,     200, 200, 200, 200),
            ("workload",   &hello,             403, 200, 200, 403),
            ("bootstrap",  &boot,              403, 403, 403, 403),
            ("anonymous",  &Caller::Anonymous, 401, 401, 401, 401),
        ];
        for (name, caller, admin, reader, own, other) in table {
            assert_eq!(status(caller.admin()), *admin, "{name} admin");
            assert_eq!(status(caller.reader()), *reader, "{name} reader");
            assert_eq!(
                status(caller.acts_for("hello").map(drop)),
                *own,
                "{name} hello"
            );
            assert_eq!(
                status(caller.acts_for("evil").map(drop)),
                *other,
                "{name} evil"
            );
        }
        assert!(hello.own_address(ip).is_ok());
        assert!(hello.own_address("10.0.0.6".parse().unwrap()).is_err());
        assert!(hello
            .own_address("::ffff:10.0.0.5".parse().unwrap())
            .is_ok());
        assert_eq!(boot.certifiable(), Ok(&id("hello")));
        assert!(Caller::Admin.certifiable().is_err());
    }
}
