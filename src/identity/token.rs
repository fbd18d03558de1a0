//! Credentials that prove an identity before a certificate does.
//!
//! **Bootstrap tokens** are JWTs (HS256) signed by mesh-control with a key
//! only it holds (`<data-dir>/identity/token.key`, 0600). One names one
//! service in one namespace and is good until it expires, for every
//! replica: what a Kubernetes Secret would carry. A proxy shows it once,
//! to get its first certificate; renewals use the certificate.
//!
//! **The seam**: the CA asks a [`CredentialCheck`] what identity a bearer
//! credential proves. Bootstrap tokens are one implementation; a
//! Kubernetes TokenReview of a projected ServiceAccount token (what
//! Linkerd and Istio use) is another, to be added beside it, with the CA
//! unchanged.
//!
//! **Admin tokens** authenticate operators (`mesh-ctl` writes): one opaque
//! secret in `--admin-token-file`, or made at first start in
//! `<data-dir>/identity/admin.token`. Compared in constant time.

use super::{pem, SpiffeId};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::{Duration, SystemTime};

/// A token no one sets a lifetime for lives an hour.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// Longest bootstrap token: a year (leaked tokens must end).
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
const AUDIENCE: &str = "mesh-bootstrap";
const ISSUER: &str = "mesh-control";

/// Why a credential was refused (401 at the API).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("no credential: present a client certificate or an Authorization: Bearer token")]
    Missing,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid: {0}")]
    Invalid(String),
}

/// What a bearer credential proves (see the module docs).
#[async_trait::async_trait]
pub trait CredentialCheck: Send + Sync {
    async fn identity(&self, token: &str) -> Result<SpiffeId, AuthError>;
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    aud: String,
    /// The SPIFFE ID the token proves.
    sub: String,
    iat: u64,
    exp: u64,
}

/// Mints and checks bootstrap tokens.
pub struct BootstrapTokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl BootstrapTokens {
    /// Loads the signing key at `path`, making one on first start.
    pub fn open(path: &Path) -> Result<BootstrapTokens, String> {
        let secret = load_or_make_secret(path)?;
        let encoding = EncodingKey::from_secret(secret.as_bytes()).map_err(|e| e.to_string())?;
        let decoding = DecodingKey::from_secret(secret.as_bytes()).map_err(|e| e.to_string())?;
        Ok(BootstrapTokens { encoding, decoding })
    }

    /// A token proving `id` until `ttl` from now.
    pub fn mint(&self, id: &SpiffeId, ttl: Duration) -> Result<(String, SystemTime), String> {
        let now = SystemTime::now();
        self.mint_between(id, now, now + ttl)
    }

    /// A token proving `id`, issued at `iat`, good until `exp`.
    fn mint_between(
        &self,
        id: &SpiffeId,
        now: SystemTime,
        exp: SystemTime,
    ) -> Result<(String, SystemTime), String> {
        let unix = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        };
        let claims = Claims {
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            sub: id.to_string(),
            iat: unix(now),
            exp: unix(exp),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map(|t| (t, exp))
            .map_err(|e| e.to_string())
    }

    fn check(&self, token: &str) -> Result<SpiffeId, AuthError> {
        let mut v = Validation::new(Algorithm::HS256);
        v.set_audience(&[AUDIENCE]);
        v.set_issuer(&[ISSUER]);
        v.leeway = 0;
        v.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.decoding, &v).map_err(|e| {
                match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                    _ => AuthError::Invalid(e.to_string()),
                }
            })?;
        data.claims
            .sub
            .parse()
            .map_err(|e: super::BadId| AuthError::Invalid(e.0))
    }
}

#[cfg(test)]
impl BootstrapTokens {
    /// A token that expired a minute ago (no waiting for one to expire).
    pub(crate) fn mint_expired(&self, id: &SpiffeId) -> Result<String, String> {
        let now = SystemTime::now();
        let minute = Duration::from_secs(60);
        self.mint_between(id, now - 2 * minute, now - minute)
            .map(|(t, _)| t)
    }
}

#[async_trait::async_trait]
impl CredentialCheck for BootstrapTokens {
    async fn identity(&self, token: &str) -> Result<SpiffeId, AuthError> {
        self.check(token)
    }
}

/// The operators' secret.
pub struct AdminToken {
    secret: String,
}

impl AdminToken {
    /// From `--admin-token-file`, or made at `default` on first start.
    pub fn open(given: Option<&Path>, default: &Path) -> Result<AdminToken, String> {
        let secret = match given {
            Some(p) => std::fs::read_to_string(p)
                .map_err(|e| format!("--admin-token-file {}: {e}", p.display()))?
                .trim()
                .to_string(),
            None => load_or_make_secret(default)?,
        };
        if secret.len() < 16 {
            return Err("the admin token must be at least 16 characters".into());
        }
        Ok(AdminToken { secret })
    }

    pub fn matches(&self, presented: &str) -> bool {
        aws_lc_rs::constant_time::verify_slices_are_equal(
            self.secret.as_bytes(),
            presented.trim().as_bytes(),
        )
        .is_ok()
    }
}

/// 32 random bytes as hex, kept in a 0600 file.
fn load_or_make_secret(path: &Path) -> Result<String, String> {
    if let Ok(text) = std::fs::read_to_string(path) {
        let text = text.trim().to_string();
        if !text.is_empty() {
            return Ok(text);
        }
    }
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| "no randomness".to_string())?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    pem::write_file(path, &format!("{hex}\n"), true)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(hex)
}
