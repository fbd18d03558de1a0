//! rustls configurations built from a workload's credentials.
//!
//! [`TlsIdentity`] is one per process. It holds two slots, both swapped
//! whole: the certificate (rotated by renewal; the resolvers read the slot
//! at every handshake, so a new leaf is used from the next connection and
//! open connections are left alone) and the trust bundle (configs are
//! rebuilt when the roots change, and cached per expected identity until
//! then).
//!
//! Both directions check SPIFFE identities, not host names:
//! - as a server, the caller's chain must reach a root of the bundle, and
//!   the leaf must carry exactly one `spiffe://` ID in our trust domain;
//!   that ID is who called ([`peer_identity`]).
//! - as a client, the callee's chain must reach a root, and its one
//!   SPIFFE ID must be the one the caller expects (from discovery, for a
//!   service; mesh-control's own for the control plane). webpki checks
//!   validity dates and the serverAuth/clientAuth key purposes in both.
//!
//! Only TLS 1.3, with aws-lc-rs.

use super::{cert_facts, pem, SpiffeId, MESH_ALPN};
use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// The one crypto provider: aws-lc-rs.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("trust bundle: {0}")]
    Bundle(String),
    #[error("certificate: {0}")]
    Cert(String),
}

/// The certificate this process presents, as the slot holds it.
#[derive(Clone, Debug)]
pub struct Presented {
    pub id: SpiffeId,
    pub not_after: SystemTime,
    pub key: Arc<CertifiedKey>,
}

type ClientBase = rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>;
type ServerBase = rustls::ConfigBuilder<ServerConfig, rustls::WantsVerifier>;

pub struct TlsIdentity {
    trust_domain: String,
    provider: Arc<CryptoProvider>,
    /// TLS 1.3 on the provider, checked once at start.
    client_base: ClientBase,
    server_base: ServerBase,
    cert: Arc<ArcSwapOption<Presented>>,
    trust: ArcSwap<Trust>,
}

struct Trust {
    roots: Arc<RootCertStore>,
    /// Inbound: a meshed caller must present a certificate.
    mesh_server: Arc<ServerConfig>,
    /// Outbound, per identity the callee must have.
    clients: Mutex<HashMap<SpiffeId, Arc<ClientConfig>>>,
}

// === impl TlsIdentity ===

impl TlsIdentity {
    /// Trusting the roots in `bundle_pem`, presenting nothing yet.
    pub fn new(trust_domain: &str, bundle_pem: &str) -> Result<Arc<TlsIdentity>, TlsError> {
        let provider = provider();
        let tls13 = |e: rustls::Error| TlsError::Bundle(format!("TLS 1.3: {e}"));
        let client_base = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls13)?;
        let server_base = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls13)?;
        let cert = Arc::new(ArcSwapOption::empty());
        let trust = Trust::build(bundle_pem, trust_domain, &provider, &server_base, &cert)?;
        Ok(Arc::new(TlsIdentity {
            trust_domain: trust_domain.to_string(),
            provider,
            client_base,
            server_base,
            cert,
            trust: ArcSwap::from_pointee(trust),
        }))
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Replaces the trusted roots; connections made from now on use them.
    pub fn set_bundle(&self, bundle_pem: &str) -> Result<(), TlsError> {
        let trust = Trust::build(
            bundle_pem,
            &self.trust_domain,
            &self.provider,
            &self.server_base,
            &self.cert,
        )?;
        self.trust.store(Arc::new(trust));
        Ok(())
    }

    /// Puts a new certificate in the slot: the next handshake presents it.
    pub fn set_cert(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Presented, TlsError> {
        let leaf = chain
            .first()
            .ok_or_else(|| TlsError::Cert("empty chain".into()))?;
        let facts = cert_facts(leaf).map_err(|e| TlsError::Cert(e.0))?;
        if facts.id.trust_domain() != self.trust_domain {
            return Err(TlsError::Cert(format!(
                "{} is not in trust domain {}",
                facts.id, self.trust_domain
            )));
        }
        let signing = self
            .provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| TlsError::Cert(e.to_string()))?;
        let key = Arc::new(CertifiedKey::new(chain, signing));
        key.keys_match()
            .map_err(|e| TlsError::Cert(format!("key does not match the certificate: {e}")))?;
        let presented = Presented {
            id: facts.id,
            not_after: facts.not_after,
            key,
        };
        self.cert.store(Some(Arc::new(presented.clone())));
        Ok(presented)
    }

    /// Puts any chain in the slot, unchecked: tests present certificates
    /// that `set_cert` would refuse, to see the peer refuse them.
    #[cfg(test)]
    pub(crate) fn force_cert_for_tests(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) {
        let signing = self.provider.key_provider.load_private_key(key).unwrap();
        let presented = Presented {
            id: SpiffeId::new(&self.trust_domain, "default", "forged").unwrap(),
            not_after: SystemTime::now() + std::time::Duration::from_secs(3600),
            key: Arc::new(CertifiedKey::new(chain, signing)),
        };
        self.cert.store(Some(Arc::new(presented)));
    }

    /// What this process presents now.
    pub fn presented(&self) -> Option<Arc<Presented>> {
        self.cert.load_full()
    }

    /// The inbound side's config for meshed callers (ALPN `mesh/1`).
    pub fn mesh_server(&self) -> Arc<ServerConfig> {
        self.trust.load().mesh_server.clone()
    }

    /// A client config that accepts only a callee proving `expected`.
    pub fn client(&self, expected: &SpiffeId) -> Arc<ClientConfig> {
        let trust = self.trust.load();
        let mut clients = trust.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(expected) {
            return c.clone();
        }
        let mut config = self.client_config(&trust.roots, expected);
        config.alpn_protocols = vec![MESH_ALPN.to_vec()];
        let config = Arc::new(config);
        // A bound on a map keyed by what discovery says: never grows past
        // the services one proxy calls, but a flood of identities must not
        // hold memory.
        if clients.len() >= 4096 {
            clients.clear();
        }
        clients.insert(expected.clone(), config.clone());
        config
    }

    /// A config for mesh-control: the server must prove mesh-control's
    /// identity; this process presents its certificate when it has one.
    pub fn control_client(&self) -> Result<ClientConfig, TlsError> {
        let id = SpiffeId::control(&self.trust_domain).map_err(|e| TlsError::Bundle(e.0))?;
        Ok(self.client_config(&self.trust.load().roots, &id))
    }

    fn client_config(&self, roots: &Arc<RootCertStore>, expected: &SpiffeId) -> ClientConfig {
        let verifier = Arc::new(CalleeVerifier {
            roots: roots.clone(),
            expected: expected.clone(),
            algs: self.provider.signature_verification_algorithms,
        });
        let mut config = self
            .client_base
            .clone()
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(Arc::new(Slot(self.cert.clone())));
        // The callee is named by its identity, not by a host: no SNI.
        config.enable_sni = false;
        config
    }

    /// mesh-control's listener: certificates optional (a bootstrap token
    /// or an admin token may stand in), checked when given.
    pub fn control_server(&self) -> Result<ServerConfig, TlsError> {
        let roots = self.trust.load().roots.clone();
        let inner = WebPkiClientVerifier::builder_with_provider(roots, self.provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::Bundle(e.to_string()))?;
        Ok(self.server_config(inner))
    }

    fn server_config(&self, inner: Arc<dyn ClientCertVerifier>) -> ServerConfig {
        server_config(&self.server_base, &self.trust_domain, inner, &self.cert)
    }
}

fn server_config(
    base: &ServerBase,
    trust_domain: &str,
    inner: Arc<dyn ClientCertVerifier>,
    cert: &Arc<ArcSwapOption<Presented>>,
) -> ServerConfig {
    let verifier = Arc::new(CallerVerifier {
        inner,
        trust_domain: trust_domain.to_string(),
    });
    base.clone()
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(Slot(cert.clone())))
}

impl Trust {
    fn build(
        bundle_pem: &str,
        trust_domain: &str,
        provider: &Arc<CryptoProvider>,
        base: &ServerBase,
        cert: &Arc<ArcSwapOption<Presented>>,
    ) -> Result<Trust, TlsError> {
        let mut roots = RootCertStore::empty();
        for der in pem::certs(bundle_pem).map_err(TlsError::Bundle)? {
            roots
                .add(der)
                .map_err(|e| TlsError::Bundle(format!("a root is not usable: {e}")))?;
        }
        let roots = Arc::new(roots);
        let inner = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| TlsError::Bundle(e.to_string()))?;
        let mut mesh_server = server_config(base, trust_domain, inner, cert);
        mesh_server.alpn_protocols = vec![MESH_ALPN.to_vec()];
        Ok(Trust {
            roots,
            mesh_server: Arc::new(mesh_server),
            clients: Mutex::new(HashMap::new()),
        })
    }
}

/// Who is on the other side of a verified connection.
pub fn peer_identity(conn: &rustls::CommonState) -> Option<SpiffeId> {
    let leaf = conn.peer_certificates()?.first()?;
    cert_facts(leaf).ok().map(|f| f.id)
}

fn refuse(why: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
        Arc::new(super::BadId(why)),
    )))
}

/// The certificate slot, read at every handshake.
#[derive(Debug)]
struct Slot(Arc<ArcSwapOption<Presented>>);

impl ResolvesServerCert for Slot {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.load().as_ref().map(|p| p.key.clone())
    }
}

impl ResolvesClientCert for Slot {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.load().as_ref().map(|p| p.key.clone())
    }

    fn has_certs(&self) -> bool {
        self.0.load().is_some()
    }
}

/// webpki's chain check, then the SPIFFE rule (see the module docs).
#[derive(Debug)]
struct CallerVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
}

impl ClientCertVerifier for CallerVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: which roots we hold is nobody's business.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let facts = cert_facts(end_entity).map_err(|e| refuse(e.0))?;
        if facts.id.trust_domain() != self.trust_domain {
            return Err(refuse(format!(
                "{} is not in trust domain {}",
                facts.id, self.trust_domain
            )));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The chain must reach a root, and the leaf must be `expected`.
#[derive(Debug)]
struct CalleeVerifier {
    roots: Arc<RootCertStore>,
    expected: SpiffeId,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for CalleeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        let facts = cert_facts(end_entity).map_err(|e| refuse(e.0))?;
        if facts.id != self.expected {
            return Err(refuse(format!(
                "the peer is {}, not {}",
                facts.id, self.expected
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}
