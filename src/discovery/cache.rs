//! The last known registry on disk, so a proxy keeps routing across its own
//! restarts while the control plane is unreachable.
//!
//! Written atomically (temp file + rename) so a crash mid-write leaves the
//! previous snapshot, never a torn one.

use crate::model::Snapshot;
use std::io;
use std::path::PathBuf;

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
        self.store_with(|w| serde_json::to_writer(w, snap))
    }

    /// Replaces the cached snapshot with what `write` serializes (a
    /// [`Snapshot`]'s JSON), streamed to the file.
    pub fn store_with(
        &self,
        write: impl FnOnce(&mut io::BufWriter<std::fs::File>) -> serde_json::Result<()>,
    ) -> io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let tmp = self.dir.join(format!("{FILE}.tmp"));
        let mut w = io::BufWriter::new(std::fs::File::create(&tmp)?);
        write(&mut w).map_err(io::Error::other)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, self.path())
    }
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
            configs: Vec::new(),
            routes: Vec::new(),
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
