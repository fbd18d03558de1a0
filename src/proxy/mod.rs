//! The data plane: what runs inside `mesh-proxy`.

pub mod admin; //     /ready, /live, /metrics, /state, POST /shutdown
pub mod body; //      request and response bodies: replay, stream guards, gRPC trailers
pub mod config; //    flags of `mesh-proxy`
pub mod dns; //       DNS responder for mesh names, forwarding the rest (hickory)
pub mod grpc; //      gRPC status classification and trailers-only mesh errors
pub mod headers; //   header hygiene: hop-by-hop, x-mesh-*, forwarded, traceparent
pub mod inbound; //   inbound listener: concurrency limit, header hygiene, to the app on localhost
pub mod intercept; // `mesh-proxy init`: iptables rules that redirect outbound TCP and DNS
pub mod outbound; //  outbound listener: transparent and explicit HTTP, TCP relay
pub mod protocol; //  protocol detection, prefixed IO, opaque relay
pub mod rescue; //    the one place mesh errors become HTTP responses
mod run;
pub mod server; //    hyper server builders and graceful connection stop
pub mod upstream; //  HTTP/1 and HTTP/2 connections to endpoints, peers, the app //           startup and the shutdown phases

pub use run::{run, ProxyError};
