//! Workload identity: who a proxy is, proven by a certificate.
//!
//! Every workload's identity is a SPIFFE ID in a URI SAN,
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<service>`. mesh-control is
//! the certificate authority ([`ca`]): a root (or several, during a
//! rotation) signs an intermediate, the intermediate signs 24 h leaves. A
//! proxy makes its key itself and never sends it anywhere ([`workload`]):
//! it sends a CSR with a credential — a bootstrap token ([`token`]) the
//! first time, its current certificate after that — and the CA writes the
//! identity the *credential* proves, whatever SANs the CSR asked for.
//!
//! [`tls`] turns the credentials into rustls configurations: a callee
//! checks the caller's chain and reads its SPIFFE ID; a caller checks that
//! the callee holds exactly the identity discovery says the resolved
//! service has, so a stolen address is not enough to receive traffic.
//! Certificates sit in a swappable slot, so rotation needs no restart and
//! drops no connection.

pub mod ca;
pub mod pem;
pub mod tls;
pub mod token;
pub mod workload;

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

/// The trust domain when `--trust-domain` is not given.
pub const DEFAULT_TRUST_DOMAIN: &str = "mesh.local";
/// The namespace when `--namespace` is not given.
pub const DEFAULT_NAMESPACE: &str = "default";
/// mesh-control's own identity lives here; no token is minted for it, so
/// no workload can pose as the control plane.
pub const CONTROL_NAMESPACE: &str = "mesh-system";
pub const CONTROL_SERVICE: &str = "mesh-control";
/// The ALPN a proxy offers to a peer's inbound listener: it tells a meshed
/// peer from a plain TLS client of the app, before any certificate is read.
pub const MESH_ALPN: &[u8] = b"mesh/1";
/// Leaves live this long unless `--cert-ttl` says otherwise (Istio's and
/// Linkerd's default).
pub const DEFAULT_LEAF_TTL: Duration = Duration::from_secs(24 * 3600);
/// Below this, a root's expiry is warned about (log line and metric).
pub const ROOT_WARN: Duration = Duration::from_secs(30 * 24 * 3600);

/// `spiffe://<trust-domain>/ns/<namespace>/sa/<service>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct BadId(pub String);

impl SpiffeId {
    pub fn new(trust_domain: &str, namespace: &str, service: &str) -> Result<Self, BadId> {
        check_trust_domain(trust_domain)?;
        crate::model::validate_service_name(namespace)
            .map_err(|why| BadId(format!("namespace {namespace:?} {why}")))?;
        crate::model::validate_service_name(service)
            .map_err(|why| BadId(format!("service {service:?} {why}")))?;
        Ok(SpiffeId {
            trust_domain: trust_domain.to_string(),
            namespace: namespace.to_string(),
            service: service.to_string(),
        })
    }

    /// mesh-control's identity in `trust_domain`.
    pub fn control(trust_domain: &str) -> Result<Self, BadId> {
        SpiffeId::new(trust_domain, CONTROL_NAMESPACE, CONTROL_SERVICE)
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    pub fn is_control(&self) -> bool {
        self.namespace == CONTROL_NAMESPACE && self.service == CONTROL_SERVICE
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service
        )
    }
}

impl FromStr for SpiffeId {
    type Err = BadId;

    fn from_str(s: &str) -> Result<Self, BadId> {
        let bad = |why: &str| {
            BadId(format!(
                "{s:?} is not spiffe://<trust-domain>/ns/<namespace>/sa/<service>: {why}"
            ))
        };
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| bad("no spiffe:// scheme"))?;
        let mut parts = rest.split('/');
        let (Some(td), Some("ns"), Some(ns), Some("sa"), Some(svc), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(bad("wrong path"));
        };
        SpiffeId::new(td, ns, svc).map_err(|e| bad(&e.0))
    }
}

impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for SpiffeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A trust domain is a DNS-like name: lowercase letters, digits, `.-_`.
pub fn check_trust_domain(td: &str) -> Result<(), BadId> {
    let ok = !td.is_empty()
        && td.len() <= 255
        && td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b));
    match ok {
        true => Ok(()),
        false => Err(BadId(format!(
            "trust domain {td:?} must be lowercase letters, digits, '.', '-', '_'"
        ))),
    }
}

/// What a certificate says: its one SPIFFE ID and when it stops being valid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFacts {
    pub id: SpiffeId,
    pub not_after: SystemTime,
    pub not_before: SystemTime,
}

/// Reads the SPIFFE ID of a leaf: exactly one `spiffe://` URI SAN (the
/// SPIFFE X.509-SVID rule), no CA bit.
pub fn cert_facts(der: &[u8]) -> Result<CertFacts, BadId> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| BadId(format!("not an X.509 certificate: {e}")))?;
    if cert.is_ca() {
        return Err(BadId("a CA certificate is not a workload identity".into()));
    }
    let sans = cert
        .subject_alternative_name()
        .map_err(|e| BadId(format!("bad subjectAltName: {e}")))?;
    let uris: Vec<&str> = sans
        .iter()
        .flat_map(|s| s.value.general_names.iter())
        .filter_map(|n| match n {
            GeneralName::URI(u) if u.starts_with("spiffe://") => Some(*u),
            _ => None,
        })
        .collect();
    let id = match uris.as_slice() {
        [one] => one.parse()?,
        [] => return Err(BadId("the certificate has no spiffe:// URI SAN".into())),
        _ => {
            return Err(BadId(
                "the certificate has several spiffe:// URI SANs".into(),
            ))
        }
    };
    let at = |t: x509_parser::time::ASN1Time| {
        let secs = u64::try_from(t.timestamp()).unwrap_or(0);
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    };
    Ok(CertFacts {
        id,
        not_after: at(cert.validity().not_after),
        not_before: at(cert.validity().not_before),
    })
}

/// Seconds from now until `t` (negative once past), for metrics and `/state`.
pub fn seconds_left(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::now()) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// RFC 3339 (UTC, seconds) for documents people read.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let dt = time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap_or(0))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        dt.year(),
        u8::from(dt.month()),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    )
}

#[cfg(test)]
mod tests;
