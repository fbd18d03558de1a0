//! Gateway mode (`mesh-proxy gateway`): the mesh's front door. The same
//! binary as the sidecar, so the edge gets the same discovery, balancing,
//! resilience stack, identity, metrics and cache; what it adds is a
//! listener for outside clients and `kind: Route` documents that say
//! which mesh service each request goes to.
//!
//! A request, in order (`server.rs`): a request id (`x-request-id`, kept
//! when the client sent a sane one) and W3C trace context; the route
//! (`table.rs`: host, then the most specific match; none → 404
//! `x-mesh-error: no-route`); the rule's redirect, answered at the edge;
//! its request header modifiers and rewrite (`filters.rs`); a backend by
//! weight; then the one call path every sidecar request takes
//! (`proxy::outbound::request::Services::call`), with the rule's timeout
//! and retries capping the service's own. Every answer, the mesh's own
//! errors included, carries the request id and ends as one JSON access
//! log line and the per-route metrics.

mod cors;
mod filters;
pub mod jwt;
pub mod limit;
mod parse;
mod route;
mod server;
mod table;
pub mod tls;

pub use route::*;
pub use server::Gateway;
pub use table::{CompiledRule, Matched, RouteTable};

use crate::model::FieldErrors;
use serde_json::Value;

impl Route {
    /// Validates one untrusted JSON document (`kind` may be absent, but if
    /// present must be [`ROUTE_KIND`]), naming every bad field.
    pub fn from_value(doc: &Value) -> Result<Route, FieldErrors> {
        parse::parse(doc)
    }
}

/// `mesh-proxy gateway`: the edge's own flags, then every flag of the
/// sidecar (control plane, identity, cache, admin, limits, balancing).
#[derive(clap::Args, Clone, Debug)]
pub struct GatewayArgs {
    /// Where outside clients connect: HTTP/1.1 and h2c, or, with
    /// certificates, TLS (HTTP/2 by ALPN).
    #[arg(long, env = "MESH_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: std::net::SocketAddr,
    /// The default certificate chain (PEM) for TLS at the edge: served to
    /// clients whose SNI no --tls-host names, and to those sending none.
    #[arg(long, env = "MESH_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "MESH_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// A certificate for one server name, chosen by SNI:
    /// `NAME=CERT,KEY` (`*.example.com` for one level of subdomains);
    /// repeatable, `;`-separated in the environment.
    #[arg(long = "tls-host", env = "MESH_TLS_HOST", value_parser = tls::parse_host_cert, value_delimiter = ';')]
    pub tls_hosts: Vec<tls::HostCert>,
    /// Redis for rate limits shared by every gateway replica
    /// (`rateLimit.global: true`): `redis://host:port[/db]`.
    #[arg(long, env = "MESH_REDIS")]
    pub redis: Option<String>,
    #[command(flatten)]
    pub proxy: crate::proxy::config::ProxyArgs,
}

/// Runs the gateway until a shutdown signal, then drains and returns.
pub async fn run(args: GatewayArgs) -> Result<(), crate::proxy::ProxyError> {
    let edge = crate::proxy::EdgeSettings {
        listen: args.listen,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        tls_hosts: args.tls_hosts,
        // On by default at the edge (off by default in a sidecar).
        access_log: args.proxy.access_log.as_deref().unwrap_or("json") == "json",
        redis: args.redis,
    };
    crate::proxy::bind_gateway(args.proxy, edge)
        .await?
        .serve()
        .await
}

#[cfg(test)]
mod tests;
