//! Config mutations and reads: apply a document (a new immutable version
//! when its content changed), roll back (a new version equal to an old
//! one), read a version, list the history.
//!
//! Same discipline as every mutation (plan → commit → apply and publish,
//! under the writer lock), so a version is durable before any watcher
//! sees it, and versions of one application and profile are numbered
//! without gaps or reuse. Only the latest version of each is held in
//! memory; older ones are read from the store when asked for. The store
//! seals secret values on the way in (`Store::seal`) and opens them only
//! for a caller allowed to see them (`Store::unseal`).

use super::{Registry, RegistryError, MAX_PLANS};
use crate::control::store::{StoredConfig, Write};
use crate::model::config::{ConfigApplied, ConfigDocument, ConfigHead, ConfigMeta, ConfigVersion};
use std::time::SystemTime;

/// Who applied a change and why: what a version records.
#[derive(Clone, Debug)]
pub struct Authored {
    pub author: String,
    pub message: Option<String>,
}

pub(super) fn head(c: &StoredConfig) -> ConfigHead {
    ConfigHead {
        application: c.meta.application.clone(),
        profile: c.meta.profile.clone(),
        version: c.meta.version,
        hash: c.meta.hash.clone(),
    }
}

fn unknown(application: &str, profile: &str, version: Option<u64>) -> RegistryError {
    RegistryError::UnknownConfig(match version {
        Some(v) => format!("config {application}/{profile} has no version {v}"),
        None => format!("no config is applied for {application}/{profile}"),
    })
}

// === impl Registry ===

impl Registry {
    /// Makes `doc` the latest version of its application and profile;
    /// content equal to the latest makes nothing (`changed: false`).
    pub fn apply_config(
        &self,
        doc: ConfigDocument,
        by: Authored,
    ) -> Result<ConfigApplied, RegistryError> {
        self.new_version(doc, by, None)
    }

    /// A new version with the content of version `to` (history is never
    /// rewritten). Rolling back to content equal to the latest changes
    /// nothing.
    pub fn rollback_config(
        &self,
        application: &str,
        profile: &str,
        to: u64,
        by: Authored,
    ) -> Result<ConfigApplied, RegistryError> {
        let stored = self
            .store
            .config_version(application, profile, to)?
            .ok_or_else(|| unknown(application, profile, Some(to)))?;
        let doc = self.store.unseal(&stored, true)?.document();
        self.new_version(doc, by, Some(to))
    }

    fn new_version(
        &self,
        doc: ConfigDocument,
        by: Authored,
        restores: Option<u64>,
    ) -> Result<ConfigApplied, RegistryError> {
        let _w = self.writer();
        let key = (doc.application.clone(), doc.profile.clone());
        let hash = self.store.content_hash(&doc);
        // On etcd two replicas may make the same version number at once:
        // the store takes the first (create-if-absent), the other plans
        // again on top of it.
        for _ in 0..MAX_PLANS {
            let (next, version) = {
                let st = self.state();
                let latest = st.configs.get(&key);
                if let Some(l) = latest.filter(|l| l.meta.hash == hash) {
                    return Ok(applied(l, st.revision, false));
                }
                (st.revision + 1, latest.map_or(0, |l| l.meta.version) + 1)
            };
            let meta = ConfigMeta {
                application: doc.application.clone(),
                profile: doc.profile.clone(),
                version,
                // The embedded store's; etcd's is set when the commit is read
                // back (`store::etcd`).
                revision: next,
                created_at: crate::identity::rfc3339(SystemTime::now()),
                author: by.author.clone(),
                message: by.message.clone(),
                hash: hash.clone(),
                restores,
            };
            let stored = self.store.seal(&doc, meta)?;
            if let Some(revision) = self.commit(next, vec![Write::PutConfig(stored)])? {
                let st = self.state();
                if let Some(made) = st.configs.get(&key) {
                    tracing::info!(
                        keys = doc.data.len(),
                        files = doc.files.len(),
                        secrets = doc.secret.len(),
                        "config content"
                    );
                    return Ok(applied(made, revision, true));
                }
            }
        }
        Err(RegistryError::Contended(MAX_PLANS))
    }

    /// A version (`None`: the latest), secrets opened only when `secrets`.
    pub fn config(
        &self,
        application: &str,
        profile: &str,
        version: Option<u64>,
        secrets: bool,
    ) -> Result<ConfigVersion, RegistryError> {
        let latest = {
            let st = self.state();
            st.configs
                .get(&(application.to_string(), profile.to_string()))
                .cloned()
        };
        let stored = match (version, latest) {
            (_, None) => return Err(unknown(application, profile, None)),
            (None, Some(l)) => l,
            (Some(v), Some(l)) if v == l.meta.version => l,
            (Some(v), Some(_)) => self
                .store
                .config_version(application, profile, v)?
                .ok_or_else(|| unknown(application, profile, Some(v)))?,
        };
        Ok(self.store.unseal(&stored, secrets)?)
    }

    /// Every version of one config, oldest first.
    pub fn config_history(
        &self,
        application: &str,
        profile: &str,
    ) -> Result<Vec<ConfigMeta>, RegistryError> {
        let history = self.store.config_history(application, profile)?;
        if history.is_empty() {
            return Err(unknown(application, profile, None));
        }
        Ok(history)
    }

    /// The latest version of every config, sorted by application and profile.
    pub fn configs(&self) -> Vec<ConfigMeta> {
        self.state()
            .configs
            .values()
            .map(|c| c.meta.clone())
            .collect()
    }
}

fn applied(c: &StoredConfig, revision: u64, changed: bool) -> ConfigApplied {
    ConfigApplied {
        application: c.meta.application.clone(),
        profile: c.meta.profile.clone(),
        version: c.meta.version,
        revision,
        changed,
        hash: c.meta.hash.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::registry::RegistrySettings;
    use crate::control::store::Store;
    use crate::model::config::REDACTED;
    use crate::model::WatchEvent;
    use serde_json::json;
    use std::path::Path;

    fn open(dir: &Path) -> Registry {
        let store = Store::open(dir).unwrap();
        let cidr = "127.100.0.0/16".parse().unwrap();
        Registry::open(store, cidr, RegistrySettings::default()).unwrap()
    }

    fn doc(text: &str, password: &str) -> ConfigDocument {
        ConfigDocument::from_value(&json!({
            "application": "hello",
            "data": {"greeting": {"text": text}, "db": {"password": password}},
            "secret": ["db.password"]
        }))
        .unwrap()
    }

    fn by(message: &str) -> Authored {
        Authored {
            author: "admin".into(),
            message: Some(message.into()),
        }
    }

    #[tokio::test]
    async fn versions_are_immutable_numbered_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let reg = open(dir.path());
        let mut rx = reg.subscribe(0).rx;
        let v1 = reg
            .apply_config(doc("hi", "s3cret-one"), by("first"))
            .unwrap();
        assert_eq!((v1.version, v1.revision, v1.changed), (1, 1, true));
        let same = reg
            .apply_config(doc("hi", "s3cret-one"), by("again"))
            .unwrap();
        assert_eq!((same.version, same.revision, same.changed), (1, 1, false));
        let v2 = reg
            .apply_config(doc("hello", "s3cret-two"), by("second"))
            .unwrap();
        assert_eq!((v2.version, v2.revision), (2, 2));
        let line = rx.try_recv().unwrap().line;
        let ev: WatchEvent = serde_json::from_slice(&line).unwrap();
        assert!(
            matches!(ev, WatchEvent::Config { revision: 1, ref config } if config.version == 1)
        );
        assert!(
            !String::from_utf8_lossy(&line).contains("s3cret-one"),
            "the stream carries heads, never values"
        );

        let shown = reg.config("hello", "default", None, false).unwrap();
        assert_eq!(shown.data["db.password"], json!(REDACTED));
        assert!(shown.redacted);
        let open_v1 = reg.config("hello", "default", Some(1), true).unwrap();
        assert_eq!(open_v1.data["db.password"], json!("s3cret-one"));
        assert_eq!(open_v1.meta.message.as_deref(), Some("first"));

        let back = reg
            .rollback_config("hello", "default", 1, by("back"))
            .unwrap();
        assert_eq!((back.version, back.changed), (3, true));
        assert_eq!(back.hash, v1.hash, "the same content, the same hash");
        let again = reg
            .rollback_config("hello", "default", 1, by("back"))
            .unwrap();
        assert!(!again.changed, "already there");
        assert!(matches!(
            reg.rollback_config("hello", "default", 9, by("x")),
            Err(RegistryError::UnknownConfig(_))
        ));
        let history = reg.config_history("hello", "default").unwrap();
        let rows: Vec<(u64, Option<u64>)> =
            history.iter().map(|m| (m.version, m.restores)).collect();
        assert_eq!(rows, [(1, None), (2, None), (3, Some(1))]);
        drop(reg);

        // The secrets rest sealed: the file never holds them in the clear.
        let file = std::fs::read(dir.path().join("control.redb")).unwrap();
        for secret in [b"s3cret-one".as_slice(), b"s3cret-two".as_slice()] {
            assert!(
                !file.windows(secret.len()).any(|w| w == secret),
                "plaintext secret in the store"
            );
        }
        assert!(
            file.windows(5).any(|w| w == b"hello"),
            "non-secret values are plain"
        );

        let reg = open(dir.path());
        assert_eq!(reg.snapshot().configs[0].version, 3);
        let v3 = reg.config("hello", "default", None, true).unwrap();
        assert_eq!(v3.data["db.password"], json!("s3cret-one"));
        let v4 = reg
            .apply_config(doc("hey", "s3cret-one"), by("after restart"))
            .unwrap();
        assert_eq!((v4.version, v4.revision), (4, 4));
    }
}
