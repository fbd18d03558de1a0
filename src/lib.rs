//! mesh: a sidecar service mesh. Crate map, one line per module:
#![forbid(unsafe_code)]

pub mod authz; //       AuthorizationPolicy: parsing with fields named, and the pure allow/deny decision
pub mod balance; //     load balancers: P2C peak-EWMA, least-request, round-robin, random
pub mod config; //      externalized config: documents, sealed secrets, rendering, delivery by the sidecar
pub mod control; //     mesh-control: registry, leases, store, VIPs, HTTP API, watch; API client
pub mod discovery; //   proxy side of discovery: watch client, routing table, snapshot cache, registration agent
pub mod flags; //       command-line conventions shared by the three programs (env names, help)
#[doc(hidden)]
pub mod fuzz; //        fuzz targets for tests/fuzz.rs: detection, documents, DNS, API bodies
pub mod gateway; //     gateway mode: Route documents, matching, filters, the edge listener
pub mod identity; //    workload identity: the CA, bootstrap tokens, SPIFFE verifiers, certificate rotation
pub mod model; //       wire types shared by proxy, control plane and CLI (no tokio)
pub mod net; //         the proxy's own marked sockets
pub mod proxy; //       data plane: intercept (iptables), dns, protocol detection, outbound, inbound, admin
pub mod resilience; //  breaker, bulkhead, retry budget, outlier ejection, retry rules (pure state machines)
pub mod telemetry; //   logging setup and metrics
