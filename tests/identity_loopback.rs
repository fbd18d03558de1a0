//! Workload identity on loopback (issue 11), with real processes:
//! mesh-control serving TLS, sidecars with certificates from bootstrap
//! tokens, the fault server as the app, curl, openssl s_client and
//! python as clients. No root needed.
//!
//! | story | what it proves |
//! |---|---|
//! | callers_are_known_by_certificate_and_authorization_is_live | the app sees the verified caller; allow 200, other caller 403 `forbidden`, a tunnel reset; a live change within 1 s |
//! | a_stolen_address_and_a_stolen_name_get_nothing | a rogue sidecar at hello's address gets no request; one with a cert for evil cannot register as hello (403); no credential: 401 |
//! | bad_certificates_are_refused_by_the_inbound_and_by_mesh_control | 10 forged or wrong certificates, each a named case, against both |
//! | control_plane_down_proxies_serve_and_restart_from_cache | calls go on; a restarted sidecar routes from its cached certificate and registry |
//! | rotation_under_load_loses_nothing | 30 s leaves renewed under 200 rps for 2 min, and a root rotation, with 0 failed requests |
//!
//! Run: `cargo test --test identity_loopback -- --nocapture`

// Test code: real processes on the wall clock, and unwrap() as assertion.
#![allow(clippy::disallowed_types, clippy::unwrap_used)]

#[allow(dead_code, unused_imports)] // each test binary uses a different part of the harness
mod support;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};
use support::fault::Fault;
use support::loopback::{call, get, App, Loopback, Sidecar};
use support::proc::{command, run_with_timeout};
use support::protocols::metric;
use support::stories::{CURL, OPENSSL, PYTHON3};
use support::{secs, wait_for};

const WEB: &str = "spiffe://mesh.local/ns/default/sa/web";

fn main() -> std::process::ExitCode {
    let stories = stories![
        [CURL, PYTHON3] => callers_are_known_by_certificate_and_authorization_is_live,
        [CURL, PYTHON3] => a_stolen_address_and_a_stolen_name_get_nothing,
        [CURL, PYTHON3, OPENSSL] => bad_certificates_are_refused_by_the_inbound_and_by_mesh_control,
        [CURL, PYTHON3] => control_plane_down_proxies_serve_and_restart_from_cache,
        [CURL, PYTHON3] => rotation_under_load_loses_nothing,
    ];
    support::stories::run("identity_loopback", stories)
}

/// An app behind a sidecar registered as `service`.
fn served(lo: &Loopback, label: &str, service: &str, extra: &[&str]) -> (App, Sidecar) {
    let app = lo.app(&format!("{label}-app"), &Fault::default());
    let port = app.addr.port().to_string();
    let mut args = vec![
        "--service",
        service,
        "--app-port",
        &port,
        "--advertise",
        "127.0.0.1",
        "--instance-id",
        label,
    ];
    args.extend_from_slice(extra);
    let sidecar = lo.sidecar(label, &args);
    (app, sidecar)
}

/// Requests the fault server counted (`/_stats` straight at the app).
fn app_requests(app: &App) -> u64 {
    let stats: Value = serde_json::from_str(&get(app.addr, "/_stats").unwrap()).unwrap();
    stats["requests"].as_u64().unwrap_or(0)
}

/// The headers the app saw, from its `/_echo` answer.
fn echoed(body: &str) -> Vec<(String, String)> {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    v["headers"]
        .as_array()
        .map(|hs| {
            hs.iter()
                .map(|h| {
                    (
                        h[0].as_str().unwrap_or("").to_ascii_lowercase(),
                        h[1].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// | caller | document | call | expected |
/// |---|---|---|---|
/// | web   | none | GET /_echo (with a forged `x-mesh-caller`) | 200; the app sees `x-mesh-caller: spiffe://…/sa/web` |
/// | web   | hello: default deny, web may GET /api/ | GET /api/x | 200 |
/// | web   | same | POST /api/x, GET /_stats | 403 `forbidden`, the app sees nothing |
/// | other | same | GET /api/x | 403 `forbidden` |
/// | web   | same | CONNECT hello:80 (opaque) | reset: an L7 rule never grants TCP |
/// | plain curl at hello's inbound | `mode: permissive`, then `mode: strict` | GET /_stats | 200, then 403 |
/// | other | other allowed too, applied live | GET /api/x | 200 within 1 s |
fn callers_are_known_by_certificate_and_authorization_is_live() {
    let lo = Loopback::secure("idauthz");
    let (app, hello) = served(&lo, "hello-1", "hello", &[]);
    let web = lo.sidecar("web", &[]);
    let other = lo.sidecar("other", &[]);
    web.wait_ready_endpoints("hello", 1);
    other.wait_ready_endpoints("hello", 1);

    let r = call(&web, "http://hello/_echo", &["-H", "x-mesh-caller: forged"]);
    assert_eq!(r.status, 200, "{r:?}");
    let seen = echoed(&r.body);
    let caller: Vec<&str> = seen
        .iter()
        .filter(|(k, _)| k == "x-mesh-caller")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(caller, [WEB], "the app is told the verified caller only");
    let labels = [("caller", "web"), ("class", "2xx")];
    assert_eq!(
        metric(&hello.metrics(), "mesh_inbound_requests_total", &labels),
        Some(1.0)
    );
    let state = hello.state();
    assert_eq!(
        state["identity"]["identity"], "spiffe://mesh.local/ns/default/sa/hello",
        "{state}"
    );

    lo.apply(&format!(
        "kind: AuthorizationPolicy\nservice: hello\ndefault: deny\nrules:\n  - name: web-reads\n    from: [\"{WEB}\"]\n    methods: [GET]\n    paths: [/api/]\n"
    ));
    let before = app_requests(&app);
    let denied = [
        (&web, "GET", "http://hello/_stats"),
        (&web, "POST", "http://hello/api/x"),
        (&other, "GET", "http://hello/api/x"),
    ];
    // The policy reaches hello's sidecar within the propagation bound.
    wait_for("the policy to deny other", secs(5), || {
        (call(&other, "http://hello/api/x", &[]).status == 403).then_some(())
    });
    for (who, method, url) in denied {
        let r = call(who, url, &["-X", method]);
        assert_eq!(r.status, 403, "{method} {url}: {r:?}");
        assert_eq!(r.header("x-mesh-error"), Some("forbidden"), "{r:?}");
    }
    let r = call(&web, "http://hello/api/x", &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        app_requests(&app),
        before + 1,
        "denied requests never reached the app"
    );
    let denied = metric(
        &hello.metrics(),
        "mesh_inbound_denied_total",
        &[("caller", "other"), ("rule", "default")],
    );
    assert!(denied >= Some(1.0), "{denied:?}");

    // Opaque bytes through a CONNECT tunnel: no method or path to match.
    let proxy = format!("http://{}", web.outbound);
    let out = run_with_timeout(
        command(
            "curl",
            &[
                "-s",
                "-p",
                "-x",
                &proxy,
                "--max-time",
                "5",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "http://hello/api/x",
            ],
            &[],
        ),
        secs(10),
    );
    assert_ne!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "200",
        "a tunnel passed an L7-only policy: {out:?}"
    );

    // A plaintext client straight at hello's inbound (outside the mesh):
    // let in while the mode is permissive, refused once it is strict.
    let plain = format!("http://{}/_stats", hello.inbound.unwrap());
    let direct = |url: &str| {
        let out = run_with_timeout(
            command(
                "curl",
                &[
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--max-time",
                    "5",
                    url,
                ],
                &[],
            ),
            secs(10),
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    lo.apply("kind: AuthorizationPolicy\nservice: hello\nmode: permissive\n");
    wait_for("permissive to let a plaintext client in", secs(5), || {
        (direct(&plain) == "200").then_some(())
    });
    lo.apply("kind: AuthorizationPolicy\nservice: hello\nmode: strict\n");
    wait_for("strict to refuse a plaintext client", secs(5), || {
        (direct(&plain) == "403").then_some(())
    });

    lo.apply(&format!(
        "kind: AuthorizationPolicy\nservice: hello\ndefault: deny\nrules:\n  - name: readers\n    from: [\"{WEB}\", \"spiffe://mesh.local/ns/default/sa/other\"]\n    methods: [GET]\n"
    ));
    let applied = Instant::now();
    wait_for("the new policy to let other in", secs(1), || {
        (call(&other, "http://hello/api/x", &[]).status == 200).then_some(())
    });
    println!(
        "policy change to effect on a running proxy: {} ms",
        applied.elapsed().as_millis()
    );
}

/// | who | what | expected |
/// |---|---|---|
/// | anyone, no credential | POST a registration | 401 |
/// | evil's sidecar (cert for evil) | registers as hello | 403, not listed |
/// | evil's sidecar | takes hello-1's inbound address after hello-1 died | web's calls to hello never reach evil's app |
fn a_stolen_address_and_a_stolen_name_get_nothing() {
    let lo = Loopback::secure("idrogue");
    let url = format!("{}/v1/services/hello/instances", lo.control_url());
    let bundle = lo.bundle().display().to_string();
    let out = run_with_timeout(
        command(
            "curl",
            &[
                "-s",
                "-o",
                "/dev/stderr",
                "-w",
                "%{http_code}",
                "--cacert",
                &bundle,
                "-X",
                "POST",
                "-H",
                "content-type: application/json",
                "-d",
                r#"{"address":"127.0.0.1","port":1}"#,
                &url,
            ],
            &[],
        ),
        secs(10),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401", "{out:?}");

    let evil_token = lo.token("evil");
    let token = evil_token.display().to_string();
    let (_evil_app, evil) = served(&lo, "evil-as-hello", "hello", &["--token-file", &token]);
    wait_for("evil's registration to be refused", secs(10), || {
        let st = evil.state();
        let err = st["local"]["last_error"].as_str().unwrap_or("").to_string();
        err.contains("403").then_some(())
    });
    let listed = lo.ctl(&["-o", "json", "endpoints", "hello"]);
    assert!(
        !String::from_utf8_lossy(&listed.stdout).contains("evil-as-hello"),
        "{listed:?}"
    );
    drop(evil);

    let (hello_app, hello) = served(&lo, "hello-1", "hello", &["--lease-ttl", "60s"]);
    let web = lo.sidecar("web", &[]);
    web.wait_ready_endpoints("hello", 1);
    assert_eq!(call(&web, "http://hello/_stats", &[]).status, 200);
    let inbound = hello.inbound.unwrap().to_string();
    hello.proc.kill(); // no deregistration: its lease outlives it
    hello.proc.wait_exit(secs(10));
    let (rogue_app, _rogue) = served(&lo, "rogue", "evil", &["--inbound", &inbound]);
    let mut answers = Vec::new();
    for _ in 0..5 {
        answers.push(call(&web, "http://hello/_echo", &[]).status);
    }
    assert!(answers.iter().all(|s| *s != 200), "{answers:?}");
    assert_eq!(app_requests(&rogue_app), 0, "the rogue app was reached");
    let _ = hello_app;
}

/// A leaf made by hand, for what the CA would never issue.
struct Forged<'a> {
    issuer: Option<&'a Issuer<'a, KeyPair>>,
    sans: Vec<SanType>,
    not_before: SystemTime,
    not_after: SystemTime,
    ca: bool,
    eku: Vec<ExtendedKeyUsagePurpose>,
    /// Put the issuer's certificate after the leaf.
    chain: Option<String>,
}

impl Forged<'_> {
    fn write(self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        p.distinguished_name = dn;
        p.subject_alt_names = self.sans;
        p.not_before = self.not_before.into();
        p.not_after = self.not_after.into();
        p.extended_key_usages = self.eku;
        if self.ca {
            p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        }
        let cert = match self.issuer {
            Some(i) => p.signed_by(&key, i).unwrap(),
            None => p.self_signed(&key).unwrap(),
        };
        let slug = name.replace(' ', "-");
        let (c, k) = (
            dir.join(format!("{slug}.crt")),
            dir.join(format!("{slug}.key")),
        );
        let mut pem = cert.pem();
        if let Some(chain) = self.chain {
            // curl sends the whole file; openssl s_client wants it apart.
            std::fs::write(dir.join(format!("{slug}.chain")), &chain).unwrap();
            pem.push_str(&chain);
        }
        std::fs::write(&c, pem).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

/// One HTTP request over mTLS to a sidecar's inbound with openssl
/// s_client (ALPN mesh/1) presenting `cert`; whether the app answered.
fn inbound_answers(inbound: &str, bundle: &str, cert: &Path, key: &Path) -> bool {
    let request = "GET /_stats HTTP/1.1\r\nhost: hello\r\nconnection: close\r\n\r\n";
    let chain = cert.with_extension("chain");
    let chain = match chain.exists() {
        true => format!("-cert_chain {}", chain.display()),
        false => String::new(),
    };
    let script = format!(
        "printf '{}' | timeout 10 openssl s_client -quiet -connect {inbound} -alpn mesh/1 -CAfile {bundle} -cert {} -key {} {chain} 2>/dev/null",
        request.replace('\r', "\\r").replace('\n', "\\n"),
        cert.display(),
        key.display()
    );
    let out = run_with_timeout(command("sh", &["-c", &script], &[]), secs(15));
    String::from_utf8_lossy(&out.stdout).contains("HTTP/1.1 200")
}

/// curl to mesh-control presenting `cert`; the HTTP status (0: no answer).
fn control_status(url: &str, bundle: &str, cert: &Path, key: &Path) -> String {
    let out = run_with_timeout(
        command(
            "curl",
            &[
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "5",
                "--cacert",
                bundle,
                "--cert",
                &cert.display().to_string(),
                "--key",
                &key.display().to_string(),
                url,
            ],
            &[],
        ),
        secs(10),
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Each case a certificate presented by openssl s_client to hello's
/// inbound and by curl to mesh-control; only the well-formed leaf from
/// the mesh's CA (the control) gets an answer.
fn bad_certificates_are_refused_by_the_inbound_and_by_mesh_control() {
    let lo = Loopback::secure("idcerts");
    let (_app, hello) = served(&lo, "hello-1", "hello", &[]);
    let inbound = hello.inbound.unwrap().to_string();
    let bundle = lo.bundle().display().to_string();
    let idir = lo.dir().join("control-data/identity");
    let issuer_pem = std::fs::read_to_string(idir.join("issuer.crt")).unwrap();
    let issuer_key =
        KeyPair::from_pem(&std::fs::read_to_string(idir.join("issuer.key")).unwrap()).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&issuer_pem, issuer_key).unwrap();
    let other_params = {
        let mut p = CertificateParams::default();
        p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p
    };
    let stranger = Issuer::new(other_params, KeyPair::generate().unwrap());
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let both = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let base = |issuer, sans| Forged {
        issuer,
        sans,
        not_before: now - hour,
        not_after: now + hour,
        ca: false,
        eku: both.clone(),
        chain: Some(issuer_pem.clone()),
    };
    let web = || vec![uri(WEB)];
    let dir = lo.dir().join("forged");
    std::fs::create_dir_all(&dir).unwrap();

    let good = base(Some(&issuer), web()).write(&dir, "good");
    assert!(
        inbound_answers(&inbound, &bundle, &good.0, &good.1),
        "the control case failed: the harness is broken"
    );
    let control_url = format!("{}/v1/services", lo.control_url());
    assert_eq!(
        control_status(&control_url, &bundle, &good.0, &good.1),
        "200"
    );

    #[rustfmt::skip]
    let cases: Vec<(&str, Forged)> = vec![
        ("self-signed with hello's SPIFFE ID", Forged { issuer: None, chain: None, ..base(None, vec![uri("spiffe://mesh.local/ns/default/sa/hello")]) }),
        ("expired leaf from the mesh CA", Forged { not_before: now - 3 * hour, not_after: now - hour, ..base(Some(&issuer), web()) }),
        ("not yet valid leaf", Forged { not_before: now + hour, not_after: now + 2 * hour, ..base(Some(&issuer), web()) }),
        ("leaf from another CA", Forged { chain: None, ..base(Some(&stranger), web()) }),
        ("leaf with no SPIFFE SAN", base(Some(&issuer), vec![SanType::DnsName("web".try_into().unwrap())])),
        ("leaf with two SPIFFE SANs", base(Some(&issuer), vec![uri(WEB), uri("spiffe://mesh.local/ns/default/sa/hello")])),
        ("leaf of another trust domain", base(Some(&issuer), vec![uri("spiffe://evil.org/ns/default/sa/web")])),
        ("a CA certificate as the leaf", Forged { ca: true, ..base(Some(&issuer), web()) }),
        ("server-only key usage", Forged { eku: vec![ExtendedKeyUsagePurpose::ServerAuth], ..base(Some(&issuer), web()) }),
        ("malformed SPIFFE ID", base(Some(&issuer), vec![uri("spiffe://mesh.local/web")])),
    ];
    let mut failures = Vec::new();
    for (name, forged) in cases {
        let (cert, key) = forged.write(&dir, name);
        if inbound_answers(&inbound, &bundle, &cert, &key) {
            failures.push(format!("{name}: the inbound served it"));
        }
        let status = control_status(&control_url, &bundle, &cert, &key);
        if status == "200" {
            failures.push(format!("{name}: mesh-control answered 200"));
        }
        println!("{name}: refused (mesh-control: {status})");
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// | step | expected |
/// |---|---|
/// | mesh-control stopped | web → hello still 200 |
/// | web's sidecar restarted (same cache: key, certificate, registry) | ready and routing again, control still down |
/// | mesh-control back | still 200 |
fn control_plane_down_proxies_serve_and_restart_from_cache() {
    let mut lo = Loopback::secure("iddown");
    let (_app, _hello) = served(&lo, "hello-1", "hello", &["--lease-ttl", "60s"]);
    let web = lo.sidecar("web", &[]);
    web.wait_ready_endpoints("hello", 1);
    assert_eq!(call(&web, "http://hello/_stats", &[]).status, 200);
    lo.stop_control();
    assert_eq!(call(&web, "http://hello/_stats", &[]).status, 200);
    web.proc.term();
    web.proc.wait_exit(secs(15));
    let web = lo.sidecar("web", &[]);
    let r = call(&web, "http://hello/_stats", &[]);
    assert_eq!(r.status, 200, "restarted from its cache: {r:?}");
    lo.start_control(&[]);
    wait_for("the watch to come back", secs(15), || {
        (web.state()["control_connected"] == true).then_some(())
    });
    assert_eq!(call(&web, "http://hello/_stats", &[]).status, 200);
}

/// Every proxy's identity state.
fn issued_under(s: &Sidecar) -> Option<String> {
    s.state()["identity"]["issued_under"]
        .as_str()
        .map(str::to_string)
}

/// 200 requests a second for 2 minutes from web to two hello instances,
/// with 30 s leaves (about four renewals each); in the middle, a second
/// root is added, activated (everyone renews onto it) and the first
/// removed. Not one request fails.
fn rotation_under_load_loses_nothing() {
    let mut lo = Loopback::secure("idrotate");
    lo.stop_control();
    lo.start_control(&["--cert-ttl", "30s"]);
    let (_a, hello1) = served(&lo, "hello-1", "hello", &[]);
    let (_b, hello2) = served(&lo, "hello-2", "hello", &[]);
    let web = lo.sidecar("web", &[]);
    web.wait_ready_endpoints("hello", 2);
    let proxies = [&hello1, &hello2, &web];
    let renewals = |p: &Sidecar| {
        std::fs::read_to_string(p.proc.log_path())
            .unwrap_or_default()
            .matches("certificate issued")
            .count()
    };

    let old_root = issued_under(&web).expect("web has a certificate");

    let load = std::thread::spawn({
        let proxy = web.outbound.to_string();
        move || {
            // 20 threads, 100 ms apart: 200 rps, a new connection each.
            let args = [
                support::fault::LOAD,
                "--url",
                "http://hello/_stats",
                "--proxy",
                &proxy,
                "--requests",
                "30000",
                "--concurrency",
                "20",
                "--duration",
                "120",
                "--interval-ms",
                "100",
                "--timeout",
                "5",
            ];
            run_with_timeout(command("python3", &args, &[]), secs(180))
        }
    });
    // Renewals under load first: every proxy on its second certificate.
    wait_for("a renewal of every proxy under load", secs(60), || {
        proxies.iter().all(|p| renewals(p) >= 2).then_some(())
    });
    let added = lo.ctl(&["-o", "json", "identity", "roots", "add"]);
    assert!(added.status.success(), "{added:?}");
    let new_root: Value = serde_json::from_slice(&added.stdout).unwrap();
    let new_root = new_root["id"].as_str().unwrap().to_string();
    wait_for("every proxy to trust both roots", secs(5), || {
        proxies
            .iter()
            .all(|p| {
                p.state()["identity"]["roots"]
                    .as_array()
                    .map_or(0, Vec::len)
                    == 2
            })
            .then_some(())
    });
    let activated = lo.ctl(&["identity", "roots", "activate", &new_root]);
    assert!(activated.status.success(), "{activated:?}");
    wait_for("every proxy to renew onto the new root", secs(10), || {
        proxies
            .iter()
            .all(|p| issued_under(p).as_deref() == Some(new_root.as_str()))
            .then_some(())
    });
    let removed = lo.ctl(&["identity", "roots", "remove", &old_root]);
    assert!(removed.status.success(), "{removed:?}");

    let out = load.join().unwrap();
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("load.py report: {e}: {out:?}"));
    let results = report["results"].as_array().unwrap();
    let failed: Vec<&Value> = results.iter().filter(|r| r["status"] != 200).collect();
    println!(
        "rotation under load: {} requests in {:.0} s, {} failed; certificates issued: hello-1 {}, hello-2 {}, web {}",
        results.len(),
        report["elapsed_ms"].as_f64().unwrap_or(0.0) / 1000.0,
        failed.len(),
        renewals(&hello1),
        renewals(&hello2),
        renewals(&web)
    );
    assert!(
        results.len() > 15_000,
        "the load did not run: {}",
        results.len()
    );
    assert!(
        failed.is_empty(),
        "{} failed, first: {:?}",
        failed.len(),
        failed.first()
    );
    for p in proxies {
        assert!(
            renewals(p) >= 4,
            "{}: {} certificates",
            p.proc.label(),
            renewals(p)
        );
    }
    let bundle = lo.ctl(&["-o", "json", "identity"]);
    let bundle: Value = serde_json::from_slice(&bundle.stdout).unwrap();
    assert_eq!(bundle["roots"].as_array().unwrap().len(), 1);
}
