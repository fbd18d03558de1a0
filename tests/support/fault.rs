//! The fault-injecting upstream (`fault_server.py`) and the load generator
//! (`load.py`) seen from the tests: where the scripts are, the fault knobs as
//! a typed value, and the figures both report.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The fault-injecting HTTP upstream (python3 stdlib).
pub const FAULT_SERVER: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/fault_server.py");
/// The bounded load generator (python3 stdlib).
pub const LOAD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/load.py");

/// A change of the fault server's knobs: `None` keeps the current value
/// (the server's `POST /_fault` merges).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Fault {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hang: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reset_rate: Option<f64>,
}

/// What `GET /_stats` answers: requests the app actually received (control
/// requests excluded; a reset request counts).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct Stats {
    pub requests: u64,
    pub by_method: BTreeMap<String, u64>,
    pub in_flight: u64,
    pub max_in_flight: u64,
    /// "ok", "failed", "reset": what the server did.
    #[serde(default)]
    pub outcomes: BTreeMap<String, u64>,
}

/// One request of a `load.py` run.
#[derive(Clone, Debug, Deserialize)]
pub struct Call {
    /// Index in issue order.
    pub i: u64,
    /// Wall clock (ms since the epoch) when the request was started.
    pub start: f64,
    /// Duration of the whole exchange (connect to last byte).
    pub ms: f64,
    /// 0 when no HTTP response came back (see `error`).
    pub status: u16,
    pub error: Option<String>,
    pub mesh_error: Option<String>,
    pub fallback: Option<String>,
    pub body: String,
}

/// A whole `load.py` run.
#[derive(Clone, Debug, Deserialize)]
pub struct Load {
    pub elapsed_ms: f64,
    pub results: Vec<Call>,
}

// === impl Fault ===

impl Fault {
    /// Every knob back to "no fault".
    pub fn healthy() -> Fault {
        Fault {
            failure_rate: Some(0.0),
            status: Some(500),
            latency_ms: Some(0),
            hang: Some(false),
            reset_rate: Some(0.0),
        }
    }

    /// Every request answered with `status`.
    pub fn failing(status: u16) -> Fault {
        Fault {
            failure_rate: Some(1.0),
            status: Some(status),
            ..Fault::default()
        }
    }

    pub fn latency_ms(ms: u64) -> Fault {
        Fault {
            latency_ms: Some(ms),
            ..Fault::default()
        }
    }

    pub fn hang(on: bool) -> Fault {
        Fault {
            hang: Some(on),
            ..Fault::default()
        }
    }

    /// Every request's connection reset (RST) before any response byte.
    pub fn resetting() -> Fault {
        Fault {
            reset_rate: Some(1.0),
            ..Fault::default()
        }
    }

    pub fn json(&self) -> String {
        serde_json::to_string(self).expect("a Fault serializes")
    }

    /// The same knobs as start flags of `fault_server.py`.
    pub fn flags(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut flag = |name: &str, v: Option<String>| {
            if let Some(v) = v {
                out.push(format!("--{name}"));
                out.push(v);
            }
        };
        flag("failure-rate", self.failure_rate.map(|v| v.to_string()));
        flag("status", self.status.map(|v| v.to_string()));
        flag("latency-ms", self.latency_ms.map(|v| v.to_string()));
        flag("reset-rate", self.reset_rate.map(|v| v.to_string()));
        if self.hang == Some(true) {
            out.push("--hang".to_string());
        }
        out
    }
}

/// The header names (lower-cased, in arrival order) that the app saw,
/// from the body of the fault server's `/_echo` answer.
pub fn echoed_header_names(echo_body: &str) -> Vec<String> {
    let seen: serde_json::Value = serde_json::from_str(echo_body)
        .unwrap_or_else(|e| panic!("not /_echo JSON ({e}): {echo_body:?}"));
    seen["headers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| h[0].as_str().map(str::to_ascii_lowercase))
        .collect()
}

/// The `x-mesh-*` headers among `names` that the mesh never hands an app:
/// all but `x-mesh-timeout` (the time its caller has left, the one the
/// inbound side sets for the app to pass along).
pub fn foreign_mesh_headers<S: AsRef<str>>(names: &[S]) -> Vec<String> {
    names
        .iter()
        .map(|n| n.as_ref().to_ascii_lowercase())
        .filter(|n| n.starts_with("x-mesh-") && n != "x-mesh-timeout")
        .collect()
}

/// Arguments of `python3` that start the fault server.
pub fn server_args(bind: &str, port: u16, name: &str, initial: &Fault) -> Vec<String> {
    let mut args: Vec<String> = ["-u", FAULT_SERVER, "--bind", bind, "--port"]
        .map(String::from)
        .to_vec();
    args.push(port.to_string());
    args.push("--name".to_string());
    args.push(name.to_string());
    args.extend(initial.flags());
    args
}

// === impl Load ===

impl Load {
    pub fn parse(stdout: &[u8]) -> Load {
        serde_json::from_slice(stdout).unwrap_or_else(|e| {
            panic!(
                "load.py printed no valid JSON ({e}):\n{}",
                String::from_utf8_lossy(stdout)
            )
        })
    }

    /// Calls whose `x-mesh-error` is `reason`.
    pub fn with_mesh_error(&self, reason: &str) -> Vec<&Call> {
        self.results
            .iter()
            .filter(|c| c.mesh_error.as_deref() == Some(reason))
            .collect()
    }

    /// Calls started in `[from_ms, from_ms + window_ms)` (epoch ms): how
    /// much of the load met an event, not how fast the machine is.
    pub fn started_within(&self, from_ms: f64, window_ms: f64) -> usize {
        self.results
            .iter()
            .filter(|c| c.start >= from_ms && c.start < from_ms + window_ms)
            .count()
    }

    /// Calls that got no HTTP response at all.
    pub fn transport_errors(&self) -> Vec<&Call> {
        self.results.iter().filter(|c| c.status == 0).collect()
    }

    /// How many calls answered each body (trimmed), e.g. instance names.
    pub fn bodies(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for c in &self.results {
            *out.entry(c.body.trim().to_string()).or_insert(0) += 1;
        }
        out
    }

    /// How many calls got each status.
    pub fn statuses(&self) -> BTreeMap<u16, usize> {
        let mut out = BTreeMap::new();
        for c in &self.results {
            *out.entry(c.status).or_insert(0) += 1;
        }
        out
    }
}

/// Median of some latencies in ms (`NaN` when empty).
pub fn median_ms<'a>(calls: impl IntoIterator<Item = &'a Call>) -> f64 {
    percentile_ms(calls, 50.0)
}

/// The `p`th percentile (nearest rank) of some latencies in ms.
pub fn percentile_ms<'a>(calls: impl IntoIterator<Item = &'a Call>, p: f64) -> f64 {
    let mut ms: Vec<f64> = calls.into_iter().map(|c| c.ms).collect();
    if ms.is_empty() {
        return f64::NAN;
    }
    ms.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * ms.len() as f64).ceil() as usize;
    ms[rank.clamp(1, ms.len()) - 1]
}
