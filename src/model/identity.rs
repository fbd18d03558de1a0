//! The identity API's documents (`/v1/identity/...`, `mesh-ctl token`,
//! `mesh-ctl identity`). Certificates travel as PEM text.

use serde::{Deserialize, Serialize};

/// The largest CSR accepted (PEM text); a P-256 CSR is under 1 KiB.
pub const MAX_CSR_BYTES: usize = 8 * 1024;

/// `POST /v1/identity/certify`: a CSR, with a bootstrap token (the first
/// time) or the current certificate (renewals) as the credential.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertifyRequest {
    pub csr: String,
}

/// A signed leaf: the chain to present (leaf, then intermediate) and the
/// roots to trust.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certified {
    pub identity: String,
    pub certificate: String,
    pub bundle: String,
    /// RFC 3339.
    pub expires_at: String,
}

/// `POST /v1/identity/tokens` (admin): a bootstrap token for one service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRequest {
    pub service: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Lifetime in seconds (default one hour).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenIssued {
    pub token: String,
    pub identity: String,
    pub expires_at: String,
}

/// One root of the trust bundle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootInfo {
    /// The first 16 hex digits of the certificate's SHA-256.
    pub id: String,
    pub subject: String,
    pub expires_at: String,
    pub expires_in_secs: i64,
    /// New leaves chain to the active root.
    pub active: bool,
}

/// The trust bundle: every root a proxy must accept. During a rotation it
/// holds the old root and the new one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustBundle {
    pub trust_domain: String,
    pub roots: Vec<RootInfo>,
    /// Every root as PEM, in `roots` order.
    pub pem: String,
}

/// `POST /v1/identity/roots` (admin): a new root, made by mesh-control or
/// supplied by the operator (both PEM fields, or neither).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddRoot {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}
