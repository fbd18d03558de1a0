//! A fake upstream resolver for the forwarding tests: a second hickory server
//! on 127.0.0.1, authoritative for `test.`.

use super::super::bind_pair;
use super::WAIT;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Metadata, ResponseCode};
use hickory_server::proto::rr::rdata::{A, SOA};
use hickory_server::proto::rr::{Name, RData, Record};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;
use std::net::{Ipv4Addr, SocketAddr};
use tokio::task::JoinHandle;

/// Authoritative for `test.`: `example.test A 192.0.2.1`, NXDOMAIN otherwise.
struct Upstream;

impl Upstream {
    async fn answer<R: ResponseHandler>(&self, request: &Request, mut handle: R) -> ResponseInfo {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        let zone = Name::from_ascii("test.").unwrap();
        let mut answers = Vec::new();
        let mut soa = Vec::new();
        let qname = request.queries.queries()[0].name().to_string();
        if qname == "example.test." {
            let name = Name::from_ascii("example.test.").unwrap();
            let a = RData::A(A(Ipv4Addr::new(192, 0, 2, 1)));
            answers.push(Record::from_rdata(name, 60, a));
        } else {
            metadata.response_code = ResponseCode::NXDomain;
            let data = SOA::new(zone.clone(), zone.clone(), 1, 60, 60, 60, 30);
            soa.push(Record::from_rdata(zone, 30, RData::SOA(data)));
        }
        let response = MessageResponseBuilder::from_message_request(request).build(
            metadata,
            answers.iter(),
            std::iter::empty(),
            soa.iter(),
            std::iter::empty(),
        );
        handle.send_response(response).await.unwrap()
    }
}

#[async_trait::async_trait]
impl RequestHandler for Upstream {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        self.answer(request, response_handle).await
    }
}

pub(super) async fn start() -> (SocketAddr, JoinHandle<()>) {
    let (udp, tcp) = bind_pair("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = udp.local_addr().unwrap();
    let mut server = Server::new(Upstream);
    server.register_socket(udp);
    server.register_listener(tcp, WAIT, 8);
    let task = tokio::spawn(async move {
        let _ = server.block_until_done().await;
    });
    (addr, task)
}
