//! Secrets at rest: AES-256-GCM (aws-lc-rs) under a key kept in
//! mesh-control's `--data-dir`, and the keyed content hash of a version.
//!
//! Each secret value is sealed on its own with a fresh random nonce, and
//! bound by its additional data to where it belongs (`app/profile/key`),
//! so a sealed value copied to another key or application fails to open
//! instead of leaking there. The key file is created once, 0600, and never
//! leaves the data directory; losing it loses the secrets (and only them).
//!
//! The content hash is HMAC-SHA256 under a key derived from the same one:
//! equal documents hash equal (an apply that changes nothing makes no
//! version), and a reader of `history` cannot test guesses of a secret.

use aws_lc_rs::aead::{Aad, Nonce, RandomizedNonceKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::hmac;
use base64::Engine as _;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

/// Under `--data-dir`.
pub const KEY_FILE: &str = "config.key";
const KEY_LEN: usize = 32;
/// The prefix of a sealed value: the scheme, so another can follow.
const SEALED: &str = "aes256gcm:";

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("config key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("a sealed secret does not open (wrong key, or the row was altered)")]
    Open,
}

/// The data key, ready to seal, open and hash.
pub struct Sealer {
    aead: RandomizedNonceKey,
    hash: hmac::Key,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    /// Reads `<dir>/config.key`, creating it (32 random bytes, 0600) the
    /// first time.
    pub fn open_or_create(dir: &Path) -> Result<Sealer, SealError> {
        Sealer::open_or_create_file(&dir.join(KEY_FILE))
    }

    /// Reads the key at `path`, creating it the first time (`--seal-key`:
    /// with `--store etcd` every replica is given the same file).
    pub fn open_or_create_file(path: &Path) -> Result<Sealer, SealError> {
        let path = path.to_path_buf();
        let bad = |reason: String| SealError::Key {
            path: path.clone(),
            reason,
        };
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; KEY_LEN];
                aws_lc_rs::rand::fill(&mut key).map_err(|_| bad("no randomness".into()))?;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(|e| bad(e.to_string()))?;
                f.write_all(&key).map_err(|e| bad(e.to_string()))?;
                f.sync_all().map_err(|e| bad(e.to_string()))?;
                key.to_vec()
            }
            Err(e) => return Err(bad(e.to_string())),
        };
        if bytes.len() != KEY_LEN {
            return Err(bad(format!(
                "{} bytes; a config key is {KEY_LEN} (restore the original, or remove it to start over without the stored secrets)",
                bytes.len()
            )));
        }
        Sealer::from_key(&bytes).map_err(bad)
    }

    fn from_key(key: &[u8]) -> Result<Sealer, String> {
        let aead = RandomizedNonceKey::new(&AES_256_GCM, key)
            .map_err(|_| "not an AES-256 key".to_string())?;
        let derive = hmac::Key::new(hmac::HMAC_SHA256, key);
        let hash_key = hmac::sign(&derive, b"mesh config content hash v1");
        let hash = hmac::Key::new(hmac::HMAC_SHA256, hash_key.as_ref());
        Ok(Sealer { aead, hash })
    }

    /// `value` (a JSON scalar's bytes) sealed for `app/profile/key`.
    pub fn seal(&self, place: &str, value: &[u8]) -> Result<String, SealError> {
        let mut buf = value.to_vec();
        let nonce = self
            .aead
            .seal_in_place_append_tag(Aad::from(place.as_bytes()), &mut buf)
            .map_err(|_| SealError::Open)?;
        let mut out = nonce.as_ref().to_vec();
        out.extend_from_slice(&buf);
        Ok(format!(
            "{SEALED}{}",
            base64::engine::general_purpose::STANDARD.encode(out)
        ))
    }

    /// What [`Sealer::seal`] sealed for the same `place`.
    pub fn open(&self, place: &str, sealed: &str) -> Result<Vec<u8>, SealError> {
        let b64 = sealed.strip_prefix(SEALED).ok_or(SealError::Open)?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| SealError::Open)?;
        if raw.len() < NONCE_LEN {
            return Err(SealError::Open);
        }
        let (nonce, rest) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Open)?;
        let mut buf = rest.to_vec();
        let plain = self
            .aead
            .open_in_place(nonce, Aad::from(place.as_bytes()), &mut buf)
            .map_err(|_| SealError::Open)?;
        Ok(plain.to_vec())
    }

    /// `hmac-sha256:HEX` of `content`.
    pub fn hash(&self, content: &[u8]) -> String {
        let tag = hmac::sign(&self.hash, content);
        let mut out = String::from("hmac-sha256:");
        for b in tag.as_ref() {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_opens_and_binds_to_its_place() {
        let dir = tempfile::tempdir().unwrap();
        let s = Sealer::open_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(KEY_FILE)).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o600
        );
        let a = s.seal("hello/default/db.password", b"\"s3cret\"").unwrap();
        let b = s.seal("hello/default/db.password", b"\"s3cret\"").unwrap();
        assert_ne!(a, b, "a fresh nonce each time");
        assert!(!a.contains("s3cret"));
        assert_eq!(
            s.open("hello/default/db.password", &a).unwrap(),
            b"\"s3cret\""
        );
        assert!(matches!(
            s.open("other/default/db.password", &a),
            Err(SealError::Open)
        ));
        // The same key file again: same key, same hashes.
        let again = Sealer::open_or_create(dir.path()).unwrap();
        assert_eq!(
            again.open("hello/default/db.password", &a).unwrap(),
            b"\"s3cret\""
        );
        assert_eq!(s.hash(b"x"), again.hash(b"x"));
        assert_ne!(s.hash(b"x"), s.hash(b"y"));
        std::fs::write(dir.path().join(KEY_FILE), b"short").unwrap();
        assert!(matches!(
            Sealer::open_or_create(dir.path()),
            Err(SealError::Key { .. })
        ));
    }
}
