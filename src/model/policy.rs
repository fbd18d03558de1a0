//! `kind: ServicePolicy` documents: the resilience settings of one
//! destination service. Every field is optional; [`Default`] gives the
//! defaults DESIGN lists, so a policy with only `service:` is the default
//! stack. Durations travel as strings (`15s`, `250ms`).
//!
//! Parsing untrusted documents (naming every bad field) lives in
//! `policy_parse.rs`; these are the validated values.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// How a service's endpoints are chosen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoadBalancer {
    /// Power of two choices over peak-EWMA latency × (in-flight + 1).
    #[default]
    P2cEwma,
    RoundRobin,
    LeastRequest,
    Random,
}

impl LoadBalancer {
    pub const NAMES: [&'static str; 4] = ["p2c-ewma", "round-robin", "least-request", "random"];

    pub fn as_str(self) -> &'static str {
        match self {
            LoadBalancer::P2cEwma => "p2c-ewma",
            LoadBalancer::RoundRobin => "round-robin",
            LoadBalancer::LeastRequest => "least-request",
            LoadBalancer::Random => "random",
        }
    }
}

impl std::str::FromStr for LoadBalancer {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "p2c-ewma" => Ok(LoadBalancer::P2cEwma),
            "round-robin" => Ok(LoadBalancer::RoundRobin),
            "least-request" => Ok(LoadBalancer::LeastRequest),
            "random" => Ok(LoadBalancer::Random),
            other => Err(format!(
                "unknown load balancer {other:?}; expected one of {}",
                Self::NAMES.join(", ")
            )),
        }
    }
}

/// A whole policy for one destination service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePolicy {
    pub service: String,
    #[serde(default)]
    pub load_balancer: LoadBalancer,
    /// Ports of the service's VIP whose connections skip protocol detection
    /// and are relayed as opaque TCP (server-speaks-first protocols), on top
    /// of the proxy's `--opaque-ports`. Distinct, in 1..=65535, at most 64.
    #[serde(default)]
    pub opaque_ports: Vec<u16>,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub retries: Retries,
    #[serde(default)]
    pub breaker: Breaker,
    #[serde(default)]
    pub bulkhead: Bulkhead,
    #[serde(default)]
    pub outlier: Outlier,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Fallback>,
    /// Every caller's proxy writes a JSON access-log line per request to
    /// this service (as `--access-log json` does for every service).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub access_log: bool,
}

impl ServicePolicy {
    /// The default stack for `service`.
    pub fn defaults(service: &str) -> Self {
        ServicePolicy {
            service: service.to_string(),
            load_balancer: LoadBalancer::default(),
            opaque_ports: Vec::new(),
            timeouts: Timeouts::default(),
            retries: Retries::default(),
            breaker: Breaker::default(),
            bulkhead: Bulkhead::default(),
            outlier: Outlier::default(),
            fallback: None,
            access_log: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    /// Whole request, retries included → 504 `timeout`.
    #[serde(with = "dur")]
    pub request: Duration,
    /// One TCP connect to an endpoint.
    #[serde(with = "dur")]
    pub connect: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            request: Duration::from_secs(15),
            connect: Duration::from_secs(1),
        }
    }
}

/// Failure classes a retry may follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RetryOn {
    /// The connection to the endpoint could not be made.
    ConnectFailure,
    /// The connection broke before a response arrived.
    Reset,
    /// 502, 503 or 504 from the upstream.
    GatewayError,
    /// gRPC UNAVAILABLE answered at once (a trailers-only response).
    /// Listing it declares the service's calls safe to repeat after
    /// UNAVAILABLE although gRPC calls are POSTs (gRPC's own
    /// `retryableStatusCodes`); it is not in the default list.
    Unavailable,
}

impl RetryOn {
    pub const NAMES: [&'static str; 4] =
        ["connect-failure", "reset", "gateway-error", "unavailable"];
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Retries {
    /// Retries after the first try (0 = never retry), like Istio's `attempts`.
    pub attempts: u32,
    pub on: Vec<RetryOn>,
    pub budget: RetryBudget,
}

impl Default for Retries {
    fn default() -> Self {
        Retries {
            attempts: 2,
            on: vec![RetryOn::ConnectFailure, RetryOn::GatewayError],
            budget: RetryBudget::default(),
        }
    }
}

/// Retries may add at most `percent` % of recent requests, plus
/// `min_per_second` retries per second regardless (Finagle/Linkerd style).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryBudget {
    pub percent: u32,
    pub min_per_second: u32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            percent: 20,
            min_per_second: 10,
        }
    }
}

/// Resilience4j-style breaker over a time-based sliding window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Breaker {
    #[serde(with = "dur")]
    pub window: Duration,
    /// Calls in the window before rates are judged.
    pub min_requests: u32,
    /// Percent of failed calls in the window that opens the breaker.
    pub failure_rate: u32,
    /// Consecutive failures that open it at once (0 = off).
    pub consecutive_failures: u32,
    pub slow_call: SlowCall,
    #[serde(with = "dur")]
    pub open_for: Duration,
    /// Calls let through while half-open; all must succeed to close.
    pub half_open_probes: u32,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            window: Duration::from_secs(10),
            min_requests: 20,
            failure_rate: 50,
            consecutive_failures: 0,
            slow_call: SlowCall::default(),
            open_for: Duration::from_secs(5),
            half_open_probes: 1,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlowCall {
    /// A call slower than this is slow.
    #[serde(with = "dur")]
    pub duration: Duration,
    /// Percent of slow calls in the window that opens the breaker.
    pub rate: u32,
}

impl Default for SlowCall {
    fn default() -> Self {
        SlowCall {
            duration: Duration::from_secs(1),
            rate: 100,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bulkhead {
    pub max_concurrent: u32,
    /// Calls that may wait for a slot (0 = reject at once when full).
    pub max_queued: u32,
    #[serde(with = "dur")]
    pub queue_timeout: Duration,
}

impl Default for Bulkhead {
    fn default() -> Self {
        Bulkhead {
            max_concurrent: 1024,
            max_queued: 0,
            queue_timeout: Duration::ZERO,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Outlier {
    /// Consecutive failures of one endpoint that eject it.
    pub consecutive_failures: u32,
    /// Base ejection time; multiplied by how often it was ejected (capped).
    #[serde(with = "dur")]
    pub eject_for: Duration,
    /// Never eject more than this share of a service's endpoints (at least
    /// one endpoint always stays).
    pub max_ejected_percent: u32,
}

impl Default for Outlier {
    fn default() -> Self {
        Outlier {
            consecutive_failures: 5,
            eject_for: Duration::from_secs(30),
            max_ejected_percent: 50,
        }
    }
}

/// What to answer instead of an error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Fallback {
    /// Route the call to another service.
    Service { service: String },
    /// A fixed response.
    Static {
        #[serde(default = "ok_status")]
        status: u16,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        headers: BTreeMap<String, String>,
        body: String,
    },
}

fn ok_status() -> u16 {
    200
}

/// Serde for durations as `parse_duration` strings.
pub mod dur {
    use super::super::{format_duration, parse_duration};
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_as_json() {
        let p = ServicePolicy::defaults("orders");
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["timeouts"]["request"], "15s");
        assert_eq!(json["loadBalancer"], "p2c-ewma");
        assert_eq!(json["breaker"]["slowCall"]["duration"], "1s");
        let back: ServicePolicy = serde_json::from_value(json).unwrap();
        assert_eq!(back, p);
        let minimal: ServicePolicy = serde_json::from_str(r#"{"service":"orders"}"#).unwrap();
        assert_eq!(minimal, p);
    }

    #[test]
    fn fallback_shapes() {
        let s: Fallback = serde_json::from_str(r#"{"service":"orders-readonly"}"#).unwrap();
        assert_eq!(
            s,
            Fallback::Service {
                service: "orders-readonly".into()
            }
        );
        let b: Fallback = serde_json::from_str(r#"{"body":"[]"}"#).unwrap();
        assert!(matches!(b, Fallback::Static { status: 200, .. }));
    }
}
