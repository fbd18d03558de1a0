use super::{validate_instance_id, FieldErrors, Health};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// At most this many metadata entries per instance.
pub const MAX_METADATA_ENTRIES: usize = 32;
/// At most this many bytes of metadata keys and values together.
pub const MAX_METADATA_BYTES: usize = 4096;
const MAX_TTL_SECS: u64 = 3600;

/// `POST /v1/services/{service}/instances` body.
///
/// Parsed from a raw JSON value by [`RegisterRequest::from_json`] rather
/// than by derive, so a wrong type in one field does not hide the others:
/// the caller learns every bad field in one answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// Chosen by the registrant; generated from address and port if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub address: IpAddr,
    pub port: u16,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Lease in seconds; absent for a static registration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
    #[serde(default)]
    pub health: Health,
    /// Port of the sidecar's inbound listener at `address`, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound_port: Option<u16>,
    /// Set by mesh-control from the registrant's certificate; never read
    /// from the request body.
    #[serde(skip)]
    pub identity: Option<String>,
}

impl RegisterRequest {
    /// Validates an untrusted JSON document, naming every bad field.
    pub fn from_json(doc: &Value) -> Result<Self, FieldErrors> {
        let mut errs = FieldErrors::default();
        let Some(obj) = doc.as_object() else {
            errs.push("(body)", "must be a JSON object");
            return Err(errs);
        };
        for key in obj.keys() {
            if !matches!(
                key.as_str(),
                "id" | "address" | "port" | "metadata" | "ttl" | "health" | "inbound_port"
            ) {
                errs.push(key.clone(), "unknown field");
            }
        }

        let id = match obj.get("id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => match validate_instance_id(s) {
                Ok(()) => Some(s.clone()),
                Err(why) => {
                    errs.push("id", why);
                    None
                }
            },
            Some(_) => {
                errs.push("id", "must be a string");
                None
            }
        };

        let address = match obj.get("address") {
            None => {
                errs.push("address", "is required");
                None
            }
            Some(Value::String(s)) => match s.parse::<IpAddr>() {
                Ok(ip) if ip.is_unspecified() || ip.is_multicast() => {
                    errs.push("address", format!("{ip} cannot be reached"));
                    None
                }
                Ok(ip) => Some(ip),
                Err(_) => {
                    errs.push("address", format!("{s:?} is not an IP address"));
                    None
                }
            },
            Some(_) => {
                errs.push("address", "must be a string holding an IP address");
                None
            }
        };

        let port = match obj.get("port") {
            None => {
                errs.push("port", "is required");
                None
            }
            Some(v) => port_value("port", v, &mut errs),
        };

        let inbound_port = match obj.get("inbound_port") {
            None | Some(Value::Null) => None,
            Some(v) => port_value("inbound_port", v, &mut errs),
        };

        let metadata = match obj.get("metadata") {
            None | Some(Value::Null) => BTreeMap::new(),
            Some(Value::Object(m)) => metadata(m, &mut errs),
            Some(_) => {
                errs.push("metadata", "must be an object of string values");
                BTreeMap::new()
            }
        };

        let ttl = match obj.get("ttl") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(t) if (1..=MAX_TTL_SECS).contains(&t) => Some(t),
                _ => {
                    errs.push(
                        "ttl",
                        format!("must be an integer number of seconds in 1..={MAX_TTL_SECS}"),
                    );
                    None
                }
            },
        };

        let health = match obj.get("health") {
            None | Some(Value::Null) => Health::Up,
            Some(v) => match serde_json::from_value::<Health>(v.clone()) {
                Ok(h) => h,
                Err(_) => {
                    errs.push("health", "must be \"up\" or \"down\"");
                    Health::Up
                }
            },
        };

        match (address, port) {
            (Some(address), Some(port)) if errs.is_empty() => Ok(RegisterRequest {
                id,
                address,
                port,
                metadata,
                ttl,
                health,
                inbound_port,
                identity: None,
            }),
            _ => Err(errs),
        }
    }

    /// The id this registration gets when none was given: stable for the
    /// same address and port, so a re-registration replaces, not duplicates.
    pub fn effective_id(&self) -> String {
        match &self.id {
            Some(id) => id.clone(),
            None => match self.address {
                IpAddr::V4(a) => format!("{a}:{}", self.port),
                IpAddr::V6(a) => format!("[{a}]:{}", self.port).replace(['[', ']'], ""),
            },
        }
    }
}

/// A TCP port: an integer in 1..=65535; anything else is named under `field`.
fn port_value(field: &str, v: &Value, errs: &mut FieldErrors) -> Option<u16> {
    match v.as_u64() {
        Some(p) if (1..=65535).contains(&p) => u16::try_from(p).ok(),
        Some(p) => {
            errs.push(field, format!("{p} is outside 1..=65535"));
            None
        }
        None => {
            errs.push(field, "must be an integer in 1..=65535");
            None
        }
    }
}

fn metadata(
    m: &serde_json::Map<String, Value>,
    errs: &mut FieldErrors,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if m.len() > MAX_METADATA_ENTRIES {
        errs.push(
            "metadata",
            format!("{} entries; at most {MAX_METADATA_ENTRIES}", m.len()),
        );
        return out;
    }
    let mut bytes = 0;
    for (k, v) in m {
        let field = format!("metadata.{k}");
        if k.is_empty() || k.len() > 63 || k.chars().any(|c| c.is_control() || c == '=') {
            errs.push(
                field,
                "keys are 1..=63 characters with no '=' or control characters",
            );
            continue;
        }
        match v {
            Value::String(s) => {
                bytes += k.len() + s.len();
                out.insert(k.clone(), s.clone());
            }
            _ => errs.push(field, "must be a string"),
        }
    }
    if bytes > MAX_METADATA_BYTES {
        errs.push(
            "metadata",
            format!("{bytes} bytes; at most {MAX_METADATA_BYTES}"),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Value) -> Vec<String> {
        RegisterRequest::from_json(&v)
            .unwrap_err()
            .0
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn accepts_minimal_and_full() {
        let r = RegisterRequest::from_json(&json!({"address": "10.0.0.1", "port": 80})).unwrap();
        assert_eq!(r.effective_id(), "10.0.0.1:80");
        assert_eq!(r.ttl, None);
        let r = RegisterRequest::from_json(&json!({
            "id": "a-1", "address": "::1", "port": 8080, "ttl": 10,
            "metadata": {"zone": "a"}, "health": "down"
        }))
        .unwrap();
        assert_eq!(r.health, Health::Down);
        assert_eq!(r.metadata["zone"], "a");
    }

    #[test]
    fn reports_every_bad_field() {
        let f = fields(json!({"address": 7, "port": "80", "ttl": -1, "id": "a b", "x": 1}));
        for want in ["x", "id", "address", "port", "ttl"] {
            assert!(f.iter().any(|g| g == want), "{want} missing from {f:?}");
        }
        assert_eq!(fields(json!({"address": "1.2.3.4", "port": 0})), ["port"]);
        assert_eq!(
            fields(json!({"address": "1.2.3.4", "port": 70000})),
            ["port"]
        );
        assert_eq!(fields(json!({"port": 1})), ["address"]);
        assert_eq!(fields(json!([1])), ["(body)"]);
    }

    #[test]
    fn inbound_port_is_optional_and_validated() {
        let r = RegisterRequest::from_json(&json!({"address": "10.0.0.1", "port": 80})).unwrap();
        assert_eq!(r.inbound_port, None);
        let r = RegisterRequest::from_json(
            &json!({"address": "10.0.0.1", "port": 80, "inbound_port": 15006}),
        )
        .unwrap();
        assert_eq!(r.inbound_port, Some(15006));
        let r = RegisterRequest::from_json(
            &json!({"address": "10.0.0.1", "port": 80, "inbound_port": null}),
        )
        .unwrap();
        assert_eq!(r.inbound_port, None);
        for bad in [
            json!(0),
            json!(65536),
            json!(-1),
            json!("15006"),
            json!(1.5),
        ] {
            assert_eq!(
                fields(json!({"address": "10.0.0.1", "port": 80, "inbound_port": bad})),
                ["inbound_port"],
                "{bad}"
            );
        }
        // Named alongside the other bad fields, not instead of them.
        let f = fields(json!({"address": "x", "port": 80, "inbound_port": 0}));
        assert_eq!(f, ["address", "inbound_port"]);
    }

    #[test]
    fn inbound_port_round_trips_through_json() {
        let r = RegisterRequest::from_json(
            &json!({"address": "10.0.0.1", "port": 80, "inbound_port": 15006}),
        )
        .unwrap();
        let wire = serde_json::to_value(&r).unwrap();
        assert_eq!(wire["inbound_port"], 15006);
        assert_eq!(RegisterRequest::from_json(&wire).unwrap(), r);
        // Absent stays absent on the wire, so old control planes accept it.
        let r = RegisterRequest::from_json(&json!({"address": "10.0.0.1", "port": 80})).unwrap();
        let wire = serde_json::to_value(&r).unwrap();
        assert!(wire.get("inbound_port").is_none(), "{wire}");
    }

    #[test]
    fn rejects_oversized_metadata() {
        let big: serde_json::Map<String, Value> = (0..40)
            .map(|i| (format!("k{i}"), Value::from("v")))
            .collect();
        assert_eq!(
            fields(json!({"address": "1.2.3.4", "port": 1, "metadata": big})),
            ["metadata"]
        );
        let huge = "v".repeat(5000);
        assert_eq!(
            fields(json!({"address": "1.2.3.4", "port": 1, "metadata": {"k": huge}})),
            ["metadata"]
        );
        assert_eq!(
            fields(json!({"address": "1.2.3.4", "port": 1, "metadata": {"k": 1}})),
            ["metadata.k"]
        );
    }
}
