//! The CA, tokens and verifiers, with real rustls handshakes over
//! in-memory pipes: every bad certificate is a named case.

use super::ca::{Authority, CaConfig, CaError};
use super::tls::TlsIdentity;
use super::token::{AuthError, BootstrapTokens};
use super::*;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

const TD: &str = "mesh.local";

fn id(svc: &str) -> SpiffeId {
    SpiffeId::new(TD, "default", svc).unwrap()
}

fn authority(dir: &std::path::Path) -> Authority {
    Authority::open(CaConfig {
        dir: dir.join("identity"),
        trust_domain: TD.into(),
        leaf_ttl: Duration::from_secs(3600),
        operator_root: None,
    })
    .unwrap()
}

fn csr_for(key: &KeyPair, sans: Vec<String>) -> Vec<u8> {
    let params = CertificateParams::new(sans).unwrap();
    params.serialize_request(key).unwrap().der().to_vec()
}

fn key_der(key: &KeyPair) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()))
}

/// A proxy-like TLS identity holding a leaf the CA issued for `svc`.
fn workload(ca: &Authority, svc: &str) -> Arc<TlsIdentity> {
    let key = KeyPair::generate().unwrap();
    let issued = ca.issue(&csr_for(&key, vec![]), &id(svc)).unwrap();
    let tls = TlsIdentity::new(TD, &ca.bundle().pem).unwrap();
    tls.set_cert(issued.chain, key_der(&key)).unwrap();
    tls
}

#[test]
fn spiffe_ids_parse_and_print() {
    let ok = "spiffe://mesh.local/ns/default/sa/hello";
    let parsed: SpiffeId = ok.parse().unwrap();
    assert_eq!(parsed.service(), "hello");
    assert_eq!(parsed.to_string(), ok);
    for bad in [
        "http://mesh.local/ns/default/sa/hello",
        "spiffe://mesh.local/ns/default/hello",
        "spiffe:///ns/default/sa/hello",
        "spiffe://Mesh/ns/default/sa/hello",
        "spiffe://mesh.local/ns/default/sa/hello/extra",
        "spiffe://mesh.local/ns/default/sa/",
    ] {
        assert!(bad.parse::<SpiffeId>().is_err(), "{bad}");
    }
}

#[test]
fn the_ca_writes_the_identity_it_is_told_and_ignores_the_csr_names() {
    let dir = tempfile::tempdir().unwrap();
    let ca = authority(dir.path());
    let key = KeyPair::generate().unwrap();
    // The CSR asks to be the admin, and a DNS name: both are ignored.
    let csr = csr_for(
        &key,
        vec![
            "spiffe://mesh.local/ns/default/sa/admin".into(),
            "evil.example".into(),
        ],
    );
    let issued = ca.issue(&csr, &id("hello")).unwrap();
    let facts = cert_facts(&issued.chain[0]).unwrap();
    assert_eq!(facts.id, id("hello"));
    let (_, leaf) = x509_parser::parse_x509_certificate(&issued.chain[0]).unwrap();
    let names = leaf.subject_alternative_name().unwrap().unwrap();
    assert_eq!(names.value.general_names.len(), 1, "only the SPIFFE ID");
    assert_eq!(issued.chain.len(), 2, "leaf and issuer");
    let life = facts.not_after.duration_since(SystemTime::now()).unwrap();
    assert!(life <= Duration::from_secs(3600) && life > Duration::from_secs(3500));
}

#[test]
fn bad_csrs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = authority(dir.path());
    let key = KeyPair::generate().unwrap();
    let mut tampered = csr_for(&key, vec![]);
    let n = tampered.len();
    tampered[n - 3] ^= 0xff; // the signature no longer matches
    for (name, csr) in [
        ("garbage", b"not a csr".to_vec()),
        ("empty", Vec::new()),
        ("bad signature", tampered),
    ] {
        assert!(
            matches!(ca.issue(&csr, &id("hello")), Err(CaError::BadCsr(_))),
            "{name}"
        );
    }
}

#[test]
fn key_files_are_private_and_the_ca_survives_a_restart() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let first = authority(dir.path()).bundle();
    let idir = dir.path().join("identity");
    let mode = |p: &str| {
        std::fs::metadata(idir.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("issuer.key"), 0o600);
    let root_key = format!("roots/{}.key", first.roots[0].id);
    assert_eq!(mode(&root_key), 0o600);
    let again = authority(dir.path()).bundle();
    assert_eq!(first.pem, again.pem, "the same root after a restart");
}

#[test]
fn roots_rotate_in_three_steps() {
    let dir = tempfile::tempdir().unwrap();
    let ca = authority(dir.path());
    let old = ca.active_root();
    let added = ca.add_root(None).unwrap();
    assert!(!added.active);
    assert_eq!(ca.bundle().roots.len(), 2);
    assert_eq!(ca.active_root(), old, "adding does not activate");
    // A leaf from the old root is trusted by a holder of the new bundle.
    let before = workload(&ca, "web");
    ca.activate(&added.id).unwrap();
    let after = workload(&ca, "hello");
    assert_eq!(handshake(&after, &before, &id("web")), Ok(id("hello")));
    assert!(matches!(
        ca.remove_root(&added.id),
        Err(CaError::ActiveRoot(_))
    ));
    ca.remove_root(&old).unwrap();
    assert_eq!(ca.bundle().roots.len(), 1);
    // Without the old root, its leaves are strangers.
    let fresh = TlsIdentity::new(TD, &ca.bundle().pem).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = ca.issue(&csr_for(&key, vec![]), &id("hello")).unwrap();
    fresh.set_cert(leaf.chain, key_der(&key)).unwrap();
    assert!(handshake(&fresh, &before, &id("web")).is_err());
}

#[tokio::test]
async fn tokens_prove_one_service_until_they_expire() {
    use super::token::CredentialCheck;
    let dir = tempfile::tempdir().unwrap();
    let tokens = BootstrapTokens::open(&dir.path().join("token.key")).unwrap();
    let (t, _) = tokens.mint(&id("hello"), Duration::from_secs(60)).unwrap();
    assert_eq!(tokens.identity(&t).await, Ok(id("hello")));
    let old = tokens.mint_expired(&id("hello")).unwrap();
    assert_eq!(tokens.identity(&old).await, Err(AuthError::Expired));
    let other = BootstrapTokens::open(&dir.path().join("other.key")).unwrap();
    let (forged, _) = other.mint(&id("hello"), Duration::from_secs(60)).unwrap();
    assert!(matches!(
        tokens.identity(&forged).await,
        Err(AuthError::Invalid(_))
    ));
    let mut tampered = t.clone();
    tampered.push('x');
    assert!(tokens.identity(&tampered).await.is_err());
}

// === handshakes ===

/// Runs a TLS 1.3 handshake over a pipe: `client` expects the server to be
/// `expected`; `server` uses the inbound's mesh config. Ok(the caller's
/// identity as the server read it).
fn handshake(
    client: &TlsIdentity,
    server: &TlsIdentity,
    expected: &SpiffeId,
) -> Result<SpiffeId, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (c, s) = tokio::io::duplex(64 * 1024);
        let connector = tokio_rustls::TlsConnector::from(client.client(expected));
        let acceptor = tokio_rustls::TlsAcceptor::from(server.mesh_server());
        let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
        let (c, s) = tokio::join!(connector.connect(name, c), acceptor.accept(s));
        // In TLS 1.3 the client finishes first; the server's refusal of
        // the client certificate shows on the server side.
        c.map_err(|e| format!("client: {e}"))?;
        let s = s.map_err(|e| format!("server: {e}"))?;
        tls::peer_identity(s.get_ref().1).ok_or_else(|| "no peer identity".to_string())
    })
}

/// A leaf made by hand, signed by `issuer` (or self-signed), for the
/// cases the CA would never issue.
fn forged(
    issuer: Option<&Issuer<'_, KeyPair>>,
    sans: Vec<SanType>,
    not_after: SystemTime,
    is_ca: bool,
) -> (Vec<CertificateDer<'static>>, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "forged");
    p.distinguished_name = dn;
    p.subject_alt_names = sans;
    p.not_before = (SystemTime::now() - Duration::from_secs(7200)).into();
    p.not_after = not_after.into();
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    if is_ca {
        p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    }
    let cert = match issuer {
        Some(i) => p.signed_by(&key, i).unwrap(),
        None => p.self_signed(&key).unwrap(),
    };
    (vec![cert.der().clone()], key)
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

/// A client holding `chain` (bypassing set_cert's own checks).
fn holding(bundle: &str, chain: Vec<CertificateDer<'static>>, key: &KeyPair) -> Arc<TlsIdentity> {
    let tls = TlsIdentity::new(TD, bundle).unwrap();
    tls.force_cert_for_tests(chain, key_der(key));
    tls
}

#[test]
fn the_inbound_accepts_a_mesh_peer_and_refuses_every_bad_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = authority(dir.path());
    let bundle = ca.bundle().pem;
    let hello = workload(&ca, "hello");
    let web = workload(&ca, "web");
    assert_eq!(handshake(&web, &hello, &id("hello")), Ok(id("web")));

    // The CA's own issuer, to sign what the CA itself never would.
    let idir = dir.path().join("identity");
    let issuer_key =
        KeyPair::from_pem(&std::fs::read_to_string(idir.join("issuer.key")).unwrap()).unwrap();
    let issuer_pem = std::fs::read_to_string(idir.join("issuer.crt")).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&issuer_pem, issuer_key).unwrap();
    let issuer_der = pem::certs(&issuer_pem).unwrap().remove(0);
    let chained = |(mut chain, key): (Vec<CertificateDer<'static>>, KeyPair)| {
        chain.push(issuer_der.clone());
        (chain, key)
    };
    let hello_uri = "spiffe://mesh.local/ns/default/sa/hello";
    let later = SystemTime::now() + Duration::from_secs(3600);
    let other_dir = tempfile::tempdir().unwrap();
    let other_ca = authority(other_dir.path());
    let other_key = KeyPair::generate().unwrap();
    let other_leaf = other_ca
        .issue(&csr_for(&other_key, vec![]), &id("web"))
        .unwrap();

    let cases: Vec<(&str, (Vec<CertificateDer<'static>>, KeyPair))> = vec![
        (
            "self-signed with hello's SPIFFE ID",
            forged(None, vec![uri(hello_uri)], later, false),
        ),
        (
            "expired leaf from our CA",
            chained(forged(
                Some(&issuer),
                vec![uri(hello_uri)],
                SystemTime::now() - Duration::from_secs(60),
                false,
            )),
        ),
        (
            "leaf from another CA",
            (other_leaf.chain.clone(), other_key),
        ),
        (
            "leaf with no SPIFFE SAN",
            chained(forged(
                Some(&issuer),
                vec![SanType::DnsName("hello".try_into().unwrap())],
                later,
                false,
            )),
        ),
        (
            "leaf with two SPIFFE SANs",
            chained(forged(
                Some(&issuer),
                vec![uri(hello_uri), uri("spiffe://mesh.local/ns/default/sa/web")],
                later,
                false,
            )),
        ),
        (
            "leaf from another trust domain",
            chained(forged(
                Some(&issuer),
                vec![uri("spiffe://evil.org/ns/default/sa/hello")],
                later,
                false,
            )),
        ),
        (
            "a CA certificate as the leaf",
            chained(forged(Some(&issuer), vec![uri(hello_uri)], later, true)),
        ),
        (
            "leaf without its issuer in the chain",
            forged(Some(&issuer), vec![uri(hello_uri)], later, false),
        ),
        (
            "malformed SPIFFE ID",
            chained(forged(
                Some(&issuer),
                vec![uri("spiffe://mesh.local/hello")],
                later,
                false,
            )),
        ),
    ];
    for (name, (chain, key)) in cases {
        let client = holding(&bundle, chain, &key);
        let got = handshake(&client, &hello, &id("hello"));
        assert!(got.is_err(), "{name}: accepted as {got:?}");
    }
    // And a client with no certificate at all.
    let anonymous = TlsIdentity::new(TD, &bundle).unwrap();
    assert!(
        handshake(&anonymous, &hello, &id("hello")).is_err(),
        "no certificate"
    );
}

#[test]
fn a_caller_refuses_a_callee_with_another_identity() {
    let dir = tempfile::tempdir().unwrap();
    let ca = authority(dir.path());
    let web = workload(&ca, "web");
    let evil = workload(&ca, "evil");
    // evil holds a valid certificate, at an address discovery gave for hello.
    let got = handshake(&web, &evil, &id("hello"));
    assert!(got.is_err(), "{got:?}");
    let why = got.unwrap_err();
    assert!(
        why.contains("not spiffe://mesh.local/ns/default/sa/hello"),
        "{why}"
    );
}

#[test]
fn renewal_is_at_seventy_percent_with_jitter() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Authority::open(CaConfig {
        dir: dir.path().join("identity"),
        trust_domain: TD.into(),
        leaf_ttl: Duration::from_secs(30),
        operator_root: None,
    })
    .unwrap();
    let tls = workload(&ca, "hello");
    let p = tls.presented().unwrap();
    let now = SystemTime::now();
    let mid = workload::renew_delay(&p, now, 0.5).as_secs_f64();
    let early = workload::renew_delay(&p, now, 0.0).as_secs_f64();
    let late = workload::renew_delay(&p, now, 1.0).as_secs_f64();
    // 33 s of life (3 s backdated): 70 % is 23.1 s after not_before.
    assert!((19.0..=21.0).contains(&mid), "{mid}");
    assert!(early < mid && mid < late, "{early} {mid} {late}");
    assert!((late - early - 6.6).abs() < 0.5, "±10 % of the lifetime");
}

#[test]
fn an_operators_root_becomes_the_active_one() {
    let dir = tempfile::tempdir().unwrap();
    // The operator's own root (cert-manager's, say), made outside mesh.
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let root = p.self_signed(&key).unwrap();
    let (cert, keyf) = (dir.path().join("ca.crt"), dir.path().join("ca.key"));
    std::fs::write(&cert, root.pem()).unwrap();
    std::fs::write(&keyf, key.serialize_pem()).unwrap();
    let open = |operator_root| {
        Authority::open(CaConfig {
            dir: dir.path().join("identity"),
            trust_domain: TD.into(),
            leaf_ttl: Duration::from_secs(3600),
            operator_root,
        })
    };
    let ca = open(Some((cert.clone(), keyf.clone()))).unwrap();
    let bundle = ca.bundle();
    assert_eq!(bundle.roots.len(), 1);
    assert_eq!(bundle.roots[0].id, ca::root_id(root.der()));
    assert!(bundle.roots[0].active);
    // Leaves chain to it: a holder of only that root accepts them.
    let only = pem::encode_certs([root.der()]);
    let hello = workload(&ca, "hello");
    let web = {
        let key = KeyPair::generate().unwrap();
        let issued = ca.issue(&csr_for(&key, vec![]), &id("web")).unwrap();
        let tls = TlsIdentity::new(TD, &only).unwrap();
        tls.set_cert(issued.chain, key_der(&key)).unwrap();
        tls
    };
    assert_eq!(handshake(&web, &hello, &id("hello")), Ok(id("web")));
    // A key that is not the certificate's is refused with the reason.
    std::fs::write(&keyf, KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let other = tempfile::tempdir().unwrap();
    let err = Authority::open(CaConfig {
        dir: other.path().join("identity"),
        trust_domain: TD.into(),
        leaf_ttl: Duration::from_secs(3600),
        operator_root: Some((cert, keyf)),
    })
    .err()
    .unwrap();
    assert!(err.to_string().contains("does not match"), "{err}");
}
