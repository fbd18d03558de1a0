//! The embedded store (redb) under `--data-dir`: VIPs, the global revision,
//! every instance and every applied policy.
//!
//! The registry keeps the live state in memory and writes each change here
//! in one transaction (instance rows, a new VIP if any, and the revision)
//! before anyone can observe it, so a restart never shows a revision lower
//! than one a watcher has already seen.

use crate::model::{AuthorizationPolicy, Instance, ServicePolicy};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
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
}

/// Everything the store held at startup.
#[derive(Debug, Default)]
pub struct Loaded {
    pub revision: u64,
    pub vips: BTreeMap<String, Ipv4Addr>,
    pub instances: Vec<Instance>,
    pub policies: Vec<ServicePolicy>,
    pub authorizations: Vec<AuthorizationPolicy>,
}

/// Handle on the redb file. Every method is synchronous and short; the
/// registry calls them while holding its lock so commits apply in revision
/// order.
pub struct Store {
    /// The open database; redb serialises write transactions itself.
    db: Database,
    /// For error messages.
    path: PathBuf,
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
        let store = Store { db, path };
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
        Ok(loaded)
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
                }
            }
        }
        txn.commit().map_err(|e| self.err(e))
    }
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
