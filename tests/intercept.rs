//! `mesh-proxy init` against real iptables, inside a network namespace this
//! test creates (and deletes, also on failure). Needs root, iptables, ip,
//! python3 and curl; skips otherwise.
//!
//! Proves: install is idempotent, the redirects really redirect (TCP to a VIP
//! lands on the outbound port, DNS to a loopback resolver lands on the DNS
//! port, TCP from another pod to an app port lands on the inbound port with
//! its original destination intact), marked sockets are exempt, and remove
//! leaves nothing behind.

// Test code: real processes on the wall clock, and unwrap() as assertion.
#![allow(clippy::disallowed_types, clippy::unwrap_used)]

#[allow(dead_code)] // each test binary uses a different part of the harness
mod support;

use clap::{Args, Command as Cli, FromArgMatches};
use mesh::proxy::intercept::{inbound_rules, install, remove, rules, InitArgs};
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Outbound and DNS "listeners": a TCP server on 127.0.0.1:15001 answering HTTP
/// with `redirected`, and a UDP server on 127.0.0.1:15053 answering `dns-redirected`.
/// Both stop by themselves after 30 s in case the test cannot kill them.
const LISTENERS: &str = r#"
import socket, threading, time
end = time.time() + 30
def udp():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", 15053))
    while time.time() < end:
        u.settimeout(max(0.1, end - time.time()))
        try:
            _, peer = u.recvfrom(2048)
        except OSError:
            return
        u.sendto(b"dns-redirected", peer)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 15001))
s.listen(16)
threading.Thread(target=udp, daemon=True).start()
print("ready", flush=True)
while time.time() < end:
    s.settimeout(max(0.1, end - time.time()))
    try:
        c, _ = s.accept()
    except OSError:
        break
    c.settimeout(2)
    try:
        c.recv(65536)
    except OSError:
        pass
    c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\nredirected")
    c.close()
"#;

/// Sends one datagram to 127.0.0.11:53 (a Docker-style loopback resolver) and prints the reply.
const DNS_CLIENT: &str = r#"
import socket
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(2)
u.sendto(b"query", ("127.0.0.11", 53))
print(u.recvfrom(2048)[0].decode())
"#;

/// Connects to a VIP from a socket carrying the proxy's mark: must not be redirected.
const MARKED_CLIENT: &str = r#"
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_MARK", 36), 0x4d45)
s.settimeout(2)
try:
    s.connect(("127.100.0.1", 80))
    print("connected")
except ConnectionRefusedError:
    print("refused")
"#;

/// Deletes the namespace and kills the helpers this test started, even on panic.
struct Netns {
    name: String,
    children: Vec<Child>,
}

impl Netns {
    fn create() -> Netns {
        let name = format!("mesh-it-{}", std::process::id());
        // A leftover from a crashed earlier run with the same pid would make `add` fail.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run("ip", &["netns", "add", &name]);
        let ns = Netns {
            name,
            children: Vec::new(),
        };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Runs a command inside the namespace; returns stdout, panics on failure.
    fn exec(&self, argv: &[&str]) -> String {
        let mut full = vec!["netns", "exec", &self.name];
        full.extend_from_slice(argv);
        run("ip", &full)
    }

    fn nat_rules(&self) -> String {
        self.exec(&["iptables", "-w", "-t", "nat", "-S"])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn default_args(netns: &str) -> InitArgs {
    let cmd = InitArgs::augment_args(Cli::new("init").no_binary_name(true));
    let matches = cmd.try_get_matches_from(Vec::<String>::new()).unwrap();
    let mut args = InitArgs::from_arg_matches(&matches).unwrap();
    args.netns = Some(netns.to_string());
    args
}

fn install_redirect_remove_in_a_namespace() {
    let mut ns = Netns::create();
    let args = default_args(&ns.name);

    install(&args).unwrap();
    let first = ns.nat_rules();
    install(&args).unwrap();
    let second = ns.nat_rules();
    assert_eq!(first, second, "install is idempotent");
    let jumps = second
        .lines()
        .filter(|l| *l == "-A OUTPUT -j MESH_OUTPUT")
        .count();
    assert_eq!(jumps, 1, "{second}");
    let ours = second
        .lines()
        .filter(|l| l.starts_with("-A MESH_OUTPUT "))
        .count();
    assert_eq!(ours, rules(&args).unwrap().len(), "{second}");

    // Listeners on the outbound and DNS ports, inside the namespace.
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.name, "python3", "-c", LISTENERS])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    ns.children.push(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let ready = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(ready.trim(), "ready");

    // A plain client calling a VIP is redirected to the outbound port.
    let body = ns.exec(&["curl", "-s", "--max-time", "5", "http://127.100.0.1:80/"]);
    assert_eq!(body, "redirected");
    let body = ns.exec(&["curl", "-s", "--max-time", "5", "http://127.100.3.9:8080/x"]);
    assert_eq!(body, "redirected");
    // DNS to a loopback resolver is redirected to the DNS port.
    let reply = ns.exec(&["python3", "-c", DNS_CLIENT]);
    assert_eq!(reply.trim(), "dns-redirected");
    // The proxy's own (marked) sockets are exempt: nothing listens on the VIP itself.
    let marked = ns.exec(&["python3", "-c", MARKED_CLIENT]);
    assert_eq!(marked.trim(), "refused");

    remove(&args).unwrap();
    let after = ns.nat_rules();
    assert!(!after.contains("MESH"), "{after}");
    remove(&args).unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name, "curl", "-s", "--max-time", "5"])
        .arg("http://127.100.0.1:80/")
        .output()
        .unwrap();
    assert!(!out.status.success(), "no redirect after remove");
}

/// Runs `f` on a thread that has entered the named network namespace;
/// sockets it opens stay in that namespace wherever they are used later.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("netns thread panicked")
}

/// A TCP connect from inside `ns` (3 s timeout).
fn connect_from(ns: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    in_netns(ns, move || {
        TcpStream::connect_timeout(&to, Duration::from_secs(3))
    })
}

fn original_dst(stream: &TcpStream) -> SocketAddr {
    let sa = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::OriginalDst)
        .expect("SO_ORIGINAL_DST on a redirected connection");
    SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
        u16::from_be(sa.sin_port),
    ))
}

/// Asserts `listener` has no connection waiting.
fn nothing_accepted(listener: &TcpListener) {
    match listener.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("expected no connection on the inbound port, got {other:?}"),
    }
}

fn inbound_redirect_from_another_pod() {
    let net = support::Net::new("mi");
    let pod = net.pod("app");
    let caller = net.pod("caller");
    let mut args = default_args(pod.ns());
    args.app_ports = vec![8000, 8443];
    args.inbound_port = 15006;
    let nat = || pod.run_ok("iptables", &["-w", "-t", "nat", "-S"]);

    install(&args).unwrap();
    let first = nat();
    install(&args).unwrap();
    assert_eq!(first, nat(), "install is idempotent");
    let jumps = first
        .lines()
        .filter(|l| *l == "-A PREROUTING -p tcp -j MESH_INBOUND")
        .count();
    assert_eq!(jumps, 1, "{first}");
    let ours: Vec<&str> = first
        .lines()
        .filter(|l| l.starts_with("-A MESH_INBOUND "))
        .collect();
    assert_eq!(ours.len(), inbound_rules(&args).unwrap().len(), "{first}");
    assert!(
        ours[0].contains("--dport 8000") && ours[0].ends_with("-j REDIRECT --to-ports 15006"),
        "{first}"
    );

    // The inbound listener, inside the pod; nothing listens on the app ports.
    let listener = in_netns(pod.ns(), || {
        TcpListener::bind("0.0.0.0:15006").expect("bind")
    });
    listener.set_nonblocking(true).unwrap();

    for port in [8000, 8443] {
        let target = SocketAddr::new(pod.ip().into(), port);
        let mut conn = connect_from(caller.ns(), target)
            .unwrap_or_else(|e| panic!("connect to {target} through the redirect: {e}"));
        let (mut accepted, peer) =
            support::wait_for("the redirected connection", support::secs(5), || {
                listener.accept().ok()
            });
        assert_eq!(original_dst(&accepted), target);
        assert_eq!(peer.ip(), caller.ip(), "the caller's address is kept");
        conn.write_all(b"ping").unwrap();
        accepted.set_nonblocking(false).unwrap();
        accepted
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        let mut buf = [0u8; 4];
        accepted.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
    }
    // Other ports, and the pod's own loopback calls to its app, are not redirected.
    let other = SocketAddr::new(pod.ip().into(), 9000);
    let err = connect_from(caller.ns(), other).expect_err("port 9000 is not an app port");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    let own = SocketAddr::from(([127, 0, 0, 1], 8000));
    let err = connect_from(pod.ns(), own).expect_err("loopback is not redirected");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    nothing_accepted(&listener);

    // Installing again without app ports drops the inbound chain.
    let mut outbound_only = args.clone();
    outbound_only.app_ports.clear();
    install(&outbound_only).unwrap();
    let rules_now = nat();
    assert!(!rules_now.contains("MESH_INBOUND"), "{rules_now}");
    assert!(rules_now.contains("MESH_OUTPUT"), "{rules_now}");

    install(&args).unwrap();
    remove(&args).unwrap();
    let after = nat();
    assert!(!after.contains("MESH"), "{after}");
    let target = SocketAddr::new(pod.ip().into(), 8000);
    let err = connect_from(caller.ns(), target).expect_err("no redirect after remove");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    nothing_accepted(&listener);
}

fn main() -> std::process::ExitCode {
    use support::stories::Need::Pods;
    support::stories::run(
        "intercept",
        stories![
            [Pods] => install_redirect_remove_in_a_namespace,
            [Pods] => inbound_redirect_from_another_pod,
        ],
    )
}
