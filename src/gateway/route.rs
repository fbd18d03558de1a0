//! `kind: Route`: how the gateway maps an outside request to a mesh
//! service, shaped like the Kubernetes Gateway API's HTTPRoute (v1) so its
//! users recognise every field: `hostnames`, `rules[].matches` (`path`
//! with `type: Exact | PathPrefix | RegularExpression`, `method`,
//! `headers`, `queryParams`), `rules[].filters` (`RequestHeaderModifier`,
//! `ResponseHeaderModifier`, `URLRewrite`, `RequestRedirect`, each under
//! its camelCase key, as HTTPRoute nests them) and `rules[].backends`.
//!
//! Departures, each because a mesh service is not a Kubernetes Service:
//! `backends` (not `backendRefs`) name a mesh `service`; `port` is
//! accepted but does not choose endpoints (a mesh service is reached at
//! its instances' registered port, as `http://orders.mesh:8080/` is);
//! `timeouts.request` and `retry.attempts` (GEP-1742, GEP-1731) cap the
//! service's own policy rather than replace it.
//!
//! These are the wire and stored forms (serde). Untrusted documents are
//! read by `parse.rs`, which names every bad field.

use crate::model::policy::dur;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The `kind` of a route document.
pub const ROUTE_KIND: &str = "Route";
/// Most rules one route may hold, most matches one rule may hold: every
/// request walks the matches of its host in order.
pub const MAX_RULES: usize = 64;
pub const MAX_MATCHES: usize = 16;
pub const MAX_BACKENDS: usize = 16;
pub const MAX_HOSTNAMES: usize = 16;
/// A compiled regular expression's size bound (the `regex` crate's
/// `size_limit`): matching is linear in the input whatever the pattern,
/// and this bounds the memory and build time of one pattern.
pub const MAX_REGEX_BYTES: usize = 256 * 1024;

/// One route document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// Unique among routes; the route's label in metrics and logs.
    pub name: String,
    /// Hosts this route serves (`shop.example.com`, `*.example.com`);
    /// none: every host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    /// Defaults for every rule that does not set its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtAuth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<Cors>,
    pub rules: Vec<RouteRule>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteRule {
    /// Named in metrics and the access log; default `rules[N]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Any one of them selects the rule; none: every request (a `/` prefix).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<RouteMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<Filter>,
    /// Where requests go, by weight. Empty only with a redirect filter.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<Backend>,
    #[serde(default, skip_serializing_if = "Timeouts::is_empty")]
    pub timeouts: Timeouts,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// Bearer tokens this rule requires (else the route's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtAuth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<Cors>,
}

/// JWT bearer authentication (Envoy's `jwt_authn` provider, in short).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JwtAuth {
    /// The `iss` every token must carry.
    pub issuer: String,
    /// Accepted `aud` values (a token needs one of them); none: `aud` is
    /// not checked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// Where the keys are: an `http(s)://` JWKS URL, fetched and cached...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// ... or a JWKS file on the gateway's disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<String>,
    /// Accepted `alg`s; asymmetric only (RS*, PS*, ES256, ES384, EdDSA).
    pub algorithms: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(with = "dur")]
    pub leeway: Duration,
    /// Claims sent to the backend as headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claims_to_headers: Vec<ClaimHeader>,
    /// Keep the `Authorization` header for the backend (default: removed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forward_authorization: bool,
    /// Claims a valid token must also carry, else 403.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_claims: Vec<RequiredClaim>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimHeader {
    pub claim: String,
    pub header: String,
}

/// `claim` must hold one of `values` (a string, a space-separated string
/// such as OAuth's `scope`, or a list).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequiredClaim {
    pub claim: String,
    pub values: Vec<String>,
}

/// A token bucket: `requests` per `per`, bursts up to `burst`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RateLimit {
    pub requests: u32,
    #[serde(with = "dur")]
    pub per: Duration,
    pub burst: u32,
    /// `client` (the client's address), `header:NAME` or `claim:NAME`.
    pub key: String,
    /// Shared by every gateway replica through Redis (`--redis`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub global: bool,
}

/// CORS, answered at the edge: preflights never reach the backend.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cors {
    /// Origins (`https://shop.example.com`), or `*`.
    pub allow_origins: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_methods: Vec<String>,
    /// Request headers a preflight may ask for (`*`: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_headers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_credentials: bool,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_dur")]
    pub max_age: Option<Duration>,
}

/// GEP-1742's `timeouts.request`: the whole request, retries included.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeouts {
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_dur")]
    pub request: Option<Duration>,
}

impl Timeouts {
    fn is_empty(&self) -> bool {
        self.request.is_none()
    }
}

/// GEP-1731's `retry.attempts`: retries after the first try, on the
/// failures the service's own policy retries (`retries.on`), within its
/// retry budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retry {
    pub attempts: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// Uppercase, as sent (`GET`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<ValueMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<ValueMatch>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value")]
pub enum PathMatch {
    Exact(String),
    /// Element-wise: `/api` matches `/api` and `/api/x`, not `/apix`.
    PathPrefix(String),
    /// The whole path must match (anchored).
    RegularExpression(String),
}

/// A header (names compared without case) or a query parameter (the first
/// value with that name, as Gateway API says).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValueMatch {
    pub name: String,
    pub value: String,
    #[serde(default, rename = "type")]
    pub kind: ValueMatchKind,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ValueMatchKind {
    #[default]
    Exact,
    RegularExpression,
}

/// A weighted destination: a mesh service, with its whole policy stack.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backend {
    pub service: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Relative share of requests (Gateway API's default 1); 0: none.
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// One filter, in the order written. On the wire it is HTTPRoute's shape:
/// `{type: URLRewrite, urlRewrite: {...}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "FilterWire", try_from = "FilterWire")]
pub enum Filter {
    RequestHeaderModifier(HeaderModifier),
    ResponseHeaderModifier(HeaderModifier),
    UrlRewrite(UrlRewrite),
    RequestRedirect(Redirect),
}

impl Filter {
    /// The `type` it is written with.
    pub fn type_name(&self) -> &'static str {
        match self {
            Filter::RequestHeaderModifier(_) => "RequestHeaderModifier",
            Filter::ResponseHeaderModifier(_) => "ResponseHeaderModifier",
            Filter::UrlRewrite(_) => "URLRewrite",
            Filter::RequestRedirect(_) => "RequestRedirect",
        }
    }
}

/// `set` replaces, `add` appends, `remove` drops (names without case).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderModifier {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<HeaderValuePair>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<HeaderValuePair>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderValuePair {
    pub name: String,
    pub value: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UrlRewrite {
    /// Replaces the Host (HTTP/1) or `:authority` (HTTP/2) the app sees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
}

/// HTTPRoute's `{type: ReplaceFullPath, replaceFullPath: /x}` or
/// `{type: ReplacePrefixMatch, replacePrefixMatch: /}` (the strip-prefix
/// of Spring Cloud Gateway is `replacePrefixMatch: /`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "PathModifierWire", try_from = "PathModifierWire")]
pub enum PathModifier {
    ReplaceFullPath(String),
    ReplacePrefixMatch(String),
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Redirect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
    /// 301, 302 (the default), 303, 307 or 308.
    #[serde(default = "found")]
    pub status_code: u16,
}

fn found() -> u16 {
    302
}

// === wire forms ===

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FilterWire {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    request_header_modifier: Option<HeaderModifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    response_header_modifier: Option<HeaderModifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    url_rewrite: Option<UrlRewrite>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    request_redirect: Option<Redirect>,
}

impl From<Filter> for FilterWire {
    fn from(f: Filter) -> Self {
        let mut w = FilterWire {
            kind: f.type_name().to_string(),
            request_header_modifier: None,
            response_header_modifier: None,
            url_rewrite: None,
            request_redirect: None,
        };
        match f {
            Filter::RequestHeaderModifier(m) => w.request_header_modifier = Some(m),
            Filter::ResponseHeaderModifier(m) => w.response_header_modifier = Some(m),
            Filter::UrlRewrite(r) => w.url_rewrite = Some(r),
            Filter::RequestRedirect(r) => w.request_redirect = Some(r),
        }
        w
    }
}

impl TryFrom<FilterWire> for Filter {
    type Error = String;
    fn try_from(w: FilterWire) -> Result<Self, String> {
        let missing = || format!("filter {} has no settings", w.kind);
        match w.kind.as_str() {
            "RequestHeaderModifier" => w
                .request_header_modifier
                .map(Filter::RequestHeaderModifier)
                .ok_or_else(missing),
            "ResponseHeaderModifier" => w
                .response_header_modifier
                .map(Filter::ResponseHeaderModifier)
                .ok_or_else(missing),
            "URLRewrite" => w.url_rewrite.map(Filter::UrlRewrite).ok_or_else(missing),
            "RequestRedirect" => w
                .request_redirect
                .map(Filter::RequestRedirect)
                .ok_or_else(missing),
            other => Err(format!("unknown filter type {other:?}")),
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PathModifierWire {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    replace_full_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    replace_prefix_match: Option<String>,
}

impl From<PathModifier> for PathModifierWire {
    fn from(p: PathModifier) -> Self {
        match p {
            PathModifier::ReplaceFullPath(v) => PathModifierWire {
                kind: "ReplaceFullPath".into(),
                replace_full_path: Some(v),
                replace_prefix_match: None,
            },
            PathModifier::ReplacePrefixMatch(v) => PathModifierWire {
                kind: "ReplacePrefixMatch".into(),
                replace_full_path: None,
                replace_prefix_match: Some(v),
            },
        }
    }
}

impl TryFrom<PathModifierWire> for PathModifier {
    type Error = String;
    fn try_from(w: PathModifierWire) -> Result<Self, String> {
        match (w.kind.as_str(), w.replace_full_path, w.replace_prefix_match) {
            ("ReplaceFullPath", Some(v), _) => Ok(PathModifier::ReplaceFullPath(v)),
            ("ReplacePrefixMatch", _, Some(v)) => Ok(PathModifier::ReplacePrefixMatch(v)),
            (kind, _, _) => Err(format!("path modifier {kind:?} without its value")),
        }
    }
}

mod opt_dur {
    use super::dur;
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => dur::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        #[derive(Deserialize)]
        struct Wrapped(#[serde(with = "dur")] Duration);
        Option::<Wrapped>::deserialize(d).map(|w| w.map(|Wrapped(d)| d))
    }
}
