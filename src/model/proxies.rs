//! The proxies connected to mesh-control, and what each has applied:
//! the wire shapes of `GET /v1/proxies` and `PUT /v1/proxies/{id}/applied`.
//!
//! A proxy names itself when it opens its watch (`GET /v1/watch?proxy=ID`),
//! then reports every registry revision it has applied. A proxy that is
//! stopping asks which proxies are still behind the revision that removed
//! its instance, and stops accepting only once none is (the drain).

use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// The longest proxy id, service or version accepted from a watch.
pub const MAX_PROXY_FIELD: usize = 128;

/// What a proxy says about itself when it opens its watch (query
/// parameters of `GET /v1/watch`, all optional but `proxy`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatcherInfo {
    /// Unique per process (a proxy restarted is a new proxy).
    pub proxy: String,
    /// The service its app serves, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The instance it registered, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// `mesh-proxy --version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// One connected proxy, as `GET /v1/proxies` lists it: what it said of
/// itself, and what mesh-control knows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyInfo {
    #[serde(flatten)]
    pub watcher: WatcherInfo,
    /// The SPIFFE ID its watch was opened with (identity on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Where its watch connection comes from.
    pub address: IpAddr,
    /// When its current watch was opened (RFC 3339, UTC).
    pub connected_at: String,
    /// The last registry revision it reported applied.
    pub applied: u64,
    /// Its config subscriptions and what each has delivered to its app.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configs: Vec<crate::model::config::DeliveredConfig>,
}

/// `GET /v1/proxies[?behind=R]`: the connected proxies (those behind `R`
/// only, when asked), sorted by id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyList {
    /// The registry's revision when this was answered.
    pub revision: u64,
    /// How many proxies are connected in all (listed or not).
    pub watching: usize,
    pub proxies: Vec<ProxyInfo>,
}

/// `PUT /v1/proxies/{id}/applied`: the revision a proxy has applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Applied {
    pub revision: u64,
}
