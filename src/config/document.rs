//! Parsing untrusted `kind: Config` documents into [`ConfigDocument`].
//!
//! Like the policy parser, every problem is reported at once under its
//! path (`data.db.port`, `files.app/x.yaml`, `secret[1]`), and a document
//! is valid only if everything mesh renders from it can be rendered: the
//! flat keys rebuild one nested `application.json`, no two keys become
//! the same `.env` name, no file name escapes the directory or takes the
//! name of a rendered file. So a version, once stored, always delivers.

use crate::model::config::{ConfigDocument, CONFIG_KIND, DEFAULT_PROFILE, REDACTED};
use crate::model::{validate_service_name, FieldErrors};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// The most content one version may hold: every key and value of `data`
/// and every file's name and text, in bytes. Kubernetes caps a ConfigMap
/// at the same 1 MiB.
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;
/// The longest `data` key, and the longest file name (a file system's).
pub const MAX_KEY_BYTES: usize = 255;
/// The files rendered from `data`; a named file may not take these names.
pub const RENDERED: [&str; 3] = ["application.properties", "application.json", ".env"];

const TOP: &[&str] = &["kind", "application", "profile", "data", "files", "secret"];

// === impl ConfigDocument ===

impl ConfigDocument {
    /// Validates one untrusted JSON document (`kind`, when present, must
    /// be `Config`), naming every bad field.
    pub fn from_value(doc: &Value) -> Result<ConfigDocument, FieldErrors> {
        parse(doc, false)
    }

    /// As [`ConfigDocument::from_value`], for a document read from a file:
    /// `kind: Config` is required there.
    pub fn from_file_value(doc: &Value) -> Result<ConfigDocument, FieldErrors> {
        parse(doc, true)
    }

    /// Bytes of content, as [`MAX_CONFIG_BYTES`] counts them.
    pub fn content_bytes(&self) -> usize {
        let data: usize = self
            .data
            .iter()
            .map(|(k, v)| k.len() + scalar_text(v).len())
            .sum();
        let files: usize = self.files.iter().map(|(k, v)| k.len() + v.len()).sum();
        data + files
    }
}

fn parse(doc: &Value, kind_required: bool) -> Result<ConfigDocument, FieldErrors> {
    use crate::model::policy_parse_reader::{type_name, Section};
    let mut errs = FieldErrors::default();
    let Some(top) = Section::document(doc, TOP, &mut errs) else {
        return Err(errs);
    };
    match top.get("kind") {
        None if kind_required => errs.push("kind", format!("is required: kind: {CONFIG_KIND}")),
        None => {}
        Some(Value::String(k)) if k == CONFIG_KIND => {}
        Some(other) => errs.push("kind", format!("{other} is not {CONFIG_KIND}")),
    }
    let application = name(&top, "application", None, &mut errs);
    let profile = name(&top, "profile", Some(DEFAULT_PROFILE), &mut errs);

    let mut data = BTreeMap::new();
    match top.get("data") {
        None => {}
        Some(Value::Object(map)) => flatten_map(map, "", &mut data, &mut errs),
        Some(other) => errs.push(
            "data",
            format!(
                "must be a mapping of keys to values, not {}",
                type_name(other)
            ),
        ),
    }
    let files = files(top.get("files"), &mut errs);
    let secret = secrets(top.get("secret"), &data, &mut errs);
    let doc = ConfigDocument {
        application,
        profile,
        data,
        files,
        secret,
    };
    // Before the checks whose work grows with the content.
    let size = doc.content_bytes();
    if size > MAX_CONFIG_BYTES {
        errs.push(
            "(document)",
            format!(
                "{size} bytes of data and files; at most {MAX_CONFIG_BYTES} (1 MiB) per version"
            ),
        );
        return Err(errs);
    }
    if let Err((key, why)) = unflatten(&doc.data) {
        errs.push(format!("data.{key}"), why);
    }
    env_collisions(&doc.data, &mut errs);
    errs.into_result(doc)
}

/// `application` or `profile`: a DNS label, like a service name (they
/// are path segments and directory names).
fn name(
    top: &crate::model::policy_parse_reader::Section<'_>,
    field: &str,
    default: Option<&str>,
    errs: &mut FieldErrors,
) -> String {
    match top.str(field, errs) {
        Some(s) => match validate_service_name(s) {
            Ok(()) => s.to_string(),
            Err(why) => {
                errs.push(field, why);
                String::new()
            }
        },
        None => match default {
            Some(d) if !top.has(field) => d.to_string(),
            _ => {
                if !top.has(field) {
                    errs.push(field, "is required");
                }
                String::new()
            }
        },
    }
}

/// Nested mappings become dotted keys, lists `key[i]` (Spring's rule).
fn flatten_map(
    map: &Map<String, Value>,
    prefix: &str,
    out: &mut BTreeMap<String, Value>,
    errs: &mut FieldErrors,
) {
    for (k, v) in map {
        if let Err(why) = key_segment(k) {
            errs.push(format!("data.{}", join(prefix, k)), why);
            continue;
        }
        flatten_value(v, &join(prefix, k), out, errs);
    }
}

fn flatten_value(v: &Value, key: &str, out: &mut BTreeMap<String, Value>, errs: &mut FieldErrors) {
    match v {
        Value::Object(m) => flatten_map(m, key, out, errs),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                flatten_value(item, &format!("{key}[{i}]"), out, errs);
            }
        }
        Value::Null => errs.push(
            format!("data.{key}"),
            "has no value (null); write \"\" for an empty string",
        ),
        scalar => {
            if key.len() > MAX_KEY_BYTES {
                errs.push(
                    format!("data.{key}"),
                    format!("key of {} bytes; at most {MAX_KEY_BYTES}", key.len()),
                );
            } else if out.insert(key.to_string(), scalar.clone()).is_some() {
                errs.push(
                    format!("data.{key}"),
                    "given twice (as a dotted key and as a nested one)",
                );
            }
        }
    }
}

fn join(prefix: &str, key: &str) -> String {
    match prefix {
        "" => key.to_string(),
        p => format!("{p}.{key}"),
    }
}

fn key_segment(k: &str) -> Result<(), String> {
    if k.is_empty() {
        return Err("empty key".into());
    }
    if k.split('.').any(str::is_empty) {
        return Err("a dotted key has an empty part".into());
    }
    if k.chars().any(|c| c.is_control()) {
        return Err("control characters are not allowed in a key".into());
    }
    // `name[0]` (a list position, as flat keys write lists) is fine; any
    // other bracket is not.
    for part in k.split('.') {
        let (name, mut rest) = part.split_at(part.find('[').unwrap_or(part.len()));
        if name.is_empty() || name.contains(']') {
            return Err("'[' and ']' only follow a name, as a list position: servers[0]".into());
        }
        while !rest.is_empty() {
            let inner = rest.strip_prefix('[').unwrap_or("");
            let Some(end) = inner.find(']') else {
                return Err(
                    "'[' and ']' only follow a name, as a list position: servers[0]".into(),
                );
            };
            let n = &inner[..end];
            let digits = !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit());
            if !digits || (n.len() > 1 && n.starts_with('0')) || n.len() > 6 {
                return Err("a list position is a number without leading zeros: servers[0]".into());
            }
            rest = &inner[end + 1..];
        }
    }
    Ok(())
}

/// A scalar as properties, `.env` and Spring clients see it as text.
pub fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The flat keys as one nested value (`a.b` → `{"a":{"b":..}}`, `a[0]`
/// → `{"a":[..]}`): what `application.json` holds. Fails, naming the key,
/// when a key is both a value and a parent of others, or when a list's
/// positions do not run from 0 without gaps. Built sparse first, so a key
/// like `a[999999]` costs one entry, not a million.
pub fn unflatten(flat: &BTreeMap<String, Value>) -> Result<Value, (String, String)> {
    let mut root = Node::Map(BTreeMap::new());
    for (key, value) in flat {
        let clash = || {
            (
                key.clone(),
                "is a value and also has keys under it (or the other way round)".to_string(),
            )
        };
        let path = key_path(key);
        let mut at = &mut root;
        for (i, step) in path.iter().enumerate() {
            let next = match path.get(i + 1) {
                None => Node::Leaf(value.clone()),
                Some(Step::Key(_)) => Node::Map(BTreeMap::new()),
                Some(Step::Index(_)) => Node::List(BTreeMap::new()),
            };
            let last = i + 1 == path.len();
            let slot = match (step, at) {
                (Step::Key(k), Node::Map(m)) => {
                    if last && m.contains_key(k) {
                        return Err(clash());
                    }
                    m.entry(k.clone()).or_insert(next)
                }
                (Step::Index(n), Node::List(items)) => {
                    if last && items.contains_key(n) {
                        return Err(clash());
                    }
                    items.entry(*n).or_insert(next)
                }
                _ => return Err(clash()),
            };
            if !last && matches!(slot, Node::Leaf(_)) {
                return Err(clash());
            }
            at = slot;
        }
    }
    root.into_value(String::new())
}

/// [`unflatten`]'s tree before it is checked.
enum Node {
    Leaf(Value),
    Map(BTreeMap<String, Node>),
    List(BTreeMap<usize, Node>),
}

impl Node {
    fn into_value(self, at: String) -> Result<Value, (String, String)> {
        Ok(match self {
            Node::Leaf(v) => v,
            Node::Map(m) => {
                let mut out = Map::new();
                for (k, n) in m {
                    let v = n.into_value(join(&at, &k))?;
                    out.insert(k, v);
                }
                Value::Object(out)
            }
            Node::List(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, (n, node)) in items.into_iter().enumerate() {
                    if n != i {
                        return Err((
                            format!("{at}[{i}]"),
                            "list positions must run from 0 without gaps".to_string(),
                        ));
                    }
                    out.push(node.into_value(format!("{at}[{i}]"))?);
                }
                Value::Array(out)
            }
        })
    }
}

enum Step {
    Key(String),
    Index(usize),
}

/// `a.b[2].c` → [a, b, 2, c].
fn key_path(key: &str) -> Vec<Step> {
    let mut out = Vec::new();
    for part in key.split('.') {
        let (name, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        out.push(Step::Key(name.to_string()));
        while let Some(inner) = rest.strip_prefix('[') {
            let Some(end) = inner.find(']') else { break };
            if let Ok(n) = inner[..end].parse() {
                out.push(Step::Index(n));
            }
            rest = &inner[end + 1..];
        }
    }
    out
}

/// The `.env` name of a key: upper case, `.`, `-`, `[` and `]` as `_`
/// (Spring's relaxed binding reads `GREETING_TEXT` as `greeting.text`).
pub fn env_name(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for c in key.chars() {
        match c {
            '.' | '-' | '[' => out.push('_'),
            ']' => {}
            c if c.is_ascii_alphanumeric() || c == '_' => out.push(c.to_ascii_uppercase()),
            _ => out.push('_'),
        }
    }
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

fn env_collisions(data: &BTreeMap<String, Value>, errs: &mut FieldErrors) {
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    for key in data.keys() {
        let env = env_name(key);
        if let Some(first) = seen.insert(env.clone(), key) {
            errs.push(
                format!("data.{key}"),
                format!("becomes the .env name {env}, as {first:?} does; rename one"),
            );
        }
    }
}

fn files(v: Option<&Value>, errs: &mut FieldErrors) -> BTreeMap<String, String> {
    use crate::model::policy_parse_reader::type_name;
    let mut out = BTreeMap::new();
    let map = match v {
        None => return out,
        Some(Value::Object(m)) => m,
        Some(other) => {
            errs.push(
                "files",
                format!(
                    "must be a mapping of file names to text, not {}",
                    type_name(other)
                ),
            );
            return out;
        }
    };
    for (name, text) in map {
        let field = format!("files.{name}");
        if let Err(why) = file_name(name) {
            errs.push(field, why);
            continue;
        }
        match text {
            Value::String(s) => {
                out.insert(name.clone(), s.clone());
            }
            other => errs.push(
                field,
                format!(
                    "must be the file's text (a string; `|` keeps lines), not {}",
                    type_name(other)
                ),
            ),
        }
    }
    out
}

/// A name inside the config directory: one path component, not hidden
/// behind the `..` names the atomic swap uses, not a rendered file's.
pub fn file_name(name: &str) -> Result<(), String> {
    path_component(name)?;
    if RENDERED.contains(&name) {
        return Err(format!(
            "{name} is rendered from data; put these keys under data instead"
        ));
    }
    Ok(())
}

/// One component of a path inside the config directory, not one of the
/// swap's `..` names: what `files::write` checks again of every name it
/// writes, whoever sent it.
pub fn path_component(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty file name".into());
    }
    if name.len() > MAX_KEY_BYTES {
        return Err(format!(
            "file name of {} bytes; at most {MAX_KEY_BYTES}",
            name.len()
        ));
    }
    if name.contains('/') || name.contains('\\') {
        return Err("a file name may not contain '/' or '\\' (files live in one directory)".into());
    }
    if name == "." || name.starts_with("..") {
        return Err(
            "a file name may not be '.' or start with '..' (the names of the atomic swap)".into(),
        );
    }
    if name.chars().any(|c| c.is_control()) {
        return Err("control characters are not allowed in a file name".into());
    }
    Ok(())
}

fn secrets(
    v: Option<&Value>,
    data: &BTreeMap<String, Value>,
    errs: &mut FieldErrors,
) -> BTreeSet<String> {
    use crate::model::policy_parse_reader::type_name;
    let mut out = BTreeSet::new();
    let items = match v {
        None => return out,
        Some(Value::Array(items)) => items,
        Some(other) => {
            errs.push(
                "secret",
                format!("must be a list of keys of data, not {}", type_name(other)),
            );
            return out;
        }
    };
    for (i, item) in items.iter().enumerate() {
        match item.as_str() {
            Some(k) if data.get(k).and_then(Value::as_str) == Some(REDACTED) => errs.push(
                format!("secret[{i}]"),
                format!(
                    "{k:?} holds the placeholder {REDACTED} (from `config get` without --show-secrets); give the value"
                ),
            ),
            Some(k) if data.contains_key(k) => {
                out.insert(k.to_string());
            }
            Some(k) => errs.push(
                format!("secret[{i}]"),
                format!(
                    "{k:?} is not a key of data (secrets are values of data, by their flat key)"
                ),
            ),
            None => errs.push(
                format!("secret[{i}]"),
                format!("must be a key (a string), not {}", type_name(item)),
            ),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errors(doc: Value) -> Vec<(String, String)> {
        match ConfigDocument::from_file_value(&doc) {
            Ok(d) => panic!("accepted {d:?}"),
            Err(e) => e.0.into_iter().map(|e| (e.field, e.reason)).collect(),
        }
    }

    fn fields(doc: Value) -> Vec<String> {
        errors(doc).into_iter().map(|(f, _)| f).collect()
    }

    #[test]
    fn a_document_flattens_and_defaults_its_profile() {
        let doc = ConfigDocument::from_file_value(&json!({
            "kind": "Config",
            "application": "hello",
            "data": {
                "greeting": {"text": "hi", "lang": "en"},
                "db.port": 5432,
                "debug": false,
                "servers": ["a", {"host": "b"}],
                "db": {"password": "s3cret"}
            },
            "files": {"app.yaml": "x: 1\n"},
            "secret": ["db.password"]
        }))
        .unwrap();
        assert_eq!(doc.profile, "default");
        let keys: Vec<&str> = doc.data.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "db.password",
                "db.port",
                "debug",
                "greeting.lang",
                "greeting.text",
                "servers[0]",
                "servers[1].host"
            ]
        );
        assert_eq!(doc.data["db.port"], json!(5432));
        assert_eq!(
            unflatten(&doc.data).unwrap(),
            json!({
                "db": {"password": "s3cret", "port": 5432},
                "debug": false,
                "greeting": {"lang": "en", "text": "hi"},
                "servers": ["a", {"host": "b"}]
            })
        );
        assert_eq!(doc.secret.iter().collect::<Vec<_>>(), ["db.password"]);
        assert_eq!(env_name("servers[1].host"), "SERVERS_1_HOST");
        assert_eq!(env_name("greeting.text"), "GREETING_TEXT");
    }

    #[test]
    fn every_bad_field_is_named() {
        let got = fields(json!({
            "kind": "Config",
            "application": "Hello",
            "profile": "",
            "colour": 1,
            "data": {"a": null, "b": {"": 1}, "x[1]": 2},
            "files": {"../etc/passwd": "x", "..data": "y", "application.json": "{}", "ok": 3},
            "secret": ["nope", 7]
        }));
        assert_eq!(
            got,
            [
                "colour",
                "application",
                "profile",
                "data.a",
                "data.b.",
                "files.../etc/passwd",
                "files...data",
                "files.application.json",
                "files.ok",
                "secret[0]",
                "secret[1]",
                "data.x[0]"
            ]
        );
    }

    #[test]
    fn clashes_are_refused_before_anything_is_stored() {
        assert_eq!(
            fields(
                json!({"kind": "Config", "application": "a", "data": {"a.b": 1, "a": {"b": 2}}})
            ),
            ["data.a.b"]
        );
        assert_eq!(
            fields(json!({"kind": "Config", "application": "a", "data": {"a": 1, "a.b": 2}})),
            ["data.a.b"]
        );
        let env =
            errors(json!({"kind": "Config", "application": "a", "data": {"a-b": 1, "a.b": 2}}));
        assert_eq!(env[0].0, "data.a.b");
        assert!(env[0].1.contains("A_B"), "{env:?}");
        assert_eq!(fields(json!({"application": "a"})), ["kind"]);
        assert!(ConfigDocument::from_value(&json!({"application": "a"})).is_ok());
        assert_eq!(
            fields(json!({"kind": "ServicePolicy", "application": "a"})),
            ["kind"]
        );
        assert_eq!(fields(json!({"kind": "Config"})), ["application"]);
    }

    #[test]
    fn hostile_keys_cost_nothing_and_aliases_are_refused() {
        // One entry each, not a million-slot list.
        let got = fields(json!({"kind": "Config", "application": "a", "data": {"k[999999]": 1}}));
        assert_eq!(got, ["data.k[0]"]);
        assert_eq!(
            fields(json!({"kind": "Config", "application": "a", "data": {"k[0]": 1, "k[00]": 2}})),
            ["data.k[00]"]
        );
        let got = errors(json!({"kind": "Config", "application": "a",
            "data": {"pw": "<redacted>"}, "secret": ["pw"]}));
        assert_eq!(got[0].0, "secret[0]");
        assert!(got[0].1.contains("placeholder"), "{got:?}");
    }

    #[test]
    fn a_document_over_the_limit_is_refused() {
        let big = "x".repeat(MAX_CONFIG_BYTES);
        let got = errors(json!({"kind": "Config", "application": "a", "files": {"big.txt": big}}));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "(document)");
        assert!(got[0].1.contains("1 MiB"), "{got:?}");
        let fits = "x".repeat(MAX_CONFIG_BYTES - "big.txt".len());
        let ok = json!({"kind": "Config", "application": "a", "files": {"big.txt": fits}});
        assert!(ConfigDocument::from_file_value(&ok).is_ok());
    }
}
