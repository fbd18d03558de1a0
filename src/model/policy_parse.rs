//! Parsing untrusted `kind: ServicePolicy` documents into [`ServicePolicy`].
//!
//! Documents are read as generic JSON values and walked field by field
//! rather than deserialized by derive, so one bad field does not hide the
//! next: every problem is reported at once, each under its camelCase path
//! (`breaker.failureRate`, `retries.on[1]`, `fallback.headers.x-a`). The
//! control plane validates API bodies with [`ServicePolicy::from_value`];
//! `mesh-ctl apply` validates whole files with [`parse_policy_documents`]
//! before sending anything.

mod ports;
pub(crate) mod reader;
#[cfg(test)]
mod tests;

pub use ports::MAX_OPAQUE_PORTS;

use crate::model::policy::{
    Breaker, Bulkhead, Fallback, Outlier, Retries, RetryBudget, RetryOn, SlowCall, Timeouts,
};
use crate::model::{validate_service_name, FieldErrors, LoadBalancer, ServicePolicy};
use reader::{type_name, AtLeast, Section};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// The `kind` of a policy document.
pub const POLICY_KIND: &str = "ServicePolicy";
/// Most retries a policy may ask for; more only amplifies an outage.
pub const MAX_RETRY_ATTEMPTS: u32 = 10;

const TOP: &[&str] = &[
    "kind",
    "service",
    "loadBalancer",
    "opaquePorts",
    "timeouts",
    "retries",
    "breaker",
    "bulkhead",
    "outlier",
    "fallback",
    "accessLog",
];

/// Whether a document must say `kind: ServicePolicy`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// API bodies: the URL already says what it is.
    Optional,
    /// Files: a document without a kind is a mistake worth naming.
    Required,
}

// === impl ServicePolicy ===

impl ServicePolicy {
    /// Validates one untrusted JSON document (`kind` may be absent, but if
    /// present must be `ServicePolicy`), naming every bad field.
    pub fn from_value(doc: &Value) -> Result<ServicePolicy, FieldErrors> {
        parse(doc, Kind::Optional)
    }
}

/// Parses a multi-document YAML file. Empty documents are skipped; every
/// other document must be `kind: ServicePolicy`. On failure, every invalid
/// document is returned with its 1-based position in the file; a YAML
/// syntax error ends reading there and names its line.
#[allow(clippy::type_complexity)]
pub fn parse_policy_documents(yaml: &str) -> Result<Vec<ServicePolicy>, Vec<(usize, FieldErrors)>> {
    let docs = parse_documents(yaml)?;
    let mut policies = Vec::new();
    let mut failures = Vec::new();
    for (i, d) in docs.into_iter().enumerate() {
        match d {
            Document::Service(p) => policies.push(*p),
            Document::Authorization(_) | Document::Config(_) | Document::Route(_) => {
                let mut errs = FieldErrors::default();
                errs.push("kind", format!("expected {POLICY_KIND}"));
                failures.push((i + 1, errs));
            }
        }
    }
    match failures.is_empty() {
        true => Ok(policies),
        false => Err(failures),
    }
}

/// One document of a file `mesh-ctl apply -f` takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Document {
    Service(Box<ServicePolicy>),
    Authorization(crate::authz::AuthorizationPolicy),
    Config(Box<crate::model::config::ConfigDocument>),
    Route(Box<crate::gateway::Route>),
}

/// Every document of a multi-document YAML text, by its `kind`
/// (`ServicePolicy` or `AuthorizationPolicy`); on failure, every invalid
/// document with every bad field (documents numbered from 1).
pub fn parse_documents(yaml: &str) -> Result<Vec<Document>, Vec<(usize, FieldErrors)>> {
    let mut policies = Vec::new();
    let mut failures = Vec::new();
    // One document per round; the bound only guards against a parser that
    // never ends (each document consumes input).
    let docs = serde_norway::Deserializer::from_str(yaml).take(yaml.len() + 1);
    for (i, doc) in docs.enumerate() {
        let index = i + 1;
        let value = match Value::deserialize(doc) {
            Ok(Value::Null) => continue,
            Ok(v) => v,
            Err(e) => {
                let mut errs = FieldErrors::default();
                errs.push("(yaml)", yaml_error(&e));
                failures.push((index, errs));
                // After a syntax error the parser cannot find where the
                // next document starts: stop rather than guess.
                break;
            }
        };
        let kind = value.get("kind").and_then(Value::as_str);
        let parsed = match kind {
            Some(crate::authz::AUTHZ_KIND) => {
                crate::authz::AuthorizationPolicy::from_value(&value).map(Document::Authorization)
            }
            Some(crate::gateway::ROUTE_KIND) => {
                crate::gateway::Route::from_value(&value).map(|r| Document::Route(Box::new(r)))
            }
            Some(crate::model::config::CONFIG_KIND) => {
                crate::model::config::ConfigDocument::from_file_value(&value)
                    .map(|c| Document::Config(Box::new(c)))
            }
            _ => parse(&value, Kind::Required).map(|p| Document::Service(Box::new(p))),
        };
        match parsed {
            Ok(p) => policies.push(p),
            Err(errs) => failures.push((index, errs)),
        }
    }
    if failures.is_empty() {
        Ok(policies)
    } else {
        Err(failures)
    }
}

fn yaml_error(e: &serde_norway::Error) -> String {
    let msg = e.to_string();
    match e.location() {
        Some(loc) if !msg.contains("line") => format!("line {}: {msg}", loc.line()),
        _ => msg,
    }
}

fn parse(doc: &Value, kind: Kind) -> Result<ServicePolicy, FieldErrors> {
    let mut errs = FieldErrors::default();
    let Some(top) = Section::document(doc, TOP, &mut errs) else {
        return Err(errs);
    };

    match (top.get("kind"), kind) {
        (None, Kind::Optional) => {}
        (None, Kind::Required) => errs.push("kind", format!("is required: kind: {POLICY_KIND}")),
        (Some(Value::String(k)), _) if k == POLICY_KIND => {}
        (Some(other), _) => errs.push(
            "kind",
            format!(
                "{other} is not a known kind; expected {POLICY_KIND}, {} or {}",
                crate::authz::AUTHZ_KIND,
                crate::model::config::CONFIG_KIND
            ),
        ),
    }

    let service = match top.str("service", &mut errs) {
        Some(s) => match validate_service_name(s) {
            Ok(()) => s.to_string(),
            Err(why) => {
                errs.push("service", why);
                String::new()
            }
        },
        None => {
            if !top.has("service") {
                errs.push("service", "is required");
            }
            String::new()
        }
    };

    let load_balancer = match top.str("loadBalancer", &mut errs) {
        None => LoadBalancer::default(),
        Some(s) => s.parse().unwrap_or_else(|why: String| {
            errs.push("loadBalancer", why);
            LoadBalancer::default()
        }),
    };

    let policy = ServicePolicy {
        load_balancer,
        opaque_ports: ports::opaque_ports(&top, &mut errs),
        timeouts: timeouts(&top, &mut errs),
        retries: retries(&top, &mut errs),
        breaker: breaker(&top, &mut errs),
        bulkhead: bulkhead(&top, &mut errs),
        outlier: outlier(&top, &mut errs),
        fallback: fallback(&top, &service, &mut errs),
        access_log: top.bool("accessLog", false, &mut errs),
        service,
    };
    errs.into_result(policy)
}

fn timeouts(top: &Section<'_>, errs: &mut FieldErrors) -> Timeouts {
    let d = Timeouts::default();
    let s = top.section("timeouts", &["request", "connect"], errs);
    Timeouts {
        request: s.duration("request", AtLeast::Positive, d.request, errs),
        connect: s.duration("connect", AtLeast::Positive, d.connect, errs),
    }
}

fn retries(top: &Section<'_>, errs: &mut FieldErrors) -> Retries {
    let d = Retries::default();
    let s = top.section("retries", &["attempts", "on", "budget"], errs);
    let attempts = s.u32("attempts", 0..=MAX_RETRY_ATTEMPTS, d.attempts, errs);
    let on = match s.get("on") {
        None => d.on,
        Some(Value::Array(items)) => {
            let mut on = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let path = format!("{}[{i}]", s.path("on"));
                let parsed = serde_json::from_value::<RetryOn>(item.clone());
                match parsed {
                    Ok(r) if on.contains(&r) => errs.push(path, "listed twice"),
                    Ok(r) => on.push(r),
                    Err(_) => errs.push(
                        path,
                        format!(
                            "{item} is not a retry condition; expected one of {}",
                            RetryOn::NAMES.join(", ")
                        ),
                    ),
                }
            }
            on
        }
        Some(other) => {
            errs.push(
                s.path("on"),
                format!("must be a list, not {}", type_name(other)),
            );
            d.on
        }
    };
    let b = s.section("budget", &["percent", "minPerSecond"], errs);
    let budget = RetryBudget {
        percent: b.percent("percent", d.budget.percent, errs),
        min_per_second: b.u32("minPerSecond", 0..=u32::MAX, d.budget.min_per_second, errs),
    };
    Retries {
        attempts,
        on,
        budget,
    }
}

fn breaker(top: &Section<'_>, errs: &mut FieldErrors) -> Breaker {
    let d = Breaker::default();
    let s = top.section(
        "breaker",
        &[
            "window",
            "minRequests",
            "failureRate",
            "consecutiveFailures",
            "slowCall",
            "openFor",
            "halfOpenProbes",
        ],
        errs,
    );
    let slow = s.section("slowCall", &["duration", "rate"], errs);
    let any = 0..=u32::MAX;
    Breaker {
        window: s.duration(
            "window",
            AtLeast::Min(Duration::from_secs(1)),
            d.window,
            errs,
        ),
        min_requests: s.u32("minRequests", any.clone(), d.min_requests, errs),
        failure_rate: s.percent("failureRate", d.failure_rate, errs),
        consecutive_failures: s.u32("consecutiveFailures", any, d.consecutive_failures, errs),
        slow_call: SlowCall {
            duration: slow.duration("duration", AtLeast::Positive, d.slow_call.duration, errs),
            rate: slow.percent("rate", d.slow_call.rate, errs),
        },
        open_for: s.duration("openFor", AtLeast::Positive, d.open_for, errs),
        half_open_probes: s.u32("halfOpenProbes", 1..=u32::MAX, d.half_open_probes, errs),
    }
}

fn bulkhead(top: &Section<'_>, errs: &mut FieldErrors) -> Bulkhead {
    let d = Bulkhead::default();
    let s = top.section(
        "bulkhead",
        &["maxConcurrent", "maxQueued", "queueTimeout"],
        errs,
    );
    Bulkhead {
        max_concurrent: s.u32("maxConcurrent", 1..=u32::MAX, d.max_concurrent, errs),
        max_queued: s.u32("maxQueued", 0..=u32::MAX, d.max_queued, errs),
        queue_timeout: s.duration("queueTimeout", AtLeast::Zero, d.queue_timeout, errs),
    }
}

fn outlier(top: &Section<'_>, errs: &mut FieldErrors) -> Outlier {
    let d = Outlier::default();
    let s = top.section(
        "outlier",
        &["consecutiveFailures", "ejectFor", "maxEjectedPercent"],
        errs,
    );
    Outlier {
        consecutive_failures: s.u32(
            "consecutiveFailures",
            0..=u32::MAX,
            d.consecutive_failures,
            errs,
        ),
        eject_for: s.duration("ejectFor", AtLeast::Zero, d.eject_for, errs),
        max_ejected_percent: s.percent("maxEjectedPercent", d.max_ejected_percent, errs),
    }
}

/// Exactly one of `body` (a static response) or `service` (an alternate
/// service); `status` and `headers` only go with `body`.
fn fallback(top: &Section<'_>, own: &str, errs: &mut FieldErrors) -> Option<Fallback> {
    top.get("fallback")?;
    let s = top.section("fallback", &["status", "headers", "body", "service"], errs);
    if !top.get("fallback").is_some_and(Value::is_object) {
        return None; // already reported: not a mapping
    }
    match (s.has("body"), s.has("service")) {
        (false, false) => {
            errs.push(
                "fallback",
                "needs either body (a static response) or service (an alternate service)",
            );
            None
        }
        (true, true) => {
            errs.push(
                "fallback",
                "has both body and service; a fallback is one or the other",
            );
            None
        }
        (false, true) => {
            for extra in ["status", "headers"] {
                if s.has(extra) {
                    errs.push(s.path(extra), "only applies to a static (body) fallback");
                }
            }
            let name = s.str("service", errs)?;
            if let Err(why) = validate_service_name(name) {
                errs.push("fallback.service", why);
                return None;
            }
            if name == own {
                errs.push(
                    "fallback.service",
                    "must not be the policy's own service (it would call itself)",
                );
                return None;
            }
            Some(Fallback::Service {
                service: name.to_string(),
            })
        }
        (true, false) => {
            let body = s.str("body", errs).map(str::to_string);
            let status = s.u32("status", 100..=599, 200, errs);
            let headers = headers(s.get("headers"), &s.path("headers"), errs);
            Some(Fallback::Static {
                status: u16::try_from(status).unwrap_or(200),
                headers,
                body: body?,
            })
        }
    }
}

fn headers(v: Option<&Value>, path: &str, errs: &mut FieldErrors) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let map = match v {
        None => return out,
        Some(Value::Object(map)) => map,
        Some(other) => {
            errs.push(
                path,
                format!(
                    "must be a mapping of header names to values, not {}",
                    type_name(other)
                ),
            );
            return out;
        }
    };
    for (name, value) in map {
        let field = format!("{path}.{name}");
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            errs.push(field, "is not a valid header name");
            continue;
        }
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            other => {
                errs.push(field, format!("must be a string, not {}", type_name(other)));
                continue;
            }
        };
        if http::HeaderValue::from_str(&text).is_err() {
            errs.push(field, "is not a valid header value (no control characters)");
            continue;
        }
        out.insert(name.to_ascii_lowercase(), text);
    }
    out
}
