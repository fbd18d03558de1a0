//! `opaquePorts`: the VIP ports of a service whose connections skip
//! protocol detection and are relayed as opaque TCP.

use super::reader::{type_name, Section};
use crate::model::FieldErrors;
use serde_json::Value;

/// Most opaque ports one policy may declare; more is a sign the service
/// should be treated as opaque TCP altogether.
pub const MAX_OPAQUE_PORTS: usize = 64;

/// Reads `opaquePorts`: a list of distinct ports in 1..=65535, each bad
/// entry reported under its index (`opaquePorts[2]`). Order is kept, so a
/// printed policy applies back unchanged.
pub(super) fn opaque_ports(top: &Section<'_>, errs: &mut FieldErrors) -> Vec<u16> {
    let path = top.path("opaquePorts");
    let items = match top.get("opaquePorts") {
        None => return Vec::new(),
        Some(Value::Array(items)) => items,
        Some(other) => {
            errs.push(
                path,
                format!("must be a list of ports, not {}", type_name(other)),
            );
            return Vec::new();
        }
    };
    if items.len() > MAX_OPAQUE_PORTS {
        errs.push(
            path,
            format!("{} entries; at most {MAX_OPAQUE_PORTS}", items.len()),
        );
        return Vec::new();
    }
    let mut ports = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = format!("{path}[{i}]");
        match item {
            Value::Number(n) => match n.as_u64().map(u16::try_from) {
                Some(Ok(0)) | Some(Err(_)) => {
                    errs.push(at, format!("{n} is not a port; must be in 1..=65535"))
                }
                Some(Ok(p)) if ports.contains(&p) => errs.push(at, format!("{p} is listed twice")),
                Some(Ok(p)) => ports.push(p),
                None => errs.push(at, format!("{n} is not a port; must be in 1..=65535")),
            },
            other => errs.push(
                at,
                format!("must be a port number, not {}", type_name(other)),
            ),
        }
    }
    ports
}

#[cfg(test)]
mod tests {
    use crate::model::{parse_policy_documents, ServicePolicy, MAX_OPAQUE_PORTS};
    use serde_json::json;

    fn doc(ports: &str) -> String {
        format!("kind: ServicePolicy\nservice: db\nopaquePorts: {ports}\n")
    }

    /// (field, reason) of every error in a one-document file.
    fn rejected(ports: &str) -> Vec<(String, String)> {
        let mut failures = parse_policy_documents(&doc(ports)).expect_err("accepted");
        assert_eq!(failures.len(), 1);
        failures
            .remove(0)
            .1
             .0
            .into_iter()
            .map(|e| (e.field, e.reason))
            .collect()
    }

    fn fields(ports: &str) -> Vec<String> {
        rejected(ports).into_iter().map(|(f, _)| f).collect()
    }

    #[test]
    fn absent_or_empty_means_none() {
        let p = &parse_policy_documents("kind: ServicePolicy\nservice: db\n").unwrap()[0];
        assert!(p.opaque_ports.is_empty());
        let p = &parse_policy_documents(&doc("[]")).unwrap()[0];
        assert!(p.opaque_ports.is_empty());
        let p = &parse_policy_documents(&doc("")).unwrap()[0];
        assert!(p.opaque_ports.is_empty(), "null counts as absent");
    }

    #[test]
    fn ports_are_read_in_order_and_round_trip() {
        let p = parse_policy_documents(&doc("[7000, 1, 65535]"))
            .unwrap()
            .remove(0);
        assert_eq!(p.opaque_ports, [7000, 1, 65535]);
        let wire = serde_json::to_value(&p).unwrap();
        assert_eq!(wire["opaquePorts"], json!([7000, 1, 65535]));
        assert_eq!(ServicePolicy::from_value(&wire), Ok(p.clone()));
        let yaml = serde_norway::to_string(&p).unwrap();
        assert_eq!(
            parse_policy_documents(&format!("kind: ServicePolicy\n{yaml}")),
            Ok(vec![p])
        );
        let max: Vec<String> = (1..=MAX_OPAQUE_PORTS).map(|p| p.to_string()).collect();
        let p = parse_policy_documents(&doc(&format!("[{}]", max.join(","))))
            .unwrap()
            .remove(0);
        assert_eq!(p.opaque_ports.len(), MAX_OPAQUE_PORTS);
    }

    #[test]
    fn bad_entries_are_named_by_index() {
        assert_eq!(
            fields("[7000, 0, 70000]"),
            ["opaquePorts[1]", "opaquePorts[2]"]
        );
        assert_eq!(fields("[1, 2, -3]"), ["opaquePorts[2]"]);
        assert_eq!(fields("[1.5]"), ["opaquePorts[0]"]);
        assert_eq!(fields("[\"7000\"]"), ["opaquePorts[0]"]);
        assert_eq!(fields("[[7000]]"), ["opaquePorts[0]"]);
        let dup = rejected("[7000, 7001, 7000]");
        assert_eq!(dup.len(), 1);
        assert_eq!(dup[0].0, "opaquePorts[2]");
        assert!(dup[0].1.contains("listed twice"), "{dup:?}");
        let range = rejected("[70000]");
        assert!(range[0].1.contains("1..=65535"), "{range:?}");
    }

    #[test]
    fn the_list_itself_is_checked() {
        assert_eq!(fields("7000"), ["opaquePorts"]);
        assert_eq!(fields("{a: 1}"), ["opaquePorts"]);
        let too_many: Vec<String> = (1..=MAX_OPAQUE_PORTS + 1).map(|p| p.to_string()).collect();
        let errs = rejected(&format!("[{}]", too_many.join(",")));
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].0, "opaquePorts");
        assert!(errs[0].1.contains("at most 64"), "{errs:?}");
    }

    #[test]
    fn reported_with_other_bad_fields() {
        let yaml = "kind: ServicePolicy\nservice: db\nloadBalancer: nope\nopaquePorts: [0]\n\
                    breaker: {failureRate: 101}\n";
        let failures = parse_policy_documents(yaml).unwrap_err();
        let fields: Vec<&str> = failures[0].1 .0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["loadBalancer", "opaquePorts[0]", "breaker.failureRate"]
        );
    }
}
