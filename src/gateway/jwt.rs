//! JWT bearer authentication per route, with `jsonwebtoken` (aws-lc-rs).
//!
//! A token is taken from `Authorization: Bearer`, and refused (401, with
//! `WWW-Authenticate: Bearer` and RFC 6750's `error`) unless all of these
//! hold: its header parses and names an `alg` the route accepts (only
//! asymmetric ones can be configured, so neither `none` nor an HMAC
//! signature made with a published public key as its secret is ever
//! verified); a key of the route's JWKS verifies it (by `kid`; without one,
//! every key of the algorithm's family is tried); `iss` is the route's
//! issuer; `aud` holds one of its audiences (when it names any); `exp` is
//! in the future and `nbf` in the past, both within the route's leeway.
//! A valid token whose `requiredClaims` do not match gets 403.
//!
//! Keys come from a JWKS URL or file ([`KeySet`]), one set per source
//! shared by every rule naming it and kept across route changes. A set is
//! fetched on first use, refreshed in the background once it is older
//! than [`REFRESH`] (as Envoy Gateway's 5-minute cache), and refetched on
//! a `kid` it does not hold at most once per [`UNKNOWN_KID_EVERY`] (a
//! stream of made-up `kid`s must not become a stream of fetches). A fetch
//! that fails keeps the last good set.

use super::route::JwtAuth;
use crate::control::client::Fetcher;
use arc_swap::ArcSwapOption;
use base64::Engine;
use http::header::{HeaderMap, AUTHORIZATION};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// A key set older than this is refetched in the background.
pub const REFRESH: Duration = Duration::from_secs(300);
/// At most one fetch this often for a `kid` the set does not hold.
pub const UNKNOWN_KID_EVERY: Duration = Duration::from_secs(60);
/// Before a first set is known, fetches are retried at most this often.
const COLD_RETRY: Duration = Duration::from_secs(1);
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// A JWKS larger than this is refused (real ones are a few KiB).
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Why a token was refused: the `reason` label of
/// `mesh_gateway_auth_failures_total` and the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    Missing,
    Malformed,
    BadAlgorithm,
    UnknownKey,
    BadSignature,
    Expired,
    NotYetValid,
    BadIssuer,
    BadAudience,
    MissingClaim,
    KeysUnavailable,
    /// Valid, but a required claim does not match: 403, not 401.
    ClaimMismatch,
}

impl Failure {
    pub fn reason(self) -> &'static str {
        match self {
            Failure::Missing => "missing",
            Failure::Malformed => "malformed",
            Failure::BadAlgorithm => "bad-algorithm",
            Failure::UnknownKey => "unknown-kid",
            Failure::BadSignature => "bad-signature",
            Failure::Expired => "expired",
            Failure::NotYetValid => "not-yet-valid",
            Failure::BadIssuer => "bad-issuer",
            Failure::BadAudience => "bad-audience",
            Failure::MissingClaim => "missing-claim",
            Failure::KeysUnavailable => "keys-unavailable",
            Failure::ClaimMismatch => "claim-mismatch",
        }
    }

    /// For the client: what `WWW-Authenticate` says.
    pub fn description(self) -> &'static str {
        match self {
            Failure::Missing => "a bearer token is required",
            Failure::Malformed => "the token is not a JWT",
            Failure::BadAlgorithm => "the token's algorithm is not accepted",
            Failure::UnknownKey => "the token's key is not known",
            Failure::BadSignature => "the token's signature is invalid",
            Failure::Expired => "the token has expired",
            Failure::NotYetValid => "the token is not valid yet",
            Failure::BadIssuer => "the token's issuer is not accepted",
            Failure::BadAudience => "the token's audience is not accepted",
            Failure::MissingClaim => "the token lacks a required claim",
            Failure::KeysUnavailable => "the signing keys are unavailable",
            Failure::ClaimMismatch => "the token does not grant this",
        }
    }
}

/// One key, ready to verify with.
struct Key {
    kid: Option<String>,
    /// The JWK's own `alg`, when it names one.
    alg: Option<Algorithm>,
    family: jsonwebtoken::AlgorithmFamily,
    key: DecodingKey,
}

struct Keys {
    keys: Vec<Key>,
}

/// Where a set comes from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    Uri(http::Uri),
    File(std::path::PathBuf),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Uri(u) => write!(f, "{u}"),
            Source::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// One JWKS, fetched and cached.
pub struct KeySet {
    source: Source,
    fetcher: Fetcher,
    keys: ArcSwapOption<Keys>,
    /// Held by the one fetch in progress; holds when the last one started.
    fetching: tokio::sync::Mutex<Option<Instant>>,
    /// When a background refresh may next start, in ms since `born`: the
    /// request path reads one atomic, and at most one refresh runs (a
    /// stale set must not start a task per request while its server is
    /// slow or down).
    born: Instant,
    refresh_at_ms: AtomicU64,
    refreshing: AtomicBool,
}

impl KeySet {
    pub fn new(source: Source, fetcher: Fetcher) -> Arc<KeySet> {
        Arc::new(KeySet {
            source,
            fetcher,
            keys: ArcSwapOption::empty(),
            fetching: tokio::sync::Mutex::new(None),
            born: Instant::now(),
            refresh_at_ms: AtomicU64::new(u64::MAX),
            refreshing: AtomicBool::new(false),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The next background refresh, `after` from now.
    fn refresh_in(&self, after: Duration) {
        let at = self
            .now_ms()
            .saturating_add(u64::try_from(after.as_millis()).unwrap_or(u64::MAX));
        self.refresh_at_ms.store(at, Ordering::Relaxed);
    }

    /// The set as known, fetching it first if none is yet (waiting for a
    /// fetch already under way), and starting a background refresh when
    /// it is stale.
    async fn current(self: &Arc<Self>) -> Option<Arc<Keys>> {
        if let Some(k) = self.keys.load_full() {
            let due = self.now_ms() >= self.refresh_at_ms.load(Ordering::Relaxed);
            if due && !self.refreshing.swap(true, Ordering::AcqRel) {
                let this = self.clone();
                tokio::spawn(async move {
                    // A failed refresh is tried again a minute later; the
                    // keys held stay in use meanwhile.
                    if !this.fetch_if(Duration::ZERO).await {
                        this.refresh_in(UNKNOWN_KID_EVERY);
                    }
                    this.refreshing.store(false, Ordering::Release);
                });
            }
            return Some(k);
        }
        self.fetch_if(COLD_RETRY).await;
        self.keys.load_full()
    }

    /// Fetches unless one started less than `every` ago (a fetch under
    /// way is waited for instead). Returns whether one ran and succeeded.
    async fn fetch_if(&self, every: Duration) -> bool {
        let mut last = self.fetching.lock().await;
        if last.is_some_and(|t| t.elapsed() < every) {
            return false;
        }
        *last = Some(Instant::now());
        match self.fetch().await {
            Ok(keys) => {
                tracing::debug!(source = %self.source, keys = keys.len(), "JWKS fetched");
                self.keys.store(Some(Arc::new(Keys { keys })));
                self.refresh_in(REFRESH);
                true
            }
            Err(e) => {
                let kept = self.keys.load().as_ref().map_or(0, |k| k.keys.len());
                tracing::warn!(source = %self.source, error = %e, kept, "JWKS fetch failed; keeping the last good keys");
                false
            }
        }
    }

    async fn fetch(&self) -> Result<Vec<Key>, String> {
        let body = match &self.source {
            Source::Uri(u) => self.fetcher.get(u, MAX_JWKS_BYTES, FETCH_TIMEOUT).await?,
            Source::File(p) => {
                let text = tokio::fs::read(p).await.map_err(|e| e.to_string())?;
                if text.len() > MAX_JWKS_BYTES {
                    return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
                }
                text.into()
            }
        };
        parse_jwks(&body)
    }
}

/// The usable keys of a JWKS document: symmetric (`oct`) keys and keys
/// that do not parse are skipped (counted in the error when none is left).
fn parse_jwks(body: &[u8]) -> Result<Vec<Key>, String> {
    let set: JwkSet = serde_json::from_slice(body).map_err(|e| format!("not a JWKS: {e}"))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let family = match &jwk.algorithm {
            jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => jsonwebtoken::AlgorithmFamily::Rsa,
            jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => {
                jsonwebtoken::AlgorithmFamily::Ec
            }
            jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(_) => {
                jsonwebtoken::AlgorithmFamily::Ed
            }
            // A shared secret published in a key set is no key of ours.
            _ => continue,
        };
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        let alg = jwk
            .common
            .key_algorithm
            .and_then(|a| Algorithm::from_str(&a.to_string()).ok());
        keys.push(Key {
            kid: jwk.common.key_id.clone(),
            alg,
            family,
            key,
        });
    }
    if keys.is_empty() {
        return Err(format!(
            "none of its {} keys is an RSA, EC or OKP public key",
            set.keys.len()
        ));
    }
    Ok(keys)
}

/// Every key set, by source: shared by the rules that name it and kept
/// across route changes (a route change must not drop a warm cache).
pub struct KeySets {
    fetcher: Fetcher,
    sets: Mutex<HashMap<Source, Arc<KeySet>>>,
}

impl KeySets {
    pub fn new(fetcher: Fetcher) -> KeySets {
        KeySets {
            fetcher,
            sets: Mutex::new(HashMap::new()),
        }
    }

    pub fn get(&self, source: Source) -> Arc<KeySet> {
        let mut sets = self.sets.lock().unwrap_or_else(|p| p.into_inner());
        sets.entry(source.clone())
            .or_insert_with(|| KeySet::new(source, self.fetcher.clone()))
            .clone()
    }

    /// Drops sets no rule uses any more.
    pub fn retain_used(&self) {
        let mut sets = self.sets.lock().unwrap_or_else(|p| p.into_inner());
        sets.retain(|_, s| Arc::strong_count(s) > 1);
    }
}

/// One rule's authentication, compiled.
pub struct Verifier {
    spec: JwtAuth,
    /// Each accepted algorithm with its validation rules, built once (a
    /// `Validation` holds sets; making one per request was measurable).
    algorithms: Vec<(Algorithm, Validation)>,
    keys: Arc<KeySet>,
}

impl Verifier {
    pub fn new(spec: &JwtAuth, sets: &KeySets) -> Option<Verifier> {
        let source = match (&spec.jwks_uri, &spec.jwks_file) {
            (Some(u), _) => Source::Uri(u.parse().ok()?),
            (None, Some(f)) => Source::File(f.into()),
            (None, None) => return None,
        };
        let algorithms = spec
            .algorithms
            .iter()
            .filter_map(|a| Algorithm::from_str(a).ok())
            .filter(|a| !matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512))
            .map(|a| (a, validation(spec, a)))
            .collect();
        Some(Verifier {
            spec: spec.clone(),
            algorithms,
            keys: sets.get(source),
        })
    }

    pub fn spec(&self) -> &JwtAuth {
        &self.spec
    }

    /// The token's claims, or why it is refused.
    pub async fn verify(&self, headers: &HeaderMap) -> Result<Map<String, Value>, Failure> {
        let token = bearer(headers).ok_or(Failure::Missing)?;
        let (alg, kid) = header_alg(token)?;
        let (_, validation) = self
            .algorithms
            .iter()
            .find(|(a, _)| *a == alg)
            .ok_or(Failure::BadAlgorithm)?;
        let keys = self.keys.current().await.ok_or(Failure::KeysUnavailable)?;
        match self.try_keys(&keys, token, alg, kid.as_deref(), validation) {
            Err(Failure::UnknownKey) if kid.is_some() => {
                // Perhaps rotated in since the last fetch.
                if !self.keys.fetch_if(UNKNOWN_KID_EVERY).await {
                    return Err(Failure::UnknownKey);
                }
                let keys = self.keys.current().await.ok_or(Failure::KeysUnavailable)?;
                self.try_keys(&keys, token, alg, kid.as_deref(), validation)
            }
            other => other,
        }
        .and_then(|claims| self.required(claims))
    }

    fn try_keys(
        &self,
        keys: &Keys,
        token: &str,
        alg: Algorithm,
        kid: Option<&str>,
        validation: &Validation,
    ) -> Result<Map<String, Value>, Failure> {
        let family = alg.family();
        let fits = |k: &&Key| k.family == family && k.alg.is_none_or(|a| a == alg);
        let candidates: Vec<&Key> = match kid {
            Some(kid) => keys
                .keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid))
                .filter(fits)
                .collect(),
            None => keys.keys.iter().filter(fits).collect(),
        };
        if candidates.is_empty() {
            return Err(Failure::UnknownKey);
        }
        let mut last = Failure::BadSignature;
        for k in candidates {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &k.key, validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => {
                    last = failure(e.kind());
                    // Only a bad signature means "perhaps another key".
                    if last != Failure::BadSignature {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }

    fn required(&self, claims: Map<String, Value>) -> Result<Map<String, Value>, Failure> {
        for r in &self.spec.required_claims {
            let ok = match claims.get(&r.claim) {
                Some(Value::String(s)) => s.split(' ').any(|w| r.values.iter().any(|v| v == w)),
                Some(Value::Array(items)) => items
                    .iter()
                    .filter_map(Value::as_str)
                    .any(|w| r.values.iter().any(|v| v == w)),
                Some(Value::Bool(b)) => r.values.iter().any(|v| v == &b.to_string()),
                Some(Value::Number(n)) => r.values.iter().any(|v| v == &n.to_string()),
                _ => false,
            };
            if !ok {
                return Err(Failure::ClaimMismatch);
            }
        }
        Ok(claims)
    }
}

/// What a token of `alg` must satisfy beside its signature.
fn validation(spec: &JwtAuth, alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.algorithms = vec![alg];
    v.leeway = spec.leeway.as_secs();
    v.validate_nbf = true;
    v.set_issuer(&[&spec.issuer]);
    let mut required = vec!["exp", "iss"];
    if spec.audiences.is_empty() {
        v.validate_aud = false;
    } else {
        v.set_audience(&spec.audiences);
        required.push("aud");
    }
    v.set_required_spec_claims(&required);
    v
}

/// A claim as a header value: strings as they are, numbers and booleans
/// written out, lists of those comma-joined; objects are not sent.
pub fn claim_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Array(items) => {
            let parts: Option<Vec<String>> = items
                .iter()
                .map(|i| match i {
                    Value::Array(_) | Value::Object(_) | Value::Null => None,
                    other => claim_text(other),
                })
                .collect();
            parts.map(|p| p.join(","))
        }
        Value::Object(_) | Value::Null => None,
    }
}

fn failure(kind: &ErrorKind) -> Failure {
    match kind {
        ErrorKind::ExpiredSignature => Failure::Expired,
        ErrorKind::ImmatureSignature => Failure::NotYetValid,
        ErrorKind::InvalidIssuer => Failure::BadIssuer,
        ErrorKind::InvalidAudience => Failure::BadAudience,
        ErrorKind::InvalidSignature => Failure::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => Failure::BadAlgorithm,
        ErrorKind::MissingRequiredClaim(_) => Failure::MissingClaim,
        _ => Failure::Malformed,
    }
}

/// The token of `Authorization: Bearer <token>` (the scheme without case).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The `alg` and `kid` of a token's header, read before anything else:
/// `none` (and anything jsonwebtoken does not know) is a refused
/// algorithm, not a malformed token, so the log says what was tried.
/// (jsonwebtoken reads the header again when it verifies: it must.)
fn header_alg(token: &str) -> Result<(Algorithm, Option<String>), Failure> {
    let head = token.split('.').next().ok_or(Failure::Malformed)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(head.trim_end_matches('='))
        .map_err(|_| Failure::Malformed)?;
    let header: Map<String, Value> =
        serde_json::from_slice(&bytes).map_err(|_| Failure::Malformed)?;
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(Failure::Malformed)?;
    if token.split('.').count() != 3 {
        return Err(Failure::Malformed);
    }
    let alg = Algorithm::from_str(alg).map_err(|_| Failure::BadAlgorithm)?;
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(Failure::Malformed),
    };
    Ok((alg, kid))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwks(kid: &str) -> String {
        // Components need not make a real key: the set only parses them.
        serde_json::json!({"keys": [{"kty": "RSA", "kid": kid, "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw", "e": "AQAB"}]}).to_string()
    }

    fn kids(set: &KeySet) -> Vec<String> {
        set.keys
            .load()
            .as_ref()
            .map(|k| k.keys.iter().filter_map(|k| k.kid.clone()).collect())
            .unwrap_or_default()
    }

    /// Lets spawned refreshes (and their blocking file reads) run.
    async fn settle(set: &KeySet, want: &[&str]) {
        for _ in 0..200 {
            if kids(set) == want && !set.refreshing.load(Ordering::Acquire) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("kids {:?}, wanted {want:?}", kids(set));
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_set_refreshes_in_the_background_and_keeps_the_last_good_keys() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("jwks.json");
        std::fs::write(&file, jwks("a")).unwrap();
        let fetcher = Fetcher::new(None, Duration::from_secs(1));
        let set = KeySet::new(Source::File(file.clone()), fetcher);
        assert!(set.current().await.is_some(), "fetched on first use");
        assert_eq!(kids(&set), ["a"]);

        // Rotated at the source: seen only once the set is due.
        std::fs::write(&file, jwks("b")).unwrap();
        tokio::time::advance(REFRESH - Duration::from_secs(1)).await;
        set.current().await;
        settle(&set, &["a"]).await;
        tokio::time::advance(Duration::from_secs(2)).await;
        set.current().await;
        settle(&set, &["b"]).await;

        // The source goes away: the last good keys stay, and the failed
        // refresh is tried again a minute later, not per request.
        std::fs::remove_file(&file).unwrap();
        tokio::time::advance(REFRESH + Duration::from_secs(1)).await;
        for _ in 0..50 {
            assert!(set.current().await.is_some());
        }
        settle(&set, &["b"]).await;
        let next = set.refresh_at_ms.load(Ordering::Relaxed);
        assert!(
            next > set.now_ms() + 50_000,
            "retried in a minute: {next} vs {}",
            set.now_ms()
        );
        // An unknown kid may force one fetch a minute, no more.
        std::fs::write(&file, jwks("c")).unwrap();
        assert!(
            !set.fetch_if(UNKNOWN_KID_EVERY).await,
            "the failed refresh just ran"
        );
        tokio::time::advance(UNKNOWN_KID_EVERY).await;
        assert!(set.fetch_if(UNKNOWN_KID_EVERY).await);
        assert_eq!(kids(&set), ["c"]);
    }

    #[test]
    fn bearer_tokens_and_header_algorithms() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
        h.insert(AUTHORIZATION, "bearer a.b.c".parse().unwrap());
        assert_eq!(bearer(&h), Some("a.b.c"));
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let none = format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64("{}"));
        assert_eq!(header_alg(&none), Err(Failure::BadAlgorithm));
        let rs = format!("{}.{}.sig", b64(r#"{"alg":"RS256","kid":"k"}"#), b64("{}"));
        assert_eq!(header_alg(&rs), Ok((Algorithm::RS256, Some("k".into()))));
        assert_eq!(header_alg("not-a-token"), Err(Failure::Malformed));
        assert_eq!(
            claim_text(&serde_json::json!(["a", 1, true])).as_deref(),
            Some("a,1,true")
        );
        assert_eq!(claim_text(&serde_json::json!({"a": 1})), None);
    }
}
