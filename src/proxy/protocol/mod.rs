//! What travels over a connection, and moving opaque bytes.
//!
//! `detect` tells HTTP/1, HTTP/2 prior knowledge, TLS and the mesh's own
//! opaque preamble apart from the first bytes a client sends, without ever
//! waiting long for a client that is waiting for the server. `PrefixedIo`
//! hands the bytes detection read back to whoever serves the connection.
//! `sort` decides a connection nobody declared by who speaks first, with
//! the upstream opened early. `relay` copies an opaque connection both
//! ways with half-close and an idle timeout; `tunnel` joins an upgraded
//! or CONNECTed HTTP connection to its upstream. `learned` keeps what
//! connections taught about undeclared ports; `orig_dst` reads where a
//! redirected connection was going. Both listeners use all of it.

mod detect;
mod io;
mod learned;
mod orig_dst;
mod relay;
mod sort;
pub mod tunnel;

pub use detect::{
    classify, client_hello, detect, detect_http_version, DetectConfig, Detected, Protocol,
    MESH_OPAQUE_PREAMBLE,
};
pub use io::PrefixedIo;
pub use learned::{Learned, LEARNED_TTL};
pub use orig_dst::original_dst;
pub use relay::{fast_close, relay, RelayEnd};
pub use sort::{first_word, looks_like_h2_settings, sort, FirstWord, Sorted, Upstream};
