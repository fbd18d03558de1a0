//! The wire shapes of externalized configuration: a `kind: Config`
//! document, the immutable versions mesh-control makes of it, the heads
//! the watch stream carries, and what a proxy reports it has delivered.
//!
//! Parsing untrusted documents lives in `crate::config::document`; these
//! are the shapes once valid.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// The `kind` of a config document.
pub const CONFIG_KIND: &str = "Config";
/// The profile of a document that names none.
pub const DEFAULT_PROFILE: &str = "default";
/// What `get` and `history` show in place of a secret's value.
pub const REDACTED: &str = "<redacted>";

/// A valid `kind: Config` document: one application's configuration for
/// one profile. `data` is flat (`a.b.c` keys, lists as `a[0]`), its values
/// strings, numbers or booleans; `files` are named files given whole.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigDocument {
    pub application: String,
    pub profile: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, Value>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, String>,
    /// Keys of `data` whose values are secrets: encrypted at rest, redacted
    /// unless asked for.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub secret: BTreeSet<String>,
}

/// Who made a version, when and why: a row of `config history`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigMeta {
    pub application: String,
    pub profile: String,
    /// 1, 2, 3...: per application and profile, never reused.
    pub version: u64,
    /// The registry revision that published it.
    pub revision: u64,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// The verified caller that applied it (`admin`, or `anonymous` with
    /// identity off).
    pub author: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Keyed SHA-256 of the content (`hmac-sha256:HEX`): equal content,
    /// equal hash, and nothing learnt about a secret from it.
    pub hash: String,
    /// A rollback names the version it restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restores: Option<u64>,
}

/// One version whole: `GET /v1/configs/{app}/{profile}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigVersion {
    #[serde(flatten)]
    pub meta: ConfigMeta,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, Value>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub secret: BTreeSet<String>,
    /// Whether secret values were replaced by [`REDACTED`].
    #[serde(default)]
    pub redacted: bool,
}

impl ConfigVersion {
    /// The document this version holds (for `get -o yaml`, diffs, and the
    /// "nothing changed" test).
    pub fn document(&self) -> ConfigDocument {
        ConfigDocument {
            application: self.meta.application.clone(),
            profile: self.meta.profile.clone(),
            data: self.data.clone(),
            files: self.files.clone(),
            secret: self.secret.clone(),
        }
    }
}

/// The latest version of one application and profile, as the watch
/// stream and snapshots carry it: enough for a proxy to know it must
/// fetch, nothing secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigHead {
    pub application: String,
    pub profile: String,
    pub version: u64,
    pub hash: String,
}

/// `PUT /v1/configs/{app}/{profile}`: a document and why.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApplyConfig {
    /// The document (validated like `mesh-ctl apply` does).
    pub document: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `POST /v1/configs/{app}/{profile}/rollback`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollback {
    pub to: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The answer to an apply or a rollback.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigApplied {
    pub application: String,
    pub profile: String,
    /// The version now current (the one made, or the unchanged latest).
    pub version: u64,
    pub revision: u64,
    /// False when the content equalled the latest version: nothing made.
    pub changed: bool,
    pub hash: String,
}

/// How an app took a reload (what `config status` shows as its ack).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadOutcome {
    /// The version the reload was for.
    pub version: u64,
    pub at: String,
    pub ok: bool,
    /// `SIGHUP to pid 42`, `POST http://127.0.0.1:8080/-/reload: 200`, or
    /// what went wrong.
    pub detail: String,
}

/// One subscription of a proxy (`--config APP[:PROFILE]`) and what it
/// has delivered: `PUT /v1/proxies/{id}/configs`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveredConfig {
    pub application: String,
    pub profile: String,
    /// The version on disk and on the local endpoint (`None`: none yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_at: Option<String>,
    /// Why the files could not be written (the local endpoint still serves).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload: Option<ReloadOutcome>,
}

/// The body of `PUT /v1/proxies/{id}/configs`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveredConfigs {
    pub configs: Vec<DeliveredConfig>,
}
