//! `mesh-proxy init` flags and their parsers.

pub use crate::model::Ipv4Cidr;

use std::net::SocketAddr;

/// Flags of `mesh-proxy init`. Every flag also reads `MESH_<FLAG>`.
#[derive(clap::Args, Debug, Clone)]
pub struct InitArgs {
    /// Outbound listener of the proxy, `ADDR:PORT` or `PORT`; only the port is used.
    #[arg(long, env = "MESH_OUTBOUND", default_value = "15001", value_parser = parse_port_or_addr)]
    pub outbound: u16,
    /// DNS responder of the proxy, `ADDR:PORT` or `PORT`; only the port is used.
    #[arg(long, env = "MESH_DNS", default_value = "15053", value_parser = parse_port_or_addr)]
    pub dns: u16,
    /// Virtual IPs of mesh services: TCP to them is always redirected, even to loopback.
    #[arg(long, env = "MESH_VIP_CIDR", default_value = "127.100.0.0/16")]
    pub vip_cidr: Ipv4Cidr,
    /// SO_MARK that exempts the proxy's own sockets (hex `0x..` or decimal).
    #[arg(long, env = "MESH_MARK", default_value = "0x4d45", value_parser = parse_mark, conflicts_with = "uid")]
    pub mark: u32,
    /// Exempt the proxy's sockets by owner uid instead of by mark.
    #[arg(long, env = "MESH_UID")]
    pub uid: Option<u32>,
    /// Destination TCP ports never redirected, comma separated (e.g. `22,2379`).
    #[arg(long, env = "MESH_EXCLUDE_PORTS", value_delimiter = ',', value_parser = parse_port)]
    pub exclude_ports: Vec<u16>,
    /// Destination networks never redirected, comma separated (e.g. `10.0.0.0/8`).
    #[arg(long, env = "MESH_EXCLUDE_CIDRS", value_delimiter = ',')]
    pub exclude_cidrs: Vec<Ipv4Cidr>,
    /// App ports whose inbound TCP (from other hosts) is redirected to the
    /// inbound listener, comma separated (e.g. `8000,8443`); without any,
    /// inbound traffic is not intercepted.
    #[arg(long = "app-port", env = "MESH_APP_PORT", value_delimiter = ',', value_parser = parse_port)]
    pub app_ports: Vec<u16>,
    /// Inbound listener of the proxy, `PORT` or `ADDR:PORT`; only the port
    /// is used (`--inbound-port` and `MESH_INBOUND_PORT`: old names).
    #[arg(long = "inbound", visible_alias = "inbound-port", env = "MESH_INBOUND", default_value = "15006", value_parser = parse_port_or_addr)]
    pub inbound_port: u16,
    /// Remove the rules instead of installing them.
    #[arg(long, env = "MESH_REMOVE")]
    pub remove: bool,
    /// A volume the proxy writes config files into (`mesh-proxy run
    /// --config-dir`): made writable for every user (1777, as a
    /// Kubernetes emptyDir is), so the proxy's uid can write it whichever
    /// container first mounted it (podman gives a new volume to that
    /// container's user).
    #[arg(long, env = "MESH_CONFIG_DIR")]
    pub config_dir: Option<std::path::PathBuf>,
    /// The iptables binary to run (e.g. `iptables-legacy`).
    #[arg(long, env = "MESH_IPTABLES", default_value = "iptables")]
    pub iptables: String,
    /// Run iptables inside this named network namespace (`ip netns exec`);
    /// not a flag: for tests and tools that prepare a namespace themselves.
    #[arg(skip)]
    pub netns: Option<String>,
}

/// A TCP/UDP port, 1..=65535.
pub fn parse_port(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("{s:?} is not a port (1-65535)")),
        Ok(port) => Ok(port),
    }
}

/// `PORT` or `ADDR:PORT` (as `--outbound` and `--dns` are given to `mesh-proxy run`).
pub fn parse_port_or_addr(s: &str) -> Result<u16, String> {
    if let Ok(addr) = s.trim().parse::<SocketAddr>() {
        return parse_port(&addr.port().to_string());
    }
    parse_port(s).map_err(|_| format!("{s:?} is neither a port nor ADDR:PORT"))
}

/// A firewall mark in hex (`0x4d45`) or decimal.
pub fn parse_mark(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => t.parse(),
    };
    parsed.map_err(|_| format!("{s:?} is not a mark (hex 0x.. or decimal u32)"))
}
