//! Responder tests over real loopback sockets. The "upstream" resolver is a
//! second in-process hickory server on 127.0.0.1 serving `example.test`.

mod upstream;

use super::forward::parse_nameservers;
use super::handler::{classify, Target, NEGATIVE_TTL, VIP_TTL};
use super::*;
use hickory_server::proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_server::proto::rr::rdata::A;
use hickory_server::proto::rr::{DNSClass, Name, RData, RecordType};
use std::collections::HashMap;
use std::net::Ipv4Addr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(5);
const HELLO_VIP: Ipv4Addr = Ipv4Addr::new(127, 100, 0, 7);

struct StaticNames(HashMap<String, Ipv4Addr>);

impl VipLookup for StaticNames {
    fn vip(&self, service: &str) -> Option<Ipv4Addr> {
        self.0.get(service).copied()
    }
}

fn names() -> Arc<dyn VipLookup> {
    Arc::new(StaticNames(HashMap::from([(
        "hello".to_string(),
        HELLO_VIP,
    )])))
}

/// A running responder; dropping `stop` shuts it down.
struct Running {
    addr: SocketAddr,
    /// The responder's `mesh_dns_queries_total`.
    queries: prometheus_client::metrics::counter::Counter,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<io::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Running {
    async fn shutdown(mut self) {
        drop(self.stop.take());
        let res = tokio::time::timeout(WAIT, &mut self.task).await;
        assert!(matches!(res, Ok(Ok(Ok(())))), "clean shutdown: {res:?}");
    }
}

async fn start(resolv_conf: &str) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("resolv.conf");
    std::fs::write(&path, resolv_conf).unwrap();
    let cfg = DnsConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        domain: "mesh".into(),
        resolv_conf: path,
        mark: Some(crate::net::DEFAULT_MARK),
        queries: Default::default(),
    };
    let queries = cfg.queries.clone();
    let server = DnsServer::bind(cfg, names()).await.unwrap();
    let addr = server.local_addr();
    assert_ne!(addr.port(), 0);
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async move {
        let _ = rx.await;
    }));
    Running {
        addr,
        queries,
        stop: Some(tx),
        task,
        _dir: dir,
    }
}

fn encode_query(name: &str, rtype: RecordType) -> (u16, Vec<u8>) {
    let id = fastrand::u16(..);
    let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    (id, msg.to_vec().unwrap())
}

async fn udp_query_from(
    sock: &UdpSocket,
    to: SocketAddr,
    name: &str,
    rtype: RecordType,
) -> Message {
    let (id, bytes) = encode_query(name, rtype);
    sock.send_to(&bytes, to).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (n, _) = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf))
            .await
            .expect("dns answer within deadline")
            .unwrap();
        let msg = Message::from_vec(&buf[..n]).unwrap();
        if msg.metadata.id == id {
            return msg;
        }
    }
}

async fn udp_query(to: SocketAddr, name: &str, rtype: RecordType) -> Message {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    udp_query_from(&sock, to, name, rtype).await
}

async fn tcp_query(to: SocketAddr, name: &str, rtype: RecordType) -> Message {
    let (id, bytes) = encode_query(name, rtype);
    let mut stream = tokio::net::TcpStream::connect(to).await.unwrap();
    stream
        .write_all(&(bytes.len() as u16).to_be_bytes())
        .await
        .unwrap();
    stream.write_all(&bytes).await.unwrap();
    let read = async {
        let len = stream.read_u16().await.unwrap();
        let mut buf = vec![0u8; usize::from(len)];
        stream.read_exact(&mut buf).await.unwrap();
        buf
    };
    let buf = tokio::time::timeout(WAIT, read).await.expect("tcp answer");
    let msg = Message::from_vec(&buf).unwrap();
    assert_eq!(msg.metadata.id, id);
    msg
}

fn a_records(msg: &Message) -> Vec<(String, Ipv4Addr, u32)> {
    msg.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(A(ip)) => Some((r.name.to_ascii(), *ip, r.ttl)),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn answers_mesh_names_case_insensitively() {
    let dns = start("").await;
    for (name, owner) in [
        ("hello.mesh.", "hello.mesh."),
        ("hello.", "hello."),
        ("HeLLo.MeSh.", "HeLLo.MeSh."),
        ("HELLO.", "HELLO."),
    ] {
        let msg = udp_query(dns.addr, name, RecordType::A).await;
        assert_eq!(msg.metadata.response_code, ResponseCode::NoError, "{name}");
        assert!(msg.metadata.authoritative, "{name}");
        assert_eq!(
            a_records(&msg),
            vec![(owner.to_string(), HELLO_VIP, VIP_TTL)],
            "{name}"
        );
    }
    assert_eq!(dns.queries.get(), 4, "every query counted");
    dns.shutdown().await;
}

#[tokio::test]
async fn other_types_of_mesh_names_are_nodata() {
    let dns = start("").await;
    for name in ["hello.mesh.", "hello."] {
        let msg = udp_query(dns.addr, name, RecordType::AAAA).await;
        assert_eq!(msg.metadata.response_code, ResponseCode::NoError, "{name}");
        assert!(msg.answers.is_empty(), "{name}: {:?}", msg.answers);
    }
    let soa = udp_query(dns.addr, "mesh.", RecordType::SOA).await;
    assert_eq!(soa.answers.len(), 1);
    assert!(matches!(soa.answers[0].data, RData::SOA(_)));
    dns.shutdown().await;
}

#[tokio::test]
async fn unknown_mesh_name_is_nxdomain_with_short_negative_ttl() {
    let dns = start("").await;
    for name in ["nosuch.mesh.", "a.hello.mesh.", "NoSuch.MESH."] {
        let msg = udp_query(dns.addr, name, RecordType::A).await;
        assert_eq!(msg.metadata.response_code, ResponseCode::NXDomain, "{name}");
        assert!(msg.answers.is_empty());
        let [soa] = msg.authorities.as_slice() else {
            panic!("{name}: one SOA expected, got {:?}", msg.authorities);
        };
        let RData::SOA(data) = &soa.data else {
            panic!("not an SOA: {soa:?}");
        };
        assert_eq!(soa.name.to_ascii(), "mesh.");
        assert!((1..=5).contains(&soa.ttl), "ttl {}", soa.ttl);
        assert_eq!(data.minimum, NEGATIVE_TTL);
    }
    dns.shutdown().await;
}

#[tokio::test]
async fn non_in_class_is_not_implemented() {
    let dns = start("").await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut msg = Message::new(7, MessageType::Query, OpCode::Query);
    let mut query = Query::query(Name::from_ascii("hello.mesh.").unwrap(), RecordType::A);
    query.set_query_class(DNSClass::CH);
    msg.add_query(query);
    sock.send_to(&msg.to_vec().unwrap(), dns.addr)
        .await
        .unwrap();
    let mut buf = vec![0u8; 512];
    let (n, _) = tokio::time::timeout(WAIT, sock.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let reply = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(reply.metadata.id, 7);
    assert_eq!(reply.metadata.response_code, ResponseCode::NotImp);
    assert!(reply.answers.is_empty());
    dns.shutdown().await;
}

#[tokio::test]
async fn answers_over_tcp() {
    let dns = start("").await;
    let msg = tcp_query(dns.addr, "hello.mesh.", RecordType::A).await;
    assert_eq!(
        a_records(&msg),
        vec![("hello.mesh.".into(), HELLO_VIP, VIP_TTL)]
    );
    dns.shutdown().await;
}

#[tokio::test]
async fn forwards_other_names_upstream() {
    let (upstream, upstream_task) = upstream::start().await;
    let dns = start(&format!("# test\nnameserver {upstream}\n")).await;

    for tcp in [false, true] {
        let msg = if tcp {
            tcp_query(dns.addr, "example.test.", RecordType::A).await
        } else {
            udp_query(dns.addr, "example.test.", RecordType::A).await
        };
        assert_eq!(msg.metadata.response_code, ResponseCode::NoError);
        assert_eq!(
            a_records(&msg),
            vec![("example.test.".into(), Ipv4Addr::new(192, 0, 2, 1), 60)]
        );
    }
    // Unknown bare names are not ours either; the upstream's NXDOMAIN passes through.
    for name in ["missing.test.", "nosuch."] {
        let msg = udp_query(dns.addr, name, RecordType::A).await;
        assert_eq!(msg.metadata.response_code, ResponseCode::NXDomain, "{name}");
        assert!(msg.answers.is_empty());
        let soa_owners: Vec<String> = msg.authorities.iter().map(|r| r.name.to_ascii()).collect();
        assert_eq!(
            soa_owners,
            vec!["test.".to_string()],
            "{name}: upstream SOA kept"
        );
    }
    dns.shutdown().await;
    upstream_task.abort();
}

#[tokio::test]
async fn forwarding_without_nameservers_is_servfail() {
    let dns = start("search example.org\n").await;
    let msg = udp_query(dns.addr, "example.test.", RecordType::A).await;
    assert_eq!(msg.metadata.response_code, ResponseCode::ServFail);
    // Mesh names still work.
    let msg = udp_query(dns.addr, "hello.mesh.", RecordType::A).await;
    assert_eq!(a_records(&msg).len(), 1);
    dns.shutdown().await;
}

#[tokio::test]
async fn survives_garbage_datagrams() {
    let dns = start("").await;
    let junk = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut buf = vec![0u8; 600];
    for i in 0..1000usize {
        let len = if i < 20 {
            i
        } else {
            fastrand::usize(0..buf.len())
        };
        buf[..len].iter_mut().for_each(|b| *b = fastrand::u8(..));
        junk.send_to(&buf[..len], dns.addr).await.unwrap();
    }
    let msg = udp_query(dns.addr, "hello.mesh.", RecordType::A).await;
    assert_eq!(a_records(&msg).len(), 1);
    assert!(!dns.task.is_finished());
    dns.shutdown().await;
}

#[test]
fn classifies_names() {
    let zone = Name::from_ascii("mesh.").unwrap();
    let names = names();
    let class = |n: &str| classify(&Name::from_ascii(n).unwrap(), &zone, names.as_ref());
    assert_eq!(class("hello.mesh."), Target::Service(HELLO_VIP));
    assert_eq!(class("hello."), Target::Service(HELLO_VIP));
    assert_eq!(class("mesh."), Target::Apex);
    assert_eq!(class("nosuch.mesh."), Target::Unknown);
    assert_eq!(class("x.hello.mesh."), Target::Unknown);
    assert_eq!(class("nosuch."), Target::Forward);
    assert_eq!(class("hello.com."), Target::Forward);
    assert_eq!(class("hello.mesh.com."), Target::Forward);
}

#[test]
fn parses_nameserver_lines() {
    let text = "# c\nsearch a.b\nnameserver 10.0.0.2\nnameserver 127.0.0.1:5353\n\
                nameserver [::1]:54\nnameserver ::2\nnameserver bogus\n  nameserver 1.1.1.1 # x\n";
    let want: Vec<SocketAddr> = [
        "10.0.0.2:53",
        "127.0.0.1:5353",
        "[::1]:54",
        "[::2]:53",
        "1.1.1.1:53",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    assert_eq!(parse_nameservers(text), want);
}

#[test]
fn rejects_empty_domain() {
    assert!(zone_name("").is_err());
    assert!(zone_name(".").is_err());
    assert_eq!(zone_name("Mesh.").unwrap().to_ascii(), "mesh.");
}

#[tokio::test]
async fn forwarder_sockets_carry_the_mark() {
    use hickory_resolver::net::runtime::RuntimeProvider;
    use socket2::SockRef;
    if !nix::unistd::Uid::effective().is_root() {
        println!("skipping: setting SO_MARK needs root");
        return;
    }
    let runtime = super::forward::MarkedRuntime::new(Some(0x4d45));
    let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let udp = runtime.bind_udp(local, local).await.unwrap();
    assert_eq!(SockRef::from(&udp).mark().unwrap(), 0x4d45);

    let listener = TcpListener::bind(local).await.unwrap();
    let tcp = runtime
        .connect_tcp(listener.local_addr().unwrap(), None, Some(WAIT))
        .await
        .unwrap();
    assert_eq!(SockRef::from(&tcp.0).mark().unwrap(), 0x4d45);
}
