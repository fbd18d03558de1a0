//! Authorization: which callers may reach a service, from `kind:
//! AuthorizationPolicy` documents and the caller's verified SPIFFE ID.
//!
//! A document protects one destination service. The document with
//! `service: "*"` carries only the mesh-wide `default` and `mode`, used
//! where a service's own document does not say. With no document at all
//! every call is allowed, as before authorization existed.
//!
//! [`Policies::decide`] reads, in this order:
//!
//! 1. **Mode.** A caller without an identity (a plaintext client from
//!    outside the mesh) is refused under `mode: strict` before any rule is
//!    read (`mode:strict`). The mode is the coarse switch, as Istio's
//!    PeerAuthentication STRICT runs before its AuthorizationPolicy: no rule
//!    can reopen what the mode closed. The service's mode wins over the
//!    mesh-wide one; neither means permissive.
//! 2. **Rules, in order; the first match wins** and names the decision. A
//!    rule matches when one of its `from` entries matches the caller and
//!    the request fits its `methods` and `paths`.
//! 3. **Defaults.** The service's `default` (`default`), else the mesh-wide
//!    one, else allow (both reported as `mesh-default`).
//!
//! Why ordered first match: Istio evaluates every DENY policy before any
//! ALLOW, so a deny anywhere wins whatever the order. We follow Consul's L7
//! intention permissions instead: one list per service, read top down, the
//! first match decides. All of a service's rules sit in one document, so its
//! author sees the whole order; an exception ("batch may not write, the rest
//! of the mesh may") is two rules in the order they are read; and every
//! decision names the one rule that made it. The price is that a deny placed
//! after a broader allow never fires, so parsing rejects a rule that an
//! earlier one always matches first: that mistake is caught at apply time.
//!
//! Opaque TCP has no method and no path (both `None`), and a rule with
//! `methods` or `paths` never matches it. An L7 condition cannot be checked
//! on bytes: an allow rule must not grant on a guess, and a deny rule meant
//! for `DELETE` must not silently cut every TCP connection either. TCP is
//! decided by the rules without L7 conditions, then the defaults.
//!
//! Paths are compared as prefixes after dropping the query and normalizing
//! (RFC 3986 dot segments resolved, `//` merged, %-escapes of unreserved
//! characters decoded), so neither `/api/../admin` nor `/api/%2e%2e/admin`
//! is under `/api/`: the app would serve `/admin` for both. Escaped slashes
//! (`%2F`) stay escaped, as most servers keep them inside one segment.
//!
//! Everything here is pure: parsing (`parse.rs`) and decisions, no I/O.

mod parse;
#[cfg(test)]
mod tests;

use crate::identity::{check_trust_domain, SpiffeId};
use crate::model::{validate_service_name, FieldErrors};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

/// The `kind` of an authorization document.
pub const AUTHZ_KIND: &str = "AuthorizationPolicy";
/// The `service` of the mesh-wide document.
pub const MESH_WIDE: &str = "*";
/// Most rules one document may hold: every request of the service walks
/// them in order.
pub const MAX_RULES: usize = 256;

/// What a rule, or a default, does with a call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// A rule without `action:` allows: rules mostly list who may call.
    #[default]
    Allow,
    Deny,
}

/// Whether callers without a mesh identity may reach the service at all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Plaintext clients from outside the mesh get through to the rules
    /// (as `unauthenticated`); the default, so adopting the mesh does not
    /// cut off clients that have no sidecar yet.
    #[default]
    Permissive,
    /// Plaintext clients are refused before any rule is read.
    Strict,
}

/// One entry of a rule's `from`, written and serialized as a string.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Principal {
    /// `spiffe://<td>/ns/<ns>/sa/<svc>`: that one identity.
    Exact(String),
    /// `spiffe://<td>/ns/<ns>/sa/*`: any service of the namespace. `prefix`
    /// is the ID up to and including `/sa/`.
    Namespace { prefix: String },
    /// `*`: any caller with a verified identity; not plaintext clients.
    AnyAuthenticated,
    /// `unauthenticated`: a plaintext client, which has no identity.
    Unauthenticated,
}

/// One entry of a document's `rules`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// Unique within the document; `rules[i]` when the document gave none.
    pub name: String,
    #[serde(default)]
    pub action: Action,
    /// Never empty in a parsed document.
    pub from: Vec<Principal>,
    /// Uppercase HTTP methods; empty means any (and opaque TCP too).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Path prefixes, each starting with `/` and already normalized; empty
    /// means any (and opaque TCP too).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
}

/// A whole `kind: AuthorizationPolicy` document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicy {
    /// The destination service protected, or [`MESH_WIDE`].
    pub service: String,
    /// When no rule matches; `None` defers to the mesh-wide default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Action>,
    /// `None` defers to the mesh-wide mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Always empty in the mesh-wide document. Left out of the JSON when
    /// empty, so a serialized mesh-wide document parses again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
}

/// What is known of one connection or request when it is decided.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Request<'a> {
    /// The caller's verified SPIFFE ID; `None` for a plaintext client from
    /// outside the mesh.
    pub caller: Option<&'a str>,
    /// The HTTP method; `None` for opaque TCP.
    pub method: Option<&'a str>,
    /// The request target's path (a query is allowed and ignored); `None`
    /// for opaque TCP.
    pub path: Option<&'a str>,
}

/// The outcome, and what made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The matching rule's name, or [`Decision::DEFAULT`],
    /// [`Decision::STRICT`] or [`Decision::MESH_DEFAULT`].
    pub rule: String,
}

/// Every applied document, ready to decide calls.
#[derive(Clone, Debug, Default)]
pub struct Policies {
    services: HashMap<String, AuthorizationPolicy>,
    mesh: Option<AuthorizationPolicy>,
}

// === impl Action ===

impl Action {
    pub const NAMES: [&'static str; 2] = ["allow", "deny"];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
    }
}

impl std::str::FromStr for Action {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "allow" => Ok(Action::Allow),
            "deny" => Ok(Action::Deny),
            other => Err(format!(
                "{other:?} is not an action; expected one of {}",
                Self::NAMES.join(", ")
            )),
        }
    }
}

// === impl Mode ===

impl Mode {
    pub const NAMES: [&'static str; 2] = ["permissive", "strict"];

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Permissive => "permissive",
            Mode::Strict => "strict",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "permissive" => Ok(Mode::Permissive),
            "strict" => Ok(Mode::Strict),
            other => Err(format!(
                "{other:?} is not a mode; expected one of {}",
                Self::NAMES.join(", ")
            )),
        }
    }
}

// === impl Principal ===

impl Principal {
    /// Whether `caller` (`None`: no identity) is one this entry names.
    pub fn matches(&self, caller: Option<&str>) -> bool {
        match (self, caller) {
            (Principal::Exact(id), Some(c)) => id == c,
            // Exactly one more segment: `.../sa/web/extra` is not a service
            // of the namespace (verified IDs never look like that anyway).
            (Principal::Namespace { prefix }, Some(c)) => c
                .strip_prefix(prefix.as_str())
                .is_some_and(|svc| !svc.is_empty() && !svc.contains('/')),
            (Principal::AnyAuthenticated, Some(_)) => true,
            (Principal::Unauthenticated, None) => true,
            _ => false,
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Exact(id) => f.write_str(id),
            Principal::Namespace { prefix } => write!(f, "{prefix}*"),
            Principal::AnyAuthenticated => f.write_str("*"),
            Principal::Unauthenticated => f.write_str("unauthenticated"),
        }
    }
}

impl std::str::FromStr for Principal {
    type Err = String;

    /// `*`, `unauthenticated`, `spiffe://<td>/ns/<ns>/sa/*`, or an ID as
    /// the CA issues it ([`SpiffeId`]: DNS-label namespace and service).
    /// Nothing looser: an ID no sidecar can be issued is a typo, and a rule
    /// naming it would silently match nobody.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "*" => return Ok(Principal::AnyAuthenticated),
            "unauthenticated" => return Ok(Principal::Unauthenticated),
            _ => {}
        }
        if !s.starts_with("spiffe://") {
            return Err(format!(
                "{s:?} is not a caller; write a SPIFFE ID \
                 (spiffe://<trust domain>/ns/<namespace>/sa/<service>, or .../sa/* for a \
                 whole namespace), \"*\" (any caller with a mesh identity) or \
                 \"unauthenticated\" (a plaintext client from outside the mesh)"
            ));
        }
        let Some(base) = s.strip_suffix("/sa/*") else {
            return s
                .parse::<SpiffeId>()
                .map(|_| Principal::Exact(s.to_string()))
                .map_err(|e| e.0);
        };
        let shape = || {
            format!(
                "{s:?} is not spiffe://<trust domain>/ns/<namespace>/sa/* (any service of \
                 the namespace)"
            )
        };
        let rest = base.strip_prefix("spiffe://").ok_or_else(shape)?;
        let mut parts = rest.split('/');
        let (Some(domain), Some("ns"), Some(ns), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(shape());
        };
        if ns == "*" {
            return Err(format!(
                "{s:?}: only the service may be \"*\" (.../ns/<namespace>/sa/*); for any \
                 caller write \"*\""
            ));
        }
        check_trust_domain(domain).map_err(|e| format!("{s:?}: {}", e.0))?;
        validate_service_name(ns).map_err(|why| format!("{s:?}: namespace {ns:?} {why}"))?;
        Ok(Principal::Namespace {
            prefix: format!("spiffe://{domain}/ns/{ns}/sa/"),
        })
    }
}

impl TryFrom<String> for Principal {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Principal> for String {
    fn from(p: Principal) -> String {
        p.to_string()
    }
}

// === impl Rule ===

impl Rule {
    /// `path` is already normalized (see [`normalize_path`]).
    fn matches(&self, caller: Option<&str>, method: Option<&str>, path: Option<&str>) -> bool {
        // An absent method or path (opaque TCP) fails any L7 condition: see
        // the module docs for why that holds for deny rules too.
        let method_ok =
            self.methods.is_empty() || method.is_some_and(|m| self.methods.iter().any(|x| x == m));
        let path_ok = self.paths.is_empty()
            || path.is_some_and(|p| self.paths.iter().any(|x| p.starts_with(x.as_str())));
        method_ok && path_ok && self.from.iter().any(|p| p.matches(caller))
    }
}

// === impl AuthorizationPolicy ===

impl AuthorizationPolicy {
    /// Validates one untrusted JSON document (`kind` may be absent, but if
    /// present must be [`AUTHZ_KIND`]), naming every bad field.
    pub fn from_value(doc: &Value) -> Result<AuthorizationPolicy, FieldErrors> {
        parse::parse(doc)
    }

    /// Whether this is the mesh-wide document (`service: "*"`).
    pub fn is_mesh_wide(&self) -> bool {
        self.service == MESH_WIDE
    }
}

// === impl Request ===

impl<'a> Request<'a> {
    /// An HTTP request.
    pub fn http(caller: Option<&'a str>, method: &'a str, path: &'a str) -> Self {
        Request {
            caller,
            method: Some(method),
            path: Some(path),
        }
    }

    /// An opaque TCP connection: only the caller is known.
    pub fn tcp(caller: Option<&'a str>) -> Self {
        Request {
            caller,
            method: None,
            path: None,
        }
    }
}

// === impl Decision ===

impl Decision {
    /// The service's own `default` decided.
    pub const DEFAULT: &'static str = "default";
    /// A plaintext caller refused by `mode: strict`.
    pub const STRICT: &'static str = "mode:strict";
    /// The mesh-wide `default` decided, or the built-in allow when there is
    /// none.
    pub const MESH_DEFAULT: &'static str = "mesh-default";

    fn by(action: Action, rule: &str) -> Decision {
        Decision {
            allowed: action == Action::Allow,
            rule: rule.to_string(),
        }
    }
}

// === impl Policies ===

impl Policies {
    /// Indexes `docs` by service. A later document for the same service
    /// replaces an earlier one, as applying it again does; rules on the
    /// mesh-wide document (which parsing refuses) are ignored.
    pub fn new(docs: impl IntoIterator<Item = AuthorizationPolicy>) -> Self {
        let mut policies = Policies::default();
        for doc in docs {
            if doc.is_mesh_wide() {
                policies.mesh = Some(doc);
            } else {
                policies.services.insert(doc.service.clone(), doc);
            }
        }
        policies
    }

    /// No document at all: everything is allowed.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.mesh.is_none()
    }

    /// Decides one call to `service`, in the order the module docs give.
    pub fn decide(&self, service: &str, req: &Request<'_>) -> Decision {
        let doc = self.services.get(service);
        let mesh_mode = self.mesh.as_ref().and_then(|m| m.mode);
        let mode = doc.and_then(|d| d.mode).or(mesh_mode).unwrap_or_default();
        if req.caller.is_none() && mode == Mode::Strict {
            return Decision::by(Action::Deny, Decision::STRICT);
        }
        if let Some(doc) = doc {
            let path = req.path.map(normalize_path);
            let path = path.as_deref();
            let hit = doc
                .rules
                .iter()
                .find(|r| r.matches(req.caller, req.method, path));
            if let Some(rule) = hit {
                return Decision::by(rule.action, &rule.name);
            }
            if let Some(action) = doc.default {
                return Decision::by(action, Decision::DEFAULT);
            }
        }
        let action = self.mesh.as_ref().and_then(|m| m.default);
        Decision::by(action.unwrap_or_default(), Decision::MESH_DEFAULT)
    }
}

/// `path` without its query or fragment, in the form rules' prefixes are
/// written in: %-escapes of unreserved characters decoded (others
/// uppercased), `//` merged, `.` and `..` segments resolved (RFC 3986
/// 6.2.2). Without this, `/api/%2e%2e/admin` would pass as `/api/` while
/// the app serves `/admin`. Borrows when there is nothing to do, which is
/// nearly always. A path not starting with `/` (`*`, absolute form) is
/// left alone: no prefix can match it.
pub(crate) fn normalize_path(path: &str) -> Cow<'_, str> {
    let path = match path.find(['?', '#']) {
        Some(end) => &path[..end],
        None => path,
    };
    let clean = !path.contains('%')
        && !path.contains("//")
        && !path.split('/').any(|s| s == "." || s == "..");
    if clean || !path.starts_with('/') {
        return Cow::Borrowed(path);
    }
    let decoded = decode_unreserved(path);
    // `/a/b/..` is the directory `/a/`: keep the trailing slash it implies.
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut segments: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for seg in &segments {
        out.push('/');
        out.push_str(seg);
    }
    if trailing || segments.is_empty() {
        out.push('/');
    }
    Cow::Owned(out)
}

/// Decodes `%XX` when it stands for an unreserved character (letters,
/// digits, `-._~`), which means the same decoded or not; other escapes stay,
/// with uppercase hex. Decoding `%2F` would turn one segment into two, which
/// is not what most servers do.
fn decode_unreserved(path: &str) -> String {
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let escape = if b[i] == b'%' && i + 2 < b.len() {
            hex(b[i + 1]).zip(hex(b[i + 2]))
        } else {
            None
        };
        let Some((hi, lo)) = escape else {
            out.push(b[i]);
            i += 1;
            continue;
        };
        let c = hi * 16 + lo;
        if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
            out.push(c);
        } else {
            out.extend([
                b'%',
                b[i + 1].to_ascii_uppercase(),
                b[i + 2].to_ascii_uppercase(),
            ]);
        }
        i += 3;
    }
    // Only ASCII triplets became ASCII bytes, so this is still UTF-8.
    String::from_utf8(out).unwrap_or_else(|_| path.to_string())
}

fn hex(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}
