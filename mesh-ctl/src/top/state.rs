//! The proxy's `/state` document, as the proxy itself defines it
//! (`mesh::model::state`): unknown fields are skipped and missing ones
//! default, so a proxy older or newer than this CLI still renders, with
//! `-` where a section is missing.

pub use mesh::model::state::{EndpointState, ProxyState, ServiceState};
