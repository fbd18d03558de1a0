//! The embedded store (redb) under `--data-dir`: VIPs, the global revision,
//! every instance, every applied policy, and every version of every
//! config document (secret values sealed, see `config::seal`).
//!
//! The registry keeps the live state in memory and writes each change here
//! in one transaction (instance rows, a new VIP if any, and the revision)
//! before anyone can observe it, so a restart never shows a revision lower
//! than one a watcher has already seen.

use super::{Backend, Committed, Loaded, StoreError, StoredConfig, Write};
use crate::model::config::ConfigMeta;
use crate::model::Instance;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
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

/// Handle on the redb file. Every method is synchronous and short; the
/// registry calls them while holding its lock so commits apply in revision
/// order.
pub struct Embedded {
    /// The open database; redb serialises write transactions itself.
    db: Database,
    /// For error messages.
    path: PathBuf,
}

// === impl Embedded ===

impl Embedded {
    /// Opens (or creates) `<data_dir>/control.redb`; the directory exists.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let path = data_dir.join(FILE_NAME);
        let db = Database::create(&path).map_err(|e| StoreError::Db {
            path: path.clone(),
            source: e.into(),
        })?;
        let store = Embedded { db, path };
        // Create the tables up front so reads on a fresh file find them.
        store.write(None, &[])?;
        Ok(store)
    }

    fn err(&self, e: impl Into<redb::Error>) -> StoreError {
        StoreError::Db {
            path: self.path.clone(),
            source: e.into(),
        }
    }

    /// Reads the whole store: used once at startup.
    fn read_all(&self) -> Result<Loaded, StoreError> {
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
        let instances: Vec<Instance> = self.json_rows(&txn, INSTANCES, "instance")?;
        loaded.instances = instances.into_iter().map(|i| (i, 0)).collect();
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

    fn version(
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

    fn history(&self, application: &str, profile: &str) -> Result<Vec<ConfigMeta>, StoreError> {
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
    fn write(&self, revision: Option<u64>, writes: &[Write]) -> Result<(), StoreError> {
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
                    Write::DeleteInstance { service, id, .. } => {
                        let key = row_key(service, id);
                        instances.remove(key.as_str()).map_err(|e| self.err(e))?;
                    }
                    Write::PutVip { service, vip } => {
                        vips.insert(service.as_str(), u32::from(*vip))
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
                        policies.remove(service.as_str()).map_err(|e| self.err(e))?;
                    }
                    Write::PutAuthorization(policy) => {
                        let json = serde_json::to_vec(policy).unwrap_or_default();
                        authorizations
                            .insert(policy.service.as_str(), json.as_slice())
                            .map_err(|e| self.err(e))?;
                    }
                    Write::DeleteAuthorization { service } => {
                        authorizations
                            .remove(service.as_str())
                            .map_err(|e| self.err(e))?;
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
                        routes.remove(name.as_str()).map_err(|e| self.err(e))?;
                    }
                    // Held in memory: a restart starts with evictions on.
                    Write::SelfPreservation(_) => {}
                    // The CA's files hold the bundle durably.
                    Write::PutBundle(_) => {}
                }
            }
        }
        txn.commit().map_err(|e| self.err(e))
    }
}

impl Backend for Embedded {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    fn load(&self) -> Result<Loaded, StoreError> {
        self.read_all()
    }

    /// One writer (the registry's lock) and no guards to fail: always done.
    fn commit(&self, next: u64, writes: &[Write]) -> Result<Committed, StoreError> {
        self.write(Some(next), writes)?;
        Ok(Committed::Done(next))
    }

    fn config_version(
        &self,
        application: &str,
        profile: &str,
        version: u64,
    ) -> Result<Option<StoredConfig>, StoreError> {
        self.version(application, profile, version)
    }

    fn config_history(
        &self,
        application: &str,
        profile: &str,
    ) -> Result<Vec<ConfigMeta>, StoreError> {
        self.history(application, profile)
    }
}

fn config_key(application: &str, profile: &str, version: u64) -> String {
    // Names are DNS labels: no '/' in either.
    format!("{application}/{profile}/{version:020}")
}

fn row_key(service: &str, id: &str) -> String {
    // '/' appears in neither service names nor instance ids.
    format!("{service}/{id}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ServicePolicy;
    use crate::model::{Health, RemoveReason};
    use std::collections::BTreeMap;

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
            let store = Embedded::open(dir.path()).unwrap();
            let a = inst("web", "a");
            let b = inst("web", "b");
            store
                .write(
                    Some(2),
                    &[
                        Write::PutVip {
                            service: "web".into(),
                            vip: "127.100.0.1".parse().unwrap(),
                        },
                        Write::PutInstance(a),
                        Write::PutInstance(b),
                    ],
                )
                .unwrap();
            store
                .write(
                    Some(3),
                    &[Write::DeleteInstance {
                        service: "web".into(),
                        id: "a".into(),
                        reason: RemoveReason::Deregistered,
                        if_written_at: None,
                    }],
                )
                .unwrap();
            let mut web = ServicePolicy::defaults("web");
            web.retries.attempts = 0;
            let api = ServicePolicy::defaults("api");
            store
                .write(Some(4), &[Write::PutPolicy(web), Write::PutPolicy(api)])
                .unwrap();
            store
                .write(
                    Some(5),
                    &[Write::DeletePolicy {
                        service: "api".into(),
                    }],
                )
                .unwrap();
        }
        let loaded = Embedded::open(dir.path()).unwrap().load().unwrap();
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
        assert_eq!(loaded.instances, vec![(inst("web", "b"), 0)]);
    }

    #[test]
    fn loads_rows_written_before_inbound_port() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Embedded::open(dir.path()).unwrap();
            // A row exactly as an older control plane wrote it.
            let old = br#"{"id":"a","service":"web","address":"127.0.0.1","port":8080,"metadata":{},"health":"up","ttl_secs":10}"#;
            let txn = store.db.begin_write().unwrap();
            {
                let mut t = txn.open_table(INSTANCES).unwrap();
                t.insert("web/a", old.as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        let loaded = Embedded::open(dir.path()).unwrap().load().unwrap();
        let mut want = inst("web", "a");
        want.metadata.clear();
        want.inbound_port = None;
        assert_eq!(loaded.instances, vec![(want, 0)]);
    }
}
