//! The destination a redirected connection was going to before iptables
//! sent it to us (SO_ORIGINAL_DST, through nix: no unsafe here).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use tokio::net::TcpStream;

/// `None` when the connection was not redirected or conntrack is absent.
pub fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    let sa = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::OriginalDst).ok()?;
    let ip = Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr));
    let port = u16::from_be(sa.sin_port);
    Some(SocketAddr::V4(SocketAddrV4::new(ip, port)))
}
