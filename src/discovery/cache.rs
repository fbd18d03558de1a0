//! The last known registry on disk, so a proxy keeps routing across its own
//! restarts while the control plane is unreachable.
//!
//! Written atomically (temp file + rename) so a crash mid-write leaves the
//! previous snapshot, never a torn one.

use crate::model::Snapshot;
use std::io;
use std::path::{Path, PathBuf};

const FILE: &str = "snapshot.json";

/// A snapshot file under `--cache-dir`.
#[derive(Clone, Debug)]
pub struct SnapshotCache {
    dir: PathBuf,
}

impl SnapshotCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        SnapshotCache { dir: dir.into() }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    /// The cached snapshot; `Ok(None)` when there is none yet.
    pub fn load(&self) -> io::Result<Option<Snapshot>> {
        match std::fs::read(self.path()) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Replaces the cached snapshot.
    pub fn store(&self, snap: &Snapshot) -> io::Result<()> {
        let bytes = serde_json::to_vec(snap).map_err(io::Error::other)?;
        self.store_json(&bytes)
    }

    /// Replaces the cached snapshot with `json`, a serialized [`Snapshot`].
    pub fn store_json(&self, json: &[u8]) -> io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let tmp = self.dir.join(format!("{FILE}.tmp"));
        write_synced(&tmp, json)?;
        std::fs::rename(&tmp, self.path())
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ServiceInfo;

    #[test]
    fn round_trip_and_missing() {
        let dir = tempfile::tempdir().unwrap();
        let cache = SnapshotCache::new(dir.path().join("sub"));
        assert!(cache.load().unwrap().is_none());
        let snap = Snapshot {
            revision: 42,
            policies: Vec::new(),
            authorizations: Vec::new(),
            bundle: None,
            services: vec![ServiceInfo {
                name: "hello".into(),
                vip: "127.100.0.1".parse().unwrap(),
                instances: vec![],
            }],
        };
        cache.store(&snap).unwrap();
        assert_eq!(cache.load().unwrap(), Some(snap));
        std::fs::write(cache.path(), b"{garbage").unwrap();
        assert!(cache.load().is_err());
    }
}
