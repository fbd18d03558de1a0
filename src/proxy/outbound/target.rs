//! Where an outbound request is going: a mesh service, another host (plain
//! forward proxying in explicit mode), or nowhere valid.

use crate::discovery::{Directory, Service};
use crate::proxy::rescue::MeshError;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

/// How the connection reached the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnTarget {
    /// Redirected by iptables to a VIP: the service is fixed by the VIP.
    Vip(Ipv4Addr),
    /// Connected to the proxy directly (explicit `http_proxy` mode, or no
    /// original destination): each request names its target.
    FromRequest,
}

/// The resolved destination of one request.
#[derive(Debug)]
pub enum Route {
    Service(Arc<Service>),
    /// Not a mesh name: pass through to this host and port.
    External {
        host: String,
        port: u16,
    },
}

/// The mesh names a host may take: `name.<domain>` or a bare `name`.
pub struct Names<'a> {
    pub domain_suffix: &'a str,
}

impl Names<'_> {
    /// Resolves a request authority (`host[:port]`) against the registry
    /// (a mesh service's routing state is built on its first use).
    pub fn route(&self, dir: &Directory, authority: &str) -> Result<Route, MeshError> {
        let (host, port) = split_host_port(authority)
            .ok_or_else(|| MeshError::BadRequest(format!("invalid host {authority:?}")))?;
        let host = host.trim_end_matches('.');
        // Names are nearly always lower-case already: no copy then.
        let host: std::borrow::Cow<'_, str> = match host.bytes().any(|b| b.is_ascii_uppercase()) {
            true => host.to_ascii_lowercase().into(),
            false => host.into(),
        };
        if let Ok(ip) = host.parse::<IpAddr>() {
            if let IpAddr::V4(v4) = ip {
                if let Some(s) = dir.service_by_vip(v4) {
                    return Ok(Route::Service(s));
                }
            }
            return Ok(Route::External {
                host: host.into_owned(),
                port: port.unwrap_or(80),
            });
        }
        if let Some(name) = host.strip_suffix(self.domain_suffix) {
            return match (!name.contains('.')).then(|| dir.service(name)).flatten() {
                Some(s) => Ok(Route::Service(s)),
                None => Err(MeshError::UnknownService(name.to_string())),
            };
        }
        if let Some(s) = dir.service(&host) {
            return Ok(Route::Service(s));
        }
        if host.contains('.') || host == "localhost" {
            return Ok(Route::External {
                host: host.into_owned(),
                port: port.unwrap_or(80),
            });
        }
        // A bare name that is not registered: in a mesh, that is a service
        // that does not exist (yet), not a host on the network.
        Err(MeshError::UnknownService(host.into_owned()))
    }
}

/// Splits `host[:port]`, `[v6]:port`; `None` on garbage.
pub fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    if authority.is_empty() {
        return None;
    }
    if let Some(rest) = authority.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        return match after.strip_prefix(':') {
            Some(p) => Some((v6, Some(p.parse().ok()?))),
            None if after.is_empty() => Some((v6, None)),
            None => None,
        };
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !h.contains(':') => Some((h, Some(p.parse().ok()?))),
        Some(_) => None,
        None => Some((authority, None)),
    }
}

/// True when `addr` is one of the proxy's own listeners: sending there would
/// loop. Unspecified listener addresses match any local IP on their port.
pub fn is_own(own: &[SocketAddr], addr: SocketAddr) -> bool {
    own.iter().any(|o| {
        o.port() == addr.port()
            && (o.ip() == addr.ip()
                || o.ip().is_unspecified()
                || addr.ip().is_loopback() && o.ip().is_loopback())
    })
}

/// A host outside the mesh as an address: an IP literal as it is, a name
/// through the system resolver.
pub async fn resolve(host: &str, port: u16) -> Result<SocketAddr, MeshError> {
    if let Ok(ip) = host.parse() {
        return Ok(SocketAddr::new(ip, port));
    }
    let failed = |reason: String| MeshError::DnsFailed {
        host: host.to_string(),
        reason,
    };
    let mut addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| failed(e.to_string()))?;
    addrs.next().ok_or_else(|| failed("no address".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ServiceInfo, Snapshot};
    use crate::telemetry::ProxyMetrics;

    fn dir() -> Directory {
        let d = Directory::new(Default::default(), Arc::new(ProxyMetrics::new()));
        d.replace(Snapshot {
            revision: 1,
            policies: Vec::new(),
            authorizations: Vec::new(),
            bundle: None,
            configs: Vec::new(),
            routes: Vec::new(),
            services: vec![ServiceInfo {
                name: "hello".into(),
                vip: Ipv4Addr::new(127, 100, 0, 1),
                instances: vec![],
            }],
        });
        d
    }

    fn route(a: &str) -> Result<Route, MeshError> {
        Names {
            domain_suffix: ".mesh",
        }
        .route(&dir(), a)
    }

    #[test]
    fn mesh_names() {
        for a in [
            "hello",
            "hello.mesh",
            "HELLO.mesh.",
            "hello:8080",
            "hello.mesh:80",
            "127.100.0.1",
        ] {
            assert!(
                matches!(route(a), Ok(Route::Service(s)) if s.name == "hello"),
                "{a}"
            );
        }
        for a in ["nosuch", "nosuch.mesh", "a.hello.mesh"] {
            assert!(matches!(route(a), Err(MeshError::UnknownService(_))), "{a}");
        }
        assert!(matches!(
            route("example.com:81"),
            Ok(Route::External { port: 81, .. })
        ));
        assert!(matches!(
            route("10.0.0.1"),
            Ok(Route::External { port: 80, .. })
        ));
        assert!(matches!(route("localhost:9"), Ok(Route::External { .. })));
        assert!(matches!(
            route("host:notaport"),
            Err(MeshError::BadRequest(_))
        ));
    }

    #[test]
    fn host_port_split() {
        assert_eq!(split_host_port("a:1"), Some(("a", Some(1))));
        assert_eq!(split_host_port("[::1]:8"), Some(("::1", Some(8))));
        assert_eq!(split_host_port("[::1]"), Some(("::1", None)));
        assert_eq!(split_host_port(""), None);
        assert_eq!(split_host_port("a:99999"), None);
    }

    #[test]
    fn own_addresses() {
        let own: Vec<SocketAddr> = vec![
            "127.0.0.1:15001".parse().unwrap(),
            "0.0.0.0:15000".parse().unwrap(),
        ];
        assert!(is_own(&own, "127.0.0.1:15001".parse().unwrap()));
        assert!(is_own(&own, "127.0.0.2:15001".parse().unwrap()));
        assert!(is_own(&own, "10.0.0.5:15000".parse().unwrap()));
        assert!(!is_own(&own, "10.0.0.5:15001".parse().unwrap()));
    }
}
