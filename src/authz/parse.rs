//! Reading untrusted `kind: AuthorizationPolicy` documents.
//!
//! Like `model::policy_parse`, a document is walked as a generic JSON value
//! field by field rather than deserialized by derive, so one bad field does
//! not hide the next: every problem is reported at once under its camelCase
//! path (`rules[1].from[0]`, `mode`). That module's typed reader is private
//! to it and mostly reads numbers and durations; this format is strings and
//! lists, so the few helpers it needs are below.

use super::{
    normalize_path, Action, AuthorizationPolicy, Decision, Mode, Principal, Rule, AUTHZ_KIND,
    MAX_RULES, MESH_WIDE,
};
use crate::model::{validate_service_name, FieldErrors};
use serde_json::{Map, Value};
use std::str::FromStr;

const TOP_FIELDS: &[&str] = &["kind", "service", "default", "mode", "rules"];
const RULE_FIELDS: &[&str] = &["name", "action", "from", "methods", "paths"];

pub(super) fn parse(doc: &Value) -> Result<AuthorizationPolicy, FieldErrors> {
    let mut errs = FieldErrors::default();
    let Some(top) = mapping(doc, "", TOP_FIELDS, &mut errs) else {
        return Err(errs);
    };

    match get(top, "kind") {
        None => {}
        Some(Value::String(k)) if k == AUTHZ_KIND => {}
        Some(other) => errs.push(
            "kind",
            format!("{other} is not a known kind; expected {AUTHZ_KIND}"),
        ),
    }

    let service = match get(top, "service") {
        None => {
            errs.push(
                "service",
                "is required: the service protected, or \"*\" for the mesh-wide defaults",
            );
            String::new()
        }
        Some(Value::String(s)) => {
            let checked = if s == MESH_WIDE {
                Ok(())
            } else {
                validate_service_name(s)
            };
            if let Err(why) = checked {
                errs.push("service", why);
            }
            s.clone()
        }
        Some(other) => {
            errs.push("service", not_a("a string", other));
            String::new()
        }
    };

    let default = get(top, "default").and_then(|v| word::<Action>(v, "default", &mut errs));
    let mode = get(top, "mode").and_then(|v| word::<Mode>(v, "mode", &mut errs));

    let rules = match get(top, "rules") {
        None => Vec::new(),
        // Refused rather than ignored: a rule there would look like it
        // guards every service and guard none.
        Some(_) if service == MESH_WIDE => {
            errs.push(
                "rules",
                "not allowed in the mesh-wide document (service: \"*\"), which carries only \
                 default and mode; put rules in each service's own document",
            );
            Vec::new()
        }
        Some(Value::Array(items)) => read_rules(items, mode == Some(Mode::Strict), &mut errs),
        Some(other) => {
            errs.push("rules", not_a("a list", other));
            Vec::new()
        }
    };

    errs.into_result(AuthorizationPolicy {
        service,
        default,
        mode,
        rules,
    })
}

/// `strict`: the document's own mode is strict, so `unauthenticated` can
/// never match (such callers are refused before rules are read).
fn read_rules(items: &[Value], strict: bool, errs: &mut FieldErrors) -> Vec<Rule> {
    if items.len() > MAX_RULES {
        errs.push(
            "rules",
            format!("{} rules; at most {MAX_RULES}", items.len()),
        );
        return Vec::new();
    }
    let before = errs.0.len();
    let mut rules: Vec<Rule> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Some(rule) = read_rule(item, i, strict, errs) else {
            continue;
        };
        // Decisions name their rule, so a name must say which one.
        if rules.iter().any(|r| r.name == rule.name) {
            errs.push(
                format!("rules[{i}].name"),
                format!(
                    "{:?} also names an earlier rule; names are unique",
                    rule.name
                ),
            );
        }
        rules.push(rule);
    }
    // Only over fully valid rules: a rule whose bad entries were dropped
    // could look shadowed when it is not, and every index must be its own.
    if errs.0.len() == before {
        shadowed(&rules, errs);
    }
    rules
}

fn read_rule(item: &Value, i: usize, strict: bool, errs: &mut FieldErrors) -> Option<Rule> {
    let path = format!("rules[{i}]");
    let map = mapping(item, &path, RULE_FIELDS, errs)?;

    let name = match get(map, "name") {
        None => path.clone(),
        Some(Value::String(s)) => match rule_name(s, &path) {
            Ok(()) => s.clone(),
            Err(why) => {
                errs.push(join(&path, "name"), why);
                path.clone()
            }
        },
        Some(other) => {
            errs.push(join(&path, "name"), not_a("a string", other));
            path.clone()
        }
    };

    let action = get(map, "action")
        .and_then(|v| word::<Action>(v, &join(&path, "action"), errs))
        .unwrap_or_default();

    let from_path = join(&path, "from");
    let from_value = get(map, "from");
    match from_value {
        None => errs.push(
            from_path.as_str(),
            "is required: the callers the rule applies to (SPIFFE IDs, \
             spiffe://<trust domain>/ns/<namespace>/sa/*, \"*\" or \"unauthenticated\")",
        ),
        Some(Value::Array(items)) if items.is_empty() => errs.push(
            from_path.as_str(),
            "must not be empty: a rule applies to at least one caller",
        ),
        Some(_) => {}
    }
    let mut from: Vec<Principal> = Vec::new();
    for (p, s) in strings(from_value, &from_path, errs) {
        match s.parse::<Principal>() {
            Err(why) => errs.push(p, why),
            Ok(principal) if from.contains(&principal) => errs.push(p, "listed twice"),
            Ok(Principal::Unauthenticated) if strict => errs.push(
                p,
                "never matches: this document's mode is strict, which refuses \
                 unauthenticated callers before any rule is read",
            ),
            Ok(principal) => from.push(principal),
        }
    }

    let mut methods: Vec<String> = Vec::new();
    for (p, m) in strings(get(map, "methods"), &join(&path, "methods"), errs) {
        match method(m) {
            Err(why) => errs.push(p, why),
            Ok(()) if methods.iter().any(|x| x == m) => errs.push(p, "listed twice"),
            Ok(()) => methods.push(m.to_string()),
        }
    }

    let mut paths: Vec<String> = Vec::new();
    for (p, prefix) in strings(get(map, "paths"), &join(&path, "paths"), errs) {
        match path_prefix(prefix) {
            Err(why) => errs.push(p, why),
            Ok(()) if paths.iter().any(|x| x == prefix) => errs.push(p, "listed twice"),
            Ok(()) => paths.push(prefix.to_string()),
        }
    }

    Some(Rule {
        name,
        action,
        from,
        methods,
        paths,
    })
}

/// `own` is the rule's default name (`rules[i]`), accepted spelled out
/// because a serialized policy carries it; explicit names cannot contain
/// `[`, so they never collide with another rule's default.
fn rule_name(name: &str, own: &str) -> Result<(), String> {
    if name == own {
        return Ok(());
    }
    if name.is_empty() {
        return Err("must not be empty; leave name out for the default (rules[i])".into());
    }
    if name.len() > 63 {
        return Err(format!("{} characters; at most 63", name.len()));
    }
    if [Decision::DEFAULT, Decision::MESH_DEFAULT].contains(&name) {
        return Err(format!(
            "{name:?} is reserved: it names decisions that no rule made"
        ));
    }
    let ok = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        return Err("only letters, digits, '-', '_' and '.' are allowed".into());
    }
    Ok(())
}

/// Methods are compared exactly, as clients send them: uppercase.
fn method(m: &str) -> Result<(), String> {
    if m.is_empty() {
        return Err("must not be empty".into());
    }
    if m.bytes().all(|b| b.is_ascii_uppercase()) {
        return Ok(());
    }
    if m.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(format!(
            "{m:?} must be uppercase ({:?}): methods are case-sensitive",
            m.to_ascii_uppercase()
        ));
    }
    Err(format!(
        "{m:?} is not an HTTP method: uppercase letters only, such as GET or POST"
    ))
}

/// Requests are matched after [`normalize_path`], so a prefix must already
/// be in that form or it could never match.
fn path_prefix(p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!(
            "{p:?} must start with \"/\" (a path prefix such as \"/api/\")"
        ));
    }
    if !p.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{p:?} must be printable ASCII without spaces; %-escape anything else, as \
             clients send it"
        ));
    }
    if p.contains(['?', '#']) {
        return Err(format!(
            "{p:?} must not contain '?' or '#': rules match the path without its query"
        ));
    }
    let normal = normalize_path(p);
    if normal != p {
        return Err(format!(
            "{p:?} is not in normal form (requests are matched after resolving \".\" and \
             \"..\", merging \"//\" and decoding escaped letters and digits); write {normal:?}"
        ));
    }
    Ok(())
}

/// Rejects a rule that an earlier rule always matches first: with first
/// match wins it could never decide anything, and the usual cause is a deny
/// written after the allow it was meant to carve out of.
fn shadowed(rules: &[Rule], errs: &mut FieldErrors) {
    for (j, later) in rules.iter().enumerate() {
        if let Some(earlier) = rules[..j].iter().find(|e| covers(e, later)) {
            errs.push(
                format!("rules[{j}]"),
                format!(
                    "never matches: {:?} before it matches every request this rule would \
                     (the first match wins; put the narrower rule first)",
                    earlier.name
                ),
            );
        }
    }
}

/// Whether every request `b` matches is also matched by `a`. An empty list
/// of `a` covers anything; a non-empty one covers only a non-empty list of
/// `b` (an empty one also matches opaque TCP, which `a` would not).
fn covers(a: &Rule, b: &Rule) -> bool {
    let from = b
        .from
        .iter()
        .all(|p| a.from.iter().any(|q| principal_covers(q, p)));
    let methods = a.methods.is_empty()
        || (!b.methods.is_empty() && b.methods.iter().all(|m| a.methods.contains(m)));
    let paths = a.paths.is_empty()
        || (!b.paths.is_empty()
            && b.paths
                .iter()
                .all(|p| a.paths.iter().any(|q| p.starts_with(q.as_str()))));
    from && methods && paths
}

fn principal_covers(a: &Principal, b: &Principal) -> bool {
    match (a, b) {
        (Principal::AnyAuthenticated, Principal::Unauthenticated) => false,
        (Principal::AnyAuthenticated, _) => true,
        // A validated exact ID under the prefix is one service of it.
        (Principal::Namespace { prefix }, Principal::Exact(id)) => id.starts_with(prefix.as_str()),
        _ => a == b,
    }
}

// --- small readers (see the module docs for why not model's reader) ---

/// `v` as a mapping whose keys must all be in `allowed`; anything else is
/// reported under `path` (`""` is the document itself).
fn mapping<'a>(
    v: &'a Value,
    path: &str,
    allowed: &[&str],
    errs: &mut FieldErrors,
) -> Option<&'a Map<String, Value>> {
    match v {
        Value::Object(map) => {
            for key in map.keys().filter(|k| !allowed.contains(&k.as_str())) {
                errs.push(
                    join(path, key),
                    format!("unknown field; expected one of {}", allowed.join(", ")),
                );
            }
            Some(map)
        }
        other => {
            let at = if path.is_empty() { "(document)" } else { path };
            errs.push(at, not_a("a mapping", other));
            None
        }
    }
}

/// The value of `key`; null counts as absent.
fn get<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    map.get(key).filter(|v| !v.is_null())
}

/// A string parsed by `T::from_str`, or `None` (reported).
fn word<T: FromStr<Err = String>>(v: &Value, path: &str, errs: &mut FieldErrors) -> Option<T> {
    let parsed = match v {
        Value::String(s) => s.parse(),
        other => Err(not_a("a string", other)),
    };
    match parsed {
        Ok(t) => Some(t),
        Err(why) => {
            errs.push(path, why);
            None
        }
    }
}

/// The strings of the list `v` found at `path`, each with its own path
/// (`rules[0].from[2]`). Absent is an empty list; a non-list, or an item
/// that is not a string, is reported and left out.
fn strings<'a>(v: Option<&'a Value>, path: &str, errs: &mut FieldErrors) -> Vec<(String, &'a str)> {
    match v {
        None => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| {
                let at = format!("{path}[{i}]");
                match item {
                    Value::String(s) => Some((at, s.as_str())),
                    other => {
                        errs.push(at, not_a("a string", other));
                        None
                    }
                }
            })
            .collect(),
        Some(other) => {
            errs.push(path, not_a("a list", other));
            Vec::new()
        }
    }
}

/// `parent.key`, or `key` at the top.
fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// "must be a list, not a string".
fn not_a(want: &str, got: &Value) -> String {
    let got = match got {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    };
    format!("must be {want}, not {got}")
}
