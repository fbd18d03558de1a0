//! The data plane: what runs inside `mesh-proxy`.

pub mod dns; //       DNS responder for mesh names, forwarding the rest (hickory)
pub mod intercept; // `mesh-proxy init`: iptables rules that redirect outbound TCP and DNS
