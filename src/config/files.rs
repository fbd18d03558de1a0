//! Writes a version's files into a directory the way the kubelet updates
//! a ConfigMap volume, so apps (and libraries) written for ConfigMaps
//! work unchanged:
//!
//! ```text
//! dir/..v7.1764640595123456789/application.json   the version's files
//! dir/..data -> ..v7.1764640595123456789          swapped by rename(2)
//! dir/application.json -> ..data/application.json one link per name
//! ```
//!
//! A version is written whole into a new hidden directory; then one
//! `rename` of a `..data` symlink makes it current. A reader
//! opening `dir/NAME` gets the old file or the new one, never a mix; a
//! reader that resolves `..data` once and reads several files from it
//! gets one version of all of them. The two versions before the current
//! one keep their directories, so a reader that resolved `..data` just
//! before a swap (or two) can still finish reading; only a path walk that
//! spans three swaps can find its version gone (ENOENT, never a mix).
//!
//! Nothing is fsynced, as the kubelet does not: the swap is for readers,
//! who see the page cache, not for crashes. What survives a crash is the
//! sidecar's cache (synced), from which it rewrites the directory when it
//! starts. Fifty sidecars syncing six files each on one disk took most of
//! a change's propagation time.

use std::io::{self, Write as _};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

/// The symlink to the current version's directory (the kubelet's name).
pub const DATA: &str = "..data";
const DATA_TMP: &str = "..data_tmp";
/// Version directories start with this (the kubelet's start with `..`
/// then a timestamp; only the `..` matters to readers).
const VERSION_PREFIX: &str = "..v";
/// Version directories kept: the current one and the two before it.
const KEEP: usize = 3;

/// The mode of config files unless told otherwise (Kubernetes'
/// `defaultMode`).
pub const DEFAULT_MODE: u32 = 0o644;

/// Makes `files` the content of `dir` for `version`, atomically, each file
/// with `mode` (its directory: the same, searchable where readable). Every
/// name is checked again here, whoever validated it before: a name that
/// is not one plain component inside `dir` fails the whole version.
pub fn write(dir: &Path, version: u64, files: &[(&str, &[u8])], mode: u32) -> io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    for (file, _) in files {
        super::document::path_component(file).map_err(|why| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("file name {file:?}: {why}"),
            )
        })?;
    }
    std::fs::create_dir_all(dir)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let name = format!("{VERSION_PREFIX}{version}.{nanos}");
    let staged = dir.join(&name);
    std::fs::create_dir(&staged)?;
    let dir_mode = mode | ((mode & 0o444) >> 2);
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(dir_mode))?;
    for (file, bytes) in files {
        let path = staged.join(file);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)?;
        // The umask may have taken bits the operator asked for.
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
    }

    // The swap: a new symlink renamed over the old one.
    let tmp = dir.join(DATA_TMP);
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    symlink(&name, &tmp)?;
    std::fs::rename(&tmp, dir.join(DATA))?;

    // Names of this version point through ..data; names it lost go.
    for (file, _) in files {
        let link = dir.join(file);
        let want = PathBuf::from(DATA).join(file);
        if std::fs::read_link(&link).ok().as_deref() != Some(want.as_path()) {
            let tmp = dir.join(format!("{DATA_TMP}.{file}"));
            let _ = std::fs::remove_file(&tmp);
            symlink(&want, &tmp)?;
            std::fs::rename(&tmp, &link)?;
        }
    }
    // Version directories by when they were written (the name's nanos;
    // version numbers may restart).
    let mut versions: Vec<(u128, std::path::PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let fname = entry.file_name();
        let Some(fname) = fname.to_str() else {
            continue;
        };
        let path = entry.path();
        if fname.starts_with("..") {
            if let Some(rest) = fname.strip_prefix(VERSION_PREFIX) {
                let written = rest.rsplit('.').next().and_then(|n| n.parse().ok());
                versions.push((written.unwrap_or(0), path));
            }
            continue;
        }
        let ours = std::fs::read_link(&path).is_ok_and(|t| t.starts_with(DATA))
            && !files.iter().any(|(f, _)| *f == fname);
        if ours {
            std::fs::remove_file(&path)?;
        }
    }
    versions.sort();
    let old = versions.len().saturating_sub(KEEP);
    for (_, path) in versions.into_iter().take(old) {
        if path != staged {
            std::fs::remove_dir_all(&path)?;
        }
    }
    Ok(())
}

/// The version `dir` holds now, from the name `..data` points at.
pub fn current_version(dir: &Path) -> Option<u64> {
    let target = std::fs::read_link(dir.join(DATA)).ok()?;
    let name = target.to_str()?.strip_prefix(VERSION_PREFIX)?;
    name.split('.').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| !n.starts_with(VERSION_PREFIX))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn swaps_whole_versions_and_drops_lost_names() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cfg");
        write(
            &dir,
            1,
            &[("a.txt", b"one"), ("b.txt", b"one")],
            DEFAULT_MODE,
        )
        .unwrap();
        assert_eq!(names(&dir), ["..data", "a.txt", "b.txt"]);
        assert_eq!(std::fs::read(dir.join("a.txt")).unwrap(), b"one");
        assert_eq!(current_version(&dir), Some(1));
        write(&dir, 2, &[("a.txt", b"two")], DEFAULT_MODE).unwrap();
        assert_eq!(names(&dir), ["..data", "a.txt"]);
        assert_eq!(std::fs::read(dir.join("a.txt")).unwrap(), b"two");
        write(&dir, 3, &[("a.txt", b"three")], DEFAULT_MODE).unwrap();
        let versions = std::fs::read_dir(&dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_str()
                    .unwrap()
                    .starts_with(VERSION_PREFIX)
            })
            .count();
        assert_eq!(versions, 3, "the current and the two before it");
        assert_eq!(current_version(&dir), Some(3));
        // A file the operator put there is not ours to remove.
        std::fs::write(dir.join("mine.txt"), b"x").unwrap();
        write(&dir, 4, &[("a.txt", b"four")], 0o600).unwrap();
        assert!(dir.join("mine.txt").exists());
        let mode = std::fs::metadata(dir.join("a.txt")).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        // Names that would leave the directory fail the whole version.
        for bad in ["../escape", "/etc/x", "..data", "a/b"] {
            let e = write(&dir, 5, &[("ok.txt", b"x"), (bad, b"x")], DEFAULT_MODE).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad}");
        }
        assert_eq!(current_version(&dir), Some(4));
        assert!(!tmp.path().join("escape").exists());
    }

    /// The issue's reader: opening files in a tight loop while 100
    /// versions are written never sees a partial file or two versions at
    /// once.
    #[test]
    fn a_reader_in_a_tight_loop_never_sees_a_partial_or_mixed_version() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let body = |v: u64, file: &str| format!("{file}:{v}:{}:{v}", "x".repeat(64 * 1024));
        let (a, b) = (body(0, "a"), body(0, "b"));
        write(
            &dir,
            0,
            &[("a", a.as_bytes()), ("b", b.as_bytes())],
            DEFAULT_MODE,
        )
        .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (dir, stop) = (dir.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut reads, mut pairs) = (0u64, 0u64);
                let check = |text: &str, file: &str| -> u64 {
                    let parts: Vec<&str> = text.split(':').collect();
                    assert_eq!(parts.len(), 4, "{file}: partial ({} bytes)", text.len());
                    assert_eq!(parts[0], file);
                    assert_eq!(parts[1], parts[3], "{file}: two versions in one file");
                    assert_eq!(parts[2].len(), 64 * 1024, "{file}: partial");
                    parts[1].parse().unwrap()
                };
                while !stop.load(Ordering::Acquire) {
                    let text = match std::fs::read_to_string(dir.join("a")) {
                        Ok(t) => t,
                        // Its version removed three swaps later, mid-walk.
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => panic!("{e}"),
                    };
                    check(&text, "a");
                    reads += 1;
                    // One version of both: resolve ..data once.
                    let Ok(target) = std::fs::read_link(dir.join(DATA)) else {
                        continue;
                    };
                    let base = dir.join(target);
                    let (Ok(ta), Ok(tb)) = (
                        std::fs::read_to_string(base.join("a")),
                        std::fs::read_to_string(base.join("b")),
                    ) else {
                        // Removed two swaps later: this reader was slow.
                        continue;
                    };
                    assert_eq!(check(&ta, "a"), check(&tb, "b"), "mixed versions");
                    pairs += 1;
                }
                (reads, pairs)
            })
        };
        for v in 1..=100 {
            let (a, b) = (body(v, "a"), body(v, "b"));
            write(
                &dir,
                v,
                &[("a", a.as_bytes()), ("b", b.as_bytes())],
                DEFAULT_MODE,
            )
            .unwrap();
        }
        stop.store(true, Ordering::Release);
        let (reads, pairs) = reader.join().unwrap();
        assert!(reads > 0 && pairs > 0, "reads {reads}, pairs {pairs}");
        assert_eq!(current_version(&dir), Some(100));
    }
}
