//! The config endpoints of the admin port, for the app in this pod only
//! (they carry secrets; the admin port may listen on the pod's address
//! for the kubelet's probes):
//!
//! - `GET /config/APP/PROFILE`: the delivered version as JSON, `ETag:
//!   "N"`; with `?version=N` (or `If-None-Match`) and `&wait=30s`, a long
//!   poll answered when the version moves past N (304 when the wait ends
//!   first), the way Consul's blocking queries work.
//! - `GET /{application}/{profiles}[/{label}]`: the Spring Cloud Config
//!   server's Environment, so Spring Boot and the Spring-Cloud-Config
//!   clients of other languages work unmodified; `{profiles}` may list
//!   several (`default,prod`: the last wins, so it is listed first).
//!   The label is echoed, not a selector: the sidecar holds the latest
//!   version only.
//! - `GET /{application}/{profile}/{label}/{file}`: one delivered file as
//!   text (Spring's plain-text route).

use super::delivery::{Delivery, Slot};
use super::render;
use crate::model::config::ConfigVersion;
use crate::model::parse_duration;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The longest long poll.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

pub fn routes(delivery: Arc<Delivery>) -> Router {
    Router::new()
        .route("/config/{application}/{profile}", get(config))
        .route("/{application}/{profiles}", get(spring))
        .route("/{application}/{profiles}/", get(spring))
        .route("/{application}/{profiles}/{label}", get(spring_label))
        .route("/{application}/{profiles}/{label}/{file}", get(plain_file))
        .with_state(delivery)
}

/// The API's error shape (`{"error": ..., "fields": []}`).
fn problem(status: StatusCode, error: String) -> Response {
    let body = crate::model::ApiError {
        error,
        fields: Vec::new(),
    };
    (status, Json(body)).into_response()
}

/// Whether a request comes from this pod (loopback): the config endpoints
/// and `POST /shutdown` answer no one else.
pub fn from_this_pod(peer: &Option<Extension<ConnectInfo<SocketAddr>>>) -> bool {
    peer.as_ref()
        .is_some_and(|p| p.0 .0.ip().to_canonical().is_loopback())
}

/// A refusal: its status, and the reason as `{"error": ...}`.
struct Refused(StatusCode, String);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        problem(self.0, self.1)
    }
}

/// Only the app in this pod: these answers carry its secrets.
fn local_only(peer: &Option<Extension<ConnectInfo<SocketAddr>>>) -> Result<(), Refused> {
    match from_this_pod(peer) {
        true => Ok(()),
        false => Err(Refused(
            StatusCode::FORBIDDEN,
            "config is served only to this pod (loopback)".into(),
        )),
    }
}

fn slot<'a>(d: &'a Delivery, app: &str, profile: &str) -> Result<&'a Arc<Slot>, Refused> {
    d.slot(app, profile).ok_or_else(|| {
        Refused(
            StatusCode::NOT_FOUND,
            format!(
                "this proxy delivers no config {app}:{profile} (its --config: {})",
                d.subscriptions()
            ),
        )
    })
}

fn not_yet(slot: &Slot) -> Response {
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "no version of {}:{} yet (control plane unreachable and nothing cached); see /state",
            slot.application, slot.profile
        ),
    )
}

#[derive(Deserialize)]
struct PollParams {
    version: Option<String>,
    wait: Option<String>,
}

/// `"N-HASH16"`: the version, and enough of the content hash that a
/// version number reused (a control plane that lost its data and was
/// given the config again) is still a change.
fn etag(v: &ConfigVersion) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{}\"", tag(v))).unwrap_or(HeaderValue::from_static("\"0\""))
}

fn tag(v: &ConfigVersion) -> String {
    let hex = v.meta.hash.rsplit(':').next().unwrap_or_default();
    let short = hex.get(..16).unwrap_or(hex);
    format!("{}-{short}", v.meta.version)
}

/// What a caller holds: `7` (a version) or a tag, `"7-ab12.."` or
/// `W/"7-ab12.."`.
#[derive(Clone, PartialEq, Eq)]
enum Known {
    Version(u64),
    Tag(String),
}

impl Known {
    fn parse(s: &str) -> Option<Known> {
        let t = s.trim().trim_start_matches("W/").trim_matches('"');
        match t.parse() {
            Ok(n) => Some(Known::Version(n)),
            Err(_) => {
                let (n, hex) = t.split_once('-')?;
                let ok = n.parse::<u64>().is_ok() && hex.bytes().all(|b| b.is_ascii_hexdigit());
                ok.then(|| Known::Tag(t.to_string()))
            }
        }
    }

    fn holds(&self, v: &ConfigVersion) -> bool {
        match self {
            Known::Version(n) => v.meta.version == *n,
            Known::Tag(t) => *t == tag(v),
        }
    }
}

async fn config(
    State(d): State<Arc<Delivery>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    Path((app, profile)): Path<(String, String)>,
    Query(q): Query<PollParams>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = local_only(&peer) {
        return r.into_response();
    }
    let slot = match slot(&d, &app, &profile) {
        Ok(s) => s.clone(),
        Err(r) => return r.into_response(),
    };
    let known = match &q.version {
        Some(v) => match Known::parse(v) {
            Some(k) => Some(k),
            None => {
                return problem(
                    StatusCode::BAD_REQUEST,
                    format!("version: {v:?} is neither a version number nor an ETag"),
                )
            }
        },
        None => headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .and_then(Known::parse),
    };
    let wait = match q.wait.as_deref().map(parse_duration) {
        None => Duration::ZERO,
        Some(Ok(w)) => w.min(MAX_WAIT),
        Some(Err(why)) => return problem(StatusCode::BAD_REQUEST, format!("wait: {why}")),
    };
    let moved = |v: &Option<Arc<ConfigVersion>>| match (v, &known) {
        (Some(v), Some(k)) => !k.holds(v),
        (Some(_), None) => true,
        (None, _) => false,
    };
    let mut follow = slot.follow();
    if !wait.is_zero() && known.is_some() {
        // Ends at the deadline either way; the answer reads the slot again.
        let _ = tokio::time::timeout(wait, follow.wait_for(moved)).await;
    }
    let current = slot.current();
    match current {
        Some(v) if moved(&Some(v.clone())) => {
            let tag = etag(&v);
            ([(header::ETAG, tag)], Json(&*v)).into_response()
        }
        Some(v) => (StatusCode::NOT_MODIFIED, [(header::ETAG, etag(&v))]).into_response(),
        None => not_yet(&slot),
    }
}

/// Spring Cloud Config's `Environment`.
#[derive(Serialize)]
struct Environment {
    name: String,
    profiles: Vec<String>,
    label: Option<String>,
    version: Option<String>,
    state: Option<String>,
    #[serde(rename = "propertySources")]
    property_sources: Vec<PropertySource>,
}

#[derive(Serialize)]
struct PropertySource {
    name: String,
    source: std::collections::BTreeMap<String, Value>,
}

async fn spring(
    State(d): State<Arc<Delivery>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    Path((app, profiles)): Path<(String, String)>,
) -> Response {
    environment(&d, &peer, app, profiles, None)
}

async fn spring_label(
    State(d): State<Arc<Delivery>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    Path((app, profiles, label)): Path<(String, String, String)>,
) -> Response {
    environment(&d, &peer, app, profiles, Some(label))
}

fn environment(
    d: &Delivery,
    peer: &Option<Extension<ConnectInfo<SocketAddr>>>,
    app: String,
    profiles: String,
    label: Option<String>,
) -> Response {
    if let Err(r) = local_only(peer) {
        return r.into_response();
    }
    let names: Vec<String> = profiles
        .split(',')
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    let mut sources = Vec::new();
    let mut versions = Vec::new();
    // The last profile wins: Spring lists the winner first. A profile
    // this proxy does not deliver adds no source, as a Spring server
    // answers for a profile it has no file of; none at all is a 404.
    let delivered: Vec<&String> = names
        .iter()
        .rev()
        .filter(|p| d.slot(&app, p).is_some())
        .collect();
    if delivered.is_empty() {
        let first = names.first().map_or("default", String::as_str);
        if let Err(r) = slot(d, &app, first) {
            return r.into_response();
        }
    }
    for profile in delivered {
        let Some(slot) = d.slot(&app, profile) else {
            continue;
        };
        let Some(v) = slot.current() else {
            return not_yet(slot);
        };
        versions.push(format!("{profile}:{}", v.meta.version));
        sources.push(PropertySource {
            name: format!("mesh:{app}/{profile}@v{}", v.meta.version),
            source: v.data.clone(),
        });
    }
    if sources.is_empty() {
        return problem(StatusCode::NOT_FOUND, "no profile named".into());
    }
    let version = match sources.len() {
        1 => versions[0].split_once(':').map(|(_, n)| n.to_string()),
        _ => Some(versions.join(",")),
    };
    let label = label.filter(|l| !l.is_empty());
    Json(Environment {
        name: app,
        profiles: names,
        label,
        version,
        state: None,
        property_sources: sources,
    })
    .into_response()
}

async fn plain_file(
    State(d): State<Arc<Delivery>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    Path((app, profile, _label, file)): Path<(String, String, String, String)>,
) -> Response {
    if let Err(r) = local_only(&peer) {
        return r.into_response();
    }
    let slot = match slot(&d, &app, &profile) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let Some(v) = slot.current() else {
        return not_yet(slot);
    };
    match render::render(&v).remove(&file) {
        Some(bytes) => {
            ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], bytes).into_response()
        }
        None => problem(
            StatusCode::NOT_FOUND,
            format!("{app}:{profile} v{} has no file {file:?}", v.meta.version),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::delivery::ConfigArgs;
    use axum::body::Body;
    use http::Request;
    use tower::ServiceExt;

    async fn get(d: &Arc<Delivery>, path: &str, ip: [u8; 4]) -> (u16, HeaderMap, Value) {
        let mut req = Request::get(path).body(Body::empty()).unwrap();
        req.extensions_mut()
            .insert(ConnectInfo(SocketAddr::from((ip, 40000))));
        let resp = routes(d.clone()).oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
        (status, headers, v)
    }

    #[tokio::test]
    async fn endpoints_answer_the_pod_only_and_name_what_is_missing() {
        let tmp = tempfile::tempdir().unwrap();
        let args = ConfigArgs {
            config: vec![
                delivery_sub("hello", "default"),
                delivery_sub("hello", "prod"),
            ],
            config_dir: tmp.path().join("cfg"),
            ..ConfigArgs::default()
        };
        let d = Delivery::open(&args, tmp.path());
        let here = [127, 0, 0, 1];
        assert_eq!(get(&d, "/config/hello/default", [10, 0, 0, 9]).await.0, 403);
        let (status, _, body) = get(&d, "/config/orders/default", here).await;
        assert_eq!(status, 404);
        assert!(
            body["error"].as_str().unwrap().contains("hello:prod"),
            "{body}"
        );
        assert_eq!(get(&d, "/config/hello/default", here).await.0, 503);
        assert_eq!(get(&d, "/hello/default", here).await.0, 503);
        assert_eq!(
            get(&d, "/config/hello/default?version=x", here).await.0,
            400
        );
    }

    /// A version as the sidecar's cache holds it: `Delivery::open` starts
    /// from it, as after a restart with the control plane away.
    fn cache(dir: &std::path::Path, profile: &str, version: u64, text: &str) {
        let v = serde_json::json!({
            "application": "hello", "profile": profile, "version": version,
            "revision": version, "created_at": "2026-12-02T00:00:00Z",
            "applied_at": "2026-12-02T00:00:01Z",
            "author": "admin", "hash": "hmac-sha256:00",
            "data": {"greeting.text": text, "servers[0]": "a"},
            "files": {"app.yaml": format!("text: {text}\n")}
        });
        let path = dir.join("config").join(format!("hello.{profile}.json"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, serde_json::to_vec(&v).unwrap()).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn long_poll_spring_environment_and_files_from_the_cache() {
        let tmp = tempfile::tempdir().unwrap();
        cache(tmp.path(), "default", 3, "hi");
        cache(tmp.path(), "prod", 5, "hi from prod");
        let args = ConfigArgs {
            config: vec![
                delivery_sub("hello", "default"),
                delivery_sub("hello", "prod"),
            ],
            config_dir: tmp.path().join("cfg"),
            ..ConfigArgs::default()
        };
        let d = Delivery::open(&args, tmp.path());
        let here = [127, 0, 0, 1];
        // Written from the cache before anything listens.
        let json =
            std::fs::read_to_string(tmp.path().join("cfg/hello/prod/application.json")).unwrap();
        assert!(json.contains("hi from prod"), "{json}");

        let (status, headers, body) = get(&d, "/config/hello/default", here).await;
        assert_eq!(
            (status, &headers[header::ETAG]),
            (200, &HeaderValue::from_static("\"3-00\""))
        );
        let (status, _, _) = get(&d, "/config/hello/default?version=3-00", here).await;
        assert_eq!(status, 304, "the ETag is a version too");
        let (status, _, _) = get(&d, "/config/hello/default?version=3-ff", here).await;
        assert_eq!(status, 200, "same number, other content: a change");
        assert_eq!(body["data"]["greeting.text"], "hi");
        let started = tokio::time::Instant::now();
        let (status, _, _) = get(&d, "/config/hello/default?version=3&wait=20s", here).await;
        assert_eq!((status, started.elapsed()), (304, Duration::from_secs(20)));
        let (status, _, _) = get(&d, "/config/hello/default?version=2&wait=20s", here).await;
        assert_eq!(status, 200, "already past what the caller has: at once");
        let capped = tokio::time::Instant::now();
        let _ = get(&d, "/config/hello/default?version=3&wait=1h", here).await;
        assert_eq!(capped.elapsed(), MAX_WAIT);

        let (status, _, env) = get(&d, "/hello/default,prod/master", here).await;
        assert_eq!(status, 200);
        assert_eq!(env["name"], "hello");
        assert_eq!(env["profiles"], serde_json::json!(["default", "prod"]));
        assert_eq!(env["label"], "master");
        assert_eq!(env["state"], Value::Null);
        let sources = env["propertySources"].as_array().unwrap();
        assert_eq!(
            sources[0]["name"], "mesh:hello/prod@v5",
            "the last profile wins: first"
        );
        assert_eq!(sources[1]["source"]["greeting.text"], "hi");
        let (_, _, one) = get(&d, "/hello/default/", here).await;
        assert_eq!(
            (one["version"].as_str(), &one["label"]),
            (Some("3"), &Value::Null)
        );
        assert_eq!(get(&d, "/hello/default/master/app.yaml", here).await.0, 200);
        assert_eq!(get(&d, "/hello/default/master/nope.txt", here).await.0, 404);
        assert_eq!(get(&d, "/hello/staging", here).await.0, 404);
        let (status, _, env) = get(&d, "/hello/default,staging", here).await;
        assert_eq!(
            status, 200,
            "an undelivered profile adds no source, as in Spring"
        );
        assert_eq!(env["propertySources"].as_array().unwrap().len(), 1);
        let (status, _, env) = get(&d, "/hello/default,staging", here).await;
        assert_eq!(
            status, 200,
            "an undelivered profile adds no source, as in Spring"
        );
        assert_eq!(env["propertySources"].as_array().unwrap().len(), 1);
        let (status, _, env) = get(&d, "/hello/default,staging", here).await;
        assert_eq!(
            status, 200,
            "an undelivered profile adds no source, as in Spring"
        );
        assert_eq!(env["propertySources"].as_array().unwrap().len(), 1);
    }

    fn delivery_sub(app: &str, profile: &str) -> crate::config::delivery::Subscription {
        crate::config::delivery::Subscription {
            application: app.into(),
            profile: profile.into(),
        }
    }
}
