//! The embedded store (redb) under `--data-dir`: VIPs, the global revision,
//! every instance, every applied policy, and every version of every
//! config document (secret values sealed, see `config::seal`).
//!
//! The registry keeps the live state in memory and writes each change here
//! in one transaction (instance rows, a new VIP if any, and the revision)
//! before anyone can observe it, so a restart never shows a revision lower
//! than one a watcher has already seen.

use crate::config::seal::{SealError, Sealer};
use crate::model::config::{ConfigDocument, ConfigMeta, ConfigVersion, REDACTED};
use crate::model::{AuthorizationPolicy, Instance, Route, ServicePolicy};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// `"revision"` → the last committed global revision.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// service name → its VIP as a big-endian u32.
const VIPS: TableDefinition<&str, u32> = TableDefinition::new("vips");
/// `"{service}/{id}"` → the instance as JSON (the wire shape, so the file
/// stays readable with any JSON tool).
const INSTANCES: TableDefinition<&str, &[u8]> = TableDefinition::new("instances");
/// service name → its `ServicePolicy` as JSON (the API's wire shape).
const POLICIES: TableDefinition<&str, &[u8]> = TableDefinition::new("policies");
/// service name (or `*`) → its `AuthorizationPolicy` as JSON.
const AUTHORIZATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("authorizations");
/// `"{application}/{profile}/{version:020}"` → one immutable version as a
/// [`StoredConfig`] (JSON; secret values sealed). Zero-padded so a
/// prefix's rows come in version order and its last row is the latest.
const CONFIGS: TableDefinition<&str, &[u8]> = TableDefinition::new("configs");
/// route name → its `Route` as JSON.
const ROUTES: TableDefinition<&str, &[u8]> = TableDefinition::new("routes");

const REVISION_KEY: &str = "revision";
const FILE_NAME: &str = "control.redb";

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
}

/// One row-level change inside a commit.
#[derive(Debug, Clone)]
pub enum Write<'a> {
    PutInstance(&'a Instance),
    DeleteInstance { service: &'a str, id: &'a str },
    PutVip { service: &'a str, vip: Ipv4Addr },
    PutPolicy(&'a ServicePolicy),
    DeletePolicy { service: &'a str },
    PutAuthorization(&'a AuthorizationPolicy),
    DeleteAuthorization { service: &'a str },
    PutConfig(&'a StoredConfig),
    PutRoute(&'a Route),
    DeleteRoute { name: &'a str },
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

/// Everything the store held at startup.
#[derive(Debug, Default)]
pub struct Loaded {
    pub revision: u64,
    pub vips: BTreeMap<String, Ipv4Addr>,
    pub instances: Vec<Instance>,
    pub policies: Vec<ServicePolicy>,
    pub authorizations: Vec<AuthorizationPolicy>,
    /// The latest version of each application and profile.
    pub configs: Vec<StoredConfig>,
    pub routes: Vec<Route>,
}

/// Handle on the redb file. Every method is synchronous and short; the
/// registry calls them while holding its lock so commits apply in revision
/// order.
pub struct Store {
    /// The open database; redb serialises write transactions itself.
    db: Database,
    /// For error messages.
    path: PathBuf,
    /// Seals and opens secret config values; `<data_dir>/config.key`.
    sealer: Sealer,
}

// === impl Store ===

impl Store {
    /// Opens (or creates) `<data_dir>/control.redb`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join(FILE_NAME);
        let db = Database::create(&path).map_err(|e| StoreError::Db {
            path: path.clone(),
            source: e.into(),
        })?;
        let sealer = Sealer::open_or_create(data_dir)?;
        let store = Store { db, path, sealer };
        // Create the tables up front so reads on a fresh file find them.
        store.commit(None, &[])?;
        Ok(store)
    }

    fn err(&self, e: impl Into<redb::Error>) -> StoreError {
        StoreError::Db {
            path: self.path.clone(),
            source: e.into(),
        }
    }

    /// Reads the whole store: used once at startup.
    pub fn load(&self) -> Result<Loaded, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let meta = txn.open_table(META).map_err(|e| self.err(e))?;
        let revision = meta
            .get(REVISION_KEY)
            .map_err(|e| self.err(e))?
            .map_or(0, |v| v.value());
        let mut loaded = Loaded {
            revision,
            ..Loaded::default()
        };
        let vips = txn.open_table(VIPS).map_err(|e| self.err(e))?;
        for row in vips.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            loaded
                .vips
                .insert(k.value().to_string(), Ipv4Addr::from(v.value()));
        }
        loaded.instances = self.json_rows(&txn, INSTANCES, "instance")?;
        loaded.policies = self.json_rows(&txn, POLICIES, "policy")?;
        loaded.authorizations = self.json_rows(&txn, AUTHORIZATIONS, "authorization")?;
        loaded.configs = self.latest_configs(&txn)?;
        loaded.routes = self.json_rows(&txn, ROUTES, "route")?;
        Ok(loaded)
    }

    /// The last row of each `app/profile/` prefix, parsed; the others are
    /// history, read when asked for.
    fn latest_configs(&self, txn: &redb::ReadTransaction) -> Result<Vec<StoredConfig>, StoreError> {
        let table = txn.open_table(CONFIGS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        let mut last: Option<(String, Vec<u8>)> = None;
        for row in table.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            let key = k.value();
            let prefix = key.rsplit_once('/').map_or(key, |(p, _)| p);
            if let Some((held, bytes)) = last.take() {
                if held.rsplit_once('/').map(|(p, _)| p) != Some(prefix) {
                    out.push(self.config_row(&held, &bytes)?);
                }
            }
            last = Some((key.to_string(), v.value().to_vec()));
        }
        if let Some((key, bytes)) = last {
            out.push(self.config_row(&key, &bytes)?);
        }
        Ok(out)
    }

    fn config_row(&self, key: &str, bytes: &[u8]) -> Result<StoredConfig, StoreError> {
        serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
            path: self.path.clone(),
            table: "config",
            key: key.to_string(),
            reason: e.to_string(),
        })
    }

    /// One stored version; `None` when there is no such version.
    pub fn config_version(
        &self,
        application: &str,
        profile: &str,
        version: u64,
    ) -> Result<Option<StoredConfig>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(CONFIGS).map_err(|e| self.err(e))?;
        let key = config_key(application, profile, version);
        match table.get(key.as_str()).map_err(|e| self.err(e))? {
            None => Ok(None),
            Some(v) => self.config_row(&key, v.value()).map(Some),
        }
    }

    /// Every version of one application and profile, oldest first, without
    /// their content.
    pub fn config_history(
        &self,
        application: &str,
        profile: &str,
    ) -> Result<Vec<ConfigMeta>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(CONFIGS).map_err(|e| self.err(e))?;
        let (from, to) = (
            config_key(application, profile, 0),
            config_key(application, profile, u64::MAX),
        );
        let mut out = Vec::new();
        for row in table
            .range(from.as_str()..=to.as_str())
            .map_err(|e| self.err(e))?
        {
            let (k, v) = row.map_err(|e| self.err(e))?;
            out.push(self.config_row(k.value(), v.value())?.meta);
        }
        Ok(out)
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

    /// Every row of a table of JSON documents.
    fn json_rows<T: serde::de::DeserializeOwned>(
        &self,
        txn: &redb::ReadTransaction,
        table: TableDefinition<&str, &[u8]>,
        what: &'static str,
    ) -> Result<Vec<T>, StoreError> {
        let table = txn.open_table(table).map_err(|e| self.err(e))?;
        let mut rows = Vec::new();
        for row in table.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            let doc = serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt {
                path: self.path.clone(),
                table: what,
                key: k.value().to_string(),
                reason: e.to_string(),
            })?;
            rows.push(doc);
        }
        Ok(rows)
    }

    /// Applies `writes` and, if given, sets the revision, atomically and
    /// durably (redb's default `Durability::Immediate`).
    pub fn commit(&self, revision: Option<u64>, writes: &[Write<'_>]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| self.err(e))?;
            let mut vips = txn.open_table(VIPS).map_err(|e| self.err(e))?;
            let mut instances = txn.open_table(INSTANCES).map_err(|e| self.err(e))?;
            let mut policies = txn.open_table(POLICIES).map_err(|e| self.err(e))?;
            let mut authorizations = txn.open_table(AUTHORIZATIONS).map_err(|e| self.err(e))?;
            let mut configs = txn.open_table(CONFIGS).map_err(|e| self.err(e))?;
            let mut routes = txn.open_table(ROUTES).map_err(|e| self.err(e))?;
            if let Some(rev) = revision {
                meta.insert(REVISION_KEY, rev).map_err(|e| self.err(e))?;
            }
            for w in writes {
                match w {
                    Write::PutInstance(inst) => {
                        let key = row_key(&inst.service, &inst.id);
                        // Serialising plain strings, numbers and maps cannot fail.
                        let json = serde_json::to_vec(inst).unwrap_or_default();
                        instances
                            .insert(key.as_str(), json.as_slice())
                            .map_err(|e| self.err(e))?;
                    }
                    Write::DeleteInstance { service, id } => {
                        let key = row_key(service, id);
                        instances.remove(key.as_str()).map_err(|e| self.err(e))?;
                    }
                    Write::PutVip { service, vip } => {
                        vips.insert(*service, u32::from(*vip))
                            .map_err(|e| self.err(e))?;
                    }
                    Write::PutPolicy(policy) => {
                        // Strings, numbers and string-keyed maps always serialise.
                        let json = serde_json::to_vec(policy).unwrap_or_default();
                        policies
                            .insert(policy.service.as_str(), json.as_slice())
                            .map_err(|e| self.err(e))?;
                    }
                    Write::DeletePolicy { service } => {
                        policies.remove(*service).map_err(|e| self.err(e))?;
                    }
                    Write::PutAuthorization(policy) => {
                        let json = serde_json::to_vec(policy).unwrap_or_default();
                        authorizations
                            .insert(policy.service.as_str(), json.as_slice())
                            .map_err(|e| self.err(e))?;
                    }
                    Write::DeleteAuthorization { service } => {
                        authorizations.remove(*service).map_err(|e| self.err(e))?;
                    }
                    Write::PutConfig(stored) => {
                        let m = &stored.meta;
                        let key = config_key(&m.application, &m.profile, m.version);
                        let json = serde_json::to_vec(stored).unwrap_or_default();
                        configs
                            .insert(key.as_str(), json.as_slice())
                            .map_err(|e| self.err(e))?;
                    }
                    Write::PutRoute(route) => {
                        let json = serde_json::to_vec(route).unwrap_or_default();
                        routes
                            .insert(route.name.as_str(), json.as_slice())
                            .map_err(|e| self.err(e))?;
                    }
                    Write::DeleteRoute { name } => {
                        routes.remove(*name).map_err(|e| self.err(e))?;
                    }
                }
            }
        }
        txn.commit().map_err(|e| self.err(e))
    }
}

fn config_key(application: &str, profile: &str, version: u64) -> String {
    // Names are DNS labels: no '/' in either.
    format!("{application}/{profile}/{version:020}")
}

/// What a sealed value is bound to: it opens only there.
fn secret_place(application: &str, profile: &str, key: &str) -> String {
    format!("{application}/{profile}/{key}")
}

fn row_key(service: &str, id: &str) -> String {
    // '/' appears in neither service names nor instance ids.
    format!("{service}/{id}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Health;

    fn inst(service: &str, id: &str) -> Instance {
        Instance {
            id: id.into(),
            service: service.into(),
            address: "127.0.0.1".parse().unwrap(),
            port: 8080,
            metadata: BTreeMap::from([("zone".into(), "a".into())]),
            health: Health::Up,
            ttl_secs: Some(10),
            inbound_port: Some(15006),
            identity: None,
        }
    }

    #[test]
    fn round_trips_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let a = inst("web", "a");
            let b = inst("web", "b");
            store
                .commit(
                    Some(2),
                    &[
                        Write::PutVip {
                            service: "web",
                            vip: "127.100.0.1".parse().unwrap(),
                        },
                        Write::PutInstance(&a),
                        Write::PutInstance(&b),
                    ],
                )
                .unwrap();
            store
                .commit(
                    Some(3),
                    &[Write::DeleteInstance {
                        service: "web",
                        id: "a",
                    }],
                )
                .unwrap();
            let mut web = ServicePolicy::defaults("web");
            web.retries.attempts = 0;
            let api = ServicePolicy::defaults("api");
            store
                .commit(Some(4), &[Write::PutPolicy(&web), Write::PutPolicy(&api)])
                .unwrap();
            store
                .commit(Some(5), &[Write::DeletePolicy { service: "api" }])
                .unwrap();
        }
        let loaded = Store::open(dir.path()).unwrap().load().unwrap();
        assert_eq!(loaded.revision, 5);
        assert_eq!(loaded.policies.len(), 1);
        assert_eq!(
            (
                loaded.policies[0].service.as_str(),
                loaded.policies[0].retries.attempts
            ),
            ("web", 0)
        );
        assert_eq!(
            loaded.vips["web"],
            "127.100.0.1".parse::<Ipv4Addr>().unwrap()
        );
        assert_eq!(loaded.instances, vec![inst("web", "b")]);
    }

    #[test]
    fn loads_rows_written_before_inbound_port() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            // A row exactly as an older control plane wrote it.
            let old = br#"{"id":"a","service":"web","address":"127.0.0.1","port":8080,"metadata":{},"health":"up","ttl_secs":10}"#;
            let txn = store.db.begin_write().unwrap();
            {
                let mut t = txn.open_table(INSTANCES).unwrap();
                t.insert("web/a", old.as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        let loaded = Store::open(dir.path()).unwrap().load().unwrap();
        let mut want = inst("web", "a");
        want.metadata.clear();
        want.inbound_port = None;
        assert_eq!(loaded.instances, vec![want]);
    }
}
