//! A version as the files an app reads: `application.properties`,
//! `application.json` and `.env` from `data`, plus every named file.
//! Pure; `files` writes what this returns.

use super::document::{env_name, scalar_text, unflatten};
use crate::model::config::ConfigVersion;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Every file of a version, by name. The rendered three are there only
/// when `data` has keys, so a files-only config stays files only.
pub fn render(v: &ConfigVersion) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    if !v.data.is_empty() {
        out.insert("application.properties".into(), properties(&v.data).into());
        out.insert("application.json".into(), json(&v.data).into());
        out.insert(".env".into(), dotenv(&v.data).into());
    }
    for (name, text) in &v.files {
        out.insert(name.clone(), text.clone().into_bytes());
    }
    out
}

/// `java.util.Properties` syntax, readable as ISO-8859-1 (what
/// `Properties.load(InputStream)` assumes): everything outside ASCII is
/// a `\uXXXX` escape, so the file means the same under either charset.
pub fn properties(data: &BTreeMap<String, Value>) -> String {
    let mut out = String::new();
    for (k, v) in data {
        escape_properties(&mut out, k, true);
        out.push('=');
        escape_properties(&mut out, &scalar_text(v), false);
        out.push('\n');
    }
    out
}

fn escape_properties(out: &mut String, s: &str, key: bool) {
    for (i, c) in s.chars().enumerate() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{c}' => out.push_str("\\f"),
            // Leading blanks of a value are otherwise skipped on load.
            ' ' if key || i == 0 => out.push_str("\\ "),
            '=' | ':' | '#' | '!' if key || i == 0 => {
                out.push('\\');
                out.push(c);
            }
            c if (' '..='~').contains(&c) => out.push(c),
            c => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{u:04X}");
                }
            }
        }
    }
}

/// The keys nested back (`a.b` → `{"a": {"b": ..}}`), values typed.
pub fn json(data: &BTreeMap<String, Value>) -> String {
    // Validation proved the keys nest; an empty object is the fallback a
    // stored version can never reach.
    let nested = unflatten(data).unwrap_or_else(|_| Value::Object(Default::default()));
    let mut text = serde_json::to_string_pretty(&nested).unwrap_or_default();
    text.push('\n');
    text
}

/// `NAME='value'` lines (`greeting.text` → `GREETING_TEXT`): single
/// quotes keep a value literal for a shell's `source`, docker's
/// `--env-file`, python-dotenv and node's dotenv alike; a value holding a
/// quote or a line break is double-quoted with backslash escapes instead.
pub fn dotenv(data: &BTreeMap<String, Value>) -> String {
    let mut out = String::new();
    for (k, v) in data {
        let value = scalar_text(v);
        out.push_str(&env_name(k));
        out.push('=');
        if value.contains(['\'', '\n', '\r']) {
            out.push('"');
            for c in value.chars() {
                match c {
                    '"' | '\\' | '$' | '`' => {
                        out.push('\\');
                        out.push(c);
                    }
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    c => out.push(c),
                }
            }
            out.push('"');
        } else {
            out.push('\'');
            out.push_str(&value);
            out.push('\'');
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn data(pairs: &[(&str, Value)]) -> BTreeMap<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn properties_escape_what_java_would_misread() {
        let d = data(&[
            ("a b", json!(" lead")),
            ("greeting.text", json!("héllo 👋")),
            ("multi", json!("x\ny")),
            ("n", json!(3)),
            ("path", json!("C:\\tmp=1")),
        ]);
        assert_eq!(
            properties(&d),
            "a\\ b=\\ lead\n\
             greeting.text=h\\u00E9llo \\uD83D\\uDC4B\n\
             multi=x\\ny\n\
             n=3\n\
             path=C:\\\\tmp=1\n"
        );
    }

    #[test]
    fn dotenv_quotes_for_every_reader() {
        let d = data(&[
            ("db.url", json!("postgres://u@h/db?x=$y")),
            ("quote", json!("it's")),
            ("flag", json!(true)),
        ]);
        assert_eq!(
            dotenv(&d),
            "DB_URL='postgres://u@h/db?x=$y'\nFLAG='true'\nQUOTE=\"it's\"\n"
        );
    }

    #[test]
    fn json_nests_and_keeps_types() {
        let d = data(&[
            ("a.b", json!(1)),
            ("a.c[0]", json!("x")),
            ("t", json!(true)),
        ]);
        let v: Value = serde_json::from_str(&json(&d)).unwrap();
        assert_eq!(v, json!({"a": {"b": 1, "c": ["x"]}, "t": true}));
    }
}
