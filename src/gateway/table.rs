//! The compiled route table: which rule a request selects. Pure: built
//! once per change of the routes (regexes compiled then), read lock-free
//! by every request.
//!
//! Precedence, Gateway API's, in two steps:
//!
//! 1. **Host.** The request's host (`:authority` or `Host`, without port,
//!    lowercase) picks one group of routes: those naming it exactly, else
//!    those under the longest matching wildcard (`*.example.com` covers
//!    `a.example.com` and `a.b.example.com`, not `example.com`), else
//!    routes without `hostnames`. As in Envoy (one virtual host per name),
//!    a group that has no matching rule answers 404: the request does not
//!    fall through to a less specific group.
//! 2. **Match**, most specific first: an `Exact` path, then a
//!    `RegularExpression` path (longer pattern first), then a `PathPrefix`
//!    (longer prefix first; no path is the prefix `/`); then a match with a
//!    `method` before one without; then more `headers`, then more
//!    `queryParams`. Ties go to the route whose name sorts first (Gateway
//!    API's tie-break is the oldest route; a mesh document has no creation
//!    time of its own), then to rule order, then to match order. Gateway
//!    API leaves regex precedence to implementations; this is Envoy
//!    Gateway's.

use super::jwt::{KeySets, Verifier};
use super::limit::{Limiter, Limiters};
use super::parse::compile;
use super::route::{
    Backend, Cors, JwtAuth, PathMatch, RateLimit, Route, RouteRule, ValueMatch, ValueMatchKind,
};
use http::{HeaderMap, HeaderName, Method};
use regex::Regex;
use std::cmp::Reverse;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

/// One rule as the request path uses it.
#[derive(Debug)]
pub struct CompiledRule {
    /// The route's name: the `route` label of metrics and logs.
    pub route: Arc<str>,
    /// The rule's name, or `rules[N]`.
    pub rule: Arc<str>,
    pub spec: RouteRule,
    /// The rule's own settings, else the route's.
    pub jwt: Option<JwtAuth>,
    pub rate_limit: Option<RateLimit>,
    pub cors: Option<Cors>,
    /// The sum of the backends' weights (more than 0: parsing checks).
    total_weight: u64,
    /// Its verifier and limiter, taken on first use from the gateway's
    /// (which outlive route changes).
    attached: OnceLock<Attached>,
}

/// A rule's state that lives in the gateway, not in the table.
pub struct Attached {
    pub verifier: Option<Verifier>,
    pub limiter: Option<Arc<Limiter>>,
}

impl std::fmt::Debug for Attached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attached")
            .field("verifier", &self.verifier.is_some())
            .field("limiter", &self.limiter.is_some())
            .finish()
    }
}

impl CompiledRule {
    /// The rule's verifier and limiter, from the gateway's sets.
    pub fn attached(&self, keys: &KeySets, limiters: &Limiters) -> &Attached {
        self.attached.get_or_init(|| Attached {
            verifier: self.jwt.as_ref().and_then(|j| Verifier::new(j, keys)),
            limiter: self
                .rate_limit
                .as_ref()
                .map(|l| limiters.get(&self.route, &self.rule, l)),
        })
    }

    /// A backend by weight (weight 0 is never picked).
    pub fn pick_backend(&self) -> Option<&Backend> {
        pick_weighted(&self.spec.backends, self.total_weight, fastrand::u64(..))
    }
}

/// The backend a draw in `0..u64::MAX` lands on.
fn pick_weighted(backends: &[Backend], total: u64, draw: u64) -> Option<&Backend> {
    if total == 0 {
        return None;
    }
    let mut at = draw % total;
    for b in backends {
        let w = u64::from(b.weight);
        if at < w {
            return Some(b);
        }
        at -= w;
    }
    None
}

/// What a request selected.
pub struct Matched<'a> {
    pub rule: &'a Arc<CompiledRule>,
    /// The `PathPrefix` that matched, as written (for `ReplacePrefixMatch`).
    pub prefix: Option<&'a str>,
}

#[derive(Debug)]
enum PathMatcher {
    Exact(String),
    /// Without its trailing `/` (`/` itself is the empty prefix).
    Prefix {
        written: String,
        bare: String,
    },
    Regex(Regex),
}

#[derive(Debug)]
enum ValueMatcher {
    Exact(String),
    Regex(Regex),
}

impl ValueMatcher {
    fn new(m: &ValueMatch) -> Option<Self> {
        Some(match m.kind {
            ValueMatchKind::Exact => ValueMatcher::Exact(m.value.clone()),
            ValueMatchKind::RegularExpression => ValueMatcher::Regex(compile(&m.value).ok()?),
        })
    }

    fn matches(&self, v: &[u8]) -> bool {
        match self {
            ValueMatcher::Exact(want) => want.as_bytes() == v,
            ValueMatcher::Regex(re) => std::str::from_utf8(v).is_ok_and(|s| re.is_match(s)),
        }
    }
}

#[derive(Debug)]
struct Entry {
    rule: Arc<CompiledRule>,
    path: PathMatcher,
    method: Option<Method>,
    headers: Vec<(HeaderName, ValueMatcher)>,
    query: Vec<(String, ValueMatcher)>,
}

impl Entry {
    fn matches<'a>(
        &'a self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Option<Option<&'a str>> {
        let prefix = match &self.path {
            PathMatcher::Exact(p) => (p == path).then_some(None)?,
            PathMatcher::Prefix { written, bare } => {
                let under = path
                    .strip_prefix(bare.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
                under.then_some(Some(written.as_str()))?
            }
            PathMatcher::Regex(re) => re.is_match(path).then_some(None)?,
        };
        if self.method.as_ref().is_some_and(|m| m != method) {
            return None;
        }
        for (name, want) in &self.headers {
            // Several lines of one header are compared as one, comma-joined
            // (RFC 9110 5.3), which is what the app would read.
            let mut all = headers.get_all(name).iter();
            let first = all.next()?;
            let ok = match all.next() {
                None => want.matches(first.as_bytes()),
                Some(second) => {
                    let mut joined = first.as_bytes().to_vec();
                    for v in std::iter::once(second).chain(all) {
                        joined.extend_from_slice(b",");
                        joined.extend_from_slice(v.as_bytes());
                    }
                    want.matches(&joined)
                }
            };
            if !ok {
                return None;
            }
        }
        for (name, want) in &self.query {
            let value = query_value(query?, name)?;
            if !want.matches(value.as_bytes()) {
                return None;
            }
        }
        Some(prefix)
    }

    /// The sort key of Gateway API's precedence (smallest first).
    fn rank(&self, route: &str, rule: usize, m: usize) -> impl Ord + '_ {
        let (class, len) = match &self.path {
            PathMatcher::Exact(p) => (0u8, p.len()),
            PathMatcher::Regex(re) => (1, re.as_str().len()),
            PathMatcher::Prefix { bare, .. } => (2, bare.len()),
        };
        (
            class,
            Reverse(len),
            self.method.is_none(),
            Reverse(self.headers.len()),
            Reverse(self.query.len()),
            route.to_string(),
            rule,
            m,
        )
    }
}

/// The first value of query parameter `name` (names and values compared
/// as sent, %-escapes and all).
fn query_value<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// Every route, compiled and ordered.
#[derive(Debug, Default)]
pub struct RouteTable {
    exact: HashMap<String, Vec<Entry>>,
    /// `.example.com` for `*.example.com`, longest first.
    wildcard: Vec<(String, Vec<Entry>)>,
    any: Vec<Entry>,
    routes: usize,
    /// Route names, sorted.
    names: Vec<Arc<str>>,
}

impl RouteTable {
    pub fn new<'a>(routes: impl IntoIterator<Item = &'a Route>) -> Self {
        let mut table = RouteTable::default();
        let mut wild: HashMap<String, Vec<Entry>> = HashMap::new();
        let mut ranked: Vec<(String, usize, usize, Option<String>, Entry)> = Vec::new();
        for route in routes {
            table.routes += 1;
            table.names.push(Arc::from(route.name.as_str()));
            for (ri, rule) in route.rules.iter().enumerate() {
                let compiled = Arc::new(CompiledRule {
                    route: Arc::from(route.name.as_str()),
                    rule: Arc::from(rule.name.clone().unwrap_or_else(|| format!("rules[{ri}]"))),
                    total_weight: rule.backends.iter().map(|b| u64::from(b.weight)).sum(),
                    jwt: rule.jwt.clone().or_else(|| route.jwt.clone()),
                    rate_limit: rule.rate_limit.clone().or_else(|| route.rate_limit.clone()),
                    cors: rule.cors.clone().or_else(|| route.cors.clone()),
                    attached: OnceLock::new(),
                    spec: rule.clone(),
                });
                let matches = match rule.matches.is_empty() {
                    true => vec![Default::default()],
                    false => rule.matches.clone(),
                };
                for (mi, m) in matches.iter().enumerate() {
                    let Some(entry) = entry(&compiled, m) else {
                        // Parsing compiled the same patterns: unreachable for
                        // a validated route; skipped rather than trusted.
                        tracing::warn!(route = %route.name, rule = ri, "route match does not compile; skipped");
                        continue;
                    };
                    let hosts: Vec<Option<String>> = match route.hostnames.is_empty() {
                        true => vec![None],
                        false => route.hostnames.iter().cloned().map(Some).collect(),
                    };
                    for host in hosts {
                        ranked.push((route.name.clone(), ri, mi, host, entry.clone_for()));
                    }
                }
            }
        }
        ranked.sort_by(|a, b| a.4.rank(&a.0, a.1, a.2).cmp(&b.4.rank(&b.0, b.1, b.2)));
        for (_, _, _, host, entry) in ranked {
            match host {
                None => table.any.push(entry),
                Some(h) => match h.strip_prefix('*') {
                    Some(suffix) => wild.entry(suffix.to_string()).or_default().push(entry),
                    None => table.exact.entry(h).or_default().push(entry),
                },
            }
        }
        table.names.sort();
        table.wildcard = wild.into_iter().collect();
        table
            .wildcard
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        table
    }

    /// The routes' names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(|n| &**n)
    }

    /// How many routes it holds.
    pub fn len(&self) -> usize {
        self.routes
    }

    pub fn is_empty(&self) -> bool {
        self.routes == 0
    }

    /// The rule for a request: `host` lowercase without port, `path`
    /// normalized without query.
    pub fn find(
        &self,
        host: &str,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Option<Matched<'_>> {
        let group = self.exact.get(host).map(Vec::as_slice).or_else(|| {
            self.wildcard
                .iter()
                .find(|(suffix, _)| host.len() > suffix.len() && host.ends_with(suffix.as_str()))
                .map(|(_, e)| e.as_slice())
        });
        let group = group.unwrap_or(&self.any);
        group.iter().find_map(|e| {
            let prefix = e.matches(method, path, query, headers)?;
            Some(Matched {
                rule: &e.rule,
                prefix,
            })
        })
    }
}

fn entry(rule: &Arc<CompiledRule>, m: &super::route::RouteMatch) -> Option<Entry> {
    let path = match &m.path {
        None => PathMatcher::Prefix {
            written: "/".into(),
            bare: String::new(),
        },
        Some(PathMatch::Exact(p)) => PathMatcher::Exact(p.clone()),
        Some(PathMatch::PathPrefix(p)) => PathMatcher::Prefix {
            written: p.clone(),
            bare: p.trim_end_matches('/').to_string(),
        },
        Some(PathMatch::RegularExpression(p)) => PathMatcher::Regex(compile(p).ok()?),
    };
    let method = match &m.method {
        Some(s) => Some(Method::from_bytes(s.as_bytes()).ok()?),
        None => None,
    };
    let headers = m
        .headers
        .iter()
        .map(|h| {
            Some((
                HeaderName::from_bytes(h.name.as_bytes()).ok()?,
                ValueMatcher::new(h)?,
            ))
        })
        .collect::<Option<Vec<_>>>()?;
    let query = m
        .query_params
        .iter()
        .map(|q| Some((q.name.clone(), ValueMatcher::new(q)?)))
        .collect::<Option<Vec<_>>>()?;
    Some(Entry {
        rule: rule.clone(),
        path,
        method,
        headers,
        query,
    })
}

impl Entry {
    /// The same entry for another hostname group (regexes are shared
    /// internally by `Regex`'s own `Arc`).
    fn clone_for(&self) -> Entry {
        Entry {
            rule: self.rule.clone(),
            path: match &self.path {
                PathMatcher::Exact(p) => PathMatcher::Exact(p.clone()),
                PathMatcher::Prefix { written, bare } => PathMatcher::Prefix {
                    written: written.clone(),
                    bare: bare.clone(),
                },
                PathMatcher::Regex(re) => PathMatcher::Regex(re.clone()),
            },
            method: self.method.clone(),
            headers: self
                .headers
                .iter()
                .map(|(n, v)| (n.clone(), v.clone_matcher()))
                .collect(),
            query: self
                .query
                .iter()
                .map(|(n, v)| (n.clone(), v.clone_matcher()))
                .collect(),
        }
    }
}

impl ValueMatcher {
    fn clone_matcher(&self) -> ValueMatcher {
        match self {
            ValueMatcher::Exact(s) => ValueMatcher::Exact(s.clone()),
            ValueMatcher::Regex(r) => ValueMatcher::Regex(r.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(service: &str, weight: u32) -> Backend {
        Backend {
            service: service.into(),
            port: None,
            weight,
        }
    }

    #[test]
    fn weights_split_the_draws_exactly() {
        let b = [backend("v1", 90), backend("v2", 10), backend("off", 0)];
        let mut counts = HashMap::new();
        for draw in 0..1000u64 {
            let got = pick_weighted(&b, 100, draw).unwrap();
            *counts.entry(got.service.as_str()).or_insert(0) += 1;
        }
        assert_eq!(counts.get("v1"), Some(&900));
        assert_eq!(counts.get("v2"), Some(&100));
        assert_eq!(counts.get("off"), None);
        assert!(pick_weighted(&b, 0, 5).is_none());
    }

    #[test]
    fn query_values_are_the_first_of_their_name() {
        assert_eq!(query_value("a=1&b=2&a=3", "a"), Some("1"));
        assert_eq!(query_value("flag&b=2", "flag"), Some(""));
        assert_eq!(query_value("ab=1", "a"), None);
    }
}
