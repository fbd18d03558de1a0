//! What travels over a connection, and moving opaque bytes.
//!
//! `detect` tells HTTP/1, HTTP/2 prior knowledge, TLS and the mesh's own
//! opaque preamble apart from the first bytes a client sends, without ever
//! waiting long for a client that is waiting for the server. `PrefixedIo`
//! hands the bytes detection read back to whoever serves the connection.
//! `sort` decides a connection nobody declared by who speaks first, with
//! the upstream opened early. `relay` copies an opaque connection both
//! ways with half-close and an idle timeout.

mod detect;
mod io;
mod relay;
mod sort;

pub use detect::{classify, detect, detect_http_version, Detected, Protocol, MESH_OPAQUE_PREAMBLE};
pub use io::PrefixedIo;
pub use relay::{fast_close, relay, RelayEnd};
pub use sort::{first_word, sort, FirstWord, Sorted, Upstream};
