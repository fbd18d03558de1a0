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
    /// The control plane's URL (`https://` with identity on, `http://` off);
    /// several replicas comma separated, the next one tried when one gives
    /// no answer.
    #[arg(long, env = "MESH_CONTROL", default_value = "https://127.0.0.1:15010")]
    pub control: String,
    /// Workload identity and mTLS between sidecars: `on` (the default) or
    /// `off` (plaintext, nothing authenticated: a trusted network only).
    #[arg(long, env = "MESH_IDENTITY", default_value = "on", value_parser = crate::flags::parse_on_off, action = clap::ArgAction::Set)]
    pub identity: bool,
    /// The SPIFFE trust domain; must match mesh-control's.
    #[arg(long, env = "MESH_TRUST_DOMAIN", default_value = crate::identity::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// The roots to trust (PEM; mesh-control writes
    /// `<data-dir>/identity/bundle.pem`). Later changes are pushed; the
    /// last bundle is kept in `--cache-dir`, which is enough on a restart.
    #[arg(long, env = "MESH_TRUST_BUNDLE")]
    pub trust_bundle: Option<PathBuf>,
    /// A bootstrap token for this proxy's first certificate
    /// (`mesh-ctl token create --service S`): what a Kubernetes Secret
    /// would carry. Not needed once a certificate is in `--cache-dir`.
    #[arg(long, env = "MESH_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// The service this proxy's app is: with `--app-port`, its instance is
    /// registered; without, the proxy only calls (the name then shows in
    /// `mesh-ctl proxies` and, identity off, tells callees who calls).
    #[arg(long, env = "MESH_SERVICE")]
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
    /// How often the local app's health is checked (and reported when it
    /// changes).
    #[arg(long, env = "MESH_HEALTH_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub health_interval: Duration,
    /// Client-side self-preservation: the largest share (percent) of a
    /// service's ready endpoints that removals the control plane did not
    /// mean (expired leases, endpoints a snapshot misses) may take within
    /// 10 s; the rest are refused and held. Deregistrations always apply;
    /// 100 turns the rule off.
    #[arg(long, env = "MESH_MAX_ENDPOINT_REMOVAL", default_value_t = 50, value_name = "PERCENT",
          value_parser = clap::value_parser!(u8).range(0..=100))]
    pub max_endpoint_removal: u8,
    /// How long an endpoint whose removal was refused stays (routed)
    /// before it is removed anyway, unless the control plane lists it
    /// again first.
    #[arg(long, env = "MESH_ENDPOINT_HOLD", default_value = "60s", value_parser = parse_duration)]
    pub endpoint_hold: Duration,
    /// Lease length; heartbeats go out every third of it.
    #[arg(long, env = "MESH_LEASE_TTL", default_value = "10s", value_parser = parse_duration)]
    pub lease_ttl: Duration,
    /// Outbound listener (transparent and explicit mode).
    #[arg(long, env = "MESH_OUTBOUND", default_value = "127.0.0.1:15001")]
    pub outbound: SocketAddr,
    /// Admin listener: /ready, /live, /metrics, /state, POST /shutdown.
    #[arg(long, env = "MESH_ADMIN", default_value = "127.0.0.1:15000")]
    pub admin: SocketAddr,
    /// DNS responder (UDP and TCP).
    #[arg(long, env = "MESH_DNS", default_value = "127.0.0.1:15053")]
    pub dns: SocketAddr,
    /// DNS suffix of mesh names: `orders.mesh` (and the bare `orders`)
    /// resolve to the service's VIP.
    #[arg(long, env = "MESH_DOMAIN", default_value = "mesh")]
    pub domain: String,
    /// Where the last registry snapshot is kept.
    #[arg(long, env = "MESH_CACHE_DIR", default_value = "./mesh-cache")]
    pub cache_dir: PathBuf,
    /// After SIGTERM, bounds each of the two drain waits: for every
    /// watching proxy to apply this instance's removal, then for
    /// in-flight requests to finish.
    #[arg(long, env = "MESH_DRAIN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Stop (as on SIGTERM) once the app has exited: `port` watches
    /// `--app-port`, `process` the pod's shared PID namespace. For Jobs
    /// without native sidecars.
    #[arg(long, env = "MESH_EXIT_WHEN_APP_EXITS", value_enum)]
    pub exit_when_app_exits: Option<crate::proxy::lifecycle::AppWatch>,
    /// SO_MARK on the proxy's own sockets (0: none); must match `init --mark`.
    #[arg(long, env = "MESH_MARK", default_value = "0x4d45", value_parser = parse_mark)]
    pub mark: u32,
    /// The resolver configuration non-mesh DNS names are forwarded by.
    #[arg(long, env = "MESH_RESOLV_CONF", default_value = "/etc/resolv.conf")]
    pub resolv_conf: PathBuf,
    /// VIP range: redirected connections to it are for mesh services
    /// (protocol-detected); others are relayed as they are.
    #[arg(long, env = "MESH_VIP_CIDR", default_value = "127.100.0.0/16", value_parser = Ipv4Cidr::network)]
    pub vip_cidr: Ipv4Cidr,
    /// Load balancer per service, overriding its policy:
    /// `SERVICE=p2c-ewma|round-robin|least-request|random`; repeatable.
    #[arg(long = "lb", env = "MESH_LB", value_parser = parse_lb, value_delimiter = ',')]
    pub lb: Vec<(String, Algorithm)>,
    /// Connect timeout to hosts outside the mesh (explicit mode, CONNECT);
    /// mesh services use their policy's `timeouts.connect`.
    #[arg(long, env = "MESH_CONNECT_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Inbound listener (`ADDR:PORT`, or `PORT` on every address): callers'
    /// proxies and redirected app-port traffic reach the app through it.
    /// Bound only when `--app-port` is set.
    #[arg(long, env = "MESH_INBOUND", default_value = "0.0.0.0:15006", value_parser = parse_listen)]
    pub inbound: SocketAddr,
    /// Concurrent inbound HTTP requests let through to the app; beyond it,
    /// 503 `x-mesh-error: overloaded` at once.
    #[arg(long, env = "MESH_INBOUND_MAX_CONCURRENT", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub inbound_max_concurrent: u32,
    /// How long a new connection to a service may stay silent on both
    /// sides before it is relayed as opaque TCP without detection. Whoever
    /// speaks first decides sooner: client bytes are detected (HTTP/1,
    /// HTTP/2, TLS), a server greeting makes the connection opaque.
    #[arg(long, env = "MESH_DETECT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub detect_timeout: Duration,
    /// What one client may send or hold (`proxy::limits`).
    #[command(flatten)]
    pub limits: crate::proxy::limits::LimitArgs,
    /// Externalized config delivered to the app (`config::delivery`).
    #[command(flatten)]
    pub config: crate::config::ConfigArgs,
    /// Ports never detected, always opaque TCP (`none` for no port).
    #[arg(long, env = "MESH_OPAQUE_PORTS", default_value = "25,587,3306,4444,5432,6379,9300,11211", value_parser = parse_ports)]
    pub opaque_ports: PortList,
    /// Opaque TCP connections (and upgraded ones) idle this long are closed.
    #[arg(long, env = "MESH_TCP_IDLE_TIMEOUT", default_value = "1h", value_parser = parse_duration)]
    pub tcp_idle_timeout: Duration,
    /// A JSON access-log line on stdout per request: `json` or `off`
    /// (default: `off` in a sidecar, where a ServicePolicy's `accessLog:
    /// true` still turns it on for that service; `json` in the gateway).
    #[arg(long, env = "MESH_ACCESS_LOG", value_parser = ["json", "off"])]
    pub access_log: Option<String>,
    /// Export spans over OTLP/HTTP (protobuf) to this collector
    /// (`http://HOST:4318`; spans go to `/v1/traces`). Unset: no spans.
    #[arg(long, env = "MESH_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<http::Uri>,
    /// Share of the traces this proxy starts that are recorded (0 to 1;
    /// a trace that arrives sampled is always recorded). Live: `PUT
    /// /trace-sample` on the admin port.
    #[arg(long, env = "MESH_TRACE_SAMPLE", default_value_t = 0.01, value_parser = parse_ratio)]
    pub trace_sample: f64,
    /// Runtime worker threads (default: one per core).
    #[arg(long, env = "MESH_WORKERS", value_parser = clap::value_parser!(u16).range(1..))]
    pub workers: Option<u16>,
}

/// `ADDR:PORT`, or a bare `PORT` on every IPv4 address.
fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    match s.parse::<u16>() {
        Ok(port) if port > 0 => Ok(SocketAddr::from(([0, 0, 0, 0], port))),
        _ => Err(format!("{s:?} is neither ADDR:PORT nor a port")),
    }
}

/// A comma-separated list of ports, as one flag value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortList(pub Vec<u16>);

fn parse_ports(s: &str) -> Result<PortList, String> {
    let s = s.trim();
    if s.is_empty() || s == "none" {
        return Ok(PortList(Vec::new()));
    }
    s.split(',')
        .map(|p| match p.trim().parse::<u16>() {
            Ok(0) | Err(_) => Err(format!("{p:?} is not a port (1-65535)")),
            Ok(n) => Ok(n),
        })
        .collect::<Result<_, _>>()
        .map(PortList)
}

/// A ratio from 0 to 1.
pub fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?} is not a ratio from 0 to 1")),
    }
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
        assert_eq!(parse_ports("25, 6379"), Ok(PortList(vec![25, 6379])));
        assert_eq!(parse_ports("none"), Ok(PortList(vec![])));
        assert!(parse_ports("25,0").is_err() && parse_ports("x").is_err());
        assert_eq!(parse_listen("15006"), Ok("0.0.0.0:15006".parse().unwrap()));
        assert_eq!(
            parse_listen("127.0.0.1:15106"),
            Ok("127.0.0.1:15106".parse().unwrap())
        );
        assert!(parse_listen("0").is_err() && parse_listen("x:1").is_err());
    }
}
