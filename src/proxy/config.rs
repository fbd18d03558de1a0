//! `mesh-proxy` flags. Every flag also reads `MESH_<FLAG>` from the
//! environment, so a pod spec can configure the sidecar without arguments.

use crate::balance::Algorithm;
use crate::model::parse_duration;
use crate::model::Ipv4Cidr;
use crate::proxy::intercept::parse_mark;
use clap::Args;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Clone, Debug)]
pub struct ProxyArgs {
    /// The control plane's URL.
    #[arg(long, env = "MESH_CONTROL", default_value = "http://127.0.0.1:15010")]
    pub control: String,
    /// Register the local app as an instance of this service.
    #[arg(long, env = "MESH_SERVICE", requires = "app_port")]
    pub service: Option<String>,
    /// The port the local app listens on.
    #[arg(long, env = "MESH_APP_PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub app_port: Option<u16>,
    /// Address other pods reach the app at (default: the first non-loopback IPv4).
    #[arg(long, env = "MESH_ADVERTISE")]
    pub advertise: Option<IpAddr>,
    /// Instance id (default: SERVICE-ADDRESS-PORT).
    #[arg(long, env = "MESH_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// Instance metadata, `key=value`; repeatable.
    #[arg(long = "meta", env = "MESH_META", value_parser = parse_kv, value_delimiter = ',')]
    pub meta: Vec<(String, String)>,
    /// HTTP path to GET for the app's health; without it, a TCP connect.
    #[arg(long, env = "MESH_HEALTH_PATH")]
    pub health_path: Option<String>,
    #[arg(long, env = "MESH_HEALTH_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub health_interval: Duration,
    /// Lease length; heartbeats go out every third of it.
    #[arg(long, env = "MESH_LEASE_TTL", default_value = "10s", value_parser = parse_duration)]
    pub lease_ttl: Duration,
    /// Outbound listener (transparent and explicit mode).
    #[arg(long, env = "MESH_OUTBOUND", default_value = "127.0.0.1:15001")]
    pub outbound: SocketAddr,
    #[arg(long, env = "MESH_ADMIN", default_value = "127.0.0.1:15000")]
    pub admin: SocketAddr,
    /// DNS responder (UDP and TCP).
    #[arg(long, env = "MESH_DNS", default_value = "127.0.0.1:15053")]
    pub dns: SocketAddr,
    #[arg(long, env = "MESH_DOMAIN", default_value = "mesh")]
    pub domain: String,
    /// Where the last registry snapshot is kept.
    #[arg(long, env = "MESH_CACHE_DIR", default_value = "./mesh-cache")]
    pub cache_dir: PathBuf,
    /// How long in-flight requests may finish after SIGTERM.
    #[arg(long, env = "MESH_DRAIN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// SO_MARK on the proxy's own sockets (0: none); must match `init --mark`.
    #[arg(long, env = "MESH_MARK", default_value = "0x4d45", value_parser = parse_mark)]
    pub mark: u32,
    /// The resolver configuration non-mesh DNS names are forwarded by.
    #[arg(long, env = "MESH_RESOLV_CONF", default_value = "/etc/resolv.conf")]
    pub resolv_conf: PathBuf,
    /// VIP range; connections redirected to it are mesh HTTP.
    #[arg(long, env = "MESH_VIP_CIDR", default_value = "127.100.0.0/16")]
    pub vip_cidr: Ipv4Cidr,
    /// Load balancer per service, `SERVICE=p2c-ewma|round-robin`; repeatable.
    #[arg(long = "lb", env = "MESH_LB", value_parser = parse_lb, value_delimiter = ',')]
    pub lb: Vec<(String, Algorithm)>,
    /// Connect timeout to upstream endpoints.
    #[arg(long, env = "MESH_CONNECT_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Runtime worker threads (default: one per core).
    #[arg(long, env = "MESH_WORKERS", value_parser = clap::value_parser!(u16).range(1..))]
    pub workers: Option<u16>,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not key=value")),
    }
}

fn parse_lb(s: &str) -> Result<(String, Algorithm), String> {
    let (svc, alg) = parse_kv(s)?;
    Ok((svc, alg.parse()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers() {
        assert_eq!(parse_kv("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(parse_kv("=x").is_err());
        assert_eq!(
            parse_lb("hello=round-robin"),
            Ok(("hello".into(), Algorithm::RoundRobin))
        );
        assert!(parse_lb("hello=magic").is_err());
    }
}
