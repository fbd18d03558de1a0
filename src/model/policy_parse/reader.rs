//! Typed reads from one mapping of an untrusted document. Each read checks
//! type and range, records a problem under the field's camelCase path and
//! returns the default instead, so parsing goes on and every bad field is
//! reported in one pass.

use crate::model::{parse_duration, FieldErrors};
use serde_json::{Map, Value};
use std::ops::RangeInclusive;
use std::time::Duration;

/// The smallest duration a field accepts.
#[derive(Clone, Copy, Debug)]
pub enum AtLeast {
    /// `0s` is allowed (it means "off" or "no wait").
    Zero,
    /// Must be more than zero.
    Positive,
    /// Must be at least this long.
    Min(Duration),
}

/// One mapping of the document and where it sits.
pub struct Section<'a> {
    /// Dotted path of this mapping (`""` at the top, `breaker.slowCall`).
    path: String,
    /// `None` when the mapping is absent, null or not a mapping: every read
    /// then yields its default.
    map: Option<&'a Map<String, Value>>,
}

// === impl Section ===

impl<'a> Section<'a> {
    /// A whole document, which must be a mapping whose keys are all in
    /// `allowed`; `None`, with the problem recorded, when it is not one.
    pub fn document(
        doc: &'a Value,
        allowed: &[&str],
        errs: &mut FieldErrors,
    ) -> Option<Section<'a>> {
        if !doc.is_object() {
            errs.push(
                "(document)",
                format!("must be a mapping, not {}", type_name(doc)),
            );
            return None;
        }
        Some(Section::open(Some(doc), String::new(), allowed, errs))
    }

    /// Opens `value` (found at `path`) as a mapping whose keys must all be in
    /// `allowed`. Absent or null means "all defaults".
    pub fn open(
        value: Option<&'a Value>,
        path: String,
        allowed: &[&str],
        errs: &mut FieldErrors,
    ) -> Section<'a> {
        let map = match value {
            None | Some(Value::Null) => None,
            Some(Value::Object(map)) => {
                for key in map.keys().filter(|k| !allowed.contains(&k.as_str())) {
                    errs.push(
                        join(&path, key),
                        format!("unknown field; expected one of {}", allowed.join(", ")),
                    );
                }
                Some(map)
            }
            Some(other) => {
                errs.push(
                    display_path(&path),
                    format!("must be a mapping, not {}", type_name(other)),
                );
                None
            }
        };
        Section { path, map }
    }

    /// The path of `key` inside this mapping.
    pub fn path(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// The raw value of `key`; null counts as absent.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.map?.get(key).filter(|v| !v.is_null())
    }

    /// Whether `key` is present with a non-null value.
    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// A nested mapping.
    pub fn section(&self, key: &str, allowed: &[&str], errs: &mut FieldErrors) -> Section<'a> {
        Section::open(self.get(key), self.path(key), allowed, errs)
    }

    /// A string, or `None` (absent, or wrong type: reported).
    pub fn str(&self, key: &str, errs: &mut FieldErrors) -> Option<&'a str> {
        match self.get(key)? {
            Value::String(s) => Some(s),
            other => {
                errs.push(
                    self.path(key),
                    format!("must be a string, not {}", type_name(other)),
                );
                None
            }
        }
    }

    /// `true` or `false`; `default` when absent (a wrong type is reported).
    pub fn bool(&self, key: &str, default: bool, errs: &mut FieldErrors) -> bool {
        match self.get(key) {
            None => default,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                errs.push(
                    self.path(key),
                    format!("must be true or false, not {}", type_name(other)),
                );
                default
            }
        }
    }

    /// A whole number in `range`.
    pub fn u32(
        &self,
        key: &str,
        range: RangeInclusive<u32>,
        default: u32,
        errs: &mut FieldErrors,
    ) -> u32 {
        let Some(v) = self.get(key) else {
            return default;
        };
        let (lo, hi) = (*range.start(), *range.end());
        let want = if hi == u32::MAX {
            format!("a whole number, at least {lo}")
        } else {
            format!("a whole number in {lo}..={hi}")
        };
        let reason = match v {
            Value::Number(n) => match (n.as_u64(), n.as_i64()) {
                (Some(x), _) if x >= u64::from(lo) && x <= u64::from(hi) => {
                    return u32::try_from(x).unwrap_or(default)
                }
                (Some(x), _) if hi == u32::MAX && x > u64::from(hi) => {
                    format!("{x} is too large; at most {hi}")
                }
                (Some(x), _) if x < u64::from(lo) => format!("{x} is too small; must be {want}"),
                (Some(x), _) => format!("{x} is more than {hi}; must be {want}"),
                (None, Some(x)) => format!("{x} is negative; must be {want}"),
                (None, None) => format!("{n} is not {want}"),
            },
            other => format!("must be {want}, not {}", type_name(other)),
        };
        errs.push(self.path(key), reason);
        default
    }

    /// A percentage, 0..=100.
    pub fn percent(&self, key: &str, default: u32, errs: &mut FieldErrors) -> u32 {
        self.u32(key, 0..=100, default, errs)
    }

    /// A duration string (`250ms`, `5s`, `1m30s`; bare `0` too).
    pub fn duration(
        &self,
        key: &str,
        at_least: AtLeast,
        default: Duration,
        errs: &mut FieldErrors,
    ) -> Duration {
        let Some(v) = self.get(key) else {
            return default;
        };
        let parsed = match v {
            Value::String(s) => parse_duration(s),
            Value::Number(n) if n.as_u64() == Some(0) => Ok(Duration::ZERO),
            Value::Number(n) => Err(format!("{n} has no unit; write e.g. \"{n}s\" or \"{n}ms\"")),
            other => Err(format!(
                "must be a duration such as \"5s\" or \"250ms\", not {}",
                type_name(other)
            )),
        };
        let checked = parsed.and_then(|d| {
            if d.subsec_nanos() % 1_000_000 != 0 {
                return Err("must be a whole number of milliseconds".into());
            }
            match at_least {
                AtLeast::Positive if d.is_zero() => Err("must be more than 0".into()),
                AtLeast::Min(min) if d < min => Err(format!(
                    "must be at least {}",
                    crate::model::format_duration(min)
                )),
                _ => Ok(d),
            }
        });
        checked.unwrap_or_else(|why| {
            errs.push(self.path(key), why);
            default
        })
    }
}

/// `parent.key`, or `key` at the top.
pub fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// How the top of the document is named in errors.
pub fn display_path(path: &str) -> String {
    if path.is_empty() {
        "(document)".into()
    } else {
        path.to_string()
    }
}

/// "a string", "a list": for "must be X, not Y" messages.
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}
