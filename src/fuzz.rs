//! Fuzz targets: one pure, synchronous function per kind of bytes the mesh
//! reads from outside — a connection's first bytes, policy documents, DNS
//! queries, the control API's JSON bodies.
//!
//! Each target hands its input to the real parsers and ignores what they
//! decide: any input is fair, so a target must never panic, and a panic is
//! a bug in the code it calls. `tests/fuzz.rs` drives the targets from the
//! committed corpora (`tests/fuzz/corpus/<target>/`) for a bounded time on
//! stable Rust; a crash it finds becomes a unit test beside the code that
//! crashed.
//!
//! Call them from plain threads, not from inside a tokio runtime: `detect`
//! and `dns` block on a runtime of their own.

use crate::authz::{self, Policies, Principal};
use crate::control::client::LineSplitter;
use crate::identity::{SpiffeId, DEFAULT_NAMESPACE};
use crate::model::identity::{AddRoot, CertifyRequest, TokenRequest, MAX_CSR_BYTES};
use crate::model::proxies::Applied;
use crate::model::{
    self, AuthorizationPolicy, Document, Heartbeat, RegisterRequest, ServicePolicy, WatchEvent,
};
use crate::proxy::dns::{self, MeshHandler, VipLookup};
use crate::proxy::protocol;
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::net::NetError;
use hickory_server::proto::op::{Message, MessageType};
use hickory_server::proto::rr::Record;
use hickory_server::proto::serialize::binary::BinEncoder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateSigningRequestDer;
use serde_json::Value;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, ReadBuf};

/// `detect`'s bound on a silent client; never reached, as the in-memory
/// client below never makes it wait.
const DETECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes per read when the client trickles, so the HTTP/2 preface and a
/// TLS record header arrive split, as slow segments bring them.
const TRICKLE_STEP: usize = 7;
/// How much of the input is trickled: every read re-classifies the whole
/// buffer, so the cost grows with the square of the length.
const TRICKLE_MAX: usize = 2048;
/// A caller with a mesh identity, for authorization decisions.
const WEB: &str = "spiffe://mesh.local/ns/default/sa/web";
/// The trust domain bootstrap tokens are minted in (mesh-control's own).
const TRUST_DOMAIN: &str = "mesh.local";
/// A watch line longer than this is refused, so the fuzzed stream reaches
/// the splitter's limit as well as its lines.
const WATCH_LINE_LIMIT: usize = 4096;
/// Where the watch stream's frames end: anywhere, here every 13 bytes.
const WATCH_FRAME: usize = 13;
/// Where a fuzzed DNS query comes from; hickory wants one, nothing reads it.
const DNS_CLIENT: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 53000));
/// The mesh domain the fuzzed handler answers for (`--domain`'s default).
const MESH_DOMAIN: &str = "mesh";
/// The one service the fuzzed handler knows, so `hello.mesh.` and bare
/// `hello.` get an A record, not only NXDOMAIN and SERVFAIL.
const HELLO_SERVICE: &str = "hello";
/// `hello`'s virtual IP.
const HELLO_VIP: Ipv4Addr = Ipv4Addr::new(127, 100, 0, 7);
/// The largest UDP response to a query without EDNS (RFC 1035 §4.2.1).
const UDP_MAX: u16 = 512;

/// A client that has sent `rest` and then closes, handing over at most
/// `step` bytes per read.
struct Client<'a> {
    rest: &'a [u8],
    step: usize,
}

/// Discovery's routing table, reduced to `hello`.
struct HelloVip;

/// hickory's UDP `ResponseHandle` without the socket: encodes each response
/// as it would and keeps the bytes, for `dns` to decode again.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<Vec<u8>>>>);

/// A connection's first bytes, as protocol detection judges them.
pub fn detect(data: &[u8]) {
    let _ = protocol::classify(data);
    // The ClientHello reader on the input as the first TLS record, and the
    // check of an undeclared port's server greeting on every prefix of the
    // 9 bytes `sort` peeks, as a greeting split across segments arrives.
    let _ = protocol::client_hello(data);
    for n in 0..=data.len().min(9) {
        let _ = protocol::looks_like_h2_settings(&data[..n]);
    }
    // The reading loop too, over an in-memory client, whole and trickled:
    // it reads the rest of a TLS record before the ClientHello in it is
    // read, and consumes the mesh preamble.
    let Some(rt) = runtime() else {
        return;
    };
    let trickled = &data[..data.len().min(TRICKLE_MAX)];
    for (rest, step) in [(data, usize::MAX), (trickled, TRICKLE_STEP)] {
        let mut client = Client { rest, step };
        let _ = rt.block_on(protocol::detect(&mut client, DETECT_TIMEOUT));
    }
}

/// Policy documents: a file `mesh-ctl apply -f` reads (multi-document YAML,
/// here the input as UTF-8, lossily), and the JSON body of `PUT
/// /v1/policies/{service}` or `/v1/authorizations/{service}`.
pub fn policy(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(docs) = model::parse_documents(&text) {
        docs.into_iter().for_each(reapply);
    }
    if let Ok(doc) = serde_json::from_slice::<Value>(data) {
        let _ = ServicePolicy::from_value(&doc);
        if let Ok(p) = AuthorizationPolicy::from_value(&doc) {
            decide(p);
        }
    }
    // The leaf readers on the whole text: a duration, a caller, a request
    // path (normalized only for a service that has a document).
    let _ = model::parse_duration(&text);
    let _ = text.parse::<Principal>();
    let _ = hello().decide("hello", &authz::Request::http(Some(WEB), "GET", &text));
}

/// A DNS message, as the responder's UDP socket receives it.
pub fn dns(data: &[u8]) {
    // Any message hickory decodes, and its encoding decoded again (what
    // the tests and the forwarder do with messages).
    if let Ok(msg) = Message::from_vec(data) {
        if let Ok(again) = msg.to_vec() {
            let _ = Message::from_vec(&again);
        }
    }
    // What the handler is given: the server decodes a request this way and
    // drops responses before any handler sees them.
    let Ok(request) = Request::from_bytes(data.to_vec(), DNS_CLIENT, Protocol::Udp) else {
        return;
    };
    if request.metadata.message_type == MessageType::Response {
        return;
    }
    let (Some(rt), Some(handler)) = (runtime(), mesh_handler()) else {
        return;
    };
    // The responder's handler, called as hickory's server calls it. Its
    // forwarder has no upstreams, so a name that is not ours awaits
    // nothing and gets SERVFAIL.
    let sink = Sink::default();
    let _ = rt.block_on(handler.handle_request::<_, TokioTime>(&request, sink.clone()));
    // Checked here, not in the sink: a panic inside `block_on` would take
    // the shared runtime's core with it.
    for bytes in sink.take() {
        let response = Message::from_vec(&bytes).unwrap_or_else(|error| {
            panic!(
                "dns: the response ({} bytes) does not decode: {error}",
                bytes.len()
            )
        });
        // hickory's server debug-asserts this of every response it sends.
        assert_eq!(
            response.metadata.id, request.metadata.id,
            "dns: the response's id is not the request's"
        );
    }
}

/// The JSON bodies mesh-control's API reads: a registration (walked field
/// by field, every bad field named), the typed bodies beside it, and the
/// watch stream a proxy reads back.
pub fn register(data: &[u8]) {
    if let Ok(doc) = serde_json::from_slice::<Value>(data) {
        if let Ok(req) = RegisterRequest::from_json(&doc) {
            let _ = req.effective_id();
        }
    }
    let _ = serde_json::from_slice::<Heartbeat>(data);
    let _ = serde_json::from_slice::<Applied>(data);
    let _ = serde_json::from_slice::<AddRoot>(data);
    if let Ok(token) = serde_json::from_slice::<TokenRequest>(data) {
        // The identity `POST /v1/identity/tokens` would mint a token for.
        let namespace = token.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
        let _ = SpiffeId::new(TRUST_DOMAIN, namespace, &token.service);
    }
    if let Ok(certify) = serde_json::from_slice::<CertifyRequest>(data) {
        csr(&certify.csr);
    }
    watch_lines(data);
}

/// What `mesh-ctl apply` does next with a document it parsed: sends its
/// JSON, which mesh-control parses again; an authorization then decides
/// calls in the proxies.
fn reapply(doc: Document) {
    match doc {
        Document::Service(p) => {
            if let Ok(v) = serde_json::to_value(&p) {
                let _ = ServicePolicy::from_value(&v);
            }
        }
        Document::Authorization(p) => {
            if let Ok(v) = serde_json::to_value(&p) {
                let _ = AuthorizationPolicy::from_value(&v);
            }
            decide(p);
        }
        Document::Route(r) => {
            // What mesh-control accepts, the gateway can always compile and
            // match against.
            let again = serde_json::to_value(&r)
                .ok()
                .and_then(|v| crate::gateway::Route::from_value(&v).ok());
            assert_eq!(again.as_ref(), Some(&*r), "a route reparses as itself");
            let table = crate::gateway::RouteTable::new([&*r]);
            let _ = table.find(
                "shop.example.com",
                &http::Method::GET,
                "/api/x",
                Some("a=1"),
                &http::HeaderMap::new(),
            );
        }
        Document::Config(c) => {
            // What mesh-control accepts, the sidecar can always render.
            let again = serde_json::to_value(&c)
                .ok()
                .and_then(|v| crate::model::config::ConfigDocument::from_value(&v).ok());
            assert_eq!(
                again.as_ref(),
                Some(&*c),
                "a config document reparses as itself"
            );
            assert!(crate::config::document::unflatten(&c.data).is_ok());
            let version = crate::model::config::ConfigVersion {
                meta: crate::model::config::ConfigMeta {
                    application: c.application.clone(),
                    profile: c.profile.clone(),
                    version: 1,
                    revision: 1,
                    created_at: String::new(),
                    author: String::new(),
                    message: None,
                    hash: String::new(),
                    restores: None,
                },
                data: c.data.clone(),
                files: c.files.clone(),
                secret: c.secret.clone(),
                redacted: false,
            };
            let _ = crate::config::render::render(&version);
        }
    }
}

/// A few calls to `doc`'s service: HTTP and opaque TCP, with and without
/// a caller identity.
fn decide(doc: AuthorizationPolicy) {
    let service = doc.service.clone();
    let policies = Policies::new([doc]);
    for caller in [None, Some(WEB)] {
        let _ = policies.decide(&service, &authz::Request::http(caller, "GET", "/api/x"));
        let _ = policies.decide(&service, &authz::Request::tcp(caller));
    }
}

/// A document for `hello` whose rule has a path prefix, so a request's
/// path is normalized before the rule is read.
fn hello() -> &'static Policies {
    static HELLO: OnceLock<Policies> = OnceLock::new();
    HELLO.get_or_init(|| {
        let doc = serde_json::json!({
            "service": "hello",
            "rules": [{"name": "web-reads", "from": [WEB], "methods": ["GET"], "paths": ["/api/"]}],
        });
        Policies::new(AuthorizationPolicy::from_value(&doc).ok())
    })
}

/// What `POST /v1/identity/certify` reads before the CA signs anything:
/// the PEM, then the CSR inside it (`Authority::issue` parses it so).
fn csr(pem: &str) {
    if pem.len() > MAX_CSR_BYTES {
        return;
    }
    if let Ok(der) = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes()) {
        let _ = rcgen::CertificateSigningRequestParams::from_der(&der);
    }
}

/// A watch stream as a proxy reads it: NDJSON in frames that end anywhere,
/// each line one event.
fn watch_lines(data: &[u8]) {
    let mut lines = LineSplitter::with_limit(WATCH_LINE_LIMIT);
    for frame in data.chunks(WATCH_FRAME) {
        lines.push(frame);
        loop {
            match lines.next_line() {
                Ok(Some(line)) => {
                    let _ = serde_json::from_slice::<WatchEvent>(&line);
                }
                Ok(None) => break,
                // The watch client gives up on the stream here.
                Err(_) => return,
            }
        }
    }
    if let Some(last) = lines.finish() {
        let _ = serde_json::from_slice::<WatchEvent>(&last);
    }
}

/// The DNS responder's handler for `dns`, built once: no sockets, no
/// upstreams, and `hello` as the only service.
fn mesh_handler() -> Option<&'static MeshHandler> {
    static HANDLER: OnceLock<Option<MeshHandler>> = OnceLock::new();
    HANDLER
        .get_or_init(|| dns::offline(MESH_DOMAIN, Arc::new(HelloVip)).ok())
        .as_ref()
}

/// One current-thread runtime for every call, as `detect` reads under
/// tokio's timer and the DNS handler is async. A static, so it is never
/// dropped in a thread's exit.
fn runtime() -> Option<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<Option<tokio::runtime::Runtime>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .ok()
        })
        .as_ref()
}

// === impl Client ===

impl<'a> AsyncRead for Client<'a> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let rest: &'a [u8] = self.rest;
        let n = rest.len().min(self.step).min(buf.remaining());
        let (now, later) = rest.split_at(n);
        buf.put_slice(now);
        self.rest = later;
        // Nothing put in is end of stream: the client closed.
        Poll::Ready(Ok(()))
    }
}

// === impl HelloVip ===

impl VipLookup for HelloVip {
    fn vip(&self, service: &str) -> Option<Ipv4Addr> {
        (service == HELLO_SERVICE).then_some(HELLO_VIP)
    }
}

// === impl Sink ===

impl Sink {
    /// What was sent so far, emptying the sink.
    fn take(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut *self.sent())
    }

    /// The list of sent responses. A panic while it was held leaves it
    /// whole, so the poison is of no matter.
    fn sent(&self) -> MutexGuard<'_, Vec<Vec<u8>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait::async_trait]
impl ResponseHandler for Sink {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        // UDP's bound, as hickory encodes: the payload the response's EDNS
        // advertises, 512 bytes without EDNS; what does not fit is cut and
        // flagged truncated.
        let max = response.edns().map_or(UDP_MAX, |edns| edns.max_payload());
        let mut bytes = Vec::new();
        let info = {
            let mut encoder = BinEncoder::new(&mut bytes);
            encoder.set_max_size(max);
            // A message that cannot be encoded (a question section longer
            // than the bound) is hickory's to answer: it sends a bare
            // SERVFAIL instead. Here the handler sees a failed send.
            response.destructive_emit(&mut encoder)?
        };
        self.sent().push(bytes);
        Ok(info)
    }
}
