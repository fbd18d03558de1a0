//! Externalized configuration (the Spring Cloud Config idea, for apps in
//! any language): `kind: Config` documents, versioned by mesh-control and
//! delivered by the sidecar.
//!
//! - `document`: parsing untrusted documents, every bad field named;
//! - `seal`: secrets at rest (AES-256-GCM) and the keyed content hash;
//! - `render`: a version as `application.properties`, `application.json`,
//!   `.env` and its named files (pure);
//! - `files`: the atomic directory swap of a ConfigMap volume;
//! - `delivery`: the sidecar's subscriptions, cache, reloads and reports;
//! - `local`: the admin port's `/config/APP/PROFILE` (long poll) and the
//!   Spring Cloud Config server endpoints.
//!
//! mesh-control's side (versions, history, rollback) lives with the other
//! documents in `control::registry::configs` and `control::api::configs`.

pub mod delivery;
pub mod document;
pub mod files;
pub mod local;
pub mod render;
pub mod seal;

pub use delivery::{ConfigArgs, Delivery};
pub use document::MAX_CONFIG_BYTES;
