//! mesh-control: the registry daemon, and the client that talks to it.

pub mod client; // HTTP client for the /v1 API, used by mesh-proxy and mesh-ctl
