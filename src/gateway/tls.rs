//! TLS at the edge: the certificates outside clients see, chosen by SNI.
//!
//! Unlike the mesh's own mTLS (`identity::tls`: TLS 1.3, SPIFFE IDs both
//! ways), this side faces browsers and any client: TLS 1.3 and 1.2, no
//! client certificate, the server's certificate chosen by the name the
//! client asked for. `--tls-host NAME=CERT,KEY` gives a name its own
//! (`*.example.com` covers one level of subdomain, as X.509 wildcards
//! do); `--tls-cert/--tls-key` is the default for every other name and for
//! clients that send none. ALPN offers `h2` and `http/1.1`.
//!
//! Files are read once at startup: every problem (a missing file, a key
//! that does not match its certificate) stops the gateway before it
//! listens, naming the flag.

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One `--tls-host` value: a server name and its files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostCert {
    pub name: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `NAME=CERT,KEY`.
pub fn parse_host_cert(s: &str) -> Result<HostCert, String> {
    let (name, files) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=CERT,KEY"))?;
    let (cert, key) = files
        .split_once(',')
        .ok_or_else(|| format!("{s:?}: expected NAME=CERT,KEY (two files, comma-separated)"))?;
    let name = name.trim().to_ascii_lowercase();
    let bare = name.strip_prefix("*.").unwrap_or(&name);
    if bare.is_empty() || bare.contains(['*', ':', '/']) {
        return Err(format!(
            "{name:?}: a server name such as shop.example.com or *.example.com"
        ));
    }
    Ok(HostCert {
        name,
        cert: PathBuf::from(cert.trim()),
        key: PathBuf::from(key.trim()),
    })
}

/// Picks the certificate by SNI: exact name, then `*.` its parent, then
/// the default.
#[derive(Debug)]
struct BySni {
    names: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(sni) = hello.server_name() else {
            return self.default.clone();
        };
        let sni = sni.to_ascii_lowercase();
        if let Some(k) = self.names.get(&sni) {
            return Some(k.clone());
        }
        let wild = sni.split_once('.').map(|(_, parent)| format!("*.{parent}"));
        wild.and_then(|w| self.names.get(&w).cloned())
            .or_else(|| self.default.clone())
    }
}

/// The edge's rustls configuration; `None` when no certificate is given
/// (plaintext HTTP/1.1 and h2c).
pub fn server_config(
    default: Option<(&Path, &Path)>,
    hosts: &[HostCert],
) -> Result<Option<Arc<ServerConfig>>, String> {
    if default.is_none() && hosts.is_empty() {
        return Ok(None);
    }
    let provider = crate::identity::tls::provider();
    let load = |flag: &str, cert: &Path, key: &Path| -> Result<Arc<CertifiedKey>, String> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .map_err(|e| format!("{flag} {}: {e}", cert.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{flag} {}: {e}", cert.display()))?;
        if chain.is_empty() {
            return Err(format!("{flag} {}: no certificate in it", cert.display()));
        }
        let der = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| format!("{flag} {}: {e}", key.display()))?;
        let signing = provider
            .key_provider
            .load_private_key(der)
            .map_err(|e| format!("{flag} {}: {e}", key.display()))?;
        let ck = CertifiedKey::new(chain, signing);
        ck.keys_match().map_err(|e| {
            format!(
                "{flag}: {} does not match {}: {e}",
                key.display(),
                cert.display()
            )
        })?;
        Ok(Arc::new(ck))
    };
    let default = match default {
        Some((c, k)) => Some(load("--tls-cert/--tls-key", c, k)?),
        None => None,
    };
    let mut names = HashMap::new();
    for h in hosts {
        let key = load(&format!("--tls-host {}", h.name), &h.cert, &h.key)?;
        if names.insert(h.name.clone(), key).is_some() {
            return Err(format!("--tls-host {}: given twice", h.name));
        }
    }
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(BySni { names, default }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_cert_flags() {
        let h = parse_host_cert("Shop.Example.com=/t/shop.pem,/t/shop.key").unwrap();
        assert_eq!(h.name, "shop.example.com");
        assert_eq!(h.key, PathBuf::from("/t/shop.key"));
        assert!(parse_host_cert("*.example.com=/a,/b").is_ok());
        for bad in ["shop", "shop=/a", "=/a,/b", "a:443=/a,/b", "*=/a,/b"] {
            assert!(parse_host_cert(bad).is_err(), "{bad}");
        }
    }
}
