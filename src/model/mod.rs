//! Wire types shared by the proxy, the control plane and the CLI.
//!
//! Nothing here touches tokio or sockets: these are the JSON shapes of the
//! `/v1` API and the watch stream, plus the validation that turns untrusted
//! input into them. Validation reports every bad field at once.

mod cidr;
pub mod config;
mod duration;
pub mod identity;
pub mod policy;
mod policy_parse;
pub mod proxies;
mod register;
pub mod state;
pub mod stats;
mod validate;

pub use cidr::Ipv4Cidr;
pub use duration::{format_duration, parse_duration};
pub use policy::{LoadBalancer, ServicePolicy};
pub(crate) use policy_parse::reader as policy_parse_reader;
pub use policy_parse::{
    parse_documents, parse_policy_documents, Document, MAX_OPAQUE_PORTS, MAX_RETRY_ATTEMPTS,
    POLICY_KIND,
};
pub use register::{RegisterRequest, MAX_METADATA_BYTES, MAX_METADATA_ENTRIES};
pub use validate::{validate_instance_id, validate_service_name, FieldError, FieldErrors};

pub use crate::authz::AuthorizationPolicy;
pub use crate::gateway::Route;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

/// Health of one instance as its own sidecar last reported it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Checked and answering: routable.
    #[default]
    Up,
    /// Checked and failing: kept in the registry, never routed to.
    Down,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::Down => "down",
        }
    }
}

/// One registered instance of a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// Unique within its service; chosen by the registrant or generated.
    pub id: String,
    pub service: String,
    /// Where callers (their sidecars) reach this instance.
    pub address: IpAddr,
    pub port: u16,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub health: Health,
    /// Lease length in seconds; `None` means a static registration that
    /// stays until it is deregistered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
    /// Port of the instance's sidecar inbound listener at the same
    /// `address`; callers' proxies connect there (proxy to proxy) instead of
    /// to `port`. `None` for an instance without a sidecar inbound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound_port: Option<u16>,
    /// The SPIFFE ID of the workload that registered it, as mesh-control
    /// read it from its certificate (never from the request). Callers'
    /// proxies accept only this identity at `inbound_port`. `None` for
    /// registrations by an operator, or with identity off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

/// A service, its virtual IP and its instances.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    pub name: String,
    pub vip: Ipv4Addr,
    #[serde(default)]
    pub instances: Vec<Instance>,
}

/// The whole registry at one revision. Services are sorted by name and
/// instances by id, so equal registries serialize identically.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub revision: u64,
    #[serde(default)]
    pub services: Vec<ServiceInfo>,
    /// Applied policies, sorted by service. A service without one runs the
    /// default stack.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<ServicePolicy>,
    /// Applied authorization policies, sorted by service (`*`, the
    /// mesh-wide defaults, first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authorizations: Vec<AuthorizationPolicy>,
    /// The roots to trust (identity on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<identity::TrustBundle>,
    /// The latest version of every config, sorted by application and
    /// profile: heads only (a proxy fetches what it subscribes to).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configs: Vec<config::ConfigHead>,
    /// Gateway routes, sorted by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
}

/// One line of the watch stream (`GET /v1/watch?since=REV`, NDJSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum WatchEvent {
    /// The full registry; replaces whatever the watcher held. Sent first
    /// when `since` is 0, unknown, or too far behind the change log.
    Snapshot {
        snapshot: Snapshot,
    },
    /// An instance was added or changed (health, metadata, address). `vip`
    /// is its service's VIP, so the first instance also creates the service.
    Upsert {
        revision: u64,
        vip: Ipv4Addr,
        instance: Instance,
    },
    /// An instance left: deregistered, or its lease expired.
    Remove {
        revision: u64,
        service: String,
        id: String,
        reason: RemoveReason,
    },
    /// A policy was applied (created or replaced).
    Policy {
        revision: u64,
        policy: ServicePolicy,
    },
    /// A service's policy was deleted: it runs the defaults again.
    PolicyRemoved {
        revision: u64,
        service: String,
    },
    /// An authorization policy was applied (created or replaced).
    Authorization {
        revision: u64,
        policy: AuthorizationPolicy,
    },
    AuthorizationRemoved {
        revision: u64,
        service: String,
    },
    /// The trust bundle changed: a root was added, activated or removed.
    TrustBundle {
        revision: u64,
        bundle: identity::TrustBundle,
    },
    /// A config has a new version (applied or rolled back).
    Config {
        revision: u64,
        config: config::ConfigHead,
    },
    /// A gateway route was applied (created or replaced).
    Route {
        revision: u64,
        route: Route,
    },
    RouteRemoved {
        revision: u64,
        name: String,
    },
    /// Nothing changed; proves the stream is alive.
    Keepalive {
        revision: u64,
    },
}

impl WatchEvent {
    pub fn revision(&self) -> u64 {
        match self {
            WatchEvent::Snapshot { snapshot } => snapshot.revision,
            WatchEvent::Upsert { revision, .. }
            | WatchEvent::Remove { revision, .. }
            | WatchEvent::Policy { revision, .. }
            | WatchEvent::PolicyRemoved { revision, .. }
            | WatchEvent::Authorization { revision, .. }
            | WatchEvent::AuthorizationRemoved { revision, .. }
            | WatchEvent::TrustBundle { revision, .. }
            | WatchEvent::Config { revision, .. }
            | WatchEvent::Route { revision, .. }
            | WatchEvent::RouteRemoved { revision, .. }
            | WatchEvent::Keepalive { revision } => *revision,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RemoveReason {
    Deregistered,
    LeaseExpired,
}

/// `POST /v1/services/{service}/instances` answer (201).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    pub revision: u64,
    pub vip: Ipv4Addr,
    pub instance: Instance,
}

/// `PUT /v1/services/{service}/instances/{id}/heartbeat` body. Renews the
/// lease and reports health; an unknown instance answers 404, and the
/// sidecar registers again at once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    pub health: Health,
}

/// A row of `GET /v1/services`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSummary {
    pub name: String,
    pub vip: Ipv4Addr,
    pub instances: usize,
    pub healthy: usize,
}

/// `GET /v1/status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlStatus {
    pub revision: u64,
    pub services: usize,
    pub instances: usize,
    /// Applied policies (services without one run the defaults).
    #[serde(default)]
    pub policies: usize,
    /// True while evictions are suspended because too many leases expired
    /// at once (the Eureka rule).
    pub self_preservation: bool,
    /// `embedded` or `etcd`.
    #[serde(default)]
    pub store: String,
    /// The store's own revision (etcd: counts heartbeat flushes, which
    /// watchers never see, so it may run ahead of `revision`).
    #[serde(default)]
    pub store_revision: u64,
    /// `--store etcd`: the replicas, the leader, and whether this replica
    /// reaches etcd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha: Option<crate::control::store::etcd::HaStatus>,
}

/// The JSON body of every 4xx/5xx the control plane returns.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldError>,
}
