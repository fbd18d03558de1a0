//! Decides the answer to one DNS query: a mesh VIP, NODATA, NXDOMAIN, or a
//! forwarded answer, and sends it through hickory's response handle.

use super::forward::{Forwarded, Forwarder};
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::rdata::{A, SOA};
use hickory_server::proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use std::net::Ipv4Addr;
use std::sync::Arc;

/// Where the responder learns which services exist (discovery's routing table).
pub trait VipLookup: Send + Sync + 'static {
    /// The virtual IP of `service` (a lower-case service name), if it exists.
    fn vip(&self, service: &str) -> Option<Ipv4Addr>;
}

/// TTL of a VIP answer: short, so a re-created service's VIP is picked up fast.
pub(super) const VIP_TTL: u32 = 5;
/// Negative-caching TTL (SOA TTL and minimum): how long an app may remember
/// that a mesh name does not exist before asking again.
pub(super) const NEGATIVE_TTL: u32 = 2;
/// UDP payload we advertise in EDNS responses (the DNS flag day 2020 value).
const EDNS_PAYLOAD: u16 = 1232;

/// What a query name means to the mesh.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Target {
    /// A known service (under the domain, or bare): its VIP.
    Service(Ipv4Addr),
    /// The zone apex itself (`mesh.`): exists, holds only the SOA.
    Apex,
    /// Under the mesh domain but not a known service.
    Unknown,
    /// Not ours: ask the upstream resolver.
    Forward,
}

/// Classifies a (lower-case, fully qualified) query name.
pub(super) fn classify(qname: &Name, zone: &Name, names: &dyn VipLookup) -> Target {
    let first_label = || {
        qname
            .iter()
            .next()
            .and_then(|label| std::str::from_utf8(label).ok())
    };
    if qname == zone {
        return Target::Apex;
    }
    if zone.zone_of(qname) {
        // Only `<service>.<domain>.` can exist; deeper names never do.
        if qname.num_labels() != zone.num_labels() + 1 {
            return Target::Unknown;
        }
        return match first_label().and_then(|s| names.vip(s)) {
            Some(vip) => Target::Service(vip),
            None => Target::Unknown,
        };
    }
    if qname.num_labels() == 1 {
        if let Some(vip) = first_label().and_then(|s| names.vip(s)) {
            return Target::Service(vip);
        }
    }
    Target::Forward
}

/// The records and header of one response, owned so it can outlive the decision.
struct Reply {
    /// Response header fields (id, flags, rcode).
    metadata: Metadata,
    /// Answer section.
    answers: Vec<Record>,
    /// Authority section (the SOA of negative answers).
    authorities: Vec<Record>,
}

/// The `RequestHandler` the hickory server calls for every well-formed query.
/// Public (and hidden) only so the fuzz target can run it without sockets,
/// built by [`super::offline`]; [`super::DnsServer`] is what serves it.
pub struct MeshHandler {
    /// Lower-case FQDN of the mesh zone, e.g. `mesh.`.
    zone: Name,
    /// Which services exist and their VIPs (live discovery state).
    names: Arc<dyn VipLookup>,
    /// Upstream resolver for names that are not ours.
    forwarder: Forwarder,
    /// Every query received, answered or forwarded.
    queries: prometheus_client::metrics::counter::Counter,
}

// === impl MeshHandler ===

impl MeshHandler {
    pub(super) fn new(
        zone: Name,
        names: Arc<dyn VipLookup>,
        forwarder: Forwarder,
        queries: prometheus_client::metrics::counter::Counter,
    ) -> Self {
        MeshHandler {
            zone,
            names,
            forwarder,
            queries,
        }
    }

    async fn answer<R: ResponseHandler>(&self, request: &Request, handle: R) -> ResponseInfo {
        self.queries.inc();
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.recursion_available = true;
        let reply = match request.request_info() {
            Err(_) => error_reply(metadata, ResponseCode::FormErr),
            Ok(_) if request.metadata.op_code != OpCode::Query => {
                error_reply(metadata, ResponseCode::NotImp)
            }
            // Mesh names and the forwarder are class IN only (no CHAOS `version.bind`).
            Ok(info) if info.query.query_class() != DNSClass::IN => {
                error_reply(metadata, ResponseCode::NotImp)
            }
            Ok(info) => {
                let original = info.query.original();
                let qname = original.name().to_lowercase();
                match classify(&qname, &self.zone, self.names.as_ref()) {
                    Target::Forward => {
                        self.forwarded(metadata, original.name(), info.query.query_type())
                            .await
                    }
                    target => self.authoritative(metadata, original.name(), original, target),
                }
            }
        };
        send(request, handle, reply).await
    }

    /// Answers a mesh name from discovery state.
    fn authoritative(
        &self,
        mut metadata: Metadata,
        name: &Name,
        query: &hickory_server::proto::op::Query,
        target: Target,
    ) -> Reply {
        metadata.authoritative = true;
        let qtype = query.query_type();
        let mut reply = Reply {
            metadata,
            answers: Vec::new(),
            authorities: Vec::new(),
        };
        match target {
            Target::Service(vip) if qtype == RecordType::A => {
                // Echo the query's spelling: some stubs compare owner names byte-wise.
                let rdata = RData::A(A(vip));
                reply
                    .answers
                    .push(Record::from_rdata(name.clone(), VIP_TTL, rdata));
            }
            Target::Apex if qtype == RecordType::SOA => reply.answers.push(self.soa()),
            Target::Unknown => {
                reply.metadata.response_code = ResponseCode::NXDomain;
                reply.authorities.push(self.soa());
            }
            // NODATA: the name exists, this type does not. The SOA bounds negative caching.
            _ => reply.authorities.push(self.soa()),
        }
        reply
    }

    async fn forwarded(&self, mut metadata: Metadata, name: &Name, qtype: RecordType) -> Reply {
        match self.forwarder.forward(name.clone(), qtype).await {
            Forwarded::Records {
                answers,
                authorities,
            } => Reply {
                metadata,
                answers,
                authorities,
            },
            Forwarded::Negative { code, soa } => {
                metadata.response_code = code;
                Reply {
                    metadata,
                    answers: Vec::new(),
                    authorities: soa,
                }
            }
            Forwarded::Failed => error_reply(metadata, ResponseCode::ServFail),
        }
    }

    /// The zone's SOA record, carrying the short negative TTL.
    fn soa(&self) -> Record {
        let host = |label: &str| {
            Name::from_ascii(label)
                .and_then(|n| n.append_domain(&self.zone))
                .unwrap_or_else(|_| self.zone.clone())
        };
        let soa = SOA::new(host("ns"), host("hostmaster"), 1, 60, 10, 60, NEGATIVE_TTL);
        Record::from_rdata(self.zone.clone(), NEGATIVE_TTL, RData::SOA(soa))
    }
}

fn error_reply(mut metadata: Metadata, code: ResponseCode) -> Reply {
    metadata.response_code = code;
    Reply {
        metadata,
        answers: Vec::new(),
        authorities: Vec::new(),
    }
}

/// Encodes `reply` for `request` (echoing its question and EDNS) and sends it.
async fn send<R: ResponseHandler>(request: &Request, mut handle: R, reply: Reply) -> ResponseInfo {
    let edns = request.edns.as_ref().map(|req| {
        let mut edns = Edns::new();
        edns.set_max_payload(req.max_payload().clamp(512, EDNS_PAYLOAD));
        edns.set_version(0);
        edns
    });
    let mut builder = MessageResponseBuilder::new(&request.queries, None);
    if let Some(edns) = &edns {
        builder.edns(edns);
    }
    let metadata = reply.metadata;
    let response = builder.build(
        metadata,
        reply.answers.iter(),
        reply.authorities.iter(),
        std::iter::empty(),
        std::iter::empty(),
    );
    match handle.send_response(response).await {
        Ok(info) => info,
        Err(error) => {
            tracing::debug!(%error, "failed to send dns response");
            let mut failed = metadata;
            failed.response_code = ResponseCode::ServFail;
            ResponseInfo::from(Header {
                metadata: failed,
                counts: HeaderCounts::default(),
            })
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for MeshHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        self.answer(request, response_handle).await
    }
}
