//! The data plane: what runs inside `mesh-proxy`.

pub mod admin; //     /ready, /live, /metrics, /state, POST /shutdown
pub mod admission; // per-listener connection limit, overload refusal at accept
pub mod body; //      request and response bodies: replay, stream guards, gRPC trailers
pub mod config; //    flags of `mesh-proxy`
pub mod dns; //       DNS responder for mesh names, forwarding the rest (hickory)
pub mod grpc; //      gRPC status classification and trailers-only mesh errors
pub mod headers; //   header hygiene: hop-by-hop, x-mesh-*, forwarded, traceparent
pub mod inbound; //   inbound listener: concurrency limit, header hygiene, to the app on localhost
pub mod intercept; // `mesh-proxy init`: iptables rules that redirect outbound TCP and DNS
pub mod lifecycle; // `mesh-proxy wait`, --exit-when-app-exits
pub mod limits; //    every bound on what a client may send or hold, in one place
pub mod outbound; //  outbound listener, and the one call path every protocol shares (policy)
pub mod protocol; //  protocol detection, learned ports, prefixed IO, relay, tunnels
pub mod rescue; //    the one place mesh errors become responses (HTTP or gRPC form)
mod run; //           startup in two steps (bind, serve) and the shutdown phases
pub mod server; //    hyper server builders and graceful connection stop
pub mod upstream; //  pooled HTTP/1 and HTTP/2 connections to endpoints, peers, the app

pub use run::{bind, bind_gateway, run, Bound, EdgeSettings, Phase, ProxyError};
