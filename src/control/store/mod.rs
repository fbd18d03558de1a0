//! The store seam: the revisioned rows the registry rests on, behind one
//! trait with two implementations.
//!
//! - [`embedded`] (the default): one redb file under `--data-dir`, one
//!   mesh-control. The registry applies each commit itself, right after it
//!   is durable, and numbers revisions 1, 2, 3...
//! - [`etcd`] (`--store etcd`): several mesh-control replicas over one
//!   etcd cluster. A commit is an etcd transaction; every replica (the one
//!   that committed included) learns of it from its etcd watch and applies
//!   it then, so all replicas hold the same view at the same revisions, and
//!   the revision *is* etcd's.
//!
//! Either way a change reaches the registry's view as the same [`Write`]s
//! through the same `Registry::apply`: one mechanism, two ways of being
//! told.

pub mod embedded;
pub mod etcd;

use crate::config::seal::{SealError, Sealer};
use crate::model::config::{ConfigDocument, ConfigMeta, ConfigVersion, REDACTED};
use crate::model::identity::TrustBundle;
use crate::model::{AuthorizationPolicy, Instance, RemoveReason, Route, ServicePolicy};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("store {path}: {source}")]
    Db { path: PathBuf, source: redb::Error },
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("store {path}: {table} row {key:?} is corrupt: {reason}")]
    Corrupt {
        path: PathBuf,
        table: &'static str,
        key: String,
        reason: String,
    },
    /// etcd did not answer, or answered an error.
    #[error("etcd ({endpoints}): {reason}")]
    Etcd { endpoints: String, reason: String },
    /// The change was committed but this replica's view did not reach its
    /// revision in time (its etcd watch is behind or broken).
    #[error("committed at revision {revision}, but this replica has not seen it yet (its etcd watch is behind); retry on another replica")]
    Lagging { revision: u64 },
}

/// One row-level change. Commits carry them to the store, and the store
/// hands them back (etcd: through its watch) for the registry to apply.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    PutInstance(Instance),
    DeleteInstance {
        service: String,
        id: String,
        reason: RemoveReason,
        /// For an eviction: the revision the evictor saw the instance
        /// written at. etcd then deletes it only if nobody wrote it since
        /// (a re-registration on another replica wins over a stale sweep).
        if_written_at: Option<u64>,
    },
    PutVip {
        service: String,
        vip: Ipv4Addr,
    },
    PutPolicy(ServicePolicy),
    DeletePolicy {
        service: String,
    },
    PutAuthorization(AuthorizationPolicy),
    DeleteAuthorization {
        service: String,
    },
    PutConfig(StoredConfig),
    PutRoute(Route),
    DeleteRoute {
        name: String,
    },
    /// A new trust bundle (the embedded store leaves it to the CA's files;
    /// etcd keeps it so every replica publishes it).
    PutBundle(TrustBundle),
    /// The eviction leader's self-preservation state (etcd only: the
    /// embedded registry holds it in memory).
    SelfPreservation(bool),
}

/// One config version as it rests: secret values only sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredConfig {
    #[serde(flatten)]
    pub meta: ConfigMeta,
    #[serde(default)]
    pub data: BTreeMap<String, Value>,
    /// Secret key → its sealed value.
    #[serde(default)]
    pub sealed: BTreeMap<String, String>,
    #[serde(default)]
    pub files: BTreeMap<String, String>,
}

/// Everything the store held when read whole.
#[derive(Debug, Default)]
pub struct Loaded {
    pub revision: u64,
    pub vips: BTreeMap<String, Ipv4Addr>,
    /// Each instance with the revision it was last written at (0 where the
    /// store does not keep one).
    pub instances: Vec<(Instance, u64)>,
    pub policies: Vec<ServicePolicy>,
    pub authorizations: Vec<AuthorizationPolicy>,
    /// The latest version of each application and profile.
    pub configs: Vec<StoredConfig>,
    pub routes: Vec<Route>,
    pub self_preservation: bool,
}

/// What a commit came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// Durable at this revision.
    Done(u64),
    /// A guard failed (another replica got there first: a VIP, a config
    /// version, a newer write of an evicted instance). Nothing was written;
    /// the store was at this revision. Plan again once the view reaches it.
    Conflict(u64),
}

/// The two stores' common surface. Every method is synchronous and short:
/// the registry calls them from blocking threads, under its writer lock.
pub trait Backend: Send + Sync {
    /// `embedded` or `etcd`, for status and logs.
    fn kind(&self) -> &'static str;
    /// The whole registry, for startup (and an etcd resync).
    fn load(&self) -> Result<Loaded, StoreError>;
    /// Applies `writes` atomically. The embedded store writes them at
    /// revision `next`; etcd ignores `next` and reports its own.
    fn commit(&self, next: u64, writes: &[Write]) -> Result<Committed, StoreError>;
    /// One stored version; `None` when there is no such version.
    fn config_version(
        &self,
        application: &str,
        profile: &str,
        version: u64,
    ) -> Result<Option<StoredConfig>, StoreError>;
    /// Every version of one application and profile, oldest first, without
    /// their content.
    fn config_history(
        &self,
        application: &str,
        profile: &str,
    ) -> Result<Vec<ConfigMeta>, StoreError>;
}

/// The store the registry holds: a backend and the sealer of secret values.
pub struct Store {
    backend: Box<dyn Backend>,
    /// Set for `--store etcd`: the registry follows its watch.
    etcd: Option<Arc<etcd::EtcdStore>>,
    /// Seals and opens secret config values.
    sealer: Sealer,
}

// === impl Store ===

impl Store {
    /// The embedded store: `<data_dir>/control.redb`, the key in
    /// `<data_dir>/config.key`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let sealer = Sealer::open_or_create(data_dir)?;
        Ok(Store {
            backend: Box::new(embedded::Embedded::open(data_dir)?),
            etcd: None,
            sealer,
        })
    }

    /// The etcd store; `sealer` holds the key every replica shares.
    pub fn etcd(store: Arc<etcd::EtcdStore>, sealer: Sealer) -> Self {
        Store {
            backend: Box::new(store.clone()),
            etcd: Some(store),
            sealer,
        }
    }

    pub fn kind(&self) -> &'static str {
        self.backend.kind()
    }

    /// `Some` for `--store etcd`: changes arrive by its watch.
    pub fn shared(&self) -> Option<&Arc<etcd::EtcdStore>> {
        self.etcd.as_ref()
    }

    pub fn load(&self) -> Result<Loaded, StoreError> {
        self.backend.load()
    }

    pub fn commit(&self, next: u64, writes: &[Write]) -> Result<Committed, StoreError> {
        self.backend.commit(next, writes)
    }

    pub fn config_version(
        &self,
        application: &str,
        profile: &str,
        version: u64,
    ) -> Result<Option<StoredConfig>, StoreError> {
        self.backend.config_version(application, profile, version)
    }

    pub fn config_history(
        &self,
        application: &str,
        profile: &str,
    ) -> Result<Vec<ConfigMeta>, StoreError> {
        self.backend.config_history(application, profile)
    }

    /// `doc` as it will rest: its secret values sealed for their place.
    pub fn seal(&self, doc: &ConfigDocument, meta: ConfigMeta) -> Result<StoredConfig, StoreError> {
        let mut data = BTreeMap::new();
        let mut sealed = BTreeMap::new();
        for (k, v) in &doc.data {
            if doc.secret.contains(k) {
                let place = secret_place(&doc.application, &doc.profile, k);
                let plain = serde_json::to_vec(v).unwrap_or_default();
                sealed.insert(k.clone(), self.sealer.seal(&place, &plain)?);
            } else {
                data.insert(k.clone(), v.clone());
            }
        }
        Ok(StoredConfig {
            meta,
            data,
            sealed,
            files: doc.files.clone(),
        })
    }

    /// A stored version for the API: secrets opened when `secrets`,
    /// replaced by [`REDACTED`] otherwise.
    pub fn unseal(
        &self,
        stored: &StoredConfig,
        secrets: bool,
    ) -> Result<ConfigVersion, StoreError> {
        let mut data = stored.data.clone();
        for (k, sealed) in &stored.sealed {
            let value = match secrets {
                false => Value::String(REDACTED.into()),
                true => {
                    let place = secret_place(&stored.meta.application, &stored.meta.profile, k);
                    let plain = self.sealer.open(&place, sealed)?;
                    serde_json::from_slice(&plain).map_err(|_| SealError::Open)?
                }
            };
            data.insert(k.clone(), value);
        }
        Ok(ConfigVersion {
            meta: stored.meta.clone(),
            data,
            files: stored.files.clone(),
            secret: stored.sealed.keys().cloned().collect(),
            redacted: !secrets && !stored.sealed.is_empty(),
        })
    }

    /// The keyed content hash of a document (see `config::seal`).
    pub fn content_hash(&self, doc: &ConfigDocument) -> String {
        // BTreeMaps and BTreeSets serialise in key order: one text per content.
        self.sealer
            .hash(&serde_json::to_vec(doc).unwrap_or_default())
    }
}

/// What a sealed value is bound to: it opens only there.
fn secret_place(application: &str, profile: &str, key: &str) -> String {
    format!("{application}/{profile}/{key}")
}
